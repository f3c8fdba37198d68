-- SPDX-License-Identifier: MIT
-- Answers whose JSON holds numbers JSON has not (NaN, Infinity, hex: lua-cjson takes them unless
-- told not to) or numbers the code cannot live with (1e400, an infinity; 1e300), and error answers
-- without Google's envelope, from a token endpoint, the API, a STOW-RS and a DELETE: played by
-- the capture server (spec/support/capture_server.py: the answers the spec wrote, in order, as
-- raw text). Every JSON text from outside goes through util.decode_json (strict); what the code
-- computes with (expires_in, counters, reason codes) is checked to be finite and in range.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local credentials = require "healthcare.auth.credentials"

local NO_RETRY = { max_attempts = 1 }

local cap = H.capture_server()
teardown(cap.stop)
local URL, answers = cap.url, cap.answers

-- The request targets captured so far ("POST /token", "GET /v1/...").
local function requests()
  local list = {}
  for i, r in ipairs(cap.captured()) do list[i] = r.verb .. " " .. r.target end
  return list
end

local function json_answer(body, status)
  return { status = status or 200, content_type = "application/json", body = body }
end

before_each(function()
  answers({})
  cap.forget()
end)

local TOKEN = "ya29.hostile-json-token-0123456789"
local GET = { name = "projects/p/locations/l/datasets/d" }

-- A service account whose token endpoint is the capture server (its key never checked there).
local sa = H.service_account({ register = false, fields = { token_uri = URL .. "/token" } })

local function token_reply(expires_in)
  return json_answer('{"access_token": "' .. TOKEN .. '", "token_type": "Bearer", "expires_in": ' .. expires_in .. "}")
end

