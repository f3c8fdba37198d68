-- SPDX-License-Identifier: MIT
-- The gateway's FHIR and HL7v2 prefixes (healthcare.ngx.routes) as examples/openresty/fhir.conf
-- configures them: Debian's nginx + ngx_http_lua against a private Google emulator whose FHIR and
-- HL7v2 stores (spec/support/emulator_fhir.py) answer as Google's do. Clients send no
-- credentials; the gateway adds the service account's token, streams bodies both ways and points
-- the API's URLs in answers (fullUrl, paging links, Location) at itself. Then a STOW sent the way
-- Python's and npm's dicomweb-client send it (no Accept, Host without the port): the DICOM XML
-- answer's RetrieveURLs point at the gateway, port included, and following one returns the
-- instance byte for byte. nginx runs LuaJIT whatever Lua runs busted.
local H = require "helpers"
local N = require "support.nginx"
local cjson = require "cjson.safe"

local DATASET = N.STORE:match("^(.-)/dicomStores/")
local FHIR_STORE = DATASET .. "/fhirStores/fhir-" .. math.random(1, 1e9)
local HL7_STORE = DATASET .. "/hl7V2Stores/hl7-" .. math.random(1, 1e9)
local FHIR_JSON = "Content-Type: application/fhir+json"

local function b64(s)
  return (H.check_run("base64 -w0", s):gsub("%s", ""))
end

local function unb64(s)
  return H.check_run("base64 -d", s)
end

-- Creates the FHIR and HL7v2 stores through the emulator's admin API (with its static token).
local function create_stores(emu)
  for _, s in ipairs({ { FHIR_STORE, "fhirStores", "fhirStoreId", '{"version":"R4"}' },
    { HL7_STORE, "hl7V2Stores", "hl7V2StoreId", "{}" } }) do
    local r = H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. emu.static_token, "-H",
      "Content-Type: application/json", "--data-binary", s[4],
      string.format("%s/v1/%s/%s?%s=%s", emu.url, DATASET, s[2], s[3], s[1]:match("[^/]+$")) })
    assert(r.status == 200, "creating " .. s[1] .. ": " .. r.status .. " " .. r.body)
  end
end

