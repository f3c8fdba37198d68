-- SPDX-License-Identifier: MIT
-- The `healthcare` command. Two forms:
--   the seed's:   healthcare projects locations-datasets-dicom-stores-<method> <parent> <dicom-web-path> ...
--   the friendly: healthcare store|search|retrieve|delete <store> ... (see healthcare.cli.<command>)
-- Exit codes: 0 all done, 1 something failed, 2 usage or configuration error.
local cjson = require "cjson.safe"
local healthcare = require "healthcare"
local core = require "healthcare.core"
local dicomweb = require "healthcare.dicomweb"
local errors = require "healthcare.errors"
local seed = require "healthcare.cli.seed"
local help = require "healthcare.cli.help"
local common = require "healthcare.cli.common"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = common.EXIT_OK, common.EXIT_FAILED, common.EXIT_USAGE

-- The friendly commands, each a module healthcare.cli.<name> with main(argv).
M.COMMANDS = { store = true, search = true, retrieve = true, delete = true }

local function say(fmt, ...)
  io.stderr:write("healthcare: ", string.format(fmt, ...), "\n")
end

M.exit_code_for = common.exit_code_for

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

local function run_seed(cmd)
  if cmd.action == "help" then
    io.stdout:write(help.text(cmd.help_topic), "\n")
    return M.EXIT_OK
  end
  -- Check the output first: a mistake in -o should not cost an upload. It is written only
  -- once the answer is in, so a failed call leaves an existing file as it was.
  local fine, why = common.check_output(cmd.output)
  if not fine then
    say("cannot write the output: %s", why)
    return M.EXIT_USAGE
  end
  local client, cerr = healthcare.new {
    endpoint = cmd.endpoint,
    scopes = cmd.scopes,
    credentials = cmd.credentials,
    token_cache = cmd.token_cache,
    debug = cmd.debug or nil,
    timeout = cmd.timeout,
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
    say("%s", tostring(err))
    return M.exit_code_for(err)
  end
  local text = res.json and (pretty(res.json) .. "\n")
    or (res.body:sub(-1) == "\n" and res.body or res.body .. "\n")
  local wrote, werr = common.write_output(cmd.output, text)
  if not wrote then
    say("cannot write the output: %s", werr)
    return M.EXIT_FAILED
  end
  if not res.ok then
    say("the server did not store every instance (HTTP %d)", res.status)
    return M.EXIT_FAILED
  end
  return M.EXIT_OK
end

-- What a read or delete method asks for, by kind.
local ACCEPT = {
  search = "application/dicom+json",
  metadata = "application/dicom+json",
  retrieve = 'multipart/related; type="application/dicom"; transfer-syntax=*',
  rendered = "image/jpeg",
  frames = 'multipart/related; type="application/octet-stream"; transfer-syntax=*',
  delete = "application/json",
}
local BINARY = { retrieve = true, rendered = true, frames = true }
-- An answer written to standard output is held in memory first (-o FILE streams instead).
local MAX_STDOUT_BYTES = 1024 * 1024 * 1024

-- JSON answers, pretty-printed; an empty answer (204) is an empty list, or {} for a delete.
local function json_text(kind, res)
  local body = res.body or ""
  if body:match("^%s*$") then return kind == "delete" and "{}\n" or "[]\n" end
  local doc = cjson.decode(body)
  if doc == nil then return nil end
  if type(doc) == "table" and next(doc) == nil then
    return (body:match("^%s*%[") and "[]" or "{}") .. "\n"
  end
  return pretty(doc) .. "\n"
end

-- The read and delete methods of the seed form: one raw call, its answer printed or written.
local function run_call(cmd)
  local m = seed.find_method(cmd.method)
  local ok, perr = dicomweb.check_parent(cmd.parent)
  if not ok then
    say("%s", tostring(perr))
    return M.EXIT_USAGE
  end
  local out = cmd.output ~= "-" and cmd.output or nil
  if out then
    local fine, why = common.check_output(out)
    if not fine then
      say("cannot write the output: %s", why)
      return M.EXIT_USAGE
    end
  end
  local client, cerr = healthcare.new {
    endpoint = cmd.endpoint, scopes = cmd.scopes, credentials = cmd.credentials,
    token_cache = cmd.token_cache, debug = cmd.debug or nil, timeout = cmd.timeout,
  }
  if not client then
    say("%s", tostring(cerr))
    return M.exit_code_for(cerr)
  end
  local store = assert(client:dicom_store(cmd.parent))
  local binary = BINARY[m.kind]
  -- Ctrl-C or SIGTERM abandons the transfer (the sink removes its temporary file, so an
  -- existing -o file stays as it was) and exits 130 or 143.
  core.trap_interrupts()
  -- A search's query goes as typed (seed.check_path checked it); -p parameters follow it.
  -- JSON answers are asked for gzip-compressed (decoded as they come, within the transport's
  -- caps); binary ones as they are: an encoded answer to those is refused.
  local res, err = client:send {
    method = m.http_method,
    url = store.base_url .. "/" .. cmd.dicom_web_path .. (cmd.query and ("?" .. cmd.query) or ""),
    headers = { "Accept: " .. ACCEPT[m.kind] },
    query = cmd.params,
    sink = binary and out and { file = out } or nil,
    max_response_bytes = binary and not out and MAX_STDOUT_BYTES or nil,
    on_progress = function() return not core.interrupted() end,
    compressed = not binary,
  }
  local sig = core.interrupted()
  core.trap_interrupts(false)
  if sig then
    client:close()
    say("interrupted%s", res and res.file and "" or "; nothing written")
    return 128 + sig
  end
  if res and (res.status < 200 or res.status > 299) then
    res, err = nil, errors.from_response(res, m.what)
  end
  if not res then
    say("%s", tostring(err))
    local code = m.kind == "search" and M.exit_code_for(err) or common.exit_code_for_uid(store, err)
    client:close()
    return code
  end
  client:close()
  local werr
  ok = true
  if binary then
    if res.file then
      io.stderr:write(string.format("wrote %d bytes (%s) to %s\n", res.bytes or 0,
        common.printable(res.headers["content-type"] or "no Content-Type"), common.printable(res.file)))
    else
      -- a transport without the streaming sink: the answer came in memory
      ok, werr = common.write_output(out, res.body)
      if ok and out then
        io.stderr:write(string.format("wrote %d bytes (%s) to %s\n", #res.body,
          common.printable(res.headers["content-type"] or "no Content-Type"), common.printable(out)))
      end
    end
  else
    local text = json_text(m.kind, res)
    if not text then
      say("%s: the answer (HTTP %d, %s) is not JSON", m.what, res.status,
        common.printable(res.headers["content-type"] or "no Content-Type"))
      return M.EXIT_FAILED
    end
    ok, werr = common.write_output(out, text)
  end
  if not ok then
    say("cannot write the output: %s", werr)
    return M.EXIT_FAILED
  end
  return M.EXIT_OK
end

--- Runs the command with argv (a list of strings, as `arg`) and returns the exit code.
function M.main(argv)
  local args = {}
  for i = 1, #(argv or {}) do args[i] = argv[i] end
  local ok, code = xpcall(function()
    if M.COMMANDS[args[1]] then
      return require("healthcare.cli." .. args[1]).main(args)
    end
    local cmd, err = seed.parse(args)
    if not cmd then
      say("%s", common.printable(err))
      io.stderr:write("Try 'healthcare --help'.\n")
      return M.EXIT_USAGE
    end
    if cmd.action == "call" and not cmd.body then return run_call(cmd) end
    return run_seed(cmd)
  end, debug.traceback)
  if not ok then
    say("internal error: %s", common.printable(code))
    return M.EXIT_FAILED
  end
  io.stdout:flush()
  return code
end

return M
