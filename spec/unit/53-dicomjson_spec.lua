-- SPDX-License-Identifier: MIT
-- healthcare.dicomweb.dicomjson, without a server: reading STOW-RS answers (stored, warnings,
-- failures, Google's private FailureDetail in each form it may take), NativeDicomModel XML written
-- here by hand, keywords and tags, and data sets read by keyword or tag (PN, numbers, several
-- values, sequences, bulk data). spec/53 reads XML answers captured from the emulator.
local cjson = require "cjson"
local dicomjson = require "healthcare.dicomweb.dicomjson"

local SOP1 = "1.2.3.4.5.6.7.8.1"
local SOP2 = "1.2.3.4.5.6.7.8.2"
local CLASS = "1.2.840.10008.5.1.4.1.1.7"

local function ui(v) return { vr = "UI", Value = { v } } end
local function us(v) return { vr = "US", Value = { v } } end
local function lo(v) return { vr = "LO", Value = { v } } end
local function lt(v) return { vr = "LT", Value = { v } } end
local function sq(items) return { vr = "SQ", Value = items } end

local function item(sop, extra)
  local it_ = { ["00081150"] = ui(CLASS), ["00081155"] = ui(sop) }
  for k, v in pairs(extra or {}) do it_[k] = v end
  return it_
end

describe("dicomjson.value and items", function()
  it("read the first value and the items of a sequence, tolerating absent or odd shapes", function()
    local ds = { ["00081190"] = { vr = "UR", Value = { "http://x/studies/1" } }, ["00081199"] = sq({ { a = 1 } }) }
    assert.equal("http://x/studies/1", dicomjson.value(ds, "00081190"))
    assert.equal(1, #dicomjson.items(ds, "00081199"))
    assert.same({}, dicomjson.items(ds, "00081198"))
    assert.is_nil(dicomjson.value(ds, "00081198"))
    assert.is_nil(dicomjson.value({ ["00081190"] = { vr = "UR" } }, "00081190"))
    assert.is_nil(dicomjson.value("not a table", "00081190"))
    assert.same({}, dicomjson.items(nil, "00081199"))
  end)
end)

describe("dicomjson.reason_text", function()
  local cases = {
    { 0x0110, "0x0110 processing failure" },
    { 272, "0x0110 processing failure" },
    { 0xA700, "0xA700 out of resources" },
    { 0xC122, "0xC122 referenced transfer syntax not supported" },
    { 0xB000, "0xB000 coercion of data elements" },
    { 0xB006, "0xB006 elements discarded" },
    { 0xB007, "0xB007 data set does not match SOP class" },
    { 0xC0FF, "0xC0FF" },
  }
  for _, c in ipairs(cases) do
    it("names " .. c[2], function()
      assert.equal(c[2], dicomjson.reason_text(c[1]))
    end)
  end
  it("gives nil for a missing code", function()
    assert.is_nil(dicomjson.reason_text(nil))
    assert.is_nil(dicomjson.reason_text("272"))
  end)
end)

describe("dicomjson.private_text", function()
  local cases = {
    { "block 10, as Google writes DICOM JSON",
      { ["00090010"] = lo("GOOGLE"), ["00091097"] = lt("already exists") }, "already exists" },
    { "another block, after someone else's creator",
      { ["00090010"] = lo("ACME"), ["00091097"] = lt("not ours"),
        ["00090011"] = lo("GOOGLE"), ["00091197"] = lt("ours") }, "ours" },
    { "a creator padded with a space (LO values are padded to even length)",
      { ["00090012"] = lo("GOOGLE "), ["00091297"] = lt("padded") }, "padded" },
    { "the 00090097 form without a creator block",
      { ["00090097"] = lt("seen in XML") }, "seen in XML" },
    { "nothing when only another creator has element 97",
      { ["00090010"] = lo("ACME"), ["00091097"] = lt("not ours") }, nil },
    { "nothing in an empty item", {}, nil },
  }
  for _, c in ipairs(cases) do
    it("finds the text in " .. c[1], function()
      assert.equal(c[3], dicomjson.private_text(c[2], "0009", "GOOGLE", "97"))
    end)
  end
end)

describe("dicomjson.outcomes", function()
  it("maps ReferencedSOPSequence items to stored, with their warning", function()
    local out = dicomjson.outcomes({
      ["00081190"] = { vr = "UR", Value = { "http://x/studies/1" } },
      ["00081199"] = sq({ item(SOP1), item(SOP2, { ["00081196"] = us(0xB000) }) }),
      ["00081198"] = sq({}),
    })
    assert.same({ outcome = "stored" }, out[SOP1])
    assert.same({ outcome = "stored", warning = "0xB000 coercion of data elements" }, out[SOP2])
  end)

  it("maps FailedSOPSequence items to failed, with the reason and Google's FailureDetail", function()
    local out = dicomjson.outcomes({
      ["00081198"] = sq({
        item(SOP1, { ["00081197"] = us(272), ["00090010"] = lo("GOOGLE"),
          ["00091097"] = lt("an instance with the same SOP Instance UID already exists") }),
        item(SOP2, { ["00081197"] = us(0xC122) }),
      }),
    })
    assert.same({ outcome = "failed", failure_reason = 272,
      detail = "an instance with the same SOP Instance UID already exists",
      reason = "0x0110 processing failure: an instance with the same SOP Instance UID already exists" }, out[SOP1])
    assert.same({ outcome = "failed", failure_reason = 0xC122,
      reason = "0xC122 referenced transfer syntax not supported" }, out[SOP2])
  end)

  it("reads the 00090097 form of FailureDetail in JSON too", function()
    local out = dicomjson.outcomes({
      ["00081198"] = sq({ item(SOP1, { ["00081197"] = us(272), ["00090097"] = lt("invalid DICOM") }) }),
    })
    assert.equal("0x0110 processing failure: invalid DICOM", out[SOP1].reason)
  end)

  it("cuts a server's FailureDetail to MAX_DETAIL bytes: it goes to the report, the journal and stderr", function()
    local huge = string.rep("x", 1024 * 1024)
    local out = dicomjson.outcomes({
      ["00081198"] = sq({ item(SOP1, { ["00081197"] = us(272), ["00090097"] = lt(huge) }) }),
    })
    assert.is_true(#out[SOP1].detail <= dicomjson.MAX_DETAIL + 40, #out[SOP1].detail)
    assert.matches("^x+%.%.%. %(1048576 bytes in all%)$", out[SOP1].detail)
    assert.equal("0x0110 processing failure: " .. out[SOP1].detail, out[SOP1].reason)
    assert.equal(1024, dicomjson.MAX_DETAIL)
  end)

  it("says 'failed' for a failure item without a reason, and ignores items without a UID", function()
    local out = dicomjson.outcomes({
      ["00081198"] = sq({ { ["00081150"] = ui(CLASS) }, { ["00081155"] = ui(SOP1) } }),
      ["00081199"] = sq({ { ["00081150"] = ui(CLASS) } }),
    })
    assert.same({ [SOP1] = { outcome = "failed", reason = "failed" } }, out)
  end)

  it("gives an empty table for an answer without sequences (Orthanc after a truncated body)", function()
    assert.same({}, dicomjson.outcomes({ ["00081190"] = { vr = "UR" } }))
    assert.same({}, dicomjson.outcomes({}))
  end)
end)

describe("dicomjson.from_xml", function()
  local XML = [[<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xml:space="preserve">
  <DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL"><Value number="1">http://x/studies/1.2</Value></DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">]] .. CLASS .. [[</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">]] .. SOP2 .. [[</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">272</Value></DicomAttribute>
      <DicomAttribute tag="00090097" vr="LT" privateCreator="GOOGLE"><Value number="1">checksum &amp; UID mismatch</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081150" vr="UI"><Value number="1">]] .. CLASS .. [[</Value></DicomAttribute>
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">]] .. SOP1 .. [[</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US"><Value number="1">45062</Value></DicomAttribute>
      <DicomAttribute tag="00101010" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>X</FamilyName></Alphabetic></PersonName></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="0020000d" vr="UI"></DicomAttribute>
</NativeDicomModel>
]]

  it("keeps a number XML gives in a form DICOM has not (hex, an infinity, NaN) as text; outcomes name no code "
    .. "for it", function()
    for _, odd in ipairs({ "0x110", "1e999", "-1e999", "nan", "inf", "2.5", "70000", "-1" }) do
      local ds = assert(dicomjson.from_xml((XML:gsub(">272<", ">" .. odd .. "<"))))
      local failed = dicomjson.items(ds, "00081198")
      local code = dicomjson.value(failed[1], "00081197")
      if odd == "2.5" or odd == "70000" or odd == "-1" then
        assert.equal(tonumber(odd), code)
      else
        assert.equal(odd, code)
      end
      assert.equal("failed: checksum & UID mismatch", dicomjson.outcomes(ds)[SOP2].reason, odd)
    end
    assert.is_nil(dicomjson.reason_text(0 / 0))
    assert.is_nil(dicomjson.reason_text(math.huge))
  end)

  it("turns NativeDicomModel into the DICOM JSON shape, numbers as numbers", function()
    local ds = assert(dicomjson.from_xml(XML))
    assert.equal("http://x/studies/1.2", dicomjson.value(ds, "00081190"))
    local stored = dicomjson.items(ds, "00081199")
    assert.equal(1, #stored)
    assert.equal(SOP1, dicomjson.value(stored[1], "00081155"))
    assert.equal(45062, dicomjson.value(stored[1], "00081196"))
    local failed = dicomjson.items(ds, "00081198")
    assert.equal(272, dicomjson.value(failed[1], "00081197"))
    -- the private attribute got a block and its creator, as in DICOM JSON
    assert.equal("GOOGLE", dicomjson.value(failed[1], "00090010"))
    assert.equal("checksum & UID mismatch", dicomjson.value(failed[1], "00091097"))
    -- an empty attribute and lower-case hex in a tag
    assert.same({ vr = "UI" }, ds["0020000D"])
  end)

  it("gives the same outcomes as the JSON form", function()
    local out = dicomjson.outcomes(assert(dicomjson.from_xml(XML)))
    assert.same({ outcome = "stored", warning = "0xB006 elements discarded" }, out[SOP1])
    assert.equal("failed", out[SOP2].outcome)
    assert.equal("0x0110 processing failure: checksum & UID mismatch", out[SOP2].reason)
    assert.equal("checksum & UID mismatch", out[SOP2].detail)
  end)

  it("keeps creators apart: another creator's block is not taken for GOOGLE", function()
    local ds = assert(dicomjson.from_xml([[<NativeDicomModel>
      <DicomAttribute tag="00090010" vr="LO"><Value number="1">ACME</Value></DicomAttribute>
      <DicomAttribute tag="00091097" vr="LT"><Value number="1">acme text</Value></DicomAttribute>
      <DicomAttribute tag="00090097" vr="LT" privateCreator="GOOGLE"><Value number="1">google text</Value></DicomAttribute>
    </NativeDicomModel>]]))
    assert.equal("ACME", dicomjson.value(ds, "00090010"))
    assert.equal("GOOGLE", dicomjson.value(ds, "00090011"))
    assert.equal("google text", dicomjson.private_text(ds, "0009", "GOOGLE", "97"))
  end)

  it("accepts a private attribute that already names its block", function()
    local ds = assert(dicomjson.from_xml([[<NativeDicomModel>
      <DicomAttribute tag="00091297" vr="LT" privateCreator="GOOGLE"><Value number="1">t</Value></DicomAttribute>
    </NativeDicomModel>]]))
    assert.equal("GOOGLE", dicomjson.value(ds, "00090012"))
    assert.equal("t", dicomjson.private_text(ds, "0009", "GOOGLE", "97"))
  end)

  local bad = {
    { "an empty body", "" },
    { "plain text", "Service Unavailable" },
    { "an unclosed element", "<NativeDicomModel><DicomAttribute tag=\"00081199\" vr=\"SQ\">" },
  }
  for _, c in ipairs(bad) do
    it("says 'malformed XML answer' for " .. c[1], function()
      local ds, err = dicomjson.from_xml(c[2])
      assert.is_nil(ds)
      assert.matches("^malformed XML answer: ", err)
    end)
  end
end)

describe("keywords and tags", function()
  local cases = {
    { "PatientID", "00100020", "LO" }, { "00100020", "00100020", "LO" }, { "0020000d", "0020000D", "UI" },
    { "StudyInstanceUID", "0020000D", "UI" }, { "PatientName", "00100010", "PN" },
    { "ReferencedSOPSequence", "00081199", "SQ" },
    { "NoSuchKeyword", nil, nil }, { "0010002", nil, nil }, { "patientid", nil, nil }, { "", nil, nil },
  }
  for _, c in ipairs(cases) do
    it("reads " .. c[1], function()
      local tag = dicomjson.to_tag(c[1])
      assert.equal(c[2], tag)
      if tag then
        assert.equal(c[3], dicomjson.vr_of(tag))
        assert.equal(c[1]:match("^%x+$") and dicomjson.keyword_of(tag) or c[1], dicomjson.keyword_of(tag))
      end
    end)
  end

  it("knows repeating groups and leaves private tags without a keyword", function()
    assert.is_string(dicomjson.keyword_of("60000010"))   -- OverlayRows, group 60xx
    assert.equal(dicomjson.keyword_of("60000010"), dicomjson.keyword_of("60020010"))
    assert.is_nil(dicomjson.keyword_of("00090097"))
    assert.is_nil(dicomjson.to_tag(42))
  end)
end)

describe("dicomjson.dataset", function()
  local pn = { vr = "PN", Value = { { Alphabetic = "Doe^Jane", Ideographic = "X" } } }
  local raw = {
    ["00100010"] = pn,
    ["00100020"] = lo("P-1"),
    ["00280010"] = us(512),
    ["00080061"] = { vr = "CS", Value = { "CT", "MR" } },
    ["00201208"] = { vr = "IS", Value = { 3 } },
    ["00181050"] = { vr = "DS", Value = { 0.5, 1.25 } },
    ["00080020"] = { vr = "DA" },
    ["00081030"] = { vr = "LO", Value = {} },
    ["00081199"] = sq({ item(SOP1), item(SOP2) }),
    ["00081198"] = sq({ item(SOP1) }),
    ["7FE00010"] = { vr = "OW", BulkDataURI = "http://h/bulk/1" },
    ["00090010"] = lo("GOOGLE"),
    ["00100021"] = { vr = "LO", Value = { "A", cjson.null } },
    ["00101010"] = { vr = "PN", Value = { {} } },
  }
  local ds = dicomjson.dataset(raw)

  local cases = {
    { "PatientName", "Doe^Jane" }, { "00100010", "Doe^Jane" }, { "PatientID", "P-1" }, { "Rows", 512 },
    { "ModalitiesInStudy", { "CT", "MR" } }, { "NumberOfStudyRelatedInstances", 3 },
    { "PixelSpacing", nil }, { "StudyDate", nil }, { "StudyDescription", nil }, { "NoSuchKeyword", nil },
    { "PatientAge", "" },
  }
  for _, c in ipairs(cases) do
    it("gives " .. c[1], function()
      assert.same(c[2], ds[c[1]])
      assert.same(c[2], ds[c[1]]) -- again, from the cache
    end)
  end

  it("gives whole-number VRs as integers, as JSON decoding leaves them floats (3.0 under Lua 5.4)", function()
    -- cjson's own numbers: what a search answer carries
    local decoded = dicomjson.dataset(cjson.decode('{"00201208":{"vr":"IS","Value":[3]},'
      .. '"00280010":{"vr":"US","Value":[512,256]},"00181050":{"vr":"DS","Value":[2]}}'))
    assert.equal("3", tostring(decoded.NumberOfStudyRelatedInstances))
    assert.equal("3 instance(s)", string.format("%s instance(s)", decoded.NumberOfStudyRelatedInstances))
    assert.equal("512 256", tostring(decoded.Rows[1]) .. " " .. tostring(decoded.Rows[2]))
    if math.type then
      assert.equal("integer", math.type(decoded.NumberOfStudyRelatedInstances))
      assert.equal("float", math.type(decoded["00181050"])) -- DS is a decimal: left as it came
    end
  end)

  it("gives several numbers as a list, a JSON null kept in its place", function()
    assert.same({ 0.5, 1.25 }, ds["00181050"])
    assert.same({ "A", cjson.null }, ds.IssuerOfPatientID)
  end)

  it("gives a sequence as a list of data sets, even of one item", function()
    local items = ds.ReferencedSOPSequence
    assert.equal(2, #items)
    assert.is_true(dicomjson.is_dataset(items[1]))
    assert.equal(SOP2, items[2].ReferencedSOPInstanceUID)
    local one = ds.FailedSOPSequence
    assert.equal(1, #one)
    assert.equal(CLASS, one[1]["00081150"])
  end)

  it("leaves out sequence items that are not objects (a broken answer): reading never raises", function()
    local broken = dicomjson.dataset(cjson.decode('{"00080020":{"vr":"SQ","Value":[1,"x",{"00100020":'
      .. '{"vr":"LO","Value":["P"]}},null]},"00081115":{"vr":"SQ","Value":[true]}}'))
    local ok, items = pcall(function() return broken.StudyDate end)
    assert(ok, items)
    assert.equal(1, #items)
    assert.equal("P", items[1].PatientID)
    assert.is_nil(broken.ReferencedSeriesSequence)
  end)

  it("gives bulk data as the element, unfetched", function()
    assert.same({ vr = "OW", BulkDataURI = "http://h/bulk/1" }, ds.PixelData)
  end)

  it("has methods that no keyword hides: raw, keywords, vr", function()
    assert.equal(raw, ds:raw())
    local kws = ds:keywords()
    assert.equal("StudyDate", kws[1])
    assert.truthy(table.concat(kws, " "):find("00090010", 1, true)) -- private: its tag
    assert.equal("PN", ds:vr("PatientName"))
    assert.is_nil(ds:vr("StudyInstanceUID"))
    assert.equal("DICOM data set (14 elements)", tostring(ds))
  end)

  it("raises for what is not a DICOM JSON object", function()
    assert.has_error(function() dicomjson.dataset("x") end,
      "bad argument #1 to 'dataset' (DICOM JSON object expected, got string)")
  end)
end)
