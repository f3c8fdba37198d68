-- SPDX-License-Identifier: MIT
-- `healthcare retrieve <store> <study>[/<series>[/<instance>]] -o <dir>`: WADO-RS through
-- store:retrieve_*, every instance streamed to <dir>/<SOPInstanceUID>.dcm. Prints each file
-- on standard output as it lands and a summary on standard error (or a JSON report with --json),
-- in memory that does not grow with the instances (list_files = false: the --json records wait
-- in a temporary file). When the transfer breaks, the retrieve goes on from what arrived (up to
-- --retry-max-attempts attempts); when they are spent, the instances that arrived whole are kept and
-- the command says which instances of the request are missing (found by a search), then exits 1. Parts of the
-- answer that are not DICOM instances are reported one by one (exit 1), and written only with
-- --keep-rejected. Every bound of the Lua API (healthcare.dicomweb.retrieve.BOUNDS) is an option here.
local argparse = require "argparse"
local core = require "healthcare.core"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"
local errors = require "healthcare.errors"
local lfs = require "lfs"
local names = require "healthcare.dicomweb.names"

local M = {}

local say = common.sayer("healthcare retrieve")
local retrieve = require "healthcare.dicomweb.retrieve"

local UNITS = { [""] = 1, K = 1024, M = 1024 ^ 2, G = 1024 ^ 3, T = 1024 ^ 4 }

-- "1000", "64K", "10M", "2G", "1T" (powers of 1024; "KiB", "MB" and the like are read alike).
local function bytes_arg(s)
  local digits, unit = s:upper():match("^(%d+)([KMGT]?)I?B?$")
  local n = digits and tonumber(digits) * UNITS[unit]
  if not n or n < 1 or n >= 2 ^ 53 then
    return nil, "expected a size in bytes greater than 0, such as 1000, 64K, 10M, 2G or 1T, got '" .. s .. "'"
  end
  return n
end

local function count_arg(s)
  local n = s:match("^%d+$") and tonumber(s)
  if not n or n < 1 or n >= 2 ^ 53 then return nil, "expected a whole number greater than 0, got '" .. s .. "'" end
  return n
end

local function seconds_arg(s)
  local n = s:match("^%d+%.?%d*$") and tonumber(s)
  if not n or n <= 0 or n > 1e9 then return nil, "expected a number of seconds greater than 0, got '" .. s .. "'" end
  return n
end

local function human_size(n)
  for _, u in ipairs({ "T", "G", "M", "K" }) do
    if n >= UNITS[u] and n % UNITS[u] == 0 then return string.format("%d%s", n / UNITS[u], u) end
  end
  return string.format("%d", n)
end

-- What raises the bound an error passed (err.option, set by healthcare.dicomweb.retrieve).
local HINTS = {
  max_bytes = "--max-bytes raises this limit",
  max_parts = "--max-parts raises this limit",
  max_part_bytes = "--max-part-bytes raises this limit",
  timeout = "--timeout raises this limit",
  min_speed = "--min-speed and --idle-timeout set this floor",
  compressed = "--compressed asks for and accepts a gzip-compressed answer",
  max_compression_ratio = "a compressed answer that expands this much is refused; without --compressed "
    .. "none is asked for",
}

