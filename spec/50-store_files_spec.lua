-- SPDX-License-Identifier: MIT
-- store:store(files, opts) end to end: real Orthanc, the Google-shaped emulator in front of it,
-- real and generated DICOM files, and files that must not be sent. A small canned-answer HTTP
-- server (Python, below) plays the server answers Orthanc never gives (an instance missing from
-- the answer, XML, 202, an error envelope) and holds a body unread on order, so that a file can
-- be changed between probe and send at a known moment.
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"
local cjson = require "cjson"
local lfs = require "lfs"
local E = H.env

-- This file's own emulator: ctest runs spec files two at a time in one test bed, and the shared
-- emulator's fault rules (set by the retry specs) and counters would be seen by both.
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local STORE = E.store

local function my_posts()
  local out = {}
  for _, r in ipairs(em:stats().requests) do
    if r.method == "POST" then out[#out + 1] = r end
  end
  return out
end

local function google_store()
  local client = assert(healthcare.new { endpoint = em.endpoint, access_token = E.token .. "-private" })
  return assert(client:dicom_store(STORE))
end

local function orthanc_store()
  return assert(healthcare.dicomweb(E.dicomweb))
end

local function by_path(list)
  local t = {}
  for _, r in ipairs(list) do
    assert.is_nil(t[r.path], "reported twice: " .. r.path)
    t[r.path] = r
  end
  return t
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function sh(cmd) return H.check_run(cmd) end

-- Many generated files from one Python process: every gen_dicom.py run imports pydicom, which
-- takes a second or more here, so a list of option tables (H.gen_dicom's names) goes in one run.
-- Returns the files in order (a `count` adds that many).
local gen_many = H.gen_many

-- A fresh UID of our own (2.25 + a decimal number), to give two files one SOP Instance UID.
local function fresh_uid()
  return "2.25.1" .. core.random_hex(12):gsub("%x", function(c) return tostring(tonumber(c, 16) % 10) end)
end

-- A folder of everything a real archive holds. Returns the folder, the instances that must be
-- stored ({ path, sop_instance_uid, study_uid, size }), the reason pattern of every entry to skip
-- (not DICOM, not a file) by path, and that of every one that must fail (a DICOM file that cannot
-- be read or is cut short: not stored, so not to be passed over).
local function mixed_folder()
  local dir = H.tmpdir()
  local valid, others, bad = {}, {}, {}
  -- pydicom's real files whose SOP Instance UID no other sample shares (several share one UID
  -- with different bytes, which a store rightly refuses)
  local samples, uses = H.sample_info(), {}
  for _, s in ipairs(samples) do uses[s.sop_instance_uid] = (uses[s.sop_instance_uid] or 0) + 1 end
  sh("mkdir " .. H.q(dir .. "/samples"))
  for _, s in ipairs(samples) do
    if uses[s.sop_instance_uid] == 1 then
      local p = dir .. "/samples/" .. s.path:match("[^/]+$")
      sh("cp " .. H.q(s.path) .. " " .. H.q(p))
      valid[#valid + 1] = { path = p, sop_instance_uid = s.sop_instance_uid, study_uid = s.study_uid, size = s.size }
    end
  end
  -- generated, fresh UIDs: every transfer syntax, with and without a sequence before the UIDs,
  -- and without preamble (the probe accepts a meta group at offset 0; Orthanc stores it as is)
  local gens = {
    { ts = "explicit" }, { ts = "implicit" }, { ts = "big" }, { ts = "deflated" },
    { ts = "explicit", sequence_before_uids = true }, { ts = "implicit", sequence_before_uids = true },
    { ts = "big", sequence_before_uids = true }, { no_preamble = true },
  }
  for i, g in ipairs(gens) do g.dir, g.prefix = dir .. "/gen", "g" .. i end
  -- a directory named like a file is walked like any directory
  gens[#gens + 1] = { dir = dir .. "/x.dcm", prefix = "inside" }
  local spare = H.tmpdir()
  gens[#gens + 1] = { dir = spare, prefix = "cut" }
  gens[#gens + 1] = { dir = spare, prefix = "bare", no_meta = true }
  local made = gen_many(gens)
  for i = 1, #gens - 2 do valid[#valid + 1] = made[i] end
  local cut, bare = made[#made - 1], made[#made]

  local function other(name, pattern) others[dir .. "/" .. name] = pattern end
  local function failing(name, pattern) bad[dir .. "/" .. name] = pattern end
  H.write_file(dir .. "/notes.txt", "not DICOM at all\n")
  other("notes.txt", "^not a DICOM file %(no DICM prefix%)$")
  H.write_file(dir .. "/empty.dcm", "")
  other("empty.dcm", "^not a DICOM file %(empty%)$")
  H.write_file(dir .. "/truncated.dcm", H.file_bytes(cut.path):sub(1, 300))
  failing("truncated.dcm", "^truncated at offset %d+$")
  sh("mv " .. H.q(bare.path) .. " " .. H.q(dir .. "/no_meta.dcm"))
  other("no_meta.dcm", "^no File Meta Information$")
  -- unreadable although a regular file, even for root: reading /proc/self/mem fails with EIO
  sh("ln -s /proc/self/mem " .. H.q(dir .. "/unreadable.dcm"))
  failing("unreadable.dcm", "^cannot read .*/unreadable%.dcm: Input/output error$")
  sh("ln -s " .. H.q(dir .. "/nowhere.dcm") .. " " .. H.q(dir .. "/dangling.dcm"))
  other("dangling.dcm", "^broken symbolic link$")
  sh("mkfifo " .. H.q(dir .. "/pipe.dcm"))
  other("pipe.dcm", "^not a regular file %(named pipe%)$")
  sh("ln -s .. " .. H.q(dir .. "/gen/loop"))
  other("gen/loop", "^directory already visited %(symbolic link loop%)$")
  return dir, valid, others, bad
end

local function assert_listed(list, patterns)
  local by = by_path(list)
  assert.equal(count(patterns), count(by))
  for path, pattern in pairs(patterns) do
    assert.is_table(by[path], "not reported: " .. path)
    assert.matches(pattern, by[path].reason)
  end
end

local function assert_mixed_report(report, valid, others, bad)
  local stored = by_path(report.stored)
  assert.equal(#valid, count(stored))
  local bytes = 0
  for _, v in ipairs(valid) do
    local r = stored[v.path]
    assert.is_table(r, "not stored: " .. v.path)
    assert.equal(v.sop_instance_uid, r.sop_instance_uid)
    assert.equal(v.study_uid, r.study_uid)
    bytes = bytes + v.size
  end
  assert_listed(report.failed, bad)
  assert.same({}, report.already_stored)
  assert_listed(report.skipped, others)
  assert.equal(bytes, report.bytes)
  assert.is_true(report.seconds > 0)
  assert.equal(0, report.retries)
end

describe("store:store and a part the server cannot read", function()
  it("sends each instance a 400 left unlisted again alone: only the bad file fails", function()
    local dir = H.tmpdir()
    local good = gen_many { { dir = dir, count = 4, prefix = "good" } }
    -- pydicom's MR_truncated.dcm: a header our probe accepts, pixel data Orthanc cannot read.
    -- Orthanc answers the request with 400 and lists only what it stored before that part.
    local bad = dir .. "/m_truncated.dcm"
    sh("cp " .. H.q(E.samples .. "/MR_truncated.dcm") .. " " .. H.q(bad))
    local report = assert(orthanc_store():store(dir))
    assert.equal(4, #report.stored)
    for _, g in ipairs(good) do
      assert.is_string(H.orthanc_find_instance(g.sop_instance_uid), "Orthanc has no " .. g.path)
    end
    assert.equal(1, #report.failed)
    assert.equal(bad, report.failed[1].path)
    assert.equal("not in response (HTTP 400)", report.failed[1].reason)
    assert.is_true(report.sent_alone >= 1)
    assert.equal(1 + report.sent_alone, report.requests)
    assert.equal(0, report.retries)
  end)
end)

describe("store:store on a mixed folder", function()
  local dir, valid, others, bad
  lazy_setup(function() dir, valid, others, bad = mixed_folder() end)

  it("stores exactly the valid instances in Orthanc, byte for byte, and reports every other file", function()
    local seen, failed = 0, 0
    local report = assert(orthanc_store():store(dir, {
      on_instance = function(r, outcome)
        if outcome == "failed" then
          assert.is_string(bad[r.path], r.path)
          failed = failed + 1
          return
        end
        assert.equal("stored", outcome)
        assert.is_string(r.sop_instance_uid)
        seen = seen + 1
      end,
    }))
    assert_mixed_report(report, valid, others, bad)
    assert.equal(#valid, seen)
    assert.equal(count(bad), failed)
    assert.equal(1, report.requests)
    for _, v in ipairs(valid) do
      local held = H.orthanc_instance_file(v.sop_instance_uid)
      assert.is_string(held, "Orthanc has no " .. v.path)
      assert.is_true(held == H.file_bytes(v.path), "bytes differ: " .. v.path)
    end
  end)

  it("stores the same again through the Google-shaped API: identical bytes are accepted", function()
    local before = #my_posts()
    local report = assert(google_store():store(dir))
    assert_mixed_report(report, valid, others, bad)
    local posts = my_posts()
    assert.equal(before + 1, #posts)
    local p = posts[#posts]
    assert.equal(200, p.status)
    assert.equal("application/dicom+json", p.accept)
    assert.matches('^multipart/related; type="application/dicom"; boundary=healthcare%-%x+$', p["content-type"])
  end)

  it("takes a list of paths, a single file, and reports a path that does not exist as failed", function()
    local report = assert(orthanc_store():store({ valid[1].path, dir .. "/missing.dcm", dir .. "/notes.txt" }))
    assert.equal(1, #report.stored)
    assert.equal(valid[1].path, report.stored[1].path)
    assert.same({ { path = dir .. "/missing.dcm", reason = "cannot read: No such file or directory" } }, report.failed)
    assert.same({ dir .. "/notes.txt" }, { report.skipped[1].path })
    report = assert(orthanc_store():store(valid[2].path))
    assert.equal(valid[2].sop_instance_uid, report.stored[1].sop_instance_uid)
  end)
end)

describe("store:store and a DICOM file it cannot read", function()
  it("fails it (journaled failed, read again by a rerun); a file that is not DICOM is skipped", function()
    local dir = H.tmpdir()
    local made = gen_many { { dir = dir, count = 2, prefix = "ok" } }
    H.write_file(dir .. "/cut.dcm", H.file_bytes(made[1].path):sub(1, 300))
    sh("ln -s /proc/self/mem " .. H.q(dir .. "/eio.dcm")) -- EIO, even for root
    H.write_file(dir .. "/notes.txt", "not DICOM\n")
    local journal = H.tmpdir() .. "/journal"
    local seen = {}
    local report = assert(orthanc_store():store(dir, { journal = journal, keep_stored = false,
      on_instance = function(r, outcome) seen[r.path] = outcome end }))
    assert.same({ stored = 2, already_stored = 0, failed = 2, skipped = 1 }, report.counts)
    local bad = { [dir .. "/cut.dcm"] = "^truncated at offset %d+$",
      [dir .. "/eio.dcm"] = "^cannot read .*/eio%.dcm: Input/output error$" }
    assert_listed(report.failed, bad)
    assert_listed(report.skipped, { [dir .. "/notes.txt"] = "^not a DICOM file %(no DICM prefix%)$" })
    local outcomes = {}
    for _, rec in ipairs(H.journal_lines(journal)) do
      if rec.path and rec.outcome ~= "sending" then outcomes[rec.path] = rec.outcome end
    end
    for path in pairs(bad) do
      assert.equal("failed", seen[path], path)
      assert.equal("failed", outcomes[path], path)
    end
    report = assert(orthanc_store():store(dir, { journal = journal, keep_stored = false }))
    assert.same({ stored = 0, already_stored = 2, failed = 2, skipped = 1 }, report.counts)
  end)
end)

describe("store:store options", function()
  it("skips instances of another study when study_uid is given, and posts to studies/{uid}", function()
    local dir = H.tmpdir()
    local made = gen_many { { dir = dir, count = 2, prefix = "a" }, { dir = dir, prefix = "b" } }
    local theirs = made[3]
    local study = made[1].study_uid
    local before = #my_posts()
    local report = assert(google_store():store(dir, { study_uid = study }))
    assert.equal(2, #report.stored)
    assert.same({ {
      path = theirs.path, sop_instance_uid = theirs.sop_instance_uid, study_uid = theirs.study_uid,
      reason = "Study Instance UID " .. theirs.study_uid .. " does not match the requested study " .. study,
    } }, report.skipped)
    local posts = my_posts()
    assert.equal(before + 1, #posts)
    assert.equal("/v1/" .. STORE .. "/dicomWeb/studies/" .. study, posts[#posts].path)
    assert.is_nil(H.orthanc_find_instance(theirs.sop_instance_uid))
  end)

  it("returns a usage error for an invalid study UID and sends nothing", function()
    local before = #my_posts()
    local report, err = google_store():store(H.tmpdir(), { study_uid = "1.2.abc" })
    assert.is_nil(report)
    assert.equal("usage", err.kind)
    assert.equal("invalid study UID '1.2.abc'", err.message)
    assert.equal(before, #my_posts())
  end)

  it("raises on an unknown option or a files argument of the wrong type (programming mistakes)", function()
    local store = orthanc_store()
    assert.has_error(function() store:store(H.tmpdir(), { studyuid = "1.2" }) end,
      "unknown option 'studyuid' to 'store'; valid options: concurrency, journal, keep_stored, "
      .. "max_request_bytes, max_request_instances, on_instance, on_progress, overwrite, retry, shard, study_uid")
    assert.has_error(function() store:store(42) end,
      "bad argument #1 to 'store' (path or list of paths expected, got number)")
  end)

  it("keeps counts, not a record per stored file, with keep_stored = false", function()
    local dir = H.tmpdir()
    gen_many { { dir = dir, count = 5, prefix = "k" } }
    H.write_file(dir .. "/notes.txt", "not DICOM\n")
    local journal = H.tmpdir() .. "/journal"
    local seen = 0
    local report = assert(orthanc_store():store(dir, { keep_stored = false, journal = journal,
      on_instance = function() seen = seen + 1 end }))
    assert.same({ stored = 5, already_stored = 0, failed = 0, skipped = 1 }, report.counts)
    assert.same({}, report.stored)
    assert.equal(1, #report.skipped)
    assert.equal(5, seen)
    -- a rerun finds them in the journal: counted, not listed
    report = assert(orthanc_store():store(dir, { keep_stored = false, journal = journal }))
    assert.same({ stored = 0, already_stored = 5, failed = 0, skipped = 1 }, report.counts)
    assert.same({}, report.already_stored)
    -- the default keeps the records, and the counts agree with them
    report = assert(orthanc_store():store(dir, { journal = journal }))
    assert.equal(5, #report.already_stored)
    assert.same({ stored = 0, already_stored = 5, failed = 0, skipped = 1 }, report.counts)
  end)

  it("sends nothing for an empty folder and says so", function()
    local report = assert(orthanc_store():store(H.tmpdir()))
    assert.same({ stored = {}, already_stored = {}, failed = {}, skipped = {}, bytes = 0,
      requests = 0, retries = 0, sent_alone = 0, seconds = report.seconds,
      counts = { stored = 0, already_stored = 0, failed = 0, skipped = 0 } }, report)
  end)
end)

describe("store:store against a 409", function()
  it("reports a changed instance under an existing UID as failed with Google's detail, stores the rest, and does not retry", function()
    local dir2 = H.tmpdir()
    local uid, study = fresh_uid(), fresh_uid()
    local made = gen_many { { prefix = "orig", sop = uid, study = study },
      { dir = dir2, prefix = "changed", sop = uid, study = study }, { dir = dir2, prefix = "fresh" } }
    local first, changed, fresh = made[1], made[2], made[3]
    assert.equal(1, #assert(google_store():store(first.path)).stored)

    local before = #my_posts()
    local report = assert(google_store():store(dir2))
    assert.same({ {
      path = changed.path, sop_instance_uid = changed.sop_instance_uid, study_uid = changed.study_uid,
      reason = "0x0110 processing failure: an instance with the same SOP Instance UID already exists with different content",
    } }, report.failed)
    assert.equal(1, #report.stored)
    assert.equal(fresh.path, report.stored[1].path)
    assert.equal(fresh.size, report.bytes)
    assert.equal(0, report.retries)
    assert.equal(1, report.requests)
    local posts = my_posts()
    assert.equal(before + 1, #posts)   -- one request: a 409 is never sent again
    assert.equal(409, posts[#posts].status)
    -- Orthanc still holds the first bytes
    assert.is_true(H.orthanc_instance_file(first.sop_instance_uid) == H.file_bytes(first.path))
  end)
end)

-- Greedy grouping in walk order, as batch does it: the expected list of group sizes.
local function expected_groups(files, max_bytes, max_n)
  table.sort(files, function(a, b) return a.path < b.path end)
  local groups, n, bytes = {}, 0, 0
  for _, f in ipairs(files) do
    if n > 0 and (n == max_n or bytes + f.size > max_bytes) then
      groups[#groups + 1] = n
      n, bytes = 0, 0
    end
    n, bytes = n + 1, bytes + f.size
  end
  if n > 0 then groups[#groups + 1] = n end
  return groups
end

describe("store:store grouping", function()
  -- max_instances_per_request: the old name, still taken (README "Lua API")
  for _, name in ipairs({ "max_request_instances", "max_instances_per_request" }) do
    it("respects " .. name, function()
      local dir = H.tmpdir()
      H.gen_dicom { dir = dir, count = 7 }
      local before = #my_posts()
      local report = assert(google_store():store(dir, { [name] = 3 }))
      assert.equal(7, #report.stored)
      assert.equal(3, report.requests)
      assert.equal(before + 3, #my_posts())
    end)
  end

  it("respects max_request_bytes, and sends a larger file alone rather than not at all", function()
    local dir = H.tmpdir()
    local files = gen_many { { dir = dir, count = 6, size = 4000, prefix = "small" },
      { dir = dir, size = 40000, prefix = "big" } }
    local big = files[7]
    local max = 3 * files[1].size - 100   -- two small files per request
    local want = expected_groups(files, max, 500)
    local before = #my_posts()
    local report = assert(google_store():store(dir, { max_request_bytes = max }))
    assert.equal(7, #report.stored)
    assert.equal(#want, report.requests)
    local posts = my_posts()
    assert.equal(before + #want, #posts)
    for i = before + 1, #posts do
      local len = tonumber(posts[i]["content-length"])
      -- DICOM bytes at most max (or one file), plus about 100 bytes of framing per part
      assert.is_true(len <= math.max(max, big.size) + 2 * 120 + 80, "request of " .. len .. " bytes")
    end
  end)

  it("sends two files with one SOP Instance UID in separate requests", function()
    local dir = H.tmpdir()
    local f = H.gen_dicom { dir = dir, prefix = "a" }[1]
    sh("cp " .. H.q(f.path) .. " " .. H.q(dir .. "/b-copy.dcm"))
    local report = assert(orthanc_store():store(dir))
    assert.equal(2, #report.stored)
    assert.equal(2, report.requests)
  end)
end)

-- ---------------------------------------------------------------- the canned-answer server

local CANNED_SERVER = [[
import json, os, socket, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

d = sys.argv[1]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        with open(os.path.join(d, "answer.json")) as f:
            ans = json.load(f)
        length = int(self.headers.get("Content-Length") or 0)
        if ans.get("gate"):
            # hold the body unread until the spec says go
            deadline = time.time() + 30
            while not os.path.exists(os.path.join(d, "go")) and time.time() < deadline:
                time.sleep(0.02)
        chunks, got = [], 0
        while got < length:
            try:
                data = self.rfile.read1(min(1 << 20, length - got))
            except OSError:  # the client gave up mid-body (reset)
                data = b""
            if not data:
                break
            got += len(data)
            chunks.append(data)
        body = b"".join(chunks)
        ctype = self.headers.get("Content-Type", "")
        b = ctype.split("boundary=")[-1].encode()
        rec = {"path": self.path, "content_type": ctype, "accept": self.headers.get("Accept"),
               "length": length, "received": got, "parts": body.count(b"--" + b + b"\r\n"),
               "closed": body.endswith(b"\r\n--" + b + b"--\r\n")}
        with open(os.path.join(d, "requests.log"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if got < length:
            self.close_connection = True
            return
        out = ans["body"].encode()
        self.send_response(ans.get("status", 200))
        if ans.get("content_type"):
            self.send_header("Content-Type", ans["content_type"])
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # a small receive buffer, so that a body nobody reads stalls the client early
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        super().server_bind()

srv = Server(("127.0.0.1", 0), Handler)
with open(os.path.join(d, "port.tmp"), "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(os.path.join(d, "port.tmp"), os.path.join(d, "port"))
srv.serve_forever()
]]

local function start_canned()
  local dir = H.tmpdir()
  H.write_file(dir .. "/server.py", CANNED_SERVER)
  local pid = assert(tonumber(sh("/usr/bin/python3 " .. H.q(dir .. "/server.py") .. " " .. H.q(dir)
    .. " >" .. H.q(dir .. "/log") .. " 2>&1 & echo $!"):match("%d+")))
  local port
  for _ = 1, 200 do
    port = H.file_bytes(dir .. "/port")
    if port then break end
    core.sleep(0.05)
  end
  assert(port, "canned server did not start: " .. tostring(H.file_bytes(dir .. "/log")))
  local srv = { dir = dir, pid = pid, url = "http://127.0.0.1:" .. port .. "/dicom-web" }
  function srv.answer(a)
    os.remove(dir .. "/go")
    os.remove(dir .. "/requests.log")
    H.write_file(dir .. "/answer.json", cjson.encode(a))
  end
  function srv.go() H.write_file(dir .. "/go", "") end
  -- The requests logged so far; with n, waits (up to 10 s) until n are logged: the server logs
  -- a cut-short body after the client has moved on.
  function srv.requests(n)
    for _ = 1, 200 do
      local log = H.file_bytes(dir .. "/requests.log") or ""
      local _, lines = log:gsub("\n", "")
      if not n or lines >= n then break end
      core.sleep(0.05)
    end
    local list = {}
    for line in (H.file_bytes(dir .. "/requests.log") or ""):gmatch("[^\n]+") do
      list[#list + 1] = cjson.decode(line)
    end
    return list
  end
  function srv.stop() H.run("kill " .. pid) end
  return srv
end

-- A STOW-RS answer in DICOM JSON: stored = list of UIDs or { uid, warning }, failed = list of
-- { uid, code, detail }.
local function stow_json(stored, failed)
  local ds = {}
  if #stored > 0 then
    local items = {}
    for i, s in ipairs(stored) do
      local uid, warning = s, nil
      if type(s) == "table" then uid, warning = s[1], s[2] end
      items[i] = { ["00081150"] = { vr = "UI", Value = { "1.2.840.10008.5.1.4.1.1.7" } },
        ["00081155"] = { vr = "UI", Value = { uid } },
        ["00081196"] = warning and { vr = "US", Value = { warning } } or nil }
    end
    ds["00081199"] = { vr = "SQ", Value = items }
  end
  if failed and #failed > 0 then
    local items = {}
    for i, f in ipairs(failed) do
      items[i] = { ["00081155"] = { vr = "UI", Value = { f[1] } }, ["00081197"] = { vr = "US", Value = { f[2] } },
        ["00090010"] = f[3] and { vr = "LO", Value = { "GOOGLE" } } or nil,
        ["00091097"] = f[3] and { vr = "LT", Value = { f[3] } } or nil }
    end
    ds["00081198"] = { vr = "SQ", Value = items }
  end
  return cjson.encode(ds)
end

describe("store:store reading answers", function()
  local srv, dir, a, b
  lazy_setup(function()
    srv = start_canned()
    dir = H.tmpdir()
    local made = gen_many { { dir = dir, prefix = "a" }, { dir = dir, prefix = "b" } }
    a, b = made[1], made[2]
  end)
  lazy_teardown(function() if srv then srv.stop() end end)

  local function store(opts)
    return assert(assert(healthcare.dicomweb(srv.url)):store(dir, opts))
  end

  it("reports an instance the server says nothing about as 'not in response'", function()
    srv.answer { status = 200, content_type = "application/dicom+json", body = stow_json({ a.sop_instance_uid }) }
    local report = store()
    assert.equal(1, #report.stored)
    assert.equal(a.path, report.stored[1].path)
    assert.same({ { path = b.path, sop_instance_uid = b.sop_instance_uid, study_uid = b.study_uid,
      reason = "not in response (HTTP 200)" } }, report.failed)
    assert.equal(a.size, report.bytes)
    -- b was sent again alone before it counted as failed
    local reqs = srv.requests()
    assert.equal(2, #reqs)
    assert.same({ 2, 1 }, { reqs[1].parts, reqs[2].parts })
    assert.same({ 2, 1 }, { report.requests, report.sent_alone })
    assert.is_true(reqs[1].closed)
    assert.equal("application/dicom+json", reqs[1].accept)
  end)

  it("retries a 5xx (or 429) whose DICOM JSON lists no instance, as the server error it is", function()
    for _, status in ipairs({ 503, 500, 429 }) do
      for _, ct in ipairs({ "application/dicom+json", "application/json" }) do
        srv.answer { status = status, content_type = ct, body = "{}" }
        local report = store({ retry = { initial = 0.01, multiplier = 2, max_delay = 0.05, max_attempts = 2 } })
        assert.equal(0, #report.stored)
        assert.equal(2, #report.failed)
        assert.equal(1, report.retries, status .. " " .. ct)
        for _, f in ipairs(report.failed) do
          assert.is_nil(f.reason:find("not in response", 1, true), f.reason)
          assert.matches("HTTP " .. status, f.reason, 1, true)
        end
      end
    end
  end)

  it("reports every instance as 'not in response' after a 200 that lists nothing", function()
    srv.answer { status = 200, content_type = "application/dicom+json", body = "{}" }
    local report = store()
    assert.equal(0, #report.stored)
    assert.equal(2, #report.failed)
    assert.equal("not in response (HTTP 200)", report.failed[1].reason)
    assert.same({ 3, 2 }, { report.requests, report.sent_alone })
  end)

  it("reads an XML (NativeDicomModel) answer: a warning and Google's FailureDetail", function()
    srv.answer { status = 202, content_type = "application/dicom+xml", body = [[<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xml:space="preserve">
<DicomAttribute tag="00081198" vr="SQ"><Item number="1">
<DicomAttribute tag="00081155" vr="UI"><Value number="1">]] .. b.sop_instance_uid .. [[</Value></DicomAttribute>
<DicomAttribute tag="00081197" vr="US"><Value number="1">272</Value></DicomAttribute>
<DicomAttribute tag="00090097" vr="LT" privateCreator="GOOGLE"><Value number="1">checksum mismatch</Value></DicomAttribute>
</Item></DicomAttribute>
<DicomAttribute tag="00081199" vr="SQ"><Item number="1">
<DicomAttribute tag="00081155" vr="UI"><Value number="1">]] .. a.sop_instance_uid .. [[</Value></DicomAttribute>
<DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
</Item></DicomAttribute>
</NativeDicomModel>
]] }
    local report = store()
    assert.same({ { path = a.path, sop_instance_uid = a.sop_instance_uid, study_uid = a.study_uid,
      reason = "0xB000 coercion of data elements", warning = "0xB000 coercion of data elements" } }, report.stored)
    assert.same({ { path = b.path, sop_instance_uid = b.sop_instance_uid, study_uid = b.study_uid,
      reason = "0x0110 processing failure: checksum mismatch" } }, report.failed)
  end)

  it("reads a 202 in DICOM JSON with the 00090097 form of FailureDetail", function()
    local body = stow_json({ a.sop_instance_uid }, { { b.sop_instance_uid, 0xA700 } })
    body = body:gsub('"00081197"', '"00090097":{"vr":"LT","Value":["quota"]},"00081197"')
    srv.answer { status = 202, content_type = "application/dicom+json", body = body }
    local report = store()
    assert.equal(1, #report.stored)
    assert.equal("0xA700 out of resources: quota", report.failed[1].reason)
  end)

  it("fails the request's instances with Google's error message for a 400, without retrying", function()
    srv.answer { status = 400, content_type = "application/json; charset=UTF-8",
      body = '{"error":{"code":400,"message":"Invalid multipart body","status":"INVALID_ARGUMENT"}}' }
    local report = store()
    assert.equal(2, #report.failed)
    for _, f in ipairs(report.failed) do
      assert.equal("StoreInstances: HTTP 400 INVALID_ARGUMENT: Invalid multipart body", f.reason)
    end
    assert.equal(0, report.retries)
    assert.equal(1, #srv.requests())
  end)

  it("fails a request whose answer is neither DICOM nor an envelope, with the text", function()
    srv.answer { status = 200, content_type = "application/dicom+xml", body = "<html>proxy page" }
    local report = store()
    assert.equal(2, #report.failed)
    assert.matches("^malformed XML answer: ", report.failed[1].reason)
  end)

  it("splits by max_request_instances: each request carries its share of parts", function()
    local many = H.tmpdir()
    local files = H.gen_dicom { dir = many, count = 5 }
    local uids = {}
    for i, f in ipairs(files) do uids[i] = f.sop_instance_uid end
    srv.answer { status = 200, content_type = "application/dicom+json", body = stow_json(uids) }
    local report = assert(assert(healthcare.dicomweb(srv.url)):store(many, { max_request_instances = 2 }))
    assert.equal(5, #report.stored)
    local parts = {}
    for _, r in ipairs(srv.requests()) do
      parts[#parts + 1] = r.parts
      assert.is_true(r.closed)
      assert.equal(r.length, r.received)
    end
    table.sort(parts)
    assert.same({ 1, 2, 2 }, parts)
  end)
end)

describe("store:store when a file changes between probe and send", function()
  -- Pairs of files, each pair in a folder of its own: a big file (16 MiB for the canned server,
  -- 64 MiB for Orthanc) and a small one after it; and one pair of small files.
  local N16, N64 = 10, 3
  local srv, pairs_, pairs64, small_pair = nil, {}, {}, nil
  lazy_setup(function()
    srv = start_canned()
    local list = {}
    for i = 1, N16 + N64 + 1 do
      local dir = H.tmpdir()
      local size = i <= N16 and 16 * 1024 * 1024 or i <= N16 + N64 and 64 * 1024 * 1024 or nil
      list[#list + 1] = { dir = dir, prefix = "a", size = size, fill = "zero" }
      list[#list + 1] = { dir = dir, prefix = "b" }
    end
    local made = gen_many(list)
    for i = 1, N16 + N64 + 1 do
      local p = { made[2 * i - 1], made[2 * i] }
      if i <= N16 then pairs_[#pairs_ + 1] = p elseif i <= N16 + N64 then pairs64[#pairs64 + 1] = p else small_pair = p end
    end
  end)
  lazy_teardown(function() if srv then srv.stop() end end)
  local function take(list)
    local p = assert(table.remove(list, 1), "no pair of files left: make more in lazy_setup")
    return p[1].path:match("^(.*)/"), p[1], p[2]
  end
  local function next_pair() return take(pairs_) end
  -- The emulator (which forwards to Orthanc) waits before reading the next store request's body,
  -- so the upload stalls on a full socket with the big file partly sent, however fast the machine
  -- is: the change then always lands while the request is under way, before the small file is read.
  local function hold_next_store()
    em:control("faults", { rules = { { match = "store", delay = 1.5, times = 1 } }, replace = true })
    local fired = em:stats().faults_fired or 0
    finally(function()
      assert.equal(fired + 1, em:stats().faults_fired, "the emulator did not hold the request")
    end)
  end

  -- A group of two: a 16 MiB file first, so that the body stalls on the unread socket long
  -- before the second file is opened; `change` runs once the request is under way (`prepare`,
  -- when given, before the files are probed).
  local function run(change, prepare)
    local dir, big, small = next_pair()
    if prepare then prepare(big, small) end
    srv.answer { gate = true, status = 200, content_type = "application/dicom+json",
      body = stow_json({ big.sop_instance_uid, small.sop_instance_uid }) }
    local changed = false
    local report = assert(assert(healthcare.dicomweb(srv.url)):store(dir, {
      max_request_bytes = 256 * 1024 * 1024, -- both files in one request, whatever the default
      on_progress = function(p)
        if not changed and p.in_flight == 1 and p.bytes_sending > 0 then
          changed = true
          change(big, small)
          srv.go()
        end
      end,
    }))
    assert.is_true(changed, "the request was never seen under way")
    assert.same({}, report.stored)
    assert.equal(2, #report.failed)
    assert.equal(report.failed[1].reason, report.failed[2].reason)
    assert.equal(0, report.retries)
    local reqs = srv.requests(1)
    assert.equal(1, #reqs)
    -- the body was cut short: no server can take it for a complete one
    assert.is_true(reqs[1].received < reqs[1].length)
    assert.is_false(reqs[1].closed)
    -- the transport names the request, then says what happened
    local prefix = "POST " .. srv.url .. "/studies: "
    local reason = report.failed[1].reason
    assert.equal(prefix, reason:sub(1, #prefix))
    return reason:sub(#prefix + 1), big, small
  end

  local function append(path) sh("printf x >> " .. H.q(path)) end

  local function escaped(str) return (str:gsub("%p", "%%%0")) end
  local function utc(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

  -- The bytes of f with its SOP Instance UID changed to another of the same length (the last
  -- digit): a valid instance of the same size that is not the one probed. -> bytes, new UID
  local function same_size_other(f)
    local uid = f.sop_instance_uid
    local new = uid:sub(1, -2) .. tostring((tonumber(uid:sub(-1)) + 1) % 10)
    local bytes = assert(H.file_bytes(f.path))
    local out, n = bytes:gsub(escaped(uid), new)
    assert(n >= 2 and #out == #bytes and #out == f.size)
    return out, new
  end

  -- What an anonymizer does: writes a new file beside the old one and renames it over it.
  -- -> the new UID, the inode numbers before and after
  local function rename_over(f)
    local bytes, uid = same_size_other(f)
    local ino = lfs.attributes(f.path).ino
    H.write_file(f.path .. ".new", bytes)
    assert(os.rename(f.path .. ".new", f.path))
    local now = lfs.attributes(f.path)
    assert(now.ino ~= ino and now.size == f.size)
    return uid, ino, now.ino
  end

  -- Writes new bytes over f in place (same inode, same size) and gives it the mtime `when`, so
  -- that it differs from the probed one even within the same second. -> the new UID, the mtime
  -- before
  local function rewrite_in_place(f, bytes, when)
    local mtime = lfs.attributes(f.path).modification
    local h = assert(io.open(f.path, "r+b"))
    assert(h:write(bytes))
    assert(h:close())
    sh("touch -d @" .. when .. " " .. H.q(f.path))
    assert(lfs.attributes(f.path).size == f.size)
    return mtime
  end

  it("fails the request when a file not yet sent has grown", function()
    local reason, _, small = run(function(_, s) append(s.path) end)
    assert.equal(string.format("file changed size after it was checked: %s (was %d bytes, now %d)",
      small.path, small.size, small.size + 1), reason)
  end)

  it("fails the request when a file not yet sent has vanished", function()
    local reason, _, small = run(function(_, s) os.remove(s.path) end)
    assert.equal("cannot open " .. small.path .. ": No such file or directory", reason)
  end)

  it("fails the request, without blocking, when a file not yet sent was swapped for a FIFO", function()
    local reason, _, small = run(function(_, s) sh("rm " .. H.q(s.path) .. " && mkfifo " .. H.q(s.path)) end)
    assert.equal("not a regular file any more: " .. small.path, reason)
  end)

  it("fails the request when the file being sent grows", function()
    local reason, big = run(function(b) append(b.path) end)
    assert.equal(string.format("file changed size while it was being sent: %s (%d bytes, now %d)",
      big.path, big.size, big.size + 1), reason)
  end)

  it("fails the request when the file being sent shrinks", function()
    local reason, big = run(function(b) sh("truncate -s 1000 " .. H.q(b.path)) end)
    assert.matches("^file shrank while it was being sent: " .. big.path:gsub("%p", "%%%0")
      .. string.format(" %%(%%d+ of %d bytes%%)$", big.size), reason)
  end)

  it("fails the request when a file not yet sent was replaced by another of the same size", function()
    local new_uid, ino, now_ino
    local reason, _, small = run(function(_, s) new_uid, ino, now_ino = rename_over(s) end)
    assert.equal(string.format("file replaced after it was checked: %s (inode %d, now %d)",
      small.path, ino, now_ino), reason)
    assert.is_string(new_uid)
  end)

  it("fails the request when a file not yet sent was rewritten in place with the same size", function()
    local mtime
    local reason, _, small = run(function(_, s) mtime = rewrite_in_place(s, (same_size_other(s)), 1000000000) end)
    assert.equal(string.format("file modified after it was checked: %s (mtime %s, now 2001-09-09T01:46:40Z)",
      small.path, utc(mtime)), reason)
  end)

  it("fails the request when the file being sent is rewritten in place with the same size", function()
    local mtime
    local reason, big = run(function(b)
      mtime = lfs.attributes(b.path).modification
      local h = assert(io.open(b.path, "r+b"))
      assert(h:seek("end", -1))
      assert(h:write("y"))
      assert(h:close())
      sh("touch -d @1000000000 " .. H.q(b.path))
    end)
    assert.equal(string.format("file modified while it was being sent: %s (mtime %s, now 2001-09-09T01:46:40Z)",
      big.path, utc(mtime)), reason)
  end)

  -- The mtime set to the nanosecond before the probe, then to other nanoseconds of the same
  -- second: whole seconds alone would take the rewritten file for the one checked.
  it("fails the request when a file not yet sent was rewritten in place within the second it was checked", function()
    local reason, _, small = run(function(_, s) rewrite_in_place(s, (same_size_other(s)), "1700000000.2") end,
      function(_, s) sh("touch -d @1700000000.1 " .. H.q(s.path)) end)
    assert.equal(string.format("file modified after it was checked: %s (mtime 2023-11-14T22:13:20.100000000Z, "
      .. "now 2023-11-14T22:13:20.200000000Z)", small.path), reason)
  end)

  it("fails the request when the file being sent is rewritten in place within the second it was checked", function()
    local reason, big = run(function(b)
      local h = assert(io.open(b.path, "r+b"))
      assert(h:seek("end", -1))
      assert(h:write("y"))
      assert(h:close())
      sh("touch -d @1700000000.300000001 " .. H.q(b.path))
    end, function(b) sh("touch -d @1700000000.1 " .. H.q(b.path)) end)
    assert.equal(string.format("file modified while it was being sent: %s (mtime 2023-11-14T22:13:20.100000000Z, "
      .. "now 2023-11-14T22:13:20.300000001Z)", big.path), reason)
  end)

  it("checks again on a retry: a file replaced between two attempts fails the second", function()
    local dir = small_pair[1].path:match("^(.*)/")
    local first, second = small_pair[1], small_pair[2]
    srv.answer { status = 503, content_type = "text/plain", body = "busy" }
    local ino, now_ino
    local report = assert(assert(healthcare.dicomweb(srv.url)):store(dir, {
      retry = { initial = 0.01, max_delay = 0.05 },
      on_progress = function(p)
        if not ino and p.retries == 1 then
          -- the first attempt read both files whole: this one now differs from the checked one
          ino, now_ino = select(2, rename_over(second))
          srv.answer { status = 200, content_type = "application/dicom+json",
            body = stow_json({ first.sop_instance_uid, second.sop_instance_uid }) }
        end
      end,
    }))
    assert.is_number(ino, "the request was never retried")
    assert.same({}, report.stored)
    assert.equal(1, report.retries)
    assert.equal(2, #report.failed)
    local reqs = srv.requests(1)
    assert.equal(1, #reqs, "the second attempt was not cut short")
    assert.is_true(reqs[1].received < reqs[1].length)
    for _, r in ipairs(report.failed) do
      assert.equal(string.format("POST %s/studies: file replaced after it was checked: %s (inode %d, now %d)",
        srv.url, second.path, ino, now_ino), r.reason)
    end
  end)

  -- Against Orthanc with a journal: neither the old content nor the new is stored, and the journal
  -- records both instances of the request as failed (a resume sends them again).
  for _, case in ipairs {
    { what = "replaced by another file of the same size", reason = "file replaced after it was checked: ",
      change = function(f) return (rename_over(f)) end },
    { what = "rewritten in place with the same size", reason = "file modified after it was checked: ",
      change = function(f)
        local bytes, uid = same_size_other(f)
        rewrite_in_place(f, bytes, 1000000000)
        return uid
      end },
  } do
    it("leaves nothing in Orthanc and journals the request as failed when a file is " .. case.what, function()
      local dir, big, small = take(pairs64)
      local journal = H.tmpdir() .. "/journal.jsonl"
      local sent_then, new_uid
      hold_next_store()
      local report = assert(google_store():store(dir, {
        journal = journal,
        max_request_bytes = 256 * 1024 * 1024, -- both files in one request, whatever the default
        on_progress = function(p)
          if not sent_then and p.in_flight == 1 and p.bytes_sending > 0 then
            sent_then = p.bytes_sending
            new_uid = case.change(small)
          end
        end,
      }))
      assert.is_number(sent_then)
      assert.is_true(sent_then < big.size, "the first file was already sent when the second changed")
      assert.same({}, report.stored)
      assert.equal(0, report.retries)
      local failed = by_path(report.failed)
      assert.equal(2, count(failed))
      local pattern = "^POST [^ ]+/studies: " .. escaped(case.reason .. small.path) .. " %("
      for _, f in ipairs({ big, small }) do
        -- the UIDs the probe read, with the reason
        assert.equal(f.sop_instance_uid, failed[f.path].sop_instance_uid)
        assert.matches(pattern, failed[f.path].reason)
      end
      assert.is_nil(H.orthanc_find_instance(big.sop_instance_uid))
      assert.is_nil(H.orthanc_find_instance(small.sop_instance_uid))
      assert.is_nil(H.orthanc_find_instance(new_uid))
      local lines = {}
      for _, rec in ipairs(H.journal_lines(journal)) do
        if rec.outcome then lines[rec.path] = rec end
      end
      assert.equal(2, count(lines))
      for _, f in ipairs({ big, small }) do
        assert.equal("failed", lines[f.path].outcome)
        assert.equal(f.sop_instance_uid, lines[f.path].sop_instance_uid)
        assert.equal(failed[f.path].reason, lines[f.path].reason)
      end
    end)
  end

  it("leaves nothing in Orthanc when a file changes during a real upload (through the emulator)", function()
    local dir, big, small = take(pairs64)
    local sent_then
    hold_next_store()
    local report = assert(google_store():store(dir, {
      max_request_bytes = 256 * 1024 * 1024, -- both files in one request, whatever the default
      on_progress = function(p)
        if not sent_then and p.in_flight == 1 and p.bytes_sending > 0 then
          sent_then = p.bytes_sending
          append(small.path)
        end
      end,
    }))
    assert.is_number(sent_then)
    assert.is_true(sent_then < big.size, "the first file was already sent when the second changed")
    assert.equal(2, #report.failed)
    assert.matches("^POST [^ ]+/studies: file changed size after it was checked: ", report.failed[1].reason)
    assert.is_nil(H.orthanc_find_instance(big.sop_instance_uid))
    assert.is_nil(H.orthanc_find_instance(small.sop_instance_uid))
  end)
end)