local function fhir(gw, method, path, doc)
  local args = { "-X", method, "-H", FHIR_JSON }
  if doc then
    args[#args + 1] = "--data-binary"
    args[#args + 1] = type(doc) == "string" and doc or cjson.encode(doc)
  end
  args[#args + 1] = gw.url .. path
  return H.curl(args)
end

-- The last request the emulator recorded.
local function last_request(emu)
  local list = emu:stats().requests or {}
  return list[#list]
end

describe("the FHIR and HL7v2 gateway (examples/openresty/fhir.conf)", function()
  local emu, sa, gw, root
  setup(function()
    emu = N.emulator()
    sa = emu:service_account()
    create_stores(emu)
    local example = (os.getenv("HC_SOURCE_DIR") or ".") .. "/examples/openresty/fhir.conf"
    gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 2, example = example, edits = {
      { '"projects/PROJECT/locations/LOCATION/datasets/DATASET/fhirStores/FHIR"', string.format("%q", FHIR_STORE) },
      { '"projects/PROJECT/locations/LOCATION/datasets/DATASET/hl7V2Stores/HL7"', string.format("%q", HL7_STORE) },
    } })
    root = gw.url .. "/fhir"
  end)
  teardown(N.stop_all)

  local patient_id
  it("creates and reads a FHIR resource: Location and body through the gateway, the token added", function()
    local r = fhir(gw, "POST", "/fhir/Patient", { resourceType = "Patient", name = { { family = "Gateway" } } })
    assert.equal(201, r.status, r.body .. gw:log())
    assert.truthy(r.headers["content-type"]:find("application/fhir+json", 1, true))
    patient_id = r.json.id
    assert.is_string(patient_id)
    assert.equal(root .. "/Patient/" .. patient_id .. "/_history/1", r.headers["location"])
    local seen = last_request(emu)
    assert.equal("/v1/" .. FHIR_STORE .. "/fhir/Patient", seen.path)
    assert.equal("application/fhir+json", seen["content-type"])
    r = fhir(gw, "GET", "/fhir/Patient/" .. patient_id)
    assert.equal(200, r.status, r.body)
    assert.equal("Gateway", r.json.name[1].family)
    assert.equal("1", r.json.meta.versionId)
    r = fhir(gw, "PUT", "/fhir/Patient/" .. patient_id, { resourceType = "Patient", id = patient_id,
      name = { { family = "Updated" } } })
    assert.equal(200, r.status, r.body)
    assert.equal(root .. "/Patient/" .. patient_id .. "/_history/2", r.headers["location"])
    -- The API's FHIR error passes as it came (an OperationOutcome).
    r = fhir(gw, "GET", "/fhir/Patient/no-such-patient")
    assert.equal(404, r.status)
    assert.equal("OperationOutcome", r.json.resourceType)
  end)

  it("searches with paging links and fullUrls pointing at the gateway, and follows them", function()
    for i = 1, 3 do
      local r = fhir(gw, "POST", "/fhir/Observation", { resourceType = "Observation", status = "final",
        code = { text = "heart rate " .. i }, subject = { reference = "Patient/" .. patient_id } })
      assert.equal(201, r.status, r.body)
    end
    local r = fhir(gw, "GET", "/fhir/Observation?subject=Patient/" .. patient_id .. "&_count=2")
    assert.equal(200, r.status, r.body)
    assert.equal("searchset", r.json.type)
    assert.equal(3, r.json.total)
    assert.equal(2, #r.json.entry)
    local next_url
    for _, l in ipairs(r.json.link) do
      assert.equal(root, l.url:sub(1, #root), l.url)
      if l.relation == "next" then next_url = l.url end
    end
    for _, e in ipairs(r.json.entry) do
      assert.equal(root .. "/Observation/" .. e.resource.id, e.fullUrl)
    end
    assert.falsy(r.body:find(emu.url, 1, true), "the API's URL left in the answer")
    assert.is_string(next_url)
    r = H.curl({ next_url })
    assert.equal(200, r.status, r.body)
    assert.equal(1, #r.json.entry)
    for _, l in ipairs(r.json.link) do assert.not_equal("next", l.relation) end
    -- $everything: the patient and its observations, paged the same way.
    r = fhir(gw, "GET", "/fhir/Patient/" .. patient_id .. "/$everything")
    assert.equal(200, r.status, r.body)
    assert.equal(4, #r.json.entry)
    assert.equal(root .. "/Patient/" .. patient_id, r.json.entry[1].fullUrl)
  end)

  it("executes a transaction Bundle POSTed to the FHIR root", function()
    local bundle = { resourceType = "Bundle", type = "transaction", entry = {
      { fullUrl = "urn:uuid:11111111-1111-4111-8111-111111111111", resource = { resourceType = "Patient",
        name = { { family = "Bundled" } } }, request = { method = "POST", url = "Patient" } },
      { resource = { resourceType = "Observation", status = "final", code = { text = "bp" },
        subject = { reference = "urn:uuid:11111111-1111-4111-8111-111111111111" } },
        request = { method = "POST", url = "Observation" } },
    } }
    local r = fhir(gw, "POST", "/fhir", bundle)
    assert.equal(200, r.status, r.body .. gw:log())
    assert.equal("transaction-response", r.json.type)
    assert.equal(2, #r.json.entry)
    local pid = r.json.entry[1].resource.id
    for _, e in ipairs(r.json.entry) do
      assert.equal("201 Created", e.response.status)
      assert.equal(root, e.response.location:sub(1, #root), e.response.location)
      assert.equal(root, e.fullUrl:sub(1, #root))
    end
    -- The observation's reference is the created patient's; read through its location.
    local loc = r.json.entry[2].response.location
    r = H.curl({ (loc:gsub("/_history/%d+$", "")) })
    assert.equal(200, r.status, r.body)
    assert.equal("Patient/" .. pid, r.json.subject.reference)
    -- GET on the root is not a FHIR path (a Bundle is POSTed there).
    r = fhir(gw, "GET", "/fhir")
    assert.equal(404, r.status)
    assert.equal("NOT_FOUND", r.json.error.status)
  end)

  it("creates, ingests, reads and lists HL7v2 messages", function()
    local adt = "MSH|^~\\&|SENDER|HOSPITAL|RECEIVER|LAB|20240102030405||ADT^A01|MSG00001|P|2.5\r"
      .. "PID|1||12345^^^HOSP^MR||DOE^JOHN\r"
    local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
      cjson.encode({ message = { data = b64(adt) } }), gw.url .. "/hl7v2/messages" })
    assert.equal(200, r.status, r.body .. gw:log())
    assert.equal("ADT", r.json.messageType)
    assert.equal("HOSPITAL", r.json.sendFacility)
    assert.equal("2024-01-02T03:04:05Z", r.json.sendTime)
    local name = r.json.name
    assert.equal(HL7_STORE .. "/messages/", name:sub(1, #HL7_STORE + 10))
    r = H.curl({ gw.url .. "/hl7v2/messages/" .. name:match("[^/]+$") })
    assert.equal(200, r.status, r.body)
    assert.equal(adt, unb64(r.json.data))
    r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
      cjson.encode({ message = { data = b64(adt:gsub("MSG00001", "MSG00002")) } }), gw.url .. "/hl7v2/messages:ingest" })
    assert.equal(200, r.status, r.body)
    assert.truthy(unb64(r.json.hl7Ack):find("MSA|AA|MSG00002", 1, true))
    r = H.curl({ gw.url .. "/hl7v2/messages?pageSize=1" })
    assert.equal(200, r.status, r.body)
    assert.equal(1, #r.json.hl7V2Messages)
    assert.equal(name, r.json.hl7V2Messages[1].name)
    r = H.curl({ gw.url .. "/hl7v2/messages?pageSize=1&pageToken=" .. r.json.nextPageToken })
    assert.equal(1, #r.json.hl7V2Messages)
    -- The API's refusal comes back as it is (Google's envelope).
    r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", '{"message":{"data":"bm8="}}',
      gw.url .. "/hl7v2/messages" })
    assert.equal(400, r.status, r.body)
    assert.equal("INVALID_ARGUMENT", r.json.error.status)
    r = H.curl({ gw.url .. "/hl7v2/other" })
    assert.equal(404, r.status)
  end)

  it("answers 405 with Allow for a method outside a prefix's allow-list, before any token or upstream", function()
    local before = #(emu:stats().requests or {})
    for _, c in ipairs({ { "DELETE", "/fhir/Patient/" .. patient_id, "GET, POST, PUT" },
      { "PATCH", "/fhir/Patient/" .. patient_id, "GET, POST, PUT" },
      { "DELETE", "/hl7v2/messages/x", "GET, POST" }, { "PUT", "/hl7v2/messages", "GET, POST" },
      { "DELETE", "/dicomWeb/studies/1.2.3", "POST, GET" } }) do
      local r = H.curl({ "-X", c[1], gw.url .. c[2] })
      assert.equal(405, r.status, c[1] .. " " .. c[2])
      assert.equal(c[3], r.headers["allow"])
      assert.equal("METHOD_NOT_ALLOWED", r.json.error.status)
    end
    assert.equal(before, #(emu:stats().requests or {}))
    -- Paths that are not FHIR's or HL7v2's: 404 in Google's envelope, nothing sent.
    for _, p in ipairs({ "/fhir/Patient/a/../b", "/fhir/Patient/%2e%2e", "/fhir/a/b/c/d/e/f" }) do
      local r = H.curl({ gw.url .. p })
      assert.equal(404, r.status, p)
    end
  end)

  it("drops the cached token when the API answers 401, and the next request gets a new one", function()
    emu:control("reset", {})
    emu:control("keys", { kid = sa.kid, client_email = sa.client_email, public_key_pem = sa.public_key_pem })
    create_stores(emu)
    local r = fhir(gw, "GET", "/fhir/Patient?_count=1")
    assert.equal(401, r.status, r.body)
    assert.truthy(gw:log():find("refused the access token", 1, true))
    r = fhir(gw, "GET", "/fhir/Patient?_count=1")
    assert.equal(200, r.status, r.body)
    assert.equal(1, emu:token_requests())
  end)

  it("points the RetrieveURLs of a DICOM XML STOW answer (no Accept, Host without port) at the gateway", function()
    local g = H.gen_dicom({ count = 1 })[1]
    local boundary = "dicomweb-client-" .. math.random(1, 1e9)
    local body = H.tmpdir() .. "/body"
    H.write_file(body, "--" .. boundary .. "\r\nContent-Type: application/dicom\r\n\r\n" .. H.file_bytes(g.path)
      .. "\r\n--" .. boundary .. "--\r\n")
    -- As Python's dicomweb-client sends it: no Accept, Host: 127.0.0.1 (no port).
    local r = H.curl({ "-X", "POST", "-H", "Accept:", "-H", "Host: 127.0.0.1", "-H",
      'Content-Type: multipart/related; type="application/dicom"; boundary=' .. boundary,
      "--data-binary", "@" .. body, gw.url .. "/dicomWeb/studies" })
    assert.equal(200, r.status, r.body .. gw:log())
    assert.truthy(r.headers["content-type"]:find("application/dicom+xml", 1, true), r.headers["content-type"])
    assert.falsy(r.body:find(emu.url, 1, true), "the API's URL left in the XML answer")
    local urls = {}
    for u in r.body:gmatch('tag="00081190"[^>]*>%s*<Value number="1">([^<]+)</Value>') do urls[#urls + 1] = u end
    assert.equal(2, #urls, r.body)  -- the study's and the instance's
    local want = gw.url .. "/dicomWeb/studies/" .. g.study_uid
    assert.equal(want, urls[1])
    assert.equal(want .. "/series/" .. g.series_uid .. "/instances/" .. g.sop_instance_uid, urls[2])
    -- Following it returns the instance, byte for byte.
    local out = H.tmpdir() .. "/answer"
    local so = H.check_run(string.format("curl -sS -o %s -w '%%{http_code}' -H %s %s", H.q(out),
      H.q('Accept: multipart/related; type="application/dicom"; transfer-syntax=*'), H.q(urls[2])))
    assert.equal("200", so)
    local answer = H.file_bytes(out)
    local from = assert(answer:find("\r\n\r\n", 1, true)) + 4
    assert.equal(H.file_bytes(g.path), answer:sub(from, from + g.size - 1))
    assert.equal(H.sha256(g.path), H.sha256_string(answer:sub(from, from + g.size - 1)))
    H.curl({ "-X", "DELETE", H.env.orthanc .. "/instances/" .. assert(H.orthanc_find_instance(g.sop_instance_uid)) })
  end)
end)
