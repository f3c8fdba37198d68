-- SPDX-License-Identifier: MIT
-- The test bed's proxy and TLS server helpers (spec/support/proxy.lua: Debian's tinyproxy;
-- spec/support/tls_server.lua: Debian's nginx with a CA made for it), proved with the curl command:
-- https goes through the proxy as a CONNECT tunnel (the proxy's log shows it) and the server's
-- certificate is still verified end to end through it: the right CA passes, a CA that did not sign
-- the certificate (or the system's CAs) fails with curl's certificate error and no request reaches
-- the server; only -k passes without verification. Plain http is forwarded; a proxy started with
-- connect_ports or a user refuses what it should. The library's proxy options come with the
-- credential work (issue 17, point 4); this file is the bed they will be tested on.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/88-proxy_connect_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local proxy = require "support.proxy"
local tls_server = require "support.tls_server"

local E = H.env
local p = proxy.start()
local t = tls_server.start { upstream = E.orthanc }
local extra = {}
teardown(function()
  p:stop()
  t:stop()
  for _, x in ipairs(extra) do x:stop() end
end)

-- curl through proxy_url (default: the proxy of this file) with args.
local function through(args, proxy_url)
  local a = { "--proxy", proxy_url or p.url }
  for _, x in ipairs(args) do a[#a + 1] = x end
  return H.curl(a)
end

-- A path of Orthanc's with a query of its own, so nginx's log can tell this request from others.
local function probe()
  return "/system?probe=" .. math.random(1, 1e9)
end

local function last_request(px)
  local list = (px or p):requests()
  return list[#list] or {}
end

describe("support.proxy and support.tls_server", function()
  it("tunnel https with CONNECT, and curl verifies the server's certificate through the tunnel", function()
    local connects, path = p:count("CONNECT"), probe()
    local r = through({ "--cacert", t.ca_file, t.url .. path })
    assert.are.equal(0, r.exit, r.stderr)
    assert.are.equal(200, r.status)
    assert.is_string(r.json and r.json.Version, r.body)   -- Orthanc's answer, through nginx
    assert.are.equal(connects + 1, p:count("CONNECT"))
    assert.are.same({ method = "CONNECT", target = "127.0.0.1:" .. t.port }, last_request())
    assert.truthy(t:saw(path, 5))
    -- By name: the proxy resolves it, the certificate holds it.
    r = through({ "--cacert", t.ca_file, "https://localhost:" .. t.port .. "/system" })
    assert.are.equal(200, r.status, r.stderr)
    assert.are.same({ method = "CONNECT", target = "localhost:" .. t.port }, last_request())
  end)

  it("fail with a CA that did not sign the certificate: curl's certificate error, nothing reaches the server", function()
    local connects, path = p:count("CONNECT"), probe()
    local r = through({ "--cacert", t.other_ca_file, t.url .. path })
    assert.are.equal(60, r.exit, r.stderr)   -- CURLE_PEER_FAILED_VERIFICATION
    assert.truthy(r.stderr:find("SSL certificate problem: unable to get local issuer certificate", 1, true), r.stderr)
    assert.is_nil(r.status)
    -- The tunnel was made: the refusal is the client's, end to end, not the proxy's.
    assert.are.equal(connects + 1, p:count("CONNECT"))
    -- The system's CAs do not know the test CA either.
    local path2 = probe()
    r = through({ t.url .. path2 })
    assert.are.equal(60, r.exit, r.stderr)
    -- A request that got through would be logged by now: the one of the test above was.
    local seen = probe()
    assert.are.equal(200, through({ "--cacert", t.ca_file, t.url .. seen }).status)
    assert.truthy(t:saw(seen, 5))
    assert.falsy(t:saw(path))
    assert.falsy(t:saw(path2))
  end)

  it("pass without verification only when told (-k)", function()
    local r = through({ "-k", t.url .. "/system" })
    assert.are.equal(200, r.status, r.stderr)
  end)

  it("forward plain http, which the proxy's log shows", function()
    local gets = p:count("GET")
    local r = through({ E.orthanc .. "/system" })
    assert.are.equal(200, r.status, r.stderr)
    assert.are.equal(gets + 1, p:count("GET"))
    assert.are.same({ method = "GET", target = E.orthanc .. "/system" }, last_request())
  end)

  it("refuse CONNECT to a port not allowed (connect_ports)", function()
    local q = proxy.start { connect_ports = { 443 } }
    extra[#extra + 1] = q
    local r = through({ "--cacert", t.ca_file, t.url .. "/system" }, q.url)
    assert.are.equal(56, r.exit, r.stderr)   -- CURLE_RECV_ERROR: the CONNECT was answered 403
    assert.truthy(r.stderr:find("403", 1, true), r.stderr)
    assert.are.same({ method = "CONNECT", target = "127.0.0.1:" .. t.port }, last_request(q))
  end)

  it("ask for Basic authentication when started with a user (407), and tunnel with it", function()
    local q = proxy.start { user = "alice", password = "pw-" .. math.random(1, 1e6) }
    extra[#extra + 1] = q
    local password = H.file_bytes(q.dir .. "/tinyproxy.conf"):match("BasicAuth alice (%S+)")
    local r = through({ "--cacert", t.ca_file, t.url .. "/system" }, q.url)
    assert.are.equal(56, r.exit, r.stderr)
    assert.truthy(r.stderr:find("407", 1, true), r.stderr)
    r = through({ "--proxy-user", "alice:" .. password, "--cacert", t.ca_file, t.url .. "/system" }, q.url)
    assert.are.equal(200, r.status, r.stderr)
    r = through({ "--proxy-user", "alice:wrong", "--cacert", t.ca_file, t.url .. "/system" }, q.url)
    assert.are.equal(56, r.exit, r.stderr)
  end)

  it("stop: the proxy's port refuses connections afterwards", function()
    local q = proxy.start()
    q:stop()
    local r = through({ E.orthanc .. "/system" }, q.url)
    assert.are.equal(7, r.exit, r.stderr)   -- CURLE_COULDNT_CONNECT
  end)
end)
