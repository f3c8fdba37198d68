-- SPDX-License-Identifier: MIT
-- What the friendly commands (store, search, retrieve, delete) share: the <store> argument and
-- the credential, endpoint and TLS options, written once; turning them into a store object; the
-- exit code for an error value; writing files at paths the user named; and small output helpers.
local lfs = require "lfs"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local retry = require "healthcare.retry"
local dicomweb = require "healthcare.dicomweb"
local util = require "healthcare.util"
local errors = require "healthcare.errors"

local M = {}

M.EXIT_OK, M.EXIT_FAILED, M.EXIT_USAGE = 0, 1, 2

-- The environment variable that may hold user:password: never an option's value, which ps shows
-- to every user (a process's environment is readable by its own user and root only).
M.BASIC_AUTH_ENV = "HEALTHCARE_BASIC_AUTH"

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

--- Adds the <store> argument and the options that reach a store to an argparse parser.
function M.add_store_options(p)
  p:argument("store", "A dicomStore name (projects/P/locations/L/datasets/D/dicomStores/S, through the "
    .. "endpoint) or a DICOMweb base URL (e.g. http://127.0.0.1:8042/dicom-web).")
  return M.add_client_options(p)
end

--- Adds the options that make a client (credentials, endpoint, TLS) to an argparse parser.
function M.add_client_options(p)
  p:option("--endpoint", "API endpoint (default $HEALTHCARE_ENDPOINT, else " .. healthcare.DEFAULT_ENDPOINT .. ").")
  p:option("--credentials", "An Application Default Credentials JSON file (service_account, authorized_user, "
    .. "impersonated_service_account, external_account, external_account_authorized_user).")
  p:option("--impersonate-service-account", "Act as this service account (EMAIL), with a token asked of IAM "
    .. "Credentials with the credential given (as gcloud's flag)."):argname("<email>")
  p:option("--proxy", "HTTP(S) proxy URL for every request (instead of the *_proxy variables; '' for none).")
    :argname("<url>")
  p:option("--access-token", "Bearer token to send (prefer --credentials: tokens expire).")
  p:option("--basic-auth-file", "HTTP Basic authentication for a DICOMweb server (e.g. Orthanc with "
    .. "AuthenticationEnabled): a file of one line user:password, yours and writable by you alone. "
    .. "Else $" .. M.BASIC_AUTH_ENV .. "=user:password when no other credential is given and the store is a URL.")
    :argname("<file>")
  p:option("--scope", "OAuth scope (repeatable).", nil, nil, 1, "*"):count("*")
  p:option("--ca-file", "CA certificates (PEM) to verify the server with.")
  p:flag("--insecure", "Allow insecure transport: do not verify TLS certificates, and let a credential "
    .. "go to a plain-http server through a proxy (testing only).")
  p:flag("--no-token-cache", "Do not keep tokens between runs.")
  p:flag("--debug", "Print request and response lines (secrets redacted) on standard error.")
  return p
end

--- Adds --retry-max-attempts to a command whose requests are reads (search, retrieve): the
--- client's retry.max_attempts (client_options), so every request of the command has it.
function M.add_retry_option(p)
  return p:option("--retry-max-attempts", string.format("Attempts before giving up after 408, 429, 5xx or a "
    .. "dropped connection, with a growing wait between them (a retrieve goes on from what arrived, and counts "
    .. "the attempts in a row that bring nothing), default %d.",
    retry.DEFAULTS.max_attempts), nil, function(s)
      local n = s:match("^%d+$") and tonumber(s)
      if not n or n < 1 or n > 1000 then return nil, "expected a whole number from 1 to 1000, got '" .. s .. "'" end
      return n
    end):argname("<n>")
end

--- on_retry(err, seconds, attempt) for a read's options: says on standard error why the
--- command waits and what comes next, after clearing the progress line when one is shown.
function M.retry_teller(say, progress_shown)
  return function(err, seconds, attempt)
    if progress_shown then io.stderr:write("\r\27[K") end
    say("%s; trying again in %.1f s (attempt %d)", tostring(err), seconds, attempt)
  end
end

--- p:option(name, ...) (argparse), also taking the older spellings of the flag that `deprecated`
--- lists ({ old, current } pairs): hidden from --help's list of options, named in its epilog
--- (deprecated_epilog). Returns the option.
function M.option(p, deprecated, name, ...)
  local o = p:option(name, ...)
  for _, d in ipairs(deprecated) do
    if d[2] == name then o:hidden_name(d[1]) end
  end
  return o
end

--- The --help paragraph naming the deprecated spellings ({ old, current } pairs) of a command.
function M.deprecated_epilog(deprecated)
  local names = {}
  for i, d in ipairs(deprecated) do names[i] = d[1] .. " (now " .. d[2] .. ")" end
  return "Deprecated spellings, still taken until the release after 0.1.0: " .. table.concat(names, ", ") .. "."
end

--- healthcare.dicom_store(target, copts) for a command (the seed form's too): the store, which
--- owns its client, or nil and the exit code after say(...) told why. Nothing is sent: a
--- dicomStore name is checked for its shape only.
function M.dicom_store_or_say(target, copts, say)
  local store, err = healthcare.dicom_store(target, copts)
  if not store then
    say("%s", tostring(err))
    return nil, M.exit_code_for(err)
  end
  return store
end

--- The store for parsed arguments `a` (from a parser given add_store_options), as
--- dicom_store_or_say.
function M.open_store_or_say(a, say)
  local copts, err = M.client_options(a)
  if not copts then
    say("%s", tostring(err))
    return nil, M.exit_code_for(err)
  end
  return M.dicom_store_or_say(a.store, copts, say)
end

-- The most bytes of a --basic-auth-file: one line.
local MAX_BASIC_AUTH_FILE = 4096

--- basic_auth = { user, password } from `text`, one line user:password (a final line break
--- taken off), split at the first ':' (RFC 7617: a user-id has none); `where` names the source
--- in the usage error, which never shows the text.
function M.parse_basic_auth(text, where)
  local line = text:gsub("\r?\n$", "")
  local user, password = line:match("^([^:]*):(.*)$")
  if not user or user == "" or core.has_ctl(line) then
    return nil, errors.new("usage", where .. " must hold one line user:password, with a user")
  end
  return { user = user, password = password }
end

-- The flags that each name the credential (healthcare.auth.CREDENTIAL_OPTIONS'), as parsed
-- argument and flag, in the order a refusal names them.
local CREDENTIAL_FLAGS = { { "basic_auth_file", "--basic-auth-file" }, { "credentials", "--credentials" },
  { "access_token", "--access-token" } }

--- The usage error for two credentials given together, named as the user typed them (never
--- their values): "--credentials and --access-token cannot be used together: ...". The seed form's
--- (healthcare.cli.call) and the friendly commands' refusals, in one wording.
function M.credentials_together(first, second)
  return errors.new("usage", first .. " and " .. second .. " cannot be used together: a request carries one "
    .. "credential")
end

-- nil, or a usage error naming two credential flags of parsed arguments `a` given together
-- (healthcare.new would name its options, which the command's user never typed).
local function credential_flags_refusal(a)
  local first
  for _, f in ipairs(CREDENTIAL_FLAGS) do
    if a[f[1]] then
      if first then return M.credentials_together(first, f[2]) end
      first = f[2]
    end
  end
  if a.basic_auth_file and a.impersonate_service_account then
    return M.credentials_together("--basic-auth-file", "--impersonate-service-account")
  end
  return nil
end

-- The basic_auth option for parsed arguments `a`: from --basic-auth-file, else from
-- $HEALTHCARE_BASIC_AUTH when no credential flag is given: a flag wins over the environment, as
-- gcloud's flags over its properties and curl's -u over .netrc (a variable set in the shell must
-- not turn a command given --credentials into a usage error). nil when neither; nil, err.
local function basic_auth_option(a)
  if a.basic_auth_file then
    local where = "--basic-auth-file '" .. a.basic_auth_file .. "'"
    local text, err = require("healthcare.auth.credentials").read_trusted(a.basic_auth_file, where,
      MAX_BASIC_AUTH_FILE)
    if not text then return nil, err end
    return M.parse_basic_auth(text, where)
  end
  -- The variable is a DICOMweb server's password: for a store given by URL only, never for a
  -- Google name (nor a command that has none), whose requests go to Google's endpoint.
  local env = os.getenv(M.BASIC_AUTH_ENV)
  local by_url = type(a.store) == "string" and a.store:lower():match("^https?://") ~= nil
  if env and env ~= "" and by_url and not (a.access_token or a.credentials or a.impersonate_service_account) then
    return M.parse_basic_auth(env, "$" .. M.BASIC_AUTH_ENV)
  end
  return nil
end

--- healthcare.new's options from parsed arguments `a` (a parser given add_client_options), or
--- nil, err (two credential flags, a --basic-auth-file that cannot be read or is refused).
function M.client_options(a)
  local refusal = credential_flags_refusal(a)
  if refusal then return nil, refusal end
  local basic, berr = basic_auth_option(a)
  if berr then return nil, berr end
  return {
    basic_auth = basic,
    endpoint = a.endpoint, credentials = a.credentials, access_token = a.access_token,
    scopes = #a.scope > 0 and a.scope or nil, ca_file = a.ca_file, insecure = a.insecure or nil,
    token_cache = not a.no_token_cache, debug = a.debug or nil,
    impersonate = a.impersonate_service_account, proxy = a.proxy,
    retry = a.retry_max_attempts and { max_attempts = a.retry_max_attempts } or nil,
  }
end

--- Parses argv (the whole command line, argv[1] being the command's name) with parser p.
--- Returns the arguments, or nil and the exit code after saying what is wrong.
function M.parse(p, argv)
  local args = {}
  for i = 2, #argv do args[i - 1] = argv[i] end
  local ok, a = p:pparse(args)
  if not ok then
    -- argparse's message may carry its suggestion on a line of its own ("Did you mean ...?"):
    -- each line made printable, the line breaks kept.
    local lines = {}
    for line in (a .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = M.printable(line) end
    io.stderr:write(p._name, ": ", table.concat(lines, "\n"), "\n", p:get_usage(), "\n")
    return nil, M.EXIT_USAGE
  end
  return a
end

--- A complainer for one command: say("x %s", y) writes "healthcare <cmd>: x y" on stderr.
function M.sayer(name)
  return function(fmt, ...)
    io.stderr:write(name, ": ", string.format(fmt, ...), "\n")
  end
end

function M.human_bytes(n)
  local units = { "B", "KB", "MB", "GB", "TB" }
  local i = 1
  while n >= 1000 and i < #units do n, i = n / 1000, i + 1 end
  if i == 1 then return string.format("%d %s", math.floor(n), units[i]) end
  return string.format("%.1f %s", n, units[i])
end

--- Text from a server or the file system made safe for a terminal, once, where it is written:
--- control characters, ESC and CR/LF shown escaped (\x1b, \n, \r), see util.printable. Error
--- values need none: tostring(err) does it.
M.printable = util.printable

--- Splits "<study>[/<series>[/<instance>]]" into its UIDs, or nil and a message.
function M.split_target(s)
  local uids = {}
  for part in (s .. "/"):gmatch("([^/]*)/") do uids[#uids + 1] = part end
  if #uids > 3 then
    return nil, string.format("'%s' has more than three parts: expected <study>[/<series>[/<instance>]]",
      M.printable(s))
  end
  for _, uid in ipairs(uids) do
    if not dicomweb.valid_uid(uid) then
      return nil, string.format("invalid UID '%s' in '%s': expected <study>[/<series>[/<instance>]], each "
        .. "digits and dots, at most %d characters", M.printable(uid), M.printable(s), dicomweb.MAX_UID)
    end
  end
  return { study = uids[1], series = uids[2], instance = uids[3] }
end

local LEVELS = { "study", "series", "instance" }

--- "study 1.2", "series 1.2/3.4", "instance 1.2/3.4/5.6"
function M.describe_target(t)
  local uids = { t.study, t.series, t.instance }
  return LEVELS[#uids] .. " " .. table.concat(uids, "/")
end

--- Whether the store answers at all: a one-result study search. A 404 there means the store
--- itself does not exist, so a 404 for a UID is a usage error (2), not a missing object (1).
function M.store_exists(store)
  local results, err = store:search_studies({ limit = 1 })
  if results then
    local _
    _, err = results:all()
  end
  return not (err and err.kind == "http" and err.http_status == 404)
end

--- The exit code for an error of a call that names UIDs: a 404 is a missing object (1) when
--- the store exists, a missing store (2) otherwise (err.not_found says which when the store
--- method found out; else the store is asked).
function M.exit_code_for_uid(store, err)
  if err.kind == "http" and err.http_status == 404 then
    if err.not_found then return err.not_found == "store" and M.EXIT_USAGE or M.EXIT_FAILED end
    return M.store_exists(store) and M.EXIT_FAILED or M.EXIT_USAGE
  end
  return M.exit_code_for(err)
end

--- Whether out, a file the user named for an answer (-o; nil or "-" is standard output), can be
--- written once the answer is in: not a directory, in a directory this user may create files
--- in, created with its parents if missing (util.make_dirs). Checked before any request, so a
--- typo costs no upload; the file itself is neither created nor opened, so a call that fails
--- leaves an existing file as it was. Returns true, or nil and why not.
function M.check_output(out)
  if out == nil or out == "-" then return true end
  if lfs.attributes(out, "mode") == "directory" then
    return nil, M.printable(out) .. " is a directory"
  end
  local dir = util.parent_dir(out)
  local made, why = util.make_dirs(dir)
  if not made then return nil, M.printable(why) end
  local ok, err = core.dir_writable(dir)
  if not ok then return nil, M.printable(err.message) end
  return true
end

--- Writes data (a string) as the file out the user named, or to standard output for nil or "-".
--- The one way the command writes such a file: a temporary file in the same directory renamed
--- into place (core.write_file), so a failure or an interrupt leaves what was there as it was
--- and no temporary file behind, and a symbolic link at out is replaced, never written through.
--- Returns true, or nil and why not.
function M.write_output(out, data)
  if out == nil or out == "-" then
    io.stdout:write(data)
    return true
  end
  local ok, err = core.write_file(out, data)
  if not ok then return nil, M.printable(err.message) end
  return true
end

return M
