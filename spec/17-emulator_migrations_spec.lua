-- SPDX-License-Identifier: MIT
-- The test bed's emulator playing Google's side of the server-side routes (issue 16, point 7):
-- a directory standing for Cloud Storage, dicomStores.import reading it into Orthanc,
-- dicomStores.export writing a store's instances into it (or one JSON line per instance into a
-- file standing for a BigQuery table), de-identification copying instances with tags removed,
-- the work done a step at each poll, cancel stopping it. Driven with the curl command (the Lua
-- wiring of these methods comes later), against a private emulator with a Cloud Storage
-- directory of its own (this file changes its config and counts its stats).
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = H.json

local em = require("support.emulator_instance").start({ gcs = true })
local LOCATION = "projects/test-project/locations/us-central1"
local HC = "google.cloud.healthcare.v1."

teardown(function() em:stop() end)

local function ok(r)
  assert(r.status == 200, "expected 200, got " .. tostring(r.status) .. ": " .. r.body)
  return r.json
end

-- Google's envelope: status, the RPC status name, and the field named in fieldViolations.
local function envelope(r, status, name, field)
  assert.equal(status, r.status, r.body)
  assert.equal(name, r.json.error.status, r.body)
  if field then
    assert.equal(field, r.json.error.details[1].fieldViolations[1].field, r.body)
  end
  return r.json.error
end

local function config(t) return em:control("config", t) end
local function poll(op) return ok(em:api("GET", op)) end

local fresh = H.fresh_id


-- A name as a URL component (what urllib.parse.quote(name, safe="") makes of it).
local function quote(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function logs(op)
  return H.curl({ em.url .. "/_control/logs?operation=" .. quote(op) }).json.entries
end

-- STOW each file (a gen_dicom entry) into the store through the emulator, one request each.
local function stow(store, files)
  for _, f in ipairs(files) do
    local r = H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. em.token, "-H",
      "Content-Type: application/dicom", "-H", "Accept: application/dicom+json", "--data-binary", "@" .. f.path,
      em.endpoint .. "/" .. store .. "/dicomWeb/studies" })
    assert(r.status == 200, "STOW -> " .. tostring(r.status) .. " " .. r.body)
  end
end

