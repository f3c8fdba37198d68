-- SPDX-License-Identifier: MIT
-- Retrieve (WADO-RS) end to end: a study of our own (fresh UIDs, three series, every transfer
-- syntax gen_dicom.py writes) is stored in the test bed's Orthanc, then retrieved from Orthanc
-- and through the Google-shaped emulator, and every file is compared byte for byte with what
-- was stored. Orthanc 1.10 with DICOMweb 1.7 sends the stored bytes when asked for
-- transfer-syntax=* (the default here); without it, or with a UID, it transcodes (implicit, big
-- endian and deflated instances then come back as Explicit VR Little Endian; tested below).
-- A 200 MB multi-frame instance is retrieved by a separate lua5.4 process whose peak memory is
-- measured.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local core = require "healthcare.core"
local lfs = require "lfs"
local cjson = require "cjson"
local E = H.env

local MiB = 1024 * 1024
local unpack_ = table.unpack or unpack -- luacheck: ignore 113 (LuaJIT)
local EXPLICIT_LE = "1.2.840.10008.1.2.1"

local function orthanc_store(opts)
  return assert(healthcare.dicomweb(E.dicomweb, opts))
end

local function google_store()
  local client = assert(healthcare.new { endpoint = E.endpoint, access_token = E.token })
  return assert(client:dicom_store(E.store))
end

