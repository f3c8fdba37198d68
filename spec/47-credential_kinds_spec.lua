-- SPDX-License-Identifier: MIT
-- Credentials without key files, from Lua (healthcare.auth.impersonate, healthcare.auth.external)
-- against this file's own emulator (spec/support/emulator_federation.py: STS, IAM Credentials'
-- generateAccessToken, the EC2 instance metadata service, GetCallerIdentity checked by botocore):
-- each kind stores a generated DICOM file into Orthanc and searches the store with the token the
-- emulator issued for it; refreshes on expiry are counted at the emulator; the failures (STS
-- refuses the audience, an executable not allowed or too slow, IMDSv2 down, impersonation
-- denied) are credential errors (kind "auth"); and no secret handed out or received shows up in
-- an error, a debug line or the token cache.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/47-credential_kinds_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end

local cjson = require "cjson"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local credentials = require "healthcare.auth.credentials"
local external = require "healthcare.auth.external"
local impersonate = require "healthcare.auth.impersonate"

local E = H.env
local federation = require "support.federation"
local PLATFORM, JWT, SAML, AWS4, EXCHANGE = federation.PLATFORM, federation.JWT, federation.SAML, federation.AWS4, federation.EXCHANGE
local P = federation.pools("pool-", "staff-")
local POOL, OIDC_AUD, AWS_AUD, CLIENT_AUD, WF_AUD = P.pool, P.oidc_aud, P.aws_aud, P.client_aud, P.wf_aud
local MSG_DENIED = federation.MSG_DENIED
local MSG_TARGET = 'The target service indicated by the "audience" parameters is invalid.'

local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

-- Every secret handed out or received, looked for in every output.
local secrets = {}
local function secret(s)
  secrets[#secrets + 1] = s
  return s
end

-- Asserts text holds none of the secrets, no JWT and no token the emulator issued.
local function no_secret(text, where)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), where .. " holds a secret: " .. s:sub(1, 6) .. "...")
  end
  assert.is_nil(H.find_jwt(text), where .. " holds a JWT")
  assert.is_nil(text:find("tok-", 1, true), where .. " holds an access token the emulator issued")
end

-- Runs fn with the environment credentials.getenv sees set to env (nothing else is set).
local function with_env(env, fn)
  local saved = credentials.getenv
  credentials.getenv = function(k) return env[k] end
  local ok, a, b = pcall(fn)
  credentials.getenv = saved
  if not ok then error(a, 0) end
  return a, b
end

local new_file = H.fresh_files(40)
local debug_lines = {}

-- A client of the emulator with credentials (a path or a table) and more options; its debug
-- lines are collected for the leak check.
local function client_for(creds, opts)
  local o = { endpoint = em.endpoint, iam_endpoint = em.url .. "/v1", credentials = creds, debug = function(line)
    debug_lines[#debug_lines + 1] = line
  end }
  for k, v in pairs(opts or {}) do o[k] = v end
  return healthcare.new(o)
end

-- Stores one generated file and searches the store with client; asserts both worked and the
-- file is in Orthanc. Returns the number of bearer tokens the emulator has seen.
local function store_and_search(client)
  local f = new_file()
  local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom",
    data = { file = f.path } })
  assert(res, err and tostring(err))
  assert.are.equal(200, res.status)
  assert.truthy(H.orthanc_find_instance(f.sop_instance_uid), "stored in Orthanc")
  local results, serr = client:dicom_store(E.store):search_studies({ StudyInstanceUID = f.study_uid })
  assert(results, serr and tostring(serr))
  local all, aerr = results:all()
  assert(all, aerr and tostring(aerr))
  assert.are.equal(1, #all)
end

-- The last entry of the emulator's impersonation log.
local function last_impersonation()
  local log = em:stats().impersonation_log
  return log[#log]
end

local write_json = federation.write_adc

local fresh_email = federation.fresh_email

-- A failed credential: nil, err of kind "auth" whose message holds want (plain text).
local function auth_error(want, ok, err)
  assert.is_nil(ok)
  assert.are.equal("auth", err.kind, tostring(err))
  assert.truthy(tostring(err):find(want, 1, true), tostring(err))
  no_secret(tostring(err), "the error")
  return err
end

-- The first request through a client whose credential fails: the error.
local function first_error(client)
  local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom",
    data = { file = new_file().path } })
  assert.is_nil(res)
  return err
end

-- ---- registrations ------------------------------------------------------------------------

