-- SPDX-License-Identifier: MIT
-- Service account impersonation: a token of a target service account, asked of the IAM
-- Credentials API (`generateAccessToken`) with the token of another credential (the source),
-- optionally through a chain of delegates. Two ways in:
--   * an ADC file of type `impersonated_service_account` (what `gcloud auth application-default
--     login --impersonate-service-account` writes): source_credentials (authorized_user or
--     service_account), service_account_impersonation_url, delegates, quota_project_id;
--   * the `impersonate` option (+ `delegates`) over any other credential (--impersonate-service-account).
-- The source token is asked for the cloud-platform scope (what IAM Credentials takes, as Google's
-- libraries do); the target's token for the scopes the client needs. The source's secrets are
-- the impersonated credential's too (redaction), and only the target's access token goes to the
-- token cache.
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local params = require "healthcare.params"
local util = require "healthcare.util"

local M = {}

M.IAM_ENDPOINT = "https://iamcredentials.googleapis.com/v1"
M.IAM_PATH = "/projects/-/serviceAccounts/%s:generateAccessToken"
M.SOURCE_SCOPE = params.SCOPE_CLOUD_PLATFORM
M.LIFETIME = 3600          -- seconds: IAM's default and, without the org policy extension, its limit
M.MAX_LIFETIME = 43200
M.SOURCE_TYPES = { authorized_user = true, service_account = true, external_account = true,
  external_account_authorized_user = true }

local function creds() return require "healthcare.auth.credentials" end

--- Seconds since the epoch of an RFC 3339 time in UTC ("2026-12-02T11:00:00Z", fractions and
--- an offset allowed), or nil. Computed (days from the civil date), not by os.time, which reads
--- the local time zone.
function M.epoch(stamp)
  if type(stamp) ~= "string" then return nil end
  local y, mo, d, h, mi, s, rest = stamp:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local offset = 0
  rest = rest:gsub("^%.%d+", "")
  if rest ~= "Z" and rest ~= "z" then
    local sign, oh, om = rest:match("^([+-])(%d%d):(%d%d)$")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  if mo > 2 then mo = mo - 3 else mo, y = mo + 9, y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * mo + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) - offset
end

--- The target's email of a generateAccessToken URL, or nil.
function M.target_of(url)
  return url:match("/serviceAccounts/([^/:?#]+):generateAccessToken$")
end

--- A delegate as IAM wants it (projects/-/serviceAccounts/EMAIL); an email alone is completed.
function M.delegate_name(d)
  if d:find("/", 1, true) then return d end
  return "projects/-/serviceAccounts/" .. d
end

