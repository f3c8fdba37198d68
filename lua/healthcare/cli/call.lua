-- SPDX-License-Identifier: MIT
-- The seed form's calls (healthcare.cli.seed parses them): `healthcare projects
-- locations-datasets-dicom-stores-<method> <parent> <dicom-web-path> ...`. StoreInstances goes
-- through store:store_instances; the read and delete methods through store:fetch, the store's
-- raw request: the store picks the Accept value and the content coding, and its answer comes back
-- as it was sent, to be printed (JSON answers, pretty) or written byte for byte (-o FILE streams
-- it to a temporary file renamed over FILE once whole). Every other method of the API
-- (api_method) goes through client:call, client:pages (--all) and client:wait (--wait).
local api_send = require "healthcare.api.send"
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local params = require "healthcare.params"
local retry = require "healthcare.retry"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"
local seed = require "healthcare.cli.seed"
local cli_wait = require "healthcare.cli.wait"

local M = {}

local say = common.sayer("healthcare")

-- An answer written to standard output is held in memory first (-o FILE streams instead).
M.MAX_STDOUT_BYTES = 1024 * 1024 * 1024

-- The standard parameters that carry a credential, in the order a refusal names them: a request
-- whose query holds one goes without the client's credential (healthcare.client authorizes only a
-- request that carries none), so --credentials or --impersonate-service-account beside one would be
-- dropped without a word.
local CREDENTIAL_PARAMS = { "access_token", "oauth_token", "key" }

-- The client options of the seed form's command line (healthcare.cli.seed's cmd), or nil and a usage
-- error naming two credentials given together, as the friendly commands refuse two credential flags:
-- --credentials with a -p access-token, oauth-token or key, or two of those. (An explicit credential
-- wins over GOOGLE_APPLICATION_CREDENTIALS, a default, as everywhere.) With
-- --impersonate-service-account, the -p token or key is the credential impersonation goes over (as
-- the friendly commands' --access-token is): taken out of cmd.params, so that the requests carry
-- the impersonated token instead.
local function client_options(cmd)
  local given = {}
  if cmd.credentials then given[1] = "--credentials" end
  for _, wire in ipairs(CREDENTIAL_PARAMS) do
    if cmd.params[wire] ~= nil then given[#given + 1] = "-p " .. params.to_cli(wire) end
  end
  if #given > 1 then return nil, common.credentials_together(given[1], given[2]) end
  local copts = { endpoint = cmd.endpoint, scopes = cmd.scopes, credentials = cmd.credentials,
    token_cache = cmd.token_cache, debug = cmd.debug or nil, timeout = cmd.timeout,
    impersonate = cmd.impersonate, proxy = cmd.proxy, ca_file = cmd.ca_file, insecure = cmd.insecure }
  if cmd.impersonate then
    copts.access_token = cmd.params.access_token or cmd.params.oauth_token
    copts.api_key = cmd.params.key
    for _, wire in ipairs(CREDENTIAL_PARAMS) do cmd.params[wire] = nil end
  end
  return copts
end

-- The store of the call's <parent> (a store of its own, which store:close() closes with its client),
-- once <parent> and the output are known to be right: a mistake there should not cost a request.
-- out: the -o file, nil for standard output. Returns the store, or nil and the exit code after
-- saying why.
local function open_store(cmd, out)
  local ok, perr = names.check_parent(cmd.parent)
  if not ok then
    say("%s", tostring(perr))
    return nil, common.EXIT_USAGE
  end
  -- Written only once the answer is in, so a failed call leaves an existing file as it was.
  local fine, why = common.check_output(out)
  if not fine then
    say("cannot write the output: %s", why)
    return nil, common.EXIT_USAGE
  end
  local copts, cerr = client_options(cmd)
  if not copts then
    say("%s", tostring(cerr))
    return nil, common.exit_code_for(cerr)
  end
  return common.dicom_store_or_say(cmd.parent, copts, say)
end

-- on_progress of the calls: a trapped Ctrl-C or SIGTERM (core.trap_interrupts) stops the transfer.
local function going_on()
  return not core.interrupted()
end

-- Copies standard input to a private temporary file (os.tmpname: 0600) in chunks so it can be sent
-- with a length (and re-sent on a retry) without holding it in memory. Returns its path, or nil and
-- an error (the copy removed: it may hold patient data).
local function stdin_to_file()
  local path = os.tmpname()
  local f, why = io.open(path, "wb")
  if not f then
    os.remove(path)
    return nil, errors.new("io", "cannot copy standard input: " .. tostring(why))
  end
  while not core.interrupted() do
    local chunk, rerr = io.stdin:read(1024 * 1024)
    if not chunk and not rerr then break end
    local ok, werr
    if chunk then ok, werr = f:write(chunk) end
    if not ok then
      f:close()
      os.remove(path)
      return nil, errors.new("io", string.format("cannot %s: %s", chunk and "copy standard input to " .. path
        or "read standard input", tostring(werr or rerr)))
    end
  end
  local closed, cerr = f:close()
  if not closed or core.interrupted() then
    os.remove(path)
    return nil, errors.new("io", "cannot copy standard input: " .. tostring(cerr or "interrupted"))
  end
  return path
end

-- send(body) with body, or with a data=@- body's copy of standard input (stdin_to_file), which is
-- removed whatever happens: an answer, a failure, an interrupt, an error raised. Returns send's
-- results, or nil and why standard input could not be copied.
local function with_body(body, send)
  if not (type(body) == "table" and type(body.data) == "table" and body.data.stdin) then return send(body) end
  local tmp, err = stdin_to_file()
  if not tmp then return nil, err end
  local ok, a, b = pcall(send, { content_type = body.content_type, data = { file = tmp } })
  os.remove(tmp)
  if not ok then error(a, 0) end
  return a, b
end

-- What the command says when Ctrl-C or SIGTERM ended a call (the caller returns 128 + sig).
local function say_interrupted(http_method)
  say("interrupted; nothing written%s", http_method ~= "GET"
    and " (the request may have reached the server)" or "")
end

-- Writes text to -o (or standard output); the exit code.
local function write_or_say(out, text)
  local ok, err = common.write_output(out, text)
  if not ok then
    say("cannot write the output: %s", err)
    return common.EXIT_FAILED
  end
  return common.EXIT_OK
end

-- Policy:run's on_wait for the seed's DICOMweb calls: common.retry_teller told the failure (an
-- answer made the error value it stands for, `what`'s) and the wait, as client:call's callers tell it.
local function wait_teller(store, what)
  local tell = common.retry_teller(say)
  return function(seconds, n, res, err)
    tell(err or errors.from_response(res, what, store.client), seconds, n + 1)
  end
end

-- Whether a StoreInstances attempt (store:store_instances' results) is worth another, and the wait
-- the server asked for: a POST goes again as client:call sends one (healthcare.api.send.retry_of),
-- after a 429 or 503, which say nothing was stored, or a failure before anything was sent.
-- store_instances makes an answer that is no DICOM result an error value: its status decides.
local post_again = api_send.retry_of("POST")
local function store_again(res, err)
  if not res and err.kind == "http" then
    return (post_again({ status = err.http_status, headers = {} })), err.retry_after
  end
  return post_again(res, err)
end

--- StoreInstances (the store-instances methods): the request value's body posted (again after a
--- 429 or 503, the wait said on standard error), the DICOM JSON answer printed pretty; another
--- answer (DICOM XML from a server that answers no JSON) written byte for byte as received.
--- Returns the exit code.
function M.store_instances(cmd)
  local store, code = open_store(cmd, cmd.output)
  if not store then return code end
  core.trap_interrupts()
  local res, err = with_body(cmd.body, function(body)
    return retry.new(nil, store.client.retry):run(function()
      return store:store_instances(cmd.dicom_web_path, body, cmd.params, { on_progress = going_on })
    end, store_again, nil, nil, wait_teller(store, "StoreInstances"))
  end)
  local sig = core.interrupted()
  core.trap_interrupts(false)
  store:close()
  if sig then
    say_interrupted("POST")
    return 128 + sig
  end
  if not res then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  code = write_or_say(cmd.output, res.json and (json.pretty(res.json) .. "\n") or res.body)
  if code ~= common.EXIT_OK then return code end
  if not res.ok then
    say("the server did not store every instance (HTTP %d)", res.status)
    return common.EXIT_FAILED
  end
  return common.EXIT_OK
end

-- The end of a --wait: the operation's response printed when it ended without an error (exit
-- `code` of healthcare.cli.wait: 1 when its counters name failures); else `code` alone.
local function print_response(code, response, out)
  if response == nil then return code end
  local written = write_or_say(out, json.pretty(response) .. "\n")
  return code ~= common.EXIT_OK and code or written
end

-- JSON answers, pretty-printed; an empty answer (204) is an empty list, or {} for a delete.
local function json_text(kind, res)
  local body = res.body or ""
  if body:match("^%s*$") then return kind == "delete" and "{}\n" or "[]\n" end
  local doc = json.decode(body)
  if doc == nil then return nil end
  if type(doc) == "table" and next(doc) == nil then
    return (body:match("^%s*%[") and "[]" or "{}") .. "\n"
  end
  return json.pretty(doc) .. "\n"
end

local function content_type(res)
  return common.printable(res.headers["content-type"] or "no Content-Type")
end

-- Prints or writes a read or delete method's answer (a 2xx); the exit code.
local function write_answer(m, res, out)
  if media.JSON_KINDS[m.kind] then
    local text = json_text(m.kind, res)
    if not text then
      say("%s: the answer (HTTP %d, %s) is not JSON", m.what, res.status, content_type(res))
      return common.EXIT_FAILED
    end
    return write_or_say(out, text)
  end
  if res.file then
    io.stderr:write(string.format("wrote %d bytes (%s) to %s\n", res.bytes or 0, content_type(res),
      common.printable(res.file)))
    return common.EXIT_OK
  end
  -- to standard output, or a transport without the streaming sink: the answer came in memory
  local code = write_or_say(out, res.body)
  if code == common.EXIT_OK and out then
    io.stderr:write(string.format("wrote %d bytes (%s) to %s\n", #res.body, content_type(res),
      common.printable(out)))
  end
  return code
end

-- One attempt at a time: fetch's own attempts go on without a word; the command's say each wait.
local ONE_ATTEMPT = { max_attempts = 1 }

-- store:fetch of the method's path, sent again as fetch sends it (healthcare.api.send.retry_of of
-- the verb, the client's retry policy), each wait said on standard error; Ctrl-C or SIGTERM
-- abandoning the transfer (the sink removes its temporary file, so an existing -o file stays as it
-- was) or the wait. Returns res, err and the signal.
local function fetch(store, m, cmd, out)
  local binary = not media.JSON_KINDS[m.kind]
  core.trap_interrupts()
  local res, err = retry.new(nil, store.client.retry):run(function()
    return store:fetch(cmd.dicom_web_path, {
      method = m.http_method, query = cmd.query, params = cmd.params,
      to = binary and out or nil,
      max_bytes = binary and not out and M.MAX_STDOUT_BYTES or nil,
      on_progress = going_on, retry = ONE_ATTEMPT,
    })
  end, api_send.retry_of(m.http_method), nil, nil, wait_teller(store, m.what))
  if not res and not out and (err.status == "response_too_large" or err.status == "too_large") then
    err.message = string.format("%s: the answer is larger than %.0f bytes, the most the command holds in memory "
      .. "for standard output; write it to a file with -o FILE, which streams it", m.what, M.MAX_STDOUT_BYTES)
  end
  local sig = core.interrupted()
  core.trap_interrupts(false)
  return res, err, sig
end

local wait_for

-- A seed delete with --wait: the Operation it answered followed to its end (wait_for), the
-- operation's response printed. Closes the store. Returns the exit code.
local function wait_for_delete(store, m, cmd, res, out)
  local op = json.decode(res.body or "")
  if type(op) ~= "table" or type(op.name) ~= "string" then
    store:close()
    say("%s: the answer (HTTP %d, %s) is not an Operation to wait for", m.what, res.status, content_type(res))
    return common.EXIT_FAILED
  end
  local code, response = wait_for(store.client, op, cmd, "delete")
  store:close()
  return print_response(code, response, out)
end

--- The read and delete methods: one request, its answer printed or written. Returns the exit code.
function M.read_or_delete(cmd)
  local m = seed.find_method(cmd.method)
  local out = cmd.output ~= "-" and cmd.output or nil
  local store, code = open_store(cmd, out)
  if not store then return code end
  local res, err, sig = fetch(store, m, cmd, out)
  if sig then
    store:close()
    say("interrupted%s", res and res.file and "" or "; nothing written")
    return 128 + sig
  end
  if res and (res.status < 200 or res.status > 299) then
    res, err = nil, errors.from_response(res, m.what)
  end
  if not res then
    say("%s", tostring(err))
    code = m.kind == "search" and common.exit_code_for(err) or common.exit_code_for_uid(store, err)
    store:close()
    return code
  end
  if cmd.wait then return wait_for_delete(store, m, cmd, res, out) end
  store:close()
  return write_answer(m, res, out)
end

--------------------------------------------------------------------------------------
-- Every other method of the API
--------------------------------------------------------------------------------------

-- The answer as people read it: JSON pretty-printed, a line; an HttpBody's (http_body) other bytes
-- exactly as they came (a PDF, an image: `> file` must be the server's bytes, no newline added).
local function answer_text(answer, http_body)
  if http_body and answer.json == nil then return answer.data or "" end
  return json.pretty(http_body and answer.json or answer) .. "\n"
end

-- The file an HttpBody answer (FHIR, HL7v2 reads) is streamed to, renamed into place once whole:
-- -o FILE; nil for standard output and for the other answers.
local function stream_to(entry, cmd)
  if entry.method.response ~= "HttpBody" or cmd.output == "-" then return nil end
  return cmd.output
end

-- The standard parameters of a call, sent on the polls too (a token given with -p is the
-- credential of the polls as well).
local function standard_params(given)
  local out = {}
  for _, p in ipairs(params.list()) do
    if given[p.wire] ~= nil then out[p.wire] = given[p.wire] end
  end
  return out
end

-- --wait: the operation followed to its end as import and export follow theirs (healthcare.cli.wait:
-- a progress line, a summary, Ctrl-C stops the waiting only). `what` starts the lines. Returns the
-- exit code, and the response when the operation ended without an error.
function wait_for(client, op, cmd, what)
  return cli_wait.wait(client, op, { what = what, say = say, params = standard_params(cmd.params),
    timeout = cmd.timeout })
end

-- The client of the seed form's options, or nil, err.
local function new_client(cmd)
  local copts, err = client_options(cmd)
  if not copts then return nil, err end
  local healthcare = require "healthcare"
  return healthcare.new(copts)
end

-- A bound of client:call or client:pages that passed, said as the command's user can act on it
-- (the Lua option it names is not one of the command's). stdout_cap: the bound of an HttpBody
-- answer for standard output.
local function bound_said(err, m, stdout_cap)
  if err.option == "max_bytes" and stdout_cap then
    err.message = string.format("%s: the answer is larger than %.0f bytes, the most the command holds in memory "
      .. "for standard output; write it to a file with -o FILE, which streams it", m.id, stdout_cap)
  elseif err.option == "max_bytes" then
    err.message = err.message:gsub(" %(option max_bytes%)$", "")
  elseif err.option == "max_page_bytes" then
    err.message = err.message:gsub(" %(option max_page_bytes; or a smaller pageSize%)$",
      "; ask for smaller pages (-p page-size=N)")
  end
  return err
end

-- How a listing that stopped at --limit says so: "" when it did not.
local function more_text(more, limit)
  if not more then return "" end
  return string.format("; stopped at --limit %.0f, there are more (a larger --limit)", limit)
end

-- --all: the items of every page, printed as their page arrives (standard output) as one
-- { "<items field>": [...] }, the text json.pretty makes of the whole; at most cmd.limit items from
-- at most as many pages (a server whose pages never end). To -o FILE the text is written once
-- whole, as every answer: a failure or an interrupt leaves the file as it was. Returns the exit
-- code.
local function all_pages(client, m, cmd, out)
  local limit = cmd.limit or seed.DEFAULT_LIMIT
  local list, err = client:pages(m.id, cmd.params, { max_pages = limit, on_retry = common.retry_teller(say) })
  if not list then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  local held = {}
  local function put(text)
    if out then held[#held + 1] = text else io.stdout:write(text) end
  end
  put("{\n  " .. json.string(require("healthcare.api.pages").items_field(m)) .. ": [")
  local n, more = 0, false
  for item in list:each() do
    if n == limit then
      more = true
      break
    end
    n = n + 1
    put((n > 1 and ",\n    " or "\n    ") .. json.pretty(item, "    "))
  end
  put(n > 0 and "\n  ]\n}\n" or "]\n}\n")
  -- (list.next_page_token: max_pages ended the loop with a page still to read)
  more = more or list.next_page_token ~= nil
  local items = string.format("%d item%s", n, n == 1 and "" or "s")
  local sig = core.interrupted()
  if sig then
    say("interrupted after %s%s", items, out and "; nothing written" or "")
    return 128 + sig
  end
  if list.error then
    say("%s (after %s%s)", tostring(bound_said(list.error, m)), items, out and "; nothing written" or "")
    return common.exit_code_for(list.error)
  end
  if more then say("%s%s", items, more_text(more, limit)) end
  return out and write_or_say(out, table.concat(held)) or common.EXIT_OK
end

-- One call, or the operation it starts (waited for by the caller). Returns the answer, or nil, err.
local function run_api(client, entry, cmd)
  local m = entry.method
  local to = stream_to(entry, cmd)
  -- An HttpBody for standard output is held in memory as the seed's DICOMweb reads are.
  local stdout_cap = m.response == "HttpBody" and not to and M.MAX_STDOUT_BYTES or nil
  local answer, err = with_body(cmd.body, function(body)
    return client:call(m.id, cmd.params, body, { to = to, max_bytes = stdout_cap, on_progress = going_on,
      on_retry = common.retry_teller(say) })
  end)
  if not answer then return nil, bound_said(err, m, stdout_cap) end
  return answer
end

--- A method of the API's table (healthcare.cli.seed's kind "api"): the call, its answer printed
--- (or written to -o). Ctrl-C or SIGTERM stops it (exit 130 or 143): no -o file, no copy of
--- standard input left behind; a wait for a Retry-After is told on standard error. Returns the
--- exit code.
function M.api_method(cmd)
  local entry = seed.find_method(cmd.method)
  local out = cmd.output ~= "-" and cmd.output or nil
  local fine, why = common.check_output(out)
  if not fine then
    say("cannot write the output: %s", why)
    return common.EXIT_USAGE
  end
  local client, err = new_client(cmd)
  if not client then
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end
  core.trap_interrupts()
  if cmd.all then
    local code = all_pages(client, entry.method, cmd, out)
    core.trap_interrupts(false)
    client:close()
    return code
  end
  local answer, aerr = run_api(client, entry, cmd)
  local sig = core.interrupted()
  core.trap_interrupts(false)
  if sig then
    client:close()
    say_interrupted(entry.method.http_method)
    return 128 + sig
  end
  if answer and cmd.wait then
    local code, response = wait_for(client, answer, cmd, entry.method.id:match("[^.]+$"))
    client:close()
    return print_response(code, response, out)
  end
  client:close()
  if not answer then
    say("%s", tostring(aerr))
    return common.exit_code_for(aerr)
  end
  if stream_to(entry, cmd) then
    io.stderr:write(string.format("wrote %d bytes (%s) to %s\n", answer.bytes or 0,
      common.printable(answer.content_type or "no Content-Type"), common.printable(answer.file)))
    return common.EXIT_OK
  end
  return write_or_say(out, answer_text(answer, entry.method.response == "HttpBody"))
end

return M
