-- SPDX-License-Identifier: MIT
-- Reading STOW-RS answers. DICOM JSON (PS3.18 F.2) is the working form; an XML answer
-- (NativeDicomModel, PS3.19 A.1, which Google sends without an Accept header) is turned into
-- the same shape with lua-expat, so one code path reads both.
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

function M.reason_text(code)
  if type(code) ~= "number" then return nil end
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
            a.Value[#a.Value + 1] = tonumber(s) or s
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
      local reason = M.reason_text(code) or "failed"
      if detail then reason = reason .. ": " .. detail end
      out[uid] = { outcome = "failed", reason = reason, failure_reason = code, detail = detail }
    end
  end
  return out
end

return M
