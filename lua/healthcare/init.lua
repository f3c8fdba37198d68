-- SPDX-License-Identifier: MIT
-- healthcare: a client for the Google Cloud Healthcare API's DICOMweb (and any DICOMweb server).
--   local healthcare = require "healthcare"
--   local client = assert(healthcare.new { credentials = "key.json" })
--   local res, err = client:store_instances(parent, "studies", { content_type = ..., data = ... })
-- The three constructors and what they own: healthcare.new makes a client (client:close());
-- healthcare.dicomweb and healthcare.dicom_store make a store with a client of its own
-- (store:close() closes both); client:dicom_store gives a store over that client.
local core = require "healthcare.core"
local client = require "healthcare.client"
local dicomweb = require "healthcare.dicomweb"
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {
  _VERSION = core._VERSION,
  DEFAULT_ENDPOINT = client.DEFAULT_ENDPOINT,
}

--- A client for the Cloud Healthcare API (see README, "Lua API").
M.new = client.new

-- The store of a DICOMweb base URL, with a client of its own. `level`: error()'s level of the
-- user's call as seen from the caller (util.check_options' convention): wrong options raise there.
local function open_dicomweb(base_url, opts, fname, level)
  local o = {}
  for k, v in pairs(util.check_options(opts, client.OPTIONS, fname, level + 1)) do o[k] = v end
  local refused = util.userinfo_refusal(base_url, "DICOMweb base URL")
  if refused then return nil, errors.new("usage", refused) end
  if not util.is_base_url(base_url) then
    return nil, errors.new("usage", "DICOMweb base URL must be an http(s) URL without "
      .. "spaces, control characters, non-ASCII, '?' or '#', got '" .. util.redact_url(base_url) .. "'")
  end
  -- No Google discovery for a plain DICOMweb server unless credentials are asked for (impersonation
  -- asks for Google's: the found credential is the one impersonating).
  if o.credentials == nil and o.access_token == nil and o.api_key == nil and o.basic_auth == nil
      and o.impersonate == nil then
    o.credentials = false
  end
  o.endpoint = o.endpoint or base_url:match("^(https?://[^/?#]+)")
  local c, err = client.create(o, fname, level + 1)
  if not c then return nil, err end
  return dicomweb.store(c, (base_url:gsub("/+$", "")), nil, true)
end

--- A store object for any DICOMweb server's base URL (e.g. http://host:8042/dicom-web), with a
--- client of its own (store:close() closes it). Authentication is optional: the same options as
--- healthcare.new. Returns the store, or nil, err; nothing is sent.
function M.dicomweb(base_url, opts)
  util.check_arg(base_url, 1, "dicomweb", "string")
  local store, err = open_dicomweb(base_url, opts, "dicomweb", 2)
  return store, err
end

--- The store object for a DICOMweb base URL (http:// or https://, as healthcare.dicomweb) or a
--- dicomStore name (projects/P/locations/L/datasets/D/dicomStores/S, through healthcare.new with
--- the same options): what a program that takes "a store" from its user wants. The store owns
--- the client it makes. Returns the store, or nil, err; nothing is sent.
function M.dicom_store(target, opts)
  util.check_arg(target, 1, "dicom_store", "string")
  if target:match("^https?://") then
    local store, err = open_dicomweb(target, opts, "dicom_store", 2)
    return store, err
  end
  local c, err = client.create(opts, "dicom_store", 2)
  if not c then return nil, err end
  local ok
  ok, err = dicomweb.check_parent(target)
  if not ok then
    c:close()
    return nil, err
  end
  return dicomweb.store(c, c.endpoint .. "/" .. target .. "/dicomWeb", target, true)
end

return M
