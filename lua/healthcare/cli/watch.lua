-- SPDX-License-Identifier: MIT
-- `healthcare watch <store> <spool-dir>`: a long-running ingest of a spool folder (dcmtk's storescp
-- writing into it, README "Classic DICOM senders"). Stores every complete DICOM file that appears
-- there (healthcare.dicomweb.watch), removes it or moves it to --done, moves what cannot be
-- stored to --failed with a reason file, prints status lines (or JSON lines with --json) and on
-- SIGTERM or Ctrl-C lets the requests in flight finish, then exits 143 or 130.
local argparse = require "argparse"
local core = require "healthcare.core"
local batch = require "healthcare.dicomweb.batch"
local watch = require "healthcare.dicomweb.watch"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"
local util = require "healthcare.util"

local M = {}

local say = common.sayer("healthcare watch")
local printable = common.printable

M.JOURNAL_NAME = ".healthcare-watch.jsonl"

local function parser()
  local p = argparse("healthcare watch",
    "Store every complete DICOM file that appears in a spool folder (e.g. written by dcmtk's storescp), "
    .. "until SIGTERM or Ctrl-C.")
  common.add_store_options(p)
  p:argument("spool", "The folder to watch (and the folders below it).")
  p:option("--journal", "The journal (exactly once across restarts); default SPOOL/" .. M.JOURNAL_NAME .. ".")
  p:option("--journal-max-records", "Records after which the journal starts afresh (the old one kept as FILE.1), "
    .. "once nothing is in flight.", tostring(watch.DEFAULTS.journal_max_records)):convert(tonumber)
  p:option("--done", "Move stored files to this folder instead of removing them.")
  p:option("--failed", "Move files that cannot be stored here, each with FILE.reason (default SPOOL/failed).")
  p:option("--settle", "Seconds a file found by a scan (not announced by inotify) must stay unchanged.",
    tostring(watch.DEFAULTS.settle)):convert(tonumber)
  p:option("--rescan", "Seconds between scans of the spool (a safety net under inotify; 2 without it).",
    tostring(watch.DEFAULTS.rescan)):convert(tonumber)
  p:option("--requeue-delay", "Seconds before a file whose request failed is sent again.",
    tostring(watch.DEFAULTS.requeue_delay)):convert(tonumber)
  p:flag("--no-inotify", "Scan only (file systems where inotify sees no changes, e.g. NFS).")
  p:option("--status-interval", "Seconds between status lines.", "60"):convert(tonumber)
  p:option("--concurrency", "Requests in flight at once.", tostring(batch.DEFAULTS.concurrency)):convert(tonumber)
  p:option("--max-request-bytes", "Most bytes of DICOM per request.",
    tostring(batch.DEFAULTS.max_request_bytes)):convert(tonumber)
  p:option("--max-request-instances", "Most instances per request.",
    tostring(batch.DEFAULTS.max_request_instances)):convert(tonumber)
  p:option("--retry-max-attempts", "Attempts per request before its files wait --requeue-delay and go again.",
    tostring(batch.RETRY_DEFAULTS.max_attempts)):convert(tonumber)
  p:flag("--json", "JSON lines on standard output: one per file finished, one per status.")
  return p
end
M.parser = parser -- the bash completion reads its options

local COUNTS = { "concurrency", "max_request_bytes", "max_request_instances", "retry_max_attempts",
  "journal_max_records" }
local SECONDS = { "settle", "rescan", "requeue_delay", "status_interval" }

local function check_numbers(a)
  for _, k in ipairs(COUNTS) do
    if not a[k] or a[k] < 1 or a[k] ~= math.floor(a[k]) then
      say("--%s must be a whole number of at least 1", (k:gsub("_", "-")))
      return false
    end
  end
  for _, k in ipairs(SECONDS) do
    if not a[k] or a[k] ~= a[k] or a[k] < 0 or a[k] == math.huge then
      say("--%s must be a number of seconds, 0 or more", (k:gsub("_", "-")))
      return false
    end
  end
  return true
end

local function status_text(s)
  local rate = s.seconds > 0 and s.bytes / s.seconds or 0
  return string.format("status: stored %d, already stored %d, failed %d, requeued %d; %s (%s/s); %d requests, "
    .. "%d retries; %d in flight, %d queued, %d waiting%s", s.stored, s.already_stored, s.failed, s.requeued,
    common.human_bytes(s.bytes), common.human_bytes(rate), s.requests, s.retries, s.in_flight, s.queued, s.waiting,
    s.inotify and "" or " (scanning, no inotify)")
