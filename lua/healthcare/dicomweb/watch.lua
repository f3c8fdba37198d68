-- SPDX-License-Identifier: MIT
-- store:watch(spool, opts): a long-running ingest of a spool folder (README "Classic DICOM
-- senders"). Every complete file that appears in the spool (or in a folder below it) is stored
-- through one long-lived Batch (healthcare.dicomweb.batch: grouping, concurrency, retries,
-- journal), then removed or moved to opts.done_dir; a file that cannot be stored is moved to
-- opts.failed_dir with a reason file beside it.
--
-- When a file counts as complete: its writer closed it (inotify IN_CLOSE_WRITE) or renamed it
-- into the spool (IN_MOVED_TO). A file found by a scan instead (those present at start, after the
-- kernel dropped events, or every file where inotify is not available) is taken once its size and
-- mtime stayed the same for opts.settle seconds. Names starting with "." or ending in ".tmp" or
-- ".part" are never taken: a writer may use them for a file it renames when done.
--
-- Exactly once: the journal says what the server confirmed; at start, a file it records as stored
-- (same path, size and mtime), or as in flight when a SIGKILL came and the server gives back its
-- bytes (listed, then read back equal: a listed UID may hold other bytes), is
-- removed or moved to done_dir without being sent, then the journal
-- starts afresh (the previous one is kept as FILE.1), so it only ever holds one run.
local core = require "healthcare.core"
local lfs = require "lfs"
local batch_mod = require "healthcare.dicomweb.batch"
local journal_mod = require "healthcare.dicomweb.journal"
local retry = require "healthcare.retry"
local util = require "healthcare.util"

local M = {}

M.DEFAULTS = {
  settle = 5,            -- seconds a file found by a scan must stay unchanged
  rescan = 60,           -- seconds between scans with inotify (a safety net); 2 s without it
  requeue_delay = 10,    -- seconds before a file whose request failed is sent again
  max_request_strikes = 3, -- refused requests (not transient) before a file counts as failed
  -- records after which the journal starts afresh (FILE.1) once nothing is in flight: a service
  -- that runs for months keeps a journal of about 30 MB at most, read whole at each start
  journal_max_records = 100000,
}
M.OPTIONS = {
  "journal", "done_dir", "failed_dir", "settle", "rescan", "requeue_delay", "inotify",
  "concurrency", "max_request_bytes", "max_request_instances", "retry", "on_file", "journal_max_records",
}
local OPTION_TYPES = {
  journal = "string", done_dir = "string", failed_dir = "string", settle = "number",
  rescan = "number", requeue_delay = "number", inotify = "boolean", concurrency = "number",
  max_request_bytes = "number", max_request_instances = "number", on_file = "function",
  journal_max_records = "number",
}

local Watcher = {}
Watcher.__index = Watcher
Watcher.__name = "healthcare.Watcher"
M.Watcher = Watcher

local function join(dir, name)
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

-- Names a writer uses while it writes (rsync, curl -o x.part, storescp's own tools).
local function ignored_name(name)
  return name:sub(1, 1) == "." or name:match("%.tmp$") ~= nil or name:match("%.part$") ~= nil
end

local function strip_slash(p)
  p = p:gsub("/+", "/")
  if #p > 1 then p = p:gsub("/$", "") end
  return p
end

-- p from the root, without "." components nor repeated slashes (links and ".." left as they are).
local function absolute(p)
  if p:sub(1, 1) ~= "/" then p = (lfs.currentdir() or "") .. "/" .. p end
  p = ("/" .. p .. "/"):gsub("/+", "/")
  local n
  repeat p, n = p:gsub("/%./", "/") until n == 0
  return strip_slash(p)
end

local function file_id(a) return a.dev .. ":" .. a.ino end

-- ---- construction -----------------------------------------------------------------------------

local function check_call(store, spool, opts)
  util.check_self(store, "healthcare.Store", "watch", 3)
  util.check_arg(spool, 1, "watch", "string", 3)
  opts = util.check_options(opts, M.OPTIONS, "watch", 3)
  for k, v in pairs(opts) do
    if OPTION_TYPES[k] then util.check_option(v, k, "watch", OPTION_TYPES[k], 3) end
  end
  for _, k in ipairs({ "concurrency", "max_request_bytes", "max_request_instances", "journal_max_records" }) do
    util.check_number(opts[k], k, "watch", "whole >= 1", 3)
  end
  for _, k in ipairs({ "settle", "rescan", "requeue_delay" }) do
    if opts[k] ~= nil and (opts[k] ~= opts[k] or opts[k] < 0) then
      error(string.format("bad option '%s' to 'watch' (seconds >= 0 expected, got %s)", k, tostring(opts[k])), 3)
    end
  end
  retry.check(opts.retry, "watch", 3)
  return opts
end

-- Files of the spool the journal of an earlier run records as stored, or that it records as in
-- flight and the server holds with the same bytes: finished without being sent. Then the journal is moved aside
-- (FILE.1), so that the run's own starts empty.
function Watcher:settle_journal()
  local path = self.opts.journal
  if not path then return true end
  local j, err = journal_mod.open(path, nil, { store = self.store.name })
  if not j then return nil, err end
  -- what a SIGKILL left in flight: the server says which it holds (journaled stored, then finished
  -- below like any stored file); the rest is sent again
  local settled, serr = batch_mod.settle_in_flight(self.store, j, nil, self.opts.retry, self.opts.concurrency)
  if not settled then
    j:close()
    return nil, serr
  end
  self.in_flight_at_start = settled -- { in_flight, found, error }: the CLI says it
  -- stored files that cannot be removed or moved (kept): their records go on into the new
  -- journal (start_batch), else the next start would send them again
  self.kept_stored = {}
  self:scan(self.spool, function(f)
    local done = j:lookup(f)
    if done then
      self:finish(f.path, "already_stored", { sop_instance_uid = done.sop_instance_uid, study_uid = done.study_uid })
      local k = self.known[f.path]
      if k and k.state == "kept" then
        self.kept_stored[#self.kept_stored + 1] = { path = f.path, size = f.size, mtime = f.mtime,
          mtime_nsec = f.mtime_nsec, sop_instance_uid = done.sop_instance_uid, study_uid = done.study_uid }
      end
    end
  end)
  j:close()
  return self:move_journal_aside()
end

function Watcher:move_journal_aside()
  local path = self.opts.journal
  local ok, rerr = os.rename(path, path .. ".1")
  if not ok then
    return nil, require("healthcare.errors").new("io", "cannot move the journal aside: " .. tostring(rerr))
  end
  return true
end

-- The journal started afresh once it holds journal_max_records records and nothing is in
-- flight, waiting or kept: every file its records name is then gone from the spool, so none of
-- them can matter to a restart. Returns true, or nil, err.
function Watcher:maybe_rotate_journal()
  local b, o = self.batch, self.opts
  if not b.journal or b.stopping then return true end
  local c = self.counters
  local records = c.stored + c.failed + c.requeued
  if records - (self.records_at_rotation or 0) < o.journal_max_records then return true end
  if b.ninflight > 0 or #b.waiting > 0 or self:queued() > 0 or b.source.pending or next(self.deferred) then
    return true
  end
  for _, k in pairs(self.known) do
    if k.state == "kept" or k.state == "sending" then return true end
  end
  b.journal:close()
  local ok, err = self:move_journal_aside()
  if not ok then return nil, err end
  local j
  j, err = journal_mod.open(o.journal, nil, { store = self.store.name })
  if not j then return nil, err end
  b.journal, b.source.journal = j, j
  self:mark_own()
  self.records_at_rotation = records
  self.rotations = (self.rotations or 0) + 1
  return true
end

-- The Batch that sends: its Source reads the watcher's queue instead of walking paths.
function Watcher:start_batch()
  local o = self.opts
  local b, err = batch_mod.Batch.new(self.store, {}, {
    journal = o.journal, concurrency = o.concurrency, max_request_bytes = o.max_request_bytes,
    max_request_instances = o.max_request_instances, retry = o.retry, keep_stored = false,
    on_instance = function(r, outcome) self:on_instance(r, outcome) end,
  })
  if not b then return nil, err end
  if b.journal and self.kept_stored and #self.kept_stored > 0 then
    local ok, jerr = b.journal:mark_stored(self.kept_stored)
    if not ok then
      b.journal:close()
      return nil, jerr
    end
  end
  self.kept_stored = nil
  b.source.it = function() return self:next_ready() end
  self.batch = b
  return true
end

-- The spool held open and locked for the watcher's life (an flock on the folder itself: no lock
-- file another user could make or link first), or nil, err: a second watcher of one spool, even
-- with a journal of its own, would take the same files. A file system without such locks (NFS
-- refuses them on a folder) leaves the journal's lock alone to guard.
local function lock_spool(spool)
  local errors = require "healthcare.errors"
  local h, err = core.dir_open(spool)
  if not h then return nil, errors.new("io", err.message) end
  local ok, lerr = h:lock()
  if not ok and lerr.status == "busy" then
    h:close()
    return nil, errors.new("io", "another healthcare watch is watching " .. spool, { status = "busy" })
  end
  return h
end

--- healthcare.dicomweb.watch.new(store, spool, opts) (also store:watch(spool, opts)): a watcher,
--- or nil, err (a spool that is not a folder, a failed or done folder that cannot be made, a
--- journal that cannot be used). Run it with watcher:run() or call watcher:step() from a loop.
function M.new(store, spool, opts)
  opts = check_call(store, spool, opts)
  local errors = require "healthcare.errors"
  spool = strip_slash(spool)
  if lfs.attributes(spool, "mode") ~= "directory" then
    return nil, errors.new("usage", "spool " .. spool .. " is not a folder")
  end
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  o.failed_dir = strip_slash(o.failed_dir or join(spool, "failed"))
  if o.done_dir then o.done_dir = strip_slash(o.done_dir) end
  local spool_dir, lerr = lock_spool(spool)
  if not spool_dir then return nil, lerr end
  local spool_attr, roots, root_dirs = lfs.attributes(spool), {}, {}
  local spool_id = file_id(spool_attr)
  for _, d in ipairs({ o.failed_dir, o.done_dir }) do
    local ok, why = util.make_dirs(d)
    local h = ok and core.dir_open(d)
    local a = h and h:stat()
    if not a then
      for _, rh in pairs(root_dirs) do rh:close() end
      spool_dir:close()
      return nil, errors.new("io", why or ("cannot open " .. d))
    end
    roots[d], root_dirs[d] = file_id(a), h
    local what = "the " .. (d == o.failed_dir and "failed" or "done") .. " folder " .. d
    -- every file moved there would be taken again, and again; files are renamed into it: on
    -- another file system, none could be moved, each kept in the spool
    local refused = (roots[d] == spool_id and " is the spool")
      or (a.dev ~= spool_attr.dev and " is on another file system than the spool")
    if refused then
      for _, rh in pairs(root_dirs) do rh:close() end
      spool_dir:close()
      return nil, errors.new("usage", what .. refused)
    end
  end
  local self = setmetatable({ store = store, spool = spool, opts = o,
    known = {},          -- path -> { state, size, mtime, since, due, strikes, rel }
    queue = {}, qhead = 1, qtail = 0,
    deferred = {},       -- path -> when it is sent again
    settling = {},       -- path -> true: found by a scan, waiting to stay unchanged
    emptying = {},       -- folder -> true: files were taken from it; removed once empty and quiet
    finished = {},       -- outcomes to act on after the batch's turn (the journal is written then)
    wds = {}, watched = {}, -- inotify watch number -> folder, folder -> watch number
    own = {},            -- "dev:ino" of what is never taken: the failed and done folders, the journal
    own_rel = {},        -- the same by their paths below the spool (one made again has a new inode)
    roots = roots,       -- failed and done folder -> "dev:ino" it has now
    root_dirs = root_dirs, -- failed and done folder -> its handle (core.dir_open) files are moved into
    spool_dir = spool_dir, -- the spool's handle, locked: files are moved and removed relative to it
    pins = {},           -- folders held open: removed, their inode is never another's while we run
    counters = { stored = 0, already_stored = 0, failed = 0, requeued = 0, bytes = 0 },
    t0 = core.now(), last_scan = -math.huge,
  }, Watcher)
  self:mark_own()
  self:mark_own_paths()
  for _, h in pairs(root_dirs) do self.pins[#self.pins + 1] = h end
  if o.inotify ~= false then self:start_inotify() end
  if not self.inotify then o.rescan = math.min(o.rescan, 2) end
  local ok, err = self:settle_journal()
  if not ok then self:close() return nil, err end
  ok, err = self:start_batch()
  if not ok then self:close() return nil, err end
  self:mark_own()
  return self
end

-- ---- inotify ----------------------------------------------------------------------------------

function Watcher:start_inotify()
  if not core.inotify then return end
  local h = core.inotify()
  if not h then return end -- no inotify here (or the instance limit): scans alone
  self.inotify = h
  self:watch_dir(self.spool)
end

function Watcher:watch_dir(dir)
  if not self.inotify or self.watched[dir] then return end
  local wd = self.inotify:add(dir)
  if wd then
    self.wds[wd], self.watched[dir] = dir, wd
  end
end

-- Told apart by device and inode, not by name: `--failed ./spool/failed` is SPOOL/failed too.
function Watcher:exclude(path)
  local a = lfs.attributes(path)
  if a then self.own[a.dev .. ":" .. a.ino] = true end
end

-- What is the watcher's own, afresh (an inode freed by a journal moved over can be a new
-- spool file's).
function Watcher:mark_own()
  local o = self.opts
  self.own = {}
  local list = { o.failed_dir, o.done_dir or false, o.journal or false, o.journal and o.journal .. ".1" or false }
  for _, p in ipairs(list) do
    if p then self:exclude(p) end
  end
end

-- The watcher's own by their paths below the spool, if they are in it.
function Watcher:mark_own_paths()
  local o, spool = self.opts, absolute(self.spool) .. "/"
  local list = { o.failed_dir, o.done_dir or false, o.journal or false, o.journal and o.journal .. ".1" or false }
  for _, p in ipairs(list) do
    if p then
      p = absolute(p)
      if p:sub(1, #spool) == spool then self.own_rel[p:sub(#spool + 1)] = true end
    end
  end
end

-- Whether the file or folder at path (below the spool) with attributes a (lfs) is the watcher's
-- own.
function Watcher:excluded(a, path)
  return (a ~= nil and self.own[file_id(a)] == true)
    or (path ~= nil and self.own_rel[path:sub(#self.spool + 2)] == true)
end

-- What one event says: a file complete, a folder to watch, events lost.
function Watcher:on_event(ev)
  if ev.overflow then
    self.last_scan = -math.huge -- events were dropped: scan at once
    for path, k in pairs(self.known) do
      if k.state == "writing" then
        k.state, k.since = "pending", core.now()
        self.settling[path] = true
      end
    end
    return
  end
  local dir = self.wds[ev.wd]
  if not dir then return end
  if ev.gone then
    self.wds[ev.wd], self.watched[dir] = nil, nil
    return
  end
  if not ev.name or ignored_name(ev.name) then return end
  local path = join(dir, ev.name)
  if ev.dir then
    if (ev.created or ev.moved_in) and not self:excluded(lfs.symlinkattributes(path), path) then
      self:watch_dir(path)
      self:scan(path, function(f) self:found(f) end)
    end
    return
  end
  local k = self.known[path]
  if ev.created then
    if not k then self.known[path] = { state = "writing", since = core.now() } end
  elseif ev.closed or ev.moved_in then
    if not k or k.state == "writing" or k.state == "pending" or k.state == "kept" then
      self.known[path] = { state = "pending" }
      self:enqueue(path)
    elseif k.state == "sending" then
      -- written again or renamed over (storescp reuses names) while its request is in flight:
      -- the file there now is another, which act() queues instead of removing it
      k.again = true
    end
  end
end

function Watcher:read_events(timeout)
  if not self.inotify then
    if timeout > 0 then core.sleep(timeout) end
    return
  end
  local events = self.inotify:read(timeout)
  for _, ev in ipairs(events or {}) do self:on_event(ev) end
end

-- ---- scanning ---------------------------------------------------------------------------------

-- Calls fn{ path, rel, size, mtime, dev, ino } for every regular file below dir (not the failed
-- and done folders, nor the journal, nor ignored names; symbolic links are never followed).
function Watcher:scan(dir, fn)
  local ok, iter, state = pcall(lfs.dir, dir)
  if not ok then return end
  local names = {}
  for name in iter, state do
    if name ~= "." and name ~= ".." and not ignored_name(name) then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local path = join(dir, name)
    local a = core.file_stat(path, false)
    if self:excluded(a, path) then
      a = nil -- the watcher's own folder or journal
    end
    if a and a.mode == "directory" then
      self:watch_dir(path)
      self:scan(path, fn)
    elseif a and a.mode == "file" then
      fn { path = path, rel = path:sub(#self.spool + 2), size = a.size, mtime = a.modification,
        mtime_nsec = a.mtime_nsec, dev = a.dev, ino = a.ino }
    end
  end
end

-- A file seen by a scan: taken once unchanged for opts.settle seconds (by its mtime, or watched
-- from now on: check_settling looks again every SETTLE_CHECK seconds).
function Watcher:found(f)
  local k = self.known[f.path]
  local now = core.now()
  if not k then
    k = { state = "pending", size = f.size, mtime = f.mtime, since = now }
    self.known[f.path] = k
    -- mtime has whole seconds: older than settle + 1 is unchanged for settle at least
    if os.time() - (f.mtime or 0) > self.opts.settle then return self:enqueue(f.path) end
    self.settling[f.path] = true
    return
  end
  if k.state == "writing" then return self:quiet_writer(k, f, now) end
  if k.state ~= "pending" or k.queued then return end
  if k.size ~= f.size or k.mtime ~= f.mtime then
    k.size, k.mtime, k.since = f.size, f.mtime, now
    self.settling[f.path] = true
  elseif now - (k.since or now) >= self.opts.settle then
    self:enqueue(f.path)
  else
    self.settling[f.path] = true
  end
end

local SETTLE_CHECK = 0.5

-- Seconds a file announced as created, and never closed after writing, must stay unchanged
-- before a scan takes it: a hard link made into the spool (ln) is never written. Long, as a
-- writer may hold a file open and idle for a while.
M.WRITING_QUIET = 60

function Watcher:quiet_writer(k, f, now)
  if k.size ~= f.size or k.mtime ~= f.mtime then
    k.size, k.mtime, k.since = f.size, f.mtime, now
  elseif now - k.since >= math.max(self.opts.settle, M.WRITING_QUIET) then
    self:enqueue(f.path)
  end
end

-- The files found by a scan that are not yet taken: looked at again.
function Watcher:check_settling()
  local now = core.now()
  if now - (self.last_settle_check or 0) < SETTLE_CHECK or next(self.settling) == nil then return end
  self.last_settle_check = now
  local paths = {}
  for path in pairs(self.settling) do paths[#paths + 1] = path end
  for _, path in ipairs(paths) do
    self.settling[path] = nil
    local a = lfs.symlinkattributes(path)
    local k = self.known[path]
    if not a or a.mode ~= "file" then
      if k and k.state == "pending" and not k.queued then self.known[path] = nil end
    elseif k then
      self:found { path = path, size = a.size, mtime = a.modification }
    end
  end
end

-- Scans when due; files not seen by the scan are forgotten (removed by someone else).
function Watcher:maybe_scan()
  local now = core.now()
  for path, due in pairs(self.deferred) do
    if now >= due then
      self.deferred[path] = nil
      local k = self.known[path]
      if k and k.state == "deferred" then
        k.state = "pending"
        self:enqueue(path)
      end
    end
  end
  self:check_settling()
  self:remove_emptied()
  if now - self.last_scan < self.opts.rescan then return end
  self.last_scan = now
  local seen = {}
  self:scan(self.spool, function(f)
    seen[f.path] = true
    self:found(f)
  end)
  for path, k in pairs(self.known) do
    if not seen[path] and not k.queued and (k.state == "pending" or k.state == "writing" or k.state == "kept") then
      self.known[path] = nil
    end
  end
end

-- ---- the queue the Batch reads ----------------------------------------------------------------

function Watcher:enqueue(path)
  local k = self.known[path]
  self.settling[path] = nil
  if k.queued then return end
  k.queued = true
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = path
end

function Watcher:queued()
  return self.qtail - self.qhead + 1
end

-- The next file for the Batch ({ path, rel, size, mtime, dev, ino, alone }), or nil when none is
-- ready. A file one of whose requests was refused as a whole goes alone (the Batch makes it a
-- request of its own): one bad file (or one that fits a proxy's limit alone, not with others)
-- then costs only itself, and strikes count only against a file refused alone.
function Watcher:next_ready()
  while self.qhead <= self.qtail do
    local path = self.queue[self.qhead]
    self.queue[self.qhead] = nil
    self.qhead = self.qhead + 1
    local k = self.known[path]
    local f = self:ready(path, k ~= nil and k.solo == true)
    if f then return f end
  end
  self.qhead, self.qtail = 1, 0
  return nil
end

-- The file at path for the Batch ({ path, rel, size, mtime, dev, ino, alone }), or nil (gone,
-- the watcher's own, or already stored). alone: whether it goes in a request of its own.
function Watcher:ready(path, alone)
  local k = self.known[path]
  local a = core.file_stat(path, false)
  if not a or a.mode ~= "file" or self:excluded(a, path) then
    self.known[path] = nil -- gone (or replaced by something else) before its turn, or ours
  elseif k then
    k.queued, k.state, k.alone = nil, "sending", alone
    k.stored_at_send = self.counters.stored -- (defer: whether the server stored others since)
    -- what is sent, so that finishing it never removes another file put under its name since
    local f = { path = path, rel = path:sub(#self.spool + 2), size = a.size, mtime = a.modification,
      mtime_nsec = a.mtime_nsec, dev = a.dev, ino = a.ino, alone = alone }
    k.sent = { dev = a.dev, ino = a.ino, size = a.size, mtime = a.modification, nsec = f.mtime_nsec,
      change = a.change }
    k.again = nil
    -- a file that replaced one in flight is new whatever its size and mtime (they may equal
    -- those of the one stored, in the same second)
    local done = not k.fresh and self.batch and self.batch.journal and self.batch.journal:lookup(f)
    if not done then return f end
    self:finish(path, "already_stored", { sop_instance_uid = done.sop_instance_uid, study_uid = done.study_uid })
  end
  return nil
end

-- ---- outcomes ---------------------------------------------------------------------------------

function Watcher:on_instance(r, outcome)
  self.finished[#self.finished + 1] = { path = r.path, outcome = outcome, reason = r.reason, scope = r.scope,
    sop_instance_uid = r.sop_instance_uid, study_uid = r.study_uid }
end

-- The handle of root (the failed or done folder) files are moved into, or nil and why not. One
-- removed or replaced while running is made again, and is the watcher's own before anything is
-- moved into it: never taken as spool. Whoever may write the spool may put a link in its place:
-- not followed, else a file named by that writer would go where the link points.
function Watcher:root_dir(root)
  local h = self.root_dirs[root]
  local a = lfs.attributes(root) -- followed: root may be a link the caller gave
  if a and a.mode == "directory" and self.roots[root] == file_id(a) then return h end
  if not core.file_stat(root, false) then
    local ok, why = util.make_dirs(root)
    if not ok then return nil, why end
  end
  local err
  h, err = core.dir_open(root, false)
  if not h then return nil, err.message end
  local id = file_id(h:stat())
  self.roots[root], self.root_dirs[root] = id, h
  self.own[id] = true
  self.pins[#self.pins + 1] = h -- the one before stays open too: its inode is never another's
  return h
end

-- Moves the file at path below root, keeping its folders below the spool (made where missing;
-- an existing name gets .1, .2, ...), with FILE.reason beside it when reason is given. Returns
-- where it went, or nil and why not; and a warning. Every folder on both ways is opened without
-- following links, relative to folders held open (core.dir_open): none put in or in place of
-- one, even between a check and the move, can send the file elsewhere.
function Watcher:move(path, root, reason)
  local h, why = self:root_dir(root)
  if not h then return nil, why end
  local rel = path:sub(#self.spool + 2)
  local to_rel, err = self.spool_dir:move(rel, h, rel)
  if not to_rel then return nil, err.message end
  local moved_to, warning = join(root, to_rel), nil
  if reason then
    local ok, werr = h:create(to_rel .. ".reason", string.format("%s\n%s\n", os.date("!%Y-%m-%dT%H:%M:%SZ"),
      tostring(reason)))
    if not ok then warning = "cannot write the reason file: " .. werr.message end
  end
  self:emptied(path)
  return moved_to, nil, warning
end

-- The folder of path (a file just moved or removed) is looked at once quiet (remove_emptied),
-- unless it is the spool itself.
function Watcher:emptied(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir and #dir > #self.spool then self.emptying[dir] = true end
end

-- Folders below the spool that files were taken from, removed once empty (storescp
-- --sort-on-study-uid makes one per study: else they, and their inotify watches, pile up), then
-- their parents in turn. Only once unchanged for opts.settle seconds, as a file found by a scan:
-- a writer that made a folder, or wrote its last file there, may be about to write into it (one
-- that still does then finds it gone). Never the spool, never a folder that is not empty (rmdir),
-- never through a link (core.dir_open's remove).
function Watcher:remove_emptied()
  local now = core.now()
  if now - (self.last_empty_check or 0) < SETTLE_CHECK or next(self.emptying) == nil then return end
  self.last_empty_check = now
  local dirs = {}
  for dir in pairs(self.emptying) do dirs[#dirs + 1] = dir end
  for _, dir in ipairs(dirs) do
    local a = core.file_stat(dir, false)
    if not a or a.mode ~= "directory" or self:excluded(a, dir) then
      self.emptying[dir] = nil
    elseif os.time() - a.modification > self.opts.settle then
      self.emptying[dir] = nil
      if self.spool_dir:remove(dir:sub(#self.spool + 2), true) then
        local wd = self.watched[dir]
        if wd then
          self.inotify:remove(wd)
          self.wds[wd], self.watched[dir] = nil, nil
        end
        self:emptied(dir)
      end
    end
  end
end

-- The end of a file: removed or moved to done_dir (stored), or moved to failed_dir with
-- FILE.reason (failed). Tells on_file. info: { reason, sop_instance_uid, study_uid, size }.
function Watcher:finish(path, outcome, info)
  local o = self.opts
  local ev = { outcome = outcome, path = path, reason = info.reason, sop_instance_uid = info.sop_instance_uid,
    study_uid = info.study_uid }
  local ok, err
  if outcome == "failed" then
    ev.moved_to, err, ev.warning = self:move(path, o.failed_dir, info.reason)
    ok = ev.moved_to ~= nil
  elseif o.done_dir then
    ev.moved_to, err = self:move(path, o.done_dir)
    ok = ev.moved_to ~= nil
  else
    local rerr
    ok, rerr = self.spool_dir:remove(path:sub(#self.spool + 2))
    if ok then self:emptied(path) else err = rerr.message end
  end
  if not ok then
    ev.warning = "cannot " .. ((outcome == "failed" or o.done_dir) and "move" or "remove") .. ": " .. tostring(err)
    -- Kept as it is, not sent again this run; a restart acts on it again (a stored one is in the
    -- journal: removed or moved then, not sent).
    self.known[path] = { state = "kept" }
  else
    self.known[path] = nil
  end
  self.counters[outcome] = self.counters[outcome] + 1
  if o.on_file then o.on_file(ev) end
end

-- A failed request: the file waits opts.requeue_delay and is sent again. A request of several
-- files refused as a whole says nothing of each: they are sent again one per request, and a file
-- counts as failed once refused alone max_request_strikes times. A transient failure (the server
-- or the network away) never strikes: the file waits for them, and goes alone after
-- max_request_strikes of them with others while other files were stored (one file the server
-- always fails on, with a 500, would hold back the others). An outage fails every request alike
-- and stores nothing: those are not counted, so that the backlog it leaves goes on in full
-- requests once the server is back, not one file per request. Nor does a refusal that says the
-- credential or the store's address is wrong (HTTP 401, 403, 404: scope "store"): every file
-- waits until that is put right.
function Watcher:defer(f)
  local k = self.known[f.path] or {}
  self.known[f.path] = k
  if f.scope == "request" then
    if k.alone then k.strikes = (k.strikes or 0) + 1 else k.solo = true end
  elseif f.scope == "transient" and not k.alone then
    local stored = self.counters.stored
    if stored > (k.stored_at_failure or k.stored_at_send or stored) then
      k.transient = (k.transient or 0) + 1
      if k.transient >= self.opts.max_request_strikes then k.solo = true end
    end
    k.stored_at_failure = stored
  end
  if (k.strikes or 0) >= self.opts.max_request_strikes then
    return self:finish(f.path, "failed", f)
  end
  k.state, k.queued = "deferred", nil
  self.deferred[f.path] = core.now() + self.opts.requeue_delay
  self.counters.requeued = self.counters.requeued + 1
  if self.opts.on_file then
    self.opts.on_file { outcome = "requeued", path = f.path, reason = f.reason,
      sop_instance_uid = f.sop_instance_uid, study_uid = f.study_uid }
  end
end

-- Whether the file at path is no longer the one its request sent: renamed over or written again
-- (an event said so while in flight, or its device, inode, size, mtime or ctime differ). A file
-- gone is not replaced (finish says it could not be removed).
function Watcher:replaced(path)
  local k = self.known[path]
  local s = k and k.sent
  if not s then return false end
  if k.again then return true end
  local a = core.file_stat(path, false)
  if not a then return false end
  return a.mode ~= "file" or a.dev ~= s.dev or a.ino ~= s.ino or a.size ~= s.size or a.modification ~= s.mtime
    or a.change ~= s.change or a.mtime_nsec ~= s.nsec
end

-- What became of the file f.path was is told (its outcome: "stored", "failed", or "requeued" for
-- a failure to send again), but the file there now, another, is left in place and queued as new.
function Watcher:requeue_replaced(f)
  local outcome = f.outcome == "stored" and "stored" or (f.scope and "requeued" or "failed")
  self.known[f.path] = { state = "pending", fresh = true }
  self:enqueue(f.path)
  self.counters[outcome] = self.counters[outcome] + 1
  if self.opts.on_file then
    self.opts.on_file { outcome = outcome, path = f.path, reason = f.reason, sop_instance_uid = f.sop_instance_uid,
      study_uid = f.study_uid, warning = "another file was put under this name while its request was in flight: "
      .. "that one is left in place and sent" }
  end
end

-- What the Batch's last turn finished: acted on once its journal lines are written.
function Watcher:act()
  local list = self.finished
  if #list > 0 then
    self.finished = {}
    for _, f in ipairs(list) do
      if self:replaced(f.path) then
        self:requeue_replaced(f)
      elseif f.outcome == "stored" then
        self:finish(f.path, "stored", f)
      elseif f.scope then
        self:defer(f)
      else
        self:finish(f.path, "failed", f)
      end
    end
  end
  local report = self.batch.report
  -- Files the probe refused (not DICOM, truncated): failed at once. The report's lists are
  -- emptied each turn so a run of months keeps no record per file.
  local skipped = report.skipped
  if #skipped > 0 then
    report.skipped = {}
    for _, s in ipairs(skipped) do
      if self:replaced(s.path) then
        self:requeue_replaced(s)
      elseif self.known[s.path] then
        self:finish(s.path, "failed", s)
      end
    end
  end
  report.failed, report.stored, report.already_stored = {}, {}, {}
end

-- ---- running ----------------------------------------------------------------------------------

--- The counters: stored, already_stored, failed, requeued, bytes, requests, retries, in_flight,
--- queued (ready, not yet sent), waiting (seen, not yet complete, or waiting to be sent again),
--- seconds.
function Watcher:status()
  local c, report = self.counters, self.batch and self.batch.report
  local waiting = 0
  for _, k in pairs(self.known) do
    if k.state == "writing" or k.state == "deferred" or (k.state == "pending" and not k.queued) then
      waiting = waiting + 1
    end
  end
  return { stored = c.stored, already_stored = c.already_stored, failed = c.failed, requeued = c.requeued,
    bytes = report and report.bytes or 0, requests = report and report.requests or 0,
    retries = report and report.retries or 0, in_flight = self.batch and self.batch.ninflight or 0,
    queued = self:queued(), waiting = waiting, seconds = core.now() - self.t0,
    inotify = self.inotify ~= nil }
end

--- One turn: events read (waiting up to timeout seconds when nothing is being sent), scans when
--- due, requests started and finished, files finished. Returns true while the watcher runs,
--- false once it was stopped (watcher:stop(), or SIGINT/SIGTERM after core.trap_interrupts())
--- and what was in flight finished (or was abandoned after the batch's grace). Raises nothing
--- for failures of the world; returns nil, err when the journal cannot be written.
function Watcher:step(timeout)
  if self.closed then error("attempt to use a closed watcher", 2) end
  local b = self.batch
  timeout = timeout or 0.2
  if not b.stopping then
    self:maybe_scan()
    if self:queued() > 0 then b.source.exhausted = false end
  end
  local ok, more = pcall(b.step, b)
  if not ok then
    self:act()
    self.stopped = true
    b.stopping = b.stopping or core.now()
    if type(more) == "table" then return nil, more end
    error(more, 0)
  end
  self:act()
  local rotated, rerr = self:maybe_rotate_journal()
  if not rotated then
    self.stopped = true
    b.stopping = b.stopping or core.now()
    b.journal = nil
    return nil, rerr
  end
  if b.stopping and not more then
    self.abandoned = b:abandon()
    self.stopped = true
    return false
  end
  local busy = b.ninflight > 0 or self:queued() > 0
  self:read_events(busy and 0 or timeout)
  return true
end

--- Stops taking files: requests in flight get the batch's grace (10 s) to finish.
function Watcher:stop()
  if self.batch and not self.batch.stopping then self.batch.stopping = core.now() end
end

--- Runs until stopped (watcher:stop() from a callback, or SIGINT/SIGTERM once the program
--- called core.trap_interrupts()). on_status(status) is called every interval seconds.
--- Returns the final status, or nil, err.
function Watcher:run(on_status, interval)
  interval = interval or 60
  local last = core.now()
  while true do
    local more, err = self:step(0.2)
    if more == nil then return nil, err end
    if on_status and core.now() - last >= interval then
      last = core.now()
      on_status(self:status())
    end
    if not more then break end
  end
  return self:status()
end

--- Closes the journal and the inotify handle. Safe to call twice.
function Watcher:close()
  if self.closed then return end
  self.closed = true
  if self.batch then
    if not self.stopped then self.batch:abandon() end
    if self.batch.journal then self.batch.journal:close() end
  end
  if self.inotify then self.inotify:close() end
  for _, h in ipairs(self.pins) do h:close() end
  self.pins = {}
  self.spool_dir:close()
end

Watcher.__close = Watcher.close
Watcher.__gc = Watcher.close

function Watcher:__tostring()
  return string.format("healthcare.Watcher %s (%s)", self.spool, self.closed and "closed" or "open")
end

return M
