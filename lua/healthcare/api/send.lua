-- SPDX-License-Identifier: MIT
-- The transport step of client:call, client:pages and client:wait: a request built from the
-- method table (healthcare.api.request) goes through the client's one request path
-- (Client:send: credentials, the standard parameters, redaction, the 401 refresh), is sent again
-- after a wait (healthcare.retry) when the answer says that is safe and worth it, and its answer
-- is read: JSON decoded, an HttpBody as its bytes and media type, or a file.
local core = require "healthcare.core"
local api = require "healthcare.api"
local errors = require "healthcare.errors"
local request = require "healthcare.api.request"
local util = require "healthcare.util"

local M = {}

-- An answer held in memory is capped by the transport (64 MiB, README "Bounded answers"); one
-- streamed to a file (opts.to) as a retrieve's is, at 1 TiB.
M.MAX_MEMORY_BYTES = 64 * 1024 * 1024
M.MAX_FILE_BYTES = 1024 * 1024 * 1024 * 1024

-- What is sent again, by verb (README "The whole API"):
--   GET: every answer errors.RETRYABLE_HTTP names (408, 429, 5xx) and every retryable transport
--     failure: reading twice changes nothing.
--   DELETE, PUT (idempotent in HTTP): the same answers, but of the transport failures only those
--     where nothing reached the server (no address, no connection); a DELETE that did reach it
--     would answer 404 the second time. (healthcare.dicomweb.delete's rule for its DELETE.)
--   POST, PATCH: only 429 and 503, answers that say nothing was done (RESOURCE_EXHAUSTED,
--     UNAVAILABLE; Google's AIP-194 retries UNAVAILABLE for every method), and the failures
--     where nothing was sent: a create sent twice answers 409, an import would run twice.
local IDEMPOTENT = { GET = true, DELETE = true, PUT = true }
local NOT_DONE = { [429] = true, [503] = true }
local NOT_SENT = { resolve = true, connect = true }

--- Whether the outcome of one attempt of a `verb` request is worth another, and the seconds the
--- server asked to wait (Retry-After or Google's RetryInfo), for retry.Policy:run.
function M.retry_of(verb)
  return function(res, err)
    if res then
      local again = IDEMPOTENT[verb] and errors.RETRYABLE_HTTP[res.status] or NOT_DONE[res.status]
      if not again then return false end
      return true, errors.from_response(res).retry_after
    end
    if not err.retryable then return false end
    return verb == "GET" or NOT_SENT[err.status] == true, err.retry_after
  end
end

-- "Content-Type: x" and the transport body of an HttpBody ({ content_type, data = string |
-- { file = path } }, its shape checked by request.build), or nil, err.
local function http_body(body)
  if core.has_ctl(body.content_type) then
    return nil, errors.new("usage", "the body's content_type contains CR, LF or NUL; refusing to send it "
      .. "as a header")
  end
  if type(body.data) == "string" then return body.data end
  -- A file that cannot be read is the caller's to fix: say so before fetching any token.
  local f, why = io.open(body.data.file, "rb")
  if not f then return nil, errors.new("io", "cannot open " .. why) end -- why: "<path>: <reason>"
  f:close()
  return { { file = body.data.file } }
end

-- The query of a built request split in two: the method's own parameters and opts.query, in
-- their order, as the URL's query string; and the standard parameters by name, which the
-- client merges over its own (healthcare.new's params: a call's value wins, none is sent twice).
local function split_query(req)
  local m = api.method(req.method_id)
  local own = {}
  for _, p in ipairs(m.query) do own[p.name] = true end
  local standard = {}
  for _, p in ipairs(api.table().standard_params) do standard[p.name] = true end
  local parts, std = {}, {}
  for _, pair in ipairs(req.query) do
    if standard[pair[1]] and not own[pair[1]] then
      std[pair[1]] = pair[2]
    else
      parts[#parts + 1] = request.escape(pair[1]) .. "=" .. request.escape(pair[2])
    end
  end
  return table.concat(parts, "&"), std
end

--- The Client:send request for `req` (request.build's) with the transport options `opts`
--- (accept, headers, timeout, idle_timeout, min_speed, compressed, max_compression_ratio,
--- on_progress; to: stream the answer into that file; max_bytes: the answer's cap, 0 none), or
--- nil, err. `json`: whether the answer is JSON (then asked for compressed, as the seed form's).
function M.transport_request(client, req, opts, json)
  local qs, std = split_query(req)
  local url = request.url(client.endpoint, req.path)
  if qs ~= "" then url = url .. "?" .. qs end
  local headers = { "Accept: " .. (opts.accept or (json and "application/json" or "*/*")) }
  for _, h in ipairs(opts.headers or {}) do
    if core.has_ctl(h) or not h:find("^[^:%s]+:") then
      return nil, errors.new("usage", "a header must be one 'Name: value' line without CR, LF or NUL")
    end
    headers[#headers + 1] = h
  end
  local body = req.body
  if type(body) == "table" then
    local berr
    body, berr = http_body(body)
    if not body then return nil, berr end
  end
  if req.content_type then
    headers[#headers + 1] = "Content-Type: " .. req.content_type
  elseif req.method == "POST" or req.method == "PUT" then
    -- A POST or PUT without a body: libcurl would call its nothing a form
    -- (application/x-www-form-urlencoded); a header with no value is libcurl's way to send none.
    headers[#headers + 1] = "Content-Type:"
  end
  local t = {
    method = req.method, url = url, headers = headers, query = std, body = body,
    timeout = opts.timeout, idle_timeout = opts.idle_timeout, min_speed = opts.min_speed,
    compressed = opts.compressed, max_compression_ratio = opts.max_compression_ratio,
    on_progress = opts.on_progress,
  }
  if t.compressed == nil and json then t.compressed = true end
  -- max_bytes: 0 turns the bound off (0 is "none" to a sink, 2^53 is as good in memory)
  if opts.to then
    t.sink = { file = opts.to, max_bytes = opts.max_bytes or M.MAX_FILE_BYTES }
  elseif opts.max_bytes then
    t.max_response_bytes = opts.max_bytes == 0 and 2 ^ 53 or opts.max_bytes
  end
  return t
end

--- Policy:run's on_wait for opts.on_retry(err, seconds, attempt) of a request whose attempts give
--- a response of any status or nil, err (client:send's): the failure as an error value, an answer
--- (a 503 with Retry-After) made one as the call would return it, `what` leading its message.
--- nil without on_retry. store:fetch's too.
function M.on_wait_of(on_retry, client, what)
  return on_retry and function(seconds, n, res, err)
    on_retry(err or errors.from_response(res, what, client), seconds, n + 1)
  end
end

--- Sends `req` (request.build's) through client:send, again as M.retry_of allows under `policy`
--- (never past stop_at, a core.now() time, when given; opts.on_retry told before each wait).
--- Returns the response (any status) or nil, err; a passed bound names its option (err.option:
--- max_bytes).
function M.send(client, req, opts, policy, stop_at, json)
  local t, err = M.transport_request(client, req, opts, json)
  if not t then return nil, err end
  local res
  res, err = policy:run(function() return client:send(t) end, M.retry_of(req.method), stop_at, nil,
    M.on_wait_of(opts.on_retry, client, req.method_id))
  if not res and (err.status == "response_too_large" or err.status == "too_large") then
    err.option = "max_bytes"
    err.message = string.format("%s: the answer is larger than %.0f bytes (option max_bytes)", req.method_id,
      opts.to and (opts.max_bytes or M.MAX_FILE_BYTES) or opts.max_bytes or M.MAX_MEMORY_BYTES)
  end
  return res, err
end

local function media_type(headers)
  return headers and headers["content-type"] or ""
end

--- An answer that must be a JSON object (the method's response schema), decoded; {} for an
--- empty body. Or nil, err. The client's secrets are taken out of the body first.
function M.json_object(res, what, client)
  -- Read as text whatever its media type says: the client leaves a 2xx body it does not take
  -- for text as it came, and an echo of the token must not reach the error or the answer.
  local body = client:redact(res.body or "")
  if body:match("^%s*$") then return {} end
  local doc = util.decode_json(body)
  if type(doc) ~= "table" then
    return nil, errors.new("http", string.format("%s: HTTP %d: the answer is not a JSON object (%s): %s", what,
      res.status, media_type(res.headers) ~= "" and media_type(res.headers) or "no Content-Type",
      (body:gsub("%s+", " "):sub(1, 200))), { http_status = res.status })
  end
  return doc
end

--- The answer of a successful call of method m: the file it went to ({ content_type, file,
--- bytes }), an HttpBody ({ content_type, data, json = decoded when the media type says JSON
--- and it decodes }), or the decoded JSON object. Or nil, err.
function M.answer(m, res, to, client)
  local ct = media_type(res.headers)
  if to then
    return { content_type = ct, file = res.file or to, bytes = res.bytes or 0 }
  end
  if m.response == "HttpBody" then
    local out = { content_type = ct, data = res.body or "" }
    if ct:lower():find("json", 1, true) then
      local doc = util.decode_json(out.data)
      if type(doc) == "table" then out.json = doc end
    end
    return out
  end
  return M.json_object(res, m.id, client)
end

return M
