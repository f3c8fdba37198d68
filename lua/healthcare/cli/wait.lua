-- SPDX-License-Identifier: MIT
-- How the commands wait for a long-running operation (import, export, deidentify, operations
-- wait, and the API command's --wait): the options (--no-wait, --operation-timeout,
-- --poll-interval), a progress line from the operation's metadata counters (success, failure,
-- pending) and the time waited, then a summary with the counters and the operation's logsUrl.
-- Ctrl-C (or SIGTERM) stops the waiting only: the operation goes on running on the server,
-- its name is printed, nothing is cancelled, exit 130 (143). Exit 0 when the operation ended
-- without an error and its counters name no failure; 1 when something failed (Google may call
-- an operation a success while instances failed: the counters say so); 2 for usage and
-- credential errors (an operation that does not exist is a 404: 2).
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local api_operation = require "healthcare.api.operation"
local errors = require "healthcare.errors"
local request = require "healthcare.api.request"
local common = require "healthcare.cli.common"
local util = require "healthcare.util"

local M = {}

-- The command waits longer than the library's default (600 s): an import of an archive takes
-- hours, and the person at the terminal has Ctrl-C.
M.DEFAULT_OPERATION_TIMEOUT = 7 * 24 * 3600
M.DEFAULT_POLL_INTERVAL = 1
-- The counters of OperationMetadata.counter (ProgressCounter), in the order lines show them.
M.COUNTERS = { "success", "failure", "pending" }

--- Adds --no-wait, --operation-timeout and --poll-interval to an argparse parser; opts.no_wait =
--- false: not --no-wait (a command that starts nothing).
function M.add_options(p, opts)
  if not (opts and opts.no_wait == false) then
    p:flag("--no-wait", "Start the operation, print its name on standard output and exit 0 without waiting "
      .. "(healthcare operations wait NAME waits for it later). An operation over at once is told as the waiting "
      .. "tells it, with its exit code.")
  end
  p:option("--operation-timeout", "Seconds to wait for the operation, a poll in flight included, before giving "
    .. "up waiting (it goes on running on the server).", tostring(M.DEFAULT_OPERATION_TIMEOUT))
    :argname("<seconds>"):convert(tonumber)
  p:option("--poll-interval", "Seconds before the first poll of the operation; it doubles up to ten times this.",
    tostring(M.DEFAULT_POLL_INTERVAL)):argname("<seconds>"):convert(tonumber)
  return p
end

--- Checks the values of add_options' options in parsed arguments `a`: true, or nil and why not.
function M.check_options(a)
  if not a.operation_timeout or a.operation_timeout < 0 or a.operation_timeout ~= a.operation_timeout then
    return nil, "--operation-timeout must be a number of seconds >= 0"
  end
  if not a.poll_interval or a.poll_interval ~= a.poll_interval or a.poll_interval <= 0
    or a.poll_interval == math.huge then
    return nil, "--poll-interval must be a number of seconds > 0"
  end
  return true
end

-- Characters of a counter's text shown: an int64 has 19 digits.
local COUNT_CHARS = 24

-- An int64 counter of the metadata: a number for comparisons (0 when absent; nil when it is no
-- count: negative, an infinity, NaN, "0x10", junk) and its text for the lines. Google sends them
-- as strings of digits; a server may send a number, a fraction or a count past 2^63, which are
-- shown as they came, never as an "integer representation" error that would lose the
-- operation's name.
local function count(counter, key)
  local v = counter[key]
  if v == nil or v == cjson.null then return 0, "0" end
  if type(v) == "number" then
    local n = util.finite_number(v, 0)
    if n and n == math.floor(n) and n < 2 ^ 63 then return n, string.format("%.0f", n) end
    return n, v ~= v and "NaN" or string.format("%.14g", v)
  end
  if type(v) ~= "string" then return nil, "?" end
  local n = v:match("^%d+%.?%d*$") and util.finite_number(tonumber(v)) or nil
  if v:match("^%d+$") then v = v:match("^0*(%d.*)$") end -- "007": 7
  return n, errors.cut(v, COUNT_CHARS)
end

--- Whether the failure counter of counters `c` (M.counters) says something failed, or cannot
--- say nothing did (a value that is no count: exit 1 all the same, the logs tell).
local function some_failed(c)
  return c ~= nil and (c.failure == nil or c.failure > 0)
end

