-- SPDX-License-Identifier: MIT
-- `healthcare projects <method>` for the methods of the table (healthcare.cli.seed's kind "api"):
-- arguments, -p, the request value on the real schema, --wait and --all, the usage errors, and the
-- --help pages. Pure Lua, no network, no files (spec/46 runs the command).
local api = require("healthcare.api")
local seed = require("healthcare.cli.seed")
local help = require("healthcare.cli.help")

local DS = "projects/p/locations/l/datasets/d"
local SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"
local unpack = table.unpack or unpack -- luacheck: ignore 113 (LuaJIT has no table.unpack)

local function parse(...)
  return seed.parse({ "projects", ... })
end

local function body_of(...)
  local cmd, err = parse(...)
  assert(cmd, err)
  return cmd.body
end

local function refused(...)
  local cmd, err = parse(...)
  assert.is_nil(cmd)
  return err
end

describe("seed.kebab", function()
  it("writes the API's names as the seed does", function()
    for api_name, cli in pairs({ dicomStoreId = "dicom-store-id", updateMask = "update-mask", parent = "parent",
      notificationConfig = "notification-config", hl7V2Store = "hl7-v2-store", _count = "_count",
      ["options.requestedPolicyVersion"] = "options.requested-policy-version", uriPrefix = "uri-prefix" }) do
      assert.equal(cli, seed.kebab(api_name))
    end
  end)
end)

describe("healthcare projects <method> of the table", function()
  it("reads a create: the argument, -p by kebab-case or API name, the request value", function()
    local cmd = assert(parse("locations-datasets-dicom-stores-create", DS, "-p", "dicom-store-id=s1",
      "-r", ".labels=team=imaging", "-r", "notificationConfig.pubsub-topic=projects/p/topics/t",
      "-p", "prettyPrint=false"))
    assert.same({
      action = "call", method = "locations-datasets-dicom-stores-create",
      api = "projects.locations.datasets.dicomStores.create",
      params = { parent = DS, dicomStoreId = "s1", prettyPrint = "false" },
      body = { labels = { team = "imaging" }, notificationConfig = { pubsubTopic = "projects/p/topics/t" } },
      scopes = { SCOPE }, debug = false, token_cache = true,
    }, cmd)
  end)

  it("sends no body without -r, and {} for a lone -r .", function()
    assert.is_nil(body_of("locations-datasets-dicom-stores-create", DS, "-p", "dicom-store-id=s1"))
    assert.same({}, body_of("locations-datasets-dicom-stores-create", DS, "-p", "dicom-store-id=s1", "-r", "."))
  end)

  it("appends to lists, starts a list element on a move, sets map entries, checks numbers and booleans", function()
    local body = body_of("locations-datasets-set-iam-policy", DS, "-r", ".policy.bindings",
      "role=roles/viewer", "members=user:a", "members=user:b", "-r", "..bindings", "role=roles/editor",
      "-r", ".policy.version=3", "-r", ".update-mask=policy")
    assert.same({ policy = { version = 3, bindings = {
      { role = "roles/viewer", members = { "user:a", "user:b" } }, { role = "roles/editor" } } },
      updateMask = "policy" }, body)
    -- through a list without moving into it: its last element (the first, made when there is none)
    body = body_of("locations-datasets-set-iam-policy", DS, "-r", ".policy.bindings.role=r",
      "-r", ".policy.bindings.members=m")
    assert.same({ policy = { bindings = { { role = "r", members = { "m" } } } } }, body)
    -- after a list given as JSON, fields through it go to its last element (a new one after a scalar)
    body = body_of("locations-datasets-set-iam-policy", DS, "-r", '.policy.bindings:=[{"role":"a"}]',
      "-r", ".policy.bindings.members=m", "-r", ".policy.etag:=1", "-r", ".policy.etag=e")
    assert.same({ policy = { bindings = { { role = "a", members = { "m" } } }, etag = "e" } }, body)
    body = body_of("locations-datasets-patch", DS, "-p", "update-mask=satisfiesPzs", "-r", ".satisfies-pzs=true")
    assert.same({ satisfiesPzs = true }, body)
    body = body_of("locations-datasets-dicom-stores-patch", DS .. "/dicomStores/s", "-r", ".labels=a=b=c",
      "-r", ".labels=d=")
    assert.same({ labels = { a = "b=c", d = "" } }, body)
  end)

  it("takes JSON with :=, for empty lists and any value", function()
    local body = body_of("locations-datasets-set-iam-policy", DS, "-r", ".policy.bindings:=[]",
      "-r", ".policy.etag:=\"x\"")
    assert.same({ policy = { bindings = {}, etag = "x" } }, body)
    assert.truthy(refused("locations-datasets-set-iam-policy", DS, "-r", ".policy.bindings:=[")
      :find("'.policy.bindings:=' needs a JSON value, got '[' (", 1, true))
    -- what JSON has not (cjson takes it unless told not to) is no JSON value either
    for _, odd in ipairs({ "NaN", "0x10", "Infinity" }) do
      assert.truthy(refused("locations-datasets-set-iam-policy", DS, "-r", ".policy.version:=" .. odd)
        :find("'.policy.version:=' needs a JSON value, got '" .. odd .. "' (", 1, true), odd)
    end
    -- the schema still applies: what JSON gives is checked as client:call checks a Lua body
    assert.matches("body.policy.version must be a number, got string",
      refused("locations-datasets-set-iam-policy", DS, "-r", ".policy.version:=\"3\""))
  end)

  it("takes a query parameter's values: integers checked, a repeated one's values in order", function()
    local cmd = assert(parse("locations-list", "projects/p", "-p", "extra-location-types=a", "-p",
      "extraLocationTypes=b", "-p", "page-size=20", "-p", "filter="))
    assert.same({ name = "projects/p", extraLocationTypes = { "a", "b" }, pageSize = "20", filter = "" }, cmd.params)
  end)

  it("reads an HttpBody method as the seed reads StoreInstances", function()
    local cmd = assert(parse("locations-datasets-fhir-stores-fhir-create", DS .. "/fhirStores/f", "Patient",
      "-r", ".", "content-type=application/fhir+json", "data=@patient.json"))
    assert.same({ parent = DS .. "/fhirStores/f", type = "Patient" }, cmd.params)
    assert.same({ content_type = "application/fhir+json", data = { file = "patient.json" } }, cmd.body)
    cmd = assert(parse("locations-datasets-fhir-stores-fhir-create", DS .. "/fhirStores/f", "Patient",
      "-r", ".", "content-type=application/fhir+json", "data=@-"))
    assert.same({ stdin = true }, cmd.body.data)
  end)

  it("takes --wait for a method answering an Operation, --all for a list method", function()
    assert.is_true(assert(parse("locations-datasets-create", "projects/p/locations/l", "--wait")).wait)
    assert.is_true(assert(parse("locations-datasets-dicom-stores-studies-delete", DS .. "/dicomStores/s",
      "studies/1.2", "--wait")).wait)
    assert.is_true(assert(parse("locations-datasets-list", "projects/p/locations/l", "--all")).all)
    -- --all's bound: items, and pages (a server whose pages never end)
    local cmd = assert(parse("locations-datasets-list", "projects/p/locations/l", "--all", "--limit", "25"))
    assert.equal(25, cmd.limit)
    assert.equal(7, assert(parse("locations-datasets-list", "projects/p/locations/l", "--all", "--limit=7")).limit)
    assert.is_nil(assert(parse("locations-datasets-list", "projects/p/locations/l", "--all")).limit)
    assert.equal(10000, seed.DEFAULT_LIMIT)
  end)

  it("passes a seed DICOMweb method's own parameters (viewport) in its query", function()
    local cmd = assert(parse("locations-datasets-dicom-stores-studies-series-instances-retrieve-rendered",
      DS .. "/dicomStores/s", "studies/1.2/series/1.3/instances/1.4/rendered", "-p", "viewport=10,10 a/b",
      "-p", "fields=x"))
    assert.equal("viewport=10%2C10%20a%2Fb", cmd.query)
    assert.same({ fields = "x" }, cmd.params)
  end)

  local ERRORS = {
    { { "locations-datasets-dicom-stores-create" }, "missing argument <parent>" },
    { { "locations-datasets-dicom-stores-create", DS, "x" }, "unexpected argument 'x'" },
    { { "locations-datasets-dicom-stores-create", DS, "name=x" },
      "unexpected argument 'name=x'; request value fields go after -r, e.g. -r . labels=<value>" },
    { { "locations-datasets-dicom-stores-create", "projects/p/locations/l" }, "argument <parent> of "
      .. "locations-datasets-dicom-stores-create is 'projects/p/locations/l', which does not match "
      .. "^projects/[^/]+/locations/[^/]+/datasets/[^/]+$" },
    { { "locations-datasets-dicom-stores-get", DS .. "/dicomStores/.." }, "argument <name> of "
      .. "locations-datasets-dicom-stores-get has a '.' or '..' segment: '" .. DS .. "/dicomStores/..'" },
    { { "locations-datasets-get", DS .. "?fields=x" }, "argument <name> of locations-datasets-get contains '?': "
      .. "query parameters go in -p, not in the argument ('" .. DS .. "?fields=x')" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".lables=a=b" },
      "unknown field 'lables' in DicomStore; valid fields: labels, name, notification-config, stream-configs" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".notification-config.topic=x" },
      "unknown field 'topic' in NotificationConfig; valid fields: pubsub-topic, send-for-bulk-import" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".labels=team" },
      "field 'labels' of DicomStore is a map of string: give <key>=<value>, e.g. -r labels=team=imaging" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".labels" }, "cannot move the cursor into 'labels': it "
      .. "is a map of string field of DicomStore, not a structure; valid fields: labels, name, notification-config, "
      .. "stream-configs" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".stream-configs=x" }, "field 'stream-configs' of "
      .. "DicomStore is a list of GoogleCloudHealthcareV1DicomStreamConfig: move the cursor into it "
      .. "(-r stream-configs) to add an element, or give it as JSON, -r stream-configs:=[...]" },
    { { "locations-datasets-dicom-stores-create", DS, "-r", ".notification-config=x" }, "field "
      .. "'notification-config' is a structure (NotificationConfig), not a value; set one of its fields: "
      .. "pubsub-topic, send-for-bulk-import" },
    { { "locations-datasets-set-iam-policy", DS, "-r", ".policy.version=3.x" },
      "field 'version' of Policy is a number, got '3.x'" },
    { { "locations-datasets-set-iam-policy", DS, "-r", ".policy.version=0x10" },
      "field 'version' of Policy is a number, got '0x10'" },
    { { "locations-datasets-patch", DS, "-r", ".satisfies-pzs=yes" },
      "field 'satisfies-pzs' of Dataset is true or false, got 'yes'" },
    { { "locations-datasets-list", "projects/p/locations/l", "-p", "page-size=ten" },
      "parameter page-size must be an integer, got 'ten'" },
    { { "locations-datasets-list", "projects/p/locations/l", "-p", "page-sise=1" },
      "unknown parameter 'page-sise' for locations-datasets-list (did you mean 'page-size'?); valid parameters: "
      .. "page-size, page-token, $-xgafv, access-token, alt, callback, fields, key, oauth-token, pretty-print, "
      .. "quota-user, upload-type, upload-protocol" },
    { { "locations-datasets-list", "projects/p/locations/l", "-p", "pretty-print=1" },
      "parameter pretty-print must be true or false, got '1'" },
    { { "locations-datasets-get", DS, "--wait" },
      "--wait is for methods answering an Operation; locations-datasets-get answers Dataset" },
    { { "locations-datasets-get", DS, "--all" },
      "--all is for list methods (pageToken in, nextPageToken out); locations-datasets-get is not one" },
    { { "locations-datasets-list", "projects/p/locations/l", "--all", "-p", "page-token=x" },
      "--all starts at the first page: not with -p page-token" },
    { { "locations-datasets-list", "projects/p/locations/l", "--limit", "5" }, "--limit applies with --all" },
    { { "locations-datasets-list", "projects/p/locations/l", "--all", "--limit", "0" },
      "--limit must be a whole number of at least 1, got '0'" },
    { { "locations-datasets-list", "projects/p/locations/l", "--all", "--limit", "2.5" },
      "--limit must be a whole number of at least 1, got '2.5'" },
    { { "locations-datasets-list", "projects/p/locations/l", "--all", "--limit", "inf" },
      "--limit must be a whole number of at least 1, got 'inf'" },
    { { "locations-datasets-list", "projects/p/locations/l", "--all", "--limit" }, "option --limit needs a value <n>" },
    { { "locations-datasets-dicom-stores-search-for-studies", DS .. "/dicomStores/s", "studies", "--limit", "3" },
      "--limit is for the methods answering an Operation (--wait) or a list (--all --limit); "
      .. "locations-datasets-dicom-stores-search-for-studies prints its answer as it comes" },
    { { "locations-datasets-get", DS, "-r", ".name=x" },
      "locations-datasets-get takes no request value (-r): it is a GET of its arguments and -p parameters" },
    { { "locations-datasets-fhir-stores-fhir-create", DS .. "/fhirStores/f", "Patient", "-r", "data=x" },
      "missing request value: content-type (e.g. -r . content-type=application/dicom data=@file.dcm)" },
    { { "locations-datasets-dicom-stores-studies-retrieve-study", DS .. "/dicomStores/s", "studies/1.2", "--wait" },
      "--wait is for the methods answering an Operation (--wait) or a list (--all); "
      .. "locations-datasets-dicom-stores-studies-retrieve-study prints its answer as it comes" },
    { { "locations-datasets-dicom-stores-search-for-studies", DS .. "/dicomStores/s", "studies", "--all" },
      "--all is for the methods answering an Operation (--wait) or a list (--all); "
      .. "locations-datasets-dicom-stores-search-for-studies prints its answer as it comes" },
  }
  for _, e in ipairs(ERRORS) do
    it("says \"" .. e[2] .. "\"", function()
      assert.equal(e[2], refused(unpack(e[1])))
    end)
  end

  it("shows the help of any method, whatever else the line holds", function()
    assert.same({ action = "help", help_topic = "locations-datasets-create", method = "locations-datasets-create" },
      parse("locations-datasets-create", "-r", ".bogus", "-p", "x=1", "--help"))
  end)