end

local function json_line(t)
  io.stdout:write(json.encode(t), "\n")
  io.stdout:flush()
end

-- File names are bytes, JSON text is UTF-8 (README "Classic DICOM senders"): a path or moved_to
-- that is not UTF-8 is written with U+FFFD for each byte that is not, and its exact bytes in
-- base64 beside it (path_base64, moved_to_base64), to find the file by; reason and warning, text
-- to read, with U+FFFD alone.
local EXACT_FIELDS = { path = "path_base64", moved_to = "moved_to_base64" }

local function utf8_event(ev)
  for _, k in ipairs({ "path", "moved_to", "reason", "warning" }) do
    if type(ev[k]) == "string" then
      local text, changed = json.utf8_replaced(ev[k])
      if changed and EXACT_FIELDS[k] then ev[EXACT_FIELDS[k]] = util.base64(ev[k]) end
      ev[k] = text
    end
  end
  return ev
end

-- Files waiting to be sent again, by reason, since the last status line: while a server is away
-- every file in the spool waits again every --requeue-delay, too many for a line each.
local requeued = {}

-- What each finished file prints: a JSON line, or a line on stderr for what a person must see
-- (failures, files that could not be moved); files that wait for a second try are counted.
local function on_file(a)
  return function(ev)
    if a.json then
      ev.event = "file"
      return json_line(utf8_event(ev))
    end
    if ev.outcome == "failed" then
      io.stderr:write("failed ", printable(ev.path), ": ", printable(ev.reason or "?"),
        ev.moved_to and (" (moved to " .. printable(ev.moved_to) .. ")") or "", "\n")
    elseif ev.outcome == "requeued" then
      local r = tostring(ev.reason)
      requeued[r] = (requeued[r] or 0) + 1
    end
    if ev.warning then io.stderr:write("warning ", printable(ev.path), ": ", printable(ev.warning), "\n") end
  end
end

local function on_status(a)
  return function(s)
    if a.json then
      s.event = "status"
      return json_line(s)
    end
    io.stderr:write(status_text(s), "\n")
    for reason, n in pairs(requeued) do
      io.stderr:write(string.format("%d files wait to be sent again: %s\n", n, printable(reason)))
    end
    requeued = {}
  end
end

local function open_watcher(store, a)
  return watch.new(store, a.spool, {
    journal = a.journal or (a.spool:gsub("/+$", "") .. "/" .. M.JOURNAL_NAME),
    done_dir = a.done, failed_dir = a.failed, settle = a.settle, rescan = a.rescan,
    requeue_delay = a.requeue_delay, inotify = not a.no_inotify, concurrency = a.concurrency,
    max_request_bytes = a.max_request_bytes, max_request_instances = a.max_request_instances,
    retry = { max_attempts = a.retry_max_attempts }, on_file = on_file(a),
    journal_max_records = a.journal_max_records,
  })
end

function M.main(argv)
  local p = parser()
  local a, code = common.parse(p, argv)
  if not a then return code end
  if not check_numbers(a) then return common.EXIT_USAGE end
  local store
  store, code = common.open_store_or_say(a, say)
  if not store then return code end
  core.trap_interrupts()
  local w, err = open_watcher(store, a)
  if not w then
    say("%s", printable(tostring(err)))
    store:close()
    return common.exit_code_for(err)
  end
  local report = on_status(a)
  if not a.json then
    io.stderr:write(string.format("watching %s (%s); sending to %s\n", printable(w.spool),
      w.inotify and "inotify" or "scanning every " .. w.opts.rescan .. " s", printable(store.name)))
    local f = w.in_flight_at_start
    if f and f.in_flight > 0 then
      io.stderr:write(string.format("%d instances were in flight when the last run stopped: %s\n", f.in_flight,
        f.error and ("the server could not be asked (" .. printable(f.error) .. "), sent again")
          or string.format("%d found at the server, %d sent again", f.found, f.in_flight - f.found)))
    end
  end
  local final, rerr = w:run(report, a.status_interval)
  local abandoned = w.abandoned or 0
  w:close()
  store:close()
  if not final then
    say("stopped: %s", printable(tostring(rerr)))
    return common.EXIT_FAILED
  end
  report(final)
  if abandoned > 0 and not a.json then
    io.stderr:write(string.format("stopped with %d instances in flight abandoned: they stay in the spool and go "
      .. "at the next start\n", abandoned))
  end
  return 128 + (core.interrupted() or 15)
end

return M
