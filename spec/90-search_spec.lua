-- SPDX-License-Identifier: MIT
-- Search (QIDO-RS): store:search_studies/series/instances against the test bed's Orthanc (its
-- DICOMweb plugin) and the Google-shaped emulator, with studies of our own (fresh UIDs and a
-- PatientID prefix no other spec uses). Google-only behaviour that neither server shows (a
-- Warning on a capped answer, 204, a server ignoring limit, an HTML error page) comes from a
-- scripted server started here.
local H = require "helpers"
local hc = require "healthcare"
local dicomjson = require "healthcare.dicomweb.dicomjson"

if not H.need_testbed() then return end
local E = H.env

local P = string.format("SRCH%d", math.random(1, 1e9))
local A, B = P .. "-A", P .. "-B"

-- S1..S5, in study date order. Orthanc lists results in its own order; tests compare sets, or
-- compare against a full listing fetched the same way.
local S = {}
local function setup_studies()
  local spec = {
    { A, "20190315", { { modality = "CT", count = 2 }, { modality = "SR", count = 1 } }, "alpha" },
    { A, "20200601", { { modality = "MR", count = 1 } }, "beta" },
    { A, "20201231", { { modality = "CT", count = 1 } }, "gamma" },
    { B, "20210110", { { modality = "US", count = 1 } }, "delta" },
    { B, "20220202", { { modality = "MR", count = 2 } }, "epsilon" },
  }
  for i, s in ipairs(spec) do
    S[i] = H.make_study { patient_id = s[1], study_date = s[2], series = s[3], study_description = s[4],
      patient_name = "Search^Test" }
  end
end

local function set_of(items, key)
  local set, n = {}, 0
  for _, it in ipairs(items) do
    local v = it[key]
    assert.is_nil(set[v], "seen twice: " .. tostring(v))
    set[v] = true
    n = n + 1
  end
  return set, n
end

local function uids(...)
  local set = {}
  for _, i in ipairs({ ... }) do set[S[i].study_uid] = true end
  return set
end

