-- SPDX-License-Identifier: MIT
-- The gateway's credentials without key files (healthcare.ngx): the metadata server of the
-- machine or pod (GCE, GKE), service account impersonation (IAM Credentials generateAccessToken,
-- over a key, the metadata server or an external account), and workload identity federation
-- (`external_account` files with a `file`, `url` or `aws` source, exchanged at Google's STS,
-- then optionally impersonating). Every request goes through an internal location of nginx.conf
-- (`ngx.location.capture`), so no worker blocks on the network; a refresh is one at a time, as for
-- keys (healthcare.ngx's lock). A bearer or client credential reaches its location through
-- ngx.ctx (`set_by_lua_block $healthcare_authorization { ... }` in the location, see the README),
-- never through a request header a client could have sent.
--   configure { credentials = "metadata", impersonate = "sa@p.iam.gserviceaccount.com", ... }
--   configure { credentials = "/etc/healthcare/external-account.json", ... }
-- No token, subject token or client secret goes into a log line or an answer.
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local credentials = require "healthcare.auth.credentials"
local impersonate = require "healthcare.auth.impersonate"
local external = require "healthcare.auth.external"
local params = require "healthcare.params"
local util = require "healthcare.util"

local M = {}

-- The internal locations (nginx.conf) and their defaults.
M.DEFAULTS = {
  metadata_location = "/_healthcare/metadata",   -- proxy_pass to the metadata server's token URL
  sts_location = "/_healthcare/sts",             -- proxy_pass to the file's token_url
  iam_location = "/_healthcare/iam/",            -- proxy_pass .../v1/projects/-/serviceAccounts/
  subject_location = "/_healthcare/subject",     -- proxy_pass to a url source's URL, with its headers
  aws_location = "/_healthcare/aws",             -- proxy_pass to the AWS metadata (its URLs' paths)
}
M.OPTIONS = { "impersonate", "delegates", "metadata_location", "sts_location", "iam_location",
  "subject_location", "aws_location" }
M.MAX_SUBJECT_TOKEN = external.MAX_SUBJECT_TOKEN

-- A credentials file's decoded table, or nil, err. Read as the library reads every credential
-- file (credentials.read_trusted): a file another user could have written would choose whose
-- identity the gateway takes.
local function read_json(path, where)
  local text, err = credentials.read_trusted(path, where, credentials.MAX_KEY_FILE)
  if not text then return nil, tostring(err) end
  local info = cjson.decode(text)
  if type(info) ~= "table" then return nil, "cannot read " .. where .. " as JSON" end
  return info
end

--- Whether healthcare.ngx.configure's options need this module (else a service account key;
--- a file that cannot be read is left to credentials.from_file, which says why).
function M.handles(opts)
  if opts.credentials == "metadata" or opts.impersonate then return true end
  local info = type(opts.credentials) == "table" and opts.credentials
    or type(opts.credentials) == "string" and read_json(opts.credentials, "credentials file")
  return type(info) == "table" and (info.type == "external_account" or info.type == "impersonated_service_account")
end

-- The error text of a subrequest's failure, secrets taken out.
local function failed(what, res, secrets)
  local text = credentials.token_error_text(res.body)
  if not text then
    local doc = cjson.decode(res.body or "")
    text = type(doc) == "table" and type(doc.error) == "table" and type(doc.error.message) == "string"
      and ((doc.error.status or "") .. ": " .. doc.error.message:sub(1, 300)) or nil
  end
  local msg = string.format("%s failed: HTTP %d%s", what, res.status, text and (" " .. text) or "")
  if res.status == 502 or res.status == 504 then
    msg = msg .. " from nginx (unreachable or slow; see the lines above)"
  end
  return credentials.scrub(msg, secrets)
end

-- One subrequest; ctx.healthcare_authorization reaches the location's $healthcare_authorization
-- (and ctx's other fields, given in o.ctx, their variables: the aws location's).
local function capture(uri, o, authorization)
  local ctx = { healthcare_authorization = authorization or "" }
  for k, v in pairs(o.ctx or {}) do ctx[k] = v end
  return ngx.location.capture(uri, { method = o.method, body = o.body, args = o.args, ctx = ctx })
end

-- ---- the sources ----------------------------------------------------------------------------

local function metadata_token(g, scopes)
  local res = capture(g.metadata_location, { method = ngx.HTTP_GET,
    args = "scopes=" .. core.escape(table.concat(scopes, ","), ",") })
  if res.status ~= 200 then return nil, failed("token request to the metadata server", res, {}) end
  local flavor = res.header["Metadata-Flavor"]
  if type(flavor) ~= "string" or flavor:lower() ~= "google" then
    return nil, "the metadata location's answer has no 'Metadata-Flavor: Google': it is not the metadata server"
  end
  return credentials.parse_token_reply(res.body)
end

-- A key's token through the classic token location.
local function key_token(g, scopes)
  local assertion, err = g.source_key:assertion(scopes)
  if not assertion then return nil, tostring(err) end
  local res = capture(g.token_location, { method = ngx.HTTP_POST,
    body = util.query_string({ grant_type = credentials.JWT_GRANT, assertion = assertion }) })
  if res.status ~= 200 then
    return nil, failed("token request for " .. g.source_key.label, res, { assertion })
  end
  return credentials.parse_token_reply(res.body)
end

-- The AWS metadata requests of an aws source (healthcare.auth.external's fetch_source), through
-- the aws location: the URL's path below it, the IMDSv2 headers through ngx.ctx
-- ($healthcare_aws_token, $healthcare_aws_token_ttl), nothing of the client's request.
local function aws_fetch(g)
  return function(self, req, what)
    local path = req.url:match("^https?://[^/?#]+(/[^#]*)$")
    if not path then return nil, self.label .. ": " .. what .. ": the URL has no path for the aws location" end
    local ctx = { healthcare_aws_token = "", healthcare_aws_token_ttl = "" }
    for _, h in ipairs(req.headers or {}) do
      local name, value = h:match("^([^:]+):%s*(.*)$")
      if name and name:lower() == "x-aws-ec2-metadata-token" then ctx.healthcare_aws_token = value end
      if name and name:lower() == "x-aws-ec2-metadata-token-ttl-seconds" then
        ctx.healthcare_aws_token_ttl = value
      end
    end
    -- body "": a PUT subrequest would otherwise take the client's request body
    local res = capture(g.aws_location .. path, { method = ngx["HTTP_" .. req.method], body = "", ctx = ctx })
    if res.status ~= 200 then return nil, failed(self.label .. ": " .. what, res, self.held) end
    return res.body or ""
  end
end

-- An aws source's subject token: a GetCallerIdentity request signed with the role's keys
-- (healthcare.auth.external's, the metadata asked through the aws location). Returns the token
-- and the secrets met, or nil, err.
local function aws_subject_token(g, x)
  local src = { aws = x.aws, label = x.label, audience = x.audience, held = {}, fetch_source = aws_fetch(g) }
  local token, err = external.aws_subject_token(src)
  if not token then return nil, credentials.scrub(tostring(err), src.held) end
  return token, src.held
end

local function subject_token(g, x)
  local text
  if x.aws then
    return aws_subject_token(g, x)
  elseif x.source_file then
    -- As the library reads it: another user's token would make the gateway that user's identity.
    local err
    text, err = credentials.read_trusted(x.source_file, "the subject token file '" .. x.source_file .. "'",
      M.MAX_SUBJECT_TOKEN, x.label)
    if not text then return nil, tostring(err) end
  else
    local res = capture(g.subject_location, { method = ngx.HTTP_GET })
    if res.status ~= 200 then return nil, failed("the subject token request", res, {}) end
    text = res.body or ""
  end
  if x.format == "json" then
    local doc = cjson.decode(text)
    text = type(doc) == "table" and doc[x.field_name] or nil
    if type(text) ~= "string" then return nil, "the subject token is not in the field " .. x.field_name end
  end
  if text == "" then return nil, "the subject token is empty" end
  return text
end

local function sts_token(g, scopes)
  local x = g.external
  local subject, err = subject_token(g, x)
  if not subject then return nil, err end
  local held = type(err) == "table" and err or {}
  local form = { grant_type = external.TOKEN_EXCHANGE, requested_token_type = external.ACCESS_TOKEN_TYPE,
    audience = x.audience, scope = table.concat(scopes, " "), subject_token_type = x.subject_token_type,
    subject_token = subject }
  if x.user_project and not x.client_id then form.options = cjson.encode({ userProject = x.user_project }) end
  -- The library's client authentication (healthcare.auth.external), and its secrets: an STS that
  -- echoes the header must not put the encoded client secret in the error log.
  local basic = x.basic_auth and ("Basic " .. x.basic_auth) or nil
  local res = capture(g.sts_location, { method = ngx.HTTP_POST, body = util.query_string(form) }, basic)
  local secrets = credentials.header_secrets(basic and { "Authorization: " .. basic } or {}, { subject })
  for _, v in ipairs(held) do secrets[#secrets + 1] = v end
  secrets[#secrets + 1] = x.client_secret
  if res.status ~= 200 then return nil, failed("the STS token exchange for " .. x.label, res, secrets) end
  return credentials.parse_token_reply(res.body)
end

local SOURCES = { metadata = metadata_token, key = key_token, external = sts_token }

local function iam_token(g, scopes)
  local source, err = SOURCES[g.source_kind](g, { params.SCOPE_CLOUD_PLATFORM })
  if not source then return nil, err end
  local body = { scope = scopes, lifetime = string.format("%ds", g.lifetime) }
  if #g.delegates > 0 then body.delegates = g.delegates end
  local res = capture(g.iam_location .. g.target .. ":generateAccessToken",
    { method = ngx.HTTP_POST, body = cjson.encode(body) }, "Bearer " .. source)
  if res.status ~= 200 then
    return nil, failed("generateAccessToken for " .. g.target, res, { source })
  end
  local doc = cjson.decode(res.body or "")
  local token = type(doc) == "table" and doc.accessToken
  local expires = type(doc) == "table" and impersonate.epoch(doc.expireTime)
  if type(token) ~= "string" or token == "" or core.has_ctl(token) or not expires then
    return nil, "generateAccessToken for " .. g.target .. " answered without an accessToken and expireTime"
  end
  return token, math.max(1, expires - ngx.time())
end

-- Gateway:fetch for these credentials: token, lifetime or nil, err.
local function gateway_fetch(g)
  if g.target then return iam_token(g, g.scopes) end
  return SOURCES[g.source_kind](g, g.scopes)
end

-- ---- configuration --------------------------------------------------------------------------

-- The external_account fields the gateway takes, read with healthcare.auth.external's checks.
local function read_external(info, where)
  local cred, err = external.from_info(info, {}, where)
  if not cred then return nil, err end
  local x = cred.source or cred  -- behind an impersonation: the STS credential
  if x.source_kind ~= "file" and x.source_kind ~= "url" and x.source_kind ~= "aws" then
    if cred.close then cred:close() end
    return nil, where .. ": the gateway takes external_account files with a file, url or aws source, not "
      .. tostring(x.source_kind)
  end
  local out = { audience = x.audience, subject_token_type = x.subject_token_type, client_id = x.client_id,
    client_secret = x.client_secret, basic_auth = x.basic_auth, user_project = x.user_project,
    source_file = x.source_file,
    format = x.format, field_name = x.field_name, label = x.label, quota_project = x.quota_project,
    aws = x.source_kind == "aws" and x.aws or nil }
  local imp = cred.target and { target = cred.target, lifetime = cred.lifetime, delegates = cred.delegates }
  cred:close()
  return out, imp
end

--- The credential for healthcare.ngx.configure's opts (M.handles(opts)), its fetch reading the
--- gateway g's locations, or nil, err (a message). Sets g's fields this module uses.
function M.credential(g, opts)
  for k, v in pairs(M.DEFAULTS) do if g[k] == nil then g[k] = v end end
  local where = type(opts.credentials) == "string" and ("credentials file '" .. opts.credentials .. "'")
    or "credentials table"
  if opts.self_signed_jwt then
    return nil, "self_signed_jwt needs a service account key alone (not with impersonate, the metadata server "
      .. "or an external_account file)"
  end
  local label
  if opts.credentials == "metadata" then
    g.source_kind, label = "metadata", "the metadata server"
  else
    local info, rerr = opts.credentials, nil
    if type(info) ~= "table" then info, rerr = read_json(opts.credentials or "", where) end
    if type(info) ~= "table" then return nil, rerr or ("cannot read " .. where .. " as JSON") end
    if info.type == "external_account" then
      local x, imp = read_external(info, where)
      if not x then return nil, tostring(imp) end
      g.source_kind, g.external, label = "external", x, x.label
      if imp then g.target, g.lifetime, g.delegates = imp.target, imp.lifetime, imp.delegates end
    elseif info.type == "service_account" then
      local key, err = credentials.from_info(info, { quota_project = opts.quota_project, subject = opts.subject },
        where)
      if not key then return nil, tostring(err) end
      g.source_kind, g.source_key, label = "key", key, key.label
    else
      return nil, where .. ": the gateway takes a service account key, an external_account file or "
        .. "\"metadata\", with `impersonate` for impersonation (type '" .. tostring(info.type) .. "')"
    end
  end
  if opts.impersonate then
    if type(opts.impersonate) ~= "string" or not opts.impersonate:match("^[^%s/?#:@]+@[^%s/?#:@]+$") then
      return nil, "impersonate must be a service account email"
    end
    g.target, g.lifetime = opts.impersonate, impersonate.LIFETIME
    g.delegates = {}
    for i, d in ipairs(opts.delegates or {}) do g.delegates[i] = impersonate.delegate_name(d) end
  end
  if g.target then label = "impersonated service account " .. g.target .. " (with " .. label .. ")" end
  local identity = table.concat({ "gateway", g.source_kind, tostring(g.target), label,
    g.source_key and g.source_key.identity or "", g.external and g.external.audience or "" }, "\n")
  return { kind = g.target and "impersonated_service_account" or g.source_kind, label = label,
    identity = identity, quota_project = opts.quota_project or (g.external and g.external.quota_project)
      or (g.source_key and g.source_key.quota_project), gateway_fetch = gateway_fetch }
end

return M
