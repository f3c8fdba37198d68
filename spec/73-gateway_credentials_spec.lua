-- SPDX-License-Identifier: MIT
-- The OpenResty gateway (examples/openresty/nginx.conf, healthcare.ngx) with credentials without
-- key files (healthcare.ngx.token_sources): the metadata server, impersonation over it and over a
-- key, and external_account files with a file, a url and an aws source (then impersonating), every token
-- request through an internal location of nginx. Clients send plain STOW-RS without credentials;
-- the file lands in Orthanc through this file's own emulator. Failures (impersonation denied, STS
-- refusing the audience) are 503 in Google's envelope, and no secret reaches the error log.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/73-gateway_credentials_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local N = require "support.nginx"

local federation = require "support.federation"
local JWT = federation.JWT
local P = federation.pools("gw-", "gw-")
local POOL, OIDC_AUD, AWS_AUD = P.pool, P.oidc_aud, P.aws_aud
local METADATA_SA = "default@test-project.iam.gserviceaccount.com"

local em = require("support.emulator_instance").start()
local EM_PORT = tonumber(em.url:match(":(%d+)$"))
local token_dirs
teardown(function()
  N.stop_all()
  em:stop()
  for _, d in ipairs(token_dirs) do H.run("rm -rf " .. H.q(d)) end
end)
em:control("audiences", { { audience = OIDC_AUD, kind = "oidc" }, { audience = AWS_AUD, kind = "aws" } })

local secrets = {}
local function secret(s)
  secrets[#secrets + 1] = s
  return s
end
local core = require "healthcare.core"
local AWS_KEY, AWS_SECRET = "AKIDGW" .. core.random_hex(4), secret("aws/gw-secret+" .. core.random_hex(8))
local AWS_SESSION = secret("IQoJgw" .. core.random_hex(16))
em:control("aws_credentials", { access_key_id = AWS_KEY, secret_access_key = AWS_SECRET, session_token = AWS_SESSION,
  role = "gateway-role" })

-- The internal locations of healthcare.ngx.token_sources, pointed at the emulator, and a location
-- standing for an identity provider's token URL (it wants a Metadata: True header).
local function locations(subject)
  local em_http = "http://127.0.0.1:" .. EM_PORT
  return table.concat({
    "        location = /_healthcare/metadata {",
    "            internal;",
    "            proxy_pass http://" .. em.metadata_host .. "/computeMetadata/v1/instance/service-accounts/default/token;",
    "            proxy_pass_request_headers off;",
    "            proxy_set_header Metadata-Flavor Google;",
    "        }",
    "        location = /_healthcare/sts {",
    "            internal;",
    "            set_by_lua_block $healthcare_authorization { return ngx.ctx.healthcare_authorization or '' }",
    "            proxy_pass " .. em_http .. "/v1/token;",
    "            proxy_pass_request_headers off;",
    "            proxy_set_header Authorization $healthcare_authorization;",
    "            proxy_set_header Content-Type application/x-www-form-urlencoded;",
    "            proxy_set_header Accept application/json;",
    "        }",
    "        location /_healthcare/iam/ {",
    "            internal;",
    "            set_by_lua_block $healthcare_authorization { return ngx.ctx.healthcare_authorization or '' }",
    "            proxy_pass " .. em_http .. "/v1/projects/-/serviceAccounts/;",
    "            proxy_pass_request_headers off;",
    "            proxy_set_header Authorization $healthcare_authorization;",
    "            proxy_set_header Content-Type application/json;",
    "        }",
    "        location /_healthcare/aws/ {",
    "            internal;",
    "            set_by_lua_block $healthcare_aws_token { return ngx.ctx.healthcare_aws_token or '' }",
    "            set_by_lua_block $healthcare_aws_token_ttl { return ngx.ctx.healthcare_aws_token_ttl or '' }",
    "            proxy_pass " .. em.aws_metadata .. "/;",
    "            proxy_pass_request_headers off;",
    "            proxy_set_header X-aws-ec2-metadata-token $healthcare_aws_token;",
    "            proxy_set_header X-aws-ec2-metadata-token-ttl-seconds $healthcare_aws_token_ttl;",
    "        }",
    "        location = /_healthcare/subject {",
    "            internal;",
    "            proxy_pass http://127.0.0.1:$server_port/_idp/token;",
    "            proxy_pass_request_headers off;",
    "            proxy_set_header Metadata True;",
    "        }",
    "        location = /_idp/token {",
    "            allow 127.0.0.1;",
    "            deny all;",
    "            if ($http_metadata != \"True\") { return 403; }",
    "            return 200 '" .. (subject or "none") .. "';",
    "        }",
    "        location / {", }, "\n")
end

-- A gateway whose configure{} gets credentials (a path or "metadata") and more Lua text.
local function gateway(creds, extra, subject)
  return N.gateway({ emulator = { port = EM_PORT }, key_file = creds, configure_extra = extra,
    edits = { { "        location / {", locations(subject) } } })
end

local function stow(gw)
  local g = H.gen_dicom({ count = 1 })[1]
  local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/dicom", "-H", "Accept: application/dicom+json",
    "--data-binary", "@" .. g.path, gw.url .. "/dicomWeb/studies" })
  return r, g
