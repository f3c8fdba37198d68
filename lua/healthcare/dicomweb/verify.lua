-- SPDX-License-Identifier: MIT
-- store:verify(report_or_list): asks the server whether it lists the instances a store() run
-- reported stored. A 200 (even per-instance success) only says the server accepted them; a
-- migration that must prove itself checks what the store answers afterwards. One paged search
-- per study (search_instances scoped to the study), so the cost grows with studies, not files.
local errors = require "healthcare.errors"
local names = require "healthcare.dicomweb.names"
local retry = require "healthcare.retry"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "page_size", "params", "retry" }
-- Large pages: a study of 10,000 instances is 10 requests. Below the smallest cap a server is
-- known to put on `limit` (Google: 50,000 for instances), so a short page really is the last.
M.PAGE_SIZE = 1000

-- The entries to check, from a store() report (stored and already_stored: both say the
-- server holds them) or a list of { study_uid, sop_instance_uid, path } (`study` is the old name
-- of study_uid, still taken).
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
        if not names.valid_uid(uid) then
          return nil, errors.new("usage", string.format("invalid UID '%s' in the entry for %s",
            tostring(uid), tostring(e.path or ("entry " .. i))))
        end
      end
      local key = study .. "/" .. sop
      if not seen[key] then
        seen[key] = true
        -- study: the old name of study_uid, kept one release (README "Lua API")
        out[#out + 1] = { study_uid = study, study = study, sop_instance_uid = sop, path = e.path }
      end
    end
  end
  return out
end

--- The SOP Instance UIDs the server lists in a study, as a set (each one's Series Instance UID
--- when the answer gives it, else true), or nil, err. A study the server does not know (404 on a
--- study-scoped search) lists nothing. opts: { page_size, params }.
function M.listed_in(store, study, opts)
  local results, err = store:search_instances({ StudyInstanceUID = study, includefield = "SOPInstanceUID" },
    { page_size = opts.page_size or M.PAGE_SIZE, params = opts.params, retry = opts.retry })
  if not results then return nil, err end
  local set = {}
  for item in results:each() do
    local uid = item.SOPInstanceUID
    if type(uid) == "string" then
      local series = item.SeriesInstanceUID
      set[uid] = type(series) == "string" and series or true
    end
  end
  if results.error then
    if results.error.kind == "http" and results.error.http_status == 404 then return {} end
    return nil, results.error
  end
  return set
end

--- store:verify(report_or_list, opts): returns { checked = n, missing = { { study_uid,
--- sop_instance_uid, path }, ... } }, or nil, err and the same for the studies checked before
--- the failure (the partial result).
function M.verify(store, input, opts)
  util.check_self(store, "healthcare.Store", "verify")
  util.check_arg(input, 1, "verify", "table", nil, "report or list")
  opts = util.check_options(opts, M.OPTIONS, "verify")
  util.check_number(opts.page_size, "page_size", "verify", "whole >= 1")
  util.check_option(opts.params, "params", "verify", "table")
  retry.check(opts.retry, "verify")
  local entries, err = entries_of(input)
  if not entries then return nil, err end
  local by_study, studies = {}, {}
  for _, e in ipairs(entries) do
    if not by_study[e.study_uid] then
      by_study[e.study_uid] = {}
      studies[#studies + 1] = e.study_uid
    end
    local list = by_study[e.study_uid]
    list[#list + 1] = e
  end
  local result = { checked = 0, missing = {} }
  for _, study in ipairs(studies) do
    local listed, lerr = M.listed_in(store, study, opts)
    if not listed then return nil, lerr, result end
    for _, e in ipairs(by_study[study]) do
      if not listed[e.sop_instance_uid] then result.missing[#result.missing + 1] = e end
    end
    result.checked = result.checked + #by_study[study]
  end
  return result
end

return M
