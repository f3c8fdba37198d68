-- SPDX-License-Identifier: MIT
-- Shards (store:store{shard = "K/N"}, `healthcare store --shard K/N`): N machines given the
-- same arguments each take the K-th share of the files, with no coordinator and no overlap.
-- A file belongs to shard K of N when hash32(rel) % N == K - 1, where rel is its path
-- relative to the directory it was found under (the path as given, for a file named
-- directly or listed with --from-list) and hash32 is FNV-1a 64 folded to 32 bits (C core).
-- That rule is a contract: changing it would move files between shards in mid-migration.
local core = require "healthcare.core"
local errors = require "healthcare.errors"

local M = {}

M.MAX_N = 1000000

local function bad(spec)
  local shown = type(spec) == "table" and ("{" .. tostring(spec[1]) .. ", " .. tostring(spec[2]) .. "}")
    or tostring(spec)
  return nil, errors.new("usage", string.format(
    "invalid shard '%s': expected K/N with whole numbers 1 <= K <= N <= %d (e.g. 1/4)",
    shown, M.MAX_N))
end

local function whole(v)
  return type(v) == "number" and v == math.floor(v)
end

--- The shard of its owner's paths: rel -> boolean.
local function includer(k, n)
  return function(rel)
    return core.hash32(rel) % n == k - 1
  end
end

local Shard = {}
Shard.__index = Shard
Shard.__tostring = function(s) return s.k .. "/" .. s.n end

--- spec: "K/N" or { K, N }. Returns { k, n, includes = function(rel) -> boolean } (tostring
--- gives "K/N"), or nil, err (kind "usage").
function M.parse(spec)
  local k, n
  if type(spec) == "string" then
    local a, b = spec:match("^%s*(%d+)%s*/%s*(%d+)%s*$")
    k, n = tonumber(a), tonumber(b)
  elseif type(spec) == "table" then
    k, n = spec[1], spec[2]
  end
  if not (whole(k) and whole(n)) or k < 1 or n < 1 or k > n or n > M.MAX_N then
    return bad(spec)
  end
  k, n = math.floor(k), math.floor(n)   -- 2.0 -> 2 under Lua 5.4, so tostring reads "2/4"
  return setmetatable({ k = k, n = n, includes = includer(k, n) }, Shard)
end

return M
