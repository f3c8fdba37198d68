-- SPDX-License-Identifier: MIT
-- Retries of the reads (search pages, retrieve_*, metadata, verify) against the emulator's fault
-- rules, in front of the test bed's real Orthanc: a study's answer cut in its middle (the
-- connection closed after N bytes, as a network drops it), 503s and 429s, the attempt limit, a
-- bound that must not be retried, and what a retrieve that goes on from what arrived must hold
-- to: every instance in place byte for byte, listed, counted and told of exactly once, nothing
-- fetched again that the directory holds of this retrieve, and nothing kept that was there
-- before unless skip_existing says so.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/96-read_retry_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- Fault rules are consumed by whoever asks first: a private emulator keeps other spec files out.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local core = require "healthcare.core"
local healthcare = require "healthcare"
local lfs = require "lfs"
local E = H.env

-- Short waits: backoff starts at 10 ms, so a wait of a second can only come from the server.
local FAST = { initial = 0.01, multiplier = 2, max_delay = 0.1, max_attempts = 5 }
local STUDY_GET = "^studies/[^/]+$"

local function client_store(opts)
  local o = { endpoint = E.endpoint, access_token = E.token, retry = FAST }
  for k, v in pairs(opts or {}) do o[k] = v end
  local c = assert(healthcare.new(o))
  return assert(c:dicom_store(E.store))
end

local function faults(rules) H.emulator_faults(rules) end

