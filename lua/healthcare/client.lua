-- SPDX-License-Identifier: MIT
-- The client: one transport session (its connection pool), one credential, one endpoint.
-- Every HTTP exchange of the module goes through Client:send (or start and finish), which adds
-- credentials, the standard query parameters and the User-Agent, refuses to hand a credential to
-- a proxy over plain http, logs redacted debug lines, turns transport failures into error values,
-- retries once with a fresh token after a 401, and takes the client's own secrets out of every
-- text a server sends back (a hostile server may echo them) before anyone keeps or prints it.
local core = require "healthcare.core"
local auth = require "healthcare.auth"
local errors = require "healthcare.errors"
local params = require "healthcare.params"
local util = require "healthcare.util"

local M = {}

M.DEFAULT_ENDPOINT = "https://healthcare.googleapis.com/v1"
M.OPTIONS = {
  "credentials", "access_token", "api_key", "scopes", "endpoint", "params", "timeout",
  "connect_timeout", "idle_timeout", "retry", "concurrency", "ca_file", "insecure", "user_agent",
  "debug", "http2", "self_signed_jwt", "subject", "token_cache", "refresh_margin", "quota_project",
  "min_speed", "max_compression_ratio",
}

local Client = {}
Client.__index = Client
M.Client = Client

local function user_agent(extra)
  local ua = "healthcare-lua/" .. core._VERSION .. " " .. core.curl_version
  if extra then ua = extra .. " " .. ua end
  return ua
end

