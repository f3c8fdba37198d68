-- SPDX-License-Identifier: MIT
-- client:call(method, params, body, opts): any method of the Cloud Healthcare API by Google's
-- name, checked against the method table before anything is sent (healthcare.api.request),
-- sent through the client's one request path with the retries its verb allows
-- (healthcare.api.send), its answer decoded; with wait = true, the Operation it answers is
-- followed to its end (healthcare.api.operation).
local api = require "healthcare.api"
local errors = require "healthcare.errors"
local operation = require "healthcare.api.operation"
local request = require "healthcare.api.request"
local retry = require "healthcare.retry"
local send = require "healthcare.api.send"
local util = require "healthcare.util"

local M = {}

-- call's options (README "The whole API"): the request's, the answer's bounds, and waiting.
M.OPTIONS = { "query", "headers", "accept", "to", "timeout", "idle_timeout", "min_speed", "max_bytes",
  "compressed", "max_compression_ratio", "on_progress", "retry", "on_retry", "wait", "operation_timeout",
  "poll_interval" }
-- Options that mean something only while waiting for an operation.
local WAIT_ONLY = { "operation_timeout", "poll_interval" }
local SUGGESTIONS = 5

-- Raises for a misuse of call's options (level: as util.check_arg's); returns them.
local function check_options(opts, level)
  level = level + 1
  local fname = "call"
  opts = util.check_options(opts, M.OPTIONS, fname, level)
  for _, check in ipairs({ { "query", "table" }, { "headers", "table" }, { "accept", "string" }, { "to", "string" },
    { "wait", "boolean" }, { "compressed", "boolean" }, { "on_progress", "function" }, { "on_retry", "function" } }) do
    util.check_option(opts[check[1]], check[1], fname, check[2], level)
  end
  for i, h in ipairs(opts.headers or {}) do
    if type(h) ~= "string" then
      error(string.format("bad option 'headers' to 'call' (a list of strings expected; item %d is a %s)", i,
        type(h)), level)
    end
  end
  if opts.to == "" then error("bad option 'to' to 'call' (path expected, got an empty string)", level) end
  for _, name in ipairs({ "timeout", "idle_timeout", "max_compression_ratio", "operation_timeout" }) do
    util.check_number(opts[name], name, fname, ">= 0", level)
  end
  util.check_number(opts.min_speed, "min_speed", fname, "whole >= 0", level)
  util.check_number(opts.max_bytes, "max_bytes", fname, "whole >= 0", level)
  util.check_number(opts.poll_interval, "poll_interval", fname, "> 0", level)
  retry.check(opts.retry, fname, level)
  if opts.wait then
    if opts.to then
      error("bad option 'to' to 'call' (not with wait = true: the Operation is read in memory)", level)
    end
  else
    for _, name in ipairs(WAIT_ONLY) do
      if opts[name] ~= nil then
        error(string.format("bad option '%s' to 'call' (it applies with wait = true)", name), level)
      end
    end
  end
  return opts
end

-- The methods that answer an Operation, closest to `id` first.
local function operation_methods(id)
  local list = {}
  for _, other in ipairs(api.ids()) do
    if api.method(other).response == "Operation" then list[#list + 1] = other end
  end
  return request.closest(id, list, SUGGESTIONS)
end

-- The standard parameters among a call's params (sent on the polls of wait = true, as on the call).
local function standard_params(params)
  local out = {}
  for _, p in ipairs(api.table().standard_params) do
    if params and params[p.name] ~= nil then out[p.name] = params[p.name] end
  end
  return out
end

--- client:call(method, params, body, opts): see README "The whole API". Returns the answer
--- (decoded JSON, an HttpBody { content_type, data, json }, or { content_type, file, bytes } with
--- opts.to) and the raw response; with wait = true the operation's response and the final
--- Operation. Or nil, err.
function M.call(client, method, params, body, opts)
  util.check_self(client, "healthcare.Client", "call")
  util.check_arg(method, 1, "call", "string")
  util.check_arg(params, 2, "call", "table|nil", nil, "params table")
  util.check_arg(body, 3, "call", "table|nil", nil, "body table")
  opts = check_options(opts, 2)
  local req, err = request.build(method, params, body, { query = opts.query })
  if not req then return nil, err end
  local m = api.method(req.method_id)
  if opts.wait and m.response ~= "Operation" then
    return nil, errors.new("usage", string.format("%s answers %s, not an Operation: wait = true applies to %s, ...",
      m.id, m.response, table.concat(operation_methods(m.id), ", ")), { method = m.id })
  end
  local transport = opts
  if opts.wait then -- on_progress gets the operation's metadata, not the transfer's counters
    transport = {}
    for k, v in pairs(opts) do transport[k] = v end
    transport.on_progress = nil
  end
  local res
  res, err = send.send(client, req, transport, retry.new(nil, opts.retry, client.retry), nil,
    m.response ~= "HttpBody")
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then return nil, errors.from_response(res, m.id) end
  local answer
  answer, err = send.answer(m, res, opts.to, client)
  if not answer then return nil, err end
  if not opts.wait then return answer, res end
  -- The name to poll comes from the server: one that is not an operation's is its fault (kind
  -- "http"), not a usage error of the caller's.
  if answer.done ~= true and type(answer.error) ~= "table"
    and not (type(answer.name) == "string" and request.build(operation.GET, { name = answer.name })) then
    return nil, errors.new("http", string.format("%s: HTTP %d: the answer is not an Operation to wait for (no name "
      .. "projects/.../operations/{id}): %s", m.id, res.status, tostring(answer.name):sub(1, 200)),
      { http_status = res.status })
  end
  local response, op = operation.wait(client, answer, {
    operation_timeout = opts.operation_timeout, poll_interval = opts.poll_interval, on_progress = opts.on_progress,
    timeout = opts.timeout, retry = opts.retry, params = standard_params(params),
  })
  return response, op
end

return M
