-- SPDX-License-Identifier: MIT
-- store:watch and its done and failed folders: a done or failed folder that is the spool is
-- refused; one removed while the watcher runs is made again and stays the watcher's own (never
-- watched nor taken as spool); a symbolic link put in or in place of one is never followed.
-- And whole requests refused: the files go again one per request before any counts as failed;
-- a 401, 403 or 404 (the credential or the store's address) never sends a file to failed/.
-- Folders emptied of their files are removed once quiet.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/95-watch_folders_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- This file sets the emulator's fault rules: a private emulator keeps other spec files, run in
-- parallel by ctest, from seeing (or consuming) them.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local lfs = require "lfs"

local E = H.env

-- Files below dir (relative paths, sorted), links included, not followed.
local function tree(dir)
  local out = {}
  local function walk(d, rel)
    for name in lfs.dir(d) do
      if name ~= "." and name ~= ".." then
        local p, r = d .. "/" .. name, rel .. name
        local mode = lfs.symlinkattributes(p, "mode")
        if mode == "directory" then walk(p, r .. "/") else out[#out + 1] = r end
      end
    end
  end
  walk(dir, "")
  table.sort(out)
  return out
end

-- Steps w for seconds (or until stop() is true), returning nothing.
local function run_for(w, seconds, stop)
  local deadline = os.time() + seconds
  while os.time() < deadline and not (stop and stop()) do assert.is_true(w:step(0.1)) end
end

describe("store:watch's done and failed folders", function()
  local healthcare = require "healthcare"
  local store, dir, spool, seen
  before_each(function()
    store = assert(healthcare.dicomweb(E.dicomweb))
    dir = H.tmpdir()
    spool = dir .. "/spool"
    lfs.mkdir(spool)
    seen = {}
  end)
  after_each(function() store:close() end)

  local function on_file(ev) seen[#seen + 1] = ev end

  it("refuses a done or failed folder that is the spool, however it is named", function()
    for _, opts in ipairs({ { done_dir = spool .. "/" }, { failed_dir = dir .. "/./spool" } }) do
      local w, err = store:watch(spool, opts)
      assert.is_nil(w)
      assert.equal("usage", err.kind)
      assert.matches("is the spool", err.message)
    end
    local _, se, code = H.healthcare({ "watch", E.dicomweb, spool, "--done", spool .. "//" })
    assert.equal(2, code, se)
    assert.matches("is the spool", se)
  end)

  it("a done folder removed while running is made again and never taken as spool", function()
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.5, done_dir = spool .. "/done",
      journal = dir .. "/journal.jsonl", on_file = on_file }))
    finally(function() w:close() end)
    local first = H.gen_dicom({ dir = spool, count = 1, prefix = "first" })[1]
    run_for(w, 20, function() return #seen >= 1 end)
    H.check_run("rm -rf " .. H.q(spool .. "/done"))
    local second = H.gen_dicom({ dir = spool, count = 1, prefix = "second" })[1]
    run_for(w, 6)
    local outcomes = {}
    for _, ev in ipairs(seen) do outcomes[#outcomes + 1] = ev.outcome .. " " .. ev.path:match("[^/]+$") end
    assert.same({ "stored " .. first.path:match("[^/]+$"), "stored " .. second.path:match("[^/]+$") }, outcomes)
    assert.same({ "done/" .. second.path:match("[^/]+$") }, tree(spool))
  end)

  it("a failed folder removed while running is made again and never taken as spool", function()
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.5, journal = dir .. "/journal.jsonl",
      on_file = on_file }))
    finally(function() w:close() end)
    H.write_file(spool .. "/bad1.dcm", "not dicom")
    run_for(w, 20, function() return #seen >= 1 end)
    H.check_run("rm -rf " .. H.q(spool .. "/failed"))
    H.write_file(spool .. "/bad2.dcm", "not dicom")
    run_for(w, 6)
    local outcomes = {}
    for _, ev in ipairs(seen) do outcomes[#outcomes + 1] = ev.outcome .. " " .. ev.path:match("[^/]+$") end
    assert.same({ "failed bad1.dcm", "failed bad2.dcm" }, outcomes)
    assert.same({ "failed/bad2.dcm", "failed/bad2.dcm.reason" }, tree(spool))
  end)

  it("a folder made by someone else where the failed folder was is not taken as spool either", function()
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.5, journal = dir .. "/journal.jsonl",
      on_file = on_file }))
    finally(function() w:close() end)
    -- renamed away first: a folder made at once where one was removed may get its inode back
    assert(os.rename(spool .. "/failed", dir .. "/failed.old"))
    lfs.mkdir(spool .. "/failed")
    run_for(w, 1)
    H.write_file(spool .. "/bad.dcm", "not dicom")
    run_for(w, 6)
    assert.equal(1, #seen)
    assert.same({ "failed/bad.dcm", "failed/bad.dcm.reason" }, tree(spool))
  end)

  -- Whoever may write the spool may put links in SPOOL/failed: a file of theirs must never be
  -- moved where a link points (here a stand-in for another user's ~/.ssh).
  it("never follows a link put in the failed or done folder, nor one put in place of it", function()
    local target = dir .. "/victim/.ssh"
    H.check_run("mkdir -p " .. H.q(target) .. " " .. H.q(spool .. "/done"))
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.5, done_dir = spool .. "/done",
      journal = dir .. "/journal.jsonl", on_file = on_file }))
    finally(function() w:close() end)
    -- a link below the failed folder, and the folder of the same name in the spool
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(spool .. "/failed/evil"))
    H.check_run("mkdir " .. H.q(spool .. "/evil.part"))
    H.write_file(spool .. "/evil.part/authorized_keys", "ssh-ed25519 AAAA attacker")
    assert(os.rename(spool .. "/evil.part", spool .. "/evil"))
    -- a stored file, with a link below the done folder
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(spool .. "/done/study"))
    H.check_run("mkdir " .. H.q(spool .. "/study.part"))
    local f = H.gen_dicom({ dir = spool .. "/study.part", count = 1 })[1]
    assert(os.rename(spool .. "/study.part", spool .. "/study"))
    run_for(w, 20, function() return #seen >= 2 end)
    -- the failed folder itself renamed away and a link put in its place
    assert(os.rename(spool .. "/failed", spool .. "/failed.old"))
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(spool .. "/failed"))
    H.write_file(spool .. "/junk.dcm", "junk")
    run_for(w, 20, function() return #seen >= 3 end)
    assert.same({}, tree(target))
    assert.equal(3, #seen)
    local by_name = {}
    for _, ev in ipairs(seen) do by_name[ev.path:match("[^/]+$")] = ev end
    assert.equal("failed", by_name.authorized_keys.outcome)
    assert.equal("stored", by_name[f.path:match("[^/]+$")].outcome)
    assert.equal("failed", by_name["junk.dcm"].outcome)
    for _, ev in pairs(by_name) do
      assert.is_nil(ev.moved_to)
      assert.matches("cannot move: .* not followed", ev.warning)
    end
    -- each stays where it was
    assert.truthy(lfs.attributes(spool .. "/evil/authorized_keys"))
    assert.truthy(lfs.attributes(spool .. "/study/" .. f.path:match("[^/]+$")))
    assert.truthy(lfs.attributes(spool .. "/junk.dcm"))
  end)
end)

