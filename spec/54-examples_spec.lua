-- SPDX-License-Identifier: MIT
-- examples/store_folder.lua keeps working: run as a user would, against Orthanc by its DICOMweb
-- URL and against a Google-shaped emulator of its own by dicomStore name with Application
-- Default Credentials (a service account key file the emulator knows).
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local E = H.env

local LUA = os.getenv("HC_LUA") or "lua5.4"
local SOURCE = os.getenv("HC_SOURCE_DIR") or "."
local EXAMPLE = SOURCE .. "/examples/store_folder.lua"

local function example(env, args, script)
  local words = { "env" }
  for k, v in pairs(env) do words[#words + 1] = H.q(k .. "=" .. v) end
  words[#words + 1] = H.q(LUA)
  words[#words + 1] = H.q(script or EXAMPLE)
  for _, a in ipairs(args) do words[#words + 1] = H.q(a) end
  return H.run(table.concat(words, " "))
end

describe("examples/store_folder.lua", function()
  local dir, files
  lazy_setup(function()
    dir = H.tmpdir()
    files = H.gen_dicom { dir = dir, count = 3 }
    H.write_file(dir .. "/notes.txt", "not DICOM\n")
  end)

  local function assert_output(out)
    for _, f in ipairs(files) do
      assert.is_truthy(out:find("stored " .. f.path .. "\n", 1, true), out)
    end
    assert.is_truthy(out:find("skip   " .. dir .. "/notes.txt  (not a DICOM file (no DICM prefix))\n", 1, true), out)
    assert.matches("\n3 stored, 0 failed, 1 skipped: %d+ bytes in [%d.]+ s, 1 request%(s%)\n$", out)
  end

  it("stores a folder in Orthanc given its DICOMweb URL", function()
    local out, err, code = example({}, { E.dicomweb, dir })
    assert.equal(0, code, err)
    assert_output(out)
    for _, f in ipairs(files) do
      assert.is_true(H.orthanc_instance_file(f.sop_instance_uid) == H.file_bytes(f.path))
    end
  end)

  it("stores a folder by dicomStore name with Application Default Credentials", function()
    -- our own emulator (the shared one may hold fault rules of a spec running at the same time),
    -- and a service account key it knows, whose token_uri is its token endpoint
    local em = require("support.emulator_instance").start()
    finally(function() em:stop() end)
    local sa = em:service_account()
    local store = "projects/test-project/locations/us-central1/datasets/test-dataset/dicomStores/spec54-"
      .. core.random_hex(4)
    em:control("stores", { name = store })
    local home = H.tmpdir()
    local out, err, code = example({
      GOOGLE_APPLICATION_CREDENTIALS = sa.key_file, HEALTHCARE_ENDPOINT = em.endpoint,
      HOME = home, XDG_CACHE_HOME = home .. "/cache", CLOUDSDK_CONFIG = home .. "/gcloud",
    }, { store, dir })
    assert.equal(0, code, err)
    assert_output(out)
    local posts = 0
    for _, r in ipairs(em:stats().requests) do
      if r.path:find("/" .. store .. "/", 1, true) then
        posts = posts + 1
        assert.equal(200, r.status)
      end
    end
    assert.equal(1, posts)
  end)

  it("exits 2 with a usage line when arguments are missing", function()
    local out, err, code = example({}, { E.dicomweb })
    assert.equal(2, code)
    assert.equal("", out)
    assert.equal("usage: store_folder.lua <DICOMweb URL | dicomStore name> <folder>\n", err)
  end)

  it("exits 2 for a malformed dicomStore name", function()
    local _, err, code = example({}, { "projects/x", dir })
    assert.equal(2, code)
    assert.matches("^store_folder: invalid dicomStore name 'projects/x'", err)
  end)
end)

describe("examples/store_file.lua", function()
  it("stores one file by dicomStore name with Application Default Credentials", function()
    local em = require("support.emulator_instance").start()
    finally(function() em:stop() end)
    local sa = em:service_account()
    local f = H.gen_dicom { count = 1 }[1]
    local home = H.tmpdir()
    local out, err, code = example({
      GOOGLE_APPLICATION_CREDENTIALS = sa.key_file, HEALTHCARE_ENDPOINT = em.endpoint,
      HOME = home, XDG_CACHE_HOME = home .. "/cache", CLOUDSDK_CONFIG = home .. "/gcloud",
    }, { E.store, f.path }, SOURCE .. "/examples/store_file.lua")
    assert.equal(0, code, err)
    assert.equal("stored " .. f.sop_instance_uid .. "\n", out)
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  it("exits 2 with the reason for a file that does not exist", function()
    local _, err, code = example({ HEALTHCARE_ENDPOINT = "http://127.0.0.1:9/v1" },
      { E.store, "/nonexistent.dcm" }, SOURCE .. "/examples/store_file.lua")
    assert.equal(2, code)
    assert.matches("^store_file: cannot open /nonexistent.dcm", err)
  end)
end)

describe("examples/fetch_patient.lua", function()
  local FETCH = SOURCE .. "/examples/fetch_patient.lua"

  it("finds a patient's studies in Orthanc and brings each home byte for byte", function()
    local patient = "SPEC54-" .. core.random_hex(4)
    local made = H.gen_many { { count = 2, patient_id = patient }, { count = 1, patient_id = patient } }
    for _, f in ipairs(made) do H.orthanc_put_file(f.path) end
    local dir = H.tmpdir() .. "/new/folder" -- made by the retrieves, with its parents
    local out, err, code = example({}, { E.dicomweb, patient, dir }, FETCH)
    assert.equal(0, code, err)
    assert.matches("\n2 studies fetched, 0 failed\n$", out)
    local per_study = {}
    for _, f in ipairs(made) do per_study[f.study_uid] = (per_study[f.study_uid] or 0) + 1 end
    for _, f in ipairs(made) do
      local back = dir .. "/" .. f.study_uid .. "/" .. f.sop_instance_uid .. ".dcm"
      assert.is_true(H.file_bytes(back) == H.file_bytes(f.path), "differs or missing: " .. back)
      -- the count Orthanc gives, printed as an integer under Lua 5.4 and LuaJIT alike
      assert.is_truthy(out:find("study " .. f.study_uid .. "  .-  " .. per_study[f.study_uid] .. " instance%(s%)\n"), out)
    end
  end)

  it("says so when the patient has no study, and exits 0", function()
    local out, err, code = example({}, { E.dicomweb, "SPEC54-NOBODY-" .. core.random_hex(4), H.tmpdir() }, FETCH)
    assert.equal(0, code, err)
    assert.equal("0 studies fetched, 0 failed\n", out)
  end)

  it("exits 2 with a usage line when arguments are missing", function()
    local out, err, code = example({}, { E.dicomweb }, FETCH)
    assert.equal(2, code)
    assert.equal("", out)
    assert.equal("usage: fetch_patient.lua <DICOMweb URL | dicomStore name> <PatientID> <folder>\n", err)
  end)
end)
