-- SPDX-License-Identifier: MIT
-- The `healthcare` command's token cache: access tokens kept between runs so a script that calls
-- the command a thousand times does not ask the token endpoint a thousand times. One file per
-- credential and scope set, named by the SHA-256 of both, in a 0700 directory
-- ($XDG_CACHE_HOME/healthcare, else ~/.cache/healthcare), each file 0600 and written atomically.
-- A file holds an access token, its expiry (seconds since the epoch) and lifetime: never a key,
-- a refresh token or an assertion. A file another user owns or could read is ignored. The
-- cache is best effort: a cache that cannot be read or written costs a token request, nothing
-- more. healthcare.new uses it only when asked (`token_cache = true`, as the CLI does).
local core = require "healthcare.core"
local cjson = require "cjson.safe"
local util = require "healthcare.util"

local M = {}

M.SUBDIR = "healthcare"

local Cache = {}
Cache.__index = Cache
M.Cache = Cache

--- The cache directory: $XDG_CACHE_HOME/healthcare when that is an absolute path, else
--- $HOME/.cache/healthcare; nil when neither is set. getenv defaults to os.getenv.
function M.dir(getenv)
  getenv = getenv or os.getenv
  local xdg = getenv("XDG_CACHE_HOME")
  if xdg and xdg:sub(1, 1) == "/" then return xdg .. "/" .. M.SUBDIR end
  local home = getenv("HOME")
  if home and home ~= "" then return home .. "/.cache/" .. M.SUBDIR end
  return nil
end

--- A cache in dir (M.dir() when nil), or nil when there is no place for one. Nothing is
--- created until the first put. debug, when given, receives one line per miss or failure.
function M.open(dir, debug)
  dir = dir or M.dir()
  if not dir then return nil end
  return setmetatable({ dir = dir, debug = debug }, Cache)
end

--- The file of one credential identity and scope set.
function Cache:path(identity, scope_key)
  return self.dir .. "/token-" .. core.sha256_hex(identity .. "\0" .. scope_key) .. ".json"
end

function Cache:log(line)
  if self.debug then self.debug("token cache: " .. line) end
end

--- Returns token, expires_at (epoch seconds), lifetime (seconds) when a cached token is there
--- and has not expired; nil otherwise.
function Cache:get(identity, scope_key)
  local path = self:path(identity, scope_key)
  local text, err = core.private_read(path)
  if not text then
    if err.status ~= "absent" then self:log(err.message) end
    return nil
  end
  local doc = util.decode_json(text)
  -- An expiry of 1e400 (an infinity) or a lifetime of 0 would keep a token for ever, or refresh it
  -- on every use: such an entry is malformed too.
  if type(doc) ~= "table" or type(doc.access_token) ~= "string" or not util.finite_number(doc.expires_at)
    or doc.access_token == "" or core.has_ctl(doc.access_token)
    or (doc.lifetime ~= nil and not util.finite_number(doc.lifetime, 1)) then
    self:log("ignoring a malformed entry")
    return nil
  end
  if doc.expires_at <= os.time() then return nil end
  local lifetime = doc.lifetime or (doc.expires_at - os.time())
  return doc.access_token, doc.expires_at, lifetime
end

--- Stores a token. Returns true, or nil and an error (which callers may ignore).
function Cache:put(identity, scope_key, token, expires_at, lifetime)
  local ok, err = core.private_mkdir(self.dir)
  if ok then
    ok, err = core.private_write(self:path(identity, scope_key), cjson.encode({
      access_token = token, expires_at = math.floor(expires_at), lifetime = math.floor(lifetime),
    }))
  end
  if not ok then self:log(err.message) end
  return ok, err
end

--- Forgets the token of one credential identity and scope set (after the API refused it).
function Cache:remove(identity, scope_key)
  os.remove(self:path(identity, scope_key))
end

return M
