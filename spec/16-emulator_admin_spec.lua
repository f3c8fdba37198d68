-- SPDX-License-Identifier: MIT
-- The test bed's emulator (spec/support/emulator.py + emulator_admin.py) answering the Cloud
-- Healthcare API's admin surface as Google does: datasets and DICOM/FHIR/HL7v2 stores, IAM
-- policies, long-running operations, Google's error envelope. Driven with the curl command (not
-- our library: the Lua wiring of these methods comes later), against a private emulator (this
-- file changes its config and counts its stats). The requests Google's own Node client sends
-- (spec/fixtures/api/oracle-v1.json) are replayed for every method the emulator serves.
local H = require "helpers"
if not H.need_testbed() then return end
local api = require "healthcare.api"
local cjson = H.json
local E = H.env

local em = require("support.emulator_instance").start()
local TOKEN = E.token .. "-private"
local LOCATION = "projects/test-project/locations/us-central1"
local DS = "projects.locations.datasets."
local OP_NAME = "^projects/test%-project/locations/us%-central1/datasets/[^/]+/operations/%d+$"

teardown(function() em:stop() end)

local function enc(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- A query string from { name, value } pairs (kept in order) or a map.
local function query_string(q)
  local parts = {}
  if q[1] then
    for _, kv in ipairs(q) do parts[#parts + 1] = enc(kv[1]) .. "=" .. enc(kv[2]) end
  else
    local names = {}
    for k in pairs(q) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do parts[#parts + 1] = enc(k) .. "=" .. enc(q[k]) end
  end
  return table.concat(parts, "&")
end

-- call(verb, path under /v1/, query table or nil, body table/string or nil, opts) -> H.curl's result.
-- opts.token = false sends no credential.
local function call(verb, path, query, body, opts)
  opts = opts or {}
  local args = { "--path-as-is", "-X", verb }
  if opts.token ~= false then
    args[#args + 1] = "-H"
    args[#args + 1] = "Authorization: Bearer " .. (opts.token or TOKEN)
  end
  if body ~= nil then
    args[#args + 1] = "-H"
    args[#args + 1] = "Content-Type: application/json"
    args[#args + 1] = "--data-binary"
    args[#args + 1] = type(body) == "string" and body or cjson.encode(body)
  end
  local qs = query and query_string(query) or ""
  args[#args + 1] = em.endpoint .. "/" .. path .. (qs ~= "" and "?" .. qs or "")
  return H.curl(args)
end

local function ok(r)
  assert(r.status == 200, "expected 200, got " .. tostring(r.status) .. ": " .. r.body)
  return r.json
end

-- Google's envelope: status, the RPC status name, and the field named in fieldViolations.
local function envelope(r, status, name, field)
  assert.equal(status, r.status, r.body)
  assert.is_table(r.json, r.body)
  assert.equal(status, r.json.error.code)
  assert.equal(name, r.json.error.status)
  if field then
    local v = r.json.error.details[1].fieldViolations[1]
    assert.equal(field, v.field)
    assert.truthy(r.json.error.message:find(field, 1, true), r.json.error.message)
  end
  return r.json.error
end

local fresh = H.fresh_id

local function config(t) return em:control("config", t) end

-- A dataset of our own (the create operation not waited for: the emulator makes it at once).
local function new_dataset(body)
  local id = fresh("ds")
  local r = ok(call("POST", LOCATION .. "/datasets", { datasetId = id }, body or {}))
  assert.matches(OP_NAME, r.name)
  return LOCATION .. "/datasets/" .. id, r.name
end

local function new_store(dataset, kind, body, id)
  id = id or fresh(kind:sub(1, 4))
  local params = { [({ dicomStores = "dicomStoreId", fhirStores = "fhirStoreId",
    hl7V2Stores = "hl7V2StoreId" })[kind]] = id }
  if kind == "fhirStores" and not body then body = { version = "R4" } end
  return ok(call("POST", dataset .. "/" .. kind, params, body or {})), dataset .. "/" .. kind .. "/" .. id
end

local function poll(op) return ok(call("GET", op)) end

local function keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

describe("emulator admin: datasets", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null }) end)

  it("create answers an operation, done after the configured polls with the dataset; get answers it", function()
    config({ operation_polls = 2 })
    local id = fresh("ds")
    local created = ok(call("POST", LOCATION .. "/datasets", { datasetId = id }, { timeZone = "Europe/Paris" }))
    assert.same({ "name" }, keys(created))
    assert.matches(OP_NAME, created.name)
    assert.equal(LOCATION .. "/datasets/" .. id .. "/operations/", created.name:match("^(.*/operations/)"))
    for _ = 1, 2 do
      local op = poll(created.name)
      assert.is_nil(op.done)
      assert.equal("type.googleapis.com/google.cloud.healthcare.v1.OperationMetadata", op.metadata["@type"])
      assert.equal("google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset", op.metadata.apiMethodName)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z$", op.metadata.createTime)
      assert.is_nil(op.metadata.endTime)
    end
    local op = poll(created.name)
    assert.is_true(op.done)
    assert.is_string(op.metadata.endTime)
    assert.matches("^https://console%.cloud%.google%.com/logs/", op.metadata.logsUrl)
    assert.same({ ["@type"] = "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset",
      name = LOCATION .. "/datasets/" .. id, timeZone = "Europe/Paris" }, op.response)
    assert.same({ name = LOCATION .. "/datasets/" .. id, timeZone = "Europe/Paris" },
      ok(call("GET", LOCATION .. "/datasets/" .. id)))
    -- Done stays done.
    assert.is_true(poll(created.name).done)
  end)

  it("create with operation_polls 0 is done at the first poll; time zone defaults to UTC", function()
    config({ operation_polls = 0 })
    local name, op = new_dataset()
    assert.is_true(poll(op).done)
    assert.equal("UTC", ok(call("GET", name)).timeZone)
  end)

  it("create that Google fails (operation_error) ends in that error and makes no dataset", function()
    config({ operation_error = { code = 8, message = "quota exceeded for datasets" }, operation_polls = 0 })
    local id = fresh("ds")
    local op = poll(ok(call("POST", LOCATION .. "/datasets", { datasetId = id })).name)
    assert.is_true(op.done)
    assert.same({ code = 8, message = "quota exceeded for datasets" }, op.error)
    assert.is_nil(op.response)
    envelope(call("GET", LOCATION .. "/datasets/" .. id), 404, "NOT_FOUND")
  end)

  it("a second create of the same id is 409 ALREADY_EXISTS, the first one untouched", function()
    local name = new_dataset({ timeZone = "Asia/Tokyo" })
    local id = name:match("[^/]+$")
    local before = em:count("operations_created")
    local e = envelope(call("POST", LOCATION .. "/datasets", { datasetId = id }, { timeZone = "UTC" }),
      409, "ALREADY_EXISTS")
    assert.truthy(e.message:find(name, 1, true))
    assert.equal(before, em:count("operations_created"))
    assert.equal("Asia/Tokyo", ok(call("GET", name)).timeZone)
  end)

  it("refuses a bad or missing datasetId with 400 INVALID_ARGUMENT naming it", function()
    for _, id in ipairs({ "a b", "a/b", "a:b", "é/", string.rep("x", 257), "semi;colon", "" }) do
      envelope(call("POST", LOCATION .. "/datasets", { datasetId = id }, {}), 400, "INVALID_ARGUMENT", "datasetId")
    end
    envelope(call("POST", LOCATION .. "/datasets", nil, {}), 400, "INVALID_ARGUMENT", "datasetId")
    -- Google's rule is letters and digits of any script, _ - and . (1 to 256 of them).
    for _, id in ipairs({ "données.v1_x-y", string.rep("x", 256) }) do
      ok(call("POST", LOCATION .. "/datasets", { datasetId = id }, {}))
      ok(call("GET", LOCATION .. "/datasets/" .. enc(id)))
    end
  end)

  it("refuses an unknown body field, a bad time zone, bad JSON, an unknown query parameter", function()
    envelope(call("POST", LOCATION .. "/datasets", { datasetId = fresh("ds") }, { timezone = "UTC" }),
      400, "INVALID_ARGUMENT", "timezone")
    envelope(call("POST", LOCATION .. "/datasets", { datasetId = fresh("ds") }, { timeZone = "Mars/Olympus" }),
      400, "INVALID_ARGUMENT", "timeZone")
    local e = envelope(call("POST", LOCATION .. "/datasets", { datasetId = fresh("ds") }, "{not json"),
      400, "INVALID_ARGUMENT")
    assert.matches("^Invalid JSON payload received%.", e.message)
    envelope(call("POST", LOCATION .. "/datasets", { datasetId = fresh("ds") }, "[1,2]"), 400, "INVALID_ARGUMENT")
    envelope(call("GET", LOCATION .. "/datasets", { pagesize = "2" }), 400, "INVALID_ARGUMENT", "pagesize")
    envelope(call("GET", LOCATION .. "/datasets", { pageSize = "ten" }), 400, "INVALID_ARGUMENT", "pageSize")
    envelope(call("GET", LOCATION .. "/datasets", { pageSize = "-1" }), 400, "INVALID_ARGUMENT", "pageSize")
  end)

  it("refuses a body over 1 MiB with Google's 400, and goes on serving", function()
    local big = H.tmpdir() .. "/big.json"
    H.write_file(big, '{"timeZone": "' .. string.rep("x", 1100000) .. '"}')
    local r = H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. TOKEN, "-H", "Content-Type: application/json",
      "--data-binary", "@" .. big, em.endpoint .. "/" .. LOCATION .. "/datasets?datasetId=" .. fresh("ds") })
    local e = envelope(r, 400, "INVALID_ARGUMENT")
    assert.equal("Request payload size exceeds the limit: 1048576 bytes.", e.message)
    new_dataset()
  end)

  it("patch changes only the fields in updateMask; unknown, immutable or no mask is 400 naming updateMask", function()
    local name = new_dataset({ timeZone = "Europe/Paris" })
    assert.same({ name = name, timeZone = "America/New_York" },
      ok(call("PATCH", name, { updateMask = "timeZone" }, { timeZone = "America/New_York", name = "other" })))
    -- snake_case paths as Google takes them
    assert.equal("Asia/Tokyo", ok(call("PATCH", name, { updateMask = "time_zone" }, { timeZone = "Asia/Tokyo" })).timeZone)
    local e = envelope(call("PATCH", name, { updateMask = "timeZone,colour" }, { timeZone = "UTC" }),
      400, "INVALID_ARGUMENT", "updateMask")
    assert.truthy(e.message:find('"colour"', 1, true), e.message)
    envelope(call("PATCH", name, { updateMask = "name" }, { name = "x" }), 400, "INVALID_ARGUMENT", "updateMask")
    envelope(call("PATCH", name, nil, { timeZone = "UTC" }), 400, "INVALID_ARGUMENT", "updateMask")
    assert.equal("Asia/Tokyo", ok(call("GET", name)).timeZone)
  end)

  it("lists across pages: each dataset exactly once, opaque tokens, none on the last page", function()
    local project = "projects/list-" .. math.random(1, 1e9) .. "/locations/europe-west4"
    local made = {}
    for i = 1, 7 do
      local id = string.format("d%02d", i)
      ok(call("POST", project .. "/datasets", { datasetId = id }, {}))
      made[project .. "/datasets/" .. id] = true
    end
    local seen, pages, token = {}, 0, nil
    local before = em:count("admin_requests", DS .. "list")
    repeat
      local page = ok(call("GET", project .. "/datasets", { pageSize = "3", pageToken = token }))
      pages = pages + 1
      for _, d in ipairs(page.datasets) do
        assert.is_nil(seen[d.name], "listed twice: " .. d.name)
        seen[d.name] = true
      end
      token = page.nextPageToken
      if token then
        assert.equal(3, #page.datasets)
        local decoded = H.run("printf %s " .. H.q(token) .. " | tr '_-' '/+' | base64 -d")
        assert.falsy(decoded:find("datasets/d0", 1, true), "the token shows a name: " .. token)
        assert.falsy(token:find("datasets", 1, true), "the token shows a name: " .. token)
      end
    until not token
    assert.equal(3, pages)
    assert.same(made, seen)
    assert.equal(3, em:count("admin_requests", DS .. "list") - before)
    -- A token only works for the list that made it, and only as it was made.
    local first = ok(call("GET", project .. "/datasets", { pageSize = "2" }))
    envelope(call("GET", LOCATION .. "/datasets", { pageToken = first.nextPageToken }), 400, "INVALID_ARGUMENT",
      "pageToken")
    envelope(call("GET", project .. "/datasets", { pageToken = first.nextPageToken .. "x" }), 400,
      "INVALID_ARGUMENT", "pageToken")
    envelope(call("GET", project .. "/datasets", { pageToken = "garbage" }), 400, "INVALID_ARGUMENT", "pageToken")
    -- Nothing there: an empty answer, as Google leaves out an empty list.
    assert.same({}, ok(call("GET", "projects/none-" .. math.random(1, 1e9) .. "/locations/us-east4/datasets")))
  end)

  it("delete removes the dataset with everything in it: stores, their policies, its operations", function()
    local name, op = new_dataset()
    local _, dicom = new_store(name, "dicomStores")
    local _, fhir = new_store(name, "fhirStores")
    ok(call("POST", dicom .. ":setIamPolicy", nil,
      { policy = { bindings = { { role = "roles/healthcare.dicomViewer", members = { "user:a@example.com" } } } } }))
    assert.same({}, ok(call("DELETE", name)))
    for _, gone in ipairs({ name, dicom, fhir, op, dicom .. ":getIamPolicy" }) do
      envelope(call("GET", gone), 404, "NOT_FOUND")
    end
    envelope(call("DELETE", name), 404, "NOT_FOUND")
    -- Its DICOM store no longer takes DICOMweb either.
    envelope(call("GET", dicom .. "/dicomWeb/studies"), 404, "NOT_FOUND")
    -- The id is free again, and the new dataset starts empty.
    ok(call("POST", LOCATION .. "/datasets", { datasetId = name:match("[^/]+$") }, {}))
    assert.same({}, ok(call("GET", name .. "/dicomStores")))
  end)
end)

describe("emulator admin: stores", function()
  local KINDS = { "dicomStores", "fhirStores", "hl7V2Stores" }
  local ID = { dicomStores = "dicomStoreId", fhirStores = "fhirStoreId", hl7V2Stores = "hl7V2StoreId" }

  it("create answers the store itself; get answers the same", function()
    local dataset = new_dataset()
    local bodies = {
      dicomStores = { labels = { team = "imaging" }, notificationConfig = { pubsubTopic = "projects/p/topics/t" } },
      fhirStores = { version = "R4", enableUpdateCreate = true, labels = { env = "test" } },
      hl7V2Stores = { labels = { team = "lab" }, rejectDuplicateMessage = true },
    }
    for _, kind in ipairs(KINDS) do
      local store, name = new_store(dataset, kind, bodies[kind])
      local want = { name = name }
      for k, v in pairs(bodies[kind]) do want[k] = v end
      assert.same(want, store)
      assert.same(want, ok(call("GET", name)))
    end
  end)

  it("a second create of the same id is 409 ALREADY_EXISTS; the same id in another kind is another store", function()
    local dataset = new_dataset()
    for _, kind in ipairs(KINDS) do new_store(dataset, kind, nil, "same") end
    for _, kind in ipairs(KINDS) do
      local e = envelope(call("POST", dataset .. "/" .. kind, { [ID[kind]] = "same" },
        kind == "fhirStores" and { version = "R4" } or {}), 409, "ALREADY_EXISTS")
      assert.truthy(e.message:find(dataset .. "/" .. kind .. "/same", 1, true))
    end
  end)

  it("refuses bad ids, unknown fields, bad labels, a FHIR store without a version, naming the field", function()
    local dataset = new_dataset()
    for _, kind in ipairs(KINDS) do
      local body = kind == "fhirStores" and { version = "R4" } or {}
      for _, id in ipairs({ "a b", "x/y", string.rep("s", 257) }) do
        envelope(call("POST", dataset .. "/" .. kind, { [ID[kind]] = id }, body), 400, "INVALID_ARGUMENT", ID[kind])
      end
      envelope(call("POST", dataset .. "/" .. kind, nil, body), 400, "INVALID_ARGUMENT", ID[kind])
      local with = { lables = { a = "b" } }
      if kind == "fhirStores" then with.version = "R4" end
      envelope(call("POST", dataset .. "/" .. kind, { [ID[kind]] = fresh("s") }, with), 400, "INVALID_ARGUMENT",
        "lables")
      for _, labels in ipairs({ { Team = "x" }, { team = "Imaging" }, { team = "a b" }, { ["9x"] = "y" } }) do
        local b = { labels = labels }
        if kind == "fhirStores" then b.version = "R4" end
        envelope(call("POST", dataset .. "/" .. kind, { [ID[kind]] = fresh("s") }, b), 400, "INVALID_ARGUMENT",
          "labels")
      end
    end
    envelope(call("POST", dataset .. "/fhirStores", { fhirStoreId = fresh("f") }, {}), 400, "INVALID_ARGUMENT",
      "version")
    envelope(call("POST", dataset .. "/fhirStores", { fhirStoreId = fresh("f") }, { version = "R9" }), 400,
      "INVALID_ARGUMENT", "version")
    -- Nothing was made by any of these.
    for _, kind in ipairs(KINDS) do assert.same({}, ok(call("GET", dataset .. "/" .. kind))) end
  end)

  it("answers 404 NOT_FOUND for an unknown dataset, store or operation", function()
    local dataset = new_dataset()
    local missing = LOCATION .. "/datasets/" .. fresh("nope")
    envelope(call("GET", missing), 404, "NOT_FOUND")
    for _, kind in ipairs(KINDS) do
      local e = envelope(call("GET", dataset .. "/" .. kind .. "/nope"), 404, "NOT_FOUND")
      assert.truthy(e.message:find(dataset .. "/" .. kind .. "/nope", 1, true))
      envelope(call("POST", missing .. "/" .. kind, { [ID[kind]] = "s" }, kind == "fhirStores" and { version = "R4" }
        or {}), 404, "NOT_FOUND")
      envelope(call("GET", missing .. "/" .. kind), 404, "NOT_FOUND")
      envelope(call("DELETE", dataset .. "/" .. kind .. "/nope"), 404, "NOT_FOUND")
      envelope(call("PATCH", dataset .. "/" .. kind .. "/nope", { updateMask = "labels" }, {}), 404, "NOT_FOUND")
    end
    envelope(call("GET", dataset .. "/operations/12345"), 404, "NOT_FOUND")
    -- A %2F is not a "/": no other resource's name can be made with one.
    local _, inner = new_store(dataset, "dicomStores", nil, "inner")
    envelope(call("GET", dataset .. "%2FdicomStores%2Finner"), 404, "NOT_FOUND")
    envelope(call("GET", (inner:gsub("/inner$", "%%2Finner"))), 404, "NOT_FOUND")
    envelope(call("POST", "projects/p%2Fq/locations/l/datasets", { datasetId = "x" }, {}), 404, "NOT_FOUND")
    envelope(call("POST", dataset .. "/operations/12345:cancel", nil, {}), 404, "NOT_FOUND")
    envelope(call("GET", missing .. "/operations"), 404, "NOT_FOUND")
    -- A method it does not serve is said so, not passed off as a missing store.
    local _, dicom = new_store(dataset, "dicomStores")
    local e = envelope(call("GET", dicom .. ":getDICOMStoreMetrics"), 501, "UNIMPLEMENTED")
    assert.truthy(e.message:find(DS .. "dicomStores.getDICOMStoreMetrics", 1, true))
  end)

  it("lists across pages (default 100): every store exactly once, a label filter, a kind of its own", function()
    local dataset = new_dataset()
    -- 101 DICOM stores made by one shell loop (curl per request, one process start).
    H.check_run("for i in $(seq 1 101); do curl -sS -o /dev/null -X POST -H " .. H.q("Authorization: Bearer " .. TOKEN)
      .. " --data-binary '{}' " .. H.q(em.endpoint .. "/" .. dataset .. "/dicomStores?dicomStoreId=") .. "s$i; done")
    new_store(dataset, "fhirStores")
    local page1 = ok(call("GET", dataset .. "/dicomStores"))
    assert.equal(100, #page1.dicomStores)
    local page2 = ok(call("GET", dataset .. "/dicomStores", { pageToken = page1.nextPageToken }))
    assert.equal(1, #page2.dicomStores)
    assert.is_nil(page2.nextPageToken)
    local seen, n = {}, 0
    for _, page in ipairs({ page1, page2 }) do
      for _, s in ipairs(page.dicomStores) do
        assert.is_nil(seen[s.name])
        seen[s.name] = true
        n = n + 1
      end
    end
    assert.equal(101, n)
    for i = 1, 101 do assert.is_true(seen[dataset .. "/dicomStores/s" .. i], "s" .. i) end
    -- pageSize 7 walks the same 101, in 15 pages
    local again, pages, token = 0, 0, nil
    repeat
      local page = ok(call("GET", dataset .. "/dicomStores", { pageSize = "7", pageToken = token }))
      again, pages, token = again + #page.dicomStores, pages + 1, page.nextPageToken
    until not token
    assert.same({ 101, 15 }, { again, pages })
    -- label filter
    ok(call("PATCH", dataset .. "/dicomStores/s42", { updateMask = "labels" }, { labels = { team = "imaging" } }))
    local only = ok(call("GET", dataset .. "/dicomStores", { filter = "labels.team=imaging" }))
    assert.equal(1, #only.dicomStores)
    assert.equal(dataset .. "/dicomStores/s42", only.dicomStores[1].name)
    assert.equal(1, #ok(call("GET", dataset .. "/dicomStores", { filter = 'labels.team="imaging"' })).dicomStores)
    assert.equal(1, #ok(call("GET", dataset .. "/dicomStores", { filter = "labels.team:*" })).dicomStores)
    envelope(call("GET", dataset .. "/dicomStores", { filter = "name=s42" }), 400, "INVALID_ARGUMENT", "filter")
    -- a filtered list's token is not an unfiltered list's
    local f1 = ok(call("GET", dataset .. "/dicomStores", { filter = "labels.team:*", pageSize = "1" }))
    assert.is_nil(f1.nextPageToken)
    envelope(call("GET", dataset .. "/fhirStores", { pageToken = page1.nextPageToken }), 400, "INVALID_ARGUMENT",
      "pageToken")
    assert.equal(1, #ok(call("GET", dataset .. "/fhirStores")).fhirStores)
    assert.same({}, ok(call("GET", dataset .. "/hl7V2Stores")))
  end)

  it("patch with updateMask changes only the listed fields; the mask is checked against the store's fields", function()
    local dataset = new_dataset()
    local _, name = new_store(dataset, "dicomStores",
      { labels = { team = "radiology" }, notificationConfig = { pubsubTopic = "projects/p/topics/a" } })
    local patched = ok(call("PATCH", name, { updateMask = "labels" },
      { labels = { team = "imaging" }, notificationConfig = { pubsubTopic = "projects/p/topics/b" } }))
    assert.same({ name = name, labels = { team = "imaging" }, notificationConfig = { pubsubTopic = "projects/p/topics/a" } },
      patched)
    assert.same(patched, ok(call("GET", name)))
    -- A field in the mask and not in the body is cleared; snake_case paths are Google's too.
    assert.same({ name = name, labels = { team = "imaging" } },
      ok(call("PATCH", name, { updateMask = "notification_config" }, {})))
    local e = envelope(call("PATCH", name, { updateMask = "labels,version" }, { labels = {} }), 400,
      "INVALID_ARGUMENT", "updateMask")
    assert.truthy(e.message:find('"version"', 1, true))
    envelope(call("PATCH", name, { updateMask = "labels" }, { labels = { Bad = "x" } }), 400, "INVALID_ARGUMENT",
      "labels")
    envelope(call("PATCH", name, {}, { labels = {} }), 400, "INVALID_ARGUMENT", "updateMask")
    -- FHIR: version and the other immutable fields cannot change.
    local _, fhir = new_store(dataset, "fhirStores", { version = "R4" })
    envelope(call("PATCH", fhir, { updateMask = "version" }, { version = "STU3" }), 400, "INVALID_ARGUMENT", "updateMask")
    envelope(call("PATCH", fhir, { updateMask = "disableReferentialIntegrity" }, { disableReferentialIntegrity = true }),
      400, "INVALID_ARGUMENT", "updateMask")
    assert.same({ name = fhir, version = "R4", enableUpdateCreate = true },
      ok(call("PATCH", fhir, { updateMask = "enableUpdateCreate" }, { enableUpdateCreate = true, version = "R5" })))
    local _, hl7 = new_store(dataset, "hl7V2Stores")
    assert.same({ name = hl7, labels = { team = "lab" } },
      ok(call("PATCH", hl7, { updateMask = "labels" }, { labels = { team = "lab" } })))
    assert.same({ name = name, labels = { team = "imaging" } }, ok(call("GET", name)))
  end)

  it("delete answers {} and the store is gone; its dataset stays", function()
    local dataset = new_dataset()
    for _, kind in ipairs(KINDS) do
      local _, name = new_store(dataset, kind)
      assert.same({}, ok(call("DELETE", name)))
      envelope(call("GET", name), 404, "NOT_FOUND")
    end
    ok(call("GET", dataset))
  end)

  it("a DICOM store made through the API takes a STOW and answers a QIDO, through the one Orthanc", function()
    local dataset = new_dataset()
    local _, store = new_store(dataset, "dicomStores")
    local f = H.gen_dicom({ count = 1, size = 2048 })[1]
    local r = H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. TOKEN, "-H", "Content-Type: application/dicom",
      "-H", "Accept: application/dicom+json", "--data-binary", "@" .. f.path,
      em.endpoint .. "/" .. store .. "/dicomWeb/studies" })
    assert.equal(200, r.status, r.body)
    assert.equal(f.sop_instance_uid, r.json["00081199"].Value[1]["00081155"].Value[1])
    local q = H.curl({ "-H", "Authorization: Bearer " .. TOKEN, "-H", "Accept: application/dicom+json",
      em.endpoint .. "/" .. store .. "/dicomWeb/studies?StudyInstanceUID=" .. f.study_uid })
    assert.equal(200, q.status, q.body)
    assert.equal(1, #q.json)
    assert.equal(f.study_uid, q.json[1]["0020000D"].Value[1])
    assert.equal(em.endpoint .. "/" .. store .. "/dicomWeb/studies/" .. f.study_uid, q.json[1]["00081190"].Value[1])
    assert.equal(1, H.orthanc_sops(f.study_uid)[f.sop_instance_uid])
    -- A FHIR store of the same id takes no DICOMweb.
    local _, fhir = new_store(dataset, "fhirStores", nil, store:match("[^/]+$"))
    envelope(call("GET", fhir .. "/dicomWeb/studies"), 404, "NOT_FOUND")
  end)

  it("a store registered by /_control/stores is a DICOM store of the API, in a dataset made for it", function()
    local dataset = LOCATION .. "/datasets/" .. fresh("ctl")
    local store = dataset .. "/dicomStores/registered"
    local known = {}
    for _, n in ipairs(em:control("stores", { name = store }).stores) do known[n] = true end
    assert.is_true(known[store])
    assert.is_true(known[E.store])
    assert.same({ name = store }, ok(call("GET", store)))
    assert.same({ name = dataset, timeZone = "UTC" }, ok(call("GET", dataset)))
    local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
      cjson.encode({ name = "projects/p/datasets/d" }), em.url .. "/_control/stores" })
    assert.equal(400, r.status)
  end)
end)

describe("emulator admin: IAM policies", function()
  local function resources()
    local dataset = new_dataset()
    local list = { dataset }
    for _, kind in ipairs({ "dicomStores", "fhirStores", "hl7V2Stores" }) do
      local _, name = new_store(dataset, kind)
      list[#list + 1] = name
    end
    return list
  end

  it("get answers an empty policy; set with its etag replaces it; a stale etag is 409 ABORTED", function()
    for _, name in ipairs(resources()) do
      local empty = ok(call("GET", name .. ":getIamPolicy"))
      assert.same({ etag = "ACAB" }, empty)
      local binding = { role = "roles/healthcare.datasetViewer", members = { "user:alice@example.com",
        "serviceAccount:robot@p.iam.gserviceaccount.com" } }
      local set = ok(call("POST", name .. ":setIamPolicy", nil, { policy = { bindings = { binding }, etag = empty.etag } }))
      assert.same({ binding }, set.bindings)
      assert.is_string(set.etag)
      assert.are_not.equal(empty.etag, set.etag)
      assert.same(set, ok(call("GET", name .. ":getIamPolicy", { ["options.requestedPolicyVersion"] = "3" })))
      -- someone else wrote in between: the old etag no longer matches
      local e = envelope(call("POST", name .. ":setIamPolicy", nil,
        '{"policy": {"bindings": [], "etag": "' .. empty.etag .. '"}}'), 409, "ABORTED")
      assert.matches("^There were concurrent policy changes%.", e.message)
      assert.same(set, ok(call("GET", name .. ":getIamPolicy")))
      -- without an etag: written as is
      local cleared = ok(call("POST", name .. ":setIamPolicy", nil, '{"policy": {"bindings": []}}'))
      assert.is_nil(cleared.bindings)
      assert.are_not.equal(set.etag, cleared.etag)
    end
    assert.is_true(em:count("iam_policies_set") >= 8)
  end)

  it("refuses a bad policy, naming the field", function()
    local name = resources()[2]
    local cases = {
      { {}, "policy" },
      { { policy = { bindings = { { role = "viewer", members = { "user:a@b.c" } } } } }, "policy.bindings[0].role" },
      { { policy = { bindings = { { role = "roles/viewer", members = {} } } } }, "policy.bindings[0].members" },
      { { policy = { bindings = { { role = "roles/viewer", members = { "alice" } } } } }, "policy.bindings[0].members" },
      { { policy = { etag = "not base64!" } }, "policy.etag" },
      { { policy = { version = 2 } }, "policy.version" },
      { { policy = { rules = {} } }, "policy.rules" },
      { { policy = {}, updateMask = "bindings,owner" }, "updateMask" },
      { { policy = {}, extra = 1 }, "extra" },
    }
    for _, c in ipairs(cases) do
      envelope(call("POST", name .. ":setIamPolicy", nil, c[1]), 400, "INVALID_ARGUMENT", c[2])
    end
    envelope(call("GET", name .. ":getIamPolicy", { ["options.requestedPolicyVersion"] = "2" }), 400,
      "INVALID_ARGUMENT", "options.requestedPolicyVersion")
    assert.same({ etag = "ACAB" }, ok(call("GET", name .. ":getIamPolicy")))
    -- getIamPolicy is a GET in Google's table: a POST is no route.
    envelope(call("POST", name .. ":getIamPolicy", nil, {}), 404, "NOT_FOUND")
    envelope(call("GET", LOCATION .. "/datasets/" .. fresh("no") .. ":getIamPolicy"), 404, "NOT_FOUND")
  end)

  it("testIamPermissions answers the healthcare permissions asked; a missing resource has none; wildcards are 400", function()
    for _, name in ipairs(resources()) do
      assert.same({ permissions = { "healthcare.datasets.get", "healthcare.dicomStores.dicomWebRead" } },
        ok(call("POST", name .. ":testIamPermissions", nil, { permissions = { "healthcare.datasets.get",
          "storage.objects.get", "healthcare.dicomStores.dicomWebRead" } })))
    end
    assert.same({}, ok(call("POST", LOCATION .. "/datasets/" .. fresh("no") .. ":testIamPermissions", nil,
      { permissions = { "healthcare.datasets.get" } })))
    envelope(call("POST", resources()[1] .. ":testIamPermissions", nil, { permissions = { "healthcare.*" } }), 400,
      "INVALID_ARGUMENT", "permissions")
  end)
end)

describe("emulator admin: long-running operations", function()
  before_each(function() config({ operation_polls = 1, operation_error = cjson.null, operation_units = 10 }) end)

  it("import: the counter moves with the polls, then done with Google's response type", function()
    config({ operation_polls = 3, operation_units = 8 })
    local dataset = new_dataset()
    local _, store = new_store(dataset, "dicomStores")
    local op = ok(call("POST", store .. ":import", nil, { gcsSource = { uri = "gs://bucket/dir/**.dcm" } })).name
    assert.equal(dataset .. "/operations/", op:match("^(.*/operations/)%d+$"))
    local seen = {}
    for _ = 1, 3 do
      local o = poll(op)
      assert.is_nil(o.done)
      assert.equal("google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData", o.metadata.apiMethodName)
      seen[#seen + 1] = { o.metadata.counter.success, o.metadata.counter.pending }
    end
    -- int64 counters are JSON strings, as Google writes them
    assert.same({ { "2", "6" }, { "4", "4" }, { "6", "2" } }, seen)
    local done = poll(op)
    assert.is_true(done.done)
    assert.same({ success = "8" }, done.metadata.counter)
    assert.same({ ["@type"] = "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse" },
      done.response)
  end)

  it("ends with the configured error, or with a fault rule's for one request only", function()
    local dataset = new_dataset()
    local _, fhir = new_store(dataset, "fhirStores")
    config({ operation_polls = 0, operation_units = 4, operation_error = { code = 3, message = "bad input file" } })
    local o = poll(ok(call("POST", fhir .. ":import", nil, { gcsSource = { uri = "gs://bkt/x.ndjson" } })).name)
    assert.is_true(o.done)
    assert.same({ code = 3, message = "bad input file" }, o.error)
    assert.same({ failure = "4" }, o.metadata.counter)
    config({ operation_error = cjson.null })
    em:control("faults", { rules = { { match = "admin", method = DS .. "fhirStores.export",
      operation_error = { code = 7, message = "permission denied on the bucket" } } }, replace = true })
    -- not consumed by a method that makes no operation, nor by another method
    ok(call("GET", fhir))
    local imported = poll(ok(call("POST", fhir .. ":import", nil, { gcsSource = { uri = "gs://bkt/x.ndjson" } })).name)
    assert.is_nil(imported.error)
    assert.same({ ["@type"] = "type.googleapis.com/google.cloud.healthcare.v1.fhir.rest.ImportResourcesResponse",
      fhirStore = fhir }, imported.response)
    local failed = poll(ok(call("POST", fhir .. ":export", nil, { gcsDestination = { uriPrefix = "gs://bkt/out" } })).name)
    assert.same({ code = 7, message = "permission denied on the bucket" }, failed.error)
    assert.equal("google.cloud.healthcare.v1.fhir.FhirService.ExportFhirData", failed.metadata.apiMethodName)
    local again = poll(ok(call("POST", fhir .. ":export", nil, { gcsDestination = { uriPrefix = "gs://bkt/out" } })).name)
    assert.is_nil(again.error)
    assert.is_true(again.done)
  end)

  it("an admin fault rule answers with its status instead", function()
    local dataset = new_dataset()
    em:control("faults", { rules = { { match = "admin", method = DS .. "dicomStores.create", status = 503,
      retry_delay = "2s" } }, replace = true })
    local r = call("POST", dataset .. "/dicomStores", { dicomStoreId = "s" }, {})
    envelope(r, 503, "UNAVAILABLE")
    assert.equal("2s", r.json.error.details[1].retryDelay)
    envelope(call("GET", dataset .. "/dicomStores/s"), 404, "NOT_FOUND")
    new_store(dataset, "dicomStores", nil, "s")
    -- a rule whose operation_error is not a status is refused at once
    local r2 = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
      cjson.encode({ { match = "admin", operation_error = "boom" } }), em.url .. "/_control/faults" })
    assert.equal(400, r2.status, r2.body)
  end)

  it("an admin or operation rule with a body answers that JSON; fresh_page_token a new token each time", function()
    local dataset = new_dataset()
    local _, store = new_store(dataset, "dicomStores")
    local op = ok(call("POST", store .. ":import", nil, { gcsSource = { uri = "gs://bkt/x.dcm" } }))
    em:control("faults", { rules = { { match = "operation", body = { done = true, error = "not a Status" } },
      { match = "admin", method = DS .. "operations.list", body = { operations = { 1 } }, fresh_page_token = true,
        times = 2 },
      { match = "admin", method = DS .. "dicomStores.get", body = { name = "x" }, status = 202 } }, replace = true })
    assert.same({ done = true, error = "not a Status" }, ok(call("GET", op.name)))
    local a, b = ok(call("GET", dataset .. "/operations")), ok(call("GET", dataset .. "/operations"))
    assert.same({ 1 }, a.operations)
    assert.is_string(a.nextPageToken)
    assert.is_string(b.nextPageToken)
    assert.not_equal(a.nextPageToken, b.nextPageToken)
    local r = call("GET", store)
    assert.equal(202, r.status)
    assert.same({ name = "x" }, r.json)
    -- used up: the emulator answers again
    assert.is_nil(ok(call("GET", dataset .. "/operations")).nextPageToken)
  end)

  it("import/export/deidentify/rollback check their request, naming the field", function()
    local dataset = new_dataset()
    local _, dicom = new_store(dataset, "dicomStores")
    local _, fhir = new_store(dataset, "fhirStores")
    local _, hl7 = new_store(dataset, "hl7V2Stores")
    local cases = {
      { dicom .. ":import", {}, "gcsSource.uri" },
      { dicom .. ":import", { gcsSource = { uri = "/local/file.dcm" } }, "gcsSource.uri" },
      { dicom .. ":import", { gcsSource = { uri = "gs://bkt/x" }, source = 1 }, "source" },
      { dicom .. ":export", { gcsDestination = {} }, "gcsDestination.uriPrefix" },
      { dicom .. ":export", { bigqueryDestination = { tableUri = "p.d.t" } }, "bigqueryDestination.tableUri" },
      { fhir .. ":export", { bigqueryDestination = { datasetUri = "x" } }, "bigqueryDestination.datasetUri" },
      { hl7 .. ":export", { pubsubDestination = { pubsubTopic = "t" } }, "pubsubDestination.pubsubTopic" },
      { hl7 .. ":import", { gcsSource = { uri = "http://x/y" } }, "gcsSource.uri" },
      { fhir .. ":rollback", { resultGcsBucket = "gs://bkt/r" }, "rollbackTime" },
      { hl7 .. ":rollback", { rollbackTime = "2024-01-01T00:00:00Z" }, "resultGcsBucket" },
      { dicom .. ":deidentify", {}, "destinationStore" },
      { dicom .. ":deidentify", { destinationStore = dataset .. "/fhirStores/x" }, "destinationStore" },
      { dataset .. ":deidentify", { destinationDataset = "projects/test-project/locations/europe-west4/datasets/x" },
        "destinationDataset" },
    }
    local before = em:count("operations_created")
    for _, c in ipairs(cases) do
      envelope(call("POST", c[1], nil, c[2]), 400, "INVALID_ARGUMENT", c[3])
    end
    assert.equal(before, em:count("operations_created"))
    for _, c in ipairs({
      { dicom .. ":export", { bigqueryDestination = { tableUri = "bq://p.d.t" } }, "dicom.ExportDicomDataResponse" },
      { hl7 .. ":import", { gcsSource = { uri = "gs://bkt/msgs/*" } }, "hl7v2.ImportMessagesResponse" },
      { hl7 .. ":export", { gcsDestination = { uriPrefix = "gs://bkt/o" } }, "hl7v2.ExportMessagesResponse" },
      { fhir .. ":rollback", { rollbackTime = "2024-01-01T00:00:00.5+02:00", resultGcsBucket = "gs://bkt/r" },
        "fhir.RollbackFhirResourcesResponse" },
    }) do
      local o = poll(poll(ok(call("POST", c[1], nil, c[2])).name).name)
      assert.is_true(o.done)
      assert.equal("type.googleapis.com/google.cloud.healthcare.v1." .. c[3], o.response["@type"])
    end
  end)

  it("deidentify makes the destination at once: a DICOM store (same Orthanc), or a dataset with copies of the stores", function()
    local dataset = new_dataset()
    local _, dicom = new_store(dataset, "dicomStores", { labels = { a = "b" } })
    new_store(dataset, "fhirStores", nil, "f")
    local dest = dataset .. "/dicomStores/" .. fresh("deid")
    local o = poll(poll(ok(call("POST", dicom .. ":deidentify", nil, { destinationStore = dest, config = {} })).name).name)
    assert.equal("google.cloud.healthcare.v1.deidentify.DeidentifyService.DeidentifyDicomStore", o.metadata.apiMethodName)
    assert.equal("type.googleapis.com/google.cloud.healthcare.v1.deidentify.DeidentifyDicomStoreSummary",
      o.response["@type"])
    assert.same({ name = dest, labels = { a = "b" } }, ok(call("GET", dest)))
    ok(call("GET", dest .. "/dicomWeb/studies", { limit = "1" }))
    envelope(call("POST", dicom .. ":deidentify", nil, { destinationStore = dest }), 409, "ALREADY_EXISTS")
    local copy = LOCATION .. "/datasets/" .. fresh("copy")
    local d = poll(poll(ok(call("POST", dataset .. ":deidentify", nil, { destinationDataset = copy })).name).name)
    assert.equal("type.googleapis.com/google.cloud.healthcare.v1.dataset.DeidentifySummary", d.response["@type"])
    assert.same({ name = copy, timeZone = "UTC" }, ok(call("GET", copy)))
    assert.equal(2, #ok(call("GET", copy .. "/dicomStores")).dicomStores)
    assert.same({ name = copy .. "/fhirStores/f", version = "R4" }, ok(call("GET", copy .. "/fhirStores/f")))
  end)

  it("list walks a dataset's operations across pages, each once, and filters on done", function()
    config({ operation_polls = 1 })
    local dataset, create_op = new_dataset()
    local _, store = new_store(dataset, "dicomStores")
    local made = { [create_op] = true }
    for _ = 1, 4 do
      made[ok(call("POST", store .. ":export", nil, { gcsDestination = { uriPrefix = "gs://bkt/o" } })).name] = true
    end
    local seen, token, pages = {}, nil, 0
    repeat
      local page = ok(call("GET", dataset .. "/operations", { pageSize = "2", pageToken = token }))
      pages = pages + 1
      for _, o in ipairs(page.operations) do
        assert.is_nil(seen[o.name])
        seen[o.name] = true
        assert.is_nil(o.done)   -- listing is not polling
      end
      token = page.nextPageToken
    until not token
    assert.equal(3, pages)
    assert.same(made, seen)
    poll(create_op)   -- its one poll without done
    local done = ok(call("GET", dataset .. "/operations", { filter = "done=true" })).operations
    assert.equal(1, #done)
    assert.equal(create_op, done[1].name)
    assert.equal(4, #ok(call("GET", dataset .. "/operations", { filter = "done = false" })).operations)
    assert.equal(4, #ok(call("GET", dataset .. "/operations",
      { filter = 'metadata.apiMethodName="google.cloud.healthcare.v1.dicom.DicomService.ExportDicomData"' })).operations)
    envelope(call("GET", dataset .. "/operations", { filter = "done=maybe" }), 400, "INVALID_ARGUMENT", "filter")
  end)

  it("cancel answers {} and the operation ends done with error 1 CANCELLED; a done one stays as it was", function()
    config({ operation_polls = 5 })
    local dataset = new_dataset()
    local _, store = new_store(dataset, "hl7V2Stores")
    local op = ok(call("POST", store .. ":import", nil, { gcsSource = { uri = "gs://bkt/m" } })).name
    poll(op)
    local before = em:count("operations_cancelled")
    assert.same({}, ok(call("POST", op .. ":cancel", nil, {})))
    local o = poll(op)
    assert.is_true(o.done)
    assert.equal(1, o.error.code)
    assert.is_true(o.metadata.cancelRequested)
    assert.is_string(o.metadata.endTime)
    assert.equal(1, em:count("operations_cancelled") - before)
    -- cancelling again, or a finished one, changes nothing
    assert.same({}, ok(call("POST", op .. ":cancel")))
    assert.same(o.error, poll(op).error)
    config({ operation_polls = 0 })
    local finished = ok(call("POST", store .. ":import", nil, { gcsSource = { uri = "gs://bkt/m" } })).name
    local f = poll(finished)
    assert.same({}, ok(call("POST", finished .. ":cancel", nil, {})))
    assert.same(f.response, poll(finished).response)
    envelope(call("POST", op .. ":cancel", nil, { force = true }), 400, "INVALID_ARGUMENT", "force")
  end)

  it("a DICOMweb delete's operation has the same shape, and operations.get counts as a poll", function()
    local polls = em:count("operation_polls")
    local dataset = new_dataset()
    local _, store = new_store(dataset, "dicomStores")
    local f = H.gen_dicom({ count = 1, size = 1024 })[1]
    local r = H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. TOKEN, "-H", "Content-Type: application/dicom",
      "-H", "Accept: application/dicom+json", "--data-binary", "@" .. f.path, em.endpoint .. "/" .. store .. "/dicomWeb/studies" })
    assert.equal(200, r.status, r.body)
    local op = ok(call("DELETE", store .. "/dicomWeb/studies/" .. f.study_uid)).name
    assert.equal(dataset .. "/operations/", op:match("^(.*/operations/)%d+$"))
    assert.is_nil(poll(op).done)
    local o = poll(op)
    assert.equal("google.cloud.healthcare.v1.dicomweb.DicomWebService.DeleteStudy", o.metadata.apiMethodName)
    assert.same({ ["@type"] = "type.googleapis.com/google.protobuf.Empty" }, o.response)
    assert.equal(2, em:count("operation_polls") - polls)
  end)
end)

describe("emulator admin: credentials, locations, stats, reset", function()
  it("asks the same credentials as the DICOMweb routes", function()
    local dataset = new_dataset()
    for _, path in ipairs({ dataset, dataset .. "/dicomStores", LOCATION .. "/datasets", dataset .. ":getIamPolicy" }) do
      local e = envelope(call("GET", path, nil, nil, { token = false }), 401, "UNAUTHENTICATED")
      assert.matches("missing required authentication credential", e.message)
      envelope(call("GET", path, nil, nil, { token = "not-a-token" }), 401, "UNAUTHENTICATED")
    end
    local r = H.curl({ em.endpoint .. "/" .. dataset .. "?key=" .. enc(E.api_key .. "-private") })
    assert.equal(200, r.status)
    envelope(call("POST", LOCATION .. "/datasets", { datasetId = fresh("ds") }, {}, { token = false }), 401,
      "UNAUTHENTICATED")
  end)

  it("serves locations from the config", function()
    local list = ok(call("GET", "projects/test-project/locations"))
    local ids = {}
    for _, l in ipairs(list.locations) do
      ids[#ids + 1] = l.locationId
      assert.equal("projects/test-project/locations/" .. l.locationId, l.name)
    end
    assert.truthy(table.concat(ids, ","):find("us-central1", 1, true))
    assert.same({ name = LOCATION, locationId = "us-central1" }, ok(call("GET", LOCATION)))
    envelope(call("GET", "projects/test-project/locations/mars-north1"), 404, "NOT_FOUND")
  end)

  it("counts admin requests by method id and logs them with that id", function()
    local before = em:count("admin_requests", DS .. "get")
    local total = em:count("store_requests_total")
    local dataset = new_dataset()
    ok(call("GET", dataset))
    envelope(call("GET", dataset .. "x"), 404, "NOT_FOUND")
    assert.equal(2, em:count("admin_requests", DS .. "get") - before)
    assert.equal(3, em:count("store_requests_total") - total)
    local log = em:stats().requests
    local last = log[#log]
    assert.equal(DS .. "get", last.api_method)
    assert.equal(404, last.status)
    assert.equal("/v1/" .. dataset .. "x", last.path)
  end)

  it("/_control/reset forgets what the API made and keeps the --store one", function()
    local dataset = new_dataset()
    em:control("reset")
    envelope(call("GET", dataset), 404, "NOT_FOUND")
    assert.same({ name = E.store }, ok(call("GET", E.store)))
    assert.equal(1, em:count("admin_requests", DS .. "dicomStores.get"))
  end)
end)

describe("emulator admin: Google's Node client's requests (oracle-v1.json) replayed", function()
  local ORACLE = cjson.decode((assert(H.file_bytes("spec/fixtures/api/oracle-v1.json"))))
  local served = assert(H.curl({ em.url .. "/_control/methods" }).json)
  local STANDARD = {}
  for _, p in ipairs(api.table().standard_params) do STANDARD[p.name] = true end

  it("serves only methods of Google's table, with the request fields that table states", function()
    for _, id in ipairs(served.served) do
      assert.is_table(api.method(id), id)
    end
    for name, fields in pairs(served.fields) do
      local want = {}
      for i, f in ipairs(api.schema(name).fields) do want[i] = f.name end
      assert.same(want, fields, name)
    end
    for id, schema in pairs(served.request_schemas) do
      assert.equal(api.method(id).request, schema, id)
    end
    assert.equal(48, #served.served)
  end)

  -- One edit of a JSON body by Python (cjson turns an empty array into {}: the body would not
  -- be the one the Node client sent): path a list of names, value nil to delete.
  local EDIT = [==[
import json, sys
d = json.load(sys.stdin)
body = json.loads(d["body"]) if d["body"] else {}
cur = body
for p in d["path"][:-1]:
    cur = cur.setdefault(p, {})
if "value" in d:
    cur[d["path"][-1]] = d["value"]
else:
    cur.pop(d["path"][-1], None)
sys.stdout.write(json.dumps(body, ensure_ascii=False))
]==]
  local function edit_json(text, path, value)
    return (H.check_run("/usr/bin/python3 -c " .. H.q(EDIT), cjson.encode({ body = text or "", path = path,
      value = value })))
  end

  it("answers every served method's request as the Node client sends it, then with valid values its shape", function()
    config({ operation_polls = 0, operation_error = cjson.null })
    local dataset = new_dataset()
    local stores = {}
    for _, kind in ipairs({ "dicomStores", "fhirStores", "hl7V2Stores" }) do
      local _, name = new_store(dataset, kind)
      stores[kind] = name
    end
    local op = ok(call("POST", stores.dicomStores .. ":export", nil, { gcsDestination = { uriPrefix = "gs://bkt/o" } })).name
    local function rewrite(path)
      return (path:gsub("^/v1/projects/my%-project/locations/us%-central1/datasets/ds_1%.a~b", "/v1/" .. dataset)
        :gsub("^/v1/projects/my%-project/locations/us%-central1", "/v1/" .. LOCATION)
        :gsub("^/v1/projects/my%-project", "/v1/projects/test-project")
        :gsub("/dicomStores/dicom:store@1", "/" .. stores.dicomStores:match("dicomStores/.*$"))
        :gsub("/fhirStores/fhir%-store%-1", "/" .. stores.fhirStores:match("fhirStores/.*$"))
        :gsub("/hl7V2Stores/hl7%-store%-1", "/" .. stores.hl7V2Stores:match("hl7V2Stores/.*$"))
        :gsub("/operations/op%-12345", "/" .. op:match("operations/.*$")))
    end
    -- What to put in place of a sample value the emulator refused, by the field it named.
    local REPAIRS = {
      timeZone = { "UTC" }, labels = { { k1 = "v1", k2 = "v2" } }, version = { "R4" }, gcsConfigUri = {},
      ["gcsSource.uri"] = { "gs://bkt/in/*" }, ["gcsDestination.uriPrefix"] = { "gs://bkt/out" },
      rollbackTime = { "2024-01-01T00:00:00Z" }, resultGcsBucket = { "gs://bkt/result" }, ["policy.etag"] = {},
      destinationDataset = { function() return LOCATION .. "/datasets/" .. fresh("copy") end },
      destinationStore = { function(id) return dataset .. "/" .. id:match("datasets%.([^.]+)") .. "/" .. fresh("c") end },
    }
    local QUERY_REPAIRS = { ["options.requestedPolicyVersion"] = "3",
      updateMask = function(id) return id == DS .. "patch" and "timeZone" or "labels" end }
    local is_served, calls = {}, {}
    for _, id in ipairs(served.served) do is_served[id] = true end
    for _, c in ipairs(ORACLE.calls) do
      if is_served[c.method] and not calls[c.method] and c.sent.path:find("^/v1/projects/my%-project/") then
        calls[c.method] = c
      end
    end
    -- Deletes last (the dataset's the very last), so the other methods find what they name.
    local order = {}
    for _, id in ipairs(served.served) do
      assert.is_table(calls[id], "no oracle request for " .. id)
      order[#order + 1] = id
    end
    local function rank(id) return id == DS .. "delete" and 2 or (id:match("%.delete$") and 1 or 0) end
    table.sort(order, function(a, b) if rank(a) ~= rank(b) then return rank(a) < rank(b) end return a < b end)
    local as_sent = {}
    for _, id in ipairs(order) do
      local c, method = calls[id], api.method(id)
      local query = {}
      for _, kv in ipairs(c.sent.query) do
        local name = kv[1]
        -- Standard parameters carry credentials and formats of the sample; page tokens and
        -- filters of the sample are refused elsewhere (specs above).
        if not STANDARD[name] and name ~= "pageToken" and name ~= "filter" then
          query[#query + 1] = { name, name:match("Id$") and fresh("r") or kv[2] }   -- ids: valid ones
        end
      end
      local body = c.sent.body_json
      local r
      for attempt = 1, 6 do
        local args = { "--path-as-is", "-X", c.sent.verb, "-H", "Authorization: Bearer " .. TOKEN }
        if body then
          for _, a in ipairs({ "-H", "Content-Type: " .. c.sent.content_type, "--data-binary", body }) do
            args[#args + 1] = a
          end
        end
        local qs = query_string(query)
        args[#args + 1] = em.url .. rewrite(c.sent.path) .. (qs ~= "" and "?" .. qs or "")
        r = H.curl(args)
        assert.is_table(r.json, id .. ": " .. r.body)
        if attempt == 1 then as_sent[id] = r.status end
        if r.status == 200 then break end
        -- Refused: Google's 400, naming what the request carried (the Node client's sample
        -- values are not valid for Google: "labels.k1 \"é\" /x", a policy version of 25, ...).
        assert.equal(400, r.status, id .. ": " .. r.body)
        assert.equal("INVALID_ARGUMENT", r.json.error.status, id)
        local field = r.json.error.details[1].fieldViolations[1].field
        local decoded = body and cjson.decode(body) or {}
        local in_query = false
        for _, kv in ipairs(query) do
          if kv[1] == field then
            in_query = true
            local fix = assert(QUERY_REPAIRS[field], id .. ": no repair for the query's " .. field)
            kv[2] = type(fix) == "function" and fix(id) or fix
          end
        end
        if not in_query then
          local top = field:match("^[^.%[]+")
          assert.is_not_nil(decoded[top], id .. ": names " .. field .. ", which the request did not carry")
          local path = {}
          for p in field:gmatch("[^.]+") do path[#path + 1] = p end
          if field == "updateMask" then
            body = edit_json(body, path, "bindings,etag")
          else
            local fix = assert(REPAIRS[field], id .. ": no repair for the body's " .. field)
            local value = fix[1]
            if type(value) == "function" then value = value(id) end
            body = edit_json(body, path, value)
          end
        end
      end
      assert.equal(200, r.status, id .. ": " .. r.body)
      local fields = {}
      for _, f in ipairs(api.schema(method.response).fields) do fields[f.name] = true end
      for k in pairs(r.json) do
        assert.is_true(fields[k], id .. " answered a field " .. k .. " that " .. method.response .. " has not")
      end
      if method.response == "Operation" then assert.matches(OP_NAME, r.json.name) end
    end
    -- Those the Node client's sample values cannot trouble answer 200 as sent.
    for _, id in ipairs({ DS .. "get", DS .. "list", DS .. "delete", DS .. "dicomStores.get", DS .. "dicomStores.list",
      DS .. "dicomStores.delete", DS .. "fhirStores.get", DS .. "hl7V2Stores.list", DS .. "operations.get",
      DS .. "operations.list", DS .. "operations.cancel", DS .. "testIamPermissions", "projects.locations.get",
      "projects.locations.list" }) do
      assert.equal(200, as_sent[id], id)
    end
  end)
end)
