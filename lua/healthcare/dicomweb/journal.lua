-- SPDX-License-Identifier: MIT
-- The journal of a migration (store:store{journal = FILE}, `healthcare store --journal FILE`):
-- an append-only file of JSON lines that says what became of every instance sent, so that a
-- run killed at any moment can be started again and skip what is already stored.
--
-- Lines (README "Migrating an archive"):
--   {"journal":"healthcare","version":1,"time":...,"store":...,"shard":...}   one per run
--   {"time":...,"outcome":"stored"|"failed","path":...,"size":...,"mtime":...,
--    "sop_instance_uid":...,"study_uid":...,"reason":...}                    one per instance
-- time is UTC (ISO 8601); path is absolute (M.key); size and mtime are what the file had when
-- it was read; reason is why it failed, or the server's warning for a stored one.
--
-- The lines of one finished request are written in one write and fsynced (in C) before the
-- request counts as done. A crash can leave at most a torn last line: it is cut off when the
-- journal is opened again. The latest line of a path wins: a path recorded as stored with the
-- size and mtime it has now is skipped without being read; everything else is sent again
-- (storing the same bytes twice is harmless, so a crash between "stored by the server" and
-- "written here" costs a re-send, never a loss). One process at a time: the file is locked.
-- Since a "stored" line makes a file be skipped unread, only a journal that this user alone
-- could have written is used, and it is read through the descriptor those checks were made on.
local core = require "healthcare.core"
local lfs = require "lfs"
local cjson = require("cjson.safe").new()
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

M.MAGIC = "healthcare"
M.VERSION = 1
M.OUTCOMES = { stored = true, failed = true, replaced = true } -- replaced: stored over a conflict (--overwrite)
-- Written once: the order of the fields on a line (people read journals with grep and jq).
M.FIELDS = { "time", "outcome", "path", "size", "mtime", "sop_instance_uid", "study_uid", "reason" }

local Journal = {}
Journal.__index = Journal
M.Journal = Journal

local function now_utc()
  return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

-- cjson writes "/" as "\/"; paths read better (and grep) without. Safe: cjson never writes a
-- bare "/", so every "\/" in its output is that escape.
local function encode(v)
  return (cjson.encode(v):gsub("\\/", "/"))
end

