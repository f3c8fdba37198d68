-- SPDX-License-Identifier: MIT
-- `healthcare watch`: dcmtk's storescu sends to dcmtk's storescp, which writes into a spool
-- folder; `healthcare watch` stores what appears there into an Orthanc of this spec's own (so it
-- can be stopped and started again, and count what it receives: a Lua filter of Orthanc's writes
-- the SOP Instance UID of every instance it is sent, duplicates included). Byte for byte, spool
-- empty at the end; SIGKILL three times mid-run and restarts: every instance stored, sent once
-- (what was in flight at a kill is journaled as sending: the restart asks Orthanc about it);
-- Orthanc away for 10 s: retries, nothing lost; bad files to failed/ with their reasons; a
-- writer that pauses mid-file is not taken early (inotify, and scans with a settle time). Also:
-- a restart does not send what the journal records; bad arguments (exit 2); one watcher per
-- spool; its own folders and journal never taken; SIGTERM with a request in flight (finished, or
-- abandoned after 10 s); the Lua API from the caller's loop and its misuse; the journal started
-- afresh; a hard link into the spool; examples/dimse (run.sh as written, the systemd units).
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/95-watch_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- This file sets the emulator's fault rules: a private emulator keeps other spec files, run in
-- parallel by ctest, from seeing (or consuming) them.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local cjson = require "cjson"
local lfs = require "lfs"

local E = H.env
local PY = "/usr/bin/python3"

local function sleep(s) H.run("sleep " .. s) end

local wait_for = H.wait_for

local function alive(pid) return select(3, H.run("kill -0 " .. pid)) == 0 end

-- Starts cmd in the background with stdout and stderr to files; returns its pid. Its exit code
-- goes to out .. ".rc" when it ends (exit_code(out) reads it).
local function spawn(cmd, out, err)
  local pidfile = out .. ".pid"
  H.check_run("( (" .. cmd .. ") >" .. H.q(out) .. " 2>" .. H.q(err or "/dev/null") .. " & p=$!; echo $p >"
    .. H.q(pidfile) .. "; wait $p; echo $? >" .. H.q(out .. ".rc") .. " ) >/dev/null 2>&1 &")
  local pid = wait_for(10, function() return tonumber((H.file_bytes(pidfile) or ""):match("%d+")) end)
  return assert(pid, "no pid for " .. cmd)
end

local function exit_code(out)
  return wait_for(20, function() return tonumber((H.file_bytes(out .. ".rc") or ""):match("%d+")) end)
end

local function stop(pid, sig)
  if pid and alive(pid) then
    H.run("kill -" .. (sig or "TERM") .. " " .. pid)
    wait_for(20, function() return not alive(pid) end)
    H.run("kill -KILL " .. pid)
  end
end

