-- SPDX-License-Identifier: MIT
-- TLS, against Debian's nginx serving HTTPS on 127.0.0.1 in front of the test bed's Orthanc, with a
-- CA and certificates this file makes with openssl: verification is on by default (a CA the
-- system does not know, a certificate for another host name, an expired certificate and one of
-- another CA are each refused with err.kind "transport", code "tls_verify" and OpenSSL's reason),
-- `ca_file` makes the good server work, and only an option named for it (`insecure = true`, the
-- command's --insecure) turns verification off.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/80-tls_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"

local E = H.env
local BIN = H.BIN
local NGINX = "/usr/sbin/nginx"

local function sh(cmd) return H.check_run(cmd) end
local function q(s) return H.q(s) end

-- ---- the PKI -----------------------------------------------------------------------------

local dir = H.tmpdir()
local function path(name) return dir .. "/" .. name end

-- A CA: key and self-signed certificate.
local function make_ca(name, cn)
  sh(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 -subj %s "
    .. "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null",
    q(path(name .. ".key")), q(path(name .. ".pem")), q("/CN=" .. cn)))
end

-- A server certificate for san, signed by ca; with `expired`, valid only in January 2020.
local function make_leaf(name, ca, san, expired)
  H.write_file(path(name .. ".ext"), "subjectAltName=" .. san .. "\nbasicConstraints=CA:FALSE\n"
    .. "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
  sh(string.format("openssl req -new -newkey rsa:2048 -nodes -keyout %s -out %s -subj /CN=%s 2>/dev/null",
    q(path(name .. ".key")), q(path(name .. ".csr")), name))
  if not expired then
    sh(string.format("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -days 2 -extfile %s -out %s 2>/dev/null",
      q(path(name .. ".csr")), q(path(ca .. ".pem")), q(path(ca .. ".key")), q(path(name .. ".ext")),
      q(path(name .. ".pem"))))
    return
  end
  -- `openssl x509` cannot date a certificate in the past; `openssl ca` can.
  sh("mkdir -p " .. q(path("newcerts")) .. " && : > " .. q(path("index.txt")) .. " && echo 1000 > " .. q(path("serial")))
  H.write_file(path("ca.cnf"), table.concat({
    "[ca]", "default_ca = this", "[this]", "dir = " .. dir, "database = " .. path("index.txt"),
    "new_certs_dir = " .. path("newcerts"), "certificate = " .. path(ca .. ".pem"),
    "private_key = " .. path(ca .. ".key"), "serial = " .. path("serial"), "default_md = sha256",
    "policy = any", "[any]", "commonName = supplied", "" }, "\n"))
  sh(string.format("openssl ca -batch -config %s -startdate 20200101000000Z -enddate 20200201000000Z "
    .. "-extfile %s -in %s -out %s 2>/dev/null", q(path("ca.cnf")), q(path(name .. ".ext")),
    q(path(name .. ".csr")), q(path(name .. ".pem"))))
end

make_ca("ca", "healthcare test CA")
make_ca("other_ca", "another test CA")
make_leaf("good", "ca", "IP:127.0.0.1,DNS:localhost")
make_leaf("wrong_host", "ca", "DNS:wrong.example")
make_leaf("expired", "ca", "IP:127.0.0.1,DNS:localhost", true)
make_leaf("other", "other_ca", "IP:127.0.0.1,DNS:localhost")
local CA = path("ca.pem")

-- ---- nginx -------------------------------------------------------------------------------

local SERVERS = { "good", "wrong_host", "expired", "other" }
local port = {}
do
  local out = sh([[/usr/bin/python3 -c 'import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))']])
  local i = 0
  for p in out:gmatch("%d+") do
    i = i + 1
    port[SERVERS[i]] = tonumber(p)
  end
end

local conf = { "worker_processes 1;", "pid " .. path("nginx.pid") .. ";",
  "error_log " .. path("error.log") .. " info;", "events { worker_connections 64; }", "http {",
  "  access_log " .. path("access.log") .. ";", "  client_max_body_size 0;",
  "  client_body_temp_path " .. path("tmp-body") .. ";", "  proxy_temp_path " .. path("tmp-proxy") .. ";",
  "  fastcgi_temp_path " .. path("tmp-fcgi") .. ";", "  uwsgi_temp_path " .. path("tmp-uwsgi") .. ";",
  "  scgi_temp_path " .. path("tmp-scgi") .. ";",
  -- Streams bodies to Orthanc as they come, as a gateway would.
  "  proxy_request_buffering off;", "  proxy_http_version 1.1;" }
for _, name in ipairs(SERVERS) do
  conf[#conf + 1] = string.format("  server { listen 127.0.0.1:%d ssl http2; ssl_certificate %s; "
    .. "ssl_certificate_key %s; location / { proxy_pass %s; } }", port[name], path(name .. ".pem"),
    path(name .. ".key"), E.orthanc)
end
conf[#conf + 1] = "}"
H.write_file(path("nginx.conf"), table.concat(conf, "\n") .. "\n")
local nginx_pid = tonumber(sh(string.format("%s -p %s -c %s -e %s -g 'daemon off;' >%s 2>&1 </dev/null & echo $!",
  NGINX, q(dir), q(path("nginx.conf")), q(path("error.log")), q(path("nginx.out")))):match("%d+"))

local function url(name, rest, host)
  return string.format("https://%s:%d%s", host or "127.0.0.1", port[name], rest or "")
end

-- Waits until every server answers (certificates unchecked: only "is it up" is asked).
for _, name in ipairs(SERVERS) do
  local up = false
  for _ = 1, 200 do
    local r = H.curl({ "-k", url(name, "/system") })
    if r.status == 200 then up = true break end
    os.execute("sleep 0.05")
  end
  assert(up, "nginx did not come up: " .. (H.file_bytes(path("error.log")) or "") .. (H.file_bytes(path("nginx.out")) or ""))
end

teardown(function()
  if nginx_pid then
    os.execute("kill " .. nginx_pid .. " 2>/dev/null; for i in $(seq 100); do kill -0 " .. nginx_pid
      .. " 2>/dev/null || break; sleep 0.05; done; kill -9 " .. nginx_pid .. " 2>/dev/null")
    nginx_pid = nil
  end
end)

-- OpenSSL's words for each refusal, as libcurl passes them on.
local REASON = {
  unknown_ca = "SSL certificate problem: unable to get local issuer certificate",
  wrong_host = "no alternative certificate subject name matches target host name '127.0.0.1'",
  expired = "SSL certificate problem: certificate has expired",
}

local function get(name, opts, host)
  local s = core.session(opts or {})
  local res, err = s:request { url = url(name, "/system", host), timeout = 20 }
  s:close()
  return res, err
end

local function assert_refused(reason, res, err)
  assert.is_nil(res)
  assert.equal("transport", err.kind)
  assert.equal("tls_verify", err.status)
  assert.truthy(err.message:find(reason, 1, true), err.message)
end

describe("core.session", function()
  it("refuses a server whose CA it was not given (the system store does not know it)", function()
    assert_refused(REASON.unknown_ca, get("good"))
  end)

  it("accepts that server with ca_file, by IP address and by host name", function()
    local res = assert(get("good", { ca_file = CA }))
    assert.equal(200, res.status)
    assert.truthy(H.json.decode(res.body).Version)
    if core.http2 then assert.equal("2", res.http_version) end
    res = assert(get("good", { ca_file = CA }, "localhost"))
    assert.equal(200, res.status)
  end)

  it("refuses a certificate for another host name, even from the CA it trusts", function()
    assert_refused(REASON.wrong_host, get("wrong_host", { ca_file = CA }))
  end)

  it("refuses an expired certificate, even from the CA it trusts", function()
    assert_refused(REASON.expired, get("expired", { ca_file = CA }))
  end)

  it("refuses a certificate of another CA when given a ca_file", function()
    assert_refused(REASON.unknown_ca, get("other", { ca_file = CA }))
  end)

  it("says so when the ca_file cannot be read", function()
    local res, err = get("good", { ca_file = dir .. "/no-such-ca.pem" })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("tls_ca_file", err.status)
  end)

  it("turns verification off only with insecure = true", function()
    for _, name in ipairs(SERVERS) do
      local res = assert(get(name, { insecure = true }))
      assert.equal(200, res.status)
    end
    assert_refused(REASON.expired, get("expired", { ca_file = CA, insecure = false }))
    -- Not a boolean: a mistake, never a way to turn verification off.
    local refused = "bad argument #1 to 'session' (option 'insecure' must be a boolean)"
    assert.error_matches(function() core.session { insecure = "no" } end, refused, nil, true)
    assert.error_matches(function() core.session { insecure = 1 } end, refused, nil, true)
  end)
end)

describe("the client and store:store over https", function()
  local function fresh(n) return H.gen_dicom({ count = n or 1 }) end

  it("refuses the TLS error as not retryable and stores nothing", function()
    local f = fresh()[1]
    local store = assert(healthcare.dicomweb(url("expired", "/dicom-web"), { ca_file = CA }))
    local report = assert(store:store({ f.path }, { retry = { max_attempts = 3, initial = 0.01 } }))
    assert.equal(0, #report.stored)
    assert.equal(1, #report.failed)
    assert.truthy(report.failed[1].reason:find(REASON.expired, 1, true), report.failed[1].reason)
    assert.equal(0, report.retries)
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
    store:close()
  end)

  it("stores through the proxy with ca_file", function()
    local files = fresh(2)
    local store = assert(healthcare.dicomweb(url("good", "/dicom-web"), { ca_file = CA }))
    local report = assert(store:store({ files[1].path, files[2].path }))
    assert.equal(2, #report.stored, report.failed[1] and report.failed[1].reason)
    for _, f in ipairs(files) do
      assert.equal(H.sha256(f.path), H.sha256_string(assert(H.orthanc_instance_file(f.sop_instance_uid))))
    end
    store:close()
  end)

  it("stores through a bad certificate only with insecure = true", function()
    local f = fresh()[1]
    -- anything but true is a mistake, not a way to turn verification off
    assert.has_error(function() healthcare.dicomweb(url("wrong_host", "/dicom-web"), { insecure = "yes" }) end,
      "bad option 'insecure' to 'dicomweb' (boolean expected, got string)")
    local store = assert(healthcare.dicomweb(url("wrong_host", "/dicom-web"), { insecure = false }))
    local report = assert(store:store({ f.path }))
    assert.equal(1, #report.failed)
    store:close()
    store = assert(healthcare.dicomweb(url("wrong_host", "/dicom-web"), { insecure = true }))
    report = assert(store:store({ f.path }))
    assert.equal(1, #report.stored, report.failed[1] and report.failed[1].reason)
    store:close()
  end)

  it("reports a TLS failure of store_instances as a transport error", function()
    local client = assert(healthcare.new { endpoint = url("good", "/v1"), access_token = "t" })
    local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom", data = "x" })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("tls_verify", err.status)
    assert.is_false(err.retryable)
    client:close()
  end)
end)

describe("the healthcare command", function()
  local function run(args)
    local words = { BIN }
    for _, a in ipairs(args) do words[#words + 1] = q(a) end
    return H.run(table.concat(words, " "))
  end

  it("verifies by default, with --ca-file, and stores with --insecure", function()
    local files = H.gen_dicom({ count = 3 })
    local _, se, code = run({ "store", "--no-progress", url("good", "/dicom-web"), files[1].path })
    assert.equal(1, code, se)
    assert.truthy(se:find(REASON.unknown_ca, 1, true), se)
    assert.is_nil(H.orthanc_find_instance(files[1].sop_instance_uid))

    _, se, code = run({ "store", "--no-progress", "--ca-file", CA, url("good", "/dicom-web"), files[1].path })
    assert.equal(0, code, se)
    assert.truthy(H.orthanc_find_instance(files[1].sop_instance_uid))

    _, se, code = run({ "store", "--no-progress", "--ca-file", CA, url("expired", "/dicom-web"), files[2].path })
    assert.equal(1, code, se)
    assert.truthy(se:find(REASON.expired, 1, true), se)

    _, se, code = run({ "store", "--no-progress", "--insecure", url("expired", "/dicom-web"), files[3].path })
    assert.equal(0, code, se)
    assert.truthy(H.orthanc_find_instance(files[3].sop_instance_uid))
  end)

  it("verifies in the seed's form", function()
    local f = H.gen_dicom()[1]
    local _, se, code = run({ "projects", "locations-datasets-dicom-stores-studies-store-instances", E.store,
      "studies", "-r", ".", "content-type=application/dicom", "data=@" .. f.path, "-p", "access-token=t",
      "--endpoint", url("good", "/v1") })
    assert.equal(1, code, se)
    assert.truthy(se:find(REASON.unknown_ca, 1, true), se)
    -- --ca-file and --insecure as the friendly commands have them: through TLS to the server
    -- (Orthanc, which knows no /v1 path: its 404 shows the request reached it)
    for _, extra in ipairs({ { "--ca-file", CA, url("good", "/v1") }, { "--insecure", url("expired", "/v1") } }) do
      local args = { "projects", "locations-datasets-dicom-stores-studies-store-instances", E.store, "studies", "-r",
        ".", "content-type=application/dicom", "data=@" .. f.path, "-p", "access-token=t", extra[1] }
      if #extra == 3 then args[#args + 1] = extra[2] end
      args[#args + 1] = "--endpoint"
      args[#args + 1] = extra[#extra]
      _, se, code = run(args)
      assert.equal(2, code, se) -- a store the server does not know: exit 2
      assert.is_nil(se:find("certificate", 1, true), se)
      assert.truthy(se:find("404", 1, true), se)
    end
  end)
end)