-- Swaps each pair of names (a folder and a link) with renameat2(RENAME_EXCHANGE), over and over,
-- until the file `stop` exists: every path through one of them points now at the folder, now
-- where the link points.
local PY = "/usr/bin/python3"
local SWAPPER = [==[
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
stop, names = sys.argv[1], [n.encode() for n in sys.argv[2:]]
end, n = time.time() + 120, 0
while not os.path.exists(stop) and time.time() < end:
    for i in range(0, len(names), 2):
        if libc.renameat2(-100, names[i], -100, names[i + 1], 2) != 0:
            sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    n += 1
    if n == 1000:
        open(stop + ".started", "w").close()
]==]

describe("store:watch and a link swapped in while it moves files", function()
  local healthcare = require "healthcare"

  -- A writer of the spool swaps a folder of the done folder for a link (here to a stand-in for
  -- another user's folder) all the time: a check before the move that saw a folder says nothing
  -- of the moment of the move. No file may go where the link points. A race: without folders
  -- held open (a check, then rename() by path) files went there in 7 runs of 10; with them none
  -- can. spec/unit/32 checks the moves below held folders one link at a time.
  it("never moves a file where a link swapped in points", function()
    local store = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() store:close() end)
    local dir = H.tmpdir()
    local spool, victim = dir .. "/spool", dir .. "/victim"
    H.check_run("mkdir -p " .. H.q(spool .. "/study") .. " " .. H.q(spool .. "/done/study") .. " " .. H.q(victim))
    H.check_run("ln -s " .. H.q(victim) .. " " .. H.q(spool .. "/done/study.part"))
    local made = H.gen_dicom({ dir = spool .. "/study", count = 150, size = 600 })
    local stop = dir .. "/stop"
    finally(function() H.write_file(stop, "") end)
    H.check_run(PY .. " -c " .. H.q(SWAPPER) .. " " .. H.q(stop) .. " " .. H.q(spool .. "/done/study") .. " "
      .. H.q(spool .. "/done/study.part") .. " >" .. H.q(dir .. "/swapper.err") .. " 2>&1 &")
    local deadline = os.time() + 20
    while not lfs.attributes(stop .. ".started") and os.time() < deadline do require("healthcare.core").sleep(0.05) end
    local seen = {}
    local w = assert(store:watch(spool, { settle = 0, rescan = 0.5, done_dir = spool .. "/done",
      journal = dir .. "/journal.jsonl", on_file = function(ev) seen[#seen + 1] = ev end }))
    finally(function() w:close() end)
    run_for(w, 60, function() return #seen >= #made end)
    H.write_file(stop, "")
    assert.equal(#made, #seen)
    assert.same({}, tree(victim))
    local moved, kept = 0, 0
    for _, ev in ipairs(seen) do
      assert.equal("stored", ev.outcome)
      if ev.moved_to then
        moved = moved + 1
      else
        kept = kept + 1
        assert.matches("cannot move: .*/done/study is not a folder: not followed", ev.warning)
      end
    end
    -- each in the folder (named study or study.part now, beside the link) or kept in the spool
    local in_done = tree(spool .. "/done")
    assert.equal(moved + 1, #in_done)
    assert.equal(kept, #tree(spool .. "/study"))
    assert.equal("", H.file_bytes(dir .. "/swapper.err"))
  end)
end)

describe("store:watch and the folders files were taken from", function()
  local healthcare = require "healthcare"
  local store, dir, spool
  before_each(function()
    store = assert(healthcare.dicomweb(E.dicomweb))
    dir = H.tmpdir()
    spool = dir .. "/spool"
    lfs.mkdir(spool)
  end)
  after_each(function() store:close() end)

  -- Folders below dir (relative paths, sorted), links not followed.
  local function folders(d)
    local out = {}
    local function walk(p, rel)
      for name in lfs.dir(p) do
        if name ~= "." and name ~= ".." and lfs.symlinkattributes(p .. "/" .. name, "mode") == "directory" then
          out[#out + 1] = rel .. name
          walk(p .. "/" .. name, rel .. name .. "/")
        end
      end
    end
    walk(d, "")
    table.sort(out)
    return out
  end

  local function start(settle, opts)
    local seen = {}
    opts = opts or {}
    opts.settle, opts.rescan, opts.journal = settle, 0.5, dir .. "/journal.jsonl"
    opts.on_file = function(ev) seen[#seen + 1] = ev end
    local w = assert(store:watch(spool, opts))
    finally(function() w:close() end)
    return w, seen
  end

  -- storescp --sort-on-study-uid makes a folder per study: emptied, each would stay, watched.
  it("removes a folder it emptied once quiet, and its parents, never the spool nor one not empty", function()
    local w, seen = start(0, { done_dir = spool .. "/done" })
    H.check_run("mkdir -p " .. H.q(spool .. "/a/b") .. " " .. H.q(spool .. "/c") .. " " .. H.q(spool .. "/keep")
      .. " " .. H.q(dir .. "/elsewhere"))
    run_for(w, 1)
    H.gen_dicom({ dir = spool .. "/a/b", count = 2 })
    H.gen_dicom({ dir = spool .. "/c", count = 1 })
    H.gen_dicom({ dir = spool .. "/keep", count = 1 })
    H.write_file(spool .. "/keep/next.dcm.part", "a writer's file, not yet renamed")
    -- a link to an empty folder elsewhere: never followed
    H.check_run("ln -s " .. H.q(dir .. "/elsewhere") .. " " .. H.q(spool .. "/link"))
    run_for(w, 20, function() return #seen >= 4 end)
    assert.is_truthy(w.watched[spool .. "/a/b"])
    run_for(w, 5, function() return lfs.attributes(spool .. "/a") == nil end)
    run_for(w, 1)
    assert.equal(4, w:status().stored)
    assert.same({ "done", "done/a", "done/a/b", "done/c", "done/keep", "failed", "keep" }, folders(spool))
    assert.truthy(lfs.attributes(dir .. "/elsewhere"))
    -- and their watches gone: a folder made again at the name is watched afresh
    assert.is_nil(w.watched[spool .. "/a/b"])
    assert.is_nil(w.watched[spool .. "/a"])
    assert.is_nil(w.watched[spool .. "/c"])
    assert.is_truthy(w.watched[spool .. "/keep"])
    H.check_run("mkdir -p " .. H.q(spool .. "/a/b"))
    H.gen_dicom({ dir = spool .. "/a/b", count = 1 })
    run_for(w, 20, function() return #seen >= 5 end)
    assert.equal(5, w:status().stored)
  end)

  it("keeps a folder it emptied while it is younger than --settle: a writer may be about to use it", function()
    local w, seen = start(30)
    lfs.mkdir(spool .. "/study")
    run_for(w, 1) -- watched before its file is written: taken when closed, not after --settle
    H.gen_dicom({ dir = spool .. "/study", count = 1 })
    run_for(w, 20, function() return #seen >= 1 end)
    run_for(w, 3)
    assert.equal(1, w:status().stored)
    assert.same({ "failed", "study" }, folders(spool))
  end)
end)

describe("store:watch and requests refused as a whole", function()
  local healthcare = require "healthcare"
  local store, dir, spool, seen
  before_each(function()
    store = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token,
      token_cache = false }))
    dir = H.tmpdir()
    spool = dir .. "/spool"
    lfs.mkdir(spool)
    seen = {}
  end)
  after_each(function()
    H.emulator_faults({})
    store:close()
  end)

  -- n files made beside the spool, then renamed into it at once (so that they go in one request).
  local function arrive(w, n)
    local made = H.gen_dicom({ dir = dir .. "/src", count = n, size = 2000 })
    for _, f in ipairs(made) do assert(os.rename(f.path, spool .. "/" .. f.path:match("[^/]+$"))) end
    assert.is_true(w:step(0.1))
    return made
  end

  local function open(opts)
    opts.settle, opts.requeue_delay, opts.journal = 0, 0.2, dir .. "/journal.jsonl"
    opts.on_file = function(ev) seen[#seen + 1] = ev end
    local w = assert(store:watch(spool, opts))
    finally(function() w:close() end)
    return w
  end

  local function wait_stored(w, n)
    local deadline = os.time() + 30
    while w:status().stored + w:status().failed < n and os.time() < deadline do assert.is_true(w:step(0.1)) end
  end

  -- How a watcher has its files sent alone: the Batch makes a request of its own of a file its
  -- iterator marks alone, and goes on grouping the others.
  it("a Batch sends a file marked alone in a request of its own", function()
    local made = H.gen_dicom({ dir = dir .. "/src", count = 6 })
    local alone = { false, true, false, false, true, true }
    local b = assert(require("healthcare.dicomweb.batch").Batch.new(store, {}, {}))
    finally(function() b:abandon() end)
    local i = 0
    b.source.it = function()
      i = i + 1
      local f = made[i]
      if not f then return nil end
      local a = assert(lfs.attributes(f.path))
      return { path = f.path, rel = f.path:match("[^/]+$"), size = a.size, mtime = a.modification, dev = a.dev,
        ino = a.ino, alone = alone[i] }
    end
    local sizes = {}
    for g in function() return b.source:next_group() end do
      sizes[#sizes + 1] = #g.entries
      if #g.entries > 1 then
        for _, e in ipairs(g.entries) do assert.is_falsy(e.alone) end
      end
    end
    assert.same({ 1, 1, 2, 1, 1 }, sizes)
    assert.equal(500, b.opts.max_request_instances)
  end)

  it("sends the files of a request refused as a whole (413) again one per request: none fails for it", function()
    local w = open({})
    H.emulator_faults({ { match = "store", http_method = "POST", status = 413, times = 3 } })
    local made = arrive(w, 5)
    wait_stored(w, 5)
    assert.same({ stored = 5, failed = 0 }, { stored = w:status().stored, failed = w:status().failed })
    for _, f in ipairs(made) do assert.truthy(H.orthanc_find_instance(f.sop_instance_uid)) end
    assert.same({}, H.files_under(spool .. "/failed"))
  end)

  for _, status in ipairs({ 403, 404 }) do
    it("never moves a file to failed/ for an HTTP " .. status .. ": it waits, saying why", function()
      local w = open({})
      H.emulator_faults({ { match = "store", http_method = "POST", status = status, times = 6 } })
      local made = arrive(w, 2)
      wait_stored(w, 2)
      assert.same({ stored = 2, failed = 0 }, { stored = w:status().stored, failed = w:status().failed })
      for _, f in ipairs(made) do assert.truthy(H.orthanc_find_instance(f.sop_instance_uid)) end
      local requeued = 0
      for _, ev in ipairs(seen) do
        if ev.outcome == "requeued" then
          requeued = requeued + 1
          assert.matches("HTTP " .. status, ev.reason)
        end
      end
      assert.is_true(requeued >= 6)
    end)
  end

  -- An outage: every request fails, nothing is stored. The backlog it leaves must not go one
  -- file per request once the server is back.
  it("sends the files of a request that failed during an outage (a 503 to all) together again once it ends", function()
    local w = open({ retry = { max_attempts = 1 } })
    H.emulator_faults({ { match = "store", http_method = "POST", status = 503, times = 5 } })
    arrive(w, 3)
    wait_stored(w, 3)
    assert.equal(3, w:status().stored)
    -- five refused with the three files in them, then one request of the three
    assert.equal(6, w:status().requests)
  end)

  it("sends alone the files of a request that failed three times (a 503) while others were stored, so one cannot hold back the others", function()
    local w = open({ retry = { max_attempts = 1 } })
    w.opts.requeue_delay = 1.5 -- the file of each round goes, and is stored, first
    local function requeued()
      local n = 0
      for _, ev in ipairs(seen) do if ev.outcome == "requeued" then n = n + 1 end end
      return n
    end
    local function wait(cond)
      local deadline = os.time() + 20
      while not cond() and os.time() < deadline do assert.is_true(w:step(0.05)) end
      assert.is_true(cond())
    end
    local fault = { { match = "store", http_method = "POST", status = 503, times = 1 } }
    H.emulator_faults(fault)
    arrive(w, 2)
    wait(function() return requeued() == 2 end)
    for round = 1, 3 do
      arrive(w, 1)
      wait(function() return w:status().stored == round end)
      H.emulator_faults(fault)
      wait(function() return requeued() == 2 + 2 * round end)
    end
    wait_stored(w, 5)
    assert.equal(5, w:status().stored)
    -- the two refused together four times, the three others, then the two one per request
    assert.equal(4 + 3 + 2, w:status().requests)
  end)
end)

describe("store:watch and a stored file it cannot move", function()
  local healthcare = require "healthcare"

  it("refuses a done or failed folder on another file system than the spool", function()
    local dir = H.tmpdir()
    local other = "/dev/shm"
    if lfs.attributes(other, "dev") == lfs.attributes(dir, "dev") then
      return pending("no other file system than the spool's at " .. other)
    end
    local done = other .. "/hc-watch-done-" .. require("healthcare.core").random_hex(6)
    finally(function() lfs.rmdir(done) end)
    local store = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() store:close() end)
    for _, opts in ipairs({ { done_dir = done }, { failed_dir = done } }) do
      local w, err = store:watch(dir, opts)
      if w then w:close() end
      assert.is_nil(w)
      assert.equal("usage", err.kind)
      assert.matches("on another file system than the spool", err.message)
    end
  end)

  -- Kept in the spool (here: a link below the done folder), it must never be sent again however
  -- many times the watcher starts, though each start moves the journal aside.
  it("keeps its journal record across restarts: never sent again", function()
    local store = assert(healthcare.dicomweb(E.dicomweb))
    finally(function() store:close() end)
    local dir = H.tmpdir()
    local spool = dir .. "/spool"
    H.check_run("mkdir -p " .. H.q(spool .. "/done") .. " " .. H.q(dir .. "/elsewhere") .. " " .. H.q(spool .. "/study"))
    H.check_run("ln -s " .. H.q(dir .. "/elsewhere") .. " " .. H.q(spool .. "/done/study"))
    local f = H.gen_dicom({ dir = spool .. "/study", count = 1 })[1]
    local outcomes = {}
    for run = 1, 4 do
      local w = assert(store:watch(spool, { settle = 0, done_dir = spool .. "/done", journal = dir .. "/journal.jsonl",
        on_file = function(ev) outcomes[#outcomes + 1] = run .. " " .. ev.outcome end }))
      run_for(w, run == 1 and 20 or 3, function() return run == 1 and #outcomes >= 1 end)
      w:close()
    end
    assert.same({ "1 stored", "2 already_stored", "3 already_stored", "4 already_stored" }, outcomes)
    assert.truthy(lfs.attributes(f.path))
  end)
end)
