-- SPDX-License-Identifier: MIT
-- client:call, client:pages and client:wait without a server: the two channels (a misuse of the
-- Lua call raises at the caller's line; what the method table refuses comes back as a "usage"
-- error naming the valid choices, closest first), which verbs are sent again for which failures,
-- how an Operation's error reads, which field holds a list method's items, and which method of
-- the table each DICOMweb path of a store is. Nothing here reaches a server: the client's endpoint
-- is a closed port, so a request that went out would fail as "transport", never as "usage".
local healthcare = require "healthcare"
local api = require "healthcare.api"
local operation = require "healthcare.api.operation"
local pages = require "healthcare.api.pages"
local route = require "healthcare.dicomweb.route"
local send = require "healthcare.api.send"

local H = require "helpers"
local ENDPOINT = "http://127.0.0.1:9/v1"
local DS = "projects.locations.datasets."
local DATASET = "projects/p/locations/l/datasets/d"
local STORE = DATASET .. "/dicomStores/s"

local raises_at_call = H.raises_at_call

-- The usage error of a call that must be refused: its message.
local function refused(res, err)
  assert.is_nil(res)
  assert.equal("usage", err.kind, tostring(err))
  return err.message
end

describe("client:call, pages and wait: a misuse raises at the caller's line", function()
  local client
  setup(function() client = assert(healthcare.new { credentials = false, endpoint = ENDPOINT }) end)
  teardown(function() client:close() end)

  it("in the arguments", function()
    raises_at_call(function() local _ = client:call(42) end, "bad argument #1 to 'call' (string expected, got number)")
    raises_at_call(function() local _ = client:call(DS .. "get", "x") end,
      "bad argument #2 to 'call' (params table expected, got string)")
    raises_at_call(function() local _ = client:call(DS .. "create", {}, '{"timeZone":"UTC"}') end,
      "bad argument #3 to 'call' (body table expected, got string)")
    raises_at_call(function() local _ = client:pages(nil) end, "bad argument #1 to 'pages' (string expected, got nil)")
    raises_at_call(function() local _ = client:pages(DS .. "list", 3) end,
      "bad argument #2 to 'pages' (params table expected, got number)")
    raises_at_call(function() local _ = client:wait(nil) end,
      "bad argument #1 to 'wait' (operation or operation name expected, got nil)")
    raises_at_call(function() local _ = client:wait(2) end, "bad argument #1 to 'wait' (operation or operation name "
      .. "expected, got number; the requests in flight are poll(seconds)'s)")
    raises_at_call(function() local _ = client.call(42, DS .. "get") end,
      "bad self to 'call' (healthcare.Client expected, got number)")
  end)

  it("in the options", function()
    local get = { name = DATASET }
    for _, c in ipairs({
      { { bogus = 1 }, "unknown option 'bogus' to 'call'; valid options: accept, compressed, headers, idle_timeout, "
        .. "max_bytes, max_compression_ratio, min_speed, on_progress, on_retry, operation_timeout, poll_interval, query, "
        .. "retry, timeout, to, wait" },
      { { on_retry = true }, "bad option 'on_retry' to 'call' (function expected, got boolean)" },
      { { to = "" }, "bad option 'to' to 'call' (path expected, got an empty string)" },
      { { to = 1 }, "bad option 'to' to 'call' (string expected, got number)" },
      { { wait = "yes" }, "bad option 'wait' to 'call' (boolean expected, got string)" },
      { { headers = { 1 } }, "bad option 'headers' to 'call' (a list of strings expected; item 1 is a number)" },
      { { max_bytes = -1 }, "bad option 'max_bytes' to 'call' (a whole number >= 0 expected, got -1)" },
      { { timeout = 0 / 0 }, "bad option 'timeout' to 'call' (a number >= 0 expected, got " .. tostring(0 / 0) .. ")" },
      { { wait = true, poll_interval = 0 }, "bad option 'poll_interval' to 'call' (a number > 0 expected, got 0)" },
      { { poll_interval = 1 }, "bad option 'poll_interval' to 'call' (it applies with wait = true)" },
      { { operation_timeout = 1 }, "bad option 'operation_timeout' to 'call' (it applies with wait = true)" },
      { { wait = true, to = "x" }, "bad option 'to' to 'call' (not with wait = true: the Operation is read in memory)" },
      { { retry = { max_attempts = 0 } }, "bad option 'retry.max_attempts' to 'call' (a whole number >= 1 expected, "
        .. "got 0)" },
    }) do
      raises_at_call(function() local _ = client:call(DS .. "get", get, nil, c[1]) end, c[2])
    end
    raises_at_call(function() local _ = client:pages(DS .. "list", {}, { page_size = 3 }) end,
      "unknown option 'page_size' to 'pages'; valid options: headers, idle_timeout, max_page_bytes, max_pages, "
      .. "min_speed, on_retry, query, retry, timeout")
    raises_at_call(function() local _ = client:pages(DS .. "list", {}, { on_retry = 1 }) end,
      "bad option 'on_retry' to 'pages' (function expected, got number)")
    raises_at_call(function() local _ = client:pages(DS .. "list", {}, { max_pages = 0.5 }) end,
      "bad option 'max_pages' to 'pages' (a whole number >= 1 expected, got 0.5)")
    raises_at_call(function() local _ = client:pages(DS .. "list", {}, { max_page_bytes = 0 }) end,
      "bad option 'max_page_bytes' to 'pages' (a whole number >= 1 expected, got 0)")
    raises_at_call(function() local _ = client:wait("x", { poll_interval = -1 }) end,
      "bad option 'poll_interval' to 'wait' (a number > 0 expected, got -1)")
    raises_at_call(function() local _ = client:wait("x", { interval = 1 }) end,
      "unknown option 'interval' to 'wait'; valid options: on_progress, operation_timeout, params, poll_interval, "
      .. "retry, timeout")
  end)

  it("on a closed client", function()
    local c = assert(healthcare.new { credentials = false, endpoint = ENDPOINT })
    c:close()
    raises_at_call(function() local _ = c:call(DS .. "get", { name = DATASET }) end, "attempt to use a closed client")
    raises_at_call(function() local _ = c:pages(DS .. "list", { parent = "projects/p/locations/l" }) end,
      "attempt to use a closed client")
    raises_at_call(function() local _ = c:wait(DATASET .. "/operations/1") end, "attempt to use a closed client")
    local p = assert(client:pages(DS .. "list", { parent = "projects/p/locations/l" }))
    local c2 = assert(healthcare.new { credentials = false, endpoint = ENDPOINT })
    p.client = c2
    c2:close()
    raises_at_call(function() local _ = p:all() end, "attempt to use a closed client")
  end)
end)

