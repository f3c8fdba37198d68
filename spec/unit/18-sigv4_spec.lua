-- SPDX-License-Identifier: MIT
-- core.sigv4_sign: AWS Signature Version 4 from Lua (src/hc_lua_sigv4.c over src/hc_sigv4.c), for
-- the `aws` source of external_account credentials. Needs no test bed, no server and no Python:
-- the expected values are fixed here. They are the signatures AWS published for its SigV4 test
-- suite (key AKIDEXAMPLE, 2015-08-30, us-east-1, service "service") and, for Google's
-- GetCallerIdentity request, botocore's (spec/support/sigv4_botocore.py); spec 43 signs random
-- requests against botocore and has the emulator check a signed request end to end.
-- Run: ctest --test-dir build -R sigv4 (or make check: spec/unit/README.md).
local core = require "healthcare.core"

local KEY = "AKIDEXAMPLE"
local SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
local DATE = "20150830T123600Z"
local AUDIENCE = "//iam.googleapis.com/projects/123456789/locations/global/workloadIdentityPools/pool/providers/aws"
local SESSION = "IQoJb3JpZ2luX2VjEXAMPLETOKEN/+="

-- A request of the test suite: example.amazonaws.com, service "service", with t's fields.
local function suite(t)
  local r = { method = "GET", host = "example.amazonaws.com", path = "/", region = "us-east-1",
    service = "service", date = DATE, access_key_id = KEY, secret_access_key = SECRET }
  for k, v in pairs(t) do r[k] = v end
  return r
end

-- Google's GetCallerIdentity request (google-auth's aws.py, Go's externalaccount/aws.go).
local function caller_identity(t)
  local r = { method = "POST", host = "sts.us-east-1.amazonaws.com", path = "/",
    query = "Action=GetCallerIdentity&Version=2011-06-15", region = "us-east-1", service = "sts",
    date = DATE, access_key_id = KEY, secret_access_key = SECRET, session_token = SESSION,
    headers = { ["x-goog-cloud-target-resource"] = AUDIENCE } }
  for k, v in pairs(t or {}) do
    if v == false then r[k] = nil else r[k] = v end
  end
  return r
end

local function authorization(scope, signed, signature)
  return "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/" .. scope .. "/aws4_request, SignedHeaders="
    .. signed .. ", Signature=" .. signature
end

