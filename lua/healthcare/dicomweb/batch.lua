-- SPDX-License-Identifier: MIT
-- store:store(files, opts): the DICOM-aware workflow. Files are probed in C, checked, grouped
-- into multipart/related requests streamed from disk, sent with up to `concurrency` requests in
-- flight on one libcurl multi session, retried when the failure is transient, and every
-- instance is accounted for from the server's answer (a 200 alone proves nothing).
local core = require "healthcare.core"
local dicomjson = require "healthcare.dicomweb.dicomjson"
local dicomweb = require "healthcare.dicomweb"
local errors = require "healthcare.errors"
local files = require "healthcare.dicomweb.files"
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
  max_instances_per_request = 500,
  concurrency = 4,
}
-- Seconds the requests in flight get to finish after an interrupt (a second Ctrl-C ends at once).
M.INTERRUPT_GRACE = 10
M.RETRY_DEFAULTS = { max_attempts = 5, initial = 1, multiplier = 2, max_delay = 60, deadline = 3600 }
M.OPTIONS = {
  "study_uid", "concurrency", "journal", "on_progress", "max_request_bytes",
  "max_instances_per_request", "retry", "shard", "on_instance", "keep_stored",
}

local PART_HEADERS = "Content-Type: application/dicom\r\n"

local function entry_of(f, probe)
  return { path = f.path, rel = f.rel, size = f.size, mtime = f.mtime, dev = f.dev, ino = f.ino,
    sop_instance_uid = probe and probe.sop_instance_uid, study_uid = probe and probe.study_uid,
    sop_class_uid = probe and probe.sop_class_uid }
end

local function record(e, reason, extra)
  local r = { path = e.path, sop_instance_uid = e.sop_instance_uid, study_uid = e.study_uid, reason = reason }
  if extra then for k, v in pairs(extra) do r[k] = v end end
  return r
end

