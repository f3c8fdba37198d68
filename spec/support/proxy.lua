-- SPDX-License-Identifier: MIT
-- A real HTTP proxy for the specs: Debian's tinyproxy on a free port of 127.0.0.1, its config and
-- log in a directory of its own under the run's temp dir. Plain http requests are forwarded, https
-- goes through CONNECT tunnels (any port, unless connect_ports says which), and the log shows
-- every request it was asked to carry, which is how a spec proves the traffic went through it.
--   local proxy = require "support.proxy"
--   local p = proxy.start()              -- p.url ("http://127.0.0.1:PORT"), p.port, p.dir, p.log
--   p:requests()   -- { { method = "CONNECT", target = "127.0.0.1:8443" }, { method = "GET", target = "http://..." }, ... }
--   p:count("CONNECT")                   -- how many CONNECTs so far (any method, or all with no argument)
--   p:stop()                             -- in the spec's teardown
-- start{ connect_ports = { 443 } } allows CONNECT to those ports only; start{ user = "u", password = "p" }
-- makes the proxy ask for Basic authentication (407 without it).
local H = require "helpers"

local M = {}
local Proxy = {}
Proxy.__index = Proxy

local function free_port()
  return tonumber((H.check_run([[/usr/bin/python3 -c 'import socket; s = socket.socket(); ]]
    .. [[s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])):match("%d+"))
end

--- Starts tinyproxy and waits until it listens; raises when it does not come up.
function M.start(opts)
  opts = opts or {}
  local dir = H.tmpdir()
  -- tinyproxy started as root writes its log as nobody.
  H.check_run("chmod 0777 " .. H.q(dir))
  local log = dir .. "/tinyproxy.log"
  -- tinyproxy takes no port 0: a free port is picked, and another one if it was taken meanwhile.
  for _ = 1, 5 do
    local port = free_port()
    local conf = { "Port " .. port, "Listen 127.0.0.1", "Timeout 60", 'LogFile "' .. log .. '"', "LogLevel Info",
      "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes" }
    for _, p in ipairs(opts.connect_ports or {}) do conf[#conf + 1] = "ConnectPort " .. p end
    if opts.user then conf[#conf + 1] = "BasicAuth " .. opts.user .. " " .. opts.password end
    H.write_file(dir .. "/tinyproxy.conf", table.concat(conf, "\n") .. "\n")
    os.remove(log)
    local pid = tonumber((H.check_run("tinyproxy -d -c " .. H.q(dir .. "/tinyproxy.conf")
      .. " >" .. H.q(dir .. "/stderr") .. " 2>&1 </dev/null & echo $!")):match("%d+"))
    for _ = 1, 200 do
      if (H.file_bytes(log) or ""):find("Starting main loop", 1, true) then
        return setmetatable({ pid = pid, port = port, url = "http://127.0.0.1:" .. port, dir = dir, log = log }, Proxy)
      end
      if select(3, H.run("kill -0 " .. pid)) ~= 0 then break end
      os.execute("sleep 0.05")
    end
    os.execute("kill " .. pid .. " 2>/dev/null")
  end
  error("tinyproxy did not start: " .. (H.file_bytes(log) or "") .. (H.file_bytes(dir .. "/stderr") or ""), 2)
end

--- The requests the proxy was asked to carry, in order, from its log.
function Proxy:requests()
  local list = {}
  for method, target in (H.file_bytes(self.log) or ""):gmatch("Request %(file descriptor %d+%): (%u+) (%S+)") do
    list[#list + 1] = { method = method, target = target }
  end
  return list
end

--- How many requests of this method (all of them when nil) the proxy was asked to carry.
function Proxy:count(method)
  local n = 0
  for _, r in ipairs(self:requests()) do
    if method == nil or r.method == method then n = n + 1 end
  end
  return n
end

function Proxy:stop()
  if self.pid then
    H.run("kill " .. self.pid .. "; for i in $(seq 100); do kill -0 " .. self.pid
      .. " 2>/dev/null || exit 0; sleep 0.05; done; kill -9 " .. self.pid)
    self.pid = nil
  end
end

return M
