-- SPDX-License-Identifier: MIT
-- The `healthcare` command: dispatch only. Two forms:
--   the seed's:   healthcare projects locations-datasets-dicom-stores-<method> <parent> <dicom-web-path> ...
--                 (parsed by healthcare.cli.seed, run by healthcare.cli.call, --help by healthcare.cli.help)
--   the friendly: healthcare store|watch|search|retrieve|delete <store> ... (see healthcare.cli.<command>)
-- and what introduces the command: bare `healthcare` (the commands, one line each),
-- --version, a suggestion for a mistyped command, and `__complete` for the bash completion
-- (healthcare.cli.complete). The commands are listed once, in healthcare.cli.commands.
-- Exit codes (healthcare.cli.common): 0 all done, 1 something failed, 2 usage or configuration error.
local common = require "healthcare.cli.common"
local commands = require "healthcare.cli.commands"
-- The seed form's parser and the help are loaded when that form runs: a friendly command
-- loads its own module only (start-up is paid on every run).
local function seed() return require "healthcare.cli.seed" end

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = common.EXIT_OK, common.EXIT_FAILED, common.EXIT_USAGE
M.exit_code_for = common.exit_code_for

-- The friendly commands, each a module healthcare.cli.<name> with main(argv).
M.COMMANDS = commands.FRIENDLY

-- The hidden word the bash completion runs the command with (bin/healthcare.bash-completion).
M.COMPLETE = "__complete"

local say = common.sayer("healthcare")

-- The seed form: a usage error, its --help, or a call (healthcare.cli.call).
local function run_seed(args)
  local cmd, err = seed().parse(args)
  if not cmd then
    say("%s", common.printable(err))
    io.stderr:write("Try 'healthcare --help'.\n")
    return M.EXIT_USAGE
  end
  if cmd.action == "help" then
    io.stdout:write(require("healthcare.cli.help").text(cmd.help_topic), "\n")
    return M.EXIT_OK
  end
  local call = require "healthcare.cli.call"
  if cmd.api then return call.api_method(cmd) end
  if cmd.body then return call.store_instances(cmd) end
  return call.read_or_delete(cmd)
end

-- Bare `healthcare`: the commands, one line each, on standard error (a missing command is a
-- usage error: exit 2).
local function overview()
  io.stderr:write("usage: healthcare <command> [<arguments>] [<options>]\n\nCommands:\n",
    table.concat(commands.lines(), "\n"), "\n\n",
    "healthcare --help shows every command's usage and the global options, healthcare <command>\n",
    "--help one command's options, healthcare --version the versions.\n")
  return M.EXIT_USAGE
end

-- `healthcare --version`: this module's version, the Lua running it, libcurl (and its TLS
-- library), the libcrypto the module signs with, and where the module was loaded from.
local function version()
  local core = require "healthcare.core"
  local healthcare = require "healthcare"
  local lua = rawget(_G, "jit") and (_G.jit.version .. " (" .. _VERSION .. " API)")
    or (_VERSION .. " (module built with " .. core.lua_release .. "'s headers)")
  local function found(name, path)
    return package.searchpath and package.searchpath(name, path) or "?"
  end
  io.stdout:write(table.concat({
    "healthcare " .. healthcare._VERSION,
    "Lua      " .. lua,
    "libcurl  " .. core.curl_version:gsub("^libcurl/", "") .. " (" .. core.curl_ssl_version
      .. (core.http2 and ", HTTP/2" or "") .. ")",
    "OpenSSL  " .. core.openssl_version,
    "module   " .. found("healthcare", package.path) .. ", " .. found("healthcare.core", package.cpath),
  }, "\n"), "\n")
  return M.EXIT_OK
end

-- The first word of args that is not an option of the seed form nor its value (its options may
-- stand before `projects`), or nil. The word after an unknown option, or after a -p value without
-- '=', may be a value (`--access-token ya29...`, `-p access-token ya29...`): it counts only when
-- it names a command, and is never quoted as an unknown one.
local function first_word(args)
  local takes_value, known = {}, {}
  for _, list in ipairs({ seed().global_options, seed().method_options }) do
    for _, o in ipairs(list) do
      for _, spelling in ipairs({ o.long or false, o.short or false }) do
        if spelling then
          known[spelling] = true
          takes_value[spelling] = o.arg ~= nil
        end
      end
    end
  end
  local is_command = {}
  for _, name in ipairs(commands.names()) do is_command[name] = true end
  local i = 1
  while args[i] do
    local a = args[i]
    if a == "--" then return args[i + 1] end
    if a == "-" or a:sub(1, 1) ~= "-" then return a end
    local function maybe_value(w) return w ~= nil and w:sub(1, 1) ~= "-" and not is_command[w] end
    if takes_value[a] then
      local bare_p = a == "-p" and args[i + 1] and not args[i + 1]:find("=", 1, true)
      i = i + ((bare_p and maybe_value(args[i + 2])) and 3 or 2)
    elseif not known[a] and not a:find("=", 1, true) and maybe_value(args[i + 1]) then
      i = i + 2
    else
      i = i + 1
    end
  end
  return nil
end

-- A word that names no command: the closest ones, and the list.
local function unknown_command(word)
  local names = commands.names()
  if commands.FRIENDLY[word] then
    say("the options of %s go after it: healthcare %s <store> ... [<options>] (healthcare %s --help)",
      word, word, word)
  else
    say("unknown command '%s'%s; commands: %s", common.printable(word), commands.suggestion(word, names),
      table.concat(names, ", "))
  end
  io.stderr:write("Try 'healthcare --help'.\n")
  return M.EXIT_USAGE
end

local function dispatch(args)
  if args[1] == nil then return overview() end
  if args[1] == "--version" then return version() end
  if args[1] == M.COMPLETE then return require("healthcare.cli.complete").main(args) end
  if M.COMMANDS[args[1]] then
    return require("healthcare.cli." .. args[1]).main(args)
  end
  local word = first_word(args)
  if word and word ~= seed().COMMAND then return unknown_command(word) end
  return run_seed(args)
end

--- Runs the command with argv (a list of strings, as `arg`) and returns the exit code.
function M.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local ok, code = xpcall(function() return dispatch(args) end, debug.traceback)
  if not ok then
    say("internal error: %s", common.printable(code))
    return M.EXIT_FAILED
  end
  io.stdout:flush()
  return code
end

return M
