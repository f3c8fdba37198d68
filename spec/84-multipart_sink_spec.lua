-- SPDX-License-Identifier: MIT
-- The response sink of the C transport (session:request/start with `sink`), through libcurl,
-- against a raw HTTP server of this file's own (spec/support/raw_server.py: canned multipart
-- bodies cut, dripped, chunked or malformed at will) and against Orthanc's DICOMweb:
--   { dir = d }  a 2xx multipart/related body becomes one file per part (res.parts, byte-exact,
--                with the part's headers), any other 2xx body one part;
--   { file = f } a 2xx body becomes the file f, through a temporary file renamed at the end;
--   non-2xx bodies stay in memory; every failure (cut, timeout, malformed multipart, disk write
--   error, a transfer closed or collected or its session closed while running) leaves no
--   temporary or half-written file, and err.parts lists the parts that did complete.
-- Memory stays flat: a 200 MB multipart body is received by a child lua process whose peak RSS
-- (/usr/bin/time -v) is compared with that of a 1 KB one.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/84-multipart_sink_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"

local E = H.env
local LUA = os.getenv("HC_LUA") or "lua5.4"
local PY = "/usr/bin/python3"
local BOUNDARY = "hc-raw-boundary-42"
local MiB = 1024 * 1024

-- ---- the raw server ----------------------------------------------------------------------

local server_dir = H.tmpdir()
local URL, stop_server = H.start_server("raw server", H.q(PY) .. " " .. H.q(E.support .. "/raw_server.py"), server_dir)
teardown(stop_server)

-- ---- helpers -------------------------------------------------------------------------------

-- What raw_server.py sends as part i's content (n bytes), tricky or not.
local function block(i)
  local t = {}
  for k = 0, 255 do t[k + 1] = string.char((k * 31 + i * 7) % 256) end
  return table.concat(t)
end

local function lookalikes(b)
  local short = b:sub(1, -2)
  return "\r\n--" .. short .. "\r\n" .. "\r\r\n--" .. short .. "x" .. "\n--" .. b .. "\r\n"
    .. "x--" .. b .. "--\r\n" .. "\r\n-" .. "\r\n--" .. "\r" .. "\r\n--" .. b:sub(1, 1) .. "\r\n"
end

local function content(i, n, tricky)
  local prefix = (tricky and lookalikes(BOUNDARY) or ""):sub(1, n)
  local rest = n - #prefix
  return prefix .. string.rep(block(i), math.floor(rest / 256) + 1):sub(1, rest)
end

-- The names in dir (hidden ones too), sorted.
local function listdir(dir)
  local out = H.check_run("ls -A " .. H.q(dir))
  local names = {}
  for name in out:gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function basenames(parts)
  local names = {}
  for i, p in ipairs(parts) do names[i] = p.path:match("[^/]+$") end
  table.sort(names)
  return names
end

local session = core.session { http2 = false }

local function request(path, sink, extra)
  local req = { url = URL .. path, sink = sink, timeout = 60 }
  for k, v in pairs(extra or {}) do req[k] = v end
  return session:request(req)
end

-- Each part is the expected content of part i, with the raw server's headers.
local function assert_parts(parts, sizes, dir, tricky)
  assert.equal(#sizes, #parts)
  for i, p in ipairs(parts) do
    assert.equal(dir, p.path:match("^(.*)/[^/]+$"))
    assert.truthy(p.path:match("/%.hc%-part%-[%w]+$"), p.path)
    assert.equal(sizes[i], p.size)
    local data = H.file_bytes(p.path)
    assert.equal(sizes[i], #data)
    assert.is_true(data == content(i, sizes[i], tricky), "part " .. i .. " differs")
    assert.equal("application/dicom", p.headers["content-type"])
    assert.equal("/parts/" .. i, p.headers["content-location"])
    assert.equal("Value-" .. i, p.headers["x-mixed-case"])
    assert.equal(H.sha256_string(data), p.headers["x-sha256"])
  end
end

local function sizes_query(sizes)
  local t = {}
  for i, n in ipairs(sizes) do t[i] = tostring(n) end
  return table.concat(t, ",")
end

-- ---- tests -----------------------------------------------------------------------------------

describe("sink = { dir }", function()
  local sizes = { 0, 1, 1000, 300000, 70000 }

  for _, variant in ipairs({ "", "&chunked=1", "&drip=7", "&tricky=1", "&tricky=1&chunked=1&padding=1",
      "&preamble=1&padding=1" }) do
    it("writes each part of a multipart/related body to its own file" .. (variant ~= "" and " (" .. variant .. ")" or ""),
      function()
      local s = sizes
      if variant:find("drip", 1, true) then s = { 0, 300, 5, 2000 } end
      local dir = H.tmpdir()
      local tricky = variant:find("tricky", 1, true) ~= nil
      local res, err = request("/multipart?sizes=" .. sizes_query(s) .. variant, { dir = dir })
      assert.is_nil(err, err and err.message)
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.is_nil(res.file)
      assert_parts(res.parts, s, dir, tricky)
      if not variant:find("chunked", 1, true) then
        assert.equal(tonumber(res.headers["content-length"]), res.bytes)
      end
      -- Nothing else in the directory.
      assert.same(basenames(res.parts), listdir(dir))
    end)
  end

  it("creates part files with mode 0666 less the umask", function()
    local dir = H.tmpdir()
    local res = assert(request("/multipart?sizes=10", { dir = dir }))
    -- fopen(3) creates files with 0666 less the umask too.
    local ref = H.write_file(H.tmpdir() .. "/ref", "")
    local function mode(path) return H.check_run("stat -c %a " .. H.q(path)) end
    assert.equal(mode(ref), mode(res.parts[1].path))
  end)

  it("keeps the parts of a body that is not multipart as one part", function()
    local dir = H.tmpdir()
    local res = assert(request("/dicom?size=123457", { dir = dir }))
    assert.equal(200, res.status)
    assert.equal(1, #res.parts)
    assert.equal(123457, res.parts[1].size)
    assert.equal("application/dicom", res.parts[1].headers["content-type"])
    assert.is_true(H.file_bytes(res.parts[1].path) == content(1, 123457))
    assert.equal(123457, res.bytes)
    -- chunked too
    res = assert(request("/dicom?size=5000&chunked=1", { dir = dir }))
    assert.is_true(H.file_bytes(res.parts[1].path) == content(1, 5000))
  end)

  it("gives no parts for a 2xx without a body", function()
    local dir = H.tmpdir()
    local res = assert(request("/empty?code=204", { dir = dir }))
    assert.equal(204, res.status)
    assert.same({}, res.parts)
    assert.same({}, listdir(dir))
  end)

  it("keeps a non-2xx body in memory and writes no file", function()
    local dir = H.tmpdir()
    local res = assert(request("/status?code=404", { dir = dir }))
    assert.equal(404, res.status)
    assert.equal("canned 404", H.json.decode(res.body).error.message)
    assert.is_nil(res.parts)
    assert.is_nil(res.bytes)
    assert.same({}, listdir(dir))
  end)

  it("keeps the complete parts of a body cut mid-part, and no partial file", function()
    local dir = H.tmpdir()
    -- Part 3 is cut 1000 bytes into its content: where that is, the body kept in memory says.
    local mem = assert(request("/multipart?sizes=100,0,5000"))
    local p3 = assert(mem.body:find(content(3, 5000), 1, true))
    local cut = p3 - 1 + 1000
    for _, variant in ipairs({ "", "&chunked=1" }) do
      local res, err = request("/multipart?sizes=100,0,5000&cut=" .. cut .. variant, { dir = dir })
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      assert.truthy(err.status == "partial" or err.status == "recv", err.status)
      assert.truthy(err.message:find("(2 complete parts received)", 1, true), err.message)
      assert_parts(err.parts, { 100, 0 }, dir, false)
      assert.same(basenames(err.parts), listdir(dir))
      for _, p in ipairs(err.parts) do os.remove(p.path) end
    end
    assert.same({}, listdir(dir))
  end)

  local malformed = {
    { "/multipart?sizes=10&ct=" .. "multipart/related%3B%20type%3Dapplication%2Fdicom", "no valid boundary parameter", 0 },
    { "/multipart?sizes=10&ct=" .. "multipart/related%3B%20boundary%3D%22bad%3Bboundary%22", "no valid boundary parameter", 0 },
    { "/multipart?sizes=10&ct=" .. "multipart/related%3B%20boundary%3Dsomething-else", "does not start with its boundary delimiter", 0 },
    { "/multipart?sizes=10,20000&noclose=1", "ended inside a part (1 complete part received)", 1 },
    { "/multipart?sizes=10,20,30&noclose=1&chunked=1", "ended inside a part (2 complete parts received)", 2 },
    { "/multipart?sizes=10&bighead=70000", "part header block larger than 64 KiB", 0 },
    { "/multipart?sizes=10&badhead=1", "malformed part header block", 0 },
  }
  for _, case in ipairs(malformed) do
    it("fails with code 'multipart' for " .. case[1], function()
      local dir = H.tmpdir()
      local res, err = request(case[1], { dir = dir })
      assert.is_nil(res)
      assert.equal("transport", err.kind)
      assert.equal("multipart", err.status)
      assert.truthy(err.message:find(case[2], 1, true), err.message)
      assert.equal(200, err.http_status)
      assert.equal(case[3], #err.parts)
      assert.same(basenames(err.parts), listdir(dir))
    end)
  end

  it("fails a request stalled mid-part with code 'timeout', removing the partial part", function()
    local dir = H.tmpdir()
    local t0 = core.now()
    local res, err = request("/multipart?sizes=100,400000&cut=200000&hang=1", { dir = dir }, { timeout = 1.5 })
    assert.is_nil(res)
    assert.equal("timeout", err.status)
    assert.is_true(core.now() - t0 < 10)
    assert_parts(err.parts, { 100 }, dir, false)
    assert.same(basenames(err.parts), listdir(dir))
  end)

  it("refuses a directory that does not exist, before any request", function()
    local res, err = request("/dicom?size=10", { dir = H.tmpdir() .. "/missing" })
    assert.is_nil(res)
    assert.equal("io", err.kind)
    assert.equal("sink", err.status)
    assert.truthy(err.message:find("No such file or directory", 1, true), err.message)
  end)

  it("raises for a malformed sink option", function()
    assert.error_matches(function() request("/dicom", { dir = "/tmp", file = "/tmp/x" }) end,
      "(sink takes 'file' or 'dir', not both)", nil, true)
    assert.has_error(function() request("/dicom", { elsewhere = "/tmp" }) end)
    assert.has_error(function() request("/dicom", "/tmp") end)
    assert.has_error(function() request("/dicom", { dir = "" }) end)
    assert.has_error(function() request("/dicom", { dir = "/tmp\0x" }) end)
  end)
end)

describe("sink = { file }", function()
  it("writes a 2xx body to the file, through a temporary file", function()
    local dir = H.tmpdir()
    local out = dir .. "/out.dcm"
    local res = assert(request("/dicom?size=1000001", { file = out }))
    assert.equal(200, res.status)
    assert.equal(out, res.file)
    assert.equal(1000001, res.bytes)
    assert.equal("", res.body)
    assert.is_true(H.file_bytes(out) == content(1, 1000001))
    assert.same({ "out.dcm" }, listdir(dir))
    -- A multipart body is written as it is (the caller asked for a file).
    res = assert(request("/multipart?sizes=5", { file = out }))
    assert.equal(res.bytes, #H.file_bytes(out))
    assert.truthy(H.file_bytes(out):find("--" .. BOUNDARY .. "--", 1, true))
  end)

  it("leaves the file untouched and no temporary file on failure", function()
    local dir = H.tmpdir()
    local out = H.write_file(dir .. "/out.dcm", "old content")
    for _, path in ipairs({ "/dicom?size=100000&cut=5000", "/dicom?size=100000&cut=5000&chunked=1",
        "/status?code=404" }) do
      local res, err = request(path, { file = out })
      if res then
        assert.equal(404, res.status)
        assert.is_nil(res.file)
        assert.truthy(res.body:find("canned 404", 1, true))
      else
        assert.equal("transport", err.kind)
        assert.is_nil(err.parts)
      end
      assert.equal("old content", H.file_bytes(out))
      assert.same({ "out.dcm" }, listdir(dir))
    end
  end)

  it("fails with kind 'io' when the file's directory does not exist", function()
    local res, err = request("/dicom?size=10", { file = H.tmpdir() .. "/missing/out" })
    assert.is_nil(res)
    assert.equal("io", err.kind)
    assert.equal("sink", err.status)
    assert.truthy(err.message:find("No such file or directory", 1, true), err.message)
  end)
end)

-- A Lua program run as a child process: args are the URL, the sink kind and its path.
local CHILD = [==[
package.cpath = %q
local core = require "healthcare.core"
local s = core.session { http2 = false }
local res, err = s:request { url = arg[1], sink = { [arg[2]] = arg[3] }, timeout = 120 }
if not res then
  io.write("error\t", err.kind, "\t", tostring(err.status), "\t", err.message, "\n")
  for _, p in ipairs(err.parts or {}) do io.write("part\t", p.path, "\t", p.size, "\n") end
  os.exit(3)
end
for _, p in ipairs(res.parts or {}) do
  io.write("part\t", p.path, "\t", p.size, "\t", p.headers["x-sha256"] or "", "\n")
end
io.write("bytes\t", res.bytes, "\n")
]==]

local child = H.write_file(server_dir .. "/child.lua", string.format(CHILD, package.cpath))

local function run_child(prefix, url, kind, path)
  local out, err, code = H.run(prefix .. H.q(LUA) .. " " .. H.q(child) .. " " .. H.q(url) .. " "
    .. kind .. " " .. H.q(path))
  local parts = {}
  for p, size, sha in out:gmatch("part\t([^\t]+)\t(%d+)\t?([^\n]*)\n") do
    parts[#parts + 1] = { path = p, size = tonumber(size), sha = sha }
  end
  return { out = out, err = err, code = code, parts = parts }
end

describe("sink write errors", function()
  -- A file size limit (ulimit -f, in 1 KiB blocks) makes write() fail with EFBIG; SIGXFSZ is
  -- ignored so that the process sees the error instead of dying.
  local LIMIT = "trap '' XFSZ; ulimit -f 256; exec "

  it("fail a file sink with kind 'io' and remove the temporary file", function()
    local dir = H.tmpdir()
    local r = run_child(LIMIT, URL .. "/dicom?size=1000000", "file", dir .. "/out.dcm")
    assert.equal(3, r.code, r.out .. r.err)
    assert.truthy(r.out:find("^error\tio\tsink\t"), r.out)
    assert.truthy(r.out:find("cannot write", 1, true), r.out)
    assert.truthy(r.out:find("File too large", 1, true), r.out)
    assert.same({}, listdir(dir))
  end)

  it("fail a dir sink with kind 'io', keeping the complete parts only", function()
    local dir = H.tmpdir()
    local r = run_child(LIMIT, URL .. "/multipart?sizes=1000,2000,1000000,10", "dir", dir)
    assert.equal(3, r.code, r.out .. r.err)
    assert.truthy(r.out:find("^error\tio\tsink\t"), r.out)
    assert.equal(2, #r.parts)
    assert.same(basenames(r.parts), listdir(dir))
  end)
end)

describe("a transfer that stops early", function()
  -- Part 1 arrives whole, part 2 in part; then the server goes silent.
  local PATH = "/multipart?sizes=1000,4000000&cut=600000&hang=1"

  local function start_and_wait(s, dir)
    local t = assert(s:start { url = URL .. PATH, sink = { dir = dir }, timeout = 30 })
    local deadline = core.now() + 20
    repeat
      s:wait(0.05)
      local _, _, down = t:progress()
    until (down >= 590000 and #listdir(dir) == 2) or core.now() > deadline
    assert.equal(2, #listdir(dir), "the transfer did not get into part 2")
    return t
  end

  it("removes every file it made when closed while running", function()
    local dir = H.tmpdir()
    local s = core.session { http2 = false }
    local t = start_and_wait(s, dir)
    t:close()
    assert.same({}, listdir(dir))
    assert.equal("healthcare.Session (open, 0 transfers)", tostring(s))
    s:close()
  end)

  it("removes every file it made when it and its session are collected while running", function()
    local dir = H.tmpdir()
    local function run()
      local s = core.session { http2 = false }
      start_and_wait(s, dir)
    end
    run()
    for _ = 1, 4 do collectgarbage() end
    assert.same({}, listdir(dir))
  end)

  it("removes the partial part when its session is closed, and reports the complete one", function()
    local dir = H.tmpdir()
    local s = core.session { http2 = false }
    local t = start_and_wait(s, dir)
    s:close()
    assert.equal(1, #listdir(dir))
    local res, err = t:result()
    assert.is_nil(res)
    assert.equal(1, #err.parts)
    assert.equal(1000, err.parts[1].size)
    assert.same(basenames(err.parts), listdir(dir))
    -- Reported parts are the caller's: closing the transfer leaves them.
    t:close()
    assert.same(basenames(err.parts), listdir(dir))
  end)

  it("stops a request when its on_progress returns false, removing every file it made", function()
    local dir = H.tmpdir()
    local calls, last = 0, -1
    local res, err = request(PATH, { dir = dir }, {
      on_progress = function(received, sent, to_send)
        calls = calls + 1
        assert.is_true(received >= last)
        assert.same({ 0, 0 }, { sent, to_send })
        last = received
        if received >= 590000 then return false end
      end,
    })
    assert.is_nil(res)
    assert.same({ "transport", "aborted" }, { err.kind, err.status })
    assert.is_true(calls >= 1)
    assert.same({}, listdir(dir))
    assert.equal("healthcare.Session (open, 0 transfers)", tostring(session))
  end)

  it("stops and detaches the transfer when on_progress raises, removing its files at once", function()
    local dir = H.tmpdir()
    local ok, err = pcall(request, PATH, { dir = dir }, {
      on_progress = function(received) if received >= 590000 then error("stop here") end end,
    })
    assert.is_false(ok)
    assert.matches("stop here", err)
    -- Before any collection: the transfer left the session and its files are gone.
    assert.equal("healthcare.Session (open, 0 transfers)", tostring(session))
    assert.same({}, listdir(dir))
  end)

  it("passes on the very value on_progress raised", function()
    local raised = setmetatable({}, { __tostring = function() return "a table" end })
    local ok, err = pcall(request, PATH, { dir = H.tmpdir() }, { on_progress = function() error(raised) end })
    assert.is_false(ok)
    assert.equal(raised, err)
  end)

  it("leaves no hole in what a later session:wait returns", function()
    -- The request's first on_progress starts a second transfer, its next one raises. The
    -- request's own transfer (added to the session first) must leave the session with the
    -- error: once both answers are in, one turn of the loop ends whatever is still there, and
    -- wait lists the second transfer alone, where ipairs sees it.
    local s = core.session { http2 = false }
    local second, calls = nil, 0
    local ok, err = pcall(s.request, s, { url = URL .. "/dicom?size=1000&drip=1", timeout = 30,
      on_progress = function()
        calls = calls + 1
        if calls == 1 then
          second = assert(s:start { url = URL .. "/dicom?size=300&drip=1", timeout = 30 })
          return
        end
        error("stop here")
      end })
    assert.is_false(ok)
    assert.matches("stop here", err)
    assert.equal("healthcare.Session (open, 1 transfer)", tostring(s))
    core.sleep(4) -- both answers are sent by now (1000 and 300 bytes, a byte a millisecond)
    local got, deadline = {}, core.now() + 20
    repeat
      local list, listed, seen = s:wait(0.2), 0, 0
      for _ in pairs(list) do listed = listed + 1 end
      for _, t in ipairs(list) do
        seen = seen + 1
        got[#got + 1] = t
      end
      assert.equal(listed, seen, "a hole in the list")
    until #got > 0 or core.now() > deadline
    assert.same({ second }, got)
    assert.equal(300, #assert(second:result()).body)
    s:close()
  end)

  it("ends as abandoned when on_progress closes the session", function()
    local dir = H.tmpdir()
    local s = core.session { http2 = false }
    local res, err = s:request { url = URL .. PATH, sink = { dir = dir }, timeout = 30,
      on_progress = function(received) if received >= 590000 then s:close() end end }
    assert.is_nil(res)
    assert.same({ "transport", "abandoned" }, { err.kind, err.status })
    -- The complete part is reported (the caller's file now), the partial one removed.
    assert.equal(1, #err.parts)
    assert.same(basenames(err.parts), listdir(dir))
    assert.equal("healthcare.Session (closed)", tostring(s))
  end)

  it("refuses an on_progress that is not a function", function()
    assert.error_matches(function() request("/multipart?sizes=1", nil, { on_progress = 1 }) end,
      "(option 'on_progress' must be a function, got number)", nil, true)
  end)

  it("leaves reported parts alone when the transfer is collected after its result", function()
    local dir = H.tmpdir()
    local res = assert(request("/multipart?sizes=10,20", { dir = dir }))
    collectgarbage()
    collectgarbage()
    assert.same(basenames(res.parts), listdir(dir))
  end)
end)

describe("sink memory", function()
  it("stays flat while a 200 MB multipart body streams to disk", function()
    local asan = LUA:find("asan", 1, true) ~= nil
    local function measured(sizes)
      local dir = H.tmpdir()
      local r = run_child("/usr/bin/time -v ", URL .. "/multipart?sizes=" .. sizes_query(sizes), "dir", dir)
      assert.equal(0, r.code, r.out .. r.err)
      local kb = tonumber(r.err:match("Maximum resident set size %(kbytes%): (%d+)"))
      assert.is_number(kb, r.err)
      assert.equal(#sizes, #r.parts)
      return r, kb * 1024, dir
    end
    local _, small_rss = measured({ 1000 })
    local big_sizes = { 50 * 1000 * 1000, 50 * 1000 * 1000, 50 * 1000 * 1000, 50 * 1000 * 1000 }
    local t0 = core.now()
    local r, big_rss, dir = measured(big_sizes)
    local secs = core.now() - t0
    print(string.format("\npeak RSS: %.1f MiB for 1 KB, %.1f MiB for 200 MB (%.1f s)",
      small_rss / MiB, big_rss / MiB, secs))
    for i, p in ipairs(r.parts) do
      assert.equal(big_sizes[i], p.size)
      assert.equal(p.sha, H.sha256(p.path))
      os.remove(p.path)
    end
    assert.same({}, listdir(dir))
    if asan then
      print("(RSS not compared under AddressSanitizer)")
      return
    end
    assert.is_true(big_rss < 64 * MiB, string.format("peak RSS %.1f MiB", big_rss / MiB))
    assert.is_true(big_rss < small_rss + 8 * MiB,
      string.format("peak RSS grew with the body: %.1f MiB vs %.1f MiB", big_rss / MiB, small_rss / MiB))
  end)
end)

describe("sink against Orthanc", function()
  it("receives a study's instances byte for byte", function()
    local files = H.gen_dicom { count = 3, size = 50000 }
    local want = {}
    for _, f in ipairs(files) do
      local r = H.curl { "-X", "POST", "--data-binary", "@" .. f.path, E.orthanc .. "/instances" }
      assert.equal(200, r.status, r.body)
      want[H.sha256(f.path)] = true
    end
    local dir = H.tmpdir()
    local s = core.session {}
    local res, err = s:request {
      url = E.dicomweb .. "/studies/" .. files[1].study_uid,
      headers = { 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*' },
      sink = { dir = dir }, timeout = 60,
    }
    assert.is_nil(err, err and err.message)
    assert.equal(200, res.status, res.body)
    assert.equal(3, #res.parts)
    for _, p in ipairs(res.parts) do
      assert.equal("application/dicom", p.headers["content-type"]:match("^[^;%s]+"))
      assert.is_true(want[H.sha256(p.path)] == true, "a part is not one of the files sent")
    end
    assert.same(basenames(res.parts), listdir(dir))
    -- An unknown study: a 404, in memory, no file.
    local dir2 = H.tmpdir()
    res = assert(s:request { url = E.dicomweb .. "/studies/1.2.3.4.5.6.7.8.9." .. math.random(1, 1e9),
      headers = { 'Accept: multipart/related; type="application/dicom"' }, sink = { dir = dir2 } })
    assert.equal(404, res.status)
    assert.is_nil(res.parts)
    assert.same({}, listdir(dir2))
    s:close()
  end)
end)
