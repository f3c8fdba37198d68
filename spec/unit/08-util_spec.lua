-- SPDX-License-Identifier: MIT
-- healthcare.util, table-driven: the argument and option checks every public entry point makes
-- (types, ranges, unknown options, deprecated names, the level that blames the caller's line),
-- and the redaction of secrets from URLs, header lines and any text, by value.
local util = require "healthcare.util"

local THIS_FILE = "spec/unit/08-util_spec.lua"

-- The error f raises, with the file:line it points at.
local function raised(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "did not raise")
  return tostring(err)
end

describe("util.check_arg", function()
  local cases = {
    { "x", "string", true }, { nil, "string|nil", true }, { {}, "table|nil", true }, { 3, "number|table", true },
    { 3, "string", "bad argument #2 to 'f' (string expected, got number)" },
    { nil, "string", "bad argument #2 to 'f' (string expected, got nil)" },
    { true, "table|nil", "bad argument #2 to 'f' (table expected, got boolean)" },
    { "x", "number|table", "bad argument #2 to 'f' (number or table expected, got string)" },
  }
  for _, c in ipairs(cases) do
    it("takes " .. tostring(c[1]) .. " as " .. c[2] .. (c[3] == true and "" or ": no"), function()
      if c[3] == true then
        assert.equal(c[1], util.check_arg(c[1], 2, "f", c[2]))
      else
        assert.matches(c[3], raised(util.check_arg, c[1], 2, "f", c[2]), 1, true)
      end
    end)
  end

  it("says what is expected in its own words", function()
    assert.matches("bad argument #1 to 'store' (path or list of paths expected, got number)",
      raised(util.check_arg, 42, 1, "store", "string|table", 2, "path or list of paths"), 1, true)
  end)

  it("blames the caller of the checking function (level 2), or one further out (3)", function()
    local function api(v) util.check_arg(v, 1, "api", "string") end
    local function inner(v) util.check_arg(v, 1, "api", "string", 3) end
    local function api2(v) inner(v) end
    local line = debug.getinfo(1, "l").currentline + 1
    local e1 = raised(function() api(1) end)
    local e2 = raised(function() api2(1) end)
    assert.equal(THIS_FILE .. ":" .. line .. ": bad argument #1 to 'api' (string expected, got number)",
      e1:match("(spec/.*)$"))
    assert.equal(THIS_FILE .. ":" .. (line + 1) .. ": bad argument #1 to 'api' (string expected, got number)",
      e2:match("(spec/.*)$"))
  end)
end)

describe("util.check_number", function()
  local cases = {
    { 1, "whole >= 1", nil }, { 2.5, "> 0", nil }, { 0, ">= 0", nil }, { nil, "whole >= 1", nil },
    { 0, "whole >= 1", "bad option 'n' to 'f' (a whole number >= 1 expected, got 0)" },
    { 1.5, "whole >= 1", "bad option 'n' to 'f' (a whole number >= 1 expected, got 1.5)" },
    { 0, "> 0", "bad option 'n' to 'f' (a number > 0 expected, got 0)" },
    { -1, ">= 0", "bad option 'n' to 'f' (a number >= 0 expected, got -1)" },
    { 0 / 0, ">= 0", "bad option 'n' to 'f' (a number >= 0 expected, got " .. tostring(0 / 0) .. ")" },
    { "1", ">= 0", "bad option 'n' to 'f' (number expected, got string)" },
  }
  for _, c in ipairs(cases) do
    it(tostring(c[1]) .. " for " .. c[2], function()
      if c[3] then
        assert.matches(c[3], raised(util.check_number, c[1], "n", "f", c[2]), 1, true)
      else
        assert.equal(c[1], util.check_number(c[1], "n", "f", c[2]))
      end
    end)
  end
end)

describe("util.check_option", function()
  it("takes nil and the types listed, raises for another", function()
    assert.is_nil(util.check_option(nil, "o", "f", "table"))
    assert.equal(print, util.check_option(print, "o", "f", "function|nil"))
    assert.matches("bad option 'o' to 'f' (table or boolean expected, got string)",
      raised(util.check_option, "x", "o", "f", "table|boolean"), 1, true)
    assert.matches("bad option 'o' to 'f' (directory expected, got number)",
      raised(util.check_option, 1, "o", "f", "string", 2, "directory"), 1, true)
  end)
end)

describe("util.check_options", function()
  local VALID = { "timeout", "operation_timeout", "params" }
  local ALIASES = { wait = "operation_timeout" }

  it("gives {} for nil and the table itself when every name is current", function()
    assert.same({}, util.check_options(nil, VALID, "f"))
    local opts = { timeout = 1 }
    assert.equal(opts, util.check_options(opts, VALID, "f", 2, ALIASES))
  end)

  it("renames a deprecated name into a new table, leaving the caller's alone", function()
    local opts = { wait = 5, params = {} }
    local got = util.check_options(opts, VALID, "f", 2, ALIASES)
    assert.same({ operation_timeout = 5, params = opts.params }, got)
    assert.same({ wait = 5, params = opts.params }, opts)
  end)

  local bad = {
    { { bogus = 1 }, "unknown option 'bogus' to 'f'; valid options: operation_timeout, params, timeout" },
    { { [1] = "x" }, "unknown option '1' to 'f'; valid options: operation_timeout, params, timeout" },
    { { wait = 1, operation_timeout = 2 },
      "option 'operation_timeout' to 'f' given twice (as 'operation_timeout' and its old name 'wait')" },
    { "fast", "bad argument to 'f' (options table expected, got string)" },
  }
  for _, c in ipairs(bad) do
    it("raises for " .. (type(c[1]) == "table" and next(c[1]) or c[1]), function()
      assert.matches(c[2], raised(util.check_options, c[1], VALID, "f", 2, ALIASES), 1, true)
    end)
  end

  it("raises at the line of the caller's caller", function()
    local function api(opts)
      local checked = util.check_options(opts, VALID, "api") -- not a tail call: that frame is the one blamed
      return checked
    end
    local line = debug.getinfo(1, "l").currentline + 1
    local err = raised(function() local _ = api({ x = 1 }) end)
    assert.equal(THIS_FILE .. ":" .. line .. ": unknown option 'x' to 'api'; valid options: operation_timeout, "
      .. "params, timeout", err:match("(spec/.*)$"))
  end)
end)

describe("util.redact_url", function()
  local cases = {
    { "https://h/v1/x?access_token=ya29.abc&alt=json", "https://h/v1/x?access_token=REDACTED&alt=json" },
    { "https://h/x?a=1&key=AIzaSyXYZ", "https://h/x?a=1&key=REDACTED" },
    { "GET https://h/x?key=k1: connect failed", "GET https://h/x?key=REDACTED: connect failed" },
    { "https://h/x?assertion=e.y.z&refresh_token=1//r&client_secret=s3",
      "https://h/x?assertion=REDACTED&refresh_token=REDACTED&client_secret=REDACTED" },
    { "https://h/x?oauth_token=t#frag", "https://h/x?oauth_token=REDACTED#frag" },
    { "https://h/x?monkey=1&keys=2", "https://h/x?monkey=1&keys=2" },
    { "https://h/x?key=", "https://h/x?key=REDACTED" },
    { "https://h/path/key=notaquery", "https://h/path/key=notaquery" },
    -- a user:password@ before the host, whole, in a URL or in a message naming one
    { "http://admin:S3cret@127.0.0.1:9/dicom-web", "http://REDACTED@127.0.0.1:9/dicom-web" },
    { "GET http://u:p@ss:w@h/x?key=k: Failed to connect", "GET http://REDACTED@h/x?key=REDACTED: Failed to connect" },
    { "https://token-only@h", "https://REDACTED@h" },
    { "https://h/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken",
      "https://h/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken" },
    { "https://h/x?user=a@b", "https://h/x?user=a@b" },
  }
  for _, c in ipairs(cases) do
    it("redacts " .. c[1], function() assert.equal(c[2], util.redact_url(c[1])) end)
  end

  it("redacts the secrets it is given wherever they stand", function()
    assert.equal("https://h/REDACTED/x?q=REDACTED",
      util.redact_url("https://h/secret-token-1/x?q=secret-token-1", { "secret-token-1" }))
  end)

  -- Each of these took the former pattern "(%a[%w+.-]*://)...@" minutes or hours (it backtracks
  -- over a run of letters from each of its starts: 70 kB took 100 s). A pattern runs in C, where
  -- no hook reaches: a quadratic redaction hangs this spec until ctest's timeout. The hook bounds
  -- the Lua work instead: a few Lua instructions per byte of text at most.
  local MB = 1024 * 1024
  local long = string.rep("x", MB)
  local big_cases = {
    { "GET https://h/x?PatientName=" .. long .. "&key=k1: Failed to connect",
      "GET https://h/x?PatientName=" .. long .. "&key=REDACTED: Failed to connect" },
    { "> GET http://u:p@h/x?PatientName=" .. long, "> GET http://REDACTED@h/x?PatientName=" .. long },
    { "https://" .. long .. "@h/x", "https://REDACTED@h/x" },
    { long .. "://user@h/", long .. "://REDACTED@h/" },
    { "1" .. long .. ":/" .. long .. "://" .. long, "1" .. long .. ":/" .. long .. "://" .. long },
    { string.rep("a://u@h/", MB / 8), string.rep("a://REDACTED@h/", MB / 8) },
    { string.rep("1://", MB / 4), string.rep("1://", MB / 4) },
  }
  for i, c in ipairs(big_cases) do
    it("redacts a megabyte of text in linear time (" .. i .. ")", function()
      local budget = 40 * #c[1]
      debug.sethook(function() error("redact_url ran more than " .. budget .. " Lua instructions") end, "", budget)
      local ok, got = pcall(util.redact_url, c[1])
      debug.sethook()
      assert(ok, got)
      assert.equal(#c[2], #got)
      assert.is_true(c[2] == got, "not the expected redaction")
    end)
  end
end)

describe("util.has_userinfo and util.userinfo_refusal", function()
  for _, c in ipairs({
    { "http://admin:S3cret@h/dicom-web", true }, { "https://user@h:8042/", true }, { "http://:@h", true },
    { "http://h/dicom-web", false }, { "https://h/a@b", false }, { "http://h?x=@", false }, { "h@x", false },
  }) do
    it((c[2] and "finds one in " or "finds none in ") .. c[1], function()
      assert.equal(c[2], util.has_userinfo(c[1]))
      assert.equal(c[2], util.userinfo_refusal(c[1], "endpoint") ~= nil)
    end)
  end

  it("names what was refused and how to give credentials, never the password", function()
    local m = util.userinfo_refusal("http://admin:S3cretPassw0rd@h/v1", "endpoint")
    assert.is_nil(m:find("S3cret", 1, true), m)
    assert.is_nil(m:find("admin", 1, true), m)
    assert.matches("^endpoint must not hold a user name or password", m)
    assert.truthy(m:find("'http://REDACTED@h/v1'", 1, true), m)
    assert.truthy(m:find("access_token", 1, true), m)
  end)
end)

describe("util.redact_header", function()
  local cases = {
    { "Authorization: Bearer ya29.abc", "Authorization: REDACTED" },
    { "authorization: Basic dXNlcjpwYXNz", "authorization: REDACTED" },
    { "Proxy-Authorization: Basic x", "Proxy-Authorization: REDACTED" },
    { "X-Goog-Api-Key: AIza", "X-Goog-Api-Key: REDACTED" },
    { "Cookie: a=b", "Cookie: REDACTED" },
    { "Set-Cookie: sid=1", "Set-Cookie: REDACTED" },
    { "Content-Type: application/dicom", "Content-Type: application/dicom" },
    { "X-Echo: token ya29.the-token-1 back", "X-Echo: token REDACTED back" },
    { "not a header line", "not a header line" },
  }
  for _, c in ipairs(cases) do
    it("writes " .. c[1] .. " as " .. c[2], function()
      assert.equal(c[2], util.redact_header(c[1], { "ya29.the-token-1" }))
    end)
  end
end)

describe("util.redact", function()
  local SECRET = "ab/cd+ef=gh"
  local cases = {
    { "as is", "x " .. SECRET .. " y", "x REDACTED y" },
    { "percent-encoded", "x=ab%2Fcd%2Bef%3Dgh", "x=REDACTED" },
    { "percent-encoded in lower case", "x=ab%2fcd%2bef%3dgh", "x=REDACTED" },
    { "JSON-escaped", '{"t":"ab\\/cd+ef=gh"}', '{"t":"REDACTED"}' },
    { "twice", SECRET .. SECRET, "REDACTEDREDACTED" },
    { "not there", "nothing here", "nothing here" },
  }
  for _, c in ipairs(cases) do
    it("takes out a secret " .. c[1], function()
      assert.equal(c[3], util.redact(c[2], { SECRET }))
    end)
  end

  it("replaces the longer of two overlapping secrets whole", function()
    assert.equal("REDACTED and REDACTED", util.redact("token-1234-extra and token-1234",
      { "token-1234", "token-1234-extra" }))
  end)

  it("leaves short secrets, non-strings and an empty list alone", function()
    assert.equal("abc abc", util.redact("abc abc", { "abc" }))
    assert.equal("x", util.redact("x", {}))
    assert.equal("x", util.redact("x", nil))
    assert.is_nil(util.redact(nil, { SECRET }))
    assert.equal("x 12345678", util.redact("x 12345678", { 12345678 }))
  end)
end)
