-- SPDX-License-Identifier: MIT
-- An HTTPS server for the specs: Debian's nginx on a free port of 127.0.0.1 with a certificate for
-- 127.0.0.1 and localhost signed by a CA made for it with the openssl command (in the manner of
-- spec 80), passing requests on to an http URL of the test bed (the emulator, Orthanc). With a
-- second CA that did not sign it, for "wrong CA" cases. Everything lives in a directory of its own
-- under the run's temp dir.
--   local tls_server = require "support.tls_server"
--   local t = tls_server.start { upstream = H.env.emulator }
--   t.url ("https://127.0.0.1:PORT"), t.port, t.ca_file, t.other_ca_file, t.access_log, t.dir
--   t:saw("/system?probe=x1", 5)   -- whether nginx logged a request for that target (waits up to 5 s)
--   t:stop()       -- in the spec's teardown
local H = require "helpers"

local M = {}
local Server = {}
Server.__index = Server

local NGINX = "/usr/sbin/nginx"

local function sh(cmd) return H.check_run(cmd) end

-- A CA: key and self-signed certificate, in dir as name.key and name.pem.
local function make_ca(dir, name, cn)
  sh(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 2 -subj %s "
    .. "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null",
    H.q(dir .. "/" .. name .. ".key"), H.q(dir .. "/" .. name .. ".pem"), H.q("/CN=" .. cn)))
end

-- A server certificate for 127.0.0.1 and localhost signed by the CA "ca" of dir.
local function make_leaf(dir, name)
  local p = function(x) return H.q(dir .. "/" .. x) end
  H.write_file(dir .. "/" .. name .. ".ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    .. "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
  sh(string.format("openssl req -new -newkey rsa:2048 -nodes -keyout %s -out %s -subj /CN=%s 2>/dev/null",
    p(name .. ".key"), p(name .. ".csr"), name))
  sh(string.format("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -days 2 -extfile %s -out %s 2>/dev/null",
    p(name .. ".csr"), p("ca.pem"), p("ca.key"), p(name .. ".ext"), p(name .. ".pem")))
end

--- Starts nginx over TLS in front of opts.upstream and waits until it answers; raises otherwise.
function M.start(opts)
  assert(type(opts) == "table" and opts.upstream, "tls_server.start: upstream is required")
  local dir = H.tmpdir()
  make_ca(dir, "ca", "healthcare test CA " .. math.random(1, 1e6))
  make_ca(dir, "other_ca", "another test CA " .. math.random(1, 1e6))
  make_leaf(dir, "server")
  local path = function(x) return dir .. "/" .. x end
  -- nginx takes no port 0: a free port is picked, and another one if it was taken meanwhile.
  for _ = 1, 5 do
    local port = tonumber((sh([[/usr/bin/python3 -c 'import socket; s = socket.socket(); ]]
      .. [[s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])):match("%d+"))
    os.remove(path("access.log"))
    H.write_file(path("nginx.conf"), table.concat({
      "worker_processes 1;", "pid " .. path("nginx.pid") .. ";", "error_log " .. path("error.log") .. " info;",
      "events { worker_connections 64; }", "http {", "  access_log " .. path("access.log") .. ";",
      "  client_max_body_size 0;", "  client_body_temp_path " .. path("tmp-body") .. ";",
      "  proxy_temp_path " .. path("tmp-proxy") .. ";", "  fastcgi_temp_path " .. path("tmp-fcgi") .. ";",
      "  uwsgi_temp_path " .. path("tmp-uwsgi") .. ";", "  scgi_temp_path " .. path("tmp-scgi") .. ";",
      "  proxy_request_buffering off;", "  proxy_http_version 1.1;",
      string.format("  server { listen 127.0.0.1:%d ssl; ssl_certificate %s; ssl_certificate_key %s; "
        .. "location / { proxy_pass %s; } }", port, path("server.pem"), path("server.key"), opts.upstream),
      "}", "" }, "\n"))
    local pid = tonumber((sh(string.format("%s -p %s -c %s -e %s -g 'daemon off;' >%s 2>&1 </dev/null & echo $!",
      NGINX, H.q(dir), H.q(path("nginx.conf")), H.q(path("error.log")), H.q(path("nginx.out"))))):match("%d+"))
    local self = setmetatable({ pid = pid, port = port, url = "https://127.0.0.1:" .. port, dir = dir,
      ca_file = path("ca.pem"), other_ca_file = path("other_ca.pem"), access_log = path("access.log") }, Server)
    for _ = 1, 200 do
      -- Up when it completes a TLS handshake with its own CA (whatever the upstream answers).
      if H.curl({ "--cacert", self.ca_file, self.url .. "/" }).exit == 0 then
        return self
      end
      if select(3, H.run("kill -0 " .. pid)) ~= 0 then break end
      os.execute("sleep 0.05")
    end
    self:stop()
  end
  error("nginx over TLS did not start: " .. (H.file_bytes(path("error.log")) or "")
    .. (H.file_bytes(path("nginx.out")) or ""), 2)
end

--- Whether nginx's access log shows a request for target (a path and query; make it unique),
--- waiting up to wait seconds (default 0) for it: nginx logs a request after it answered it.
function Server:saw(target, wait)
  local deadline = os.time() + (wait or 0)
  repeat
    if (H.file_bytes(self.access_log) or ""):find(" " .. target .. " HTTP/", 1, true) then return true end
    if (wait or 0) > 0 then os.execute("sleep 0.05") end
  until os.time() > deadline
  return false
end

function Server:stop()
  if self.pid then
    H.run("kill " .. self.pid .. "; for i in $(seq 100); do kill -0 " .. self.pid
      .. " 2>/dev/null || exit 0; sleep 0.05; done; kill -9 " .. self.pid)
    self.pid = nil
  end
end

return M