describe("a token endpoint's expires_in", function()
  it("NaN (no JSON) is refused: no token used for ever or fetched again on every call", function()
    answers({ token_reply("NaN"), json_answer("{}"), token_reply("NaN") })
    local client = assert(healthcare.new({ credentials = sa.key_file, endpoint = URL .. "/v1", retry = NO_RETRY }))
    local res, err = client:call("projects.locations.datasets.get", GET)
    client:close()
    assert.is_nil(res)
    assert.equal("auth", err.kind)
    assert.matches("the token endpoint " .. URL:gsub("%p", "%%%0") .. "/token answered HTTP 200 with an answer that "
      .. "is not JSON %(Expected value but found invalid token at character %d+%)", err.message)
    assert.is_nil(err.message:find(TOKEN, 1, true))
    assert.same({ "POST /token" }, requests())
  end)

  it("1e400 (an infinity) is refused; 1e300 is held to a day; digits in a string are taken", function()
    local cred = assert(credentials.from_file(sa.key_file, {}))
    answers({ token_reply("1e400") })
    local token, err = cred:token()
    assert.is_nil(token)
    assert.matches("answered HTTP 200 with an expires_in that is not a number of seconds %(an infinity%)$",
      err.message)
    answers({ token_reply("1e300") })
    local seconds
    token, seconds = cred:token()
    assert.equal(TOKEN, token)
    assert.equal(credentials.MAX_TOKEN_LIFETIME, seconds)
    cred:close()
    cred = assert(credentials.from_file(sa.key_file, {}))
    answers({ token_reply('"3599"') })
    token, seconds = cred:token()
    assert.equal(TOKEN, token)
    assert.equal(3599, seconds)
    cred:close()
    assert.equal(3, #requests())
  end)

  it("the command with its token cache says what is wrong (it raised on an infinity)", function()
    local cache = H.tmpdir() .. "/cache"
    answers({ token_reply("1e400") })
    local out, err, code = H.run("XDG_CACHE_HOME=" .. H.q(cache) .. " HEALTHCARE_ENDPOINT=" .. H.q(URL .. "/v1") .. " "
      .. H.healthcare_command({ "projects", "locations-datasets-get", GET.name, "--credentials", sa.key_file }))
    assert.equal(2, code, err)
    assert.equal("", out)
    assert.matches("with an expires_in that is not a number of seconds %(an infinity%)", err)
    assert.is_nil(err:find("traceback", 1, true), err)
    assert.same({ "POST /token" }, requests())
  end)
end)

describe("an Operation's answer", function()
  local OP = "projects/p/locations/l/datasets/d/operations/1"

  it("with a NaN failure counter is no success of `operations wait` (it exited 0)", function()
    answers({ json_answer('{"name": "' .. OP .. '", "done": true, "response": {}, '
      .. '"metadata": {"counter": {"success": "3", "failure": NaN}}}') })
    local out, err, code = H.run("HEALTHCARE_ENDPOINT=" .. H.q(URL .. "/v1") .. " "
      .. H.healthcare_command({ "operations", "wait", OP, "--access-token", TOKEN, "--poll-interval", "0.01" }))
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("polling operation " .. OP:gsub("%p", "%%%0") .. ": HTTP 200: the answer is not a JSON object", err)
    assert.is_nil(err:find("done in", 1, true), err)
  end)

  it("of a DELETE with a hex number is not JSON: neither done nor failed with a code it never gave", function()
    local store = assert(healthcare.dicomweb(URL .. "/dicomweb", { retry = NO_RETRY }))
    answers({ json_answer('{"name": "' .. OP .. '", "done": true, "error": {"code": 0x10, "message": "m"}}') })
    local res, err = store:delete_study("1.2.3")
    store:close()
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal("DeleteStudy: the server's answer (HTTP 200) is not JSON (Expected value but found invalid number "
      .. "at character 92); the study 1.2.3 may or may not be deleted", err.message)
  end)
end)

describe("other JSON from outside", function()
  it("retrieve_metadata refuses NaN in a data set (it was taken as a number)", function()
    local store = assert(healthcare.dicomweb(URL .. "/dicomweb", { retry = NO_RETRY }))
    answers({ { status = 200, content_type = "application/dicom+json",
      body = '[{"00280010": {"vr": "US", "Value": [NaN]}}]' } })
    local res, err = store:retrieve_metadata("1.2.3")
    store:close()
    assert.is_nil(res)
    assert.equal("dicom", err.kind)
    assert.matches("^RetrieveMetadata: the answer is not a DICOM JSON list", err.message)
  end)

  it("deidentify --config with a hex number is no JSON (it was read as the number 16)", function()
    local config = H.tmpdir() .. "/deid.json"
    H.write_file(config, '{"dicom": {"filterProfile": 0x10}}')
    local ds = "projects/p/locations/l/datasets/d"
    local out, err, code = H.run("HEALTHCARE_ENDPOINT=" .. H.q(URL .. "/v1") .. " " .. H.healthcare_command({
      "deidentify", ds .. "/dicomStores/s", ds .. "/dicomStores/s-deid", "--config", config,
      "--access-token", TOKEN }))
    assert.equal(2, code, err)
    assert.equal("", out)
    assert.matches("is not a JSON object %(a DeidentifyConfig%): Expected value but found invalid number", err)
    assert.same({}, requests())
  end)
end)

describe("a STOW-RS answer", function()
  local file = H.fresh_files(2)

  -- A 409 listing the file as failed with `code` as its FailureReason.
  local function failed_answer(f, code)
    return { status = 409, content_type = "application/dicom+json", body = '{"00081198": {"vr": "SQ", "Value": [{'
      .. '"00081150": {"vr": "UI", "Value": ["' .. f.sop_class_uid .. '"]}, '
      .. '"00081155": {"vr": "UI", "Value": ["' .. f.sop_instance_uid .. '"]}, '
      .. '"00081197": {"vr": "US", "Value": [' .. code .. ']}}]}}' }
  end

  it("with a FailureReason of 1e400 or 2.5 fails the file, saying why (it raised under Lua 5.4)", function()
    local store = assert(healthcare.dicomweb(URL .. "/dicomweb", { retry = NO_RETRY }))
    for _, case in ipairs({ { "1e400", "inf" }, { "2.5", "2.5" } }) do
      local f = file()
      answers({ failed_answer(f, case[1]) })
      local ok, report = pcall(store.store, store, f.path)
      assert(ok, report)
      assert.equal(0, #report.stored)
      assert.equal(1, #report.failed)
      assert.equal("StoreInstances: HTTP 409: the STOW-RS answer cannot be read: the FailureReason of failed "
        .. "instance 1 is not a DICOM US value (" .. case[2] .. ")", report.failed[1].reason)
    end
    store:close()
  end)

  it("with a hex FailureReason is no JSON, and its 409 no ALREADY_EXISTS", function()
    local store = assert(healthcare.dicomweb(URL .. "/dicomweb", { retry = NO_RETRY }))
    local f = file()
    answers({ failed_answer(f, "0xA700") })
    local report = store:store(f.path)
    store:close()
    assert.equal(1, #report.failed)
    assert.matches("^StoreInstances: HTTP 409 HTTP_409: {\"00081198\"", report.failed[1].reason)
  end)
end)

describe("an answer without Google's envelope", function()
  it("a proxy's 409 and 413 claim no Google status (they read ALREADY_EXISTS, INVALID_ARGUMENT)", function()
    local client = assert(healthcare.new({ access_token = TOKEN, endpoint = URL .. "/v1", retry = NO_RETRY }))
    answers({ { status = 409, content_type = "text/plain", body = "Conflict" },
      { status = 413, content_type = "text/html", body = "<html><h1>413 Request Entity Too Large</h1></html>" },
      json_answer('{"error": {"code": 409, "status": "ALREADY_EXISTS", "message": "dataset exists"}}', 409) })
    local _, err = client:call("projects.locations.datasets.get", GET)
    assert.equal(409, err.http_status)
    assert.equal("HTTP_409", err.status)
    assert.equal("projects.locations.datasets.get: HTTP 409 HTTP_409: Conflict", err.message)
    _, err = client:call("projects.locations.datasets.get", GET)
    assert.equal("HTTP_413", err.status)
    assert.is_false(err.retryable)
    -- Google's own 409 keeps its status
    _, err = client:call("projects.locations.datasets.get", GET)
    assert.equal("ALREADY_EXISTS", err.status)
    assert.equal("projects.locations.datasets.get: HTTP 409 ALREADY_EXISTS: dataset exists", err.message)
    client:close()
  end)
end)