--- The counters of an operation's metadata: { success = n, failure = n, pending = n } (n nil
--- for a value that is no count) and their texts as shown ({ success = "n", ... }), or nil when
--- the metadata has none.
function M.counters(metadata)
  local c = type(metadata) == "table" and metadata.counter
  if type(c) ~= "table" then return nil end
  local out, shown = {}, {}
  for _, k in ipairs(M.COUNTERS) do out[k], shown[k] = count(c, k) end
  return out, shown
end

--- "success 25, failure 0, pending 75" of the counters of `metadata` (M.counters; pending left
--- out when `left_out` and it is 0), or nil when it has none.
function M.counters_text(metadata, left_out)
  local c, shown = M.counters(metadata)
  if not c then return nil end
  local text = string.format("success %s, failure %s", shown.success, shown.failure)
  if left_out and shown.pending == "0" then return text end
  return text .. ", pending " .. shown.pending
end

local function elapsed(seconds)
  if seconds < 60 then return string.format("%.0f s", seconds) end
  if seconds < 3600 then return string.format("%d min %02d s", math.floor(seconds / 60), math.floor(seconds % 60)) end
  return string.format("%d h %02d min", math.floor(seconds / 3600), math.floor(seconds % 3600 / 60))
end

local function counters_text(metadata)
  return M.counters_text(metadata) or "no counters yet"
end

--- The progress line: "import: success 25, failure 0, pending 75; 12 s".
function M.progress_line(what, metadata, seconds)
  return string.format("%s: %s; %s", what, counters_text(metadata), elapsed(seconds))
end

-- The progress display: a line rewritten in place on a terminal; elsewhere a line each time
-- the counters change (a log shows the run without a line per poll).
local function progress(what, t0)
  local tty = core.isatty(2)
  local last_text, shown = nil, false
  local function on_metadata(metadata)
    local text = counters_text(metadata)
    if tty then
      io.stderr:write("\r", common.printable(M.progress_line(what, metadata, core.now() - t0)), "\27[K")
      shown = true
    elseif text ~= last_text then
      io.stderr:write(common.printable(M.progress_line(what, metadata, core.now() - t0)), "\n")
    end
    last_text = text
  end
  local function clear()
    if shown then io.stderr:write("\r\27[K") end
  end
  return on_metadata, clear
end

