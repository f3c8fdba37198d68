-- SPDX-License-Identifier: MIT
-- client:call through the real request path, against a capture server (spec/support/
-- capture_server.py: records verb, request target, headers and body; answers 200 {}). Every call
-- of the oracle fixture (what Google's own Node client sent for the same inputs,
-- spec/fixtures/api/oracle-v1.json) is sent with client:call and must arrive as the Node client's
-- did: verb, path, query string byte for byte, Content-Type and body. spec/unit/15 compares
-- request.build's output; this proves the transport adds nothing wrong (query string assembly,
-- escaping, standard parameters, bodies, headers). Then what the request path adds around it: the
-- credential, the client's standard parameters, file bodies, extra headers, answers to a file,
-- and bad calls refused with nothing sent.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local cjson = H.json

local E = H.env
local PY = "/usr/bin/python3"
local ORACLE = cjson.decode((assert(H.file_bytes("spec/fixtures/api/oracle-v1.json"))))
local TOKEN = "call-spec-access-token"
local STORE = "projects/p/locations/l/datasets/d/dicomStores/s"

-- ---- the capture server ------------------------------------------------------------------

local dir = H.tmpdir()
local LOG = dir .. "/captured.jsonl"
local ANSWERS = dir .. "/answers.json"
local URL, stop_server = H.start_server("capture server", H.q(PY) .. " " .. H.q(E.support .. "/capture_server.py") .. " "
  .. H.q(LOG) .. " " .. H.q(ANSWERS), dir)
teardown(stop_server)