-- A store that counts the requests it sends (the client's debug lines), for "nothing was sent".
local function counting_store()
  local sent = { n = 0 }
  local store = orthanc_store { debug = function(line)
    if line:match("^> %u+ ") then sent.n = sent.n + 1 end
  end }
  return store, sent
end

-- Names in a directory, sorted, without . and ..
local function listing(dir)
  local names = {}
  if lfs.attributes(dir, "mode") ~= "directory" then return names end
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

local function fresh_uid()
  return "2.25.1" .. core.random_hex(12):gsub("%x", function(c) return tostring(tonumber(c, 16) % 10) end)
end

-- Many generated files from one Python process (pydicom takes a second to import); options as
-- H.gen_dicom's. Returns the files in order.
local function gen_many(dir, list)
  for _, o in ipairs(list) do o.dir = dir end
  return H.gen_many(list)
end

-- The study every test reads: three series; in each, instances of several transfer syntaxes
-- (explicit and implicit little endian, big endian, deflated; one without a preamble) and a
-- small multi-frame instance. Stored once, through the library, in Orthanc.
local study = {}
local function stored_study()
  if study.uid then return study end
  study.uid = fresh_uid()
  study.series = { fresh_uid(), fresh_uid(), fresh_uid() }
  local s1, s2, s3 = study.series[1], study.series[2], study.series[3]
  local files = gen_many(H.tmpdir(), {
    { study = study.uid, series = s1, ts = "explicit", prefix = "a1" },
    { study = study.uid, series = s1, ts = "implicit", prefix = "a2" },
    { study = study.uid, series = s1, ts = "big", prefix = "a3" },
    { study = study.uid, series = s2, ts = "deflated", prefix = "b1" },
    { study = study.uid, series = s2, ts = "implicit", no_preamble = true, prefix = "b2" },
    { study = study.uid, series = s3, ts = "explicit", frames = 4, size = 40000, prefix = "c1" },
  })
  study.files, study.by_uid, study.in_series = files, {}, { [s1] = {}, [s2] = {}, [s3] = {} }
  for _, f in ipairs(files) do
    f.sha256 = H.sha256(f.path)
    study.by_uid[f.sop_instance_uid] = f
    table.insert(study.in_series[f.series_uid], f)
  end
  study.multiframe = files[6]
  local paths = {}
  for i, f in ipairs(files) do paths[i] = f.path end
  local report = assert(orthanc_store():store(paths))
  assert.equal(#files, #report.stored, cjson.encode(report.failed) .. cjson.encode(report.skipped))
  return study
end

-- Checks a retrieval's result and the directory against the expected originals: every file
-- named <SOP Instance UID>.dcm, identical bytes, nothing else in the directory.
local function assert_same_files(res, dir, expected)
  assert.equal(200, res.status)
  assert.equal(#expected, #res.files)
  local names, bytes = {}, 0
  for _, f in ipairs(expected) do names[#names + 1] = f.sop_instance_uid .. ".dcm" end
  table.sort(names)
  assert.same(names, listing(dir))
  for _, got in ipairs(res.files) do
    local want = study.by_uid[got.sop_instance_uid]
    assert.is_table(want, "unexpected instance " .. tostring(got.sop_instance_uid))
    assert.equal(dir .. "/" .. want.sop_instance_uid .. ".dcm", got.path)
    assert.is_nil(got.warning)
    assert.equal(want.size, got.size)
    assert.equal(want.sha256, H.sha256(got.path), "bytes differ for " .. want.sop_instance_uid)
    bytes = bytes + want.size
  end
  assert.equal(bytes, res.bytes)
end

describe("store:retrieve_study", function()
  lazy_setup(stored_study)

  it("writes every instance of the study as <SOP Instance UID>.dcm, byte for byte as stored", function()
    local dir = H.tmpdir() .. "/study"   -- made by retrieve_study (the parent exists)
    local res = assert(orthanc_store():retrieve_study(study.uid, { to = dir }))
    assert_same_files(res, dir, study.files)
  end)

  it("does the same through the Google-shaped API", function()
    local dir = H.tmpdir()
    local res = assert(google_store():retrieve_study(study.uid, { to = dir }))
    assert_same_files(res, dir, study.files)
  end)

  it("replaces files of an earlier retrieval in the same directory", function()
    local dir = H.tmpdir()
    local f = study.files[1]
    H.write_file(dir .. "/" .. f.sop_instance_uid .. ".dcm", "stale")
    local res = assert(orthanc_store():retrieve_study(study.uid, { to = dir }))
    assert_same_files(res, dir, study.files)
  end)
end)

describe("skip_existing: a retrieve that was interrupted, run again", function()
  lazy_setup(stored_study)

  -- Every request line the store sends: method and path below the base URL.
  local function logging_store()
    local lines = {}
    local store = orthanc_store { debug = function(line)
      local m, path = line:match("^> (%u+) (%S+)")
      if m then lines[#lines + 1] = m .. " " .. path:gsub("^" .. E.dicomweb:gsub("%p", "%%%0"), "") end
    end }
    return store, lines
  end

  -- The instances of this study are small: with a request reckoned at 8 MiB (the default), a
  -- series with one missing is fetched whole again; at 0 bytes (request_cost = 0), each missing
  -- instance alone.
  it("keeps the instances already there and fetches the rest: a whole series at once, others alone", function()
    local dir = H.tmpdir() .. "/study"
    assert(orthanc_store():retrieve_study(study.uid, { to = dir }))
    local s1, s2 = study.series[1], study.series[2]
    local a1, a2 = study.in_series[s1][1], study.in_series[s1][2]
    -- series 2 gone entirely, one instance of series 1 gone, another replaced by the wrong content
    for _, f in ipairs(study.in_series[s2]) do assert(os.remove(dir .. "/" .. f.sop_instance_uid .. ".dcm")) end
    assert(os.remove(dir .. "/" .. a1.sop_instance_uid .. ".dcm"))
    H.write_file(dir .. "/" .. a2.sop_instance_uid .. ".dcm", H.file_bytes(study.multiframe.path))
    local store, lines = logging_store()
    local res = assert(store:retrieve_study(study.uid, { to = dir, skip_existing = true, request_cost = 0 }))
    local fetched, kept = {}, {}
    for _, f in ipairs(res.files) do fetched[#fetched + 1] = f.sop_instance_uid end
    for _, f in ipairs(res.kept) do kept[#kept + 1] = f.path:match("([^/]+)%.dcm$") end
    table.sort(fetched)
    local want = { a1.sop_instance_uid, a2.sop_instance_uid }
    for _, f in ipairs(study.in_series[s2]) do want[#want + 1] = f.sop_instance_uid end
    table.sort(want)
    assert.same(want, fetched)
    assert.equal(#study.files - #want, #kept)
    -- a search of the series (with their instance counts), series 2 in one request, a search of
    -- series 1's instances, then its two missing instances alone
    assert.equal(5, #lines, table.concat(lines, "\n"))
    assert.matches("^GET /studies/" .. study.uid:gsub("%p", "%%%0") .. "/series%?includefield=00201209", lines[1])
    local rest = {}
    for i = 2, 5 do rest[#rest + 1] = lines[i]:gsub("%?.*$", "") end
    table.sort(rest)
    local expect = {
      "GET /studies/" .. study.uid .. "/series/" .. s1 .. "/instances",
      "GET /studies/" .. study.uid .. "/series/" .. s1 .. "/instances/" .. a1.sop_instance_uid,
      "GET /studies/" .. study.uid .. "/series/" .. s1 .. "/instances/" .. a2.sop_instance_uid,
      "GET /studies/" .. study.uid .. "/series/" .. s2,
    }
    table.sort(expect)
    assert.same(expect, rest)
    -- the directory is the whole study again, byte for byte
    for _, f in ipairs(study.files) do
      assert.equal(f.sha256, H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"), f.sop_instance_uid)
    end
    assert.equal(#study.files, #listing(dir))
  end)

  it("fetches a series whole again when what is there of it costs less than a request per missing instance",
    function()
    local dir = H.tmpdir() .. "/study"
    assert(orthanc_store():retrieve_study(study.uid, { to = dir }))
    local s1 = study.series[1]
    local gone = study.in_series[s1][1]
    assert(os.remove(dir .. "/" .. gone.sop_instance_uid .. ".dcm"))
    local store, lines = logging_store()
    local res = assert(store:retrieve_study(study.uid, { to = dir, skip_existing = true }))
    -- one search, then series 1 in one request (a few KB again rather than a request per instance)
    assert.same({ "GET /studies/" .. study.uid .. "/series/" .. s1 }, { lines[2] })
    assert.equal(2, #lines, table.concat(lines, "\n"))
    assert.equal(#study.in_series[s1], #res.files)
    -- kept: the other series, the instances of series 1 there were fetched again
    assert.equal(#study.files - #study.in_series[s1], #res.kept)
    for _, f in ipairs(res.kept) do
      local uid = f.path:match("([^/]+)%.dcm$")
      for _, g in ipairs(study.in_series[s1]) do assert.not_equal(g.sop_instance_uid, uid) end
    end
    for _, f in ipairs(study.files) do
      assert.equal(f.sha256, H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"), f.sop_instance_uid)
    end
    assert.equal(#study.files, #listing(dir))
  end)

  -- A UID of the same length, its last digit another.
  local function one_off(uid)
    assert(uid:match("%d%d$"), uid)
    return uid:sub(1, -2) .. tostring((tonumber(uid:sub(-1)) + 1) % 10)
  end

  -- bytes, each UID of the pairs (old, new) written as the other (same length: same size)
  local function with_uids(bytes, pairs_)
    for i = 1, #pairs_, 2 do
      local n
      bytes, n = bytes:gsub(pairs_[i]:gsub("%p", "%%%0"), pairs_[i + 1])
      assert(n > 0, pairs_[i])
    end
    return bytes
  end

  it("keeps only files that hold the instance of the study their name says, at any size", function()
    local dir = H.tmpdir() .. "/study"
    assert(orthanc_store():retrieve_study(study.uid, { to = dir }))
    local s1 = study.series[1]
    local a1, a2, a3 = study.in_series[s1][1], study.in_series[s1][2], study.in_series[s1][3]
    local function file_of(f) return dir .. "/" .. f.sop_instance_uid .. ".dcm" end
    local other_study = one_off(study.uid)
    -- in a1's place another instance of the same size (its SOP Instance UID one digit off), in
    -- a2's a2 of another study (the same size, the same SOP Instance UID), and beside them an
    -- instance of that other study under its own name
    H.write_file(file_of(a1), with_uids(H.file_bytes(a1.path), { a1.sop_instance_uid, one_off(a1.sop_instance_uid) }))
    H.write_file(file_of(a2), with_uids(H.file_bytes(a2.path), { study.uid, other_study }))
    local stranger = dir .. "/" .. one_off(a3.sop_instance_uid) .. ".dcm"
    local stranger_bytes = with_uids(H.file_bytes(a3.path), { study.uid, other_study, a3.sop_instance_uid,
      one_off(a3.sop_instance_uid) })
    H.write_file(stranger, stranger_bytes)
    -- each missing instance alone (request_cost = 0), then, the same done again, series 1 whole
    -- again (a3 with them: what is there of it costs less than a request)
    for _, case in ipairs({ { request_cost = 0, want = { a1, a2 } }, { want = { a1, a2, a3 } } }) do
      local res = assert(orthanc_store():retrieve_study(study.uid, { to = dir, skip_existing = true,
        request_cost = case.request_cost }))
      local fetched, want = {}, {}
      for _, f in ipairs(res.files) do fetched[#fetched + 1] = f.sop_instance_uid end
      for _, f in ipairs(case.want) do want[#want + 1] = f.sop_instance_uid end
      table.sort(fetched)
      table.sort(want)
      assert.same(want, fetched)
      assert.equal(#study.files - #want, #res.kept)
      for _, f in ipairs(res.kept) do assert.not_equal(stranger, f.path) end
      for _, f in ipairs(study.files) do
        assert.equal(f.sha256, H.sha256(file_of(f)), f.sop_instance_uid)
      end
      assert.equal(stranger_bytes, H.file_bytes(stranger))
      H.write_file(file_of(a1), with_uids(H.file_bytes(a1.path), { a1.sop_instance_uid, one_off(a1.sop_instance_uid) }))
      H.write_file(file_of(a2), with_uids(H.file_bytes(a2.path), { study.uid, other_study }))
    end
  end)

  it("only searches when everything is there, and retrieves as usual into an empty directory", function()
    local dir = H.tmpdir() .. "/study"
    local store, lines = logging_store()
    local res = assert(store:retrieve_study(study.uid, { to = dir, skip_existing = true }))
    assert.equal(#study.files, #res.files)
    assert.equal(1, #lines)
    res = assert(store:retrieve_study(study.uid, { to = dir, skip_existing = true }))
    assert.same({}, res.files)
    assert.equal(#study.files, #res.kept)
    -- one search of the series: each as complete as the server counts, nothing more asked
    assert.equal(2, #lines)
    assert.matches("/series%?includefield=00201209", lines[2])
  end)

  it("applies to a series too", function()
    local dir = H.tmpdir() .. "/series"
    local s1 = study.series[1]
    assert(orthanc_store():retrieve_series(study.uid, s1, { to = dir }))
    local gone = study.in_series[s1][3]
    assert(os.remove(dir .. "/" .. gone.sop_instance_uid .. ".dcm"))
    local res = assert(orthanc_store():retrieve_series(study.uid, s1, { to = dir, skip_existing = true,
      request_cost = 0 }))
    assert.equal(1, #res.files)
    assert.equal(gone.sop_instance_uid, res.files[1].sop_instance_uid)
    assert.equal(#study.in_series[s1] - 1, #res.kept)
    assert.equal(gone.sha256, H.sha256(res.files[1].path))
  end)
end)

describe("store:retrieve_series", function()
  lazy_setup(stored_study)

  it("writes only the instances of the series", function()
    for i = 1, 2 do
      local dir = H.tmpdir()
      local res = assert(orthanc_store():retrieve_series(study.uid, study.series[i], { to = dir }))
      assert_same_files(res, dir, study.in_series[study.series[i]])
    end
  end)

  it("does the same through the Google-shaped API", function()
    local dir = H.tmpdir()
    local res = assert(google_store():retrieve_series(study.uid, study.series[2], { to = dir }))
    assert_same_files(res, dir, study.in_series[study.series[2]])
  end)
end)

describe("store:retrieve_instance", function()
  lazy_setup(stored_study)

  it("creates the folder it writes to, with its parents (Lua 5.4 and LuaJIT alike)", function()
    local store = orthanc_store()
    local s1 = study.series[1]
    local f = study.in_series[s1][1]
    local base = H.tmpdir()
    local res = assert(store:retrieve_series(study.uid, s1, { to = base .. "/a/b/c" }))
    assert.equal(#study.in_series[s1], #res.files)
    assert.equal(#study.in_series[s1], #listing(base .. "/a/b/c"))
    res = assert(store:retrieve_instance(study.uid, s1, f.sop_instance_uid, { to = base .. "/d/e/one.dcm" }))
    assert.equal(base .. "/d/e/one.dcm", res.files[1].path)
    assert.equal(H.sha256(f.path), H.sha256(base .. "/d/e/one.dcm"))
    local mf = study.multiframe
    res = assert(store:retrieve_rendered(study.uid, mf.series_uid, mf.sop_instance_uid, { to = base .. "/f/g/one.jpg" }))
    assert.equal(base .. "/f/g/one.jpg", res.files[1].path)
    res = assert(store:retrieve_frames(study.uid, mf.series_uid, mf.sop_instance_uid, 1, { to = base .. "/j/k" }))
    assert.same({ res.files[1].path:match("[^/]+$") }, listing(base .. "/j/k"))
    res = assert(store:fetch("studies/" .. study.uid .. "/metadata", { to = base .. "/h/i/meta.json" }))
    assert.equal(200, res.status)
    assert.same({ "meta.json" }, listing(base .. "/h/i"))
    store:close()
  end)

  it("writes the instance to the file given, byte for byte", function()
    local f = study.by_uid[study.files[3].sop_instance_uid]   -- big endian
    local dir = H.tmpdir()
    local res = assert(orthanc_store():retrieve_instance(study.uid, f.series_uid, f.sop_instance_uid,
      { to = dir .. "/mine.dcm" }))
    assert.equal(1, #res.files)
    assert.equal(dir .. "/mine.dcm", res.files[1].path)
    assert.equal(f.sop_instance_uid, res.files[1].sop_instance_uid)
    assert.equal(f.sha256, H.sha256(dir .. "/mine.dcm"))
    assert.same({ "mine.dcm" }, listing(dir))
  end)

  it("writes into an existing directory as <SOP Instance UID>.dcm, and through the Google-shaped API", function()
    for _, store in ipairs({ orthanc_store(), google_store() }) do
      local f = study.files[4]   -- deflated
      local dir = H.tmpdir()
      local res = assert(store:retrieve_instance(study.uid, f.series_uid, f.sop_instance_uid, { to = dir }))
      assert_same_files(res, dir, { f })
    end
  end)

  it("transcodes when a transfer syntax is asked for: the data set is the same, the encoding explicit LE", function()
    local f = study.files[3]   -- big endian
    local dir = H.tmpdir()
    local res = assert(orthanc_store():retrieve_instance(study.uid, f.series_uid, f.sop_instance_uid,
      { to = dir, transfer_syntax = EXPLICIT_LE }))
    local info = assert(core.dicom_probe(res.files[1].path))
    assert.equal(EXPLICIT_LE, info.transfer_syntax)
    assert.equal(f.sop_instance_uid, info.sop_instance_uid)
    assert.equal(study.uid, info.study_uid)
    assert.are_not.equal(f.sha256, H.sha256(res.files[1].path))
  end)
end)

describe("store:retrieve_metadata", function()
  lazy_setup(stored_study)

  local function uids_of(list)
    local out = {}
    for i, ds in ipairs(list) do out[i] = ds.SOPInstanceUID end
    table.sort(out)
    return out
  end

  local function sorted_uids(files)
    local out = {}
    for i, f in ipairs(files) do out[i] = f.sop_instance_uid end
    table.sort(out)
    return out
  end

  it("returns one wrapped data set per instance of a study, series or instance", function()
    local store = orthanc_store()
    local list = assert(store:retrieve_metadata(study.uid))
    assert.same(sorted_uids(study.files), uids_of(list))
    for _, ds in ipairs(list) do
      assert.equal(study.uid, ds.StudyInstanceUID)
      assert.equal(study.uid, ds["0020000D"])
      assert.equal(ds.SOPInstanceUID, ds:raw()["00080018"].Value[1])
    end
    list = assert(store:retrieve_metadata(study.uid, study.series[1], { params = {} }))
    assert.same(sorted_uids(study.in_series[study.series[1]]), uids_of(list))
    local mf = study.multiframe
    list = assert(store:retrieve_metadata(study.uid, mf.series_uid, mf.sop_instance_uid))
    assert.equal(1, #list)
    assert.equal(mf.sop_instance_uid, list[1].SOPInstanceUID)
    assert.equal(4, list[1].NumberOfFrames)
  end)

  it("does the same through the Google-shaped API", function()
    local list = assert(google_store():retrieve_metadata(study.uid))
    assert.same(sorted_uids(study.files), uids_of(list))
  end)

  it("names what was not found on a 404", function()
    local missing = fresh_uid()
    local list, err = orthanc_store():retrieve_metadata(missing)
    assert.is_nil(list)
    assert.equal("http", err.kind)
    assert.equal(404, err.http_status)
    assert.matches("^study " .. missing:gsub("%.", "%%.") .. " not found: RetrieveMetadata: HTTP 404", err.message)
  end)
end)

describe("store:retrieve_rendered and store:retrieve_frames", function()
  lazy_setup(stored_study)

  it("writes a rendered JPEG or PNG of an instance or of one frame", function()
    local mf = study.multiframe
    local store = orthanc_store()
    local dir = H.tmpdir()
    local res = assert(store:retrieve_rendered(study.uid, mf.series_uid, mf.sop_instance_uid,
      { to = dir .. "/r.jpg" }))
    assert.equal("image/jpeg", res.content_type)
    assert.equal("\255\216\255", H.file_bytes(dir .. "/r.jpg"):sub(1, 3))
    assert.equal(res.bytes, #H.file_bytes(dir .. "/r.jpg"))
    assert.equal(1, res.count)
    res = assert(store:retrieve_rendered(study.uid, mf.series_uid, mf.sop_instance_uid,
      { to = dir, accept = "image/png", frame = 2 }))
    local png = dir .. "/" .. mf.sop_instance_uid .. "-frame-2.png"
    assert.equal(png, res.files[1].path)
    assert.equal("\137PNG", H.file_bytes(png):sub(1, 4))
    assert.same({ mf.sop_instance_uid .. "-frame-2.png", "r.jpg" }, listing(dir))
  end)

  it("writes the frames asked for as frame-<n>.raw, each the frame's pixel bytes of the stored file", function()
    local mf = study.multiframe
    local dir = H.tmpdir()
    local res = assert(orthanc_store():retrieve_frames(study.uid, mf.series_uid, mf.sop_instance_uid,
      { 3, 1 }, { to = dir }))
    assert.same({ "frame-1.raw", "frame-3.raw" }, listing(dir))
    assert.equal(2, res.count)
    assert.equal(3, res.files[1].frame)
    assert.equal(dir .. "/frame-3.raw", res.files[1].path)
    -- 8-bit pixels, frames one after the other at the end of the file (no odd-length padding:
    -- gen_dicom.py's columns are a power of two)
    local original = H.file_bytes(mf.path)
    local frame_size = res.files[1].size
    assert.is_true(frame_size * 4 < #original)
    local pixels = #original - 4 * frame_size
    for _, f in ipairs(res.files) do
      local want = original:sub(pixels + (f.frame - 1) * frame_size + 1, pixels + f.frame * frame_size)
      assert.equal(frame_size, f.size)
      assert.is_true(want == H.file_bytes(f.path), "frame " .. f.frame .. " differs")
    end
    assert.equal(2 * frame_size, res.bytes)
  end)

  it("answers a frame number beyond the instance with the server's error and writes nothing", function()
    local mf = study.multiframe
    local dir = H.tmpdir()
    local res, err = orthanc_store():retrieve_frames(study.uid, mf.series_uid, mf.sop_instance_uid, 9, { to = dir })
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(400, err.http_status)   -- Orthanc: "Parameter out of range"
    assert.same({}, listing(dir))
  end)
end)

describe("retrieve errors", function()
  lazy_setup(stored_study)

  it("names the study, series or instance not found on a 404, and leaves no file", function()
    local store = orthanc_store()
    local missing = fresh_uid()
    local s1 = study.series[1]
    local cases = {
      -- Orthanc's JSON error is read for its "Details", not shown raw
      { "retrieve_study", { missing }, "^study " .. missing:gsub("%.", "%%.")
        .. " not found: RetrieveStudy: HTTP 404 NOT_FOUND: Accessing an inexistent study with WADO%-RS: "
        .. missing:gsub("%.", "%%.") .. "$" },
      { "retrieve_series", { study.uid, missing },
        "^series " .. missing:gsub("%.", "%%.") .. " of study " .. study.uid:gsub("%.", "%%.")
          .. " not found: RetrieveSeries: HTTP 404" },
      { "retrieve_instance", { study.uid, s1, missing },
        "^instance " .. missing:gsub("%.", "%%.") .. " of series .* not found: RetrieveInstance: HTTP 404" },
      { "retrieve_rendered", { study.uid, s1, missing }, "^instance .* not found: RetrieveRendered: HTTP 404" },
    }
    for _, c in ipairs(cases) do
      local dir = H.tmpdir()
      local args = { store }
      for _, a in ipairs(c[2]) do args[#args + 1] = a end
      args[#args + 1] = { to = dir }
      local res, err = store[c[1]](unpack_(args))
      assert.is_nil(res, c[1])
      assert.equal("http", err.kind)
      assert.equal(404, err.http_status)
      assert.matches(c[3], err.message)
      assert.equal(c[1] == "retrieve_study" and "study" or c[1] == "retrieve_series" and "series" or "instance",
        err.not_found, c[1])
      assert.same({}, listing(dir), c[1])
    end
    local res, err = store:retrieve_frames(study.uid, s1, missing, 1, { to = H.tmpdir() })
    assert.is_nil(res)
    assert.equal(404, err.http_status)
  end)

  it("names the store, not the study, when the store does not exist (here, a Google dataset or a path)", function()
    local gone = E.store:gsub("test%-store$", "missing-store")
    local client = assert(healthcare.new { endpoint = E.endpoint, access_token = E.token })
    local s1 = study.series[1]
    local stores = {
      { assert(client:dicom_store(gone)), gone },
      -- Orthanc under a path it does not serve answers 404 to every DICOMweb request
      { assert(healthcare.dicomweb(E.orthanc .. "/no-such-dicom-web")), E.orthanc .. "/no-such-dicom-web" },
    }
    for _, st in ipairs(stores) do
      local store, name = st[1], st[2]
      local pattern = "^store " .. name:gsub("%p", "%%%0") .. " not found: "
      local res, err = store:retrieve_study(study.uid, { to = H.tmpdir() })
      assert.is_nil(res)
      assert.equal(404, err.http_status)
      assert.equal("store", err.not_found)
      assert.matches(pattern .. "RetrieveStudy: HTTP 404", err.message)
      assert.is_nil(err.message:find("study " .. study.uid, 1, true), err.message)
      res, err = store:retrieve_metadata(study.uid, s1)
      assert.is_nil(res)
      assert.matches(pattern .. "RetrieveMetadata: HTTP 404", err.message)
      store:close()
    end
    client:close()
  end)

  it("returns a usage error for a bad UID and sends nothing", function()
    local store, sent = counting_store()
    local good = study.uid
    local bad = { "", "1.2/../3", "..", "../etc", "1..2", ".1.2", "1.2.", "1.2.a", "1.2 3", "1.2\r\nX: y",
      "1." .. string.rep("2", 64) }
    for _, uid in ipairs(bad) do
      local dir = H.tmpdir() .. "/not-made"
      local calls = {
        function() return store:retrieve_study(uid, { to = dir }) end,
        function() return store:retrieve_series(good, uid, { to = dir }) end,
        function() return store:retrieve_instance(good, good, uid, { to = dir }) end,
        function() return store:retrieve_metadata(uid) end,
        function() return store:retrieve_metadata(good, good, uid) end,
        function() return store:retrieve_rendered(uid, good, good, { to = dir }) end,
        function() return store:retrieve_frames(good, uid, good, 1, { to = dir }) end,
      }
      for i, call in ipairs(calls) do
        local res, err = call()
        assert.is_nil(res, "call " .. i .. " with " .. uid)
        assert.equal("usage", err.kind)
        assert.matches("^invalid %a+ UID '", err.message)
        assert.is_nil(tostring(err):find("[\r\n]"))
        assert.is_nil(lfs.attributes(dir), "made " .. dir)
      end
    end
    assert.equal(0, sent.n)
  end)

  it("returns a usage error for a bad transfer syntax, frame number or media type and sends nothing", function()
    local store, sent = counting_store()
    local mf = study.multiframe
    local dir = H.tmpdir()
    local function check(pattern, res, err)
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.matches(pattern, err.message)
    end
    check("^invalid transfer syntax 'explicit'", store:retrieve_study(study.uid, { to = dir, transfer_syntax = "explicit" }))
    for _, frames in ipairs({ 0, -1, 1.5, { 1, 0 }, {}, { 2, 2 }, 2 ^ 40 }) do
      local res, err = store:retrieve_frames(study.uid, mf.series_uid, mf.sop_instance_uid, frames, { to = dir })
      assert.is_nil(res)
      assert.equal("usage", err.kind)
    end
    check("^invalid accept 'image/jpeg\r\nX%-Evil: 1'", store:retrieve_rendered(study.uid, mf.series_uid, mf.sop_instance_uid,
      { to = dir, accept = "image/jpeg\r\nX-Evil: 1" }))
    check("^invalid frame media type", store:retrieve_frames(study.uid, mf.series_uid, mf.sop_instance_uid, 1,
      { to = dir, accept = "image/jpeg; q=1" }))
    assert.equal(0, sent.n)
    assert.same({}, listing(dir))
  end)

  it("returns an io error before any request for a target under a file or in an unwritable directory", function()
    local store, sent = counting_store()
    local s1 = study.series[1]
    local f = study.in_series[s1][1]
    local base = H.tmpdir()
    local file = H.write_file(base .. "/a-file", "x")
    local cases = {
      { function() return store:retrieve_study(study.uid, { to = file .. "/child/grandchild" }) end,
        "^" .. file:gsub("%p", "%%%0") .. " exists and is not a directory$" },
      { function() return store:retrieve_series(study.uid, s1, { to = file }) end,
        "exists and is not a directory$" },
      -- /proc takes no new files, even from root (the test bed runs as root, so modes prove nothing)
      { function() return store:retrieve_study(study.uid, { to = "/proc" }) end,
        "^cannot write in the directory /proc: " },
      { function() return store:retrieve_instance(study.uid, s1, f.sop_instance_uid, { to = file .. "/x.dcm" }) end,
        "^" .. file:gsub("%p", "%%%0") .. " exists and is not a directory$" },
      { function() return store:retrieve_frames(study.uid, s1, f.sop_instance_uid, 1, { to = "/proc/a/b" }) end,
        "^cannot create the directory /proc/a: " },
      { function() return store:retrieve_instance(study.uid, s1, f.sop_instance_uid, { to = "/proc/x.dcm" }) end,
        "^cannot write in the directory /proc: " },
      { function() return store:retrieve_rendered(study.uid, s1, f.sop_instance_uid, { to = "/proc/x.jpg" }) end,
        "^cannot write in the directory /proc: " },
      { function() return store:retrieve_frames(study.uid, s1, f.sop_instance_uid, 1, { to = "/proc" }) end,
        "^cannot write in the directory /proc: " },
    }
    for i, c in ipairs(cases) do
      local res, err = c[1]()
      assert.is_nil(res, "case " .. i)
      assert.equal("io", err.kind, "case " .. i)
      assert.matches(c[2], err.message)
    end
    assert.equal(0, sent.n)
    assert.same({ "a-file" }, listing(base))
  end)

  it("raises on wrong argument types and unknown options (programming mistakes)", function()
    local store = orthanc_store()
    local ok, err = pcall(store.retrieve_study, store, nil, { to = "x" })
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'retrieve_study' %(string expected, got nil%)", err)
    ok, err = pcall(store.retrieve_study, store, study.uid, { to = "x", transfer = "*" })
    assert.is_false(ok)
    assert.matches("unknown option 'transfer' to 'retrieve_study'; valid options: compressed, idle_timeout, "
      .. "keep_rejected, list_files, max_bytes, max_compression_ratio, max_part_bytes, max_parts, min_speed, on_file, "
      .. "on_progress, on_retry, params, request_cost, retry, skip_existing, timeout, to, transfer_syntax", err)
    ok, err = pcall(store.retrieve_series, store, study.uid, study.series[1], {})
    assert.is_false(ok)
    assert.matches("bad option 'to' to 'retrieve_series' %(path expected, got nil%)", err)
    ok, err = pcall(store.retrieve_frames, store, study.uid, study.uid, study.uid, "1", { to = "x" })
    assert.is_false(ok)
    assert.matches("bad argument #4 to 'retrieve_frames'", err)
  end)
end)

-- spec/support/raw_server.py (helper cstream's) answers by path and query. Our store appends
-- the DICOMweb path to its base URL and takes no arbitrary query, so this wrapper reads the
-- canned answer's options from path segments (/multipart/sizes=1,2/cut=300/studies/..., each
-- percent-encoded) and
-- sends the bytes of the DICOM files given on its command line as the parts' contents.
local RAW_WRAPPER = [[
import importlib.util, sys, urllib.parse
spec = importlib.util.spec_from_file_location("raw_server", sys.argv[1])
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)
files = sys.argv[2:]
canned_content = rs.content

def urlsplit(target):
    u = urllib.parse.urlsplit(target)
    segments = u.path.split("/")
    query = [urllib.parse.unquote(s) for s in segments[2:] if "=" in s]
    return u._replace(path="/" + segments[1], query="&".join(
        k + "=" + urllib.parse.quote(v, safe="") for k, v in (q.split("=", 1) for q in query)))

def content(i, n, prefix=b""):
    if i <= len(files):
        with open(files[i - 1], "rb") as f:
            data = f.read()
        assert len(data) == n, "sizes= must be the files' sizes"
        yield data
    else:
        yield from canned_content(i, n, prefix)

rs.urlsplit, rs.content = urlsplit, content
rs.main()
]]

describe("a cut or malformed stream", function()
  local server, parts
  lazy_setup(function()
    stored_study()
    local dir = H.tmpdir()
    -- two instances of the study, a large third one (cut in its middle), and a text file
    local made = gen_many(dir, { { study = study.uid, series = study.series[1], count = 2, prefix = "raw" },
      { study = study.uid, series = study.series[1], size = 300000, prefix = "rawbig" } })
    parts = { made[1], made[2], made[3] }
    for _, f in ipairs(parts) do f.sha256 = H.sha256(f.path) end
    local text = H.write_file(dir .. "/notes.txt", string.rep("not DICOM\n", 30))
    parts[4] = { path = text, size = 300 }
    local words = { "/usr/bin/python3", "-c", RAW_WRAPPER, E.support .. "/raw_server.py" }
    for _, f in ipairs(parts) do words[#words + 1] = f.path end
    for i, w in ipairs(words) do words[i] = H.q(w) end
    local out = dir .. "/out"
    local pid = H.check_run(table.concat(words, " ") .. " >" .. H.q(out) .. " 2>" .. H.q(dir .. "/err")
      .. " & echo $!"):match("%d+")
    server = { pid = pid }
    for _ = 1, 200 do
      server.url = (H.file_bytes(out) or ""):match("^(%S+)\n")
      if server.url then break end
      os.execute("sleep 0.05")
    end
    assert(server.url, "raw server did not start: " .. (H.file_bytes(dir .. "/err") or ""))
  end)
  lazy_teardown(function()
    if server and server.pid then H.run("kill " .. server.pid) end
  end)

  -- A store whose answers are the raw server's multipart of the first n parts, with options.
  local function raw_store(n, options)
    local sizes = {}
    for i = 1, n do sizes[i] = string.format("%d", parts[i].size) end
    local path = "/multipart/sizes=" .. table.concat(sizes, ",")
    for _, o in ipairs(options or {}) do path = path .. "/" .. o end
    -- one attempt: the canned answer is alike every time (retries: spec 96)
    return assert(healthcare.dicomweb(server.url .. path, { retry = { max_attempts = 1 } }))
  end

  local function assert_kept(files, dir, n)
    assert.equal(n, #files)
    local names = {}
    for i = 1, n do
      local f = parts[i]
      assert.equal(dir .. "/" .. f.sop_instance_uid .. ".dcm", files[i].path)
      assert.equal(f.sop_instance_uid, files[i].sop_instance_uid)
      assert.equal(f.sha256, H.sha256(files[i].path))
      names[i] = f.sop_instance_uid .. ".dcm"
    end
    table.sort(names)
    assert.same(names, listing(dir))   -- no temporary or partial file
  end

  it("names the parts of a whole stream; a part that is not DICOM is rejected, written only when asked", function()
    local dir = H.tmpdir()
    local res = assert(raw_store(4):retrieve_study(study.uid, { to = dir }))
    assert_kept(res.files, dir, 3)
    for i = 1, 3 do assert.is_nil(res.files[i].warning) end
    assert.equal(1, #res.rejected)
    assert.equal(4, res.rejected[1].part)
    assert.equal(300, res.rejected[1].size)
    assert.matches("^not a DICOM file", res.rejected[1].reason)
    assert.is_nil(res.rejected[1].path)
    dir = H.tmpdir()
    res = assert(raw_store(4):retrieve_study(study.uid, { to = dir, keep_rejected = true }))
    assert.equal(3, #res.files)
    assert.equal(dir .. "/part-4.rejected", res.rejected[1].path)
    assert.equal(string.rep("not DICOM\n", 30), H.file_bytes(dir .. "/part-4.rejected"))
    local names = { "part-4.rejected" }
    for i = 1, 3 do names[#names + 1] = parts[i].sop_instance_uid .. ".dcm" end
    table.sort(names)
    assert.same(names, listing(dir))
  end)

  it("keeps the complete instances of a stream cut inside a part, and no partial file", function()
    local dir = H.tmpdir()
    local cut = string.format("%d", parts[1].size + parts[2].size + 2000 + math.floor(parts[3].size / 2))
    for _, chunked in ipairs({ "chunked=0", "chunked=1" }) do
      local res, err, partial = raw_store(3, { "cut=" .. cut, chunked }):retrieve_study(study.uid, { to = dir })
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      -- the partial result, in a result's shape; err.files says the same (the older form)
      assert_kept(partial.files, dir, 2)
      assert.equal(partial.files, err.files)
      assert.same({}, partial.rejected)
      assert.equal(parts[1].size + parts[2].size, partial.bytes)
    end
  end)

  it("keeps the complete instances when the stream ends without its closing delimiter", function()
    local dir = H.tmpdir()
    local res, err = raw_store(3, { "noclose=1" }):retrieve_series(study.uid, study.series[1], { to = dir })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("multipart", err.status)
    assert_kept(err.files, dir, 2)
  end)

  it("writes nothing for a multipart answer without a boundary or with a malformed part header", function()
    for _, options in ipairs({ { "ct=multipart%2Frelated" }, { "badhead=1" } }) do
      local dir = H.tmpdir()
      local res, err = raw_store(2, options):retrieve_study(study.uid, { to = dir })
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      assert.equal("multipart", err.status)
      assert.same({}, err.files)
      assert.same({}, listing(dir))
    end
  end)

  it("stops when on_progress says so, and keeps nothing of the stopped transfer", function()
    local dir = H.tmpdir()
    -- Two whole parts, then the server goes silent: only the progress function can end it.
    local cut = string.format("%d", parts[1].size + parts[2].size + 2000 + math.floor(parts[3].size / 2))
    local seen = {}
    local res, err = raw_store(3, { "cut=" .. cut, "hang=1" }):retrieve_study(study.uid, {
      to = dir,
      on_progress = function(p)
        seen[#seen + 1] = p.bytes_received
        if p.bytes_received >= tonumber(cut) then return false end
      end,
    })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("aborted", err.status)
    assert.equal(tonumber(cut), seen[#seen])
    for i = 2, #seen do assert.is_true(seen[i] >= seen[i - 1]) end
    assert.same({}, listing(dir))
  end)

  it("leaves as it was an instance the directory held before, when the transfer is stopped", function()
    -- the sink names each instance as it ends: over a file already there, a stopped transfer
    -- removing what it wrote took that file with it
    for _, list_files in ipairs({ true, false }) do
      local dir = H.tmpdir()
      local before = dir .. "/" .. parts[1].sop_instance_uid .. ".dcm"
      H.write_file(before, H.file_bytes(parts[1].path))
      local ino = lfs.attributes(before, "ino")
      local cut = string.format("%d", parts[1].size + parts[2].size + 2000 + math.floor(parts[3].size / 2))
      local res, err = raw_store(3, { "cut=" .. cut, "hang=1" }):retrieve_study(study.uid, {
        to = dir, list_files = list_files,
        on_progress = function(p) if p.bytes_received >= tonumber(cut) then return false end end,
      })
      assert.is_nil(res)
      assert.equal("aborted", err.status)
      assert.equal(parts[1].sha256, H.sha256(before))
      local names = listing(dir)
      if list_files then
        assert.equal(ino, lfs.attributes(before, "ino"))
        assert.equal(1, #names)
      else
        -- the parts handed over are the caller's: both whole, both kept (the first one landing
        -- on the file there, with the same bytes)
        assert.equal(2, #names)
      end
    end
  end)

  it("hands each instance to on_file as it lands, while the answer still streams", function()
    local dir = H.tmpdir()
    -- the server waits 0.3 s after each part: the parts come in steps
    local received, calls = 0, {}
    local res = assert(raw_store(4, { "pause=0.3" }):retrieve_study(study.uid, {
      to = dir,
      on_progress = function(p) received = p.bytes_received end,
      on_file = function(f)
        calls[#calls + 1] = { file = f, received = received, size = lfs.attributes(f.path, "size") }
      end,
    }))
    assert_kept(res.files, dir, 3)
    assert.equal(1, #res.rejected) -- the text part: no on_file
    -- once each, the tables of res.files, each file in place when told
    assert.equal(3, #calls)
    for i, f in ipairs(res.files) do
      assert.equal(f, calls[i].file)
      assert.equal(f.size, calls[i].size)
    end
    -- the first two while the rest was still to come
    local all = parts[1].size + parts[2].size + parts[3].size
    assert.is_true(calls[1].received < all, tostring(calls[1].received))
    assert.is_true(calls[2].received < all, tostring(calls[2].received))
  end)

  it("tells on_file of each instance kept from a stream cut after it began, once, early or late", function()
    local dir = H.tmpdir()
    local cut = string.format("%d", parts[1].size + parts[2].size + 2000 + math.floor(parts[3].size / 2))
    local told = {}
    local res, err, partial = raw_store(3, { "pause=0.3", "cut=" .. cut }):retrieve_study(study.uid, {
      to = dir, on_file = function(f) told[#told + 1] = f end })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert_kept(partial.files, dir, 2)
    assert.same(partial.files, told)
    assert.equal(partial.files[1], told[1])
    assert.equal(partial.files[2], told[2])
  end)

  it("stops the transfer when on_file raises, and keeps nothing of it", function()
    local dir = H.tmpdir()
    local store = raw_store(3, { "pause=0.3" })
    local ok, err = pcall(store.retrieve_study, store, study.uid, { to = dir, on_file = function(f)
      error("no room for " .. f.sop_instance_uid)
    end })
    assert.is_false(ok)
    assert.matches("no room for " .. parts[1].sop_instance_uid, err, 1, true)
    assert.same({}, listing(dir))
  end)

  it("client:send hands a directory sink's parts to on_parts as they complete, in the result's list", function()
    local dir = H.tmpdir()
    local store = raw_store(3)
    local url = server.url .. "/multipart/sizes=" .. string.format("%d,%d,%d", parts[1].size, parts[2].size,
      parts[3].size) .. "/pause=0.3/x"
    local lists, firsts, counts = {}, {}, {}
    local res = assert(store.client:send { url = url, sink = { dir = dir }, on_parts = function(list, first)
      lists[#lists + 1], firsts[#firsts + 1], counts[#counts + 1] = list, first, #list
      for i = first, #list do assert.equal(parts[i].size, lfs.attributes(list[i].path, "size")) end
    end })
    assert.equal(3, #res.parts)
    assert.is_true(#lists >= 1)
    -- one list, grown: each call starts where the last one ended, and the result completes it
    local next_first = 1
    for i, list in ipairs(lists) do
      assert.equal(res.parts, list)
      assert.equal(next_first, firsts[i])
      assert.is_true(counts[i] >= firsts[i])
      next_first = counts[i] + 1
    end
    assert.is_true(next_first <= 3)
    for i = 1, 3 do assert.equal(parts[i].sha256, H.sha256(res.parts[i].path)) end
  end)

  it("client:send with take_parts hands each part over once, in a list of its own, kept when the transfer stops",
    function()
    local store = raw_store(3)
    local sizes = string.format("%d,%d,%d", parts[1].size, parts[2].size, parts[3].size)
    -- a whole answer: the parts given, then the result's, each once and in order
    local dir = H.tmpdir()
    local given, firsts = {}, {}
    local res = assert(store.client:send { url = server.url .. "/multipart/sizes=" .. sizes .. "/pause=0.3/x",
      sink = { dir = dir }, take_parts = true, on_parts = function(list, first)
        firsts[#firsts + 1] = first
        for _, part in ipairs(list) do given[#given + 1] = part end
      end })
    assert.is_true(#firsts >= 1)
    for _, first in ipairs(firsts) do assert.equal(1, first) end
    assert.equal(3, res.part_count)
    local all = {}
    for _, part in ipairs(given) do all[#all + 1] = part end
    for _, part in ipairs(res.parts) do all[#all + 1] = part end
    assert.equal(3, #all)
    assert.is_true(#given >= 1 and #given < 3, tostring(#given))
    for i = 1, 3 do assert.equal(parts[i].sha256, H.sha256(all[i].path)) end
    -- stopped after two parts: those given are the caller's and stay, nothing else does
    dir = H.tmpdir()
    local cut = parts[1].size + parts[2].size + 2000
    given = {}
    local ok, err = store.client:send { url = server.url .. "/multipart/sizes=" .. sizes .. "/pause=0.3/cut="
      .. string.format("%d", cut) .. "/hang=1/x", sink = { dir = dir }, take_parts = true,
      on_parts = function(list) for _, part in ipairs(list) do given[#given + 1] = part end end,
      on_progress = function(p) if p.bytes_received >= cut and #given == 2 then return false end end }
    assert.is_nil(ok)
    assert.equal("aborted", err.status)
    assert.is_nil(err.parts) -- the parts not given are removed with the stopped transfer
    assert.equal(2, #given)
    local names = {}
    for i, part in ipairs(given) do
      assert.equal(parts[i].sha256, H.sha256(part.path))
      names[i] = part.path:match("[^/]+$")
    end
    table.sort(names)
    assert.same(names, listing(dir))
    -- misuse
    assert.has_error(function() store.client:send { url = server.url, take_parts = true } end,
      "bad argument #1 to 'request' (option 'take_parts' needs on_parts)")
  end)

  it("with list_files = false tells on_file of each instance and keeps no list: count and bytes say it all",
    function()
    local dir = H.tmpdir()
    local told = {}
    local res = assert(raw_store(4, { "pause=0.3" }):retrieve_study(study.uid, { to = dir, list_files = false,
      on_file = function(f) told[#told + 1] = f end }))
    assert.same({}, res.files)
    assert.equal(3, res.count)
    assert.equal(parts[1].size + parts[2].size + parts[3].size, res.bytes)
    assert_kept(told, dir, 3)
    assert.equal(4, res.rejected[1].part)
    -- a stream cut in the third instance: the partial result counts the two whole ones
    dir = H.tmpdir()
    told = {}
    local cut = string.format("%d", parts[1].size + parts[2].size + 2000 + math.floor(parts[3].size / 2))
    local none, err, partial = raw_store(3, { "pause=0.3", "cut=" .. cut }):retrieve_study(study.uid, {
      to = dir, list_files = false, on_file = function(f) told[#told + 1] = f end })
    assert.is_nil(none)
    assert.equal("transport", err.kind)
    assert.same({}, partial.files)
    assert.equal(2, partial.count)
    assert.equal(parts[1].size + parts[2].size, partial.bytes)
    assert_kept(told, dir, 2)
    -- on_file raising: the file it was told of stays (it is the caller's), the transfer stops
    dir = H.tmpdir()
    local store = raw_store(3, { "pause=0.3" })
    local ok, raised = pcall(store.retrieve_study, store, study.uid, { to = dir, list_files = false,
      on_file = function(f) error("no room for " .. f.sop_instance_uid) end })
    assert.is_false(ok)
    assert.matches("no room for " .. parts[1].sop_instance_uid, raised, 1, true)
    assert.same({ parts[1].sop_instance_uid .. ".dcm" }, listing(dir))
  end)

  it("healthcare retrieve: Ctrl-C abandons the transfer, exits 130, keeps the instances it printed and no partial "
    .. "file", function()
    local dir = H.tmpdir() .. "/out"
    local cut = string.format("%d", parts[1].size + parts[2].size + 2000)
    local base = server.url .. "/multipart/sizes=" .. string.format("%d,%d,%d", parts[1].size, parts[2].size,
      parts[3].size) .. "/cut=" .. cut .. "/hang=1"
    -- SIGINT once the command has made the directory: by then it traps interrupts and the
    -- transfer is under way (the server answers part of the body, then goes silent).
    local script = table.concat({ H.q(H.BIN), "retrieve", H.q(base), H.q(study.uid), "-o", H.q(dir), "&",
      "pid=$!; n=0; while [ ! -d", H.q(dir), "] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done;",
      "sleep 0.5; kill -INT $pid; wait $pid" }, " ")
    local stdout, stderr, code = H.run(script)
    assert.equal(130, code, stderr)
    assert.matches("interrupted: the transfer was abandoned; 2 instances that arrived whole are kept, nothing "
      .. "partial", stderr, 1, true)
    local want = { parts[1].sop_instance_uid .. ".dcm", parts[2].sop_instance_uid .. ".dcm" }
    table.sort(want)
    assert.same(want, listing(dir))
    for i = 1, 2 do
      local path = dir .. "/" .. parts[i].sop_instance_uid .. ".dcm"
      assert.equal(parts[i].sha256, H.sha256(path))
      assert.truthy(stdout:find(path .. "\n", 1, true), stdout)
    end
  end)

  it("healthcare retrieve --json: a report it cannot spool is an io error (exit 2), the instances listed kept",
    function()
    -- the command with io.tmpfile replaced: none to be had, or one whose second write fails
    local function with_tmpfile(stub)
      local interp, flags = H.file_bytes(H.BIN):match("^#!(%S+)([^\n]*)\n")
      local path = H.tmpdir() .. "/healthcare-stubbed"
      H.write_file(path, table.concat({ "#!" .. interp .. flags, stub,
        string.format("arg[0] = %q; dofile(%q)", H.BIN, H.BIN), "" }, "\n"))
      H.check_run("chmod 755 " .. H.q(path))
      return path
    end
    local none = with_tmpfile('io.tmpfile = function() return nil, "No space left on device" end')
    local second = with_tmpfile(table.concat({
      "local real = io.tmpfile",
      "io.tmpfile = function()",
      "  local f, n = real(), 0",
      "  return setmetatable({}, { __index = function(_, k)",
      "    if k == 'write' then return function(self, ...) n = n + 1",
      "      if n > 1 then return nil, 'No space left on device' end f:write(...) return self end end",
      "    return function(_, ...) return f[k](f, ...) end",
      "  end })",
      "end" }, "\n"))
    local sizes = string.format("%d,%d,%d", parts[1].size, parts[2].size, parts[3].size)
    -- exit 2 either way, as for every local io error (an -o it cannot write in, a full disk)
    for _, case in ipairs({ { bin = none, kept = 0 }, { bin = second, kept = 2 } }) do
      local dir = H.tmpdir() .. "/out"
      local stdout, stderr, code = H.run(table.concat({ H.q(case.bin), "retrieve",
        H.q(server.url .. "/multipart/sizes=" .. sizes .. "/pause=0.3"), H.q(study.uid), "-o", H.q(dir), "--json",
        "--no-progress" }, " "))
      assert.equal(2, code, stderr)
      assert.truthy(stderr:find("cannot write the --json report to a temporary file: No space left on device", 1,
        true), stderr)
      assert.is_nil(stderr:find("internal error", 1, true), stderr)
      local report = assert(require("cjson").decode(stdout))
      assert.same({}, report.files)
      assert.matches("No space left on device", report.error)
      -- none: nothing was asked for; a failed second record: the first two instances were told
      -- (the second's record is what failed) and stay, the transfer stopped there
      local names = {}
      for i = 1, case.kept do names[i] = parts[i].sop_instance_uid .. ".dcm" end
      table.sort(names)
      assert.same(names, listing(dir))
    end
  end)

  it("leaves no file at the target of an instance whose stream is cut", function()
    local dir = H.tmpdir()
    local f = parts[1]
    local res, err = raw_store(1, { "cut=" .. math.floor(f.size / 2) }):retrieve_instance(study.uid,
      f.series_uid, f.sop_instance_uid, { to = dir .. "/x.dcm" })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.same({}, listing(dir))
  end)
end)

describe("retrieving a 200 MB multi-frame instance", function()
  -- The child is lua5.4 in both runs of this file; under LuaJIT it would measure the same thing.
  if jit then return end

  local CHILD = [[
package.path = arg[1] .. "/lua/?.lua;" .. arg[1] .. "/lua/?/init.lua;" .. package.path
package.cpath = arg[2] .. "/?.so;" .. package.cpath
local healthcare = require "healthcare"
local store = assert(healthcare.dicomweb(arg[3]))
local res, err = store:retrieve_instance(arg[4], arg[5], arg[6], { to = arg[7] })
if not res then io.stderr:write(tostring(err), "\n") os.exit(1) end
io.write(require("cjson").encode(res))
]]

  -- Runs the child under /usr/bin/time -v: its result and its peak RSS in bytes.
  local function retrieve_measured(f, dir)
    local script = H.write_file(H.tmpdir() .. "/child.lua", CHILD)
    local out, err, code = H.run("/usr/bin/time -v lua5.4 " .. table.concat({ H.q(script),
      H.q(os.getenv("HC_SOURCE_DIR") or "."), H.q(os.getenv("HC_BUILD_DIR") or "build"), H.q(E.dicomweb),
      H.q(f.study_uid), H.q(f.series_uid), H.q(f.sop_instance_uid), H.q(dir) }, " "))
    assert.equal(0, code, err)
    local kb = tonumber(err:match("Maximum resident set size %(kbytes%): (%d+)"))
    assert.is_number(kb, err)
    return cjson.decode(out), kb * 1024
  end

  it("keeps the memory of the retrieving process flat and the bytes whole", function()
    local made = gen_many(H.tmpdir(), {
      { size = 4096, prefix = "small" },
      { size = 200 * 1000 * 1000, frames = 50, prefix = "big" },
    })
    local small, big = made[1], made[2]
    local report = assert(orthanc_store():store({ small.path, big.path }))
    assert.equal(2, #report.stored)

    local t0 = core.now()
    local _, small_rss = retrieve_measured(small, H.tmpdir())
    local dir = H.tmpdir()
    local res, big_rss = retrieve_measured(big, dir)
    local seconds = core.now() - t0
    assert.equal(big.size, res.bytes)
    assert.same({ big.sop_instance_uid .. ".dcm" }, listing(dir))
    print(string.format("\npeak RSS: %.1f MiB for %d bytes, %.1f MiB for %d bytes; %.1f s",
      small_rss / MiB, small.size, big_rss / MiB, big.size, seconds))
    assert.is_true(big_rss < 64 * MiB, string.format("peak RSS %.1f MiB", big_rss / MiB))
    assert.is_true(big_rss < small_rss + 16 * MiB,
      string.format("peak RSS grew with the file: %.1f MiB vs %.1f MiB", big_rss / MiB, small_rss / MiB))
    assert.equal(H.sha256(big.path), H.sha256(dir .. "/" .. big.sop_instance_uid .. ".dcm"))

    -- free Orthanc's disk and the test bed's
    for _, f in ipairs({ small, big }) do
      local id = assert(H.orthanc_find_instance(f.sop_instance_uid))
      assert.equal(200, H.curl { "-X", "DELETE", E.orthanc .. "/instances/" .. id }.status)
    end
    os.remove(big.path)
    os.remove(dir .. "/" .. big.sop_instance_uid .. ".dcm")
  end)
end)
