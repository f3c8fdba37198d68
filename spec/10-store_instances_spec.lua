-- StoreInstances through the Lua API: against the Google emulator (which forwards to Orthanc)
-- and against Orthanc directly, then read back from Orthanc and compared byte for byte.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local dicomjson = require "healthcare.dicomweb.dicomjson"

local E = H.env
-- This file counts the emulator's requests ("nothing was sent"): a private emulator keeps other
-- spec files, run in parallel by ctest, out of the count.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local function stored_uids(res)
  local out = {}
  for _, item in ipairs(dicomjson.items(res.json, dicomjson.REFERENCED_SOP_SEQUENCE)) do
    out[#out + 1] = dicomjson.value(item, dicomjson.REFERENCED_SOP_INSTANCE_UID)
  end
  return out
end

local function multipart(paths, boundary)
  local parts = {}
  for _, p in ipairs(paths) do
    parts[#parts + 1] = "--" .. boundary .. "\r\nContent-Type: application/dicom\r\n\r\n" .. H.file_bytes(p) .. "\r\n"
  end
  return table.concat(parts) .. "--" .. boundary .. "--\r\n"
end

local function store_requests()
  return H.emulator_stats().store_requests_total or 0
end

describe("healthcare.new", function()
  it("raises on an unknown option, naming it and the valid ones", function()
    local ok, err = pcall(healthcare.new, { acess_token = "x" })
    assert.is_false(ok)
    assert.matches("unknown option 'acess_token' to 'healthcare.new'; valid options: .*access_token", err)
  end)

  it("has a version", function()
    assert.matches("^%d+%.%d+%.%d+$", healthcare._VERSION)
  end)

  it("refuses an endpoint that is not an http(s) URL", function()
    local c, err = healthcare.new { endpoint = "ftp://x" }
    assert.is_nil(c)
    assert.equal("usage", err.kind)
  end)

  it("takes the endpoint from HEALTHCARE_ENDPOINT when none is given", function()
    local c = assert(healthcare.new { access_token = "t" })
    assert.equal(os.getenv("HEALTHCARE_ENDPOINT") or healthcare.DEFAULT_ENDPOINT, c.endpoint)
  end)
end)

describe("client:store_instances", function()
  local client

  before_each(function()
    client = assert(healthcare.new { endpoint = E.endpoint, access_token = E.token })
  end)
  after_each(function() client:close() end)

  it("stores one instance sent as application/dicom, byte for byte", function()
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = client:store_instances(E.store, "studies",
      { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.is_true(res.ok)
    assert.same({ f.sop_instance_uid }, stored_uids(res))
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  it("streams a file given as { file = path }", function()
    local files = H.gen_dicom { count = 2, size = 3 * 1024 * 1024 }
    local boundary = "b" .. math.random(1, 1e9)
    local body_path = H.tmpdir() .. "/body"
    H.write_file(body_path, multipart({ files[1].path, files[2].path }, boundary))
    local res = assert(client:store_instances(E.store, "studies", {
      content_type = 'multipart/related; type="application/dicom"; boundary=' .. boundary,
      data = { file = body_path } }))
    assert.is_true(res.ok)
    for _, f in ipairs(files) do
      assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
    end
  end)

  it("takes opts.on_progress as the store's store_instances does: told the bytes sent, false stops", function()
    local f = H.gen_dicom { count = 1, size = 1024 * 1024 }[1]
    local body = { content_type = "application/dicom", data = { file = f.path } }
    -- the emulator sits on the request a while before answering: the transfer lasts past a progress turn
    H.emulator_faults({ { match = "store", parent = E.store, delay = 0.6 } })
    local seen = {}
    local res = assert(client:store_instances(E.store, "studies", body, nil, { on_progress = function(p)
      seen[#seen + 1] = p
    end }))
    assert.is_true(res.ok)
    assert.is_true(#seen >= 1)
    for _, p in ipairs(seen) do
      assert.equal(#H.file_bytes(f.path), p.bytes_to_send)
      assert.is_true(p.bytes_sent <= p.bytes_to_send)
    end
    H.emulator_faults({ { match = "store", parent = E.store, delay = 0.6 } })
    local calls = 0
    local stopped, err = client:store_instances(E.store, "studies", body, nil, { on_progress = function()
      calls = calls + 1
      return false
    end })
    assert.is_nil(stopped)
    assert.equal(1, calls)
    assert.equal("transport", err.kind)
    assert.equal("aborted", err.status)
  end)

  it("stores under studies/{uid} when the instances belong to that study", function()
    local f = H.gen_dicom { count = 1 }[1]
    local res = assert(client:store_instances(E.store, "studies/" .. f.study_uid,
      { content_type = "application/dicom", data = H.file_bytes(f.path) }))
    assert.is_true(res.ok)
    assert.same({ f.sop_instance_uid }, stored_uids(res))
  end)

  it("returns the server's DICOM answer, not an error, when the study does not match", function()
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = client:store_instances(E.store, "studies/1.2.3.4",
      { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(err)
    assert.is_false(res.ok)
    assert.equal(409, res.status)
    local oc = dicomjson.outcomes(res.json)[f.sop_instance_uid]
    assert.equal("failed", oc.outcome)
    assert.equal(0x0110, oc.failure_reason)
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
  end)

  it("returns 409 with Google's FailureDetail for changed bytes under an existing SOP Instance UID", function()
    local f = H.gen_dicom { count = 1 }[1]
    assert(client:store_instances(E.store, "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) }))
    local changed = H.gen_dicom { count = 1, sop = f.sop_instance_uid, study = f.study_uid }[1]
    local res = assert(client:store_instances(E.store, "studies",
      { content_type = "application/dicom", data = H.file_bytes(changed.path) }))
    assert.equal(409, res.status)
    assert.is_false(res.ok)
    local oc = dicomjson.outcomes(res.json)[f.sop_instance_uid]
    assert.equal("failed", oc.outcome)
    assert.truthy(oc.detail and oc.detail:find("already exists", 1, true))
    -- the original bytes are still the stored ones
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  it("authenticates with an API key", function()
    local c = assert(healthcare.new { endpoint = E.endpoint, api_key = E.api_key })
    local f = H.gen_dicom { count = 1 }[1]
    local res = assert(c:store_instances(E.store, "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) }))
    assert.is_true(res.ok)
    c:close()
  end)

  it("reports a bad API key as a credential error (Google answers 400 API_KEY_INVALID), not retried", function()
    local c = assert(healthcare.new { endpoint = E.endpoint, api_key = "not-" .. E.api_key })
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = c:store_instances(E.store, "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(res)
    assert.same({ "auth", 400, "INVALID_ARGUMENT", "API_KEY_INVALID", false },
      { err.kind, err.http_status, err.status, err.reason, err.retryable })
    assert.equal("StoreInstances: HTTP 400 INVALID_ARGUMENT: API key not valid. Please pass a valid API key.", err.message)
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
    c:close()
  end)

  it("authenticates with the access_token query parameter, under its CLI or wire name", function()
    local c = assert(healthcare.new { endpoint = E.endpoint, credentials = false })
    for _, name in ipairs({ "access-token", "access_token" }) do
      local f = H.gen_dicom { count = 1 }[1]
      local res = assert(c:store_instances(E.store, "studies",
        { content_type = "application/dicom", data = H.file_bytes(f.path) }, { [name] = E.token }))
      assert.is_true(res.ok)
    end
    c:close()
  end)

  it("returns UNAUTHENTICATED without credentials", function()
    local c = assert(healthcare.new { endpoint = E.endpoint, credentials = false })
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = c:store_instances(E.store, "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(401, err.http_status)
    assert.equal("UNAUTHENTICATED", err.status)
    assert.is_false(err.retryable)
    assert.matches("UNAUTHENTICATED", tostring(err))
    c:close()
  end)

  it("returns NOT_FOUND for an unknown store", function()
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = client:store_instances("projects/test-project/locations/us-central1/datasets/test-dataset/dicomStores/nope",
      "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.equal("NOT_FOUND", err.status)
  end)

  local bad_parents = {
    "", "projects/p", "projects/p/locations/l/datasets/d/dicomStores/",
    "projects//locations/l/datasets/d/dicomStores/s",
    "projects/p/locations/l/datasets/d/dicomStores/s/extra",
    "projects/p/locations/l/datasets/../dicomStores/s",
    "projects/p/locations/l/datasets/d/dicomStores/s?x=1",
    "projects/p/locations/l/datasets/d/dicomStores/s#f",
    "projects/p/locations/l/datasets/d%2F/dicomStores/s",
    "projects/p/locations/l/datasets/d/dicomStores/s t",
    "projects/p/locations/l/datasets/d/dicomStores/s\r\nX: y",
    "projects/p/locations/l/datasets/dé/dicomStores/s",
    "folders/p/locations/l/datasets/d/dicomStores/s",
  }
  for _, parent in ipairs(bad_parents) do
    it("refuses the malformed parent " .. string.format("%q", parent) .. " and sends nothing", function()
      local before = store_requests()
      local res, err = client:store_instances(parent, "studies", { content_type = "application/dicom", data = "x" })
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.matches("invalid dicomStore name", err.message)
      assert.equal(before, store_requests())
    end)
  end

  local bad_paths = { "", "study", "studies/", "studies/1.2.x", "studies/1..2", "studies/.1", "series",
    "studies/1.2/series", "studies/" .. string.rep("1", 65), "studies/1.2?x", "../studies" }
  for _, path in ipairs(bad_paths) do
    it("refuses the DICOMweb path " .. string.format("%q", path) .. " and sends nothing", function()
      local before = store_requests()
      local res, err = client:store_instances(E.store, path, { content_type = "application/dicom", data = "x" })
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.matches("invalid DICOMweb path", err.message)
      assert.equal(before, store_requests())
    end)
  end

  for _, ct in ipairs({ "application/dicom\r\nX-Injected: 1", "application/dicom\nX: 1", "application/dicom\r" }) do
    it("refuses CR or LF in the content type " .. string.format("%q", ct), function()
      local before = store_requests()
      local res, err = client:store_instances(E.store, "studies", { content_type = ct, data = "x" })
      assert.is_nil(res)
      assert.equal("usage", err.kind)
      assert.matches("CR, LF", err.message)
      assert.equal(before, store_requests())
    end)
  end

  it("returns an io error for a data file that does not exist", function()
    local before = store_requests()
    local res, err = client:store_instances(E.store, "studies",
      { content_type = "application/dicom", data = { file = "/nonexistent/x.dcm" } })
    assert.is_nil(res)
    assert.equal("io", err.kind)
    assert.matches("/nonexistent/x.dcm", err.message)
    assert.equal(before, store_requests())
  end)

  it("refuses an unknown query parameter", function()
    local res, err = client:store_instances(E.store, "studies", { content_type = "application/dicom", data = "x" }, { bogus = "1" })
    assert.is_nil(res)
    assert.equal("usage", err.kind)
    assert.matches("unknown", err.message)
  end)

  it("raises for a parent that is not a string (a programming mistake)", function()
    assert.has_error(function() client:store_instances(nil, "studies", {}) end)
  end)

  it("returns a retryable transport error when the server is unreachable", function()
    local c = assert(healthcare.new { endpoint = "http://127.0.0.1:9/v1", access_token = "t" })
    local res, err = c:store_instances(E.store, "studies", { content_type = "application/dicom", data = "x" })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("connect", err.status)
    assert.is_true(err.retryable)
    c:close()
  end)

  it("sends the User-Agent, Accept and an empty Expect, and never shows the token in debug output", function()
    local debug_lines = {}
    local c = assert(healthcare.new { endpoint = E.endpoint, access_token = E.token,
      debug = function(l) debug_lines[#debug_lines + 1] = l end })
    local f = H.gen_dicom { count = 1 }[1]
    assert(c:store_instances(E.store, "studies", { content_type = "application/dicom", data = H.file_bytes(f.path) }))
    c:close()
    local reqs = H.emulator_stats().requests
    local last = reqs[#reqs]
    assert.matches("^healthcare%-lua/%d+%.%d+%.%d+ libcurl/%d", last["user-agent"])
    assert.equal("application/dicom+json", last.accept)
    assert.is_nil(last.expect)
    for _, l in ipairs(debug_lines) do assert.is_nil(l:find(E.token, 1, true)) end
    local all = table.concat(debug_lines, "\n")
    assert.truthy(all:find("Authorization: REDACTED", 1, true))
    assert.truthy(all:find("< HTTP/1.1 200", 1, true))
  end)
end)

describe("healthcare.dicomweb (Orthanc directly)", function()
  it("stores a multipart body and Orthanc holds the same bytes", function()
    local store = assert(healthcare.dicomweb(E.dicomweb))
    local files = H.gen_dicom { count = 3 }
    local boundary = "hc" .. math.random(1, 1e9)
    local res = assert(store:store_instances("studies", {
      content_type = 'multipart/related; type="application/dicom"; boundary=' .. boundary,
      data = multipart({ files[1].path, files[2].path, files[3].path }, boundary) }))
    assert.equal(200, res.status)
    assert.is_true(res.ok)
    assert.equal(3, #stored_uids(res))
    for _, f in ipairs(files) do
      assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
    end
    store:close()
  end)

  it("reports Orthanc's 415 for a single application/dicom body as an http error", function()
    local store = assert(healthcare.dicomweb(E.dicomweb))
    local f = H.gen_dicom { count = 1 }[1]
    local res, err = store:store_instances("studies", { content_type = "application/dicom", data = H.file_bytes(f.path) })
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(415, err.http_status)
    assert.is_false(err.retryable)
  end)

  it("refuses a base URL that is not http(s)", function()
    local s, err = healthcare.dicomweb("file:///etc")
    assert.is_nil(s)
    assert.equal("usage", err.kind)
  end)
end)

describe("healthcare.dicom_store (a URL or a dicomStore name)", function()
  it("makes a DICOMweb store of a URL and a Google store of a dicomStore name", function()
    local plain = assert(healthcare.dicom_store(E.dicomweb))
    assert.equal(E.dicomweb, plain.base_url)
    local google = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token }))
    assert.equal(E.endpoint .. "/" .. E.store .. "/dicomWeb", google.base_url)
    assert.equal(E.store, google.name)
    -- both work: the same file through each
    for _, store in ipairs({ plain, google }) do
      local f = H.gen_dicom { count = 1 }[1]
      local report = assert(store:store(f.path))
      assert.equal(1, #report.stored)
      assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
      store:close()
    end
  end)

  it("refuses a malformed dicomStore name and a non-http URL, and raises for a non-string", function()
    local s, err = healthcare.dicom_store("projects/p/datasets/d", { access_token = "t" })
    assert.is_nil(s)
    assert.equal("usage", err.kind)
    assert.matches("^invalid dicomStore name", err.message)
    s, err = healthcare.dicom_store("ftp://host/dicom-web")
    assert.is_nil(s)
    assert.equal("usage", err.kind)
    assert.has_error(function() healthcare.dicom_store(nil) end,
      "bad argument #1 to 'dicom_store' (string expected, got nil)")
  end)
end)
