-- SPDX-License-Identifier: MIT
-- Error values. Every failed call returns nil and one of these tables:
--   kind        "http" | "transport" | "auth" | "dicom" | "usage" | "io" | "timeout" | "operation"
--               ("timeout": a long-running operation was not done in time, or its waiter was told
--               to stop; it may still finish. "operation": one ended with Google's error)
--   message     what a person can act on; it may quote a server's text exactly as sent (our own
--               secrets in it replaced by REDACTED), control characters included, each text cut
--               to MAX_QUOTED bytes (M.cut: a server can send megabytes)
--   http_status the HTTP status, when a response came back
--   status      Google's status string (e.g. "UNAUTHENTICATED"), or the reason the C core gives
--               (the transport's "connect", "timeout", ...; the files' "busy", "unsafe", ...)
--   retryable   whether sending the same request again may succeed
--   retry_after seconds the server asked us to wait (Retry-After or RetryInfo), when it did
--   details     Google's error details list, when present, as sent (whole: the message quotes none)
--   reason      the ErrorInfo reason among them (e.g. "API_KEY_INVALID"), when present
--   operation   the long-running operation's name, for errors about one (client:wait, delete)
-- tostring(err) gives the message made printable (util.printable): one line, safe for a terminal.
-- Raised errors are kept for programming mistakes.
local core = require "healthcare.core"
local util = require "healthcare.util"

local M = {}

