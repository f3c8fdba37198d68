-- SPDX-License-Identifier: MIT
-- store:store(files, opts): the DICOM-aware workflow. Files are probed in C, checked, grouped
-- into multipart/related requests streamed from disk, sent with up to `concurrency` requests in
-- flight on the client's session (client:start, poll, finish), retried when the failure is
-- transient (healthcare.retry), and every instance is accounted for from the server's answer (a
-- 200 alone proves nothing). A run is a Batch: a Source hands out groups of files, and the
-- Batch's methods share the run's state (report, requests in flight, retries waiting) through
-- self.
local core = require "healthcare.core"
local dicomjson = require "healthcare.dicomweb.dicomjson"
local errors = require "healthcare.errors"
local files = require "healthcare.dicomweb.files"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local overwrite = require "healthcare.dicomweb.overwrite"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local stow = require "healthcare.dicomweb.stow"
local util = require "healthcare.util"

local M = {}

-- Defaults, written once (README "Storing files" explains them).
-- 8 MiB per request. Google ends a Store request after one hour, so any size up to a few GB
-- would do there; what decides is overlap. Servers that read a whole request before storing it
-- (Orthanc) sit idle while a request uploads and the client waits while they store: small
-- requests with 4 in flight keep both busy. bench/README.md measured the 0.5 MB corpus into
-- Orthanc at 244 MB/s with 8 MiB requests against 108 MB/s with 256 MiB (curl, one file per
-- request: 195), and no loss into a streaming sink. It also bounds what one failure re-sends.
-- 500 instances per request keeps tiny instances (8 KB: 4 MB a request) sharing round trips and
-- the answer small. An instance larger than max_request_bytes is sent alone.
M.DEFAULTS = {
  max_request_bytes = 8 * 1024 * 1024,
  max_request_instances = 500,
  concurrency = 4,
}
-- Seconds the requests in flight get to finish after an interrupt (a second Ctrl-C ends at once).
M.INTERRUPT_GRACE = 10
M.RETRY_DEFAULTS = retry.DEFAULTS
M.OPTIONS = {
  "study_uid", "concurrency", "journal", "on_progress", "max_request_bytes",
  "max_request_instances", "retry", "shard", "on_instance", "keep_stored", "overwrite",
}
-- Old spellings still taken (README "Lua API": deprecated).
M.ALIASES = { max_instances_per_request = "max_request_instances" }
local OPTION_TYPES = {
  study_uid = "string", concurrency = "number", journal = "string", on_progress = "function",
  max_request_bytes = "number", max_request_instances = "number", shard = "string|table",
  on_instance = "function", keep_stored = "boolean", overwrite = "boolean",
}

local PART_HEADERS = "Content-Type: " .. media.DICOM .. "\r\n"

local function entry_of(f, probe)
  return { path = f.path, rel = f.rel, size = f.size, mtime = f.mtime, mtime_nsec = f.mtime_nsec,
    dev = f.dev, ino = f.ino, alone = f.alone,
    sop_instance_uid = probe and probe.sop_instance_uid, study_uid = probe and probe.study_uid,
    series_uid = probe and probe.series_uid, sop_class_uid = probe and probe.sop_class_uid }
end

local function record(e, reason, extra)
  local r = { path = e.path, sop_instance_uid = e.sop_instance_uid, study_uid = e.study_uid, reason = reason }
  if extra then for k, v in pairs(extra) do r[k] = v end end
  return r
end

-- ---- the Source: files in, groups of checked instances out --------------------------------------

local Source = {}
Source.__index = Source

