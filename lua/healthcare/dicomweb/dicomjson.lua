-- SPDX-License-Identifier: MIT
-- Reading DICOM JSON (PS3.18 F.2): STOW-RS answers, and data sets wrapped for keyword access
-- (search results, metadata). An XML answer (NativeDicomModel, PS3.19 A.1, which Google sends
-- to STOW-RS without an Accept header) is turned into the same shape with lua-expat, so one
-- code path reads both.
local errors = require "healthcare.errors"

local M = {}

M.RETRIEVE_URL = "00081190"
M.FAILED_SOP_SEQUENCE = "00081198"
M.REFERENCED_SOP_SEQUENCE = "00081199"
M.REFERENCED_SOP_CLASS_UID = "00081150"
M.REFERENCED_SOP_INSTANCE_UID = "00081155"
M.WARNING_REASON = "00081196"
M.FAILURE_REASON = "00081197"

-- PS3.18 Table I.2-1 and I.2-2 (failure and warning reasons), for messages people read.
M.REASONS = {
  [0x0110] = "processing failure", [0x0122] = "referenced SOP class not supported",
  [0x0124] = "not authorized", [0x0210] = "duplicate invocation", [0x0211] = "unrecognized operation",
  [0x0212] = "mistyped argument", [0xA700] = "out of resources", [0xA900] = "data set does not match SOP class",
  [0xC000] = "cannot understand", [0xC122] = "referenced transfer syntax not supported",
  [0xB000] = "coercion of data elements", [0xB006] = "elements discarded",
  [0xB007] = "data set does not match SOP class",
}

--- First value of tag in a data set (a table keyed by "ggggeeee"), or nil.
function M.value(ds, tag)
  local e = type(ds) == "table" and ds[tag]
  local v = type(e) == "table" and e.Value
  return type(v) == "table" and v[1] or nil
end

--- Items of a sequence tag (a list, possibly empty).
function M.items(ds, tag)
  local e = type(ds) == "table" and ds[tag]
  local v = type(e) == "table" and e.Value
  return type(v) == "table" and v or {}
end

--- The text of a private element: the block whose creator (gggg,00xx) is creator, element
--- (gggg,xxEE). Google's FailureDetail is creator "GOOGLE" in group 0009, element 0x97; the
--- form seen in XML, 00090097 without a block, is accepted too.
function M.private_text(ds, group, creator, element)
  if type(ds) ~= "table" then return nil end
  for xx = 0x10, 0xFF do
    local c = M.value(ds, string.format("%s00%02X", group, xx))
    if type(c) == "string" and c:gsub("%s+$", "") == creator then
      local v = M.value(ds, string.format("%s%02X%s", group, xx, element))
      if v ~= nil then return tostring(v) end
    end
  end
  local v = M.value(ds, group .. "00" .. element)
  return v ~= nil and tostring(v) or nil
end

--- Whether v is a US value: a whole number from 0 to 65535 (a reason code; string.format's %X
--- raises on 2.5 or an infinity under Lua 5.4, and NaN fails every comparison).
function M.is_us(v)
  return type(v) == "number" and v >= 0 and v <= 0xFFFF and v == math.floor(v)
end

function M.reason_text(code)
  if not M.is_us(code) then return nil end
  local name = M.REASONS[code]
  return string.format("0x%04X%s", code, name and (" " .. name) or "")
end

-- PS3.19 writes a private attribute with its creator as an XML attribute and the block as 00
-- (Google: tag="00090097" privateCreator="GOOGLE"). DICOM JSON has no such field, so the
-- attribute is given a block of the data set, with the creator element (gggg,00xx) that
-- private_text looks for. Returns the JSON key for the attribute.
local function private_key(ds, tag, creator)
  local group, block, element = tag:match("^(%x%x%x%x)(%x%x)(%x%x)$")
  if not group or tonumber(group, 16) % 2 == 0 then return tag end
  if block == "00" then
    for xx = 0x10, 0xFF do
      local ctag = string.format("%s00%02X", group, xx)
      local have = M.value(ds, ctag)
      if have == nil or have == creator then
        block = string.format("%02X", xx)
        break
      end
    end
    if block == "00" then return tag end
  end
  local ctag = group .. "00" .. block
  if ds[ctag] == nil then ds[ctag] = { vr = "LO", Value = { creator } } end
  return group .. block .. element
end

-- The number of a numeric Value in XML, written as DICOM writes numbers (decimal, an exponent):
-- nil for what tonumber alone would take too (hex, "inf", "nan", or 1e999 as an infinity).
local function xml_number(s)
  if not s:match("^%s*[-+]?%d*%.?%d+[eE]?[-+]?%d*%s*$") and not s:match("^%s*[-+]?%d+%.%s*$") then return nil end
  local n = tonumber(s)
  if not n or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