end)

describe("healthcare projects --help", function()
  it("has a page for each of the 152 methods, with its own -p parameters and its request's fields", function()
    local n = 0
    for _, id in ipairs(api.ids()) do
      local m = api.method(id)
      local text = help.text(m.cli)
      assert.truthy(text:find("healthcare projects " .. m.cli .. "\n", 1, true), id)
      for _, q in ipairs(m.query) do assert.truthy(text:find("-p " .. seed.kebab(q.name) .. "=", 1, true), q.name) end
      if m.request and not m.http_body then
        assert.truthy(text:find("\n  " .. m.request .. ":\n", 1, true), id)
      end
      assert.equal(m.response == "Operation", text:find("[--wait]", 1, true) ~= nil, id)
      n = n + 1
    end
    assert.equal(152, n)
  end)

  it("lists every method on the projects page", function()
    local text = help.text("projects")
    assert.truthy(text:find("Methods (152, every method of the Cloud Healthcare API v1):", 1, true))
    for _, id in ipairs(api.ids()) do assert.truthy(text:find("\n  " .. api.method(id).cli .. "\n", 1, true), id) end
  end)

  it("shows a nested structure once per path, a schema that contains itself by its name only", function()
    local text = help.text("locations-datasets-dicom-stores-create")
    assert.truthy(text:find("\n    notification-config: NotificationConfig\n      pubsub-topic: string\n", 1, true))
    assert.truthy(text:find("\n  -r .stream-configs.bigquery-destination.table-uri=<string>\n", 1, true))
  end)
end)