--- The summary of a finished operation: lines naming the counters, the time, the logs URL.
--- `outcome`: "done" or "failed".
function M.summary_lines(what, name, metadata, seconds, outcome)
  local lines = {}
  local c = M.counters(metadata)
  lines[1] = string.format("%s %s in %s: %s", what, outcome, elapsed(seconds),
    M.counters_text(metadata, true) or "no counters")
  lines[#lines + 1] = "operation " .. name
  local logs = type(metadata) == "table" and metadata.logsUrl
  if type(logs) == "string" and logs ~= "" then
    lines[#lines + 1] = "logs " .. logs .. (some_failed(c) and "  (each failure, and why)" or "")
  end
  return lines
end

local function write_lines(lines)
  for _, l in ipairs(lines) do io.stderr:write(common.printable(l), "\n") end
end

-- What the person can do with an operation the command stopped waiting for (`sure`: whether
-- it is known to be running still).
local function still_running(name, sure)
  return string.format("it %s on the server: healthcare operations wait %s waits for it again, "
    .. "healthcare operations cancel %s stops it", sure and "goes on running" or "may still be running", name, name)
end

-- Characters of a name shown when it is no operation's (a server's answer may hold anything).
local NAME_CHARS = 200

-- The name of the operation a start call answered, when it is one to poll; else nil and the
-- message saying why not.
local function start_name(operation)
  local name = operation.name
  if type(name) == "string" and request.build(api_operation.GET, { name = name }) then return name end
  return nil, string.format("the server answered no operation to wait for (name %s)",
    common.printable(errors.cut(tostring(name), NAME_CHARS)))
end

-- Says why the waiting ended for `err` (client:wait's) and returns the exit code.
local function waiting_failed(err, name, sig, say)
  if err.status == "interrupted" then
    say("interrupted: stopped waiting for operation %s; %s", common.printable(name),
      common.printable(still_running(name, true)))
    return 128 + (sig or 2)
  end
  say("%s", tostring(err))
  -- Not done in time, or a poll that failed (the API unavailable past the retries, the network
  -- gone): the operation itself may be fine; what matters is that it is not lost. Not for an
  -- operation the server does not know, nor a name that is none.
  if err.kind == "timeout" or (err.operation and err.kind ~= "usage" and err.http_status ~= 404) then
    say("stopped waiting for operation %s; %s", common.printable(name), common.printable(still_running(name)))
  end
  if err.kind == "timeout" then return common.EXIT_FAILED end
  return common.exit_code_for(err)
end

--- Waits for `operation` (the Operation a start call answered, or an operation's name) on
--- `client`, showing the progress and then the summary. opts: what (the word the lines start
--- with: "import"), say (the command's sayer), operation_timeout, poll_interval, and for each poll
--- params (standard parameters) and timeout. A start call's answer not done yet is named on
--- standard error first ("operation NAME started"), so that nothing after loses it. Returns the
--- exit code, and the operation's response when it ended without an error.
function M.wait(client, operation, opts)
  local what, say = opts.what or "operation", opts.say or common.sayer("healthcare")
  local name = type(operation) == "table" and operation.name or operation
  if type(operation) == "table" and not api_operation.is_done(operation) then
    -- A start call's answer names what to poll: one that names no operation is the server's fault.
    local why
    name, why = start_name(operation)
    if not name then
      say("%s", why)
      return common.EXIT_FAILED
    end
    io.stderr:write("operation ", common.printable(name), " started\n")
  end
  name = type(name) == "string" and errors.cut(name, 1024) or "(no name)"
  local t0 = core.now()
  -- the last metadata with counters (a poll without them, or a final answer without them, does
  -- not wipe them out), and the most failures any poll counted
  local last, worst = nil, 0
  local function note(metadata)
    local c = M.counters(metadata)
    if not c then return end
    last = metadata
    if c.failure and c.failure > worst then worst = c.failure end
  end
  note(type(operation) == "table" and operation.metadata or nil)
  local show, clear = progress(what, t0)
  core.trap_interrupts()
  local response, op_or_err = client:wait(operation, {
    operation_timeout = opts.operation_timeout or M.DEFAULT_OPERATION_TIMEOUT,
    poll_interval = opts.poll_interval or M.DEFAULT_POLL_INTERVAL,
    params = opts.params, timeout = opts.timeout,
    on_progress = function(metadata)
      note(metadata)
      show(metadata)
    end,
  })
  local sig = core.interrupted()
  core.trap_interrupts(false)
  clear()
  local seconds = core.now() - t0
  if response then
    local op = op_or_err
    local metadata = type(op) == "table" and M.counters(op.metadata) and op.metadata or last
    write_lines(M.summary_lines(what, name, metadata, seconds, "done"))
    local c, shown = M.counters(metadata)
    if c and not some_failed(c) and worst > 0 then
      say("%d failed as an earlier poll counted them (the last counters say none): the logs name each one and why",
        worst)
      return common.EXIT_FAILED, response, op
    end
    if some_failed(c) then
      if c.failure == nil then
        say("the operation's failure counter (%s) is not a count: whether any item failed is unknown; the logs "
          .. "name each failure", common.printable(shown.failure))
      else
        say("%s failed: the logs name each one and why", shown.failure)
      end
      return common.EXIT_FAILED, response, op
    end
    return common.EXIT_OK, response, op
  end
  local err = op_or_err
  if err.kind == "operation" then
    write_lines(M.summary_lines(what, name, M.counters(err.metadata) and err.metadata or last, seconds, "failed"))
    say("%s", tostring(err))
    return common.EXIT_FAILED
  end
  return waiting_failed(err, name, sig, say)
end

--- For a start call's answer `operation` (an Operation): with `no_wait`, its name printed on
--- standard output (exit 0); else M.wait. An answer that names no operation is exit 1 either
--- way, and one that is over already (done, or failed) is told and ends as M.wait ends it (its
--- name printed first all the same). Returns the exit code (and M.wait's response).
function M.finish(client, operation, opts, no_wait)
  if not no_wait then return M.wait(client, operation, opts) end
  local name, why = start_name(operation)
  if api_operation.is_done(operation) then
    if name then io.stdout:write(common.printable(name), "\n") end
    return M.wait(client, operation, opts)
  end
  if not name then
    local say = opts.say or common.sayer("healthcare")
    say("%s", why)
    return common.EXIT_FAILED
  end
  io.stdout:write(common.printable(name), "\n")
  return common.EXIT_OK
end

return M