-- One JSON line with the fields in the given order; nil values are left out.
local function line(fields, t)
  local out = {}
  for _, k in ipairs(fields) do
    local v = t[k]
    if v ~= nil then out[#out + 1] = encode(k) .. ":" .. encode(v) end
  end
  return "{" .. table.concat(out, ",") .. "}\n"
end

local function usage(fmt, ...)
  return nil, errors.new("usage", string.format(fmt, ...))
end

-- Reads the journal through the appender w (the descriptor its safety checks were made on,
-- never the path again) into j (index, counts) and returns the length of its valid part and the
-- number of bytes of a torn last line, or nil, err.
local function load(j, w, path)
  local first, rerr = w:read(0, 1)
  if not first then return nil, rerr end
  if first == "" then return 0, 0 end
  if first ~= "{" then
    return usage("'%s' is not a journal of this program (it does not start with a JSON line);"
      .. " name a new file, or remove this one if a crash left it empty of records", path)
  end
  local latest = j.index
  while true do
    -- l: a whole line; false at the end, with where the whole lines end and the bytes after
    -- them (torn: the crash came in the middle of that line)
    local l, good_end, torn = w:read_line()
    if l == nil then return nil, good_end end
    if not l then return good_end, torn end
    local rec = cjson.decode(l)
    if type(rec) ~= "table" then
      j.ignored_lines = j.ignored_lines + 1
    elseif rec.journal == M.MAGIC then
      j.earlier_runs = j.earlier_runs + 1
      if type(rec.store) == "string" then j.stores[rec.store] = true end
    elseif M.OUTCOMES[rec.outcome] and type(rec.path) == "string" then
      if rec.outcome ~= "failed" then
        latest[rec.path] = { size = rec.size, mtime = rec.mtime,
          sop_instance_uid = rec.sop_instance_uid, study_uid = rec.study_uid }
      else
        latest[rec.path] = false
      end
    else
      j.ignored_lines = j.ignored_lines + 1
    end
  end
end

--- The key of a file in the journal: its absolute path (against cwd when relative), with "."
--- segments and repeated slashes removed, so that a run resumed from another directory, or
--- with the folder named another way, finds what an earlier run stored. ".." is kept: through
--- a symbolic link it does not mean the parent.
function M.key(path, cwd)
  if path:sub(1, 1) ~= "/" then path = cwd .. "/" .. path end
  path = path:gsub("/+", "/")
  repeat
    local n
    path, n = path:gsub("/%./", "/")
  until n == 0
  path = path:gsub("/%.$", "")
  if #path > 1 then path = path:gsub("/$", "") end
  return path
end

--- Opens (creating it if needed) and locks the journal at path, reads what earlier runs
--- recorded and starts this run's part. report (may be nil) gets report.journal = { path,
--- earlier_runs, earlier_stored, earlier_failed, ignored_lines, torn_bytes }, the totals of
--- earlier runs (distinct paths, latest outcome). opts: { store = name or URL the run sends
--- to (a journal of another store is refused), shard = "K/N" (noted) }.
--- Returns the journal, or nil, err (kind "io": cannot open, read, write or lock, or refused
--- with status "unsafe" because someone else could have written it: a symbolic link, not a
--- regular file, another user's, or writable by group or others (core.appender); kind "usage":
--- not a journal, or one written for another store).
function M.open(path, report, opts)
  if type(path) ~= "string" or path == "" then
    return usage("journal must be a file name")
  end
  opts = opts or {}
  -- Check and lock first, then read through the same descriptor: no other process can append
  -- between our reading and writing, and what is read is the file that was checked.
  local made, why = util.make_dirs(util.parent_dir(path))
  if not made then return nil, errors.new("io", "journal " .. path .. ": " .. why) end
  local w, err = core.appender(path)
  if not w then return nil, err end
  local j = setmetatable({ path = path, w = w, index = {}, stores = {}, earlier_runs = 0,
    ignored_lines = 0, cwd = lfs.currentdir() or "/" }, Journal)
  local good_end, torn = load(j, w, path)
  if not good_end then
    w:close()
    return nil, torn
  end
  if opts.store then
    for s in pairs(j.stores) do
      if s ~= opts.store then
        w:close()
        return usage("journal '%s' records a migration to %s, not to %s: use another journal file",
          path, s, opts.store)
      end
    end
  end
  if torn > 0 then
    local ok, terr = w:truncate(good_end)
    if not ok then
      w:close()
      return nil, terr
    end
  end
  local ok, aerr = w:append(line({ "journal", "version", "time", "store", "shard" }, {
    journal = M.MAGIC, version = M.VERSION, time = now_utc(), store = opts.store,
    shard = opts.shard and tostring(opts.shard) or nil }))
  if not ok then
    w:close()
    return nil, aerr
  end
  local stored, failed = 0, 0
  for _, r in pairs(j.index) do
    if r then stored = stored + 1 else failed = failed + 1 end
  end
  j.summary = { path = path, earlier_runs = j.earlier_runs, earlier_stored = stored,
    earlier_failed = failed, ignored_lines = j.ignored_lines, torn_bytes = torn }
  if report then report.journal = j.summary end
  return j
end

--- entry = { path, size, mtime }. The record of an earlier run that stored this path with the
--- same size and mtime ({ path, size, mtime, sop_instance_uid, study_uid }), or nil.
function Journal:lookup(entry)
  local r = self.index[M.key(entry.path, self.cwd)]
  if r and r.size == entry.size and r.mtime == entry.mtime then
    return { path = entry.path, size = r.size, mtime = r.mtime,
      sop_instance_uid = r.sop_instance_uid, study_uid = r.study_uid }
  end
  return nil
end

--- Appends one line per item of list = { { entry = { path, size, mtime, sop_instance_uid,
--- study_uid }, outcome = "stored" | "failed", reason = s or nil }, ... }, written in one go and
--- on disk when this returns true. Returns true, or nil, err (kind "io").
function Journal:record(list)
  if not self.w then error("attempt to use a closed journal", 2) end
  local t = now_utc()
  local lines = {}
  for i, item in ipairs(list) do
    local e = item.entry
    if not M.OUTCOMES[item.outcome] then
      error("bad outcome '" .. tostring(item.outcome) .. "' for the journal", 2)
    end
    lines[i] = line(M.FIELDS, { time = t, outcome = item.outcome, path = M.key(e.path, self.cwd), size = e.size,
      mtime = e.mtime, sop_instance_uid = e.sop_instance_uid, study_uid = e.study_uid,
      reason = item.reason })
  end
  if #lines == 0 then return true end
  return self.w:append(table.concat(lines))
end

--- Releases the file and its lock. Safe to call twice.
function Journal:close()
  if self.w then
    self.w:close()
    self.w = nil
  end
  return true
end

return M