-- A store with a debug sink that keeps the request lines (the count of requests sent).
local function orthanc_store()
  local lines = {}
  local store = assert(hc.dicomweb(E.dicomweb, { debug = function(l) lines[#lines + 1] = l end }))
  local function gets()
    local out = {}
    for _, l in ipairs(lines) do
      local url = l:match("^> GET (%S+)")
      if url then out[#out + 1] = url end
    end
    return out
  end
  return store, gets
end

local function all(results)
  local list, err = results:all()
  assert(list, err and tostring(err))
  return list
end

describe("search against Orthanc", function()
  local store, gets
  lazy_setup(function()
    setup_studies()
    store, gets = orthanc_store()
  end)

  it("finds a patient's studies by PatientID; items are read by keyword and by tag", function()
    local items = all(assert(store:search_studies { PatientID = A }))
    assert.same(uids(1, 2, 3), (set_of(items, "StudyInstanceUID")))
    for _, item in ipairs(items) do
      assert.equal(A, item.PatientID)
      assert.equal(A, item["00100020"])
      assert.equal(item.StudyInstanceUID, item["0020000d"])
      assert.equal("Search^Test", item.PatientName) -- PN: the Alphabetic form
      assert.is_nil(item.PixelData)
      assert.is_nil(item.NoSuchKeyword)
      assert.equal("table", type(item:raw()["00100020"]))
      assert.equal("PN", item:vr("PatientName"))
      local kw = item:keywords()
      assert.truthy(#kw > 3)
      local has = {}
      for _, k in ipairs(kw) do has[k] = true end
      assert.is_true(has.PatientID and has.StudyInstanceUID and has.StudyDate)
      assert.equal("number", type(item.NumberOfStudyRelatedInstances))
    end
  end)

  it("matches a PatientID wildcard, a study date range and an open range", function()
    local items = all(assert(store:search_studies { PatientID = P .. "-*" }))
    assert.same(uids(1, 2, 3, 4, 5), (set_of(items, "StudyInstanceUID")))
    items = all(assert(store:search_studies { PatientID = P .. "*", StudyDate = "20200101-20201231" }))
    assert.same(uids(2, 3), (set_of(items, "StudyInstanceUID")))
    items = all(assert(store:search_studies { ["00100020"] = P .. "*", StudyDate = "20210101-" }))
    assert.same(uids(4, 5), (set_of(items, "StudyInstanceUID")))
    items = all(assert(store:search_studies { PatientID = P .. "-?", StudyDate = 20190315 }))
    assert.same(uids(1), (set_of(items, "StudyInstanceUID")))
  end)

  it("finds studies by ModalitiesInStudy, whatever the page size (Orthanc pages it wrongly)", function()
    local before = #gets()
    local r = assert(store:search_studies({ PatientID = P .. "*", ModalitiesInStudy = "CT" }, { page_size = 1 }))
    local items = all(r)
    assert.same(uids(1, 3), (set_of(items, "StudyInstanceUID")))
    for _, item in ipairs(items) do
      local m = item.ModalitiesInStudy
      if type(m) == "string" then m = { m } end
      local has = {}
      for _, x in ipairs(m) do has[x] = true end
      assert.is_true(has.CT)
    end
    -- one request with neither limit nor offset
    assert.equal(before + 1, #gets())
    assert.is_nil(gets()[#gets()]:find("limit=", 1, true))
    -- limit and offset applied here
    local full = all(assert(store:search_studies { PatientID = P .. "*", ModalitiesInStudy = "CT" }))
    local second = all(assert(store:search_studies { PatientID = P .. "*", ModalitiesInStudy = "CT", offset = 1 }))
    assert.equal(1, #second)
    assert.equal(full[2].StudyInstanceUID, second[1].StudyInstanceUID)
    assert.is_nil(gets()[#gets()]:find("offset=", 1, true))
    local first = all(assert(store:search_studies { PatientID = P .. "*", ModalitiesInStudy = "CT", limit = 1 }))
    assert.equal(1, #first)
    assert.equal(full[1].StudyInstanceUID, first[1].StudyInstanceUID)
    second = all(assert(store:search_studies({ PatientID = P .. "*", ModalitiesInStudy = "CT", limit = 1, offset = 1 },
      { page_size = 1 })))
    assert.equal(1, #second)
    assert.equal(full[2].StudyInstanceUID, second[1].StudyInstanceUID)
    assert.matches("limit=2$", gets()[#gets()])
  end)

  it("finds series by Modality, and reads sequences and lists", function()
    local items = all(assert(store:search_series { PatientID = P .. "*", Modality = "CT" }))
    assert.same({ [S[1].series[1].series_uid] = true, [S[3].series[1].series_uid] = true },
      (set_of(items, "SeriesInstanceUID")))
    for _, item in ipairs(items) do assert.equal("CT", item.Modality) end
    -- a list value: ModalitiesInStudy of S1 holds CT and SR
    items = all(assert(store:search_studies { StudyInstanceUID = S[1].study_uid }))
    assert.equal(1, #items)
    local m = items[1].ModalitiesInStudy
    table.sort(m)
    assert.same({ "CT", "SR" }, m)
  end)

  it("pages lazily: every item exactly once, one request per page, a short page ends it", function()
    local full = all(assert(store:search_studies { PatientID = P .. "*" }))
    assert.equal(5, #full)
    for _, case in ipairs({ { 2, 3 }, { 1, 6 }, { 5, 2 }, { 4, 2 }, { 100, 1 } }) do
      local page_size, requests = case[1], case[2]
      local before = #gets()
      local r = assert(store:search_studies({ PatientID = P .. "*" }, { page_size = page_size }))
      assert.equal(before, #gets()) -- nothing sent before iterating
      local seen = {}
      for item in r:each() do seen[#seen + 1] = item end
      assert.is_nil(r.error)
      assert.same(uids(1, 2, 3, 4, 5), (set_of(seen, "StudyInstanceUID")))
      for i = 1, 5 do assert.equal(full[i].StudyInstanceUID, seen[i].StudyInstanceUID) end
      assert.equal(requests, #gets() - before, "page_size " .. page_size)
      assert.equal(requests, r.requests)
    end
    -- the offsets asked for
    local before = #gets()
    all(assert(store:search_studies({ PatientID = P .. "*" }, { page_size = 2 })))
    local urls = gets()
    assert.matches("limit=2$", urls[before + 1])
    assert.matches("limit=2&offset=2$", urls[before + 2])
    assert.matches("limit=2&offset=4$", urls[before + 3])
  end)

  it("honours limit and offset across pages", function()
    local full = all(assert(store:search_studies { PatientID = P .. "*" }))
    -- query, opts, index of the first item expected, count, the limit&offset of each request
    local function check(query, opts, first, count, asked)
      query.PatientID = P .. "*"
      local before = #gets()
      local items = all(assert(store:search_studies(query, opts)))
      assert.equal(count, #items)
      for i = 1, count do assert.equal(full[first + i - 1].StudyInstanceUID, items[i].StudyInstanceUID) end
      local urls = gets()
      assert.equal(#asked, #urls - before)
      for i, a in ipairs(asked) do assert.equal(a, urls[before + i]:match("limit=.*$")) end
    end
    check({ limit = 2 }, nil, 1, 2, { "limit=2" })
    check({ limit = 3 }, { page_size = 2 }, 1, 3, { "limit=2", "limit=1&offset=2" })
    check({ offset = 3 }, nil, 4, 2, { "limit=100&offset=3" })
    check({ limit = 2, offset = 1 }, { page_size = 1 }, 2, 2, { "limit=1&offset=1", "limit=1&offset=2" })
    check({ limit = "4", offset = "2" }, { page_size = 2 }, 3, 3, { "limit=2&offset=2", "limit=2&offset=4" })
    check({ offset = 5 }, nil, 1, 0, { "limit=100&offset=5" })
  end)

  it("returns attributes asked for with includefield (keyword, tag or all)", function()
    local items = all(assert(store:search_instances { StudyInstanceUID = S[2].study_uid }))
    assert.is_nil(items[1].ConversionType) -- not a default attribute
    items = all(assert(store:search_instances { StudyInstanceUID = S[2].study_uid, includefield = "ConversionType" }))
    assert.equal("WSD", items[1].ConversionType)
    items = all(assert(store:search_studies { PatientID = A, StudyDate = "20200601" }))
    assert.is_nil(items[1].StudyDescription)
    items = all(assert(store:search_studies { PatientID = A, StudyDate = "20200601",
      includefield = { "StudyDescription", "00080090" } }))
    assert.equal(1, #items)
    assert.equal("beta", items[1].StudyDescription)
    assert.matches("includefield=00081030,00080090", gets()[#gets()], 1, true)
    -- "all" is sent as is; Orthanc (DICOMweb 1.7) answers with its default attributes
    items = all(assert(store:search_instances { StudyInstanceUID = S[2].study_uid, includefield = "all" }))
    assert.equal(1, #items)
    assert.equal(S[2].study_uid, items[1].StudyInstanceUID)
    assert.matches("includefield=all&limit=100", gets()[#gets()], 1, true)
  end)

  it("scopes series and instances by study and series UIDs", function()
    local before = #gets()
    local items = all(assert(store:search_series { StudyInstanceUID = S[1].study_uid }))
    assert.same({ [S[1].series[1].series_uid] = true, [S[1].series[2].series_uid] = true },
      (set_of(items, "SeriesInstanceUID")))
    assert.matches("/dicom-web/studies/" .. S[1].study_uid .. "/series?limit=100", gets()[before + 1], 1, true)

    items = all(assert(store:search_instances { StudyInstanceUID = S[1].study_uid,
      SeriesInstanceUID = S[1].series[1].series_uid }))
    local sops = {}
    for _, u in ipairs(S[1].series[1].instances) do sops[u] = true end
    assert.same(sops, (set_of(items, "SOPInstanceUID")))
    assert.matches("/studies/" .. S[1].study_uid .. "/series/" .. S[1].series[1].series_uid
      .. "/instances?limit=100", gets()[#gets()], 1, true)

    items = all(assert(store:search_instances { StudyInstanceUID = S[1].study_uid }))
    assert.equal(3, #items)
    for _, it_ in ipairs(items) do assert.equal(S[1].study_uid, it_.StudyInstanceUID) end

    -- a series UID alone is a matching key on /instances
    items = all(assert(store:search_instances { SeriesInstanceUID = S[5].series[1].series_uid }))
    assert.equal(2, #items)
    assert.matches("/dicom-web/instances?0020000E=" .. S[5].series[1].series_uid, gets()[#gets()], 1, true)

    -- UID list matching
    items = all(assert(store:search_studies { StudyInstanceUID = { S[1].study_uid, S[4].study_uid } }))
    assert.same(uids(1, 4), (set_of(items, "StudyInstanceUID")))

    -- a study nobody has: Orthanc answers an empty list
    items = all(assert(store:search_series { StudyInstanceUID = "1.2.3.4.5.6.7.8.9.999" }))
    assert.same({}, items)
  end)

  it("gives an empty list when nothing matches, after one request", function()
    local before = #gets()
    local r = assert(store:search_studies { PatientID = P .. "-NOBODY" })
    assert.same({}, all(r))
    assert.equal(1, #gets() - before)
    local n = 0
    for _ in r:each() do n = n + 1 end
    assert.equal(0, n)
    assert.is_nil(r.error)
  end)

  it("sends fuzzymatching (Orthanc accepts it and matches as without)", function()
    local items = all(assert(store:search_studies { PatientID = A, PatientName = "Search^Test", fuzzymatching = true }))
    assert.equal(3, #items)
    assert.matches("fuzzymatching=true", gets()[#gets()], 1, true)
  end)

  it("sends DICOM matching characters raw and percent-encodes the rest", function()
    all(assert(store:search_studies { PatientID = P .. "-?", PatientName = "Se* Te&st=+#%" }))
    local url = gets()[#gets()]
    assert.matches("00100010=Se*%20Te%26st%3D%2B%23%25&00100020=" .. P .. "-?&limit=100", url, 1, true)
  end)
end)

describe("search: bad input is refused before any request", function()
  local store, gets
  lazy_setup(function() store, gets = orthanc_store() end)

  local uid = "1.2.840.113619.2.55.3"
  local cases = {
    { "search_studies", { PatientId = "x" }, "SearchForStudies: unknown attribute 'PatientId'" },
    { "search_studies", { ["0010002"] = "x" }, "unknown attribute '0010002'" },
    { "search_studies", { ["0010002G"] = "x" }, "unknown attribute" },
    { "search_studies", { ["PatientID.Bad"] = "x" }, "unknown attribute 'PatientID.Bad'" },
    { "search_studies", { [""] = "x" }, "unknown attribute ''" },
    { "search_studies", { [1] = "x" }, "query keys must be strings" },
    { "search_studies", { PatientID = "a\nb" }, "PatientID contains a control character" },
    { "search_studies", { PatientID = "a\0b" }, "control character" },
    { "search_studies", { PatientID = true }, "must be a string, a number or a list" },
    { "search_studies", { PatientID = {} }, "an empty list matches nothing" },
    { "search_studies", { PatientID = { "a,b", "c" } }, "a list item contains ','" },
    { "search_studies", { PatientID = "x", ["00100020"] = "y" }, "given twice" },
    { "search_studies", { StudyInstanceUID = "1.2.x" }, "StudyInstanceUID '1.2.x' is not a UID" },
    { "search_studies", { StudyInstanceUID = { uid, "1..2" } }, "'1..2' is not a UID" },
    { "search_series", { StudyInstanceUID = "1.2/../3" }, "SearchForSeries: StudyInstanceUID '1.2/../3' is not a UID" },
    { "search_instances", { StudyInstanceUID = uid, SeriesInstanceUID = "../" .. uid }, "SearchForInstances: SeriesInstanceUID" },
    { "search_instances", { StudyInstanceUID = string.rep("1", 65) }, "is not a UID" },
    { "search_instances", { SOPInstanceUID = "1.2.3." }, "is not a UID" },
    { "search_studies", { limit = 0 }, "limit must be a positive integer, got '0'" },
    { "search_studies", { limit = -1 }, "limit must be a positive integer" },
    { "search_studies", { limit = "ten" }, "limit must be a positive integer, got 'ten'" },
    { "search_studies", { limit = 1.5 }, "limit must be a positive integer" },
    { "search_studies", { offset = -3 }, "offset must be a non-negative integer" },
    { "search_studies", { offset = "1e3" }, "offset must be a non-negative integer" },
    { "search_studies", { fuzzymatching = "yes" }, "fuzzymatching must be true or false, got 'yes'" },
    { "search_studies", { includefield = "Nope" }, "includefield: unknown attribute 'Nope'" },
    { "search_studies", { includefield = { "PatientID", 7 } }, "includefield must be a string or a list of strings" },
  }
  for _, c in ipairs(cases) do
    it(c[1] .. " refuses " .. c[3], function()
      local before = #gets()
      local r, err = store[c[1]](store, c[2])
      assert.is_nil(r)
      assert.equal("usage", err.kind)
      assert.matches(c[3], err.message, 1, true)
      assert.equal(0, #gets() - before)
    end)
  end

  it("raises for programming mistakes: a bad page_size, a query that is not a table, an unknown option", function()
    for _, v in ipairs({ 0, -1, 1.5, "x", "0" }) do
      assert.has_error(function() store:search_studies({}, { page_size = v }) end,
        "bad option 'page_size' to 'search_studies' (a whole number >= 1 expected, got "
        .. (type(v) == "string" and ("'" .. v .. "'") or tostring(v)) .. ")")
    end
    assert.truthy(store:search_studies({}, { page_size = "5" })) -- its digits as a string
    local ok, msg = pcall(function() store:search_studies("PatientID=x") end)
    assert.is_false(ok)
    -- raised at the caller's line
    assert.matches("90%-search_spec%.lua:%d+: bad argument #1 to 'search_studies' %(query table expected, got string%)", msg)
    ok, msg = pcall(function() store:search_studies({}, { pagesize = 5 }) end)
    assert.is_false(ok)
    assert.matches("90%-search_spec%.lua:%d+: unknown option 'pagesize' to 'search_studies'", msg)
    assert.equal(0, #gets())
  end)

  it("refuses an unknown standard query parameter", function()
    local r, err = store:search_studies({}, { params = { nope = "1" } })
    assert.is_nil(r)
    assert.matches("unknown parameter 'nope'", err.message, 1, true)
  end)
end)

describe("dicomjson keyword dictionary and data sets", function()
  it("maps keywords, tags and VRs, repeating groups included", function()
    assert.equal("00100020", dicomjson.tag_of("PatientID"))
    assert.equal("00080061", dicomjson.tag_of("ModalitiesInStudy"))
    assert.is_nil(dicomjson.tag_of("PatientId"))
    assert.is_nil(dicomjson.tag_of(42))
    assert.equal("StudyInstanceUID", dicomjson.keyword_of("0020000d"))
    assert.equal("PN", dicomjson.vr_of("00100010"))
    assert.equal("SQ", dicomjson.vr_of("00081115"))
    assert.is_nil(dicomjson.keyword_of("00091097")) -- private
    assert.is_nil(dicomjson.keyword_of("0010002"))
    assert.equal("60000010", dicomjson.tag_of("OverlayRows"))
    assert.equal("OverlayRows", dicomjson.keyword_of("60020010"))
    assert.equal("US", dicomjson.vr_of("60020010"))
    -- generated from pydicom: every keyword maps back to its tag
    local d = require "healthcare.dicomweb.dictionary"
    local n = 0
    for tag, e in pairs(d.tags) do
      n = n + 1
      assert.equal(tag, dicomjson.tag_of(e[2]))
    end
    assert.truthy(n > 4000)
    assert.matches("^%d+%.%d+", d.pydicom)
  end)

  it("wraps DICOM JSON: scalars, lists, PN, SQ, bulk data, absent values", function()
    local raw = {
      ["00100010"] = { vr = "PN", Value = { { Alphabetic = "Doe^Jane", Ideographic = "X" } } },
      ["00080061"] = { vr = "CS", Value = { "CT", "SR" } },
      ["00081115"] = { vr = "SQ", Value = { { ["0020000E"] = { vr = "UI", Value = { "1.2.3" } } }, {} } },
      ["7FE00010"] = { vr = "OB", BulkDataURI = "http://x/bulk" },
      ["00282000"] = { vr = "OB", InlineBinary = "AAEC" },
      ["00201208"] = { vr = "IS", Value = { 3 } },
      ["00081030"] = { vr = "LO" },
      ["00080020"] = { vr = "DA", Value = {} },
      ["00101001"] = { vr = "PN", Value = { { Alphabetic = "A^B" }, { Ideographic = "Y" } } },
    }
    local ds = dicomjson.dataset(raw)
    assert.equal("Doe^Jane", ds.PatientName)
    assert.same({ "CT", "SR" }, ds.ModalitiesInStudy)
    local seq = ds.ReferencedSeriesSequence
    assert.equal(2, #seq)
    assert.equal("1.2.3", seq[1].SeriesInstanceUID)
    assert.is_true(dicomjson.is_dataset(seq[2]))
    assert.is_nil(seq[2].SeriesInstanceUID)
    assert.equal(seq, ds.ReferencedSeriesSequence) -- the same wrappers each time
    assert.same({ vr = "OB", BulkDataURI = "http://x/bulk" }, ds.PixelData)
    assert.same({ vr = "OB", InlineBinary = "AAEC" }, ds["00282000"])
    assert.equal(3, ds.NumberOfStudyRelatedInstances)
    assert.is_nil(ds.StudyDescription)
    assert.is_nil(ds.StudyDate)
    assert.is_nil(ds.PatientID)
    assert.same({ "A^B", "" }, ds.OtherPatientNames)
    assert.equal(raw, ds:raw())
    assert.same({ "StudyDate", "ModalitiesInStudy", "StudyDescription", "ReferencedSeriesSequence",
      "PatientName", "OtherPatientNames", "NumberOfStudyRelatedInstances", "ICCProfile",
      "PixelData" }, ds:keywords())
    assert.same({ "00090010" }, dicomjson.dataset({ ["00090010"] = { vr = "LO", Value = { "X" } } }):keywords())
    -- a list handed out is a copy
    ds.ModalitiesInStudy[1] = "XX"
    assert.equal("CT", raw["00080061"].Value[1])
    assert.matches("DICOM data set %(9 elements%)", tostring(ds))
    assert.has_error(function() dicomjson.dataset("x") end)
  end)
end)

describe("search through the Google-shaped emulator", function()
  local em, store, client
  local lines = {}
  local function gets()
    local n = 0
    for _, l in ipairs(lines) do if l:match("^> GET ") then n = n + 1 end end
    return n
  end
  lazy_setup(function()
    if not S[1] then setup_studies() end
    -- our own emulator: fault rules and request counters are this file's alone
    em = require("support.emulator_instance").start()
    client = assert(hc.new { endpoint = em.endpoint, access_token = E.token .. "-private",
      debug = function(l) lines[#lines + 1] = l end })
    store = assert(client:dicom_store(E.store))
  end)
  lazy_teardown(function()
    if client then client:close() end
    if em then em:stop() end
  end)

  -- The emulator re-encodes query values before passing them to Orthanc ("*" becomes "%2A",
  -- which Orthanc does not decode): these tests match exact values, not wildcards.
  it("searches by PatientID, date range and modality at the Google URL", function()
    local items = all(assert(store:search_studies { PatientID = A }))
    assert.same(uids(1, 2, 3), (set_of(items, "StudyInstanceUID")))
    assert.equal(A, items[1].PatientID)
    items = all(assert(store:search_studies { PatientID = A, StudyDate = "20200101-20201231" }))
    assert.same(uids(2, 3), (set_of(items, "StudyInstanceUID")))
    items = all(assert(store:search_studies { PatientID = A, ModalitiesInStudy = "CT" }))
    assert.same(uids(1, 3), (set_of(items, "StudyInstanceUID")))
    items = all(assert(store:search_series { PatientID = B, Modality = "MR" }))
    assert.same({ [S[5].series[1].series_uid] = true }, (set_of(items, "SeriesInstanceUID")))
    local reqs = em:stats().requests
    local last = reqs[#reqs]
    assert.equal("/v1/" .. E.store .. "/dicomWeb/series", last.path)
    assert.equal("application/dicom+json", last.accept)
  end)

  it("pages with limit and offset: every item once, requests counted by the emulator", function()
    local before = em:stats().store_requests_total
    local r = assert(store:search_instances({ PatientID = B }, { page_size = 1 }))
    local seen = {}
    for item in r:each() do seen[#seen + 1] = item end
    assert.is_nil(r.error)
    local sops = {}
    for _, s in ipairs(S[4].series) do for _, u in ipairs(s.instances) do sops[u] = true end end
    for _, s in ipairs(S[5].series) do for _, u in ipairs(s.instances) do sops[u] = true end end
    assert.same(sops, (set_of(seen, "SOPInstanceUID")))
    assert.equal(4, em:stats().store_requests_total - before) -- 3 pages of 1, then an empty one
    local reqs = em:stats().requests
    assert.same({ "00100020", "limit", "offset" }, reqs[#reqs].query)

    r = assert(store:search_studies { PatientID = A, limit = 2, offset = 1 })
    assert.equal(2, #all(r))
    assert.equal(1, r.requests)
  end)

  it("scopes series and instances in the Google URL", function()
    local items = all(assert(store:search_instances { StudyInstanceUID = S[1].study_uid,
      SeriesInstanceUID = S[1].series[2].series_uid }))
    assert.equal(1, #items)
    assert.equal(S[1].series[2].instances[1], items[1].SOPInstanceUID)
    local reqs = em:stats().requests
    assert.equal("/v1/" .. E.store .. "/dicomWeb/studies/" .. S[1].study_uid .. "/series/"
      .. S[1].series[2].series_uid .. "/instances", reqs[#reqs].path)
  end)

  it("reports an unknown store as a 404 error naming the method", function()
    local other = assert(client:dicom_store(E.store:gsub("test%-store$", "no-such-store")))
    local r = assert(other:search_studies { PatientID = A })
    local items, err = r:all()
    assert.is_nil(items)
    assert.equal(err, r.error)
    assert.equal("http", err.kind)
    assert.equal(404, err.http_status)
    assert.equal("NOT_FOUND", err.status)
    assert.matches("^SearchForStudies: HTTP 404 NOT_FOUND: DICOM store not found", err.message)
  end)

  it("stops at a failed page, keeps what came before and sets results.error", function()
    -- (one attempt: spec 96 has the retries)
    local r = assert(store:search_studies({ PatientID = A }, { page_size = 2, retry = { max_attempts = 1 } }))
    local it_ = r:each()
    assert.truthy(it_())
    assert.truthy(it_())
    em:control("faults", { { match = "store", status = 503, retry_after = "2", message = "backend busy" } })
    local before = gets()
    assert.is_nil(it_())
    assert.equal(before + 1, gets())
    local err = r.error
    assert.equal("http", err.kind)
    assert.equal(503, err.http_status)
    assert.is_true(err.retryable)
    assert.equal(2, err.retry_after)
    assert.matches("^SearchForStudies: HTTP 503 UNAVAILABLE: backend busy", err.message)
    assert.is_nil(it_()) -- stays ended, no new request
    assert.equal(before + 1, gets())
    -- all() returns the error, and the results before it (none: its first page fails) as the
    -- partial result
    em:control("faults", { { match = "store", status = 503, message = "backend busy" } })
    local list, aerr, partial = r:all()
    assert.is_nil(list)
    assert.equal(503, aerr.http_status)
    assert.same({}, partial)
    -- a new iteration starts over and succeeds
    assert.equal(3, #all(r))
    assert.is_nil(r.error)
  end)

  it("sends standard query parameters along with the QIDO query", function()
    local r = assert(store:search_studies({ PatientID = A }, { params = { prettyPrint = "false" } }))
    assert.equal(3, #all(r))
    local reqs = em:stats().requests
    assert.same({ "00100020", "limit", "prettyPrint" }, reqs[#reqs].query)
  end)
end)

-- A server answering scripted QIDO replies, for what neither Orthanc nor the emulator does.
local FAKE = [[
import json, sys, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def item(n):
    return {"0020000D": {"vr": "UI", "Value": ["1.2.3.%d" % n]}}

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def send(self, status, body=b"", ctype="application/dicom+json", extra=()):
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if status != 204:
            self.wfile.write(body)
    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        limit, offset = int(q.get("limit", 1000)), int(q.get("offset", 0))
        kind = u.path.split("/")[1]
        if kind == "capped":   # 7 results, at most 3 per answer, Google's Warning when cut
            n = min(limit, 3)
            items = [item(i) for i in range(offset, min(7, offset + n))]
            extra = [("Warning", '299 healthcare.googleapis.com "results capped at 3"')] if limit > 3 and offset + n < 7 else []
            return self.send(200, json.dumps(items).encode(), extra=extra)
        if kind == "empty":
            return self.send(204)
        if kind == "blank":
            return self.send(200, b"")
        if kind == "nolimit":   # ignores limit and offset
            return self.send(200, json.dumps([item(i) for i in range(5)]).encode())
        if kind == "notlist":
            return self.send(200, b'{"0020000D": {"vr": "UI"}}')
        if kind in ("nan", "hex", "inf"):   # numbers lua-cjson takes and JSON has not (1e400: JSON, but infinite)
            n = {"nan": "NaN", "hex": "0x10", "inf": "1e400"}[kind]
            return self.send(200, ('[{"0020000D": {"vr": "UI", "Value": ["1.2.3.1"]}, '
                                   '"00201208": {"vr": "IS", "Value": [%s]}}]' % n).encode())
        if kind == "sqbad":   # an SQ whose items are not objects
            it = item(1)
            it["00080020"] = {"vr": "SQ", "Value": [1, "x"]}
            return self.send(200, json.dumps([it]).encode())
        if kind == "notobject":   # a list, its second item a number
            return self.send(200, json.dumps([item(1), 2]).encode())
        if kind == "emptyobject":
            return self.send(200, b"{}")
        if kind == "many":   # ten times as many as asked, and one
            return self.send(200, json.dumps([{}] * (limit * 10 + 1)).encode())
        if kind == "noseek":   # honours limit, ignores offset: the same page for ever
            return self.send(200, json.dumps([item(i) for i in range(limit)]).encode())
        if kind in ("cycle", "cycle-nouid"):   # ignores offset past 2 pages: pages 1, 2, 1, 2, ...
            page = (offset // limit) % 2
            if kind == "cycle":
                return self.send(200, json.dumps([item(page * limit + i) for i in range(limit)]).encode())
            return self.send(200, json.dumps([{"00100020": {"vr": "LO", "Value": ["P%d" % page]}}] * limit).encode())
        if kind == "noseek-nouid":   # the same, its results without UIDs
            return self.send(200, json.dumps([{"00100020": {"vr": "LO", "Value": ["P"]}}] * limit).encode())
        if kind == "values":   # an empty Value, a null among values
            it = item(1)
            it["00081030"] = {"vr": "LO", "Value": []}
            it["00080061"] = {"vr": "CS", "Value": ["CT", None, "MR"]}
            it["00081115"] = {"vr": "SQ", "Value": [{"00081030": {"vr": "LO", "Value": []}}, {}]}
            return self.send(200, json.dumps([it]).encode())
        if kind == "html":
            return self.send(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        self.send(404, b"no such path", "text/plain")

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("http://127.0.0.1:%d" % srv.server_address[1], flush=True)
srv.serve_forever()
]]

describe("search: answers only Google (or a broken server) gives", function()
  local pid, url
  lazy_setup(function()
    local dir = H.tmpdir()
    H.write_file(dir .. "/fake.py", FAKE)
    pid = H.check_run("/usr/bin/python3 " .. H.q(dir .. "/fake.py") .. " > " .. H.q(dir .. "/out")
      .. " 2> " .. H.q(dir .. "/err") .. " & echo $!"):match("%d+")
    for _ = 1, 200 do
      url = (H.file_bytes(dir .. "/out") or ""):match("^(%S+)\n")
      if url then break end
      os.execute("sleep 0.05")
    end
    assert(url, "the scripted server did not start: " .. (H.file_bytes(dir .. "/err") or ""))
  end)
  lazy_teardown(function()
    if pid then H.run("kill " .. pid) end
  end)

  local function store_at(path)
    return assert(hc.dicomweb(url .. "/" .. path, { retry = { max_attempts = 1 } })) -- (retries: spec 96)
  end

  it("goes on paging after an answer capped with a Warning, and surfaces the Warning", function()
    local r = assert(store_at("capped"):search_studies({}, { page_size = 5 }))
    local items = all(r)
    assert.equal(7, #items)
    for i, item in ipairs(items) do assert.equal("1.2.3." .. (i - 1), item.StudyInstanceUID) end
    assert.equal('299 healthcare.googleapis.com "results capped at 3"', r.warning)
    assert.equal(3, r.requests) -- 3 (capped), 3 (capped), 1 (short, no warning)
    -- the whole-answer path (ModalitiesInStudy) pages on after a Warning too
    r = assert(store_at("capped"):search_studies({ ModalitiesInStudy = "CT", offset = 1 }, { page_size = 5 }))
    items = all(r)
    assert.equal(6, #items)
    assert.equal("1.2.3.1", items[1].StudyInstanceUID)
    -- no Warning when nothing was cut
    r = assert(store_at("capped"):search_studies({ limit = 2 }))
    assert.equal(2, #all(r))
    assert.is_nil(r.warning)
  end)

  it("reads 204 and an empty 200 body as no results", function()
    for _, path in ipairs({ "empty", "blank" }) do
      local r = assert(store_at(path):search_series({}))
      assert.same({}, all(r))
      assert.equal(1, r.requests)
    end
  end)

  it("copes with a server that ignores limit and offset", function()
    local r = assert(store_at("nolimit"):search_instances({}, { page_size = 2 }))
    assert.equal(5, #all(r))
    assert.equal(1, r.requests)
    r = assert(store_at("nolimit"):search_instances({ limit = 3 }, { page_size = 2 }))
    assert.equal(3, #all(r))
    assert.equal(1, r.requests)
  end)

  it("turns an answer that is not a DICOM JSON list into an error", function()
    local items, err = assert(store_at("notlist"):search_studies({})):all()
    assert.is_nil(items)
    assert.equal("http", err.kind)
    assert.equal(200, err.http_status)
    assert.matches("^SearchForStudies: HTTP 200: the answer is not a DICOM JSON list", err.message)
  end)

  it("refuses numbers JSON has not (NaN, hex), and writes 1e400 (an infinity) as null with --json", function()
    for _, path in ipairs({ "nan", "hex" }) do
      local items, err = assert(store_at(path):search_studies({})):all()
      assert.is_nil(items)
      assert.equal("http", err.kind)
      assert.matches("^SearchForStudies: HTTP 200: the answer is not a DICOM JSON list %(Expected value", err.message)
    end
    local items = all(assert(store_at("inf"):search_studies({})))
    assert.equal(math.huge, items[1].NumberOfStudyRelatedInstances)
    local out, err, code = H.healthcare { "search", url .. "/inf", "--json" }
    assert.equal(0, code, err)
    assert.matches('"00201208":{"Value":[null],"vr":"IS"}', out, 1, true)
  end)

  it("reads a sequence whose items are not objects without raising, in the API and the table", function()
    local items = all(assert(store_at("sqbad"):search_studies({})))
    local ok, date = pcall(function() return items[1].StudyDate end)
    assert(ok, date)
    assert.is_nil(date)
    local out, err, code = H.healthcare { "search", url .. "/sqbad" }
    assert.equal(0, code, err)
    assert.matches("1.2.3.1\n$", out)
  end)

  it("takes only a JSON array for a list: {} is an error, not 'no results'", function()
    local items, err = assert(store_at("emptyobject"):search_studies({})):all()
    assert.is_nil(items)
    assert.equal("http", err.kind)
    assert.matches("^SearchForStudies: HTTP 200: the answer is not a DICOM JSON list %(not a JSON array%): {}$",
      err.message)
  end)

  it("refuses a list with an item that is not an object, worded as every refused answer", function()
    local items, err = assert(store_at("notobject"):search_studies({})):all()
    assert.is_nil(items)
    assert.equal("http", err.kind)
    assert.equal(200, err.http_status)
    assert.equal("SearchForStudies: HTTP 200: result 2 is not a DICOM JSON object", err.message)
  end)

  it("refuses a page of far more results than asked, before making them", function()
    local items, err = assert(store_at("many"):search_studies({}, { page_size = 2 })):all()
    assert.is_nil(items)
    assert.equal("http", err.kind)
    assert.equal("SearchForStudies: HTTP 200: the server answered 21 results to a request for at most 2; refused "
      .. "above 20 (it ignores limit?)", err.message)
    -- the larger of limit and page_size sets the bound
    items, err = assert(store_at("many"):search_studies({ limit = 3 }, { page_size = 1 })):all()
    assert.is_nil(items)
    assert.matches("answered 11 results to a request for at most 1; refused above 10", err.message, 1, true)
  end)

  it("stops when the server answers the same page again (it ignores offset)", function()
    local r = assert(store_at("noseek"):search_studies({}, { page_size = 2 }))
    local n = 0
    for _ in r:each() do
      n = n + 1
      if n > 10 then break end -- (paging for ever: no error to read)
    end
    assert.equal(2, n)
    local err = r.error
    assert.equal("http", err.kind)
    assert.equal("SearchForStudies: HTTP 200: the server answered the same results again at offset 2 (it ignores "
      .. "offset?)", err.message)
    assert.equal(2, r.requests)
  end)

  it("stops when the server answers the same page again, its results without UIDs (the same bytes)", function()
    for _, page_size in ipairs({ 1, 3 }) do
      local r = assert(store_at("noseek-nouid"):search_series({}, { page_size = page_size }))
      local n = 0
      for _ in r:each() do
        n = n + 1
        if n > 10 then break end -- (paging for ever: no error to read)
      end
      assert.equal(page_size, n)
      assert.equal("SearchForSeries: HTTP 200: the server answered the same results again at offset "
        .. page_size .. " (it ignores offset?)", r.error.message)
      assert.equal(2, r.requests)
    end
  end)

  it("stops when the server goes round pages it answered before (with UIDs or without)", function()
    for _, path in ipairs({ "cycle", "cycle-nouid" }) do
      local r = assert(store_at(path):search_series({}, { page_size = 2 }))
      local n = 0
      for _ in r:each() do
        n = n + 1
        if n > 20 then break end -- (paging for ever: no error to read)
      end
      assert.equal(4, n, path)
      assert.equal("SearchForSeries: HTTP 200: the server answered the same results again at offset 4 (it ignores "
        .. "offset?)", r.error and r.error.message, path)
      assert.equal(3, r.requests)
    end
  end)

  it("refuses an offset from a server that ignores limit (its answer starts at the first result)", function()
    local items, err = assert(store_at("nolimit"):search_instances({ offset = 1 }, { page_size = 2 })):all()
    assert.is_nil(items)
    assert.equal("http", err.kind)
    assert.equal("SearchForInstances: HTTP 200: the server answered 5 results to a request for 2 at offset 1: it "
      .. "ignores limit, and the results after an offset cannot be told", err.message)
  end)

  it("keeps an empty Value an array with --json, and shows a null among values as empty in the table", function()
    local out, err, code = H.healthcare { "search", url .. "/values", "--json" }
    assert.equal(0, code, err)
    assert.matches('"00081030":{"Value":[],"vr":"LO"}', out, 1, true)
    assert.matches('"00081115":{"Value":[{"00081030":{"Value":[],"vr":"LO"}},{}],"vr":"SQ"}', out, 1, true)
    assert.matches('"00080061":{"Value":["CT",null,"MR"],"vr":"CS"}', out, 1, true)
    out, err, code = H.healthcare { "search", url .. "/values" }
    assert.equal(0, code, err)
    assert.matches(" CT,,MR ", out, 1, true)
    assert.is_nil(out:find("userdata", 1, true))
  end)

  it("reports an HTML error page with its text", function()
    local items, err = assert(store_at("html"):search_series({})):all()
    assert.is_nil(items)
    assert.equal(502, err.http_status)
    assert.is_true(err.retryable)
    assert.matches("^SearchForSeries: HTTP 502 UNAVAILABLE: <html><body><h1>502 Bad Gateway", err.message)
  end)
end)
