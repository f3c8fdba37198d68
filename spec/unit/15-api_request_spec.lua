-- SPDX-License-Identifier: MIT
-- healthcare.api (the generated method table) and healthcare.api.request (the request builder).
-- The oracle is Google's own Node client: scripts/api-oracle called every method with sample
-- parameters against a capture server and kept what it sent in spec/fixtures/api/oracle-v1.json;
-- here the same calls are built in Lua and must give the same verb, path, query and body. Then
-- table-driven cases for every usage error, the escaping of {+x} and {x}, repeated and extra
-- query parameters, JSON bodies (empty arrays, nested schemas) and HttpBody bodies. No test bed:
-- nothing here touches the network.
local H = require "helpers"
local cjson = require "cjson"
local api = require "healthcare.api"
local request = require "healthcare.api.request"
local errors = require "healthcare.errors"

local ORACLE = cjson.decode((assert(H.file_bytes("spec/fixtures/api/oracle-v1.json"))))

--------------------------------------------------------------------------------------
-- JSON text in one canonical form (keys sorted, numbers and strings written one way), telling
-- [] from {}: cjson decodes both to an empty table, which would hide the difference.
--------------------------------------------------------------------------------------
local function canonical(text)
  local pos = 1
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local function fail(what) error(string.format("bad JSON at %d (%s): %s", pos, what, text:sub(pos, pos + 20)), 0) end
  local value
  local function string_token()
    local i = pos + 1
    while true do
      local c = text:find('["\\]', i)
      if not c then fail("unterminated string") end
      if text:sub(c, c) == '"' then
        local tok = text:sub(pos, c)
        pos = c + 1
        return cjson.encode(cjson.decode(tok))
      end
      i = c + 2
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local members = {}
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return "{}" end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then fail("key") end
        local k = string_token()
        ws()
        if text:sub(pos, pos) ~= ":" then fail(":") end
        pos = pos + 1
        members[#members + 1] = k .. ":" .. value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then break end
        if d ~= "," then fail(",") end
      end
      table.sort(members)
      return "{" .. table.concat(members, ",") .. "}"
    elseif c == "[" then
      pos = pos + 1
      local items = {}
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return "[]" end
      while true do
        items[#items + 1] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then break end
        if d ~= "," then fail(",") end
      end
      return "[" .. table.concat(items, ",") .. "]"
    elseif c == '"' then
      return string_token()
    end
    local tok = text:match("^[%w%.%+%-]+", pos)
    if not tok then fail("value") end
    pos = pos + #tok
    if tok == "true" or tok == "false" or tok == "null" then return tok end
    local n = tonumber(tok)
    if not n then fail("number") end
    if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return string.format("%d", n) end
    return string.format("%.17g", n)
  end
  local out = value()
  ws()
  if pos <= #text then fail("trailing text") end
  return out
end

-- The Lua call for a fixture entry: the same parameters, body and HttpBody.
local function lua_inputs(c)
  local params = {}
  for _, pair in ipairs(c.params) do params[pair[1]] = pair[2] end
  local body = c.body
  if c.http_body then body = { content_type = c.http_body.content_type, data = c.http_body.data } end
  return params, body
end

local function pairs_text(list)
  local out = {}
  for i, p in ipairs(list) do out[i] = p[1] .. "=" .. p[2] end
  return table.concat(out, " & ")
end

-- The differences between what Lua builds and what the Node client sent, as lines.
local function differences(c)
  local params, body = lua_inputs(c)
  local req, err = request.build(c.method, params, body)
  if not req then return { "not built: " .. tostring(err) } end
  local sent, diffs = c.sent, {}
  local function check(what, ours, theirs)
    if ours ~= theirs then diffs[#diffs + 1] = string.format("%s: Lua %s, Node %s", what, tostring(ours), tostring(theirs)) end
  end
  check("verb", req.method, sent.verb)
  check("path", "/" .. req.path, sent.path)
  check("query string", req.query_string, sent.query_string)
  check("query", pairs_text(req.query), pairs_text(sent.query))
  check("content type", req.content_type, sent.content_type)
  if sent.body_json then
    check("body", type(req.body) == "string" and canonical(req.body) or tostring(req.body), canonical(sent.body_json))
  elseif sent.body_text then
    check("body", type(req.body) == "table" and req.body.data or tostring(req.body), sent.body_text)
  else
    check("body", req.body, nil)
  end
  return diffs
end

local function build_err(id, params, body, opts)
  local req, err = request.build(id, params, body, opts)
  assert.is_nil(req)
  assert.is_true(errors.is(err), "an error value")
  assert.equal("usage", err.kind)
  return err.message
end

local STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
local DATASET = "projects/p/locations/l/datasets/d"

describe("healthcare.api, the generated method table", function()
  it("is loaded on first use only", function()
    local saved_api, saved_v1 = package.loaded["healthcare.api"], package.loaded["healthcare.api.v1"]
    package.loaded["healthcare.api"], package.loaded["healthcare.api.v1"] = nil, nil
    local fresh = require "healthcare.api"
    assert.is_nil(package.loaded["healthcare.api.v1"])
    assert.equal("POST", fresh.method("projects.locations.datasets.dicomStores.create").http_method)
    assert.is_table(package.loaded["healthcare.api.v1"])
    package.loaded["healthcare.api"], package.loaded["healthcare.api.v1"] = saved_api, saved_v1
  end)

  it("names the package and version it was generated from, and says not to edit it", function()
    local head = H.file_bytes("lua/healthcare/api/v1.lua"):sub(1, 400)
    local t = api.table()
    assert.equal("@googleapis/healthcare", t.package)
    assert.equal(ORACLE.version, t.version)
    assert.truthy(head:find("GENERATED by scripts/gen-api from @googleapis/healthcare " .. t.version, 1, true))
    assert.truthy(head:find("do not edit", 1, true))
  end)

  it("has every method of the API, each called by the oracle", function()
    local ids = api.ids()
    print(string.format("\napi: %d methods in healthcare.api.v1 (%s %s)", #ids, api.table().package,
      api.table().version))
    assert.equal(152, #ids)
    assert.equal(ORACLE.methods, #ids)
    local called = {}
    for _, c in ipairs(ORACLE.calls) do called[c.method] = true end
    for _, id in ipairs(ids) do assert.is_true(called[id] == true, id .. " not called by the oracle") end
    for id in pairs(called) do assert.is_table(api.method(id), id .. " called but not in the table") end
  end)

  it("describes each method: verb, template, required and path parameters, query, types", function()
    local m = api.method("projects.locations.datasets.dicomStores.create")
    assert.same({ "parent" }, m.required)
    assert.equal("v1/{+parent}/dicomStores", m.path)
    assert.same({ "^projects/[^/]+/locations/[^/]+/datasets/[^/]+$" }, m.path_params[1].patterns)
    assert.equal("dicomStoreId", m.query[1].name)
    assert.equal("DicomStore", m.request)
    assert.equal("DicomStore", m.response)
    assert.is_false(m.http_body)
    m = api.method("projects.locations.datasets.dicomStores.studies.storeInstances")
    assert.same({ "parent", "dicomWebPath" }, m.required)
    assert.is_true(m.http_body)
    assert.equal("^.+$", m.path_params[2].patterns[1])
    assert.same({ "^projects/[^/]+/locations/[^/]+/datasets/[^/]+$" },
      api.method("projects.locations.datasets.get").path_params[1].patterns)
    assert.same({ "^projects/[^/]+/locations/[^/]+/services/nlp$" },
      api.method("projects.locations.services.nlp.analyzeEntities").path_params[1].patterns)
    assert.same({ "^projects/[^/]+/locations/[^/]+/datasets/[^/]+/fhirStores/[^/]+/fhir/Patient/[^/]+$" },
      api.method("projects.locations.datasets.fhirStores.fhir.Patient-everything").path_params[1].patterns)
    local types = {}
    for _, q in ipairs(api.method("projects.locations.list").query) do types[q.name] = q.type end
    assert.same({ extraLocationTypes = "repeated", filter = "string", pageSize = "integer", pageToken = "string" }, types)
    local fields = {}
    for _, f in ipairs(api.schema("DicomStore").fields) do fields[f.name] = f end
    assert.equal("map", fields.labels.type)
    assert.equal("string", fields.labels.values.type)
    assert.equal("array", fields.streamConfigs.type)
    assert.equal("GoogleCloudHealthcareV1DicomStreamConfig", fields.streamConfigs.items.ref)
  end)

  it("has a schema for every reference", function()
    local function check(t, where)
      if t.ref then assert.is_table(api.schema(t.ref), where .. " refers to " .. t.ref) end
      if t.items then check(t.items, where) end
      if t.values then check(t.values, where) end
    end
    for name, s in pairs(api.table().schemas) do
      for _, f in ipairs(s.fields) do check(f, name .. "." .. f.name) end
    end
    for _, id in ipairs(api.ids()) do
      local m = api.method(id)
      if m.request then assert.is_table(api.schema(m.request), id) end
      if m.response then assert.is_table(api.schema(m.response), id) end
    end
  end)

  it("gives the seed's 20 DICOMweb methods the command names they have today", function()
    local seed = require "healthcare.cli.seed"
    assert.equal(20, #seed.methods)
    for _, s in ipairs(seed.methods) do
      local m = api.method(s.api)
      assert.is_table(m, s.api)
      assert.equal(s.name, m.cli)
      assert.equal(m, api.by_cli(s.name))
      if s.http_method then assert.equal(s.http_method, m.http_method) end
    end
    assert.equal("locations-datasets-hl7-v2-stores-get-hl7v2-store-metrics",
      api.method("projects.locations.datasets.hl7V2Stores.getHL7v2StoreMetrics").cli)
    -- google-apis-rs turns ".Patient-everything" into "--patient-everything", and its healthcare1
    -- CLI has the page projects_locations-datasets-fhir-stores-fhir--patient-everything.md
    assert.equal("locations-datasets-fhir-stores-fhir--patient-everything",
      api.method("projects.locations.datasets.fhirStores.fhir.Patient-everything").cli)
    assert.equal("locations-datasets-fhir-stores-fhir-search-type",
      api.method("projects.locations.datasets.fhirStores.fhir.search-type").cli)
    assert.equal("locations-datasets-dicom-stores-get-dicom-store-metrics",
      api.method("projects.locations.datasets.dicomStores.getDICOMStoreMetrics").cli)
  end)
end)

describe("request.build against Google's Node client", function()
  it("sends what the Node client sent, for every method and the escaping cases", function()
    local equal, failures = 0, {}
    for _, c in ipairs(ORACLE.calls) do
      local diffs = differences(c)
      if #diffs == 0 then
        equal = equal + 1
      else
        failures[#failures + 1] = c.method .. "\n    " .. table.concat(diffs, "\n    ")
      end
    end
    print(string.format("\noracle: %d of %d requests equal (%d methods, %s %s)", equal, #ORACLE.calls,
      ORACLE.methods, ORACLE.package, ORACLE.version))
    assert.equal("", table.concat(failures, "\n"))
    assert.equal(#ORACLE.calls, equal)
    assert.is_true(#ORACLE.calls >= 152)
  end)

  it("refuses what the Node client would have sent somewhere else", function()
    local why = {
      -- the URL parser climbs: a DICOM store's delete becomes the dataset's
      { "has a '.' or '..' segment", "/v1/projects/p/locations/l/datasets/d/" },
      { "has a '.' or '..' segment", "/v1/projects/p/locations/l/datasets/d/" },
      -- the rest of the name becomes the query, or a fragment that takes the query with it
      { "contains '?'", "/v1/projects/p/locations/l/datasets/d" },
      { "contains '#'", "/v1/projects/p/locations/l/datasets/d" },
      { "which does not match ^projects/[^/]+/locations/[^/]+/datasets/[^/]+$", "/v1/projects/p/locations/l" },
    }
    assert.equal(#why, #ORACLE.refused)
    for i, c in ipairs(ORACLE.refused) do
      local params = lua_inputs(c)
      local msg = build_err(c.method, params)
      assert.truthy(msg:find(why[i][1], 1, true), msg)
      assert.equal(why[i][2], c.sent.path)
    end
    assert.equal("fields=name", ORACLE.refused[3].sent.query_string)
    assert.equal("", ORACLE.refused[4].sent.query_string) -- '#x' swallowed fields=name
  end)

  -- url-template (the client's RFC 6570 expansion) leaves a whole part unencoded when it holds a
  -- '%' and one hex digit: 'a%4 b' goes out with a raw space. Lua encodes the '%' instead.
  local DEVIATIONS = { ["a%4"] = "a%254", ["a%4 b"] = "a%254%20b", ["a%41%4"] = "a%41%254" }

  it("escapes {+x}, {x} and query values as the client's url-template and qs do", function()
    assert.is_true(#ORACLE.strings > 20)
    for _, s in ipairs(ORACLE.strings) do
      assert.equal(s.simple, request.escape(s.value), s.value)
      assert.equal(s.query, request.escape(s.value), s.value)
      if DEVIATIONS[s.value] then
        assert.not_equal(s.reserved, DEVIATIONS[s.value])
        assert.equal(DEVIATIONS[s.value], request.escape_reserved(s.value), s.value)
      else
        assert.equal(s.reserved, request.escape_reserved(s.value), s.value)
      end
    end
  end)
end)

describe("request.build", function()
  it("keeps '/' for {+x} and escapes it for {x}", function()
    assert.equal("a/b:c@d", request.escape_reserved("a/b:c@d"))
    assert.equal("a%2Fb%3Ac%40d", request.escape("a/b:c@d"))
    local fhir = "projects/p/locations/l/datasets/d/fhirStores/f"
    local req = assert(request.build("projects.locations.datasets.fhirStores.fhir.create",
      { parent = fhir, type = "Ob s:x@y" }, { content_type = "application/fhir+json", data = "{}" }))
    assert.equal("v1/" .. fhir .. "/fhir/Ob%20s:x@y", req.path)
    req = assert(request.build("projects.locations.datasets.fhirStores.fhir.search-type",
      { parent = fhir, resourceType = "Ob s:x@y" }))
    assert.equal("v1/" .. fhir .. "/fhir/Ob%20s%3Ax%40y/_search", req.path)
    req = assert(request.build("projects.locations.datasets.dicomStores.studies.series.retrieveSeries",
      { parent = STORE, dicomWebPath = "studies/1.2/series/1.2.3" }))
    assert.equal("v1/" .. STORE .. "/dicomWeb/studies/1.2/series/1.2.3", req.path)
    assert.equal("GET", req.method)
    assert.equal("", req.query_string)
    assert.is_nil(req.body)
  end)

  it("repeats repeated query parameters, in the table's order, and leaves out empty lists", function()
    local req = assert(request.build("projects.locations.list",
      { name = "projects/p", pageSize = 10, extraLocationTypes = { "a", "b c" }, filter = "x=1" }))
    assert.same({ { "extraLocationTypes", "a" }, { "extraLocationTypes", "b c" }, { "filter", "x=1" },
      { "pageSize", "10" } }, req.query)
    assert.equal("extraLocationTypes=a&extraLocationTypes=b%20c&filter=x%3D1&pageSize=10", req.query_string)
    req = assert(request.build("projects.locations.list", { name = "projects/p", extraLocationTypes = "one" }))
    assert.equal("extraLocationTypes=one", req.query_string)
    req = assert(request.build("projects.locations.list", { name = "projects/p", extraLocationTypes = {} }))
    assert.equal("", req.query_string)
  end)

  it("writes integers and booleans as Google's client does, from numbers or their text", function()
    local id = "projects.locations.datasets.list"
    for _, case in ipairs({ { 25, "25" }, { 25.0, "25" }, { "25", "25" }, { 0, "0" }, { -3, "-3" } }) do
      local req = assert(request.build(id, { parent = "projects/p/locations/l", pageSize = case[1] }))
      assert.equal("pageSize=" .. case[2], req.query_string)
    end
    for _, case in ipairs({ { true, "true" }, { false, "false" }, { "false", "false" } }) do
      local req = assert(request.build(id, { parent = "projects/p/locations/l", prettyPrint = case[1] }))
      assert.equal("prettyPrint=" .. case[2], req.query_string)
    end
  end)

  it("appends opts.query (QIDO-RS and FHIR search parameters) after the declared ones", function()
    local req = assert(request.build("projects.locations.datasets.dicomStores.searchForStudies",
      { parent = STORE, dicomWebPath = "studies", fields = "a" },
      nil, { query = { { "PatientID", "P 1" }, { "includefield", "00100010" }, { "includefield", "all" },
        { "limit", 10 }, { "fuzzymatching", true } } }))
    assert.equal("fields=a&PatientID=P%201&includefield=00100010&includefield=all&limit=10&fuzzymatching=true",
      req.query_string)
    req = assert(request.build("projects.locations.datasets.dicomStores.searchForStudies",
      { parent = STORE, dicomWebPath = "studies" }, nil, { query = { b = "2", a = { "1", "x" } } }))
    assert.equal("a=1&a=x&b=2", req.query_string)
  end)

  it("encodes a JSON body from the request's schema: [] for empty lists, {} for empty objects", function()
    local req = assert(request.build("projects.locations.datasets.dicomStores.create",
      { parent = DATASET, dicomStoreId = "s1" },
      { labels = {}, streamConfigs = {}, notificationConfig = {}, name = "a/b" }))
    assert.equal("application/json", req.content_type)
    assert.equal([[{"labels":{},"name":"a\/b","notificationConfig":{},"streamConfigs":[]}]], req.body)
    assert.equal("dicomStoreId=s1", req.query_string)
    req = assert(request.build("projects.locations.datasets.setIamPolicy", { resource = DATASET },
      { policy = { bindings = { { role = "roles/x", members = { "user:a@b" } } }, version = 3, etag = "BwX=" },
        updateMask = "bindings,etag" }))
    assert.equal(canonical([[{"policy":{"bindings":[{"members":["user:a@b"],"role":"roles/x"}],"etag":"BwX=",
      "version":3},"updateMask":"bindings,etag"}]]), canonical(req.body))
    -- "any" values: a list is an array, request.array_mt marks an empty one
    req = assert(request.build("projects.locations.datasets.fhirStores.fhir.search",
      { parent = "projects/p/locations/l/datasets/d/fhirStores/f" }, { resourceType = "Patient" }))
    assert.equal([[{"resourceType":"Patient"}]], req.body)
    local any_field
    for _, f in ipairs(api.schema("Operation").fields) do if f.name == "metadata" then any_field = f end end
    assert.equal("map", any_field.type)
    assert.equal("any", any_field.values.type)
  end)

  it("passes an HttpBody through: a string or { file = path }, with its content type", function()
    local body = { content_type = "application/dicom", data = { file = "/tmp/x.dcm" } }
    local req = assert(request.build("projects.locations.datasets.dicomStores.studies.storeInstances",
      { parent = STORE, dicomWebPath = "studies/1.2.3" }, body))
    assert.equal(body, req.body)
    assert.equal("application/dicom", req.content_type)
    assert.equal("POST", req.method)
    assert.equal("v1/" .. STORE .. "/dicomWeb/studies/1.2.3", req.path)
  end)

  -- Each usage error: the call, then strings its message must contain (closest choices first).
  local S = "projects.locations.datasets.dicomStores.create"
  local CASES = {
    { "unknown method, close to one", { "projects.locations.datasets.dicomStore.create", {} },
      { "unknown method 'projects.locations.datasets.dicomStore.create'; closest: " .. S .. ", ",
        "healthcare.api.ids() lists all 152" } },
    { "unknown method, far from all", { "nope", {} }, { "unknown method 'nope'; closest: " } },
    { "unknown parameter", { S, { parent = DATASET, dicomStoreID = "x" } },
      { "unknown parameter 'dicomStoreID' for " .. S .. "; valid parameters: dicomStoreId, " } },
    { "a misspelt required parameter is unknown, not missing", { S, { Parent = DATASET } },
      { "unknown parameter 'Parent' for " .. S .. "; valid parameters: parent, " } },
    { "missing required parameter",
      { "projects.locations.datasets.dicomStores.storeInstances", { parent = STORE } },
      { "missing required parameter 'dicomWebPath' for projects.locations.datasets.dicomStores.storeInstances "
        .. "(required, in order: parent, dicomWebPath)" } },
    { "integer given text", { "projects.locations.datasets.list", { parent = "projects/p/locations/l", pageSize = "ten" } },
      { "parameter 'pageSize' must be an integer, got 'ten' (projects.locations.datasets.list)" } },
    { "integer given a fraction", { "projects.locations.datasets.list", { parent = "projects/p/locations/l", pageSize = 1.5 } },
      { "parameter 'pageSize' must be an integer, got non-integer number" } },
    { "boolean given text", { "projects.locations.datasets.list", { parent = "projects/p/locations/l", prettyPrint = "yes" } },
      { "parameter 'prettyPrint' must be a boolean, got 'yes'" } },
    { "string given a number", { "projects.locations.list", { name = "projects/p", filter = 5 } },
      { "parameter 'filter' must be a string, got number" } },
    { "repeated given numbers", { "projects.locations.list", { name = "projects/p", extraLocationTypes = { 1, 2 } } },
      { "parameter 'extraLocationTypes' must be a string or a list of strings; element 1 is number" } },
    { "repeated given a map", { "projects.locations.list", { name = "projects/p", extraLocationTypes = { a = "b" } } },
      { "parameter 'extraLocationTypes' must be a string or a list of strings, got a table that is not a list" } },
    { "path parameter given a number", { "projects.locations.datasets.get", { name = 42 } },
      { "parameter 'name' of projects.locations.datasets.get must be a string, got number" } },
    { "path parameter not matching its pattern", { "projects.locations.datasets.get", { name = "projects/p/locations/l" } },
      { "parameter 'name' of projects.locations.datasets.get is 'projects/p/locations/l', which does not match "
        .. "^projects/[^/]+/locations/[^/]+/datasets/[^/]+$" } },
    { "path parameter matching none of its patterns",
      { "projects.locations.datasets.dicomStores.setBlobStorageSettings", { resource = DATASET } },
      { "which does not match ^projects/[^/]+/locations/[^/]+/datasets/[^/]+/dicomStores/[^/]+$ or " } },
    { "empty path parameter", { "projects.locations.datasets.get", { name = "" } },
      { "parameter 'name' of projects.locations.datasets.get is empty; it must match ^projects/" } },
    { "'..' segment", { "projects.locations.datasets.dicomStores.delete", { name = STORE:gsub("/s$", "/..") } },
      { "has a '.' or '..' segment: 'projects/p/locations/l/datasets/d/dicomStores/..'" } },
    { "'.' segment, encoded", { "projects.locations.datasets.dicomStores.studies.retrieveStudy",
      { parent = STORE, dicomWebPath = "studies/%2E" } }, { "has a '.' or '..' segment" } },
    { "'..' in a {x} value", { "projects.locations.datasets.fhirStores.fhir.search-type",
      { parent = "projects/p/locations/l/datasets/d/fhirStores/f", resourceType = ".." } }, { "has a '.' or '..' segment" } },
    { "'?' in a {+x} value", { "projects.locations.datasets.dicomStores.searchForStudies",
      { parent = STORE, dicomWebPath = "studies?PatientID=1" } },
      { "parameter 'dicomWebPath' of projects.locations.datasets.dicomStores.searchForStudies contains '?': query "
        .. "parameters go in params or opts.query" } },
    { "'#' in a {+x} value", { "projects.locations.datasets.get", { name = DATASET .. "#x" } }, { "contains '#'" } },
    { "control character in a path parameter", { "projects.locations.datasets.get", { name = DATASET .. "\n" } },
      { "contains a control character: 'projects/p/locations/l/datasets/d?'" } },
    { "path parameter not UTF-8", { "projects.locations.datasets.get", { name = DATASET .. "\255" } },
      { "parameter 'name' of projects.locations.datasets.get is not valid UTF-8 text" } },
    { "query value not UTF-8", { "projects.locations.list", { name = "projects/p", filter = "\192\128" } },
      { "parameter 'filter' must be a string, got text that is not valid UTF-8" } },
    { "a body for a method that takes none", { "projects.locations.datasets.get", { name = DATASET }, {} },
      { "projects.locations.datasets.get takes no request body" } },
    { "unknown body field", { S, { parent = DATASET }, { lables = { a = "b" } } },
      { "body has no field 'lables' (DicomStore); valid fields: labels, name, " } },
    { "unknown nested body field", { "projects.locations.datasets.setIamPolicy", { resource = DATASET },
      { policy = { bindings = { { rol = "x" } } } } },
      { "body.policy.bindings[1] has no field 'rol' (Binding); valid fields: role, " } },
    { "map field given text", { S, { parent = DATASET }, { labels = "team=imaging" } },
      { "body.labels must be a table of name = value, got string" } },
    { "array field given a map", { S, { parent = DATASET }, { streamConfigs = { a = 1 } } },
      { "body.streamConfigs must be a list, got a table with other keys" } },
    { "object field given a list", { S, { parent = DATASET }, { notificationConfig = { "x" } } },
      { "body.notificationConfig must be a table with the fields of NotificationConfig, got a list" } },
    { "string field given a number", { S, { parent = DATASET }, { name = 1 } }, { "body.name must be a string, got number" } },
    { "number field given text", { "projects.locations.datasets.setIamPolicy", { resource = DATASET },
      { policy = { version = "3" } } }, { "body.policy.version must be a number, got string" } },
    { "not a finite number", { "projects.locations.datasets.setIamPolicy", { resource = DATASET },
      { policy = { version = 0 / 0 } } }, { "body.policy.version is not a finite number" } },
    { "body text not UTF-8", { S, { parent = DATASET }, { name = "\255" } }, { "body.name is not valid UTF-8 text" } },
    { "map value of the wrong type", { S, { parent = DATASET }, { labels = { a = 1 } } },
      { "body.labels.a must be a string, got number" } },
    { "body not a table", { S, { parent = DATASET }, "{}" },
      { "body must be a table with the fields of DicomStore, got string" } },
    { "HttpBody without content_type", { "projects.locations.datasets.dicomStores.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, { data = "x" } },
      { "needs content_type, a media type such as application/dicom" } },
    { "HttpBody with a content_type that would break the header", { "projects.locations.datasets.dicomStores.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, { content_type = "application/dicom\r\nX-Evil: 1", data = "x" } },
      { "needs content_type, a media type such as application/dicom" } },
    { "map key that is not a string", { S, { parent = DATASET }, { labels = { "a" } } },
      { "body.labels has a key that is not a string (number 1)" } },
    { "map key that is not UTF-8", { S, { parent = DATASET }, { labels = { ["\255"] = "a" } } },
      { "body.labels has a key that is not valid UTF-8 text" } },
    { "HttpBody with data of the wrong type", { "projects.locations.datasets.dicomStores.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, { content_type = "application/dicom", data = 1 } },
      { "must be a string or { file = path }, got number" } },
    { "HttpBody with an unknown field", { "projects.locations.datasets.dicomStores.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, { content_type = "application/dicom", data = "x", extra = 1 } },
      { "has no field 'extra'; valid fields: content_type, data" } },
    { "HttpBody given text", { "projects.locations.datasets.dicomStores.storeInstances",
      { parent = STORE, dicomWebPath = "studies" }, "raw" }, { "is an HttpBody: { content_type = ..., data = " } },
    { "opts.query repeating a declared parameter", { "projects.locations.datasets.list",
      { parent = "projects/p/locations/l" }, nil, { query = { { "pageSize", "3" } } } },
      { "'pageSize' is a parameter of the method: give it in params, not opts.query" } },
    { "opts.query with a bad pair", { "projects.locations.datasets.list", { parent = "projects/p/locations/l" }, nil,
      { query = { { "x" } } } }, { "opts.query[1] must be { name, value }" } },
  }

  for _, case in ipairs(CASES) do
    it("refuses " .. case[1] .. ", naming the valid choices", function()
      local a = case[2]
      local msg = build_err(a[1], a[2], a[3], a[4])
      for _, want in ipairs(case[3]) do
        assert.truthy(msg:find(want, 1, true), "\nwant: " .. want .. "\ngot:  " .. msg)
      end
    end)
  end

  it("refuses a body that contains itself instead of recursing forever", function()
    -- SchemaGroup -> members -> GroupOrSegment -> group: a recursive schema, and a table that follows it
    local group = { name = "ADT_A01" }
    group.members = { { group = group } }
    local msg = build_err("projects.locations.datasets.hl7V2Stores.create", { parent = DATASET },
      { parserConfig = { schema = { schemas = { { messageSchemaConfigs = { ADT_A01 = group } } } } } })
    assert.truthy(msg:find("body.parserConfig.schema.schemas[1].messageSchemaConfigs.ADT_A01.members[1].group.members",
      1, true), msg)
    assert.truthy(msg:find("is nested too deeply (a table that contains itself?)", 1, true), msg)
    -- and in a value of any JSON shape (Operation.metadata)
    local meta = { a = 1 }
    meta.self = meta
    local json, err = request.encode({ metadata = { k = meta } }, "Operation")
    assert.is_nil(json)
    assert.truthy(err:find("body.metadata.k.self.self", 1, true), err)
    -- a deep but finite one is fine
    local ok_group = { name = "g", members = { { group = { name = "h", members = {} } } } }
    assert.is_table(request.build("projects.locations.datasets.hl7V2Stores.create", { parent = DATASET },
      { parserConfig = { schema = { schemas = { { messageSchemaConfigs = { G = ok_group } } } } } }))
  end)

  it("encodes values of any JSON shape: lists as arrays, request.array_mt for an empty one", function()
    local json = assert(request.encode({ name = "op", done = true, metadata = { counts = { 1, 2 },
      none = setmetatable({}, request.array_mt), empty = {}, nested = { b = "x", a = cjson.null } } }, "Operation"))
    assert.equal([[{"done":true,"metadata":{"counts":[1,2],"empty":{},"nested":{"a":null,"b":"x"},"none":[]},]]
      .. [["name":"op"}]], json)
  end)

  it("never prints the value of a secret parameter in an error", function()
    local msg = build_err("projects.locations.list", { name = "projects/p", access_token = "ya29.sekrit\255" })
    assert.falsy(msg:find("sekrit", 1, true), msg)
    msg = build_err("projects.locations.list", { name = "projects/p", key = { "sekrit" } })
    assert.falsy(msg:find("sekrit", 1, true), msg)
    assert.truthy(msg:find("parameter 'key' must be a string, got table", 1, true), msg)
  end)

  it("lists the closest choices first", function()
    assert.same({ "dicomStoreId", "parent" }, request.closest("dicomstoreid", { "parent", "dicomStoreId" }))
    assert.same({ "labels" }, request.closest("lables", { "name", "labels", "streamConfigs" }, 1))
  end)

  it("raises for misuse, with the caller's position", function()
    local line = debug.getinfo(1, "l").currentline
    local ok, err = pcall(request.build, 42)
    assert.is_false(ok)
    assert.truthy(err:find("bad argument #1 to 'build' (string expected, got number)", 1, true), err)
    ok, err = pcall(function() local r = request.build("projects.locations.list", "projects/p") return r end)
    assert.is_false(ok)
    assert.truthy(err:find("15-api_request_spec.lua:" .. (line + 4) .. ": bad argument #2 to 'build'", 1, true), err)
    ok, err = pcall(request.build, "projects.locations.list", {}, nil, { bogus = 1 })
    assert.is_false(ok)
    assert.truthy(err:find("unknown option 'bogus' to 'build'; valid options: query", 1, true), err)
  end)
end)
