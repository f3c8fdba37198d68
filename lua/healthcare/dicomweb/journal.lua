-- SPDX-License-Identifier: MIT
-- The journal of a migration (store:store{journal = FILE}, `healthcare store --journal FILE`):
-- an append-only file of JSON lines that says what became of every instance sent, so that a
-- run killed at any moment can be started again and skip what is already stored.
--
-- Lines, format 2 (README "Migrating an archive"):
--   {"journal":"healthcare","version":2,"time":...,"store":...,"shard":...}   one per run
--   {"time":...}                          before records, whenever the second has changed
--   ["sending",path,size,mtime]          one per instance, before its request (before 2026-12-03
--                                        with the two UIDs as well: still read)
--   ["stored"|"failed",path,size,mtime,sop_instance_uid,study_uid(,reason,mtime_nsec)]  one per
--                                        instance (mtime_nsec since 2026-12-03: older lines, and
--                                        those of a file whose nanoseconds are not known, are
--                                        matched by whole seconds)
-- A record is an array in the order of M.FIELDS: no field name repeated on every line (format 1
-- wrote each record as an object with its names and its own time; it is still read, and a
-- journal begun by an older version goes on in format 2). A time line gives the time of the
-- records after it.
-- time is UTC (ISO 8601); path is absolute (M.key); size and mtime are what the file had when
-- it was read; reason is why it failed, or the server's warning for a stored one.
--
-- The lines of one finished request are written in one write and fsynced (in C) before the
-- request counts as done. A crash can leave at most a torn last line: it is cut off when the
-- journal is opened again. The latest line of a path wins: a path recorded as stored with the
-- size and mtime it has now is skipped without being read; everything else is sent again.
-- The instances of a request are journaled as "sending" (one write) before it starts: a crash
-- between "stored by the server" and "written here" leaves them so, and a resume asks the
-- server which of them it holds (Journal:in_flight, mark_stored) instead of sending them twice.
-- One process at a time: the file is locked.
-- Since a "stored" line makes a file be skipped unread, only a journal that this user alone
-- could have written is used, and it is read through the descriptor those checks were made on.
local core = require "healthcare.core"
local lfs = require "lfs"
local cjson = require("cjson.safe").new()
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

M.MAGIC = "healthcare"
M.VERSION = 2
-- The outcomes a record may have, the one table to extend: code is the outcome's number in the
-- in-memory index (core.journal_index; unique, 1 to 255, never reused); done: a file whose latest
-- line has this outcome, with the size and mtime it has now, is skipped on resume; counted_as:
-- the total of report.journal it adds to (a new name there becomes a new total). A new outcome
-- is one line here: format 2 reads and writes any outcome of this table.
M.OUTCOMES = {
  stored = { code = 1, done = true, counted_as = "earlier_stored" },
  failed = { code = 2, done = false, counted_as = "earlier_failed" },
  -- stored over a conflicting instance (store --overwrite: deleted, stored again, read back)
  replaced = { code = 3, done = true, counted_as = "earlier_stored" },
  -- in a request whose answer a crash kept from being journaled: the server may hold it or not
  sending = { code = 4, done = false, counted_as = "earlier_in_flight" },
}
local SENDING = M.OUTCOMES.sending.code
local OUTCOME_OF_CODE = {}
for name, o in pairs(M.OUTCOMES) do OUTCOME_OF_CODE[o.code] = name end
-- Written once: the order of the fields of a record (people read journals with grep and jq).
-- mtime_nsec came last, after reason: versions that read seven fields read these lines as before.
M.FIELDS = { "outcome", "path", "size", "mtime", "sop_instance_uid", "study_uid", "reason", "mtime_nsec" }

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

