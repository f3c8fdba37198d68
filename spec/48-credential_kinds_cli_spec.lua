-- SPDX-License-Identifier: MIT
-- The `healthcare` command with credentials without key files, run as a process in a clean
-- environment against this file's own emulator: Application Default Credentials files of type
-- impersonated_service_account, external_account (file, executable and aws sources) and
-- external_account_authorized_user, given as --credentials or GOOGLE_APPLICATION_CREDENTIALS;
-- --impersonate-service-account over a key file; the token cache between runs (the access token
-- only, 0600); credential errors exit 2 with a clear message; and nothing the command prints
-- (with --debug) holds a secret.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/48-credential_kinds_cli_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end

local cjson = require "cjson"
local core = require "healthcare.core"

local E = H.env
-- The command runs Lua 5.4 whatever runs this file (its launcher loads the Lua 5.4 build).
local LUA = "lua5.4"
local federation = require "support.federation"
local JWT, AWS4, EXCHANGE = federation.JWT, federation.AWS4, federation.EXCHANGE
local P = federation.pools("cli-", "cli-")
local POOL, OIDC_AUD, AWS_AUD, WF_AUD = P.pool, P.oidc_aud, P.aws_aud, P.wf_aud
local MSG_DENIED = federation.MSG_DENIED

local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

local secrets = {}
local function secret(s)
  secrets[#secrets + 1] = s
  return s
end

local function assert_no_secrets(text)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), "output holds a secret: " .. s:sub(1, 6) .. "...")
  end
  assert.is_nil(H.find_jwt(text), "output holds a JWT")
  assert.is_nil(text:find("tok-", 1, true), "output holds an issued token")
end

