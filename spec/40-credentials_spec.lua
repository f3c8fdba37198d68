-- SPDX-License-Identifier: MIT
-- Google credentials (healthcare.auth.credentials, healthcare.auth.token_cache, RS256 signing in the C
-- core) against the test bed's emulator, whose token endpoint checks every JWT with Python's
-- cryptography (not our code). Keys are made by openssl in this run: `openssl genpkey`
-- (PKCS#8) and `openssl genrsa -traditional` (PKCS#1). Each credential kind gets a token and
-- stores a generated DICOM file through the emulator into Orthanc; discovery runs with each
-- source there or not; short-lived tokens, a 401, faults of the token endpoint and every bad
-- input are checked, and no secret may show up in an error or a debug line.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/40-credentials_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end

local core = require "healthcare.core"
local cjson = require "cjson"
local healthcare = require "healthcare"
local credentials = require "healthcare.auth.credentials"
local token_cache = require "healthcare.auth.token_cache"
local params = require "healthcare.params"

local E = H.env
local PY = "/usr/bin/python3"
local JWT_GRANT = credentials.JWT_GRANT
local HEALTHCARE, PLATFORM = params.SCOPE_CLOUD_HEALTHCARE, params.SCOPE_CLOUD_PLATFORM
-- This file's own emulator: its counters, settings and faults are not shared with other files.
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local NO_PEM = "no PEM private key found (expected a '-----BEGIN PRIVATE KEY-----' block with real line breaks)"
local USE_AS_DOWNLOADED = ". Use the key file as downloaded from the Google Cloud console, unchanged"

-- ---- helpers --------------------------------------------------------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function b64url_decode(s)
  local bits, out = {}, {}
  for c in s:gmatch(".") do
    local v = assert(B64:find(c, 1, true), "not base64url: " .. c) - 1
    for i = 5, 0, -1 do bits[#bits + 1] = math.floor(v / 2 ^ i) % 2 end
  end
  for i = 1, #bits - 7, 8 do
    local byte = 0
    for j = 0, 7 do byte = byte * 2 + bits[i + j] end
    out[#out + 1] = string.char(byte)
  end
  return table.concat(out)
end

-- header, claims (tables) and the signature bytes of a compact JWT
local function jwt_parts(jwt)
  local h, c, s = jwt:match("^([%w_-]+)%.([%w_-]+)%.([%w_-]+)$")
  assert(h, "not a compact JWT")
  return cjson.decode(b64url_decode(h)), cjson.decode(b64url_decode(c)), b64url_decode(s)
end

-- The first ten lines of a PEM key and its END line: valid PEM, a cut DER structure.
local function truncated(pem)
  local lines = {}
  for line in pem:gmatch("[^\n]+") do
    if #lines < 10 then lines[#lines + 1] = line end
  end
  lines[#lines + 1] = pem:match("%-%-%-%-%-END [^\n]+")
  return table.concat(lines, "\n") .. "\n"
end

-- A service account with a new key of the given form, registered with the emulator unless
-- register == false (see H.service_account).
local function service_account(form, register, fields)
  return em:service_account({ form = form, register = register, fields = fields })
end

local function token_requests(grant) return em:count("token_requests", grant) end
local function auth_kind(kind) return em:count("auth_kinds", kind) end

-- Runs fn with the environment credentials.getenv sees set to env (nothing else is set).
local function with_env(env, fn)
  local saved = credentials.getenv
  credentials.getenv = function(k) return env[k] end
  local ok, a, b = pcall(fn)
  credentials.getenv = saved
  if not ok then error(a, 0) end
  return a, b
end

local new_file = H.fresh_files(30)

-- A client of the emulator. opts.env, when given, is the environment credentials.getenv sees
-- from now until the end of the test: Application Default Credentials are looked for at the
-- first request.
local function new_client(opts)
  opts.endpoint = em.endpoint
  if opts.env then
    local env = opts.env
    credentials.getenv = function(k) return env[k] end
    opts.env = nil
  end
  return healthcare.new(opts)
end

-- Stores one generated DICOM file; returns the response (asserted 200 and in Orthanc).
local function store_one(client)
  local f = new_file()
  local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom",
    data = { file = f.path } })
  assert(res, err and tostring(err))
  assert.equal(200, res.status)
  assert.truthy(H.orthanc_find_instance(f.sop_instance_uid), "stored in Orthanc")
  return res
end

-- Starts one StoreInstances request per file on the client at once (client:start) and waits for
-- all; returns the statuses.
local function store_concurrently(client, files)
  local left = 0
  for _, f in ipairs(files) do
    assert(client:start({ method = "POST", url = em.store_url .. "/studies",
      headers = { "Content-Type: application/dicom", "Accept: application/dicom+json" },
      body = { { file = f.path } } }))
    left = left + 1
  end
  local statuses = {}
  while left > 0 do
    for _, request in ipairs(client:poll(1)) do
      local res, err = client:finish(request)
      if res ~= false then
        statuses[#statuses + 1] = res and res.status or tostring(err)
        left = left - 1
      end
    end
  end
  return statuses
end

-- The keys of t, sorted (to compare the fields a document has).
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function all_equal(list, v)
  for _, x in ipairs(list) do if x ~= v then return false end end
  return #list > 0
end

-- Fails when text holds any of the secrets (strings) or a JWT (H.find_jwt).
local function assert_no_secrets(text, secrets, what)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), (what or "text") .. " holds a secret")
  end
  assert.is_nil(H.find_jwt(text), (what or "text") .. " holds a JWT")
end

-- A TCP listener that accepts and never answers; returns "127.0.0.1:port" and a stop function.
local function silent_listener()
  local dir = H.tmpdir()
  local script = "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(16)\n"
    .. "print(s.getsockname()[1],flush=True)\ntime.sleep(60)\n"
  H.write_file(dir .. "/l.py", script)
  local pid = H.check_run(PY .. " " .. H.q(dir .. "/l.py") .. " >" .. H.q(dir .. "/port")
    .. " 2>/dev/null & echo $!"):match("%d+")
  local port
  for _ = 1, 100 do
    port = (H.file_bytes(dir .. "/port") or ""):match("%d+")
    if port then break end
    core.sleep(0.05)
  end
  assert(port, "listener did not start")
  return "127.0.0.1:" .. port, function() H.run("kill " .. pid) end
end

before_each(function()
  -- Nothing of the machine's own environment (a real key file, gcloud) leaks into a spec.
  credentials.getenv = function() return nil end
end)

-- ---- the C core -----------------------------------------------------------------------------

describe("core.base64url", function()
  for _, case in ipairs({
    { "", "" }, { "f", "Zg" }, { "fo", "Zm8" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg" },
    { "fooba", "Zm9vYmE" }, { "foobar", "Zm9vYmFy" }, { "\251\255", "-_8" }, { "\0\0\0\0", "AAAAAA" },
  }) do
    it("encodes " .. cjson.encode(case[1]) .. " as '" .. case[2] .. "'", function()
      assert.equal(case[2], core.base64url(case[1]))
      assert.equal(case[1], b64url_decode(case[2]))
    end)
  end
end)

describe("core.private_key and core.jwt_sign", function()
  for _, form in ipairs({ "pkcs8", "pkcs1" }) do
    it("signs with a " .. form .. " key that openssl made, verified by python cryptography", function()
      local k = H.rsa_key(form)
      assert.equal(form == "pkcs8" and "-----BEGIN PRIVATE KEY-----" or "-----BEGIN RSA PRIVATE KEY-----",
        k.pem:match("^[^\n]+"))
      local key = assert(core.private_key(k.pem))
      assert.equal("healthcare.PrivateKey (RSA, 2048 bits)", tostring(key))
      local jwt = assert(key:sign('{"alg":"RS256","typ":"JWT"}', '{"iss":"x"}'))
      local h, c = jwt_parts(jwt)
      assert.same({ alg = "RS256", typ = "JWT" }, h)
      assert.same({ iss = "x" }, c)
      H.write_file(k.dir .. "/jwt", jwt)
      local out = H.check_run(PY .. " -c " .. H.q([[
import base64, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
d = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
h, c, s = open(sys.argv[1] + "/jwt").read().split(".")
pub = serialization.load_pem_public_key(open(sys.argv[1] + "/pub.pem", "rb").read())
pub.verify(d(s), (h + "." + c).encode(), padding.PKCS1v15(), hashes.SHA256())
print("verified")
]]) .. " " .. H.q(k.dir))
      assert.equal("verified\n", out)
      -- The one-shot form takes the PEM text itself.
      assert.truthy(core.jwt_sign("{}", "{}", k.pem):match("^e30%.e30%.[%w_-]+$"))
      key:close()
      key:close()
      assert.equal("healthcare.PrivateKey (closed)", tostring(key))
      assert.error_matches(function() key:sign("{}", "{}") end, "attempt to use a closed private key")
    end)
  end

  it("refuses what is not an unencrypted RSA key of 2048 bits or more, without quoting it", function()
    local good = H.rsa_key("pkcs8")
    local small = H.rsa_key("pkcs1", 1024)
    local ec = H.tmpdir() .. "/ec.pem"
    H.check_run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " .. H.q(ec))
    local enc = H.tmpdir() .. "/enc.pem"
    H.check_run("openssl pkey -in " .. H.q(good.dir .. "/key.pem") .. " -aes256 -passout pass:pw -out " .. H.q(enc))
    local cases = {
      { "", "the private key is empty" },
      { "hello", NO_PEM },
      { (good.pem:gsub("\n", "\\n")), NO_PEM },
      { good.pub, "the PEM block is 'PUBLIC KEY', not a private key (expected '-----BEGIN PRIVATE KEY-----' "
        .. "or '-----BEGIN RSA PRIVATE KEY-----')" },
      { truncated(good.pem), "the PEM block does not hold a valid private key: too long" },
      { small.pem, "the RSA key has 1024 bits; RS256 needs at least 2048" },
      { H.file_bytes(ec), "the private key is not an RSA key; RS256 needs RSA" },
      { H.file_bytes(enc), "the private key is encrypted; use the unencrypted key Google issues (or decrypt it with 'openssl pkey')" },
    }
    for _, case in ipairs(cases) do
      local key, err = core.private_key(case[1])
      assert.is_nil(key)
      assert.equal("auth", err.kind)
      assert.equal(case[2], err.message)
      assert.equal(case[2], tostring(err))
      assert_no_secrets(err.message, H.pem_runs(good.pem), "error")
      local jwt, jerr = core.jwt_sign("{}", "{}", case[1])
      assert.is_nil(jwt)
      assert.equal(case[2], jerr.message)
    end
  end)
end)

-- ---- credential kinds, end to end -----------------------------------------------------------

describe("service account credentials", function()
  for _, form in ipairs({ "pkcs8", "pkcs1" }) do
    it("get a token with a " .. form .. " key and store a DICOM file", function()
      local sa = service_account(form)
      local client = assert(new_client({ credentials = sa.key_file }))
      assert.equal("service_account", client:credential().kind)
      local before, issued = token_requests(JWT_GRANT), auth_kind("issued_token")
      store_one(client)
      store_one(client)
      assert.equal(1, token_requests(JWT_GRANT) - before)
      assert.equal(2, auth_kind("issued_token") - issued)
    end)
  end

  it("sign the assertion Google expects", function()
    local sa = service_account("pkcs8")
    local cred = assert(credentials.from_options({ credentials = sa.key_file }))
    local now = os.time()
    local h, c = jwt_parts(assert(cred:assertion({ PLATFORM, HEALTHCARE, PLATFORM })))
    assert.same({ alg = "RS256", typ = "JWT", kid = sa.kid }, h)
    assert.equal(sa.client_email, c.iss)
    assert.equal(em.token_uri, c.aud)
    assert.equal(HEALTHCARE .. " " .. PLATFORM, c.scope)
    assert.is_true(math.abs(c.iat - now) <= 2)
    assert.equal(3600, c.exp - c.iat)
    assert.is_nil(c.sub)
  end)

  it("take the key file as a table too", function()
    local sa = service_account("pkcs1")
    local client = assert(new_client({ credentials = sa.info }))
    store_one(client)
  end)

  it("keep one token per scope set", function()
    local sa = service_account("pkcs8")
    local cred = assert(credentials.from_options({ credentials = sa.key_file }))
    local before = token_requests(JWT_GRANT)
    local a = assert(cred:token({ HEALTHCARE, PLATFORM }))
    assert.equal(a, cred:token({ PLATFORM, HEALTHCARE, HEALTHCARE }))
    local b = assert(cred:token({ PLATFORM }))
    assert.are_not.equal(a, b)
    assert.equal(b, cred:token(PLATFORM))
    local c = assert(cred:token())
    assert.equal(c, cred:token({ HEALTHCARE }))
    assert.equal(3, token_requests(JWT_GRANT) - before)
    assert.equal(3, cred.refreshes)
  end)

  it("ask for a subject's token (domain-wide delegation)", function()
    local sa = service_account("pkcs8")
    local client = assert(new_client({ credentials = sa.key_file, subject = "user@example.com" }))
    local _, c = jwt_parts(assert(client:credential():assertion()))
    assert.equal("user@example.com", c.sub)
    assert.equal(sa.client_email, c.iss)
    store_one(client)
  end)

  it("send x-goog-user-project from quota_project or the key's quota_project_id", function()
    local sa = service_account("pkcs8", true, { quota_project_id = "billing-one" })
    local function last_project()
      local reqs = em:stats().requests
      return reqs[#reqs]["x-goog-user-project"]
    end
    store_one(assert(new_client({ credentials = sa.key_file })))
    assert.equal("billing-one", last_project())
    store_one(assert(new_client({ credentials = sa.key_file, quota_project = "billing-two" })))
    assert.equal("billing-two", last_project())
  end)
end)

describe("self-signed JWT credentials", function()
  it("store without any token request, audience https://healthcare.googleapis.com/", function()
    local sa = service_account("pkcs1")
    local client = assert(new_client({ credentials = sa.key_file, self_signed_jwt = true }))
    assert.equal("self_signed_jwt", client:credential().kind)
    local before, kind = token_requests(JWT_GRANT), auth_kind("self_signed_jwt")
    store_one(client)
    store_one(client)
    assert.equal(0, token_requests(JWT_GRANT) - before)
    assert.equal(2, auth_kind("self_signed_jwt") - kind)
    assert.equal(1, client:credential().refreshes)
    local h, c = jwt_parts(assert(client:credential():token()))
    assert.same({ alg = "RS256", typ = "JWT", kid = sa.kid }, h)
    assert.same({ "aud", "exp", "iat", "iss", "sub" }, sorted_keys(c))
    assert.equal("https://healthcare.googleapis.com/", c.aud)
    assert.equal(sa.client_email, c.iss)
    assert.equal(sa.client_email, c.sub)
  end)

  it("are refused with subject", function()
    local sa = service_account("pkcs8", false)
    local client, err = new_client({ credentials = sa.key_file, self_signed_jwt = true, subject = "u@example.com" })
    assert.is_nil(client)
    assert.equal("auth", err.kind)
    assert.equal("credentials file '" .. sa.key_file .. "': self_signed_jwt cannot be used with subject; "
      .. "domain-wide delegation needs a token from the token endpoint (leave self_signed_jwt unset)", err.message)
  end)
end)

describe("authorized_user credentials", function()
  it("use the refresh-token grant and store a DICOM file", function()
    local u = em:authorized_user()
    local client = assert(new_client({ credentials = u.key_file }))
    assert.equal("authorized_user", client:credential().kind)
    local before = token_requests("refresh_token")
    store_one(client)
    store_one(client)
    assert.equal(1, token_requests("refresh_token") - before)
  end)

  it("say what to do when the refresh token or the client secret is refused", function()
    local u = em:authorized_user()
    local cases = {
      { refresh_token = "refresh-revoked-1234", status = "invalid_grant",
        tail = "HTTP 400 invalid_grant: Bad Request; the refresh token was revoked or has expired: run "
          .. "'gcloud auth application-default login' again" },
      { client_secret = "secret-wrong-1234", status = "invalid_client",
        tail = "HTTP 401 invalid_client: Unauthorized; check the file's client_id and client_secret" },
    }
    for _, case in ipairs(cases) do
      local file = H.write_file(H.tmpdir() .. "/au.json", cjson.encode({ type = "authorized_user",
        client_id = u.client_id, client_secret = case.client_secret or u.client_secret,
        refresh_token = case.refresh_token or u.refresh_token, token_uri = em.token_uri }))
      local lines = {}
      local client = assert(new_client({ credentials = file, debug = function(l) lines[#lines + 1] = l end }))
      local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom", data = "x" })
      assert.is_nil(res)
      assert.equal("auth", err.kind)
      assert.equal(case.status, err.status)
      assert.equal("authorized user of client " .. u.client_id .. ": token endpoint " .. em.token_uri .. ": "
        .. case.tail, err.message)
      local secrets = { u.refresh_token, u.client_secret, case.refresh_token or u.refresh_token,
        case.client_secret or u.client_secret }
      assert_no_secrets(err.message, secrets, "error")
      assert_no_secrets(table.concat(lines, "\n"), secrets, "debug output")
    end
  end)

  it("are refused with subject or self_signed_jwt", function()
    local u = em:authorized_user()
    local _, err = new_client({ credentials = u.key_file, subject = "u@example.com" })
    assert.equal("credentials file '" .. u.key_file .. "': subject (domain-wide delegation) needs a service "
      .. "account key, not an authorized_user file", err.message)
    _, err = new_client({ credentials = u.key_file, self_signed_jwt = true })
    assert.equal("credentials file '" .. u.key_file .. "': self_signed_jwt needs a service account key, not an "
      .. "authorized_user file", err.message)
  end)
end)

describe("metadata server credentials", function()
  it("are found last, send Metadata-Flavor: Google and ?scopes=, and store a DICOM file", function()
    local home = H.tmpdir()
    local before = em:count("metadata_requests")
    local client = assert(new_client({ env = { HOME = home, GCE_METADATA_HOST = em.metadata_host } }))
    store_one(client)
    store_one(client)
    assert.equal(1, em:count("metadata_requests") - before) -- the probe's token is kept
  end)

  it("ask for the client's scopes (a token without a Healthcare scope is refused by the API)", function()
    local env = { HOME = H.tmpdir(), GCE_METADATA_HOST = em.metadata_host }
    local client = assert(new_client({ env = env, scopes = { "https://www.googleapis.com/auth/devstorage.read_only" } }))
    local f = new_file()
    local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom",
      data = { file = f.path } })
    assert.is_nil(res)
    assert.equal(403, err.http_status)
  end)

  it("retries a metadata server that fails once", function()
    em:control("faults", { match = "metadata", status = 503, times = 1 })
    local before = em:count("metadata_requests")
    local client = assert(new_client({ env = { HOME = H.tmpdir(), GCE_METADATA_HOST = em.metadata_host } }))
    store_one(client)
    assert.equal(2, em:count("metadata_requests") - before)
  end)

  it("give up on a silent metadata server after the short probe timeout", function()
    local host, stop = silent_listener()
    finally(stop)
    local home = H.tmpdir()
    local t0 = core.now()
    local cred, err = with_env({ HOME = home, GCE_METADATA_HOST = host }, function()
      return credentials.from_options({})
    end)
    local took = core.now() - t0
    assert.is_nil(cred)
    assert.is_true(took >= 2.5 and took < 6, "probe took " .. took .. " s")
    assert.equal("auth", err.kind)
    assert.truthy(err.message:find("the metadata server at http://" .. host .. " (Operation timed out", 1, true),
      err.message)
  end)
end)

-- ---- Application Default Credentials --------------------------------------------------------

describe("discovery", function()
  local sa, u, home, gcloud, cloudsdk
  local CLOSED = "127.0.0.1:1"

  before_each(function()
    sa = sa or service_account("pkcs8")
    u = u or em:authorized_user()
    home = H.tmpdir()
    gcloud = home .. "/.config/gcloud"
    cloudsdk = H.tmpdir()
  end)

  local function put_well_known(dir, file)
    H.check_run("mkdir -p " .. H.q(dir))
    H.write_file(dir .. "/application_default_credentials.json", H.file_bytes(file))
  end

  local function discover(env)
    return with_env(env, function() return credentials.from_options({}) end)
  end

  it("takes GOOGLE_APPLICATION_CREDENTIALS first", function()
    put_well_known(gcloud, u.key_file)
    local m = em:count("metadata_requests")
    local cred = assert(discover({ GOOGLE_APPLICATION_CREDENTIALS = sa.key_file, HOME = home,
      GCE_METADATA_HOST = em.metadata_host }))
    assert.equal("service_account", cred.kind)
    assert.equal("GOOGLE_APPLICATION_CREDENTIALS file '" .. sa.key_file .. "'", cred.source)
    assert.equal(0, em:count("metadata_requests") - m)
  end)

  it("does not fall through when GOOGLE_APPLICATION_CREDENTIALS names a missing file", function()
    put_well_known(gcloud, u.key_file)
    local cred, err = discover({ GOOGLE_APPLICATION_CREDENTIALS = home .. "/missing.json", HOME = home })
    assert.is_nil(cred)
    assert.equal("auth", err.kind)
    assert.equal("cannot read GOOGLE_APPLICATION_CREDENTIALS file '" .. home .. "/missing.json': No such file or directory",
      err.message)
  end)

  it("takes ~/.config/gcloud/application_default_credentials.json next", function()
    put_well_known(gcloud, u.key_file)
    local m = em:count("metadata_requests")
    local cred = assert(discover({ HOME = home, GCE_METADATA_HOST = em.metadata_host }))
    assert.equal("authorized_user", cred.kind)
    assert.equal("gcloud credentials file '" .. gcloud .. "/application_default_credentials.json'", cred.source)
    assert.equal(0, em:count("metadata_requests") - m)
    store_one(assert(new_client({ env = { HOME = home } })))
  end)

  it("looks in $CLOUDSDK_CONFIG instead of ~/.config/gcloud when it is set", function()
    put_well_known(gcloud, u.key_file)
    put_well_known(cloudsdk, sa.key_file)
    local cred = assert(discover({ HOME = home, CLOUDSDK_CONFIG = cloudsdk }))
    assert.equal("service_account", cred.kind)
    assert.equal("gcloud credentials file '" .. cloudsdk .. "/application_default_credentials.json'", cred.source)
    -- Not there: the HOME file is not a fallback; the metadata server is.
    local empty = H.tmpdir()
    cred = assert(discover({ HOME = home, CLOUDSDK_CONFIG = empty, GCE_METADATA_HOST = em.metadata_host }))
    assert.equal("metadata", cred.kind)
  end)

  it("does not fall through when the gcloud file is broken", function()
    H.check_run("mkdir -p " .. H.q(gcloud))
    H.write_file(gcloud .. "/application_default_credentials.json", '{"type": "authorized_user"}')
    local cred, err = discover({ HOME = home, GCE_METADATA_HOST = em.metadata_host })
    assert.is_nil(cred)
    assert.equal("gcloud credentials file '" .. gcloud .. "/application_default_credentials.json': missing "
      .. "'client_id', 'client_secret', 'refresh_token' (required for type 'authorized_user')", err.message)
  end)

  it("takes the metadata server when there is no file", function()
    local cred = assert(discover({ HOME = home, GCE_METADATA_HOST = em.metadata_host }))
    assert.equal("metadata", cred.kind)
    assert.equal("the metadata server at http://" .. em.metadata_host, cred.label)
  end)

  it("names every place it looked at when nothing is there", function()
    local cred, err = discover({ HOME = home, GCE_METADATA_HOST = CLOSED })
    assert.is_nil(cred)
    assert.equal("auth", err.kind)
    assert.equal("NO_CREDENTIALS", err.status)
    local want = "no Google credentials found; looked at: GOOGLE_APPLICATION_CREDENTIALS (not set); "
      .. gcloud .. "/application_default_credentials.json (no such file); the metadata server at http://"
      .. CLOSED .. " ("
    assert.equal(want, err.message:sub(1, #want))
    assert.truthy(err.message:find("Couldn't connect to server). Set GOOGLE_APPLICATION_CREDENTIALS to a "
      .. "service account key file, run 'gcloud auth application-default login', or give credentials "
      .. "(--credentials FILE), an access token or an API key", 1, true), err.message)
    -- With CLOUDSDK_CONFIG, that is the place named; without HOME, that is said.
    cred, err = discover({ CLOUDSDK_CONFIG = cloudsdk, GCE_METADATA_HOST = CLOSED })
    assert.is_nil(cred)
    assert.truthy(err.message:find("; " .. cloudsdk .. "/application_default_credentials.json (no such file);", 1, true))
    cred, err = discover({ GCE_METADATA_HOST = CLOSED })
    assert.is_nil(cred)
    assert.truthy(err.message:find("; gcloud's application_default_credentials.json (neither CLOUDSDK_CONFIG "
      .. "nor HOME is set);", 1, true))
  end)

  it("refuses a metadata host that does not answer Metadata-Flavor: Google", function()
    local orthanc_host = E.orthanc:match("^http://([^/]+)")
    local cred, err = discover({ HOME = home, GCE_METADATA_HOST = orthanc_host })
    assert.is_nil(cred)
    assert.truthy(err.message:find("the metadata server at http://" .. orthanc_host
      .. " (the reply has no 'Metadata-Flavor: Google')", 1, true), err.message)
  end)
end)

-- ---- expiry, refresh, 401 -------------------------------------------------------------------

describe("token lifetime", function()
  after_each(function()
    em:control("config", { expires_in = 3600 })
  end)

  it("refreshes a short-lived token once for many concurrent requests", function()
    local sa = service_account("pkcs8")
    local files = {}
    for i = 1, 24 do files[i] = new_file() end
    local batch = function(i) return { files[i], files[i + 1], files[i + 2], files[i + 3], files[i + 4],
      files[i + 5], files[i + 6], files[i + 7] } end
    em:control("config", { expires_in = 4 })
    local client = assert(new_client({ credentials = sa.key_file }))
    local before = token_requests(JWT_GRANT)
    assert.is_true(all_equal(store_concurrently(client, batch(1)), 200))
    assert.equal(1, token_requests(JWT_GRANT) - before)
    -- Default margin 225 s, never more than half a 4 s lifetime: fresh until 2 s, then refreshed.
    core.sleep(2.3)
    assert.is_true(all_equal(store_concurrently(client, batch(9)), 200))
    assert.equal(2, token_requests(JWT_GRANT) - before)
    assert.is_true(all_equal(store_concurrently(client, batch(17)), 200))
    assert.equal(2, token_requests(JWT_GRANT) - before)
    assert.equal(2, client:credential().refreshes)
  end)

  it("refreshes refresh_margin seconds before expiry", function()
    local u = em:authorized_user()
    em:control("config", { expires_in = 6 })
    local client = assert(new_client({ credentials = u.key_file, refresh_margin = 1 }))
    local before = token_requests("refresh_token")
    local first = assert(client:credential():token())
    core.sleep(3.5) -- past half-life, before expiry - margin
    assert.equal(first, client:credential():token())
    core.sleep(1.8)
    local second = assert(client:credential():token())
    assert.are_not.equal(first, second)
    assert.equal(2, token_requests("refresh_token") - before)
    store_one(client)
  end)

  it("keeps a token that has not expired when its early refresh fails", function()
    local u = em:authorized_user()
    em:control("config", { expires_in = 6 })
    local client = assert(new_client({ credentials = u.key_file }))
    local first = assert(client:credential():token())
    core.sleep(3.2) -- past half of 6 s: time to refresh
    em:control("faults", { match = "token", status = 400, error = "invalid_grant", times = 1 })
    local before = token_requests("refresh_token")
    assert.equal(first, client:credential():token())
    assert.equal(1, token_requests("refresh_token") - before)
    local second = assert(client:credential():token())
    assert.are_not.equal(first, second)
    store_one(client)
  end)

  it("retries once with a fresh token after a 401", function()
    local sa = service_account("pkcs8")
    local dir = H.tmpdir() .. "/cache"
    -- A token the emulator issued and has let expire, still fresh in our cache.
    local stale = em:control("tokens", { expires_in = 1 }).access_token
    local client = assert(new_client({ credentials = sa.key_file, token_cache = dir }))
    local cred, key = client:credential(), HEALTHCARE
    assert(token_cache.open(dir):put(cred.identity, key, stale, os.time() + 3000, 3600))
    core.sleep(1.2)
    local before, expired = token_requests(JWT_GRANT), auth_kind("expired_token")
    store_one(client)
    assert.equal(1, auth_kind("expired_token") - expired)
    assert.equal(1, token_requests(JWT_GRANT) - before)
    local now_cached = token_cache.open(dir):get(cred.identity, key)
    assert.truthy(now_cached)
    assert.are_not.equal(stale, now_cached)
  end)

  it("retries the token endpoint after a 503 and not after a 400", function()
    local sa = service_account("pkcs8")
    em:control("faults", { match = "token", status = 503, times = 1 })
    local before = token_requests(JWT_GRANT)
    store_one(assert(new_client({ credentials = sa.key_file })))
    assert.equal(2, token_requests(JWT_GRANT) - before)
    em:control("faults", { match = "token", status = 400, error = "invalid_scope",
      message = "Invalid OAuth scope or ID token audience provided.", times = 1 })
    before = token_requests(JWT_GRANT)
    local client = assert(new_client({ credentials = sa.key_file }))
    local tok, err = client:credential():token()
    assert.is_nil(tok)
    assert.equal(1, token_requests(JWT_GRANT) - before)
    assert.equal("service account " .. sa.client_email .. ": token endpoint " .. em.token_uri .. ": HTTP 400 "
      .. "invalid_scope: Invalid OAuth scope or ID token audience provided.; check the scopes asked for", err.message)
  end)

  -- README: "three attempts within two minutes". Each of a GET's five attempts used to run three
  -- token requests of its own: fifteen for one call.
  it("a call's own retries do not each ask the token endpoint again: three token requests in all", function()
    local sa = service_account("pkcs8")
    em:control("faults", { match = "token", status = 503, message = "backend trouble", times = 50 })
    local saved_hold = credentials.TOKEN_FAILURE_HOLD
    local ok, perr = pcall(function()
      local before = token_requests(JWT_GRANT)
      local client = assert(new_client({ credentials = sa.key_file, retry = { initial = 0.05, max_delay = 0.1 } }))
      local retries = 0
      local res, err = client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" },
        nil, { on_retry = function() retries = retries + 1 end })
      assert.is_nil(res)
      assert.equal("auth", err.kind, tostring(err))
      assert.truthy(tostring(err):find("HTTP 503", 1, true), tostring(err))
      assert.is_true(err.retryable, "still a transient failure (a batch fails the file, not the run)")
      assert.equal(4, retries, "the call tried again")
      assert.equal(3, token_requests(JWT_GRANT) - before)
      client:close()
      -- Once the hold is over, the token endpoint is asked again.
      em:control("faults", { replace = true, rules = { { match = "token", status = 503, times = 3 } } })
      credentials.TOKEN_FAILURE_HOLD = 0.5
      client = assert(new_client({ credentials = sa.key_file }))
      assert.is_nil(client:credential():token())
      assert.is_nil(client:credential():token())
      assert.equal(6, token_requests(JWT_GRANT) - before, "held")
      core.sleep(0.6)
      assert(client:credential():token())
      assert.equal(7, token_requests(JWT_GRANT) - before)
      client:close()
    end)
    credentials.TOKEN_FAILURE_HOLD = saved_hold
    em:control("faults", { replace = true, rules = {} })
    assert(ok, perr)
  end)
end)

-- ---- the token cache ------------------------------------------------------------------------

describe("token cache", function()
  local function mode(path)
    return (H.check_run("stat -c %a " .. H.q(path)):gsub("%s+$", ""))
  end

  it("keeps tokens in 0600 files of a 0700 directory, one per credential and scope set", function()
    local sa = service_account("pkcs8")
    local dir = H.tmpdir() .. "/xdg/healthcare"
    local before = token_requests(JWT_GRANT)
    local c1 = assert(new_client({ credentials = sa.key_file, token_cache = dir }))
    store_one(c1)
    assert.equal(1, token_requests(JWT_GRANT) - before)
    assert.equal("700", mode(dir))
    local files = H.check_run("ls " .. H.q(dir))
    local name = files:match("^(token%-%x+%.json)\n$")
    assert.truthy(name, files)
    assert.equal("600", mode(dir .. "/" .. name))
    local doc = cjson.decode(H.file_bytes(dir .. "/" .. name))
    assert.same({ "access_token", "expires_at", "lifetime" }, sorted_keys(doc))
    assert.equal(c1:credential():token(), doc.access_token)
    assert_no_secrets(H.file_bytes(dir .. "/" .. name), H.pem_runs(sa.private_key_pem), "cache file")
    -- A second client (a second run of the command) uses it.
    store_one(assert(new_client({ credentials = sa.key_file, token_cache = dir })))
    assert.equal(1, token_requests(JWT_GRANT) - before)
    -- Another scope set is another entry.
    local c3 = assert(new_client({ credentials = sa.key_file, token_cache = dir, scopes = { PLATFORM } }))
    store_one(c3)
    assert.equal(2, token_requests(JWT_GRANT) - before)
    assert.equal(2, select(2, H.check_run("ls " .. H.q(dir)):gsub("\n", "")))
  end)

  it("ignores an entry that others may read, and never stores an authorized user's secrets", function()
    local u = em:authorized_user()
    local dir = H.tmpdir() .. "/c"
    store_one(assert(new_client({ credentials = u.key_file, token_cache = dir })))
    local name = H.check_run("ls " .. H.q(dir)):match("(token%-%x+%.json)")
    local text = H.file_bytes(dir .. "/" .. name)
    assert_no_secrets(text, { u.refresh_token, u.client_secret }, "cache file")
    H.check_run("chmod 644 " .. H.q(dir .. "/" .. name))
    local before = token_requests("refresh_token")
    store_one(assert(new_client({ credentials = u.key_file, token_cache = dir })))
    assert.equal(1, token_requests("refresh_token") - before)
    assert.equal("600", mode(dir .. "/" .. name)) -- rewritten
  end)

  it("is off unless asked for, and never used for self-signed JWTs", function()
    local sa = service_account("pkcs8")
    local home, xdg = H.tmpdir(), H.tmpdir()
    local function listing()
      return H.check_run("cd " .. H.q(home) .. " && find . -type f; cd " .. H.q(xdg) .. " && find . -type f")
    end
    store_one(assert(new_client({ credentials = sa.key_file, env = { HOME = home, XDG_CACHE_HOME = xdg } })))
    store_one(assert(new_client({ credentials = sa.key_file, self_signed_jwt = true, token_cache = true,
      env = { HOME = home, XDG_CACHE_HOME = xdg } })))
    assert.equal("", listing())
    store_one(assert(new_client({ credentials = sa.key_file, token_cache = true,
      env = { HOME = home, XDG_CACHE_HOME = xdg } })))
    assert.truthy(listing():match("^%./healthcare/token%-%x+%.json\n$"))
    store_one(assert(new_client({ credentials = sa.key_file, token_cache = true, env = { HOME = home } })))
    assert.truthy(listing():match("^%./%.cache/healthcare/token%-%x+%.json\n%./healthcare/token%-%x+%.json\n$"))
  end)

  it("lives in $XDG_CACHE_HOME/healthcare, else ~/.cache/healthcare", function()
    local env = {}
    local getenv = function(k) return env[k] end
    assert.is_nil(token_cache.dir(getenv))
    env.HOME = "/home/u"
    assert.equal("/home/u/.cache/healthcare", token_cache.dir(getenv))
    env.XDG_CACHE_HOME = "relative/ignored"
    assert.equal("/home/u/.cache/healthcare", token_cache.dir(getenv))
    env.XDG_CACHE_HOME = "/var/cache/u"
    assert.equal("/var/cache/u/healthcare", token_cache.dir(getenv))
  end)
end)

-- ---- bad inputs -----------------------------------------------------------------------------

describe("bad credentials", function()
  it("are errors of kind auth that say what to fix and quote no secret", function()
    local good = service_account("pkcs8", false)
    local ec = H.tmpdir() .. "/ec.pem"
    H.check_run("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " .. H.q(ec))
    local dir = H.tmpdir()
    local function file(name, text) return H.write_file(dir .. "/" .. name, text) end
    local function sa_with(changes)
      local t = {}
      for k, v in pairs(good.info) do t[k] = v end
      for k, v in pairs(changes) do t[k] = v end
      if changes.private_key == false then t.private_key = nil end
      return cjson.encode(t)
    end
    local KNOWN_TYPES = "'service_account', 'authorized_user', 'impersonated_service_account', 'external_account' "
      .. "or 'external_account_authorized_user'"
    local cases = {
      { dir .. "/none.json", "cannot read credentials file '%s': No such file or directory" },
      { file("garbage.json", "{ not json"),
        "credentials file '%s' is not valid JSON (Expected object key string but found invalid token at "
          .. "character 3); expected a service account key or another Application Default Credentials file" },
      { file("pem.json", good.private_key_pem), "credentials file '%s' is not valid JSON (Expected value but found "
          .. "invalid number at character 1); expected a service account key or another Application Default Credentials file" },
      { file("array.json", "[1, 2]"),
        "credentials file '%s' must hold a JSON object (a service account key or another Application Default Credentials file)" },
      { file("string.json", '"key"'),
        "credentials file '%s' must hold a JSON object (a service account key or another Application Default Credentials file)" },
      { file("notype.json", '{"client_email": "a@b"}'),
        "credentials file '%s' has no 'type'; expected " .. KNOWN_TYPES },
      { file("gdch.json", '{"type": "gdch_service_account"}'),
        "credentials file '%s' has type 'gdch_service_account', which is not supported; expected " .. KNOWN_TYPES },
      { file("sa-empty.json", '{"type": "service_account"}'),
        "credentials file '%s': missing 'client_email', 'private_key' (required for type 'service_account')" },
      { file("sa-nokey.json", sa_with({ private_key = false })),
        "credentials file '%s': missing 'private_key' (required for type 'service_account')" },
      { file("sa-number.json", sa_with({ client_email = 5 })), "credentials file '%s': 'client_email' must be a string" },
      { file("sa-escaped.json", sa_with({ private_key = good.private_key_pem:gsub("\n", "\\n") })),
        "credentials file '%s': 'private_key' is not a usable RSA private key: " .. NO_PEM .. USE_AS_DOWNLOADED },
      { file("sa-cut.json", sa_with({ private_key = truncated(good.private_key_pem) })),
        "credentials file '%s': 'private_key' is not a usable RSA private key: the PEM block does not hold a "
          .. "valid private key: too long" .. USE_AS_DOWNLOADED },
      { file("sa-ec.json", sa_with({ private_key = H.file_bytes(ec) })),
        "credentials file '%s': 'private_key' is not a usable RSA private key: the private key is not an RSA "
          .. "key; RS256 needs RSA" .. USE_AS_DOWNLOADED },
      { file("sa-uri.json", sa_with({ token_uri = "ftp://example.com/token" })),
        "credentials file '%s': 'token_uri' must be an http(s) URL, got 'ftp://example.com/token'" },
      { file("au-half.json", '{"type": "authorized_user", "client_id": "c", "refresh_token": "r-1234567890"}'),
        "credentials file '%s': missing 'client_secret' (required for type 'authorized_user')" },
    }
    local secrets = H.pem_runs(good.private_key_pem)
    secrets[#secrets + 1] = "r-1234567890"
    for _, case in ipairs(cases) do
      local client, err = new_client({ credentials = case[1] })
      assert.is_nil(client, case[1])
      assert.equal("auth", err.kind)
      assert.equal(string.format(case[2], case[1]), err.message)
      assert_no_secrets(err.message, secrets, "error")
    end
    -- Tables get the same checks.
    local _, err = new_client({ credentials = { type = "service_account", client_email = "a@b" } })
    assert.equal("credentials table: missing 'private_key' (required for type 'service_account')", err.message)
  end)

  it("a key the token endpoint does not know is an auth error at the first request", function()
    local sa = service_account("pkcs1", false)
    local lines = {}
    local client = assert(new_client({ credentials = sa.key_file, debug = function(l) lines[#lines + 1] = l end }))
    local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom", data = "x" })
    assert.is_nil(res)
    assert.equal("auth", err.kind)
    assert.equal(400, err.http_status)
    assert.equal("service account " .. sa.client_email .. ": token endpoint " .. em.token_uri .. ": HTTP 400 invalid_grant: "
      .. "Invalid JWT Signature.; check that the key is current (not deleted or disabled), that the service account "
      .. "exists, and that this machine's clock is right", err.message)
    assert_no_secrets(err.message .. table.concat(lines, "\n"), H.pem_runs(sa.private_key_pem), "error and debug output")
  end)

  it("wrong option types raise", function()
    assert.error_matches(function() credentials.from_options({ refresh_margin = "soon" }) end,
      "bad option 'refresh_margin'")
    assert.error_matches(function() credentials.from_options({ credentials = 42 }) end,
      "bad option 'credentials' %(path, table or false expected, got number%)")
    assert.error_matches(function() credentials.from_options({ subject = true }) end,
      "bad option 'subject' %(string expected, got boolean%)")
  end)
end)

describe("debug output", function()
  it("shows token requests and never a token, key, assertion or refresh token", function()
    local sa = service_account("pkcs8")
    local u = em:authorized_user()
    local lines = {}
    local sink = function(l) lines[#lines + 1] = l end
    local c1 = assert(new_client({ credentials = sa.key_file, debug = sink }))
    store_one(c1)
    local c2 = assert(new_client({ credentials = u.key_file, debug = sink }))
    store_one(c2)
    local c3 = assert(new_client({ credentials = sa.key_file, self_signed_jwt = true, debug = sink }))
    store_one(c3)
    local c4 = assert(new_client({ env = { HOME = H.tmpdir(), GCE_METADATA_HOST = em.metadata_host }, debug = sink }))
    store_one(c4)
    local text = table.concat(lines, "\n")
    assert.truthy(text:find("> POST " .. em.token_uri .. " (token for service account " .. sa.client_email .. ")", 1, true))
    assert.truthy(text:find("> Content-Type: application/x-www-form-urlencoded", 1, true))
    assert.truthy(text:find("> Metadata-Flavor: Google", 1, true))
    assert.truthy(text:find("> Authorization: REDACTED", 1, true))
    local secrets = H.pem_runs(sa.private_key_pem)
    for _, s in ipairs({ u.refresh_token, u.client_secret, (c1:credential():token()), (c2:credential():token()),
      (c3:credential():token()) }) do
      secrets[#secrets + 1] = s
    end
    assert_no_secrets(text, secrets, "debug output")
    assert.is_nil(text:find("tok-", 1, true), "an issued token in the debug output")
  end)
end)
