-- SPDX-License-Identifier: MIT
-- `healthcare operations list <dataset> | get <operation> | wait <operation> | cancel <operation>`:
-- the long-running operations of a dataset (imports, exports, de-identifications, deletes).
-- list prints one line per operation (--json: the Operations); get prints the Operation as
-- JSON; wait waits as import does (healthcare.cli.wait); cancel asks Google to stop one.
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"
local wait = require "healthcare.cli.wait"
local cli_migrate = require "healthcare.cli.migrate"

local M = {}

local say = common.sayer("healthcare operations")
local DS = "projects.locations.datasets."
M.ACTIONS = { "list", "get", "wait", "cancel" }

local function parser()
  return cli_migrate.parser("operations", "List, show, wait for or cancel the long-running operations of a dataset.",
    "Examples:\n"
    .. "  healthcare operations list projects/P/locations/L/datasets/D\n"
    .. "  healthcare operations get projects/P/locations/L/datasets/D/operations/123\n"
    .. "  healthcare operations wait projects/P/locations/L/datasets/D/operations/123\n"
    .. "  healthcare operations cancel projects/P/locations/L/datasets/D/operations/123\n\n"
    .. "Cancelling is asked of Google, which stops the operation between two items: what was done "
    .. "stays done.",
    function(p)
      p:argument("action", "list, get, wait or cancel."):choices(M.ACTIONS)
      p:argument("name", "list: the dataset (projects/P/locations/L/datasets/D); the others: the operation "
        .. "(.../datasets/D/operations/ID).")
      p:option("--filter", "list: Google's filter of operations (e.g. 'done=false').")
      p:flag("--json", "list and get: the answer as JSON (get always prints JSON).")
    end)
end
M.parser = parser -- the bash completion reads its options

-- The ProgressCounter of an operation as text, "" when it has none.
local function counters_text(op)
  local c = wait.counters(op.metadata)
  if not c then return "" end
  return string.format("success %d, failure %d, pending %d", c.success, c.failure, c.pending)
end

local function state_of(op)
  if type(op.error) == "table" then return "failed" end
  if op.done == true then return "done" end
  return "running"
end

-- The method an operation runs, short: "ImportDicomData" of "google.cloud...DicomService.ImportDicomData".
local function method_of(op)
  local m = type(op.metadata) == "table" and op.metadata.apiMethodName
  return type(m) == "string" and (m:match("([^.]+)$") or m) or "?"
end

local function list(client, a)
  local pages, err = client:pages(DS .. "operations.list", { name = a.name, filter = a.filter })
  local ops
  if pages then ops, err = pages:all() end
  if not ops then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  if a.json then
    io.stdout:write(json.pretty({ operations = json.array(ops) }), "\n")
    return common.EXIT_OK
  end
  for _, op in ipairs(ops) do
    local line = string.format("%s  %s  %s  %s", tostring(op.name), method_of(op), state_of(op), counters_text(op))
    io.stdout:write(common.printable((line:gsub("%s+$", ""))), "\n")
  end
  io.stderr:write(string.format("%d operation%s\n", #ops, #ops == 1 and "" or "s"))
  return common.EXIT_OK
end

local function get(client, a)
  local op, err = client:call(DS .. "operations.get", { name = a.name })
  if not op then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  io.stdout:write(json.pretty(op), "\n")
  return common.EXIT_OK
end

local function cancel(client, a)
  local ok, err = client:call(DS .. "operations.cancel", { name = a.name }, {})
  if not ok then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  io.stderr:write("cancel asked for operation ", common.printable(a.name), "; healthcare operations get ",
    common.printable(a.name), " shows when it stopped\n")
  return common.EXIT_OK
end

function M.main(argv)
  local a, code = cli_migrate.parse(parser(), argv, say)
  if not a then return code end
  if a.filter and a.action ~= "list" then
    say("--filter applies to list")
    return common.EXIT_USAGE
  end
  local client
  client, code = cli_migrate.open_client(a, say)
  if not client then return code end
  if a.action == "list" then
    code = list(client, a)
  elseif a.action == "get" then
    code = get(client, a)
  elseif a.action == "cancel" then
    code = cancel(client, a)
  else
    code = wait.wait(client, a.name, { what = "operation", say = say, operation_timeout = a.operation_timeout,
      poll_interval = a.poll_interval })
  end
  client:close()
  return code
end

return M