--- A pipeline: pulls files, probes and checks them, and hands out groups ready to send.
local function new_source(inputs, opts, report, journal)
  local it = files.iterate(inputs)
  local pending = nil   -- an entry that did not fit in the previous group
  local shard = opts.shard
  -- bytes_not_sent: sizes of the regular files skipped or already stored, so that a progress
  -- display can reach 100% of the bytes it counted up front.
  local source = { exhausted = false, bytes_not_sent = 0 }

  local function skip(e, reason)
    report.skipped[#report.skipped + 1] = record(e, reason)
    report.counts.skipped = report.counts.skipped + 1
    source.bytes_not_sent = source.bytes_not_sent + (e.size or 0)
  end

  -- Next sendable entry, or nil when no file is left.
  local function next_entry()
    while true do
      local f = it()
      if not f then return nil end
      if shard and not shard.includes(f.rel) then -- luacheck: ignore 542
        -- another machine's share: not ours to report
      elseif f.skip then
        skip(f, f.skip)
      else
        local done = journal and journal:lookup(f)
        if done then
          report.counts.already_stored = report.counts.already_stored + 1
          if opts.keep_stored then
            report.already_stored[#report.already_stored + 1] =
              record(done, "stored in an earlier run", { path = f.path })
          end
          source.bytes_not_sent = source.bytes_not_sent + (f.size or 0)
        else
          local probe, perr = core.dicom_probe(f.path)
          if not probe then
            skip(f, perr.message)
          else
            local e = entry_of(f, probe)
            e.size = probe.size or f.size
            if opts.study_uid and e.study_uid ~= opts.study_uid then
              skip(e, string.format("Study Instance UID %s does not match the requested study %s",
                tostring(e.study_uid ~= "" and e.study_uid or "(none)"), opts.study_uid))
            else
              return e
            end
          end
        end
      end
    end
  end

  --- The next group of entries for one request, or nil.
  function source.next_group()
    local group, bytes, uids = {}, 0, {}
    while #group < opts.max_instances_per_request do
      local e = pending or next_entry()
      pending = nil
      if not e then source.exhausted = true break end
      -- Two files with one SOP Instance UID in one request cannot be told apart in the answer.
      if uids[e.sop_instance_uid] or (#group > 0 and bytes + e.size > opts.max_request_bytes) then
        pending = e
        break
      end
      uids[e.sop_instance_uid] = true
      group[#group + 1] = e
      bytes = bytes + e.size
    end
    if #group == 0 then return nil end
    return { entries = group, bytes = bytes, attempts = 0 }
  end

  return source
end

-- Each file goes with what it was when probed (size, device, inode, mtime): one replaced or
-- rewritten since fails its request rather than being sent under the UIDs the probe read. The
-- body is built again for every attempt, so a retry checks again.
local function multipart_body(group, boundary)
  local parts = {}
  for i, e in ipairs(group.entries) do
    parts[i] = { headers = PART_HEADERS, file = e.path, size = e.size, dev = e.dev, ino = e.ino, mtime = e.mtime }
  end
  return { multipart = { boundary = boundary, parts = parts } }
end

-- Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"), at least what the
-- server asked for.
local function backoff(retry, attempt, asked)
  local cap = math.min(retry.max_delay, retry.initial * retry.multiplier ^ (attempt - 1))
  -- OpenSSL's generator, not math.random: LuaJIT seeds that the same in every process, and
  -- shards retrying in step are what jitter is for.
  local d = tonumber(core.random_hex(4), 16) / 4294967296 * cap
  if asked and asked > d then d = math.min(asked, retry.max_delay) end
  return d
end

--- Runs the workflow. Returns the report (see README "Storing files").
function M.run(store, inputs, opts)
  util.check_options(opts, M.OPTIONS, "store", 3)
  opts = opts or {}
  local o = {}
  for k, v in pairs(M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  -- keep_stored = false: a migration of millions of files keeps counts, not a record per file
  -- (about 1 KB each); what failed, what was skipped and stored files with a warning are kept.
  if o.keep_stored == nil then o.keep_stored = true end
  o.concurrency = o.concurrency or (store.client.concurrency) or M.DEFAULTS.concurrency
  if o.study_uid ~= nil and not dicomweb.valid_uid(o.study_uid) then
    return nil, errors.new("usage", "invalid study UID '" .. tostring(o.study_uid) .. "'")
  end
  local retry = {}
  for k, v in pairs(M.RETRY_DEFAULTS) do retry[k] = v end
  for k, v in pairs(o.retry or store.client.retry or {}) do retry[k] = v end

  local report = { stored = {}, already_stored = {}, failed = {}, skipped = {}, bytes = 0,
    seconds = 0, requests = 0, retries = 0, sent_alone = 0,
    counts = { stored = 0, already_stored = 0, failed = 0, skipped = 0 } }
  if o.shard then
    local s, serr = require("healthcare.dicomweb.shard").parse(o.shard)
    if not s then return nil, serr end
    o.shard = s
  end
  local journal
  if o.journal then
    local jerr
    journal, jerr = require("healthcare.dicomweb.journal").open(o.journal, report,
      { store = store.name, shard = o.shard and tostring(o.shard) })
    if not journal then return nil, jerr end
  end

  local client = store.client
  local path = o.study_uid and ("studies/" .. o.study_uid) or "studies"
  local url = store.base_url .. "/" .. path
  local source = new_source(inputs, o, report, journal)
  local t0 = core.now()
  local inflight = {}      -- transfer -> group
  local ninflight = 0
  local waiting = {}       -- groups due for a retry: { group, due }
  local progress = { files_done = 0, bytes_done = 0 }

  -- Records the outcome of entries (all of the group's by default) in the report and journal.
  local function finish_group(group, outcome_of, entries)
    local recs, bytes = {}, 0
    for _, e in ipairs(entries or group.entries) do
      bytes = bytes + e.size
      local oc = outcome_of(e)
      local r
      if oc.outcome == "stored" then
        r = record(e, oc.warning, { warning = oc.warning })
        report.counts.stored = report.counts.stored + 1
        if o.keep_stored or oc.warning then report.stored[#report.stored + 1] = r end
        report.bytes = report.bytes + e.size
      else
        r = record(e, oc.reason)
        report.counts.failed = report.counts.failed + 1
        report.failed[#report.failed + 1] = r
      end
      recs[#recs + 1] = { entry = e, outcome = oc.outcome, reason = oc.reason }
      if o.on_instance then o.on_instance(r, oc.outcome) end
    end
    if journal then
      local ok, jerr = journal:record(recs)
      if not ok then error(jerr) end
    end
    progress.files_done = progress.files_done + #recs
    progress.bytes_done = progress.bytes_done + bytes
  end

  local function fail_group(group, reason)
    finish_group(group, function() return { outcome = "failed", reason = reason } end)
  end

  local function start(group)
    group.attempts = group.attempts + 1
    group.boundary = group.boundary or ("healthcare-" .. core.random_hex(16))
    group.started = core.now()
    group.first_started = group.first_started or group.started
    group.token_generation = client:token_generation()
    local t, err = client:start {
      method = "POST",
      url = url,
      headers = { 'Content-Type: multipart/related; type="application/dicom"; boundary=' .. group.boundary,
        "Accept: " .. dicomweb.ACCEPT },
      body = multipart_body(group, group.boundary),
    }
    if not t then
      -- A usage error holds for every request (a credential refused to a proxy over plain
      -- http): the run stops with it instead of failing every file.
      if err.kind == "usage" then error(err, 0) end
      fail_group(group, err.message)
      return
    end
    report.requests = report.requests + 1
    inflight[t] = group
    ninflight = ninflight + 1
  end

  local function schedule_retry(group, err)
    local elapsed = core.now() - group.first_started
    if group.attempts >= retry.max_attempts or elapsed >= retry.deadline then
      fail_group(group, string.format("%s (after %d attempts)", err.message, group.attempts))
      return
    end
    -- A wait that would end past the deadline is not taken: failing now lets the caller (or a
    -- resumed run) decide, instead of sleeping for an attempt that is not allowed anyway.
    local delay = backoff(retry, group.attempts, err.retry_after)
    if elapsed + delay >= retry.deadline then
      fail_group(group, string.format("%s (after %d attempts; the next would start past the %g s retry deadline)",
        err.message, group.attempts, retry.deadline))
      return
    end
    report.retries = report.retries + 1
    waiting[#waiting + 1] = { group = group, due = core.now() + delay }
  end

  local function handle(t, group)
    local res, err = client:finish(t, group.started)
    if res and res.status == 401 and client.credential.refreshable and not group.refreshed then
      -- An expired token: refresh once, send again; not counted as a retry.
      group.refreshed = true
      -- Requests that were in flight together all get their 401: only the first to come back
      -- drops the token; the others find a fresh one already there.
      if client:token_generation() == group.token_generation then client.credential:invalidate() end
      group.attempts = group.attempts - 1
      return start(group)
    end
    local answer
    if res then
      answer, err = dicomweb.read_store_response(res, "StoreInstances")
    end
    if not answer then
      if err.retryable then return schedule_retry(group, err) end
      return fail_group(group, err.message)
    end
    local ds = answer.json
    if not ds then
      local perr
      ds, perr = dicomjson.from_xml(answer.body)
      if not ds then return fail_group(group, perr) end
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
        finish_group(group, function(e) return outcomes[e.sop_instance_uid] end, listed)
        for _, e in ipairs(unlisted) do
          waiting[#waiting + 1] = { group = { entries = { e }, bytes = e.size, attempts = 0 }, due = core.now() }
        end
        report.sent_alone = report.sent_alone + #unlisted
        return
      end
    end
    finish_group(group, function(e)
      return outcomes[e.sop_instance_uid] or {
        outcome = "failed",
        reason = string.format("not in response (HTTP %d)", answer.status) }
    end)
  end

  local function report_progress()
    if not o.on_progress then return end
    local sending = 0
    for t in pairs(inflight) do sending = sending + (t:progress()) end
    o.on_progress {
      files_done = progress.files_done, bytes_done = progress.bytes_done,
      bytes_sending = sending, bytes_not_sent = source.bytes_not_sent,
      stored = report.counts.stored, failed = report.counts.failed,
      skipped = report.counts.skipped, already_stored = report.counts.already_stored,
      in_flight = ninflight, retries = report.retries, seconds = core.now() - t0,
    }
  end

  -- Set by SIGINT/SIGTERM once the caller called core.trap_interrupts() (the CLI does): no new
  -- request starts, those in flight get INTERRUPT_GRACE seconds to finish, then are abandoned.
  local interrupted = core.interrupted or function() return false end
  local stopping

  local ok, perr = pcall(function()
    while true do
      local now = core.now()
      if not stopping and interrupted() then
        stopping = now
        report.interrupted = true
      end
      if stopping then
        if ninflight == 0 or now - stopping >= M.INTERRUPT_GRACE then break end
      else
        -- retries that are due go first
        for i = #waiting, 1, -1 do
          if ninflight < o.concurrency and waiting[i].due <= now then
            local w = table.remove(waiting, i)
            start(w.group)
          end
        end
        while ninflight < o.concurrency and not source.exhausted do
          local g = source.next_group()
          if not g then break end
          start(g)
        end
        if ninflight == 0 and #waiting == 0 and source.exhausted then break end
      end
      local timeout = 0.2
      if not stopping then
        for _, w in ipairs(waiting) do timeout = math.min(timeout, math.max(0, w.due - now)) end
      end
      if ninflight > 0 then
        for _, t in ipairs(client.session:wait(timeout)) do
          local g = inflight[t]
          inflight[t] = nil
          ninflight = ninflight - 1
          handle(t, g)
        end
      else
        core.sleep(timeout)
      end
      report_progress()
    end
  end)
  if journal then journal:close() end
  report.seconds = core.now() - t0
  if not ok then
    -- An error raised by a callback of the caller, or a journal that cannot be written: stop
    -- sending; what finished is in the journal.
    for t in pairs(inflight) do t:close() end
    if errors.is(perr) then return nil, perr, report end
    error(perr, 0)
  end
  if stopping then
    -- Not in the report's lists nor in the journal: a resume sends these again.
    report.abandoned = 0
    for t, g in pairs(inflight) do
      t:close()
      report.abandoned = report.abandoned + #g.entries
    end
    inflight, ninflight = {}, 0
    for _, w in ipairs(waiting) do report.abandoned = report.abandoned + #w.group.entries end
  end
  report_progress()
  return report
end

return M
