-- SPDX-License-Identifier: MIT
-- Deleting studies, series and instances: Google's proprietary DELETE on DICOMweb paths.
-- Google answers a study or series delete with a long-running Operation, which is waited for
-- through the module's one poller (healthcare.api.operation, client:wait's); an instance delete
-- (and other servers' deletes) answers at once.
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local operation = require "healthcare.api.operation"
local params = require "healthcare.params"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local search = require "healthcare.dicomweb.search"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "params", "poll_interval", "operation_timeout", "retry" }
-- Old spellings still taken (README "Lua API": deprecated): `timeout` was the operation wait,
-- where everywhere else it bounds a request.
M.ALIASES = { timeout = "operation_timeout" }
M.DEFAULT_OPERATION_TIMEOUT = operation.DEFAULT_OPERATION_TIMEOUT
M.DEFAULT_TIMEOUT = M.DEFAULT_OPERATION_TIMEOUT

-- Transport failures where the DELETE cannot have reached the server, so sending it again
-- cannot delete twice (a second DELETE of a deleted study would answer 404).
local NOT_SENT = { resolve = true, connect = true }

local LEVELS = {
  { what = "DeleteStudy", fn = "delete_study", noun = "study", keyword = "StudyInstanceUID" },
  { what = "DeleteSeries", fn = "delete_series", noun = "series", keyword = "SeriesInstanceUID" },
  { what = "DeleteInstance", fn = "delete_instance", noun = "instance", keyword = "SOPInstanceUID" },
}

-- What a JSON value that should be an Operation's name is, when it is no string (cjson's null
-- is a light userdata).
local NOT_A_NAME = { userdata = "null", number = "a number", boolean = "a boolean", table = "an object" }

-- Values quoted in error messages go in as they are: tostring(err) makes the message printable.
local shown = tostring

--- An Operation name we are willing to append to the endpoint: Google's shape, and nothing
--- that could leave the path (query, fragment, dot segments, spaces, control characters).
function M.valid_operation_name(name)
  return type(name) == "string" and name:match("^projects/[^?#]+/operations/[^/?#]+$") ~= nil
    and not name:find("[%s%c\128-\255]") and not name:find("/%.%.?/") and not name:find("/%.%.?$")
    and not name:find("//", 1, true)
end