local CLIENT_ID, CLIENT_SECRET = "sts-client-" .. core.random_hex(3), secret("sts-secret-" .. core.random_hex(8))
local USER_PROJECT = "billing-project-" .. core.random_hex(3)
em:control("audiences", {
  { audience = OIDC_AUD, kind = "oidc" }, { audience = AWS_AUD, kind = "aws" },
  { audience = CLIENT_AUD, client_id = CLIENT_ID, client_secret = CLIENT_SECRET },
  { audience = WF_AUD, kind = "saml", user_project = USER_PROJECT },
})
local AWS_KEY, AWS_SECRET = "AKIDC17" .. core.random_hex(4), secret("aws/secret+" .. core.random_hex(8))
local AWS_SESSION = secret("IQoJb3JpZ2luX2Vj" .. core.random_hex(16))
em:control("aws_credentials", { access_key_id = AWS_KEY, secret_access_key = AWS_SECRET, session_token = AWS_SESSION,
  role = "migration-role" })

-- A subject token the emulator knows (secret): t = { audience, subject_token_type, subject }.
local function subject_token(t)
  return secret(em:control("subject_tokens", t).subject_token)
end

local function principal_of(subject)
  return "principal://iam.googleapis.com/" .. POOL .. "/subject/" .. subject
end

-- ---- impersonated_service_account ------------------------------------------------------------

describe("impersonated_service_account", function()
  it("an ADC file with an authorized_user source stores and searches, the source asking IAM", function()
    local user = em:authorized_user()
    secret(user.refresh_token)
    secret(user.client_secret)
    local target = fresh_email("imp-target")
    em:control("service_accounts", { email = target, impersonators = { "user:" .. user.client_id } })
    local file = write_json({ type = "impersonated_service_account", delegates = {},
      service_account_impersonation_url = em.iam_url .. target .. ":generateAccessToken",
      source_credentials = cjson.decode(H.file_bytes(user.key_file)) })
    local before = em:count("impersonations", "ok")
    local client = assert(client_for(file))
    store_and_search(client)
    assert.are.equal(before + 1, em:count("impersonations", "ok"))
    local last = last_impersonation()
    assert.are.same({ target, "user:" .. user.client_id, { "https://www.googleapis.com/auth/cloud-healthcare" } },
      { last.target, last.principal, last.scope })
    assert.are.equal("impersonated_service_account", client:credential().kind)
    client:close()
  end)

  it("a service_account source with delegates: the chain reaches IAM as projects/-/serviceAccounts/...", function()
    local sa = em:service_account()
    local target, delegate = fresh_email("imp-chain"), fresh_email("imp-delegate")
    em:control("service_accounts", {
      { email = delegate, impersonators = { "serviceAccount:" .. sa.client_email } },
      { email = target, impersonators = { "serviceAccount:" .. delegate } },
    })
    local file = write_json({ type = "impersonated_service_account", delegates = { delegate },
      service_account_impersonation_url = em.iam_url .. target .. ":generateAccessToken",
      source_credentials = sa.info })
    local client = assert(client_for(file))
    store_and_search(client)
    local last = last_impersonation()
    assert.are.same({ "projects/-/serviceAccounts/" .. delegate }, last.delegates)
    assert.are.equal("serviceAccount:" .. sa.client_email, last.principal)
    client:close()
  end)

  it("refreshes the target's token on expiry (counted at IAM), keeping the source's", function()
    local sa = em:service_account()
    local target = fresh_email("imp-refresh")
    em:control("service_accounts", { email = target, impersonators = { "serviceAccount:" .. sa.client_email } })
    em:control("config", { expires_in = 2 })
    local ok, err = pcall(function()
      local client = assert(client_for(sa.key_file, { impersonate = target }))
      local imp0 = em:count("impersonations", "ok")
      local jwt0 = em:count("token_requests", credentials.JWT_GRANT)
      store_and_search(client)
      assert.are.equal(imp0 + 1, em:count("impersonations", "ok"))
      core.sleep(2.2)
      store_and_search(client)
      -- The impersonated token (2 s) was refreshed; the source's (also 2 s) too, once each time.
      assert.are.equal(imp0 + 2, em:count("impersonations", "ok"))
      assert.are.equal(jwt0 + 2, em:count("token_requests", credentials.JWT_GRANT))
      assert.are.equal(2, client:credential().refreshes)
      client:close()
    end)
    em:control("config", { expires_in = 3600 })
    assert(ok, err)
  end)

  it("the impersonate option over an access token and over a service account key", function()
    local target = fresh_email("imp-option")
    local token = secret(em:control("tokens", { principal = "user:alice@example.org", scopes = { PLATFORM } })
      .access_token)
    local sa = em:service_account()
    em:control("service_accounts", { email = target, impersonators = { "user:alice@example.org",
      "serviceAccount:" .. sa.client_email } })
    local c1 = assert(healthcare.new({ endpoint = em.endpoint, access_token = token, impersonate = target,
      iam_endpoint = em.url .. "/v1/" }))
    store_and_search(c1)
    assert.are.equal("user:alice@example.org", last_impersonation().principal)
    c1:close()
    local c2 = assert(client_for(sa.key_file, { impersonate = target }))
    store_and_search(c2)
    assert.are.equal("serviceAccount:" .. sa.client_email, last_impersonation().principal)
    c2:close()
    -- Over Application Default Credentials, found at the first request.
    with_env({ GOOGLE_APPLICATION_CREDENTIALS = sa.key_file }, function()
      local c3 = assert(client_for(nil, { impersonate = target }))
      local before = em:count("impersonations", "ok")
      store_and_search(c3)
      assert.are.equal(before + 1, em:count("impersonations", "ok"))
      c3:close()
    end)
  end)

  it("impersonation denied is a credential error quoting IAM, with no secret in it", function()
    local sa = em:service_account()
    local target = fresh_email("imp-denied")
    em:control("service_accounts", { email = target, impersonators = { "serviceAccount:someone-else@x.iam" } })
    local client = assert(client_for(sa.key_file, { impersonate = target }))
    local err = first_error(client)
    auth_error(MSG_DENIED, nil, err)
    assert.truthy(tostring(err):find("impersonated service account " .. target, 1, true), tostring(err))
    assert.are.equal(403, err.http_status)
    client:close()
  end)

  it("refuses bad files and options: clear errors, nothing sent", function()
    local before = em:count("impersonations", "ok") + em:count("impersonations", "denied")
    local cases = {
      { { type = "impersonated_service_account", source_credentials = { type = "authorized_user" } },
        "missing 'service_account_impersonation_url'" },
      { { type = "impersonated_service_account", service_account_impersonation_url = em.iam_url .. "a@b:generateAccessToken" },
        "'source_credentials' must be an object of type 'authorized_user' or 'service_account' (got nil)" },
      { { type = "impersonated_service_account", service_account_impersonation_url = em.iam_url .. "a@b:generateAccessToken",
        source_credentials = { type = "impersonated_service_account" } }, "cannot itself be impersonated" },
      { { type = "impersonated_service_account", service_account_impersonation_url = em.url .. "/nowhere",
        source_credentials = cjson.decode(H.file_bytes(em:authorized_user().key_file)) },
        "must end in serviceAccounts/EMAIL:generateAccessToken" },
      { { type = "impersonated_service_account", service_account_impersonation_url = em.iam_url .. "a@b:generateAccessToken",
        delegates = { 7 }, source_credentials = cjson.decode(H.file_bytes(em:authorized_user().key_file)) },
        "delegate 1 must be a service account email" },
    }
    for _, c in ipairs(cases) do
      auth_error(c[2], healthcare.new({ endpoint = em.endpoint, credentials = c[1] }))
    end
    local sa = em:service_account()
    auth_error("impersonate must be a service account email, got 'not an email'",
      healthcare.new({ endpoint = em.endpoint, credentials = sa.key_file, impersonate = "not an email" }))
    auth_error("not an API key", healthcare.new({ endpoint = em.endpoint, api_key = "AIzaSyKEY" .. core.random_hex(8),
      impersonate = "x@y.iam.gserviceaccount.com" }))
    assert.has_error(function() healthcare.new({ endpoint = em.endpoint, impersonate = 5 }) end)
    assert.are.equal(before, em:count("impersonations", "ok") + em:count("impersonations", "denied"))
  end)

  it("reads IAM's expireTime as UTC", function()
    assert.are.equal(0, impersonate.epoch("1970-01-01T00:00:00Z"))
    assert.are.equal(951782400, impersonate.epoch("2000-02-29T00:00:00Z"))
    assert.are.equal(951782400 - 3600, impersonate.epoch("2000-02-29T00:00:00.5+01:00"))
    assert.is_nil(impersonate.epoch("yesterday"))
  end)
end)