--- Parses NativeDicomModel XML into the DICOM JSON shape. Returns the data set or nil, message.
function M.from_xml(xml)
  local ok, lxp = pcall(require, "lxp")
  if not ok then return nil, "lua-expat is needed to read XML answers" end
  local root = {}
  local stack = { root }       -- data sets and items being filled
  local attr_stack = {}        -- DicomAttribute elements open
  local text, in_value = nil, false
  local parser = lxp.new {
    StartElement = function(_, name, attrs)
      if name == "DicomAttribute" then
        local a = { vr = attrs.vr, Value = {} }
        local tag = attrs.tag and attrs.tag:upper()
        if tag and attrs.privateCreator then tag = private_key(stack[#stack], tag, attrs.privateCreator) end
        if tag then stack[#stack][tag] = a end
        attr_stack[#attr_stack + 1] = a
      elseif name == "Item" then
        local item = {}
        local a = attr_stack[#attr_stack]
        if a then a.Value[#a.Value + 1] = item end
        stack[#stack + 1] = item
      elseif name == "Value" then
        in_value, text = true, {}
      end
    end,
    CharacterData = function(_, s)
      if in_value then text[#text + 1] = s end
    end,
    EndElement = function(_, name)
      if name == "DicomAttribute" then
        local a = table.remove(attr_stack)
        if a and #a.Value == 0 then a.Value = nil end
      elseif name == "Item" then
        stack[#stack] = nil
      elseif name == "Value" then
        local a = attr_stack[#attr_stack]
        local s = table.concat(text)
        if a then
          local vr = a.vr
          if vr == "US" or vr == "UL" or vr == "SS" or vr == "SL" or vr == "IS" or vr == "DS"
            or vr == "FL" or vr == "FD" then
            a.Value[#a.Value + 1] = xml_number(s) or s
          else
            a.Value[#a.Value + 1] = s
          end
        end
        in_value = false
      end
    end,
  }
  local good, err = parser:parse(xml)
  if good then good, err = parser:parse() end
  -- lxp's close raises when the document was not complete; the parse error says more.
  pcall(parser.close, parser)
  if not good then return nil, "malformed XML answer: " .. tostring(err) end
  return root
end

-- A server's FailureDetail goes to the report, a journal line and stderr for each failed file:
-- cut, or a server's megabyte per instance would make each of them that large.
M.MAX_DETAIL = 1024

--- Maps an answer to per-instance outcomes: a table keyed by SOP Instance UID of
--- { outcome = "stored" | "failed", reason = ..., warning = ... }.
function M.outcomes(ds)
  local out = {}
  for _, item in ipairs(M.items(ds, M.REFERENCED_SOP_SEQUENCE)) do
    local uid = M.value(item, M.REFERENCED_SOP_INSTANCE_UID)
    if uid then
      local w = M.value(item, M.WARNING_REASON)
      out[uid] = { outcome = "stored", warning = w and M.reason_text(w) or nil }
    end
  end
  for _, item in ipairs(M.items(ds, M.FAILED_SOP_SEQUENCE)) do
    local uid = M.value(item, M.REFERENCED_SOP_INSTANCE_UID)
    if uid then
      local code = M.value(item, M.FAILURE_REASON)
      local detail = M.private_text(item, "0009", "GOOGLE", "97")
      if detail then detail = errors.cut(detail, M.MAX_DETAIL) end
      local reason = M.reason_text(code) or "failed"
      if detail then reason = reason .. ": " .. detail end
      out[uid] = { outcome = "failed", reason = reason, failure_reason = code, detail = detail }
    end
  end
  return out
end

-- Keywords ------------------------------------------------------------------------------

-- healthcare.dicomweb.dictionary is large (pydicom's whole dictionary): read on the first lookup only.
local by_tag, by_keyword, repeaters

local function load_dictionary()
  if by_tag then return end
  local d = require "healthcare.dicomweb.dictionary"
  by_tag, repeaters, by_keyword = d.tags, {}, {}
  for tag, e in pairs(by_tag) do by_keyword[e[2]] = tag end
  for mask, e in pairs(d.repeaters) do
    -- "60xx0010" -> a Lua pattern, and the group's first instance (60000010) for its keyword
    repeaters[#repeaters + 1] = { pattern = "^" .. mask:gsub("x", "%%x") .. "$", entry = e }
    if not by_keyword[e[2]] then by_keyword[e[2]] = (mask:gsub("x", "0")) end
  end
  table.sort(repeaters, function(a, b) return a.pattern < b.pattern end)
end

local function entry_of(tag)
  if type(tag) ~= "string" or not tag:match("^%x%x%x%x%x%x%x%x$") then return nil end
  load_dictionary()
  tag = tag:upper()
  local e = by_tag[tag]
  if e then return e end
  for _, r in ipairs(repeaters) do
    if tag:match(r.pattern) then return r.entry end
  end
  return nil
end

--- The tag ("ggggeeee", upper-case hex) of a DICOM keyword, or nil if the dictionary has none.
function M.tag_of(keyword)
  if type(keyword) ~= "string" then return nil end
  load_dictionary()
  return by_keyword[keyword]
end

--- The keyword of a tag ("ggggeeee", any case), or nil (private and unknown tags).
function M.keyword_of(tag)
  local e = entry_of(tag)
  return e and e[2]
end

--- The dictionary's VR of a tag ("US or SS" where the standard allows several), or nil.
function M.vr_of(tag)
  local e = entry_of(tag)
  return e and e[1]
end

--- "PatientID" or "00100020" (any case) -> "00100020"; nil for anything else.
function M.to_tag(key)
  if type(key) ~= "string" then return nil end
  if key:match("^%x%x%x%x%x%x%x%x$") then return key:upper() end
  return M.tag_of(key)
end

-- Data sets ------------------------------------------------------------------------------
-- dataset(raw) wraps one DICOM JSON object. Indexing it with a keyword or a tag gives the
-- element's value in Lua terms (see element_value); methods are lower-case, keywords never are.

local Dataset = {}
-- The wrapped table and the values already converted, kept off the object so that no field
-- can shadow a keyword. Weak keys: a dataset that is dropped takes its state with it.
local state = setmetatable({}, { __mode = "k" })
local NONE = {} -- cache marker for an absent value

--- One element as a Lua value:
---  * absent element, no Value, or an empty Value list -> nil
---  * one value -> that value (string or number; an integer for IS, SL, SS, UL, US, SV, UV under
---    Lua 5.4); several -> a list (a copy)
---  * PN -> the Alphabetic form of each name ("" when a name has none)
---  * SQ -> always a list of wrapped data sets, even for one item (items that are not objects left out)
---  * BulkDataURI / InlineBinary elements -> the element table as it came ({ vr =, BulkDataURI = }
---    or { vr =, InlineBinary = base64 }): the bytes are not fetched nor decoded here
--- A JSON null inside a multi-valued element stays cjson's null (a hole would cut the list).
-- Value Representations whose values are whole numbers. JSON decoding gives floats, which Lua
-- 5.4 prints as "3.0": their values become integers there (LuaJIT has one number type, and
-- prints 3 as "3" already).
local INTEGER_VRS = { IS = true, SL = true, SS = true, UL = true, US = true, SV = true, UV = true }
local to_integer = math.tointeger or function() return nil end

local function element_value(e)
  if type(e) ~= "table" then return nil end
  if e.Value == nil and (e.BulkDataURI ~= nil or e.InlineBinary ~= nil) then return e end
  local v = e.Value
  if type(v) ~= "table" or #v == 0 then return nil end
  if e.vr == "SQ" then
    -- An item that is not an object (a broken answer) is left out: reading a keyword never raises.
    local items = {}
    for _, item in ipairs(v) do
      if type(item) == "table" then items[#items + 1] = M.dataset(item) end
    end
    if #items == 0 then return nil end
    return items
  end
  local out = {}
  for i = 1, #v do
    local x = v[i]
    if e.vr == "PN" and type(x) == "table" then x = x.Alphabetic or "" end
    if INTEGER_VRS[e.vr] and type(x) == "number" then x = to_integer(x) or x end
    out[i] = x
  end
  if #out == 1 then
    if type(out[1]) ~= "string" and type(out[1]) ~= "number" and type(out[1]) ~= "table" then return nil end
    return out[1]
  end
  return out
end

Dataset.__index = function(self, key)
  local method = Dataset[key]
  if method then return method end
  local st = state[self]
  local cached = st.cache[key]
  if cached ~= nil then
    if cached == NONE then return nil end
    return cached
  end
  local tag = M.to_tag(key)
  local value = tag and element_value(st.raw[tag])
  -- only tags and keywords are cached: an unknown key must not grow the cache without bound
  if tag then st.cache[key] = value == nil and NONE or value end
  return value
end

Dataset.__tostring = function(self)
  local n = 0
  for _ in pairs(state[self].raw) do n = n + 1 end
  return string.format("DICOM data set (%d elements)", n)
end

-- Lower-case names only: a DICOM keyword starts with a capital letter, so none can be hidden.
Dataset.raw = function(self) return state[self].raw end

--- Keywords of the elements present, in tag order; a tag without keyword (private) as its tag.
Dataset.keywords = function(self)
  local tags = {}
  for tag in pairs(state[self].raw) do tags[#tags + 1] = tag end
  table.sort(tags)
  for i, tag in ipairs(tags) do tags[i] = M.keyword_of(tag) or tag end
  return tags
end

--- The VR the element came with (from the data set, not the dictionary), or nil.
Dataset.vr = function(self, key)
  local tag = M.to_tag(key)
  local e = tag and state[self].raw[tag]
  return type(e) == "table" and e.vr or nil
end

--- Wraps a decoded DICOM JSON object (a table keyed by "ggggeeee"); see element_value.
function M.dataset(raw)
  if type(raw) ~= "table" then
    error("bad argument #1 to 'dataset' (DICOM JSON object expected, got " .. type(raw) .. ")", 2)
  end
  local ds = setmetatable({}, Dataset)
  state[ds] = { raw = raw, cache = {} }
  return ds
end

--- True for a value made by dataset().
function M.is_dataset(v)
  return getmetatable(v) == Dataset
end

return M
