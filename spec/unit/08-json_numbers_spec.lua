-- SPDX-License-Identifier: MIT
-- JSON from outside (a server's answer, a credential file, the token cache) decoded strictly by
-- util.decode_json, and the numbers the code computes with held to finite values in range: a
-- token's expires_in, the token cache's expiry, a credential table's lifetimes, the counters of an
-- Operation. spec/85-hostile_json_spec.lua plays the same answers through a server.
local healthcare = require "healthcare"
local util = require "healthcare.util"
local credentials = require "healthcare.auth.credentials"
local token_cache = require "healthcare.auth.token_cache"
local core = require "healthcare.core"
local wait = require "healthcare.cli.wait"

local NAN, INF = 0 / 0, math.huge

describe("util.decode_json", function()
  it("refuses the numbers JSON has not, naming a position and never the text", function()
    for _, text in ipairs({ '{"a": NaN}', '{"a": nan}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 0x10}',
      '{"a": +1}', '{"a": 010}', '[inf]' }) do
      local v, why = util.decode_json(text)
      assert.is_nil(v, text)
      assert.matches("^Expected value but found invalid %a+ at character %d+$", why)
    end
    assert.same({ a = 16.5, b = { 1, 2 } }, util.decode_json('{"a": 16.5, "b": [1, 2]}'))
    -- JSON all the same: a number past a double's range decodes as an infinity (finite_number)
    assert.equal(INF, util.decode_json("[1e400]")[1])
    assert.same({ nil, "no text" }, { util.decode_json(nil) })
  end)

  it("leaves the shared cjson as it was (lenient, for whoever else loads it)", function()
    assert.equal(16, require("cjson.safe").decode("[0x10]")[1])
  end)
end)

describe("util.finite_number", function()
  it("takes finite numbers within the bounds given, nothing else", function()
    assert.equal(5, util.finite_number(5))
    assert.equal(-5, util.finite_number(-5))
    assert.equal(1, util.finite_number(1, 1, 2))
    for _, c in ipairs({ { NAN }, { INF }, { -INF }, { "5" }, { true }, { 0, 1 }, { 3, 1, 2 }, { NAN, 0, 10 } }) do
      assert.is_nil(util.finite_number(c[1], c[2], c[3]), tostring(c[1]))
    end
  end)
end)

describe("credentials.token_lifetime (a token endpoint's expires_in)", function()
  it("is the seconds given, held between 1 s and a day; JWT_LIFETIME when absent", function()
    local null = require("cjson").null
    for _, c in ipairs({ { nil, 3600 }, { null, 3600 }, { 120, 120 }, { 0, 1 }, { -5, 1 }, { 1e300, 86400 },
      { "3599", 3599 }, { " 60 ", 60 } }) do
      assert.equal(c[2], credentials.token_lifetime(c[1]), tostring(c[1]))
    end
  end)

  it("is nil, and what it was, for what is no number of seconds", function()
    for _, c in ipairs({ { NAN, "NaN" }, { INF, "an infinity" }, { -INF, "an infinity" },
      { "0x10", "a string that is no number" }, { "1e999", "a string that is no number" }, { true, "a boolean" },
      { {}, "a table" } }) do
      local seconds, what = credentials.token_lifetime(c[1])
      assert.is_nil(seconds, tostring(c[1]))
      assert.equal(c[2], what)
    end
  end)
end)

describe("the token cache", function()
  local dir = os.tmpname()
  os.remove(dir)
  local cache = token_cache.open(dir)
  local TOKEN = "ya29.cached-token-0123456789"

  local function entry(text)
    assert(cache:put("identity", "scope", TOKEN, os.time() + 600, 600))
    assert(core.private_write(cache:path("identity", "scope"), text))
  end

  it("ignores an entry whose expiry or lifetime is no finite number (it was a token for ever)", function()
    local future = string.format("%d", os.time() + 600)
    entry('{"access_token": "' .. TOKEN .. '", "expires_at": ' .. future .. ', "lifetime": 600}')
    assert.equal(TOKEN, (cache:get("identity", "scope")))
    for _, fields in ipairs({ '"expires_at": 1e400', '"expires_at": Infinity', '"expires_at": NaN',
      '"expires_at": ' .. future .. ', "lifetime": 0', '"expires_at": ' .. future .. ', "lifetime": 1e400' }) do
      entry('{"access_token": "' .. TOKEN .. '", ' .. fields .. "}")
      assert.is_nil(cache:get("identity", "scope"), fields)
    end
    cache:remove("identity", "scope")
    os.remove(dir)
  end)
end)

describe("credential tables' lifetimes", function()
  it("refuse NaN (which passes every < and >) as a timeout or a token lifetime", function()
    local ext = { type = "external_account", audience = "//iam.googleapis.com/x", token_url = "https://sts.invalid/v1/token",
      subject_token_type = "urn:ietf:params:oauth:token-type:jwt" }
    ext.credential_source = { executable = { command = "x", timeout_millis = NAN } }
    local cred, err = credentials.from_info(ext, {}, "credentials table")
    assert.is_nil(cred)
    assert.matches("timeout_millis must be 5000 to 120000", err.message)
    ext.credential_source = { file = "/nonexistent" }
    ext.service_account_impersonation_url = "https://iam.invalid/v1/projects/-/serviceAccounts/a@b:generateAccessToken"
    ext.service_account_impersonation = { token_lifetime_seconds = NAN }
    cred, err = credentials.from_info(ext, {}, "credentials table")
    assert.is_nil(cred)
    assert.matches("the token lifetime must be 1 to 43200 seconds", err.message)
  end)
end)

describe("healthcare.cli.wait: a failure counter that is no count", function()
  it("is shown as it came and exits 1 (it read as 0: exit 0)", function()
    local client = assert(healthcare.new({ endpoint = "http://127.0.0.1:9/v1", credentials = false }))
    local said = {}
    local function say(fmt, ...) said[#said + 1] = string.format(fmt, ...) end
    for _, failure in ipairs({ "abc", "-1", "0x10", -1, NAN, INF, true }) do
      said = {}
      local op = { name = "x", done = true, response = {}, metadata = { counter = { success = "3", failure = failure } } }
      assert.equal(1, (wait.wait(client, op, { say = say })), tostring(failure))
      assert.matches("^the operation's failure counter %(.*%) is not a count", said[1])
    end
    -- a count, zero or not
    assert.equal(0, (wait.wait(client, { name = "x", done = true, response = {},
      metadata = { counter = { success = "3", failure = "0" } } }, { say = say })))
    assert.equal(1, (wait.wait(client, { name = "x", done = true, response = {},
      metadata = { counter = { success = "3", failure = 2 } } }, { say = say })))
    client:close()
  end)
end)