local function parser()
  local p = argparse("healthcare retrieve",
    "Retrieve a study, a series or an instance (WADO-RS) into a directory, one file per instance "
    .. "named <SOPInstanceUID>.dcm, streamed to disk.")
  p:epilog("Examples:\n"
    .. "  healthcare retrieve http://127.0.0.1:8042/dicom-web 1.2.3 -o study-1.2.3\n"
    .. "  healthcare retrieve STORE 1.2.3/1.2.3.4/1.2.3.4.5 -o out --transfer-syntax 1.2.840.10008.1.2.1")
  common.add_store_options(p)
  p:argument("target", "<study>[/<series>[/<instance>]]: the UIDs of what to retrieve.")
  p:option("-o --output", "The directory to write to (created with its parents if missing)."):argname("<dir>")
  p:option("--transfer-syntax", "Transfer syntax UID to ask for, or '*' for as stored.", "*"):argname("<uid>")
  p:flag("--json", "Print the report as JSON on standard output: files (path, sop_instance_uid, size), "
    .. "rejected (part, reason, size, path), bytes, seconds, missing.")
  p:flag("--no-progress", "No progress line, even on a terminal.")
  p:flag("--refetch", "Fetch every instance again. By default the <SOPInstanceUID>.dcm files <dir> "
    .. "already holds (a run that was interrupted) are kept and only the others fetched (a series whole "
    .. "again when what is there of it is smaller than 8 MiB per missing instance: one request, not many).")
  local b = retrieve.BOUNDS
  p:option("--max-bytes", "Stop when the answers pass this size in all (decoded), default "
    .. human_size(b.max_bytes) .. ".", nil, bytes_arg):argname("<size>")
  p:option("--max-parts", string.format("Stop when the answers have more parts than this, default %d.",
    b.max_parts), nil, count_arg):argname("<n>")
  p:option("--max-part-bytes", "Stop when one part (instance) passes this size, default "
    .. human_size(b.max_part_bytes) .. ".", nil, bytes_arg):argname("<size>")
  p:option("--timeout", string.format("Stop when the retrieve is not done after this many seconds, default %d.",
    b.timeout), nil, seconds_arg):argname("<seconds>")
  p:option("--idle-timeout", "Stop when fewer than --min-speed bytes a second arrive for this many seconds, "
    .. "default 300.", nil, seconds_arg):argname("<seconds>")
  p:option("--min-speed", "The floor speed of --idle-timeout in bytes a second, default 1024.", nil,
    count_arg):argname("<bytes>")
  p:flag("--compressed", "Ask for a gzip-compressed answer and decode it. By default none is asked for "
    .. "and an encoded answer is refused.")
  p:flag("--keep-rejected", "Write parts of the answer that are not DICOM instances as <dir>/part-<n>.rejected, "
    .. "part-<n>.1.rejected if that is taken, ... (by default they are reported and not written).")
  common.add_retry_option(p)
  return p
end
M.parser = parser -- the bash completion reads its options

-- Called between turns of the transfer loop: draws the received bytes on a terminal and stops
-- the transfer after Ctrl-C (its temporary files go with it).
local function progress(show)
  local t0, last = core.now(), 0
  return function(p)
    if core.interrupted() then return false end
    local received = p.bytes_received
    local now = core.now()
    if show and now - last >= 0.2 then
      last = now
      local rate = now > t0 and received / (now - t0) or 0
      io.stderr:write("\r", string.format("received %s  %s/s", common.human_bytes(received),
        common.human_bytes(rate)), "\27[K")
    end
  end
end

local function call(store, t, dir, ts, on_progress, refetch, a, on_file, on_retry)
  local opts = { to = dir, transfer_syntax = ts, on_progress = on_progress, on_file = on_file, list_files = false,
    on_retry = on_retry,
    max_bytes = a.max_bytes,
    max_parts = a.max_parts, max_part_bytes = a.max_part_bytes, timeout = a.timeout,
    idle_timeout = a.idle_timeout, min_speed = a.min_speed, compressed = a.compressed or nil,
    keep_rejected = a.keep_rejected or nil }
  if t.instance then
    -- a trailing "/" makes `to` a directory even before it exists
    opts.to = dir:sub(-1) == "/" and dir or (dir .. "/")
    return store:retrieve_instance(t.study, t.series, t.instance, opts)
  end
  opts.skip_existing = not refetch
  if t.series then
    return store:retrieve_series(t.study, t.series, opts)
  end
  return store:retrieve_study(t.study, opts)
end

-- The directory files land in, as the start of their paths: the text and its JSON (escaped once,
-- no closing quote) for file_record.
local function path_prefix(dir)
  local prefix = dir:sub(-1) == "/" and dir or dir .. "/"
  return { text = prefix, json = json.string(prefix):sub(1, -2) }
end

-- The instances of the target that <dir> does not hold as <uid>.dcm (what arrived and what was
-- kept): { count, uids }, at most `names_shown` of them named (nil: all, for --json); nil when a
-- search fails (the caller then says nothing of them). The searches are retrieve.missing's: the
-- series with their instance counts, then only the series <dir> lacks some of, and only as far
-- as the names shown need. A study of 20,000 instances cut early (the test bed's Orthanc, through
-- the emulator) took 61 s to name when every instance was searched, in 200 pages: 1.2 s now, and
-- 20 s with --json (each missing one named). Each search is tried once: after a retrieve that
-- gave up, the user should not wait through the retries of a search that only names what is
-- missing (the server is often what failed).
local function missing_instances(store, t, dir, names_shown)
  if t.instance then
    -- held: a file there that says it is the instance asked for, as retrieve.missing counts one
    local path = path_prefix(dir).text .. t.instance .. ".dcm"
    local info = names.valid_uid(t.instance) and lfs.attributes(path, "mode") == "file" and core.dicom_probe(path)
    local held = info and (info.sop_instance_uid or info.media_sop_instance_uid) == t.instance
      and info.study_uid == t.study and info.series_uid == t.series
    return held and { count = 0, uids = {} } or { count = 1, uids = { t.instance } }
  end
  return retrieve.missing(store, t.study, t.series, dir, { names = names_shown })