-- Runs the command in an environment holding only env (plus PATH, HOME and the Lua paths):
-- stdout, stderr, exit code.
local function healthcare(env, args)
  local words = { "env", "-i", "PATH=" .. (os.getenv("PATH") or "/usr/bin:/bin"),
    "LUA_PATH=" .. (os.getenv("LUA_PATH") or ""), "LUA_CPATH=" .. (os.getenv("LUA_CPATH") or "") }
  if not env.HOME then words[#words + 1] = "HOME=" .. H.tmpdir() end
  for k, v in pairs(env) do words[#words + 1] = k .. "=" .. v end
  words[#words + 1] = LUA
  words[#words + 1] = H.BIN
  for _, a in ipairs(args) do words[#words + 1] = a end
  for i, w in ipairs(words) do words[i] = H.q(w) end
  return H.run(table.concat(words, " "))
end

local new_file = H.fresh_files(30)

-- `healthcare store` of one new file into the emulator's store with extra arguments, --debug on;
-- asserts the exit code (and, for 0, the file in Orthanc) and that nothing printed holds a
-- secret. Returns stdout, stderr.
local function store(env, extra, want)
  local f = new_file()
  local args = { "store", E.store, f.path, "--endpoint", em.endpoint, "--debug", "--no-progress" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local so, se, code = healthcare(env, args)
  assert.are.equal(want or 0, code, se)
  if (want or 0) == 0 then assert.truthy(H.orthanc_find_instance(f.sop_instance_uid), "stored in Orthanc") end
  assert_no_secrets(so .. se)
  return so, se
end

local write_json = federation.write_adc

local fresh_email = federation.fresh_email

em:control("audiences", { { audience = OIDC_AUD, kind = "oidc" }, { audience = AWS_AUD, kind = "aws" } })
local AWS_KEY, AWS_SECRET = "AKIDCLI" .. core.random_hex(4), secret("aws/secret+" .. core.random_hex(8))
local AWS_SESSION = secret("IQoJcli" .. core.random_hex(16))
em:control("aws_credentials", { access_key_id = AWS_KEY, secret_access_key = AWS_SECRET, session_token = AWS_SESSION,
  role = "cli-role" })

local function subject_file(t)
  local token = secret(em:control("subject_tokens", t or { audience = OIDC_AUD, subject_token_type = JWT })
    .subject_token)
  return H.write_file(H.tmpdir() .. "/subject", token), token
end

local function oidc_file(cs, more)
  local t = { type = "external_account", audience = OIDC_AUD, subject_token_type = JWT, token_url = em.sts_url,
    credential_source = cs }
  for k, v in pairs(more or {}) do t[k] = v end
  return write_json(t)
end

describe("healthcare with impersonation", function()
  it("an impersonated_service_account file in GOOGLE_APPLICATION_CREDENTIALS stores", function()
    local user = em:authorized_user()
    secret(user.refresh_token)
    secret(user.client_secret)
    local target = fresh_email("cli-imp")
    em:control("service_accounts", { email = target, impersonators = { "user:" .. user.client_id } })
    local file = write_json({ type = "impersonated_service_account",
      service_account_impersonation_url = em.iam_url .. target .. ":generateAccessToken",
      source_credentials = cjson.decode(H.file_bytes(user.key_file)) })
    local before = em:count("impersonations", "ok")
    store({ GOOGLE_APPLICATION_CREDENTIALS = file })
    assert.are.equal(before + 1, em:count("impersonations", "ok"))
  end)

  it("--impersonate-service-account over --credentials KEY; the token cache spares the next run", function()
    local sa = em:service_account()
    local target = fresh_email("cli-flag")
    em:control("service_accounts", { email = target, impersonators = { "serviceAccount:" .. sa.client_email } })
    local cache = H.tmpdir()
    local env = { HEALTHCARE_IAM_ENDPOINT = em.url .. "/v1", XDG_CACHE_HOME = cache }
    local before = em:count("impersonations", "ok")
    local _, se = store(env, { "--credentials", sa.key_file, "--impersonate-service-account", target })
    assert.truthy(se:find("generateAccessToken (token for impersonated service account " .. target, 1, true), se)
    store(env, { "--credentials", sa.key_file, "--impersonate-service-account", target })
    assert.are.equal(before + 1, em:count("impersonations", "ok"))
    -- The cache: the impersonated token (and the source's), 0600, no key material.
    local listing = H.check_run("find " .. H.q(cache) .. " -type f -printf '%m %p\\n'")
    for mode, name in listing:gmatch("(%d+) (%S+)") do
      assert.are.equal("600", mode)
      local text = H.file_bytes(name)
      assert_no_secrets(text:gsub('"access_token":"[^"]*"', ""))
      for _, run in ipairs(H.pem_runs(sa.private_key_pem)) do assert.is_nil(text:find(run, 1, true)) end
    end
  end)

  it("impersonation denied exits 2 quoting IAM", function()
    local sa = em:service_account()
    local target = fresh_email("cli-denied")
    local _, se = store({ HEALTHCARE_IAM_ENDPOINT = em.url .. "/v1" },
      { "--credentials", sa.key_file, "--impersonate-service-account", target }, 2)
    assert.truthy(se:find(MSG_DENIED, 1, true), se)
  end)

  it("a bad email or a bad file exits 2 before anything is sent", function()
    local sa = em:service_account()
    local _, se = store({}, { "--credentials", sa.key_file, "--impersonate-service-account", "nobody" }, 2)
    assert.truthy(se:find("impersonate must be a service account email, got 'nobody'", 1, true), se)
    _, se = store({}, { "--credentials", write_json({ type = "impersonated_service_account" }) }, 2)
    assert.truthy(se:find("missing 'service_account_impersonation_url'", 1, true), se)
  end)
end)

describe("healthcare with external_account files", function()
  it("a file source stores, and a search finds it (the seed form too)", function()
    local path = subject_file()
    local file = oidc_file({ file = path })
    local before = em:count("token_requests", EXCHANGE)
    store({}, { "--credentials", file, "--no-token-cache" })
    local so, se, code = healthcare({ GOOGLE_APPLICATION_CREDENTIALS = file }, { "search", E.store, "--endpoint",
      em.endpoint, "--limit", "1", "--json", "--no-token-cache" })
    assert.are.equal(0, code, se)
    assert_no_secrets(so .. se)
    assert.are.equal(before + 2, em:count("token_requests", EXCHANGE))
  end)

  it("STS refusing the audience exits 2", function()
    local path = subject_file()
    local file = oidc_file({ file = path }, { audience = "//iam.googleapis.com/" .. POOL .. "/providers/gone" })
    local _, se = store({}, { "--credentials", file }, 2)
    assert.truthy(se:find("invalid_target", 1, true), se)
  end)

  it("an executable source runs only when allowed (exit 2 otherwise)", function()
    local _, token = subject_file()
    local dir = H.tmpdir()
    local script = H.write_file(dir .. "/helper.sh", "#!/bin/sh\nprintf '%s' '" .. cjson.encode({ version = 1,
      success = true, token_type = JWT, id_token = token }) .. "'\n")
    H.check_run("chmod 700 " .. H.q(script))
    local file = oidc_file({ executable = { command = script } })
    local _, se = store({}, { "--credentials", file }, 2)
    assert.truthy(se:find("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", 1, true), se)
    store({ GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" }, { "--credentials", file })
  end)

  it("an aws source signs GetCallerIdentity; IMDSv2 down exits 2", function()
    local file = write_json({ type = "external_account", audience = AWS_AUD, subject_token_type = AWS4,
      token_url = em.sts_url, credential_source = { environment_id = "aws1",
        region_url = em.aws_metadata .. "/latest/meta-data/placement/availability-zone",
        url = em.aws_metadata .. "/latest/meta-data/iam/security-credentials",
        regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        imdsv2_session_token_url = em.aws_metadata .. "/latest/api/token" } })
    local before = em:count("aws_caller_identity", "ok")
    store({}, { "--credentials", file, "--no-token-cache" })
    assert.are.equal(before + 1, em:count("aws_caller_identity", "ok"))
    em:control("config", { aws_imdsv2 = "down" })
    local ok, err = pcall(store, {}, { "--credentials", file, "--no-token-cache" }, 2)
    em:control("config", { aws_imdsv2 = "required" })
    assert(ok, err)
  end)

  it("external_account_authorized_user refreshes at its token_url; a revoked one exits 2", function()
    local rt, csecret = secret("rt-cli-" .. core.random_hex(10)), secret("wf-secret-" .. core.random_hex(8))
    em:control("workforce_users", { refresh_token = rt, client_id = "wf-cli", client_secret = csecret, audience = WF_AUD })
    local function file(token)
      return write_json({ type = "external_account_authorized_user", audience = WF_AUD, refresh_token = token,
        token_url = em.url .. "/v1/oauthtoken", client_id = "wf-cli", client_secret = csecret })
    end
    local before = em:count("sts_requests", "oauthtoken")
    store({}, { "--credentials", file(rt), "--no-token-cache" })
    assert.are.equal(before + 1, em:count("sts_requests", "oauthtoken"))
    local _, se = store({}, { "--credentials", file(secret("rt-revoked-" .. core.random_hex(8))), "--no-token-cache" }, 2)
    assert.truthy(se:find("The refresh token is invalid or expired.", 1, true), se)
  end)
end)