-- The requests captured so far, decoded.
local function captured()
  local list = {}
  for line in (H.file_bytes(LOG) or ""):gmatch("[^\n]+") do list[#list + 1] = assert(cjson.decode(line)) end
  return list
end

local function last()
  local list = captured()
  return list[#list], #list
end

-- The next requests get these answers ({ status, content_type, body }), in order; then {} again.
local function answers(list)
  H.write_file(ANSWERS, cjson.encode(list))
end

local unhex = H.unhex

local function new_client(opts)
  opts = opts or {}
  opts.endpoint = URL .. "/v1"
  if opts.credentials == nil then opts.access_token = opts.access_token or TOKEN end
  opts.retry = opts.retry or { max_attempts = 1 }
  return assert(healthcare.new(opts))
end

-- The Lua call for a fixture entry: the same parameters, body and HttpBody.
local function lua_inputs(c)
  local params = {}
  for _, pair in ipairs(c.params) do params[pair[1]] = pair[2] end
  local body = c.body
  if c.http_body then body = { content_type = c.http_body.content_type, data = c.http_body.data } end
  return params, body
end

local CREDENTIAL_PARAMS = { access_token = true, oauth_token = true, key = true }

-- The differences between what arrived for fixture entry c and what the Node client sent.
local function differences(got, c)
  local sent, diffs = c.sent, {}
  local function check(what, ours, theirs)
    if ours ~= theirs then
      diffs[#diffs + 1] = string.format("%s: Lua %s, Node %s", what, tostring(ours), tostring(theirs))
    end
  end
  local path, qs = got.target:match("^([^?]*)%??(.*)$")
  check("verb", got.verb, sent.verb)
  check("path", path, sent.path)
  check("query string", qs, sent.query_string)
  check("content type", got.headers["content-type"], sent.content_type)
  local body = unhex(got.body_hex)
  if sent.body_json then
    check("body", H.canonical_json(body), H.canonical_json(sent.body_json))
  else
    check("body", body, sent.body_text or "")
  end
  -- The credential: the client's bearer token, unless the call carries one in its query (the
  -- client's rule: a token or key given as a parameter is the credential).
  local in_query = false
  for _, pair in ipairs(c.params) do in_query = in_query or CREDENTIAL_PARAMS[pair[1]] == true end
  check("authorization", got.headers.authorization, (not in_query) and ("Bearer " .. TOKEN) or nil)
  return diffs
end

describe("client:call against Google's Node client", function()
  it("sends every call of the oracle as the Node client did", function()
    local client = new_client()
    local equal, failures, methods = 0, {}, {}
    for _, c in ipairs(ORACLE.calls) do
      local params, body = lua_inputs(c)
      local _, count = last()
      local answer, err = client:call(c.method, params, body)
      local got, now = last()
      if not answer then
        failures[#failures + 1] = c.method .. ": " .. tostring(err)
      elseif now ~= (count or 0) + 1 then
        failures[#failures + 1] = c.method .. ": " .. (now - (count or 0)) .. " requests arrived"
      else
        local diffs = differences(got, c)
        if #diffs == 0 then
          equal = equal + 1
          methods[c.method] = true
        else
          failures[#failures + 1] = c.method .. ": " .. table.concat(diffs, "; ")
        end
      end
    end
    client:close()
    local n = 0
    for _ in pairs(methods) do n = n + 1 end
    assert.same({}, failures)
    assert.equal(#ORACLE.calls, equal)
    assert.equal(ORACLE.methods, n)
    print(string.format("\noracle through client:call: %d of %d requests equal (%d of %d methods, %s %s)", equal,
      #ORACLE.calls, n, ORACLE.methods, ORACLE.package, ORACLE.version))
  end)
end)

describe("client:call's request path", function()
  it("adds the client's standard parameters; a call's own value wins and none goes twice", function()
    local client = new_client({ params = { quotaUser = "from-client", fields = "name" } })
    assert(client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d",
      fields = "timeZone", prettyPrint = false }))
    local got = last()
    assert.equal("/v1/projects/p/locations/l/datasets/d?fields=timeZone&prettyPrint=false&quotaUser=from-client",
      got.target)
    client:close()
  end)

  it("takes a token given as a parameter as the credential: no Authorization, the token redacted in debug", function()
    local lines = {}
    local client = new_client({ debug = function(line) lines[#lines + 1] = line end })
    assert(client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d",
      access_token = "token-in-the-query-123" }))
    local got = last()
    assert.is_nil(got.headers.authorization)
    assert.equal("/v1/projects/p/locations/l/datasets/d?access_token=token-in-the-query-123", got.target)
    local text = table.concat(lines, "\n")
    assert.falsy(text:find("token-in-the-query-123", 1, true), text)
    assert.falsy(text:find(TOKEN, 1, true), text)
    client:close()
  end)

  it("repeats a repeated query parameter and sends opts.query after the declared ones", function()
    local client = new_client()
    assert(client:call("projects.locations.list", { name = "projects/p", extraLocationTypes = { "a b", "c/d" } },
      nil, { query = { { "x", "1" }, { "x", "2" } } }))
    assert.equal("/v1/projects/p/locations?extraLocationTypes=a%20b&extraLocationTypes=c%2Fd&x=1&x=2", last().target)
    client:close()
  end)

  it("streams an HttpBody { file = path } byte for byte with its content type and extra headers", function()
    local bytes = {}
    for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
    local data = table.concat(bytes):rep(300) -- 76,800 bytes, every byte value, NULs included
    local path = H.write_file(dir .. "/body.bin", data)
    local client = new_client()
    local answer, res = client:call("projects.locations.datasets.dicomStores.studies.storeInstances",
      { parent = STORE, dicomWebPath = "studies/1.2.3" }, { content_type = "application/dicom", data = { file = path } },
      { headers = { "X-Goog-Request-Reason: spec 44" }, accept = "application/dicom+json" })
    assert.is_table(answer, tostring(res))
    local got = last()
    assert.equal("POST", got.verb)
    assert.equal("/v1/" .. STORE .. "/dicomWeb/studies/1.2.3", got.target)
    assert.equal("application/dicom", got.headers["content-type"])
    assert.equal("application/dicom+json", got.headers.accept)
    assert.equal("spec 44", got.headers["x-goog-request-reason"])
    assert.equal(tostring(#data), got.headers["content-length"])
    assert.equal(H.sha256_string(data), H.sha256_string(unhex(got.body_hex)))
    -- The HttpBody answer: its bytes, its media type, and the JSON when it says JSON.
    assert.same({ content_type = "application/json", data = "{}", json = {} }, answer)
    assert.equal(200, res.status)
    client:close()
  end)

  it("writes an answer to opts.to, in place of what the file held", function()
    local client = new_client()
    local to = H.write_file(dir .. "/answer.json", "old")
    local answer, res = client:call("projects.locations.datasets.dicomStores.studies.retrieveStudy",
      { parent = STORE, dicomWebPath = "studies/1.2.3" }, nil, { to = to })
    assert.is_table(answer, tostring(res))
    assert.equal(200, res.status)
    assert.same({ content_type = "application/json", file = to, bytes = 2 }, answer)
    assert.equal("{}", H.file_bytes(to))
    -- a JSON method too: the answer as sent, not decoded
    answer = assert(client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" },
      nil, { to = to }))
    assert.equal(to, answer.file)
    client:close()
  end)

  it("refuses a bad call with nothing sent: returned for the method table's content, raised for misuse", function()
    local client = new_client()
    local _, before = last()
    local cases = {
      { "projects.locations.datasets.creat", { parent = "projects/p/locations/l" },
        "unknown method 'projects.locations.datasets.creat'; closest: projects.locations.datasets.create," },
      { "projects.locations.datasets.create", { parent = "projects/p/locations/l", datasetID = "x" },
        "unknown parameter 'datasetID' for projects.locations.datasets.create; valid parameters: datasetId," },
      { "projects.locations.datasets.get", {},
        "missing required parameter 'name' for projects.locations.datasets.get (required, in order: name)" },
      { "projects.locations.datasets.list", { parent = "projects/p/locations/l", pageSize = "ten" },
        "parameter 'pageSize' must be an integer, got 'ten' (projects.locations.datasets.list)" },
      { "projects.locations.datasets.get", { name = "projects/p/locations/l" },
        "parameter 'name' of projects.locations.datasets.get is 'projects/p/locations/l', which does not match" },
      { "projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" },
        "projects.locations.datasets.get answers Dataset, not an Operation: wait = true applies to", { wait = true } },
    }
    for _, c in ipairs(cases) do
      local res, err = client:call(c[1], c[2], nil, c[4])
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.equal(c[3], err.message:sub(1, #c[3]))
    end
    local res, err = client:call("projects.locations.datasets.dicomStores.studies.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, { content_type = "application/dicom", data = { file = dir .. "/none" } })
    assert.is_nil(res)
    assert.equal("io", err.kind)
    res, err = client:call("projects.locations.datasets.get", { name = "projects/p/locations/l/datasets/d" }, nil,
      { headers = { "X-A: 1\r\nX-B: 2" } })
    assert.is_nil(res)
    assert.equal("usage", err.kind)
    assert.has_error(function() client:call(42) end, "bad argument #1 to 'call' (string expected, got number)")
    assert.has_error(function() client:call("projects.locations.list", "projects/p") end,
      "bad argument #2 to 'call' (params table expected, got string)")
    assert.has_error(function() client:call("projects.locations.list", {}, {}, { bogus = 1 }) end,
      "unknown option 'bogus' to 'call'; valid options: accept, compressed, headers, idle_timeout, max_bytes, "
      .. "max_compression_ratio, min_speed, on_progress, on_retry, operation_timeout, poll_interval, query, retry, timeout, "
      .. "to, wait")
    local _, after = last()
    assert.equal(before, after)
    client:close()
  end)
end)

describe("client:call, pages and wait against a server that answers badly", function()
  local client
  before_each(function() client = new_client({ retry = { max_attempts = 3, initial = 0.01, max_delay = 0.02 } }) end)
  after_each(function()
    answers({})
    client:close()
  end)
  local GET = { name = "projects/p/locations/l/datasets/d" }
  local OP = "projects/p/locations/l/datasets/d/operations/1"

  it("an answer that is not JSON, or not an object, for a JSON method is an error naming the method", function()
    answers({ { content_type = "text/html", body = "<html>\27[31mproxy error</html>" }, { body = "null" } })
    local res, err = client:call("projects.locations.datasets.get", GET)
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal("projects.locations.datasets.get: HTTP 200: the answer is not a JSON object (text/html): "
      .. "<html>\\x1b[31mproxy error</html>", tostring(err))
    res, err = client:call("projects.locations.datasets.get", GET)
    assert.is_nil(res)
    assert.matches("the answer is not a JSON object", err.message)
  end)

  it("an answer over max_bytes is cut, in memory or to a file (the file not left behind)", function()
    local big = cjson.encode({ name = string.rep("x", 5000) })
    answers({ { body = big }, { body = big }, { body = big } })
    local res, err = client:call("projects.locations.datasets.get", GET, nil, { max_bytes = 1000 })
    assert.is_nil(res)
    assert.equal("max_bytes", err.option)
    assert.equal("projects.locations.datasets.get: the answer is larger than 1000 bytes (option max_bytes)", err.message)
    local to = dir .. "/big.json"
    res, err = client:call("projects.locations.datasets.get", GET, nil, { max_bytes = 1000, to = to })
    assert.is_nil(res)
    assert.equal("max_bytes", err.option)
    assert.is_nil(H.file_bytes(to))
    assert.equal("", H.run("ls " .. H.q(dir) .. " | grep big || true"))
    assert.equal(big, (select(2, client:call("projects.locations.datasets.get", GET, nil, { max_bytes = 0 }))).body)
  end)

  it("sends a POST again after 503, not after 500; a GET after both", function()
    local create = { parent = "projects/p/locations/l", datasetId = "d" }
    local envelope = '{"error": {"code": %d, "status": "%s", "message": "busy"}}'
    answers({ { status = 503, body = envelope:format(503, "UNAVAILABLE") } })
    local _, before = last()
    assert(client:call("projects.locations.datasets.create", create, {}))
    local _, now = last()
    assert.equal(2, now - before)
    answers({ { status = 500, body = envelope:format(500, "INTERNAL") } })
    local res, err = client:call("projects.locations.datasets.create", create, {})
    assert.is_nil(res)
    assert.equal("projects.locations.datasets.create: HTTP 500 INTERNAL: busy", tostring(err))
    local _, after = last()
    assert.equal(1, after - now)
    answers({ { status = 500, body = envelope:format(500, "INTERNAL") }, { status = 503, body = "" } })
    assert(client:call("projects.locations.datasets.get", GET))
    local _, final = last()
    assert.equal(3, final - after)
  end)

  it("a list field that is not a list, or a page token given twice, ends the pages with an error", function()
    local parent = { parent = "projects/p/locations/l/datasets/d" }
    answers({ { body = '{"dicomStores": 3}' } })
    local pages = assert(client:pages("projects.locations.datasets.dicomStores.list", parent))
    local list, err, partial = pages:all()
    assert.is_nil(list)
    assert.equal("projects.locations.datasets.dicomStores.list: HTTP 200: the answer's dicomStores is not a list, or "
      .. "its nextPageToken not a string", tostring(err))
    assert.same({}, partial)
    answers({ { body = '{"dicomStores": [{"name": "a"}], "nextPageToken": "t1"}' },
      { body = '{"dicomStores": [{"name": "b"}], "nextPageToken": "t1"}' } })
    local names = {}
    for s in pages:each() do names[#names + 1] = s.name end
    assert.same({ "a", "b" }, names) -- the items that came, then the end
    assert.equal("repeated_page_token", pages.error.status)
    assert.equal("projects.locations.datasets.dicomStores.list: the server answered the page token 't1' a second "
      .. "time; stopping", pages.error.message)
    assert.matches("pageToken=t1$", last().target)
  end)

  it("a poll that is not an Operation, an operation name that is not one, a poll's error: named errors", function()
    local create = { parent = "projects/p/locations/l", datasetId = "d" }
    answers({ { body = '{"name": "' .. OP .. '"}' }, { content_type = "text/plain", body = "maintenance" } })
    local res, err = client:call("projects.locations.datasets.create", create, {}, { wait = true, poll_interval = 0.01 })
    assert.is_nil(res)
    assert.equal(OP, err.operation)
    assert.equal("polling operation " .. OP .. ": HTTP 200: the answer is not a JSON object (text/plain): maintenance",
      tostring(err))
    answers({ { body = '{"name": "../../x"}' } })
    res, err = client:call("projects.locations.datasets.create", create, {}, { wait = true })
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal("projects.locations.datasets.create: HTTP 200: the answer is not an Operation to wait for (no name "
      .. "projects/.../operations/{id}): ../../x", tostring(err))
    answers({ { status = 404, body = '{"error": {"code": 404, "status": "NOT_FOUND", "message": "no such operation"}}' } })
    res, err = client:wait(OP, { poll_interval = 0.01 })
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.equal(OP, err.operation)
    assert.equal("polling operation " .. OP .. ": HTTP 404 NOT_FOUND: no such operation", tostring(err))
    -- metadata that is not a table reaches on_progress as {}
    answers({ { body = '{"name": "' .. OP .. '", "metadata": 7, "done": true, "response": {"ok": true}}' } })
    local seen
    res = assert(client:wait(OP, { poll_interval = 0.01, on_progress = function(m) seen = m end }))
    assert.same({ ok = true }, res)
    assert.same({}, seen)
  end)
end)
