-- SPDX-License-Identifier: MIT
--
-- Helpers for spec/70-openresty_spec.lua: Debian's nginx with ngx_http_lua running the gateway of
-- examples/openresty/nginx.conf (edited only where a test must: addresses, paths, worker count),
-- and a private Google emulator in front of the test bed's Orthanc, so that this spec's token
-- counts, token lifetime and faults are its own and never disturb specs running beside it.
--
-- local N = require "support.nginx"
-- local emu = N.emulator()                      -- { url, port, control(path, tbl), stats(), stop() }
-- local gw = N.gateway{ emulator = emu, key_file = ... }  -- { url, pid, dir, log(), stop(), ... }
local H = require "helpers"
local cjson = require "cjson.safe"

local N = {}

local PY = "/usr/bin/python3"
N.NGINX = "/usr/sbin/nginx"
N.EXAMPLE = (os.getenv("HC_SOURCE_DIR") or (H.env.support .. "/../..")) .. "/examples/openresty/nginx.conf"
N.STORE = H.env.store

local read_all = H.file_bytes -- nil for a file that cannot be read

local function sleep(s)
  os.execute("sleep " .. tostring(s))
end

-- The processes this file started, stopped by N.stop_all() whatever happened.
local running = {}

--- A TCP port on 127.0.0.1 that nothing listens on (just now).
function N.free_port()
  local out = H.check_run(PY .. [[ -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  return tonumber(out:match("%d+"))
end

-- A process is gone when /proc has no entry or it is a zombie.
local function alive(pid)
  local stat = read_all("/proc/" .. pid .. "/stat")
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end
N.alive = alive

-- Signals pid, waits up to `wait` seconds for it to go, then kills it.
local function stop_pid(pid, sig, wait)
  if not pid or not alive(pid) then return end
  os.execute("kill -" .. sig .. " " .. pid .. " 2>/dev/null")
  local deadline = os.time() + wait
  while alive(pid) and os.time() <= deadline do sleep(0.05) end
  if alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
end

-- Starts cmd in the background (output to files in dir); returns its pid.
local function spawn(cmd, dir, name)
  local out = H.check_run(string.format("%s >%s 2>%s </dev/null & echo $!", cmd,
    H.q(dir .. "/" .. name .. ".out"), H.q(dir .. "/" .. name .. ".err")))
  return tonumber(out:match("%d+"))
end

-- ---- a private emulator -------------------------------------------------------------------

local Emulator = {}
Emulator.__index = Emulator

--- Starts spec/support/emulator.py on a free port, forwarding to the test bed's Orthanc.
function N.emulator()
  local dir = H.tmpdir()
  H.check_run("mkdir -p " .. H.q(dir .. "/spool"))
  local static_token = "static-" .. math.random(1, 1e9)
  local cmd = table.concat({ PY, H.q(H.env.support .. "/emulator.py"), "--port 0",
    "--orthanc", H.q(H.env.orthanc), "--store", H.q(N.STORE), "--token", static_token,
    "--tmp", H.q(dir .. "/spool") }, " ")
  local e = setmetatable({ dir = dir, static_token = static_token }, Emulator)
  e.pid = spawn(cmd, dir, "emulator")
  running[#running + 1] = e
  for _ = 1, 400 do
    local out = read_all(dir .. "/emulator.out") or ""
    e.url = out:match("^(http://[^\n]+)\n")
    if e.url then break end
    if not alive(e.pid) then break end
    sleep(0.05)
  end
  if not e.url then
    e:stop()
    error("the emulator did not start: " .. (read_all(dir .. "/emulator.err") or ""), 2)
  end
  e.port = tonumber(e.url:match(":(%d+)$"))
  e.token_uri = e.url .. "/token"
  return e
end

function Emulator:control(path, tbl)
  local body = tbl == nil and "{}" or cjson.encode(tbl)
  if type(tbl) == "table" and next(tbl) == nil and path == "faults" then body = "[]" end
  local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body,
    self.url .. "/_control/" .. path })
  assert(r.status == 200, "emulator control " .. path .. " -> " .. tostring(r.status) .. " " .. r.body)
  return r.json
end

function Emulator:stats()
  local r = H.curl({ self.url .. "/_control/stats" })
  assert(r.status == 200, "emulator stats -> " .. tostring(r.status))
  return r.json
end

--- Token requests with the JWT grant so far.
function Emulator:token_requests()
  return (self:stats().token_requests or {})["urn:ietf:params:oauth:grant-type:jwt-bearer"] or 0
end

function Emulator:log()
  return read_all(self.dir .. "/emulator.err") or ""
end

function Emulator:stop()
  stop_pid(self.pid, "TERM", 5)
end

--- A service account registered with this emulator: H.service_account's fields, with a key file
--- whose token_uri is this emulator's.
function Emulator:service_account()
  local sa = H.service_account({ register = false, fields = { token_uri = self.token_uri } })
  self:control("keys", { kid = sa.kid, client_email = sa.client_email, public_key_pem = sa.public_key_pem })
  H.check_run("chmod 600 " .. H.q(sa.key_file))
  return sa
end

-- ---- a canned API ------------------------------------------------------------------------

local CANNED = [[
import http.server, sys
body = open(sys.argv[1], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", sys.argv[2])
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 1000):
            piece = body[i:i + 1000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
body = body.replace(b"{PORT}", b"%d" % s.server_address[1])
print(s.server_address[1], flush=True)
s.serve_forever()
]]

--- An API that answers every GET with body (of type ctype; "{PORT}" in it stands for its port),
--- chunked, 1000 bytes a chunk (the emulator sends JSON with a Content-Length). Returns
--- { port, body (as sent), stop() }.
function N.canned(body, ctype)
  local dir = H.tmpdir()
  H.write_file(dir .. "/body", body)
  H.write_file(dir .. "/canned.py", CANNED)
  local c = { stop = function(self) stop_pid(self.pid, "TERM", 2) end }
  c.pid = spawn(table.concat({ PY, H.q(dir .. "/canned.py"), H.q(dir .. "/body"), H.q(ctype) }, " "), dir, "canned")
  running[#running + 1] = c
  for _ = 1, 200 do
    c.port = tonumber((read_all(dir .. "/canned.out") or ""):match("^(%d+)\n"))
    if c.port or not alive(c.pid) then break end
    sleep(0.05)
  end
  if not c.port then
    c:stop()
    error("the canned API did not start: " .. (read_all(dir .. "/canned.err") or ""), 2)
  end
  c.body = body:gsub("{PORT}", tostring(c.port))
  return c
end

-- ---- the gateway --------------------------------------------------------------------------

--- The directory holding the LuaJIT build of healthcare.core (nginx runs LuaJIT): this ctest's
--- own build when it is one, else build-luajit/ of the source tree, configured and built if needed.
local luajit_dir
function N.luajit_cpath_dir()
  if luajit_dir then return luajit_dir end
  local src = os.getenv("HC_SOURCE_DIR") or "."
  -- the main build makes a LuaJIT module too (CMakeLists.txt) when a LuaJIT is installed
  local beside = os.getenv("HC_LUAJIT_DIR")
  if beside and read_all(beside .. "/healthcare/core.so") then
    luajit_dir = beside
    return beside
  end
  if (os.getenv("HC_LUA") or ""):match("luajit") and os.getenv("HC_BUILD_DIR") then
    luajit_dir = os.getenv("HC_BUILD_DIR")
    return luajit_dir
  end
  local dir = src .. "/build-luajit"
  if not read_all(dir .. "/CMakeCache.txt") then
    H.check_run("cmake -S " .. H.q(src) .. " -B " .. H.q(dir) .. " -DHC_LUAJIT=ON >/dev/null")
  end
  H.check_run("cmake --build " .. H.q(dir) .. " --target healthcare_core >/dev/null")
  luajit_dir = dir
  return dir
end

-- Replaces the one occurrence of `from` in text (plain text); an example that changed so that
-- a replacement no longer applies is an error, not a silently different test.
local function replace_once(text, from, to)
  local i, j = text:find(from, 1, true)
  if not i then error("examples/openresty/nginx.conf no longer contains: " .. from, 3) end
  assert(not text:find(from, j + 1, true), "more than one occurrence of: " .. from)
  return text:sub(1, i - 1) .. to .. text:sub(j + 1)
end
N.replace_once = replace_once

--- The example configuration pointed at the test bed. o: dir, port, api_port, token_port,
--- key_file, store, workers, lua_cpath_dir, configure_extra (Lua text added to configure{}),
--- edits (more { from, to } replacements of the example's text). configure{} gets api_origin
--- = the emulator's URL (the origin of the URLs in its answers).
function N.config(o)
  local src = os.getenv("HC_SOURCE_DIR") or "."
  local example = o.example or N.EXAMPLE
  local conf = assert(read_all(example), "cannot read " .. example)
  local edits = {
    { "worker_processes auto;", "worker_processes " .. (o.workers or 4) .. ";" },
    { "pid /run/healthcare-gateway.pid;", "pid " .. o.dir .. "/nginx.pid;" },
    { "error_log /var/log/nginx/healthcare-gateway.error.log notice;", "error_log " .. o.dir .. "/error.log info;" },
    { 'lua_package_path "/usr/local/share/lua/5.1/?.lua;/usr/local/share/lua/5.1/?/init.lua;;";',
      'lua_package_path "' .. src .. '/lua/?.lua;' .. src .. '/lua/?/init.lua;;";' },
    { 'lua_package_cpath "/usr/local/lib/lua/5.1/?.so;;";', 'lua_package_cpath "' .. o.lua_cpath_dir .. '/?.so;;";' },
    { '"/etc/healthcare/service-account.json"', string.format("%q", o.key_file) },
    { '"projects/PROJECT/locations/LOCATION/datasets/DATASET/dicomStores/STORE",',
      string.format("%q,", o.store or N.STORE) .. string.format("\napi_origin = %q,", "http://127.0.0.1:" .. o.api_port)
        .. (o.configure_extra and ("\n" .. o.configure_extra) or "") },
    { "server healthcare.googleapis.com:443;", "server 127.0.0.1:" .. o.api_port .. ";" },
    { "server oauth2.googleapis.com:443;", "server 127.0.0.1:" .. o.token_port .. ";" },
    { "proxy_pass https://healthcare_api;", "proxy_pass http://healthcare_api;" },
    { "proxy_pass https://google_oauth2/token;", "proxy_pass http://google_oauth2/token;" },
    { "access_log /var/log/nginx/healthcare-gateway.access.log healthcare;",
      "access_log " .. o.dir .. "/access.log healthcare;" },
    { "listen 127.0.0.1:8080;", "listen 127.0.0.1:" .. o.port .. ";" },
  }
  for _, e in ipairs(o.edits or {}) do edits[#edits + 1] = e end
  for _, e in ipairs(edits) do conf = replace_once(conf, e[1], e[2]) end
  return conf
end

local Gateway = {}
Gateway.__index = Gateway

--- Starts nginx with N.config(o) (o.emulator gives api_port and token_port unless set) and waits
--- until it answers. Returns a gateway, or raises with nginx's own words.
function N.gateway(o)
  o = o or {}
  local g = setmetatable({ dir = H.tmpdir() }, Gateway)
  o.dir = g.dir
  o.port = o.port or N.free_port()
  o.api_port = o.api_port or o.emulator.port
  o.token_port = o.token_port or o.emulator.port
  o.lua_cpath_dir = o.lua_cpath_dir or N.luajit_cpath_dir()
  g.conf_file = g.dir .. "/nginx.conf"
  H.write_file(g.conf_file, N.config(o))
  g.port = o.port
  g.url = "http://127.0.0.1:" .. o.port
  g.error_log = g.dir .. "/error.log"
  g.access_log = g.dir .. "/access.log"
  -- LUA_PATH and LUA_CPATH are this spec's (Lua 5.4): nginx's LuaJIT must not see them.
  g.pid = spawn(table.concat({ "env -u LUA_PATH -u LUA_CPATH", N.NGINX, "-p", H.q(g.dir), "-c", H.q(g.conf_file), "-e", H.q(g.error_log),
    "-g", H.q("daemon off;") }, " "), g.dir, "nginx")
  running[#running + 1] = g
  for _ = 1, 200 do
    if not alive(g.pid) then break end
    local so = H.run("curl -s -o /dev/null -w '%{http_code}' " .. H.q(g.url .. "/"))
    if so ~= "" and so ~= "000" then return g end
    sleep(0.05)
  end
  local why = g:log() .. (read_all(g.dir .. "/nginx.err") or "")
  g:stop()
  error("nginx did not start:\n" .. why, 2)
end

function Gateway:log()
  return read_all(self.error_log) or ""
end

function Gateway:access_lines()
  local lines = {}
  for line in (read_all(self.access_log) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
  return lines
end

--- The pids of nginx's worker processes.
function Gateway:workers()
  local list = {}
  local kids = read_all("/proc/" .. self.pid .. "/task/" .. self.pid .. "/children") or ""
  for pid in kids:gmatch("%d+") do list[#list + 1] = tonumber(pid) end
  return list
end

--- VmRSS of a process in kB, or nil.
function N.rss_kb(pid)
  local status = read_all("/proc/" .. pid .. "/status") or ""
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

function Gateway:alive()
  return alive(self.pid)
end

--- Graceful stop (QUIT), then TERM, then KILL; workers go with the master.
function Gateway:stop()
  local workers = self:workers()
  stop_pid(self.pid, "QUIT", 5)
  stop_pid(self.pid, "TERM", 2)
  for _, w in ipairs(workers) do stop_pid(w, "KILL", 1) end
end

--- Stops everything this file started (for a teardown).
function N.stop_all()
  for i = #running, 1, -1 do
    pcall(running[i].stop, running[i])
    running[i] = nil
  end
end

return N