-- report: the run's (skipped and already stored files go there); journal: the run's, or nil;
-- fail(e, reason): records a file that cannot be sent as failed (the Batch's fail_group).
local function new_source(inputs, opts, report, journal, fail)
  return setmetatable({
    it = files.iterate(inputs), opts = opts, report = report, journal = journal, fail = fail,
    pending = nil,        -- an entry that did not fit in the previous group
    exhausted = false,
    -- sizes of the regular files skipped or already stored, so that a progress display can
    -- reach 100% of the bytes it counted up front
    bytes_not_sent = 0,
  }, Source)
end

function Source:skip(e, reason)
  local report = self.report
  report.skipped[#report.skipped + 1] = record(e, reason)
  report.counts.skipped = report.counts.skipped + 1
  self.bytes_not_sent = self.bytes_not_sent + (e.size or 0)
end

-- What becomes of one file: an entry to send, or nil (skipped, failed, already stored, another
-- shard's).
function Source:take(f)
  local opts, report = self.opts, self.report
  if opts.shard and not opts.shard.includes(f.rel) then
    return nil -- another machine's share: not ours to report
  elseif f.skip then
    return self:skip(f, f.skip)
  elseif f.fail then
    return self.fail(f, f.fail)
  end
  if self.journal and self.journal:is_stored(f) then
    report.counts.already_stored = report.counts.already_stored + 1
    if opts.keep_stored then
      -- the UIDs are read back from the journal's line only when the report lists the file
      local done = self.journal:lookup(f) or f
      report.already_stored[#report.already_stored + 1] = record(done, "stored in an earlier run", { path = f.path })
    end
    self.bytes_not_sent = self.bytes_not_sent + (f.size or 0)
    return nil
  end
  local probe, perr = core.dicom_probe(f.path)
  if not probe then
    -- not DICOM: nothing to store; unreadable, cut short or malformed: an instance not stored
    if files.not_dicom(perr) then return self:skip(f, perr.message) end
    return self.fail(f, perr.message)
  end
  local e = entry_of(f, probe)
  e.size = probe.size or f.size
  if opts.study_uid and e.study_uid ~= opts.study_uid then
    return self:skip(e, string.format("Study Instance UID %s does not match the requested study %s",
      tostring(e.study_uid ~= "" and e.study_uid or "(none)"), opts.study_uid))
  end
  return e
end

-- The next sendable entry, or nil when no file is left.
function Source:next_entry()
  while true do
    local f = self.it()
    if not f then return nil end
    local e = self:take(f)
    if e then return e end
  end
end

--- The next group of entries for one request, or nil. A file marked alone (f.alone, from the
--- iterator: healthcare watch's files one of whose requests was refused as a whole) goes in a
--- request of its own.
function Source:next_group()
  local opts = self.opts
  local group, bytes, uids = {}, 0, {}
  while #group < opts.max_request_instances do
    local e = self.pending or self:next_entry()
    self.pending = nil
    if not e then self.exhausted = true break end
    -- Two files with one SOP Instance UID in one request cannot be told apart in the answer.
    if uids[e.sop_instance_uid] or (#group > 0 and (e.alone or bytes + e.size > opts.max_request_bytes)) then
      self.pending = e
      break
    end
    uids[e.sop_instance_uid] = true
    group[#group + 1] = e
    bytes = bytes + e.size
    if e.alone then break end
  end
  if #group == 0 then return nil end
  return { entries = group, bytes = bytes, attempts = 0 }
end

-- Each file goes with what it was when probed (size, device, inode, mtime to the nanosecond): one
-- replaced or rewritten since, even within the same second, fails its request rather than being
-- sent under the UIDs the probe read. The body is built again for every attempt, so a retry
-- checks again.
local function multipart_body(group, boundary)
  local parts = {}
  for i, e in ipairs(group.entries) do
    parts[i] = { headers = PART_HEADERS, file = e.path, size = e.size, dev = e.dev, ino = e.ino, mtime = e.mtime,
      mtime_nsec = e.mtime_nsec }
  end
  return { multipart = { boundary = boundary, parts = parts } }
end

-- ---- the Batch: one run -----------------------------------------------------------------------

local Batch = {}
Batch.__index = Batch

-- Raises for a misuse of store:store (level 3 from here: the user's line); returns the options
-- with their current names.
local function check_call(store, inputs, opts)
  util.check_self(store, "healthcare.Store", "store", 3)
  util.check_arg(inputs, 1, "store", "string|table", 3, "path or list of paths")
  opts = util.check_options(opts, M.OPTIONS, "store", 3, M.ALIASES)
  for k, v in pairs(opts) do
    if OPTION_TYPES[k] then util.check_option(v, k, "store", OPTION_TYPES[k], 3) end
  end
  for _, k in ipairs({ "concurrency", "max_request_bytes", "max_request_instances" }) do
    util.check_number(opts[k], k, "store", "whole >= 1", 3)
  end
  retry.check(opts.retry, "store", 3)
  return opts
end

-- A run's options: defaults filled in, the shard parsed, the study UID checked. Or nil, err.
local function run_options(store, opts)
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  -- keep_stored = false: a migration of millions of files keeps counts, not a record per file
  -- (about 1 KB each); what failed, what was skipped and stored files with a warning are kept.
  if o.keep_stored == nil then o.keep_stored = true end
  o.concurrency = opts.concurrency or store.client.concurrency or M.DEFAULTS.concurrency
  if o.study_uid ~= nil and not names.valid_uid(o.study_uid) then
    return nil, errors.new("usage", "invalid study UID '" .. tostring(o.study_uid) .. "'")
  end
  if o.shard then
    local s, serr = require("healthcare.dicomweb.shard").parse(o.shard)
    if not s then return nil, serr end
    o.shard = s
  end
  return o
end

--- Instances an earlier run journaled as "sending" when it was killed (journal:in_flight): the
--- server is asked, one instance search per study, which of them it lists (those it does not list
--- are sent again, not read back), and those listed are read back and compared with the files
--- (read_back.read_back_all: a series whole where they are most of it, else by their UIDs,
--- `concurrency` at a time); those equal are journaled as
--- stored (and so not sent again), the others are sent as usual. A listed UID alone proves
--- nothing: the server may hold other bytes under it, and the request in flight may have been
--- refused for that (409), so such a file is sent again and the answer decides. Under overwrite
--- none is asked: a listed UID may be the conflicting instance the run is to replace. Returns
--- { in_flight = n, found = n, error = message or nil }: a failed search sends the studies not
--- yet asked about (a duplicate of the same bytes is harmless, a loss is not); or nil, err when
--- the journal cannot be read or written.
--- retry_opts: the run's `retry` (the searches' and read-backs' attempts); concurrency: the
--- run's (default: the client's, else DEFAULTS').
function M.settle_in_flight(store, journal, overwrite_run, retry_opts, concurrency)
  local list, err = journal:in_flight()
  if not list then return nil, err end
  local result = { in_flight = #list, found = 0 }
  if #list == 0 or overwrite_run then return result end
  local verify = require "healthcare.dicomweb.verify"
  local by_study, studies = {}, {}
  for _, e in ipairs(list) do
    if names.valid_uid(e.study_uid) and names.valid_uid(e.sop_instance_uid) then
      if not by_study[e.study_uid] then
        by_study[e.study_uid] = {}
        studies[#studies + 1] = e.study_uid
      end
      table.insert(by_study[e.study_uid], e)
    end
  end
  -- first every search (a few requests), then the read-backs of all studies side by side
  local listed_ones, series_counts = {}, {}
  for _, study in ipairs(studies) do
    local listed, lerr = verify.listed_in(store, study, { retry = retry_opts })
    if not listed then
      result.error = lerr.message
      break
    end
    for _, series in pairs(listed) do
      if series ~= true then series_counts[series] = (series_counts[series] or 0) + 1 end
    end
    for _, e in ipairs(by_study[study]) do
      if listed[e.sop_instance_uid] and names.valid_uid(e.series_uid) then listed_ones[#listed_ones + 1] = e end
    end
  end
  local held, rerr = require("healthcare.dicomweb.read_back").read_back_all(store, listed_ones,
    { retry = retry_opts, concurrency = concurrency or store.client.concurrency or M.DEFAULTS.concurrency,
      series_counts = series_counts })
  result.error = result.error or rerr
  local ok, jerr = journal:mark_stored(held)
  if not ok then return nil, jerr end
  result.found = #held
  return result
end

-- A run of store(inputs, opts) on store, ready to go; or nil, err (a bad option value, a
-- journal that cannot be used).
function Batch.new(store, inputs, opts)
  local o, oerr = run_options(store, opts)
  if not o then return nil, oerr end
  local url, uerr = route.url(store, "POST", o.study_uid and ("studies/" .. o.study_uid) or "studies")
  if not url then return nil, uerr end
  local report = { stored = {}, already_stored = {}, failed = {}, skipped = {}, bytes = 0,
    seconds = 0, requests = 0, retries = 0, sent_alone = 0,
    counts = { stored = 0, already_stored = 0, failed = 0, skipped = 0 } }
  if o.overwrite then -- only then: the report of a run without it stays as it was
    report.replaced, report.counts.replaced = {}, 0
  end
  local journal
  if o.journal then
    local jerr
    journal, jerr = require("healthcare.dicomweb.journal").open(o.journal, report,
      { store = store.name, shard = o.shard and tostring(o.shard) })
    if not journal then return nil, jerr end
    local settled, serr = M.settle_in_flight(store, journal, o.overwrite, o.retry, o.concurrency)
    if not settled then
      journal:close()
      return nil, serr
    end
    report.journal.in_flight = settled
  end
  local b = setmetatable({
    store = store, client = store.client, opts = o, report = report, journal = journal,
    policy = retry.new(retry.DEFAULTS, o.retry, store.client.retry),
    url = url,
    t0 = core.now(),
    inflight = {},      -- client request -> group
    ninflight = 0,
    waiting = {},       -- groups due for a retry: { group, due }
    progress = { files_done = 0, bytes_done = 0 },
    stopping = nil,     -- core.now() when the run began to stop (interrupt, on_progress false)
    conflicts = {},     -- entries answered "already exists with other bytes", to replace (overwrite)
  }, Batch)
  b.source = new_source(inputs, o, report, journal, function(e, reason)
    b:fail_group({ entries = { e } }, reason)
  end)
  return b
end

-- Records the outcome of entries (all of the group's by default) in the report and journal.
function Batch:finish_group(group, outcome_of, entries)
  local o = self.opts
  local recs, bytes = {}, 0
  for _, e in ipairs(entries or group.entries) do
    local oc = outcome_of(e)
    if o.overwrite and overwrite.is_conflict(oc) then
      -- replaced once the run's requests are done (Batch:replace_conflicts), recorded then
      self.conflicts[#self.conflicts + 1] = e
    else
      bytes = bytes + (e.size or 0)
      local r = self:count_outcome(e, oc)
      recs[#recs + 1] = { entry = e, outcome = oc.outcome, reason = oc.reason }
      if o.on_instance then o.on_instance(r, oc.outcome) end
    end
  end
  if self.journal then
    local ok, jerr = self.journal:record(recs)
    if not ok then error(jerr) end
  end
  self.progress.files_done = self.progress.files_done + #recs
  self.progress.bytes_done = self.progress.bytes_done + bytes
end

-- The outcome oc of entry e counted in the report; returns the record.
function Batch:count_outcome(e, oc)
  local report, o = self.report, self.opts
  local r
  if oc.outcome == "replaced" then
    r = record(e, nil)
    report.counts.replaced = report.counts.replaced + 1
    report.replaced[#report.replaced + 1] = r
    report.bytes = report.bytes + e.size
  elseif oc.outcome == "stored" then
    r = record(e, oc.warning, { warning = oc.warning })
    report.counts.stored = report.counts.stored + 1
    if o.keep_stored or oc.warning then report.stored[#report.stored + 1] = r end
    report.bytes = report.bytes + e.size
  else
    r = record(e, oc.reason, oc.scope and { scope = oc.scope })
    report.counts.failed = report.counts.failed + 1
    report.failed[#report.failed + 1] = r
  end
  return r
end

-- scope says why the whole request failed, for a caller that sends again later (healthcare
-- watch): "transient" (a retryable failure outlived its attempts: the server or network may come
-- back), "store" (HTTP 401, 403 or 404: the credential or the store's address, not the instance)
-- or "request" (the request as a whole was refused or could not be sent; the instance may be
-- innocent). A failure the server's answer gives per instance has no scope.
function Batch:fail_group(group, reason, scope)
  self:finish_group(group, function() return { outcome = "failed", reason = reason, scope = scope } end)
end

-- A usage error holds for every request (a credential refused to a proxy over plain http), and so
-- does a credential that cannot get a token for a reason another try will not change (refused,
-- not allowed, not there): the run stops with it instead of failing every file.
local function stop_on_usage(err)
  if err.kind == "usage" or (err.kind == "auth" and not err.retryable) then error(err, 0) end
end

function Batch:start(group)
  if self.journal and not group.journaled then
    -- before the request: a crash while it is in flight leaves these to be asked about on resume
    -- (path, size and mtime only: a resume reads the UIDs of the few in flight from the files,
    -- and every file's journal is about a third smaller for it)
    local recs = {}
    for i, e in ipairs(group.entries) do
      recs[i] = { entry = { path = e.path, size = e.size, mtime = e.mtime }, outcome = "sending" }
    end
    local ok, jerr = self.journal:record(recs)
    if not ok then error(jerr) end
    group.journaled = true
  end
  group.attempts = group.attempts + 1
  group.boundary = group.boundary or ("healthcare-" .. core.random_hex(16))
  group.first_started = group.first_started or core.now()
  local request, err = self.client:start {
    method = "POST",
    url = self.url,
    headers = { "Content-Type: " .. media.multipart(media.DICOM) .. "; boundary=" .. group.boundary,
      "Accept: " .. stow.ACCEPT },
    body = multipart_body(group, group.boundary),
  }
  if not request then
    stop_on_usage(err)
    return self:fail_group(group, err.message, err.retryable and "transient" or "request")
  end
  self:track(request, group)
end

-- A request in flight for group (counted in the report).
function Batch:track(request, group)
  self.report.requests = self.report.requests + 1
  self.inflight[request] = group
  self.ninflight = self.ninflight + 1
end

function Batch:schedule_retry(group, err)
  local wait, why = self.policy:next_wait(group.attempts, group.first_started, err.retry_after)
  if not wait then
    -- A wait that would end past the deadline is not taken: failing now lets the caller (or a
    -- resumed run) decide, instead of sleeping for an attempt that is not allowed anyway.
    if why == "deadline" then
      return self:fail_group(group, string.format("%s (after %d attempts; the next would start past the %g s retry "
        .. "deadline)", err.message, group.attempts, self.policy.deadline), "transient")
    end
    return self:fail_group(group, string.format("%s (after %d attempts)", err.message, group.attempts), "transient")
  end
  self.report.retries = self.report.retries + 1
  self.waiting[#self.waiting + 1] = { group = group, due = core.now() + wait }
end

-- What the server said of each instance of group: recorded; the unlisted ones sent again alone.
function Batch:record_answer(group, answer)
  local ds = answer.json
  if not ds then
    local perr
    ds, perr = dicomjson.from_xml(answer.body)
    if not ds then return self:fail_group(group, perr, "request") end
  end
  local outcomes = dicomjson.outcomes(ds)
  -- An instance the answer does not mention may never have been read: Orthanc stops at a part
  -- it cannot parse and answers 400 for the request, listing only what it stored before. Each
  -- unlisted instance is sent again alone, so that one bad file costs only itself.
  if #group.entries > 1 then
    local listed, unlisted = {}, {}
    for _, e in ipairs(group.entries) do
      local list = outcomes[e.sop_instance_uid] and listed or unlisted
      list[#list + 1] = e
    end
    if #unlisted > 0 then
      self:finish_group(group, function(e) return outcomes[e.sop_instance_uid] end, listed)
      for _, e in ipairs(unlisted) do
        local alone = { entries = { e }, bytes = e.size, attempts = 0, journaled = group.journaled }
        self.waiting[#self.waiting + 1] = { group = alone, due = core.now() }
      end
      self.report.sent_alone = self.report.sent_alone + #unlisted
      return
    end
  end
  self:finish_group(group, function(e)
    return outcomes[e.sop_instance_uid] or {
      outcome = "failed",
      reason = string.format("not in response (HTTP %d)", answer.status) }
  end)
end

local STORE_REFUSALS = { [401] = true, [403] = true, [404] = true }

-- A request poll() returned: its answer read and recorded, or a retry scheduled.
function Batch:handle(request, group)
  local res, err = self.client:finish(request)
  if res == false then
    -- sent again with a fresh token after a 401: not counted as a retry
    return self:track(request, group)
  end
  local answer
  if res then
    answer, err = stow.read_store_response(res, "StoreInstances", self.client)
  end
  if not answer then
    stop_on_usage(err)
    if err.retryable then return self:schedule_retry(group, err) end
    return self:fail_group(group, err.message, STORE_REFUSALS[err.http_status] and "store" or "request")
  end
  self:record_answer(group, answer)
end

-- Calls on_progress with the run's counters; returning false stops the run (as an interrupt).
function Batch:report_progress()
  local o, report = self.opts, self.report
  if not o.on_progress then return end
  local sending = 0
  for request in pairs(self.inflight) do sending = sending + (request:progress()) end
  local go_on = o.on_progress {
    files_done = self.progress.files_done, bytes_done = self.progress.bytes_done,
    bytes_sending = sending, bytes_not_sent = self.source.bytes_not_sent,
    stored = report.counts.stored, failed = report.counts.failed,
    skipped = report.counts.skipped, already_stored = report.counts.already_stored,
    in_flight = self.ninflight, retries = report.retries, seconds = core.now() - self.t0,
  }
  if go_on == false and not self.stopping then
    self.stopping = core.now()
    report.stopped = true
  end
end

-- Starts what may start now: retries that are due first, then new groups.
function Batch:launch()
  local now, waiting = core.now(), self.waiting
  for i = #waiting, 1, -1 do
    if self.ninflight < self.opts.concurrency and waiting[i].due <= now then
      self:start(table.remove(waiting, i).group)
    end
  end
  while self.ninflight < self.opts.concurrency and not self.source.exhausted do
    local g = self.source:next_group()
    if not g then break end
    self:start(g)
  end
end

-- Set by SIGINT/SIGTERM once the caller called core.trap_interrupts() (the CLI does).
local interrupted = core.interrupted or function() return false end

-- One turn of the loop; false when the run is over. Once stopping, no new request starts and
-- those in flight get INTERRUPT_GRACE seconds to finish, then are abandoned.
function Batch:step()
  local now = core.now()
  if not self.stopping and interrupted() then
    self.stopping = now
    self.report.interrupted = true
  end
  if self.stopping then
    if self.ninflight == 0 or now - self.stopping >= M.INTERRUPT_GRACE then return false end
  else
    self:launch()
    if self.ninflight == 0 and #self.waiting == 0 and self.source.exhausted then return false end
  end
  local timeout = 0.2
  if not self.stopping then
    for _, w in ipairs(self.waiting) do timeout = math.min(timeout, math.max(0, w.due - now)) end
  end
  if self.ninflight > 0 then
    for _, request in ipairs(self.client:poll(timeout)) do
      local g = self.inflight[request]
      self.inflight[request] = nil
      self.ninflight = self.ninflight - 1
      self:handle(request, g)
    end
  else
    util.sleep(timeout)
  end
  self:report_progress()
  return true
end

-- Requests in flight and retries waiting when the run stops: not in the report's lists nor in
-- the journal, so a resume sends them again. Returns how many instances they held.
function Batch:abandon()
  local n = 0
  for request, g in pairs(self.inflight) do
    request:close()
    n = n + #g.entries
  end
  self.inflight, self.ninflight = {}, 0
  for _, w in ipairs(self.waiting) do n = n + #w.group.entries end
  return n
end

-- The conflicts of the run, each replaced (overwrite.replace) and recorded as "replaced" or
-- "failed"; an interrupt leaves the rest out of the report and the journal (a resume sends
-- them again). Returns how many were left.
function Batch:replace_conflicts()
  local list = self.conflicts
  self.conflicts = {}
  for i, e in ipairs(list) do
    if self.stopping or interrupted() then
      if interrupted() then self.report.interrupted = true end
      return #list - i + 1
    end
    local ok, why = overwrite.replace(self.store, e)
    self:finish_group({ entries = { e } }, function()
      return ok and { outcome = "replaced" } or { outcome = "failed", reason = why }
    end)
    self:report_progress()
  end
  return 0
end

--- Runs the workflow. Returns the report (see README "Storing files"), or nil, err, report (the
--- partial report: what finished is also in the journal) when a callback raised an error value
--- or the journal could not be written. Any other error raised by a callback is raised again.
function Batch:run()
  local left = 0
  local ok, perr = pcall(function()
    while self:step() do end
    left = self:replace_conflicts()
  end)
  if self.journal then self.journal:close() end
  local report = self.report
  report.seconds = core.now() - self.t0
  if not ok then
    self:abandon()
    if errors.is(perr) then return nil, perr, report end
    error(perr, 0)
  end
  if self.stopping or left > 0 then report.abandoned = self:abandon() + left end
  self:report_progress()
  return report
end

-- healthcare.dicomweb.watch runs a Batch of its own, feeding its Source as files arrive.
M.Batch = Batch

--- store:store(files, opts): see Batch:run and README "Storing files".
function M.store(store, inputs, opts)
  opts = check_call(store, inputs, opts)
  local batch, err = Batch.new(store, inputs, opts)
  if not batch then return nil, err end
  local report, rerr, partial = batch:run()
  return report, rerr, partial
end

return M