-- The emulator's requests from `from` (a store_requests_total count) on: { method, path, status }.
local function requests_since(from)
  local st = H.emulator_stats()
  local n = st.store_requests_total - from
  assert(n <= #st.requests, "more requests than the emulator keeps")
  local out = {}
  for i = #st.requests - n + 1, #st.requests do out[#out + 1] = st.requests[i] end
  return out
end

local function total() return H.emulator_stats().store_requests_total end

-- The GETs among requests whose path below dicomWeb/ the Lua pattern finds.
local function gets(list, pattern)
  local n = 0
  for _, r in ipairs(list) do
    local below = r.path:match("/dicomWeb/(.*)$") or ""
    if r.method == "GET" and below:find(pattern) then n = n + 1 end
  end
  return n
end

-- A study of two series (6 and 4 instances of about 20 KB), stored in Orthanc; made once.
local study
local function the_study()
  if not study then
    study = H.make_study { patient_id = H.fresh_id("RR"), size = 20000,
      series = { { modality = "CT", count = 6 }, { modality = "MR", count = 4 } } }
    study.by_uid = {}
    for _, f in ipairs(study.files) do study.by_uid[f.sop_instance_uid] = f end
  end
  return study
end

-- A cut inside the third part of the study's answer: two instances arrive whole.
local function cut_in_third()
  local s = the_study()
  return s.files[1].size + s.files[2].size + 2000 + math.floor(s.files[3].size / 2)
end

-- Every instance of the study exactly once among res.files and res.kept, each file in place with
-- the stored bytes, and nothing else in dir (no temporary file).
local function assert_whole(res, dir, listed)
  local s = the_study()
  local seen = {}
  for _, f in ipairs(listed or res.files) do
    assert.is_nil(seen[f.sop_instance_uid], "listed twice: " .. tostring(f.sop_instance_uid))
    seen[f.sop_instance_uid] = "files"
  end
  for _, f in ipairs(res.kept or {}) do
    local uid = f.path:match("([^/]+)%.dcm$")
    assert.is_nil(seen[uid], "both listed and kept: " .. uid)
    seen[uid] = "kept"
  end
  local names = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  assert.equal(#s.files, #names, "files in the directory: " .. table.concat(names, " "))
  for _, f in ipairs(s.files) do
    assert.truthy(seen[f.sop_instance_uid], "not accounted for: " .. f.sop_instance_uid)
    assert.equal(H.sha256(f.path), H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
  end
end

local function counter()
  local told, n = {}, 0
  return function(f)
    assert.is_nil(told[f.sop_instance_uid], "told twice: " .. f.sop_instance_uid)
    told[f.sop_instance_uid] = true
    n = n + 1
  end, function() return n end
end

describe("a retrieve whose answer is cut", function()
  after_each(function() faults({}) end)

  it("goes on from what arrived: each instance once in files, count and on_file, the rest asked for", function()
    local s = the_study()
    local dir = H.tmpdir() .. "/out"
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local from = total()
    local on_file, told = counter()
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, on_file = on_file }))
    local sent = requests_since(from)
    assert.equal(10, res.count)
    assert.equal(10, #res.files)
    assert.equal(10, told())
    assert.equal(1, res.retries)
    local bytes = 0
    for _, f in ipairs(s.files) do bytes = bytes + f.size end
    assert.equal(bytes, res.bytes)
    assert_whole(res, dir)
    -- the study once (cut), then a search of its series and each series (the 6 instances' series,
    -- 2 there, came whole again: cheaper than 4 requests)
    assert.equal(1, gets(sent, STUDY_GET))
    assert.equal(1, gets(sent, "^series$") + gets(sent, "^studies/[^/]+/series$"))
    assert.equal(2, gets(sent, "^studies/[^/]+/series/[^/]+$"))
    assert.equal(0, gets(sent, "/instances/"))
    assert.equal(4, #sent)
  end)

  it("asks only for the missing instances, one by one, with request_cost = 0 (list_files = false)", function()
    local s = the_study()
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local from = total()
    local on_file, told = counter()
    local listed = {}
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, list_files = false, request_cost = 0,
      on_file = function(f)
        on_file(f)
        listed[#listed + 1] = f
      end }))
    local sent = requests_since(from)
    assert.equal(10, res.count)
    assert.equal(0, #res.files)
    assert.equal(10, told())
    assert_whole(res, dir, listed)
    -- a series of which none arrived comes whole; of the other(s), each missing instance alone
    local there, whole, alone = {}, 0, 0
    for i = 1, 2 do
      local se = s.by_uid[listed[i].sop_instance_uid].series_uid
      there[se] = (there[se] or 0) + 1
    end
    for _, se in ipairs(s.series) do
      if there[se.series_uid] then alone = alone + #se.instances - there[se.series_uid] else whole = whole + 1 end
    end
    assert.equal(alone, gets(sent, "^studies/[^/]+/series/[^/]+/instances/[^/]+$"))
    assert.equal(whole, gets(sent, "^studies/[^/]+/series/[^/]+$"))
  end)

  it("fetches again what the directory held before (without skip_existing): a stale copy is replaced", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- a copy of every instance with bytes appended: the same UID, not what the server holds
    for _, f in ipairs(s.files) do
      H.write_file(dir .. "/" .. f.sop_instance_uid .. ".dcm", H.file_bytes(f.path) .. "stale")
    end
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local on_file, told = counter()
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, on_file = on_file }))
    assert.equal(10, res.count)
    assert.equal(10, told())
    assert.is_nil(res.kept)
    assert_whole(res, dir)
  end)

  it("with skip_existing keeps what was there, lists what came, each once", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- two of the MR series' four there; the CT series' answer is cut after its first instance. With
    -- request_cost = 1 the next attempt asks for each missing instance alone: 5 of CT, 2 of MR.
    local mr = s.series[2].instances
    for i = 1, 2 do
      local f = s.by_uid[mr[i]]
      H.write_file(dir .. "/" .. mr[i] .. ".dcm", H.file_bytes(f.path))
    end
    local ct = s.series[1].series_uid
    faults({ { http_method = "GET", path = "^studies/[^/]+/series/" .. ct:gsub("%.", "\\.") .. "$",
      cut_after_bytes = s.files[1].size + 1000 } })
    local on_file, told = counter()
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, on_file = on_file, skip_existing = true,
      request_cost = 1 }))
    assert.equal(1, res.retries)
    assert.equal(#res.files, res.count)
    assert.equal(res.count, told())
    assert.equal(8, res.count)
    assert.equal(2, #res.kept)
    assert_whole(res, dir)
  end)

  it("with skip_existing asks for every other missing instance when one asked alone is gone (404)", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- one of the CT series there: with request_cost = 0 each of the other five is asked alone;
    -- the first one asked is gone (404), which used to leave the four after it unasked
    local ct = s.series[1]
    H.write_file(dir .. "/" .. ct.instances[1] .. ".dcm", H.file_bytes(s.by_uid[ct.instances[1]].path))
    local store = client_store()
    local listed = assert(store:search_instances({ StudyInstanceUID = s.study_uid,
      SeriesInstanceUID = ct.series_uid }):all())
    local gone
    for _, item in ipairs(listed) do
      local sop = item.SOPInstanceUID
      if sop ~= ct.instances[1] then gone = sop break end
    end
    faults({ { http_method = "GET", path = "^studies/[^/]+/series/[^/]+/instances/" .. gone:gsub("%.", "\\.") .. "$",
      status = 404, times = 100 } })
    local res, err, partial = store:retrieve_study(s.study_uid, { to = dir, skip_existing = true, request_cost = 0 })
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.truthy(tostring(err):find(gone, 1, true), tostring(err))
    partial = partial or err
    assert.equal(#s.files - 2, partial.count)
    for _, f in ipairs(s.files) do
      local path = dir .. "/" .. f.sop_instance_uid .. ".dcm"
      if f.sop_instance_uid == gone then
        assert.is_nil(lfs.attributes(path), "the instance that is gone: " .. path)
      else
        assert.equal(H.sha256(f.path), H.sha256(path))
      end
    end
  end)

  it("reports a file at the size it has on disk when its series comes again with other bytes", function()
    -- a study of its own: between the attempts, the server's copy of the instance that arrived is
    -- stored again, 10 KB larger (the same UIDs), and its series then comes whole again
    local s = H.make_study { patient_id = H.fresh_id("RZ"), size = 20000, series = { { count = 4 } } }
    local function restore(uid, size)
      local id = assert(H.orthanc_find_instance(uid))
      assert.equal(200, H.curl({ "-X", "DELETE", E.orthanc .. "/instances/" .. id }).status)
      H.orthanc_put_file(H.gen_dicom({ study = s.study_uid, series = s.series[1].series_uid, sop = uid,
        patient_id = s.patient_id, size = size })[1].path)
    end
    local function cut()
      faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = s.files[1].size + 2000 } })
    end
    -- the Lua API (the files listed, and told to on_file)
    local dir = H.tmpdir()
    cut()
    local told = {}
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir,
      on_file = function(f) told[#told + 1] = { path = f.path, size = f.size } end,
      on_retry = function() restore(told[1].path:match("([^/]+)%.dcm$"), 30000) end }))
    assert.equal(1, res.retries)
    assert.equal(4, res.count)
    local bytes = 0
    for _, f in ipairs(res.files) do
      assert.equal(lfs.attributes(f.path, "size"), f.size, f.path)
      bytes = bytes + f.size
    end
    assert.equal(bytes, res.bytes)
    for _, f in ipairs(told) do assert.equal(lfs.attributes(f.path, "size"), f.size, f.path) end
    -- list_files = false, as the command runs it: what on_file was told is all there is (the
    -- command's --json records are made from it as each file lands)
    dir, told = H.tmpdir(), {}
    cut()
    res = assert(client_store():retrieve_study(s.study_uid, { to = dir, list_files = false,
      on_file = function(f) told[#told + 1] = { path = f.path, size = f.size } end,
      on_retry = function() restore(told[1].path:match("([^/]+)%.dcm$"), 40000) end }))
    assert.equal(1, res.retries)
    assert.equal(4, #told)
    bytes = 0
    for _, f in ipairs(told) do
      assert.equal(lfs.attributes(f.path, "size"), f.size, f.path)
      bytes = bytes + f.size
    end
    assert.equal(bytes, res.bytes)
  end)

  it("gives up after max_attempts in a row that bring nothing: the partial result has each arrival once", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- the study's answer is cut after its first instance, and every series' before any
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = s.files[1].size + 1000 },
      { http_method = "GET", path = "^studies/[^/]+/series/[^/]+$", cut_after_bytes = 100, times = 20 } })
    local on_file, told = counter()
    local res, err, partial = client_store():retrieve_study(s.study_uid, { to = dir, on_file = on_file,
      retry = { max_attempts = 3, initial = 0.01 } })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.matches("%(after 3 attempts%)", err.message)
    assert.equal(2, partial.retries)
    assert.equal(told(), partial.count)
    assert.equal(#partial.files, partial.count)
    assert.is_true(partial.count >= 1)
    local seen = {}
    for _, f in ipairs(partial.files) do
      assert.is_nil(seen[f.path])
      seen[f.path] = true
      assert.equal(H.sha256(s.by_uid[f.sop_instance_uid].path), H.sha256(f.path))
    end
    local names = 0
    for name in lfs.dir(dir) do
      if name ~= "." and name ~= ".." then
        names = names + 1
        assert.truthy(seen[dir .. "/" .. name], "a file not in the partial result: " .. name)
      end
    end
    assert.equal(partial.count, names)
  end)

  it("counts attempts afresh after one that brought instances: a retrieve cut again and again goes on", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- attempt 1: two instances, then the cut; the next ask for each missing instance alone
    -- (request_cost = 0), and the second of them is cut, twice: each attempt brings some
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() },
      { http_method = "GET", path = "/instances/[^/]+$", skip = 1, cut_after_bytes = 1000 },
      { http_method = "GET", path = "/instances/[^/]+$", skip = 1, cut_after_bytes = 1000 } })
    local on_file, told = counter()
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, request_cost = 0, on_file = on_file,
      retry = { max_attempts = 2, initial = 0.01 } }))
    assert.equal(10, res.count)
    assert.equal(10, told())
    assert.is_true(res.retries >= 2, "retries: " .. res.retries)
    assert_whole(res, dir)
  end)

  it("does not try again with retry.max_attempts = 1", function()
    local s = the_study()
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local from = total()
    local res, err, partial = client_store():retrieve_study(s.study_uid, { to = dir, retry = { max_attempts = 1 } })
    assert.is_nil(res)
    assert.is_true(err.retryable)
    assert.not_matches("attempts", err.message)
    assert.equal(2, partial.count)
    assert.equal(0, partial.retries)
    assert.equal(1, #requests_since(from))
  end)

  it("takes the client's retry policy when the call gives none", function()
    local s = the_study()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local res, err = client_store({ retry = { max_attempts = 1 } }):retrieve_study(s.study_uid, { to = H.tmpdir() })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
  end)
end)

