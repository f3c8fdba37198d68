-- SPDX-License-Identifier: MIT
-- The server-side routes as commands and as Lua (issue 16): `healthcare import`, `export`,
-- `deidentify` and `operations`, and healthcare.migrate / store:import, store:export,
-- store:deidentify, against a private emulator whose Cloud Storage is a directory of its own
-- (spec/support/emulator_gcs.py does Google's side: files really imported into Orthanc,
-- really exported, really de-identified; the counters move with the polls).
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = H.json
local healthcare = require "healthcare"
local migrate = require "healthcare.migrate"

local em = require("support.emulator_instance").start({ gcs = true })
local LOCATION = "projects/test-project/locations/us-central1"
local POLL = "0.05"   -- --poll-interval: the emulator answers at once

teardown(function() em:stop() end)

local function ok(r)
  assert(r.status == 200, "expected 200, got " .. tostring(r.status) .. ": " .. r.body)
  return r.json
end

local function config(t) return em:control("config", t) end

local fresh = H.fresh_id


-- The command's words with the emulator's endpoint and token after `args`.
local function words(args)
  local w = {}
  for i, a in ipairs(args) do w[i] = a end
  for _, a in ipairs({ "--endpoint", em.endpoint, "--access-token", em.token, "--no-token-cache" }) do
    w[#w + 1] = a
  end
  for _, a in ipairs(args) do
    if a == "--poll-interval" then return w end
  end
  w[#w + 1] = "--poll-interval"
  w[#w + 1] = POLL
  return w
end

-- Runs the command against the emulator: stdout, stderr, exit code.
local function hc(args)
  return H.healthcare(words(args))
end

-- Every request the emulator's admin surface answered (import, export, operations, ...).
local function admin_requests()
  local n = 0
  for _, c in pairs(em:stats().admin_requests or {}) do n = n + (tonumber(c) or 0) end
  return n
end

local function poll(op) return ok(em:api("GET", op)) end

-- Stores files into a store through the emulator with `healthcare store` (the store then holds
-- them: its exports and de-identifications see them).
local function stow(store, files)
  local args = { "store", store, "--endpoint", em.endpoint, "--access-token", em.token, "--no-token-cache" }
  for _, f in ipairs(files) do args[#args + 1] = f.path end
  local _, se, code = H.healthcare(args)
  assert(code == 0, se)
end

local files_under = H.files_under

-- Tags of DICOM files, read with pydicom in one run: path -> { keyword -> text }.
local READ_TAGS = [[
import json, sys, pydicom
paths, kws = json.load(sys.stdin)
out = {}
for p in paths:
    ds = pydicom.dcmread(p)
    out[p] = {kw: str(ds[kw].value) for kw in kws if kw in ds and ds[kw].value not in (None, "")}
print(json.dumps(out))
]]
local function read_tags(paths, keywords)
  return cjson.decode((H.check_run("/usr/bin/python3 -c " .. H.q(READ_TAGS), cjson.encode({ paths, keywords }))))
end

local function no_raw_control(text)
  assert.is_nil(text:find("\27", 1, true), text)
end

describe("healthcare import", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  it("imports 100 files of which 3 are not DICOM: progress lines, counters 97/3, the logs URL, exit 1", function()
    config({ operation_polls = 3 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    H.gen_many({ { count = 60, dir = dir .. "/in", study = study, size = 400 },
      { count = 37, dir = dir .. "/in/deeper", study = study, size = 400 } })
    H.write_file(dir .. "/in/readme.dcm", "not DICOM at all\n")
    H.write_file(dir .. "/in/empty.dcm", "")
    H.write_file(dir .. "/in/deeper/half.dcm", "DICM")
    local so, se, code = hc({ "import", store, "gs://" .. bucket .. "/in/**.dcm" })
    assert.equal(1, code, se)
    assert.equal("", so)
    -- a progress line each time the counters moved (not a terminal: one per change)
    local seen = {}
    for s, f, p in se:gmatch("import: success (%d+), failure (%d+), pending (%d+); ") do
      seen[#seen + 1] = { tonumber(s), tonumber(f), tonumber(p) }
    end
    assert.is_true(#seen >= 3, se)
    for _, c in ipairs(seen) do assert.equal(100, c[1] + c[2] + c[3]) end
    assert.is_true(seen[1][3] > 0, se)
    assert.matches("import failed in %d+ s: success 97, failure 3\n", se)
    local op = se:match("\noperation (projects/%S+/operations/%d+)\n")
    assert.truthy(op, se)
    local logs = se:match("\nlogs (https://console%.cloud%.google%.com/logs/%S+)")
    assert.truthy(logs, se)
    assert.equal(poll(op).metadata.logsUrl, logs)
    assert.matches("3 of 100 files failed to import", se)
    local _, n = H.orthanc_sops(study)
    assert.equal(97, n)
  end)

  it("exit 0 when every file is imported; --no-wait prints the operation's name, and operations wait waits for it", function()
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    H.gen_dicom({ count = 4, dir = dir, study = study, size = 300 })
    local so, se, code = hc({ "import", store, "gs://" .. bucket .. "/*.dcm", "--no-wait" })
    assert.equal(0, code, se)
    local op = so:match("^(projects/%S+/operations/%d+)\n$")
    assert.truthy(op, so)
    assert.is_nil(poll(op).done)   -- not waited for: still running
    _, se, code = hc({ "operations", "wait", op })
    assert.equal(0, code, se)
    assert.matches("operation done in %d+ s: success 4, failure 0\n", se)
    local _, n = H.orthanc_sops(study)
    assert.equal(4, n)
    -- a FHIR store: --content-structure goes into the request
    local dataset = store:match("^(.*)/dicomStores/")
    ok(em:api("POST", dataset .. "/fhirStores", { fhirStoreId = "f" }, { version = "R4" }))
    _, se, code = hc({ "import", dataset .. "/fhirStores/f", "gs://" .. bucket .. "/x.ndjson",
      "--content-structure", "RESOURCE" })
    assert.equal(0, code, se)
    assert.matches("import done", se)
    _, se, code = hc({ "import", dataset .. "/fhirStores/f", "gs://" .. bucket .. "/x.ndjson",
      "--content-structure", "LINES" })
    assert.equal(2, code, se)
    assert.matches("content structure 'LINES' is not one of BUNDLE", se)
  end)

  it("an operation that ends with an error: exit 1, Google's message shown printable", function()
    local _, store = em:new_dicom_store()
    local bucket = em:new_bucket()
    config({ operation_error = { code = 13, message = "disk \27[31mfull\r\nreally" } })
    local _, se, code = hc({ "import", store, "gs://" .. bucket .. "/*.dcm" })
    assert.equal(1, code, se)
    assert.matches("import failed in %d+ s", se)
    assert.truthy(se:find("disk \\x1b[31mfull\\r\\nreally (code 13 INTERNAL)", 1, true), se)
    no_raw_control(se)
  end)

  it("refuses bad inputs before any request: gs:// without a bucket or object, no store name, a store that is none", function()
    local dataset, store = em:new_dicom_store()
    local before, ops = admin_requests(), em:count("operations_created")
    for _, case in ipairs({
      { { "import", store, "gs://" }, "names no bucket" },
      { { "import", store, "gs:///x/**.dcm" }, "names no bucket" },
      { { "import", store, "gs://bucket-x" }, "names no object" },
      { { "import", store, "gs://Bad_Bucket/x" }, "invalid bucket name" },
      { { "import", store, "/local/dir/*.dcm" }, "is not a Cloud Storage URI" },
      { { "import", store, "gs://bkt/x\27[2J" }, "control character" },
      { { "import", dataset, "gs://bkt/x.dcm" }, "is not a dicomStore or fhirStore name" },
      { { "import", "projects/p/dicomStores/s", "gs://bkt/x.dcm" }, "is not a dicomStore or fhirStore name" },
      { { "import", "http://127.0.0.1:1/dicom-web", "gs://bkt/x.dcm" }, "is not a dicomStore" },
      { { "import", store, "gs://bkt/x.dcm", "--content-structure", "BUNDLE" }, "applies to a FHIR store" },
      { { "export", store, "bq://test-project.only_dataset" }, "is not a BigQuery table" },
      { { "export", store, "bq://a.d.t" }, "is not a BigQuery table" },
      { { "export", store, "bq://test-project.d.t.x" }, "is not a BigQuery table" },
      { { "export", store, "gs://" }, "names no bucket" },
      { { "export", store, "gs://bkt/x", "--force" }, "apply to a BigQuery destination" },
      { { "export", store, "bq://test-project.d.t", "--write-disposition", "WRITE_SOMETIMES" }, "is not one of" },
      { { "export", store, "bq://test-project.d.t", "--mime-type", "application/dicom" }, "applies to a Cloud Storage" },
      { { "export", store, "gs://bkt/x", "--transfer-syntax", "jpeg" }, "is not a UID" },
      { { "deidentify", store, dataset .. "/dicomStores/t", "--config", "/no/such/file.json" }, "cannot read --config" },
      { { "deidentify", store, dataset, "--config", "/dev/null" }, "is not a JSON object" },
      { { "deidentify", store, dataset .. "/dicomStores/t", "--config", H.tmpdir() }, "cannot read --config" },
      { { "deidentify", store, dataset }, "is not a dicomStore name, as the source is" },
      { { "import", store, "gs://bkt/x.dcm", "--poll-interval", "0" }, "--poll-interval must be" },
      { { "operations", "list", dataset, "--operation-timeout=-1" }, "--operation-timeout must be" },
      { { "operations", "get", dataset .. "/operations/1", "--filter", "done=true" }, "--filter applies to list" },
      { { "operations", "wait", dataset .. "/operations/1", "--no-wait" }, "unknown option '--no-wait'" },
    }) do
      local so, se, code = hc(case[1])
      assert.equal(2, code, table.concat(case[1], " ") .. "\n" .. se)
      assert.equal("", so)
      assert.truthy(se:find(case[2], 1, true), table.concat(case[1], " ") .. "\n" .. se)
      no_raw_control(se)
    end
    local bad_config = H.write_file(H.tmpdir() .. "/bad.json", "{not json")
    local _, se, code = hc({ "deidentify", store, dataset .. "/dicomStores/t", "--config", bad_config })
    assert.equal(2, code, se)
    assert.matches("is not a JSON object", se)
    assert.equal(before, admin_requests())
    -- a store that does not exist: Google's 404, exit 2, no operation
    _, se, code = hc({ "import", dataset .. "/dicomStores/nope", "gs://bkt/x.dcm" })
    assert.equal(2, code, se)
    assert.matches("404", se)
    assert.equal(ops, em:count("operations_created"))
  end)

  it("Ctrl-C while waiting: exit 130, the operation's name, and it runs on to its end on the emulator", function()
    config({ operation_polls = 30 })
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    H.gen_dicom({ count = 3, dir = dir, study = study, size = 256 })
    local errfile = H.tmpdir() .. "/err"
    local cmd = H.healthcare_command(words({ "import", store, "gs://" .. bucket .. "/*.dcm" }))
    -- SIGINT once the waiting has begun (its first progress line is out)
    local _, _, code = H.run(table.concat({
      cmd .. " 2>" .. H.q(errfile) .. " & pid=$!",
      "for i in $(seq 400); do grep -q 'import: ' " .. H.q(errfile) .. " && break; sleep 0.02; done",
      "sleep 0.2; kill -INT $pid; wait $pid" }, "\n"))
    local se = H.file_bytes(errfile)
    assert.equal(130, code, se)
    local op = se:match("stopped waiting for operation (projects/%S+/operations/%d+);")
    assert.truthy(op, se)
    assert.matches("it goes on running on the server", se)
    assert.truthy(se:find("healthcare operations cancel " .. op, 1, true), se)
    assert.is_nil(se:find("import done", 1, true), se)
    -- nothing was cancelled: the operation goes on with the next polls, to its end
    local o = poll(op)
    assert.is_nil(o.done)
    assert.is_nil(o.metadata.cancelRequested)
    for _ = 1, 40 do
      if o.done then break end
      o = poll(op)
    end
    assert.is_true(o.done)
    assert.is_nil(o.error)
    assert.same({ success = "3" }, o.metadata.counter)
    local _, n = H.orthanc_sops(study)
    assert.equal(3, n)
  end)
end)

describe("healthcare export", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  it("to Cloud Storage: one file per instance, read back byte for byte; to BigQuery: one row each", function()
    local _, store = em:new_dicom_store()
    local study = H.fresh_uid()
    local files = H.gen_dicom({ count = 3, study = study, size = 500 })
    stow(store, files)
    local bucket, dir = em:new_bucket()
    local _, se, code = hc({ "export", store, "gs://" .. bucket .. "/out/" })
    assert.equal(0, code, se)
    assert.matches("export done in %d+ s: success 3, failure 0\n", se)
    local want = {}
    for _, f in ipairs(files) do
      want[#want + 1] = "out/" .. f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid .. ".dcm"
    end
    table.sort(want)
    assert.same(want, files_under(dir))
    for _, f in ipairs(files) do
      local path = dir .. "/out/" .. f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid .. ".dcm"
      assert.equal(H.sha256(f.path), H.sha256(path))
    end
    -- in another transfer syntax: explicit VR little endian, the same instances
    local bucket2, dir2 = em:new_bucket()
    _, se, code = hc({ "export", store, "gs://" .. bucket2, "--transfer-syntax", "1.2.840.10008.1.2.1" })
    assert.equal(0, code, se)
    local paths = {}
    for _, name in ipairs(files_under(dir2)) do paths[#paths + 1] = dir2 .. "/" .. name end
    assert.equal(3, #paths)
    local sops = {}
    for _, t in pairs(read_tags(paths, { "SOPInstanceUID" })) do sops[t.SOPInstanceUID] = true end
    for _, f in ipairs(files) do assert.is_true(sops[f.sop_instance_uid]) end

    local tbl = "test-project.migr.t_" .. math.random(1, 1e9)
    _, se, code = hc({ "export", store, "bq://" .. tbl, "--write-disposition", "WRITE_EMPTY" })
    assert.equal(0, code, se)
    local rows = {}
    for line in H.file_bytes(em.gcs .. "/_bigquery/" .. tbl .. ".jsonl"):gmatch("[^\n]+") do
      local row = cjson.decode(line)
      rows[row.SOPInstanceUID] = row
    end
    for _, f in ipairs(files) do
      assert.equal(f.study_uid, rows[f.sop_instance_uid].StudyInstanceUID)
      assert.equal(f.series_uid, rows[f.sop_instance_uid].SeriesInstanceUID)
    end
    -- again: the table holds rows, WRITE_EMPTY fails (exit 1, Google's message); --force replaces
    _, se, code = hc({ "export", store, "bq://" .. tbl, "--write-disposition", "WRITE_EMPTY" })
    assert.equal(1, code, se)
    assert.matches("already exists and holds rows", se)
    _, se, code = hc({ "export", store, "bq://" .. tbl, "--force" })
    assert.equal(0, code, se)
  end)
end)

describe("healthcare deidentify", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  it("copies a store without the tags the config removes", function()
    local dataset, store = em:new_dicom_store()
    local files = H.gen_dicom({ count = 2, size = 400, accession_number = "ACC-7", study_description = "knee" })
    stow(store, files)
    local cfg = H.write_file(H.tmpdir() .. "/deid.json",
      cjson.encode({ dicom = { removeList = { tags = { "PatientName", "00080050" } } } }))
    local dest = dataset .. "/dicomStores/" .. fresh("deid")
    local _, se, code = hc({ "deidentify", store, dest, "--config", cfg })
    assert.equal(0, code, se)
    assert.matches("deidentify done in %d+ s: success 2, failure 0\n", se)
    local bucket, dir = em:new_bucket()
    _, se, code = hc({ "export", dest, "gs://" .. bucket })
    assert.equal(0, code, se)
    local paths = {}
    for _, name in ipairs(files_under(dir)) do paths[#paths + 1] = dir .. "/" .. name end
    assert.equal(2, #paths)
    for _, t in pairs(read_tags(paths, { "PatientName", "AccessionNumber", "PatientID", "StudyDescription" })) do
      assert.is_nil(t.PatientName)
      assert.is_nil(t.AccessionNumber)
      assert.equal("HC-TEST", t.PatientID)
      assert.equal("knee", t.StudyDescription)
    end
    -- the destination exists now: Google's 409, before any operation
    _, se, code = hc({ "deidentify", store, dest, "--config", cfg })
    assert.equal(1, code, se)
    assert.matches("409", se)
  end)
end)

describe("healthcare operations", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  it("list, get and cancel; waiting for a cancelled operation is exit 1", function()
    config({ operation_polls = 4 })
    local dataset, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    H.gen_dicom({ count = 8, dir = dir, size = 256 })
    local _, so, se, code
    so, se, code = hc({ "import", store, "gs://" .. bucket .. "/*.dcm", "--no-wait" })
    assert.equal(0, code, se)
    local op = so:match("^(%S+)\n$")
    so, se, code = hc({ "operations", "list", dataset })
    assert.equal(0, code, se)
    assert.truthy(so:find(op .. "  ImportDicomData  running  success 0, failure 0, pending 8", 1, true), so)
    local n = tonumber(se:match("^(%d+) operations?\n$"))
    so, se, code = hc({ "operations", "list", dataset, "--json" })
    assert.equal(0, code, se)
    local listed = {}
    for _, o in ipairs(cjson.decode(so).operations) do listed[o.name] = o end
    assert.truthy(listed[op], so)
    assert.equal(n, #cjson.decode(so).operations)
    so, se, code = hc({ "operations", "get", op })
    assert.equal(0, code, se)
    local got = cjson.decode(so)
    assert.equal(op, got.name)
    -- a poll does a step of the emulator's work: after the first of 4 (+1), 8 * 1 // 5 = 1 done
    assert.same({ success = "1", pending = "7" }, got.metadata.counter)
    assert.matches("ImportDicomData$", got.metadata.apiMethodName)
    _, se, code = hc({ "operations", "cancel", op })
    assert.equal(0, code, se)
    assert.matches("cancel asked for operation", se)
    local o = poll(op)
    assert.is_true(o.done)
    assert.equal(1, o.error.code)
    _, se, code = hc({ "operations", "wait", op })
    assert.equal(1, code, se)
    assert.matches("operation failed in %d+ s", se)
    assert.matches("code 1 CANCELLED", se)
    -- no such operation: 404, exit 2; a name that is no operation's: refused before any request
    _, se, code = hc({ "operations", "get", dataset .. "/operations/12345" })
    assert.equal(2, code, se)
    local before = admin_requests()
    _, se, code = hc({ "operations", "wait", dataset })
    assert.equal(2, code, se)
    _, se, code = hc({ "operations", "cancel", "x" })
    assert.equal(2, code, se)
    for _, name in ipairs({ "x", dataset .. "/dicomStores/s", dataset .. "/operations" }) do
      _, se, code = hc({ "operations", "list", name })
      assert.equal(2, code, se)
      assert.matches("does not match", se)
    end
    _, se, code = hc({ "operations", "remove", op })
    assert.equal(2, code, se)
    assert.equal(before, admin_requests())
  end)
end)

-- Answers a server could give that Google's documentation allows or that a broken server sends:
-- the emulator's operation and admin fault rules answer a poll, a start or a list page with the
-- spec's own JSON, late, or with an error.
describe("healthcare import and operations: hostile, slow or failing answers", function()
  local DS = "projects.locations.datasets."
  local function faults(rules) return em:control("faults", { rules = rules, replace = true }) end
  before_each(function()
    config({ operation_polls = 1, operation_error = cjson.null })
    faults({})
  end)
  after_each(function() faults({}) end)

  -- A store with two DICOM files in a bucket, and the import's words.
  local function import_words(extra)
    local _, store = em:new_dicom_store()
    local bucket, dir = em:new_bucket()
    H.gen_dicom({ count = 2, dir = dir, size = 256 })
    local args = { "import", store, "gs://" .. bucket .. "/*.dcm" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return args
  end

  -- Runs the command in the background and sends it SIGINT `after` seconds once its stderr names
  -- the operation ("operation NAME started"): its stderr, exit code and the seconds it took to
  -- end after the signal.
  local function interrupted(args, after)
    local errfile = H.tmpdir() .. "/err"
    local so = H.run(table.concat({
      H.healthcare_command(words(args)) .. " 2>" .. H.q(errfile) .. " & pid=$!",
      "for i in $(seq 400); do grep -q ' started$' " .. H.q(errfile) .. " && break; sleep 0.02; done",
      "sleep " .. after .. "; t0=$(date +%s.%N); kill -INT $pid; wait $pid; rc=$?",
      "echo $rc $t0 $(date +%s.%N)" }, "\n"))
    local code, t0, t1 = so:match("^(%d+) (%S+) (%S+)")
    return H.file_bytes(errfile), tonumber(code), tonumber(t1) - tonumber(t0)
  end

  it("failures a poll counted are not forgotten by a final answer without counters, or one that counts none",
    function()
      -- a poll with failures, then a done Operation without metadata: exit 1 (it was 0)
      faults({ { match = "operation", body = { metadata = { counter = { success = "7", failure = "3",
        pending = "5" } } } },
        { match = "operation", body = { done = true, response = {} } } })
      local _, se, code = hc(import_words({ "--poll-interval", "0.1" }))
      assert.equal(1, code, se)
      assert.matches("import done in %d+ s: success 7, failure 3", se)
      assert.matches("3 failed: the logs name each one", se)
      -- then one whose counters say none failed
      faults({ { match = "operation", body = { metadata = { counter = { success = "7", failure = "3",
        pending = "5" } } } },
        { match = "operation", body = { done = true, metadata = { counter = { success = "10" } }, response = {} } } })
      _, se, code = hc(import_words({ "--poll-interval", "0.1" }))
      assert.equal(1, code, se)
      assert.matches("3 failed as an earlier poll counted them", se)
    end)

  it("counters past 2^63 or not whole are shown as they came, while waiting and in the list", function()
    faults({ { match = "operation", body = { metadata = { counter = { success = "99999999999999999999",
      pending = "1" } } } },
      { match = "operation", body = { done = true, metadata = { counter = { success = "2.5", failure = "0" } },
        response = {} } } })
    local _, se, code = hc(import_words())
    assert.equal(0, code, se)
    assert.truthy(se:find("import: success 99999999999999999999, failure 0, pending 1; ", 1, true), se)
    assert.matches("import done in %d+ s: success 2%.5, failure 0\n", se)
    assert.is_nil(se:find("internal error", 1, true), se)
    -- operations list: an item that is not an object is named, the others listed
    local dataset = em:new_dicom_store()
    faults({ { match = "admin", method = DS .. "operations.list", body = { operations = { 1, true,
      { name = dataset .. "/operations/7", metadata = { counter = { failure = "1.5",
        success = "99999999999999999999" } } } } } } })
    local so
    so, se, code = hc({ "operations", "list", dataset })
    assert.equal(1, code, se)
    assert.equal(dataset .. "/operations/7  ?  running  success 99999999999999999999, failure 1.5, pending 0\n", so)
    assert.truthy(se:find("item 1 of the list is not an Operation (a number)", 1, true), se)
    assert.truthy(se:find("item 2 of the list is not an Operation (a boolean)", 1, true), se)
    assert.is_nil(se:find("internal error", 1, true), se)
  end)

  it("operations list prints each page as it arrives and stops at --limit, even when the pages never end", function()
    local dataset = em:new_dicom_store()
    local page = {}
    for i = 1, 20 do page[i] = { name = dataset .. "/operations/" .. i, metadata = { apiMethodName = "x.Import" } } end
    local list = DS .. "operations.list"
    -- pages without end: 50 operations from the first three pages, and a word that there are more
    faults({ { match = "admin", method = list, body = { operations = page }, fresh_page_token = true, times = 1000 } })
    local polls = em:count("admin_requests", list)
    local so, se, code = hc({ "operations", "list", dataset, "--limit", "50" })
    assert.equal(0, code, se)
    local _, lines = so:gsub("\n", "")
    assert.equal(50, lines)
    assert.equal("50 operations; stopped at --limit 50, there are more (a larger --limit, or --filter)\n", se)
    assert.equal(3, em:count("admin_requests", list) - polls)
    -- pages holding nothing: at most --limit pages are read
    faults({ { match = "admin", method = list, body = { operations = {} }, fresh_page_token = true, times = 1000 } })
    polls = em:count("admin_requests", list)
    so, se, code = hc({ "operations", "list", dataset, "--limit", "7", "--json" })
    assert.equal(0, code, se)
    assert.same({}, cjson.decode(so).operations)
    assert.matches("0 operations; stopped at %-%-limit 7", se)
    assert.equal(7, em:count("admin_requests", list) - polls)
    -- two pages, then a failure: what came before it is out, on stdout (--json: a whole document)
    local rules = { { match = "admin", method = list, body = { operations = page }, fresh_page_token = true, times = 2 },
      { match = "admin", method = list, status = 400, message = "page token expired" } }
    faults(rules)
    so, se, code = hc({ "operations", "list", dataset })
    assert.equal(1, code, se)
    _, lines = so:gsub("\n", "")
    assert.equal(40, lines)
    assert.matches("HTTP 400 INVALID_ARGUMENT: page token expired %(after 40 operations%)\n$", se)
    faults(rules)
    so, se, code = hc({ "operations", "list", dataset, "--json" })
    assert.equal(1, code, se)
    assert.equal(40, #cjson.decode(so).operations)
    assert.equal(dataset .. "/operations/20", cjson.decode(so).operations[40].name)
    -- --limit is a whole number of at least 1
    for _, bad in ipairs({ "0", "1.5", "-3" }) do
      _, se, code = hc({ "operations", "list", dataset, "--limit=" .. bad })
      assert.equal(2, code, se)
      assert.matches("%-%-limit must be a whole number of at least 1", se)
    end
  end)

  it("Ctrl-C while a poll is in flight: exit 130 at once, the name and how to wait again", function()
    faults({ { match = "operation", delay = 30 } })
    local se, code, seconds = interrupted(import_words(), 0.5)
    assert.equal(130, code, se)
    assert.is_true(seconds < 3, tostring(seconds) .. " s\n" .. se)
    local op = se:match("^operation (projects/%S+/operations/%d+) started\n")
    assert.truthy(op, se)
    assert.truthy(se:find("stopped waiting for operation " .. op .. "; it goes on running on the server: "
      .. "healthcare operations wait " .. op .. " waits for it again", 1, true), se)
  end)

  it("--operation-timeout bounds a poll in flight; a poll that fails says the operation may still run", function()
    faults({ { match = "operation", delay = 30 } })
    local t0 = os.time()
    local _, se, code = hc(import_words({ "--operation-timeout", "1" }))
    assert.equal(1, code, se)
    assert.is_true(os.time() - t0 < 5, se)
    local op = se:match("^operation (projects/%S+/operations/%d+) started\n")
    assert.truthy(op, se)
    assert.truthy(se:find("operation " .. op .. " not done after 1 s", 1, true), se)
    assert.truthy(se:find("it may still be running on the server: healthcare operations wait " .. op, 1, true), se)
    -- a poll answered with an error (not retried): the operation is not lost
    faults({ { match = "operation", status = 400, message = "bad poll" } })
    _, se, code = hc(import_words())
    assert.equal(1, code, se)
    op = se:match("^operation (projects/%S+/operations/%d+) started\n")
    assert.truthy(se:find("HTTP 400 INVALID_ARGUMENT: bad poll\n", 1, true), se)
    assert.truthy(se:find("stopped waiting for operation " .. op .. "; it may still be running on the server: "
      .. "healthcare operations wait " .. op .. " waits for it again", 1, true), se)
    _, se, code = hc({ "operations", "wait", op })
    assert.equal(0, code, se)
  end)

  it("--no-wait checks the start answer as the waiting does: no operation's name, or over already", function()
    local import = DS .. "dicomStores.import"
    for _, name in ipairs({ "projects/p/locations/l/datasets/d/operations/../../../etc/x\r\nok", "../../x", 42 }) do
      faults({ { match = "admin", method = import, body = { name = name } } })
      local so, se, code = hc(import_words({ "--no-wait" }))
      assert.equal(1, code, se)
      assert.equal("", so)
      assert.matches("the server answered no operation to wait for", se)
      no_raw_control(se)
    end
    local op = "projects/test-project/locations/us-central1/datasets/d/operations/5"
    faults({ { match = "admin", method = import, body = { name = op, done = true,
      error = { code = 7, message = "the service agent cannot read gs://bucket" } } } })
    local so, se, code = hc(import_words({ "--no-wait" }))
    assert.equal(1, code, se)
    assert.equal(op .. "\n", so)
    assert.truthy(se:find("operation " .. op .. " failed: the service agent cannot read gs://bucket "
      .. "(code 7 PERMISSION_DENIED)", 1, true), se)
  end)

  it("an error that is not an object is a failure; a huge message is cut as HTTP errors are", function()
    faults({ { match = "operation", body = { done = true, error = "INTERNAL: import aborted" } } })
    local _, se, code = hc(import_words())
    assert.equal(1, code, se)
    assert.matches("import failed in %d+ s", se)
    assert.truthy(se:find("failed: INTERNAL: import aborted (no code)\n", 1, true), se)
    faults({})
    local args = import_words() -- (before the config: it makes a dataset, an operation)
    config({ operation_error = { code = 3, message = "\27[2J" .. string.rep("A", 100000) } })
    _, se, code = hc(args)
    assert.equal(1, code, se)
    assert.is_true(#se < 2000, #se .. " bytes on stderr")
    assert.truthy(se:find("failed: \\x1b[2J" .. string.rep("A", 296) .. "... (100004 bytes in all) (code 3 "
      .. "INVALID_ARGUMENT)\n", 1, true), se:sub(1, 2000))
    no_raw_control(se)
  end)
end)

describe("the Lua API: healthcare.migrate and the store's import, export, deidentify", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)
  local client
  setup(function()
    client = assert(healthcare.new({ endpoint = em.endpoint, access_token = em.token, token_cache = false }))
  end)
  teardown(function() if client then client:close() end end)

  it("store:import waits and returns the response and the Operation; wait = false returns the Operation", function()
    local _, name = em:new_dicom_store()
    local store = assert(client:dicom_store(name))
    local bucket, dir = em:new_bucket()
    local study = H.fresh_uid()
    H.gen_dicom({ count = 3, dir = dir, study = study, size = 256 })
    local seen = {}
    local res, op = store:import("gs://" .. bucket .. "/*.dcm", { poll_interval = 0.05,
      on_progress = function(m) seen[#seen + 1] = m end })
    assert.is_table(res, tostring(op))
    assert.matches("ImportDicomDataResponse$", res["@type"])
    assert.same({ success = "3" }, op.metadata.counter)
    assert.is_true(#seen >= 1)
    local started = assert(store:import("gs://" .. bucket .. "/*.dcm", { wait = false }))
    assert.matches("/operations/%d+$", started.name)
    assert.is_nil(started.done)
    local again = assert(client:wait(started, { poll_interval = 0.05 }))
    assert.is_table(again)
  end)

  it("an import with failures: nil, err of kind operation, with the metadata's counters", function()
    local _, name = em:new_dicom_store()
    local store = assert(client:dicom_store(name))
    local bucket, dir = em:new_bucket()
    H.gen_dicom({ count = 2, dir = dir, size = 256 })
    H.write_file(dir .. "/bad.dcm", "no")
    local res, err = store:import("gs://" .. bucket .. "/*.dcm", { poll_interval = 0.05 })
    assert.is_nil(res)
    assert.equal("operation", err.kind)
    assert.same({ success = "2", failure = "1" }, err.metadata.counter)
    assert.truthy(err.metadata.logsUrl)
  end)

  it("export and deidentify, and bad inputs as nil, err before any request; misuse raises", function()
    local dataset, name = em:new_dicom_store()
    local store = assert(client:dicom_store(name))
    local files = H.gen_dicom({ count = 1, size = 256 })
    stow(name, files)
    local tbl = "test-project.lua.t_" .. math.random(1, 1e9)
    assert(store:export("bq://" .. tbl, { force = true, poll_interval = 0.05 }))
    local row = cjson.decode(H.file_bytes(em.gcs .. "/_bigquery/" .. tbl .. ".jsonl"))
    assert.equal(files[1].sop_instance_uid, row.SOPInstanceUID)
    local dest = dataset .. "/dicomStores/" .. fresh("lua")
    local res, op = store:deidentify(dest, { config = { dicom = { removeList = { tags = { "PatientID" } } } },
      poll_interval = 0.05 })
    assert.is_table(res, tostring(op))
    assert.same({ success = "1" }, op.metadata.counter)
    assert(migrate.deidentify(client, dataset, LOCATION .. "/datasets/" .. fresh("copy"), { poll_interval = 0.05 }))

    local before = admin_requests()
    for _, case in ipairs({
      { store:import("gs://") }, { store:import("gs://bkt") }, { store:export("bq://x") },
      { store:export("gs://bkt/x", { force = true }) }, { store:deidentify(dataset) },
      { migrate.import(client, dataset, "gs://bkt/x") }, { migrate.export(client, "nope", "gs://bkt/x") },
      { store:deidentify(dest .. "x", { config = {}, gcs_config_uri = "gs://bkt/c.json" }) },
    }) do
      assert.is_nil(case[1])
      assert.equal("usage", case[2].kind, tostring(case[2]))
    end
    assert.equal(before, admin_requests())
    local plain = assert(healthcare.dicomweb(H.env.dicomweb))
    local r, e = plain:import("gs://bkt/x.dcm")
    assert.is_nil(r)
    assert.matches("not a Google dicomStore", e.message)
    plain:close()
    assert.has_error(function() store:import(42) end, "bad argument #1 to 'import' (string expected, got number)")
    assert.has_error(function() store:export("gs://bkt/x", { colour = 1 }) end)
    assert.has_error(function() store:import("gs://bkt/x", { wait = "no" }) end,
      "bad option 'wait' to 'import' (boolean expected, got string)")
    assert.has_error(function() migrate.import(nil, name, "gs://bkt/x") end)
  end)
end)
