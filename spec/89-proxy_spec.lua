-- SPDX-License-Identifier: MIT
-- The library and the command through a real HTTP proxy (Debian's tinyproxy, spec/support/proxy.lua)
-- to this file's own emulator, plain and behind the test bed's TLS server (nginx with a CA made for
-- it, spec/support/tls_server.lua): the `proxy` and `no_proxy` options, --proxy and https_proxy;
-- https goes as a CONNECT tunnel (the proxy's log shows it) and the server's certificate is still
-- verified (a wrong CA fails, nothing reaches the server); a bearer token or a token request is
-- not sent through a proxy to a plain-http server unless insecure transport was allowed; --debug
-- names the proxy with its password redacted.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/89-proxy_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"
local proxy = require "support.proxy"
local tls_server = require "support.tls_server"

local E = H.env
local em = require("support.emulator_instance").start()
local p = proxy.start()
local t = tls_server.start { upstream = em.url }
local PASSWORD = "pw-" .. core.random_hex(6)
local authed = proxy.start { user = "alice", password = PASSWORD }
teardown(function()
  p:stop()
  authed:stop()
  t:stop()
  em:stop()
end)

local TOKEN = em:control("tokens", { scopes = { "https://www.googleapis.com/auth/cloud-healthcare" } }).access_token
local new_file = H.fresh_files(20)

-- Stores one new file through client; returns the file, or nil, err.
local function store_one(client)
  local f = new_file()
  local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom",
    data = { file = f.path } })
  if not res then return nil, err end
  assert.are.equal(200, res.status)
  assert.truthy(H.orthanc_find_instance(f.sop_instance_uid), "stored in Orthanc")
  return f
end

