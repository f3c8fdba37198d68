-- SPDX-License-Identifier: MIT
-- The journal's format 2 and its in-memory index (core.journal_index): records written as
-- arrays with a time line when the second changes; a format 1 journal (as versions before
-- format 2 wrote it) read, resumed and continued in format 2; a journal of a newer format
-- refused; torn and broken lines of either format; the UIDs read back from the line; paths
-- that collide in nothing but their first bytes; an index of 100,000 paths kept out of the Lua
-- heap; then against the test bed's Orthanc a real store resumed from a format 2 journal and
-- from the same journal rewritten in format 1: nothing sent again either way; a journal whose last
-- records are "sending" (a run killed with requests in flight) resumed through a private emulator:
-- what the server holds is not sent again, the rest is, and all is sent when it cannot be asked.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/65-journal_v2_spec.lua
local H = require "helpers"
local cjson = require "cjson"
local core = require "healthcare.core"
local journal = require "healthcare.dicomweb.journal"

local E = H.env

local function lines(path)
  local out = {}
  for l in H.file_bytes(path):gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

-- A format 1 journal's text, as versions before format 2 wrote it.
local V1 = table.concat({
  '{"journal":"healthcare","version":1,"time":"2026-01-01T00:00:00Z","store":"S"}',
  '{"time":"2026-01-01T00:00:01Z","outcome":"stored","path":"/v1/a.dcm","size":10,"mtime":100,'
    .. '"sop_instance_uid":"1.2.3.1","study_uid":"1.2.9"}',
  '{"time":"2026-01-01T00:00:01Z","outcome":"failed","path":"/v1/b.dcm","size":20,"mtime":200,'
    .. '"sop_instance_uid":"1.2.3.2","study_uid":"1.2.9","reason":"HTTP 400"}',
  '{"time":"2026-01-01T00:00:02Z","outcome":"stored","path":"/v1/c \\"q\\".dcm","size":30,"mtime":300,'
    .. '"sop_instance_uid":"1.2.3.3","study_uid":"1.2.9"}',
  '{"time":"2026-01-01T00:00:03Z","outcome":"failed","path":"/v1/a.dcm","size":10,"mtime":100,'
    .. '"sop_instance_uid":"1.2.3.1","study_uid":"1.2.9","reason":"later"}',
  '{"time":"2026-01-01T00:00:04Z","outcome":"stored","path":"/v1/b.dcm","size":20,"mtime":200,'
    .. '"sop_instance_uid":"1.2.3.2","study_uid":"1.2.9"}',
}, "\n") .. "\n"

local function entry(path, size, mtime, sop, study)
  return { path = path, size = size, mtime = mtime, sop_instance_uid = sop, study_uid = study }
end

