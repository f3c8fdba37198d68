-- SPDX-License-Identifier: MIT
-- The streaming request body through the real transport (core.session, libcurl): files that
-- vanish, grow or shrink between building the body and sending it, or while they are being sent,
-- or that are replaced or rewritten in place when the segment carries their identity (dev, ino,
-- mtime, and its nanoseconds: rewritten within the second it was checked),
-- end the request with err.kind "io", code "body" and a message naming the file, and nothing is
-- stored from that request, in Orthanc, nor half of it; multipart boundaries and part headers are
-- checked before anything is sent; byte counts that are not whole numbers are refused. A "slow
-- sink" (Python, below) reads a little of a body and then holds it unread until told, so that a
-- file can be changed at a known moment while it is open.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/83-body_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"

local E = H.env
local CLOSED = "http://127.0.0.1:1/"
local PART = "Content-Type: application/dicom\r\n"

local function sh(cmd) return H.check_run(cmd) end

-- ---- the slow sink -------------------------------------------------------------------------

local SINK = [[
import os, socket, sys, time
go = sys.argv[1]
s = socket.socket()
# A small receive buffer (inherited by each connection), so the sender blocks soon.
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.bind(("127.0.0.1", 0))
s.listen(8)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    got = len(rest)
    while got < 256 * 1024:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    deadline = time.time() + 30
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.02)
    try:
        while got < length:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    except OSError:
        pass
    c.close()
]]

local sink_dir = H.tmpdir()
local GO = sink_dir .. "/go"
H.write_file(sink_dir .. "/sink.py", SINK)
local sink_pid = tonumber(sh(string.format("/usr/bin/python3 %s %s >%s 2>%s </dev/null & echo $!",
  H.q(sink_dir .. "/sink.py"), H.q(GO), H.q(sink_dir .. "/port"), H.q(sink_dir .. "/err"))):match("%d+"))
local SINK_URL
for _ = 1, 200 do
  local p = (H.file_bytes(sink_dir .. "/port") or ""):match("%d+")
  if p then SINK_URL = "http://127.0.0.1:" .. p .. "/" break end
  os.execute("sleep 0.05")
end
assert(SINK_URL, "the slow sink did not start: " .. (H.file_bytes(sink_dir .. "/err") or ""))
teardown(function() os.execute("kill " .. sink_pid .. " 2>/dev/null") end)

-- ---- helpers -------------------------------------------------------------------------------

local function multipart(boundary, files)
  local parts = {}
  for i, f in ipairs(files) do
    parts[i] = { headers = PART, file = f.path, size = f.size, dev = f.dev, ino = f.ino, mtime = f.mtime,
      mtime_nsec = f.mtime_nsec }
  end
  return { multipart = { boundary = boundary, parts = parts } }
end

local function stow(files, boundary)
  boundary = boundary or ("b-" .. core.random_hex(8))
  return {
    method = "POST", url = E.dicomweb .. "/studies", timeout = 60,
    headers = { 'Content-Type: multipart/related; type="application/dicom"; boundary="' .. boundary .. '"',
      "Accept: application/dicom+json" },
    body = multipart(boundary, files),
  }
end

-- Runs a started transfer to its end (session:wait returns it); returns result().
local function finish(session, t)
  local deadline, done = core.now() + 60, false
  while not done and core.now() < deadline do
    for _, d in ipairs(session:wait(0.2)) do done = done or d == t end
  end
  assert.is_true(done, "the transfer did not end")
  return t:result()
end

local function assert_body_error(res, err, pattern)
  assert.is_nil(res, res and res.body)
  assert.equal("io", err.kind)
  assert.equal("body", err.status)
  assert.truthy(err.message:find(pattern), err.message)
end

local function nothing_stored(files)
  for _, f in ipairs(files) do
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid), f.path .. " was stored")
  end
end

local function append(path, s)
  local f = assert(io.open(path, "ab"))
  f:write(s)
  f:close()
end

local function escaped(s) return (s:gsub("%p", "%%%0")) end

