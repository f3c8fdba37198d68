-- SPDX-License-Identifier: MIT
-- DICOMweb store objects: a base URL ({endpoint}/{parent}/dicomWeb for Google, any DICOMweb root
-- elsewhere) and the client that carries the credentials. StoreInstances (STOW-RS) lives here;
-- the DICOM-aware workflow is in healthcare.dicomweb.batch.
local core = require "healthcare.core"
local cjson = require "cjson.safe"
local errors = require "healthcare.errors"

local M = {}

local Store = {}
Store.__index = Store
M.Store = Store

M.ACCEPT = "application/dicom+json"
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

function M.store(client, base_url, name)
  return setmetatable({ client = client, base_url = base_url, name = name or base_url }, Store)
end

-- The request body of an HttpBody: { content_type = ..., data = string | { file = path } }.
local function transport_body(body)
  if type(body) ~= "table" then
    return nil, errors.new("usage", "body must be a table { content_type = ..., data = ... }")
  end
  local ct = body.content_type
  if type(ct) ~= "string" or ct == "" then
    return nil, errors.new("usage", "body.content_type is required")
  end
  if core.has_ctl(ct) then
    return nil, errors.new("usage", "body.content_type contains CR, LF or NUL; refusing to send it as a header")
  end
  local data = body.data
  if type(data) == "string" then
    return ct, data
  elseif type(data) == "table" and type(data.file) == "string" then
    -- A file that cannot be read is the caller's to fix: say so before fetching any token.
    local f, why = io.open(data.file, "rb")
    if not f then
      return nil, errors.new("io", "cannot open " .. why) -- why: "<path>: <reason>"
    end
    f:close()
    return ct, { { file = data.file } }
  elseif type(data) == "table" and data.multipart then
    return ct, data
  end
  return nil, errors.new("usage", "body.data must be a string or { file = path }")
end

--- Reads a STOW-RS answer. A DICOM body (JSON or XML) is a result whatever the status, as
--- PS3.18 and Google use 202 and 409 with per-instance detail; anything else is an error.
function M.read_store_response(res, what)
  local ct = (res.headers["content-type"] or ""):lower()
  local is_xml = ct:find("application/dicom+xml", 1, true) ~= nil
  local doc
  -- DICOM JSON is also recognised by its shape: Orthanc answers a request with an unreadable
  -- part with 400, DICOM JSON and no Content-Type, and what it lists there IS stored.
  if not is_xml and (ct == "" or ct:find("json", 1, true)) then
    doc = cjson.decode(res.body)
    if type(doc) ~= "table" or doc.error ~= nil then
      doc = nil
    elseif not ct:find("application/dicom+json", 1, true) then
      for k in pairs(doc) do
        if type(k) ~= "string" or not k:match("^%x%x%x%x%x%x%x%x$") then doc = nil break end
      end
    end
  end
  if not doc and not is_xml then
    return nil, errors.from_response(res, what)
  end
  local failed = doc and doc["00081198"] and doc["00081198"].Value
  return {
    status = res.status,
    ok = res.status == 200 and (failed == nil or #failed == 0),
    headers = res.headers,
    body = res.body,
    json = doc,
  }
end

--- STOW-RS with a body the caller built: POST {base}/{dicom_web_path}.
function Store:store_instances(dicom_web_path, body, params_)
  local _, perr = M.check_store_path(dicom_web_path)
  if perr then return nil, perr end
  local ct, data = transport_body(body)
  if not ct then return nil, data end
  local client_mod = require "healthcare.client"
  local query, qerr = client_mod.normalize_params(params_)
  if not query then return nil, qerr end
  local res, err = self.client:send {
    method = "POST",
    url = self.base_url .. "/" .. dicom_web_path,
    headers = { "Content-Type: " .. ct, "Accept: " .. M.ACCEPT },
    query = query,
    body = data,
  }
  if not res then return nil, err end
  return M.read_store_response(res, "StoreInstances")
end

--- DICOM-aware storing of files and folders (see healthcare.dicomweb.batch and README "Storing files").
function Store:store(files, opts)
  if type(files) ~= "string" and type(files) ~= "table" then
    error("bad argument #1 to 'store' (path or list of paths expected, got " .. type(files) .. ")", 2)
  end
  return require("healthcare.dicomweb.batch").run(self, files, opts)
end

-- Search (QIDO-RS), retrieve (WADO-RS) and delete live in their own modules; the store object
-- is the one place users call them from (see README, "Search, retrieve, delete").
local function delegate(module, fn)
  return function(self, ...) return require(module)[fn](self, ...) end
end
Store.search_studies = delegate("healthcare.dicomweb.search", "search_studies")
Store.search_series = delegate("healthcare.dicomweb.search", "search_series")
Store.search_instances = delegate("healthcare.dicomweb.search", "search_instances")
Store.retrieve_study = delegate("healthcare.dicomweb.retrieve", "retrieve_study")
Store.retrieve_series = delegate("healthcare.dicomweb.retrieve", "retrieve_series")
Store.retrieve_instance = delegate("healthcare.dicomweb.retrieve", "retrieve_instance")
Store.retrieve_metadata = delegate("healthcare.dicomweb.retrieve", "retrieve_metadata")
Store.retrieve_rendered = delegate("healthcare.dicomweb.retrieve", "retrieve_rendered")
Store.retrieve_frames = delegate("healthcare.dicomweb.retrieve", "retrieve_frames")
Store.delete_study = delegate("healthcare.dicomweb.delete", "delete_study")
Store.delete_series = delegate("healthcare.dicomweb.delete", "delete_series")
Store.delete_instance = delegate("healthcare.dicomweb.delete", "delete_instance")
Store.verify = delegate("healthcare.dicomweb.verify", "verify")

return M
