-- SPDX-License-Identifier: MIT
-- The command's one JSON writer: the reports of --json (compact) and the answers people read
-- (pretty: two-space indentation). Keys are sorted, so the same value always reads the same. cjson
-- encodes the scalars (its escaping included); the layout is ours, for two reasons: Debian's
-- lua-cjson (2.1.0) writes an empty table as {} and has no empty_array_mt to say it is a list,
-- and it escapes "/" as "\/" (valid JSON, but URLs and paths should read as they are).
local cjson = require "cjson.safe"

local M = {}

-- The mark of a list that stays a JSON array when empty (json.array). Our own metatable, as no
-- cjson of ours has one; OpenResty's cjson.empty_array_mt, where it exists, counts as well.
local ARRAY_MT = { __name = "healthcare.cli.json.array" }

--- Marks the list t as a JSON array, written [] when empty; returns t. (A table with a metatable
--- of its own is copied rather than changed.)
function M.array(t)
  if getmetatable(t) ~= nil then
    local copy = {}
    for i = 1, #t do copy[i] = t[i] end
    t = copy
  end
  return setmetatable(t, ARRAY_MT)
end

local function is_array(t)
  local mt = getmetatable(t)
  if mt == ARRAY_MT or (mt ~= nil and mt == cjson.empty_array_mt) then return true end
  if next(t) == nil then return false end
  local n = #t
  if n == 0 then return false end
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then return false end
  end
  return true
end

local function scalar(v)
  local text = cjson.encode(v)
  if text == nil then error("cannot write a " .. type(v) .. " as JSON", 3) end
  return (text:gsub("\\/", "/"))
end

-- The JSON of an object's keys, kept: a report repeats the same few keys thousands of times
-- (bounded: only short string keys are kept, and at most 4096 of them).
local key_cache, key_count = {}, 0
local function key_text(k)
  local text = key_cache[k]
  if text then return text end
  text = scalar(tostring(k))
  if type(k) == "string" and #k <= 64 and key_count < 4096 then
    key_cache[k], key_count = text, key_count + 1
  end
  return text
end

local function by_text(a, b) return tostring(a) < tostring(b) end

local function sorted_keys(t)
  local keys, all_strings = {}, true
  for k in pairs(t) do
    keys[#keys + 1] = k
    if type(k) ~= "string" then all_strings = false end
  end
  -- string keys (nearly always) sort by <, the same order, with no function call per comparison
  if all_strings then table.sort(keys) else table.sort(keys, by_text) end
  return keys
end

-- v as JSON; indent nil: compact, else the indentation of the line v starts on.
local function write(v, indent)
  if type(v) ~= "table" then return scalar(v) end
  local inner = indent and (indent .. "  ")
  local open, close, sep, colon = "", "", ",", ":"
  if indent then open, close, sep, colon = "\n" .. inner, "\n" .. indent, ",\n" .. inner, ": " end
  local parts = {}
  if is_array(v) then
    if #v == 0 then return "[]" end
    for i = 1, #v do parts[i] = write(v[i], inner) end
    return "[" .. open .. table.concat(parts, sep) .. close .. "]"
  end
  if next(v) == nil then return "{}" end
  for i, k in ipairs(sorted_keys(v)) do
    parts[i] = key_text(k) .. colon .. write(v[k], inner)
  end
  return "{" .. open .. table.concat(parts, sep) .. close .. "}"
end

--- v as compact JSON (no spaces, no newline).
function M.encode(v)
  return write(v, nil)
end

--- v as JSON for people: one member per line, two-space indentation, no final newline.
function M.pretty(v)
  return write(v, "")
end

--- The value of a JSON text, or nil and why not.
function M.decode(text)
  return cjson.decode(text)
end

return M