describe("journal format 2", function()
  local dir
  before_each(function() dir = H.tmpdir() end)

  it("writes records as arrays in the order of journal.FIELDS, after a run line of version 2", function()
    assert.same({ "outcome", "path", "size", "mtime", "sop_instance_uid", "study_uid", "reason", "mtime_nsec" },
      journal.FIELDS)
    local j = assert(journal.open(dir .. "/j", nil, { store = "http://h/dicom-web" }))
    assert(j:record({
      { entry = entry("/d/a.dcm", 10, 1700000000, "1.2.3.10", "1.2.9"), outcome = "stored" },
      { entry = entry("/d/b.dcm", 20, 1700000001, "1.2.3.20", "1.2.9"), outcome = "failed", reason = "HTTP 400" },
      { entry = entry("/d/c.dcm", 30, 1700000002, nil, nil), outcome = "failed", reason = "no UID" },
      { entry = entry("/d/q\"\\/x.dcm", 40, 1700000003, "1.2.3.40", ""), outcome = "stored" },
    }))
    j:close()
    local ls = lines(dir .. "/j")
    local head = cjson.decode(ls[1])
    assert.same({ "healthcare", 2, "http://h/dicom-web" }, { head.journal, head.version, head.store })
    local recs = {}
    for i = 2, #ls do
      local t = cjson.decode(ls[i])
      if t[1] == nil then
        -- a time line: only when the second changed since the run line
        assert.same({ "time" }, { next(t) }, ls[i])
        assert.truthy(t.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
      else
        recs[#recs + 1] = ls[i]
      end
    end
    assert.same({
      '["stored","/d/a.dcm",10,1700000000,"1.2.3.10","1.2.9"]',
      '["failed","/d/b.dcm",20,1700000001,"1.2.3.20","1.2.9","HTTP 400"]',
      '["failed","/d/c.dcm",30,1700000002,null,null,"no UID"]',
      '["stored","/d/q\\"\\\\/x.dcm",40,1700000003,"1.2.3.40",""]',
    }, recs)
    -- Read back: the latest line per path, the UIDs from the line.
    local report = {}
    j = assert(journal.open(dir .. "/j", report))
    assert.same({ 1, 2, 2, 0 }, { report.journal.earlier_runs, report.journal.earlier_stored,
      report.journal.earlier_failed, report.journal.ignored_lines })
    assert.same({ path = "/d/q\"\\/x.dcm", size = 40, mtime = 1700000003, sop_instance_uid = "1.2.3.40",
      study_uid = "" }, j:lookup({ path = "/d/q\"\\/x.dcm", size = 40, mtime = 1700000003 }))
    assert.is_true(j:is_stored({ path = "/d/a.dcm", size = 10, mtime = 1700000000 }))
    assert.is_false(j:is_stored({ path = "/d/b.dcm", size = 20, mtime = 1700000001 }))
    assert.is_false(j:is_stored({ path = "/d/c.dcm", size = 30, mtime = 1700000002 }))
    j:close()
    assert.error_matches(function() j:is_stored({ path = "/d/a.dcm", size = 10, mtime = 1 }) end,
      "attempt to use a closed journal$")
  end)

  it("writes a time line before records when the second has changed, and not otherwise", function()
    local j = assert(journal.open(dir .. "/j"))
    j.last_time = "2000-01-01T00:00:00Z"   -- as if the run line were written long ago
    assert(j:record({ { entry = entry("/a", 1, 1, "1.1", "1"), outcome = "stored" } }))
    assert(j:record({ { entry = entry("/b", 2, 2, "1.2", "1"), outcome = "stored" } }))
    j:close()
    local ls = lines(dir .. "/j")
    local times = 0
    for _, l in ipairs(ls) do if l:match('^{"time":') then times = times + 1 end end
    -- one after the old time; the second record gets one only if the clock ticked meanwhile
    assert.truthy(times == 1 or times == 2, table.concat(ls, "\n"))
    assert.truthy(ls[2]:match('^{"time":"%d%d%d%d%-[^"]+"}$'), ls[2])
    assert.equal('["stored","/a",1,1,"1.1","1"]', ls[3])
  end)

  it("reads a format 1 journal (the latest line of a path winning) and goes on in format 2", function()
    H.write_file(dir .. "/j", V1)
    local report = {}
    local j = assert(journal.open(dir .. "/j", report, { store = "S" }))
    assert.same({ 1, 2, 1, 0, 0 }, { report.journal.earlier_runs, report.journal.earlier_stored,
      report.journal.earlier_failed, report.journal.ignored_lines, report.journal.torn_bytes })
    assert.is_nil(j:lookup({ path = "/v1/a.dcm", size = 10, mtime = 100 }), "stored, then failed: sent again")
    assert.same({ path = "/v1/b.dcm", size = 20, mtime = 200, sop_instance_uid = "1.2.3.2", study_uid = "1.2.9" },
      j:lookup({ path = "/v1/b.dcm", size = 20, mtime = 200 }))
    assert.same({ path = "/v1/c \"q\".dcm", size = 30, mtime = 300, sop_instance_uid = "1.2.3.3",
      study_uid = "1.2.9" }, j:lookup({ path = "/v1/c \"q\".dcm", size = 30, mtime = 300 }))
    assert(j:record({ { entry = entry("/v1/a.dcm", 10, 100, "1.2.3.1", "1.2.9"), outcome = "stored" } }))
    j:close()
    -- The format 1 part is untouched; what follows is format 2.
    local text = H.file_bytes(dir .. "/j")
    assert.equal(V1, text:sub(1, #V1))
    local rest = lines(dir .. "/j")
    assert.equal(2, cjson.decode(rest[7]).version)
    assert.equal('["stored","/v1/a.dcm",10,100,"1.2.3.1","1.2.9"]', rest[#rest])
    -- Mixed: the format 2 line is the latest for /v1/a.dcm.
    j = assert(journal.open(dir .. "/j", report, { store = "S" }))
    assert.same({ 2, 3, 0 }, { report.journal.earlier_runs, report.journal.earlier_stored, report.journal.earlier_failed })
    assert.same({ path = "/v1/a.dcm", size = 10, mtime = 100, sop_instance_uid = "1.2.3.1", study_uid = "1.2.9" },
      j:lookup({ path = "/v1/a.dcm", size = 10, mtime = 100 }))
    j:close()
    -- A format 1 journal of another store is refused as before.
    local j2, err = journal.open(dir .. "/j", nil, { store = "T" })
    assert.is_nil(j2)
    assert.equal("usage", err.kind)
  end)

  it("refuses a journal written in a newer format, and leaves it unchanged", function()
    local text = '{"journal":"healthcare","version":3}\n["stored","/a",1,1]\n'
    H.write_file(dir .. "/j", text)
    local j, err = journal.open(dir .. "/j")
    assert.is_nil(j)
    assert.same({ "usage", "journal '" .. dir .. "/j' was written by a newer version of this program (format 3;"
      .. " this one reads up to 2): resume with that version, or use another journal file" },
      { err.kind, err.message })
    assert.equal(text, H.file_bytes(dir .. "/j"))
    assert(journal.open(dir .. "/j2")):close()   -- and the lock was released: nothing left open
  end)

  it("cuts a torn format 2 line off, and counts lines that are not records it can use", function()
    local j = assert(journal.open(dir .. "/j"))
    assert(j:record({ { entry = entry("/a", 1, 1, "1.1", "1"), outcome = "stored" } }))
    j:close()
    local whole = H.file_bytes(dir .. "/j")
    local bad = table.concat({
      '["stored","/s",1.5,1,"1.1","1"]',       -- size not an integer: a record no file matches
      '["stored","/m",1,"1","1.1","1"]',       -- mtime a string: the same
      '["odd","/o",1,1]',                      -- an outcome this version does not know
      '[]',
      '[null,"/n",1,1]',
      '["stored"]',
      '{"time":"2026-01-01T00:00:00Z","x":1}', -- a time line with more in it
      '"a string"',
      '["stored","/b",2,2,"1.2","1"]',
    }, "\n") .. "\n"
    local torn = '["stored","/c",3,3,"1.3'
    H.write_file(dir .. "/j", whole .. bad .. torn)
    local report = {}
    j = assert(journal.open(dir .. "/j", report))
    assert.same({ 6, #torn, 4 }, { report.journal.ignored_lines, report.journal.torn_bytes,
      report.journal.earlier_stored })
    assert.is_true(j:is_stored({ path = "/b", size = 2, mtime = 2 }))
    for _, p in ipairs({ "/s", "/m", "/o", "/n", "/c" }) do
      assert.is_false(j:is_stored({ path = p, size = 1, mtime = 1 }), p)
    end
    assert.is_false(j:is_stored({ path = "/c", size = 3, mtime = 3 }))
    j:close()
    local text = H.file_bytes(dir .. "/j")
    assert.equal(whole .. bad, text:sub(1, #whole + #bad))
    assert.equal("\n", text:sub(-1))   -- the torn line is gone, the new run line whole
  end)

  it("reads back a line longer than one read (a server's long reason) and odd paths", function()
    local long = string.rep("r", 5000)
    local odd = { "/d/new\nline", "/d/\255\254latin", "/d/tab\tx", "/d/\0nul" }
    local j = assert(journal.open(dir .. "/j"))
    local list = { { entry = entry("/d/long", 1, 1, "1.9", "1"), outcome = "stored", reason = long } }
    for i, p in ipairs(odd) do list[#list + 1] = { entry = entry(p, i, i, "1." .. i, "1"), outcome = "stored" } end
    assert(j:record(list))
    j:close()
    j = assert(journal.open(dir .. "/j"))
    assert.same({ path = "/d/long", size = 1, mtime = 1, sop_instance_uid = "1.9", study_uid = "1" },
      j:lookup({ path = "/d/long", size = 1, mtime = 1 }))
    for i, p in ipairs(odd) do
      assert.equal("1." .. i, (j:lookup({ path = p, size = i, mtime = i }) or {}).sop_instance_uid, p)
    end
    assert.is_nil(j:lookup({ path = "/d/", size = 1, mtime = 1 }))
    j:close()
  end)

  it("keeps 100,000 paths in the index, out of the Lua heap, each found with its latest values", function()
    local n = 100000
    local function p(i) return string.format("/archive/%03d/series/im%07d.dcm", i % 101, i) end
    local j = assert(journal.open(dir .. "/j"))
    local list = {}
    for i = 1, n do
      list[#list + 1] = { entry = entry(p(i), i, 1, "2.25." .. i, "2.25.1"), outcome = i % 10 == 0 and "failed" or "stored" }
      if #list == 1000 then assert(j:record(list)) list = {} end
    end
    j:close()
    collectgarbage()
    collectgarbage()
    local heap_before = collectgarbage("count")
    local report = {}
    j = assert(journal.open(dir .. "/j", report))
    collectgarbage()
    collectgarbage()
    -- 100,000 paths of 37 bytes as Lua strings in a table would take well over 8 MB of heap.
    assert.truthy(collectgarbage("count") - heap_before < 1024, "the index grew the Lua heap")
    assert.same({ n * 9 / 10, n / 10 }, { report.journal.earlier_stored, report.journal.earlier_failed })
    local wrong = 0
    for i = 1, n do
      if j:is_stored({ path = p(i), size = i, mtime = 1 }) ~= (i % 10 ~= 0) then wrong = wrong + 1 end
      if j:is_stored({ path = p(i), size = i + 1, mtime = 1 }) then wrong = wrong + 1 end
    end
    assert.equal(0, wrong)
    assert.equal("2.25.77777", j:lookup({ path = p(77777), size = 77777, mtime = 1 }).sop_instance_uid)
    j:close()
  end)

  it("keys paths that are keys already as themselves, and others as before", function()
    for _, case in ipairs({ { "/a/b.dcm", "/a/b.dcm" }, { "/", "/" }, { "/.", "/" }, { "//", "/" }, { "/a/", "/a" },
      { "/a/.", "/a" }, { "/a/./", "/a" }, { "/./a", "/a" }, { "/a//b", "/a/b" }, { "/a/..", "/a/.." },
      { "/a/.b", "/a/.b" }, { "/a.", "/a." }, { "a", "/w/a" }, { "", "/w" } }) do
      assert.equal(case[2], journal.key(case[1], "/w"), case[1])
    end
  end)

  it("core.journal_index: put, get, counts, close; misuse raises", function()
    local ix = core.journal_index()
    assert.is_nil(ix:get("/a"))
    assert.is_true(ix:put("/a", 1, 2, 3, 1))
    assert.is_true(ix:put("/b", 4, 5, 6, 2))
    assert.is_true(ix:put("/a", 7, 8, 9, 2))
    assert.same({ 2, 7, 8, 9 }, { ix:get("/a") })
    -- the mtime's nanoseconds, when given, come back (kept in the entry's 40 bytes with the seconds)
    local nx = core.journal_index()
    assert.is_true(nx:put("/n", 1, 1796211105, 3, 1, 999999999))
    assert.same({ 1, 1, 1796211105, 3, 999999999 }, { nx:get("/n") })
    assert.is_true(nx:put("/n", 1, -5, 3, 1, 0))
    assert.same({ 1, 1, -5, 3, 0 }, { nx:get("/n") })
    -- seconds out of the kept range (before 1697, after 2242): no mtime, so no file matches
    assert.is_true(nx:put("/n", 1, 2 ^ 40, 3, 1))
    assert.same({ 1, 1, nil, 3 }, { nx:get("/n") })
    assert.error_matches(function() nx:put("/n", 1, 1, 0, 1, 1000000000) end, "must be 0 to 999999999")
    nx:close()
    assert.same({ [2] = 2 }, ix:counts())
    assert.truthy(tostring(ix):match("2 paths"))
    assert.error_matches(function() ix:put("/c", 1, 1, -1, 1) end, "out of range")
    assert.error_matches(function() ix:put("/c", 1, 1, 0, 256) end, "must be 0 to 255")
    assert.error_matches(function() ix:put("/c", "x", 1, 0, 1) end, "number expected")
    assert.is_true(ix:close())
    assert.is_true(ix:close())
    assert.error_matches(function() ix:get("/a") end, "attempt to use a closed journal index")
    assert.truthy(tostring(ix):match("closed"))
    -- Left to the collector: its __gc frees it.
    for _ = 1, 50 do core.journal_index():put("/x", 1, 1, 1, 1) end
    collectgarbage()
    collectgarbage()
  end)
end)

describe("a store resumed from each format", function()
  if not H.need_testbed() then return end
  local healthcare = require "healthcare"

  -- The journal at path rewritten as format 1 wrote it: objects with names, a time on each.
  local function to_v1(path)
    local out = {}
    for _, l in ipairs(lines(path)) do
      local t = cjson.decode(l)
      if t.journal then
        out[#out + 1] = string.format('{"journal":"healthcare","version":1,"time":"%s","store":%s}', t.time,
          cjson.encode(t.store))
      elseif t[1] then
        local fields = { '"time":"2026-01-01T00:00:00Z"' }
        for i, k in ipairs(journal.FIELDS) do
          if t[i] ~= nil and t[i] ~= cjson.null then
            fields[#fields + 1] = cjson.encode(k) .. ":" .. cjson.encode(t[i])
          end
        end
        out[#out + 1] = "{" .. table.concat(fields, ",") .. "}"
      end
    end
    local v1 = path .. ".v1"
    H.write_file(v1, table.concat(out, "\n") .. "\n")
    return v1
  end

  it("skips every stored file unread, from a format 2 journal and from the same journal in format 1", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 12, size = 300, dir = dir .. "/in" })
    local jpath = dir .. "/journal"
    local st = assert(healthcare.dicomweb(E.dicomweb))
    local r1 = assert(st:store(dir .. "/in", { journal = jpath, max_request_instances = 5 }))
    assert.same({ 12, 0 }, { #r1.stored, #r1.already_stored })
    local v1 = to_v1(jpath)
    assert.truthy(H.file_bytes(v1):match('"version":1'))
    -- Same size and mtime (to the nanosecond), other bytes: a file skipped unread keeps them; one
    -- read would fail.
    local so = H.check_run("stat -c '%s %.9Y' " .. H.q(files[1].path))
    local size, mtime = so:match("(%d+) ([%d.]+)")
    H.write_file(files[1].path, string.rep("x", tonumber(size)))
    H.check_run("touch -d @" .. mtime .. " " .. H.q(files[1].path))
    for _, jp in ipairs({ jpath, v1 }) do
      local r = assert(st:store(dir .. "/in", { journal = jp }))
      assert.same({ 0, 12, 0, 0, 0 }, { #r.stored, #r.already_stored, #r.failed, #r.skipped, r.requests }, jp)
      assert.same({ 1, 12, 0 }, { r.journal.earlier_runs, r.journal.earlier_stored, r.journal.earlier_failed })
      local seen = {}
      for _, a in ipairs(r.already_stored) do seen[a.path] = a end
      for _, f in ipairs(files) do
        assert.equal(f.sop_instance_uid, seen[f.path] and seen[f.path].sop_instance_uid, f.path)
        assert.equal(f.study_uid, seen[f.path].study_uid)
      end
    end
    -- The format 1 journal went on in format 2, and resumes again.
    local last = lines(v1)
    assert.equal(2, cjson.decode(last[#last]).version)
    local r = assert(st:store(dir .. "/in", { journal = v1 }))
    assert.same({ 0, 12, 2 }, { #r.stored, #r.already_stored, r.journal.earlier_runs })
    st:close()
  end)
end)

describe("a store resumed from a journal whose last records are 'sending' (a crash in flight)", function()
  if not H.need_testbed() then return end
  local healthcare = require "healthcare"
  local lfs = require "lfs"
  -- A private emulator (in front of the test bed's Orthanc): its count of store requests is this
  -- file's alone, whatever other spec files run meanwhile.
  local em
  setup(function() em = require("support.emulator_instance").start() end)
  teardown(function() if em then em:stop() end end)

  -- What the emulator was sent: instances (forwarded to Orthanc) and STOW requests (POSTs; its
  -- store_requests count the searches too).
  local function sent()
    local s, posts = em:stats(), 0
    for _, q in ipairs(s.requests or {}) do if q.method == "POST" then posts = posts + 1 end end
    return { instances = tonumber(s.instances_forwarded) or 0, posts = posts }
  end
  local function since(before)
    local now = sent()
    return { instances = now.instances - before.instances, posts = now.posts - before.posts }
  end

  -- A journal as a run killed while these files' requests were in flight leaves it: "sending"
  -- lines with path, size and mtime (as this version writes them), or with the UIDs as well
  -- (with_uids: as the version before wrote them).
  local function journal_in_flight(jpath, store_name, files, with_uids)
    local j = assert(journal.open(jpath, nil, { store = store_name }))
    local list = {}
    for i, f in ipairs(files) do
      local a = assert(lfs.attributes(f.path))
      list[i] = { entry = entry(f.path, a.size, a.modification, with_uids and f.sop_instance_uid or nil,
        with_uids and f.study_uid or nil), outcome = "sending" }
    end
    assert(j:record(list))
    j:close()
  end

  for _, with_uids in ipairs({ false, true }) do
  it("asks the server: what it holds is journaled stored and not sent, the rest is sent (sending lines "
    .. (with_uids and "with UIDs, as written before" or "without UIDs: read from the files") .. ")", function()
    local dir = H.tmpdir()
    local held = H.gen_dicom({ count = 3, size = 300, dir = dir .. "/in", prefix = "held" })
    local new = H.gen_dicom({ count = 2, size = 300, dir = dir .. "/in", prefix = "new" })
    local orthanc = assert(healthcare.dicomweb(E.dicomweb))
    for _, f in ipairs(held) do assert.equal(1, assert(orthanc:store(f.path)).counts.stored) end
    local st = assert(healthcare.dicom_store(E.store, { endpoint = em.endpoint, access_token = E.token .. "-private" }))
    local jpath = dir .. "/journal"
    local all = {}
    for _, f in ipairs(held) do all[#all + 1] = f end
    for _, f in ipairs(new) do all[#all + 1] = f end
    journal_in_flight(jpath, st.name, all, with_uids)
    for _, t in ipairs(H.journal_lines(jpath)) do
      if t.outcome then assert.equal(with_uids, t.sop_instance_uid ~= nil) end
    end
    local before = sent()
    local r = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ in_flight = 5, found = 3 }, r.journal.in_flight)
    assert.same({ 5, 0, 0 }, { r.journal.earlier_in_flight, r.journal.earlier_stored, r.journal.earlier_failed })
    -- one request, with the two the server did not hold; the three it held never sent
    assert.same({ instances = 2, posts = 1 }, since(before))
    assert.same({ 2, 3, 0, 1 }, { #r.stored, #r.already_stored, #r.failed, r.requests })
    local stored_now = {}
    for _, s in ipairs(r.stored) do stored_now[s.path] = true end
    for _, f in ipairs(new) do assert.truthy(stored_now[f.path], f.path) end
    local found = {}
    for _, s in ipairs(r.already_stored) do found[s.path] = s.sop_instance_uid end
    for _, f in ipairs(held) do assert.equal(f.sop_instance_uid, found[f.path]) end
    -- the journal says stored for all five: the next run sends nothing and asks nothing
    local j = assert(journal.open(jpath))
    for _, f in ipairs(all) do
      local a = lfs.attributes(f.path)
      assert.is_true(j:is_stored({ path = f.path, size = a.size, mtime = a.modification }), f.path)
    end
    j:close()
    before = em:count("store_requests_total")
    local r2 = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ 0, 5, 0 }, { #r2.stored, #r2.already_stored, r2.requests })
    assert.same({ in_flight = 0, found = 0 }, r2.journal.in_flight)
    assert.equal(0, em:count("store_requests_total") - before) -- neither a search nor a store
    local held_sops, n = H.orthanc_sops(held[1].study_uid)
    assert.equal(3, n)
    for _, f in ipairs(held) do assert.equal(1, held_sops[f.sop_instance_uid]) end
    st:close()
    orthanc:close()
  end)
  end

  -- The GETs the emulator answered since `from` (an index into its requests): { kind, status },
  -- kind "search", "series" (a series read back whole) or "instance" (one read back by its UIDs).
  local function gets_since(from)
    local out = {}
    local reqs = em:stats().requests or {}
    for i = from + 1, #reqs do
      local q = reqs[i]
      if q.method == "GET" then
        local kind = q.path:find("/instances/[0-9.]+$") and "instance" or q.path:find("/series/[0-9.]+$") and "series"
          or q.path:find("/instances$") and "search" or q.path
        out[#out + 1] = { kind = kind, status = q.status }
      end
    end
    return out
  end
  local function kinds(gets)
    local n = {}
    for _, g in ipairs(gets) do n[g.kind] = (n[g.kind] or 0) + 1 end
    return n
  end

  it("reads a series back whole when its instances not in flight cost less than a request each: "
    .. "one request, each instance still compared byte for byte", function()
    em:control("reset")
    local dir = H.tmpdir()
    local series = H.gen_dicom({ count = 6, size = 300, dir = dir .. "/in", prefix = "held" })
    local study, series_uid = series[1].study_uid, series[1].series_uid
    local orthanc = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() orthanc:close() end)
    local stored = {}
    for i, f in ipairs(series) do stored[i] = f.path end
    assert.equal(6, assert(orthanc:store(stored)).counts.stored)
    -- the sixth instance's file is now other bytes under its UID (the server keeps its own), and
    -- two files of the series the server never got
    local sixth = series[6]
    assert(os.rename(sixth.path, dir .. "/stored-sixth.dcm"))
    local changed = H.gen_dicom({ count = 1, size = 900, dir = dir .. "/in", prefix = "changed", study = study,
      series = series_uid, sop = sixth.sop_instance_uid })[1]
    local new = H.gen_dicom({ count = 2, size = 300, dir = dir .. "/in", prefix = "new", study = study,
      series = series_uid })
    local st = assert(healthcare.dicom_store(E.store, { endpoint = em.endpoint, access_token = E.token .. "-private" }))
    finally(function() st:close() end)
    local jpath = dir .. "/journal"
    local all = { series[1], series[2], series[3], series[4], series[5], changed, new[1], new[2] }
    journal_in_flight(jpath, st.name, all)
    -- the private directory the answers land in, seen as it is made
    local made = {}
    local private_mkdir = core.private_mkdir
    core.private_mkdir = function(path)
      made[#made + 1] = path
      return private_mkdir(path)
    end
    local r = assert(st:store(dir .. "/in", { journal = jpath }))
    core.private_mkdir = private_mkdir
    assert.same({ in_flight = 8, found = 5 }, r.journal.in_flight)
    -- one search, one retrieve of the series (not six of an instance); then the three others sent
    assert.same({ search = 1, series = 1 }, kinds(gets_since(0)))
    assert.same({ 2, 5, 1 }, { #r.stored, #r.already_stored, #r.failed })
    assert.equal(changed.path, r.failed[1].path)
    assert.matches("already exists with different content", r.failed[1].reason)
    local found = {}
    for _, s in ipairs(r.already_stored) do found[s.path] = true end
    for i = 1, 5 do assert.truthy(found[series[i].path], series[i].path) end
    -- the answers' files are gone with their directory
    assert.equal(1, #made)
    assert.is_nil(lfs.attributes(made[1]))
  end)

  it("reads the others back by their UIDs, `concurrency` at a time, a failed read tried again", function()
    em:control("reset")
    local dir = H.tmpdir()
    -- ten instances stored by earlier requests, four by the request a crash cut; a request
    -- reckoned to cost nothing beyond its bytes, so that the series is not fetched whole
    local read_back = require "healthcare.dicomweb.read_back"
    local cost = read_back.REQUEST_COST_BYTES
    read_back.REQUEST_COST_BYTES = 0
    finally(function() read_back.REQUEST_COST_BYTES = cost end)
    local earlier = H.gen_dicom({ count = 10, size = 300, dir = dir .. "/earlier" })
    local study, series_uid = earlier[1].study_uid, earlier[1].series_uid
    local held = H.gen_dicom({ count = 4, size = 300, dir = dir .. "/in", prefix = "held", study = study,
      series = series_uid })
    local new = H.gen_dicom({ count = 1, size = 300, dir = dir .. "/in", prefix = "new", study = study,
      series = series_uid })
    local orthanc = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() orthanc:close() end)
    assert.equal(14, assert(orthanc:store({ dir .. "/earlier", held[1].path, held[2].path, held[3].path,
      held[4].path })).counts.stored)
    local st = assert(healthcare.dicom_store(E.store, { endpoint = em.endpoint, access_token = E.token .. "-private" }))
    finally(function() st:close() end)
    local jpath = dir .. "/journal"
    journal_in_flight(jpath, st.name, { held[1], held[2], held[3], held[4], new[1] })
    -- the first read-back to arrive is answered 503 after 2 s: read one after another, it would be
    -- the first answered; side by side, the others are answered while it waits
    em:control("faults", { replace = true, rules = { { match = "store", http_method = "GET",
      path = "instances/[0-9.]+$", delay = 2, status = 503, times = 1 } } })
    local r = assert(st:store(dir .. "/in", { journal = jpath, concurrency = 4, retry = { initial = 0.1 } }))
    assert.same({ in_flight = 5, found = 4 }, r.journal.in_flight)
    assert.same({ 1, 4, 0 }, { #r.stored, #r.already_stored, #r.failed })
    local gets = gets_since(0)
    -- the one not held is not read back: four read-backs and the retry of the one answered 503
    assert.same({ search = 1, instance = 5 }, kinds(gets))
    local statuses = {}
    for _, g in ipairs(gets) do if g.kind == "instance" then statuses[#statuses + 1] = g.status end end
    assert.equal(200, statuses[1], "the read-backs went one after another: " .. table.concat(statuses, " "))
    local n503 = 0
    for _, s in ipairs(statuses) do if s == 503 then n503 = n503 + 1 end end
    assert.equal(1, n503)
  end)

  it("sends them all when the server cannot be asked (nothing lost)", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 2, size = 300, dir = dir .. "/in" })
    -- a port where nothing listens: the check fails, and so does the send, which is attempted
    local st = assert(healthcare.dicomweb("http://127.0.0.1:9/dicom-web")) -- nothing listens there
    local jpath = dir .. "/journal"
    journal_in_flight(jpath, st.name, files)
    local r = assert(st:store(dir .. "/in", { journal = jpath, retry = { max_attempts = 1 } }))
    assert.equal(2, r.journal.in_flight.in_flight)
    assert.equal(0, r.journal.in_flight.found)
    assert.truthy(r.journal.in_flight.error)
    assert.same({ 0, 0, 2, 1 }, { #r.stored, #r.already_stored, #r.failed, r.requests })
    st:close()
  end)

  it("resumes a journal without 'sending' lines (as the previous version wrote it) as before", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 3, size = 300, dir = dir .. "/in" })
    local st = assert(healthcare.dicom_store(E.store, { endpoint = em.endpoint, access_token = E.token .. "-private" }))
    local jpath = dir .. "/journal"
    local j = assert(journal.open(jpath, nil, { store = st.name }))
    local a = assert(lfs.attributes(files[1].path))
    assert(j:record({ { entry = entry(files[1].path, a.size, a.modification, files[1].sop_instance_uid,
      files[1].study_uid), outcome = "stored" } }))
    j:close()
    assert.is_nil(H.file_bytes(jpath):find('"sending"', 1, true))
    local before = sent()
    local r = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ in_flight = 0, found = 0 }, r.journal.in_flight)
    assert.same({ 2, 1, 1 }, { #r.stored, #r.already_stored, r.requests })
    assert.same({ instances = 2, posts = 1 }, since(before))
    st:close()
  end)
end)
