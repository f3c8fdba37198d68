-- SPDX-License-Identifier: MIT
-- The DICOM header probe of healthcare.core, checked against pydicom (not
-- our code) over every file pydicom ships as test data and over files
-- pydicom writes here with fresh UIDs: each transfer syntax, no preamble,
-- nested sequences before the UIDs, deflated with fallback, cuts at every
-- offset of a header, and the reasons given. Needs Python (pydicom), so it
-- is not in the unit lane: spec/unit/30-dicom_probe_spec.lua checks the
-- error values and misuse without it.
local core = require "healthcare.core"
local cjson = require "cjson"

local PYTHON = "/usr/bin/python3"
local SPEC_DIR = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local ORACLE = SPEC_DIR .. "/fixtures/dicom/pydicom_oracle.py"

local UID_KEYS = {
  "transfer_syntax", "media_sop_class_uid", "media_sop_instance_uid",
  "sop_class_uid", "sop_instance_uid", "study_uid", "series_uid",
}

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs a shell command, returns its stdout; fails the spec when it fails.
local function run(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  local ok, how, code = p:close()
  assert(ok, ("command failed (%s %s): %s"):format(how, code, cmd))
  return out
end

local function read_all(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function write_all(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function oracle(paths)
  local args = {}
  for i, p in ipairs(paths) do args[i] = quote(p) end
  local list = cjson.decode(run(PYTHON .. " " .. quote(ORACLE) .. " expect "
                                .. table.concat(args, " ")))
  local by_path = {}
  for _, e in ipairs(list) do by_path[e.path] = e end
  return by_path
end

-- Asserts that a probe result says what pydicom says about the file.
local function assert_like_oracle(info, err, want)
  assert.is_table(info, err)
  for _, k in ipairs(UID_KEYS) do
    local w = want[k]
    if w == cjson.null then w = nil end
    assert.are.equal(w, info[k], k)
  end
  assert.are.equal(want.preamble, info.preamble)
  assert.are.equal(want.dataset_offset, info.dataset_offset)
  assert.are.equal(want.size, info.size)
  assert.is_false(info.deflated_fallback)
end

local TEST_FILES = run(PYTHON .. " -c 'import pydicom,os;"
                       .. "print(os.path.dirname(pydicom.__file__))'"):gsub("%s+$", "")
                   .. "/data/test_files"

describe("dicom_probe", function()
  describe("over pydicom's test files", function()
    local paths = {}
    for line in run("find " .. quote(TEST_FILES) .. " -type f | LC_ALL=C sort"):gmatch("[^\n]+") do
      paths[#paths + 1] = line
    end
    local expected = oracle(paths)
    local seen = { files = 0, probed = 0, refused = 0, deflated = 0, big = 0, implicit = 0 }
    local refusals = {}

    for _, path in ipairs(paths) do
      local want = expected[path]
      local name = path:sub(#TEST_FILES + 2)
      if want.ok then
        it("reads " .. name .. " as pydicom does", function()
          local info, err = core.dicom_probe(path)
          assert_like_oracle(info, err, want)
          seen.probed = seen.probed + 1
          local ts = info.transfer_syntax
          if ts == "1.2.840.10008.1.2.1.99" then seen.deflated = seen.deflated + 1 end
          if ts == "1.2.840.10008.1.2.2" then seen.big = seen.big + 1 end
          if ts == "1.2.840.10008.1.2" then seen.implicit = seen.implicit + 1 end
        end)
      else
        it("refuses " .. name .. " (pydicom: " .. want.why .. ")", function()
          local info, err = core.dicom_probe(path)
          assert.is_nil(info)
          assert.are.same({ "dicom", "format" }, { err.kind, err.status })
          seen.refused = seen.refused + 1
          refusals[err.message] = (refusals[err.message] or 0) + 1
        end)
      end
      seen.files = seen.files + 1
    end

    it("covered every file, deflated and big endian ones included", function()
      assert.are.equal(seen.files, seen.probed + seen.refused)
      assert.is_true(seen.files >= 150)
      assert.is_true(seen.probed >= 120)
      assert.is_true(seen.deflated >= 1)
      assert.is_true(seen.big >= 5)
      assert.is_true(seen.implicit >= 5)
      local lines = {}
      for reason, n in pairs(refusals) do lines[#lines + 1] = ("  %3d %s"):format(n, reason) end
      table.sort(lines)
      io.stderr:write(("\npydicom corpus: %d files, %d probed (%d deflated, %d big endian, "
                       .. "%d implicit), %d refused:\n%s\n"):format(
        seen.files, seen.probed, seen.deflated, seen.big, seen.implicit, seen.refused,
        table.concat(lines, "\n")))
    end)
  end)

  describe("over files pydicom writes", function()
    local dir = run("mktemp -d /tmp/hc_dicom_spec.XXXXXX"):gsub("%s+$", "")
    local manifest = cjson.decode(run(PYTHON .. " " .. quote(ORACLE) .. " generate " .. quote(dir)))
    local paths = {}
    for _, m in ipairs(manifest) do
      m.path = dir .. "/" .. m.name
      if not m.error and m.oracle ~= false then paths[#paths + 1] = m.path end
    end
    local expected = oracle(paths)

    teardown(function()
      run("rm -rf " .. quote(dir))
    end)

    for _, m in ipairs(manifest) do
      if m.error then
        it("refuses " .. m.name .. " with \"" .. m.error .. "\"", function()
          local info, err = core.dicom_probe(m.path)
          assert.is_nil(info)
          assert.are.equal(m.error, err.message)
          assert.are.equal("dicom", err.kind)
        end)
      elseif m.deflated_fallback then
        it("falls back to the meta UIDs for " .. m.name, function()
          local info = assert(core.dicom_probe(m.path))
          assert.is_true(info.deflated_fallback)
          assert.are.equal(m.sop_instance_uid, info.sop_instance_uid)
          assert.are.equal(m.sop_class_uid, info.sop_class_uid)
          assert.are.equal(m.sop_instance_uid, info.media_sop_instance_uid)
          assert.is_nil(info.study_uid)
          assert.is_nil(info.series_uid)
          assert.is_true(info.bytes_read <= 1024 * 1024)
          if m.oracle ~= false then
            -- pydicom reads the data set the probe gave up on: same UIDs
            assert.are.equal(expected[m.path].sop_instance_uid, info.sop_instance_uid)
          end
        end)
      else
        it("reads " .. m.name .. " as pydicom does", function()
          local want = expected[m.path]
          assert.is_true(want.ok, want.why)
          local info, err = core.dicom_probe(m.path)
          assert_like_oracle(info, err, want)
          if m.preamble ~= nil then assert.are.equal(m.preamble, info.preamble) end
        end)
      end
      if m.series_end then
        it("refuses " .. m.name .. " cut anywhere before Series Instance UID ends", function()
          local data = read_all(m.path)
          local want = expected[m.path]
          local cut_path = dir .. "/cut.dcm"
          for cut = 0, m.series_end - 1 do
            write_all(cut_path, data:sub(1, cut))
            local info, err = core.dicom_probe(cut_path)
            if info then
              error(("cut at %d accepted: %s"):format(cut, cjson.encode(info)))
            end
            assert.are.same({ "dicom", "format" }, { err.kind, err.status })
          end
          write_all(cut_path, data:sub(1, m.series_end))
          local info = assert(core.dicom_probe(cut_path))
          assert.are.equal(want.series_uid, info.series_uid)
          write_all(cut_path, data:sub(1, m.series_end - 1))
          local _, err = core.dicom_probe(cut_path)
          assert.matches("^truncated at offset %d+$", err.message)
        end)
      end
    end
  end)
end)