end

-- A size the fast record writes as it is: an integer (one that prints as digits, under LuaJIT).
local digits_only = math.type and function(n) return math.type(n) == "integer" end
  or function(n) return type(n) == "number" and n >= 0 and n < 1e14 and n == math.floor(n) end

-- A file's record as json.encode writes it (keys sorted), made with one concatenation: a
-- retrieve may list a hundred thousand, and the command writes each as its instance lands
-- (on_file), while the rest of the answer streams. A valid UID is digits and dots and needs no
-- escaping, and a path that is <prefix><UID>.dcm takes the prefix's JSON, escaped once; a
-- record with a warning goes the general way.
local function file_record(f, prefix)
  local path, size, uid = f.path, f.size, f.sop_instance_uid
  if f.warning == nil and digits_only(size) and names.valid_uid(uid) then
    return '{"path":' .. (path == prefix.text .. uid .. ".dcm" and prefix.json .. uid .. '.dcm"' or json.string(path))
      .. ',"size":' .. size .. ',"sop_instance_uid":"' .. uid .. '"}'
  end
  return json.encode({ path = path, sop_instance_uid = uid, size = size, warning = f.warning })
end

-- Writes the JSON report to out: the files' records are in r.spool (a temporary file, joined
-- by ",", written by on_file as the files landed; none when it failed), copied where the writer put a mark ("\0",
-- which no JSON text it writes holds).
local function write_report_json(out, r)
  local rlist = {}
  for i, x in ipairs(r.rejected) do rlist[i] = { part = x.part, reason = x.reason, size = x.size, path = x.path } end
  local text = json.encode({
    files = json.raw("\0"), kept = json.array(r.kept), rejected = json.array(rlist), bytes = r.bytes,
    seconds = r.seconds, retries = r.retries, missing = r.missing and json.array(r.missing.uids),
    error = r.err and (r.err.message or tostring(r.err)),
  })
  local at = text:find("\0", 1, true)
  out:write(text:sub(1, at - 1), "[")
  local spool = r.spool
  spool = spool and spool:seek("set") and spool
  while spool do
    local chunk = spool:read(65536)
    if not chunk then break end
    out:write(chunk)
  end
  out:write("]", text:sub(at + 1), "\n")
end

-- The retrieve, Ctrl-C or SIGTERM abandoning it. Each file is told as it lands (on_file): its
-- path on standard output (its JSON record to the spool with --json), its warning on standard
-- error. Returns the outcome { res, err, count, rejected, kept (paths), bytes, seconds, spool },
-- or nil, the signal and the count of instances kept.
local function run(store, t, a)
  local show = not a.no_progress and not a.json and core.isatty(2)
  core.trap_interrupts()
  local t0 = core.now()
  local prefix = path_prefix(a.output)
  local spool, told, spool_error = nil, 0, nil
  if a.json then
    local why
    spool, why = io.tmpfile()
    if not spool then spool_error = tostring(why) end
  end
  local function on_file(f)
    if spool then
      local fine, why = spool:write(told > 0 and "," or "", file_record(f, prefix))
      -- stops the retrieve (the files told so far stay); said as the outcome's error below
      if not fine then
        spool_error = tostring(why)
        error(spool_error, 0)
      end
    else
      io.stdout:write(common.printable(f.path), "\n")
    end
    told = told + 1
    if f.warning then say("warning %s: %s", common.printable(f.path), common.printable(f.warning)) end
  end
  local fine, res, err, partial = true, nil, nil, nil
  if not spool_error then
    fine, res, err, partial = pcall(call, store, t, a.output, a.transfer_syntax, progress(show), a.refetch, a, on_file,
      common.retry_teller(say, show))
  end
  if spool_error then
    -- (err.files: the transfer began, and what it kept is accounted for as after any break)
    res, err, partial = nil, errors.new("io", "cannot write the --json report to a temporary file: " .. spool_error,
      told > 0 and { files = {} } or nil), { count = told }
  elseif not fine then
    error(res, 0)
  end
  local seconds = core.now() - t0
  if show then io.stderr:write("\r\27[K") end
  local signal = core.interrupted()
  core.trap_interrupts(false)
  if signal then return nil, signal, told end
  local got = res or partial
  -- rejected: parts of the answer that are not DICOM instances (not counted among the files);
  -- kept: the instances <dir> already held (see --refetch)
  local r = { res = res, err = err, count = got.count or 0, rejected = got.rejected or {}, kept = {},
    bytes = got.bytes or 0, seconds = seconds, spool = not spool_error and spool or nil, retries = got.retries or 0 }
  for i, f in ipairs(got.kept or {}) do r.kept[i] = f.path end
  return r