-- Sends req, again after a wait (the module's retry policy) while the answer is a retryable
-- HTTP status, or a transport failure that `resend_transport(err)` allows, never past stop_at
-- (a core.now() time, or nil). Returns the response (any status) or nil, err; and whether an
-- attempt before the last may have deleted: a 5xx (a gateway's timeout in front of a server that
-- went on) or a failure after sending says nothing of what the server did, where a 408 or 429
-- says it did nothing.
local function send_with_retry(store, req, policy, stop_at, resend_transport)
  local in_doubt, last_in_doubt = false, false
  local res, err = policy:run(function()
    in_doubt = in_doubt or last_in_doubt
    return store.client:send(req)
  end, function(r, e)
    if r then
      last_in_doubt = r.status >= 500
      return errors.RETRYABLE_HTTP[r.status] == true, errors.retry_after(r.headers)
    end
    last_in_doubt = not NOT_SENT[e.status]
    return e.retryable and resend_transport(e), e.retry_after
  end, stop_at)
  return res, err, in_doubt
end

-- What a DELETE's answer means: the response of a delete that took, or nil, err. in_doubt: an
-- earlier attempt may have deleted (send_with_retry), so a 404 or 410 now is that deletion's.
local function delete_answer(store, res, level, named, opts, in_doubt)
  local gone = res.status == 404 or res.status == 410
  -- what was not found: the store itself, or what was asked for (err.not_found)
  local missing = (res.status == 404 or gone and in_doubt) and search.store_missing(store, opts.params)
  if gone and in_doubt and not missing then
    return { status = res.status, already_gone = true }
  end
  if res.status == 404 then
    local err = errors.from_response(res, level.what .. ": "
      .. (missing and ("store " .. store.name) or named) .. " not found")
    err.not_found = missing and "store" or level.noun
    return nil, err
  elseif res.status == 405 or res.status == 501 then
    -- Orthanc's DICOMweb plugin answers 405 with "Allow: GET,POST": deleting is not part of
    -- DICOMweb itself, and such servers delete through their own API.
    local err = errors.from_response(res, level.what)
    local allow = res.headers.allow
    err.message = string.format("%s: the server does not support deleting through DICOMweb "
      .. "(HTTP %d%s); delete the %s with the server's own tools", level.what, res.status,
      allow and (", Allow: " .. shown(allow)) or "", named)
    err.status = "UNIMPLEMENTED"
    return nil, err
  elseif res.status < 200 or res.status >= 300 then
    return nil, errors.from_response(res, level.what)
  end
  return res
end

-- The UIDs (strings already): nil, err (kind "usage") for a bad one.
local function check_uids(uids, depth)
  for i = 1, depth do
    if not names.valid_uid(uids[i]) then
      return nil, errors.new("usage", string.format(
        "invalid %s '%s': a UID is digits and dots, at most %d characters", LEVELS[i].keyword,
        shown(uids[i]), names.MAX_UID))
    end
  end
  return true
end

-- DELETE {base}/studies/{uid}[/series/{uid}[/instances/{uid}]], then the operation if any.
local function delete(store, depth, uids, opts)
  local level = LEVELS[depth]
  local ok, verr = check_uids(uids, depth)
  if not ok then return nil, verr end
  local query, qerr = params.query(opts.params)
  if not query then return nil, qerr end
  local policy = retry.new(nil, opts.retry, store.client.retry)
  local path = "studies/" .. uids[1]
  if depth >= 2 then path = path .. "/series/" .. uids[2] end
  if depth == 3 then path = path .. "/instances/" .. uids[3] end
  local url, uerr = route.url(store, "DELETE", path)
  if not url then return nil, uerr end
  -- Google answers in JSON. Orthanc's DICOMweb plugin looks at Accept before the method on
  -- series and instance paths, and answers an Accept it cannot produce with 400 instead of
  -- 405: a plain DICOMweb server gets "*/*" so that it can say it has no DELETE.
  local accept = store.parent and media.ACCEPT.delete or "*/*"
  local res, err, in_doubt = send_with_retry(store, {
    method = "DELETE", url = url, headers = { "Accept: " .. accept }, query = query,
  }, policy, nil, function(e) return NOT_SENT[e.status] end)
  local named = level.noun .. " " .. table.concat(uids, "/", 1, depth)
  if res then
    res, err = delete_answer(store, res, level, named, opts, in_doubt)
  end
  if not res then return nil, err end
  if res.already_gone then return res end
  -- Read as text whatever its media type says: the operation's name is quoted in errors.
  local body = store.client:redact(res.body or "")
  local op, why = util.decode_json(body)
  if op == nil and body:match("^%s*{") then
    -- An object that is no JSON (NaN, 0x10 in it) may be the Operation to wait for: not "done".
    return nil, errors.new("http", string.format("%s: the server's answer (HTTP %d) is not JSON (%s); the %s may "
      .. "or may not be deleted", level.what, res.status, tostring(why), named), { http_status = res.status })
  end
  if type(op) ~= "table" or op.name == nil then
    return { status = res.status }
  end
  if type(op.name) ~= "string" then
    return nil, errors.new("http", string.format("%s: the server's answer (HTTP %d) is not an Operation: its "
      .. "name is %s, not a string; the %s may or may not be deleted", level.what, res.status,
      NOT_A_NAME[type(op.name)] or type(op.name), named), { http_status = res.status })
  end
  if not M.valid_operation_name(op.name) then
    return nil, errors.new("http", string.format(
      "%s: the server answered with an operation name that is not projects/.../operations/{id}: '%s'",
      level.what, shown(op.name):sub(1, 200)), { http_status = res.status })
  end
  local response, perr, polls = operation.wait(store.client, op, { -- response, the Operation, polls; or nil, err
    params = query, poll_interval = opts.poll_interval, operation_timeout = opts.operation_timeout, retry = opts.retry,
  }, level.what)
  if not response then return nil, perr end
  return { status = res.status, operation = op.name, polls = polls }
end

-- Raises for a misuse of store:delete_* (level 3 from here: the user's line): self, the UID
-- arguments (strings), the options. Returns the options, with their current names.
local function check_call(store, fname, uids, depth, opts)
  util.check_self(store, "healthcare.Store", fname, 3)
  for i = 1, depth do util.check_arg(uids[i], i, fname, "string", 3) end
  opts = util.check_options(opts, M.OPTIONS, fname, 3, M.ALIASES)
  util.check_option(opts.params, "params", fname, "table", 3)
  -- A zero interval would poll as fast as the server answers, for up to the operation timeout.
  util.check_number(opts.poll_interval, "poll_interval", fname, "> 0", 3)
  util.check_number(opts.operation_timeout, "operation_timeout", fname, ">= 0", 3)
  retry.check(opts.retry, fname, 3)
  return opts
end

--- store:delete_study(study, opts): deletes a study; returns { status, operation = name or nil,
--- polls }, { status = 404 or 410, already_gone = true } when an attempt in doubt came first
--- (delete_answer), or nil, err.
function M.delete_study(store, study, opts)
  opts = check_call(store, "delete_study", { study }, 1, opts)
  local res, err = delete(store, 1, { study }, opts)
  return res, err
end

function M.delete_series(store, study, series, opts)
  opts = check_call(store, "delete_series", { study, series }, 2, opts)
  local res, err = delete(store, 2, { study, series }, opts)
  return res, err
end

function M.delete_instance(store, study, series, instance, opts)
  opts = check_call(store, "delete_instance", { study, series, instance }, 3, opts)
  local res, err = delete(store, 3, { study, series, instance }, opts)
  return res, err
end

return M
