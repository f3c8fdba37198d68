-- SPDX-License-Identifier: MIT
-- `healthcare store <store> <file-or-dir>...`: the friendly form. Probes, groups and streams the
-- files (healthcare.dicomweb.batch), shows a progress bar on a terminal, prints a summary (or the JSON
-- report with --json) and exits 0 when nothing failed, 1 when something did, 2 on usage errors.
local argparse = require "argparse"
local core = require "healthcare.core"
local batch = require "healthcare.dicomweb.batch"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"

local M = {}

local say = common.sayer("healthcare store")

-- Older spellings of flags, still taken (README "The healthcare command"): old -> current.
M.DEPRECATED_FLAGS = {
  { "--study", "--study-uid" },
  { "--max-instances", "--max-request-instances" },
  { "--retry-max", "--retry-max-attempts" },
}

local function parser()
  local p = argparse("healthcare store",
    "Store DICOM files in a DICOM store (STOW-RS), many per request, streamed from disk.")
  common.add_store_options(p)
  p:argument("files", "DICOM files or directories (walked recursively); one that cannot be read is an error "
    .. "(exit 2, nothing sent). In a directory or --from-list, a file that is not DICOM is skipped; one that "
    .. "cannot be read, or a DICOM file cut short, fails (exit 1).", nil, nil, "*")
  common.option(p, M.DEPRECATED_FLAGS, "--study-uid",
    "Store under studies/UID; files of another study are skipped."):argname("<uid>")
  p:option("--concurrency", "Requests in flight at once.", tostring(batch.DEFAULTS.concurrency)):convert(tonumber)
  p:option("--max-request-bytes", "Most bytes of DICOM per request.",
    tostring(batch.DEFAULTS.max_request_bytes)):convert(tonumber)
  common.option(p, M.DEPRECATED_FLAGS, "--max-request-instances", "Most instances per request.",
    tostring(batch.DEFAULTS.max_request_instances)):convert(tonumber)
  common.option(p, M.DEPRECATED_FLAGS, "--retry-max-attempts",
    "Attempts per request before its instances count as failed.",
    tostring(batch.RETRY_DEFAULTS.max_attempts)):convert(tonumber)
  p:option("--journal", "Append each finished instance to FILE; a rerun skips what it records as stored. "
    .. "Refused if it is a symbolic link, not a regular file, another user's, or writable by group or others.")
  p:option("--shard", "K/N: take only this machine's share of the files (stable by path).")
  p:option("--from-list", "Read more paths from FILE, one per line ('-' for standard input).")
  p:flag("--verify", "After storing, search the store for every instance reported stored and report "
    .. "those it does not list (exit 1 if any).")
  p:flag("--overwrite", "An instance the store holds with other bytes under the same SOP Instance UID (409) "
    .. "is deleted, stored again and read back to check it: reported \"replaced\". Without it that is a failure.")
  p:flag("--json", "Print the report as JSON on standard output.")
  p:flag("--no-progress", "No progress bar, even on a terminal.")
  p:epilog(common.deprecated_epilog(M.DEPRECATED_FLAGS))
  return p
end
M.parser = parser -- the bash completion reads its options

local human_bytes = common.human_bytes
local printable = common.printable

local function progress_bar(totals)
  local last = 0
  return function(p)
    local now = core.now()
    if now - last < 0.2 then return end
    last = now
    local sent = p.bytes_done + p.bytes_sending
    local done = sent + p.bytes_not_sent
    local files = p.files_done + p.already_stored + p.skipped
    local rate = p.seconds > 0 and sent / p.seconds or 0
    local line
    if totals.bytes > 0 then
      local frac = math.min(1, done / totals.bytes)
      local width = 24
      local filled = math.floor(frac * width + 0.5)
      local eta = rate > 0 and math.max(0, totals.bytes - done) / rate or 0
      line = string.format("[%s%s] %3d%%  %d/%d files  %s  %s/s  ETA %ds",
        string.rep("#", filled), string.rep(".", width - filled), math.floor(frac * 100),
        files, totals.files, human_bytes(sent), human_bytes(rate), math.floor(eta))
    else
      line = string.format("%d files  %s  %s/s", files, human_bytes(sent), human_bytes(rate))
    end
    if p.failed > 0 then line = line .. string.format("  %d failed", p.failed) end
    io.stderr:write("\r", line, "\27[K")
  end
end

