-- SPDX-License-Identifier: MIT
-- healthcare.errors: what a server's error answer becomes, table-driven over the shapes servers
-- send (Google's envelope with its details, an OAuth token endpoint's error, Orthanc's JSON with
-- or without a JSON Content-Type, plain text, nothing), the wait a server asks for (Retry-After,
-- Google's RetryInfo), the ErrorInfo reasons that make it a credential error, the status of an
-- answer without an envelope; and the printable tostring.
local cjson = require "cjson"
local errors = require "healthcare.errors"

local JSON = { ["content-type"] = "application/json; charset=UTF-8" }
-- In an expected table: the field must be absent.
local NONE = {}

local function envelope(code, status, message, details)
  return cjson.encode({ error = { code = code, status = status, message = message, details = details } })
end

local function retry_info(delay)
  return { ["@type"] = "type.googleapis.com/google.rpc.RetryInfo", retryDelay = delay }
end

local function error_info(reason)
  return { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = reason, domain = "googleapis.com" }
end

describe("errors.from_response", function()
  -- { what it is, response, expected fields (message exact; absent fields nil) }
  local cases = {
    { "Google's envelope", { status = 404, headers = JSON, body = envelope(404, "NOT_FOUND", "no such study") },
      { kind = "http", http_status = 404, status = "NOT_FOUND", retryable = false,
        message = "RetrieveStudy: HTTP 404 NOT_FOUND: no such study" } },
    { "a 409 envelope's ALREADY_EXISTS", { status = 409, headers = JSON,
      body = envelope(409, "ALREADY_EXISTS", "dataset exists") },
      { status = "ALREADY_EXISTS", message = "RetrieveStudy: HTTP 409 ALREADY_EXISTS: dataset exists" } },
    { "a proxy's 409 in plain text as no Google status", { status = 409, headers = { ["content-type"] = "text/plain" },
      body = "Conflict" }, { kind = "http", status = "HTTP_409", message = "RetrieveStudy: HTTP 409 HTTP_409: Conflict" } },
    { "a proxy's 413 page as no Google status", { status = 413, headers = { ["content-type"] = "text/html" },
      body = "<html><h1>413 Request Entity Too Large</h1></html>" }, { status = "HTTP_413", retryable = false,
      message = "RetrieveStudy: HTTP 413 HTTP_413: <html><h1>413 Request Entity Too Large</h1></html>" } },
    { "an envelope with a number JSON has not (NaN) as text, not as Google's", { status = 400, headers = JSON,
      body = '{"error": {"code": NaN, "status": "INVALID_ARGUMENT", "message": "m"}}' },
      { status = "HTTP_400", message = 'RetrieveStudy: HTTP 400 HTTP_400: {"error": {"code": NaN, "status": '
        .. '"INVALID_ARGUMENT", "message": "m"}}' } },
    { "the envelope's status over the HTTP status's", { status = 400, headers = JSON,
      body = envelope(400, "FAILED_PRECONDITION", "not ready") },
      { kind = "http", status = "FAILED_PRECONDITION", message = "RetrieveStudy: HTTP 400 FAILED_PRECONDITION: not ready" } },
    { "RetryInfo's delay", { status = 429, headers = JSON,
      body = envelope(429, "RESOURCE_EXHAUSTED", "slow down", { retry_info("7s") }) },
      { kind = "http", status = "RESOURCE_EXHAUSTED", retryable = true, retry_after = 7 } },
    { "RetryInfo over Retry-After", { status = 503, headers = { ["content-type"] = "application/json",
      ["retry-after"] = "3" }, body = envelope(503, "UNAVAILABLE", "later", { retry_info("1.5s") }) },
      { retryable = true, retry_after = 1.5 } },
    { "Retry-After alone", { status = 503, headers = { ["retry-after"] = " 12 " }, body = "busy" },
      { kind = "http", status = "UNAVAILABLE", retryable = true, retry_after = 12,
        message = "RetrieveStudy: HTTP 503 UNAVAILABLE: busy" } },
    { "a Retry-After date (not read)", { status = 503, headers = { ["retry-after"] = "Wed, 21 Oct 2015 07:28:00 GMT" },
      body = "" }, { retryable = true, retry_after = NONE, message = "RetrieveStudy: HTTP 503 UNAVAILABLE: no details in "
      .. "the response" } },
    { "ErrorInfo API_KEY_INVALID as a credential error", { status = 400, headers = JSON,
      body = envelope(400, "INVALID_ARGUMENT", "API key not valid", { error_info("API_KEY_INVALID") }) },
      { kind = "auth", status = "INVALID_ARGUMENT", reason = "API_KEY_INVALID", retryable = false } },
    { "ErrorInfo API_KEY_EXPIRED", { status = 400, headers = JSON,
      body = envelope(400, "INVALID_ARGUMENT", "expired", { error_info("API_KEY_EXPIRED") }) },
      { kind = "auth", reason = "API_KEY_EXPIRED" } },
    { "another ErrorInfo reason", { status = 403, headers = JSON,
      body = envelope(403, "PERMISSION_DENIED", "denied", { error_info("IAM_PERMISSION_DENIED") }) },
      { kind = "http", status = "PERMISSION_DENIED", reason = "IAM_PERMISSION_DENIED", retry_after = NONE } },
    { "an OAuth token endpoint's error", { status = 400, headers = JSON,
      body = '{"error":"invalid_grant","error_description":"Invalid JWT Signature."}' },
      { kind = "http", status = "invalid_grant", message = "RetrieveStudy: HTTP 400 invalid_grant: Invalid JWT Signature." } },
    { "an OAuth error without a description", { status = 401, headers = JSON, body = '{"error":"invalid_client"}' },
      { status = "invalid_client", message = "RetrieveStudy: HTTP 401 invalid_client: invalid_client" } },
    { "Orthanc's JSON without a JSON Content-Type", { status = 404, headers = { ["content-type"] = "text/plain" },
      body = '{ "HttpStatus" : 404, "Message" : "Unknown resource", "Details" : "No such study" }' },
      { kind = "http", status = "NOT_FOUND", retry_after = NONE, details = NONE,
        message = "RetrieveStudy: HTTP 404 NOT_FOUND: No such study" } },
    { "Orthanc's Message when Details is empty", { status = 400, headers = {},
      body = '{"Message":"Bad\\nrequest","Details":""}' },
      { status = "HTTP_400", message = "RetrieveStudy: HTTP 400 HTTP_400: Bad request" } },
    { "plain text, white space folded", { status = 502, headers = { ["content-type"] = "text/html" },
      body = "<html>\n  Bad   Gateway\n</html>" },
      { kind = "http", status = "UNAVAILABLE", retryable = true,
        message = "RetrieveStudy: HTTP 502 UNAVAILABLE: <html> Bad Gateway </html>" } },
    { "plain text cut at 200 bytes", { status = 500, headers = {}, body = string.rep("x", 500) },
      { status = "HTTP_500", retryable = true, message = "RetrieveStudy: HTTP 500 HTTP_500: " .. string.rep("x", 200) } },
    { "JSON that is not an error", { status = 409, headers = JSON, body = "[1,2]" },
      { status = "HTTP_409", retryable = false, message = "RetrieveStudy: HTTP 409 HTTP_409: [1,2]" } },
    { "broken JSON", { status = 500, headers = JSON, body = '{"error":' },
      { status = "HTTP_500", message = 'RetrieveStudy: HTTP 500 HTTP_500: {"error":' } },
    { "no body, a status without a name", { status = 418, headers = {} },
      { kind = "http", status = "HTTP_418", retryable = false,
        message = "RetrieveStudy: HTTP 418 HTTP_418: no details in the response" } },
  }
  for _, c in ipairs(cases) do
    it("reads " .. c[1], function()
      local err = errors.from_response(c[2], "RetrieveStudy")
      assert.is_true(errors.is(err))
      for k, v in pairs(c[3]) do
        if v == NONE then assert.is_nil(err[k], k) else assert.same(v, err[k], k) end
      end
    end)
  end

  -- Statuses without an envelope (a proxy's, plain text): Google's canonical name only where its
  -- mapping gives the HTTP status one code (and 502: UNAVAILABLE), else HTTP_<n>: a proxy's 409
  -- is no ALREADY_EXISTS, its 413 no INVALID_ARGUMENT. And whether to retry.
  local statuses = {
    { 400, "HTTP_400", false }, { 401, "UNAUTHENTICATED", false }, { 403, "PERMISSION_DENIED", false },
    { 404, "NOT_FOUND", false }, { 408, "HTTP_408", true }, { 409, "HTTP_409", false },
    { 413, "HTTP_413", false }, { 415, "HTTP_415", false }, { 429, "RESOURCE_EXHAUSTED", true },
    { 499, "CANCELLED", false }, { 500, "HTTP_500", true }, { 501, "UNIMPLEMENTED", false },
    { 502, "UNAVAILABLE", true }, { 503, "UNAVAILABLE", true }, { 504, "DEADLINE_EXCEEDED", true },
    { 505, "HTTP_505", false },
  }
  for _, s in ipairs(statuses) do
    it("names HTTP " .. s[1] .. " without an envelope " .. s[2], function()
      local err = errors.from_response({ status = s[1], headers = {}, body = "x" })
      assert.equal(s[2], err.status)
      assert.equal(s[3], err.retryable)
      assert.equal("request: HTTP " .. s[1] .. " " .. s[2] .. ": x", err.message)
    end)
  end

  it("keeps the details list as sent", function()
    local details = { retry_info("2s"), error_info("RATE_LIMIT_EXCEEDED"), { ["@type"] = "x", y = 1 } }
    local err = errors.from_response({ status = 429, headers = JSON, body = envelope(429, "RESOURCE_EXHAUSTED", "m",
      details) })
    assert.same(details, err.details)
    assert.equal(2, err.retry_after)
    assert.equal("RATE_LIMIT_EXCEEDED", err.reason)
  end)

  -- A hostile or broken server can send megabytes of error text: the message quotes at most
  -- errors.MAX_QUOTED bytes of each of its texts; the details stay whole on the error.
  it("cuts a huge envelope's message and status in the message (errors.cut), the details kept whole", function()
    local huge = "m" .. string.rep("\u{e9}", 500000) -- 1 MB, cut between the two bytes of an e-acute
    local details = { { ["@type"] = "type.googleapis.com/google.rpc.DebugInfo", detail = string.rep("d", 1e6) },
      { ["@type"] = "type.googleapis.com/google.rpc.Help", links = { { url = "https://x/" .. string.rep("l", 1e5) } } },
      error_info("SOME_REASON") }
    local err = errors.from_response({ status = 400, headers = JSON,
      body = envelope(400, string.rep("S", 1e5), huge, details) }, "X")
    assert.equal("X: HTTP 400 " .. string.rep("S", 64) .. "... (100000 bytes in all): m"
      .. string.rep("\u{e9}", 149) .. "... (1000001 bytes in all)", err.message)
    assert.same(details, err.details)
    assert.equal("SOME_REASON", err.reason)
    -- an OAuth error's texts the same
    err = errors.from_response({ status = 400, headers = JSON, body = cjson.encode({ error = string.rep("e", 1e5),
      error_description = string.rep("x", 1e6) }) }, "token")
    assert.equal("token: HTTP 400 " .. string.rep("e", 64) .. "... (100000 bytes in all): " .. string.rep("x", 300)
      .. "... (1000000 bytes in all)", err.message)
  end)

  it("takes the client's secrets out before cutting: no piece of one is left at the cut", function()
    local healthcare = require "healthcare"
    local token = "ya29.a-secret-token-0123456789abcdef"
    local client = assert(healthcare.new { access_token = token, endpoint = "http://127.0.0.1:9/v1" })
    local err = errors.from_response({ status = 200, headers = JSON, body = envelope(200, "OK",
      string.rep("a", 290) .. token .. string.rep("b", 1000)) }, "X", client)
    client:close()
    assert.equal("X: HTTP 200 OK: " .. string.rep("a", 290) .. "REDACTED" .. "bb... (1298 bytes in all)", err.message)
  end)
end)

describe("errors.retry_after", function()
  for _, c in ipairs({ { "5", 5 }, { " 0 ", 0 }, { "1.5", nil }, { "-1", nil }, { "soon", nil }, { nil, nil } }) do
    it("reads " .. tostring(c[1]), function()
      assert.equal(c[2], errors.retry_after({ ["retry-after"] = c[1] }))
    end)
  end
  it("takes no headers", function() assert.is_nil(errors.retry_after(nil)) end)
end)

describe("error values", function()
  it("print their message on one printable line; message keeps the server's text", function()
    local err = errors.from_response({ status = 400, headers = JSON,
      body = envelope(400, "INVALID_ARGUMENT", "bad\r\n\27[31mred\\") }, "X")
    assert.equal("X: HTTP 400 INVALID_ARGUMENT: bad\r\n\27[31mred\\", err.message)
    assert.equal("X: HTTP 400 INVALID_ARGUMENT: bad\\r\\n\\x1b[31mred\\\\", tostring(err))
  end)

  it("from the transport: retryable by status, the URL's secrets redacted", function()
    for status, retryable in pairs({ connect = true, timeout = true, too_slow = true, too_large = false,
      encoding = false }) do
      local err = errors.from_transport(errors.new("transport", "GET https://h/x?key=abcdefgh12&a=1: failed",
        { status = status }))
      assert.equal(retryable, err.retryable, status)
      assert.equal("GET https://h/x?key=REDACTED&a=1: failed", err.message)
    end
  end)
end)
