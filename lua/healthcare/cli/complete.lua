-- SPDX-License-Identifier: MIT
-- healthcare.cli.complete: what fits the word being typed, for bash's completion
-- (bin/healthcare.bash-completion runs `healthcare __complete <the words before it>` and filters
-- by what was typed). Printed one per line; nothing when a file or a value fits (bash then
-- completes file names):
--   the first word             the commands (healthcare.cli.commands), --help, --version
--   after projects             the API methods by their command names, from the generated method
--                              table (healthcare.api: all of them, whichever the seed form wires),
--                              and the seed form's options
--   after a method             the seed form's options
--   after store, search, ...   that command's options, from its argparse parser
local commands = require "healthcare.cli.commands"
local seed = require "healthcare.cli.seed"

local M = {}

-- The seed form's option spellings, and which of them take a value.
local function seed_options()
  local names, takes_value = {}, {}
  for _, list in ipairs({ seed.global_options, seed.method_options }) do
    for _, o in ipairs(list) do
      for _, spelling in ipairs({ o.long or false, o.short or false }) do
        if spelling then
          names[#names + 1] = spelling
          takes_value[spelling] = o.arg ~= nil
        end
      end
    end
  end
  return names, takes_value
end

-- The API's methods by their command names (`cli` in the generated table), sorted.
local function api_methods()
  local names = {}
  for _, m in pairs(require("healthcare.api").table().methods) do names[#names + 1] = m.cli end
  table.sort(names)
  return names
end

-- A friendly command's options (not the hidden, deprecated spellings), and which take a value.
local function command_options(name)
  local p = require("healthcare.cli." .. name).parser()
  p:get_help() -- argparse adds -h/--help to its list when help is first asked for
  local names, takes_value = {}, {}
  for _, o in ipairs(p._options) do
    if not o._hidden then
      for _, alias in ipairs(o._public_aliases or o._aliases) do
        names[#names + 1] = alias
        takes_value[alias] = (o._maxargs or 0) > 0
      end
    end
  end
  return names, takes_value
end

--- The candidates after `words` (the words before the one being completed, the program's name
--- left out): a list of strings, empty when a file name or a value is what fits.
function M.candidates(words)
  local seed_names, seed_takes_value = seed_options()
  -- Global options of the seed form may stand before the command.
  local i = 1
  while words[i] and words[i]:sub(1, 1) == "-" do
    if seed_takes_value[words[i]] then
      if i == #words then return {} end
      i = i + 1
    end
    i = i + 1
  end
  local first = words[i]
  if first == nil then
    local out = commands.names()
    if i == 1 then
      out[#out + 1] = "--help"
      out[#out + 1] = "--version"
    else
      for _, n in ipairs(seed_names) do out[#out + 1] = n end
    end
    return out
  end
  local names, takes_value = seed_names, seed_takes_value
  if commands.FRIENDLY[first] then names, takes_value = command_options(first) end
  if takes_value[words[#words]] then return {} end
  if first == seed.COMMAND and i == #words then
    local out = api_methods()
    for _, n in ipairs(names) do out[#out + 1] = n end
    return out
  end
  if first == seed.COMMAND or commands.FRIENDLY[first] then return names end
  return {}
end

--- `healthcare __complete <words>...`: the candidates, one per line. Exit 0.
function M.main(argv)
  local words = {}
  for i = 2, #argv do words[#words + 1] = argv[i] end
  local out = M.candidates(words)
  if #out > 0 then io.stdout:write(table.concat(out, "\n"), "\n") end
  return 0
end

return M
