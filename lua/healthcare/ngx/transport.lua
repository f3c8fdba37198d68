-- SPDX-License-Identifier: MIT
-- healthcare.ngx.transport: the client's transport inside OpenResty request handlers. Under
-- ngx_lua, in a phase that may yield (rewrite, access, content, timers), a Client's requests go
-- over nginx's cosockets (ngx.socket.tcp): the worker's event loop runs every other connection
-- while one waits for Google. libcurl would block the whole worker for the length of each call.
--
-- Why cosockets and not ngx.location.capture: a subrequest's answer is handed to Lua whole, in
-- memory (a 1 GB retrieve would sit in the worker), and its request body must be a Lua string.
-- Over a cosocket the body is sent from its files in 64 KiB pieces and the answer is read in
-- 64 KiB pieces into the same sinks libcurl's transfers use (healthcare.core's body_reader and
-- sink: the same multipart framing, part parsing, caps and temporary files), so memory stays flat.
--
-- The session has the libcurl session's shape (request, start, wait, close; transfers with
-- result, progress, close) and its answers and errors are the same values, so Client, the store,
-- client:call and everything above them do not know which one runs. HTTP/1.1 only, connections
-- kept in nginx's cosocket pool; TLS verified against lua_ssl_trusted_certificate; hostnames
-- resolved by nginx's `resolver`. Proxies as the libcurl transport takes them (the proxy and
-- no_proxy options, else the environment's variables by libcurl's rules, util.proxy_for), over
-- http:// only: https goes through a CONNECT tunnel (the proxy resolves the name), plain http as
-- an absolute-form request; a user:password in the proxy's URL is sent as Basic authentication.
-- Compression is not asked for (Accept-Encoding: identity).
--
-- A phase that cannot yield (init, init_worker, set, header_filter, body_filter, log, balancer)
-- gets nil, err (kind "usage", status "phase") at once: never a silent block of the worker.
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

