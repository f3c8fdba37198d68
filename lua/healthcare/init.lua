-- SPDX-License-Identifier: MIT
-- healthcare: a client for the Google Cloud Healthcare API's DICOMweb (and any DICOMweb server).
--   local healthcare = require "healthcare"
--   local client = assert(healthcare.new { credentials = "key.json" })
--   local res, err = client:store_instances(parent, "studies", { content_type = ..., data = ... })
local core = require "healthcare.core"
local client = require "healthcare.client"
local dicomweb = require "healthcare.dicomweb"

local M = {
  _VERSION = core._VERSION,
  DEFAULT_ENDPOINT = client.DEFAULT_ENDPOINT,
}

--- A client for the Cloud Healthcare API (see README, "Lua API").
function M.new(opts)
  return client.new(opts)
end

--- A store object for any DICOMweb server's base URL (e.g. http://host:8042/dicom-web).
--- Authentication is optional: the same credential options as healthcare.new.
function M.dicomweb(base_url, opts)
  if type(base_url) ~= "string" then
    error("bad argument #1 to 'dicomweb' (string expected, got " .. type(base_url) .. ")", 2)
  end
  if not require("healthcare.util").is_base_url(base_url) then
    return nil, require("healthcare.errors").new("usage", "DICOMweb base URL must be an http(s) URL without "
      .. "spaces, control characters, non-ASCII, '?' or '#', got '" .. base_url .. "'")
  end
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  -- No Google discovery for a plain DICOMweb server unless credentials are asked for.
  if o.credentials == nil and o.access_token == nil and o.api_key == nil then
    o.credentials = false
  end
  o.endpoint = o.endpoint or base_url:match("^(https?://[^/?#]+)")
  local c, err = client.new(o)
  if not c then return nil, err end
  return dicomweb.store(c, (base_url:gsub("/+$", "")))
end

--- The store object for a DICOMweb base URL (http:// or https://, as healthcare.dicomweb) or a
--- dicomStore name (projects/P/locations/L/datasets/D/dicomStores/S, through healthcare.new with
--- the same options): what a program that takes "a store" from its user wants. Returns the
--- store, or nil, err; nothing is sent.
function M.dicom_store(target, opts)
  if type(target) ~= "string" then
    error("bad argument #1 to 'dicom_store' (string expected, got " .. type(target) .. ")", 2)
  end
  if target:match("^https?://") then
    return M.dicomweb(target, opts)
  end
  local c, err = client.new(opts)
  if not c then return nil, err end
  local store
  store, err = c:dicom_store(target)
  if not store then c:close() end
  return store, err
end

return M