end

-- The exit code of an outcome, and the instances of the target found missing (r.missing).
local function account(store, t, r)
  local err = r.err
  if not r.res then
    local exit = common.exit_code_for_uid(store, err)
    -- Only a transfer that broke after it began leaves something to name (err.files: it began).
    if err.kind == "transport" or err.kind == "dicom" or (err.kind == "io" and err.files) then
      r.missing = missing_instances(store, t, r.dir, r.names_shown)
      exit = math.max(exit, common.EXIT_FAILED)
    end
    return exit
  elseif #r.rejected > 0 then
    r.missing = missing_instances(store, t, r.dir, r.names_shown)
    return common.EXIT_FAILED
  end
  return common.EXIT_OK
end

-- The missing instances named on standard error, at most this many: a study of 20,000 cut early
-- would print a megabyte of UIDs on one line. --json lists them all.
M.MISSING_SHOWN = 20

local function say_missing(t, missing, json_report)
  local shown, n = {}, missing.count
  for i = 1, math.min(#missing.uids, M.MISSING_SHOWN) do shown[i] = missing.uids[i] end
  -- (none named: the server counts more than its search lists)
  if n > #shown and #shown > 0 then
    shown[#shown + 1] = string.format("and %d more%s", n - #shown, json_report and "" or " (--json lists them all)")
  end
  say("missing %d instance%s of %s%s", n, n == 1 and "" or "s", common.describe_target(t),
    #shown > 0 and ": " .. common.printable(table.concat(shown, " ")) or "")
end

-- What the outcome says: the files (or the JSON report) on standard output, the rest on stderr.
local function report(t, r, a)
  local count, rejected, err = r.count, r.rejected, r.err
  if a.json then write_report_json(io.stdout, r) end
  for _, x in ipairs(rejected) do
    say("part %d of the answer is not kept as an instance: %s%s", x.part, common.printable(x.reason),
      x.path and (" (written to " .. common.printable(x.path) .. ")") or "")
  end
  -- After an error with nothing kept, the error alone says it all.
  if not a.json and (count > 0 or #rejected > 0 or not err) then
    io.stderr:write(string.format("retrieved %d instance%s, %s in %.1f s, to %s%s%s%s\n", count,
      count == 1 and "" or "s", common.human_bytes(r.bytes), r.seconds, common.printable(a.output),
      #r.kept > 0 and string.format(" (kept %d already there)", #r.kept) or "",
      #rejected > 0 and string.format("; %d part%s rejected", #rejected, #rejected == 1 and "" or "s") or "",
      r.retries > 0 and string.format("; %d retr%s", r.retries, r.retries == 1 and "y" or "ies") or ""))
  end
  local missing = r.missing
  if not err then
    if #rejected > 0 and missing and missing.count > 0 then say_missing(t, missing, a.json) end
    return
  end
  say("%s", tostring(err))
  if err.option and HINTS[err.option] then say("%s", HINTS[err.option]) end
  if missing and missing.count > 0 then
    say_missing(t, missing, a.json)
  elseif count > 0 then
    say("the rest of %s is missing", common.describe_target(t))
  end
end

function M.main(argv)
  local p = parser()
  local a, code = common.parse(p, argv)
  if not a then return code end
  local t, terr = common.split_target(a.target)
  if not t then
    say("%s", terr)
    return common.EXIT_USAGE
  end
  if not a.output then
    say("-o <dir> is required: the directory to write the files to")
    return common.EXIT_USAGE
  end
  local store
  store, code = common.open_store_or_say(a, say)
  if not store then return code end
  local r, signal, told = run(store, t, a)
  if not r then
    store:close()
    say("interrupted: the transfer was abandoned; %d instance%s that arrived whole %s kept, nothing partial; "
      .. "run the same command again to fetch the rest", told, told == 1 and "" or "s", told == 1 and "is" or "are")
    return 128 + signal
  end
  r.dir = a.output
  -- standard error names at most MISSING_SHOWN missing instances; --json lists them all
  r.names_shown = not a.json and M.MISSING_SHOWN or nil
  code = account(store, t, r)
  store:close()
  report(t, r, a)
  return code
end

return M
