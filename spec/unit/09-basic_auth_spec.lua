-- SPDX-License-Identifier: MIT
-- The basic_auth option without a server: the header (RFC 7617's own example), the checks of its
-- types (raised at the caller's line) and values (usage errors that never show the password), the
-- conflict with every other credential, the secrets a client takes out of what it prints, and the
-- command's user:password parsing.
local healthcare = require "healthcare"
local common = require "healthcare.cli.common"

local URL = "http://127.0.0.1:9/dicom-web"
local H = require "helpers"

local raises_at_call = H.raises_at_call

describe("basic_auth", function()
  it("sends Authorization: Basic base64(user:password) (RFC 7617's example)", function()
    for _, open in ipairs({
      function(o) return healthcare.dicomweb(URL, o) end,
      function(o) return healthcare.dicom_store(URL, o) end,
      function(o) local c = assert(healthcare.new(o)) return { client = c, close = function() c:close() end } end,
    }) do
      local store = assert(open({ basic_auth = { user = "Aladdin", password = "open sesame" } }))
      local cred = store.client:credential()
      assert.equal("basic_auth", cred.kind)
      assert.are.same({ headers = { "Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==" } }, cred:authorize())
      store:close()
    end
  end)

  it("its header, base64 and password are secrets the client takes out of text", function()
    local c = assert(healthcare.new({ basic_auth = { user = "Aladdin", password = "open sesame" } }))
    assert.equal("a REDACTED b REDACTED c REDACTED",
      c:redact("a Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ== b QWxhZGRpbjpvcGVuIHNlc2FtZQ== c open sesame"))
    c:close()
  end)

  it("raises for a wrong type at the caller's line, never showing a value", function()
    raises_at_call(function() local _ = healthcare.dicomweb(URL, { basic_auth = "u:p" }) end,
      "bad option 'basic_auth' to 'dicomweb' (table { user = ..., password = ... } expected, got string)")
    raises_at_call(function() local _ = healthcare.new({ basic_auth = { user = "u" } }) end,
      "bad option 'basic_auth.password' to 'healthcare.new' (string expected, got nil)")
    raises_at_call(function() local _ = healthcare.dicom_store(URL, { basic_auth = { user = 1, password = "p" } }) end,
      "bad option 'basic_auth.user' to 'dicom_store' (string expected, got number)")
    raises_at_call(function() local _ = healthcare.new({ basic_auth = { user = "u", pass = "secret-1" } }) end,
      "unknown field 'pass' in option 'basic_auth' to 'healthcare.new' (user and password expected)")
  end)

  it("refuses a user that is empty or holds ':', CR, LF or NUL, a password with CR, LF or NUL", function()
    for _, b in ipairs({ { user = "", password = "secret-1" }, { user = "a:b", password = "secret-1" },
      { user = "a\r\nX-Evil: 1", password = "secret-1" }, { user = "a\0", password = "secret-1" } }) do
      local store, err = healthcare.dicomweb(URL, { basic_auth = b })
      assert.is_nil(store)
      assert.equal("usage", err.kind)
      assert.equal("option 'basic_auth': the user must be non-empty, without ':' (RFC 7617), CR, LF or NUL",
        err.message)
    end
    local store, err = healthcare.dicomweb(URL, { basic_auth = { user = "u", password = "secret-1\r\nX: y" } })
    assert.is_nil(store)
    assert.equal("option 'basic_auth': the password contains CR, LF or NUL", err.message)
    -- A password may hold ':' and be empty (RFC 7617).
    for _, password in ipairs({ "a:b:c", "" }) do
      store = assert(healthcare.dicomweb(URL, { basic_auth = { user = "u", password = password } }))
      store:close()
    end
  end)

  it("is a usage error with any other credential, naming both", function()
    for _, other in ipairs({ "access_token", "api_key", "credentials", "impersonate" }) do
      local opts = { basic_auth = { user = "u", password = "p" } }
      opts[other] = other == "credentials" and false or "x-1234567890"
      local c, err = healthcare.new(opts)
      assert.is_nil(c)
      assert.equal("usage", err.kind)
      assert.equal("options 'basic_auth' and '" .. other .. "' cannot be used together: a request carries one "
        .. "credential", err.message)
    end
  end)

  it("a user:password@ URL's refusal points to basic_auth", function()
    local store, err = healthcare.dicomweb("http://u:secret-1@127.0.0.1:9/dicom-web")
    assert.is_nil(store)
    assert.truthy(err.message:find("basic_auth = { user = ..., password = ... }", 1, true), err.message)
    assert.truthy(err.message:find("--basic-auth-file", 1, true), err.message)
    assert.is_nil(err.message:find("secret-1", 1, true))
  end)
end)

describe("the command's user:password", function()
  it("splits at the first ':', takes one final line break off, and never shows the text", function()
    assert.are.same({ user = "u", password = "p:q" }, common.parse_basic_auth("u:p:q\n", "F"))
    assert.are.same({ user = "u", password = "" }, common.parse_basic_auth("u:\r\n", "F"))
    for _, bad in ipairs({ "secret-1", ":secret-1", "u:secret-1\nmore\n", "u:secret-1\n\n", "" }) do
      local b, err = common.parse_basic_auth(bad, "F")
      assert.is_nil(b)
      assert.equal("usage", err.kind)
      assert.equal("F must hold one line user:password, with a user", err.message)
    end
  end)
end)