-- ---- specs ---------------------------------------------------------------------------------

describe("a file changed between building the body and sending it", function()
  local session
  before_each(function() session = core.session { timeout = 60 } end)
  after_each(function() session:close() end)

  for _, case in ipairs({
    { what = "vanishes", change = function(p) os.remove(p) end,
      message = function(p) return "cannot open " .. escaped(p) .. ": No such file or directory" end },
    { what = "grows", change = function(p) append(p, "more bytes") end,
      message = function(p) return "file changed size after it was checked: " .. escaped(p) .. " %(was %d+ bytes, now %d+%)" end },
    { what = "shrinks", change = function(p) sh("truncate -s 1000 " .. H.q(p)) end,
      message = function(p) return "file changed size after it was checked: " .. escaped(p) .. " %(was %d+ bytes, now 1000%)" end },
    -- With the identity lfs.attributes gives (as store:store passes it), a file of the same
    -- size that is not the one checked fails the request too.
    { what = "is replaced by a copy of the same size", identity = true,
      change = function(p) sh("cp " .. H.q(p) .. " " .. H.q(p .. ".new") .. " && mv " .. H.q(p .. ".new") .. " " .. H.q(p)) end,
      message = function(p) return "file replaced after it was checked: " .. escaped(p) .. " %(inode %d+, now %d+%)$" end },
    { what = "is rewritten in place", identity = true, change = function(p) sh("touch -d @1000000000 " .. H.q(p)) end,
      message = function(p)
        return "file modified after it was checked: " .. escaped(p) .. " %(mtime [-0-9T:]+Z, now 2001%-09%-09T01:46:40Z%)$"
      end },
    -- With the mtime's nanoseconds (core.file_stat's, as store:store passes them since), a file
    -- rewritten with the same size within the second it was checked fails too. The mtimes are
    -- set: the same second, other nanoseconds.
    { what = "is rewritten in place within the second it was checked", identity = "nsec",
      prepare = function(p) sh("touch -d @1700000000.25 " .. H.q(p)) end,
      change = function(p)
        local h = assert(io.open(p, "r+b"))
        assert(h:seek("end", -1))
        assert(h:write("y"))
        assert(h:close())
        sh("touch -d @1700000000.5 " .. H.q(p))
      end,
      message = function(p)
        return "file modified after it was checked: " .. escaped(p)
          .. " %(mtime 2023%-11%-14T22:13:20%.250000000Z, now 2023%-11%-14T22:13:20%.500000000Z%)$"
      end },
  }) do
    it("fails the request when the second file " .. case.what .. ", and Orthanc stores neither file", function()
      local files = H.gen_dicom({ count = 2, size = 300000 })
      for _, f in ipairs(case.identity and files or {}) do
        if case.prepare then case.prepare(f.path) end
        local a = assert(core.file_stat(f.path))
        f.dev, f.ino, f.mtime = a.dev, a.ino, a.modification
        if case.identity == "nsec" then f.mtime_nsec = a.mtime_nsec end
      end
      local t = assert(session:start(stow(files)))
      case.change(files[2].path)
      local res, err = finish(session, t)
      assert_body_error(res, err, case.message(files[2].path))
      t:close()
      os.execute("sleep 0.3")
      nothing_stored(files)
    end)
  end

  it("sends the same request again once the file is back as it was", function()
    local files = H.gen_dicom({ count = 2, size = 100000 })
    local saved = H.file_bytes(files[2].path)
    local req = stow(files)
    sh("truncate -s 10 " .. H.q(files[2].path))
    local res, err = session:request(req)
    assert_body_error(res, err, "file changed size after it was checked")
    H.write_file(files[2].path, saved)
    res = assert(session:request(req))
    assert.equal(200, res.status, res.body)
    for _, f in ipairs(files) do
      assert.equal(H.sha256(f.path), H.sha256_string(assert(H.orthanc_instance_file(f.sop_instance_uid))))
    end
  end)

  it("names a file that cannot be read at all when the body is built", function()
    local res, err = session:request { method = "POST", url = CLOSED, body = { { file = "/nonexistent/x.dcm" } } }
    assert.is_nil(res)
    assert.equal("io", err.kind)
    assert.equal("cannot open /nonexistent/x.dcm: No such file or directory", err.message)
    res, err = session:request { method = "POST", url = CLOSED, body = { { file = H.tmpdir() } } }
    assert.is_nil(res)
    assert.truthy(err.message:find("^not a regular file: "), err.message)
  end)
