-- SPDX-License-Identifier: MIT
-- `healthcare search`, `retrieve`, `delete` and `store --verify` as a user runs them, against
-- Orthanc (by its DICOMweb URL) and the Google-shaped emulator (by a dicomStore name). Studies
-- are generated with fresh UIDs and a patient ID of their own; Orthanc is shared with other
-- spec files, so only these are looked at.
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson.safe"
local lfs = require "lfs"
local json = require "healthcare.cli.json"

local E = H.env

-- This file's own emulator: it counts requests ("nothing was sent").
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local TOKEN = E.token .. "-private"

local hc = H.healthcare

-- args for the dicomStore through this file's emulator
local function google(args, store)
  local t = { args[1], store or E.store }
  for i = 2, #args do t[#t + 1] = args[i] end
  t[#t + 1] = "--endpoint"; t[#t + 1] = em.endpoint
  t[#t + 1] = "--access-token"; t[#t + 1] = TOKEN
  return t
end

local function requests()
  return #em:stats().requests
end

local function dir_of(path) return path:match("^(.*)/[^/]+$") end

local function files_in(dir)
  local t = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then t[#t + 1] = name end
  end
  table.sort(t)
  return t
end

local patient, study   -- three instances in one study, stored in Orthanc
lazy_setup(function()
  patient = "HC93-" .. math.random(1, 1e9)
  study = H.gen_dicom({ count = 3, patient_id = patient })
  H.store_with_cli(study)
end)

describe("healthcare search", function()
  it("prints an aligned table of the matching study on stdout and a count on stderr", function()
    local out, err, code = hc { "search", E.dicomweb, "-q", "PatientID=" .. patient }
    assert.equal(0, code, err)
    assert.equal("1 study\n", err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(2, #lines, out)
    assert.matches("^Date +Patient ID +Patient name +Modalities +Series +Instances +Description +Study UID$", lines[1])
    local uid_col = lines[1]:find("Study UID", 1, true)
    assert.equal(study[1].study_uid, lines[2]:sub(uid_col))
    assert.equal(lines[1]:find("Patient ID", 1, true), lines[2]:find(patient, 1, true))
    assert.matches("^20240101 +" .. patient:gsub("%p", "%%%0") .. " +Test%^Healthcare +OT +1 +3 ", lines[2])
  end)

  it("prints the DICOM JSON array with --json, filtered by -q and scoped by --study", function()
    local out, err, code = hc { "search", E.dicomweb, "instances", "--study", study[1].study_uid, "--json" }
    assert.equal(0, code, err)
    local list = assert(cjson.decode(out), out)
    local want, got = {}, {}
    for _, f in ipairs(study) do want[#want + 1] = f.sop_instance_uid end
    for _, item in ipairs(list) do got[#got + 1] = item["00080018"].Value[1] end
    table.sort(want)
    table.sort(got)
    assert.same(want, got)
    out, err, code = hc { "search", E.dicomweb, "studies", "-q", "PatientID=" .. patient, "-q",
      "StudyDate=20240101-20240102", "--json" }
    assert.equal(0, code, err)
    list = cjson.decode(out)
    assert.equal(1, #list)
    assert.equal(study[1].study_uid, list[1]["0020000D"].Value[1])
    out, err, code = hc { "search", E.dicomweb, "-q", "PatientID=" .. patient, "-q", "StudyDate=19990101", "--json" }
    assert.equal(0, code, err)
    assert.equal("[]\n", out)
  end)

  it("pages with --limit and --offset", function()
    local function count(args)
      local a = { "search", E.dicomweb, "instances", "--study", study[1].study_uid, "--json" }
      for _, x in ipairs(args) do a[#a + 1] = x end
      local out, err, code = hc(a)
      assert.equal(0, code, err)
      return #cjson.decode(out)
    end
    assert.equal(2, count { "--limit", "2" })
    assert.equal(1, count { "--offset", "2" })
    assert.equal(3, count {})
  end)

  it("lists series and an --include'd field as a column", function()
    local out, err, code = hc { "search", E.dicomweb, "series", "--study", study[1].study_uid,
      "--include", "SeriesDate" }
    assert.equal(0, code, err)
    assert.equal("1 series\n", err)
    assert.matches("Series UID +SeriesDate\n", out)
    assert.truthy(out:find(study[1].series_uid, 1, true))
  end)

  it("searches a dicomStore through the emulator", function()
    local out, err, code = hc(google { "search", "-q", "PatientID=" .. patient, "--json" })
    assert.equal(0, code, err)
    local list = cjson.decode(out)
    assert.equal(1, #list)
    assert.equal(study[1].study_uid, list[1]["0020000D"].Value[1])
  end)

  local usage = {
    { "an unknown keyword", { "-q", "PatientIdentifier=x" }, "PatientIdentifier" },
    { "a -q without =", { "-q", "PatientID" }, "%-q needs KEY=VALUE" },
    { "a limit of 0", { "--limit", "0" }, "%-%-limit must be a whole number of at least 1" },
    { "a negative offset", { "--offset=-1" }, "%-%-offset must be a whole number of at least 0" },
    { "--series at the study level", { "--series", "1.2.3" }, "%-%-series needs the series or instances level" },
    { "a bad study UID", { "instances", "--study", "1.2/../3" }, "1%.2/%.%./3" },
    { "an unknown level", { "patients" }, "argument 'level' must be one of 'studies', 'series', 'instances'" },
  }
  for _, c in ipairs(usage) do
    it("exits 2 and sends nothing for " .. c[1], function()
      local before = requests()
      local args = google { "search" }
      for _, a in ipairs(c[2]) do args[#args + 1] = a end
      local out, err, code = hc(args)
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches(c[3], err)
      assert.equal(before, requests())
    end)
  end

  it("exits 2 for a malformed dicomStore name and for a store that does not exist", function()
    local _, err, code = hc(google({ "search" }, "projects/p/datasets/d"))
    assert.equal(2, code)
    assert.matches("invalid dicomStore name", err)
    _, err, code = hc(google({ "search" }, E.store:gsub("test%-store$", "missing")))
    assert.equal(2, code)
    assert.matches("NOT_FOUND", err)
  end)
end)

describe("healthcare retrieve", function()
  it("writes every instance of a study as <SOPInstanceUID>.dcm, byte for byte, and lists them", function()
    local dir = H.tmpdir() .. "/out"
    local out, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir }
    assert.equal(0, code, err)
    local want, listed = {}, {}
    for _, f in ipairs(study) do want[#want + 1] = f.sop_instance_uid .. ".dcm" end
    table.sort(want)
    assert.same(want, files_in(dir))
    for _, f in ipairs(study) do
      assert.equal(H.sha256(f.path), H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    end
    for l in out:gmatch("[^\n]+") do listed[#listed + 1] = l:match("[^/]+$") end
    table.sort(listed)
    assert.same(want, listed)
    assert.matches("^retrieved 3 instances, [%d.]+ [KM]?B in [%d.]+ s, to " .. dir:gsub("%p", "%%%0") .. "\n$", err)
  end)

  it("run again into the same directory, fetches what is missing (the series again when that is cheaper); "
    .. "--refetch fetches all", function()
    local dir = H.tmpdir() .. "/out"
    local _, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir }
    assert.equal(0, code, err)
    local gone = study[2]
    assert(os.remove(dir .. "/" .. gone.sop_instance_uid .. ".dcm"))
    local out
    out, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir, "--json" }
    assert.equal(0, code, err)
    local report = assert(cjson.decode(out), out)
    -- 3 instances of a few KB, one series: its two there are fewer bytes than one request is
    -- reckoned at (8 MiB), so the series comes whole again in one request
    assert.same({ 3, 0 }, { #report.files, #report.kept })
    assert.equal(H.sha256(gone.path), H.sha256(dir .. "/" .. gone.sop_instance_uid .. ".dcm"))
    _, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir }
    assert.equal(0, code, err)
    assert.matches("^retrieved 0 instances, 0 B in [%d.]+ s, to .* %(kept 3 already there%)\n$", err)
    out, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir, "--refetch", "--json" }
    assert.equal(0, code, err)
    report = assert(cjson.decode(out), out)
    assert.same({ 3, 0 }, { #report.files, #report.kept })
  end)

  it("--json writes each file's path as JSON, whatever the directory's name", function()
    -- a quote, a backslash, a tab, a slash at the end, and UTF-8: the writer's escapes, not ours
    for _, name in ipairs({ 'say "hi"\\now', "tab\there", "caf\195\169/" }) do
      local dir = H.tmpdir() .. "/" .. name
      local out, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir, "--json" }
      assert.equal(0, code, err)
      local report = assert(cjson.decode(out), out)
      assert.equal(3, #report.files)
      local prefix = dir:sub(-1) == "/" and dir or dir .. "/"
      for _, f in ipairs(report.files) do
        assert.equal(prefix .. f.sop_instance_uid .. ".dcm", f.path)
        assert.equal(lfs.attributes(f.path, "size"), f.size)
      end
      -- a record as the general writer makes it, byte for byte
      local first = report.files[1]
      assert.truthy(out:find(json.encode({ path = first.path, size = first.size,
        sop_instance_uid = first.sop_instance_uid }), 1, true), out)
    end
  end)

  it("retrieves one instance, and a series with --json, through the emulator", function()
    local f = study[2]
    local dir = H.tmpdir()
    local _, err, code = hc(google { "retrieve", f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid,
      "-o", dir })
    assert.equal(0, code, err)
    assert.same({ f.sop_instance_uid .. ".dcm" }, files_in(dir))
    assert.equal(H.file_bytes(f.path), H.file_bytes(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    local out
    out, err, code = hc(google { "retrieve", f.study_uid .. "/" .. f.series_uid, "-o", dir .. "/series", "--json" })
    assert.equal(0, code, err)
    local report = assert(cjson.decode(out), out)
    assert.equal(3, #report.files)
    local total = 0
    for _, x in ipairs(study) do total = total + #H.file_bytes(x.path) end
    assert.equal(total, report.bytes)
    assert.equal(3, #files_in(dir .. "/series"))
  end)

  it("exits 1 naming the study for an unknown UID, and leaves no file", function()
    local dir = H.tmpdir() .. "/none"
    local uid = H.fresh_uid()
    local _, err, code = hc { "retrieve", E.dicomweb, uid, "-o", dir }
    assert.equal(1, code, err)
    assert.matches("study " .. uid:gsub("%p", "%%%0") .. " not found", err)
    assert.same({}, lfs.attributes(dir) and files_in(dir) or {})
    _, err, code = hc(google { "retrieve", uid .. "/" .. H.fresh_uid(), "-o", dir })
    assert.equal(1, code, err)
    assert.matches("not found", err)
  end)

  local usage = {
    { "a bad UID", { "1.2/abc", "-o", "OUT" }, "invalid UID 'abc' in '1%.2/abc'" },
    { "a path of four UIDs", { "1/2/3/4", "-o", "OUT" }, "more than three parts" },
    { "no -o", { "1.2" }, "%-o <dir> is required" },
    { "an -o under a file", { "1.2", "-o", "FILE/dir" }, "a%-file exists and is not a directory" },
    { "a bad transfer syntax", { "1.2", "-o", "OUT", "--transfer-syntax", "x/y" }, "x/y" },
  }
  for _, c in ipairs(usage) do
    it("exits 2 and sends nothing for " .. c[1], function()
      local before = requests()
      local args = google { "retrieve" }
      local tmp = H.tmpdir()
      local a_file = H.write_file(tmp .. "/a-file", "x")
      for _, a in ipairs(c[2]) do
        args[#args + 1] = a == "OUT" and (tmp .. "/out") or a:gsub("^FILE/", a_file .. "/")
      end
      local _, err, code = hc(args)
      assert.equal(2, code, err)
      assert.matches(c[3], err)
      assert.equal(before, requests())
    end)
  end

  it("exits 2 for a store that does not exist, naming the store, not the study", function()
    local gone = E.store:gsub("test%-store$", "missing")
    local _, err, code = hc(google({ "retrieve", study[1].study_uid, "-o", H.tmpdir() }, gone))
    assert.equal(2, code, err)
    assert.matches("^healthcare retrieve: store " .. gone:gsub("%p", "%%%0") .. " not found: RetrieveStudy: HTTP 404 "
      .. "NOT_FOUND", err)
    assert.is_nil(err:find("study " .. study[1].study_uid, 1, true), err)
    _, err, code = hc { "retrieve", E.orthanc .. "/no-such-dicom-web", study[1].study_uid, "-o", H.tmpdir() }
    assert.equal(2, code, err)
    assert.matches("^healthcare retrieve: store " .. (E.orthanc .. "/no-such-dicom-web"):gsub("%p", "%%%0")
      .. " not found", err)
  end)

  it("creates -o's folder with its parents", function()
    local dir = H.tmpdir() .. "/a/b/c"
    local _, err, code = hc { "retrieve", E.dicomweb, study[1].study_uid, "-o", dir }
    assert.equal(0, code, err)
    assert.equal(#study, #files_in(dir))
  end)
end)

describe("healthcare delete", function()
  it("refuses without --yes, says what it would delete, and deletes nothing", function()
    local f = study[1]
    local before = requests()
    local out, err, code = hc(google { "delete", f.study_uid, f.study_uid .. "/" .. f.series_uid })
    assert.equal(2, code)
    assert.equal("", out)
    -- the series, in the study also given, goes with it (spec/92-delete_cli)
    assert.matches("series " .. (f.study_uid .. "/" .. f.series_uid):gsub("%p", "%%%0") .. " is in study "
      .. f.study_uid:gsub("%p", "%%%0") .. ", also given: deleted with it\n", err)
    assert.matches("not deleting without %-%-yes; this would delete study " .. f.study_uid:gsub("%p", "%%%0")
      .. " from " .. E.store:gsub("%p", "%%%0") .. "\n$", err)
    assert.equal(before, requests())
    assert.is_string(H.orthanc_find_instance(f.sop_instance_uid))
  end)

  it("deletes a study and an instance with --yes through the emulator", function()
    local other = H.gen_dicom({ count = 2, patient_id = patient .. "-del" })
    H.store_with_cli(other)
    local x = other[1]
    local out, err, code = hc(google { "delete", x.study_uid .. "/" .. x.series_uid .. "/" .. x.sop_instance_uid, "--yes" })
    assert.equal(0, code, err)
    assert.matches("^deleted instance ", out)
    assert.is_nil(H.orthanc_find_instance(x.sop_instance_uid))
    assert.is_string(H.orthanc_find_instance(other[2].sop_instance_uid))
    out, err, code = hc(google { "delete", x.study_uid, "-y" })
    assert.equal(0, code, err)
    assert.matches("^deleted study " .. x.study_uid:gsub("%p", "%%%0"), out)
    assert.is_nil(H.orthanc_find_instance(other[2].sop_instance_uid))
    -- and a search finds nothing
    out, err, code = hc(google { "search", "-q", "PatientID=" .. patient .. "-del", "--json" })
    assert.equal(0, code, err)
    assert.equal("[]\n", out)
  end)

  it("exits 1 for an unknown study, 2 for a bad UID or an unknown store", function()
    local uid = H.fresh_uid()
    local _, err, code = hc(google { "delete", uid, "--yes" })
    assert.equal(1, code, err)
    assert.matches("not found", err)
    local before = requests()
    _, err, code = hc(google { "delete", "1.2.x", "--yes" })
    assert.equal(2, code, err)
    assert.matches("invalid UID '1%.2%.x'", err)
    assert.equal(before, requests())
    local gone = E.store:gsub("test%-store$", "missing")
    _, err, code = hc(google({ "delete", uid, "--yes" }, gone))
    assert.equal(2, code, err)
    assert.matches("DeleteStudy: store " .. gone:gsub("%p", "%%%0") .. " not found: HTTP 404 NOT_FOUND", err)
  end)
end)

describe("healthcare store --verify", function()
  it("reports every instance listed by Orthanc and by the emulator, exit 0", function()
    local files = H.gen_dicom({ count = 2, patient_id = patient .. "-v" })
    local dir = dir_of(files[1].path)
    local out, err, code = hc { "store", E.dicomweb, dir, "--verify" }
    assert.equal(0, code, err)
    assert.equal("", out)
    assert.matches("\nverified 2 instances: the server lists every one\n$", err)
    out, err, code = hc(google { "store", dir, "--verify", "--json" })
    assert.equal(0, code, err)
    local report = assert(cjson.decode(out), out)
    assert.equal(2, report.verify.checked)
    assert.matches('"missing":%[%]', out)
  end)

  it("names an instance the server does not list and exits 1", function()
    -- The journal says both files were stored; Orthanc then loses one (deleted with its own API).
    local files = H.gen_dicom({ count = 2, patient_id = patient .. "-lost" })
    local dir = dir_of(files[1].path)
    local journal = H.tmpdir() .. "/journal.jsonl"
    local _, err, code = hc { "store", E.dicomweb, dir, "--journal", journal }
    assert.equal(0, code, err)
    local id = assert(H.orthanc_find_instance(files[2].sop_instance_uid))
    assert.equal(200, H.curl({ "-X", "DELETE", E.orthanc .. "/instances/" .. id }).status)
    local out
    out, err, code = hc { "store", E.dicomweb, dir, "--journal", journal, "--verify" }
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("^stored 0, already stored 2,", err)
    assert.truthy(err:find("\nverified 2 instances: the server does not list 1\nmissing " .. files[2].path
      .. ": SOP Instance UID " .. files[2].sop_instance_uid .. " in study " .. files[2].study_uid .. "\n", 1, true), err)
    out, _, code = hc { "store", E.dicomweb, dir, "--journal", journal, "--verify", "--json" }
    assert.equal(1, code)
    local report = cjson.decode(out)
    assert.same({ { path = files[2].path, sop_instance_uid = files[2].sop_instance_uid, study_uid = files[2].study_uid,
      study = files[2].study_uid } }, report.verify.missing)
  end)

  it("store:verify names a UID that was never stored", function()
    local healthcare = require "healthcare"
    local s = assert(healthcare.dicomweb(E.dicomweb))
    local f = study[1]
    local never = H.fresh_uid()
    local v = assert(s:verify({ { study_uid = f.study_uid, sop_instance_uid = f.sop_instance_uid, path = "a" },
      { study_uid = f.study_uid, sop_instance_uid = never, path = "b" },
      { study = H.fresh_uid(), sop_instance_uid = never } }))
    assert.equal(3, v.checked)
    assert.equal(2, #v.missing)
    assert.equal(never, v.missing[1].sop_instance_uid)
    assert.equal("b", v.missing[1].path)
    local _, verr = s:verify({ { study_uid = "1.2/..", sop_instance_uid = never } })
    assert.equal("usage", verr.kind)
    s:close()
  end)

  it("store:verify refuses a report that kept counts only (keep_stored = false)", function()
    local healthcare = require "healthcare"
    local s = assert(healthcare.dicomweb(E.dicomweb))
    local dir = H.tmpdir()
    H.gen_dicom { count = 2, dir = dir }
    local report = assert(s:store(dir, { keep_stored = false }))
    assert.equal(2, report.counts.stored)
    local v, err = s:verify(report)
    assert.is_nil(v)
    assert.equal("usage", err.kind)
    assert.matches("keep_stored = false", err.message)
    s:close()
  end)
end)
