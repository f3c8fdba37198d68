-- SPDX-License-Identifier: MIT
--[[
healthcare.params: the standard query parameters every Google API call accepts, and the
OAuth scopes of StoreInstances, written once. The CLI (`-p`), its --help, the client and
the docs all read them from here. Each parameter has a CLI name (as `-p` takes it, from
the seed page), a wire name (as sent in the query string), a type and the seed's text.
]]

local params = {}

params.SCOPE_CLOUD_HEALTHCARE = "https://www.googleapis.com/auth/cloud-healthcare"
params.SCOPE_CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
-- The seed: "If unset, the scope for this method defaults to ...cloud-healthcare".
params.DEFAULT_SCOPE = params.SCOPE_CLOUD_HEALTHCARE
-- Scopes that authorize StoreInstances (either one is enough), in the seed's order.
params.SCOPES = { params.SCOPE_CLOUD_HEALTHCARE, params.SCOPE_CLOUD_PLATFORM }

-- In the seed's order; `help` is the seed's text.
local LIST = {
  { cli = "$-xgafv", wire = "$.xgafv", type = "string", help = "V1 error format." },
  { cli = "access-token", wire = "access_token", type = "string", help = "OAuth access token." },
  { cli = "alt", wire = "alt", type = "string", help = "Data format for response." },
  { cli = "callback", wire = "callback", type = "string", help = "JSONP" },
  { cli = "fields", wire = "fields", type = "string",
    help = "Selector specifying which fields to include in a partial response." },
  { cli = "key", wire = "key", type = "string",
    help = "API key. Your API key identifies your project and provides you with API access, "
      .. "quota, and reports. Required unless you provide an OAuth 2.0 token." },
  { cli = "oauth-token", wire = "oauth_token", type = "string",
    help = "OAuth 2.0 token for the current user." },
  { cli = "pretty-print", wire = "prettyPrint", type = "boolean",
    help = "Returns response with indentations and line breaks." },
  { cli = "quota-user", wire = "quotaUser", type = "string",
    help = "Available to use for quota purposes for server-side applications. Can be any "
      .. "arbitrary string assigned to a user, but should not exceed 40 characters." },
  { cli = "upload-type", wire = "uploadType", type = "string",
    help = "Legacy upload protocol for media (e.g. \"media\", \"multipart\")." },
  { cli = "upload-protocol", wire = "upload_protocol", type = "string",
    help = "Upload protocol for media (e.g. \"raw\", \"multipart\")." },
}

local BY_NAME = {}
for _, p in ipairs(LIST) do
  BY_NAME[p.cli] = p
  BY_NAME[p.wire] = p
end

local function copy(p)
  return { cli = p.cli, wire = p.wire, type = p.type, help = p.help }
end

-- A fresh copy of the ordered list, so callers cannot change the original.
function params.list()
  local out = {}
  for i, p in ipairs(LIST) do out[i] = copy(p) end
  return out
end

-- The entry (a copy) for a CLI or wire name, or nil.
function params.find(name)
  local p = BY_NAME[name]
  return p and copy(p) or nil
end

-- The wire name for a CLI or wire name, or nil when the name is unknown.
function params.to_wire(name)
  local p = BY_NAME[name]
  return p and p.wire or nil
end

-- The CLI name for a CLI or wire name, or nil when the name is unknown.
function params.to_cli(name)
  local p = BY_NAME[name]
  return p and p.cli or nil
end

-- "unknown parameter 'x'; valid parameters: ..." (CLI names; wire names work too).
function params.unknown_message(name)
  local names = {}
  for i, p in ipairs(LIST) do names[i] = p.cli end
  return string.format("unknown parameter '%s'; valid parameters: %s", tostring(name),
    table.concat(names, ", "))
end

-- Checks one value for the parameter `name` and returns it as the string sent on the
-- wire, or nil and a message. Booleans accept true/false (Lua booleans or strings).
function params.check(name, value)
  local p = BY_NAME[name]
  if not p then return nil, params.unknown_message(name) end
  local t = type(value)
  if p.type == "boolean" then
    if t == "boolean" then return tostring(value) end
    if value == "true" or value == "false" then return value end
    return nil, string.format("parameter %s must be true or false, got '%s'", p.cli,
      tostring(value))
  end
  if t == "string" then return value end
  if t == "number" then return tostring(value) end
  return nil, string.format("parameter %s must be a string, got %s", p.cli, t)
end

-- Turns a table keyed by CLI or wire names into a new table keyed by wire names with
-- string values, or returns nil and a message (unknown name, bad value, or the same
-- parameter under two names).
function params.normalize(t)
  local out, seen = {}, {}
  for name, value in pairs(t or {}) do
    local wire_value, err = params.check(name, value)
    if not wire_value then return nil, err end
    local wire = BY_NAME[name].wire
    if seen[wire] then
      -- pairs() has no order: name the two spellings in a fixed one.
      local a, b = seen[wire], name
      if b < a then a, b = b, a end
      return nil, string.format("parameter %s given twice (as '%s' and '%s')",
        BY_NAME[name].cli, a, b)
    end
    seen[wire] = name
    out[wire] = wire_value
  end
  return out
end

--- params.normalize for a call: the wire table, or nil and an error value (kind "usage"). The one
--- normalisation of standard query parameters (the client's `params`, every method's).
function params.query(t)
  local out, message = params.normalize(t)
  if not out then return nil, require("healthcare.errors").new("usage", message) end
  return out
end

return params
