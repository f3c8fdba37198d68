-- SPDX-License-Identifier: MIT
-- Small helpers shared by the Lua modules: option tables checked against their documented keys,
-- query strings, and redaction of secrets for debug output and error messages.
local core = require "healthcare.core"

local M = {}

--- Raises (a programming mistake) when opts has a key that is not in valid; names the key and
--- lists the valid ones.
function M.check_options(opts, valid, fname, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument to '%s' (options table expected, got %s)", fname, type(opts)), (level or 2) + 1)
  end
  local set = {}
  for _, k in ipairs(valid) do set[k] = true end
  for k in pairs(opts) do
    if not set[k] then
      local names = {}
      for _, v in ipairs(valid) do names[#names + 1] = v end
      table.sort(names)
      error(string.format("unknown option '%s' to '%s'; valid options: %s", tostring(k), fname,
        table.concat(names, ", ")), (level or 2) + 1)
    end
  end
  return opts
end

--- An http(s) base URL with a host, and nothing that could change what the path appends mean
--- or reach a request line: no spaces, control characters, non-ASCII, '?' or '#'.
function M.is_base_url(s)
  return type(s) == "string" and s:match("^https?://[^/?#]+") ~= nil and not s:find("[%s%c?#\128-\255]")
end

--- The `debug` option made callable: true writes lines to stderr, a function gets them, else nil.
function M.debug_sink(d)
  if d == true then
    return function(line) io.stderr:write(line, "\n") end
  elseif type(d) == "function" then
    return d
  end
  return nil
end

--- Builds "a=1&b=2" from a table, keys sorted so URLs are reproducible.
function M.query_string(q)
  local keys = {}
  for k in pairs(q or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "boolean" then v = tostring(v) end
    out[#out + 1] = core.escape(tostring(k)) .. "=" .. core.escape(tostring(v))
  end
  return table.concat(out, "&")
end

-- Query parameters and headers that carry secrets (see REFERENCE.md).
local SECRET_PARAMS = { access_token = true, oauth_token = true, key = true, assertion = true,
  refresh_token = true, client_secret = true }
M.SECRET_PARAMS = SECRET_PARAMS

--- The URL with the values of secret query parameters replaced by "REDACTED".
-- Values in our URLs are percent-encoded, so a raw ":" or space ends one (as in error messages).
function M.redact_url(url)
  return (url:gsub("([?&])([^=&#%s?]+)=([^&#%s:]*)", function(sep, k, v)
    if SECRET_PARAMS[k] then v = "REDACTED" end
    return sep .. k .. "=" .. v
  end))
end

--- A header line with the value of Authorization (and the like) replaced.
function M.redact_header(line)
  local name = line:match("^([^:]+):")
  local lname = name and name:lower()
  if lname == "authorization" or lname == "proxy-authorization" or lname == "x-goog-api-key"
    or lname == "cookie" or lname == "set-cookie" then
    return name .. ": REDACTED"
  end
  return line
end

return M
