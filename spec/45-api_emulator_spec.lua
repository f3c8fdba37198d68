-- SPDX-License-Identifier: MIT
-- The whole API from Lua (client:call, client:pages, client:wait) against the emulator's admin
-- surface, as Google answers it: datasets and DICOM stores made, listed across pages (each item
-- once, the requests counted), patched with updateMask, IAM policies, long-running operations
-- followed to success and to failure with their progress, Google's errors (409), retries by verb,
-- bad calls refused before any request; and the DICOMweb methods through client:call, on the
-- same URLs as the store's methods. A private emulator: this file changes its config and faults
-- and counts its requests.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local cjson = H.json
local E = H.env

local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

local LOCATION = "projects/test-project/locations/us-central1"
local DS = "projects.locations.datasets."
local OPERATION = "^projects/test%-project/locations/us%-central1/datasets/[^/]+/operations/%d+$"
local FAST_RETRY = { max_attempts = 3, initial = 0.01, multiplier = 2, max_delay = 0.05 }

local client = assert(healthcare.new { endpoint = em.endpoint, access_token = em.token, retry = FAST_RETRY })
teardown(function() client:close() end)

local function config(t) return em:control("config", t) end
local function faults(rules) return em:control("faults", { rules = rules, replace = true }) end
-- API requests that reached the emulator (every status, faults included).
local function requests() return em:count("store_requests_total") end

local fresh = H.fresh_id

-- A dataset of our own, waited for; its name.
local function new_dataset()
  local id = fresh("ds")
  local dataset = assert(client:call(DS .. "create", { parent = LOCATION, datasetId = id }, {},
    { wait = true, poll_interval = 0.01 }))
  return dataset.name
end

