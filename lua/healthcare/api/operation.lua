-- SPDX-License-Identifier: MIT
-- Google's long-running operations: client:wait(operation, opts) polls operations.get until the
-- operation is done, and returns its response, or its error as an error value (kind
-- "operation"). The one poller of the module: client:call's `wait = true` and the DICOMweb
-- deletes (healthcare.dicomweb.delete) wait through it.
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local params = require "healthcare.params"
local request = require "healthcare.api.request"
local retry = require "healthcare.retry"
local send = require "healthcare.api.send"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "operation_timeout", "poll_interval", "on_progress", "params", "timeout", "retry" }
M.DEFAULT_OPERATION_TIMEOUT = 600 -- seconds an operation may take before we stop waiting
M.POLL_INTERVAL = 1               -- first wait before a poll, seconds; doubles up to ten times this
M.POLL_GROWTH = 2
M.POLL_MAX_FACTOR = 10
M.GET = "projects.locations.datasets.operations.get"

-- google.rpc.Code names, for an Operation's error.code.
M.RPC_STATUS = {
  [0] = "OK", [1] = "CANCELLED", [2] = "UNKNOWN", [3] = "INVALID_ARGUMENT", [4] = "DEADLINE_EXCEEDED",
  [5] = "NOT_FOUND", [6] = "ALREADY_EXISTS", [7] = "PERMISSION_DENIED", [8] = "RESOURCE_EXHAUSTED",
  [9] = "FAILED_PRECONDITION", [10] = "ABORTED", [11] = "OUT_OF_RANGE", [12] = "UNIMPLEMENTED",
  [13] = "INTERNAL", [14] = "UNAVAILABLE", [15] = "DATA_LOSS", [16] = "UNAUTHENTICATED",
}

--- Raises for a misuse of client:wait's options (M.OPTIONS) as given to `fname`; `level` as
--- util.check_arg's. Returns the options.
function M.check(opts, fname, level)
  level = (level or 2) + 1
  opts = util.check_options(opts, M.OPTIONS, fname, level)
  util.check_option(opts.params, "params", fname, "table", level)
  util.check_option(opts.on_progress, "on_progress", fname, "function", level)
  -- A zero interval would poll as fast as the server answers, for up to the operation timeout.
  util.check_number(opts.poll_interval, "poll_interval", fname, "> 0", level)
  util.check_number(opts.operation_timeout, "operation_timeout", fname, ">= 0", level)
  util.check_number(opts.timeout, "timeout", fname, ">= 0", level)
  retry.check(opts.retry, fname, level)
  return opts
end

-- "operation NAME" or "WHAT: operation NAME", how messages name what they are about.
local function named(what, name)
  return (what and (what .. ": ") or "") .. "operation " .. name
end

--- Whether an Operation ended with an error: any `error` but none and JSON's null (a server
--- that sends a text there, not a google.rpc.Status, still says the operation failed).
function M.has_error(op)
  return op.error ~= nil and op.error ~= cjson.null
end

--- Whether an Operation is over: done, or with an error.
function M.is_done(op)
  return op.done == true or M.has_error(op)
end

--- The error value of an Operation's `error` (a google.rpc.Status: code, message, details; or
--- whatever else a server put there): kind "operation", status the code's canonical name, and
--- the operation's name. The message is cut (errors.cut): one can be megabytes.
function M.failed(name, e, what)
  if type(e) ~= "table" then e = { message = type(e) == "string" and e or nil } end
  local code = tonumber(e.code)
  -- 13, not 13.0; anything else (2.5, "1e999", a long text) shown as it came, cut
  code = code and code == math.floor(code) and math.abs(code) < 2 ^ 31 and math.floor(code) or nil
  local code_text = code and tostring(code) or errors.cut(tostring(e.code), 40)
  local status = M.RPC_STATUS[code] or (e.code == nil and "UNKNOWN" or ("CODE_" .. code_text))
  -- The message goes in as it is (but cut): tostring(err) makes it printable.
  local message = type(e.message) == "string" and errors.cut(e.message) or "no message"
  return errors.new("operation", string.format("%s failed: %s (%s)", named(what, name), message,
    e.code == nil and "no code" or ("code " .. code_text .. " " .. status)), {
      status = status, operation = name, details = type(e.details) == "table" and e.details or nil,
    })
end

