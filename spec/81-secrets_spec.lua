-- SPDX-License-Identifier: MIT
-- Secrets stay secret: every command form and error path this file can reach is run with a known
-- access token, API key, service account private key, authorized_user client secret and refresh
-- token (and a wrong token and key), with --debug where there is one, and everything that comes
-- out is searched for them: standard output and error, -o files, --json reports, journals, error
-- values and debug lines of the Lua API, and the token cache. None may appear, nor any JWT
-- (assertions, self-signed tokens) nor any access token the token endpoint issued, except that
-- the cache holds issued tokens (that is what it is for) in 0600 files of a 0700 directory.
-- A private emulator (this file's alone) plays Google.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/81-secrets_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson"
local core = require "healthcare.core"
local healthcare = require "healthcare"

local E = H.env
local BIN = H.BIN
local METHOD = "locations-datasets-dicom-stores-studies-store-instances"
local CLOSED = "http://127.0.0.1:1"
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

-- ---- the secrets -----------------------------------------------------------------------------

local TOKEN = E.token .. "-private"
local API_KEY = E.api_key .. "-private"
local BAD_TOKEN = "wrong-token-" .. core.random_hex(12)
local BAD_KEY = "wrong-key-" .. core.random_hex(12)

local home = H.tmpdir()
local cache_home = home .. "/cache"

-- A service account registered with the emulator, and the same key file pointing elsewhere.
local sa = {}
do
  local dir = H.tmpdir()
  H.check_run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. H.q(dir .. "/k.pem")
    .. " 2>/dev/null && openssl pkey -in " .. H.q(dir .. "/k.pem") .. " -pubout -out " .. H.q(dir .. "/p.pem"))
  sa.kid = "kid-" .. core.random_hex(6)
  sa.email = sa.kid .. "@test-project.iam.gserviceaccount.com"
  sa.pem = H.file_bytes(dir .. "/k.pem")
  em:control("keys", { kid = sa.kid, client_email = sa.email, public_key_pem = H.file_bytes(dir .. "/p.pem") })
  local function key_file(name, fields)
    local t = { type = "service_account", project_id = "test-project", private_key_id = sa.kid,
      private_key = sa.pem, client_email = sa.email, client_id = "1", token_uri = em.token_uri }
    for k, v in pairs(fields or {}) do t[k] = v end
    return H.write_file(dir .. "/" .. name, cjson.encode(t))
  end
  sa.file = key_file("sa.json")
  sa.closed_file = key_file("sa-closed.json", { token_uri = CLOSED .. "/token" })
  -- One base64 line of the key reversed: it still loads, as another key the token endpoint
  -- refuses; one line garbled: it no longer loads.
  local lines = {}
  for line in sa.pem:gmatch("[^\n]+") do lines[#lines + 1] = line end
  local saved = lines[5]
  lines[5] = saved:reverse()
  sa.broken_file = key_file("sa-broken.json", { private_key = table.concat(lines, "\n") .. "\n" })
  lines[5] = string.rep("*", #saved)
  sa.garbled_file = key_file("sa-garbled.json", { private_key = table.concat(lines, "\n") .. "\n" })
  -- Not JSON at all: the key file cut in the middle of the key.
  local text = H.file_bytes(sa.file)
  sa.cut_file = H.write_file(dir .. "/sa-cut.json", text:sub(1, math.floor(#text / 2)))
end

local au = em:authorized_user()

-- Runs of 16 characters of the key's base64 lines: any quoted piece of the key shows up.
local PEM_RUNS = {}
for line in sa.pem:gmatch("[^\n]+") do
  if not line:find("-----", 1, true) then
    for i = 1, #line - 15, 8 do PEM_RUNS[#PEM_RUNS + 1] = line:sub(i, i + 15) end
  end
end

-- A password in a URL (http://user:password@host/...), which is refused, never echoed.
local PASSWORD = "url-password-" .. core.random_hex(8)

local SECRETS = { TOKEN, API_KEY, BAD_TOKEN, BAD_KEY, au.client_secret, au.refresh_token, PASSWORD }

-- Fails when text holds a secret; `where` names the text. issued_ok: the token cache.
local function assert_clean(text, where, issued_ok)
  for _, s in ipairs(SECRETS) do
    assert.is_nil(text:find(s, 1, true), where .. " holds a secret: " .. s:sub(1, 12) .. "...")
  end
  for _, run in ipairs(PEM_RUNS) do
    assert.is_nil(text:find(run, 1, true), where .. " holds part of the private key")
  end
  assert.is_nil(H.find_jwt(text), where .. " holds a JWT")
  if not issued_ok then
    assert.is_nil(text:find("tok-", 1, true), where .. " holds an access token the emulator issued")
  end
end

-- ---- running the command ---------------------------------------------------------------------

local files_pool = {}
local function new_file()
  if #files_pool == 0 then files_pool = H.gen_dicom({ count = 40, size = 2000 }) end
  return table.remove(files_pool)
end

-- Runs `healthcare args...` in a clean environment (plus env); checks its output and every file
-- in `outputs` for secrets; returns stdout, stderr, exit code.
local function run(args, env, outputs)
  -- The build's command finds its own Lua files and module (whatever Lua runs this spec).
  local words = { "env", "-i", "PATH=" .. (os.getenv("PATH") or "/usr/bin:/bin"),
    "HOME=" .. home, "XDG_CACHE_HOME=" .. cache_home }
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. v end
  words[#words + 1] = BIN
  for _, a in ipairs(args) do words[#words + 1] = a end
  for i, w in ipairs(words) do words[i] = H.q(w) end
  local so, se, code = H.run(table.concat(words, " "))
  local what = table.concat(args, " "):sub(1, 160)
  assert_clean(so, "stdout of `" .. what .. "`")
  assert_clean(se, "stderr of `" .. what .. "`")
  for _, p in ipairs(outputs or {}) do
    assert_clean(H.file_bytes(p) or "", p)
  end
  return so, se, code
end

local function seed(extra, endpoint)
  local args = { "projects", METHOD, E.store, "studies", "-r", ".", "content-type=application/dicom",
    "data=@" .. new_file().path, "--endpoint", endpoint or em.endpoint, "--debug" }
  for _, a in ipairs(extra) do args[#args + 1] = a end
  return args
end

local function store(extra, endpoint)
  local dir = H.tmpdir()
  local files = { new_file(), new_file(), new_file() }
  for _, f in ipairs(files) do H.check_run("cp " .. H.q(f.path) .. " " .. H.q(dir)) end
  local args = { "store", "--no-progress", "--debug", "--endpoint", endpoint or em.endpoint }
  for _, a in ipairs(extra) do args[#args + 1] = a end
  args[#args + 1] = E.store
  args[#args + 1] = dir
  return args
end

local function fault(rule) em:control("faults", { rule }) end

describe("the seed's form", function()
  it("leaks nothing when it stores with -p access-token and -p key, and writes -o", function()
    local out = H.tmpdir() .. "/out.json"
    local _, se, code = run(seed({ "-p", "access-token=" .. TOKEN, "-o", out }), nil, { out })
    assert.equal(0, code, se)
    assert.truthy(se:find("access_token=REDACTED", 1, true), se)
    _, se, code = run(seed({ "-p", "key=" .. API_KEY }))
    assert.equal(0, code, se)
    assert.truthy(se:find("key=REDACTED", 1, true), se)
  end)

  it("leaks nothing when the token or key is refused or the server cannot be reached", function()
    local _, se, code = run(seed({ "-p", "access-token=" .. BAD_TOKEN }))
    assert.equal(2, code, se)
    _, se, code = run(seed({ "-p", "key=" .. BAD_KEY }))
    assert.equal(2, code, se)
    _, se, code = run(seed({ "-p", "access-token=" .. TOKEN }, CLOSED .. "/v1"))
    assert.equal(1, code, se)
    assert.truthy(se:find("access_token=REDACTED", 1, true), se)
  end)

  it("leaks nothing with a service account key, from the cache, and from GOOGLE_APPLICATION_CREDENTIALS", function()
    local _, se, code = run(seed({ "--credentials", sa.file }))
    assert.equal(0, code, se)
    _, se, code = run(seed({ "--credentials", sa.file }))
    assert.equal(0, code, se)
    _, se, code = run(seed({}), { GOOGLE_APPLICATION_CREDENTIALS = sa.file })
    assert.equal(0, code, se)
  end)

  it("leaks nothing with an authorized_user file, nor when its grant is refused", function()
    local _, se, code = run(seed({ "--credentials", au.key_file, "--no-token-cache" }))
    assert.equal(0, code, se)
    fault({ match = "token", status = 400, error = "invalid_grant", message = "Bad Request", times = 1 })
    _, se, code = run(seed({ "--credentials", au.key_file, "--no-token-cache" }))
    assert.equal(2, code, se)
    assert.truthy(se:find("invalid_grant", 1, true), se)
  end)

  it("leaks nothing when the key file is broken, cut or its token endpoint unreachable", function()
    for _, f in ipairs({ sa.broken_file, sa.garbled_file, sa.cut_file, sa.closed_file }) do
      local _, se, code = run(seed({ "--credentials", f, "--no-token-cache" }))
      assert.equal(2, code, f .. ": " .. se)
    end
    -- The token endpoint refuses the assertion.
    fault({ match = "token", status = 400, error = "invalid_grant", message = "Invalid JWT Signature.", times = 1 })
    local _, se, code = run(seed({ "--credentials", sa.file, "--no-token-cache" }))
    assert.equal(2, code, se)
  end)
end)

describe("healthcare store", function()
  it("leaks nothing in its output, --json report and journal, stored or refused", function()
    local j = H.tmpdir() .. "/journal"
    local so, se, code = run(store({ "--access-token", TOKEN, "--journal", j, "--json" }), nil, { j })
    assert.equal(0, code, se)
    assert.equal(3, #cjson.decode(so).stored)
    local j2 = H.tmpdir() .. "/journal"
    so, se, code = run(store({ "--access-token", BAD_TOKEN, "--journal", j2, "--json", "--retry-max", "1" }), nil, { j2 })
    assert.equal(1, code, se)
    assert.equal(3, #cjson.decode(so).failed)
    so, se, code = run(store({ "--access-token", TOKEN, "--json", "--retry-max", "1" }, CLOSED .. "/v1"))
    assert.equal(1, code, se)
    assert.equal(3, #cjson.decode(so).failed)
  end)

  it("leaks nothing with a service account key, a retried 503 and a journal", function()
    local j = H.tmpdir() .. "/journal"
    fault({ match = "store", status = 503, retry_after = 0, times = 1 })
    local so, se, code = run(store({ "--credentials", sa.file, "--journal", j, "--json", "--max-instances", "1" }), nil, { j })
    assert.equal(0, code, se)
    assert.equal(3, #cjson.decode(so).stored)
    so, se, code = run(store({ "--credentials", au.key_file }))
    assert.equal(0, code, so .. se)
    so, se, code = run(store({ "--credentials", sa.garbled_file }))
    assert.equal(2, code, so .. se)
    so, se, code = run(store({ "--credentials", sa.broken_file, "--no-token-cache", "--retry-max", "1" }))
    assert.truthy(code ~= 0, so .. se)
  end)
end)

describe("the token cache", function()
  it("holds only issued tokens, in 0600 files of a 0700 directory", function()
    local dir = cache_home .. "/healthcare"
    local listing = H.check_run("find " .. H.q(cache_home) .. " -printf '%y %m %p\\n'")
    local n = 0
    for kind, mode, p in listing:gmatch("(%a) (%d+) ([^\n]+)") do
      if p:find(dir, 1, true) == 1 then
        if kind == "d" then
          assert.equal("700", mode, p)
        else
          assert.equal("600", mode, p)
          local text = H.file_bytes(p)
          assert_clean(text, p, true)
          assert.truthy(cjson.decode(text).access_token:find("^tok%-"), p)
          n = n + 1
        end
      end
    end
    assert.truthy(n >= 1, "no cached token: " .. listing)
  end)
end)

describe("the Lua API", function()
  -- Every line a debug sink received and every error, flattened to text.
  local log
  local function sink(line) log[#log + 1] = line end
  local function seen(...)
    for _, v in ipairs({ ... }) do
      if type(v) == "table" then
        log[#log + 1] = tostring(v)
        log[#log + 1] = H.json.encode(v) or ""
      elseif v ~= nil then
        log[#log + 1] = tostring(v)
      end
    end
  end
  before_each(function() log = {} end)
  after_each(function() assert_clean(table.concat(log, "\n"), "the Lua API's output") end)

  local body = function() return { content_type = "application/dicom", data = { file = new_file().path } } end

  it("leaks nothing in debug lines and errors with tokens and keys", function()
    for _, opts in ipairs({
      { access_token = TOKEN }, { access_token = BAD_TOKEN }, { api_key = API_KEY }, { api_key = BAD_KEY },
      { params = { ["access-token"] = TOKEN } }, { params = { key = BAD_KEY } },
    }) do
      for _, endpoint in ipairs({ em.endpoint, CLOSED .. "/v1" }) do
        opts.endpoint, opts.debug = endpoint, sink
        if opts.params then opts.credentials = false end
        local c = assert(healthcare.new(opts))
        seen(c:store_instances(E.store, "studies", body()))
        c:close()
      end
    end
    assert.truthy(#log > 10)
  end)

  it("leaks nothing in debug lines, errors and reports with key files", function()
    for _, f in ipairs({ sa.file, au.key_file, sa.broken_file, sa.garbled_file, sa.cut_file, sa.closed_file }) do
      local c, err = healthcare.new { endpoint = em.endpoint, credentials = f, debug = sink }
      seen(err)
      if c then
        seen(c:store_instances(E.store, "studies", body()))
        local s = assert(c:dicom_store(E.store))
        local j = H.tmpdir() .. "/journal"
        seen(s:store({ new_file().path }, { journal = j }))
        seen(H.file_bytes(j))
        c:close()
      end
    end
    -- The key as a table, and a token request the endpoint refuses.
    fault({ match = "token", status = 400, error = "invalid_grant", message = "Invalid JWT Signature.", times = 1 })
    local c = assert(healthcare.new { endpoint = em.endpoint, debug = sink, credentials = cjson.decode(H.file_bytes(sa.file)) })
    seen(c:store_instances(E.store, "studies", body()))
    c:close()
  end)
end)

-- ---- a server that answers what it likes: the capture server ---------------------------------

local cap_dir = H.tmpdir()
local CAP_LOG, CAP_ANSWERS = cap_dir .. "/captured.jsonl", cap_dir .. "/answers.json"
local CAP, stop_cap = H.start_server("capture server", "/usr/bin/python3 " .. H.q(E.support .. "/capture_server.py")
  .. " " .. H.q(CAP_LOG) .. " " .. H.q(CAP_ANSWERS), cap_dir)
teardown(stop_cap)

-- The next requests to the capture server get these answers ({ status, content_type, body }).
local function answers(list) H.write_file(CAP_ANSWERS, cjson.encode(list)) end

describe("a 2xx answer that is not text", function()
  -- What the audit's server did: the Authorization header it got, echoed under a media type the
  -- client keeps byte for byte (application/octet-stream).
  local ECHO = "echo: Bearer " .. TOKEN
  local DATASET = "projects/p/locations/l/datasets/d"
  local log
  before_each(function() log = {} end)
  after_each(function() assert_clean(table.concat(log, "\n"), "the Lua API's output") end)
  local function client()
    return assert(healthcare.new { endpoint = CAP .. "/v1", access_token = TOKEN, retry = { max_attempts = 1 },
      debug = function(line) log[#log + 1] = line end })
  end
  local function octets(body) return { status = 200, content_type = "application/octet-stream", body = body } end
  local function body_of(f) return { content_type = "application/dicom", data = { file = f.path } } end

  it("quoted in client:call's error: the token redacted", function()
    answers({ octets(ECHO) })
    local c = client()
    local res, err = c:call("projects.locations.datasets.get", { name = DATASET })
    c:close()
    assert.is_nil(res)
    log[#log + 1] = err.message
    assert.matches("the answer is not a JSON object %(application/octet%-stream%): echo: REDACTED$", err.message)
  end)

  it("read as JSON by client:call and client:pages: the token redacted in the answer", function()
    answers({ octets(cjson.encode({ name = ECHO })), octets(cjson.encode({ datasets = { { name = ECHO } } })),
      octets(ECHO) })
    local c = client()
    local doc = assert(c:call("projects.locations.datasets.get", { name = DATASET }))
    assert.equal("echo: REDACTED", doc.name)
    local pages = c:pages("projects.locations.datasets.list", { parent = "projects/p/locations/l" })
    local items = assert(pages:all())
    assert.equal("echo: REDACTED", items[1].name)
    local _, err = c:pages("projects.locations.datasets.list", { parent = "projects/p/locations/l" }):all()
    c:close()
    log[#log + 1] = H.json.encode(doc) .. H.json.encode(items) .. tostring(err)
    assert.truthy(tostring(err):find("echo: REDACTED", 1, true), tostring(err))
  end)

  it("quoted in a search's error, and an operation name of a delete: the token redacted", function()
    answers({ octets(ECHO), octets(cjson.encode({ name = ECHO })) })
    local c = client()
    local ds = assert(c:dicom_store(DATASET .. "/dicomStores/s"))
    local _, err = assert(ds:search_studies({})):all()
    log[#log + 1] = tostring(err)
    assert.truthy(tostring(err):find("not a DICOM JSON list (not a JSON array): echo: REDACTED", 1, true), tostring(err))
    local res
    res, err = ds:delete_study("1.2.3", { retry = { max_attempts = 1 } })
    c:close()
    assert.is_nil(res)
    log[#log + 1] = tostring(err)
    assert.truthy(tostring(err):find("'echo: REDACTED'", 1, true), tostring(err))
  end)

  it("quoted as a STOW-RS answer's error, of store_instances and of store: the token redacted", function()
    answers({ octets(ECHO), octets(ECHO) })
    local c = client()
    local parent = DATASET .. "/dicomStores/s"
    local res, err = c:store_instances(parent, "studies", body_of(new_file()))
    assert.is_nil(res)
    log[#log + 1] = tostring(err)
    assert.truthy(tostring(err):find("StoreInstances: HTTP 200 HTTP_200: echo: REDACTED", 1, true), tostring(err))
    local report = assert(c:dicom_store(parent)):store({ new_file().path }, { retry = { max_attempts = 1 } })
    c:close()
    log[#log + 1] = H.json.encode(report)
    assert.equal(1, #report.failed)
    assert.truthy(report.failed[1].reason:find("echo: REDACTED", 1, true), report.failed[1].reason)
  end)

  it("quoted by the seed form's error, with --debug: the token redacted", function()
    answers({ octets(ECHO) })
    local _, se, code = run({ "projects", "locations-datasets-get", DATASET, "--endpoint", CAP .. "/v1",
      "-p", "access-token=" .. TOKEN, "--debug" })
    assert.equal(1, code, se)
    assert.truthy(se:find("echo: Bearer REDACTED", 1, true), se)
  end)
end)

describe("a user:password in a URL", function()
  -- How many requests the capture server (also the proxy below) has seen.
  local function captured() return select(2, (H.file_bytes(CAP_LOG) or ""):gsub("\n", "")) end
  local function url(path) return "http://admin:" .. PASSWORD .. "@" .. CAP:gsub("^http://", "") .. path end
  local log
  before_each(function() log = {} end)
  after_each(function() assert_clean(table.concat(log, "\n"), "the Lua API's output") end)
  local function sink(line) log[#log + 1] = line end

  it("is refused as a base URL, an endpoint and a request's url, naming neither password nor user", function()
    local before = captured()
    local ds, err = healthcare.dicomweb(url("/dicom-web"), { debug = sink })
    assert.is_nil(ds)
    log[#log + 1] = tostring(err)
    assert.equal("usage", err.kind)
    assert.matches("^DICOMweb base URL must not hold a user name or password", err.message)
    assert.is_nil(err.message:find("admin", 1, true))
    local c
    c, err = healthcare.new { endpoint = url("/v1"), access_token = TOKEN, debug = sink }
    assert.is_nil(c)
    log[#log + 1] = tostring(err)
    assert.matches("^endpoint must not hold a user name or password", err.message)
    c = assert(healthcare.new { endpoint = CAP .. "/v1", credentials = false, debug = sink })
    local res
    res, err = c:send { url = url("/dicom-web/studies") }
    c:close()
    assert.is_nil(res)
    log[#log + 1] = tostring(err)
    assert.equal("usage", err.kind)
    assert.equal(before, captured(), "a request reached the server")
  end)

  it("is refused by the command, through a plain-http proxy too: nothing sent, exit 2", function()
    local before = captured()
    for _, args in ipairs({
      { "search", url("/dicom-web"), "--debug", "--retry-max-attempts", "1" },
      { "search", "http://pacs.example.org/dicom-web", "--endpoint", url("/v1"), "--debug" },
      { "projects", "locations-datasets-get", "projects/p/locations/l/datasets/d", "--endpoint", url("/v1"), "--debug" },
    }) do
      for _, env in ipairs({ {}, { http_proxy = CAP } }) do
        local _, se, code = run(args, env)
        assert.equal(2, code, se)
        assert.truthy(se:find("must not hold a user name or password", 1, true), se)
        assert.is_nil(se:find("admin:", 1, true), se)
      end
    end
    local _, se, code = run({ "search", "http://admin:" .. PASSWORD .. "@pacs.example.org/dicom-web" },
      { http_proxy = CAP })
    assert.equal(2, code, se)
    assert.equal(before, captured(), "a request reached the server or the proxy")
  end)
end)
