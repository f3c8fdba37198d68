-- SPDX-License-Identifier: MIT
-- STOW-RS: store:store_instances (a body the caller built, as the API states StoreInstances) and
-- the reading of a STOW-RS answer, which store:store (healthcare.dicomweb.batch) shares.
local core = require "healthcare.core"
local dicomjson = require "healthcare.dicomweb.dicomjson"
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

-- The reason codes of a STOW-RS answer, each a US value (a whole number, 0 to 65535): the
-- FailureReason of each instance it lists as failed, the WarningReason of each stored one.
local REASON_CODES = {
  { dicomjson.FAILED_SOP_SEQUENCE, dicomjson.FAILURE_REASON, "FailureReason", "failed" },
  { dicomjson.REFERENCED_SOP_SEQUENCE, dicomjson.WARNING_REASON, "WarningReason", "stored" },
}

-- What is wrong with the first reason code of doc that is a number but no US value, or nil. An
-- infinity (1e400 is JSON) or 2.5 would end the reading of the answer with "number has no
-- integer representation" (Lua 5.4), or be shown as 0x8000000000000000 (LuaJIT).
local function bad_reason_code(doc)
  for _, r in ipairs(REASON_CODES) do
    for i, item in ipairs(dicomjson.items(doc, r[1])) do
      local code = dicomjson.value(item, r[2])
      if type(code) == "number" and not dicomjson.is_us(code) then
        return string.format("the %s of %s instance %d is not a DICOM US value (%s)", r[3], r[4], i,
          code ~= code and "NaN" or string.format("%.17g", code))
      end
    end
  end
  return nil
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
    doc = util.decode_json(res.body)
    if type(doc) ~= "table" or doc.error ~= nil then
      doc = nil
    elseif not ct:find(media.DICOM_JSON, 1, true) then
      for k in pairs(doc) do
        if type(k) ~= "string" or not k:match("^%x%x%x%x%x%x%x%x$") then doc = nil break end
      end
    end
  end
  -- A server error (or 408, 429) whose DICOM JSON lists no instance, such as `{}`, is that error,
  -- to retry, not an answer in which every instance went unmentioned.
  if doc and (res.status >= 500 or res.status == 408 or res.status == 429)
    and #dicomjson.items(doc, dicomjson.FAILED_SOP_SEQUENCE) == 0
    and #dicomjson.items(doc, dicomjson.REFERENCED_SOP_SEQUENCE) == 0 then
    doc = nil
  end
  if not doc and not is_xml then
    return nil, errors.from_response(res, what, client)
  end
  local bad = doc and bad_reason_code(doc)
  if bad then
    -- The instances it names may or may not be stored: no outcome is read from it.
    return nil, errors.new("http", string.format("%s: HTTP %d: the STOW-RS answer cannot be read: %s", what,
      res.status, bad), { http_status = res.status })
  end
  return {
    status = res.status,
    ok = res.status == 200 and (not doc or #dicomjson.items(doc, dicomjson.FAILED_SOP_SEQUENCE) == 0),
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
