-- SPDX-License-Identifier: MIT
-- Google credentials, found and kept fresh the way Google's own client libraries do it
-- (Application Default Credentials). Kinds:
--   service_account   a JSON key: a JWT signed in the C core, exchanged at the key's token_uri
--                     (with `subject`, a token for that user: domain-wide delegation)
--   self_signed_jwt   the same key, `self_signed_jwt = true`: the signed JWT is the bearer token
--                     (audience https://healthcare.googleapis.com/), no token request
--   authorized_user   gcloud's ADC file: the refresh-token grant
--   metadata          the metadata server of a Google Cloud VM or container
--   impersonated_service_account, external_account, external_account_authorized_user:
--                     credentials without key files, in healthcare.auth.impersonate and
--                     healthcare.auth.external (from_info hands those files over; the `impersonate`
--                     option wraps any credential)
-- (static access tokens and API keys are in healthcare.auth). Every kind has
--   cred:token(scopes)   -> access token, seconds left | nil, err
--   cred:authorize(scopes), cred:invalidate(), cred.refreshable  (see healthcare.auth)
-- Tokens are cached per scope set and refreshed `refresh_margin` seconds before they expire
-- (never later than half-way through a short lifetime); a refresh is synchronous, so all the
-- transfers of a client wait for the one refresh and then share its token.
-- No token, key, assertion or refresh token ever goes into an error or a debug line: a token
-- endpoint's answer is searched for every secret the credential holds (cred:secrets()) and
-- each is replaced by REDACTED. A credential is not sent to a token endpoint or asked of a
-- metadata server through a proxy over plain http, unless `insecure` (see healthcare.client).
local core = require "healthcare.core"
local cjson = require "cjson.safe"
local auth = require "healthcare.auth"
local errors = require "healthcare.errors"
local params = require "healthcare.params"
local util = require "healthcare.util"

local M = {}

-- Written once; used by the code, the errors and the docs.
M.DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
M.SELF_SIGNED_AUDIENCE = "https://healthcare.googleapis.com/"
M.DEFAULT_METADATA_HOST = "metadata.google.internal"
M.METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
M.DEFAULT_REFRESH_MARGIN = 225   -- Google's Python library: 3 min 45 s
M.METADATA_PROBE_TIMEOUT = 3     -- Google's libraries: 3 s to decide there is no metadata server
M.TOKEN_TIMEOUT = 30
-- Token requests that fail with 5xx, 429 or a transport error are tried again, by the module's one
-- retry policy (healthcare.retry: full jitter, the server's Retry-After honoured): three attempts
-- within two minutes, about 0.5 s then 1 s apart.
M.TOKEN_RETRY = { max_attempts = 3, initial = 1, multiplier = 2, max_delay = 2, deadline = 120 }
-- A failure those attempts outlived is answered again, without asking, for this many seconds:
-- the call that needed the token has retries of its own (a GET five), which would otherwise each
-- run three token requests. Still retryable: a batch counts the file's failure as transient.
M.TOKEN_FAILURE_HOLD = 30
-- A token endpoint's answer is a few kilobytes: more is no token (and would be held in memory).
M.MAX_TOKEN_ANSWER = 1024 * 1024
M.JWT_LIFETIME = 3600
-- The longest a token is used before it is fetched again, whatever its endpoint says. Google's
-- last an hour (12 h at most, impersonated); an expires_in of a year or 1e300 would keep one
-- in the caches (memory, the command's token cache, the gateway's dict) past any real expiry.
M.MAX_TOKEN_LIFETIME = 24 * 3600
M.MAX_KEY_FILE = 1024 * 1024
M.WELL_KNOWN_FILE = "application_default_credentials.json"
M.JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
-- Key file types and the fields each needs.
M.TYPES = { "service_account", "authorized_user", "impersonated_service_account", "external_account",
  "external_account_authorized_user" }
M.REQUIRED = {
  service_account = { "client_email", "private_key" },
  authorized_user = { "client_id", "client_secret", "refresh_token" },
}
-- What to do about a token endpoint's error code.
M.HINTS = {
  invalid_grant = {
    service_account = "check that the key is current (not deleted or disabled), that the service "
      .. "account exists, and that this machine's clock is right",
    authorized_user = "the refresh token was revoked or has expired: run "
      .. "'gcloud auth application-default login' again",
  },
  invalid_client = {
    service_account = "check the key file's client_email",
    authorized_user = "check the file's client_id and client_secret",
  },
  unauthorized_client = {
    service_account = "the service account may not act for this subject (domain-wide delegation) "
      .. "or for these scopes",
  },
  invalid_scope = { service_account = "check the scopes asked for" },
}

-- The environment, behind a seam so specs can run discovery without touching the real one.
M.getenv = os.getenv

local function fail(message, fields)
  return nil, errors.new("auth", message, fields)
end

-- Replaces every secret of the list in s by REDACTED (util.redact: raw, percent-encoded and
-- JSON-escaped forms). Kept under this name for healthcare.ngx.
local scrub = util.redact
M.scrub = scrub

-- A value from a key file, quoted in an error: short. As it is otherwise: tostring(err) makes
-- a message printable.
local function shown(v)
  return (tostring(v):sub(1, 60))
end

--- The sorted, de-duplicated scope list for scopes (a list, a string or nil: the default).
function M.scope_list(scopes)
  if type(scopes) == "string" then scopes = { scopes } end
  if scopes == nil or #scopes == 0 then scopes = { params.DEFAULT_SCOPE } end
  local seen, list = {}, {}
  for _, s in ipairs(scopes) do
    if type(s) ~= "string" then error("scopes must be strings", 3) end
    if not seen[s] then
      seen[s] = true
      list[#list + 1] = s
    end
  end
  table.sort(list)
  return list
end

-- ---- the cache every kind shares ------------------------------------------------------------

local Credential = {}
Credential.__index = Credential
Credential.__name = "healthcare.Credential"
M.Credential = Credential

function Credential:__tostring()
  return string.format("healthcare.Credential %s (%s)", self.kind, self.closed and "closed" or "open")
end

-- opts: the client's options (refresh_margin, quota_project, timeouts, TLS, debug, token_cache).
local function new_credential(kind, opts, fields)
  local self = setmetatable(fields, Credential)
  self.kind = kind
  self.refreshable = true
  self.margin = opts.refresh_margin or M.DEFAULT_REFRESH_MARGIN
  self.cache = {}        -- scope key -> { token, expires_at, refresh_at } on core.now()'s clock
  self.refreshing = {}   -- scope key -> true while a refresh runs
  self.failed = {}       -- scope key -> { err, until_at }: a retryable failure, held (TOKEN_FAILURE_HOLD)
  self.refreshes = 0     -- token requests made (or JWTs signed), for tests and --debug
  self.debug = util.debug_sink(opts.debug)
  self.insecure = opts.insecure == true
  self.timeout = M.TOKEN_TIMEOUT
  self.session_opts = {
    user_agent = "healthcare-lua/" .. core._VERSION .. " " .. core.curl_version .. " auth",
    connect_timeout = opts.connect_timeout or M.TOKEN_TIMEOUT,
    ca_file = opts.ca_file,
    insecure = opts.insecure == true,
    http2 = opts.http2 ~= false,
    proxy = opts.proxy,
    no_proxy = opts.no_proxy,
  }
  self.proxy_settings = { proxy = opts.proxy, no_proxy = opts.no_proxy }
  if opts.token_cache and self.identity then
    local token_cache = require "healthcare.auth.token_cache"
    local dir = type(opts.token_cache) == "string" and opts.token_cache or token_cache.dir(M.getenv)
    self.disk = dir and token_cache.open(dir, self.debug)
  end
  return self
end

function Credential:log(line)
  if self.debug then self.debug(line) end
end

-- The token requests' own session (connection pool), made on first use.
function Credential:http()
  if self.closed then error("attempt to use a closed credential", 3) end
  if not self.session then self.session = core.session(self.session_opts) end
  return self.session
end

function Credential:remember(key, token, seconds_left, lifetime)
  local now = core.now()
  local margin = math.min(self.margin, lifetime / 2)
  local e = { token = token, expires_at = now + seconds_left, refresh_at = now + seconds_left - margin }
  self.cache[key] = e
  return e
end

-- A copy of err (a caller may add to the message of the one it gets).
local function copy_error(err)
  local c = {}
  for k, v in pairs(err) do c[k] = v end
  return setmetatable(c, getmetatable(err))
end

--- Returns a valid access token for scopes and the seconds it has left, or nil, err.
function Credential:token(scopes)
  if self.closed then error("attempt to use a closed credential", 2) end
  local list = M.scope_list(scopes)
  local key = self.scoped and table.concat(list, " ") or ""
  local now = core.now()
  local e = self.cache[key]
  if e and now < e.refresh_at then return e.token, e.expires_at - now end
  if self.refreshing[key] then
    -- Only reachable from code that runs while the refresh waits (a coroutine scheduler).
    if e and now < e.expires_at then return e.token, e.expires_at - now end
    return fail(self.label .. ": a token refresh is already running")
  end
  if self.disk and not self.disk_stale then
    local token, expires_at, lifetime = self.disk:get(self.identity, key)
    if token then
      e = self:remember(key, token, expires_at - os.time(), lifetime)
      if now < e.refresh_at then
        self:log("token cache: using the cached token of " .. self.label)
        return e.token, e.expires_at - now
      end
    end
  end
  local held = self.failed[key]
  if held and now < held.until_at then
    if e and now < e.expires_at then return e.token, e.expires_at - now end
    self:log(string.format("token: the failure of %.1f s ago answered again, not asked", now - held.at))
    return nil, copy_error(held.err)
  end
  self.refreshing[key] = true
  local ok, token, seconds = pcall(self.fetch, self, list)
  self.refreshing[key] = nil
  if not ok then error(token, 0) end
  self.failed[key] = nil
  if not token and seconds.retryable then
    self.failed[key] = { err = copy_error(seconds), at = core.now(), until_at = core.now() + M.TOKEN_FAILURE_HOLD }
  end
  if not token then
    -- A refresh inside the margin failed: the old token still works until it expires.
    if e and core.now() < e.expires_at then
      self:log("token refresh failed, keeping the current token: " .. seconds.message)
      return e.token, e.expires_at - core.now()
    end
    return nil, seconds
  end
  self.refreshes = self.refreshes + 1
  -- Whatever the kind (an expires_in, impersonation's expireTime in the year 9999), one ceiling.
  seconds = math.min(seconds, M.MAX_TOKEN_LIFETIME)
  e = self:remember(key, token, seconds, seconds)
  if self.disk then self.disk:put(self.identity, key, token, os.time() + seconds, seconds) end
  return e.token, seconds
end

function Credential:authorize(scopes)
  if self.closed then error("attempt to use a closed credential", 2) end
  local token, err = self:token(scopes)
  if not token then return nil, err end
  local headers = { "Authorization: Bearer " .. token }
  if self.quota_project then headers[2] = "x-goog-user-project: " .. self.quota_project end
  return { headers = headers }
end

--- Forgets every token (the API refused one); the next authorize fetches a fresh one.
function Credential:invalidate()
  if self.disk then
    for key in pairs(self.cache) do self.disk:remove(self.identity, key) end
  end
  self.cache = {}
  self.failed = {}
  self.disk_stale = true
end

--- The secrets this credential holds now: its access tokens (a self-signed JWT among them), a
--- refresh token and client secret, and the assertion of a token request under way. A list of
--- strings for redaction by value; never written anywhere.
function Credential:secrets()
  local list = {}
  for _, e in pairs(self.cache) do list[#list + 1] = e.token end
  for _, k in ipairs({ "refresh_token", "client_secret", "pending_assertion" }) do
    if type(self[k]) == "string" then list[#list + 1] = self[k] end
  end
  -- What every request of the credential carries (a Basic client authentication, the headers
  -- of a url source): kept for its whole life, unlike `held`, which keeps the latest few.
  for _, v in ipairs(self.sent_secrets or {}) do list[#list + 1] = v end
  -- The kinds of healthcare.auth.impersonate and healthcare.auth.external: the secrets they
  -- hold (subject tokens, AWS keys, ...) and those of the credential they stand on.
  for _, v in pairs(self.held or {}) do
    if type(v) == "string" then list[#list + 1] = v end
  end
  if self.source and self.source.secrets then
    for _, v in ipairs(self.source:secrets()) do list[#list + 1] = v end
  end
  return list
end

--- Closes the token requests' session; safe twice. A closed credential raises "attempt to use a
--- closed credential" when it would need a token request. The client that made it closes it.
function Credential:close()
  self.closed = true
  if self.session then self.session:close() end
  if self.source and self.owns_source and self.source.close then self.source:close() end
end

-- ---- token requests -------------------------------------------------------------------------

-- What an expires_in that is no number of seconds is, for the message (never its text: a server
-- may put anything there).
local function not_seconds(v)
  if type(v) ~= "number" then return "a " .. type(v) end
  return v ~= v and "NaN" or "an infinity"
end

--- The seconds a token lives by a token endpoint's expires_in (a number, or digits in a string as
--- some servers send it): JWT_LIFETIME when absent, at least 1, at most MAX_TOKEN_LIFETIME. Or
--- nil and what it is when it is no number of seconds (an infinity, NaN, "0x10", true).
function M.token_lifetime(v)
  if v == nil or v == cjson.null then return M.JWT_LIFETIME end
  local n = type(v) == "string" and v:match("^%s*%d+%.?%d*%s*$") and tonumber(v) or v
  n = util.finite_number(n)
  if not n then return nil, type(v) == "string" and "a string that is no number" or not_seconds(v) end
  if n <= 0 then return 1 end
  return math.min(n, M.MAX_TOKEN_LIFETIME)
end

--- Reads {access_token, expires_in} from a token endpoint's reply body: token, seconds, or nil
--- and the reason. Shared with healthcare.ngx, which fetches tokens through nginx.
function M.parse_token_reply(body)
  local doc, why = util.decode_json(body or "")
  if doc == nil then
    -- cjson's reason names a position, never the text (which holds the token).
    return nil, "with an answer that is not JSON (" .. tostring(why) .. ")"
  end
  local token = type(doc) == "table" and doc.access_token
  if type(token) ~= "string" or token == "" then
    return nil, "without an access_token"
  end
  if core.has_ctl(token) then
    return nil, "with a token containing control characters"
  end
  local seconds, what = M.token_lifetime(doc.expires_in)
  if not seconds then
    return nil, "with an expires_in that is not a number of seconds (" .. what .. ")"
  end
  return token, seconds
end

--- OAuth's {error, error_description} of a failed token reply as text ("invalid_grant: ..."),
--- both cut (errors.cut); nil when the body is not one. The text is the server's, as it is:
--- tostring(err) makes it printable.
function M.token_error_text(body)
  local doc = util.decode_json(body or "")
  if type(doc) ~= "table" or type(doc.error) ~= "string" then return nil end
  local desc = type(doc.error_description) == "string" and doc.error_description or nil
  desc = desc and (": " .. errors.cut(desc)) or ""
  return errors.cut(doc.error, errors.MAX_STATUS) .. desc, doc.error
end

local function read_token(self, res, secrets)
  local token, seconds = M.parse_token_reply(res.body)
  if not token then
    return fail(string.format("%s: the token endpoint %s answered HTTP %d %s",
      self.label, self.token_url_shown, res.status, seconds))
  end
  secrets[#secrets + 1] = token
  return token, seconds
end

-- The error of a token reply that is not 200: OAuth's {error, error_description}, else
-- whatever errors.from_response makes of it.
local function token_error(res, url)
  local text, code = M.token_error_text(res.body)
  if not text then
    return errors.from_response(res, "token endpoint " .. url)
  end
  return {
    http_status = res.status, status = code, retryable = errors.RETRYABLE_HTTP[res.status] == true,
    retry_after = errors.retry_after(res.headers),
    message = string.format("token endpoint %s: HTTP %d %s", url, res.status, text),
  }
end

--- errors.from_transport(err) for a request of a credential: an answer too large gets the
--- status too_large_status (the transport's "response_too_large" is taken by callers for the API
--- answer passing its max_bytes) and a message without the transport's option name.
function M.auth_transport_error(err, too_large_status)
  err = errors.from_transport(err)
  if err.status == "response_too_large" then
    err.status = too_large_status
    err.message = err.message:gsub("max_response_bytes %((%d+) bytes%)", "%1 bytes")
  end
  return err
end

-- One token request: the 200 reply, or the reply (if any) and an error value (kind "auth",
-- err.reason a short cause, err.retryable, err.retry_after).
local function token_attempt(self, req, secrets)
  self:log("> " .. req.method .. " " .. util.redact_url(req.url, secrets) .. " (token for " .. self.label .. ")")
  local proxy, variable = util.proxy_for(req.url, nil, self.proxy_settings)
  if proxy then self:log("* through the proxy " .. util.redact_proxy(proxy) .. " (from " .. variable .. ")") end
  for _, h in ipairs(req.headers) do self:log("> " .. util.redact_header(h, secrets)) end
  local t0 = core.now()
  req.proxy = proxy or ""
  local res, err = self:http():request(req)
  if not res then
    err = M.auth_transport_error(err, "token_answer_too_large")
    local reason = scrub(err.message, secrets):gsub("^%u+ %S+: ", "")
    self:log("< error: " .. reason)
    local message = string.format("%s: cannot reach %s: %s", self.label, self.token_url_shown, reason)
    if err.status == "token_answer_too_large" then
      message = string.format("%s: the answer of the token endpoint %s is larger than %d bytes", self.label,
        self.token_url_shown, req.max_response_bytes)
    end
    return nil, errors.new("auth", message, { status = err.status, retryable = err.retryable, reason = reason })
  end
  self:log(string.format("< HTTP %d (%.3f s)", res.status, core.now() - t0))
  if res.status == 200 then return res end
  -- Before anything is cut short for a message: a secret cut in two is no longer found.
  res.body = scrub(res.body or "", secrets)
  local e = token_error(res, self.token_url_shown)
  local hint = (M.HINTS[e.status] or {})[self.kind]
  return res, errors.new("auth", scrub(self.label .. ": " .. e.message .. (hint and ("; " .. hint) or ""), secrets),
    { http_status = e.http_status, status = e.status, retryable = e.retryable, retry_after = e.retry_after,
      reason = "HTTP " .. res.status })
end

--- Adds to the list `into` the value of every header of the list that carries a credential
--- (Authorization and the others util.redact_header hides), and the credential part of a
--- "Scheme credential" value: a server may echo either. Returns into.
function M.header_secrets(headers, into)
  for _, h in ipairs(headers or {}) do
    -- util.redact_header without secrets changes only the lines it always hides: the one list
    -- of those header names stays there.
    if util.redact_header(h) ~= h then
      local value = h:match("^[^:]*:%s*(.-)%s*$") or ""
      into[#into + 1] = value
      into[#into + 1] = value:match("^%S+%s+(%S+)$")
    end
  end
  return into
end

-- Sends one token request (req: a transport request table) with a few tries for failures worth
-- another try; when probing, a transport failure ends it at once (nobody is there). Returns the
-- 200 reply, or nil, err (kind "auth", err.reason a short cause) and the last reply if any.
function Credential:request_token(req, secrets, probing)
  local all = M.header_secrets(req.headers, self:secrets())
  for _, v in ipairs(secrets) do all[#all + 1] = v end
  secrets = all
  -- The answer carries a token, and the request an assertion, refresh token or client secret:
  -- none of them through a proxy over plain http (see healthcare.client).
  local proxy, variable = util.proxy_for(req.url, nil, self.proxy_settings)
  if proxy and not self.insecure and req.url:lower():match("^http://") then
    local message = require("healthcare.client").proxy_refusal(req.url,
      req.method == "GET" and "a token request (its answer is a token)"
        or "a token request (it carries a signed assertion or a refresh token)", proxy, variable)
    -- While probing for a metadata server, it counts as not found (and says why).
    return fail(self.label .. ": " .. message, { status = "CLEARTEXT_PROXY", absent = probing or nil,
      reason = probing and ("not asked: " .. variable .. " names a proxy; add the host to NO_PROXY") or nil })
  end
  req.max_response_bytes = req.max_response_bytes or M.MAX_TOKEN_ANSWER
  local res, err
  local policy = require("healthcare.retry").new(M.TOKEN_RETRY)
  policy:run(function()
    res, err = token_attempt(self, req, secrets)
    return err
  end, function(e)
    -- while probing, a transport failure ends it at once (nobody is there)
    return e ~= nil and e.retryable and not (probing and e.http_status == nil), e and e.retry_after
  end)
  if err then return nil, err, res end
  return res
end

-- A form POST to the token endpoint.
function Credential:post_form(form, secrets)
  return self:request_token({
    method = "POST",
    url = self.token_uri,
    headers = { "Content-Type: application/x-www-form-urlencoded", "Accept: application/json" },
    body = util.query_string(form),
    timeout = self.timeout,
  }, secrets)
end

-- ---- service accounts -----------------------------------------------------------------------

--- A service account's signed JWT for scopes (a list): the assertion of the token request, or
--- for self_signed_jwt the bearer token itself. Signed in the C core. Returns jwt or nil, err.
function Credential:assertion(scopes)
  if not self.key then error("assertion: not a service account credential", 2) end
  local now = os.time()
  local claims
  if self.kind == "self_signed_jwt" then
    claims = { iss = self.email, sub = self.email, aud = M.SELF_SIGNED_AUDIENCE, iat = now,
      exp = now + M.JWT_LIFETIME }
  else
    claims = { iss = self.email, scope = table.concat(M.scope_list(scopes), " "), aud = self.token_uri,
      iat = now, exp = now + M.JWT_LIFETIME, sub = self.subject }
  end
  local header = { alg = "RS256", typ = "JWT", kid = self.key_id }
  local jwt, err = self.key:sign(cjson.encode(header), cjson.encode(claims))
  if not jwt then return fail(self.label .. ": " .. err.message) end
  return jwt
end

local function fetch_service_account(self, scopes)
  local assertion, err = self:assertion(scopes)
  if not assertion then return nil, err end
  local secrets = { assertion }
  self.pending_assertion = assertion
  local res, rerr = self:post_form({ grant_type = M.JWT_GRANT, assertion = assertion }, secrets)
  self.pending_assertion = nil
  if not res then return nil, rerr end
  return read_token(self, res, secrets)
end

local function fetch_self_signed(self)
  local jwt, err = self:assertion()
  if not jwt then return nil, err end
  self:log("signed a self-signed JWT for " .. self.label)
  return jwt, M.JWT_LIFETIME
end

local function fetch_authorized_user(self)
  local secrets = { self.refresh_token, self.client_secret }
  local res, err = self:post_form({
    grant_type = "refresh_token", client_id = self.client_id,
    client_secret = self.client_secret, refresh_token = self.refresh_token,
  }, secrets)
  if not res then return nil, err end
  return read_token(self, res, secrets)
end

local function fetch_metadata(self, scopes)
  local url = self.metadata_url .. "?scopes=" .. core.escape(table.concat(scopes, ","), ",")
  local res, err, reply = self:request_token({
    method = "GET", url = url, headers = { "Metadata-Flavor: Google" },
    timeout = self.timeout, connect_timeout = math.min(self.timeout, M.TOKEN_TIMEOUT),
  }, {}, self.probing)
  -- Anything else listening there is not the metadata server (and must not get our trust).
  reply = res or reply
  if reply and (reply.headers["metadata-flavor"] or ""):lower() ~= "google" then
    return fail(self.label .. " is not a metadata server: its reply has no 'Metadata-Flavor: Google'",
      { absent = true, reason = "the reply has no 'Metadata-Flavor: Google'" })
  end
  if not res then
    err.absent = reply == nil
    return nil, err
  end
  return read_token(self, res, {})
end

local function check_string(info, field, source)
  local v = info[field]
  if v == nil or v == "" then return nil end
  if type(v) ~= "string" then
    return false, errors.new("auth", string.format("%s: '%s' must be a string", source, field))
  end
  return v
end

local function check_url(url, source, field)
  -- A number or an object from a JSON file: said so, not a Lua error from url:match.
  if type(url) ~= "string" then
    return fail(string.format("%s: '%s' must be an http(s) URL, got a JSON %s", source, field,
      type(url) == "table" and "object or array" or type(url) == "boolean" and "boolean" or type(url)))
  end
  if not url:match("^https?://[^/?#]+") or core.has_ctl(url) then
    return fail(string.format("%s: '%s' must be an http(s) URL, got '%s'", source, field,
      shown(util.redact_url(url))))
  end
  -- libcurl would send a user:password@ as Basic authentication, and messages name the URL
  if util.has_userinfo(url) then
    return fail(string.format("%s: '%s' must not hold a user name or password, got '%s'", source, field,
      util.redact_url(url)))
  end
  return true
end

local function quota_project(opts, info, source)
  local q = opts.quota_project or (info and info.quota_project_id) or M.getenv("GOOGLE_CLOUD_QUOTA_PROJECT")
  if q == nil or q == "" then return nil end
  if type(q) ~= "string" or core.has_ctl(q) then
    return false, errors.new("auth", (source or "quota_project") .. ": the quota project must be a string "
      .. "without CR, LF or NUL")
  end
  return q
end

-- Checks the fields REQUIRED[type] and returns the string values, or nil, err naming every
-- missing one.
local function required(info, kind, source)
  local out, missing = {}, {}
  for _, field in ipairs(M.REQUIRED[kind]) do
    local v, err = check_string(info, field, source)
    if v == false then return nil, err end
    if v == nil then missing[#missing + 1] = "'" .. field .. "'" end
    out[field] = v
  end
  if #missing > 0 then
    return fail(string.format("%s: missing %s (required for type '%s')", source, table.concat(missing, ", "), kind))
  end
  return out
end

local function service_account(info, opts, source)
  local f, err = required(info, "service_account", source)
  if not f then return nil, err end
  local key_id, uri
  key_id, err = check_string(info, "private_key_id", source)
  if key_id == false then return nil, err end
  uri, err = check_string(info, "token_uri", source)
  if uri == false then return nil, err end
  uri = uri or M.DEFAULT_TOKEN_URI
  local ok, uerr = check_url(uri, source, "token_uri")
  if not ok then return nil, uerr end
  local key, kerr = core.private_key(f.private_key)
  if not key then
    return fail(string.format("%s: 'private_key' is not a usable RSA private key: %s. Use the key file "
      .. "as downloaded from the Google Cloud console, unchanged", source, kerr.message))
  end
  local qp, qerr = quota_project(opts, info, source)
  if qp == false then return nil, qerr end
  local subject = opts.subject
  if subject ~= nil and (type(subject) ~= "string" or subject == "" or core.has_ctl(subject)) then
    return fail("subject must be a non-empty string (the user's email address)")
  end
  local self_signed = opts.self_signed_jwt == true
  if self_signed and subject then
    return fail(source .. ": self_signed_jwt cannot be used with subject; domain-wide delegation "
      .. "needs a token from the token endpoint (leave self_signed_jwt unset)")
  end
  local label = string.format("service account %s", shown(f.client_email))
  local fields = {
    label = label, email = f.client_email, key = key, key_id = key_id, token_uri = uri,
    token_url_shown = util.redact_url(uri), subject = subject, quota_project = qp, source = source,
  }
  if self_signed then
    fields.fetch, fields.scoped = fetch_self_signed, false
    return new_credential("self_signed_jwt", opts, fields)
  end
  fields.fetch, fields.scoped = fetch_service_account, true
  fields.identity = table.concat({ "service_account", f.client_email,
    key_id or core.sha256_hex(f.private_key), uri, subject or "" }, "\n")
  return new_credential("service_account", opts, fields)
end

local function authorized_user(info, opts, source)
  local f, err = required(info, "authorized_user", source)
  if not f then return nil, err end
  if opts.self_signed_jwt then
    return fail(source .. ": self_signed_jwt needs a service account key, not an authorized_user file")
  end
  if opts.subject then
    return fail(source .. ": subject (domain-wide delegation) needs a service account key, not an "
      .. "authorized_user file")
  end
  local uri
  uri, err = check_string(info, "token_uri", source)
  if uri == false then return nil, err end
  uri = uri or M.DEFAULT_TOKEN_URI
  local ok, uerr = check_url(uri, source, "token_uri")
  if not ok then return nil, uerr end
  local qp, qerr = quota_project(opts, info, source)
  if qp == false then return nil, qerr end
  return new_credential("authorized_user", opts, {
    label = "authorized user of client " .. shown(f.client_id), source = source,
    client_id = f.client_id, client_secret = f.client_secret, refresh_token = f.refresh_token,
    token_uri = uri, token_url_shown = util.redact_url(uri), quota_project = qp,
    -- The user's consent fixed the scopes; Google's libraries do not ask for others.
    fetch = fetch_authorized_user, scoped = false,
    identity = table.concat({ "authorized_user", f.client_id, core.sha256_hex(f.refresh_token), uri }, "\n"),
  })
end

--- A credential from a decoded key file (source names it in errors), or nil, err.
function M.from_info(info, opts, source)
  opts = opts or {}
  source = source or "credentials"
  if type(info) ~= "table" or info[1] ~= nil then
    return fail(source .. " must hold a JSON object (a service account key or another Application Default "
      .. "Credentials file)")
  end
  local t = info.type
  if t == "service_account" then return service_account(info, opts, source) end
  if t == "authorized_user" then return authorized_user(info, opts, source) end
  -- Credentials without key files: their own modules.
  if t == "impersonated_service_account" then
    return require("healthcare.auth.impersonate").from_info(info, opts, source)
  end
  if t == "external_account" or t == "external_account_authorized_user" then
    return require("healthcare.auth.external").from_info(info, opts, source)
  end
  local expected = "'" .. table.concat(M.TYPES, "', '", 1, #M.TYPES - 1) .. "' or '" .. M.TYPES[#M.TYPES] .. "'"
  if t == nil then
    return fail(string.format("%s has no 'type'; expected %s", source, expected))
  end
  return fail(string.format("%s has type '%s', which is not supported; expected %s", source, shown(t), expected))
end

--- The text of a file that holds credentials (what ends up used as a key or a token), read
--- only when no other user could have written it (core.trusted_read: this user's or root's,
--- not writable by others, links on the way this user's or root's, and so every directory
--- holding them up to the home directory, unless sticky), at most max bytes. what names the
--- file in errors, after `label: ` when label is given. Returns text, or nil, err (kind "auth";
--- err.absent when there is no file, status "UNSAFE_FILE" when it is refused, with err.directory
--- when a directory is at fault).
function M.read_trusted(path, what, max, label)
  local text, err = core.trusted_read(path, max)
  if text then return text end
  local head = label and (label .. ": ") or ""
  if err.status == "unsafe" then
    local rule = err.directory and "every directory on its way must be yours (or root's) and writable by you "
      .. "alone, or sticky as /tmp" or "it must be yours (or root's) and writable by you alone"
    return fail(string.format("%srefusing %s: %s; %s", head, what, err.reason, rule),
      { path = path, status = "UNSAFE_FILE", directory = err.directory })
  end
  if err.status == "large" then
    return fail(string.format("%s%s is larger than %d bytes", head, what, max), { path = path })
  end
  local prefix = "cannot read " .. path .. ": "
  local reason = err.message:sub(1, #prefix) == prefix and err.message:sub(#prefix + 1) or err.message
  return fail(string.format("%scannot read %s: %s", head, what, reason),
    { path = path, absent = err.status == "absent" or nil })
end

--- A credential from a key file, or nil, err. label says where the path came from.
function M.from_file(path, opts, label)
  local source = string.format("%s '%s'", label or "credentials file", path)
  local text, rerr = M.read_trusted(path, source, M.MAX_KEY_FILE)
  if not text then return nil, rerr end
  local info, jerr = util.decode_json(text)
  if info == nil then
    -- cjson's messages name a token kind and a position, never the text itself.
    return fail(string.format("%s is not valid JSON (%s); expected a service account key or another "
      .. "Application Default Credentials file", source, tostring(jerr)))
  end
  return M.from_info(info, opts, source)
end

-- ---- the metadata server --------------------------------------------------------------------

--- The metadata server's host ($GCE_METADATA_HOST, else metadata.google.internal).
function M.metadata_host()
  local h = M.getenv("GCE_METADATA_HOST")
  if h and h ~= "" then return h end
  return M.DEFAULT_METADATA_HOST
end

--- A credential of the metadata server. With probe, it first fetches a token for opts.scopes
--- with a short timeout (that token is kept): nil, err with err.absent when nothing answers.
function M.metadata(opts, probe)
  opts = opts or {}
  if opts.self_signed_jwt then
    return fail("self_signed_jwt needs a service account key, not the metadata server")
  end
  if opts.subject then
    return fail("subject (domain-wide delegation) needs a service account key, not the metadata server")
  end
  local host = M.metadata_host()
  if core.has_ctl(host) or host:find("[/?#@%s]") then
    return fail("GCE_METADATA_HOST must be a host name or host:port, got '" .. shown(host) .. "'")
  end
  local qp, qerr = quota_project(opts, nil, "quota_project")
  if qp == false then return nil, qerr end
  local base = "http://" .. host
  local cred = new_credential("metadata", opts, {
    label = "the metadata server at " .. base, metadata_url = base .. M.METADATA_TOKEN_PATH,
    token_url_shown = base .. M.METADATA_TOKEN_PATH, quota_project = qp,
    fetch = fetch_metadata, scoped = true,
  })
  if probe then
    cred.probing, cred.timeout = true, M.METADATA_PROBE_TIMEOUT
    local token, err = cred:token(opts.scopes)
    cred.probing, cred.timeout = nil, M.TOKEN_TIMEOUT
    if not token then
      cred:close()
      return nil, err
    end
  end
  return cred
end

-- What healthcare.auth.impersonate and healthcare.auth.external build on (not a public API).
M.internal = {
  new_credential = new_credential, fail = fail, shown = shown, check_string = check_string,
  check_url = check_url, quota_project = quota_project, read_token = read_token, token_error = token_error,
}

-- ---- Application Default Credentials --------------------------------------------------------

--- The gcloud well-known file ($CLOUDSDK_CONFIG or ~/.config/gcloud), or nil when neither
--- CLOUDSDK_CONFIG nor HOME is set.
function M.well_known_file()
  local dir = M.getenv("CLOUDSDK_CONFIG")
  if not dir or dir == "" then
    local home = M.getenv("HOME")
    if not home or home == "" then return nil end
    dir = home .. "/.config/gcloud"
  end
  return dir .. "/" .. M.WELL_KNOWN_FILE
end

--- Application Default Credentials, in Google's order: the file named by
--- GOOGLE_APPLICATION_CREDENTIALS, gcloud's well-known file, the metadata server. A source that
--- is there but broken is an error (as in Google's libraries); when none is there the error
--- names every place looked at.
-- The `impersonate` option over a credential just found (nil, err passes through).
local function impersonating(cred, err, opts)
  if not cred or not opts.impersonate then return cred, err end
  return require("healthcare.auth.impersonate").over(cred, opts)
end

local find_default

function M.default(opts)
  opts = opts or {}
  local cred, err = find_default(opts)
  return impersonating(cred, err, opts)
end

find_default = function(opts)
  local looked = {}
  local env = M.getenv("GOOGLE_APPLICATION_CREDENTIALS")
  if env and env ~= "" then
    return M.from_file(env, opts, "GOOGLE_APPLICATION_CREDENTIALS file")
  end
  looked[#looked + 1] = "GOOGLE_APPLICATION_CREDENTIALS (not set)"
  local wk = M.well_known_file()
  if wk then
    local cred, err = M.from_file(wk, opts, "gcloud credentials file")
    -- Not there: look further. Anything else (refused, broken) is worth saying.
    if cred or not err.absent then return cred, err end
    looked[#looked + 1] = wk .. " (no such file)"
  else
    looked[#looked + 1] = "gcloud's " .. M.WELL_KNOWN_FILE .. " (neither CLOUDSDK_CONFIG nor HOME is set)"
  end
  local cred, err = M.metadata(opts, true)
  if cred then return cred end
  if not err.absent then return nil, err end
  looked[#looked + 1] = string.format("the metadata server at http://%s (%s)", M.metadata_host(),
    err.reason or err.message)
  return fail("no Google credentials found; looked at: " .. table.concat(looked, "; ") .. ". "
    .. "Set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, run 'gcloud auth "
    .. "application-default login', or give credentials (--credentials FILE), an access token or an API key",
    { status = "NO_CREDENTIALS" })
end

--- The credential the client options ask for (healthcare.new's credentials, access_token,
--- api_key, self_signed_jwt, subject, scopes, refresh_margin, quota_project, token_cache).
--- Returns a credential, or nil, err (kind "auth"; "usage" for two credential options, as
--- healthcare.new). Wrong option types raise.
function M.from_options(opts)
  opts = opts or {}
  local conflict = auth.conflict(opts)
  if conflict then return nil, conflict end
  if opts.refresh_margin ~= nil and (type(opts.refresh_margin) ~= "number" or opts.refresh_margin < 0) then
    error("bad option 'refresh_margin' (a number of seconds >= 0 expected)", 3)
  end
  for _, k in ipairs({ "subject", "quota_project" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "string" then
      error(string.format("bad option '%s' (string expected, got %s)", k, type(opts[k])), 3)
    end
  end
  if opts.token_cache ~= nil and type(opts.token_cache) ~= "boolean" and type(opts.token_cache) ~= "string" then
    error("bad option 'token_cache' (boolean or directory expected, got " .. type(opts.token_cache) .. ")", 3)
  end
  if opts.impersonate ~= nil and type(opts.impersonate) ~= "string" then
    error("bad option 'impersonate' (a service account email expected, got " .. type(opts.impersonate) .. ")", 3)
  end
  if opts.delegates ~= nil and type(opts.delegates) ~= "table" then
    error("bad option 'delegates' (a list of service account emails expected, got " .. type(opts.delegates) .. ")", 3)
  end
  local c = opts.credentials
  if c == nil and not opts.access_token and not opts.api_key then return M.default(opts) end
  if c == false then return auth.none() end
  local cred, err
  if opts.access_token then
    cred = auth.access_token(opts.access_token)
  elseif opts.api_key then
    cred = auth.api_key(opts.api_key)
  elseif type(c) == "table" and type(c.authorize) == "function" then
    -- The caller's object: an impersonation over it must not close it.
    if opts.impersonate then return require("healthcare.auth.impersonate").over(c, opts, false) end
    return c
  elseif type(c) == "string" then
    cred, err = M.from_file(c, opts, "credentials file")
  elseif type(c) == "table" then
    cred, err = M.from_info(c, opts, "credentials table")
  else
    error("bad option 'credentials' (path, table or false expected, got " .. type(c) .. ")", 3)
  end
  return impersonating(cred, err, opts)
end

return M
