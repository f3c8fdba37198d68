-- SPDX-License-Identifier: MIT
-- What may go into a DICOMweb URL path: DICOM UIDs, dicomStore resource names and the paths of
-- StoreInstances. Checked before anything is sent; a bad one is an error value (kind "usage":
-- bad content, often typed by a person), never a raise.
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
