-- SPDX-License-Identifier: MIT
-- The client: one transport session (its connection pool), one credential, one endpoint, and the
-- one request path of the module. Every HTTP exchange goes through Client:send (synchronous) or
-- Client:start, Client:poll and Client:finish (many in flight: store's Batch), which share every
-- step: credentials, the standard query parameters and the User-Agent are added, a credential is
-- refused to a proxy over plain http, redacted debug lines are logged, transport failures become
-- error values, a 401 with a refreshable credential is sent again once with a fresh token, and
-- the client's own secrets are taken out of every text a server sends back (a hostile server may
-- echo them) before anyone keeps or prints it.
-- A client owns its session and the credential it made (with the credential's own session for
-- token requests): close() closes them all; a credential object passed in is the caller's.
local core = require "healthcare.core"
local auth = require "healthcare.auth"
local errors = require "healthcare.errors"
local params = require "healthcare.params"
local util = require "healthcare.util"
local api_call = require "healthcare.api.call"
local api_operation = require "healthcare.api.operation"
local api_pages = require "healthcare.api.pages"

local M = {}

M.DEFAULT_ENDPOINT = "https://healthcare.googleapis.com/v1"

local Client = {}
Client.__index = Client
Client.__name = "healthcare.Client"
M.Client = Client

-- The options of healthcare.new (README "Lua API") and what each must be (a wrong type raises at
-- the caller's line).
local OPTION_TYPES = {
  credentials = "string|table|boolean", access_token = "string", api_key = "string", scopes = "string|table",
  endpoint = "string", params = "table", timeout = "number", connect_timeout = "number",
  idle_timeout = "number", retry = "table", concurrency = "number", ca_file = "string", insecure = "boolean",
  user_agent = "string", debug = "boolean|function", http2 = "boolean", self_signed_jwt = "boolean",
  subject = "string", token_cache = "boolean|string", refresh_margin = "number", quota_project = "string",
  min_speed = "number", max_compression_ratio = "number", impersonate = "string", delegates = "table",
  iam_endpoint = "string", transport = "string",
  proxy = "string", no_proxy = "string", basic_auth = "table",
}
local SHOWN_TYPES = { credentials = "path, table or false", token_cache = "boolean or directory",
  basic_auth = "table { user = ..., password = ... }" }
M.OPTIONS = {}
for name in pairs(OPTION_TYPES) do M.OPTIONS[#M.OPTIONS + 1] = name end
table.sort(M.OPTIONS)

local function user_agent(extra)
  local ua = "healthcare-lua/" .. core._VERSION .. " " .. core.curl_version
  if extra then ua = extra .. " " .. ua end
  return ua
end

-- Application Default Credentials are looked for at the first request that needs them, not
-- when the client is made: a call that carries its own token or key as a query parameter (the
-- CLI's -p access-token=...) must work on a machine that has no Google credentials at all.
local function lazy_default(credentials, opts)
  local found
  local lazy = { kind = "default", refreshable = true }
  function lazy.authorize(_, scopes)
    if not found then
      local c, err = credentials.default(opts)
      if not c then return nil, err end
      found = c
      lazy.refreshable = c.refreshable
    end
    return found:authorize(scopes)
  end
  function lazy.invalidate()
    if found then found:invalidate() end
  end
  function lazy.generation()
    return found and found.refreshes or 0
  end
  function lazy.secrets()
    return found and found.secrets and found:secrets() or {}
  end
  function lazy.close()
    if found and found.close then found:close() end
  end
  return lazy
end

--- Picks the credential from the options (see README, "Credentials"). Returns it and whether the
--- client made it (and so owns it), or nil, err.
local function credential_from(opts)
  local c = opts.credentials
  if c == false and opts.impersonate then
    return nil, errors.new("usage", "option 'impersonate' needs a credential to impersonate with, and "
      .. "credentials = false sends none")
  elseif c == false then
    return auth.none(), true
  elseif opts.impersonate and c ~= nil or opts.impersonate and (opts.access_token or opts.api_key) then
    -- impersonation over the credential named: healthcare.auth.credentials makes both
    local credentials = require "healthcare.auth.credentials"
    local cred, err = credentials.from_options(opts)
    if not cred then return nil, err end
    return cred, true
  elseif opts.basic_auth then
    return auth.basic(opts.basic_auth.user, opts.basic_auth.password), true
  elseif opts.access_token then
    return auth.access_token(opts.access_token), true
  elseif opts.api_key then
    return auth.api_key(opts.api_key), true
  elseif type(c) == "table" and type(c.authorize) == "function" then
    return c, false -- the caller's object: the caller closes it
  end
  local ok, credentials = pcall(require, "healthcare.auth.credentials")
  if not ok then
    -- Not a silent fallback to no credentials: the first symptom would be a 401 far from here.
    return nil, errors.new("auth", "cannot load the module healthcare.auth.credentials, which Google "
      .. "credentials need: " .. tostring(credentials), { status = "NO_CREDENTIALS" })
  end
  local cred, err
  if c == nil then
    cred = lazy_default(credentials, opts)
  else
    cred, err = credentials.from_options(opts)
  end
  if not cred then return nil, err end
  return cred, true
end

-- Raises for a wrong option (unknown, or of a wrong type); `level` as util.check_options'.
local function check_new_options(opts, fname, level)
  level = level + 1
  opts = util.check_options(opts, M.OPTIONS, fname, level)
  for k, v in pairs(opts) do
    util.check_option(v, k, fname, OPTION_TYPES[k], level, SHOWN_TYPES[k])
  end
  if opts.credentials == true then
    error(string.format("bad option 'credentials' to '%s' (path, table or false expected, got true)", fname), level)
  end
  for _, k in ipairs({ "timeout", "connect_timeout", "idle_timeout", "min_speed", "max_compression_ratio",
    "refresh_margin" }) do
    util.check_number(opts[k], k, fname, ">= 0", level)
  end
  util.check_number(opts.concurrency, "concurrency", fname, "whole >= 1", level)
  local t = opts.transport
  if t ~= nil and t ~= "auto" and t ~= "ngx" and t ~= "curl" then
    error(string.format("bad option 'transport' to '%s' (\"auto\", \"ngx\" or \"curl\" expected, got '%s')",
      fname, t), level)
  end
  if opts.retry then require("healthcare.retry").check(opts.retry, fname, level) end
  if opts.basic_auth then
    for k in pairs(opts.basic_auth) do
      if k ~= "user" and k ~= "password" then
        error(string.format("unknown field '%s' in option 'basic_auth' to '%s' (user and password expected)",
          tostring(k), fname), level)
      end
    end
    for _, k in ipairs({ "user", "password" }) do
      -- The value is never shown: it may be the password.
      if type(opts.basic_auth[k]) ~= "string" then
        error(string.format("bad option 'basic_auth.%s' to '%s' (string expected, got %s)", k, fname,
          type(opts.basic_auth[k])), level)
      end
    end
  end
  return opts
end

-- nil, or a usage error when two options name a credential (auth.conflict: credentials,
-- access_token, api_key, basic_auth; basic_auth with impersonate), or basic_auth holds a user or
-- password that cannot go in a Basic header (RFC 7617: a user-id has no ':'; nothing may break
-- the header line). Values, not types: they come from files and the environment too.
local function credential_refusal(opts)
  local conflict = auth.conflict(opts)
  if conflict then return conflict end
  local b = opts.basic_auth
  if not b then return nil end
  if b.user == "" or b.user:find(":", 1, true) or core.has_ctl(b.user) then
    return errors.new("usage", "option 'basic_auth': the user must be non-empty, without ':' (RFC 7617), CR, LF or NUL")
  end
  if core.has_ctl(b.password) then
    return errors.new("usage", "option 'basic_auth': the password contains CR, LF or NUL")
  end
  return nil
end

--- healthcare.new(opts): see README "Lua API". Returns the client, or nil, err.
function M.new(opts)
  local c, err = M.create(opts, "healthcare.new", 2)
  return c, err
end

--- healthcare.new for the module's other constructors: `fname` names the public function and
--- `level` its caller (error()'s level as seen from the caller of create, as util.check_options
--- takes it), so a wrong option is blamed on the user's line.
function M.create(opts, fname, level)
  opts = check_new_options(opts, fname, level + 1)
  for _, k in ipairs({ "access_token", "api_key", "user_agent" }) do
    if opts[k] and core.has_ctl(opts[k]) then
      return nil, errors.new("usage", string.format("option '%s' contains CR, LF or NUL", k))
    end
  end
  local refusal = credential_refusal(opts)
  if refusal then return nil, refusal end
  local std, perr = params.query(opts.params)
  if not std then return nil, perr end
  local endpoint = opts.endpoint or os.getenv("HEALTHCARE_ENDPOINT") or M.DEFAULT_ENDPOINT
  local refused = util.userinfo_refusal(endpoint, "endpoint")
  if refused then return nil, errors.new("usage", refused) end
  if not util.is_base_url(endpoint) then
    return nil, errors.new("usage", "endpoint must be an http(s) URL without spaces, control characters, "
      .. "non-ASCII, '?' or '#', got '" .. util.redact_url(endpoint) .. "'")
  end
  -- Inside OpenResty the requests go over nginx's cosockets (README "OpenResty"), never libcurl;
  -- elsewhere the module is not loaded (a tenth of the command's Lua source).
  local ngx_transport, terr = false, nil
  if opts.transport == "ngx" or rawget(_G, "ngx") ~= nil then
    ngx_transport, terr = require("healthcare.ngx.transport").wanted(opts.transport)
  end
  if terr then return nil, terr end
  if ngx_transport then opts = ngx_transport.options(opts) end
  local cred, owned = credential_from(opts)
  if not cred then return nil, owned end
  local session_opts = {
    user_agent = user_agent(opts.user_agent),
    connect_timeout = opts.connect_timeout or 30,
    timeout = opts.timeout,
    idle_timeout = opts.idle_timeout or 300,
    min_speed = opts.min_speed,
    max_compression_ratio = opts.max_compression_ratio,
    ca_file = opts.ca_file,
    insecure = opts.insecure == true,
    http2 = opts.http2 ~= false,
    proxy = opts.proxy,
    no_proxy = opts.no_proxy,
  }
  local session, serr = (ngx_transport or core).session(session_opts, cred)
  if not session then
    if owned and cred.close then cred:close() end
    return nil, serr
  end
  return setmetatable({
    proxy_settings = { proxy = opts.proxy, no_proxy = opts.no_proxy },
    endpoint = endpoint:gsub("/+$", ""),
    params = std,
    scopes = type(opts.scopes) == "string" and { opts.scopes } or opts.scopes or { params.DEFAULT_SCOPE },
    debug = util.debug_sink(opts.debug),
    retry = opts.retry,
    concurrency = opts.concurrency,
    timeout = opts.timeout,
    idle_timeout = opts.idle_timeout,
    insecure = opts.insecure == true,
    _session = session,
    _credential = cred,
    _owns_credential = owned,
    _pending = {},      -- core transfer -> its Request, for the requests in flight
    -- The credential values the last requests carried (a ring of SENT_KEPT): an answer to a
    -- request made with a token since replaced may still echo that token.
    _sent = {},
  }, Client)
end

--- Closes the session (requests in flight are abandoned) and the credential the client made,
--- with its own session. Safe to call twice; a closed client raises "attempt to use a closed
--- client" from every method but close, is_closed and tostring.
function Client:close()
  if self._closed then return end
  self._closed = true
  for t, request in pairs(self._pending) do
    request.transfer = nil
    t:close()
  end
  self._pending = {}
  self._session:close()
  if self._owns_credential and self._credential.close then self._credential:close() end
end

function Client:is_closed()
  return self._closed == true, "client"
end

Client.__close = Client.close
-- Lua 5.4 collects tables with __gc (LuaJIT does not: close() is the way there; the session and
-- the credential's session are userdata that close themselves when collected anyway).
Client.__gc = Client.close

function Client:__tostring()
  return "healthcare.Client (" .. (self._closed and "closed" or "open") .. ")"
end

--- The credential object (kind, token(scopes), secrets(); see README "Credentials"); owned by
--- the client unless it was passed in as `credentials`.
function Client:credential()
  util.check_self(self, "healthcare.Client", "credential")
  return self._credential
end

local function has_credential_param(q)
  return q.access_token or q.oauth_token or q.key
end

local SENT_KEPT = 8
-- Headers whose value is a credential.
local CREDENTIAL_HEADERS = { authorization = true, ["x-goog-api-key"] = true, ["proxy-authorization"] = true }

-- What credential a prepared request carries ("a bearer token", "an API key", ...), or nil.
local function credential_carried(headers, query)
  for _, h in ipairs(headers) do
    local name = (h:match("^([^:]+):") or ""):lower()
    if name == "authorization" then
      if h:match("^[^:]+:%s*[Bb][Aa][Ss][Ii][Cc]%s") then
        return "the Authorization header (Basic authentication: a user and password)"
      end
      return "the Authorization header (a bearer token)"
    end
    if CREDENTIAL_HEADERS[name] then return "the " .. name .. " header" end
  end
  if query.key then return "an API key (key=)" end
  if query.access_token or query.oauth_token then return "an access token (access_token=)" end
  return nil
end

-- Remembers the credential values a request carries, for Client:secrets.
local function remember_sent(self, headers, query)
  local sent = self._sent
  local function add(v)
    if type(v) ~= "string" or #v < util.MIN_SECRET then return end
    for _, have in ipairs(sent) do if have == v then return end end
    table.insert(sent, 1, v)
    sent[SENT_KEPT + 1] = nil
  end
  for _, h in ipairs(headers) do
    local name, value = h:match("^([^:]+):%s*(.-)%s*$")
    if name and CREDENTIAL_HEADERS[name:lower()] then
      add(value)
      add(value:match("^%a+%s+(.+)$")) -- the token of "Bearer <token>"
    end
  end
  for k, v in pairs(query) do
    if util.SECRET_PARAMS[k] then add(v) end
  end
end

--- The secrets in use by this client: the values its last requests carried, its credential's
--- own (tokens, keys, refresh token, client secret, an assertion being exchanged) and secret
--- standard parameters. A list of strings, for redaction by value (util.redact); never printed.
function Client:secrets()
  local list = {}
  for _, v in ipairs(self._sent) do list[#list + 1] = v end
  local c = self._credential
  if c.secrets then
    for _, v in ipairs(c:secrets()) do list[#list + 1] = v end
  end
  for k, v in pairs(self.params) do
    if util.SECRET_PARAMS[k] then list[#list + 1] = v end
  end
  return list
end

--- text with the client's secrets replaced by REDACTED (see util.redact).
function Client:redact(text)
  return util.redact(text, self:secrets())
end

-- Media types whose body is text a person may read, where an echoed secret is taken out even in
-- a successful answer (search results, metadata, STOW-RS answers); other bodies are data.
local function is_text(headers)
  local ct = (headers and headers["content-type"] or ""):lower()
  return ct == "" or ct:find("json", 1, true) ~= nil or ct:find("xml", 1, true) ~= nil
    or ct:find("^%s*text/") ~= nil
end

-- Takes the client's secrets out of a response: header values, and a body kept in memory when
-- it is an error or text. Binary answers (instances, frames, images) are left byte for byte.
local function scrub_response(self, res)
  local secrets = self:secrets()
  if #secrets == 0 then return res end
  for k, v in pairs(res.headers or {}) do
    if type(v) == "string" then res.headers[k] = util.redact(v, secrets) end
  end
  if type(res.body) == "string" and res.body ~= ""
    and (res.status < 200 or res.status > 299 or is_text(res.headers)) then
    res.body = util.redact(res.body, secrets)
  end
  return res
end

--- The message refusing to send `carried` (what credential) to url through proxy (named by the
--- environment variable) over plain http. Shared with healthcare.auth.credentials' token requests.
function M.proxy_refusal(url, carried, proxy, variable)
  local origin = url:match("^(%a+://[^/?#]*)") or url
  -- A proxy URL may carry its own user:password.
  local shown_proxy = util.redact_proxy(proxy)
  return string.format("refusing to send %s to %s through the proxy %s (from %s) over plain http, where "
    .. "the proxy can read it: use https, add the host to NO_PROXY, or allow it with insecure = true "
    .. "(--insecure)", carried, util.redact_url(origin), shown_proxy, variable)
end

-- The proxy policy: a credential does not go through a proxy over plain http (the proxy, and
-- anyone between, would read it) unless `insecure`. libcurl takes its proxy from the
-- environment; util.proxy_for reads the same variables by the same rules. Returns nil, err
-- (kind "usage": configuration to change) when the request must not be sent.
local function check_proxy(self, url, headers, query)
  if self.insecure or not url:lower():match("^http://") then return true end
  local proxy, variable = util.proxy_for(url, nil, self.proxy_settings)
  if not proxy then return true end
  local carried = credential_carried(headers, query)
  if not carried then return true end
  return nil, errors.new("usage", M.proxy_refusal(url, carried, proxy, variable), { status = "CLEARTEXT_PROXY" })
end

-- A number that changes whenever the credential fetches a new token: a 401 for a token already
-- replaced (requests in flight together all get theirs) must not drop the fresh one.
local function token_generation(c)
  if c.generation then return c.generation() end
  return c.refreshes or 0
end

local function log_request(self, r)
  if not self.debug then return end
  local secrets = self:secrets()
  self.debug("> " .. r.method .. " " .. util.redact_url(r.url, secrets))
  local proxy, variable = util.proxy_for(r.url, nil, self.proxy_settings)
  if proxy then self.debug("* through the proxy " .. util.redact_proxy(proxy) .. " (from " .. variable .. ")") end
  for _, h in ipairs(r.headers) do self.debug("> " .. util.redact_header(h, secrets)) end
end

local function log_response(self, res, seconds)
  if not self.debug then return end
  self.debug(string.format("< HTTP/%s %d (%.3f s)", res.http_version or "1.1", res.status, seconds))
  local names = {}
  for k in pairs(res.headers) do names[#names + 1] = k end
  table.sort(names)
  local secrets = self:secrets()
  for _, k in ipairs(names) do self.debug("< " .. util.redact_header(k .. ": " .. res.headers[k], secrets)) end
end

-- ---- the request path: build, then conclude (for send and for start/finish alike) -------------

-- The fields of a request (README "Lua API", client:send) and what each must be. check_request
-- raises at the line that called send or start.
local REQUEST_FIELDS = {
  method = "string", url = "string", headers = "table", query = "table", body = "string|table",
  timeout = "number", idle_timeout = "number", min_speed = "number", max_response_bytes = "number",
  compressed = "boolean", max_compression_ratio = "number", sink = "table", on_progress = "function",
  on_parts = "function", take_parts = "boolean",
}
local REQUEST_NAMES = {}
for k in pairs(REQUEST_FIELDS) do REQUEST_NAMES[#REQUEST_NAMES + 1] = k end

local function check_request(req, fname)
  util.check_arg(req, 1, fname, "table", 3)
  util.check_options(req, REQUEST_NAMES, fname, 3)
  for k, v in pairs(req) do util.check_option(v, k, fname, REQUEST_FIELDS[k], 3) end
  if type(req.url) ~= "string" then
    error("bad option 'url' to '" .. fname .. "' (string expected, got " .. type(req.url) .. ")", 3)
  end
end

-- A request of the client: the caller's table (`request`), and what its path needs to know
-- between attempts. start() hands it out; poll() gives it back once its transfer is done.
local Request = {}
Request.__index = Request
Request.__name = "healthcare.Request"
M.Request = Request

--- Bytes sent, bytes of the body to send, bytes received so far (0s once done).
function Request:progress()
  if not self.transfer then return 0, 0, 0 end
  return self.transfer:progress()
end

--- Abandons the request: its transfer stops, its temporary files are removed.
function Request:close()
  local t = self.transfer
  if not t then return end
  self.transfer = nil
  self.client._pending[t] = nil
  t:close()
end

-- The transport request for `request` (see REQUEST_FIELDS), with the credential, the standard
-- parameters and the query string; logged. Returns it, or nil, err.
local function build(self, request)
  local req = request.request
  local refused = util.userinfo_refusal(req.url, "a request's url")
  if refused then return nil, errors.new("usage", refused) end
  local query = {}
  for k, v in pairs(self.params) do query[k] = v end
  for k, v in pairs(req.query or {}) do query[k] = v end
  local headers = {}
  for i, h in ipairs(req.headers or {}) do headers[i] = h end
  -- A token or key given as a query parameter (the CLI's -p access-token=...) is the credential.
  request.authorized = not has_credential_param(query)
  if request.authorized then
    local a, err = self._credential:authorize(self.scopes)
    if not a then return nil, err end
    for _, h in ipairs(a.headers or {}) do headers[#headers + 1] = h end
    for k, v in pairs(a.query or {}) do query[k] = v end
  end
  -- After authorize, which may have fetched the token this request carries.
  request.generation = token_generation(self._credential)
  local ok, perr = check_proxy(self, req.url, headers, query)
  if not ok then return nil, perr end
  remember_sent(self, headers, query)
  local qs = util.query_string(query)
  local r = {
    method = req.method or "GET",
    -- A URL may already carry a query (QIDO-RS builds its own: servers differ in what they decode).
    url = qs ~= "" and (req.url .. (req.url:find("?", 1, true) and "&" or "?") .. qs) or req.url,
    headers = headers,
    -- the proxy check_proxy decided on, given to the transport as final (util.transport_proxy)
    proxy = util.transport_proxy(req.url, self.proxy_settings),
  }
  for _, k in ipairs({ "body", "timeout", "idle_timeout", "min_speed", "max_response_bytes", "compressed",
    "max_compression_ratio", "sink" }) do
    r[k] = req[k]
  end
  log_request(self, r)
  request.started = core.now()
  return r
end

-- The outcome of a transport call for `request`: the response (any HTTP status), or nil, err
-- for a failure of the transport; or nil, nil, true when it must go again: a 401 with a
-- refreshable credential, once per request, the token dropped unless another request already
-- replaced it.
local function conclude(self, request, res, err)
  if not res then
    err = errors.from_transport(err)
    err.message = self:redact(err.message) -- it may quote a server's header
    if self.debug then self.debug("< error: " .. err.message) end
    return nil, err
  end
  scrub_response(self, res)
  log_response(self, res, core.now() - request.started)
  local cred = self._credential
  if res.status == 401 and request.authorized and cred.refreshable and not request.refreshed then
    request.refreshed = true
    if token_generation(cred) == request.generation then cred:invalidate() end
    return nil, nil, true
  end
  return res
end

-- on_progress(p) of the library, p a table (README "Lua API"), as the transport's
-- on_progress(received, sent, to_send).
local function progress_of(on_progress)
  if not on_progress then return nil end
  return function(received, sent, to_send)
    return on_progress { bytes_received = received, bytes_sent = sent, bytes_to_send = to_send }
  end
end

--- Sends one request and waits for its answer. req = { method, url, headers, query, body,
--- timeout, idle_timeout, min_speed, max_response_bytes, compressed, max_compression_ratio, sink,
--- on_progress, on_parts, take_parts }. Returns the raw response { status, headers, body, ... } (any HTTP status), or
--- nil, err for a failure of the transport.
function Client:send(req)
  util.check_self(self, "healthcare.Client", "send")
  check_request(req, "send")
  local request = { request = req }
  while true do
    local r, err = build(self, request)
    if not r then return nil, err end
    r.on_progress = progress_of(req.on_progress)
    r.on_parts, r.take_parts = req.on_parts, req.take_parts
    local res, again
    res, err = self._session:request(r)
    res, err, again = conclude(self, request, res, err)
    if not again then return res, err end
  end
end

-- Starts the transfer of a Request on the session. Returns true, or nil, err.
local function launch(self, request)
  local r, err = build(self, request)
  if not r then return nil, err end
  local t
  t, err = self._session:start(r)
  if not t then
    err = errors.from_transport(err)
    err.message = self:redact(err.message)
    return nil, err
  end
  request.transfer, request.done = t, false
  self._pending[t] = request
  return true
end

--- Starts a request (the fields of send's, but on_progress: poll request:progress(); and
--- on_parts: the parts come with the result) without waiting. Returns a Request, or nil, err when it could not start.
function Client:start(req)
  util.check_self(self, "healthcare.Client", "start")
  check_request(req, "start")
  if req.on_progress ~= nil then
    error("bad option 'on_progress' to 'start' (not taken: call request:progress() between waits)", 2)
  end
  for _, name in ipairs({ "on_parts", "take_parts" }) do
    if req[name] ~= nil then
      error("bad option '" .. name .. "' to 'start' (not taken: the parts come with finish()'s result)", 2)
    end
  end
  local request = setmetatable({ request = req, client = self }, Request)
  local ok, err = launch(self, request)
  if not ok then return nil, err end
  return request
end

--- Runs the transfers for up to `seconds` (default 0: what is ready now) and returns the list of
--- Requests whose transfer is done, for finish().
function Client:poll(seconds)
  util.check_self(self, "healthcare.Client", "poll")
  util.check_arg(seconds, 1, "poll", "number|nil")
  local out = {}
  -- pairs, not ipairs: the list is walked whole even if a slot were empty.
  for _, t in pairs(self._session:wait(seconds or 0)) do
    local request = self._pending[t]
    if request then
      request.done = true
      out[#out + 1] = request
    end
  end
  return out
end

--- The outcome of a Request that poll() returned: the raw response (any HTTP status), or nil,
--- err for a failure of the transport; or false when it was sent again (a 401 answered with a
--- fresh token): it is in flight again, and a later poll() returns it.
function Client:finish(request)
  util.check_self(self, "healthcare.Client", "finish")
  if getmetatable(request) ~= Request or request.client ~= self or not request.done or not request.transfer then
    error("bad argument #1 to 'finish' (a request of this client that poll returned expected)", 2)
  end
  local t = request.transfer
  self._pending[t], request.transfer = nil, nil
  local res, err = t:result()
  t:close()
  local again
  res, err, again = conclude(self, request, res, err)
  if not again then return res, err end
  local ok, lerr = launch(self, request)
  if not ok then return nil, lerr end
  return false
end

-- ---- the whole API: any method by Google's name (README "The whole API") ---------------------

-- Methods that are the modules' functions themselves (no wrapper between the user's line and the
-- checks that blame it).
Client.call = api_call.call
Client.pages = api_pages.pages

--- Waits for a long-running operation (an Operation table, or its name) to be done: polls
--- operations.get with a growing interval. Returns the operation's response and the final
--- Operation, or nil, err (kind "operation": Google's error; "timeout": not done in time).
function Client:wait(operation, opts)
  util.check_self(self, "healthcare.Client", "wait")
  if type(operation) == "number" then -- the name wait had before it meant operations
    error("bad argument #1 to 'wait' (operation or operation name expected, got number; the requests in "
      .. "flight are poll(seconds)'s)", 2)
  end
  util.check_arg(operation, 1, "wait", "table|string", nil, "operation or operation name")
  opts = api_operation.check(opts, "wait", 2)
  local response, op = api_operation.wait(self, operation, opts)
  return response, op
end

--- The store object of a dicomStore resource name (see healthcare.dicomweb); it uses this client
--- and leaves it open when closed. Returns the store, or nil, err for a malformed name.
function Client:dicom_store(parent)
  util.check_self(self, "healthcare.Client", "dicom_store")
  util.check_arg(parent, 1, "dicom_store", "string")
  local dicomweb = require "healthcare.dicomweb"
  local ok, err = dicomweb.check_parent(parent)
  if not ok then return nil, err end
  return dicomweb.store(self, self.endpoint .. "/" .. parent .. "/dicomWeb", parent, false)
end

--- StoreInstances as the API states it: POST {endpoint}/{parent}/dicomWeb/{dicom_web_path}; opts
--- as the store's store_instances' (on_progress: a long upload's progress, false stops it).
function Client:store_instances(parent, dicom_web_path, body, query_params, opts)
  util.check_self(self, "healthcare.Client", "store_instances")
  util.check_arg(parent, 1, "store_instances", "string")
  util.check_arg(dicom_web_path, 2, "store_instances", "string")
  util.check_arg(body, 3, "store_instances", "table")
  util.check_arg(query_params, 4, "store_instances", "table|nil")
  opts = require("healthcare.dicomweb.stow").check_options(opts, 2)
  local store, err = self:dicom_store(parent)
  if not store then return nil, err end
  local res
  res, err = store:store_instances(dicom_web_path, body, query_params, opts)
  return res, err
end

return M