describe("client:call, client:wait", function()
  before_each(function()
    config({ operation_polls = 1, operation_error = cjson.null, operation_units = 10 })
    faults({})
  end)

  it("creates a dataset (an Operation, waited for) and a DICOM store; a second create is Google's 409", function()
    config({ operation_polls = 2 })
    local id = fresh("ds")
    local polls = em:count("operation_polls")
    local op, res = client:call(DS .. "create", { parent = LOCATION, datasetId = id }, { timeZone = "Europe/Paris" })
    assert.is_table(op, tostring(res))
    assert.matches(OPERATION, op.name)
    assert.is_nil(op.done)
    local dataset, final = client:wait(op, { poll_interval = 0.01 })
    assert.is_table(dataset, tostring(final))
    assert.same({ ["@type"] = "type.googleapis.com/google.cloud.healthcare.v1.dataset.Dataset",
      name = LOCATION .. "/datasets/" .. id, timeZone = "Europe/Paris" }, dataset)
    assert.is_true(final.done)
    assert.equal(op.name, final.name)
    assert.equal("google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset", final.metadata.apiMethodName)
    assert.equal(3, em:count("operation_polls") - polls) -- two answers without done, then done
    -- by name too; a done operation is not polled again
    assert.same(dataset, (client:wait(op.name, { poll_interval = 0.01 })))
    polls = em:count("operation_polls")
    assert.same(dataset, (client:wait(final)))
    assert.equal(polls, em:count("operation_polls"))

    local store = assert(client:call(DS .. "dicomStores.create", { parent = dataset.name, dicomStoreId = "imaging" },
      { labels = { team = "radiology" } }))
    assert.same({ name = dataset.name .. "/dicomStores/imaging", labels = { team = "radiology" } }, store)
    assert.same(store, (client:call(DS .. "dicomStores.get", { name = store.name })))

    local again, err = client:call(DS .. "dicomStores.create", { parent = dataset.name, dicomStoreId = "imaging" }, {})
    assert.is_nil(again)
    assert.equal("http", err.kind)
    assert.equal(409, err.http_status)
    assert.equal("ALREADY_EXISTS", err.status)
    assert.is_false(err.retryable)
    assert.equal(DS .. "dicomStores.create: HTTP 409 ALREADY_EXISTS: DICOM store already exists: " .. store.name,
      tostring(err))
  end)

  it("patches labels with updateMask; a field left out of the mask stays", function()
    local dataset = new_dataset()
    local store = assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" },
      { labels = { team = "radiology" }, notificationConfig = { pubsubTopic = "projects/p/topics/t" } }))
    local patched = assert(client:call(DS .. "dicomStores.patch", { name = store.name, updateMask = "labels" },
      { labels = { team = "imaging", site = "north" }, notificationConfig = { pubsubTopic = "projects/p/topics/u" } }))
    assert.same({ team = "imaging", site = "north" }, patched.labels)
    assert.equal("projects/p/topics/t", patched.notificationConfig.pubsubTopic)
    assert.same(patched, (client:call(DS .. "dicomStores.get", { name = store.name })))
    -- Google's 400 names the field
    local res, err = client:call(DS .. "dicomStores.patch", { name = store.name, updateMask = "colour" }, {})
    assert.is_nil(res)
    assert.equal(400, err.http_status)
    assert.equal("INVALID_ARGUMENT", err.status)
    assert.truthy(err.message:find("updateMask", 1, true), err.message)
    assert.equal("google.rpc.BadRequest", (err.details[1]["@type"] or ""):match("[^/]+$"))
  end)

  it("gets and sets an IAM policy; a stale etag is Google's 409 ABORTED", function()
    local dataset = new_dataset()
    local empty = assert(client:call(DS .. "getIamPolicy", { resource = dataset, ["options.requestedPolicyVersion"] = 3 }))
    assert.same({ etag = "ACAB" }, empty)
    local binding = { role = "roles/healthcare.datasetViewer", members = { "user:alice@example.com" } }
    local set = assert(client:call(DS .. "setIamPolicy", { resource = dataset },
      { policy = { bindings = { binding }, etag = empty.etag } }))
    assert.same({ binding }, set.bindings)
    assert.are_not.equal(empty.etag, set.etag)
    assert.same(set, (client:call(DS .. "getIamPolicy", { resource = dataset })))
    local res, err = client:call(DS .. "setIamPolicy", { resource = dataset }, { policy = { bindings = {}, etag = empty.etag } })
    assert.is_nil(res)
    assert.equal(409, err.http_status)
    assert.equal("ABORTED", err.status)
    assert.matches("There were concurrent policy changes%.", err.message)
  end)

  it("follows an operation to Google's error: kind \"operation\", its status, message and name", function()
    config({ operation_polls = 1, operation_error = { code = 8, message = "quota exceeded for datasets" } })
    local id = fresh("ds")
    local res, err = client:call(DS .. "create", { parent = LOCATION, datasetId = id }, {},
      { wait = true, poll_interval = 0.01 })
    assert.is_nil(res)
    assert.equal("operation", err.kind)
    assert.equal("RESOURCE_EXHAUSTED", err.status)
    assert.matches(OPERATION, err.operation)
    assert.equal("operation " .. err.operation .. " failed: quota exceeded for datasets (code 8 RESOURCE_EXHAUSTED)",
      tostring(err))
    assert.is_false(err.retryable)
    -- wait on the same operation says the same
    local again, err2 = client:wait(err.operation)
    assert.is_nil(again)
    assert.equal(tostring(err), tostring(err2))
  end)

  it("calls on_progress with the operation's metadata after each poll: the counters move", function()
    config({ operation_polls = 3, operation_units = 8 })
    local dataset = new_dataset()
    local store = assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" }, {}))
    local seen = {}
    local response, op = client:call(DS .. "dicomStores.import", { name = store.name },
      { gcsSource = { uri = "gs://bucket/dir/**.dcm" } }, { wait = true, poll_interval = 0.01, on_progress = function(m)
        assert.equal("google.cloud.healthcare.v1.dicom.DicomService.ImportDicomData", m.apiMethodName)
        seen[#seen + 1] = { m.counter.success, m.counter.pending or "-" }
      end })
    assert.is_table(response, tostring(op))
    assert.same({ ["@type"] = "type.googleapis.com/google.cloud.healthcare.v1.dicom.ImportDicomDataResponse" }, response)
    assert.same({ { "2", "6" }, { "4", "4" }, { "6", "2" }, { "8", "-" } }, seen)
    assert.same({ success = "8" }, op.metadata.counter)
  end)

  it("stops at operation_timeout, or when on_progress says false, naming the operation (it goes on)", function()
    config({ operation_polls = 100000 })
    local op = assert(client:call(DS .. "create", { parent = LOCATION, datasetId = fresh("ds") }, {}))
    local res, err = client:wait(op, { poll_interval = 0.02, operation_timeout = 0.3 })
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal("DEADLINE_EXCEEDED", err.status)
    assert.equal(op.name, err.operation)
    assert.truthy(err.polls >= 2, tostring(err.polls))
    assert.equal("operation " .. op.name .. " not done after 0.3 s; it may still finish: check it with GET "
      .. em.endpoint .. "/" .. op.name, tostring(err))
    local calls = 0
    res, err = client:wait(op, { poll_interval = 0.01, on_progress = function()
      calls = calls + 1
      return calls < 2
    end })
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal("aborted", err.status)
    assert.equal(2, err.polls)
    assert.equal("operation " .. op.name .. ": stopped waiting (on_progress returned false); it may still finish",
      tostring(err))
  end)

  it("operation_timeout bounds a poll in flight; an error that is not a Status, or huge, is a failure, cut", function()
    config({ operation_polls = 100000 })
    local op = assert(client:call(DS .. "create", { parent = LOCATION, datasetId = fresh("ds") }, {}))
    faults({ { match = "operation", delay = 30 } })
    local t0 = os.time()
    local res, err = client:wait(op, { poll_interval = 0.01, operation_timeout = 1 })
    assert.is_nil(res)
    assert.is_true(os.time() - t0 < 4, tostring(os.time() - t0))
    assert.equal("timeout", err.kind)
    assert.equal("DEADLINE_EXCEEDED", err.status)
    assert.equal(op.name, err.operation)
    assert.equal(1, err.polls)
    -- "error": a text; a Status whose message is megabytes (here 100 kB: what a control request carries)
    faults({ { match = "operation", body = { done = true, error = "INTERNAL: aborted" } },
      { match = "operation", body = { done = true, error = { code = 13, message = "x" .. string.rep("\u{e9}", 50000) } } } })
    res, err = client:wait(op, { poll_interval = 0.01 })
    assert.is_nil(res)
    assert.equal("operation", err.kind)
    assert.equal("UNKNOWN", err.status)
    assert.equal("operation " .. op.name .. " failed: INTERNAL: aborted (no code)", tostring(err))
    res, err = client:wait(op, { poll_interval = 0.01 })
    assert.is_nil(res)
    assert.equal("INTERNAL", err.status)
    assert.equal("operation " .. op.name .. " failed: x" .. string.rep("\u{e9}", 149) .. "... (100001 bytes in all) "
      .. "(code 13 INTERNAL)", err.message)
  end)

  it("retries GET on 503 and 500, a create on 503 only: a create answered 500 may have been done", function()
    local dataset = new_dataset()
    local fired = em:count("faults_fired")
    faults({ { match = "admin", method = DS .. "get", status = 503, times = 1 },
      { match = "admin", method = DS .. "get", status = 500, times = 1 } })
    assert(client:call(DS .. "get", { name = dataset }))
    assert.equal(2, em:count("faults_fired") - fired)
    faults({ { match = "admin", method = DS .. "dicomStores.create", status = 503, times = 1, retry_delay = "0s" } })
    assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "a" }, {}))
    assert.equal(3, em:count("faults_fired") - fired)
    faults({ { match = "admin", method = DS .. "dicomStores.create", status = 500, times = 2 } })
    local before = requests()
    local res, err = client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "b" }, {})
    assert.is_nil(res)
    assert.equal(500, err.http_status)
    assert.equal(1, requests() - before)
    -- polls are GETs: retried
    faults({ { match = "operation", status = 503, times = 2 } })
    assert(client:call(DS .. "create", { parent = LOCATION, datasetId = fresh("ds") }, {},
      { wait = true, poll_interval = 0.01 }))
    assert.equal(6, em:count("faults_fired") - fired)
  end)

  it("tells on_retry of each wait, a Retry-After answer as the error it is", function()
    local dataset = new_dataset()
    faults({ { match = "admin", method = DS .. "get", status = 503, retry_after = "1", message = "busy", times = 1 } })
    local told = {}
    local t0 = os.time()
    local got = assert(client:call(DS .. "get", { name = dataset }, nil, { on_retry = function(err, seconds, attempt)
      told[#told + 1] = { tostring(err), seconds, attempt }
    end }))
    assert.equal(dataset, got.name)
    assert.same({ { DS .. "get: HTTP 503 UNAVAILABLE: busy", 1, 2 } }, told)
    assert.is_true(os.time() - t0 >= 1)
    -- the pages of a list, the same
    told = {}
    faults({ { match = "admin", method = DS .. "dicomStores.list", status = 429, retry_after = "0", times = 1 } })
    local list = assert(client:pages(DS .. "dicomStores.list", { parent = dataset }, { on_retry = function(err)
      told[#told + 1] = err.http_status
    end }))
    assert.same({}, assert(list:all()))
    assert.same({ 429 }, told)
  end)

  it("cuts Google's envelope of a 1 MB message to errors.cut's 300 bytes; its details stay whole", function()
    local dataset = new_dataset()
    local huge = "quota: " .. string.rep("x", 1e6)
    local details = {
      { ["@type"] = "type.googleapis.com/google.rpc.DebugInfo", detail = string.rep("d", 1000) },
      { ["@type"] = "type.googleapis.com/google.rpc.Help", links = { { description = "logs",
        url = "https://console.cloud.google.com/logs?q=" .. string.rep("q", 1000) } } },
    }
    -- more than a command line carries: the rules go to the emulator from a file
    local rules = os.tmpname()
    H.write_file(rules, cjson.encode({ replace = true, rules = { { match = "admin", method = DS .. "get", status = 400,
      body = { error = { code = 400, status = "INVALID_ARGUMENT", message = huge, details = details } } } } }))
    local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@" .. rules,
      em.url .. "/_control/faults" })
    os.remove(rules)
    assert.equal(200, r.status, r.body)
    local res, err = client:call(DS .. "get", { name = dataset })
    assert.is_nil(res)
    assert.equal("INVALID_ARGUMENT", err.status)
    assert.equal(DS .. "get: HTTP 400 INVALID_ARGUMENT: quota: " .. string.rep("x", 293) .. "... (1000007 bytes in all)",
      err.message)
    assert.equal(err.message, tostring(err))
    assert.same(details, err.details)
  end)

  it("refuses a bad call before any request: the count of requests does not move", function()
    local dataset = new_dataset()
    local before = requests()
    local cases = {
      { DS .. "dicomStores.creat", { parent = dataset, dicomStoreId = "s" },
        "unknown method '" .. DS .. "dicomStores.creat'; closest: " .. DS .. "dicomStores.create, " },
      { DS .. "dicomStores.create", { parent = dataset, dicomStoreID = "s" },
        "unknown parameter 'dicomStoreID' for " .. DS .. "dicomStores.create; valid parameters: dicomStoreId, " },
      { DS .. "dicomStores.create", { dicomStoreId = "s" },
        "missing required parameter 'parent' for " .. DS .. "dicomStores.create" },
      { DS .. "dicomStores.list", { parent = dataset, pageSize = {} },
        "parameter 'pageSize' must be an integer, got table" },
      { DS .. "dicomStores.create", { parent = LOCATION, dicomStoreId = "s" },
        "parameter 'parent' of " .. DS .. "dicomStores.create is '" .. LOCATION .. "', which does not match " },
      { DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" },
        "body.labels has a key that is not a string (number 1)", { labels = { "x" } } },
    }
    for _, c in ipairs(cases) do
      local res, err = client:call(c[1], c[2], c[4] or {})
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.equal(c[3], err.message:sub(1, #c[3]))
    end
    local pages, err = client:pages(DS .. "dicomStores.get", { name = dataset .. "/dicomStores/s" })
    assert.is_nil(pages)
    assert.equal("usage", err.kind)
    assert.matches("is not a list method", err.message)
    assert.equal(before, requests())
  end)
end)

describe("client:pages", function()
  before_each(function() faults({}) end)

  it("lists every item exactly once across pages of pageSize, one request a page", function()
    local dataset = new_dataset()
    local made = {}
    for i = 1, 7 do
      local s = assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" .. i }, {}))
      made[s.name] = true
    end
    local before = em:count("admin_requests", DS .. "dicomStores.list")
    local pages = assert(client:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 3 }))
    local seen = {}
    for store in pages:each() do
      assert.is_nil(seen[store.name], "listed twice: " .. store.name)
      seen[store.name] = true
    end
    assert.is_nil(pages.error)
    assert.same(made, seen)
    assert.equal(3, pages.requests)
    assert.equal(3, em:count("admin_requests", DS .. "dicomStores.list") - before)
    -- all(): the same, again from the first page
    local all = assert(pages:all())
    assert.equal(7, #all)
    assert.equal(6, em:count("admin_requests", DS .. "dicomStores.list") - before)
    -- datasets of a project of our own, the list field of another schema
    local project = "projects/pages-" .. math.random(1, 1e9) .. "/locations/us-central1"
    for i = 1, 5 do assert(client:call(DS .. "create", { parent = project, datasetId = "d" .. i }, {})) end
    local names = {}
    for d in assert(client:pages(DS .. "list", { parent = project, pageSize = 2 })):each() do
      names[#names + 1] = d.name:match("[^/]+$")
    end
    assert.same({ "d1", "d2", "d3", "d4", "d5" }, names)
    -- an empty list is {} from Google: no item, no error
    local none = assert(client:pages(DS .. "dicomStores.list", { parent = new_dataset() }))
    assert.same({}, assert(none:all()))
    -- max_pages: a loop reads that many pages, and says where the next one starts
    local bounded = assert(client:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 3 }, { max_pages = 2 }))
    local first = assert(bounded:all())
    assert.equal(6, #first)
    assert.is_string(bounded.next_page_token)
    local rest = assert(client:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 3,
      pageToken = bounded.next_page_token }, { max_pages = 2 }))
    assert.equal(1, #assert(rest:all()))
    assert.is_nil(rest.next_page_token)
    local names2 = {}
    for _, x in ipairs(first) do names2[x.name] = true end
    names2[rest:all()[1].name] = true
    assert.same(made, names2)
    -- pages that never end (a new token each time, nothing in them) stop there too
    faults({ { match = "admin", method = DS .. "dicomStores.list", body = { dicomStores = {} }, fresh_page_token = true,
      times = 100 } })
    local endless = assert(client:pages(DS .. "dicomStores.list", { parent = dataset }, { max_pages = 5 }))
    assert.same({}, assert(endless:all()))
    assert.equal(5, endless.requests)
    assert.is_string(endless.next_page_token)
  end)

  it("asks for nextPageToken in a partial response (fields): the pages after the first are not lost", function()
    local dataset = new_dataset()
    for i = 1, 5 do assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" .. i }, {})) end
    for _, fields in ipairs({ "dicomStores/name", "dicomStores(name)", "dicomStores,nextPageToken" }) do
      local pages = assert(client:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 2, fields = fields }))
      local names = {}
      for store in pages:each() do names[#names + 1] = store.name:match("[^/]+$") end
      assert.is_nil(pages.error)
      assert.same({ "s1", "s2", "s3", "s4", "s5" }, names, fields)
      assert.equal(3, pages.requests)
    end
    -- the emulator answers as Google does: one page alone leaves the token out unless it is named
    local page = assert(client:call(DS .. "dicomStores.list", { parent = dataset, pageSize = 2, fields = "dicomStores" }))
    assert.equal(2, #page.dicomStores)
    assert.is_nil(page.nextPageToken)
  end)

  it("asks for nextPageToken when fields comes from healthcare.new's params too, a call's own fields first",
    function()
    local dataset = new_dataset()
    for i = 1, 5 do assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" .. i }, {})) end
    local narrow = assert(healthcare.new { endpoint = em.endpoint, access_token = em.token, retry = FAST_RETRY,
      params = { fields = "dicomStores/name" } })
    -- the client's fields, and a call's (which is sent instead of the client's)
    for _, fields in ipairs({ false, "dicomStores" }) do
      local pages = assert(narrow:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 2,
        fields = fields or nil }))
      local names = {}
      for store in pages:each() do names[#names + 1] = store.name:match("[^/]+$") end
      assert.is_nil(pages.error)
      assert.same({ "s1", "s2", "s3", "s4", "s5" }, names, tostring(fields))
      assert.equal(3, pages.requests)
    end
    narrow:close()
  end)

  it("a failed page ends the loop with pages.error; all() gives nil, err and the items before", function()
    local dataset = new_dataset()
    for i = 1, 5 do assert(client:call(DS .. "dicomStores.create", { parent = dataset, dicomStoreId = "s" .. i }, {})) end
    local pages = assert(client:pages(DS .. "dicomStores.list", { parent = dataset, pageSize = 2 }))
    local n = 0
    for _ in pages:each() do
      n = n + 1
      if n == 2 then faults({ { match = "admin", method = DS .. "dicomStores.list", status = 403, times = 1 } }) end
    end
    assert.equal(2, n)
    assert.equal(403, pages.error.http_status)
    faults({ { match = "admin", method = DS .. "dicomStores.list", status = 400, times = 1,
      message = "page token expired" } })
    local list, err, partial = pages:all()
    assert.is_nil(list)
    assert.equal(DS .. "dicomStores.list: HTTP 400 INVALID_ARGUMENT: page token expired", tostring(err))
    assert.same({}, partial)
  end)

  it("the operations of a dataset, with their metadata", function()
    local dataset = new_dataset()
    local listed = assert(assert(client:pages(DS .. "operations.list", { name = dataset })):all())
    assert.equal(1, #listed)
    assert.equal("google.cloud.healthcare.v1.dataset.DatasetService.CreateDataset", listed[1].metadata.apiMethodName)
  end)
end)

describe("the DICOMweb methods through client:call", function()
  local STORE = E.store
  -- The request lines (verb and URL without its query) a client sends, from its debug lines.
  local sent = {}
  local dw = assert(healthcare.new { endpoint = em.endpoint, access_token = em.token, debug = function(line)
    local verb, url = line:match("^> (%u+) ([^?]+)")
    if verb then sent[#sent + 1] = verb .. " " .. url end
  end })
  teardown(function() dw:close() end)

  it("store, search, retrieve and delete go to the store's URLs; answers are HttpBody", function()
    local file = H.gen_dicom({ count = 1 })[1]
    local stored, res = dw:call(DS .. "dicomStores.storeInstances", { parent = STORE, dicomWebPath = "studies" },
      { content_type = "application/dicom", data = { file = file.path } }, { accept = "application/dicom+json" })
    assert.is_table(stored, tostring(res))
    assert.equal("application/dicom+json", stored.content_type)
    assert.equal(file.sop_instance_uid, stored.json["00081199"].Value[1]["00081155"].Value[1])
    local found = assert(dw:call(DS .. "dicomStores.searchForStudies", { parent = STORE, dicomWebPath = "studies" },
      nil, { query = { StudyInstanceUID = file.study_uid }, accept = "application/dicom+json" }))
    assert.equal(file.study_uid, found.json[1]["0020000D"].Value[1])
    local to = H.tmpdir() .. "/study.multipart"
    local got = assert(dw:call(DS .. "dicomStores.studies.retrieveStudy",
      { parent = STORE, dicomWebPath = "studies/" .. file.study_uid }, nil,
      { to = to, accept = 'multipart/related; type="application/dicom"; transfer-syntax=*' }))
    assert.matches("^multipart/related", got.content_type)
    assert.equal(got.bytes, #H.file_bytes(to))
    assert.truthy(H.file_bytes(to):find(H.file_bytes(file.path), 1, true), "the instance's bytes are in the answer")
    -- the store's methods send the same requests, built through the same table entries
    local by_call = sent
    sent = {}
    local store = assert(dw:dicom_store(STORE))
    assert(store:store_instances("studies", { content_type = "application/dicom", data = { file = file.path } }))
    assert(assert(store:search_studies({ StudyInstanceUID = file.study_uid })):all())
    assert(store:retrieve_study(file.study_uid, { to = H.tmpdir() }))
    assert.same(by_call, sent)
    assert.equal(3, #sent)
    -- delete: an Operation, waited for
    local deleted = assert(dw:call(DS .. "dicomStores.studies.delete",
      { parent = STORE, dicomWebPath = "studies/" .. file.study_uid }, nil, { wait = true, poll_interval = 0.01 }))
    assert.same({ ["@type"] = "type.googleapis.com/google.protobuf.Empty" }, deleted)
    assert.same({}, assert(assert(store:search_studies({ StudyInstanceUID = file.study_uid })):all()))
  end)
end)

describe("the README's example of \"The whole API\"", function()
  it("runs word for word: a dataset and a DICOM store made, patched, listed, an import waited for", function()
    local text = assert(H.file_bytes((os.getenv("HC_SOURCE_DIR") or ".") .. "/README.md"))
    local at = assert(text:find("<!-- whole-api-example:", 1, true), "no whole-api-example marker in README.md")
    local script = assert(text:match("\n```lua\n(.-\n)```", at), "no ```lua block after the marker")
    -- as a user would run it: a key file named service-account.json in the current directory,
    -- the endpoint from the environment
    local dir = H.tmpdir()
    H.write_file(dir .. "/example.lua", script)
    H.write_file(dir .. "/service-account.json", assert(H.file_bytes(em:service_account().key_file)))
    config({ operation_polls = 1, operation_error = cjson.null, operation_units = 10 })
    local out, err, code = H.run(string.format("cd %s && env HEALTHCARE_ENDPOINT=%s HOME=%s %s example.lua", H.q(dir),
      H.q(em.endpoint), H.q(dir), H.q(os.getenv("HC_LUA") or "lua5.4")))
    assert.equal(0, code, err)
    local name = "projects/my-project/locations/us-central1/datasets/imaging/dicomStores/ct"
    -- the store listed, the import's counter after each poll: half done, then all
    assert.equal(name .. "\n5\t0\t5\n10\t0\t0\n", out)
    assert.same({ team = "imaging" }, assert(client:call(DS .. "dicomStores.get", { name = name })).labels)
  end)
end)