-- A cut inside the fourth part of the study's answer: three instances arrive whole.
local function cut_in_fourth()
  local s = the_study()
  return s.files[1].size + s.files[2].size + s.files[3].size + 3000 + math.floor(s.files[4].size / 2)
end

-- What another process may do to a file between two attempts: remove it, cut it short (its
-- header whole: it still reads as its instance), or write something else over it.
local DAMAGE = {
  function(path) assert(os.remove(path)) end,
  function(path)
    local bytes = H.file_bytes(path)
    H.write_file(path, bytes:sub(1, math.floor(#bytes / 2)))
  end,
  function(path) H.write_file(path, "not DICOM any more") end,
}

-- The files of res (or told, with list_files = false) against the directory: each at its size
-- on disk, and their bytes what res says.
local function assert_sizes(res, listed)
  local bytes = 0
  for _, f in ipairs(listed) do
    assert.equal(lfs.attributes(f.path, "size"), f.size, f.path)
    bytes = bytes + f.size
  end
  assert.equal(bytes, res.bytes)
end

describe("a retrieve whose files are removed or damaged between its attempts", function()
  after_each(function() faults({}) end)

  for _, case in ipairs({
    { name = "files listed, series whole again", list_files = true },
    { name = "files listed, each missing instance alone", list_files = true, request_cost = 0 },
    { name = "list_files = false, series whole again", list_files = false },
    { name = "list_files = false, each missing instance alone", list_files = false, request_cost = 0 },
  }) do
    it("writes them again, each listed, counted and told of once at its size on disk (" .. case.name .. ")",
      function()
        local s = the_study()
        local dir = H.tmpdir()
        faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_fourth() } })
        local on_file, told_count = counter()
        local told = {}
        local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, list_files = case.list_files,
          request_cost = case.request_cost,
          on_file = function(f)
            on_file(f)
            told[#told + 1] = { path = f.path, size = f.size, sop_instance_uid = f.sop_instance_uid }
          end,
          on_retry = function()
            assert.equal(3, #told)
            for i, damage in ipairs(DAMAGE) do damage(told[i].path) end
          end }))
        assert.equal(1, res.retries)
        assert.equal(10, res.count)
        assert.equal(10, told_count())
        assert_sizes(res, told)
        if case.list_files then
          assert.equal(10, #res.files)
          assert_sizes(res, res.files)
        end
        assert_whole(res, dir, told)
      end)
  end

  it("writes again a file it wrote that is cut short while its series comes whole again", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- the series' answers of the next attempt start after half a second: on_progress runs then
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() },
      { http_method = "GET", path = "^studies/[^/]+/series/[^/]+$", delay = 0.5, times = 2 } })
    local on_file, told_count = counter()
    local told, retried, cut_short = {}, false, false
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir,
      on_file = function(f)
        on_file(f)
        told[#told + 1] = { path = f.path, size = f.size, sop_instance_uid = f.sop_instance_uid }
      end,
      on_retry = function() retried = true end,
      -- the next attempt found it whole; its series' answer is under way
      on_progress = function()
        if retried and not cut_short then
          cut_short = true
          DAMAGE[2](told[1].path)
        end
      end }))
    assert.is_true(cut_short)
    assert.equal(1, res.retries)
    assert.equal(10, res.count)
    assert.equal(10, told_count())
    assert.equal(10, #res.files)
    assert_sizes(res, res.files)
    assert_whole(res, dir)
  end)

  it("with skip_existing fetches a file that was there before and is gone at the next attempt", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- the MR series there whole (kept); the CT series' answer is cut after its first instance, and
    -- one MR file is removed before the next attempt (request_cost = 1: each missing one alone)
    local mr = s.series[2].instances
    for _, uid in ipairs(mr) do H.write_file(dir .. "/" .. uid .. ".dcm", H.file_bytes(s.by_uid[uid].path)) end
    local ct = s.series[1].series_uid
    faults({ { http_method = "GET", path = "^studies/[^/]+/series/" .. ct:gsub("%.", "\\.") .. "$",
      cut_after_bytes = s.files[1].size + 1000 } })
    local on_file, told = counter()
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, on_file = on_file, skip_existing = true,
      request_cost = 1, on_retry = function() assert(os.remove(dir .. "/" .. mr[1] .. ".dcm")) end }))
    assert.equal(1, res.retries)
    assert.equal(7, res.count)
    assert.equal(7, told())
    assert.equal(3, #res.kept)
    assert_sizes(res, res.files)
    assert_whole(res, dir)
  end)

