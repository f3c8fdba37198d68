-- SPDX-License-Identifier: MIT
-- core.dicom_probe at the C/Lua seam, on files this spec writes byte by byte (no Python, no
-- server): the table it returns, the one error value it returns for files that are not DICOM or
-- cannot be read (nil, err with kind, status, message, retryable = false), and the raise for
-- misuse. spec/30-dicom_probe_spec.lua checks the probe itself against pydicom; spec/c/test_dicom.c
-- checks the C probe, the in-memory form against the file form.
local core = require "healthcare.core"

local SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
local SOP = "1.2.826.0.1.3680043.8.498.11"
local STUDY = "1.2.826.0.1.3680043.8.498.12"
local SERIES = "1.2.826.0.1.3680043.8.498.13"
local EXPLICIT_LE = "1.2.840.10008.1.2.1"

-- Little-endian integers without string.pack (LuaJIT has none).
local function le(n, bytes)
  local out = {}
  for i = 1, bytes do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end

-- An explicit VR little endian element: UI and UL have a 2-byte length, OB a 4-byte one.
local function element(group, elem, vr, value)
  if #value % 2 == 1 then value = value .. (vr == "UI" and "\0" or " ") end
  local head = le(group, 2) .. le(elem, 2) .. vr
  if vr == "OB" then return head .. "\0\0" .. le(#value, 4) .. value end
  return head .. le(#value, 2) .. value
end

-- A Part-10 file: the preamble and "DICM" (or neither), the File Meta Information, a data set.
local function part10(opts)
  opts = opts or {}
  local meta = table.concat({
    element(0x0002, 0x0001, "OB", "\0\1"),
    element(0x0002, 0x0002, "UI", SOP_CLASS),
    element(0x0002, 0x0003, "UI", SOP),
    element(0x0002, 0x0010, "UI", opts.ts or EXPLICIT_LE),
  })
  meta = element(0x0002, 0x0000, "UL", le(#meta, 4)) .. meta
  local dataset = table.concat({
    element(0x0008, 0x0016, "UI", SOP_CLASS),
    element(0x0008, 0x0018, "UI", SOP),
    element(0x0010, 0x0020, "LO", "P-1"),
    element(0x0020, 0x000D, "UI", STUDY),
    element(0x0020, 0x000E, "UI", SERIES),
    element(0x0020, 0x0013, "IS", "1"),
  })
  local head = (opts.no_preamble and "" or string.rep("\0", 128) .. "DICM") .. meta
  return head .. dataset, #head
end

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -m 700 " .. dir))

local function file(name, bytes)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
  return path
end

-- Asserts the one error shape of the C core, and returns err.
local function assert_error(info, err, kind, status, message)
  assert.is_nil(info)
  assert.equal(core.Error, getmetatable(err))
  assert.same({ kind, status, false }, { err.kind, err.status, err.retryable })
  assert.equal(message, err.message)
  assert.equal(message, tostring(err))
  assert.is_nil(rawget(err, "code"))
  return err
end

teardown(function() os.execute("rm -rf " .. dir) end)

describe("core.dicom_probe", function()
  it("reads the UIDs and offsets of a Part-10 file", function()
    local bytes, dataset_offset = part10()
    local info = assert(core.dicom_probe(file("a.dcm", bytes)))
    assert.same({
      transfer_syntax = EXPLICIT_LE, media_sop_class_uid = SOP_CLASS, media_sop_instance_uid = SOP,
      sop_class_uid = SOP_CLASS, sop_instance_uid = SOP, study_uid = STUDY, series_uid = SERIES,
      preamble = true, deflated_fallback = false, dataset_offset = dataset_offset, size = #bytes,
    }, { transfer_syntax = info.transfer_syntax, media_sop_class_uid = info.media_sop_class_uid,
      media_sop_instance_uid = info.media_sop_instance_uid, sop_class_uid = info.sop_class_uid,
      sop_instance_uid = info.sop_instance_uid, study_uid = info.study_uid, series_uid = info.series_uid,
      preamble = info.preamble, deflated_fallback = info.deflated_fallback,
      dataset_offset = info.dataset_offset, size = info.size })
    assert.is_true(info.bytes_read > 0 and info.bytes_read <= #bytes)
  end)

  it("reads a file without the preamble", function()
    local bytes, dataset_offset = part10 { no_preamble = true }
    local info = assert(core.dicom_probe(file("b.dcm", bytes)))
    assert.is_false(info.preamble)
    assert.equal(dataset_offset, info.dataset_offset)
    assert.equal(SERIES, info.series_uid)
  end)

  it("returns nil, err (kind \"dicom\", status \"format\") for what is not a usable Part-10 file", function()
    local bytes = part10()
    for _, case in ipairs({
      { "empty", "", "not a DICOM file (empty)" },
      { "text", "not DICOM at all, just some text long enough to hold a preamble\n",
        "not a DICOM file (no DICM prefix)" },
      { "cut", bytes:sub(1, #bytes - 20), "^truncated at offset %d+$" },
      { "unknown transfer syntax", part10 { ts = "1.2.3.4" }, "unsupported transfer syntax 1.2.3.4" },
    }) do
      local info, err = core.dicom_probe(file(case[1], case[2]))
      assert.is_nil(info, case[1])
      assert.same({ "dicom", "format", false }, { err.kind, err.status, err.retryable }, case[1])
      assert.truthy(err.message:find(case[3], 1, case[3]:sub(1, 1) ~= "^"), err.message)
    end
  end)

  it("returns nil, err (kind \"io\", status \"read\") for a file that cannot be read", function()
    local info, err = core.dicom_probe("/nonexistent/dir/x.dcm")
    assert_error(info, err, "io", "read", "cannot open /nonexistent/dir/x.dcm: No such file or directory")
    info, err = core.dicom_probe(dir)
    assert.is_nil(info)
    assert.same({ "io", "read" }, { err.kind, err.status })
    assert.truthy(err.message:find("Is a directory", 1, true), err.message)
  end)

  it("raises for misuse, naming the argument", function()
    for _, bad in ipairs({ { nil, "string expected, got nil" }, { {}, "string expected, got table" },
      { "a\0b", "path contains a NUL byte" } }) do
      assert.error_matches(function() core.dicom_probe(bad[1]) end,
        "bad argument #1 to 'dicom_probe' (" .. bad[2] .. ")", nil, true)
    end
  end)

  it("is the only probe the module ships (the in-memory one is C's)", function()
    assert.is_nil(core.dicom_probe_string)
  end)
end)