-- Counts files and bytes first, so the bar can show a share and an ETA. Every entry counts, as
-- every entry ends up in the report (a link loop or a FIFO as skipped).
-- Only this machine's share with --shard; a Ctrl-C stops the count too.
local function count(inputs, shard_spec)
  local files = require "healthcare.dicomweb.files"
  local s = shard_spec and require("healthcare.dicomweb.shard").parse(shard_spec)
  local n, bytes = 0, 0
  for f in files.iterate(inputs) do
    if core.interrupted() then break end
    if not s or s.includes(f.rel) then
      n, bytes = n + 1, bytes + (f.size or 0)
    end
  end
  return { files = n, bytes = bytes }
end

local function read_list(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "r") end
  if not f then return nil, err end
  local out = {}
  for line in f:lines() do
    line = line:gsub("\r$", "")
    if line ~= "" then out[#out + 1] = line end
  end
  if f ~= io.stdin then f:close() end
  return out
end

-- The report as JSON: its lists stay arrays when empty.
local REPORT_LISTS = { "stored", "already_stored", "failed", "skipped" }
local function report_json(report)
  local view = {}
  for k, v in pairs(report) do view[k] = v end
  for _, k in ipairs(REPORT_LISTS) do view[k] = json.array(report[k]) end
  if report.replaced then view.replaced = json.array(report.replaced) end
  if report.verify then
    view.verify = { checked = report.verify.checked, missing = json.array(report.verify.missing) }
  end
  return json.encode(view)
end

local function summary(report)
  local rate = report.seconds > 0 and report.bytes / report.seconds or 0
  local w = io.stderr
  w:write(string.format(
    "stored %d, already stored %d, failed %d, skipped %d; %s in %.1f s (%.2f MB/s); %d requests, %d retries\n",
    report.counts.stored, report.counts.already_stored, report.counts.failed, report.counts.skipped,
    human_bytes(report.bytes),
    report.seconds, rate / 1e6, report.requests, report.retries))
  if report.counts.replaced then
    w:write(string.format("replaced %d (the store held other bytes under their SOP Instance UIDs: deleted, stored "
      .. "again, read back equal to the file)\n", report.counts.replaced))
    for _, f in ipairs(report.replaced) do w:write("replaced ", printable(f.path), "\n") end
  end
  for _, f in ipairs(report.stored) do
    if f.warning then w:write("warning ", printable(f.path), ": ", printable(f.warning), "\n") end
  end
  for _, f in ipairs(report.failed) do
    w:write("failed  ", printable(f.path), ": ", printable(f.reason), "\n")
  end
  for _, s in ipairs(report.skipped) do
    w:write("skipped ", printable(s.path), ": ", printable(s.reason), "\n")
  end
  -- Failures by reason, most frequent first: what a person fixes before the next run.
  local counts, reasons = {}, {}
  for _, f in ipairs(report.failed) do
    local r = tostring(f.reason)
    if not counts[r] then reasons[#reasons + 1] = r end
    counts[r] = (counts[r] or 0) + 1
  end
  table.sort(reasons, function(x, y) return counts[x] > counts[y] or (counts[x] == counts[y] and x < y) end)
  for _, r in ipairs(reasons) do w:write(string.format("failed %d: %s\n", counts[r], printable(r))) end
  local j = report.journal
  if j then
    w:write(string.format("journal %s: %d of these files stored (%d now, %d by %d earlier runs)%s\n", printable(j.path),
      report.counts.stored + report.counts.already_stored, report.counts.stored, report.counts.already_stored,
      j.earlier_runs,
      j.torn_bytes > 0 and string.format("; a torn last line (%d bytes) was dropped", j.torn_bytes) or ""))
    local f = j.in_flight
    if f and f.in_flight > 0 then
      w:write(string.format("journal: %d instances were in flight when an earlier run stopped: %s\n", f.in_flight,
        f.error and ("the server could not be asked (" .. printable(f.error) .. "), sent again")
          or string.format("%d found at the server, %d sent again", f.found, f.in_flight - f.found)))
    end
  end
  if report.interrupted then
    w:write(string.format("interrupted: %d instances in flight abandoned; run the same command again%s to resume\n",
      report.abandoned or 0, j and "" or " with --journal FILE"))
  end
end

-- What --verify found, after the summary.
local function verify_summary(v)
  local w = io.stderr
  if #v.missing == 0 then
    w:write(string.format("verified %d instances: the server lists every one\n", v.checked))
    return
  end
  w:write(string.format("verified %d instances: the server does not list %d\n", v.checked, #v.missing))
  for _, m in ipairs(v.missing) do
    w:write("missing ", printable(m.path), ": SOP Instance UID ", printable(m.sop_instance_uid), " in study ",
      printable(m.study_uid), "\n")
  end
end

-- The paths to store: those named (each readable, else exit 2 with nothing sent) and those of
-- --from-list. Returns the list, or nil and the exit code after saying why.
local function inputs_of(a, p)
  local inputs = a.files
  -- A file or folder named here that cannot be read is a mistake in the command (exit 2, nothing
  -- sent), unlike what a folder holds, or a --from-list (often made long before the run, and a
  -- file gone since should not stop a migration of millions): those are skipped with the reason.
  local unreadable = false
  for _, path in ipairs(inputs) do
    local why = require("healthcare.dicomweb.files").unreadable(path)
    if why then
      say("cannot read %s: %s", printable(path), printable(why))
      unreadable = true
    end
  end
  if unreadable then
    say("nothing was sent")
    return nil, common.EXIT_USAGE
  end
  if a.from_list then
    local list, err = read_list(a.from_list)
    if not list then
      say("cannot read --from-list: %s", printable(err))
      return nil, common.EXIT_USAGE
    end
    for _, l in ipairs(list) do inputs[#inputs + 1] = l end
  end
  if #inputs == 0 then
    say("no files given\n%s", p:get_usage())
    return nil, common.EXIT_USAGE
  end
  return inputs
end

-- The settings that must be whole numbers of at least 1 (argparse converts, not checks).
local COUNTS = { "concurrency", "max_request_bytes", "max_request_instances", "retry_max_attempts" }

-- A run stopped by err: its partial report, as --json or the summary.
local function told_partial(report, err, a)
  if a.json then
    report.error = tostring(err)
    io.stdout:write(report_json(report), "\n")
  else
    summary(report)
  end
end

-- Stores the inputs with a progress bar on a terminal. Returns the report and verify's error, if
-- any; or nil, nil and the exit code after saying why.
local function run(store, inputs, a)
  -- Ctrl-C (or a scheduler's SIGTERM) stops between requests; the journal stays whole.
  core.trap_interrupts()
  local show = not a.json and not a.no_progress and core.isatty(2)
  local on_progress
  if show then on_progress = progress_bar(count(inputs, a.shard)) end
  local report, err, partial = store:store(inputs, {
    study_uid = a.study_uid, concurrency = a.concurrency, max_request_bytes = a.max_request_bytes,
    max_request_instances = a.max_request_instances, retry = { max_attempts = a.retry_max_attempts },
    journal = a.journal, shard = a.shard, on_progress = on_progress, overwrite = a.overwrite or nil,
    -- Only --json and --verify need a record of every stored file; a summary needs counts.
    keep_stored = a.json or a.verify or false,
  })
  if show then io.stderr:write("\r\27[K") end
  if not report then
    -- Stopped mid-run (the journal could not be written): what was done is still told, and the
    -- journal holds what it had recorded by then.
    if partial then told_partial(partial, err, a) end
    say("%s", tostring(err))
    if partial and a.journal then
      say("what was stored before is in the journal: run the same command again to resume")
    end
    return nil, nil, common.EXIT_USAGE
  end
  local verr
  if a.verify and not report.interrupted then
    report.verify, verr = store:verify(report)
  end
  return report, verr
end

function M.main(argv)
  local p = parser()
  local a, code = common.parse(p, argv)
  if not a then return code end
  local inputs
  inputs, code = inputs_of(a, p)
  if not inputs then return code end
  for _, k in ipairs(COUNTS) do
    if not a[k] or a[k] < 1 or a[k] ~= math.floor(a[k]) then
      say("--%s must be a whole number of at least 1", (k:gsub("_", "-")))
      return common.EXIT_USAGE
    end
  end
  local store
  store, code = common.open_store_or_say(a, say)
  if not store then return code end
  local report, verr
  report, verr, code = run(store, inputs, a)
  store:close()
  if not report then return code end
  if a.json then
    io.stdout:write(report_json(report), "\n")
  else
    summary(report)
    if report.verify then verify_summary(report.verify) end
  end
  if verr then say("cannot verify: %s", tostring(verr)) end
  if report.interrupted then return 128 + (core.interrupted() or 2) end
  if #report.failed > 0 or verr or (report.verify and #report.verify.missing > 0) then
    return common.EXIT_FAILED
  end
  return common.EXIT_OK
end

return M
