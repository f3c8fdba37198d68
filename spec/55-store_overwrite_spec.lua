-- SPDX-License-Identifier: MIT
-- `healthcare store --overwrite` and store:store's overwrite = true (issue 16): an instance the
-- store holds with other bytes under its SOP Instance UID (the emulator answers 409 with
-- Google's FailureReason 272 and "already exists with different content", in front of Orthanc)
-- is deleted, stored again and read back by its UID; the report and the journal say
-- "replaced". An unchanged instance is left alone, and without the option a 409 stays a failure.
local H = require "helpers"
if not H.need_testbed() then return end
-- This file counts the emulator's deletes: a private emulator keeps other spec files, run in
-- parallel by ctest, from seeing (or consuming) them.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)
local cjson = H.json
local healthcare = require "healthcare"
local E = H.env

-- `healthcare store` into the test bed's store through the emulator: stdout, stderr, exit code.
local function store_cli(args)
  local words = { "store", E.store, "--endpoint", E.endpoint, "--access-token", E.token, "--no-token-cache" }
  for _, a in ipairs(args) do words[#words + 1] = a end
  return H.healthcare(words)
end

-- The emulator's count of DICOMweb deletes of instances.
local function instance_deletes()
  return tonumber(H.emulator_stats().deleted.instance) or 0
end

-- An instance stored in the store, and a changed file under the same UIDs (other bytes).
local function stored_and_changed()
  local dir = H.tmpdir()
  local old = H.gen_dicom({ count = 1, dir = dir .. "/old", size = 600 })[1]
  local _, se, code = store_cli({ old.path })
  assert(code == 0, se)
  local new = H.gen_dicom({ count = 1, dir = dir .. "/new", size = 900, study = old.study_uid, series = old.series_uid,
    sop = old.sop_instance_uid })[1]
  assert.are_not.equal(H.sha256(old.path), H.sha256(new.path))
  return old, new, dir
end

describe("healthcare store --overwrite", function()
  it("replaces a changed instance (read back equal to the new file) and leaves an unchanged one alone", function()
    local old, new, dir = stored_and_changed()
    local same = H.gen_dicom({ count = 1, dir = dir .. "/same", size = 500 })[1]
    local _, se, code = store_cli({ same.path })
    assert.equal(0, code, se)
    local same_id = H.orthanc_find_instance(same.sop_instance_uid)
    local deletes = instance_deletes()
    local journal = dir .. "/journal"
    local so
    so, se, code = store_cli({ new.path, same.path, "--overwrite", "--journal", journal, "--json" })
    assert.equal(0, code, se)
    local report = cjson.decode(so)
    assert.equal(1, report.counts.replaced)
    assert.equal(1, report.counts.stored)
    assert.equal(0, report.counts.failed)
    assert.equal(new.path, report.replaced[1].path)
    -- the store gives back the new bytes; the unchanged instance was not deleted
    assert.equal(H.sha256(new.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
    assert.equal(deletes + 1, instance_deletes())
    assert.equal(same_id, H.orthanc_find_instance(same.sop_instance_uid))
    assert.equal(H.sha256(same.path), H.sha256_string(H.orthanc_instance_file(same.sop_instance_uid)))
    -- the journal says "replaced", and a rerun skips the file as stored
    local outcomes = {}
    for _, rec in ipairs(H.journal_lines(journal)) do
      if rec.path then outcomes[rec.path] = rec.outcome end
    end
    assert.equal("replaced", outcomes[new.path])
    assert.equal("stored", outcomes[same.path])
    _, se, code = store_cli({ new.path, "--overwrite", "--journal", journal })
    assert.equal(0, code, se)
    assert.matches("stored 0, already stored 1, failed 0", se)
    -- the summary without --json names it
    local again = H.gen_dicom({ count = 1, dir = dir .. "/again", size = 1200, study = old.study_uid,
      series = old.series_uid, sop = old.sop_instance_uid })[1]
    _, se, code = store_cli({ again.path, "--overwrite" })
    assert.equal(0, code, se)
    assert.matches("\nreplaced 1 %(the store held other bytes", se)
    assert.truthy(se:find("replaced " .. again.path .. "\n", 1, true), se)
    assert.equal(H.sha256(again.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
  end)

  it("without --overwrite the 409 stays a failure, and the store keeps its bytes", function()
    local old, new = stored_and_changed()
    local deletes = instance_deletes()
    local _, se, code = store_cli({ new.path })
    assert.equal(1, code, se)
    assert.matches("stored 0, already stored 0, failed 1", se)
    assert.matches("already exists with different content", se)
    assert.is_nil(se:find("replaced", 1, true), se)
    assert.equal(H.sha256(old.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
    assert.equal(deletes, instance_deletes())
  end)

  it("puts the stored instance back when the store refuses the file after the deletion", function()
    local old, new = stored_and_changed()
    -- the first STOW (the conflict) passes; the one after the deletion is refused
    H.emulator_faults({ { http_method = "POST", path = "^studies$", status = 400, skip = 1, times = 1 } })
    local _, se, code = store_cli({ new.path, "--overwrite" })
    H.emulator_faults({})
    assert.equal(1, code, se)
    assert.matches("deleted the stored instance, but storing the file again failed: [^\n]*; the stored instance "
      .. "was put back %(read back equal%)", se)
    assert.equal(H.sha256(old.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))

    -- refused again when put back: the copy is kept, and named
    H.emulator_faults({ { http_method = "POST", path = "^studies$", status = 400, skip = 1, times = 2 } })
    _, se, code = store_cli({ new.path, "--overwrite" })
    H.emulator_faults({})
    assert.equal(1, code, se)
    local kept = se:match("putting the stored instance back failed too %([^\n]*%): its copy is kept at (%S+)\n")
    assert.truthy(kept, se)
    assert.equal(H.sha256(old.path), H.sha256(kept))
    -- patient data another user may not read: in a directory of its own, 0700 (the sink makes
    -- parts 0666 less the umask; straight in /tmp that copy was 0644)
    local dir = kept:match("^(.*)/[^/]+$")
    assert.equal("700", (H.check_run("stat -c %a " .. H.q(dir)):gsub("%s+$", "")))
    assert.is_nil(dir:match("^/tmp$"), dir)
    os.remove(kept)
    os.remove(dir)
  end)

  it("a conflict under another study's UIDs is not replaced: failed, with the step that failed", function()
    local old = stored_and_changed()
    local other = H.gen_dicom({ count = 1, dir = H.tmpdir(), size = 700, sop = old.sop_instance_uid })[1]
    local _, se, code = store_cli({ other.path, "--overwrite" })
    assert.equal(1, code, se)
    assert.matches("failed 1", se)
    assert.matches("storing the file again failed", se)
    assert.equal(H.sha256(old.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
  end)
end)

describe("store:store with overwrite = true", function()
  it("reports replaced instances; without it the report has no replaced list", function()
    local old, new = stored_and_changed()
    local store = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token,
      token_cache = false }))
    local report = assert(store:store({ new.path }))
    assert.is_nil(report.replaced)
    assert.is_nil(report.counts.replaced)
    assert.equal(1, report.counts.failed)
    local seen = {}
    report = assert(store:store({ new.path }, { overwrite = true, on_instance = function(r, outcome)
      seen[#seen + 1] = outcome .. " " .. r.path
    end }))
    assert.same({ stored = 0, already_stored = 0, failed = 0, skipped = 0, replaced = 1 }, report.counts)
    assert.equal(new.sop_instance_uid, report.replaced[1].sop_instance_uid)
    assert.same({ "replaced " .. new.path }, seen)
    assert.equal(H.sha256(new.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
    assert.has_error(function() store:store({ new.path }, { overwrite = "yes" }) end,
      "bad option 'overwrite' to 'store' (boolean expected, got string)")
    store:close()
  end)
end)
