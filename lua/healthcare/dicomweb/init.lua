-- SPDX-License-Identifier: MIT
-- The store object: a DICOMweb base URL ({endpoint}/{parent}/dicomWeb for Google, any DICOMweb
-- root elsewhere) and the client that carries its requests. Its methods live in one module per
-- concern (stow: StoreInstances; batch: store; search; retrieve; delete; verify; fetch: one raw
-- request; healthcare.migrate: import, export, deidentify) and are put in the class as they
-- are: a method IS the module's function, with no wrapper between the user's call and the
-- checks that blame the user's line for a misuse.
-- Ownership: a store made by healthcare.dicomweb or healthcare.dicom_store owns the client it
-- made, and store:close() closes it; a store from client:dicom_store uses the caller's client,
-- which store:close() leaves open.
local batch = require "healthcare.dicomweb.batch"
local delete = require "healthcare.dicomweb.delete"
local fetch = require "healthcare.dicomweb.fetch"
local migrate = require "healthcare.migrate"
local names = require "healthcare.dicomweb.names"
local retrieve = require "healthcare.dicomweb.retrieve"
local search = require "healthcare.dicomweb.search"
local stow = require "healthcare.dicomweb.stow"
local verify = require "healthcare.dicomweb.verify"
local watch = require "healthcare.dicomweb.watch"

local M = {}

local Store = {}
Store.__index = Store
Store.__name = "healthcare.Store"
M.Store = Store

-- The helpers callers of this module used before they had modules of their own.
M.ACCEPT = stow.ACCEPT
M.MAX_UID = names.MAX_UID
M.check_parent = names.check_parent
M.valid_uid = names.valid_uid
M.check_store_path = names.check_store_path
M.read_store_response = stow.read_store_response

--- A store over `client` at base_url; `name` is the dicomStore name (nil for a plain DICOMweb
--- server: its requests then go to base_url/<path>, and a dicomStore's through the method table,
--- healthcare.dicomweb.route); `owns_client`: whether store:close() closes the client.
function M.store(client, base_url, name, owns_client)
  return setmetatable({ client = client, base_url = base_url, name = name or base_url, parent = name,
    _owns_client = owns_client == true }, Store)
end

--- Closes the store, and its client when the store made it. Safe to call twice; a closed store
--- raises "attempt to use a closed store" from its methods.
function Store:close()
  if self._closed then return end
  self._closed = true
  if self._owns_client then self.client:close() end
end

--- Whether the store (or the client it uses) is closed, and which.
function Store:is_closed()
  if self._closed then return true, "store" end
  if self.client:is_closed() then return true, "client" end
  return false
end

Store.__close = Store.close
-- Lua 5.4 only (LuaJIT does not collect tables through __gc: close() is the way there).
Store.__gc = Store.close

function Store:__tostring()
  return string.format("healthcare.Store %s (%s)", self.name, self._closed and "closed" or "open")
end

Store.store_instances = stow.store_instances
Store.store = batch.store
Store.search_studies = search.search_studies
Store.search_series = search.search_series
Store.search_instances = search.search_instances
Store.retrieve_study = retrieve.retrieve_study
Store.retrieve_series = retrieve.retrieve_series
Store.retrieve_instance = retrieve.retrieve_instance
Store.retrieve_metadata = retrieve.retrieve_metadata
Store.retrieve_rendered = retrieve.retrieve_rendered
Store.retrieve_frames = retrieve.retrieve_frames
Store.delete_study = delete.delete_study
Store.delete_series = delete.delete_series
Store.delete_instance = delete.delete_instance
Store.fetch = fetch.fetch
Store.verify = verify.verify
Store.import = migrate.store_import
Store.export = migrate.store_export
Store.deidentify = migrate.store_deidentify
Store.watch = watch.new

return M
