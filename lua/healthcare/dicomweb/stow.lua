-- SPDX-License-Identifier: MIT
-- STOW-RS: store:store_instances (a body the caller built, as the API states StoreInstances) and
-- the reading of a STOW-RS answer, which store:store (healthcare.dicomweb.batch) shares.
local core = require "healthcare.core"
local cjson = require "cjson.safe"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local params = require "healthcare.params"
local route = require "healthcare.dicomweb.route"
local util = require "healthcare.util"

local M = {}

M.ACCEPT = media.ACCEPT.store

-- The request body of an HttpBody: { content_type = ..., data = string | { file = path } }.
local function transport_body(body)
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
--- PS3.18 and Google use 202 and 409 with per-instance detail; anything else is an error, which
--- quotes the body with the secrets of `client` (optional) taken out.
function M.read_store_response(res, what, client)
  local ct = (res.headers["content-type"] or ""):lower()
  local is_xml = ct:find(media.DICOM_XML, 1, true) ~= nil
  local doc
  -- DICOM JSON is also recognised by its shape: Orthanc answers a request with an unreadable
  -- part with 400, DICOM JSON and no Content-Type, and what it lists there IS stored.
  if not is_xml and (ct == "" or ct:find("json", 1, true)) then
    doc = cjson.decode(res.body)
    if type(doc) ~= "table" or doc.error ~= nil then
      doc = nil
    elseif not ct:find(media.DICOM_JSON, 1, true) then
      for k in pairs(doc) do
        if type(k) ~= "string" or not k:match("^%x%x%x%x%x%x%x%x$") then doc = nil break end
      end
    end
  end
  if not doc and not is_xml then
    return nil, errors.from_response(res, what, client)
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

M.OPTIONS = { "on_progress" }

--- Raises for a misuse of store_instances' options (level: as util.check_options'), for the
--- store's method and the client's, each blaming its caller's line; returns them.
function M.check_options(opts, level)
  level = (level or 2) + 1
  opts = util.check_options(opts, M.OPTIONS, "store_instances", level)
  util.check_option(opts.on_progress, "on_progress", "store_instances", "function", level)
  return opts
end

--- store:store_instances(dicom_web_path, body, params, opts): STOW-RS with a body the caller built,
--- POST {base}/{dicom_web_path}; opts.on_progress as a client:send request's (false stops the
--- transfer: the command's Ctrl-C). Returns { status, ok, headers, body, json } or nil, err.
function M.store_instances(store, dicom_web_path, body, query_params, opts)
  util.check_self(store, "healthcare.Store", "store_instances")
  util.check_arg(dicom_web_path, 1, "store_instances", "string")
  util.check_arg(body, 2, "store_instances", "table")
  util.check_arg(query_params, 3, "store_instances", "table|nil")
  opts = M.check_options(opts, 2)
  local _, perr = names.check_store_path(dicom_web_path)
  if perr then return nil, perr end
  local ct, data = transport_body(body)
  if not ct then return nil, data end
  local query, qerr = params.query(query_params)
  if not query then return nil, qerr end
  local url, uerr = route.url(store, "POST", dicom_web_path)
  if not url then return nil, uerr end
  local res, err = store.client:send {
    method = "POST",
    url = url,
    headers = { "Content-Type: " .. ct, "Accept: " .. M.ACCEPT },
    query = query,
    body = data,
    on_progress = opts.on_progress,
  }
  if not res then return nil, err end
  return M.read_store_response(res, "StoreInstances", store.client)
end

return M
