-- SPDX-License-Identifier: MIT
-- What the server-side commands (import, export, deidentify, operations) share: their parser
-- (client options, waiting options), the client they make from the options, and how a route
-- of healthcare.migrate is started and then waited for (healthcare.cli.wait).
local argparse = require "argparse"
local healthcare = require "healthcare"
local common = require "healthcare.cli.common"
local wait = require "healthcare.cli.wait"

local M = {}

--- A parser for `healthcare <name>`: description, epilog, then add(p) for the arguments and
--- options of the command, then the waiting and client options.
function M.parser(name, description, epilog, add, wait_opts)
  local p = argparse("healthcare " .. name, description)
  p:epilog(epilog)
  add(p)
  wait.add_options(p, wait_opts)
  common.add_client_options(p)
  return p
end

--- The client for parsed arguments `a` (common.add_client_options' options), or nil and the
--- exit code after say(...) told why. Nothing is sent.
function M.open_client(a, say)
  local copts, err = common.client_options(a)
  local client
  if copts then client, err = healthcare.new(copts) end
  if not client then
    say("%s", tostring(err))
    return nil, common.exit_code_for(err)
  end
  return client
end

--- Parses argv with p and checks the waiting options: the arguments, or nil and the exit code.
function M.parse(p, argv, say)
  local a, code = common.parse(p, argv)
  if not a then return nil, code end
  local ok, why = wait.check_options(a)
  if not ok then
    say("%s", why)
    return nil, common.EXIT_USAGE
  end
  return a
end

--- Runs a route: start(client) -> the Operation or nil, err (healthcare.migrate's with wait =
--- false), then --no-wait's name or the waiting. Returns the exit code.
function M.run(a, what, say, start)
  local client, code = M.open_client(a, say)
  if not client then return code end
  local op, err = start(client)
  if not op then
    client:close()
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  code = wait.finish(client, op, { what = what, say = say, operation_timeout = a.operation_timeout,
    poll_interval = a.poll_interval }, a.no_wait)
  client:close()
  return code
end

return M