-- ---- external_account ------------------------------------------------------------------------

-- An external_account file for audience with credential_source cs and more fields.
local function external_file(audience, token_type, cs, more)
  local t = { type = "external_account", audience = audience, subject_token_type = token_type,
    token_url = em.sts_url, credential_source = cs }
  for k, v in pairs(more or {}) do t[k] = v end
  return write_json(t)
end

-- A small HTTP server standing for an identity provider's token URL (Azure's IMDS, a CI
-- system): GET (or POST) /token answers body only when the request carries header `want`.
local function token_url_server(body, want)
  local dir = H.tmpdir()
  H.write_file(dir .. "/body", body)
  local script = [[
import http.server, sys
body = open(sys.argv[1] + "/body", "rb").read()
name, value = sys.argv[2].split(": ", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = self.path == "/token" and self.headers.get(name) == value
        with open(sys.argv[1] + "/hits", "a") as f:
            f.write("ok\n" if ok else "refused\n")
        self.send_response(200 if ok else 403)
        self.end_headers()
        self.wfile.write(body if ok else b"no")
    do_POST = do_GET
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
]]
  H.write_file(dir .. "/server.py", script)
  local pid = H.check_run("/usr/bin/python3 " .. H.q(dir .. "/server.py") .. " " .. H.q(dir) .. " "
    .. H.q(want) .. " > " .. H.q(dir .. "/port") .. " 2>/dev/null & echo $!"):match("%d+")
  local port
  for _ = 1, 200 do
    port = (H.file_bytes(dir .. "/port") or ""):match("%d+")
    if port then break end
    core.sleep(0.05)
  end
  assert(port, "the token URL server did not start")
  return { url = "http://127.0.0.1:" .. port .. "/token", dir = dir,
    hits = function() return H.file_bytes(dir .. "/hits") or "" end,
    stop = function() H.run("kill " .. pid) end }
end

describe("external_account", function()
  it("file source (text): the subject token exchanged at STS stores and searches", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT, subject = "ci-1" })
    local path = H.write_file(H.tmpdir() .. "/oidc-token", subject)
    local before = em:count("token_requests", EXCHANGE)
    local client = assert(client_for(external_file(OIDC_AUD, JWT, { file = path })))
    store_and_search(client)
    assert.are.equal(before + 1, em:count("token_requests", EXCHANGE))
    local log = em:stats().sts_log
    assert.are.equal(H.sha256_string(subject), log[#log].subject_token_sha256)
    assert.are.equal("external_account", client:credential().kind)
    client:close()
  end)

  it("file source (json, subject_token_field_name), client authentication, refresh on expiry", function()
    local subject = subject_token({ audience = CLIENT_AUD, subject_token_type = JWT })
    local path = H.write_file(H.tmpdir() .. "/token.json", cjson.encode({ id_token = subject, other = 1 }))
    em:control("config", { expires_in = 2 })
    local ok, err = pcall(function()
      local client = assert(client_for(external_file(CLIENT_AUD, JWT,
        { file = path, format = { type = "json", subject_token_field_name = "id_token" } },
        { client_id = CLIENT_ID, client_secret = CLIENT_SECRET })))
      local before = em:count("token_requests", EXCHANGE)
      store_and_search(client)
      core.sleep(2.2)
      store_and_search(client)
      assert.are.equal(before + 2, em:count("token_requests", EXCHANGE))
      local log = em:stats().sts_log
      assert.are.equal("basic", log[#log].client_auth)
      client:close()
    end)
    em:control("config", { expires_in = 3600 })
    assert(ok, err)
  end)

  it("url source with headers, text and json", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local text_server = token_url_server(subject, "Metadata: True")
    local json_server = token_url_server(cjson.encode({ access_token = subject }), "Metadata: True")
    local ok, err = pcall(function()
      local c1 = assert(client_for(external_file(OIDC_AUD, JWT, { url = text_server.url,
        headers = { Metadata = "True" } })))
      store_and_search(c1)
      c1:close()
      local c2 = assert(client_for(external_file(OIDC_AUD, JWT, { url = json_server.url,
        headers = { Metadata = "True" }, format = { type = "json", subject_token_field_name = "access_token" } })))
      store_and_search(c2)
      c2:close()
      assert.are.equal("ok\n", text_server.hits())
      -- Without the header the server refuses: a credential error naming the URL's answer.
      local c3 = assert(client_for(external_file(OIDC_AUD, JWT, { url = text_server.url })))
      auth_error("cannot get the subject token: " .. text_server.url .. " answered HTTP 403", nil, first_error(c3))
      c3:close()
    end)
    text_server.stop()
    json_server.stop()
    assert(ok, err)
  end)

  -- The file source's cap (1 MiB) for the url source too; the error is the credential's, not
  -- taken by the API call for its answer passing max_bytes.
  it("a url source answering more than 1 MiB is a credential error naming the source", function()
    local server = token_url_server(string.rep("x", external.MAX_SUBJECT_TOKEN + 1), "Metadata: True")
    local ok, err = pcall(function()
      local client = assert(client_for(external_file(OIDC_AUD, JWT, { url = server.url,
        headers = { Metadata = "True" } }), { token_cache = false }))
      local e = auth_error("cannot get the subject token from " .. server.url .. ": the answer is larger than "
        .. external.MAX_SUBJECT_TOKEN .. " bytes", nil, first_error(client))
      assert.are.equal("source_answer_too_large", e.status)
      local _, cerr = client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" })
      e = auth_error("cannot get the subject token from " .. server.url, nil, cerr)
      assert.is_nil(tostring(e):find("max_bytes", 1, true), tostring(e))
      assert.is_nil(e.option)
      client:close()
    end)
    server.stop()
    assert(ok, err)
  end)

  it("a token endpoint answering more than 1 MiB is a credential error naming it, not the API answer's", function()
    local server = token_url_server(string.rep("x", credentials.MAX_TOKEN_ANSWER + 1), "Accept: application/json")
    local ok, err = pcall(function()
      local path = H.write_file(H.tmpdir() .. "/t", subject_token({}))
      local client = assert(client_for(external_file(OIDC_AUD, JWT, { file = path }, { token_url = server.url }),
        { token_cache = false }))
      local _, cerr = client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" })
      local e = auth_error("the answer of the token endpoint " .. server.url .. " is larger than "
        .. credentials.MAX_TOKEN_ANSWER .. " bytes", nil, cerr)
      assert.are.equal("token_answer_too_large", e.status)
      assert.is_nil(e.option)
      client:close()
    end)
    server.stop()
    assert(ok, err)
  end)

  it("STS refusing the audience is a credential error quoting STS", function()
    local bad = "//iam.googleapis.com/" .. POOL .. "/providers/unknown"
    local path = H.write_file(H.tmpdir() .. "/t", subject_token({}))
    local client = assert(client_for(external_file(bad, JWT, { file = path })))
    local err = auth_error(MSG_TARGET, nil, first_error(client))
    assert.are.equal("invalid_target", err.status)
    client:close()
  end)

  it("workforce pool: workforce_pool_user_project sent as STS options.userProject", function()
    local subject = subject_token({ audience = WF_AUD, subject_token_type = SAML })
    local path = H.write_file(H.tmpdir() .. "/saml", subject)
    local client = assert(client_for(external_file(WF_AUD, SAML, { file = path },
      { workforce_pool_user_project = USER_PROJECT })))
    store_and_search(client)
    local log = em:stats().sts_log
    assert.are.same({ userProject = USER_PROJECT }, log[#log].options)
    client:close()
    -- Without it this pool's STS refuses.
    local c2 = assert(client_for(external_file(WF_AUD, SAML, { file = path })))
    auth_error('The "userProject" option must be ' .. USER_PROJECT, nil, first_error(c2))
    c2:close()
  end)

  it("with service_account_impersonation_url: STS for cloud-platform, then IAM for the store's scope", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT, subject = "wif-imp" })
    local path = H.write_file(H.tmpdir() .. "/t", subject)
    local target = fresh_email("wif-target")
    em:control("service_accounts", { email = target, impersonators = { principal_of("wif-imp") } })
    local client = assert(client_for(external_file(OIDC_AUD, JWT, { file = path },
      { service_account_impersonation_url = em.iam_url .. target .. ":generateAccessToken",
        service_account_impersonation = { token_lifetime_seconds = 1800 } })))
    store_and_search(client)
    local log = em:stats().sts_log
    assert.are.equal(PLATFORM, log[#log].scope)
    local last = last_impersonation()
    assert.are.same({ target, principal_of("wif-imp"), "1800s" }, { last.target, last.principal, last.lifetime })
    assert.are.equal("impersonated_service_account", client:credential().kind)
    client:close()
  end)

  it("quota_project_id goes out as x-goog-user-project", function()
    local path = H.write_file(H.tmpdir() .. "/t", subject_token({}))
    local client = assert(client_for(external_file(OIDC_AUD, JWT, { file = path }, { quota_project_id = "billing-q" })))
    local a = assert(client:credential():authorize())
    assert.are.equal("x-goog-user-project: billing-q", a.headers[2])
    client:close()
  end)
end)

-- ---- the executable source ------------------------------------------------------------------

-- An executable (a shell script) answering with the JSON `answer` (a string), after `delay`
-- seconds; each run appends its environment's GOOGLE_EXTERNAL_ACCOUNT_* to runs.
local function executable(answer, delay)
  local dir = H.tmpdir()
  local script = dir .. "/token-helper.sh"
  H.write_file(dir .. "/answer.json", answer)
  H.write_file(script, "#!/bin/sh\n" .. (delay and ("sleep " .. delay .. "\n") or "")
    .. "env | grep '^GOOGLE_EXTERNAL_ACCOUNT_' | sort >> " .. H.q(dir .. "/runs") .. "\necho ---- >> "
    .. H.q(dir .. "/runs") .. "\ncat " .. H.q(dir .. "/answer.json") .. "\n")
  H.check_run("chmod 700 " .. H.q(script))
  return { command = script .. " --flag 'two words'", dir = dir,
    runs = function() return H.file_bytes(dir .. "/runs") or "" end }
end

describe("external_account with an executable source", function()
  local ALLOW = { GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" }

  it("runs only when GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1, with Google's variables", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local ex = executable(cjson.encode({ version = 1, success = true, token_type = JWT, id_token = subject,
      expiration_time = os.time() + 3600 }))
    local file = external_file(OIDC_AUD, JWT, { executable = { command = ex.command, timeout_millis = 5000 } })
    with_env({}, function()
      local client = assert(client_for(file))
      auth_error("executables need to be explicitly allowed (set GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES to '1')",
        nil, first_error(client))
      client:close()
    end)
    assert.are.equal("", ex.runs())
    with_env(ALLOW, function()
      local client = assert(client_for(file))
      store_and_search(client)
      client:close()
    end)
    assert.are.equal("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=" .. OIDC_AUD .. "\nGOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=0\n"
      .. "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE=" .. JWT .. "\n----\n", ex.runs())
  end)

  it("keeps its answer in output_file and runs again only when that has expired", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local ex = executable(cjson.encode({ version = 1, success = true, token_type = JWT, id_token = subject,
      expiration_time = os.time() + 3600 }))
    local out = ex.dir .. "/cached.json"
    local file = external_file(OIDC_AUD, JWT, { executable = { command = ex.command, output_file = out } })
    with_env(ALLOW, function()
      -- Not there yet: the executable runs (told where to write).
      local c1 = assert(client_for(file))
      store_and_search(c1)
      c1:close()
      assert.truthy(ex.runs():find("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE=" .. out, 1, true))
      -- A valid answer there: used, no run.
      H.write_file(out, H.file_bytes(ex.dir .. "/answer.json"))
      local c2 = assert(client_for(file))
      store_and_search(c2)
      c2:close()
      local _, runs = ex.runs():gsub("%-%-%-%-", "")
      assert.are.equal(1, runs)
      -- Expired there: it runs again.
      H.write_file(out, cjson.encode({ version = 1, success = true, token_type = JWT, id_token = "old",
        expiration_time = os.time() - 10 }))
      local c3 = assert(client_for(file))
      store_and_search(c3)
      c3:close()
      _, runs = ex.runs():gsub("%-%-%-%-", "")
      assert.are.equal(2, runs)
      -- An expiration_time of 1e400 (JSON, an infinity) is no time: it runs again (it was an answer
      -- good for ever).
      H.write_file(out, (cjson.encode({ version = 1, success = true, token_type = JWT, id_token = subject,
        expiration_time = 1 }):gsub('"expiration_time":1', '"expiration_time":1e400')))
      local c4 = assert(client_for(file))
      store_and_search(c4)
      c4:close()
      _, runs = ex.runs():gsub("%-%-%-%-", "")
      assert.are.equal(3, runs)
    end)
  end)

  it("an executable that times out, fails or answers badly is a credential error", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local good = cjson.encode({ version = 1, success = true, token_type = JWT, id_token = subject })
    local cases = {
      { executable(good, 8), 5000, "the executable timed out after 5000 ms" },
      { executable(cjson.encode({ version = 1, success = false, code = "401", message = "not signed in" })), nil,
        "says it failed: 401: not signed in" },
      { executable(cjson.encode({ version = 2, success = true })), nil, "has version 2; version 1 is supported" },
      { executable("not json " .. subject), nil, "is not a JSON object" },
    }
    with_env(ALLOW, function()
      for _, c in ipairs(cases) do
        local client = assert(client_for(external_file(OIDC_AUD, JWT,
          { executable = { command = c[1].command, timeout_millis = c[2] } })))
        local t0 = core.now()
        local err = auth_error(c[3], nil, first_error(client))
        if c[2] then
          assert.are.equal("EXECUTABLE_TIMEOUT", err.status)
          assert.is_true(core.now() - t0 < 8, "stopped at the timeout")
        end
        client:close()
      end
    end)
    auth_error("timeout_millis must be 5000 to 120000", healthcare.new({ endpoint = em.endpoint,
      credentials = external_file(OIDC_AUD, JWT, { executable = { command = "x", timeout_millis = 10 } }) }))
  end)

  -- A shell script of body as the executable's command.
  local function script(body)
    local path = H.tmpdir() .. "/helper.sh"
    H.write_file(path, "#!/bin/sh\n" .. body .. "\n")
    H.check_run("chmod 700 " .. H.q(path))
    return path
  end

  it("an executable's output is capped, its timeout kept, its own exit 124 no timeout, its message cut", function()
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local good = H.write_file(H.tmpdir() .. "/good.json", cjson.encode({ version = 1, success = true,
      token_type = JWT, id_token = subject }))
    local cases = {
      -- 3 MB: was read whole (without end, for a program that never stops)
      { script("head -c 3000000 /dev/zero | tr '\\0' x"), "the executable's answer is larger than "
        .. external.MAX_SUBJECT_TOKEN .. " bytes", "EXECUTABLE_FAILED" },
      -- a child that leaves the process group keeps the output open: was waited for (20 s)
      { script("setsid sleep 20 &\ncat " .. H.q(good)), "the executable timed out after 5000 ms",
        "EXECUTABLE_TIMEOUT", 5 },
      { script("exit 124"), "the executable failed (exit status 124)", "EXECUTABLE_FAILED" },
      { script("echo '" .. cjson.encode({ version = 1, success = false, code = "E1",
        message = string.rep("m", 3000) }) .. "'"), "says it failed: E1: " .. string.rep("m", 100),
        "EXECUTABLE_FAILED" },
    }
    with_env(ALLOW, function()
      for _, c in ipairs(cases) do
        local client = assert(client_for(external_file(OIDC_AUD, JWT,
          { executable = { command = c[1], timeout_millis = 5000 } })))
        local t0 = core.now()
        local err = auth_error(c[2], nil, first_error(client))
        local took = core.now() - t0
        assert.are.equal(c[3], err.status, tostring(err))
        assert.is_true(took < (c[4] or 0) + 3, "took " .. took .. " s")
        if c[4] then assert.is_true(took >= c[4], "took " .. took .. " s") end
        assert.is_true(#tostring(err) < 1000, "the message is cut: " .. #tostring(err) .. " bytes")
        client:close()
      end
    end)
  end)

  it("splits the command as a shell splits words, expanding nothing", function()
    assert.are.same({ "/bin/helper", "a b", "$HOME", "c'd" }, external.split_command([[/bin/helper "a b" '$HOME' c\'d]]))
    assert.is_nil(external.split_command("helper 'open"))
  end)
end)

-- ---- the aws source -------------------------------------------------------------------------

describe("external_account with an aws source", function()
  local function aws_file(more)
    local cs = { environment_id = "aws1", region_url = em.aws_metadata .. "/latest/meta-data/placement/availability-zone",
      url = em.aws_metadata .. "/latest/meta-data/iam/security-credentials",
      regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
      imdsv2_session_token_url = em.aws_metadata .. "/latest/api/token" }
    for k, v in pairs(more or {}) do cs[k] = v end
    return external_file(AWS_AUD, AWS4, cs)
  end

  it("IMDSv2 session token, region and role credentials from the metadata, GetCallerIdentity signed", function()
    local before = em:count("aws_metadata_requests", "token")
    local ok_before = em:count("aws_caller_identity", "ok")
    with_env({}, function()
      local client = assert(client_for(aws_file()))
      store_and_search(client)
      client:close()
    end)
    assert.are.equal(before + 1, em:count("aws_metadata_requests", "token"))
    assert.are.equal(ok_before + 1, em:count("aws_caller_identity", "ok"))
  end)

  it("takes the region and keys from AWS_* variables, without the metadata", function()
    local before = em:count("aws_metadata_requests", "token")
    local ok_before = em:count("aws_caller_identity", "ok")
    with_env({ AWS_REGION = "eu-west-1", AWS_ACCESS_KEY_ID = AWS_KEY, AWS_SECRET_ACCESS_KEY = AWS_SECRET,
      AWS_SESSION_TOKEN = AWS_SESSION }, function()
      local client = assert(client_for(aws_file()))
      store_and_search(client)
      client:close()
    end)
    assert.are.equal(before, em:count("aws_metadata_requests", "token"))
    assert.are.equal(ok_before + 1, em:count("aws_caller_identity", "ok"))
  end)

  it("IMDSv2 down is a credential error; a wrong secret is refused by the signature check", function()
    em:control("config", { aws_imdsv2 = "down" })
    local ok, err = pcall(function()
      with_env({}, function()
        local client = assert(client_for(aws_file()))
        auth_error("cannot get an IMDSv2 session token: " .. em.aws_metadata .. "/latest/api/token answered HTTP 401",
          nil, first_error(client))
        client:close()
      end)
    end)
    em:control("config", { aws_imdsv2 = "required" })
    assert(ok, err)
    with_env({ AWS_REGION = "us-east-1", AWS_ACCESS_KEY_ID = AWS_KEY,
      AWS_SECRET_ACCESS_KEY = secret("wrong/secret" .. core.random_hex(6)), AWS_SESSION_TOKEN = AWS_SESSION }, function()
      local client = assert(client_for(aws_file()))
      auth_error("SignatureDoesNotMatch", nil, first_error(client))
      client:close()
    end)
    auth_error("environment_id must be 'aws1'", healthcare.new({ endpoint = em.endpoint,
      credentials = aws_file({ environment_id = "aws2" }) }))
  end)

  -- The session token goes into a header and the role into a URL: the transport raises on a
  -- CR, LF or NUL there, which used to end the command with "internal error".
  it("an IMDSv2 token or a role name with CR, LF or NUL is a credential error, not a raised one", function()
    local injected = "AQAEAinjected" .. core.random_hex(6)
    local cases = {
      { env = {}, skip = 0, body = injected .. "\r\nX-Injected: yes", want = "IMDSv2 session token that is not one" },
      { env = {}, skip = 0, body = injected .. "\0tail", want = "IMDSv2 session token that is not one" },
      -- With the region given, the metadata's answers are the token (let through), then the role.
      { env = { AWS_REGION = "us-east-1" }, skip = 1, body = "migration-role\0" .. injected,
        want = "the AWS metadata named no usable role" },
    }
    for _, c in ipairs(cases) do
      em:control("faults", { replace = true, rules = { { match = "aws_metadata", status = 200, skip = c.skip,
        message = c.body } } })
      local ok, err = pcall(with_env, c.env, function()
        local client = assert(client_for(aws_file()))
        local e = auth_error(c.want, nil, first_error(client))
        assert.is_nil(tostring(e):find(injected, 1, true), "the answer is not echoed")
        client:close()
      end)
      em:control("faults", { replace = true, rules = {} })
      assert(ok, err)
    end
  end)

  -- SigV4 signing raises on a key that is not a string: it used to end the command with
  -- "internal error" (a Lua traceback).
  it("role credentials whose Token or AccessKeyId is not a string are a credential error naming the field", function()
    local role_secret = secret("role/secret+" .. core.random_hex(8))
    local cases = {
      { doc = { AccessKeyId = "AKIDX", SecretAccessKey = role_secret, Token = 5 }, want = "'Token'" },
      { doc = { AccessKeyId = "AKIDX", SecretAccessKey = role_secret, Token = { a = 1 } }, want = "'Token'" },
      { doc = { AccessKeyId = 12, SecretAccessKey = role_secret }, want = "'AccessKeyId'" },
      { doc = { AccessKeyId = "AKIDX", SecretAccessKey = role_secret .. "\r\nX: y" }, want = "'SecretAccessKey'" },
    }
    for _, c in ipairs(cases) do
      -- With the region given, the metadata's answers are the IMDSv2 token, the role, then its keys.
      em:control("faults", { replace = true, rules = { { match = "aws_metadata", status = 200, skip = 2,
        message = cjson.encode(c.doc) } } })
      local ok, err = pcall(with_env, { AWS_REGION = "us-east-1" }, function()
        local client = assert(client_for(aws_file()))
        auth_error("the AWS role's credentials: " .. c.want .. " is not a non-empty string", nil, first_error(client))
        client:close()
      end)
      em:control("faults", { replace = true, rules = {} })
      assert(ok, err)
    end
  end)
end)

-- ---- external_account_authorized_user -----------------------------------------------------------

describe("external_account_authorized_user", function()
  it("refreshes at its token_url (Basic client auth), following a rotated refresh token", function()
    local rt = secret("rt-" .. core.random_hex(12))
    local cid, csecret = "wf-client-" .. core.random_hex(3), secret("wf-secret-" .. core.random_hex(8))
    em:control("workforce_users", { refresh_token = rt, client_id = cid, client_secret = csecret, audience = WF_AUD,
      subject = "nurse-1", rotate = true })
    local file = write_json({ type = "external_account_authorized_user", audience = WF_AUD, refresh_token = rt,
      token_url = em.url .. "/v1/oauthtoken", token_info_url = em.url .. "/v1/introspect", client_id = cid,
      client_secret = csecret })
    em:control("config", { expires_in = 2 })
    local ok, err = pcall(function()
      local client = assert(client_for(file))
      local before = em:count("sts_requests", "oauthtoken")
      store_and_search(client)
      core.sleep(2.2)
      store_and_search(client)   -- with the rotated refresh token
      assert.are.equal(before + 2, em:count("sts_requests", "oauthtoken"))
      local cred = client:credential()
      assert.are_not.equal(rt, cred.refresh_token)
      secret(cred.refresh_token)
      client:close()
    end)
    em:control("config", { expires_in = 3600 })
    assert(ok, err)
  end)

  it("a revoked refresh token is a credential error", function()
    local file = write_json({ type = "external_account_authorized_user", audience = WF_AUD,
      refresh_token = secret("rt-unknown-" .. core.random_hex(8)), token_url = em.url .. "/v1/oauthtoken",
      client_id = "c", client_secret = secret("s-" .. core.random_hex(8)) })
    local client = assert(client_for(file))
    auth_error("The refresh token is invalid or expired.", nil, first_error(client))
    client:close()
    auth_error("missing 'refresh_token', 'token_url'", healthcare.new({ endpoint = em.endpoint,
      credentials = { type = "external_account_authorized_user", client_id = "c", client_secret = "s" } }))
  end)
end)

-- ---- secrets --------------------------------------------------------------------------------

describe("secrets", function()
  it("the token cache holds access tokens only, in 0600 files", function()
    local dir = H.tmpdir() .. "/cache"
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT })
    local path = H.write_file(H.tmpdir() .. "/t", subject)
    local client = assert(client_for(external_file(OIDC_AUD, JWT, { file = path }), { token_cache = dir }))
    store_and_search(client)
    client:close()
    local listing = H.check_run("find " .. H.q(dir) .. " -type f -printf '%m %p\\n'")
    assert.truthy(listing:find("^600 "), listing)
    for name in listing:gmatch("%d+ (%S+)") do
      local text = H.file_bytes(name)
      for _, s in ipairs(secrets) do assert.is_nil(text:find(s, 1, true)) end
      assert.truthy(text:find("access_token", 1, true))
    end
  end)

  it("no debug line of this file holds a secret", function()
    assert.is_true(#debug_lines > 50)
    no_secret(table.concat(debug_lines, "\n"), "the debug lines")
    assert.is_nil(table.concat(debug_lines, "\n"):find(AWS_SECRET, 1, true))
  end)
end)