-- The outcome of a done operation: its response ({} when it has none), or nil, err (with the
-- operation's metadata: its counters say what was done before the error).
local function outcome(op, name, what)
  if M.has_error(op) then
    local err = M.failed(name, op.error, what)
    err.metadata = type(op.metadata) == "table" and op.metadata or nil
    return nil, err
  end
  if type(op.response) == "table" then return op.response end
  return {}
end

-- Set by SIGINT/SIGTERM once the program called core.trap_interrupts() (the command does).
local interrupted = core.interrupted or function() return false end
M.INTERRUPT_CHECK = 0.1 -- seconds between two looks at the interrupt flag while sleeping

-- Sleeps `secs`, waking early when an interrupt was trapped: whether one was; or nil, err when
-- it cannot sleep without blocking (an nginx phase that cannot yield).
local function sleep(secs)
  local wake = core.now() + secs
  while not interrupted() do
    local left = wake - core.now()
    if left <= 0 then return false end
    local slept, err = util.sleep(math.min(left, M.INTERRUPT_CHECK)) -- ngx.sleep inside nginx
    if not slept then return nil, err end
  end
  return true
end

-- The largest transport timeout (seconds) the C core takes.
local MAX_TIMEOUT = 1e9

-- One poll: the operation as the server has it now, or nil, err. It may take the time left
-- before the deadline, no more (nor more than opts.timeout, else the client's timeout), and a
-- trapped interrupt stops it at once: a slow answer must not hold the waiting past
-- operation_timeout or Ctrl-C.
local function poll(client, req, name, opts, policy, deadline, what)
  local timeout = math.min(math.max(deadline - core.now(), 0.001), MAX_TIMEOUT) -- (0 would be no limit)
  local bound = opts.timeout or client.timeout
  if bound and bound > 0 then timeout = math.min(timeout, bound) end
  local sent = { timeout = timeout, on_progress = function() return not interrupted() end }
  local res, err = send.send(client, req, sent, policy, deadline, true)
  if not res then
    err.operation = name
    return nil, err
  end
  local doing = what and string.format("%s (polling operation %s)", what, name) or ("polling operation " .. name)
  if res.status ~= 200 then
    err = errors.from_response(res, doing)
    err.operation = name
    return nil, err
  end
  local op
  op, err = send.json_object(res, doing, client)
  if not op then
    err.operation = name
    return nil, err
  end
  return op
end

local function timed_out(client, req, name, timeout, polls, what)
  return errors.new("timeout", string.format(
    "%s not done after %g s; it may still finish: check it with GET %s", named(what, name), timeout,
    request.url(client.endpoint, req.path)), { status = "DEADLINE_EXCEEDED", operation = name, polls = polls })
end

local function stopped(name, polls, what)
  return errors.new("timeout", string.format("%s: stopped waiting (interrupted); it goes on running on "
    .. "the server", named(what, name)), { status = "interrupted", operation = name, polls = polls })
end

--- Waits for `operation` (an Operation table, or its name) to be done. opts are M.OPTIONS
--- (checked by the caller). Returns the operation's response, the final Operation and the
--- number of polls made; or nil, err: kind "operation" (Google's error, err.metadata the
--- operation's), "timeout" (not done by operation_timeout, on_progress returned false, or a
--- trapped interrupt (status "interrupted"): it may still finish), or the error of a
--- poll (err.operation its name). `what` prefixes messages ("DeleteStudy").
function M.wait(client, operation, opts, what)
  local op = type(operation) == "table" and operation or { name = operation }
  local name = op.name
  if M.is_done(op) then
    local response, err = outcome(op, errors.cut(tostring(name)), what)
    if not response then return nil, err end
    return response, op, 0
  end
  if type(name) ~= "string" then
    return nil, errors.new("usage", (what and (what .. ": ") or "") .. "not an operation: no name to poll")
  end
  local query, qerr = params.query(opts.params)
  if not query then return nil, qerr end
  local req, berr = request.build(M.GET, { name = name }, nil, nil)
  if not req then return nil, berr end
  for k, v in pairs(query) do req.query[#req.query + 1] = { k, v } end
  local policy = retry.new(nil, opts.retry, client.retry)
  local interval = opts.poll_interval or M.POLL_INTERVAL
  local max_interval = interval * M.POLL_MAX_FACTOR
  local timeout = opts.operation_timeout or M.DEFAULT_OPERATION_TIMEOUT
  local deadline = core.now() + timeout
  local polls = 0
  while true do
    local left = deadline - core.now()
    if left <= 0 then return nil, timed_out(client, req, name, timeout, polls, what) end
    local woke, serr = sleep(math.min(interval, left))
    if serr then
      serr.operation = name
      return nil, serr
    end
    if woke then return nil, stopped(name, polls, what) end
    -- No poll starts once the time is up (the sleep may have taken the last of it).
    if deadline - core.now() <= 0 then return nil, timed_out(client, req, name, timeout, polls, what) end
    interval = math.min(max_interval, interval * M.POLL_GROWTH)
    polls = polls + 1
    local now, err = poll(client, req, name, opts, policy, deadline, what)
    if not now then
      -- Whatever a poll cut short by an interrupt answered, the interrupt is what happened.
      if interrupted() then return nil, stopped(name, polls, what) end
      if err.kind == "transport" and err.status == "timeout" and core.now() >= deadline then
        return nil, timed_out(client, req, name, timeout, polls, what)
      end
      return nil, err
    end
    op = now
    if opts.on_progress and opts.on_progress(type(op.metadata) == "table" and op.metadata or {}) == false then
      return nil, errors.new("timeout", string.format("%s: stopped waiting (on_progress returned false); it may "
        .. "still finish", named(what, name)), { status = "aborted", operation = name, polls = polls })
    end
    if M.is_done(op) then
      local response, oerr = outcome(op, name, what)
      if not response then return nil, oerr end
      return response, op, polls
    end
  end
end

return M