end)

describe("a file changed while it is being sent", function()
  local session
  before_each(function()
    os.remove(GO)
    session = core.session { timeout = 60 }
  end)
  after_each(function()
    H.write_file(GO, "")
    session:close()
  end)

  -- Starts sending a 64 MiB file to the sink and returns once the sink holds it back mid-way.
  local function start_big()
    local path = H.tmpdir() .. "/big"
    sh("truncate -s 64M " .. H.q(path))
    local t = assert(session:start { method = "POST", url = SINK_URL, body = { { file = path, size = 64 * 1048576 } } })
    local last, still = -1, 0
    while still < 3 do
      assert.same({}, session:wait(0.05), "the transfer ended early")
      local sent = t:progress()
      if sent > 0 and sent == last then still = still + 1 else still = 0 end
      last = sent
    end
    assert.truthy(last < 64 * 1048576)
    return t, path
  end

  it("fails when it shrinks", function()
    local t, path = start_big()
    sh("truncate -s 1M " .. H.q(path))
    H.write_file(GO, "")
    local res, err = finish(session, t)
    assert_body_error(res, err, "file shrank while it was being sent: " .. escaped(path) .. " %(%d+ of 67108864 bytes%)")
  end)

  it("fails when it grows", function()
    local t, path = start_big()
    append(path, "x")
    H.write_file(GO, "")
    local res, err = finish(session, t)
    assert_body_error(res, err,
      "file changed size while it was being sent: " .. escaped(path) .. " %(67108864 bytes, now 67108865%)")
  end)

  it("is reported by store:store as a failed instance, not retried, and not journalled as stored", function()
    local f = H.gen_dicom({ size = 24 * 1048576 })[1]
    local store = assert(healthcare.dicomweb(SINK_URL .. "dicom-web"))
    local changed = false
    local journal = H.tmpdir() .. "/journal"
    local report = assert(store:store({ f.path }, {
      journal = journal,
      on_progress = function(p)
        if not changed and p.bytes_sending > 0 then
          changed = true
          sh("truncate -s 4096 " .. H.q(f.path))
          H.write_file(GO, "")
        end
      end,
    }))
    assert.is_true(changed)
    assert.equal(0, #report.stored)
    assert.equal(1, #report.failed)
    assert.truthy(report.failed[1].reason:find("file shrank while it was being sent: " .. escaped(f.path)),
      report.failed[1].reason)
    assert.equal(0, report.retries)
    local outcomes = {}
    for _, rec in ipairs(H.journal_lines(journal)) do
      if rec.outcome then outcomes[#outcomes + 1] = rec.outcome end
    end
    assert.same({ "sending", "failed" }, outcomes) -- journaled as in flight, then its outcome
    store:close()
  end)
end)

describe("multipart framing", function()
  local session
  before_each(function() session = core.session {} end)
  after_each(function() session:close() end)

  local function send(boundary, headers)
    return session:request { method = "POST", url = CLOSED,
      body = { multipart = { boundary = boundary, parts = { { headers = headers or PART, data = "x" } } } } }
  end

  it("refuses bad boundaries before connecting", function()
    for _, b in ipairs({ "", string.rep("b", 71), "ends in a space ", 'a"b', "a\r\nb", "a;b", "a\tb", "caf\xc3\xa9" }) do
      local res, err = send(b)
      assert.is_nil(res, b)
      assert.equal("usage", err.kind, b)
      assert.equal("body", err.status)
      assert.truthy(err.message:find("multipart boundary", 1, true), err.message)
    end
    -- The longest and the oddest valid ones get as far as connecting.
    for _, b in ipairs({ string.rep("b", 70), "0123456789'()+_,-./:=? x" }) do
      local res, err = send(b)
      assert.is_nil(res)
      assert.equal("connect", err.status, err.message)
    end
  end)

  it("refuses part headers that would end the header block early or break a line", function()
    for _, h in ipairs({ PART .. "\r\nforged", PART .. "\r\n", "Content-Type: a\nX: b\r\n", "Content-Type: a",
      "No colon\r\n", ": x\r\n", "Content-Type: a\rb\r\n" }) do
      local res, err = send("bnd", h)
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.truthy(err.message:find("^invalid part headers"), err.message)
    end
    local _, err = send("bnd", PART .. "Content-Location: x:1\r\n")
    assert.equal("connect", err.status, err.message)
    _, err = send("bnd", "")
    assert.equal("connect", err.status, err.message)
  end)

  it("frames parts so that Orthanc stores each file byte for byte", function()
    local files = H.gen_dicom({ count = 3, size = 5000 })
    -- Odd but valid characters (Orthanc reads neither '=', ',' nor a space in a boundary).
    local res = assert(session:request(stow(files, "hc_" .. core.random_hex(8) .. "'()+-./:?")))
    assert.equal(200, res.status, res.body)
    for _, f in ipairs(files) do
      assert.equal(H.sha256(f.path), H.sha256_string(assert(H.orthanc_instance_file(f.sop_instance_uid))))
    end
  end)
end)

describe("byte counts", function()
  it("must be whole numbers a double holds exactly", function()
    local s = core.session {}
    local f = H.gen_dicom()[1]
    for _, size in ipairs({ 1.5, -2, 2 ^ 60, 0 / 0, math.huge }) do
      assert.error_matches(function()
        s:request { method = "POST", url = CLOSED, body = { { file = f.path, size = size } } }
      end, "bad argument #1 to 'request' ('size' must be a whole number of bytes from 0 to 2^53)", nil, true)
    end
    for _, n in ipairs({ -1, 0.5, 0 / 0 }) do
      assert.error_matches(function() s:request { url = CLOSED, max_response_bytes = n } end,
        "bad argument #1 to 'request' ('max_response_bytes' must be a whole number of bytes from 0 to 2^53)",
        nil, true)
    end
    for _, secs in ipairs({ -1, 0 / 0, 1e300 }) do
      assert.error_matches(function() s:request { url = CLOSED, timeout = secs } end,
        "bad argument #1 to 'request' (option 'timeout' must be 0 to 1e9 seconds)", nil, true)
    end
    -- A file's identity: whole numbers, or absent (not checked).
    for _, field in ipairs({ "dev", "ino", "mtime" }) do
      for _, v in ipairs({ 1.5, 0 / 0, math.huge, "1", true }) do
        assert.error_matches(function()
          s:request { method = "POST", url = CLOSED, body = { { file = f.path, [field] = v } } }
        end, "bad argument #1 to 'request' ('" .. field .. "' must be a whole number)", nil, true)
      end
    end
    for _, v in ipairs({ -1, 1e9, 0.5, 0 / 0, math.huge, "1", true }) do
      assert.error_matches(function()
        s:request { method = "POST", url = CLOSED, body = { { file = f.path, mtime = 1, mtime_nsec = v } } }
      end, "bad argument #1 to 'request' ('mtime_nsec' must be a whole number from 0 to 999999999)", nil, true)
    end
    -- A size the file does not have is caught when it is opened (the sink reads whatever comes).
    H.write_file(GO, "")
    local res, err = s:request { method = "POST", url = SINK_URL, body = { { file = f.path, size = f.size + 1 } } }
    assert.is_nil(res)
    assert.truthy(err.message:find("file changed size after it was checked", 1, true), err.message)
    s:close()
  end)
end)