-- A bearer token of source for scope: its token() when it has one (Google credentials), else
-- the Authorization header its authorize() makes (a static access token, a caller's object).
local function source_token(source, scope)
  if type(source.token) == "function" then return source:token({ scope }) end
  local a, err = source:authorize({ scope })
  if not a then return nil, err end
  for _, h in ipairs(a.headers or {}) do
    local t = h:match("^[Aa]uthorization:%s*[Bb]earer%s+(.+)$")
    if t then return t end
  end
  return nil, require("healthcare.errors").new("auth", "impersonation needs a source credential that sends a "
    .. "bearer token (an API key cannot impersonate)")
end

local function fetch(self, scopes)
  local C = creds()
  local token, err = source_token(self.source, M.SOURCE_SCOPE)
  if not token then
    return C.internal.fail(self.label .. ": the source credential has no token: " .. tostring(err.message),
      -- (a caller's source object may pass on its transport's status: not the API answer's)
      { status = err.status == "response_too_large" and "token_answer_too_large" or err.status,
        retryable = err.retryable })
  end
  local body = { scope = scopes, lifetime = string.format("%ds", self.lifetime) }
  if #self.delegates > 0 then body.delegates = self.delegates end
  local res, rerr = self:request_token({
    method = "POST", url = self.token_uri,
    headers = { "Authorization: Bearer " .. token, "Content-Type: application/json", "Accept: application/json" },
    body = cjson.encode(body), timeout = self.timeout,
  }, { token })
  if not res then
    -- The source's token was refused: the next try gets it a fresh one.
    if rerr.http_status == 401 and self.source.invalidate then self.source:invalidate() end
    return nil, rerr
  end
  local doc = util.decode_json(res.body or "")
  local access = type(doc) == "table" and doc.accessToken
  local expires = type(doc) == "table" and M.epoch(doc.expireTime)
  if type(access) ~= "string" or access == "" or core.has_ctl(access) or not expires then
    return C.internal.fail(string.format("%s: %s answered HTTP %d without an accessToken and expireTime",
      self.label, self.token_url_shown, res.status))
  end
  return access, math.max(1, expires - os.time())
end

local function check_delegates(delegates, source)
  local C = creds()
  if delegates == nil then return {} end
  if type(delegates) ~= "table" then
    return C.internal.fail(source .. ": 'delegates' must be a list of service account emails")
  end
  local out = {}
  for i, d in ipairs(delegates) do
    if type(d) ~= "string" or d == "" or core.has_ctl(d) or d:find("[%s?#]") then
      return C.internal.fail(string.format("%s: delegate %d must be a service account email", source, i))
    end
    out[i] = M.delegate_name(d)
  end
  return out
end

--- A credential for the service account of url (a generateAccessToken URL) made with source's
--- token. o: delegates, lifetime, quota_project (strings, a list), owns_source; opts: the client's
--- options (cache, TLS, debug). Returns the credential, or nil, err.
function M.wrap(source, url, opts, o, where)
  local C = creds()
  where = where or "impersonate"
  local ok, uerr = C.internal.check_url(url, where, "service_account_impersonation_url")
  if not ok then return nil, uerr end
  local target = M.target_of(url)
  if not target then
    return C.internal.fail(string.format("%s: the impersonation URL must end in serviceAccounts/EMAIL:"
      .. "generateAccessToken, got '%s'", where, C.internal.shown(util.redact_url(url))))
  end
  local delegates, derr = check_delegates(o.delegates, where)
  if not delegates then return nil, derr end
  local lifetime = o.lifetime or M.LIFETIME
  if not util.finite_number(lifetime, 1, M.MAX_LIFETIME) then -- (NaN passes < and >)
    return C.internal.fail(string.format("%s: the token lifetime must be 1 to %d seconds", where, M.MAX_LIFETIME))
  end
  local identity = source.identity and table.concat({ "impersonated", url, table.concat(delegates, ","),
    tostring(lifetime), source.identity }, "\n") or nil
  return C.internal.new_credential("impersonated_service_account", opts, {
    label = "impersonated service account " .. C.internal.shown(target),
    target = target, delegates = delegates, lifetime = math.floor(lifetime), source = source,
    owns_source = o.owns_source ~= false, token_uri = url, token_url_shown = util.redact_url(url),
    quota_project = o.quota_project or source.quota_project, fetch = fetch, scoped = true, identity = identity,
  })
end

--- The `impersonate` option (an email, + `delegates`) over source; owns_source false for a
--- caller's object, which the impersonated credential then does not close. Returns the
--- credential, or nil, err.
function M.over(source, opts, owns_source)
  local C = creds()
  local email = opts.impersonate
  local function give_up(message)
    if owns_source ~= false and source.close then source:close() end
    return C.internal.fail(message)
  end
  if email == "" or core.has_ctl(email) or email:find("[%s/?#:]") or not email:find("@", 1, true) then
    return give_up("impersonate must be a service account email, got '" .. C.internal.shown(email) .. "'")
  end
  if source.kind == "api_key" then
    return give_up("impersonate needs a credential that sends a bearer token, not an API key")
  end
  local endpoint = opts.iam_endpoint or C.getenv("HEALTHCARE_IAM_ENDPOINT") or M.IAM_ENDPOINT
  if endpoint == "" then endpoint = M.IAM_ENDPOINT end
  if not util.is_base_url(endpoint) or util.has_userinfo(endpoint) then
    return give_up("iam_endpoint must be an http(s) URL (the IAM Credentials API's, with its /v1) without a "
      .. "user name or password, got '" .. C.internal.shown(util.redact_url(endpoint)) .. "'")
  end
  local cred, err = M.wrap(source, endpoint:gsub("/+$", "") .. string.format(M.IAM_PATH, email), opts,
    { delegates = opts.delegates, owns_source = owns_source ~= false }, "impersonate")
  if not cred and owns_source ~= false and source.close then source:close() end
  return cred, err
end

--- A credential from an `impersonated_service_account` ADC file (decoded), or nil, err.
function M.from_info(info, opts, source)
  local C = creds()
  local url, err = C.internal.check_string(info, "service_account_impersonation_url", source)
  if url == false then return nil, err end
  if not url then
    return C.internal.fail(source .. ": missing 'service_account_impersonation_url' (required for type "
      .. "'impersonated_service_account')")
  end
  local src = info.source_credentials
  if type(src) == "table" and src.type == "impersonated_service_account" then
    return C.internal.fail(source .. ": 'source_credentials' cannot itself be impersonated")
  end
  if type(src) ~= "table" or not M.SOURCE_TYPES[src.type] then
    return C.internal.fail(source .. ": 'source_credentials' must be an object of type 'authorized_user' or "
      .. "'service_account' (got " .. (type(src) == "table" and "type '" .. C.internal.shown(src.type) .. "'"
      or type(src)) .. ")")
  end
  local qp, qerr = C.internal.quota_project(opts, info, source)
  if qp == false then return nil, qerr end
  -- The source asks for its own token without the caller's quota project or impersonation.
  local sopts = {}
  for k, v in pairs(opts) do sopts[k] = v end
  sopts.impersonate, sopts.delegates, sopts.subject, sopts.self_signed_jwt = nil, nil, nil, nil
  local scred, serr = C.from_info(src, sopts, source .. " (source_credentials)")
  if not scred then return nil, serr end
  local cred, werr = M.wrap(scred, url, opts, { delegates = info.delegates, quota_project = qp }, source)
  if not cred then scred:close() end
  return cred, werr
end

return M