end)

describe("a retrieve whose files are removed during its last attempt", function()
  it("a file told of is the caller's: on_file may take each away, and the retrieve neither fails nor tries "
    .. "again", function()
    local s = the_study()
    local dir = H.tmpdir()
    local n = 0
    local res = assert(client_store():retrieve_study(s.study_uid, { to = dir, list_files = false,
      on_file = function(f)
        n = n + 1
        assert(os.remove(f.path))
      end }))
    assert.equal(0, res.retries)
    assert.equal(10, res.count)
    assert.equal(10, n)
    assert.same({}, H.files_under(dir))
  end)

  it("with skip_existing, a file kept from before and removed meanwhile is not kept: fetched again, or the "
    .. "retrieve fails", function()
    local s = the_study()
    local mr = s.series[2].instances
    for _, retry in ipairs({ { max_attempts = 1 }, FAST }) do
      local dir = H.tmpdir()
      for _, uid in ipairs(mr) do H.write_file(dir .. "/" .. uid .. ".dcm", H.file_bytes(s.by_uid[uid].path)) end
      local n = 0
      -- (request_cost = 1: the missing one alone, not its series whole again)
      local res, err, partial = client_store():retrieve_study(s.study_uid, { to = dir, skip_existing = true,
        request_cost = 1, retry = retry, on_file = function()
          n = n + 1
          if n == 2 then assert(os.remove(dir .. "/" .. mr[1] .. ".dcm")) end
        end })
      if retry.max_attempts == 1 then
        assert.is_nil(res)
        assert.equal("RetrieveStudy: 1 file it kept from before was removed before the retrieve ended",
          err.message)
        assert.equal(3, #partial.kept)
        assert.equal(6, partial.count)
        for _, f in ipairs(partial.kept) do assert.not_equal(dir .. "/" .. mr[1] .. ".dcm", f.path) end
      else
        assert(res, err)
        assert.equal(1, res.retries)
        assert.equal(3, #res.kept)
        assert.equal(7, res.count)
        assert_whole(res, dir)
      end
    end
  end)
end)

describe("read retries", function()
  after_each(function() faults({}) end)

  it("retrieves a study after 503 twice, and waits as a 429's Retry-After asks", function()
    local s = the_study()
    faults({ { http_method = "GET", path = STUDY_GET, status = 503, times = 2 } })
    local told = {}
    local res = assert(client_store():retrieve_study(s.study_uid, { to = H.tmpdir(),
      on_retry = function(err, seconds, attempt) told[#told + 1] = { err.http_status, seconds >= 0, attempt } end }))
    assert.equal(10, res.count)
    assert.equal(2, res.retries)
    assert.same({ { 503, true, 2 }, { 503, true, 3 } }, told)
    faults({ { http_method = "GET", path = STUDY_GET, status = 429, retry_after = 1 } })
    local t0 = core.now()
    res = assert(client_store():retrieve_study(s.study_uid, { to = H.tmpdir() }))
    local elapsed = core.now() - t0
    assert.equal(1, res.retries)
    assert.is_true(elapsed >= 1.0, string.format("retried after %.3f s", elapsed))
  end)

  it("does not retry a 404, a bound passed, or on_progress stopping", function()
    local s = the_study()
    local store = client_store()
    local from = total()
    local res, err = store:retrieve_study(H.fresh_uid(), { to = H.tmpdir() })
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.equal(1, gets(requests_since(from), STUDY_GET))
    -- a transfer the client stops is not among the emulator's records: count what the client sends
    local sent = 0
    store = client_store({ debug = function(line)
      if line:match("^> GET ") then sent = sent + 1 end
    end })
    res, err = store:retrieve_study(s.study_uid, { to = H.tmpdir(), max_bytes = 30000 })
    assert.is_nil(res)
    assert.equal("max_bytes", err.option)
    assert.equal(1, sent)
    -- (the answer waits a second: on_progress is called about five times a second)
    faults({ { http_method = "GET", path = STUDY_GET, delay = 1 } })
    res, err = store:retrieve_study(s.study_uid, { to = H.tmpdir(), on_progress = function() return false end })
    assert.is_nil(res)
    assert.equal("aborted", err.status)
    assert.equal(2, sent)
  end)

  it("retrieves an instance cut in its middle again, whole", function()
    local s = the_study()
    local f = s.files[1]
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = "/instances/[^/]+$", cut_after_bytes = math.floor(f.size / 2) } })
    local res = assert(client_store():retrieve_instance(s.study_uid, f.series_uid, f.sop_instance_uid,
      { to = dir .. "/one.dcm" }))
    assert.equal(1, res.retries)
    assert.equal(1, res.count)
    assert.equal(H.sha256(f.path), H.sha256(dir .. "/one.dcm"))
  end)

  it("retries metadata, frames and rendered images after a 503", function()
    local s = the_study()
    local f = s.files[1]
    local store = client_store()
    faults({ { http_method = "GET", path = "/metadata$", status = 503 } })
    local md = assert(store:retrieve_metadata(s.study_uid))
    assert.equal(10, #md)
    faults({ { http_method = "GET", path = "/frames/1$", status = 503 } })
    local res = assert(store:retrieve_frames(s.study_uid, f.series_uid, f.sop_instance_uid, 1, { to = H.tmpdir() }))
    assert.equal(1, res.retries)
    assert.equal(1, res.count)
    faults({ { http_method = "GET", path = "/rendered$", status = 503 } })
    res = assert(store:retrieve_rendered(s.study_uid, f.series_uid, f.sop_instance_uid, { to = H.tmpdir() }))
    assert.equal(1, res.retries)
    assert.equal("image/jpeg", res.content_type)
  end)

  it("store:fetch (the seed form's request) is sent again as client:call's GET; its last answer comes back", function()
    local s = the_study()
    local store = client_store()
    faults({ { http_method = "GET", path = "/metadata$", status = 503 } })
    local res = assert(store:fetch("studies/" .. s.study_uid .. "/metadata"))
    assert.equal(200, res.status)
    faults({ { http_method = "GET", path = "/metadata$", status = 503, times = 2 } })
    res = assert(store:fetch("studies/" .. s.study_uid .. "/metadata", { retry = { max_attempts = 2, initial = 0.01 } }))
    assert.equal(503, res.status) -- the raw answer of the last attempt, as fetch returns any status
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = 5000 } })
    res = assert(store:fetch("studies/" .. s.study_uid, { to = dir .. "/study.multipart" }))
    assert.equal(200, res.status)
    assert.equal(res.bytes, lfs.attributes(dir .. "/study.multipart", "size"))
    assert.is_true(res.bytes > 10 * 20000)
  end)

  it("searches on after a page failed twice (each page its own attempts), and verify does too", function()
    local s = the_study()
    local store = client_store()
    faults({ { http_method = "GET", path = "/instances$", status = 503, times = 2 } })
    local attempts = {}
    local results = assert(store:search_instances({ StudyInstanceUID = s.study_uid }, { page_size = 4,
      on_retry = function(err, _, attempt) attempts[#attempts + 1] = err.http_status .. "/" .. attempt end }))
    local list = assert(results:all())
    assert.equal(10, #list)
    assert.same({ "503/2", "503/3" }, attempts)
    assert.equal(3 + 2, results.requests) -- 3 pages (4, 4, 2), the first one twice more
    faults({ { http_method = "GET", path = "instances$", status = 502 } })
    local report = { stored = {} }
    for _, f in ipairs(s.files) do
      report.stored[#report.stored + 1] = { study_uid = s.study_uid, sop_instance_uid = f.sop_instance_uid }
    end
    local v = assert(store:verify(report))
    assert.equal(10, v.checked)
    assert.equal(0, #v.missing)
  end)

  it("ends a search after its attempts, and says how many", function()
    local s = the_study()
    faults({ { http_method = "GET", path = "instances$", status = 500, times = 5 } })
    local results = assert(client_store():search_instances({ StudyInstanceUID = s.study_uid },
      { retry = { max_attempts = 2, initial = 0.01 } }))
    local list, err = results:all()
    assert.is_nil(list)
    assert.equal(500, err.http_status)
    assert.matches("%(after 2 attempts%)", err.message)
    assert.equal(2, results.requests)
  end)
end)

describe("healthcare retrieve and search", function()
  after_each(function() faults({}) end)

  local function command(args)
    local argv = { args[1], E.store, "--endpoint", E.endpoint, "--access-token", E.token, "--no-token-cache" }
    for i = 2, #args do argv[#argv + 1] = args[i] end
    local out, err, code = H.healthcare(argv)
    return { stdout = out, stderr = err, code = code }
  end

  it("goes on after a cut, prints each file once, and says it retried; --retry-max-attempts 1 does not", function()
    local s = the_study()
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    local r = command({ "retrieve", s.study_uid, "-o", dir, "--no-progress" })
    assert.equal(0, r.code, r.stderr)
    local printed = {}
    for line in r.stdout:gmatch("[^\n]+") do
      assert.is_nil(printed[line], "printed twice: " .. line)
      printed[line] = true
    end
    local lines = 0
    for _ in pairs(printed) do lines = lines + 1 end
    assert.equal(10, lines)
    assert.matches("retrieved 10 instances, .*; 1 retry\n", r.stderr)
    assert.matches("healthcare retrieve: GET [^\n]*: transfer closed[^\n]*; trying again in [%d.]+ s %(attempt 2%)\n",
      r.stderr)
    for _, f in ipairs(s.files) do
      assert.equal(H.sha256(f.path), H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    end
    dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_third() } })
    r = command({ "retrieve", s.study_uid, "-o", dir, "--no-progress", "--retry-max-attempts", "1" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("missing 8 instances", r.stderr)
    r = command({ "retrieve", s.study_uid, "-o", dir, "--retry-max-attempts", "0" })
    assert.equal(2, r.code)
    assert.matches("expected a whole number from 1 to 1000, got '0'", r.stderr)
  end)

  it("names an instance whose retrieve failed missing when the file there by its name is not it", function()
    local s = the_study()
    local f = s.files[1]
    local dir = H.tmpdir()
    local target = s.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid
    for _, there in ipairs({ "not DICOM any more", H.file_bytes(s.files[2].path) }) do
      H.write_file(dir .. "/" .. f.sop_instance_uid .. ".dcm", there)
      faults({ { http_method = "GET", path = "/instances/[^/]+$", cut_after_bytes = math.floor(f.size / 2) } })
      local r = command({ "retrieve", target, "-o", dir, "--no-progress", "--retry-max-attempts", "1" })
      assert.equal(1, r.code, r.stderr)
      assert.matches("missing 1 instance of [^\n]*: " .. f.sop_instance_uid:gsub("%.", "%%.") .. "\n", r.stderr)
    end
  end)

  it("writes again a file removed before its next attempt, and lists it once in --json", function()
    local s = the_study()
    local dir = H.tmpdir() .. "/out"
    -- the study's answer cut after three instances; the next attempt's search answered 503 with
    -- Retry-After: 1, while a shell removes the first file that landed
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = cut_in_fourth() },
      { http_method = "GET", path = "^studies/[^/]+/series$", status = 503, retry_after = 1 } })
    local words = { H.q(H.BIN), "retrieve", H.q(E.store), H.q(s.study_uid), "-o", H.q(dir), "--json", "--endpoint",
      H.q(E.endpoint), "--access-token", H.q(E.token), "--no-token-cache", "&",
      "pid=$!; n=0; while [ $(ls", H.q(dir), "2>/dev/null | grep -c '\\.dcm$') -lt 3 ] && [ $n -lt 200 ]; do",
      "sleep 0.02; n=$((n+1)); done; gone=$(ls", H.q(dir), "| grep '\\.dcm$' | head -1); rm", H.q(dir) .. '/"$gone"',
      "; echo \"removed $gone\" >&2; wait $pid" }
    local stdout, stderr, code = H.run(table.concat(words, " "))
    assert.equal(0, code, stderr)
    assert.matches("removed [%d.]+%.dcm\n", stderr)
    local report = require("cjson").decode(stdout)
    assert.equal(2, report.retries)
    assert.equal(10, #report.files)
    local seen, bytes = {}, 0
    for _, f in ipairs(report.files) do
      assert.is_nil(seen[f.sop_instance_uid], "listed twice: " .. f.sop_instance_uid)
      seen[f.sop_instance_uid] = true
      assert.equal(lfs.attributes(f.path, "size"), f.size, f.path)
      bytes = bytes + f.size
    end
    assert.equal(bytes, report.bytes)
    assert_whole({ files = report.files }, dir)
  end)

  it("names at most 20 missing instances on standard error; --json lists them all", function()
    local big = H.make_study { patient_id = H.fresh_id("RM"), size = 500, series = { { count = 30 } } }
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = big.files[1].size + 1500 } })
    local r = command({ "retrieve", big.study_uid, "-o", H.tmpdir(), "--no-progress", "--retry-max-attempts", "1" })
    assert.equal(1, r.code, r.stderr)
    local line = r.stderr:match("missing 29 instances of study [%d.]+: ([^\n]*)")
    assert.truthy(line, r.stderr)
    local uids = {}
    for uid in line:gmatch("[%d.]+%d") do uids[#uids + 1] = uid end
    assert.equal(20, #uids)
    assert.matches(" and 9 more %(%-%-json lists them all%)$", line)
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = big.files[1].size + 1500 } })
    r = command({ "retrieve", big.study_uid, "-o", H.tmpdir(), "--json", "--retry-max-attempts", "1" })
    assert.equal(1, r.code, r.stderr)
    assert.equal(29, #require("cjson").decode(r.stdout).missing)
    assert.matches("and 9 more\n", r.stderr)
  end)

  it("after giving up, searches the instances of only the series it lacks some of", function()
    local s = the_study()
    local dir = H.tmpdir()
    -- the CT series is there whole (kept); the MR series' answer is cut before its first instance
    for _, uid in ipairs(s.series[1].instances) do
      H.write_file(dir .. "/" .. uid .. ".dcm", H.file_bytes(s.by_uid[uid].path))
    end
    local mr = s.series[2]
    for _, json in ipairs({ false, true }) do
      faults({ { http_method = "GET", path = "^studies/[^/]+/series/" .. mr.series_uid:gsub("%.", "\\.") .. "$",
        cut_after_bytes = 3000 } })
      local from = total()
      local r = command({ "retrieve", s.study_uid, "-o", dir, "--no-progress", "--retry-max-attempts", "1",
        json and "--json" or "--no-progress" })
      assert.equal(1, r.code, r.stderr)
      local list = requests_since(from)
      -- the series with their counts, then the MR series' instances: none of the study as a whole
      assert.equal(0, gets(list, "^studies/[^/]+/instances$"))
      assert.equal(1, gets(list, "^studies/[^/]+/series/[^/]+/instances$"))
      assert.equal(1, gets(list, "^studies/[^/]+/series/" .. mr.series_uid:gsub("%p", "%%%0") .. "/instances$"))
      local want = {}
      for i, uid in ipairs(mr.instances) do want[i] = uid end
      table.sort(want)
      if json then
        assert.same(want, require("cjson").decode(r.stdout).missing)
      else
        assert.matches("missing 4 instances of study [%d.]+: " .. table.concat(want, " "):gsub("%p", "%%%0") .. "\n",
          r.stderr)
      end
    end
  end)

  it("after giving up, searches once for what is missing: no second round of retries", function()
    local s = the_study()
    local dir = H.tmpdir()
    faults({ { http_method = "GET", path = STUDY_GET, cut_after_bytes = 3000, times = 2 },
      { http_method = "GET", path = "instances$", status = 503, times = 5 } })
    local from = total()
    local r = command({ "retrieve", s.study_uid, "-o", dir, "--no-progress", "--retry-max-attempts", "2" })
    assert.equal(1, r.code, r.stderr)
    assert.matches("transfer closed[^\n]*%(after 2 attempts%)", r.stderr)
    local list = requests_since(from)
    assert.equal(2, gets(list, STUDY_GET), r.stderr)
    assert.equal(1, gets(list, "instances$"), r.stderr)
    assert.not_matches("missing %d+ instance", r.stderr)
  end)

  it("Ctrl-C during a wait the server asked for (Retry-After: 30) exits 130 at once", function()
    local s = the_study()
    local dir = H.tmpdir() .. "/out"
    faults({ { http_method = "GET", path = STUDY_GET, status = 503, retry_after = 30 } })
    local words = { H.q(H.BIN), "retrieve", H.q(E.store), H.q(s.study_uid), "-o", H.q(dir), "--endpoint",
      H.q(E.endpoint), "--access-token", H.q(E.token), "--no-token-cache", "&",
      "pid=$!; n=0; while [ ! -d", H.q(dir), "] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done;",
      "sleep 1; kill -INT $pid; wait $pid" }
    local t0 = core.now()
    local _, stderr, code = H.run(table.concat(words, " "))
    local elapsed = core.now() - t0
    assert.equal(130, code, stderr)
    assert.matches("interrupted", stderr)
    assert.is_true(elapsed < 15, string.format("waited %.1f s", elapsed))
  end)

  it("search retries a page (--retry-max-attempts)", function()
    local s = the_study()
    faults({ { http_method = "GET", path = "/series$", status = 503 } })
    local r = command({ "search", "series", "--study", s.study_uid, "--json" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("HTTP 503.*; trying again in [%d.]+ s %(attempt 2%)", r.stderr)
    faults({ { http_method = "GET", path = "/series$", status = 503 } })
    r = command({ "search", "series", "--study", s.study_uid, "--retry-max-attempts", "1" })
    assert.equal(1, r.code)
    assert.matches("503", r.stderr)
  end)
end)
