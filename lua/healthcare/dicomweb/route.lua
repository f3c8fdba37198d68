-- SPDX-License-Identifier: MIT
-- Where a store's DICOMweb request goes. For a Google dicomStore, through the method table's
-- entry for it (healthcare.api: "projects.locations.datasets.dicomStores.studies.retrieveStudy"
-- for GET studies/{uid}, ...), so the store's methods and client:call of the same method send the
-- same URL; for any other DICOMweb server, the same path under its base URL. Paths are built by
-- the store's methods from checked UIDs; the query, where there is one, is theirs to add.
local request = require "healthcare.api.request"
local errors = require "healthcare.errors"

local M = {}

local PREFIX = "projects.locations.datasets.dicomStores."
-- A DICOMweb path alternates resources and their UIDs ("studies/1.2/series/3.4"); after the last
-- UID may come a collection (a search), "metadata" or "rendered".
local RESOURCES = { studies = true, series = true, instances = true, frames = true }
local RETRIEVE = { studies = "retrieveStudy", series = "retrieveSeries", instances = "retrieveInstance",
  frames = "retrieveFrames" }
local SEARCH = { studies = "searchForStudies", series = "searchForSeries", instances = "searchForInstances" }
local LAST = { metadata = "retrieveMetadata", rendered = "retrieveRendered" }

--- The id of the API method that `verb` on the DICOMweb path `path` is (GET
--- "studies/1.2/series" -> "projects.locations.datasets.dicomStores.studies.searchForSeries"),
--- or nil when the API has none.
function M.method_of(verb, path)
  local segments = {}
  for s in (path .. "/"):gmatch("([^/]*)/") do segments[#segments + 1] = s end
  local nodes, i = {}, 1
  while RESOURCES[segments[i]] and segments[i + 1] and not LAST[segments[i + 1]] do
    nodes[#nodes + 1] = segments[i]
    i = i + 2
  end
  local rest = segments[i]
  if segments[i + 1] ~= nil then return nil end
  local name
  if verb == "GET" then
    if rest == nil then
      name = RETRIEVE[nodes[#nodes]]
    else
      name = LAST[rest] or SEARCH[rest]
    end
  elseif verb == "POST" then
    if (rest == nil and #nodes == 1 and nodes[1] == "studies") or (rest == "studies" and #nodes == 0) then
      name = "storeInstances"
    end
  elseif verb == "DELETE" and rest == nil then
    name = "delete"
  end
  if not name then return nil end
  nodes[#nodes + 1] = name
  local id = PREFIX .. table.concat(nodes, ".")
  return require("healthcare.api").method(id) and id or nil
end

--- The URL of `verb` on `path` (below the DICOMweb root, no query) for `store`; or nil, err.
function M.url(store, verb, path)
  if not store.parent then return store.base_url .. "/" .. path end
  local id = M.method_of(verb, path)
  if not id then
    return nil, errors.new("usage", string.format("no method of the API is %s %s on a dicomStore", verb, path))
  end
  local req, err = request.build(id, { parent = store.parent, dicomWebPath = path })
  if not req then return nil, err end
  return request.url(store.client.endpoint, req.path)
end

return M