end

local function stored(gw)
  local r, g = stow(gw)
  assert.are.equal(200, r.status, r.body .. gw:log())
  assert.truthy(H.orthanc_find_instance(g.sop_instance_uid), "stored in Orthanc")
end

local function no_secret_in_log(gw)
  local log = gw:log()
  for _, s in ipairs(secrets) do assert.is_nil(log:find(s, 1, true), "the error log holds a secret") end
  assert.is_nil(log:find("tok-", 1, true), "the error log holds an issued token")
  assert.is_nil(H.find_jwt(log), "the error log holds a JWT")
end

local function last_impersonation()
  local log = em:stats().impersonation_log
  return log[#log] or {}
end

local fresh_email = federation.fresh_email

local function external_file(cs, more)
  local t = { type = "external_account", audience = OIDC_AUD, subject_token_type = JWT,
    token_url = "https://sts.googleapis.com/v1/token", credential_source = cs }
  for k, v in pairs(more or {}) do t[k] = v end
  return H.write_file(H.tmpdir() .. "/external.json", H.json.encode(t))
end

-- A subject token file the workers (www-data) can read, as a projected service account token is.
-- The test bed's run directory is the test's own (0700): these live in /tmp, removed at the end.
token_dirs = {}
local function token_file(token)
  local dir = H.check_run("mktemp -d /tmp/hc-gw-token.XXXXXX"):gsub("%s+$", "")
  token_dirs[#token_dirs + 1] = dir
  H.check_run("chmod 755 " .. H.q(dir))
  local path = H.write_file(dir .. "/oidc", token)
  H.check_run("chmod 644 " .. H.q(path))
  return path
end

local function subject_token(subject)
  return secret(em:control("subject_tokens", { audience = OIDC_AUD, subject_token_type = JWT,
    subject = subject }).subject_token)
end

describe("the gateway without a key file", function()
  it("with the metadata server: a STOW sent without credentials is stored", function()
    local before = em:count("metadata_requests")
    local gw = gateway("metadata")
    stored(gw)
    stored(gw)
    assert.are.equal(before + 1, em:count("metadata_requests"))
    assert.truthy(gw:log():find("uses the metadata server", 1, true), gw:log())
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("impersonating a service account with the metadata server's token", function()
    local target = fresh_email("gw-imp")
    em:control("service_accounts", { email = target, impersonators = { "serviceAccount:" .. METADATA_SA } })
    local gw = gateway("metadata", string.format("impersonate = %q,", target))
    stored(gw)
    local last = last_impersonation()
    assert.are.same({ target, "serviceAccount:" .. METADATA_SA, 200 }, { last.target, last.principal, last.status })
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("impersonating over a service account key", function()
    local sa = em:service_account()
    local target = fresh_email("gw-key")
    em:control("service_accounts", { email = target, impersonators = { "serviceAccount:" .. sa.client_email } })
    local gw = N.gateway({ emulator = { port = EM_PORT }, key_file = sa.key_file,
      configure_extra = string.format("impersonate = %q,", target),
      edits = { { "        location / {", locations() } } })
    stored(gw)
    assert.are.equal("serviceAccount:" .. sa.client_email, last_impersonation().principal)
    gw:stop()
  end)

  it("impersonation denied: 503 in Google's envelope, IAM's words in the log, no secret", function()
    local target = fresh_email("gw-denied")
    local gw = gateway("metadata", string.format("impersonate = %q,", target))
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.are.equal("UNAVAILABLE", r.json.error.status)
    assert.truthy(gw:log():find("Permission 'iam.serviceAccounts.getAccessToken' denied", 1, true), gw:log())
    -- The client is told no more than that there is no token: not whom the gateway impersonates,
    -- nor IAM's words.
    for _, s in ipairs({ target, "Permission", "generateAccessToken", METADATA_SA }) do
      assert.falsy(r.body:find(s, 1, true), s .. " in " .. r.body)
    end
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("with an external_account file (file source): STS's token stores", function()
    local token = subject_token("gw-file")
    local path = token_file(token)
    local before = em:count("token_requests", "urn:ietf:params:oauth:grant-type:token-exchange")
    local gw = gateway(external_file({ file = path }))
    stored(gw)
    assert.are.equal(before + 1, em:count("token_requests", "urn:ietf:params:oauth:grant-type:token-exchange"))
    local log = em:stats().sts_log
    assert.are.equal(H.sha256_string(token), log[#log].subject_token_sha256)
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("with an external_account file (url source, JSON), then impersonating", function()
    local token = subject_token("gw-url")
    local target = fresh_email("gw-wif")
    em:control("service_accounts", { email = target, impersonators = {
      "principal://iam.googleapis.com/" .. POOL .. "/subject/gw-url" } })
    local gw = gateway(external_file({ url = "http://169.254.169.254/token", headers = { Metadata = "True" },
      format = { type = "json", subject_token_field_name = "access_token" } },
      { service_account_impersonation_url = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
        .. target .. ":generateAccessToken" }), nil, H.json.encode({ access_token = token }))
    stored(gw)
    assert.are.same({ target, "principal://iam.googleapis.com/" .. POOL .. "/subject/gw-url" },
      { last_impersonation().target, last_impersonation().principal })
    no_secret_in_log(gw)
    gw:stop()
  end)

  -- An aws source as on EC2: the file names the metadata service at 169.254.169.254; the gateway
  -- asks it through its aws location (here pointed at the emulator's), the IMDSv2 session token
  -- through ngx.ctx.
  local function aws_external()
    local imds = "http://169.254.169.254"
    return external_file({ environment_id = "aws1", region_url = imds .. "/latest/meta-data/placement/availability-zone",
      url = imds .. "/latest/meta-data/iam/security-credentials",
      regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
      imdsv2_session_token_url = imds .. "/latest/api/token" },
      { audience = AWS_AUD, subject_token_type = "urn:ietf:params:aws:token-type:aws4_request" })
  end

  it("with an external_account file (aws source): the role's keys from the metadata, GetCallerIdentity signed",
    function()
    local tokens, roles = em:count("aws_metadata_requests", "token"), em:count("aws_caller_identity", "ok")
    local gw = gateway(aws_external())
    stored(gw)
    stored(gw)
    -- one refresh: one IMDSv2 session token, one signed request the emulator checked (botocore)
    assert.are.equal(tokens + 1, em:count("aws_metadata_requests", "token"))
    assert.are.equal(roles + 1, em:count("aws_caller_identity", "ok"))
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("an aws source whose metadata refuses the session token: 503, the metadata's answer in the log, no secret",
    function()
    em:control("config", { aws_imdsv2 = "down" })
    local gw = gateway(aws_external())
    local r = stow(gw)
    em:control("config", { aws_imdsv2 = "required" })
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("an IMDSv2 session token failed: HTTP 401", 1, true), gw:log())
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("an external_account the gateway cannot use (executable source): 503 from the start, said once", function()
    local gw = gateway(external_file({ executable = { command = "/bin/true" } }))
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("the gateway takes external_account files with a file, url or aws source, not "
      .. "executable", 1, true), gw:log())
    gw:stop()
  end)

  -- A credential file is trusted only when no other user could have written it, as the library
  -- reads its own (credentials.read_trusted): the workers read the subject token at each refresh.
  it("an external_account file others may write: refused, 503 from the start", function()
    local path = external_file({ file = token_file(subject_token("gw-unsafe")) })
    H.check_run("chmod 666 " .. H.q(path))
    local gw = gateway(path)
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("refusing credentials file '" .. path .. "'", 1, true), gw:log())
    gw:stop()
  end)

  it("a subject token file others may write: refused at the refresh, 503", function()
    local before = em:count("token_requests", "urn:ietf:params:oauth:grant-type:token-exchange")
    local path = token_file(subject_token("gw-unsafe-token"))
    H.check_run("chmod 666 " .. H.q(path))
    local gw = gateway(external_file({ file = path }))
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("refusing the subject token file '" .. path .. "'", 1, true), gw:log())
    assert.are.equal(before, em:count("token_requests", "urn:ietf:params:oauth:grant-type:token-exchange"))
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("an STS that echoes the client authentication: its Basic credential is not in the log", function()
    local id, client_secret = "gw-client", secret("gw-client-secret-" .. core.random_hex(8))
    -- The Basic credential as it goes on the wire (no_secret_in_log looks for it)
    secret(H.check_run("printf %s " .. H.q(id .. ":" .. client_secret) .. " | base64 -w0"))
    local echo = table.concat({
      "        location = /_sts_echo {",
      "            allow 127.0.0.1;",
      "            deny all;",
      "            default_type application/json;",
      "            return 401 '{\"error\": \"invalid_client\", \"error_description\": \"no client $http_authorization\"}';",
      "        }",
      "        location = /_idp/token {" }, "\n")
    local path = token_file(subject_token("gw-echo"))
    local gw = N.gateway({ emulator = { port = EM_PORT },
      key_file = external_file({ file = path }, { client_id = id, client_secret = client_secret }),
      edits = { { "        location / {", locations() }, { "        location = /_idp/token {", echo },
        { "proxy_pass http://127.0.0.1:" .. EM_PORT .. "/v1/token;", "proxy_pass http://127.0.0.1:$server_port/_sts_echo;" } } })
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("invalid_client: no client REDACTED", 1, true), gw:log())
    no_secret_in_log(gw)
    gw:stop()
  end)

  it("STS refusing the audience: 503, STS's words in the log", function()
    local path = token_file(subject_token("gw-bad"))
    local gw = gateway(external_file({ file = path }, { audience = "//iam.googleapis.com/" .. POOL .. "/providers/gone" }))
    local r = stow(gw)
    assert.are.equal(503, r.status, r.body)
    assert.truthy(gw:log():find("invalid_target", 1, true), gw:log())
    no_secret_in_log(gw)
    gw:stop()
  end)
end)
