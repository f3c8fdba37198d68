-- SPDX-License-Identifier: MIT
-- The store object: a DICOMweb base URL ({endpoint}/{parent}/dicomWeb for Google, any DICOMweb
-- root elsewhere) and the client that carries its requests. Its methods live in one module per
-- concern (stow: StoreInstances; batch: store; search; retrieve; delete; verify; fetch: one raw
-- request; healthcare.migrate: import, export, deidentify) and are put in the class as they
-- are: a method IS the module's function, with no wrapper between the user's call and the
-- checks that blame the user's line for a misuse. A module is loaded at the first use of one of
-- its methods (LAZY): the command runs one method, and loading them all was a third of its
-- start-up.
-- Ownership: a store made by healthcare.dicomweb or healthcare.dicom_store owns the client it
-- made, and store:close() closes it; a store from client:dicom_store uses the caller's client,
-- which store:close() leaves open.
local names = require "healthcare.dicomweb.names"
local stow = require "healthcare.dicomweb.stow"

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

-- method -> { module, its function's name }
local LAZY = {
  store = { "healthcare.dicomweb.batch", "store" },
  search_studies = { "healthcare.dicomweb.search", "search_studies" },
  search_series = { "healthcare.dicomweb.search", "search_series" },
  search_instances = { "healthcare.dicomweb.search", "search_instances" },
  retrieve_study = { "healthcare.dicomweb.retrieve", "retrieve_study" },
  retrieve_series = { "healthcare.dicomweb.retrieve", "retrieve_series" },
  retrieve_instance = { "healthcare.dicomweb.retrieve", "retrieve_instance" },
  retrieve_metadata = { "healthcare.dicomweb.retrieve", "retrieve_metadata" },
  retrieve_rendered = { "healthcare.dicomweb.retrieve", "retrieve_rendered" },
  retrieve_frames = { "healthcare.dicomweb.retrieve", "retrieve_frames" },
  delete_study = { "healthcare.dicomweb.delete", "delete_study" },
  delete_series = { "healthcare.dicomweb.delete", "delete_series" },
  delete_instance = { "healthcare.dicomweb.delete", "delete_instance" },
  fetch = { "healthcare.dicomweb.fetch", "fetch" },
  verify = { "healthcare.dicomweb.verify", "verify" },
  import = { "healthcare.migrate", "store_import" },
  export = { "healthcare.migrate", "store_export" },
  deidentify = { "healthcare.migrate", "store_deidentify" },
  watch = { "healthcare.dicomweb.watch", "new" },
}

setmetatable(Store, { __index = function(_, name)
  local where = LAZY[name]
  if not where then return nil end
  local fn = require(where[1])[where[2]]
  rawset(Store, name, fn)
  return fn
end })

-- Under OpenResty all of them are loaded now: `require "healthcare"` in init_by_lua_block then
-- leaves a handler nothing to load (a module first loaded there would read files in the worker,
-- and LuaFileSystem would set a global there; README, "nginx configuration").
if rawget(_G, "ngx") ~= nil then
  for name in pairs(LAZY) do local _ = Store[name] end
end

return M
