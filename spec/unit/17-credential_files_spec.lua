-- SPDX-License-Identifier: MIT
-- Without a test bed: the proxy libcurl will use (util.proxy_for, by libcurl's rules, with the
-- `proxy` and `no_proxy` options on top), a proxy URL as shown, and the checks of credential
-- files without key files (impersonated_service_account, external_account,
-- external_account_authorized_user): every bad field a clear credential error, nothing sent
-- (no file here names a reachable host); a key file in a directory others may write to (or below
-- one, or reached through a link in one) refused, the directory named in printable form; two
-- credential options (or the command's flags) a usage error naming both.
local util = require "healthcare.util"
local credentials = require "healthcare.auth.credentials"
local external = require "healthcare.auth.external"
local impersonate = require "healthcare.auth.impersonate"

local function env(t) return function(k) return t[k] end end

describe("util.proxy_for", function()
  local cases = {
    -- url, environment, settings, proxy, where it came from
    { "https://h.example/x", {}, nil, nil },
    { "https://h.example/x", { https_proxy = "http://p:1" }, nil, "http://p:1", "https_proxy" },
    { "https://h.example/x", { HTTPS_PROXY = "http://P:1" }, nil, "http://P:1", "HTTPS_PROXY" },
    { "http://h.example/x", { HTTP_PROXY = "http://p:1" }, nil, nil },   -- libcurl ignores HTTP_PROXY
    { "http://h.example/x", { http_proxy = "", ALL_PROXY = "http://a:1" }, nil, "http://a:1", "ALL_PROXY" },
    { "https://h.example/x", { https_proxy = "http://p:1", no_proxy = ".example" }, nil, nil },
    { "https://h.example/x", { https_proxy = "http://p:1", NO_PROXY = "*" }, nil, nil },
    -- The options win over the environment.
    { "https://h.example/x", { https_proxy = "http://p:1" }, { proxy = "http://o:2" }, "http://o:2", "the proxy option" },
    { "https://h.example/x", { https_proxy = "http://p:1" }, { proxy = "" }, nil },
    { "https://h.example/x", {}, { proxy = "http://o:2", no_proxy = "h.example" }, nil },
    { "https://h.example/x", { no_proxy = "h.example" }, { proxy = "http://o:2", no_proxy = "" }, "http://o:2",
      "the proxy option" },
    { "https://h.example/x", { https_proxy = "http://p:1", no_proxy = "h.example" }, { no_proxy = "other" },
      "http://p:1", "https_proxy" },
    { "http://127.0.0.1:8080/x", { http_proxy = "http://p:1" }, { no_proxy = "127.0.0.0/8" }, nil },
  }
  for i, c in ipairs(cases) do
    it("case " .. i .. ": " .. c[1], function()
      local proxy, from = util.proxy_for(c[1], env(c[2]), c[3])
      assert.are.equal(c[4], proxy)
      assert.are.equal(c[5], from)
    end)
  end

  it("shows a proxy URL without its user and password", function()
    assert.are.equal("http://REDACTED@p:3128", util.redact_proxy("http://alice:s3cret@p:3128"))
    assert.are.equal("REDACTED@p:3128", util.redact_proxy("alice:s3cret@p:3128"))
    assert.are.equal("http://p:3128", util.redact_proxy("http://p:3128"))
  end)
end)

describe("credential files without key files", function()
  local AUD = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q"
  local JWT = "urn:ietf:params:oauth:token-type:jwt"
  local function ext(fields)
    local t = { type = "external_account", audience = AUD, subject_token_type = JWT,
      token_url = "https://sts.invalid/v1/token", credential_source = { file = "/nonexistent" } }
    for k, v in pairs(fields) do
      if v == false then t[k] = nil else t[k] = v end
    end
    return t
  end
  local cases = {
    { ext({ audience = false }), "missing 'audience' (required for type 'external_account')" },
    { ext({ subject_token_type = 7 }), "'subject_token_type' must be a string" },
    { ext({ token_url = "ftp://x" }), "'token_url' must be an http(s) URL" },
    -- libcurl would send it as Basic authentication; the message never shows it
    { ext({ token_url = "https://u:pw-secret-123@sts.invalid/v1/token" }),
      "'token_url' must not hold a user name or password, got 'https://REDACTED@sts.invalid/v1/token'" },
    { ext({ credential_source = { url = "https://u:pw-secret-123@md.invalid/token" } }),
      "'credential_source.url' must not hold a user name or password" },
    -- A number or an object where a URL belongs: a credential error, not a Lua error.
    { ext({ token_url = 443 }), "'token_url' must be a string" },
    { ext({ credential_source = { url = 8080 } }), "'credential_source.url' must be an http(s) URL, got a JSON number" },
    { ext({ credential_source = { url = { "https://b" } } }),
      "'credential_source.url' must be an http(s) URL, got a JSON object or array" },
    { ext({ credential_source = { environment_id = "aws1", region_url = 169 } }),
      "'credential_source.region_url' must be an http(s) URL, got a JSON number" },
    { ext({ credential_source = { environment_id = "aws1", url = true } }),
      "'credential_source.url' must be an http(s) URL, got a JSON boolean" },
    { ext({ credential_source = { environment_id = "aws1", imdsv2_session_token_url = 1 } }),
      "'credential_source.imdsv2_session_token_url' must be an http(s) URL, got a JSON number" },
    { { type = "impersonated_service_account", service_account_impersonation_url = 5,
      source_credentials = { type = "authorized_user" } }, "service_account_impersonation_url" },
    { ext({ credential_source = false }), "'credential_source' must be an object" },
    { ext({ credential_source = {} }), "credential_source needs one of file, url, executable or environment_id" },
    { ext({ credential_source = { file = "/a", url = "https://b" } }), "has both 'file' and 'url'" },
    { ext({ credential_source = { file = "/a", format = { type = "xml" } } }), "format.type must be 'text' or 'json'" },
    { ext({ credential_source = { file = "/a", format = { type = "json" } } }), "subject_token_field_name is needed" },
    { ext({ credential_source = { url = "https://b", headers = { ["Bad Name"] = "x" } } }),
      "credential_source.headers must map header names" },
    { ext({ credential_source = { executable = { command = "x 'open" } } }), "an unclosed quote" },
    { ext({ credential_source = { executable = { command = "x", timeout_millis = 200000 } } }),
      "timeout_millis must be 5000 to 120000" },
    { ext({ credential_source = { environment_id = "aws1", regional_cred_verification_url = "http://x" } }),
      "regional_cred_verification_url must be an https URL" },
    { ext({ workforce_pool_user_project = "p" }), "workforce_pool_user_project is only for a workforce pool audience" },
    { ext({ client_id = "c" }), "client_id and client_secret go together" },
    { ext({ service_account_impersonation_url = "https://iam.invalid/v1/nothing" }),
      "must end in serviceAccounts/EMAIL:generateAccessToken" },
    { ext({ service_account_impersonation_url = "https://iam.invalid/v1/projects/-/serviceAccounts/a@b:generateAccessToken",
      service_account_impersonation = { token_lifetime_seconds = 50000 } }), "the token lifetime must be 1 to 43200 seconds" },
    { { type = "external_account_authorized_user", client_id = "c" },
      "missing 'refresh_token', 'token_url', 'client_secret'" },
    { { type = "impersonated_service_account", service_account_impersonation_url = "https://x/y",
      source_credentials = { type = "metadata" } }, "(got type 'metadata')" },
    { { type = "gdch_service_account" }, "has type 'gdch_service_account', which is not supported" },
  }
  for i, c in ipairs(cases) do
    it("refuses case " .. i .. ": " .. c[2], function()
      local cred, err = credentials.from_info(c[1], {}, "credentials table")
      assert.is_nil(cred)
      assert.are.equal("auth", err.kind)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end)
  end

  it("an iam_endpoint with a user name or password is refused, never shown", function()
    local healthcare = require "healthcare"
    local c, err = healthcare.new { access_token = "tok-1234567890", impersonate = "sa@p.iam.gserviceaccount.com",
      iam_endpoint = "https://u:pw-secret-123@iam.invalid/v1" }
    assert.is_nil(c)
    assert.truthy(tostring(err):find("without a user name or password, got 'https://REDACTED@iam.invalid/v1'", 1, true),
      tostring(err))
    assert.is_nil(tostring(err):find("pw-secret", 1, true))
  end)

  it("subject and self_signed_jwt need a service account key", function()
    local cred, err = credentials.from_info(ext({}), { subject = "u@x" }, "f")
    assert.is_nil(cred)
    assert.truthy(tostring(err):find("subject needs a service account key", 1, true))
  end)

  it("reads the files it takes into credentials of the right kind, asking nothing yet", function()
    local cred = assert(credentials.from_info(ext({}), {}, "f"))
    assert.are.equal("external_account", cred.kind)
    assert.are.equal(0, cred.refreshes)
    cred:close()
    cred = assert(credentials.from_info(ext({
      service_account_impersonation_url = "https://iam.invalid/v1/projects/-/serviceAccounts/a@b.iam:generateAccessToken" }),
      {}, "f"))
    assert.are.equal("impersonated_service_account", cred.kind)
    assert.are.equal("a@b.iam", cred.target)
    assert.are.equal("external_account", cred.source.kind)
    cred:close()
  end)

  -- A client takes out of its errors what credential:secrets() lists: the headers a url
  -- source sends and the Basic client authentication must be there, not only the client secret.
  it("counts the headers of a url source and the Basic client authentication among its secrets", function()
    local function has(list, v)
      for _, s in ipairs(list) do if s == v then return true end end
      return false
    end
    local cred = assert(credentials.from_info(ext({ client_id = "client-1", client_secret = "client-secret-1",
      credential_source = { url = "https://idp.invalid/token", headers = { ["X-Vault-Token"] = "hvs.vault-1234",
        Authorization = "Bearer ci-token-1234", Accept = "application/json" } } }), {}, "f"))
    local secrets = cred:secrets()
    assert.is_true(has(secrets, "hvs.vault-1234"))
    assert.is_true(has(secrets, "Bearer ci-token-1234"))
    assert.is_true(has(secrets, "client-secret-1"))
    assert.is_true(has(secrets, "Y2xpZW50LTE6Y2xpZW50LXNlY3JldC0x"))   -- base64 of client-1:client-secret-1
    assert.is_false(has(secrets, "application/json"))
    cred:close()
    cred = assert(credentials.from_info({ type = "external_account_authorized_user", client_id = "client-1",
      client_secret = "client-secret-1", refresh_token = "refresh-1234", token_url = "https://sts.invalid/v1/oauthtoken" },
      {}, "f"))
    assert.is_true(has(cred:secrets(), "Y2xpZW50LTE6Y2xpZW50LXNlY3JldC0x"))
    cred:close()
    -- A request's own credential-bearing headers, whole and without their scheme.
    local list = credentials.header_secrets({ "Authorization: Basic abcdefgh1234", "Accept: text/plain",
      "X-Goog-Api-Key: key-123456789" }, {})
    assert.are.same({ "Basic abcdefgh1234", "abcdefgh1234", "key-123456789" }, list)
  end)

  it("completes delegates given as emails", function()
    assert.are.equal("projects/-/serviceAccounts/a@b", impersonate.delegate_name("a@b"))
    assert.are.equal("projects/-/serviceAccounts/a@b", impersonate.delegate_name("projects/-/serviceAccounts/a@b"))
  end)

  it("splits an executable's command line as a shell splits words, expanding nothing", function()
    assert.are.same({ "/bin/t", "a b", "$X", "c'd", "" }, external.split_command([[/bin/t "a b" '$X' c\'d '']]))
    assert.is_nil(external.split_command("   "))
  end)

  -- The token cache's key: the same file read in another run (another table hash order) must
  -- find the same entry.
  it("an external_account's identity does not depend on the order of its credential_source's keys", function()
    local names = {}
    for i = 1, 24 do names[i] = "X-Header-" .. i end
    local function source(from, to, step)
      local cs = { url = "https://md.invalid/token", format = { type = "json", subject_token_field_name = "t" } }
      cs.headers = {}
      for i = from, to, step do cs.headers[names[i]] = "v" .. i end
      return cs
    end
    local a = assert(credentials.from_info(ext({ credential_source = source(1, #names, 1) }), {}, "a"))
    local b = assert(credentials.from_info(ext({ credential_source = source(#names, 1, -1) }), {}, "b"))
    assert.are.equal(a.identity, b.identity)
    a:close()
    b:close()
  end)
end)

describe("a credential file in a directory another user may write to", function()
  local H = require "helpers"
  local printable = util.printable
  local base
  setup(function() base = H.tmpdir() end)
  teardown(function() if base then H.run("rm -rf " .. H.q(base)) end end)

  -- A directory under base named `name` with `mode`, holding a key file of mode 0600.
  local function key_in(name, mode)
    local dir = base .. "/" .. name
    H.check_run(string.format("mkdir -p %s && chmod %s %s", H.q(dir), mode, H.q(dir)))
    local path = dir .. "/key.json"
    H.write_file(path, "{}")
    H.check_run("chmod 600 " .. H.q(path))
    return path, (H.check_run("realpath " .. H.q(dir)):gsub("\n$", ""))
  end

  it("is refused, naming the directory in printable form; sticky (as /tmp) is fine", function()
    local path, dir = key_in("shared\27[31m\nX", "777")
    local cred, err = credentials.from_file(path, {})
    assert.is_nil(cred)
    assert.are.equal("auth", err.kind)
    assert.are.equal("UNSAFE_FILE", err.status)
    assert.are.equal(dir, err.directory)
    local text = tostring(err)
    assert.truthy(text:find("group or others may write to the directory '" .. printable(dir) .. "' on its way (not "
      .. "sticky), and could replace it; every directory on its way must be yours (or root's) and writable by you "
      .. "alone, or sticky as /tmp", 1, true), text)
    assert.is_nil(text:find("\27", 1, true), text)
    assert.is_nil(text:find("\n", 1, true), text)
    -- Once sticky, the file is read (and found to be no key).
    H.check_run("chmod 1777 " .. H.q(dir))
    cred, err = credentials.from_file(path, {})
    assert.is_nil(cred)
    assert.is_nil(err.status, tostring(err))
    assert.truthy(tostring(err):find("has no 'type'", 1, true), tostring(err))
  end)

  it("is refused below such a directory, and through the user's own link in one", function()
    local path = key_in("open/private", "700")
    H.check_run("chmod 777 " .. H.q(base .. "/open"))
    local _, err = credentials.from_file(path, {})
    assert.are.equal("UNSAFE_FILE", err.status, tostring(err))
    assert.truthy(err.directory:find("/open$"), err.directory)
    local own = key_in("mine", "700")
    local _, loose = key_in("loose", "777")
    H.check_run("ln -s " .. H.q(own) .. " " .. H.q(loose .. "/link.json"))
    _, err = credentials.from_file(loose .. "/link.json", {})
    assert.are.equal("UNSAFE_FILE", err.status, tostring(err))
    assert.are.equal(loose, err.directory)
    _, err = credentials.from_file(own, {})
    assert.is_nil(err.status, tostring(err))
  end)
end)

describe("two credential options", function()
  local healthcare = require "healthcare"
  local common = require "healthcare.cli.common"
  -- A value of each: a secret (never shown) or false for credentials (no authentication).
  local values = {
    basic_auth = { user = "u", password = "secret-basic-1" }, credentials = { false, "/nonexistent/key.json",
      { type = "service_account" } }, access_token = "secret-token-1", api_key = "secret-key-1" }
  local order = { "basic_auth", "credentials", "access_token", "api_key" }

  local function refused(err, a, b, what)
    assert.are.equal("usage", err.kind, what)
    assert.are.equal("options '" .. a .. "' and '" .. b .. "' cannot be used together: a request carries one "
      .. "credential", err.message, what)
    assert.is_nil(tostring(err):find("secret", 1, true), what)
  end

  it("are a usage error naming both, never their values, whichever two (healthcare.new, from_options)", function()
    for i = 1, #order do
      for j = i + 1, #order do
        local a, b = order[i], order[j]
        for _, va in ipairs(a == "credentials" and values.credentials or { values[a] }) do
          local opts = { [a] = va, [b] = values[b] }
          local what = a .. " (" .. tostring(va) .. ") with " .. b
          local c, err = healthcare.new(opts)
          assert.is_nil(c, what)
          refused(err, a, b, what)
          c, err = credentials.from_options(opts)
          assert.is_nil(c, what)
          refused(err, a, b, what)
        end
      end
    end
    -- The option tables keep the order a refusal names them in whatever order they are written.
    local _, err = healthcare.new({ api_key = "secret-key-1", access_token = "secret-token-1" })
    refused(err, "access_token", "api_key", "access_token and api_key")
    _, err = healthcare.new({ impersonate = "sa@p.iam.gserviceaccount.com", basic_auth = values.basic_auth })
    refused(err, "basic_auth", "impersonate", "basic_auth and impersonate")
  end)

  it("impersonate goes over one credential option; one alone is taken", function()
    local c = assert(healthcare.new({ access_token = "secret-token-1", impersonate = "sa@p.iam.gserviceaccount.com" }))
    assert.are.equal("impersonated_service_account", c:credential().kind)
    c:close()
    for _, k in ipairs({ "access_token", "api_key" }) do
      c = assert(healthcare.new({ [k] = values[k] }))
      assert.are.equal(k, c:credential().kind)
      c:close()
    end
  end)

  it("impersonate on a DICOMweb server's store finds Google's credential to impersonate with; with none it is refused",
      function()
    local SA = "sa@p.iam.gserviceaccount.com"
    local store = assert(healthcare.dicomweb("http://127.0.0.1:9/dicom-web", { impersonate = SA }))
    assert.are_not.equal("none", store.client:credential().kind)
    store:close()
    store = assert(healthcare.dicomweb("http://127.0.0.1:9/dicom-web"))
    assert.are.equal("none", store.client:credential().kind)
    store:close()
    local c, err = healthcare.new({ credentials = false, impersonate = SA })
    assert.is_nil(c)
    assert.are.equal("usage", err.kind)
    assert.are.equal("option 'impersonate' needs a credential to impersonate with, and credentials = false sends none",
      err.message)
  end)

  it("on the command line: two credential flags are a usage error naming both flags", function()
    local function args(t)
      t.scope = t.scope or {}
      return t
    end
    for _, c in ipairs({
      { { credentials = "k.json", access_token = "secret-token-1" }, "--credentials and --access-token" },
      { { basic_auth_file = "/nonexistent/f", credentials = "k.json" }, "--basic-auth-file and --credentials" },
      { { basic_auth_file = "/nonexistent/f", access_token = "secret-token-1" }, "--basic-auth-file and --access-token" },
      { { basic_auth_file = "/nonexistent/f", impersonate_service_account = "sa@p.iam.gserviceaccount.com" },
        "--basic-auth-file and --impersonate-service-account" },
    }) do
      local copts, err = common.client_options(args(c[1]))
      assert.is_nil(copts, c[2])
      assert.are.equal("usage", err.kind, c[2])
      assert.are.equal(c[2] .. " cannot be used together: a request carries one credential", err.message)
      assert.is_nil(tostring(err):find("secret", 1, true), c[2])
    end
  end)
end)

describe("credentials.token_error_text", function()
  local cjson = require "cjson"

  it("cuts a token endpoint's long error and description, never inside a UTF-8 character", function()
    -- 299 ASCII bytes then "é" (2 bytes): a cut at byte 300 would split it
    local desc = string.rep("d", 299) .. string.rep("é", 50000)
    local code = string.rep("e", 100000)
    local text, raw = credentials.token_error_text(cjson.encode({ error = code, error_description = desc }))
    assert.is_true(#text < 500, #text)
    assert.are.equal(code, raw)
    assert.truthy(text:find("(100000 bytes in all)", 1, true))
    -- the cut backs off before the two-byte character
    assert.truthy(text:find(": " .. string.rep("d", 299) .. "... (100299 bytes in all)", 1, true))
  end)

  it("keeps a short answer whole", function()
    assert.are.equal("invalid_grant: Bad Request",
      (credentials.token_error_text('{"error":"invalid_grant","error_description":"Bad Request"}')))
  end)
end)