-- Written once; used by the retry logic, the docs and the specs.
M.RETRYABLE_HTTP = { [408] = true, [429] = true, [500] = true, [502] = true, [503] = true, [504] = true }
M.RETRYABLE_TRANSPORT = {
  resolve = true, connect = true, timeout = true, send = true, recv = true,
  empty_reply = true, partial = true, http2 = true, tls = true, too_slow = true,
}
-- google.rpc.ErrorInfo reasons that say the credential is wrong, whatever the HTTP status.
M.CREDENTIAL_REASONS = { API_KEY_INVALID = true, API_KEY_EXPIRED = true, API_KEY_SERVICE_BLOCKED = true }
-- The status of a reply without Google's envelope (a proxy's, a load balancer's, Orthanc's, plain
-- text): Google's canonical name only where its mapping (google/rpc/code.proto) gives the HTTP
-- status one code, and 502 (a gateway that says its upstream failed: UNAVAILABLE, as gRPC's
-- mapping for intermediaries has it); else "HTTP_<n>". 400 is INVALID_ARGUMENT, FAILED_PRECONDITION
-- or OUT_OF_RANGE, 409 ALREADY_EXISTS or ABORTED (a proxy's 409 says neither), 500 INTERNAL,
-- UNKNOWN or DATA_LOSS; 408, 413 (a proxy's body limit) and 415 have no code at all.
local STATUS_NAME = {
  [401] = "UNAUTHENTICATED", [403] = "PERMISSION_DENIED", [404] = "NOT_FOUND", [429] = "RESOURCE_EXHAUSTED",
  [499] = "CANCELLED", [501] = "UNIMPLEMENTED", [502] = "UNAVAILABLE", [503] = "UNAVAILABLE",
  [504] = "DEADLINE_EXCEEDED",
}

M.mt = core.Error
-- The C core's __tostring gives the message as it is; what a person sees goes through the one
-- printable() of the module, so a server's ESC sequence or CR/LF never reaches a terminal raw.
-- Errors the core makes share this metatable.
M.mt.__tostring = function(err)
  local message = rawget(err, "message")
  local t = type(message)
  return util.printable((t == "string" or t == "number") and message or "unknown error")
end

-- How much of a server's text a message quotes: an error's text can be megabytes.
M.MAX_QUOTED = 300
-- How much of a status a server names (Google's are names such as FAILED_PRECONDITION).
M.MAX_STATUS = 64

--- `text` cut to at most n bytes (default M.MAX_QUOTED), never inside a UTF-8 character, with
--- "..." and the whole length after it when it was cut.
function M.cut(text, n)
  n = n or M.MAX_QUOTED
  if #text <= n then return text end
  local i = n
  -- back off over UTF-8 continuation bytes (0x80-0xBF): the cut goes before their lead byte
  while i > 0 and text:byte(i + 1) >= 0x80 and text:byte(i + 1) < 0xC0 do i = i - 1 end
  return string.format("%s... (%d bytes in all)", text:sub(1, i), #text)
end

function M.new(kind, message, fields)
  local err = fields or {}
  err.kind, err.message = kind, message
  if err.retryable == nil then err.retryable = false end
  return setmetatable(err, M.mt)
end

function M.is(v)
  return getmetatable(v) == M.mt
end

--- Completes an error returned by the C transport ({ kind, message, status, retryable = false },
--- hc_lua_fail) with the policy: whether its status is worth a retry, and the URL redacted.
function M.from_transport(err)
  -- The message names the URL; its query may carry a token or key.
  err.message = util.redact_url(err.message)
  err.retryable = M.RETRYABLE_TRANSPORT[err.status] == true
  return err
end

-- "3s", "1.5s" (google.protobuf.Duration in JSON) -> seconds
local function duration(s)
  local n = type(s) == "string" and tonumber(s:match("^(%d+%.?%d*)s$"))
  return n
end

--- Reads Retry-After (delta-seconds form) from response headers.
function M.retry_after(headers)
  local v = headers and headers["retry-after"]
  local n = v and tonumber(v:match("^%s*(%d+)%s*$"))
  return n
end

--- Turns an HTTP response that is not a DICOM answer into an error: Google's JSON envelope
--- {"error":{"code","message","status","details"}}, an OAuth error, or plain text. `client`
--- (optional): its secrets are taken out of the text quoted, for a 2xx answer, whose body the
--- client leaves as it came unless its media type says text. The message quotes the server's
--- message and status cut (M.cut); err.details keeps Google's details as they came.
function M.from_response(res, what, client)
  local status = res.status
  local ctype = (res.headers and res.headers["content-type"] or ""):lower()
  local err = {
    http_status = status,
    status = STATUS_NAME[status] or ("HTTP_" .. tostring(status)),
    retryable = M.RETRYABLE_HTTP[status] == true,
    retry_after = M.retry_after(res.headers),
  }
  local message
  -- Every text quoted is cut, and a cut through a secret would leave its first bytes for anyone:
  -- the secrets are taken out first, of the body as sent and of the message as decoded.
  local body = res.body or ""
  if client then body = client:redact(body) end
  -- Orthanc's DICOMweb plugin sends its JSON errors without a JSON Content-Type.
  local doc = (ctype:find("json", 1, true) or body:match("^%s*{")) and util.decode_json(body)
  if type(doc) == "table" and type(doc.error) == "table" then
    local e = doc.error
    message = type(e.message) == "string" and e.message or nil
    if type(e.status) == "string" then err.status = M.cut(e.status, M.MAX_STATUS) end
    if type(e.details) == "table" then
      err.details = e.details
      for _, d in ipairs(e.details) do
        if type(d) == "table" and d["@type"] == "type.googleapis.com/google.rpc.RetryInfo" then
          err.retry_after = duration(d.retryDelay) or err.retry_after
        elseif type(d) == "table" and d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
          and type(d.reason) == "string" then
          err.reason = d.reason
        end
      end
    end
  elseif type(doc) == "table" and type(doc.error) == "string" then
    -- OAuth token endpoint: {"error": "invalid_grant", "error_description": "..."}
    err.status = M.cut(doc.error, M.MAX_STATUS) -- in the message's prefix, so not quoted again
    message = type(doc.error_description) == "string" and doc.error_description or doc.error
  end
  if not message and type(doc) == "table" then
    -- Orthanc's REST errors: {"Message": "Accessing an inexistent item", "Details": "..."}
    for _, k in ipairs({ "Details", "Message", "message" }) do
      if type(doc[k]) == "string" and doc[k] ~= "" then
        message = doc[k]:gsub("%c", " "):sub(1, M.MAX_QUOTED)
        break
      end
    end
  end
  if not message then
    local text = body:gsub("%s+", " "):sub(1, 200)
    message = text ~= "" and text or "no details in the response"
  end
  if client then message = client:redact(message) end
  message = M.cut(message)
  -- Google answers a bad API key with 400 INVALID_ARGUMENT: a credential problem all the same.
  local kind = M.CREDENTIAL_REASONS[err.reason] and "auth" or "http"
  return M.new(kind, string.format("%s: HTTP %d %s: %s", what or "request", status, err.status, message), err)
end

return M
