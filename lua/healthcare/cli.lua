-- SPDX-License-Identifier: MIT
-- The `healthcare` command. Two forms:
--   the seed's:   healthcare projects locations-datasets-dicom-stores-studies-store-instances ...
--   the friendly: healthcare store <store> <file-or-dir>... (see healthcare.cli.store)
-- Exit codes: 0 all stored, 1 something failed, 2 usage or configuration error.
local cjson = require "cjson.safe"
local healthcare = require "healthcare"
local seed = require "healthcare.cli.seed"
local help = require "healthcare.cli.help"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = 0, 1, 2

local function say(fmt, ...)
  io.stderr:write("healthcare: ", string.format(fmt, ...), "\n")
end

-- Answers that mean the command line or the configuration is wrong, not the data.
local CONFIG_HTTP = { [401] = true, [403] = true, [404] = true }

--- The exit code for an error value: usage and configuration mistakes (bad arguments, a file
--- named on the command line that cannot be read, no or wrong credentials, no such store) are
--- 2; everything else that failed is 1.
function M.exit_code_for(err)
  if err.kind == "usage" or err.kind == "auth" or err.kind == "io" then return M.EXIT_USAGE end
  if err.kind == "http" and CONFIG_HTTP[err.http_status] then return M.EXIT_USAGE end
  return M.EXIT_FAILED
end

-- JSON with sorted keys and two-space indentation, for people reading the output. cjson
-- encodes the scalars (escaping included); only the layout is ours.
local function scalar(v)
  -- Debian's lua-cjson escapes "/" as "\/": valid JSON, but URLs should read as URLs.
  return (cjson.encode(v):gsub("\\/", "/"))
end

local function pretty(v, indent)
  indent = indent or ""
  if type(v) ~= "table" then return scalar(v) end
  local inner = indent .. "  "
  if next(v) == nil then
    return getmetatable(v) == cjson.empty_array_mt and "[]" or "{}"
  end
  if #v > 0 then
    local parts = {}
    for i = 1, #v do parts[i] = inner .. pretty(v[i], inner) end
    return "[\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local parts = {}
  for i, k in ipairs(keys) do
    parts[i] = inner .. scalar(k) .. ": " .. pretty(v[k], inner)
  end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end
M.pretty = pretty

-- Copies standard input to a temporary file in chunks so it can be sent with a length (and
-- re-sent on a retry) without holding it in memory.
local function stdin_to_file()
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  while true do
    local chunk = io.stdin:read(1024 * 1024)
    if not chunk then break end
    f:write(chunk)
  end
  f:close()
  return path
end

local function open_output(out)
  if out == nil or out == "-" then return io.stdout, false end
  local f, err = io.open(out, "wb")
  if not f then return nil, err end
  return f, true
end

local function run_seed(cmd)
  if cmd.action == "help" then
    io.stdout:write(help.text(cmd.help_topic), "\n")
    return M.EXIT_OK
  end
  -- Open the output first: a mistake in -o should not cost an upload.
  local out, oerr = open_output(cmd.output)
  if not out then
    say("cannot write the output: %s", oerr)
    return M.EXIT_USAGE
  end
  local client, cerr = healthcare.new {
    endpoint = cmd.endpoint,
    scopes = cmd.scopes,
    credentials = cmd.credentials,
    token_cache = cmd.token_cache,
    debug = cmd.debug or nil,
  }
  if not client then
    say("%s", tostring(cerr))
    return M.exit_code_for(cerr)
  end
  local body, tmp = cmd.body, nil
  if type(body.data) == "table" and body.data.stdin then
    tmp = stdin_to_file()
    body = { content_type = body.content_type, data = { file = tmp } }
  end
  local res, err = client:store_instances(cmd.parent, cmd.dicom_web_path, body, cmd.params)
  if tmp then os.remove(tmp) end
  client:close()
  if not res then
    if out ~= io.stdout then out:close() end
    say("%s", tostring(err))
    return M.exit_code_for(err)
  end
  if res.json then
    out:write(pretty(res.json), "\n")
  else
    out:write(res.body)
    if res.body:sub(-1) ~= "\n" then out:write("\n") end
  end
  if out ~= io.stdout then out:close() end
  if not res.ok then
    say("the server did not store every instance (HTTP %d)", res.status)
    return M.EXIT_FAILED
  end
  return M.EXIT_OK
end

--- Runs the command with argv (a list of strings, as `arg`) and returns the exit code.
function M.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local ok, code = xpcall(function()
    if args[1] == "store" then
      return require("healthcare.cli.store").main(args)
    end
    local cmd, err = seed.parse(args)
    if not cmd then
      say("%s", err)
      io.stderr:write("Try 'healthcare --help'.\n")
      return M.EXIT_USAGE
    end
    return run_seed(cmd)
  end, debug.traceback)
  if not ok then
    say("internal error: %s", tostring(code))
    return M.EXIT_FAILED
  end
  io.stdout:flush()
  return code
end

return M
