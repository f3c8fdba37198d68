-- SPDX-License-Identifier: MIT
-- How a client authorises its requests. A credential is an object with
--   cred:authorize(scopes) -> { headers = { "Name: value", ... }, query = { k = v } } | nil, err
--   cred:invalidate()      -- after a 401: the next authorize fetches a fresh token
--   cred.refreshable       -- whether a 401 is worth one retry with a fresh token
--   cred:secrets()         -- the secret values it holds now (a list of strings), so that a
--                          -- server that echoes one gets it replaced by REDACTED (optional)
-- Static tokens and API keys live here; Google's credential kinds plug in through the same
-- interface (see healthcare.auth.credentials).
local M = {}

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

--- A credential that sends nothing (a DICOMweb server without authentication).
function M.none()
  return { kind = "none", refreshable = false, authorize = function() return {} end, invalidate = function() end,
    secrets = function() return {} end }
end

return M
