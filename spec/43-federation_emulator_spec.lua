-- SPDX-License-Identifier: MIT
-- The test bed's Google side of credentials without key files (spec/support/emulator_federation.py),
-- driven with the curl command against a private emulator: Google's STS token exchange and the
-- refresh of external_account_authorized_user credentials, IAM Credentials' generateAccessToken
-- (delegates, lifetimes, who may impersonate whom), the EC2 instance metadata service (IMDSv2),
-- and a signed AWS GetCallerIdentity request as subject token, signed here by core.sigv4_sign and
-- checked by the emulator with botocore. Then core.sigv4_sign against botocore directly, on
-- random requests. Every route's success and refusals, Google's and AWS's words where known,
-- the stats counters, and no secret in the emulator's log or stats.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/43-federation_emulator_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson"
local core = require "healthcare.core"
local emulator = require "support.emulator_instance"

local E = H.env
local federation = require "support.federation"
local PLATFORM, HEALTHCARE, EXCHANGE, ACCESS = federation.PLATFORM, federation.HEALTHCARE, federation.EXCHANGE, federation.ACCESS
local JWT, SAML, AWS4 = federation.JWT, federation.SAML, federation.AWS4
local P = federation.pools("pool-", "staff-")
local POOL, OIDC_AUD, AWS_AUD, CLIENT_AUD, WF_POOL, WF_AUD = P.pool, P.oidc_aud, P.aws_aud, P.client_aud,
  P.wf_pool, P.wf_aud

-- Google's words (emulator_federation.py has them from Google's answers).
local MSG_AUDIENCE = 'Invalid value for "audience". This value should be the full resource name of the Identity '
  .. "Provider. See https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token for the list of "
  .. "possible formats."
local MSG_TARGET = 'The target service indicated by the "audience" parameters is invalid. This might either be '
  .. "because the pool or provider is disabled or deleted or because it doesn't exist."
local MSG_DENIED = federation.MSG_DENIED
local MSG_SIGNATURE = "Received invalid AWS response of type SignatureDoesNotMatch with error message: The request "
  .. "signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and "
  .. "signing method. Consult the service documentation for details."
local MSG_AWS_TOKEN = "Received invalid AWS response of type InvalidClientTokenId with error message: The security "
  .. "token included in the request is invalid."

local em = emulator.start()
teardown(function() em:stop() end)

