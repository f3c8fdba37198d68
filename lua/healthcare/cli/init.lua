-- SPDX-License-Identifier: MIT
-- The `healthcare` command: dispatch only. Two forms:
--   the seed's:   healthcare projects locations-datasets-dicom-stores-<method> <parent> <dicom-web-path> ...
--                 (parsed by healthcare.cli.seed, run by healthcare.cli.call, --help by healthcare.cli.help)
--   the friendly: healthcare store|search|retrieve|delete <store> ... (see healthcare.cli.<command>)
-- Exit codes (healthcare.cli.common): 0 all done, 1 something failed, 2 usage or configuration error.
local seed = require "healthcare.cli.seed"
local help = require "healthcare.cli.help"
local common = require "healthcare.cli.common"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = common.EXIT_OK, common.EXIT_FAILED, common.EXIT_USAGE
M.exit_code_for = common.exit_code_for

-- The friendly commands, each a module healthcare.cli.<name> with main(argv).
M.COMMANDS = { store = true, search = true, retrieve = true, delete = true }

local say = common.sayer("healthcare")

-- The seed form: a usage error, its --help, or a call (healthcare.cli.call).
local function run_seed(args)
  local cmd, err = seed.parse(args)
  if not cmd then
    say("%s", common.printable(err))
    io.stderr:write("Try 'healthcare --help'.\n")
    return M.EXIT_USAGE
  end
  if cmd.action == "help" then
    io.stdout:write(help.text(cmd.help_topic), "\n")
    return M.EXIT_OK
  end
  local call = require "healthcare.cli.call"
  if cmd.body then return call.store_instances(cmd) end
  return call.read_or_delete(cmd)
end

--- Runs the command with argv (a list of strings, as `arg`) and returns the exit code.
function M.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local ok, code = xpcall(function()
    if M.COMMANDS[args[1]] then
      return require("healthcare.cli." .. args[1]).main(args)
    end
    return run_seed(args)
  end, debug.traceback)
  if not ok then
    say("internal error: %s", common.printable(code))
    return M.EXIT_FAILED
  end
  io.stdout:flush()
  return code
end

return M
