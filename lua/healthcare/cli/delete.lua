-- SPDX-License-Identifier: MIT
-- `healthcare delete <store> <study>[/<series>[/<instance>]]... --yes`: deletes through
-- store:delete_* (Google's long-running operations are waited for). Nothing is deleted without
-- --yes: on a terminal the command asks (any answer but y or yes: "not deleted", exit 1),
-- elsewhere it says what it would delete and exits 2.
local argparse = require "argparse"
local core = require "healthcare.core"
local common = require "healthcare.cli.common"
local delete_module = require "healthcare.dicomweb.delete"

local M = {}

local say = common.sayer("healthcare delete")

-- Older spellings of flags, still taken (README "The healthcare command"): old -> current.
M.DEPRECATED_FLAGS = { { "--timeout", "--operation-timeout" } }

local function parser()
  local p = argparse("healthcare delete",
    "Delete studies, series or instances from a DICOM store (Google's DICOMweb DELETE; the "
    .. "long-running operation is waited for).")
  p:epilog("Example:\n"
    .. "  healthcare delete projects/P/locations/L/datasets/D/dicomStores/S 1.2.3 1.2.4/1.2.4.5 --yes\n\n"
    .. common.deprecated_epilog(M.DEPRECATED_FLAGS))
  common.add_store_options(p)
  p:argument("targets", "<study>[/<series>[/<instance>]]: the UIDs of what to delete (one given twice, or "
    .. "inside another one given, is deleted once).", nil, nil, "+")
  p:flag("-y --yes", "Delete without asking. Without it the command asks on a terminal (any answer "
    .. "but y or yes deletes nothing: exit 1), and elsewhere refuses (exit 2), saying what would be deleted.")
  common.option(p, M.DEPRECATED_FLAGS, "--operation-timeout", "Seconds to wait for each deletion to finish.",
    tostring(delete_module.DEFAULT_OPERATION_TIMEOUT)):argname("<seconds>"):convert(tonumber)
  return p
end
M.parser = parser -- the bash completion reads its options

-- Whether the user said yes on a terminal; nil when there is none to ask on.
local function confirm(targets, store_name)
  if not (core.isatty(0) and core.isatty(2)) then return nil end
  io.stderr:write("Delete ", targets, " from ", store_name, "? This cannot be undone. [y/N] ")
  io.stderr:flush()
  local answer = io.stdin:read("l")
  return answer ~= nil and (answer:lower() == "y" or answer:lower() == "yes")
end

-- The UIDs of t, from the study down.
local function uids_of(t)
  return { t.study, t.series, t.instance }
end

-- Whether outer names t or something t is in (the same UIDs as far as outer goes).
local function covers(outer, t)
  local o, u = uids_of(outer), uids_of(t)
  if #o > #u then return false end
  for i = 1, #o do
    if o[i] ~= u[i] then return false end
  end
  return true
end

-- targets less those given twice or inside another target (deleted with it), in the order
-- given, each dropped one said on stderr: the second DELETE would find nothing and fail.
local function distinct(targets)
  local kept = {}
  for i, t in ipairs(targets) do
    local outer, twice -- the outermost other target t is in; whether t came before
    for j, other in ipairs(targets) do
      if covers(other, t) then
        if covers(t, other) then
          twice = twice or j < i
        elseif not outer or #uids_of(other) < #uids_of(outer) then
          outer = other
        end
      end
    end
    if outer then
      say("%s is in %s, also given: deleted with it", common.describe_target(t), common.describe_target(outer))
    elseif twice then
      say("%s is given twice: deleting it once", common.describe_target(t))
    else
      kept[#kept + 1] = t
    end
  end
  return kept
end

local function delete(store, t, operation_timeout)
  local opts = { operation_timeout = operation_timeout }
  if t.instance then return store:delete_instance(t.study, t.series, t.instance, opts) end
  if t.series then return store:delete_series(t.study, t.series, opts) end
  return store:delete_study(t.study, opts)
end

function M.main(argv)
  local p = parser()
  local a, code = common.parse(p, argv)
  if not a then return code end
  local targets, names = {}, {}
  for _, s in ipairs(a.targets) do
    local t, terr = common.split_target(s)
    if not t then
      say("%s", terr)
      return common.EXIT_USAGE
    end
    targets[#targets + 1] = t
  end
  targets = distinct(targets)
  for i, t in ipairs(targets) do names[i] = common.describe_target(t) end
  if not a.operation_timeout or a.operation_timeout < 0 then
    say("--operation-timeout must be a number of seconds >= 0")
    return common.EXIT_USAGE
  end
  local store
  store, code = common.open_store_or_say(a, say)
  if not store then return code end
  local listed = table.concat(names, ", ")
  local yes = a.yes or confirm(listed, common.printable(store.name))
  if not yes then
    store:close()
    if yes == false then
      -- the user's own answer: nothing was done that was asked for, as when a delete fails
      say("not deleted")
      return common.EXIT_FAILED
    end
    say("not deleting without --yes; this would delete %s from %s", listed, common.printable(store.name))
    return common.EXIT_USAGE
  end

  local exit, deleted = common.EXIT_OK, 0
  for i, t in ipairs(targets) do
    local res, derr = delete(store, t, a.operation_timeout)
    if res then
      deleted = deleted + 1
      io.stdout:write("deleted ", names[i],
        res.operation and (" (operation " .. common.printable(res.operation) .. ")") or "",
        res.already_gone and " (already gone: an earlier attempt may have deleted it)" or "", "\n")
    else
      say("%s", tostring(derr))
      local c = common.exit_code_for_uid(store, derr)
      exit = math.max(exit, c)
      -- no such store, or credentials refused: every other target would fail the same way
      if c == common.EXIT_USAGE then break end
    end
  end
  store:close()
  if #targets > 1 then
    io.stderr:write(string.format("deleted %d of %d\n", deleted, #targets))
  end
  return exit
end

return M
