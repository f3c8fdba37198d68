-- SPDX-License-Identifier: MIT
-- The `healthcare` command's credentials, run as a process (build/bin/healthcare) in a clean
-- environment against the test bed's emulator: --credentials FILE, Application Default
-- Credentials from the environment, --scope, the token cache between runs (0600 files under
-- $XDG_CACHE_HOME/healthcare, --no-token-cache), a cached token the API refuses, exit codes of
-- bad credentials and of two credential flags (a flag over a variable of the shell), and a grep
-- of everything the command prints (with --debug) for secrets.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/41-credentials_cli_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end

local cjson = require "cjson"
local core = require "healthcare.core"
local credentials = require "healthcare.auth.credentials"
local token_cache = require "healthcare.auth.token_cache"
local params = require "healthcare.params"

local E = H.env
local LUA = os.getenv("HC_LUA") or "lua5.4"
local METHOD = "locations-datasets-dicom-stores-studies-store-instances"
local JWT_GRANT = credentials.JWT_GRANT
local CLOSED = "127.0.0.1:1"
-- This file's own emulator: its counters, settings and faults are not shared with other files.
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

-- Runs the command in an environment holding only env (plus PATH and the Lua paths):
-- stdout, stderr, exit code.
local function healthcare(env, args)
  local words = { "env", "-i", "PATH=" .. (os.getenv("PATH") or "/usr/bin:/bin"),
    "LUA_PATH=" .. (os.getenv("LUA_PATH") or ""), "LUA_CPATH=" .. (os.getenv("LUA_CPATH") or "") }
  for k, v in pairs(env) do words[#words + 1] = k .. "=" .. v end
  words[#words + 1] = LUA
  words[#words + 1] = H.BIN
  for _, a in ipairs(args) do words[#words + 1] = a end
  for i, w in ipairs(words) do words[i] = H.q(w) end
  return H.run(table.concat(words, " "))
end

local new_file = H.fresh_files(30)

-- The seed's StoreInstances of one new DICOM file, with extra options; returns stdout, stderr,
-- exit code and the file's info.
local function store(env, extra)
  local f = new_file()
  local args = { "projects", METHOD, E.store, "studies", "-r", ".", "content-type=application/dicom",
    "data=@" .. f.path, "--endpoint", em.endpoint }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  local so, se, code = healthcare(env, args)
  return so, se, code, f
end

local function assert_stored(so, se, code, f)
  assert.equal(0, code, se)
  local doc = cjson.decode(so)
  assert.equal(1, #doc["00081199"].Value, so)
  assert.truthy(H.orthanc_find_instance(f.sop_instance_uid))
end

local function cache_files(dir)
  local so = H.run("ls " .. H.q(dir) .. " 2>/dev/null")
  local list = {}
  for name in so:gmatch("[^\n]+") do list[#list + 1] = name end
  return list
end

-- Fails when text holds a secret, a JWT or a token the emulator issued.
local function assert_no_secrets(text, secrets)
  for _, s in ipairs(secrets) do
    assert.is_nil(text:find(s, 1, true), "output holds a secret")
  end
  assert.is_nil(H.find_jwt(text), "output holds a JWT")
  assert.is_nil(text:find("tok-", 1, true), "output holds an issued token")
end

describe("healthcare --credentials FILE", function()
  for _, form in ipairs({ "pkcs8", "pkcs1" }) do
    it("stores with a service account key (" .. form .. ")", function()
      local sa = em:service_account({ form = form })
      local home = H.tmpdir()
      local before = em:count("token_requests", JWT_GRANT)
      local so, se, code, f = store({ HOME = home, GCE_METADATA_HOST = CLOSED }, { "--credentials", sa.key_file })
      assert_stored(so, se, code, f)
      assert.equal(1, em:count("token_requests", JWT_GRANT) - before)
    end)
  end

  it("stores with an authorized_user file", function()
    local u = em:authorized_user()
    local before = em:count("token_requests", "refresh_token")
    local so, se, code, f = store({ HOME = H.tmpdir(), GCE_METADATA_HOST = CLOSED }, { "--credentials", u.key_file })
    assert_stored(so, se, code, f)
    assert.equal(1, em:count("token_requests", "refresh_token") - before)
  end)

  it("exits 2 with what to fix when the file is bad or refused", function()
    local dir = H.tmpdir()
    local bad = H.write_file(dir .. "/bad.json", '{"type": "service_account", "client_email": "a@b"}')
    local env = { HOME = dir, GCE_METADATA_HOST = CLOSED }
    local _, se, code = store(env, { "--credentials", bad })
    assert.equal(2, code)
    assert.equal("healthcare: credentials file '" .. bad .. "': missing 'private_key' (required for type "
      .. "'service_account')\n", se)
    local _, se2, code2 = store(env, { "--credentials", dir .. "/none.json" })
    assert.equal(2, code2)
    assert.equal("healthcare: cannot read credentials file '" .. dir .. "/none.json': No such file or directory\n", se2)
    local u = em:authorized_user()
    local revoked = H.write_file(dir .. "/revoked.json", cjson.encode({ type = "authorized_user",
      client_id = u.client_id, client_secret = u.client_secret, refresh_token = "refresh-revoked-42",
      token_uri = em.token_uri }))
    local _, se3, code3 = store(env, { "--credentials", revoked })
    assert.equal(2, code3)
    assert.equal("healthcare: authorized user of client " .. u.client_id .. ": token endpoint " .. em.token_uri
      .. ": HTTP 400 invalid_grant: Bad Request; the refresh token was revoked or has expired: run "
      .. "'gcloud auth application-default login' again\n", se3)
    assert_no_secrets(se3, { "refresh-revoked-42", u.client_secret })
  end)
end)

describe("healthcare with two credentials", function()
  it("refuses two credential flags, naming both, before anything is sent", function()
    local sa = em:service_account()
    local env = { HOME = H.tmpdir(), GCE_METADATA_HOST = CLOSED }
    local before = em:count("token_requests", JWT_GRANT)
    local so, se, code = healthcare(env, { "search", E.store, "--endpoint", em.endpoint, "--credentials", sa.key_file,
      "--access-token", em.token, "--no-token-cache" })
    assert.equal(2, code, se)
    assert.equal("", so)
    assert.equal("healthcare search: --credentials and --access-token cannot be used together: a request carries one "
      .. "credential\n", se)
    assert.equal(before, em:count("token_requests", JWT_GRANT))
  end)

  it("takes the flag over GOOGLE_APPLICATION_CREDENTIALS and $HEALTHCARE_BASIC_AUTH set in the shell", function()
    local home = H.tmpdir()
    local env = { HOME = home, GCE_METADATA_HOST = CLOSED, GOOGLE_APPLICATION_CREDENTIALS = home .. "/none.json",
      HEALTHCARE_BASIC_AUTH = "alice:secret-basic-1" }
    local so, se, code = healthcare(env, { "search", E.store, "--endpoint", em.endpoint, "--access-token", em.token })
    assert.equal(0, code, se)
    assert.is_nil((so .. se):find("secret-basic-1", 1, true))
  end)
end)

describe("healthcare without --credentials", function()
  it("$HEALTHCARE_BASIC_AUTH (a PACS's password) never goes to Google: a dicomStore name takes Google's "
    .. "credentials", function()
    local sa = em:service_account()
    local env = { HOME = H.tmpdir(), GCE_METADATA_HOST = CLOSED, GOOGLE_APPLICATION_CREDENTIALS = sa.key_file,
      HEALTHCARE_BASIC_AUTH = "alice:secret-basic-2" }
    local before = em:count("token_requests", JWT_GRANT)
    local so, se, code = healthcare(env, { "search", E.store, "--endpoint", em.endpoint, "--no-token-cache",
      "--debug" })
    assert.equal(0, code, se)
    assert.equal(1, em:count("token_requests", JWT_GRANT) - before)
    assert.is_nil((so .. se):find("Basic", 1, true), se)
  end)

  it("finds GOOGLE_APPLICATION_CREDENTIALS, then the gcloud file, then the metadata server", function()
    local sa, u = em:service_account(), em:authorized_user()
    local home = H.tmpdir()
    H.check_run("mkdir -p " .. H.q(home .. "/.config/gcloud") .. " && cp " .. H.q(u.key_file) .. " "
      .. H.q(home .. "/.config/gcloud/application_default_credentials.json"))
    local env = { HOME = home, GCE_METADATA_HOST = em.metadata_host, GOOGLE_APPLICATION_CREDENTIALS = sa.key_file }
    local jwt, rt, md = em:count("token_requests", JWT_GRANT), em:count("token_requests", "refresh_token"),
      em:count("metadata_requests")
    assert_stored(store(env))
    assert.equal(1, em:count("token_requests", JWT_GRANT) - jwt)
    env.GOOGLE_APPLICATION_CREDENTIALS = nil
    assert_stored(store(env))
    assert.equal(1, em:count("token_requests", "refresh_token") - rt)
    assert.equal(0, em:count("metadata_requests") - md)
    H.check_run("rm " .. H.q(home .. "/.config/gcloud/application_default_credentials.json"))
    assert_stored(store(env))
    assert.equal(1, em:count("metadata_requests") - md)
    env.GCE_METADATA_HOST = CLOSED
    local _, se, code = store(env)
    assert.equal(2, code)
    assert.truthy(se:find("^healthcare: no Google credentials found; looked at: GOOGLE_APPLICATION_CREDENTIALS "
      .. "%(not set%); " .. home:gsub("%p", "%%%0") .. "/%.config/gcloud/application_default_credentials%.json "
      .. "%(no such file%); the metadata server at http://127%.0%.0%.1:1 %("), se)
  end)
end)

describe("healthcare's token cache", function()
  it("reuses a token between runs, per scope set, and --no-token-cache skips it", function()
    local sa = em:service_account()
    local xdg = H.tmpdir()
    local env = { HOME = H.tmpdir(), XDG_CACHE_HOME = xdg, GCE_METADATA_HOST = CLOSED }
    local creds = { "--credentials", sa.key_file }
    local before = em:count("token_requests", JWT_GRANT)
    assert_stored(store(env, creds))
    assert_stored(store(env, creds))
    assert.equal(1, em:count("token_requests", JWT_GRANT) - before)
    local dir = xdg .. "/healthcare"
    assert.equal("700", (H.check_run("stat -c %a " .. H.q(dir)):gsub("%s", "")))
    local files = cache_files(dir)
    assert.equal(1, #files)
    assert.equal("600", (H.check_run("stat -c %a " .. H.q(dir .. "/" .. files[1])):gsub("%s", "")))
    local text = H.file_bytes(dir .. "/" .. files[1])
    for _, run in ipairs(H.pem_runs(sa.private_key_pem)) do assert.is_nil(text:find(run, 1, true)) end
    -- --scope repeats; another scope set is another cache entry (order does not matter).
    local scoped = { "--credentials", sa.key_file, "--scope", params.SCOPE_CLOUD_PLATFORM,
      "--scope", params.SCOPE_CLOUD_HEALTHCARE }
    assert_stored(store(env, scoped))
    assert.equal(2, em:count("token_requests", JWT_GRANT) - before)
    scoped[4], scoped[6] = scoped[6], scoped[4]
    assert_stored(store(env, scoped))
    assert.equal(2, em:count("token_requests", JWT_GRANT) - before)
    assert.equal(2, #cache_files(dir))
    -- Off: a token request per run, nothing read or written.
    local off = { "--credentials", sa.key_file, "--no-token-cache" }
    assert_stored(store(env, off))
    assert_stored(store(env, off))
    assert.equal(4, em:count("token_requests", JWT_GRANT) - before)
    assert.equal(2, #cache_files(dir))
    local env2 = { HOME = H.tmpdir(), XDG_CACHE_HOME = H.tmpdir(), GCE_METADATA_HOST = CLOSED }
    assert_stored(store(env2, off))
    assert.equal(0, #cache_files(env2.XDG_CACHE_HOME .. "/healthcare"))
    -- Without XDG_CACHE_HOME: ~/.cache/healthcare.
    local env3 = { HOME = H.tmpdir(), GCE_METADATA_HOST = CLOSED }
    assert_stored(store(env3, creds))
    assert.equal(1, #cache_files(env3.HOME .. "/.cache/healthcare"))
  end)

  it("replaces a cached token the API refuses (401), with one retry", function()
    local sa = em:service_account()
    local xdg = H.tmpdir()
    local env = { HOME = H.tmpdir(), XDG_CACHE_HOME = xdg, GCE_METADATA_HOST = CLOSED }
    -- Plant a token the emulator issued and let expire where the command will look for it.
    local cred = assert(credentials.from_options({ credentials = sa.key_file }))
    local stale = em:control("tokens", { expires_in = 1 }).access_token
    assert(token_cache.open(xdg .. "/healthcare"):put(cred.identity, params.SCOPE_CLOUD_HEALTHCARE, stale,
      os.time() + 3000, 3600))
    core.sleep(1.2)
    local before, expired = em:count("token_requests", JWT_GRANT), em:count("auth_kinds", "expired_token")
    assert_stored(store(env, { "--credentials", sa.key_file }))
    assert.equal(1, em:count("auth_kinds", "expired_token") - expired)
    assert.equal(1, em:count("token_requests", JWT_GRANT) - before)
    local files = cache_files(xdg .. "/healthcare")
    assert.equal(1, #files)
    assert.is_nil(H.file_bytes(xdg .. "/healthcare/" .. files[1]):find(stale, 1, true))
  end)
end)

describe("healthcare --debug", function()
  it("prints no token, key, assertion, refresh token or client secret", function()
    local sa, u = em:service_account({ form = "pkcs1" }), em:authorized_user()
    local out = {}
    local function run(env, extra)
      local so, se, code, f = store(env, extra)
      assert_stored(so, se, code, f)
      out[#out + 1] = so .. se
    end
    local xdg = H.tmpdir()
    local env = { HOME = H.tmpdir(), XDG_CACHE_HOME = xdg, GCE_METADATA_HOST = CLOSED }
    run(env, { "--debug", "--credentials", sa.key_file })
    run(env, { "--debug", "--credentials", sa.key_file }) -- from the token cache
    run(env, { "--debug", "--credentials", u.key_file })
    run({ HOME = H.tmpdir(), GCE_METADATA_HOST = em.metadata_host }, { "--debug" })
    local text = table.concat(out, "\n")
    assert.truthy(text:find("Authorization: REDACTED", 1, true))
    assert.truthy(text:find("token cache: using the cached token of service account " .. sa.client_email, 1, true))
    local secrets = H.pem_runs(sa.private_key_pem)
    secrets[#secrets + 1] = u.refresh_token
    secrets[#secrets + 1] = u.client_secret
    for _, name in ipairs(cache_files(xdg .. "/healthcare")) do
      secrets[#secrets + 1] = cjson.decode(H.file_bytes(xdg .. "/healthcare/" .. name)).access_token
    end
    assert.is_true(#secrets > 3)
    assert_no_secrets(text, secrets)
  end)
end)