local function free_port()
  local so = H.check_run(PY .. [[ -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']])
  return tonumber(so:match("%d+"))
end

-- ---- an Orthanc of our own --------------------------------------------------------------------

local COUNT_SCRIPT = [[
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open("%s", "a")
  f:write(dicom.SOPInstanceUID, "\n")
  f:close()
  return true
end
]]

local Orthanc = {}
Orthanc.__index = Orthanc

local function new_orthanc(dir)
  local o = setmetatable({ dir = dir, workdir = dir .. "/orthanc", received = dir .. "/received.txt",
    port = free_port() }, Orthanc)
  lfs.mkdir(o.workdir)
  H.write_file(dir .. "/count.lua", string.format(COUNT_SCRIPT, o.received))
  o.url = "http://127.0.0.1:" .. o.port
  o.dicomweb = o.url .. "/dicom-web"
  return o
end

function Orthanc:start()
  local out = self.dir .. "/orthanc.out"
  self.pid = spawn(PY .. " " .. H.q(E.support .. "/orthanc.py") .. " --workdir " .. H.q(self.workdir) .. " --port "
    .. self.port .. " --extra-config " .. H.q(cjson.encode({ LuaScripts = { self.dir .. "/count.lua" } })),
    out, self.dir .. "/orthanc.err")
  assert(wait_for(60, function() return (H.file_bytes(out) or ""):find("\n{") end),
    "Orthanc did not start: " .. tostring(H.file_bytes(self.dir .. "/orthanc.err")))
end

function Orthanc:stop() stop(self.pid) self.pid = nil end

function Orthanc:count()
  local r = H.curl({ self.url .. "/statistics" })
  return r.json and r.json.CountInstances or -1
end

-- SOP Instance UID -> times Orthanc was sent it.
function Orthanc:received_counts()
  local out, n = {}, 0
  for uid in (H.file_bytes(self.received) or ""):gmatch("[^\n]+") do
    out[uid] = (out[uid] or 0) + 1
    n = n + 1
  end
  return out, n
end

function Orthanc:file(sop)
  local r = H.curl({ "-X", "POST", "--data-binary", cjson.encode({ Level = "Instance", Query = { SOPInstanceUID = sop } }),
    self.url .. "/tools/find" })
  local id = r.json and r.json[1]
  if not id then return nil end
  return H.curl({ self.url .. "/instances/" .. id .. "/file" }).body
end

-- ---- dcmtk and the watcher --------------------------------------------------------------------

-- storescp writing into spool; returns pid, port. TCP_NODELAY=1: Debian's dcmtk leaves Nagle's
-- algorithm on, which costs about 90 ms per instance on loopback.
local function start_storescp(spool, dir)
  local port = free_port()
  -- the flags of the README's recipe and examples/dimse/storescp.service
  local pid = spawn("TCP_NODELAY=1 exec storescp --fork -dhl -aet STORESCP -od " .. H.q(spool) .. " " .. port,
    dir .. "/storescp.out",
    dir .. "/storescp.err")
  assert(wait_for(10, function() return select(3, H.run("echoscu 127.0.0.1 " .. port)) == 0 end), "storescp did not start")
  return pid, port
end

local function storescu_command(port, files)
  local words = { "TCP_NODELAY=1 storescu -aec STORESCP 127.0.0.1", tostring(port) }
  for _, f in ipairs(files) do words[#words + 1] = H.q(f.path) end
  return table.concat(words, " ")
end

local function start_watch(o, spool, dir, args, tag)
  local words = { "watch", o.dicomweb, spool, "--json", "--status-interval", "1" }
  for _, a in ipairs(args or {}) do words[#words + 1] = a end
  return spawn("exec " .. H.healthcare_command(words), dir .. "/watch-" .. tag .. ".jsonl", dir .. "/watch-" .. tag .. ".err")
end

-- The events of a watcher's JSON lines file (a killed run may end in a torn line: skipped).
local function events(path)
  local out = {}
  for l in (H.file_bytes(path) or ""):gmatch("[^\n]+") do
    local t = cjson.decode(l)
    if t and t.event == "file" then out[#out + 1] = t end
  end
  return out
end

-- The regular files left in spool that a writer put there (not the journals, not failed/).
local function spool_files(spool)
  local out = {}
  for name in lfs.dir(spool) do
    local p = spool .. "/" .. name
    if name:sub(1, 1) ~= "." and lfs.attributes(p, "mode") == "file" then out[#out + 1] = name end
  end
  return out
end

local function dir_files(dir)
  local out = {}
  for name in lfs.dir(dir) do
    if lfs.attributes(dir .. "/" .. name, "mode") == "file" then out[#out + 1] = name end
  end
  table.sort(out)
  return out
end

-- Several studies of small instances, plus extra (gen_dicom option tables) -> the entries.
local function corpus(dir, studies, per_study, extra)
  local list = {}
  for i = 1, studies do list[#list + 1] = { dir = dir, count = per_study, size = 6000, prefix = "st" .. i } end
  for _, e in ipairs(extra or {}) do e.dir = dir list[#list + 1] = e end
  return H.gen_many(list)
end

describe("healthcare watch (storescu -> storescp -> spool -> Orthanc)", function()
  local dir, o, scp_pid, scp_port, spool
  local pids = {}

  before_each(function()
    dir = H.tmpdir()
    spool = dir .. "/spool"
    lfs.mkdir(spool)
    o = new_orthanc(dir)
    o:start()
    scp_pid, scp_port = start_storescp(spool, dir)
    pids = {}
  end)

  after_each(function()
    for _, p in ipairs(pids) do stop(p, "KILL") end
    stop(scp_pid)
    o:stop()
  end)

  it("stores 500 instances (three studies and a 100 MB multi-frame) byte for byte and empties the spool", function()
    local files = corpus(dir .. "/src", 3, 166, { { count = 2, size = 8192, prefix = "mf", frames = 4 },
      { count = 1, size = 100 * 1000 * 1000, frames = 50, prefix = "big", fill = "zero" } })
    assert.equal(501, #files)
    local done = dir .. "/done"
    local w = start_watch(o, spool, dir, { "--done", done }, "main")
    pids[#pids + 1] = w
    H.check_run(storescu_command(scp_port, files))
    assert.truthy(wait_for(120, function() return o:count() == #files and #spool_files(spool) == 0 end),
      "stored " .. o:count() .. " of " .. #files .. "; left in the spool: " .. #spool_files(spool))
    stop(w)
    assert.equal(143, exit_code(dir .. "/watch-main.jsonl"))
    -- Byte for byte: what storescp wrote (kept in done/) is what Orthanc holds.
    local done_files = dir_files(done)
    assert.equal(#files, #done_files)
    local by_sop = {}
    for _, f in ipairs(files) do by_sop[f.sop_instance_uid] = f end
    for _, name in ipairs(done_files) do
      local sop = name:match("^%w+%.(.+)$")
      assert.truthy(by_sop[sop], name)
      assert.equal(H.sha256(done .. "/" .. name), H.sha256_string(assert(o:file(sop), sop)), name)
    end
    local counts, n = o:received_counts()
    assert.equal(#files, n)
    for _, f in ipairs(files) do assert.equal(1, counts[f.sop_instance_uid]) end
    assert.same({}, dir_files(spool .. "/failed"))
    local stored = 0
    for _, ev in ipairs(events(dir .. "/watch-main.jsonl")) do
      if ev.outcome == "stored" then stored = stored + 1 end
    end
    assert.equal(#files, stored)
  end)

  it("SIGKILLed three times mid-run and restarted: every instance stored once", function()
    local files = corpus(dir .. "/src", 3, 100)
    local args = { "--max-request-instances", "5", "--concurrency", "2" }
    local w = start_watch(o, spool, dir, args, "run0")
    pids[#pids + 1] = w
    local scu = spawn(storescu_command(scp_port, files), dir .. "/scu.out", dir .. "/scu.err")
    pids[#pids + 1] = scu
    for k = 1, 3 do
      assert.truthy(wait_for(60, function() return o:count() >= k * #files / 4 end), "stalled at " .. o:count()
        .. ": " .. tostring(H.file_bytes(dir .. "/watch-run" .. (k - 1) .. ".err")) .. "\n"
        .. tostring(H.file_bytes(dir .. "/watch-run" .. (k - 1) .. ".jsonl")):sub(-600))
      stop(w, "KILL")
      w = start_watch(o, spool, dir, args, "run" .. k)
      pids[#pids + 1] = w
    end
    assert.truthy(wait_for(120, function() return o:count() == #files and #spool_files(spool) == 0 end),
      "stored " .. o:count() .. " of " .. #files .. "; left in the spool: " .. #spool_files(spool))
    local counts, n = o:received_counts()
    local twice = 0
    for _, f in ipairs(files) do
      assert.truthy(counts[f.sop_instance_uid], "never sent: " .. f.sop_instance_uid)
      twice = twice + counts[f.sop_instance_uid] - 1
    end
    -- At a kill up to concurrency x max-request-instances = 10 are in flight, journaled as
    -- sending: each restart asked Orthanc which of them it held and sent only the others.
    assert.equal(0, twice, twice .. " instances sent twice")
    assert.equal(#files, n)
    assert.same({}, dir_files(spool .. "/failed"))
  end)

  it("Orthanc away for 10 s mid-run: retries, nothing lost", function()
    local files = corpus(dir .. "/src", 2, 100)
    local w = start_watch(o, spool, dir, { "--retry-max-attempts", "2", "--requeue-delay", "1",
      "--max-request-instances", "10" }, "outage")
    pids[#pids + 1] = w
    local first, second = {}, {}
    for i, f in ipairs(files) do table.insert(i % 2 == 0 and first or second, f) end
    H.check_run(storescu_command(scp_port, first))
    assert.truthy(wait_for(60, function() return o:count() == #first end))
    o:stop()
    -- storescp goes on receiving; the watcher's requests fail until Orthanc is back.
    H.check_run(storescu_command(scp_port, second))
    sleep(10)
    o:start()
    assert.truthy(wait_for(120, function() return o:count() == #files and #spool_files(spool) == 0 end),
      "stored " .. o:count() .. " of " .. #files .. "; left in the spool: " .. #spool_files(spool))
    assert.same({}, dir_files(spool .. "/failed"))
    local requeued = 0
    for _, ev in ipairs(events(dir .. "/watch-outage.jsonl")) do
      if ev.outcome == "requeued" then requeued = requeued + 1 end
      assert.is_not.equal("failed", ev.outcome)
    end
    assert.is_true(requeued > 0, "the outage was not seen")
    assert.truthy(alive(w))
  end)

  it("moves a truncated file and a non-DICOM file to failed/ with their reasons", function()
    local files = corpus(dir .. "/src", 1, 3)
    local w = start_watch(o, spool, dir, { "--requeue-delay", "1" }, "bad")
    pids[#pids + 1] = w
    sleep(1)
    local whole = H.file_bytes(files[1].path)
    -- Cut in the header: the probe says so. Cut in the pixel data: only the server can tell
    -- (Orthanc refuses it), and the file goes to failed/ with what it said.
    H.write_file(spool .. "/truncated.dcm", whole:sub(1, 300))
    H.write_file(spool .. "/cut-pixels.dcm", whole:sub(1, #whole - 1000))
    H.write_file(spool .. "/notes.txt", "not an image\n")
    H.check_run(storescu_command(scp_port, { files[2], files[3] }))
    local expected = { "cut-pixels.dcm", "cut-pixels.dcm.reason", "notes.txt", "notes.txt.reason", "truncated.dcm",
      "truncated.dcm.reason" }
    -- Orthanc counts an instance before its answer reaches the watcher, which removes the file then
    assert.truthy(wait_for(30, function()
      return #dir_files(spool .. "/failed") == #expected and o:count() == 2 and #spool_files(spool) == 0
    end),
      table.concat(dir_files(spool .. "/failed"), " "))
    assert.same(expected, dir_files(spool .. "/failed"))
    assert.matches("not a DICOM file", H.file_bytes(spool .. "/failed/notes.txt.reason"))
    assert.matches("truncated at offset", H.file_bytes(spool .. "/failed/truncated.dcm.reason"))
    assert.matches("\n.+\n$", H.file_bytes(spool .. "/failed/cut-pixels.dcm.reason"))
    assert.equal(whole:sub(1, 300), H.file_bytes(spool .. "/failed/truncated.dcm"))
    assert.same({}, spool_files(spool))
    local failed = {}
    for _, ev in ipairs(events(dir .. "/watch-bad.jsonl")) do
      if ev.outcome == "failed" then failed[#failed + 1] = ev.path:match("[^/]+$") end
    end
    table.sort(failed)
    assert.same({ "cut-pixels.dcm", "notes.txt", "truncated.dcm" }, failed)
  end)

  for _, mode in ipairs({ { name = "inotify", args = {} },
    { name = "scans, settle 5 s", args = { "--no-inotify", "--settle", "5" } } }) do
    it("does not take a file whose writer pauses mid-file for 3 s (" .. mode.name .. ")", function()
      local f = corpus(dir .. "/src", 1, 1)[1]
      local w = start_watch(o, spool, dir, mode.args, "pause")
      pids[#pids + 1] = w
      sleep(1)
      local target = spool .. "/slow.dcm"
      local writer = spawn(PY .. " -c " .. H.q([[
import sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as out:
    out.write(data[:len(data) // 2]); out.flush()
    time.sleep(3)
    out.write(data[len(data) // 2:])
]]) .. " " .. H.q(f.path) .. " " .. H.q(target), dir .. "/writer.out", dir .. "/writer.err")
      sleep(2.5)
      assert.truthy(lfs.attributes(target), "taken while its writer paused")
      assert.truthy(wait_for(30, function() return o:count() == 1 and not lfs.attributes(target) end))
      assert.truthy(wait_for(10, function() return not alive(writer) end))
      assert.same({}, dir_files(spool .. "/failed"))
      assert.equal(H.sha256(f.path), H.sha256_string(o:file(f.sop_instance_uid)))
    end)
  end
end)

describe("healthcare watch: restarts and mistakes", function()
  it("a file the journal records as stored is not sent again after a restart", function()
    local dir = H.tmpdir()
    local spool, done = dir .. "/spool", dir .. "/done"
    lfs.mkdir(spool)
    local o = new_orthanc(dir)
    o:start()
    finally(function() o:stop() end)
    local f = corpus(dir .. "/src", 1, 1)[1]
    H.check_run("cp -p " .. H.q(f.path) .. " " .. H.q(spool .. "/a.dcm"))
    local w = start_watch(o, spool, dir, { "--done", done, "--settle", "0" }, "first")
    assert.truthy(wait_for(30, function() return lfs.attributes(done .. "/a.dcm") end))
    stop(w)
    assert.equal(143, exit_code(dir .. "/watch-first.jsonl"))
    -- The same file back under the same name, size and mtime, as after a crash between the
    -- journal's line and the move: taken as stored, moved, not sent.
    H.check_run("cp -p " .. H.q(f.path) .. " " .. H.q(spool .. "/a.dcm"))
    w = start_watch(o, spool, dir, { "--done", done, "--settle", "0" }, "second")
    assert.truthy(wait_for(30, function() return lfs.attributes(done .. "/a.dcm.1") end))
    stop(w)
    local evs = events(dir .. "/watch-second.jsonl")
    assert.equal(1, #evs)
    assert.equal("already_stored", evs[1].outcome)
    assert.equal(f.sop_instance_uid, evs[1].sop_instance_uid)
    local _, n = o:received_counts()
    assert.equal(1, n)
    assert.truthy(lfs.attributes(spool .. "/.healthcare-watch.jsonl.1"))
  end)

  local function base64_decode(s) return (H.check_run("base64 -d", s)) end

  -- A file name is bytes; JSON is UTF-8 (a strict reader, Python's, refuses anything else).
  it("--json stays valid JSON for file names that are not UTF-8, their bytes in base64 beside", function()
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local f = H.gen_dicom({ dir = dir .. "/src", count = 1 })[1]
    local good, bad = spool .. "/caf\233-\255.dcm", spool .. "/bad-\200.dcm"
    H.check_run("cp -p " .. H.q(f.path) .. " " .. H.q(good))
    H.write_file(bad, "not dicom")
    local w = start_watch({ dicomweb = E.dicomweb }, spool, dir, { "--settle", "0" }, "names")
    finally(function() stop(w) end)
    assert.truthy(wait_for(30, function() return #events(dir .. "/watch-names.jsonl") >= 2 end))
    stop(w)
    local so, se, code = H.run(PY .. " -c " .. H.q("import json, sys; [print(json.dumps(json.loads(l), "
      .. "sort_keys=True)) for l in open(sys.argv[1], 'rb').read().decode('utf-8').splitlines()]") .. " "
      .. H.q(dir .. "/watch-names.jsonl"))
    assert.equal(0, code, se)
    assert.truthy(so:find('"event": "status"', 1, true))
    local by_outcome = {}
    for _, ev in ipairs(events(dir .. "/watch-names.jsonl")) do by_outcome[ev.outcome] = ev end
    local stored, failed = by_outcome.stored, by_outcome.failed
    assert.equal(spool .. "/caf\239\191\189-\239\191\189.dcm", stored.path)
    assert.equal(good, base64_decode(stored.path_base64))
    assert.equal(spool .. "/bad-\239\191\189.dcm", failed.path)
    assert.equal(bad, base64_decode(failed.path_base64))
    assert.equal(spool .. "/failed/bad-\200.dcm", base64_decode(failed.moved_to_base64))
    assert.truthy(lfs.attributes(spool .. "/failed/bad-\200.dcm"))
    assert.is_nil(lfs.attributes(good))
  end)

  it("exits 2 on bad arguments, saying why", function()
    local dir = H.tmpdir()
    local cases = {
      { { "watch", E.dicomweb, dir .. "/missing" }, "is not a folder" },
      { { "watch", E.dicomweb, dir, "--settle=-1" }, "--settle must be" },
      { { "watch", E.dicomweb, dir, "--settle", "nan" }, "malformed argument" },
      { { "watch", E.dicomweb, dir, "--rescan=1e999" }, "--rescan must be" },
      { { "watch", E.dicomweb, dir, "--concurrency", "0" }, "--concurrency must be" },
      { { "watch", "not a store", dir }, "invalid dicomStore name" },
      { { "watch", E.dicomweb }, "missing argument" },
    }
    for _, c in ipairs(cases) do
      local _, se, code = H.healthcare(c[1])
      assert.equal(2, code, table.concat(c[1], " ") .. ": " .. se)
      assert.matches(c[2], se, 1, true)
    end
    -- a journal that is a symbolic link is refused before anything is touched
    H.write_file(dir .. "/real.jsonl", "")
    H.check_run("ln -s real.jsonl " .. H.q(dir .. "/link.jsonl"))
    local _, se, code = H.healthcare({ "watch", E.dicomweb, dir, "--journal", dir .. "/link.jsonl" })
    assert.equal(2, code, se)
    assert.matches("symbolic link", se)
  end)

  -- Locked by the spool itself, not the journal: two watchers with journals of their own would
  -- take the same files.
  it("two watchers of one spool: the second is refused, whatever journal it names", function()
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local first = spawn("exec " .. H.healthcare_command({ "watch", E.dicomweb, spool }), dir .. "/w1.out", dir .. "/w1.err")
    finally(function() stop(first) end)
    assert.truthy(wait_for(10, function() return (H.file_bytes(dir .. "/w1.err") or ""):find("watching") end))
    for _, extra in ipairs({ {}, { "--journal", dir .. "/other.jsonl" }, { "--journal", dir .. "/other.jsonl",
      "--done", dir .. "/done", "--failed", dir .. "/failed" } }) do
      local words = { "watch", E.dicomweb, spool .. "/" }
      for _, w in ipairs(extra) do words[#words + 1] = w end
      local _, se, code = H.healthcare(words)
      assert.equal(2, code, se)
      assert.matches("another healthcare watch is watching " .. spool:gsub("%p", "%%%0") .. "\n", se)
    end
    assert.is_nil(lfs.attributes(dir .. "/other.jsonl"), "the second touched nothing")
    assert.is_nil(lfs.attributes(dir .. "/done"))
  end)
end)

describe("store:watch (Lua API)", function()
  local healthcare = require "healthcare"
  local store
  before_each(function() store = assert(healthcare.dicomweb(E.dicomweb)) end)
  after_each(function() store:close() end)

  it("refuses a second watcher of a spool, even with a journal of its own, until the first is closed", function()
    local dir = H.tmpdir()
    local first = assert(store:watch(dir, { journal = dir .. "/one.jsonl" }))
    local second, err = store:watch(dir .. "//", { journal = dir .. "/two.jsonl" })
    assert.is_nil(second)
    assert.same({ "io", "busy", "another healthcare watch is watching " .. dir }, { err.kind, err.status, err.message })
    first:close()
    second = assert(store:watch(dir, { journal = dir .. "/two.jsonl" }))
    second:close()
  end)

  it("raises for misuse at the caller's line", function()
    local dir = H.tmpdir()
    assert.error_matches(function() store:watch(42) end, "bad argument #1 to 'watch' (string expected, got number)", 1, true)
    assert.error_matches(function() store:watch(dir, { bogus = 1 }) end, "unknown option 'bogus' to 'watch'")
    assert.error_matches(function() store:watch(dir, { settle = -1 }) end, "settle")
    assert.error_matches(function() store:watch(dir, { settle = 0 / 0 }) end, "settle")
    assert.error_matches(function() store:watch(dir, { concurrency = 0 }) end, "concurrency")
    assert.error_matches(function() store:watch(dir, { on_file = "x" }) end, "on_file")
  end)

  it("returns nil, err for a spool that is not a folder or a failed folder that cannot be made", function()
    local dir = H.tmpdir()
    local w, err = store:watch(dir .. "/missing")
    assert.is_nil(w)
    assert.equal("usage", err.kind)
    H.write_file(dir .. "/file", "x")
    w, err = store:watch(dir, { failed_dir = dir .. "/file/failed" })
    assert.is_nil(w)
    assert.equal("io", err.kind)
  end)

  it("runs from a loop of the caller's: step, on_file, status, stop, close", function()
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local files = H.gen_dicom { dir = spool, count = 3 }
    H.write_file(spool .. "/junk.bin", "junk")
    local seen = {}
    local w = assert(store:watch(spool, { settle = 0, journal = dir .. "/journal.jsonl",
      on_file = function(ev) seen[#seen + 1] = ev end }))
    assert.matches("healthcare.Watcher", tostring(w))
    local deadline = os.time() + 30
    while #seen < 4 and os.time() < deadline do assert.is_true(w:step(0.1)) end
    local outcomes = {}
    for _, ev in ipairs(seen) do outcomes[ev.path:match("[^/]+$")] = ev.outcome end
    for _, f in ipairs(files) do assert.equal("stored", outcomes[f.path:match("[^/]+$")]) end
    assert.equal("failed", outcomes["junk.bin"])
    local s = w:status()
    assert.equal(3, s.stored)
    assert.equal(1, s.failed)
    assert.equal(0, s.in_flight)
    w:stop()
    assert.is_false(w:step(0.1))
    w:close()
    w:close()
    assert.error_matches(function() w:step() end, "attempt to use a closed watcher")
    for _, f in ipairs(files) do assert.truthy(H.orthanc_find_instance(f.sop_instance_uid)) end
    assert.same({}, spool_files(spool))
  end)
end)

describe("healthcare watch: its own files", function()
  it("never takes its failed folder or a journal kept in the spool, however they are named", function()
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    H.write_file(spool .. "/junk.txt", "junk")
    local f = H.gen_dicom { dir = spool, count = 1 }[1]
    H.check_run("ln -s " .. H.q(f.path) .. " " .. H.q(spool .. "/link.dcm"))
    -- named another way than the spool: ./spool/failed is SPOOL/failed all the same
    local w = spawn("cd " .. H.q(dir) .. " && exec " .. H.healthcare_command({ "watch", E.dicomweb, "spool",
      "--failed", "./spool//failed", "--journal", "spool/journal.jsonl", "--settle", "0", "--rescan", "0.5", "--json" }),
      dir .. "/w.jsonl", dir .. "/w.err")
    finally(function() stop(w) end)
    assert.truthy(wait_for(30, function() return H.orthanc_find_instance(f.sop_instance_uid) end))
    assert.truthy(wait_for(10, function() return lfs.attributes(spool .. "/failed/junk.txt.reason") end))
    sleep(2) -- a few rescans
    stop(w)
    local outcomes = {}
    for _, ev in ipairs(events(dir .. "/w.jsonl")) do outcomes[#outcomes + 1] = ev.outcome .. " " .. ev.path end
    table.sort(outcomes)
    assert.same({ "failed spool/junk.txt", "stored " .. "spool/" .. f.path:match("[^/]+$") }, outcomes)
    assert.same({ "junk.txt", "junk.txt.reason" }, dir_files(spool .. "/failed"))
    assert.truthy(lfs.attributes(spool .. "/journal.jsonl"))
    assert.equal("link", lfs.symlinkattributes(spool .. "/link.dcm").mode) -- a link is never taken
  end)
end)

describe("healthcare watch: SIGTERM", function()
  after_each(function() H.emulator_faults({}) end)

  -- The watcher against the emulator's store (Google's form), its first STOW-RS answer held back
  -- `delay` seconds; SIGTERM once that request is in flight.
  local function sigterm_during(delay)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    H.emulator_faults({ { delay = delay, times = 1 } })
    local w = spawn("exec " .. H.healthcare_command({ "watch", E.store, spool, "--endpoint", E.endpoint,
      "--access-token", E.token, "--no-token-cache", "--settle", "0", "--json", "--status-interval", "0.2" }),
      dir .. "/w.jsonl", dir .. "/w.err")
    -- written elsewhere and renamed in, as a writer that is done does: with --settle 0 a file
    -- written in place can be taken half written (its request then fails and waits 10 s)
    local f = H.gen_dicom { dir = dir .. "/src", count = 1 }[1]
    local name = f.path:match("[^/]+$")
    assert(os.rename(f.path, spool .. "/" .. name))
    f.path = spool .. "/" .. name
    assert.truthy(wait_for(10, function()
      return (H.file_bytes(dir .. "/w.jsonl") or ""):find('"in_flight":1', 1, true)
    end), "never in flight:\n" .. tostring(H.file_bytes(dir .. "/w.jsonl")):sub(1, 1500) .. "\n"
      .. tostring(H.file_bytes(dir .. "/w.err")))
    local t0 = os.time()
    stop(w, "TERM")
    return f, exit_code(dir .. "/w.jsonl"), os.time() - t0, events(dir .. "/w.jsonl"), spool
  end

  it("lets the request in flight finish, then exits 143", function()
    local f, code, secs, evs, spool = sigterm_during(2)
    assert.equal(143, code)
    -- sooner than the 10 s grace a request still in flight gets (loaded CI machines are slow)
    assert.is_true(secs < 10, secs .. " s")
    assert.equal(1, #evs)
    assert.equal("stored", evs[1].outcome)
    assert.truthy(H.orthanc_find_instance(f.sop_instance_uid))
    assert.same({}, spool_files(spool))
  end)

  it("abandons a request still in flight after 10 s: the file stays for the next start", function()
    local f, code, secs, evs, spool = sigterm_during(14)
    assert.equal(143, code)
    assert.is_true(secs >= 9 and secs <= 14, secs .. " s")
    assert.same({}, evs)
    assert.same({ f.path:match("[^/]+$") }, spool_files(spool))
  end)
end)

describe("store:watch's journal", function()
  it("starts afresh once it holds journal_max_records records and nothing is in flight", function()
    local healthcare = require "healthcare"
    local store = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() store:close() end)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local journal = dir .. "/journal.jsonl"
    local stored = 0
    local w = assert(store:watch(spool, { settle = 0, journal = journal, journal_max_records = 2,
      on_file = function(ev) if ev.outcome == "stored" then stored = stored + 1 end end }))
    finally(function() w:close() end)
    for i = 1, 5 do
      H.gen_dicom { dir = spool, count = 1, prefix = "r" .. i }
      local deadline = os.time() + 20
      while stored < i and os.time() < deadline do assert.is_true(w:step(0.1)) end
      assert.equal(i, stored)
    end
    assert.is_true(w:step(0.1))
    assert.equal(2, w.rotations)
    local function records(path)
      local n = 0
      for _, rec in ipairs(H.journal_lines(path)) do
        if rec.outcome and rec.outcome ~= "sending" then n = n + 1 end
      end
      return n
    end
    assert.equal(1, records(journal))   -- the fifth
    assert.equal(2, records(journal .. ".1"))
    assert.same({}, spool_files(spool))
  end)
end)

describe("examples/dimse", function()
  local source = os.getenv("HC_SOURCE_DIR") or "."

  it("run.sh receives with storescp and stores with healthcare watch; a TERM to the group stops both", function()
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    local port = free_port()
    local files = corpus(dir .. "/src", 2, 5)
    -- its own process group (setsid), as a terminal's Ctrl-C or systemd's stop reaches it
    local pid = spawn("exec setsid " .. H.q(source .. "/examples/dimse/run.sh") .. " " .. H.q(E.dicomweb) .. " "
      .. H.q(spool) .. " " .. port, dir .. "/run.out", dir .. "/run.err")
    assert.truthy(wait_for(10, function() return select(3, H.run("echoscu 127.0.0.1 " .. port)) == 0 end))
    H.check_run(storescu_command(port, files))
    assert.truthy(wait_for(30, function()
      for _, f in ipairs(files) do
        if not H.orthanc_find_instance(f.sop_instance_uid) then return false end
      end
      return #spool_files(spool) == 0
    end), H.file_bytes(dir .. "/run.err"))
    H.run("/bin/kill -TERM -- -" .. pid)
    assert.truthy(wait_for(20, function() return not alive(pid) end))
    assert.is_not_equal(0, select(3, H.run("echoscu 127.0.0.1 " .. port)), "storescp still listens")
  end)

  it("the systemd units pass systemd-analyze verify", function()
    if select(3, H.run("command -v systemd-analyze")) ~= 0 then
      pending("no systemd-analyze")
      return
    end
    local dir = H.tmpdir()
    H.check_run("cp " .. H.q(source .. "/examples/dimse/storescp.service") .. " " .. H.q(dir))
    -- the watcher's unit with this build's command where the recipe installs it
    local unit = H.file_bytes(source .. "/examples/dimse/healthcare-watch.service")
    H.write_file(dir .. "/healthcare-watch.service", (unit:gsub("/usr/local/bin/healthcare", H.BIN)))
    local so, se, code = H.run("cd " .. H.q(dir) .. " && systemd-analyze verify storescp.service healthcare-watch.service")
    assert.equal(0, code, so .. se)
    assert.equal("", so .. se)
  end)
end)

describe("store:watch and a file never written in the spool", function()
  it("takes a hard link made into the spool once it stayed unchanged (WRITING_QUIET)", function()
    local healthcare = require "healthcare"
    local watch = require "healthcare.dicomweb.watch"
    local store = assert(healthcare.dicomweb(E.dicomweb))
    local quiet = watch.WRITING_QUIET
    watch.WRITING_QUIET = 1
    finally(function()
      watch.WRITING_QUIET = quiet
      store:close()
    end)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.3 }))
    finally(function() w:close() end)
    assert.is_true(w:step(0.1))
    local f = H.gen_dicom { dir = dir, count = 1 }[1]
    H.check_run("ln " .. H.q(f.path) .. " " .. H.q(spool .. "/linked.dcm"))
    local deadline = os.time() + 20
    while w:status().stored < 1 and os.time() < deadline do assert.is_true(w:step(0.1)) end
    assert.equal(1, w:status().stored)
    assert.truthy(H.orthanc_find_instance(f.sop_instance_uid))
    assert.is_nil(lfs.attributes(spool .. "/linked.dcm"))
  end)
end)

describe("store:watch restarted with a file in flight that the server lists", function()
  -- After a SIGKILL a listed SOP Instance UID does not prove the file's bytes were stored: the
  -- server (the emulator's Google-shaped 409, in front of Orthanc) may hold others under it.
  it("sends it again and moves it to failed/ on the conflict, instead of removing it", function()
    local healthcare = require "healthcare"
    local journal = require "healthcare.dicomweb.journal"
    local store = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token,
      token_cache = false }))
    finally(function() store:close() end)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local old = H.gen_dicom({ count = 1, size = 600, dir = dir .. "/old" })[1]
    assert.equal(1, assert(store:store(old.path)).counts.stored)
    local f = H.gen_dicom({ count = 1, size = 900, dir = spool, study = old.study_uid, series = old.series_uid,
      sop = old.sop_instance_uid })[1]
    local jpath = dir .. "/journal.jsonl"
    local j = assert(journal.open(jpath, nil, { store = store.name }))
    local a = assert(lfs.attributes(f.path))
    assert(j:record({ { entry = { path = f.path, size = a.size, mtime = a.modification }, outcome = "sending" } }))
    j:close()
    local seen = {}
    local w = assert(store:watch(spool, { settle = 0, journal = jpath, on_file = function(ev) seen[#seen + 1] = ev end }))
    finally(function() w:close() end)
    local deadline = os.time() + 30
    while #seen < 1 and os.time() < deadline do assert.is_true(w:step(0.1)) end
    assert.equal(1, #seen)
    assert.equal("failed", seen[1].outcome)
    assert.matches("already exists with different content", seen[1].reason)
    assert.equal(0, w:status().stored + w:status().already_stored)
    assert.truthy(lfs.attributes(spool .. "/failed/" .. f.path:match("[^/]+$")))
    assert.equal(H.sha256(old.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
  end)
end)

describe("store:watch and a file put under the same name while its request is in flight", function()
  after_each(function() H.emulator_faults({}) end)

  -- storescp writes an instance sent again under the name it had; a writer may rename over it.
  for _, how in ipairs({ "renamed over it", "written again in place" }) do
    it("stores the first, then sends the second instead of removing it (" .. how .. ")", function()
      local healthcare = require "healthcare"
      local store = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token,
        token_cache = false }))
      finally(function() store:close() end)
      local dir = H.tmpdir()
      local spool = dir .. "/spool"
      lfs.mkdir(spool)
      local made = H.gen_dicom { dir = dir .. "/src", count = 2, size = 700 }
      local first, second = made[1], made[2]
      local path = spool .. "/inst.dcm"
      -- the first answer held back, so that the request is in flight while the name is reused
      H.emulator_faults({ { delay = 2, times = 1 } })
      local seen = {}
      local w = assert(store:watch(spool, { settle = 0, on_file = function(ev) seen[#seen + 1] = ev end }))
      finally(function() w:close() end)
      assert(os.rename(first.path, path))
      local function body_sent()
        for request in pairs(w.batch.inflight) do
          local sent, to_send = request:progress()
          if to_send > 0 and sent >= to_send then return true end
        end
      end
      local deadline = os.time() + 20
      while not body_sent() and os.time() < deadline do assert.is_true(w:step(0.05)) end
      assert.is_true(body_sent())
      if how == "renamed over it" then
        H.write_file(spool .. "/inst.dcm.part", H.file_bytes(second.path))
        assert(os.rename(spool .. "/inst.dcm.part", path))
      else
        H.write_file(path, H.file_bytes(second.path))
      end
      while w:status().stored < 2 and os.time() < deadline do assert.is_true(w:step(0.1)) end
      assert.equal(2, #seen)
      assert.same({ "stored", first.sop_instance_uid }, { seen[1].outcome, seen[1].sop_instance_uid })
      assert.matches("another file was put under this name", seen[1].warning)
      assert.same({ "stored", second.sop_instance_uid }, { seen[2].outcome, seen[2].sop_instance_uid })
      assert.truthy(H.orthanc_find_instance(first.sop_instance_uid))
      assert.truthy(H.orthanc_find_instance(second.sop_instance_uid))
      assert.same({}, spool_files(spool))
    end)
  end
end)

describe("store:watch restarted with a file its journal records as stored", function()
  -- The watcher was killed once the first instance was journaled stored, before it removed the
  -- file; storescp then wrote another instance of the same size under that name, in that second.
  it("sends a file of the same size and second but another mtime to the nanosecond", function()
    local healthcare = require "healthcare"
    local journal = require "healthcare.dicomweb.journal"
    local store = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() store:close() end)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    lfs.mkdir(spool)
    local g = H.gen_dicom({ count = 1, dir = dir .. "/src" })[1]
    local path = spool .. "/inst.dcm"
    H.write_file(path, H.file_bytes(g.path))
    local sec = H.check_run("stat -c '%Y' " .. H.q(path)):match("%d+")
    H.check_run("touch -d @" .. sec .. ".200000000 " .. H.q(path))
    local jpath = dir .. "/journal.jsonl"
    local j = assert(journal.open(jpath, nil, { store = store.name }))
    assert(j:record({ { outcome = "stored", entry = { path = path, size = lfs.attributes(path, "size"),
      mtime = tonumber(sec), mtime_nsec = 100000000, sop_instance_uid = "1.2.3.4", study_uid = "1.2.3" } } }))
    j:close()
    local seen = {}
    local w = assert(store:watch(spool, { settle = 0, journal = jpath, on_file = function(ev) seen[#seen + 1] = ev end }))
    finally(function() w:close() end)
    local deadline = os.time() + 20
    while #seen < 1 and os.time() < deadline do assert.is_true(w:step(0.1)) end
    assert.same({ "stored", g.sop_instance_uid }, { seen[1].outcome, seen[1].sop_instance_uid })
    assert.truthy(H.orthanc_find_instance(g.sop_instance_uid))
  end)
end)
