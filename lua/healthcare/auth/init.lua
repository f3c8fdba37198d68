-- SPDX-License-Identifier: MIT
-- How a client authorises its requests. A credential is an object with
--   cred:authorize(scopes) -> { headers = { "Name: value", ... }, query = { k = v } } | nil, err
--   cred:invalidate()      -- after a 401: the next authorize fetches a fresh token
--   cred.refreshable       -- whether a 401 is worth one retry with a fresh token
--   cred:secrets()         -- the secret values it holds now (a list of strings), so that a
--                          -- server that echoes one gets it replaced by REDACTED (optional)
-- Static tokens and API keys live here; Google's credential kinds plug in through the same
-- interface (see healthcare.auth.credentials).
local util = require "healthcare.util"
local errors = require "healthcare.errors"

local M = {}

-- The options of healthcare.new that each name the credential requests carry. Given two, which
-- one wins would be a silent choice (the other is then never used, and nothing says so), so two
-- are a usage error, as Google's client libraries refuse an API key with credentials. basic_auth
-- first: its refusals named it first before the rule covered every pair. `impersonate` is not
-- one: it acts as a service account with the credential given (but a Basic user and password
-- cannot ask IAM for a token).
M.CREDENTIAL_OPTIONS = { "basic_auth", "credentials", "access_token", "api_key" }

--- nil, or a usage error naming the first two credential options opts gives (never their
--- values): `credentials = false` (no authentication) counts, a nil option does not.
function M.conflict(opts)
  local first
  for _, k in ipairs(M.CREDENTIAL_OPTIONS) do
    if opts[k] ~= nil then
      if first then
        return errors.new("usage", string.format("options '%s' and '%s' cannot be used together: a request "
          .. "carries one credential", first, k))
      end
      first = k
    end
  end
  if opts.basic_auth ~= nil and opts.impersonate ~= nil then
    return errors.new("usage", "options 'basic_auth' and 'impersonate' cannot be used together: a request "
      .. "carries one credential")
  end
  return nil
end

local Static = {}
Static.__index = Static

function M.access_token(token)
  return setmetatable({ token = token, refreshable = false, kind = "access_token" }, Static)
end

function Static:authorize()
  return { headers = { "Authorization: Bearer " .. self.token } }
end

function Static.invalidate() end

function Static:secrets()
  return { self.token }
end

local ApiKey = {}
ApiKey.__index = ApiKey

function M.api_key(key)
  return setmetatable({ key = key, refreshable = false, kind = "api_key" }, ApiKey)
end

function ApiKey:authorize()
  return { query = { key = self.key } }
end

function ApiKey.invalidate() end

function ApiKey:secrets()
  return { self.key }
end

local Basic = {}
Basic.__index = Basic

--- HTTP Basic authentication (RFC 7617) for a DICOMweb server behind it (Orthanc's
--- RegisteredUsers, a reverse proxy): user and password as checked by the client's options.
function M.basic(user, password)
  local header = "Basic " .. util.base64(user .. ":" .. password)
  return setmetatable({ header = header, password = password, refreshable = false, kind = "basic_auth" }, Basic)
end

function Basic:authorize()
  return { headers = { "Authorization: " .. self.header } }
end

function Basic.invalidate() end

-- The header's value, its base64 alone and the password: a server may echo any of them (a
-- password shorter than util.MIN_SECRET is not looked for: redacting it would mangle text).
function Basic:secrets()
  return { self.header, self.header:sub(7), self.password }
end

--- A credential that sends nothing (a DICOMweb server without authentication).
function M.none()
  return { kind = "none", refreshable = false, authorize = function() return {} end, invalidate = function() end,
    secrets = function() return {} end }
end

return M
