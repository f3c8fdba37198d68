-- SPDX-License-Identifier: MIT
-- The command's one JSON writer: the reports of --json (compact) and the answers people read
-- (pretty: two-space indentation). Keys are sorted, so the same value always reads the same. cjson
-- encodes strings and booleans (its escaping included); numbers and the layout are ours. Numbers,
-- because cjson writes 14 significant digits (number_text). The layout, for two reasons: Debian's
-- lua-cjson (2.1.0) writes an empty table as {} and has no empty_array_mt to say it is a list,
-- and it escapes "/" as "\/" (valid JSON, but URLs and paths should read as they are).
local cjson = require "cjson.safe"
local util = require "healthcare.util"

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

-- The mark of a text that is JSON already (json.raw): written as it is.
local RAW_MT = { __name = "healthcare.cli.json.raw" }

--- A JSON text (the caller's: it is not checked) to be written as it is where a value goes, for
--- records a caller can write faster than the general writer (a report's thousands of files).
function M.raw(text)
  return setmetatable({ text = text }, RAW_MT)
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

-- Whole numbers up to 2^53 are exact in a double: written without a fraction or an exponent.
local EXACT = 2 ^ 53
local math_type = math.type -- (nil under LuaJIT, whose numbers are all doubles)

-- A number's JSON text, exact: cjson writes 14 significant digits (3.14159265358979 became
-- 3.1415926535898, a 15-digit ID 1.2345678901234e+14), and its decoder gives every number as a
-- double, so an ID of the server's reaches here as a whole float. A Lua integer as %d; a whole
-- double within 2^53 as %.0f; another double in the fewest digits that read back as the same
-- double. NaN and the infinities have no JSON: null (a server's 1e400 decodes as an infinity).
local function number_text(v)
  if math_type and math_type(v) == "integer" then return string.format("%d", v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  if v == math.floor(v) and v > -EXACT and v < EXACT then return string.format("%.0f", v) end
  for digits = 14, 16 do
    local text = string.format("%." .. digits .. "g", v)
    if tonumber(text) == v then return text end
  end
  return string.format("%.17g", v)
end

--- s with each byte that is not part of valid UTF-8 replaced by U+FFFD, and whether one was.
function M.utf8_replaced(s)
  if not s:find("[\128-\255]") then return s, false end
  local out, i, n, changed = {}, 1, #s, false
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or util.utf8_sequence(s, i)
    if len then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = "\239\191\189" -- U+FFFD
      changed, i = true, i + 1
    end
  end
  return table.concat(out), changed
end

local function scalar(v)
  if type(v) == "number" then
    return number_text(v)
  end
  -- JSON text is UTF-8: bytes that are not (a file name is any bytes) become U+FFFD, or the
  -- output would be no JSON at all for a strict reader
  if type(v) == "string" then v = M.utf8_replaced(v) end
  local text = cjson.encode(v)
  if text == nil then error("cannot write a " .. type(v) .. " as JSON", 3) end
  -- (a plain find first: gsub would copy every long string even with nothing to replace)
  if not text:find("\\/", 1, true) then return text end
  return (text:gsub("\\/", "/"))
end

--- A string's JSON text, as the writer makes it ("/" not escaped).
function M.string(s)
  return scalar(s)
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

-- The keys of the last object sorted, and as a set: the objects of a list nearly always have the
-- same keys (a report's thousands of file records), sorted once for all of them.
local last_keys, last_set = {}, {}

local function sorted_keys(t)
  local n, same = 0, true
  for k in pairs(t) do
    n = n + 1
    if not last_set[k] then
      same = false
      break
    end
  end
  if same and n == #last_keys then return last_keys end
  local keys, all_strings = {}, true
  for k in pairs(t) do
    keys[#keys + 1] = k
    if type(k) ~= "string" then all_strings = false end
  end
  -- string keys (nearly always) sort by <, the same order, with no function call per comparison
  if all_strings then table.sort(keys) else table.sort(keys, by_text) end
  local set = {}
  for _, k in ipairs(keys) do set[k] = true end
  last_keys, last_set = keys, set
  return keys
end

-- The JSON of a key and the colon after it ("\"path\":"), by colon: made once per key.
local member_cache = { [":"] = {}, [": "] = {} }
local function member_text(k, colon)
  local cache = member_cache[colon]
  local text = cache[k]
  if not text then
    text = key_text(k) .. colon
    if key_cache[k] then cache[k] = text end   -- kept when the key is (bounded the same way)
  end
  return text
end

-- Puts the pieces of v's JSON in out[n + 1], out[n + 2], ... and returns the new n (one
-- table.concat at the end: no string is built per object or member); indent nil: compact, else
-- the indentation of the line v starts on.
local function write(out, n, v, indent)
  if type(v) ~= "table" then
    out[n + 1] = scalar(v)
    return n + 1
  end
  if getmetatable(v) == RAW_MT then
    out[n + 1] = v.text
    return n + 1
  end
  local inner = indent and (indent .. "  ")
  local open, close, sep, colon = "", "", ",", ":"
  if indent then open, close, sep, colon = "\n" .. inner, "\n" .. indent, ",\n" .. inner, ": " end
  if is_array(v) then
    if #v == 0 then
      out[n + 1] = "[]"
      return n + 1
    end
    n = n + 1
    out[n] = "[" .. open
    for i = 1, #v do
      if i > 1 then
        n = n + 1
        out[n] = sep
      end
      n = write(out, n, v[i], inner)
    end
    out[n + 1] = close .. "]"
    return n + 1
  end
  if next(v) == nil then
    out[n + 1] = "{}"
    return n + 1
  end
  n = n + 1
  out[n] = "{" .. open
  for i, k in ipairs(sorted_keys(v)) do
    if i > 1 then
      n = n + 1
      out[n] = sep
    end
    local x = v[k]
    n = n + 1
    out[n] = member_text(k, colon)
    if type(x) == "table" then
      n = write(out, n, x, inner)
    else   -- (a scalar member without a call of write: a report has tens of thousands)
      n = n + 1
      out[n] = scalar(x)
    end
  end
  out[n + 1] = close .. "}"
  return n + 1
end

--- v as compact JSON (no spaces, no newline).
function M.encode(v)
  local out = {}
  write(out, 0, v, nil)
  return table.concat(out)
end

--- v as JSON for people: one member per line, two-space indentation, no final newline. indent:
--- the indentation of the line v starts on (default none), for a value written inside another.
function M.pretty(v, indent)
  local out = {}
  write(out, 0, v, indent or "")
  return table.concat(out)
end

--- The value of a JSON text, or nil and why not.
function M.decode(text)
  return util.decode_json(text)
end

return M