describe("what the method table refuses is returned, kind \"usage\", with the choices closest first", function()
  local client
  setup(function() client = assert(healthcare.new { credentials = false, endpoint = ENDPOINT }) end)
  teardown(function() client:close() end)

  it("an unknown method or parameter, a missing or mistyped one, a path that does not match", function()
    assert.equal("unknown method 'projects.locations.datasets.dicomStore.create'; closest: "
      .. DS .. "dicomStores.create, " .. DS .. "dicomStores.delete, " .. DS .. "dicomStores.get, "
      .. DS .. "dicomStores.list, " .. DS .. "dicomStores.patch (healthcare.api.ids() lists all 152)",
      refused(client:call(DS .. "dicomStore.create", { parent = DATASET, dicomStoreId = "s" }, {})))
    local prefix = "unknown parameter 'dicomStoreID' for " .. DS .. "dicomStores.create; valid parameters: dicomStoreId, "
    local m = refused(client:call(DS .. "dicomStores.create", { parent = DATASET, dicomStoreID = "s" }, {}))
    assert.equal(prefix, m:sub(1, #prefix))
    assert.equal("missing required parameter 'name' for " .. DS .. "dicomStores.get (required, in order: name)",
      refused(client:call(DS .. "dicomStores.get", {})))
    assert.equal("parameter 'pageSize' must be an integer, got 'many' (" .. DS .. "list)",
      refused(client:call(DS .. "list", { parent = "projects/p/locations/l", pageSize = "many" })))
    assert.equal("parameter 'name' of " .. DS .. "dicomStores.get is '" .. DATASET .. "', which does not match "
      .. "^projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+$",
      refused(client:call(DS .. "dicomStores.get", { name = DATASET })))
    assert.equal("body has no field 'timezone' (Dataset); valid fields: timeZone, name, satisfiesPzi, satisfiesPzs, "
      .. "encryptionSpec (projects.locations.datasets.create takes a Dataset)",
      refused(client:call(DS .. "create", { parent = "projects/p/locations/l", datasetId = "d" }, { timezone = "UTC" })))
  end)

  it("wait = true on a method that does not answer an Operation; pages of a method that is not a list", function()
    local function starts(prefix, text)
      assert.equal(prefix, text:sub(1, #prefix))
      return text:sub(#prefix + 1)
    end
    local m = refused(client:call(DS .. "dicomStores.get", { name = STORE }, nil, { wait = true }))
    local rest = starts(DS .. "dicomStores.get answers DicomStore, not an Operation: wait = true applies to ", m)
    local n = 0
    for id in rest:gmatch("[^, ]+") do
      if id ~= "..." then
        assert.equal("Operation", api.method(id).response, id)
        n = n + 1
      end
    end
    assert.equal(5, n)
    m = refused(client:pages(DS .. "dicomStores.get", { name = STORE }))
    starts(DS .. "dicomStores.get is not a list method (pageToken in, nextPageToken and one list out); list "
      .. "methods: " .. DS .. "dicomStores.list, ", m)
  end)

  it("wait on a name that is not an operation's; a done operation answers without a request", function()
    assert.matches("^parameter 'name' of projects%.locations%.datasets%.operations%.get is",
      refused(client:wait(DATASET .. "/notoperations/1")))
    assert.equal("not an operation: no name to poll", refused(client:wait({ metadata = {} })))
    local response, op = client:wait({ name = DATASET .. "/operations/1", done = true, response = { x = 1 } })
    assert.same({ x = 1 }, response)
    assert.equal(DATASET .. "/operations/1", op.name)
    assert.same({}, (client:wait({ name = DATASET .. "/operations/2", done = true })))
    local res, err = client:wait({ name = DATASET .. "/operations/3", done = true,
      error = { code = 9, message = "store \27[31mbusy", details = { { ["@type"] = "x" } } } })
    assert.is_nil(res)
    assert.equal("operation", err.kind)
    assert.equal("FAILED_PRECONDITION", err.status)
    assert.equal(DATASET .. "/operations/3", err.operation)
    assert.same({ { ["@type"] = "x" } }, err.details)
    assert.equal("operation " .. DATASET .. "/operations/3 failed: store \27[31mbusy (code 9 FAILED_PRECONDITION)",
      err.message)
    assert.equal("operation " .. DATASET .. "/operations/3 failed: store \\x1b[31mbusy (code 9 FAILED_PRECONDITION)",
      tostring(err))
  end)
end)

describe("healthcare.api.operation.failed", function()
  it("names Google's code by its canonical status", function()
    for code, status in pairs({ [1] = "CANCELLED", [5] = "NOT_FOUND", [13] = "INTERNAL", [16] = "UNAUTHENTICATED",
      [99] = "CODE_99" }) do
      local err = operation.failed("op", { code = code, message = "m" })
      assert.equal(status, err.status)
      assert.equal("operation op failed: m (code " .. code .. " " .. status .. ")", err.message)
    end
    assert.equal("DeleteStudy: operation op failed: no message (code 13 INTERNAL)",
      operation.failed("op", { code = 13.0 }, "DeleteStudy").message)
  end)
end)

describe("what is sent again", function()
  -- verb, an answer's status or a transport failure's status, again?
  local cases = {
    { "GET", 500, true }, { "GET", 503, true }, { "GET", 429, true }, { "GET", 408, true }, { "GET", 404, false },
    { "GET", "recv", true }, { "GET", "connect", true },
    { "DELETE", 502, true }, { "DELETE", 409, false }, { "DELETE", "recv", false }, { "DELETE", "connect", true },
    { "PUT", 500, true }, { "PUT", "partial", false },
    { "POST", 500, false }, { "POST", 502, false }, { "POST", 504, false }, { "POST", 503, true },
    { "POST", 429, true }, { "POST", "recv", false }, { "POST", "resolve", true }, { "POST", "timeout", false },
    { "PATCH", 503, true }, { "PATCH", 500, false },
  }
  it("GET on every retryable failure; DELETE and PUT on retryable answers; POST and PATCH on 429 and 503", function()
    for _, c in ipairs(cases) do
      local retry_of = send.retry_of(c[1])
      local again
      if type(c[2]) == "number" then
        again = retry_of({ status = c[2], headers = {}, body = "" })
      else
        again = retry_of(nil, { kind = "transport", status = c[2], retryable = true })
      end
      assert.equal(c[3], again == true, c[1] .. " " .. c[2])
    end
    -- the wait the server asked for: Retry-After, or Google's RetryInfo
    local _, asked = send.retry_of("GET")({ status = 503, headers = { ["content-type"] = "application/json" },
      body = '{"error": {"code": 503, "status": "UNAVAILABLE", "details": [{"@type": '
        .. '"type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]}}' })
    assert.equal(2.5, asked)
  end)
end)

describe("list methods", function()
  it("hold their items in the one list field of their answer", function()
    local fields = {}
    for _, id in ipairs(api.ids()) do
      local field = pages.items_field(api.method(id))
      if field then fields[id] = field end
    end
    assert.same({
      [DS .. "consentStores.attributeDefinitions.list"] = "attributeDefinitions",
      [DS .. "consentStores.consentArtifacts.list"] = "consentArtifacts",
      [DS .. "consentStores.consents.list"] = "consents",
      [DS .. "consentStores.consents.listRevisions"] = "consents",
      [DS .. "consentStores.list"] = "consentStores",
      [DS .. "consentStores.userDataMappings.list"] = "userDataMappings",
      [DS .. "dicomStores.list"] = "dicomStores",
      [DS .. "fhirStores.list"] = "fhirStores",
      [DS .. "hl7V2Stores.list"] = "hl7V2Stores",
      [DS .. "hl7V2Stores.messages.list"] = "hl7V2Messages",
      [DS .. "list"] = "datasets",
      [DS .. "operations.list"] = "operations",
      ["projects.locations.list"] = "locations",
    }, fields)
  end)
end)

describe("pages.fields_with_token", function()
  it("keeps nextPageToken in a partial response: Google leaves out what fields does not name", function()
    for _, c in ipairs({
      { "dicomStores/name", "dicomStores/name,nextPageToken" },
      { "dicomStores.name", "dicomStores.name,nextPageToken" },
      { "dicomStores(name,labels)", "dicomStores(name,labels),nextPageToken" },
      { "dicomStores(nextPageToken)", "dicomStores(nextPageToken),nextPageToken" }, -- (not the top level's)
      { "dicomStores,nextPageToken", "dicomStores,nextPageToken" },
      { "nextPageToken,dicomStores(name)", "nextPageToken,dicomStores(name)" },
      { " dicomStores , nextPageToken ", " dicomStores , nextPageToken " },
      { "*", "*" },
    }) do
      assert.equal(c[2], pages.fields_with_token(c[1]), c[1])
    end
    assert.is_nil(pages.fields_with_token(nil))
    assert.equal("", pages.fields_with_token(""))
  end)
end)

describe("a store's DICOMweb requests", function()
  it("are the table's methods: each of the 20 DICOMweb methods from a verb and path of its shape", function()
    local I = "studies/1.2/series/3.4/instances/5.6"
    local cases = {
      { "POST", "studies", "storeInstances" }, { "POST", "studies/1.2", "studies.storeInstances" },
      { "GET", "studies", "searchForStudies" }, { "GET", "series", "searchForSeries" },
      { "GET", "instances", "searchForInstances" }, { "GET", "studies/1.2/series", "studies.searchForSeries" },
      { "GET", "studies/1.2/instances", "studies.searchForInstances" },
      { "GET", "studies/1.2/series/3.4/instances", "studies.series.searchForInstances" },
      { "GET", "studies/1.2", "studies.retrieveStudy" }, { "GET", "studies/1.2/metadata", "studies.retrieveMetadata" },
      { "GET", "studies/1.2/series/3.4", "studies.series.retrieveSeries" },
      { "GET", "studies/1.2/series/3.4/metadata", "studies.series.retrieveMetadata" },
      { "GET", I, "studies.series.instances.retrieveInstance" },
      { "GET", I .. "/metadata", "studies.series.instances.retrieveMetadata" },
      { "GET", I .. "/rendered", "studies.series.instances.retrieveRendered" },
      { "GET", I .. "/frames/1,2", "studies.series.instances.frames.retrieveFrames" },
      { "GET", I .. "/frames/1/rendered", "studies.series.instances.frames.retrieveRendered" },
      { "DELETE", "studies/1.2", "studies.delete" }, { "DELETE", "studies/1.2/series/3.4", "studies.series.delete" },
      { "DELETE", I, "studies.series.instances.delete" },
    }
    local covered = {}
    for _, c in ipairs(cases) do
      local id = DS .. "dicomStores." .. c[3]
      assert.equal(id, route.method_of(c[1], c[2]), c[1] .. " " .. c[2])
      assert.equal(c[1], api.method(id).http_method, id)
      covered[id] = true
    end
    for _, id in ipairs(api.ids()) do
      local m = api.method(id)
      if m.path:find("{+dicomWebPath}", 1, true) then assert.is_true(covered[id], id) end
    end
    assert.is_nil(route.method_of("POST", "studies/1.2/series/3.4"))
    assert.is_nil(route.method_of("PUT", "studies"))
    assert.is_nil(route.method_of("GET", "studies/1.2/bogus"))
  end)

  it("go to the URL the table's entry gives under the endpoint, or under a plain server's base URL", function()
    local client = assert(healthcare.new { credentials = false, endpoint = ENDPOINT })
    local store = assert(client:dicom_store(STORE))
    assert.equal(ENDPOINT .. "/" .. STORE .. "/dicomWeb/studies/1.2/series/3.4/instances/5.6/frames/1,2/rendered",
      route.url(store, "GET", "studies/1.2/series/3.4/instances/5.6/frames/1,2/rendered"))
    local res, err = route.url(store, "PUT", "studies")
    assert.is_nil(res)
    assert.equal("no method of the API is PUT studies on a dicomStore", err.message)
    local plain = assert(healthcare.dicomweb("http://127.0.0.1:9/dicom-web"))
    assert.equal("http://127.0.0.1:9/dicom-web/studies/1.2", route.url(plain, "GET", "studies/1.2"))
    plain:close()
    client:close()
  end)
end)