-- One JSON object line with the fields in the given order; nil values are left out.
local function object_line(fields, t)
  local out = {}
  for _, k in ipairs(fields) do
    local v = t[k]
    if v ~= nil then out[#out + 1] = encode(k) .. ":" .. encode(v) end
  end
  return "{" .. table.concat(out, ",") .. "}\n"
end

-- One record line: the values of M.FIELDS in order, nil as null, trailing nils left out.
local function record_line(t)
  local out, last = {}, 0
  for i, k in ipairs(M.FIELDS) do
    local v = t[k]
    if v ~= nil then
      out[i], last = encode(v), i
    else
      out[i] = "null"
    end
  end
  return "[" .. table.concat(out, ",", 1, last) .. "]\n"
end

local function usage(fmt, ...)
  return nil, errors.new("usage", string.format(fmt, ...))
end

local function is_integer(v)
  return type(v) == "number" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53
end

-- The outcome, path, size, mtime and mtime's nanoseconds (or nil) of a decoded record line of
-- either format, or nil when it is not a record (no known outcome or no path). A size or mtime
-- that is not an integer is kept as -1 and 0: the record counts, but no file (whose size is never
-- -1) matches it.
local function record_key(rec)
  local outcome, path, size, mtime, nsec
  if rec[1] ~= nil then   -- format 2: an array
    outcome, path, size, mtime, nsec = rec[1], rec[2], rec[3], rec[4], rec[8]
  else                    -- format 1: an object (never with nanoseconds)
    outcome, path, size, mtime = rec.outcome, rec.path, rec.size, rec.mtime
  end
  if M.OUTCOMES[outcome] and type(path) == "string" then
    if not (is_integer(size) and is_integer(mtime)) then size, mtime = -1, 0 end
    if not (is_integer(nsec) and nsec >= 0 and nsec <= 999999999) then nsec = nil end
    return outcome, path, size, mtime, nsec
  end
  return nil
end

-- The whole record of a decoded record line ({ outcome, path, size, mtime, sop_instance_uid,
-- study_uid, reason }, JSON nulls as nil).
local function record_of(rec)
  local r = {}
  for i, k in ipairs(M.FIELDS) do
    local v
    if rec[1] ~= nil then v = rec[i] else v = rec[k] end
    if v ~= cjson.null then r[k] = v end
  end
  return r
end

-- Whether a decoded line is a time line ({"time":...} alone).
local function is_time_line(rec)
  return type(rec) == "table" and type(rec.time) == "string" and next(rec, next(rec)) == nil
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
  local index, outcomes, in_flight = j.index, M.OUTCOMES, j.in_flight_keys
  while true do
    -- l: a whole line and its offset; false at the end, with where the whole lines end and the
    -- bytes after them (torn: the crash came in the middle of that line)
    local l, offset, torn = w:read_line()
    if l == nil then return nil, offset end
    if not l then return offset, torn end
    local rec = cjson.decode(l)
    local outcome, key, size, mtime, nsec
    if type(rec) == "table" then outcome, key, size, mtime, nsec = record_key(rec) end
    if outcome then
      index:put(key, size, mtime, offset, outcomes[outcome].code, nsec)
      -- kept while latest: a few requests' worth, not one per file of the journal
      if outcome == "sending" then in_flight[key] = true elseif in_flight[key] then in_flight[key] = nil end
    elseif type(rec) == "table" and rec.journal == M.MAGIC then
      if is_integer(rec.version) and rec.version > M.VERSION then
        return usage("journal '%s' was written by a newer version of this program (format %d; this one"
          .. " reads up to %d): resume with that version, or use another journal file", path, rec.version, M.VERSION)
      end
      j.earlier_runs = j.earlier_runs + 1
      if type(rec.store) == "string" then j.stores[rec.store] = true end
    elseif not is_time_line(rec) then
      j.ignored_lines = j.ignored_lines + 1
    end
  end
end

--- The key of a file in the journal: its absolute path (against cwd when relative), with "."
--- segments and repeated slashes removed, so that a run resumed from another directory, or
--- with the folder named another way, finds what an earlier run stored. ".." is kept: through
--- a symbolic link it does not mean the parent.
function M.key(path, cwd)
  -- Most paths are already keys (every one a directory walk gives for an absolute folder):
  -- a resume looks up every file, so those skip the four substitutions.
  if path:byte(1) == 47 and not path:find("//", 1, true) and not path:find("/./", 1, true)
      and path:sub(-2) ~= "/." and (path:byte(-1) ~= 47 or #path == 1) then
    return path
  end
  if path:sub(1, 1) ~= "/" then path = cwd .. "/" .. path end
  path = path:gsub("/+", "/")
  repeat
    local n
    path, n = path:gsub("/%./", "/")
  until n == 0
  path = path:gsub("/%.$", "")
  if path == "" then path = "/" end   -- "/." is the root
  if #path > 1 then path = path:gsub("/$", "") end
  return path
end

-- Closes what open() made so far and returns nil, err.
local function abandon(j, err)
  j.w:close()
  j.index:close()
  return nil, err
end

--- Opens (creating it if needed) and locks the journal at path, reads what earlier runs
--- recorded (either format) and starts this run's part (format 2). report (may be nil) gets
--- report.journal = { path, earlier_runs, earlier_stored, earlier_failed, ignored_lines,
--- torn_bytes }, the totals of earlier runs (distinct paths, latest outcome). opts: { store =
--- name or URL the run sends to (a journal of another store is refused), shard = "K/N" (noted) }.
--- Memory: a fixed 44 to 48 bytes per distinct path journaled (core.journal_index), whatever
--- the path's length; the UIDs are read back from the file when lookup() asks for them.
--- Returns the journal, or nil, err (kind "io": cannot open, read, write or lock, or refused
--- with status "unsafe" because someone else could have written it: a symbolic link, not a
--- regular file, another user's, or writable by group or others (core.appender); kind "usage":
--- not a journal, one written for another store, or by a newer version).
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
  local j = setmetatable({ path = path, w = w, index = core.journal_index(), stores = {}, earlier_runs = 0,
    ignored_lines = 0, cwd = lfs.currentdir() or "/", in_flight_keys = {} }, Journal)
  local good_end, torn = load(j, w, path)
  if not good_end then return abandon(j, torn) end
  if opts.store then
    for s in pairs(j.stores) do
      if s ~= opts.store then
        return abandon(j, select(2, usage("journal '%s' records a migration to %s, not to %s: use another"
          .. " journal file", path, s, opts.store)))
      end
    end
  end
  if torn > 0 then
    local ok, terr = w:truncate(good_end)
    if not ok then return abandon(j, terr) end
  end
  j.last_time = now_utc()
  local header = object_line({ "journal", "version", "time", "store", "shard" }, {
    journal = M.MAGIC, version = M.VERSION, time = j.last_time, store = opts.store,
    shard = opts.shard and tostring(opts.shard) or nil })
  local ok, aerr = w:append(header)
  if not ok then return abandon(j, aerr) end
  j.size = good_end + #header -- where the next line starts (mark_stored indexes its lines)
  j.summary = { path = path, earlier_runs = j.earlier_runs, ignored_lines = j.ignored_lines, torn_bytes = torn }
  for _, o in pairs(M.OUTCOMES) do j.summary[o.counted_as] = 0 end
  for code, n in pairs(j.index:counts()) do
    local field = M.OUTCOMES[OUTCOME_OF_CODE[code]].counted_as
    j.summary[field] = j.summary[field] + n
  end
  if report then report.journal = j.summary end
  return j
end

-- The index's entry for entry = { path, size, mtime[, mtime_nsec] } when an earlier run's latest
-- line for its path has an outcome that is done, with the same size and mtime: its offset, or
-- nil. The nanoseconds are compared when both the line and the entry have them: a file rewritten
-- with other bytes of the same size in the second it was stored is not taken for the one stored.
local function done_at(self, entry)
  if not self.w then error("attempt to use a closed journal", 3) end
  local code, size, mtime, offset, nsec = self.index:get(M.key(entry.path, self.cwd))
  if code and M.OUTCOMES[OUTCOME_OF_CODE[code]].done and size == entry.size and mtime == entry.mtime
      and (nsec == nil or entry.mtime_nsec == nil or nsec == entry.mtime_nsec) then
    return offset
  end
  return nil
end

--- entry = { path, size, mtime[, mtime_nsec] }. Whether an earlier run stored this path with the
--- same size and mtime (and it is to be skipped), without reading the journal again.
function Journal:is_stored(entry)
  return done_at(self, entry) ~= nil
end

--- entry = { path, size, mtime }. The record of an earlier run that stored this path with the
--- same size and mtime ({ path, size, mtime, sop_instance_uid, study_uid }, read back from its
--- line in the journal), or nil; or nil, err when that line cannot be read again.
function Journal:lookup(entry)
  local offset = done_at(self, entry)
  if not offset then return nil end
  local l, err = self:line_at(offset)
  if not l then return nil, err end
  local r = record_of(cjson.decode(l) or {})
  return { path = entry.path, size = entry.size, mtime = entry.mtime,
    sop_instance_uid = r.sop_instance_uid, study_uid = r.study_uid }
end

-- The line of the journal that starts at offset (without its "\n"), or nil, err.
function Journal:line_at(offset)
  local parts, want = {}, 1024
  while true do
    local s, err = self.w:read(offset, want)
    if not s then return nil, err end
    local nl = s:find("\n", 1, true)
    if nl or #s < want then
      parts[#parts + 1] = s:sub(1, (nl or #s + 1) - 1)
      return table.concat(parts)
    end
    parts[#parts + 1] = s
    offset, want = offset + #s, math.min(want * 4, 1024 * 1024)
  end
end

--- Appends one line per item of list = { { entry = { path, size, mtime, sop_instance_uid,
--- study_uid }, outcome = "stored" | "failed" (a name of M.OUTCOMES), reason = s or nil }, ... },
--- after a time line when the second has changed since the last one, written in one go and on
--- disk when this returns true. Returns true, or nil, err (kind "io").
function Journal:record(list)
  if not self.w then error("attempt to use a closed journal", 2) end
  if #list == 0 then return true end
  local lines, t = {}, now_utc()
  if t ~= self.last_time then lines[1] = object_line({ "time" }, { time = t }) end
  for _, item in ipairs(list) do
    local e = item.entry
    if not M.OUTCOMES[item.outcome] then
      error("bad outcome '" .. tostring(item.outcome) .. "' for the journal", 2)
    end
    lines[#lines + 1] = record_line({ outcome = item.outcome, path = M.key(e.path, self.cwd), size = e.size,
      mtime = e.mtime, sop_instance_uid = e.sop_instance_uid, study_uid = e.study_uid, reason = item.reason,
      mtime_nsec = e.mtime_nsec })
  end
  local text = table.concat(lines)
  local ok, err = self.w:append(text)
  if ok then self.last_time, self.size = t, self.size + #text end
  return ok, err
end

--- The files an earlier run journaled as "sending" and nothing after (a crash came while their
--- request was in flight) that still have the size and mtime recorded: { { path, size, mtime,
--- sop_instance_uid, study_uid, series_uid }, ... } (the UIDs read back from the file, the same
--- as it was sent; the first two from the line when it has them), or nil, err. A file whose UIDs
--- cannot be read has none: it is sent again.
function Journal:in_flight()
  if not self.w then error("attempt to use a closed journal", 2) end
  local list = {}
  for key in pairs(self.in_flight_keys) do
    local code, size, mtime, offset = self.index:get(key)
    local a = core.file_stat(key)
    if code == SENDING and a and a.mode == "file" and a.size == size and a.modification == mtime then
      local l, err = self:line_at(offset)
      if not l then return nil, err end
      local r = record_of(cjson.decode(l) or {})
      -- the Series Instance UID is never journaled, and a resume reads the instance back by it
      local info = core.dicom_probe(key)
      if info then
        if not (r.sop_instance_uid and r.study_uid) then
          r.sop_instance_uid = info.sop_instance_uid or info.media_sop_instance_uid
          r.study_uid = info.study_uid
        end
        r.series_uid = info.series_uid
      end
      list[#list + 1] = { path = key, size = size, mtime = mtime, mtime_nsec = a.mtime_nsec,
        sop_instance_uid = r.sop_instance_uid, study_uid = r.study_uid, series_uid = r.series_uid }
    end
  end
  table.sort(list, function(a, b) return a.path < b.path end)
  return list
end

--- Records entries (from in_flight) as "stored" (the server listed them) and makes this run
--- see them so: is_stored and lookup find them. Returns true, or nil, err (kind "io").
function Journal:mark_stored(entries)
  local start = self.size
  local list = {}
  for i, e in ipairs(entries) do list[i] = { entry = e, outcome = "stored" } end
  local ok, err = self:record(list)
  if not ok then return nil, err end
  -- the lines just written, after a time line or not: each one's offset from its length
  local offset = self.size
  for i = #entries, 1, -1 do
    local e = entries[i]
    local key = M.key(e.path, self.cwd)
    offset = offset - #record_line({ outcome = "stored", path = key, size = e.size, mtime = e.mtime,
      sop_instance_uid = e.sop_instance_uid, study_uid = e.study_uid, mtime_nsec = e.mtime_nsec })
    self.index:put(key, e.size, e.mtime, offset, M.OUTCOMES.stored.code, e.mtime_nsec)
    self.in_flight_keys[key] = nil
  end
  assert(offset >= start)
  return true
end

--- Releases the file, its lock and the index. Safe to call twice.
function Journal:close()
  if self.w then
    self.w:close()
    self.w = nil
    self.index:close()
  end
  return true
end

return M