-- Phases where cosockets and ngx.sleep work (ngx_lua's documentation, "Context" of each).
M.YIELDABLE = { rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true }
M.CHUNK = 64 * 1024
-- libcurl's cap on an answer's header lines (src/hc_http.c), and on its chunked trailer apart
M.MAX_HEADER_BYTES = 256 * 1024
M.MAX_CONNECT_BYTES = 64 * 1024
-- A chunk-size line is hex digits and perhaps extensions nobody sends long
M.MAX_CHUNK_LINE = 4096
M.DEFAULT_MAX_RESPONSE = 64 * 1024 * 1024
M.POOL_SIZE = 16
M.PROGRESS_INTERVAL = 0.2

-- ---- where we are ---------------------------------------------------------------------------

--- Whether this Lua runs inside ngx_lua (OpenResty, nginx with the Lua module, resty).
function M.in_nginx()
  local n = rawget(_G, "ngx")
  return type(n) == "table" and type(n.get_phase) == "function" and type(n.socket) == "table"
end

--- nginx's current phase, or nil outside nginx.
function M.phase()
  return M.in_nginx() and ngx.get_phase() or nil
end

--- Whether a request may wait here without blocking the worker.
function M.can_yield()
  return M.YIELDABLE[M.phase() or ""] == true
end

--- nil, err for a request from a phase that cannot yield (what = "GET https://...").
function M.phase_error(what)
  return nil, errors.new("usage", string.format("%s: nginx's %s phase cannot wait for the network without "
    .. "blocking the worker; make Cloud Healthcare calls from rewrite_by_lua, access_by_lua, content_by_lua "
    .. "or a timer (ngx.timer.at)", what, tostring(M.phase())), { status = "phase" })
end

--- Sleeps without blocking the worker: true, or nil, err (M.phase_error) at once in a phase
--- where nginx cannot sleep, since the C core's sleep would stop every connection of the worker.
function M.sleep(seconds)
  if not M.can_yield() then return M.phase_error(string.format("waiting %g s", seconds)) end
  ngx.sleep(seconds)
  return true
end

-- ---- URLs and errors ------------------------------------------------------------------------

-- scheme, host (brackets off), port, authority (for Host), path+query of an http(s) URL.
local function split_url(url)
  -- written as it is into the request line: a space or control character would end it early
  if url:find("[%z\1-\32\127]") then return nil end
  local scheme, authority, rest = url:match("^(%a[%w+.-]*)://([^/?#]*)(.*)$")
  scheme = scheme and scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then return nil end
  if authority:find("@", 1, true) then return nil end
  local host, port = authority:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return nil end
  port = tonumber(port) or (scheme == "https" and 443 or 80)
  rest = rest:gsub("#.*$", "")
  if rest == "" or rest:sub(1, 1) == "?" then rest = "/" .. rest end
  return scheme, host, port, authority, rest
end

-- The C transport's error shape: { kind, status, message = "METHOD URL: why", retryable = false }.
local function fail(kind, status, r, fmt, ...)
  return nil, setmetatable({ kind = kind, status = status, retryable = false,
    message = string.format("%s %s: " .. fmt, r.method or "GET", r.url, ...) }, errors.mt)
end

-- The status of a cosocket failure: "timeout", "closed", "connection refused", ...
local function socket_status(step, why)
  why = tostring(why)
  if why == "timeout" then return step == "connect" and "connect" or "timeout" end
  if step == "connect" then
    if why:find("resolve", 1, true) or why:find("not found", 1, true) or why:find("resolver", 1, true) then
      return "resolve"
    end
    return "connect"
  end
  if step == "tls" then return "tls" end
  if step == "send" then return "send" end
  return "recv"
end

-- ---- one exchange ---------------------------------------------------------------------------

local Exchange = {}
Exchange.__index = Exchange

-- The request head: request line, Host, User-Agent, the caller's headers, framing.
function Exchange:head(length)
  local r = self.r
  local target = self.target
  -- through a proxy, plain http names the whole URL (RFC 9112 3.2.2) and carries the proxy's
  -- credential; https went through a tunnel and speaks to the server itself
  local via = self.proxy and self.scheme == "http" and self.proxy or nil
  if via then target = "http://" .. self.authority .. target end
  local lines = { string.format("%s %s HTTP/1.1", r.method or "GET", target), "Host: " .. self.authority }
  if via and via.authorization then lines[#lines + 1] = "Proxy-Authorization: " .. via.authorization end
  local have = {}
  for _, h in ipairs(r.headers or {}) do
    if h:find("[\r\n%z]") then return nil end
    local name = (h:match("^([^:]+):") or ""):lower()
    have[name] = true
    lines[#lines + 1] = h
  end
  if not have["user-agent"] then lines[#lines + 1] = "User-Agent: " .. self.session.user_agent end
  if not have["accept-encoding"] then lines[#lines + 1] = "Accept-Encoding: identity" end
  if length then lines[#lines + 1] = string.format("Content-Length: %.0f", length) end
  lines[#lines + 1] = "\r\n"
  return table.concat(lines, "\r\n")
end

-- Sets the socket's timeouts for its next operation: the idle timeout, or less when the request's
-- own deadline comes first. nginx re-arms a timeout each time bytes move, so a server sending a
-- byte now and then would hold one receive past any deadline: every receive here is one
-- receiveany, every send one piece of at most CHUNK bytes, and the time left is measured again
-- before the next. What is left over: nginx re-arms a send's timer whenever bytes of it move, so a
-- piece that a reader drains in small steps could end as long past the deadline as the reader takes
-- to drain it. Timed from the send itself (spec 71), none did here: the kernel takes a 64 KiB piece
-- whole once its send buffer has room (the 0.02 to 0.24 s once measured were the spec's own setup,
-- before the deadline started). nil once the deadline passed.
function Exchange:arm()
  local ms, connect_ms = self.session.idle_ms, self.session.connect_ms
  if self.deadline then
    local left = self.deadline - ngx.now()
    if left <= 0 then return nil end
    -- rounded up: when it fires, the deadline has passed and socket_fail says "timeout"
    left = math.max(1, math.ceil(left * 1000))
    ms, connect_ms = math.min(ms, left), math.min(connect_ms, left)
  end
  -- receives come in pieces of lua_socket_buffer_size (4 KiB): set only what changed
  if ms ~= self.armed_ms or connect_ms ~= self.armed_connect_ms then
    self.sock:settimeouts(connect_ms, ms, ms)
    self.armed_ms, self.armed_connect_ms = ms, connect_ms
  end
  return true
end

-- Up to max bytes of the answer: those received but not yet taken first, else one receive.
-- nil, why ("timeout", "closed", ...) when none came.
function Exchange:take(max)
  local buf, pos = self.buf, self.pos
  if pos > #buf then
    if not self:arm() then return nil, "timeout" end
    local piece, why = self.sock:receiveany(M.CHUNK)
    if not piece then return nil, why end
    buf, pos, self.buf = piece, 1, piece
  end
  local stop = math.min(#buf, pos + max - 1)
  self.pos = stop + 1
  if pos == 1 and stop == #buf then return buf end
  return buf:sub(pos, stop)
end

-- One line (up to LF, a CR before it dropped) and the bytes it took, LF included; nil, "long"
-- as soon as more than `cap` bytes came without one (a hostile server's endless line holds no
-- more than cap + one receive in memory); nil, why for the socket's failure.
function Exchange:line(cap)
  local parts, n = {}, 0
  while true do
    local piece, why = self:take(M.CHUNK)
    if not piece then return nil, why end
    local lf = piece:find("\n", 1, true)
    if lf then
      self.pos = self.pos - (#piece - lf) -- what follows the line is the next one's, or the body's
      n = n + lf
      if n > cap then return nil, "long" end
      parts[#parts + 1] = piece:sub(1, lf - 1)
      return (table.concat(parts):gsub("\r$", "")), n
    end
    n = n + #piece
    if n > cap then return nil, "long" end
    parts[#parts + 1] = piece
  end
end

function Exchange:progress()
  local cb = self.on_progress
  if not cb then return true end
  local now = ngx.now()
  if self.last_progress and now - self.last_progress < M.PROGRESS_INTERVAL then return true end
  self.last_progress = now
  return cb(self.received, self.sent, self.to_send) ~= false
end

function Exchange:aborted()
  return fail("transport", "aborted", self.r, "the transfer was stopped by its progress function")
end

-- A failure of the socket at `step` (the request's own timeout when it is past).
function Exchange:socket_fail(step, why)
  ngx.update_time()
  if self.deadline and ngx.now() >= self.deadline then
    return fail("transport", "timeout", self.r, "Operation timed out: not done within the timeout of %.3g s",
      self.timeout)
  end
  if why == "closed" and step == "recv" and self.status then
    return fail("transport", "partial", self.r, "the connection closed before the end of the answer")
  end
  if why == "timeout" and step ~= "connect" then
    return fail("transport", "too_slow", self.r, "nothing moved for %g s (idle_timeout)", self.session.idle_ms / 1000)
  end
  return fail("transport", socket_status(step, why), self.r, "%s failed: %s", step, tostring(why))
end

-- The error for header (or trailer) lines past libcurl's cap, in its words.
function Exchange:head_too_long()
  return fail("transport", "response_too_large", self.r, "the answer's header (or trailer) lines are larger than "
    .. "%d bytes", M.MAX_HEADER_BYTES)
end

-- Opens a tunnel to the server through the proxy: CONNECT, and its answer read (bounded: a
-- hostile proxy's endless header is cut). Returns true, or nil, err.
function Exchange:tunnel()
  local p, sock = self.proxy, self.sock
  local to = self.host:find(":", 1, true) and ("[" .. self.host .. "]:" .. self.port) or (self.host .. ":" .. self.port)
  local head = { "CONNECT " .. to .. " HTTP/1.1", "Host: " .. to }
  if p.authorization then head[#head + 1] = "Proxy-Authorization: " .. p.authorization end
  head[#head + 1] = "\r\n"
  if not self:arm() then return self:socket_fail("connect", "timeout") end
  local ok, why = sock:send(table.concat(head, "\r\n"))
  if not ok then return self:socket_fail("connect", why) end
  local line, code, reason
  local left = M.MAX_CONNECT_BYTES
  while true do -- the status line, then the rest of the answer's head up to its empty line
    local h, n = self:line(left)
    if not h and n == "long" then
      sock:close()
      return fail("transport", "proxy", self.r, "the proxy %s answered CONNECT with a header past %d bytes",
        p.shown, M.MAX_CONNECT_BYTES)
    end
    if not h then return self:socket_fail("connect", n) end
    left = left - n
    if not line then
      line = h
      code, reason = line:match("^HTTP/1%.%d (%d%d%d) ?(.*)$")
    elseif h == "" then
      break
    end
  end
  if not code then
    sock:close()
    return fail("transport", "proxy", self.r, "the proxy %s did not answer CONNECT in HTTP (%s)", p.shown,
      util.printable(line:sub(1, 80)))
  end
  code = tonumber(code)
  if code < 200 or code > 299 then
    sock:close()
    return fail("transport", "proxy", self.r, "the proxy %s answered CONNECT %s with %d %s", p.shown, to, code,
      util.printable(reason:sub(1, 200)))
  end
  if self.pos <= #self.buf then -- the TLS handshake would not see these bytes
    sock:close()
    return fail("transport", "proxy", self.r, "the proxy %s sent bytes after its answer to CONNECT", p.shown)
  end
  return true
end

function Exchange:connect()
  local s, p = self.session, self.proxy
  local sock = ngx.socket.tcp()
  self.sock = sock
  if not self:arm() then return self:socket_fail("connect", "timeout") end
  -- One pool per server, verification, and proxy (a tunnel is a connection to its server)
  local pool = string.format("healthcare:%s:%s:%d:%s%s", self.scheme, self.host, self.port, s.insecure and "i" or "v",
    p and (":via:" .. p.host .. ":" .. p.port .. ":" .. p.key) or "")
  local ok, why = sock:connect(p and p.host or self.host, p and p.port or self.port,
    { pool = pool, pool_size = M.POOL_SIZE })
  if not ok then return self:socket_fail("connect", why) end
  if p and self.scheme == "https" and sock:getreusedtimes() == 0 then
    local opened, terr = self:tunnel()
    if not opened then return nil, terr end
  end
  if self.scheme == "https" and sock:getreusedtimes() == 0 then
    if not self:arm() then return self:socket_fail("tls", "timeout") end
    -- lua-resty-core 0.1.25 (Debian 12) raises "assertion failed!" instead of returning the
    -- error when a verification fails during a handshake that completed at once: that is a
    -- refusal too (OpenSSL's reason is in nginx's error log).
    local called, sess, herr = pcall(sock.sslhandshake, sock, nil, self.host, not s.insecure)
    if not called then
      herr = "certificate verification failed (nginx's error log gives OpenSSL's reason; " .. tostring(sess) .. ")"
      sess = nil
    end
    if not sess then return self:socket_fail("tls", herr) end
  end
  return true
end

function Exchange:send_all(data)
  if not self:arm() then return self:socket_fail("send", "timeout") end
  local ok, why = self.sock:send(data)
  if not ok then return self:socket_fail("send", why) end
  return true
end

-- Sends the head and the body (a string, or read from its files by the C core).
function Exchange:send_request()
  local body, reader, length = self.r.body, nil, nil
  if type(body) == "table" then
    local err
    reader, err = core.body_reader(body)
    if not reader then
      err.message = string.format("%s %s: %s", self.r.method or "GET", self.r.url, err.message)
      return nil, err
    end
    self.reader = reader
    length = reader:length()
  elseif type(body) == "string" then
    length = #body
  elseif self.r.method == "POST" or self.r.method == "PUT" or self.r.method == "PATCH" then
    length = 0
  end
  self.to_send = length or 0
  local head = self:head(length)
  if not head then return fail("usage", "header", self.r, "a header holds CR, LF or NUL") end
  local ok, err = self:send_all(head)
  if not ok then return nil, err end
  if type(body) == "string" then
    -- in pieces, as a file's: nginx starts a send's timeout again each time bytes move, so a
    -- server reading slowly would hold one send of the whole body past the deadline
    for at = 1, #body, M.CHUNK do
      ok, err = self:send_all(body:sub(at, at + M.CHUNK - 1))
      if not ok then return nil, err end
      self.sent = math.min(#body, at + M.CHUNK - 1)
      if not self:progress() then return self:aborted() end
    end
  elseif reader then
    while true do
      local piece, rerr = reader:read(M.CHUNK)
      if not piece then
        rerr.message = string.format("%s %s: %s", self.r.method or "GET", self.r.url, rerr.message)
        return nil, rerr
      end
      if piece == "" then break end
      ok, err = self:send_all(piece)
      if not ok then return nil, err end
      self.sent = self.sent + #piece
      if not self:progress() then return self:aborted() end
    end
  end
  return true
end

-- Reads the status line and header block of the final response (1xx skipped). As libcurl, the
-- head's bytes (CRLFs included) count against MAX_HEADER_BYTES, again from 0 at each 1xx.
function Exchange:read_head()
  while true do
    local left = M.MAX_HEADER_BYTES
    local line, why = self:line(left)
    if not line then
      if why == "long" then return self:head_too_long() end
      return self:socket_fail("recv", why == "closed" and "the server closed the connection without an answer" or why)
    end
    left = left - why
    local version, status = line:match("^HTTP/(%d%.?%d?) (%d%d%d)")
    if not status then return fail("transport", "recv", self.r, "not an HTTP answer: %q", line:sub(1, 80)) end
    local headers = {}
    while true do
      local h, n = self:line(left)
      if not h then
        if n == "long" then return self:head_too_long() end
        return self:socket_fail("recv", n)
      end
      if h == "" then break end
      left = left - n
      local name, value = h:match("^([^:%s]+)%s*:%s*(.-)%s*$")
      if name then
        name = name:lower()
        headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
      end
    end
    status = tonumber(status)
    if status >= 200 or status == 101 then
      self.status, self.headers, self.http_version = status, headers, version
      return true
    end
  end
end

-- Where body bytes go: the sink's files (a 2xx answer to a request with a sink) or memory.
function Exchange:deliver(piece)
  self.received = self.received + #piece
  if self.sink and self.sink_mode ~= "memory" then
    local ok, err = self.sink:write(piece)
    if not ok then
      err.message = string.format("%s %s: %s", self.r.method or "GET", self.r.url, err.message)
      return nil, err
    end
  else
    self.memory_bytes = self.memory_bytes + #piece
    if self.memory_bytes > self.max_response then
      return fail("transport", "response_too_large", self.r, "the answer is larger than max_response_bytes (%d bytes)",
        self.max_response)
    end
    self.memory[#self.memory + 1] = piece
  end
  if not self:progress() then return self:aborted() end
  return true
end

-- Reads n bytes (a Content-Length body or a chunk) and delivers them as they come.
function Exchange:read_exactly(n)
  while n > 0 do
    local piece, why = self:take(math.min(n, M.CHUNK))
    if not piece then
      if why == "closed" then
        return fail("transport", "partial", self.r, "the answer ended %d bytes early", n)
      end
      return self:socket_fail("recv", why)
    end
    n = n - #piece
    local ok, err = self:deliver(piece)
    if not ok then return nil, err end
  end
  return true
end

-- The trailer after the last chunk: read and dropped, its bytes counted against the header cap
-- apart from the head's, as libcurl counts them.
function Exchange:read_trailer()
  local left = M.MAX_HEADER_BYTES
  while true do
    local line, n = self:line(left)
    if not line then
      if n == "long" then return self:head_too_long() end
      return self:socket_fail("recv", n)
    end
    if line == "" then return true end
    left = left - n
  end
end

function Exchange:read_chunked()
  while true do
    local line, why = self:line(M.MAX_CHUNK_LINE)
    if not line then
      if why == "long" then
        return fail("transport", "recv", self.r, "a chunk-size line longer than %d bytes", M.MAX_CHUNK_LINE)
      end
      return self:socket_fail("recv", why)
    end
    local size = tonumber(line:match("^%s*(%x+)") or "", 16)
    if not size then return fail("transport", "recv", self.r, "a malformed chunk size: %q", line:sub(1, 40)) end
    if size == 0 then return self:read_trailer() end
    local ok, err = self:read_exactly(size)
    if not ok then return nil, err end
    local crlf
    crlf, why = self:line(2)
    if not crlf and why ~= "long" then return self:socket_fail("recv", why) end
    if crlf ~= "" then return fail("transport", "recv", self.r, "a chunk without its CRLF") end
  end
end

function Exchange:read_to_close()
  while true do
    local piece, why = self:take(M.CHUNK)
    if not piece then
      if why == "closed" then return true end
      return self:socket_fail("recv", why)
    end
    local ok, err = self:deliver(piece)
    if not ok then return nil, err end
  end
end

-- Reads the body by its framing; returns true and whether the connection can be kept.
function Exchange:read_body()
  local h, status = self.headers, self.status
  local ce = h["content-encoding"]
  if ce and ce:lower() ~= "identity" then
    return fail("transport", "encoding", self.r, "the answer is %s-encoded (Content-Encoding) although identity "
      .. "was asked for (Accept-Encoding: identity)", ce:sub(1, 60))
  end
  if self.sink then
    local ok, err = self.sink:decide(status, h["content-type"])
    if not ok then return nil, err end
    self.sink_mode = self.sink:mode()
  end
  if self.r.method == "HEAD" or status == 204 or status == 304 then return true, true end
  local te, cl = (h["transfer-encoding"] or ""):lower(), h["content-length"]
  local ok, err
  if te:find("chunked", 1, true) then
    ok, err = self:read_chunked()
  elseif cl then
    local n = tonumber(cl:match("^%s*(%d+)%s*$") or "")
    if not n then return fail("transport", "recv", self.r, "a malformed Content-Length: %q", cl:sub(1, 40)) end
    ok, err = self:read_exactly(n)
  else
    ok, err = self:read_to_close()
    return ok, false, err
  end
  if not ok then return nil, err end
  return true, not (h["connection"] or ""):lower():find("close", 1, true)
end

-- The answer in the libcurl transport's shape.
function Exchange:result()
  local res = { status = self.status, headers = self.headers, body = table.concat(self.memory),
    http_version = self.http_version }
  self.memory = {}
  if self.sink then
    local done, err = self.sink:finish(true)
    if not done then return nil, err end
    res.file, res.parts, res.bytes = done.file, done.parts, done.bytes
    if self.sink_mode == "memory" then res.file, res.parts, res.bytes = nil, nil, nil end
  end
  return res
end

-- Frees the socket (kept in the pool when the answer was read whole) and the files not handed over.
function Exchange:release(keep)
  if self.reader then self.reader:close() end
  -- bytes past the answer's end would be read as the next request's answer
  if self.pos <= #self.buf then keep = false end
  if self.sock then
    if keep then self.sock:setkeepalive(self.session.idle_ms, M.POOL_SIZE) else self.sock:close() end
    self.sock = nil
  end
end

-- The whole exchange; the answer or nil, err (with err.parts for a directory sink, as libcurl's).
function Exchange:exchange()
  local ok, err = self:connect()
  if ok then ok, err = self:send_request() end
  if ok then ok, err = self:read_head() end
  local keep
  if ok then ok, keep, err = self:read_body() end
  if not ok and err == nil then err = keep end
  local res
  if ok then res, err = self:result() end
  self:release(res ~= nil and keep == true)
  if not res and self.sink then
    local left = self.sink:finish(false)
    -- As libcurl's transfers: a directory sink's failure lists its complete parts (the caller's).
    if self.r.sink.dir then err.parts = left and left.parts or {} end
    self.sink:close()
  end
  if not res and self.status then err.http_status = self.status end
  return res, err
end

-- The exchange, whatever it raises turned into an error value with the socket and files freed:
-- a light thread that died would never be marked done, and wait() would never return it.
function Exchange:run()
  local called, res, err = pcall(self.exchange, self)
  if called then return res, err end
  pcall(self.release, self, false)
  if self.sink then pcall(self.sink.close, self.sink) end
  return fail("transport", "internal", self.r, "the transport failed: %s", tostring(res))
end

-- ---- the session ----------------------------------------------------------------------------

local Session = {}
Session.__index = Session
Session.__name = "healthcare.NgxSession"
M.Session = Session

function Session:__tostring()
  return "healthcare.NgxSession (" .. (self.closed and "closed" or "open") .. ")"
end

--- A session with core.session's options that are meaningful here: user_agent,
--- connect_timeout, timeout, idle_timeout, insecure (ca_file, http2, min_speed, compression:
--- see the header). With cred (the client's credential): nil, err unless it can authorize
--- without blocking the worker.
function M.session(opts, cred)
  if cred then
    local ok, err = M.check_credential(cred)
    if not ok then return nil, err end
  end
  return setmetatable({
    user_agent = opts.user_agent or ("healthcare-lua/" .. core._VERSION .. " ngx_lua"),
    connect_ms = math.floor((opts.connect_timeout or 30) * 1000),
    idle_ms = math.floor((opts.idle_timeout and opts.idle_timeout > 0 and opts.idle_timeout or 300) * 1000),
    timeout = opts.timeout,
    insecure = opts.insecure == true,
    proxy_settings = { proxy = opts.proxy, no_proxy = opts.no_proxy },
    running = {},
  }, Session)
end

-- The proxy r.url goes through ({ host, port, authorization, key (of the pool), shown }), or
-- nil; or false, err for a proxy this transport cannot use.
local function proxy_for(self, r)
  local url, variable = util.proxy_for(r.url, nil, self.proxy_settings)
  if not url then return nil end
  local shown = util.redact_proxy(url) .. " (from " .. variable .. ")"
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then scheme, rest = "http", url end -- a bare host:port is an http proxy, as for curl
  if scheme:lower() ~= "http" then
    return false, select(2, fail("usage", "proxy", r, "the proxy %s: inside nginx, proxies are reached over "
      .. "http:// only", shown))
  end
  local authority = rest:match("^[^/?#]*")
  local userinfo, hostport = authority:match("^(.*)@(.*)$")
  hostport = hostport or authority
  local _, host, port = split_url("http://" .. hostport)
  if not host then
    return false, select(2, fail("usage", "proxy", r, "the proxy %s is not a host[:port]", shown))
  end
  if not hostport:find(":%d+$") then port = 1080 end -- curl's default for a proxy, not http's 80
  local p = { host = host, port = port, shown = shown, key = "" }
  if userinfo then
    local user, password = userinfo:match("^([^:]*):?(.*)$")
    p.authorization = "Basic " .. ngx.encode_base64(ngx.unescape_uri(user) .. ":" .. ngx.unescape_uri(password))
    p.key = ngx.md5(p.authorization) -- connections of one proxy user are not another's
  end
  return p
end

local function new_exchange(self, r)
  local scheme, host, port, authority, target = split_url(r.url)
  local x = setmetatable({ session = self, r = r, scheme = scheme, host = host, port = port,
    authority = authority, target = target, sent = 0, to_send = 0, received = 0, memory = {},
    memory_bytes = 0, max_response = r.max_response_bytes or M.DEFAULT_MAX_RESPONSE, buf = "", pos = 1 }, Exchange)
  local timeout = r.timeout or self.timeout
  if timeout and timeout > 0 then x.deadline, x.timeout = ngx.now() + timeout, timeout end
  if r.sink then x.sink = core.sink(r.sink) end
  return x
end

-- nil, err when this request cannot go (closed session, a phase that cannot yield, a URL that is
-- not http(s), a proxy it cannot use); else the proxy to go through (false: none). A URL with
-- CR, LF or NUL raises, blaming the caller of `fname`, as the libcurl session does.
local function refuse(self, r, fname)
  if r.url:find("[\r\n%z]") then
    error(string.format("bad argument #1 to '%s' (option 'url' contains CR, LF or NUL)", fname), 3)
  end
  if self.closed then return fail("transport", "abandoned", r, "the session is closed") end
  if not M.can_yield() then return M.phase_error((r.method or "GET") .. " " .. r.url) end
  if r.url:find("[%c \127]") then -- libcurl's status and words for them
    return nil, setmetatable({ kind = "transport", status = "url", retryable = false, message = string.format(
      "%s %s: URL using bad/illegal format or missing URL", r.method or "GET", util.printable(r.url)) }, errors.mt)
  end
  if not split_url(r.url) then return fail("usage", "url", r, "not an http(s) URL this transport can reach") end
  local p, perr = proxy_for(self, r)
  if p == false then return nil, perr end
  return p or false
end

--- One request, waited for (the running coroutine yields to nginx meanwhile). r as core's.
function Session:request(r)
  local proxy, err = refuse(self, r, "request")
  if err then return nil, err end
  ngx.update_time()
  local x = new_exchange(self, r)
  x.proxy = proxy or nil
  x.on_progress = r.on_progress
  return x:run()
end

local Transfer = {}
Transfer.__index = Transfer
Transfer.__name = "healthcare.NgxTransfer"

--- Starts a request in a light thread (ngx.thread): poll it with wait().
function Session:start(r)
  local proxy, err = refuse(self, r, "start")
  if err then return nil, err end
  ngx.update_time()
  local t = setmetatable({ session = self, x = new_exchange(self, r) }, Transfer)
  t.x.proxy = proxy or nil
  self.running[t] = true
  self.sema = self.sema or require("ngx.semaphore").new()
  t.thread = ngx.thread.spawn(function()
    local res, rerr = t.x:run()
    t.res, t.err, t.done = res, rerr, true
    if self.running[t] then self.sema:post(1) end
  end)
  return t
end

--- Transfers done (within `seconds`, 0: those done now), each returned once.
function Session:wait(seconds)
  local out = {}
  local function collect()
    for t in pairs(self.running) do
      if t.done then
        self.running[t] = nil
        out[#out + 1] = t
      end
    end
  end
  collect()
  if #out == 0 and next(self.running) and (seconds or 0) > 0 then
    self.sema:wait(seconds)
    collect()
  end
  return out
end

function Session:close()
  self.closed = true
  for t in pairs(self.running) do t:close() end
end

function Transfer:result()
  if not self.done then error("transfer has not finished", 2) end
  return self.res, self.err
end

function Transfer:progress()
  if self.done or not self.x then return 0, 0, 0 end
  return self.x.sent, self.x.to_send, self.x.received
end

function Transfer:close()
  local s = self.session
  s.running[self] = nil
  if not self.done and self.thread then
    pcall(ngx.thread.kill, self.thread)
    local x = self.x
    if x.sock then pcall(x.sock.close, x.sock) end
    if x.sink then x.sink:close() end
    if x.reader then x.reader:close() end
    self.done = true
  end
end

-- ---- the client's side: which transport, which credential -----------------------------------

-- Credential kinds that never fetch a token over the network (or do it without blocking).
local NON_BLOCKING = { none = true, access_token = true, api_key = true, basic_auth = true, ngx_gateway = true }

--- This module when healthcare.new's `transport` option (nil, "auto", "ngx", "curl"; checked by
--- the client) picks it, else false; nil, err for "ngx" outside nginx.
function M.wanted(choice)
  if choice == "curl" then return false end
  if choice == "ngx" and not M.in_nginx() then
    return nil, errors.new("usage", "transport = \"ngx\" needs OpenResty (ngx_lua); here there is no ngx")
  end
  -- Inside nginx whatever the phase: the session refuses requests from a phase that cannot
  -- yield when they are made (a client made in init_by_lua serves content handlers later).
  return M.in_nginx() and M
end

--- healthcare.new's options for this transport: with no credential named, the gateway's
--- (require("healthcare.ngx").configure{...}) when there is one.
function M.options(opts)
  if opts.credentials ~= nil or opts.access_token or opts.api_key or opts.basic_auth then return opts end
  local ok, gw = pcall(require, "healthcare.ngx")
  if not ok or not gw.configured(nil) then return opts end
  local copy = {}
  for k, v in pairs(opts) do copy[k] = v end
  copy.credentials = M.credential()
  return copy
end

--- nil, err unless the credential can authorize without blocking the worker.
function M.check_credential(cred)
  if NON_BLOCKING[cred.kind] then return true end
  return nil, errors.new("usage", string.format("inside nginx, a credential of kind %s would fetch its tokens through "
    .. "libcurl and block the worker: pass credentials = require(\"healthcare.ngx.transport\").credential() "
    .. "(the gateway's token, kept in its lua_shared_dict), or access_token / api_key", tostring(cred.kind)),
    { status = "NO_CREDENTIALS" })
end

--- The credential of the gateway named `name` (default "default"): its access token from the
--- lua_shared_dict every worker shares, refreshed through its internal token location (see
--- healthcare.ngx). The client's scopes are the gateway's.
function M.credential(name)
  local g = require("healthcare.ngx").gateway(name)
  local last
  local c = { kind = "ngx_gateway", refreshable = true, label = "gateway '" .. g.name .. "'" }
  function c.authorize()
    if not M.can_yield() then return M.phase_error("a token from " .. c.label) end
    if g.unusable then
      return nil, errors.new("auth", "the gateway's credentials are not usable: " .. g.unusable,
        { status = "NO_CREDENTIALS" })
    end
    local token, err, retry_after
    if M.phase() == "timer" then
      -- ngx.location.capture, which refreshes the gateway's token, is not available in timers:
      -- the token the requests keep fresh is used while it is valid.
      local cached, _, expires_at = g:cached()
      if cached and ngx.now() < expires_at then
        token = cached
      else
        err = "the gateway's token cannot be refreshed from a timer (ngx.location.capture is not available "
          .. "there) and no valid one is cached yet: let a request through the gateway first"
      end
    else
      token, err, retry_after = g:token()
    end
    if not token then
      return nil, errors.new("auth", "no access token from the gateway: " .. tostring(err),
        { status = "UNAVAILABLE", retryable = true, retry_after = retry_after })
    end
    last = token
    local headers = { "Authorization: Bearer " .. token }
    if g.cred.quota_project then headers[2] = "x-goog-user-project: " .. g.cred.quota_project end
    return { headers = headers }
  end
  function c.invalidate()
    if last and g:cached() == last then g.dict:delete(g.token_key) end
  end
  function c.generation()
    return last or ""
  end
  function c.secrets()
    return { last }
  end
  function c.close() end
  return c
end

return M