-- Polls op until done (at most n polls): the done operation, and the counters seen before it.
local function wait(op, n)
  local seen = {}
  for _ = 1, n or 20 do
    local o = poll(op)
    if o.done then return o, seen end
    seen[#seen + 1] = o.metadata.counter
  end
  error("operation not done after " .. tostring(n or 20) .. " polls: " .. op)
end

local function start(path, body)
  local r = ok(em:api("POST", path, nil, body))
  assert.matches("/operations/%d+$", r.name)
  return r.name
end

-- Tags of DICOM files, read with pydicom in one run: path -> { keyword -> value as text, or
-- cjson.null when present and empty }; absent keywords are absent.
local READ_TAGS = [[
import json, sys, pydicom
paths, kws = json.load(sys.stdin)
out = {}
for p in paths:
    ds = pydicom.dcmread(p)
    d = {}
    for kw in kws:
        if kw == "TransferSyntaxUID":
            d[kw] = str(ds.file_meta.TransferSyntaxUID)
        elif kw in ds:
            v = ds[kw].value
            d[kw] = str(v) if v not in (None, "") else None
    out[p] = d
print(json.dumps(out))
]]
local function read_tags(paths, keywords)
  return cjson.decode((H.check_run("/usr/bin/python3 -c " .. H.q(READ_TAGS), cjson.encode({ paths, keywords }))))
end

local files_under = H.files_under

local function table_rows(tbl)
  local text = H.file_bytes(em.gcs .. "/_bigquery/" .. tbl .. ".jsonl")
  if not text then return nil end
  local rows = {}
  for line in text:gmatch("[^\n]+") do rows[#rows + 1] = assert(cjson.decode(line), line) end
  return rows
end

describe("emulator migrations: import from Cloud Storage", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null, check_conflicts = true }) end)

  it("imports 100 matching files of which 3 are not DICOM: counters move with the polls, end 97/3 with an error, the 97 in Orthanc", function()
    config({ operation_polls = 3 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    -- 97 instances across three levels (** crosses them), a DICOM file that the pattern
    -- does not match, three files that match and are no DICOM.
    local made = H.gen_many({
      { count = 40, dir = dir .. "/in", study = study, size = 512 },
      { count = 40, dir = dir .. "/in/a", study = study, size = 512 },
      { count = 17, dir = dir .. "/in/a/b", study = study, size = 512 },
      { count = 1, dir = dir .. "/elsewhere", study = study, size = 512 },
    })
    H.check_run("mv " .. H.q(made[98].path) .. " " .. H.q(dir .. "/in/not-matched.txt"))
    H.write_file(dir .. "/in/readme.dcm", "not DICOM at all\n")
    H.write_file(dir .. "/in/a/empty.dcm", "")
    H.write_file(dir .. "/in/a/b/truncated.dcm", H.file_bytes(made[1].path):sub(1, 140))
    local bad = { "gs://" .. bucket .. "/in/a/b/truncated.dcm", "gs://" .. bucket .. "/in/a/empty.dcm",
      "gs://" .. bucket .. "/in/readme.dcm" }
    local reads = em:count("gcs_objects_read")

    local op = start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/in/**.dcm" } })
    -- listing is not polling: the whole file list is pending
    local listed
    for _, o in ipairs(ok(em:api("GET", op:match("^(.*/operations)/"))).operations) do
      if o.name == op then listed = o end
    end
    assert.same({ pending = "100" }, listed.metadata.counter)
    local done, seen = wait(op)
    assert.equal(3, #seen)
    for i, c in ipairs(seen) do
      -- after poll i of 3, i quarters of the files are done (int64s as strings)
      assert.equal(25 * i, (tonumber(c.success) or 0) + (tonumber(c.failure) or 0))
      assert.equal(tostring(100 - 25 * i), c.pending)
    end
    assert.same({ success = "97", failure = "3" }, done.metadata.counter)
    assert.equal(HC .. "dicom.DicomService.ImportDicomData", done.metadata.apiMethodName)
    assert.equal(3, done.error.code)
    assert.matches("^3 of 100 files failed to import", done.error.message)
    assert.is_nil(done.response)
    assert.truthy(done.metadata.logsUrl:find(quote(op), 1, true), done.metadata.logsUrl)
    assert.matches("^https://console%.cloud%.google%.com/logs/", done.metadata.logsUrl)
    -- the logs (Cloud Logging's part) name each file that failed, and why
    local named = {}
    for _, e in ipairs(logs(op)) do
      named[#named + 1] = e.resource
      assert.matches("not a DICOM instance", e.error.message)
    end
    table.sort(named)
    table.sort(bad)
    assert.same(bad, named)
    -- the 97 are in Orthanc, the unmatched one is not; only the 100 matching files were read
    local sops, n = H.orthanc_sops(study)
    assert.equal(97, n)
    assert.is_nil(sops[made[98].sop_instance_uid])
    assert.equal(100, em:count("gcs_objects_read") - reads)
    -- done stays done
    assert.same(done.metadata.counter, poll(op).metadata.counter)
  end)

  it("imports with * (one level) and ?, and a file already stored with the same bytes is a success", function()
    config({ operation_polls = 0 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local made = H.gen_many({ { count = 2, dir = dir .. "/x", size = 256 }, { count = 1, dir = dir .. "/x/deeper", size = 256 } })
    H.check_run("cp " .. H.q(made[1].path) .. " " .. H.q(dir .. "/x/c1.dcm") .. " && cp " .. H.q(made[1].path) .. " "
      .. H.q(dir .. "/x/c2.dcm"))
    local o = wait(start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/x/*.dcm" } }))
    assert.same({ success = "4" }, o.metadata.counter)   -- not deeper/
    assert.is_nil(H.orthanc_find_instance(made[3].sop_instance_uid))
    o = wait(start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/x/c?.dcm" } }))
    assert.same({ success = "2" }, o.metadata.counter)
    assert.is_nil(o.error)
    assert.equal("type.googleapis.com/" .. HC .. "dicom.ImportDicomDataResponse", o.response["@type"])
  end)

  it("a file whose SOP Instance UID Orthanc holds with other bytes is a failure, named in the logs", function()
    config({ operation_polls = 0 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local f = H.gen_dicom({ count = 1, dir = dir, size = 300 })[1]
    H.orthanc_put_file(f.path)
    local other = H.gen_dicom({ count = 1, dir = H.tmpdir(), sop = f.sop_instance_uid, size = 600 })[1]
    H.check_run("cp " .. H.q(other.path) .. " " .. H.q(dir .. "/changed.dcm"))
    local o = wait(start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/*.dcm" } }))
    assert.same({ success = "1", failure = "1" }, o.metadata.counter)
    local entries = logs(o.name)
    assert.equal(1, #entries)
    assert.equal("gs://" .. bucket .. "/changed.dcm", entries[1].resource)
    assert.matches("already exists with different content", entries[1].error.message)
    assert.equal(H.sha256(f.path), H.sha256_string(H.orthanc_instance_file(f.sop_instance_uid)))
  end)

  it("no matching file, or no such bucket: the operation ends with NOT_FOUND", function()
    config({ operation_polls = 1 })
    local _, store = em:new_dicom_store()
    local bucket = em:new_bucket()
    for _, uri in ipairs({ "gs://" .. bucket .. "/nothing/**.dcm", "gs://no-such-bucket-" .. math.random(1, 1e9) .. "/x.dcm" }) do
      local o = wait(start(store .. ":import", { gcsSource = { uri = uri } }))
      assert.equal(5, o.error.code, uri)
      assert.is_nil(o.metadata.counter)
    end
  end)

  it("refuses a gs:// URI without a bucket, traversal and bad names before anything is read, naming gcsSource.uri", function()
    local _, store = em:new_dicom_store()
    local ops, reads = em:count("operations_created"), em:count("gcs_objects_read")
    for _, uri in ipairs({
      "gs://", "gs:///x.dcm", "gs://bkt", "gs://bkt/", "gs://bkt/../etc/passwd", "gs://bkt/a/../../x.dcm",
      "gs://bkt/./x.dcm", "gs://bkt/..", "gs://bkt//x.dcm", "gs://bkt/a//**", "gs://Bkt/x", "gs://ab/x",
      "gs://" .. string.rep("a", 64) .. "/x", "gs://192.168.1.1/x", "gs://goog-x/x", "gs://my-google-b/x",
      "gs://-bkt/x", "gs://bkt-/x", "gs://b..kt/x", "gs://bkt/**/x.dcm", "gs://bkt/a/**/**", "gs://bkt/*/**.dcm",
      "gs://bkt/x\ny.dcm", "gs://bkt/x\0.dcm", "gs://bkt/" .. string.rep("x", 1025), "GS://bkt/x", "gs:/bkt/x",
      "/etc/passwd", "file:///etc/passwd", "gs:bkt/x", "",
    }) do
      local e = envelope(em:api("POST", store .. ":import", nil, { gcsSource = { uri = uri } }), 400,
        "INVALID_ARGUMENT", "gcsSource.uri")
      assert.truthy(e.message:find("gcsSource.uri", 1, true), e.message)
      assert.is_nil(e.message:find("[%c]"), e.message)
    end
    envelope(em:api("POST", store .. ":import", nil, { gcsSource = { uri = "gs://bkt/x", bucket = "y" } }), 400,
      "INVALID_ARGUMENT", "gcsSource.bucket")
    assert.equal(ops, em:count("operations_created"))
    assert.equal(reads, em:count("gcs_objects_read"))
  end)

  it("reaches nothing through a symbolic link: a linked bucket, a linked directory, a linked file", function()
    config({ operation_polls = 0 })
    local _, store = em:new_dicom_store()
    local outside = H.tmpdir()
    local study = H.fresh_uid()
    H.gen_dicom({ count = 2, dir = outside, study = study, size = 256 })
    local bucket, dir = em:new_bucket()
    local linked = "linked-" .. math.random(1, 1e9)
    H.check_run(table.concat({ "ln -s", H.q(outside), H.q(em.gcs .. "/" .. linked), "&& mkdir", H.q(dir .. "/d"),
      "&& ln -s", H.q(outside), H.q(dir .. "/d/sub"), "&& for f in", H.q(outside) .. "/*.dcm",
      "; do ln -s \"$f\" ", H.q(dir .. "/d/") .. "\"$(basename \"$f\")\"; done" }, " "))
    local reads = em:count("gcs_objects_read")
    local o = wait(start(store .. ":import", { gcsSource = { uri = "gs://" .. linked .. "/**" } }))
    assert.equal(5, o.error.code)
    assert.matches("bucket not found", o.error.message)
    o = wait(start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/d/**" } }))
    assert.equal(5, o.error.code)
    assert.matches("No files found", o.error.message)
    local _, n = H.orthanc_sops(study)
    assert.equal(0, n)
    assert.equal(reads, em:count("gcs_objects_read"))
  end)

  it("cancel mid-import stops it: what was done stays, nothing more is imported", function()
    config({ operation_polls = 4 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    H.gen_dicom({ count = 40, dir = dir, study = study, size = 256 })
    local op = start(store .. ":import", { gcsSource = { uri = "gs://" .. bucket .. "/*.dcm" } })
    local first = poll(op)
    assert.same({ success = "8", pending = "32" }, first.metadata.counter)
    assert.same({}, ok(em:api("POST", op .. ":cancel", nil, {})))
    local o = poll(op)
    assert.is_true(o.done)
    assert.equal(1, o.error.code)
    assert.is_true(o.metadata.cancelRequested)
    assert.same({ success = "8" }, o.metadata.counter)
    for _ = 1, 3 do assert.same(o.metadata.counter, poll(op).metadata.counter) end
    local _, n = H.orthanc_sops(study)
    assert.equal(8, n)
  end)
end)

describe("emulator migrations: export", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  -- A store holding 3 instances (2 series of one study) stored through the emulator, and a file
  -- Orthanc holds that the store did not store: the store's name and the 3 entries.
  local function filled_store(opts)
    local _, store = em:new_dicom_store()
    local study, s1, s2 = H.fresh_uid(), H.fresh_uid(), H.fresh_uid()
    local files = H.gen_many({
      { count = 2, study = study, series = s1, size = 700, ts = opts and opts.ts, accession_number = "ACC-1" },
      { count = 1, study = study, series = s2, size = 900, ts = opts and opts.ts, accession_number = "ACC-1" },
    })
    stow(store, files)
    H.orthanc_put_file(H.gen_dicom({ count = 1, study = study, size = 128 })[1].path)
    return store, files
  end

  it("writes each instance of the store as <prefix>/<study>/<series>/<instance>.dcm, the bytes Orthanc holds", function()
    local store, files = filled_store()
    local bucket, dir = em:new_bucket()
    local writes = em:count("gcs_objects_written")
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket .. "/out/run1" } }))
    assert.is_nil(o.error)
    assert.same({ success = "3" }, o.metadata.counter)
    assert.equal(HC .. "dicom.DicomService.ExportDicomData", o.metadata.apiMethodName)
    local want = {}
    for _, f in ipairs(files) do
      want[#want + 1] = "out/run1/" .. f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid .. ".dcm"
    end
    table.sort(want)
    assert.same(want, files_under(dir))   -- the instance the store did not store is not there
    for _, f in ipairs(files) do
      local path = dir .. "/out/run1/" .. f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid .. ".dcm"
      assert.equal(H.sha256_string(H.orthanc_instance_file(f.sop_instance_uid)), H.sha256(path))
      assert.equal(H.sha256(f.path), H.sha256(path))
    end
    assert.equal(3, em:count("gcs_objects_written") - writes)
    -- again, with a trailing slash: the same objects, overwritten (no temporary file left)
    wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket .. "/out/run1/",
      mimeType = "application/dicom; transfer-syntax=*" } }))
    assert.same(want, files_under(dir))
  end)

  it("transcodes when mimeType names a transfer syntax; refuses other types clearly", function()
    local store, files = filled_store({ ts = "big" })
    local bucket, dir = em:new_bucket()
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket,
      mimeType = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1" } }))
    assert.same({ success = "3" }, o.metadata.counter)
    local paths = {}
    for _, name in ipairs(files_under(dir)) do paths[#paths + 1] = dir .. "/" .. name end
    assert.equal(3, #paths)
    local tags = read_tags(paths, { "TransferSyntaxUID", "SOPInstanceUID" })
    for _, f in ipairs(files) do
      local p = dir .. "/" .. f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid .. ".dcm"
      assert.equal("1.2.840.10008.1.2.1", tags[p].TransferSyntaxUID)
      assert.equal(f.sop_instance_uid, tags[p].SOPInstanceUID)
    end
    local ops = em:count("operations_created")
    for _, c in ipairs({ { "image/png", 501, "UNIMPLEMENTED" }, { "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50", 501,
      "UNIMPLEMENTED" }, { "application/octet-stream", 501, "UNIMPLEMENTED" }, { "text/plain", 400, "INVALID_ARGUMENT" },
      { "application/dicom; transfer-syntax=1.2.3", 400, "INVALID_ARGUMENT" },
      { "application/dicom; charset=utf-8", 400, "INVALID_ARGUMENT" } }) do
      local e = envelope(em:api("POST", store .. ":export", nil, { gcsDestination = { uriPrefix = "gs://" .. bucket,
        mimeType = c[1] } }), c[2], c[3], c[2] == 400 and "gcsDestination.mimeType" or nil)
      assert.truthy(e.message:find("mimeType", 1, true), e.message)
    end
    assert.equal(ops, em:count("operations_created"))
  end)

  it("ends with NOT_FOUND when the bucket does not exist; refuses traversal in the prefix; writes nothing through a link", function()
    local store = filled_store()
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://no-bucket-" .. math.random(1, 1e9) } }))
    assert.equal(5, o.error.code)
    for _, prefix in ipairs({ "gs://", "gs://bkt/../../x", "gs://bkt/a/./b", "gs://bkt//x", "gs://bkt/x*",
      "gs:///x" }) do
      envelope(em:api("POST", store .. ":export", nil, { gcsDestination = { uriPrefix = prefix } }), 400,
        "INVALID_ARGUMENT", "gcsDestination.uriPrefix")
    end
    local bucket, dir = em:new_bucket()
    local outside = H.tmpdir()
    H.check_run("ln -s " .. H.q(outside) .. " " .. H.q(dir .. "/evil"))
    o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket .. "/evil" } }))
    assert.same({ failure = "3" }, o.metadata.counter)
    assert.equal(3, o.error.code)
    assert.same({}, files_under(outside))
  end)

  it("forgets what a DICOMweb delete removed: the export holds the rest, without failures", function()
    local store, files = filled_store()
    local function delete(path)
      return ok(em:api("DELETE", store .. "/dicomWeb/" .. path))
    end
    -- files[3] is alone in its series; files[1] and files[2] share one
    delete("studies/" .. files[3].study_uid .. "/series/" .. files[3].series_uid)
    delete("studies/" .. files[1].study_uid .. "/series/" .. files[1].series_uid .. "/instances/" .. files[1].sop_instance_uid)
    local bucket, dir = em:new_bucket()
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket } }))
    assert.is_nil(o.error)
    assert.same({ success = "1" }, o.metadata.counter)
    assert.same({ files[2].study_uid .. "/" .. files[2].series_uid .. "/" .. files[2].sop_instance_uid .. ".dcm" },
      files_under(dir))
  end)

  it("names no object from an instance whose UIDs are not UIDs ('..' as its study): that instance fails, nothing lands outside", function()
    local _, store = em:new_dicom_store()
    local escape = "escape-" .. math.random(1, 1e9)
    local good = H.gen_dicom({ count = 1, size = 256 })[1]
    local evil = H.gen_dicom({ count = 1, size = 256, study = "..", series = "../../" .. escape })[1]
    stow(store, { good, evil })   -- the emulator and Orthanc take it as it is
    local bucket, dir = em:new_bucket()
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket .. "/x" } }))
    assert.same({ success = "1", failure = "1" }, o.metadata.counter)
    assert.same({ "x/" .. good.study_uid .. "/" .. good.series_uid .. "/" .. good.sop_instance_uid .. ".dcm" },
      files_under(dir))
    local entries = logs(o.name)
    assert.matches("is not a UID", entries[1].error.message)
    local found = H.check_run("find " .. H.q(em.gcs .. "/..") .. " -name " .. H.q(escape .. "*"))
    assert.equal("", found)
  end)

  it("writes one JSON line per instance into bq://P.D.T, honouring each write disposition", function()
    local store, files = filled_store()
    local function export(tbl, dest, polls)
      dest.tableUri = "bq://test-project.migr." .. tbl
      return wait(start(store .. ":export", { bigqueryDestination = dest }), polls)
    end
    local tbl = "t_" .. math.random(1, 1e9)
    local o = export(tbl, { writeDisposition = "WRITE_EMPTY" })   -- a new table
    assert.is_nil(o.error)
    assert.same({ success = "3" }, o.metadata.counter)
    local rows = table_rows("test-project.migr." .. tbl)
    assert.equal(3, #rows)
    local by_sop = {}
    for _, row in ipairs(rows) do by_sop[row.SOPInstanceUID] = row end
    for _, f in ipairs(files) do
      local row = assert(by_sop[f.sop_instance_uid], f.sop_instance_uid)
      assert.equal(f.study_uid, row.StudyInstanceUID)
      assert.equal(f.series_uid, row.SeriesInstanceUID)
      assert.equal("HC-TEST", row.PatientID)
      assert.same({ Alphabetic = "Test^Healthcare" }, row.PatientName)
      assert.equal("OT", row.Modality)
      assert.equal("2024-01-01", row.StudyDate)                -- DA as a DATE
      assert.equal("12:00:00", row.StudyTime)                  -- TM as a TIME
      assert.same({ "DERIVED", "SECONDARY" }, row.ImageType)   -- multi-valued: an array
      assert.equal(f.sop_class_uid, row.SOPClassUID)
      assert.is_nil(row.PixelData)
    end
    local t = "test-project.migr." .. tbl
    -- WRITE_EMPTY on a table with rows: the operation fails, the table stays
    o = export(tbl, { writeDisposition = "WRITE_EMPTY" })
    assert.equal(9, o.error.code)
    assert.matches("already exists and holds rows", o.error.message)
    assert.equal(3, #table_rows(t))
    -- force = false (no disposition) refuses an existing table, even an empty one
    o = export(tbl, { force = false })
    assert.equal(9, o.error.code)
    -- WRITE_APPEND appends, WRITE_TRUNCATE replaces, force = true replaces
    assert.is_nil(export(tbl, { writeDisposition = "WRITE_APPEND" }).error)
    assert.equal(6, #table_rows(t))
    assert.is_nil(export(tbl, { writeDisposition = "WRITE_TRUNCATE", force = false }).error)
    assert.equal(3, #table_rows(t))
    assert.is_nil(export(tbl, { force = true }).error)
    assert.equal(3, #table_rows(t))
    -- an existing empty table: WRITE_EMPTY writes it, force = false does not
    local empty = "e_" .. math.random(1, 1e9)
    H.write_file(em.gcs .. "/_bigquery/test-project.migr." .. empty .. ".jsonl", "")
    assert.equal(9, export(empty, {}).error.code)
    assert.is_nil(export(empty, { writeDisposition = "WRITE_EMPTY" }).error)
    assert.equal(3, #table_rows("test-project.migr." .. empty))
    -- a cancelled export leaves the table as it was, and no temporary file
    config({ operation_polls = 3 })
    local op = start(store .. ":export", { bigqueryDestination = { tableUri = "bq://test-project.migr." .. tbl,
      writeDisposition = "WRITE_TRUNCATE" } })
    assert.same({ pending = "3" }, poll(op).metadata.counter)   -- 3 * 1 // 4 = 0 done
    poll(op)                                                     -- 3 * 2 // 4 = 1 done
    ok(em:api("POST", op .. ":cancel", nil, {}))
    assert.equal(1, poll(op).error.code)
    assert.equal(3, #table_rows(t))
    local listing = H.check_run("ls -A " .. H.q(em.gcs .. "/_bigquery"))
    assert.is_nil(listing:find("tmp", 1, true), listing)
  end)

  it("refuses a malformed bq:// URI, a bad write disposition, both destinations, naming the field", function()
    local store = filled_store()
    local ops = em:count("operations_created")
    for _, uri in ipairs({ "bq://", "bq://p", "bq://test-project.d", "bq://test-project.d.t.x", "bq://Test-Project.d.t",
      "bq://test-project.d-x.t", "bq://test-project..t", "bq://test-project.d.t/x", "bq://a.d.t" }) do
      envelope(em:api("POST", store .. ":export", nil, { bigqueryDestination = { tableUri = uri } }), 400,
        "INVALID_ARGUMENT", "bigqueryDestination.tableUri")
    end
    envelope(em:api("POST", store .. ":export", nil, { bigqueryDestination = { tableUri = "bq://test-project.d.t",
      writeDisposition = "WRITE_SOMETIMES" } }), 400, "INVALID_ARGUMENT", "bigqueryDestination.writeDisposition")
    envelope(em:api("POST", store .. ":export", nil, { bigqueryDestination = { tableUri = "bq://test-project.d.t",
      force = "yes" } }), 400, "INVALID_ARGUMENT", "bigqueryDestination.force")
    envelope(em:api("POST", store .. ":export", nil, { bigqueryDestination = { tableUri = "bq://test-project.d.t" },
      gcsDestination = { uriPrefix = "gs://bkt/x" } }), 400, "INVALID_ARGUMENT", "bigqueryDestination")
    assert.equal(ops, em:count("operations_created"))
  end)
end)

describe("emulator migrations: de-identify", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  -- Exports a store to a fresh bucket and reads the tags of what it holds: path -> tags.
  local function held_tags(store, keywords)
    local bucket, dir = em:new_bucket()
    local o = wait(start(store .. ":export", { gcsDestination = { uriPrefix = "gs://" .. bucket } }))
    assert.is_nil(o.error)
    local paths = {}
    for _, name in ipairs(files_under(dir)) do paths[#paths + 1] = dir .. "/" .. name end
    return read_tags(paths, keywords), #paths
  end

  it("copies each instance without the removeList's tags, under new UIDs; the source is untouched; a second time is 409", function()
    local dataset, store = em:new_dicom_store()
    local files = H.gen_dicom({ count = 2, size = 400, accession_number = "ACC-9", study_description = "knee" })
    stow(store, files)
    local dest = dataset .. "/dicomStores/" .. fresh("deid")
    local o = wait(start(store .. ":deidentify", { destinationStore = dest,
      config = { dicom = { removeList = { tags = { "PatientName", "00080050" } } } } }))
    assert.is_nil(o.error)
    assert.same({ success = "2" }, o.metadata.counter)
    assert.equal(HC .. "deidentify.DeidentifyService.DeidentifyDicomStore", o.metadata.apiMethodName)
    local tags, n = held_tags(dest, { "PatientName", "AccessionNumber", "PatientID", "StudyDescription",
      "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows" })
    assert.equal(2, n)
    local sources, studies = {}, {}
    for _, f in ipairs(files) do sources[f.sop_instance_uid] = true end
    for _, t in pairs(tags) do
      assert.is_nil(t.PatientName)
      assert.is_nil(t.AccessionNumber)
      assert.equal("HC-TEST", t.PatientID)
      assert.equal("knee", t.StudyDescription)
      assert.is_string(t.Rows)
      assert.matches("^2%.25%.%d+$", t.SOPInstanceUID)
      assert.is_nil(sources[t.SOPInstanceUID])
      studies[t.StudyInstanceUID] = true
    end
    -- one study stays one study under its new UID
    local count = 0
    for uid in pairs(studies) do
      count = count + 1
      assert.matches("^2%.25%.%d+$", uid)
    end
    assert.equal(1, count)
    -- the sources, byte for byte
    for _, f in ipairs(files) do
      assert.equal(H.sha256(f.path), H.sha256_string(H.orthanc_instance_file(f.sop_instance_uid)))
    end
    envelope(em:api("POST", store .. ":deidentify", nil, { destinationStore = dest }), 409, "ALREADY_EXISTS")
  end)

  it("keepList keeps only those tags (and what valid DICOM needs); the profiles approximate Google's", function()
    local dataset, store = em:new_dicom_store()
    stow(store, H.gen_dicom({ count = 1, size = 300, accession_number = "ACC-2", study_description = "hand" }))
    local keywords = { "PatientName", "PatientID", "AccessionNumber", "StudyDescription", "Modality", "Rows",
      "SOPClassUID", "StudyDate" }
    local function deid(dicom)
      local dest = dataset .. "/dicomStores/" .. fresh("d")
      local o = wait(start(store .. ":deidentify", { destinationStore = dest, config = { dicom = dicom } }))
      assert.same({ success = "1" }, o.metadata.counter)
      local tags = held_tags(dest, keywords)
      local _, t = next(tags)
      return t
    end
    local t = deid({ keepList = { tags = { "PatientID", "00081030" } } })
    assert.equal("HC-TEST", t.PatientID)
    assert.equal("hand", t.StudyDescription)
    assert.is_nil(t.PatientName)
    assert.is_nil(t.AccessionNumber)
    assert.is_nil(t.StudyDate)
    assert.equal("OT", t.Modality)
    assert.is_string(t.Rows)
    t = deid({ filterProfile = "MINIMAL_KEEP_LIST_PROFILE" })
    assert.is_nil(t.PatientID)
    assert.is_nil(t.StudyDescription)
    assert.is_string(t.SOPClassUID)
    assert.is_string(t.Rows)
    t = deid({ filterProfile = "ATTRIBUTE_CONFIDENTIALITY_BASIC_PROFILE" })
    -- Z: present and emptied (read as null); X: removed
    assert.equal(cjson.null, t.PatientName)
    assert.equal(cjson.null, t.PatientID)
    assert.equal(cjson.null, t.AccessionNumber)
    assert.equal("hand", t.StudyDescription)
    t = deid({ filterProfile = "KEEP_ALL_PROFILE" })
    assert.equal("Test^Healthcare", t.PatientName)
    assert.equal("ACC-2", t.AccessionNumber)
  end)

  it("datasets.deidentify copies every DICOM store of the dataset into the new dataset's", function()
    local dataset, store = em:new_dicom_store()
    ok(em:api("POST", dataset .. "/dicomStores", { dicomStoreId = "t" }, {}))
    stow(store, H.gen_dicom({ count = 2, size = 256 }))
    stow(dataset .. "/dicomStores/t", H.gen_dicom({ count = 1, size = 256 }))
    local copy = LOCATION .. "/datasets/" .. fresh("copy")
    local o = wait(start(dataset .. ":deidentify", { destinationDataset = copy,
      config = { dicom = { removeList = { tags = { "PatientName" } } } } }))
    assert.is_nil(o.error)
    assert.same({ success = "3" }, o.metadata.counter)
    assert.equal(HC .. "dataset.DatasetService.DeidentifyDataset", o.metadata.apiMethodName)
    local tags, n = held_tags(copy .. "/dicomStores/s", { "PatientName" })
    assert.equal(2, n)
    for _, t in pairs(tags) do assert.is_nil(t.PatientName) end
    local _, n2 = held_tags(copy .. "/dicomStores/t", { "PatientName" })
    assert.equal(1, n2)
  end)

  it("reads the config from gcsConfigUri; refuses a bad config naming the field, and what it does not serve with 501", function()
    local dataset, store = em:new_dicom_store()
    stow(store, H.gen_dicom({ count = 1, size = 256 }))
    local bucket, dir = em:new_bucket()
    H.write_file(dir .. "/deid.json", cjson.encode({ dicom = { removeList = { tags = { "PatientID" } } } }))
    local dest = dataset .. "/dicomStores/" .. fresh("g")
    local o = wait(start(store .. ":deidentify", { destinationStore = dest, gcsConfigUri = "gs://" .. bucket .. "/deid.json" }))
    assert.same({ success = "1" }, o.metadata.counter)
    local tags = held_tags(dest, { "PatientID", "PatientName" })
    local _, t = next(tags)
    assert.is_nil(t.PatientID)
    assert.equal("Test^Healthcare", t.PatientName)
    local ops = em:count("operations_created")
    local function refused(body, status, name, field)
      body.destinationStore = body.destinationStore or dataset .. "/dicomStores/" .. fresh("x")
      local e = envelope(em:api("POST", store .. ":deidentify", nil, body), status, name, field)
      assert.is_nil(e.message:find("[%c]"), e.message)
      return e
    end
    refused({ config = { dicom = { removeList = { tags = { "NoSuchKeyword" } } } } }, 400, "INVALID_ARGUMENT",
      "config.dicom.removeList.tags")
    refused({ config = { dicom = { keepList = { tags = { "PatientID" } }, removeList = { tags = { "PatientID" } } } } },
      400, "INVALID_ARGUMENT", "config.dicom.removeList")
    refused({ config = { dicom = { filterProfile = "SOME_PROFILE" } } }, 400, "INVALID_ARGUMENT", "config.dicom.filterProfile")
    refused({ config = { dicom = { removeList = { tag = { "PatientID" } } } } }, 400, "INVALID_ARGUMENT",
      "config.dicom.removeList.tag")
    refused({ config = { dicom = { skipIdRedaction = "yes" } } }, 400, "INVALID_ARGUMENT", "config.dicom.skipIdRedaction")
    refused({ config = { dicom = { skipIdRedaction = true } } }, 501, "UNIMPLEMENTED")
    refused({ config = { dicom = { filterProfile = "DEIDENTIFY_TAG_CONTENTS" } } }, 501, "UNIMPLEMENTED")
    refused({ config = { image = { textRedactionMode = "REDACT_ALL_TEXT" } } }, 501, "UNIMPLEMENTED")
    refused({ filterConfig = { resourcePathsGcsUri = "gs://" .. bucket .. "/paths.txt" } }, 501, "UNIMPLEMENTED")
    refused({ gcsConfigUri = "gs://" .. bucket .. "/missing.json" }, 400, "INVALID_ARGUMENT", "gcsConfigUri")
    refused({ gcsConfigUri = "gs://" .. bucket .. "/../x.json" }, 400, "INVALID_ARGUMENT", "gcsConfigUri")
    H.write_file(dir .. "/bad.json", "{not json")
    refused({ gcsConfigUri = "gs://" .. bucket .. "/bad.json" }, 400, "INVALID_ARGUMENT", "gcsConfigUri")
    assert.equal(ops, em:count("operations_created"))
  end)
end)