local function last_request(px)
  local list = (px or p):requests()
  return list[#list] or {}
end

describe("the proxy option", function()
  it("tunnels https with CONNECT, the certificate verified with ca_file: a store and a search", function()
    local connects = p:count("CONNECT")
    local lines = {}
    local client = assert(healthcare.new({ endpoint = t.url .. "/v1", ca_file = t.ca_file, access_token = TOKEN,
      proxy = p.url, debug = function(l) lines[#lines + 1] = l end }))
    local f = assert(store_one(client))
    local results = assert(client:dicom_store(E.store):search_studies({ StudyInstanceUID = f.study_uid }))
    assert.are.equal(1, #assert(results:all()))
    client:close()
    assert.is_true(p:count("CONNECT") > connects)
    assert.are.same({ method = "CONNECT", target = "127.0.0.1:" .. t.port }, last_request())
    -- nginx, behind the tunnel, logged the search (with the study's UID in its query).
    core.sleep(0.2)
    local log = H.file_bytes(t.access_log) or ""
    assert.truthy(log:find("GET /v1/" .. E.store .. "/dicomWeb/studies?", 1, true), log)
    assert.truthy(log:find(f.study_uid, 1, true), log)
    assert.truthy(table.concat(lines, "\n"):find("* through the proxy " .. p.url .. " (from the proxy option)", 1,
      true))
  end)

  it("refuses a certificate the CA given did not sign: a transport error, nothing reaches the server", function()
    local connects = p:count("CONNECT")
    local client = assert(healthcare.new({ endpoint = t.url .. "/v1", ca_file = t.other_ca_file,
      access_token = TOKEN, proxy = p.url, retry = { max_attempts = 1 } }))
    local res, err = client:send({ method = "GET", url = t.url .. "/v1/" .. E.store .. "/dicomWeb/studies?probe=wrong-ca" })
    client:close()
    assert.is_nil(res)
    assert.are.equal("transport", err.kind, tostring(err))
    assert.are.equal("tls_verify", err.status, tostring(err))
    assert.are.equal(connects + 1, p:count("CONNECT"))
    assert.falsy(t:saw("/v1/" .. E.store .. "/dicomWeb/studies?probe=wrong-ca", 1))
  end)

  it("does not send a token through a proxy to a plain-http endpoint, unless insecure", function()
    local before = #p:requests()
    local client = assert(healthcare.new({ endpoint = em.endpoint, access_token = TOKEN, proxy = p.url }))
    local _, err = store_one(client)
    client:close()
    assert.are.equal("usage", err.kind)
    assert.are.equal("CLEARTEXT_PROXY", err.status)
    assert.truthy(tostring(err):find("through the proxy " .. p.url .. " (from the proxy option) over plain http", 1,
      true), tostring(err))
    assert.is_nil(tostring(err):find(TOKEN, 1, true))
    assert.are.equal(before, #p:requests())
    -- Allowed: it goes through the proxy, which forwards it (its log shows the POST).
    client = assert(healthcare.new({ endpoint = em.endpoint, access_token = TOKEN, proxy = p.url, insecure = true }))
    assert(store_one(client))
    client:close()
    assert.are.same({ method = "POST", target = em.endpoint .. "/" .. E.store .. "/dicomWeb/studies" }, last_request())
  end)

  it("no_proxy: a host it covers is reached directly, with its token", function()
    local before = #p:requests()
    local client = assert(healthcare.new({ endpoint = em.endpoint, access_token = TOKEN, proxy = p.url,
      no_proxy = "localhost,127.0.0.1" }))
    assert(store_one(client))
    client:close()
    assert.are.equal(before, #p:requests())
  end)

  it("what the proxy check decided is what libcurl does: 127.1 in NO_PROXY for a 127.1 endpoint goes direct "
    .. "(libcurl alone would rewrite the host as 127.0.0.1, miss the entry, and send the token to the proxy)",
    function()
      local before = #p:requests()
      local endpoint = em.endpoint:gsub("//127%.0%.0%.1:", "//127.1:")
      assert.are_not.equal(em.endpoint, endpoint)
      local client = assert(healthcare.new({ endpoint = endpoint, access_token = TOKEN, proxy = p.url,
        no_proxy = "127.1" }))
      assert(store_one(client))
      client:close()
      -- a token request too: a credential file whose token_uri is written so
      local u = em:authorized_user()
      local key = assert(require("cjson").decode(H.file_bytes(u.key_file)))
      key.token_uri = key.token_uri:gsub("//127%.0%.0%.1:", "//127.1:")
      local key_file = H.write_file(H.tmpdir() .. "/authorized_user.json", require("cjson").encode(key))
      client = assert(healthcare.new({ endpoint = endpoint, credentials = key_file, proxy = p.url, no_proxy = "127.1" }))
      assert(store_one(client))
      client:close()
      assert.are.same({}, { table.unpack(p:requests(), before + 1) })
    end)

  it("token requests follow the same rule: refused over plain http through the proxy, unless insecure", function()
    local sa = em:service_account()
    local client = assert(healthcare.new({ endpoint = em.endpoint, credentials = sa.key_file, proxy = p.url }))
    local _, err = store_one(client)
    client:close()
    assert.are.equal("auth", err.kind)
    assert.are.equal("CLEARTEXT_PROXY", err.status)
    local before = em:count("token_requests", "urn:ietf:params:oauth:grant-type:jwt-bearer")
    client = assert(healthcare.new({ endpoint = em.endpoint, credentials = sa.key_file, proxy = p.url, insecure = true }))
    assert(store_one(client))
    client:close()
    assert.are.equal(before + 1, em:count("token_requests", "urn:ietf:params:oauth:grant-type:jwt-bearer"))
    local seen = false
    for _, r in ipairs(p:requests()) do seen = seen or r.target == em.token_uri end
    assert.is_true(seen, "the token request went through the proxy")
  end)

  it("proxy = '' means none, whatever the environment says", function()
    local before = #p:requests()
    local client = assert(healthcare.new({ endpoint = em.endpoint, access_token = TOKEN, proxy = "" }))
    assert(store_one(client))
    client:close()
    assert.are.equal(before, #p:requests())
  end)
end)

describe("the command", function()
  -- The command in a clean environment plus env: stdout, stderr, exit code.
  local function healthcare_cmd(env, args)
    local words = { "env", "-i", "PATH=" .. (os.getenv("PATH") or "/usr/bin:/bin"), "HOME=" .. H.tmpdir(),
      "LUA_PATH=" .. (os.getenv("LUA_PATH") or ""), "LUA_CPATH=" .. (os.getenv("LUA_CPATH") or "") }
    for k, v in pairs(env) do words[#words + 1] = k .. "=" .. v end
    words[#words + 1] = "lua5.4"
    words[#words + 1] = H.BIN
    for _, a in ipairs(args) do words[#words + 1] = a end
    for i, w in ipairs(words) do words[i] = H.q(w) end
    return H.run(table.concat(words, " "))
  end

  local function search_args(extra)
    local a = { "search", E.store, "--endpoint", t.url .. "/v1", "--ca-file", t.ca_file, "--access-token", TOKEN,
      "--limit", "1", "--json", "--debug" }
    for _, x in ipairs(extra or {}) do a[#a + 1] = x end
    return a
  end

  it("--proxy with a user and password: CONNECT with Basic auth, the password redacted in --debug", function()
    local url = "http://alice:" .. PASSWORD .. "@127.0.0.1:" .. authed.port
    local connects = authed:count("CONNECT")
    local so, se, code = healthcare_cmd({}, search_args({ "--proxy", url }))
    assert.are.equal(0, code, se)
    assert.are.equal(connects + 1, authed:count("CONNECT"))
    assert.truthy(se:find("* through the proxy http://REDACTED@127.0.0.1:" .. authed.port .. " (from the proxy option)",
      1, true), se)
    assert.is_nil((so .. se):find(PASSWORD, 1, true))
    assert.is_nil((so .. se):find(TOKEN, 1, true))
    -- A wrong password: the proxy answers 407, a transport error (exit 1), the password not shown.
    so, se, code = healthcare_cmd({}, search_args({ "--proxy", "http://alice:wrong-" .. PASSWORD .. "@127.0.0.1:"
      .. authed.port }))
    assert.are_not.equal(0, code)
    assert.is_nil((so .. se):find(PASSWORD, 1, true))
  end)

  it("https_proxy from the environment, named in --debug; --proxy '' goes direct", function()
    local connects = p:count("CONNECT")
    local _, se, code = healthcare_cmd({ https_proxy = p.url }, search_args())
    assert.are.equal(0, code, se)
    assert.are.equal(connects + 1, p:count("CONNECT"))
    assert.truthy(se:find("* through the proxy " .. p.url .. " (from https_proxy)", 1, true), se)
    _, se, code = healthcare_cmd({ https_proxy = p.url }, search_args({ "--proxy", "" }))
    assert.are.equal(0, code, se)
    assert.are.equal(connects + 1, p:count("CONNECT"))
    assert.is_nil(se:find("through the proxy", 1, true), se)
  end)

  it("--proxy reaches every command: projects <method>, operations, import (a plain-http endpoint refused)",
    function()
      local dataset = E.store:match("^(.-)/dicomStores/")
      local runs = {
        { "projects", "locations-datasets-dicom-stores-get", E.store, "--endpoint", em.endpoint, "-p",
          "access-token=" .. TOKEN },
        { "operations", "list", dataset, "--endpoint", em.endpoint, "--access-token", TOKEN },
        { "import", E.store, "gs://bucket/x/*.dcm", "--endpoint", em.endpoint, "--access-token", TOKEN },
      }
      for _, args in ipairs(runs) do
        if args[1] ~= "import" then -- without the proxy they work
          local _, se, code = healthcare_cmd({}, args)
          assert.are.equal(0, code, se)
        end
        local with = {}
        for i, a in ipairs(args) do with[i] = a end
        with[#with + 1] = "--proxy"
        with[#with + 1] = p.url
        local so, se, code = healthcare_cmd({}, with)
        -- the proxy option applied: the token is kept off plain http through it
        assert.are.equal(2, code, args[1] .. " " .. args[2] .. ": " .. se)
        assert.truthy(se:find("refusing to send", 1, true), se)
        assert.is_nil((so .. se):find(TOKEN, 1, true))
      end
      -- and with --insecure it goes, through the proxy
      local before = p:count()
      local _, se, code = healthcare_cmd({}, { "operations", "list", dataset, "--endpoint", em.endpoint,
        "--access-token", TOKEN, "--proxy", p.url, "--insecure" })
      assert.are.equal(0, code, se)
      assert.is_true(p:count() > before)
    end)

  it("a token to a plain-http endpoint through --proxy: exit 2 unless --insecure", function()
    local args = { "search", E.store, "--endpoint", em.endpoint, "--access-token", TOKEN, "--limit", "1", "--json",
      "--proxy", p.url }
    local so, se, code = healthcare_cmd({}, args)
    assert.are.equal(2, code, se)
    assert.truthy(se:find("refusing to send", 1, true), se)
    assert.is_nil((so .. se):find(TOKEN, 1, true))
    args[#args + 1] = "--insecure"
    so, se, code = healthcare_cmd({}, args)
    assert.are.equal(0, code, se)
    assert.is_nil((so .. se):find(TOKEN, 1, true))
  end)
end)