describe("core.sigv4_sign", function()
  describe("signs AWS's test suite requests as AWS published them", function()
    local U = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    local cases = {
      { "get-vanilla", {}, "host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31" },
      { "get-vanilla-empty-query-key", { query = "Param1=value1" }, "host;x-amz-date",
        "a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb" },
      { "get-vanilla-query-order-key-case", { query = "Param2=value2&Param1=value1" }, "host;x-amz-date",
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500" },
      { "get-vanilla-query-order-value", { query = "Param1=value2&Param1=value1" }, "host;x-amz-date",
        "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694" },
      { "get-vanilla-query-unreserved", { query = U .. "=" .. U }, "host;x-amz-date",
        "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197" },
      { "get-vanilla-utf8-query", { query = "%E1%88%B4=bar" }, "host;x-amz-date",
        "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04" },
      { "get-vanilla-utf8-query (the bytes as they are)", { query = "\225\136\180=bar" }, "host;x-amz-date",
        "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04" },
      { "get-header-value-trim", { headers = { ["My-Header1"] = " value1", ["My-Header2"] = ' "a   b   c"' } },
        "host;my-header1;my-header2;x-amz-date", "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736" },
      { "get-utf8", { path = "/\225\136\180" }, "host;x-amz-date",
        "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85" },
      { "get-space", { path = "/example space/" }, "host;x-amz-date",
        "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741" },
      { "get-slash-pointless-dot", { path = "/./example" }, "host;x-amz-date",
        "ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5" },
      { "get-relative-relative", { path = "/example1/example2/../.." }, "host;x-amz-date",
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31" },
      { "post-vanilla", { method = "POST" }, "host;x-amz-date",
        "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b" },
      { "post-header-key-case", { method = "POST", headers = { ["MY-HEADER1"] = "value1" } }, "host;my-header1;x-amz-date",
        "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c" },
      { "post-x-www-form-urlencoded", { method = "POST", payload = "Param1=value1",
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }, "content-type;host;x-amz-date",
        "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local h, err = core.sigv4_sign(suite(c[2]))
        assert.is_nil(err)
        assert.are.same({ Authorization = authorization("service", c[3], c[4]), ["x-amz-date"] = DATE }, h)
      end)
    end

    it("post-sts-header-before (a session token is signed and returned)", function()
      local token = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYR"
        .. "qTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp7"
        .. "5YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9"
        .. "FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
      local h = assert(core.sigv4_sign(suite { method = "POST", session_token = token }))
      assert.are.same({ Authorization = authorization("service", "host;x-amz-date;x-amz-security-token",
        "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"), ["x-amz-date"] = DATE,
        ["x-amz-security-token"] = token }, h)
    end)
  end)

  describe("signs Google's GetCallerIdentity request as botocore does", function()
    it("with a session token", function()
      local h = assert(core.sigv4_sign(caller_identity()))
      assert.are.same({
        Authorization = authorization("sts", "host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource",
          "30baae3c9352a868cb58d084a688028a290c276d67f75bfe10cf0e109c81c8cb"),
        ["x-amz-date"] = DATE, ["x-amz-security-token"] = SESSION }, h)
    end)

    it("without one (an empty token is none)", function()
      for _, token in ipairs({ false, "" }) do
        local h = assert(core.sigv4_sign(caller_identity { session_token = token }))
        assert.are.same({ Authorization = authorization("sts", "host;x-amz-date;x-goog-cloud-target-resource",
          "3af9138d6484ba46189f1bdf8229261d0c29e40b1837154a5f5fadda48cbb85f"), ["x-amz-date"] = DATE }, h)
      end
    end)

    it("at the clock's time when no date is given", function()
      local before = os.date("!%Y%m%dT%H%M%SZ")
      local h = assert(core.sigv4_sign(caller_identity { date = false }))
      local after = os.date("!%Y%m%dT%H%M%SZ")
      assert.truthy(h["x-amz-date"]:match("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$"), h["x-amz-date"])
      assert.truthy(h["x-amz-date"] >= before and h["x-amz-date"] <= after, h["x-amz-date"])
      assert.truthy(h.Authorization:find("Credential=AKIDEXAMPLE/" .. h["x-amz-date"]:sub(1, 8) .. "/us-east-1/sts/", 1, true))
      -- Signed again with that date: the same signature.
      assert.are.same(h, assert(core.sigv4_sign(caller_identity { date = h["x-amz-date"] })))
    end)
  end)

  describe("refuses what cannot be signed, with nil and an auth error", function()
    local cases = {
      { "a header value with CR LF", { headers = { ["x-goog-cloud-target-resource"] = "a\r\nInjected: 1" } },
        "a header value must be at most 16384 bytes without control characters" },
      { "a header name that is not a token", { headers = { ["Bad Name"] = "x" } },
        "a header name must be an HTTP token (letters, digits, '-', ...)" },
      { "a header the signer sets", { headers = { ["X-Amz-Security-Token"] = "x" } },
        "host, authorization, x-amz-date and x-amz-security-token are set by the signer, not given as headers" },
      { "a bad escape in the query", { query = "Action=%G0" }, "the query has a '%' not followed by two hex digits" },
      { "a date in another form", { date = "2015-08-30T12:36:00Z" }, "the date must be YYYYMMDDTHHMMSSZ" },
      { "an empty secret", { secret_access_key = "" }, "the secret access key must be 1 to 1024 bytes" },
      { "a region with a slash", { region = "us-east-1/x" },
        "the region must be letters, digits, '-', '.', '_' or '~' (1 to 64)" },
      { "a path without a leading slash", { path = "sts" }, "the path must start with '/'" },
      { "a session token with a line break", { session_token = "a\nb" },
        "the session token must be at most 16384 bytes without control characters" },
      { "a NUL in the host", { host = "sts.amazonaws.com\0evil" }, "the host holds a NUL byte" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local h, err = core.sigv4_sign(caller_identity(c[2]))
        assert.is_nil(h)
        assert.are.equal("auth", err.kind)
        assert.are.equal("sigv4", err.status)
        assert.are.equal("cannot sign the AWS request: " .. c[3], err.message)
        assert.are.equal(err.message, tostring(err))
        assert.falsy(err.message:find(SECRET, 1, true))
      end)
    end
  end)

  describe("raises on misuse, naming the field", function()
    local cases = {
      { "not a table", "x", "bad argument #1 to '[^']*' %(table expected, got string%)" },
      { "a missing field", caller_identity { region = false }, "field 'region' is required" },
      { "a number for a string", caller_identity { service = 1 }, "field 'service' must be a string, not number" },
      { "an unknown field", caller_identity { secret = "x" },
        "unknown field 'secret' %(valid: method, host, path, query, headers, payload, region, service, date, "
          .. "access_key_id, secret_access_key, session_token%)" },
      { "headers not a table", caller_identity { headers = "x" }, "field 'headers' must be a table, not string" },
      { "a header value not a string", caller_identity { headers = { a = 1 } },
        "field 'headers' must map header names to string values" },
      { "one header twice", caller_identity { headers = { ["X-A"] = "1", ["x-a"] = "2" } },
        "field 'headers' names '[xX]%-[aA]' twice %(header names are case%-insensitive%)" },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local ok, msg = pcall(core.sigv4_sign, c[2])
        assert.is_false(ok)
        assert.truthy(tostring(msg):find(c[3]), msg)
      end)
    end

    it("more than 64 headers", function()
      local headers = {}
      for i = 1, 65 do headers["x-h" .. i] = "v" end
      local ok, msg = pcall(core.sigv4_sign, caller_identity { headers = headers })
      assert.is_false(ok)
      assert.truthy(msg:find("field 'headers' has more than 64 headers", 1, true), msg)
    end)

    it("reports the caller's line", function()
      local ok, msg = pcall(function()
        local h = core.sigv4_sign(caller_identity { method = false })   -- not a tail call: this line is the caller
        return h
      end)
      assert.is_false(ok)
      assert.truthy(msg:find("18%-sigv4_spec%.lua:%d+: bad argument #1 to"), msg)
    end)
  end)

  it("64 headers sign, and a large payload is hashed, not copied into the result", function()
    local headers = {}
    for i = 1, 64 do headers["x-h" .. i] = "v" .. i end
    local h = assert(core.sigv4_sign(caller_identity { headers = headers, payload = string.rep("x", 8 * 1024 * 1024) }))
    local signed = h.Authorization:match("SignedHeaders=([^,]+)")
    local n = 0
    for _ in signed:gmatch("[^;]+") do n = n + 1 end
    assert.are.equal(64 + 3, n)   -- the 64 given, host, x-amz-date, x-amz-security-token
    assert.truthy(#h.Authorization < 2048)
  end)
end)
