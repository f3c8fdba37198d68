-- SPDX-License-Identifier: MIT
-- What may go into a DICOMweb URL path: DICOM UIDs, dicomStore resource names, the paths of
-- StoreInstances and of the other DICOMweb resources, and a query as typed. Checked before
-- anything is sent; a bad one is an error value (kind "usage": bad content, often typed by a
-- person), never a raise.
local errors = require "healthcare.errors"

local M = {}

M.MAX_UID = 64

-- A resource ID segment: what Google allows in project, location, dataset and store IDs.
local function valid_segment(s)
  return s ~= "" and s ~= "." and s ~= ".." and not s:find("..", 1, true) and s:match("^[%w._-]+$") ~= nil
end

--- parent = projects/{p}/locations/{l}/datasets/{d}/dicomStores/{s}; returns true or nil, err.
function M.check_parent(parent)
  if type(parent) ~= "string" then
    return nil, errors.new("usage", "dicomStore name must be a string")
  end
  local p, l, d, s = parent:match(
    "^projects/([^/]*)/locations/([^/]*)/datasets/([^/]*)/dicomStores/([^/]*)$")
  if not p or not (valid_segment(p) and valid_segment(l) and valid_segment(d) and valid_segment(s)) then
    return nil, errors.new("usage", string.format(
      "invalid dicomStore name '%s': expected projects/{project}/locations/{location}/"
      .. "datasets/{dataset}/dicomStores/{store} with each ID made of letters, digits, '-', '_' and '.'",
      parent))
  end
  return true
end

--- A DICOM UID: digits and dots, at most 64 characters, no empty component.
function M.valid_uid(uid)
  return type(uid) == "string" and #uid > 0 and #uid <= M.MAX_UID and uid:match("^[%d.]+$") ~= nil
    and not uid:find("..", 1, true) and uid:sub(1, 1) ~= "." and uid:sub(-1) ~= "."
end

-- ---- DICOMweb resource paths ------------------------------------------------------------------
-- A path below a base URL is made of DICOMweb's words and of UIDs and frame numbers checked as
-- such, so nothing in it can leave the store's URL; a shape writes `{..._uid}` for a UID and
-- `{frame_list}` for frame numbers (1,2,3).

--- Every resource a DICOMweb GET or DELETE names (PS3.18 10.4 to 10.6; Google's delete).
M.PATHS = {}
do
  local study, series = "studies/{study_uid}", "studies/{study_uid}/series/{series_uid}"
  local instance = series .. "/instances/{instance_uid}"
  for _, p in ipairs({ "studies", "series", "instances", study, study .. "/metadata", study .. "/rendered",
    study .. "/series", study .. "/instances", series, series .. "/metadata", series .. "/rendered",
    series .. "/instances", instance, instance .. "/metadata", instance .. "/rendered",
    instance .. "/frames/{frame_list}", instance .. "/frames/{frame_list}/rendered" }) do
    M.PATHS[#M.PATHS + 1] = p
  end
end

-- 1 or 1,2,3: frame numbers start at 1.
local function is_frame_list(s)
  for n in (s .. ","):gmatch("([^,]*),") do
    if not n:match("^[1-9]%d*$") or #n > 9 then return false end
  end
  return true
end

--- Whether path (no query) has the shape `shape` (one of M.PATHS, or any such pattern).
function M.matches_path(path, shape)
  local got, want = {}, {}
  for seg in (path .. "/"):gmatch("([^/]*)/") do got[#got + 1] = seg end
  for seg in (shape .. "/"):gmatch("([^/]*)/") do want[#want + 1] = seg end
  if #got ~= #want then return false end
  for i, w in ipairs(want) do
    local g = got[i]
    if w == "{frame_list}" then
      if not is_frame_list(g) then return false end
    elseif w:match("^{.*_uid}$") then
      if not M.valid_uid(g) then return false end
    elseif g ~= w then
      return false
    end
  end
  return true
end

local function hex_value(h) return string.char(tonumber(h, 16)) end

-- Decodes one component of a query (percent-escapes); nil for a malformed escape.
local function unescape(s)
  if s:find("%%%X") or s:find("%%.%X") or s:find("%%.?$") then return nil end
  return (s:gsub("%%(%x%x)", hex_value))
end

--- Checks a query as typed (what follows '?'): name=value pairs separated by '&', percent-escapes
--- well formed, no control character even once decoded, ASCII only. It is sent as typed: QIDO-RS
--- servers differ in what they decode (Orthanc does not decode values), so re-escaping it would
--- change what some of them match. `shown` is what a message quotes (the path the user typed).
--- Returns true, or nil and a message.
function M.check_query(q, shown)
  if q:find("[\128-\255]") then
    return nil, string.format("the query of '%s' has a non-ASCII character; percent-encode it", shown)
  end
  for item in (q .. "&"):gmatch("([^&]*)&") do
    if item ~= "" then
      local k, v = item:match("^([^=]*)=(.*)$")
      if not k or k == "" then
        return nil, string.format("invalid query '%s' in '%s': expected name=value pairs separated by '&'",
          item, shown)
      end
      local dk, dv = unescape(k), unescape(v)
      if not dk or not dv then
        return nil, string.format("invalid percent-escape in '%s' in '%s'", item, shown)
      end
      if dk:find("%c") or dv:find("%c") then
        return nil, string.format("the query of '%s' has a control character after decoding", shown)
      end
    end
  end
  return true
end

--- dicom_web_path = "studies" or "studies/{uid}"; returns the study UID ("" for none) or nil, err.
function M.check_store_path(path)
  if path == "studies" then return "" end
  local uid = type(path) == "string" and path:match("^studies/(.*)$")
  if uid and M.valid_uid(uid) then return uid end
  return nil, errors.new("usage", string.format(
    "invalid DICOMweb path '%s' for StoreInstances: expected 'studies' or 'studies/{StudyInstanceUID}'"
    .. " (digits and dots, at most 64 characters)", tostring(path)))
end

return M
