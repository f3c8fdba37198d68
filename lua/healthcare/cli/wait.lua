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
local core = require "healthcare.core"
local api_operation = require "healthcare.api.operation"
local request = require "healthcare.api.request"
local common = require "healthcare.cli.common"

local M = {}

-- The command waits longer than the library's default (600 s): an import of an archive takes
-- hours, and the person at the terminal has Ctrl-C.
M.DEFAULT_OPERATION_TIMEOUT = 7 * 24 * 3600
M.DEFAULT_POLL_INTERVAL = 1
-- The counters of OperationMetadata.counter (ProgressCounter), in the order lines show them.
M.COUNTERS = { "success", "failure", "pending" }

--- Adds --no-wait, --operation-timeout and --poll-interval to an argparse parser.
function M.add_options(p)
  p:flag("--no-wait", "Start the operation, print its name on standard output and exit 0 without waiting "
    .. "(healthcare operations wait NAME waits for it later).")
  p:option("--operation-timeout", "Seconds to wait for the operation before giving up waiting (it goes on "
    .. "running on the server).", tostring(M.DEFAULT_OPERATION_TIMEOUT)):argname("<seconds>"):convert(tonumber)
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

-- An int64 counter of the metadata (Google sends them as strings) as a number, 0 when absent.
local function count(counter, key)
  return tonumber(type(counter) == "table" and counter[key]) or 0
end

--- The counters of an operation's metadata: { success = n, failure = n, pending = n }, or nil
--- when the metadata has none.
function M.counters(metadata)
  local c = type(metadata) == "table" and metadata.counter
  if type(c) ~= "table" then return nil end
  local out = {}
  for _, k in ipairs(M.COUNTERS) do out[k] = count(c, k) end
  return out
end

local function elapsed(seconds)
  if seconds < 60 then return string.format("%.0f s", seconds) end
  if seconds < 3600 then return string.format("%d min %02d s", math.floor(seconds / 60), math.floor(seconds % 60)) end
  return string.format("%d h %02d min", math.floor(seconds / 3600), math.floor(seconds % 3600 / 60))
end

local function counters_text(c)
  if not c then return "no counters yet" end
  return string.format("success %d, failure %d, pending %d", c.success, c.failure, c.pending)
end

--- The progress line: "import: success 25, failure 0, pending 75; 12 s".
function M.progress_line(what, metadata, seconds)
  return string.format("%s: %s; %s", what, counters_text(M.counters(metadata)), elapsed(seconds))
end

-- The progress display: a line rewritten in place on a terminal; elsewhere a line each time
-- the counters change (a log shows the run without a line per poll).
local function progress(what, t0)
  local tty = core.isatty(2)
  local last_text, shown = nil, false
  local function on_metadata(metadata)
    local text = counters_text(M.counters(metadata))
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
    c and string.format("success %d, failure %d%s", c.success, c.failure,
      c.pending > 0 and string.format(", pending %d", c.pending) or "") or "no counters")
  lines[#lines + 1] = "operation " .. name
  local logs = type(metadata) == "table" and metadata.logsUrl
  if type(logs) == "string" and logs ~= "" then
    lines[#lines + 1] = "logs " .. logs .. (c and c.failure > 0 and "  (each failure, and why)" or "")
  end
  return lines
end

local function write_lines(lines)
  for _, l in ipairs(lines) do io.stderr:write(common.printable(l), "\n") end
end

-- What the person can do with an operation the command stopped waiting for.
local function still_running(name)
  return string.format("it goes on running on the server: healthcare operations wait %s waits for it again, "
    .. "healthcare operations cancel %s stops it", name, name)
end

--- Waits for `operation` (the Operation a start call answered, or an operation's name) on
--- `client`, showing the progress and then the summary. opts: what (the word the lines start
--- with: "import"), say (the command's sayer), operation_timeout, poll_interval, and for each poll
--- params (standard parameters) and timeout. Returns the exit code, and the operation's
--- response when it ended without an error.
function M.wait(client, operation, opts)
  local what, say = opts.what or "operation", opts.say or common.sayer("healthcare")
  local name = type(operation) == "table" and operation.name or operation
  -- A start call's answer names what to poll: one that names no operation is the server's fault.
  if type(operation) == "table" and operation.done ~= true and type(operation.error) ~= "table"
    and not (type(name) == "string" and request.build(api_operation.GET, { name = name })) then
    say("the server answered no operation to wait for (name %s)", common.printable(tostring(name):sub(1, 200)))
    return common.EXIT_FAILED
  end
  name = type(name) == "string" and name or "(no name)"
  local t0 = core.now()
  local last = type(operation) == "table" and operation.metadata or nil
  local show, clear = progress(what, t0)
  core.trap_interrupts()
  local response, op_or_err = client:wait(operation, {
    operation_timeout = opts.operation_timeout or M.DEFAULT_OPERATION_TIMEOUT,
    poll_interval = opts.poll_interval or M.DEFAULT_POLL_INTERVAL,
    params = opts.params, timeout = opts.timeout,
    on_progress = function(metadata)
      last = metadata
      show(metadata)
    end,
  })
  local sig = core.interrupted()
  core.trap_interrupts(false)
  clear()
  local seconds = core.now() - t0
  if response then
    local op = op_or_err
    local metadata = type(op) == "table" and type(op.metadata) == "table" and op.metadata or last
    write_lines(M.summary_lines(what, name, metadata, seconds, "done"))
    local c = M.counters(metadata)
    if c and c.failure > 0 then
      say("%d failed: the logs name each one and why", c.failure)
      return common.EXIT_FAILED, response, op
    end
    return common.EXIT_OK, response, op
  end
  local err = op_or_err
  if err.status == "interrupted" then
    say("interrupted: stopped waiting for operation %s; %s", common.printable(name),
      common.printable(still_running(name)))
    return 128 + (sig or 2)
  end
  if err.kind == "operation" then
    write_lines(M.summary_lines(what, name, err.metadata or last, seconds, "failed"))
    say("%s", tostring(err))
    return common.EXIT_FAILED
  end
  if err.kind == "timeout" then
    say("%s", tostring(err))
    return common.EXIT_FAILED
  end
  say("%s", tostring(err))
  return common.exit_code_for(err)
end

--- For a start call's answer `operation` (an Operation): with `no_wait`, its name printed on
--- standard output (exit 0); else M.wait. Returns the exit code (and M.wait's response).
function M.finish(client, operation, opts, no_wait)
  if no_wait then
    local name = type(operation) == "table" and operation.name
    if type(name) ~= "string" then
      local say = opts.say or common.sayer("healthcare")
      say("the server answered no operation name")
      return common.EXIT_FAILED
    end
    io.stdout:write(common.printable(name), "\n")
    return common.EXIT_OK
  end
  return M.wait(client, operation, opts)
end

return M