--- Converts CLI-or-wire names of standard query parameters to wire names; unknown names are an
--- error value (kind "usage") listing the valid ones.
function M.normalize_params(p)
  local out = {}
  for k, v in pairs(p or {}) do
    local wire = params.to_wire(k)
    if not wire then
      local names = {}
      for _, d in ipairs(params.list()) do names[#names + 1] = d.cli end
      return nil, errors.new("usage", string.format("unknown query parameter '%s'; valid: %s",
        tostring(k), table.concat(names, ", ")))
    end
    if type(v) ~= "string" and type(v) ~= "number" and type(v) ~= "boolean" then
      return nil, errors.new("usage", string.format("query parameter '%s' must be a string", tostring(k)))
    end
    out[wire] = tostring(v)
  end
  return out
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
  return lazy
end

--- Picks the credential from the options (see README, "Credentials").
local function credential_from(opts)
  if opts.credentials == false then
    return auth.none()
  elseif opts.access_token then
    return auth.access_token(opts.access_token)
  elseif opts.api_key then
    return auth.api_key(opts.api_key)
  end
  local ok, credentials = pcall(require, "healthcare.auth.credentials")
  if not ok then
    return auth.none()
  elseif opts.credentials == nil then
    return lazy_default(credentials, opts)
  end
  return credentials.from_options(opts)
end

function M.new(opts)
  util.check_options(opts, M.OPTIONS, "healthcare.new", 3)
  opts = opts or {}
  for _, k in ipairs({ "access_token", "api_key", "user_agent", "endpoint" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error(string.format("bad option '%s' to 'healthcare.new' (string expected, got %s)", k, type(opts[k])), 3)
    end
  end
  for _, k in ipairs({ "access_token", "api_key", "user_agent" }) do
    if opts[k] and core.has_ctl(opts[k]) then
      return nil, errors.new("usage", string.format("option '%s' contains CR, LF or NUL", k))
    end
  end
  local std, perr = M.normalize_params(opts.params)
  if not std then return nil, perr end
  local endpoint = opts.endpoint or os.getenv("HEALTHCARE_ENDPOINT") or M.DEFAULT_ENDPOINT
  if not util.is_base_url(endpoint) then
    return nil, errors.new("usage", "endpoint must be an http(s) URL without spaces, control characters, "
      .. "non-ASCII, '?' or '#', got '" .. endpoint .. "'")
  end
  local cred, cerr = credential_from(opts)
  if not cred then return nil, cerr end
  local self = setmetatable({
    endpoint = endpoint:gsub("/+$", ""),
    params = std,
    scopes = opts.scopes or { params.DEFAULT_SCOPE },
    credential = cred,
    debug = util.debug_sink(opts.debug),
    retry = opts.retry,
    concurrency = opts.concurrency,
    timeout = opts.timeout,
    idle_timeout = opts.idle_timeout,
    insecure = opts.insecure == true,
    -- The credential values the last requests carried (a ring of SENT_KEPT): an answer to a
    -- request made with a token since replaced may still echo that token.
    sent = {},
  }, Client)
  if type(self.scopes) == "string" then self.scopes = { self.scopes } end
  self.session = core.session {
    user_agent = user_agent(opts.user_agent),
    connect_timeout = opts.connect_timeout or 30,
    timeout = opts.timeout,
    idle_timeout = opts.idle_timeout or 300,
    min_speed = opts.min_speed,
    max_compression_ratio = opts.max_compression_ratio,
    ca_file = opts.ca_file,
    insecure = opts.insecure == true,
    http2 = opts.http2 ~= false,
  }
  return self
end

function Client:close()
  if self.session then self.session:close() end
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
    if name == "authorization" then return "the Authorization header (a bearer token)" end
    if CREDENTIAL_HEADERS[name] then return "the " .. name .. " header" end
  end
  if query.key then return "an API key (key=)" end
  if query.access_token or query.oauth_token then return "an access token (access_token=)" end
  return nil
end

-- Remembers the credential values a request carries, for Client:secrets.
function Client:remember_sent(headers, query)
  local function add(v)
    if type(v) ~= "string" or #v < util.MIN_SECRET then return end
    for _, have in ipairs(self.sent) do if have == v then return end end
    table.insert(self.sent, 1, v)
    self.sent[SENT_KEPT + 1] = nil
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
  for _, v in ipairs(self.sent) do list[#list + 1] = v end
  local c = self.credential
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
function Client:scrub_response(res)
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

-- The proxy policy: a credential does not go through a proxy over plain http (the proxy, and
-- anyone between, would read it) unless `insecure`. libcurl takes its proxy from the
-- environment; util.proxy_for reads the same variables by the same rules. Returns nil, err
-- (kind "usage": configuration to change) when the request must not be sent.
function Client:check_proxy(url, headers, query)
  if self.insecure or not url:lower():match("^http://") then return true end
  local proxy, variable = util.proxy_for(url)
  if not proxy then return true end
  local carried = credential_carried(headers, query)
  if not carried then return true end
  return nil, errors.new("usage", M.proxy_refusal(url, carried, proxy, variable), { status = "CLEARTEXT_PROXY" })
end

--- The message refusing to send `carried` (what credential) to url through proxy (named by the
--- environment variable) over plain http. Shared with healthcare.auth.credentials' token requests.
function M.proxy_refusal(url, carried, proxy, variable)
  local origin = url:match("^(%a+://[^/?#]*)") or url
  -- A proxy URL may carry its own user:password.
  local shown_proxy = proxy:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1REDACTED@"):gsub("^[^/@]*@", "REDACTED@")
  return string.format("refusing to send %s to %s through the proxy %s (from %s) over plain http, where "
    .. "the proxy can read it: use https, add the host to NO_PROXY, or allow it with insecure = true "
    .. "(--insecure)", carried, util.redact_url(origin), shown_proxy, variable)
end

--- Builds the transport request for req = { method, url, headers, query, body, timeout,
--- idle_timeout, min_speed, max_response_bytes, compressed, max_compression_ratio, sink,
--- on_progress } and the credential. Returns the request table, or nil, err.
function Client:prepare(req)
  local query = {}
  for k, v in pairs(self.params) do query[k] = v end
  for k, v in pairs(req.query or {}) do query[k] = v end
  local headers = {}
  for i, h in ipairs(req.headers or {}) do headers[i] = h end
  -- A token or key given as a query parameter (the CLI's -p access-token=...) is the credential.
  if not has_credential_param(query) then
    local a, err = self.credential:authorize(self.scopes)
    if not a then return nil, err end
    for _, h in ipairs(a.headers or {}) do headers[#headers + 1] = h end
    for k, v in pairs(a.query or {}) do query[k] = v end
  end
  local ok, perr = self:check_proxy(req.url, headers, query)
  if not ok then return nil, perr end
  self:remember_sent(headers, query)
  local qs = util.query_string(query)
  return {
    method = req.method or "GET",
    -- A URL may already carry a query (QIDO-RS builds its own: servers differ in what they decode).
    url = qs ~= "" and (req.url .. (req.url:find("?", 1, true) and "&" or "?") .. qs) or req.url,
    headers = headers,
    body = req.body,
    timeout = req.timeout,
    idle_timeout = req.idle_timeout,
    min_speed = req.min_speed,
    max_response_bytes = req.max_response_bytes,
    compressed = req.compressed,
    max_compression_ratio = req.max_compression_ratio,
    sink = req.sink,
    on_progress = req.on_progress,
  }
end

function Client:log_request(r)
  if not self.debug then return end
  local secrets = self:secrets()
  self.debug("> " .. r.method .. " " .. util.redact_url(r.url, secrets))
  for _, h in ipairs(r.headers) do self.debug("> " .. util.redact_header(h, secrets)) end
end

function Client:log_response(res, seconds)
  if not self.debug then return end
  self.debug(string.format("< HTTP/%s %d (%.3f s)", res.http_version or "1.1", res.status, seconds))
  local names = {}
  for k in pairs(res.headers) do names[#names + 1] = k end
  table.sort(names)
  local secrets = self:secrets()
  for _, k in ipairs(names) do self.debug("< " .. util.redact_header(k .. ": " .. res.headers[k], secrets)) end
end

--- Sends one request synchronously. Returns the raw response { status, headers, body } (any
--- HTTP status), or nil, err for transport failures. A 401 with a refreshable credential is
--- retried once with a fresh token.
function Client:send(req)
  for attempt = 1, 2 do
    local r, perr = self:prepare(req)
    if not r then return nil, perr end
    self:log_request(r)
    local t0 = core.now()
    local res, err = self.session:request(r)
    if not res then
      err = errors.from_transport(err)
      err.message = self:redact(err.message) -- it may quote a server's header
      if self.debug then self.debug("< error: " .. err.message) end
      return nil, err
    end
    self:scrub_response(res)
    self:log_response(res, core.now() - t0)
    if res.status == 401 and attempt == 1 and self.credential.refreshable
      and not has_credential_param(r) then
      self.credential:invalidate()
    else
      return res
    end
  end
end

--- A number that changes whenever the credential fetches a new token (for telling a 401 for
--- a token already replaced from one for the current token).
function Client:token_generation()
  local c = self.credential
  if c.generation then return c.generation() end
  return c.refreshes or 0
end

--- Starts a request on the client's session without waiting (see healthcare.dicomweb.batch). Returns
--- the transfer, or nil, err.
function Client:start(req)
  local r, perr = self:prepare(req)
  if not r then return nil, perr end
  self:log_request(r)
  local t, err = self.session:start(r)
  if not t then
    err = errors.from_transport(err)
    err.message = self:redact(err.message)
    return nil, err
  end
  return t
end

--- The outcome of a finished transfer: the raw response, or nil, err. Closes the transfer.
function Client:finish(t, started_at)
  local res, err = t:result()
  t:close()
  if not res then
    err = errors.from_transport(err)
    err.message = self:redact(err.message)
    if self.debug then self.debug("< error: " .. err.message) end
    return nil, err
  end
  self:scrub_response(res)
  self:log_response(res, started_at and (core.now() - started_at) or 0)
  return res
end

--- The store object of a dicomStore resource name (see healthcare.dicomweb).
function Client:dicom_store(parent)
  local dicomweb = require "healthcare.dicomweb"
  local ok, err = dicomweb.check_parent(parent)
  if not ok then return nil, err end
  return dicomweb.store(self, self.endpoint .. "/" .. parent .. "/dicomWeb", parent)
end

--- StoreInstances as the API states it: POST {endpoint}/{parent}/dicomWeb/{dicom_web_path}.
function Client:store_instances(parent, dicom_web_path, body, params_)
  if type(parent) ~= "string" then
    error("bad argument #1 to 'store_instances' (string expected, got " .. type(parent) .. ")", 2)
  end
  local store, err = self:dicom_store(parent)
  if not store then return nil, err end
  return store:store_instances(dicom_web_path, body, params_)
end

return M
