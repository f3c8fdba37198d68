-- SPDX-License-Identifier: MIT
-- healthcare.ngx: an nginx (OpenResty, ngx_http_lua) gateway that adds Google credentials to
-- DICOMweb requests. Modalities and PACS send plain STOW-RS to the gateway; for each request
-- `access()` puts a service account's access token in `Authorization` and rewrites the path
-- to the dicomStore's, and nginx's own proxy_pass streams the body to the Cloud Healthcare API.
-- Lua never reads a request body but a form-encoded one (FHIR's POST _search), whose parameters
-- are checked as a query's, up to max_form_size bytes. See examples/openresty/nginx.conf and the
-- README.
--
--   init_by_lua_block   { require("healthcare.ngx").configure { credentials = ..., parent = ... } }
--   access_by_lua_block { require("healthcare.ngx").access() }
--   header_filter_by_lua_block { require("healthcare.ngx").header_filter() }
--   body_filter_by_lua_block { require("healthcare.ngx").body_filter() }
--
-- URLs in answers: DICOM JSON (STOW-RS answers, QIDO-RS results, WADO-RS metadata) names
-- resources by URLs on the API (RetrieveURL 00081190 and other UR values). With rewrite_urls
-- (the default) the gateway puts its own DICOMweb root, as the client reached it, in place of
-- the API's ({api_origin}{api_path}/{parent}/dicomWeb) at the start of every JSON string, so a
-- client that follows them comes back through the gateway. Only application/dicom+json and
-- application/json answers are held (up to max_rewrite_size bytes; a larger one goes through
-- unchanged, with a warning); everything else (multipart/related instances, frames, rendered
-- images) streams through untouched: the body filter does not even look at it.
--
-- Tokens: one per key and scope set, kept in a lua_shared_dict so every worker uses the same
-- one. A token is refreshed `refresh_margin` seconds before it expires (at most half-way through
-- its life) by one request at a time (a lock in the dict); the others keep using the old token,
-- or, when there is none, wait for the refresh. The JWT is signed in the C core (the credential
-- of healthcare.auth.credentials) and exchanged at the token endpoint through an internal location
-- (`ngx.location.capture`), so no worker ever blocks on the network. A failed refresh is
-- remembered for `retry_after` seconds: meanwhile clients get 503 at once, the token endpoint
-- is not hammered, and an old token that is still valid keeps being used.
-- No token, key or assertion ever goes into a log line or a response.
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local credentials = require "healthcare.auth.credentials"
local names = require "healthcare.dicomweb.names"
local rewrite = require "healthcare.ngx.rewrite"
local routes = require "healthcare.ngx.routes"
local util = require "healthcare.util"

local M = {}

-- Every default, written once (the README's OpenResty section lists them).
M.DEFAULTS = {
  shared_dict = "healthcare",            -- lua_shared_dict holding tokens, locks and failures
  token_location = "/_healthcare/token", -- internal location that proxies to the key's token_uri
  prefix = "/dicomWeb",                  -- the gateway's path that stands for {parent}/dicomWeb
  api_path = "/v1",                      -- path of the API version on the upstream
  api_origin = "https://healthcare.googleapis.com", -- scheme://host[:port] of the API's own URLs
  rewrite_urls = true,                   -- the API's URLs in JSON answers -> the gateway's
  max_rewrite_size = 64 * 1024 * 1024,   -- bytes of a JSON answer held for that, at most
  max_form_size = 1024 * 1024,           -- bytes of a form-encoded request body read, at most
  methods = { "POST" },                  -- what clients may do: STOW-RS only
  refresh_margin = credentials.DEFAULT_REFRESH_MARGIN,
  token_wait = 15,                       -- seconds a request waits for another one's refresh
  retry_after = 2,                       -- seconds a failed refresh is remembered
}
M.OPTIONS = { "name", "credentials", "parent", "scopes", "subject", "quota_project", "self_signed_jwt",
  "shared_dict", "token_location", "prefix", "api_path", "methods", "refresh_margin", "token_wait",
  "retry_after", "api_origin", "rewrite_urls", "max_rewrite_size", "max_form_size", "public_url" }
-- Credentials without key files (metadata server, impersonation, external_account): their module.
local token_sources = require "healthcare.ngx.token_sources"
for _, k in ipairs(token_sources.OPTIONS) do M.OPTIONS[#M.OPTIONS + 1] = k end
for _, k in ipairs(routes.OPTIONS) do M.OPTIONS[#M.OPTIONS + 1] = k end -- FHIR, HL7v2 (ngx/routes.lua)
-- Seconds a refresher holds the lock at most (a worker that dies mid-refresh frees it then).
M.LOCK_SLACK = 5

-- Google's status names for the errors the gateway itself answers.
local STATUS = { [400] = "INVALID_ARGUMENT", [404] = "NOT_FOUND", [405] = "METHOD_NOT_ALLOWED",
  [411] = "INVALID_ARGUMENT", [413] = "INVALID_ARGUMENT", [503] = "UNAVAILABLE" }

-- The request headers of a client that reach the API (lower case); every other one is taken out.
-- The API's request carries the gateway's credential, so whatever else it carries is the gateway
-- speaking: a cookie or proxy credential of the client's, X-Goog-* system parameters (the billed
-- project of X-Goog-User-Project, an API key) or a method override would make Google do, or bill,
-- what the gateway's configuration does not allow. What DICOMweb, FHIR and HL7v2 clients need:
-- the media types asked and sent, a body's encoding, FHIR's conditional and Prefer headers.
M.FORWARDED_HEADERS = { "accept", "accept-charset", "accept-encoding", "accept-language", "content-type",
  "content-encoding", "user-agent", "if-match", "if-none-match", "if-none-exist", "if-modified-since",
  "if-unmodified-since", "prefer", "range", "if-range" }
-- Headers nginx itself writes, or drops, for the upstream (its proxy module's defaults), and that
-- it needs as they came: the client's Host names the gateway in rewritten URLs.
local NGINX_OWN = { host = true, connection = true, ["content-length"] = true, ["transfer-encoding"] = true,
  expect = true }
local forwarded = {}
for _, h in ipairs(M.FORWARDED_HEADERS) do forwarded[h] = true end
-- Headers that ask Google's front end for another method than the request's (Google honours
-- X-HTTP-Method-Override on a POST): a POST-only gateway would otherwise delete.
M.METHOD_OVERRIDE_HEADERS = { "x-http-method-override", "x-http-method", "x-method-override" }
-- Query parameters that are Google system parameters a client must not choose through the
-- gateway (https://cloud.google.com/apis/docs/system-parameters): every name starting with '$'
-- (none is DICOMweb's, FHIR's or HL7v2's), and the unprefixed ones that change the method, the
-- billed project, the credential or the answer's form (JSONP). Compared case-insensitively.
M.REFUSED_PARAMS = { "httpmethod", "_method", "userproject", "key", "access_token", "oauth_token", "callback" }
local refused_params = {}
for _, k in ipairs(M.REFUSED_PARAMS) do refused_params[k] = true end

local gateways = {}   -- name -> Gateway, made by configure (in the master, before workers fork)

local Gateway = {}
Gateway.__index = Gateway
M.Gateway = Gateway

local function log(level, ...)
  ngx.log(level, "healthcare.ngx: ", ...)
end

-- ---- paths ----------------------------------------------------------------------------------

-- One path segment a DICOMweb path may hold: UIDs, resource names, frame lists.
local function safe_segment(s)
  return s ~= "" and s ~= "." and s ~= ".." and s:match("^[%w._,-]+$") ~= nil
end

--- The upstream path for a gateway request, or nil, status, message. uri is nginx's decoded and
--- normalised $uri; prefix, api_path and parent as configured. POST (StoreInstances) takes
--- `{prefix}/studies` and `{prefix}/studies/{StudyInstanceUID}` only; other methods any path
--- of safe segments under the prefix.
function M.map_path(uri, method, prefix, api_path, parent)
  if uri:sub(1, #prefix) ~= prefix then
    return nil, 404, "the gateway serves DICOMweb under " .. prefix .. "/"
  end
  local rest = uri:sub(#prefix + 1)
  if method == "POST" then
    local uid = rest:match("^/studies/([^/]+)/?$")
    if not (rest == "/studies" or rest == "/studies/" or (uid and names.valid_uid(uid))) then
      return nil, 404, "StoreInstances takes " .. prefix .. "/studies or " .. prefix
        .. "/studies/{StudyInstanceUID} (digits and dots, at most 64 characters)"
    end
    rest = uid and ("/studies/" .. uid) or "/studies"
  else
    local ok = rest:sub(1, 1) == "/"
    for seg in rest:gmatch("[^/]+") do
      if not safe_segment(seg) then ok = false end
    end
    if not ok or rest:find("//", 1, true) then
      return nil, 404, "not a DICOMweb path under " .. prefix .. "/"
    end
    rest = rest:gsub("/$", "")
  end
  return api_path .. "/" .. parent .. "/dicomWeb" .. rest
end

-- ---- answers --------------------------------------------------------------------------------

--- The body of an error in Google's JSON envelope.
function M.envelope(status, message)
  return cjson.encode({ error = { code = status, message = message, status = STATUS[status] or "UNKNOWN" } })
end

-- Ends the request with an error of our own (nothing of the body is read: nginx discards it).
local function answer(status, message, retry_after)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=UTF-8"
  if retry_after then ngx.header["Retry-After"] = tostring(math.ceil(retry_after)) end
  ngx.print(M.envelope(status, message), "\n")
  return ngx.exit(ngx.HTTP_OK)
end

-- ---- URLs in answers ------------------------------------------------------------------------

-- s as the inside of a JSON string.
local function json_escape(s)
  return (s:gsub('[%c"\\]', function(c)
    if c == '"' or c == "\\" then return "\\" .. c end
    return string.format("\\u%04x", c:byte())
  end))
end

-- Where a URL in a JSON string may go on after the DICOMweb root ("\/" is JSON's other '/').
local function json_boundary(c, c2)
  return c == "/" or c == '"' or c == "?" or c == "#" or c2 == "\\/"
end

-- Replaces `from` where a JSON string starts with it and the URL goes on with '/', '?', '#' or
-- ends there (so ".../dicomWebX" is left alone). Returns the text and the count.
local function replace_prefix(text, from, to)
  return rewrite.replace_url_prefix(text, '"', from, to, json_boundary)
end

--- A JSON text with every string that starts with the URL `from` (a DICOMweb root: the API's)
--- made to start with `to` instead (the gateway's), in both JSON spellings of '/' ("/" and
--- "\/"); nothing else changes. Returns the text and the number of URLs replaced.
function M.rewrite_urls(text, from, to)
  local out, n = replace_prefix(text, json_escape(from), json_escape(to))
  local escaped_from = json_escape(from):gsub("/", "\\/")
  local m = 0
  if text:find(escaped_from, 1, true) then
    out, m = replace_prefix(out, escaped_from, (json_escape(to):gsub("/", "\\/")))
  end
  return out, n + m
end

-- The media type of a Content-Type value, lower case, without parameters.
local function media_type(v)
  if type(v) == "table" then v = v[1] end
  return type(v) == "string" and v:lower():match("^%s*([^;%s]+)") or nil
end

--- Whether an answer of this Content-Type is rewritten: DICOM JSON and JSON, DICOM XML and XML
--- (healthcare.ngx.rewrite); the second value says it is XML.
function M.rewritable(content_type)
  local t = media_type(content_type)
  if t == "application/dicom+json" or t == "application/json" or t == "application/fhir+json" then
    return true, false
  end
  if rewrite.is_xml(t) then return true, true end
  return false
end

-- ---- configuration --------------------------------------------------------------------------

-- positive: the value must be > 0 (retry_after: a shared dict entry set to expire in 0 s never
-- expires, so one failed refresh would be a 503 until nginx restarts).
local function check_number(opts, k, positive)
  local v = opts[k]
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or (positive and v <= 0)) then
    error(string.format("healthcare.ngx.configure: bad option '%s' (a number %s 0 expected)", k,
      positive and ">" or ">="), 3)
  end
end

-- The dicomStore, which a gateway for FHIR or HL7v2 alone (ngx/routes.lua) does not need.
local function check_parent(opts)
  if opts.parent == nil and (opts.fhir_store or opts.hl7v2_store) then return end
  local ok, perr = names.check_parent(opts.parent)
  if not ok then error("healthcare.ngx.configure: " .. perr.message, 3) end
end

--- Sets up a gateway (in init_by_lua: the key is read once, by the master, before workers drop
--- privileges). opts: credentials (path of a service account JSON key, or its decoded table),
--- parent (projects/{p}/locations/{l}/datasets/{d}/dicomStores/{s}), and optionally name
--- (default "default", for several gateways in one nginx), scopes, subject, quota_project,
--- self_signed_jwt and the M.DEFAULTS. Mistakes in the configuration raise (nginx refuses to
--- start and says why); a key that cannot be used is logged and the gateway answers 503 until
--- nginx is reloaded with a good one. Returns the gateway.
function M.configure(opts)
  util.check_options(opts, M.OPTIONS, "healthcare.ngx.configure")
  opts = opts or {}
  check_parent(opts)
  for _, k in ipairs({ "refresh_margin", "token_wait", "retry_after", "max_rewrite_size", "max_form_size" }) do
    check_number(opts, k, k == "retry_after")
  end
  for _, k in ipairs({ "name", "shared_dict", "token_location", "prefix", "api_path", "api_origin",
    "public_url" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error(string.format("healthcare.ngx.configure: bad option '%s' (string expected, got %s)", k,
        type(opts[k])), 2)
    end
  end
  if opts.methods ~= nil and type(opts.methods) ~= "table" then
    error("healthcare.ngx.configure: bad option 'methods' (a list like { \"POST\" } expected)", 2)
  end
  if opts.rewrite_urls ~= nil and type(opts.rewrite_urls) ~= "boolean" then
    error("healthcare.ngx.configure: bad option 'rewrite_urls' (true or false expected)", 2)
  end
  for _, k in ipairs({ "api_origin", "public_url" }) do
    local v = opts[k]
    local re = k == "api_origin" and "^https?://[^/?#%s%c\"\\]+/?$" or "^https?://[^?#%s%c\"\\]+$"
    if v ~= nil and not v:match(re) then
      error(string.format("healthcare.ngx.configure: bad option '%s' (%s expected, got '%s')", k,
        k == "api_origin" and "scheme://host[:port], like https://healthcare.googleapis.com"
          or "the gateway's DICOMweb root as clients reach it, like https://gateway.example/dicomWeb",
        (v:gsub("%c", "?"))), 2)
    end
  end
  local g = setmetatable({}, Gateway)
  for k, v in pairs(M.DEFAULTS) do g[k] = v end
  for k, v in pairs(opts) do g[k] = v end
  g.name = opts.name or "default"
  -- The DICOMweb root in the API's own URLs, and (when configured) the gateway's.
  g.upstream_root = g.parent and (g.api_origin:gsub("/$", "") .. g.api_path .. "/" .. g.parent .. "/dicomWeb")
  g.routes = routes.configure(opts, g.api_origin, g.api_path, g.prefix)
  g.public_url = opts.public_url and opts.public_url:gsub("/+$", "")
  g.dict = ngx.shared[g.shared_dict]
  if not g.dict then
    error(string.format("healthcare.ngx.configure: no lua_shared_dict '%s' (add `lua_shared_dict %s 1m;` "
      .. "to the http block)", g.shared_dict, g.shared_dict), 2)
  end
  g.allowed = {}
  for _, m in ipairs(g.methods) do g.allowed[m] = true end
  g.scopes = credentials.scope_list(opts.scopes)
  local cred, err
  if token_sources.handles(opts) then
    cred, err = token_sources.credential(g, opts)
  elseif type(opts.credentials) ~= "string" and type(opts.credentials) ~= "table" then
    err = "no credentials configured (credentials = the path of a service account JSON key)"
  else
    local copts = { subject = opts.subject, quota_project = opts.quota_project,
      self_signed_jwt = opts.self_signed_jwt }
    if type(opts.credentials) == "string" then
      cred, err = credentials.from_file(opts.credentials, copts, "credentials file")
    else
      cred, err = credentials.from_info(opts.credentials, copts, "credentials table")
    end
    if cred and cred.kind ~= "service_account" and cred.kind ~= "self_signed_jwt" then
      cred, err = nil, string.format("%s holds an %s (%s); the gateway needs a service account key",
        cred.source or "credentials", cred.kind, cred.label)
    end
    err = err and tostring(err)
  end
  if cred then
    g.cred = cred
    -- The cache key names the key, token endpoint, subject and scopes, never a secret.
    local identity = cred.identity or ("self_signed_jwt\n" .. cred.email .. "\n" .. (cred.key_id or ""))
    local id = core.sha256_hex(identity .. "\n" .. table.concat(g.scopes, " "))
    g.token_key, g.lock_key, g.fail_key = "token:" .. id, "lock:" .. id, "fail:" .. id
    log(ngx.NOTICE, "gateway '", g.name, "' for ", g.parent, " uses ", cred.label)
  else
    g.unusable = err
    log(ngx.ERR, "gateway '", g.name, "' has no usable credentials and answers 503 until nginx is ",
      "reloaded with a good key: ", err)
  end
  gateways[g.name] = g
  return g
end

--- Whether a gateway is configured under name (default "default").
function M.configured(name)
  return gateways[name or "default"] ~= nil
end

--- The gateway configured under name (default "default"); raises when there is none.
function M.gateway(name)
  local g = gateways[name or "default"]
  if not g then
    error(string.format("healthcare.ngx: no gateway '%s'; call require('healthcare.ngx').configure{...} "
      .. "in init_by_lua_block", tostring(name or "default")), 3)
  end
  return g
end

-- ---- tokens ---------------------------------------------------------------------------------

-- The dict entry "refresh_at expires_at token" -> token, refresh_at, expires_at (ngx.now() clock).
function Gateway:cached()
  local v = self.dict:get(self.token_key)
  if not v then return nil end
  local r, e, t = v:match("^(%S+) (%S+) (.+)$")
  return t, tonumber(r), tonumber(e)
end

local function read_reply(body)
  local token, lifetime = credentials.parse_token_reply(body)
  if not token then
    return nil, "the token endpoint answered 200 " .. lifetime
  end
  return token, lifetime
end

-- What a token endpoint's failure was, without any secret: "HTTP 400 invalid_grant: ...".
local function reply_error(res)
  local what = "HTTP " .. res.status
  local text = credentials.token_error_text(res.body)
  if text then
    what = what .. " " .. text
  elseif res.status == 502 or res.status == 504 then
    what = what .. " from nginx (the token endpoint is unreachable or slow; see the lines above)"
  end
  return what
end

-- One token request (or, for self_signed_jwt, one signature): token, lifetime or nil, err.
function Gateway:fetch()
  local cred = self.cred
  if cred.gateway_fetch then return cred.gateway_fetch(self) end
  if cred.kind == "self_signed_jwt" then
    local jwt, err = cred:assertion()
    if not jwt then return nil, tostring(err) end
    return jwt, credentials.JWT_LIFETIME
  end
  local assertion, err = cred:assertion(self.scopes)
  if not assertion then return nil, tostring(err) end
  local res = ngx.location.capture(self.token_location, {
    method = ngx.HTTP_POST,
    body = util.query_string({ grant_type = credentials.JWT_GRANT, assertion = assertion }),
  })
  if res.status ~= 200 then
    return nil, string.format("token request for %s at %s failed: %s", cred.label, cred.token_url_shown,
      credentials.scrub(reply_error(res), { assertion }))
  end
  return read_reply(res.body)
end

-- Fetches a token while holding the lock, stores it (or the failure) in the dict, frees the lock.
-- Returns token or nil, err.
function Gateway:refresh()
  -- Another worker may have stored a token between our look at the cache and taking the lock.
  local fresh, fresh_until = self:cached()
  if fresh and ngx.now() < fresh_until then
    self.dict:delete(self.lock_key)
    return fresh
  end
  local ok, token, lifetime_or_err = pcall(self.fetch, self)
  if not ok then token, lifetime_or_err = nil, "error while refreshing the token: " .. tostring(token) end
  local dict = self.dict
  if token then
    local lifetime, now = lifetime_or_err, ngx.now()
    -- Used until a little before Google's expiry, refreshed from `margin` seconds before it.
    local expires_at = now + lifetime - math.min(10, lifetime / 10)
    local refresh_at = now + lifetime - math.min(self.refresh_margin, lifetime / 2)
    local sok, serr = dict:set(self.token_key, string.format("%.3f %.3f %s", refresh_at, expires_at, token),
      expires_at - now)
    if not sok then log(ngx.ERR, "cannot keep the token in lua_shared_dict ", self.shared_dict, ": ", serr) end
    dict:delete(self.fail_key)
    log(ngx.INFO, "new access token for ", self.cred.label, ", valid ", lifetime, " s")
  else
    -- the endpoint's own words (OAuth's error_description, an envelope's message) as they came:
    -- an ESC sequence or a CR LF would reach the error log, and whoever reads it, raw
    lifetime_or_err = util.printable(lifetime_or_err)
    log(ngx.ERR, lifetime_or_err)
    dict:set(self.fail_key, lifetime_or_err, self.retry_after)
  end
  dict:delete(self.lock_key)
  return token, lifetime_or_err
end

--- A valid access token, or nil, err, retry_after. May wait (ngx.sleep) for another request's
--- refresh; never blocks the worker.
function Gateway:token()
  local dict = self.dict
  local lock_ttl = self.token_wait + M.LOCK_SLACK
  local deadline = ngx.now() + self.token_wait
  local delay = 0.005
  while true do
    local now = ngx.now()
    local token, refresh_at, expires_at = self:cached()
    if token and now < refresh_at then return token end
    local failure = dict:get(self.fail_key)
    if token and now < expires_at then
      -- Due for refresh but still good: one request refreshes, the others go on with this one.
      if not failure and dict:add(self.lock_key, ngx.worker.pid(), lock_ttl) then
        return self:refresh() or token
      end
      return token
    end
    if failure then return nil, failure, self.retry_after end
    if dict:add(self.lock_key, ngx.worker.pid(), lock_ttl) then
      local t, err = self:refresh()
      if t then return t end
      return nil, err, self.retry_after
    end
    if now >= deadline then
      return nil, string.format("no access token after waiting %g s for another request's token refresh",
        self.token_wait), self.retry_after
    end
    ngx.sleep(delay)
    delay = math.min(delay * 2, 0.05)
    ngx.update_time()
  end
end

-- "GET /dicomWeb/studies" of this request, as the client sent it but without its query.
local function request_line()
  return ngx.var.request_method .. " " .. (ngx.var.request_uri:gsub("%?.*", ""))
end

-- ---- the client's headers and query ---------------------------------------------------------

--- Whether a query string (as sent: $args) or a form body names a parameter of M.REFUSED_PARAMS
--- or any '$' system parameter, in any case and percent-encoding, with spaces or line ends
--- around it; the name found, or nil.
function M.refused_param(args)
  for pair in (args or ""):gmatch("[^&;]+") do
    local name = ngx.unescape_uri((pair:match("^[^=]*")))
    local lower = name:lower():match("^%s*(.-)%s*$")
    if lower:sub(1, 1) == "$" or refused_params[lower] then return name end
  end
  return nil
end

local SYSTEM_PARAMS = "Google's system parameters (a '$' parameter, httpMethod, userProject, key, "
  .. "access_token, callback)"

-- Why the gateway refuses this request's headers or query (a method override or a system
-- parameter), or nil. headers: ngx.req.get_headers(0), names in lower case.
local function refusal(headers)
  for _, h in ipairs(M.METHOD_OVERRIDE_HEADERS) do
    if headers[h] then
      return "The gateway does not take method overrides (" .. h .. "): send the method itself."
    end
  end
  if M.refused_param(ngx.var.args) then
    return "The gateway does not take " .. SYSTEM_PARAMS .. " in the query."
  end
  return nil
end

-- The body of this request once ngx.req.read_body read it, `cap` bytes at most: in memory (nginx's
-- buffer, client_body_buffer_size at most), or from nginx's temporary file when it is larger, which
-- is read only when it holds no more than `cap` bytes. nil when that file cannot be read back;
-- false and its size when it holds more.
local function body_bytes(cap)
  local body = ngx.req.get_body_data()
  if body then return body end
  local path = ngx.req.get_body_file()
  if not path then return "" end
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  if not size or size > cap then
    f:close()
    return size and false, size
  end
  f:seek("set")
  body = f:read(cap + 1) or ""
  f:close()
  return body
end

-- Bytes of this request's body that nginx has decoded (its chunked framing taken off) into its
-- temporary file so far; 0 before it has one. Up to client_body_buffer_size more may wait in its
-- buffer.
local function body_file_size()
  local path = ngx.req.get_body_file()
  local f = path and io.open(path, "rb")
  if not f then return 0 end
  local size = f:seek("end")
  f:close()
  return size or 0
end

-- Seconds between two looks at how much of a body of unknown length came, at most.
local BODY_POLL = 0.002
-- A chunked body's framing (chunk sizes and extensions) is not body: nginx drops it as it reads.
-- Bytes of framing and body together that a length-less form body may take, per byte of the cap:
-- one-byte chunks take 6 ("1\r\na\r\n"); more is framing for its own sake.
local FRAMING_FACTOR = 8

-- Reads this request's body (ngx.req.read_body) unless more than `cap` decoded bytes of it come
-- first. nginx would read a body without Content-Length (HTTP/1.1 chunked, HTTP/2) whole, however
-- long, into its temporary file: it reads here in a light thread while this one watches that file,
-- which grows by the decoded bytes, and stops it once the file holds more than `cap` (nginx closes
-- the connection after the answer). What nginx reads past the cap before that look: what waits in
-- its buffer (client_body_buffer_size) and what one read event takes off the socket (its receive
-- buffer), never in Lua's memory. true once the body is read; false, why past the cap; nil, why
-- when nginx would not read it (ngx_lua builds that read no HTTP/2 body without a length).
local function read_body_within(cap)
  local start = tonumber(ngx.var.request_length) or 0
  local done, err = false, nil
  local reader = ngx.thread.spawn(function()
    local ok, why = pcall(ngx.req.read_body)
    done, err = true, not ok and tostring(why) or nil
  end)
  local framing = FRAMING_FACTOR * cap + 64 * 1024
  local function over()
    if body_file_size() > cap then return string.format("more than %d", cap) end
    if (tonumber(ngx.var.request_length) or 0) - start > framing then
      return string.format("more than %d bytes with its chunked framing", framing)
    end
  end
  local delay = 0.001
  while not done do
    local why = over()
    if why then
      ngx.thread.kill(reader)
      return false, why
    end
    ngx.sleep(delay)
    delay = math.min(delay * 2, BODY_POLL)
  end
  if err then return nil, err end
  -- read whole between two looks: refused the same (the body itself is looked at by the caller)
  local why = over()
  if why and why:find("framing", 1, true) then return false, why end
  return true
end

local function too_large(cap, what)
  return string.format("The gateway reads form bodies of at most %d bytes (max_form_size) to check them; "
    .. "this one has %s.", cap, what), 413
end

-- Why the gateway refuses this request's form-encoded body, and the status; nil for any other
-- body, which is not read. A form body carries parameters as a query does (FHIR's POST
-- {type}/_search), so Google's front end may take system parameters from it too: it is read
-- (at most max_form_size bytes: known from Content-Length before a byte is read, else counted as
-- it comes) and checked as the query is. A compressed one could not be checked. multipart/form-data
-- is not read: Google takes system parameters from the query and headers only (cloud.google.com/
-- apis/docs/system-parameters), FHIR's search takes a url-encoded form only, and no API of the
-- gateway's takes multipart/form-data.
function Gateway:form_refusal(headers)
  local types = headers["content-type"]
  local form = false
  for _, v in ipairs(type(types) == "table" and types or { types }) do
    if media_type(v) == "application/x-www-form-urlencoded" then form = true end
  end
  if not form then return nil end
  local enc = headers["content-encoding"]
  if type(enc) == "table" then enc = table.concat(enc, ", ") end
  if enc and enc:lower() ~= "identity" then
    return "The gateway reads form bodies to check them: send this one without Content-Encoding.", 400
  end
  local cap = self.max_form_size
  local length = tonumber(ngx.var.content_length or "")
  if length and length > cap then return too_large(cap, tostring(length)) end
  if length == 0 then return nil end
  if not length then
    -- HTTP/1.1 without Content-Length nor Transfer-Encoding has no body; HTTP/2 may have one.
    if not headers["transfer-encoding"] and (ngx.req.http_version() or 1) < 2 then return nil end
    local whole, err = read_body_within(cap)
    if whole == false then return too_large(cap, err) end
    if not whole then
      log(ngx.WARN, "cannot read a form body without Content-Length: ", err)
      return "The gateway reads form bodies to check them: send this one with a Content-Length.", 411
    end
  else
    ngx.req.read_body()
  end
  local body, size = body_bytes(cap)
  if body == false then return too_large(cap, tostring(size)) end
  if not body then
    return "The gateway could not read the form body back (its temporary file is gone).", 400
  end
  if #body > cap then return too_large(cap, tostring(#body)) end
  if M.refused_param(body) then
    return "The gateway does not take " .. SYSTEM_PARAMS .. " in a form body.", 400
  end
  return nil
end

-- Takes out of the request every header the API must not get from the client (see
-- M.FORWARDED_HEADERS), and the allowed ones its Connection header names (hop-by-hop). headers
-- as refusal's: nginx clears a name whatever its case, every header of that name.
local function keep_forwarded_headers(headers)
  local hop = {}
  local connection = headers["connection"]
  for _, value in ipairs(type(connection) == "table" and connection or { connection }) do
    for token in value:gmatch("[^,%s]+") do hop[token:lower()] = true end
  end
  for name in pairs(headers) do
    if not NGINX_OWN[name] and (not forwarded[name] or hop[name]) then ngx.req.clear_header(name) end
  end
end

-- ---- the phases -----------------------------------------------------------------------------

-- The answer to a client when there is no token: what went wrong names the gateway's credential
-- (its email, token endpoint, the endpoint's words), which is the error log's, not a client's.
local NO_TOKEN = "The gateway could not get an access token for the Cloud Healthcare API "
  .. "(the gateway's error log says why)."

--- access_by_lua: checks the method, headers, query and path, sets Authorization (and
--- x-goog-user-project), takes out the client's other headers (M.FORWARDED_HEADERS) and sets the
--- upstream path, or ends the request with an error in Google's JSON envelope.
function Gateway:access()
  if self.unusable then
    log(ngx.WARN, "503 for ", request_line(), ": gateway '", self.name,
      "' has no usable credentials (see the error at start-up)")
    return answer(503, NO_TOKEN, self.retry_after)
  end
  local method = ngx.req.get_method()
  local route, rest = routes.find(self.routes, ngx.var.uri)
  local methods = route and route.methods or self.methods
  if not (route or self).allowed[method] then
    ngx.header["Allow"] = table.concat(methods, ", ")
    return answer(405, "Method " .. method .. " is not allowed by this gateway.")
  end
  -- Every header is looked at (0: no limit), so a hundred others do not hide one.
  local headers = ngx.req.get_headers(0)
  local refused = refusal(headers)
  if refused then
    log(ngx.INFO, "400 for ", request_line(), ": ", refused)
    return answer(400, refused)
  end
  local path, status, message
  if route then
    path, status, message = routes.map_path(route, rest, method, self.api_path)
  elseif not self.parent then
    path, status, message = nil, 404, "this gateway serves no DICOMweb (no parent configured)"
  else
    path, status, message = M.map_path(ngx.var.uri, method, self.prefix, self.api_path, self.parent)
  end
  if not path then return answer(status, message) end
  refused, status = self:form_refusal(headers)
  if refused then
    log(ngx.INFO, status, " for ", request_line(), ": ", refused)
    return answer(status, refused)
  end
  local token, err, retry_after = self:token()
  if not token then
    log(ngx.WARN, "503 for ", request_line(), ": ", err)
    return answer(503, NO_TOKEN, retry_after)
  end
  keep_forwarded_headers(headers)
  ngx.req.set_header("Authorization", "Bearer " .. token)
  if self.cred.quota_project then ngx.req.set_header("x-goog-user-project", self.cred.quota_project) end
  -- A compressed JSON answer could not be rewritten: the API's answers come as they are.
  if self.rewrite_urls then ngx.req.clear_header("Accept-Encoding") end
  ngx.req.set_uri(path)
  ngx.ctx.healthcare_token = token
  ngx.ctx.healthcare_route = route
end

-- The gateway's DICOMweb root as this request's client reached it: public_url when configured,
-- else $scheme://$http_host{prefix} (the server's address when the Host header is missing or
-- holds more than a host and port).
local function plain_host(h)
  return h ~= nil and (h:match("^[%w.%-_]+:?%d*$") or h:match("^%[[%x:.]+%]:?%d*$")) ~= nil
end

function Gateway:client_root()
  if self.public_url then return self.public_url end
  local host = ngx.var.http_host
  if not plain_host(host) then
    local addr = ngx.var.server_addr
    if addr:find(":", 1, true) then addr = "[" .. addr .. "]" end
    host = addr .. ":" .. ngx.var.server_port
  else
    host = rewrite.host_with_port(host, ngx.var.scheme, ngx.var.server_port)
  end
  return ngx.var.scheme .. "://" .. host .. self.prefix
end

-- Decides whether this answer's body is rewritten (see rewrite_urls): sets ngx.ctx's plan and
-- drops Content-Length (the length changes) when it is.
function Gateway:plan_rewrite()
  local status = ngx.status
  if ngx.req.get_method() == "HEAD" or status == 204 or status == 304 then return end
  local h = ngx.header
  local rewritable, xml = M.rewritable(h["Content-Type"])
  if not rewritable then return end
  local enc = h["Content-Encoding"]
  if type(enc) == "table" then enc = table.concat(enc, ", ") end
  if enc and enc:lower() ~= "identity" then
    log(ngx.WARN, "a ", util.printable(enc), " JSON answer to ", request_line(),
      " goes out with the API's URLs (a compressed body is not rewritten)")
    return
  end
  local length = tonumber(h["Content-Length"])
  if length and length > self.max_rewrite_size then
    log(ngx.WARN, "the JSON answer to ", request_line(), " (", length,
      " bytes) is over max_rewrite_size (", self.max_rewrite_size, "): it goes out with the API's URLs")
    return
  end
  h["Content-Length"] = nil
  local route = ngx.ctx.healthcare_route
  ngx.ctx.healthcare_rewrite = { buf = {}, size = 0, xml = xml,
    from = route and route.upstream_root or self.upstream_root,
    to = route and routes.client_root(route, self:client_root(), self.prefix) or self:client_root() }
end

--- header_filter_by_lua: when the API refuses the token this request carried (401), forgets it,
--- so the next request fetches a new one instead of failing until the old one expires. With
--- rewrite_urls, chooses the API's JSON answers whose URLs are rewritten (see body_filter).
function Gateway:header_filter()
  local sent = ngx.ctx.healthcare_token
  if not sent then return end   -- not an answer of the API (an error of the gateway's own)
  if ngx.status == 401 and self:cached() == sent then
    self.dict:delete(self.token_key)
    log(ngx.WARN, "the API refused the access token of ", self.cred.label, " (401); fetching a new one")
  end
  if not self.rewrite_urls then return end
  local route = ngx.ctx.healthcare_route
  if route and ngx.header["Location"] then -- a FHIR create's: {api}/{store}/fhir/{type}/{id}/_history/{v}
    ngx.header["Location"] = routes.rewrite_location(ngx.header["Location"], route.upstream_root,
      routes.client_root(route, self:client_root(), self.prefix))
  end
  self:plan_rewrite()
end

--- body_filter_by_lua: holds a JSON answer chosen by header_filter until its end, then sends it
--- with the API's URLs replaced by the gateway's. Any other body is not touched (not even
--- read). Past max_rewrite_size, what was held and the rest go out unchanged, with a warning.
function Gateway:body_filter()
  local plan = ngx.ctx.healthcare_rewrite
  if not plan or plan.passing then return end
  local chunk, eof = ngx.arg[1], ngx.arg[2]
  local buf = plan.buf
  if chunk ~= "" then
    plan.size = plan.size + #chunk
    buf[#buf + 1] = chunk
    if plan.size > self.max_rewrite_size then
      log(ngx.WARN, "the JSON answer to ", request_line(), " is over ",
        "max_rewrite_size (", self.max_rewrite_size, " bytes): it goes out with the API's URLs")
      plan.passing, plan.buf = true, nil
      ngx.arg[1] = table.concat(buf)
      return
    end
  end
  if not eof then
    ngx.arg[1] = nil
    return
  end
  plan.buf = nil
  local rewrite_urls = plan.xml and rewrite.rewrite_xml_urls or M.rewrite_urls
  ngx.arg[1] = rewrite_urls(table.concat(buf), plan.from, plan.to)
end

--- Module-level shortcuts: access(name), header_filter(name) and body_filter(name) for the
--- gateway named name.
function M.access(name)
  return M.gateway(name):access()
end

function M.header_filter(name)
  local g = gateways[name or "default"]
  if g and g.cred then return g:header_filter() end
end

function M.body_filter(name)
  if ngx.ctx.healthcare_rewrite then return gateways[name or "default"]:body_filter() end
end

return M
