-- SPDX-License-Identifier: MIT
-- store:verify(report_or_list): asks the server whether it lists the instances a store() run
-- reported stored. A 200 (even per-instance success) only says the server accepted them; a
-- migration that must prove itself checks what the store answers afterwards. One paged search
-- per study (search_instances scoped to the study), so the cost grows with studies, not files.
local dicomweb = require "healthcare.dicomweb"
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "page_size", "params" }
-- Large pages: a study of 10,000 instances is 10 requests. Below the smallest cap a server is
-- known to put on `limit` (Google: 50,000 for instances), so a short page really is the last.
M.PAGE_SIZE = 1000

-- The entries to check, from a store() report (stored and already_stored: both say the
-- server holds them) or a list of { study_uid | study, sop_instance_uid, path }.
local function entries_of(input)
  local lists
  local counts = input.counts
  if type(counts) == "table" and ((counts.stored or 0) > #(input.stored or {})
    or (counts.already_stored or 0) > #(input.already_stored or {})) then
    return nil, errors.new("usage", "the report lists counts, not the files stored (store:store was given "
      .. "keep_stored = false): nothing to verify")
  end
  if type(input.stored) == "table" or type(input.already_stored) == "table" then
    lists = { input.stored or {}, input.already_stored or {} }
  else
    lists = { input }
  end
  local out, seen = {}, {}
  for _, list in ipairs(lists) do
    for i, e in ipairs(list) do
      if type(e) ~= "table" then
        return nil, errors.new("usage", string.format("entry %d is a %s, not a table", i, type(e)))
      end
      local study, sop = e.study_uid or e.study, e.sop_instance_uid
      for _, uid in ipairs({ study, sop }) do
        if not dicomweb.valid_uid(uid) then
          return nil, errors.new("usage", string.format("invalid UID '%s' in the entry for %s",
            tostring(uid), tostring(e.path or ("entry " .. i))))
        end
      end
      local key = study .. "/" .. sop
      if not seen[key] then
        seen[key] = true
        out[#out + 1] = { study = study, sop_instance_uid = sop, path = e.path }
      end
    end
  end
  return out
end

-- The SOP Instance UIDs the server lists in a study, as a set, or nil, err. A study the
-- server does not know (404 on a study-scoped search) lists nothing.
local function listed_in(store, study, opts)
  local results, err = store:search_instances({ StudyInstanceUID = study, includefield = "SOPInstanceUID" },
    { page_size = opts.page_size or M.PAGE_SIZE, params = opts.params })
  if not results then return nil, err end
  local set = {}
  for item in results:each() do
    local uid = item.SOPInstanceUID
    if type(uid) == "string" then set[uid] = true end
  end
  if results.error then
    if results.error.kind == "http" and results.error.http_status == 404 then return {} end
    return nil, results.error
  end
  return set
end

--- Returns { checked = n, missing = { { study, sop_instance_uid, path }, ... } } or nil, err.
function M.verify(store, input, opts)
  if type(input) ~= "table" then
    error("bad argument #1 to 'verify' (report or list expected, got " .. type(input) .. ")", 3)
  end
  util.check_options(opts, M.OPTIONS, "verify", 3)
  opts = opts or {}
  local entries, err = entries_of(input)
  if not entries then return nil, err end
  local by_study, studies = {}, {}
  for _, e in ipairs(entries) do
    if not by_study[e.study] then
      by_study[e.study] = {}
      studies[#studies + 1] = e.study
    end
    local list = by_study[e.study]
    list[#list + 1] = e
  end
  local missing = {}
  for _, study in ipairs(studies) do
    local listed, lerr = listed_in(store, study, opts)
    if not listed then return nil, lerr end
    for _, e in ipairs(by_study[study]) do
      if not listed[e.sop_instance_uid] then missing[#missing + 1] = e end
    end
  end
  return { checked = #entries, missing = missing }
end

return M
