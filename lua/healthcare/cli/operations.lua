-- SPDX-License-Identifier: MIT
-- `healthcare operations list <dataset> | get <operation> | wait <operation> | cancel <operation>`:
-- the long-running operations of a dataset (imports, exports, de-identifications, deletes).
-- list prints one line per operation as its page arrives (--json: the Operations), at most
-- --limit of them; get prints the Operation as JSON; wait waits as import does
-- (healthcare.cli.wait); cancel asks Google to stop one.
local api_operation = require "healthcare.api.operation"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"
local wait = require "healthcare.cli.wait"
local cli_migrate = require "healthcare.cli.migrate"

local M = {}

local say = common.sayer("healthcare operations")
local DS = "projects.locations.datasets."
M.ACTIONS = { "list", "get", "wait", "cancel" }
-- list: at most this many operations, read from at most as many pages. Each is printed as its
-- page arrives, so memory stays flat; the bound is for a server whose pages never end.
M.DEFAULT_LIMIT = 10000

local function parser()
  return cli_migrate.parser("operations", "List, show, wait for or cancel the long-running operations of a dataset.",
    "Examples:\n"
    .. "  healthcare operations list projects/P/locations/L/datasets/D\n"
    .. "  healthcare operations get projects/P/locations/L/datasets/D/operations/123\n"
    .. "  healthcare operations wait projects/P/locations/L/datasets/D/operations/123\n"
    .. "  healthcare operations cancel projects/P/locations/L/datasets/D/operations/123\n\n"
    .. "list prints each operation as its page arrives, at most --limit of them; a note on standard error "
    .. "says when there are more.\n\n"
    .. "Cancelling is asked of Google, which stops the operation between two items: what was done "
    .. "stays done.",
    function(p)
      p:argument("action", "list, get, wait or cancel."):choices(M.ACTIONS)
      p:argument("name", "list: the dataset (projects/P/locations/L/datasets/D); the others: the operation "
        .. "(.../datasets/D/operations/ID).")
      p:option("--filter", "list: Google's filter of operations (e.g. 'done=false').")
      p:option("--limit", "list: at most N operations in all, from at most N pages.",
        tostring(M.DEFAULT_LIMIT)):argname("<n>"):convert(tonumber)
      p:flag("--json", "list and get: the answer as JSON (get always prints JSON).")
    end,
    -- it starts nothing: wait waits, and the others do not
    { no_wait = false })
end
M.parser = parser -- the bash completion reads its options

-- The ProgressCounter of an operation as text, "" when it has none.
local function counters_text(op)
  return wait.counters_text(op.metadata) or ""
end

local function state_of(op)
  if api_operation.has_error(op) then return "failed" end
  if op.done == true then return "done" end
  return "running"
end

-- The method an operation runs, short: "ImportDicomData" of "google.cloud...DicomService.ImportDicomData".
local function method_of(op)
  local m = type(op.metadata) == "table" and op.metadata.apiMethodName
  return type(m) == "string" and (m:match("([^.]+)$") or m) or "?"
end

-- One line of the listing: name, method, state, counters.
local function line_of(op)
  local name = type(op.name) == "string" and op.name or "(no name)"
  local line = string.format("%s  %s  %s  %s", name, method_of(op), state_of(op), counters_text(op))
  return common.printable((line:gsub("%s+$", "")))
end

-- How a listing that stopped at --limit says so: "" when it did not.
local function more_text(more, limit)
  if not more then return "" end
  return string.format("; stopped at --limit %.0f, there are more (a larger --limit, or --filter)", limit)
end

-- Lists the operations as their pages arrive: a line each (--json: an item of the array, the
-- array closed whatever happens), at most a.limit of them from at most a.limit pages. An item
-- that is not an object is the server's fault: told, shown in --json as it came, exit 1.
local function list(client, a)
  local pages, err = client:pages(DS .. "operations.list", { name = a.name, filter = a.filter },
    { max_pages = a.limit })
  if not pages then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  local n, bad, more = 0, 0, false
  if a.json then io.stdout:write('{"operations": [') end
  for op in pages:each() do
    if n == a.limit then
      more = true
      break
    end
    n = n + 1
    if a.json then
      io.stdout:write(n > 1 and ",\n" or "\n", json.encode(op))
    elseif type(op) == "table" then
      io.stdout:write(line_of(op), "\n")
    end
    if type(op) ~= "table" then
      bad = bad + 1
      say("item %d of the list is not an Operation (a %s)", n, type(op))
    end
  end
  -- (pages.next_page_token: max_pages ended the loop with a page still to read)
  more = more or pages.next_page_token ~= nil
  if a.json then io.stdout:write(n > 0 and "\n]}\n" or "]}\n") end
  if pages.error then
    say("%s (after %d operation%s)", tostring(pages.error), n, n == 1 and "" or "s")
    return common.exit_code_for(pages.error)
  end
  if not a.json then
    io.stderr:write(string.format("%d operation%s%s\n", n, n == 1 and "" or "s", more_text(more, a.limit)))
  elseif more then
    say("%d operations%s", n, more_text(more, a.limit))
  end
  return bad > 0 and common.EXIT_FAILED or common.EXIT_OK
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
  if not a.limit or a.limit < 1 or a.limit ~= math.floor(a.limit) or a.limit == math.huge then
    say("--limit must be a whole number of at least 1")
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