-- Every secret this file hands out or receives, looked for in the emulator's log and stats at the end.
local secrets = {}
local function secret(s)
  secrets[#secrets + 1] = s
  return s
end

-- ---- helpers ---------------------------------------------------------------------------

-- POST form fields (a table) to the emulator at path; opts.basic = "id:secret".
local function post_form(path, fields, opts)
  local args = { "-X", "POST" }
  local names = {}
  for k in pairs(fields) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    args[#args + 1] = "--data-urlencode"
    args[#args + 1] = k .. "=" .. fields[k]
  end
  if opts and opts.basic then
    args[#args + 1] = "-u"
    args[#args + 1] = opts.basic
  end
  args[#args + 1] = em.url .. path
  return H.curl(args)
end

-- An STS token exchange: the usual fields, changed by t (false removes one).
local function sts(t, opts)
  local f = { grant_type = EXCHANGE, requested_token_type = ACCESS, scope = PLATFORM, audience = OIDC_AUD,
    subject_token_type = JWT }
  for k, v in pairs(t or {}) do
    if v == false then f[k] = nil else f[k] = v end
  end
  return post_form("/v1/token", f, opts)
end

local function oauth_error(r, status, err, description)
  assert.are.equal(status, r.status, r.body)
  assert.are.equal(err, r.json and r.json.error, r.body)
  if description then assert.are.equal(description, r.json.error_description) end
end

local function envelope(r, status, name, message)
  assert.are.equal(status, r.status, r.body)
  assert.are.equal(name, r.json and r.json.error and r.json.error.status, r.body)
  assert.are.equal(status, r.json.error.code)
  if message then assert.are.equal(message, r.json.error.message) end
  return r.json.error
end

-- A subject token the emulator knows: t = { audience, subject_token_type, subject, expires_in }.
local function subject_token(t)
  return secret(em:control("subject_tokens", t).subject_token)
end

-- An access token of the emulator standing for principal (nil: no one), with scopes.
local function token_for(principal, scopes)
  return secret(em:control("tokens", { principal = principal, scopes = scopes or { PLATFORM } }).access_token)
end

-- Whether the emulator's API takes token: a DICOMweb search of the private emulator's store.
local function api_takes(token)
  local r = H.curl({ "-H", "Authorization: Bearer " .. token, "-H", "Accept: application/dicom+json",
    em.store_url .. "/studies?PatientID=nobody-" .. core.random_hex(4) })
  return r.status == 200, r
end

-- generateAccessToken for email with body (a table or a string), as token (false: none).
local function impersonate(email, body, token, project)
  local args = { "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
    type(body) == "string" and body or cjson.encode(body) }
  if token then
    args[#args + 1] = "-H"
    args[#args + 1] = "Authorization: Bearer " .. token
  end
  args[#args + 1] = em.url .. "/v1/projects/" .. (project or "-") .. "/serviceAccounts/" .. email
    .. ":generateAccessToken"
  return H.curl(args)
end

local fresh_email = federation.fresh_email

-- Seconds since the epoch of an RFC 3339 time "YYYY-MM-DDTHH:MM:SSZ" (UTC).
local function epoch(stamp)
  local y, mo, d, h, mi, s = stamp:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)Z$")
  assert(y, "not RFC 3339: " .. tostring(stamp))
  local so = H.check_run("date -u -d " .. H.q(("%s-%s-%s %s:%s:%s"):format(y, mo, d, h, mi, s)) .. " +%s")
  return tonumber(so)
end

-- The EC2 metadata service: method, path, headers (a table) -> H.curl's result.
local function imds(method, path, headers)
  local args = { "-X", method }
  for k, v in pairs(headers or {}) do
    args[#args + 1] = "-H"
    args[#args + 1] = k .. ": " .. v
  end
  args[#args + 1] = em.aws_metadata .. path
  return H.curl(args)
end

local function imds_token(ttl)
  local r = imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = tostring(ttl or 300) })
  assert.are.equal(200, r.status, r.body)
  return secret(r.body)
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The subject token of the aws source: the GetCallerIdentity request signed by core.sigv4_sign,
-- serialized as Google's libraries do. opts: key, secret, token (false: none), audience (signed
-- and sent in x-goog-cloud-target-resource), region, date, style = "go" (the target header signed,
-- header names as Go writes them) or "python" (lower-case names, the target header added after
-- signing), sign_region (default: region, the URL's), url, method, tamper = function(headers list)
-- run after signing.
local function aws_subject_token(opts)
  local o = { key = "AKIDFEDERATION", secret = "fed/secret+" .. core.random_hex(4), token = "session-token",
    audience = AWS_AUD, region = "us-east-1", style = "go" }
  for k, v in pairs(opts or {}) do o[k] = v end
  local host = "sts." .. o.region .. ".amazonaws.com"
  local signed_headers = {}
  if o.style == "go" then signed_headers["x-goog-cloud-target-resource"] = o.audience end
  local h = assert(core.sigv4_sign { method = "POST", host = host, path = "/",
    query = "Action=GetCallerIdentity&Version=2011-06-15", headers = signed_headers, region = o.sign_region or o.region,
    service = "sts", date = o.date, access_key_id = o.key, secret_access_key = o.secret,
    session_token = o.token or nil })
  local go = o.style == "go"
  local headers = {
    { key = "Authorization", value = h.Authorization },
    { key = go and "Host" or "host", value = host },
    { key = go and "X-Amz-Date" or "x-amz-date", value = h["x-amz-date"] },
    { key = go and "X-Goog-Cloud-Target-Resource" or "x-goog-cloud-target-resource", value = o.audience },
  }
  if h["x-amz-security-token"] then
    headers[#headers + 1] = { key = go and "X-Amz-Security-Token" or "x-amz-security-token",
      value = h["x-amz-security-token"] }
  end
  if o.tamper then o.tamper(headers) end
  return urlencode(cjson.encode({ url = o.url or ("https://" .. host .. "?Action=GetCallerIdentity&Version=2011-06-15"),
    method = o.method or "POST", headers = headers }))
end

local function aws_exchange(subject)
  return sts({ audience = AWS_AUD, subject_token_type = AWS4, subject_token = subject })
end

-- ---- registrations shared by the tests -----------------------------------------------------

local CLIENT_ID, CLIENT_SECRET = "sts-client-" .. core.random_hex(3), secret("sts-secret-" .. core.random_hex(8))
local USER_PROJECT = "billing-project-" .. core.random_hex(3)
em:control("audiences", {
  { audience = OIDC_AUD, kind = "oidc" },
  { audience = AWS_AUD, kind = "aws" },
  { audience = CLIENT_AUD, client_id = CLIENT_ID, client_secret = CLIENT_SECRET },
  { audience = WF_AUD, kind = "saml", user_project = USER_PROJECT },
})
local AWS_KEY, AWS_SECRET, AWS_SESSION = "AKIDFEDERATION", secret("fed/secret+" .. core.random_hex(8)),
  secret("IQoJb3JpZ2luX2Vj" .. core.random_hex(16) .. "/+=")
local AWS_ROLE = "migration-role"
local AWS_ARN = "arn:aws:sts::111122223333:assumed-role/migration-role/i-0abc"
em:control("aws_credentials", { access_key_id = AWS_KEY, secret_access_key = AWS_SECRET, session_token = AWS_SESSION,
  role = AWS_ROLE, arn = AWS_ARN })
local function signed_by_instance(opts)
  local o = { key = AWS_KEY, secret = AWS_SECRET, token = AWS_SESSION }
  for k, v in pairs(opts or {}) do o[k] = v end
  return aws_subject_token(o)
end

-- ---- STS: the token exchange ----------------------------------------------------------------

describe("STS token exchange (POST /v1/token)", function()
  it("exchanges a registered subject token for a token the API takes, naming the federated principal", function()
    local before = em:count("token_requests", EXCHANGE)
    local subject = subject_token({ audience = OIDC_AUD, subject_token_type = JWT, subject = "build-42" })
    local r = sts({ subject_token = subject })
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(ACCESS, r.json.issued_token_type)
    assert.are.equal("Bearer", r.json.token_type)
    assert.are.equal(3600, r.json.expires_in)
    secret(r.json.access_token)
    assert.truthy((api_takes(r.json.access_token)))
    assert.are.equal(before + 1, em:count("token_requests", EXCHANGE))
    local stats = em:stats()
    local last = stats.sts_log[#stats.sts_log]
    assert.are.same({ OIDC_AUD, JWT, PLATFORM, 200, H.sha256_string(subject) },
      { last.audience, last.subject_token_type, last.scope, last.status, last.subject_token_sha256 })
    -- Its principal may impersonate an account that lets it.
    local sa = fresh_email("wif-target")
    em:control("service_accounts", { email = sa, impersonators = {
      "principal://iam.googleapis.com/" .. POOL .. "/subject/build-42" } })
    assert.are.equal(200, impersonate(sa, { scope = { PLATFORM } }, r.json.access_token).status)
  end)

  it("takes the id_token type for an OIDC provider, and a token registered for any audience", function()
    local r = sts({ subject_token_type = "urn:ietf:params:oauth:token-type:id_token",
      subject_token = subject_token({}) })
    assert.are.equal(200, r.status, r.body)
  end)

  it("answers with the emulator's expires_in", function()
    em:control("config", { expires_in = 120 })
    local r = sts({ subject_token = subject_token({ audience = OIDC_AUD }) })
    em:control("config", { expires_in = 3600 })
    assert.are.equal(120, r.json.expires_in, r.body)
  end)

  describe("refuses as Google's STS does", function()
    local cases = {
      { "another grant type", { grant_type = "refresh_token" }, 400, "unsupported_grant_type",
        'Invalid value for "grant_type": refresh_token' },
      { "another requested token type", { requested_token_type = "urn:ietf:params:oauth:token-type:id_token" }, 400,
        "invalid_request", 'Invalid value for "requested_token_type". Only ' .. ACCESS .. " is supported." },
      { "an audience that is not a provider's name", { audience = "https://iam.googleapis.com/" .. POOL .. "/providers/oidc" },
        400, "invalid_request", MSG_AUDIENCE },
      { "no audience", { audience = false }, 400, "invalid_request", MSG_AUDIENCE },
      { "an audience no test registered", { audience = "//iam.googleapis.com/" .. POOL .. "/providers/nobody" }, 400,
        "invalid_target", MSG_TARGET },
      { "an unknown subject token type", { subject_token_type = "urn:ietf:params:oauth:token-type:password" }, 400,
        "invalid_request", nil },
      { "a SAML assertion for an OIDC provider", { subject_token_type = SAML }, 400, "invalid_request",
        'Invalid value for "subject_token_type": the provider is an OIDC provider, it does not take ' .. SAML .. "." },
      { "no subject token", { subject_token = false }, 400, "invalid_request", 'Missing required parameter: "subject_token".' },
      { "a subject token no test registered", { subject_token = "made-up" }, 400, "invalid_grant",
        "The subject token is not one this test registered (unknown to the emulator)." },
      { "no scope", { scope = "", subject_token = "x" }, 400, "invalid_scope", 'Missing required parameter: "scope".' },
      { "options that are not JSON", { options = "{userProject", subject_token = "x" }, 400, "invalid_request",
        'Invalid value for "options": it must be a JSON object.' },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local before = em:count("sts_errors", c[4])
        local t = { subject_token = subject_token({ audience = OIDC_AUD }) }
        for k, v in pairs(c[2]) do t[k] = v end
        oauth_error(sts(t), c[3], c[4], c[5])
        assert.are.equal(before + 1, em:count("sts_errors", c[4]))
      end)
    end

    it("a subject token registered for another audience", function()
      local other = "//iam.googleapis.com/" .. POOL .. "/providers/other"
      em:control("audiences", { audience = other })
      oauth_error(sts({ subject_token = subject_token({ audience = other }) }), 400, "invalid_grant",
        "The audience in ID Token [" .. other .. "] does not match the expected audience " .. OIDC_AUD .. ".")
    end)

    it("a subject token registered as another type", function()
      oauth_error(sts({ subject_token = subject_token({ subject_token_type = "urn:ietf:params:oauth:token-type:id_token" }) }),
        400, "invalid_grant", "The subject token was issued as urn:ietf:params:oauth:token-type:id_token, not " .. JWT .. ".")
    end)

    it("an expired subject token", function()
      oauth_error(sts({ subject_token = subject_token({ audience = OIDC_AUD, expires_in = -1 }) }), 400, "invalid_grant",
        "The subject token has expired.")
    end)

    it("a provider with a client: without, or with a wrong, client authentication (401)", function()
      local subject = subject_token({ audience = CLIENT_AUD })
      local msg = "The OAuth client was not found or its secret does not match."
      oauth_error(sts({ audience = CLIENT_AUD, subject_token = subject }), 401, "invalid_client", msg)
      oauth_error(sts({ audience = CLIENT_AUD, subject_token = subject }, { basic = CLIENT_ID .. ":wrong" }), 401,
        "invalid_client", msg)
      local r = sts({ audience = CLIENT_AUD, subject_token = subject }, { basic = CLIENT_ID .. ":" .. CLIENT_SECRET })
      assert.are.equal(200, r.status, r.body)
      local log = em:stats().sts_log
      assert.are.equal("basic", log[#log].client_auth)
    end)

    it("a workforce pool whose user project is not the one sent in options", function()
      local subject = subject_token({ audience = WF_AUD, subject_token_type = SAML })
      local base = { audience = WF_AUD, subject_token_type = SAML, subject_token = subject }
      oauth_error(sts(base), 400, "invalid_request",
        'The "userProject" option must be ' .. USER_PROJECT .. " for this workforce pool.")
      base.options = cjson.encode({ userProject = "someone-else" })
      oauth_error(sts(base), 400, "invalid_request")
      base.options = cjson.encode({ userProject = USER_PROJECT })
      local r = sts(base)
      assert.are.equal(200, r.status, r.body)
      local log = em:stats().sts_log
      assert.are.same({ userProject = USER_PROJECT }, log[#log].options)
    end)

    it("a fault rule answers in OAuth's form", function()
      em:control("faults", { { match = "sts", status = 503, message = "STS is down" } })
      oauth_error(sts({ subject_token = subject_token({}) }), 503, "temporarily_unavailable", "STS is down")
      assert.are.equal(200, sts({ subject_token = subject_token({}) }).status)
    end)

    it("a GET", function()
      local r = H.curl({ em.url .. "/v1/token" })
      assert.are.equal(405, r.status)
    end)
  end)
end)

-- ---- STS: external_account_authorized_user -----------------------------------------------------

describe("STS refresh of external_account_authorized_user (POST /v1/oauthtoken)", function()
  local function user(rotate)
    local u = { client_id = "wf-client-" .. core.random_hex(3), client_secret = secret("wf-secret-" .. core.random_hex(6)),
      refresh_token = secret("wf-refresh-" .. core.random_hex(8)), audience = WF_AUD, subject = "nurse@example.org",
      rotate = rotate }
    em:control("workforce_users", u)
    return u
  end
  local function refresh(u, fields, basic)
    local f = { grant_type = "refresh_token", refresh_token = u.refresh_token }
    for k, v in pairs(fields or {}) do
      if v == false then f[k] = nil else f[k] = v end
    end
    return post_form("/v1/oauthtoken", f, { basic = basic == nil and (u.client_id .. ":" .. u.client_secret) or basic or nil })
  end

  it("refreshes with the client in Basic auth, a token the API takes", function()
    local u = user()
    local before = em:count("sts_requests", "oauthtoken")
    local r = refresh(u)
    assert.are.equal(200, r.status, r.body)
    assert.are.equal("Bearer", r.json.token_type)
    assert.is_nil(r.json.refresh_token)
    assert.truthy((api_takes(secret(r.json.access_token))))
    assert.are.equal(before + 1, em:count("sts_requests", "oauthtoken"))
    -- The token is the workforce user's.
    local sa = fresh_email("wf-target")
    em:control("service_accounts", { email = sa, impersonators = {
      "principal://iam.googleapis.com/" .. WF_POOL .. "/subject/nurse@example.org" } })
    assert.are.equal(200, impersonate(sa, { scope = { PLATFORM } }, r.json.access_token).status)
  end)

  it("rotates the refresh token when asked to; the old one is refused then", function()
    local u = user(true)
    local r = refresh(u)
    assert.are.equal(200, r.status, r.body)
    assert.is_string(r.json.refresh_token)
    assert.are_not.equal(u.refresh_token, r.json.refresh_token)
    oauth_error(refresh(u), 400, "invalid_grant", "The refresh token is invalid or expired.")
    local again = refresh(u, { refresh_token = secret(r.json.refresh_token) })
    assert.are.equal(200, again.status, again.body)
  end)

  it("refuses no client, a wrong secret, an unknown refresh token and another grant type", function()
    local u = user()
    oauth_error(refresh(u, nil, false), 401, "invalid_client",
      "The client id and secret must be sent in an Authorization: Basic header.")
    oauth_error(refresh(u, nil, u.client_id .. ":nope"), 401, "invalid_client")
    oauth_error(refresh(u, { refresh_token = "nope" }), 400, "invalid_grant", "The refresh token is invalid or expired.")
    oauth_error(refresh(u, { grant_type = "client_credentials" }), 400, "unsupported_grant_type")
  end)
end)

-- ---- IAM Credentials: generateAccessToken ---------------------------------------------------------

describe("IAM Credentials generateAccessToken", function()
  local source = "serviceAccount:" .. fresh_email("source")
  local target, delegate, other = fresh_email("target"), fresh_email("delegate"), fresh_email("other")
  local long = fresh_email("long")
  em:control("service_accounts", {
    { email = target, impersonators = { source, "serviceAccount:" .. delegate } },
    { email = delegate, impersonators = { source } },
    { email = other, impersonators = { "serviceAccount:" .. delegate } },
    { email = long, impersonators = { source }, lifetime_extension = true },
  })
  local source_token = token_for(source)

  it("answers a token for the target, with expireTime lifetime from now, that the API takes", function()
    local before = em:count("impersonations", "ok")
    local r = impersonate(target, { scope = { PLATFORM }, lifetime = "600s" }, source_token)
    assert.are.equal(200, r.status, r.body)
    local now = os.time()
    local left = epoch(r.json.expireTime) - now
    assert.truthy(left > 600 - 120 and left <= 600, r.json.expireTime)
    assert.truthy((api_takes(secret(r.json.accessToken))))
    assert.are.equal(before + 1, em:count("impersonations", "ok"))
    local log = em:stats().impersonation_log
    assert.are.same({ target, source, "ok" }, { log[#log].target, log[#log].principal, log[#log].outcome })
    -- That token is the target's: it may go on where the target may.
    em:control("service_accounts", { email = other, impersonators = { "serviceAccount:" .. target } })
    assert.are.equal(200, impersonate(other, { scope = { PLATFORM } }, r.json.accessToken).status)
  end)

  it("an email in the path percent-encoded, and the default lifetime (3600 s)", function()
    local r = impersonate(target:gsub("@", "%%40"), { scope = { PLATFORM } }, source_token)
    assert.are.equal(200, r.status, r.body)
    local left = epoch(r.json.expireTime) - os.time()
    assert.truthy(left > 3600 - 120 and left <= 3600, r.json.expireTime)
  end)

  it("goes through a chain of delegates, each allowed to impersonate the next", function()
    local r = impersonate(other, { scope = { PLATFORM }, delegates = { "projects/-/serviceAccounts/" .. delegate } },
      source_token)
    assert.are.equal(200, r.status, r.body)
  end)

  it("refuses a chain with a link not allowed (403)", function()
    -- source may impersonate delegate, but target may not be impersonated... by other.
    local r = impersonate(target, { scope = { PLATFORM }, delegates = { "projects/-/serviceAccounts/" .. other } },
      source_token)
    local err = envelope(r, 403, "PERMISSION_DENIED", MSG_DENIED)
    assert.are.equal("IAM_PERMISSION_DENIED", err.details[1].reason)
  end)

  it("refuses a source that may not impersonate the target, and a target nobody registered (403)", function()
    local denied, unknown = em:count("impersonations", "denied"), em:count("impersonations", "unknown_account")
    envelope(impersonate(other, { scope = { PLATFORM } }, source_token), 403, "PERMISSION_DENIED", MSG_DENIED)
    envelope(impersonate(fresh_email("nobody"), { scope = { PLATFORM } }, source_token), 403, "PERMISSION_DENIED",
      MSG_DENIED)
    assert.are.same({ denied + 1, unknown + 1 },
      { em:count("impersonations", "denied"), em:count("impersonations", "unknown_account") })
    -- A token that stands for no one may impersonate no one.
    envelope(impersonate(target, { scope = { PLATFORM } }, token_for(nil)), 403, "PERMISSION_DENIED")
  end)

  it("allows up to 3600 s, or 43200 s for an account with the lifetime extension", function()
    envelope(impersonate(target, { scope = { PLATFORM }, lifetime = "3601s" }, source_token), 400, "INVALID_ARGUMENT",
      "The lifetime requested (3601s) is outside what this service account may have: 1s to 3600s.")
    envelope(impersonate(target, { scope = { PLATFORM }, lifetime = "0s" }, source_token), 400, "INVALID_ARGUMENT")
    assert.are.equal(200, impersonate(long, { scope = { PLATFORM }, lifetime = "43200s" }, source_token).status)
    envelope(impersonate(long, { scope = { PLATFORM }, lifetime = "43201s" }, source_token), 400, "INVALID_ARGUMENT")
  end)

  describe("refuses a bad request (400 INVALID_ARGUMENT)", function()
    local cases = {
      { "no scope", {}, "Scope required: a non-empty list of OAuth scopes." },
      { "an empty scope list", { scope = cjson.empty_array }, "Scope required: a non-empty list of OAuth scopes." },
      { "a lifetime without 's'", { scope = { PLATFORM }, lifetime = "600" },
        "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), Field 'lifetime', Illegal "
          .. "duration format; duration must end with 's'" },
      { "a delegate that is not a resource name", { scope = { PLATFORM }, delegates = { "someone@example.com" } },
        'Invalid form of delegate "someone@example.com": use projects/-/serviceAccounts/EMAIL.' },
      { "an unknown field", { scope = { PLATFORM }, lifetme = "600s" },
        'Invalid JSON payload received. Unknown name "lifetme": Cannot find field.' },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        envelope(impersonate(target, c[2], source_token), 400, "INVALID_ARGUMENT", c[3])
      end)
    end
    it("a body that is not JSON", function()
      envelope(impersonate(target, "{scope", source_token), 400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    end)
    it("a project other than '-'", function()
      envelope(impersonate(target, { scope = { PLATFORM } }, source_token, "test-project"), 400, "INVALID_ARGUMENT",
        "The - wildcard character is required for the project; replacing it with a project ID is invalid.")
    end)
  end)

  it("refuses no credential and a bad one (401), a token without cloud-platform (403)", function()
    local missing = envelope(impersonate(target, { scope = { PLATFORM } }, false), 401, "UNAUTHENTICATED")
    assert.truthy(missing.message:find("missing required authentication credential", 1, true), missing.message)
    local bad = envelope(impersonate(target, { scope = { PLATFORM } }, "not-a-token"), 401, "UNAUTHENTICATED")
    assert.truthy(bad.message:find("invalid authentication credentials", 1, true), bad.message)
    local scoped = envelope(impersonate(target, { scope = { PLATFORM } }, token_for(source, { HEALTHCARE })), 403,
      "PERMISSION_DENIED", "Request had insufficient authentication scopes.")
    assert.are.equal("ACCESS_TOKEN_SCOPE_INSUFFICIENT", scoped.details[1].reason)
  end)

  it("a service account key's token (RS256 assertion at /token) stands for its account", function()
    local sa = em:service_account()
    local assertion = H.sign_jwt(sa, { aud = em.token_uri, scope = PLATFORM })
    local r = post_form("/token", { grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer", assertion = assertion })
    assert.are.equal(200, r.status, r.body)
    local t = fresh_email("key-target")
    em:control("service_accounts", { email = t, impersonators = { "serviceAccount:" .. sa.client_email } })
    assert.are.equal(200, impersonate(t, { scope = { PLATFORM } }, secret(r.json.access_token)).status)
    envelope(impersonate(target, { scope = { PLATFORM } }, r.json.access_token), 403, "PERMISSION_DENIED")
  end)

  it("a fault rule answers in Google's envelope", function()
    em:control("faults", { { match = "impersonation", status = 503, retry_after = "2" } })
    local r = impersonate(target, { scope = { PLATFORM } }, source_token)
    envelope(r, 503, "UNAVAILABLE")
    assert.are.equal("2", r.headers["retry-after"])
  end)
end)

-- ---- the EC2 instance metadata service ------------------------------------------------------------

describe("EC2 instance metadata (IMDSv2)", function()
  local base = "/latest/meta-data/"

  it("gives a session token, then the zone, the role and its credentials to requests carrying it", function()
    local before = em:count("aws_metadata_requests", "credentials")
    local r = imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "21600" })
    assert.are.equal(200, r.status)
    assert.are.equal("21600", r.headers["x-aws-ec2-metadata-token-ttl-seconds"])
    local tok = { ["X-aws-ec2-metadata-token"] = secret(r.body) }
    assert.are.equal("us-east-1a", imds("GET", base .. "placement/availability-zone", tok).body)
    assert.are.equal("us-east-1", imds("GET", base .. "placement/region", tok).body)
    assert.are.equal(AWS_ROLE, imds("GET", base .. "iam/security-credentials/", tok).body)
    assert.are.equal(AWS_ROLE, imds("GET", base .. "iam/security-credentials", tok).body)
    local c = imds("GET", base .. "iam/security-credentials/" .. AWS_ROLE, tok)
    assert.are.equal(200, c.status, c.body)
    assert.are.same({ "Success", "AWS-HMAC", AWS_KEY, AWS_SECRET, AWS_SESSION },
      { c.json.Code, c.json.Type, c.json.AccessKeyId, c.json.SecretAccessKey, c.json.Token })
    assert.truthy(c.json.Expiration:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
    assert.are.equal(before + 1, em:count("aws_metadata_requests", "credentials"))
    assert.are.equal(404, imds("GET", base .. "iam/security-credentials/another-role", tok).status)
    assert.are.equal(404, imds("GET", base .. "nothing-here", tok).status)
  end)

  it("answers 401 to a GET without the session token, with a wrong one, or with an expired one", function()
    local before = em:count("aws_metadata_requests", "refused")
    assert.are.equal(401, imds("GET", base .. "placement/availability-zone").status)
    assert.are.equal(401, imds("GET", base .. "placement/availability-zone",
      { ["X-aws-ec2-metadata-token"] = "AQAEAmadeup" }).status)
    local short = imds_token(1)
    os.execute("sleep 2")
    assert.are.equal(401, imds("GET", base .. "placement/availability-zone", { ["X-aws-ec2-metadata-token"] = short }).status)
    assert.are.equal(before + 3, em:count("aws_metadata_requests", "refused"))
  end)

  it("refuses a session token request without a TTL (400), out of range (400), or forwarded (403)", function()
    assert.are.equal(400, imds("PUT", "/latest/api/token").status)
    assert.are.equal(400, imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "21601" }).status)
    assert.are.equal(400, imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "0" }).status)
    assert.are.equal(403, imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "60",
      ["X-Forwarded-For"] = "10.0.0.1" }).status)
    assert.are.equal(405, imds("GET", "/latest/api/token").status)
  end)

  it("with IMDSv2 optional, takes a GET without a token (IMDSv1); with it down, answers 401 to all", function()
    em:control("config", { aws_imdsv2 = "optional" })
    local v1 = imds("GET", base .. "placement/availability-zone")
    em:control("config", { aws_imdsv2 = "down" })
    local put = imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "60" })
    local get = imds("GET", base .. "iam/security-credentials/")
    em:control("config", { aws_imdsv2 = "required", aws_zone = "eu-west-3c" })
    local zone = imds("GET", base .. "placement/availability-zone", { ["X-aws-ec2-metadata-token"] = imds_token() })
    em:control("config", { aws_zone = "us-east-1a" })
    assert.are.same({ 200, "us-east-1a" }, { v1.status, v1.body })
    assert.are.same({ 401, 401 }, { put.status, get.status })
    assert.are.equal("eu-west-3c", zone.body)
  end)

  it("a fault rule answers for it", function()
    em:control("faults", { { match = "aws_metadata", status = 500, message = "broken\n" } })
    local r = imds("PUT", "/latest/api/token", { ["X-aws-ec2-metadata-token-ttl-seconds"] = "60" })
    assert.are.same({ 500, "broken\n" }, { r.status, r.body })
  end)

  it("without an instance role, the role list is a 404", function()
    local lone = emulator.start()
    local ok, err = pcall(function()
      local r = H.curl({ "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", lone.aws_metadata .. "/latest/api/token" })
      local g = H.curl({ "-H", "X-aws-ec2-metadata-token: " .. r.body, lone.aws_metadata .. base .. "iam/security-credentials/" })
      assert.are.equal(404, g.status)
    end)
    lone:stop()
    assert(ok, err)
  end)

  it("the test bed's emulator serves it at HC_TEST_AWS_METADATA", function()
    assert.truthy(E.aws_metadata and E.aws_metadata:match("^http://127%.0%.0%.1:%d+$"), tostring(E.aws_metadata))
    local r = H.curl({ "-X", "PUT", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", E.aws_metadata .. "/latest/api/token" })
    assert.are.equal(200, r.status)
  end)
end)

-- ---- a signed GetCallerIdentity request as subject token ------------------------------------------

describe("STS with an AWS GetCallerIdentity request signed by core.sigv4_sign", function()
  it("exchanges it (the target header signed, Go's header names), naming the caller's ARN", function()
    local before = em:count("aws_caller_identity", "ok")
    local r = aws_exchange(signed_by_instance())
    assert.are.equal(200, r.status, r.body)
    assert.are.equal(before + 1, em:count("aws_caller_identity", "ok"))
    local sa = fresh_email("aws-target")
    em:control("service_accounts", { email = sa, impersonators = {
      "principal://iam.googleapis.com/" .. POOL .. "/subject/" .. AWS_ARN } })
    assert.are.equal(200, impersonate(sa, { scope = { PLATFORM } }, secret(r.json.access_token)).status)
  end)

  it("exchanges it as Google's Python and Node libraries send it (the target header not signed)", function()
    assert.are.equal(200, aws_exchange(signed_by_instance { style = "python" }).status)
    assert.are.equal(200, aws_exchange(signed_by_instance { audience = "https:" .. AWS_AUD }).status)
  end)

  it("with credentials as a client finds them: IMDSv2 token, region from the zone, role, credentials", function()
    local tok = { ["X-aws-ec2-metadata-token"] = imds_token(300) }
    local zone = imds("GET", "/latest/meta-data/placement/availability-zone", tok).body
    local role = imds("GET", "/latest/meta-data/iam/security-credentials", tok).body
    local c = imds("GET", "/latest/meta-data/iam/security-credentials/" .. role, tok).json
    local r = aws_exchange(aws_subject_token { key = c.AccessKeyId, secret = c.SecretAccessKey, token = c.Token,
      region = zone:sub(1, -2) })
    assert.are.equal(200, r.status, r.body)
  end)

  it("without a session token, for credentials that have none", function()
    em:control("aws_credentials", { access_key_id = "AKIDPLAIN", secret_access_key = secret("plain-secret") })
    assert.are.equal(200, aws_exchange(aws_subject_token { key = "AKIDPLAIN", secret = "plain-secret", token = false }).status)
  end)

  describe("refuses, in Google's form with AWS's reason", function()
    local function with_header(name, value)
      return function(headers)
        for _, h in ipairs(headers) do
          if h.key:lower() == name then h.value = value end
        end
      end
    end
    local cases = {
      { "a wrong secret", { secret = "not-the-secret" }, MSG_SIGNATURE },
      { "an unknown access key", { key = "AKIDUNKNOWN" }, MSG_AWS_TOKEN },
      { "another session token", { token = "another-session" }, MSG_AWS_TOKEN },
      { "no session token for credentials that have one", { token = false }, MSG_AWS_TOKEN },
      { "a target resource changed after signing", { tamper = with_header("x-goog-cloud-target-resource", AWS_AUD .. "x") },
        "The x-goog-cloud-target-resource header of the AWS request must be the audience " .. AWS_AUD .. "." },
      { "the date changed after signing (one second, the same day)", { tamper = function(headers)
        for _, h in ipairs(headers) do
          if h.key:lower() == "x-amz-date" then
            h.value = h.value:gsub("(%d)Z$", function(d) return (d == "0" and "1" or "0") .. "Z" end)
          end
        end
      end }, nil },
      { "a signature made 20 minutes ago", { date = os.date("!%Y%m%dT%H%M%SZ", os.time() - 20 * 60) },
        "^Received invalid AWS response of type SignatureDoesNotMatch with error message: Signature expired: %d+T%d+Z is now earlier than" },
      { "a signature for another audience", { audience = "//iam.googleapis.com/" .. POOL .. "/providers/oidc" },
        "The x-goog-cloud-target-resource header of the AWS request must be the audience " .. AWS_AUD .. "." },
      { "a region that is not the URL's", { sign_region = "us-west-2" },
        "Received invalid AWS response of type SignatureDoesNotMatch with error message: Credential should be scoped "
          .. "to a valid region and service: 'us-east-1/sts', not 'us-west-2/sts'." },
      { "a GET", { method = "GET" }, "The subject token is not a valid serialized AWS GetCallerIdentity request: the "
        .. "method must be POST." },
      { "another AWS action", { url = "https://sts.us-east-1.amazonaws.com?Action=AssumeRole&Version=2011-06-15" },
        "The subject token is not a valid serialized AWS GetCallerIdentity request: the url must ask "
          .. "Action=GetCallerIdentity&Version=2011-06-15." },
      { "a host that is not AWS STS", { url = "https://sts.us-east-1.example.com?Action=GetCallerIdentity&Version=2011-06-15" },
        "The subject token is not a valid serialized AWS GetCallerIdentity request: the url must be "
          .. "https://sts.<region>.amazonaws.com." },
    }
    for _, c in ipairs(cases) do
      it(c[1], function()
        local r = aws_exchange(signed_by_instance(c[2]))
        oauth_error(r, 400, "invalid_grant")
        if c[3] and c[3]:sub(1, 1) == "^" then
          assert.truthy(r.json.error_description:find(c[3]), r.json.error_description)
        elseif c[3] then
          assert.are.equal(c[3], r.json.error_description)
        else
          assert.are.equal(MSG_SIGNATURE, r.json.error_description)
        end
      end)
    end

    it("a subject token that is not a serialized request", function()
      oauth_error(aws_exchange("not-json"), 400, "invalid_grant",
        "The subject token is not a valid serialized AWS GetCallerIdentity request: not URL-encoded JSON.")
      oauth_error(aws_exchange(urlencode('{"url": 1}')), 400, "invalid_grant",
        "The subject token is not a valid serialized AWS GetCallerIdentity request: it needs url, method and headers.")
    end)

    it("an OIDC token type for the AWS provider", function()
      oauth_error(sts({ audience = AWS_AUD, subject_token = signed_by_instance() }), 400, "invalid_request")
    end)

    it("and counts each reason", function()
      local stats = em:stats().aws_caller_identity
      assert.truthy((stats.SignatureDoesNotMatch or 0) >= 4, cjson.encode(stats))
      assert.truthy((stats.InvalidClientTokenId or 0) >= 3, cjson.encode(stats))
    end)
  end)
end)

-- ---- core.sigv4_sign against botocore ---------------------------------------------------------------

describe("core.sigv4_sign against botocore", function()
  -- Characters for the random parts: ASCII that matters to SigV4, and UTF-8.
  local PATH_CHARS = { "a", "Z", "0", "-", ".", "_", "~", " ", "%", "+", "=", "&", "$", "'", "(", ":", "@",
    "\195\169", "\225\136\180", "/", "/", ".." }
  local QUERY_CHARS = { "a", "Z", "9", "-", ".", "_", "~", " ", "%", "+", "=", "&", "/", "?", "#", "\195\169", "*" }
  local NAME_CHARS = { "a", "B", "c", "1", "-", "_", "!", "#", "$", "'", "*", "+", ".", "^", "`", "|", "~" }
  local VALUE_CHARS = { "a", "B", " ", "  ", "\t", "x y", ",", ";", "=", "\"", "/", "(", ")" }
  local function pick(t) return t[math.random(#t)] end
  local function text(chars, lo, hi)
    local out = {}
    for i = 1, math.random(lo, hi) do out[i] = pick(chars) end
    return table.concat(out)
  end
  -- The wire form of a decoded query part: every byte %XX (upper or lower hex) or, when unreserved, sometimes as it is.
  local function wire(s)
    return (s:gsub(".", function(c)
      if c:match("[%w%-%._~]") and math.random() < 0.7 then return c end
      return string.format(math.random() < 0.5 and "%%%02X" or "%%%02x", c:byte())
    end))
  end

  it("signs 300 random requests as botocore does", function()
    local requests, lines = {}, {}
    for i = 1, 300 do
      local pairs_, wire_parts = {}, {}
      for j = 1, math.random(0, 4) do
        local k, v = text(QUERY_CHARS, 0, 6), text(QUERY_CHARS, 0, 6)
        if k == "" and v == "" then k = "k" end   -- an empty part is skipped (see hc_sigv4.h)
        pairs_[j] = { k, v }
        wire_parts[j] = wire(k) .. "=" .. wire(v)
      end
      local headers, hlist, seen = {}, {}, {}
      for _ = 1, math.random(0, 5) do
        local name = "x-" .. text(NAME_CHARS, 1, 8)
        if not seen[name:lower()] then
          seen[name:lower()] = true
          local value = text(VALUE_CHARS, 0, 6)
          headers[name] = value
          hlist[#hlist + 1] = { name, value }
        end
      end
      local r = {
        method = pick({ "GET", "POST", "PUT", "DELETE" }), host = pick({ "sts.us-east-1.amazonaws.com", "example.amazonaws.com:8443" }),
        path = "/" .. text(PATH_CHARS, 0, 8), query = table.concat(wire_parts, "&"), headers = headers,
        payload = text(VALUE_CHARS, 0, 20), region = pick({ "us-east-1", "eu-west-3", "ap-southeast-2" }),
        service = pick({ "sts", "service", "execute-api" }), date = string.format("2024%02d%02dT%02d%02d%02dZ",
          math.random(1, 12), math.random(1, 28), math.random(0, 23), math.random(0, 59), math.random(0, 59)),
        access_key_id = "AKID" .. core.random_hex(4):upper(), secret_access_key = "s/" .. core.random_hex(10) .. "+",
        session_token = math.random() < 0.5 and ("tok/" .. core.random_hex(6) .. "=") or nil,
      }
      requests[i] = r
      lines[i] = cjson.encode({ method = r.method, host = r.host, path = r.path, query = #pairs_ > 0 and pairs_ or nil,
        headers = #hlist > 0 and hlist or nil, payload = r.payload, region = r.region, service = r.service, date = r.date,
        access_key = r.access_key_id, secret = r.secret_access_key, token = r.session_token })
    end
    local out = H.check_run("/usr/bin/python3 " .. H.q(E.support .. "/sigv4_botocore.py"), table.concat(lines, "\n") .. "\n")
    local i, differ = 0, {}
    for line in out:gmatch("[^\n]+") do
      i = i + 1
      local want = cjson.decode(line).authorization
      local got = assert(core.sigv4_sign(requests[i])).Authorization
      if got ~= want then differ[#differ + 1] = lines[i] .. "\n  ours:     " .. got .. "\n  botocore: " .. want end
    end
    assert.are.equal(300, i)
    assert.are.equal(0, #differ, table.concat(differ, "\n", 1, math.min(#differ, 3)))
  end)
end)

-- ---- no secret kept ---------------------------------------------------------------------------------

describe("the emulator's log and stats", function()
  it("hold none of the tokens, secrets and keys of this file", function()
    local log = H.file_bytes(em.dir .. "/err") or ""
    local stats = cjson.encode(em:stats())
    assert.truthy(#log > 1000 and log:find("POST /v1/token", 1, true), "the log is not the emulator's")
    assert.truthy(#secrets > 20)
    for _, s in ipairs(secrets) do
      assert.falsy(log:find(s, 1, true), "the log holds a secret")
      assert.falsy(stats:find(s, 1, true), "the stats hold a secret")
    end
  end)
end)
