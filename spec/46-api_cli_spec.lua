-- SPDX-License-Identifier: MIT
-- `healthcare projects <method>` for every method of the table, run as a user runs it. First the
-- oracle: each call of spec/fixtures/api/oracle-v1.json (what Google's own Node client sent) is
-- typed as a command line (arguments, -p, -r on the request schema, data=@file for HttpBody) and
-- sent to a capture server (spec/support/capture_server.py): verb, path, query string, content
-- type and body must be the Node client's. Then against a private emulator's admin surface: a
-- dataset and a DICOM store made, listed across pages with --all (each item once, the requests
-- counted), labels patched with -r .labels=team=imaging, IAM policies, operations waited for to
-- success and to failure, Google's 409, bad command lines refused before any request; and the
-- --help pages of three methods against the method table.
local H = require "helpers"
if not H.need_testbed() then return end
local api = require "healthcare.api"
local seed = require "healthcare.cli.seed"
local cjson = H.json
local unpack = table.unpack or unpack -- luacheck: ignore 113

local E = H.env
local PY = "/usr/bin/python3"
local ORACLE = cjson.decode((assert(H.file_bytes("spec/fixtures/api/oracle-v1.json"))))

local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

-- ---- the capture server ------------------------------------------------------------------

local dir = H.tmpdir()
local LOG = dir .. "/captured.jsonl"
local URL, stop_server = H.start_server("capture server", H.q(PY) .. " " .. H.q(E.support .. "/capture_server.py") .. " "
  .. H.q(LOG) .. " " .. H.q(dir .. "/answers.json"), dir)
teardown(stop_server)

local function captured()
  local list = {}
  for line in (H.file_bytes(LOG) or ""):gmatch("[^\n]+") do list[#list + 1] = assert(cjson.decode(line)) end
  return list
end

local unhex = H.unhex

-- ---- a fixture call as a command line ------------------------------------------------------

local function text_of(v)
  if type(v) == "boolean" then return tostring(v) end
  if type(v) == "number" then
    return v == math.floor(v) and string.format("%d", v) or string.format("%.17g", v)
  end
  return v
end

-- -r items setting `value` (a JSON object of schema `struct`) from the top, at `prefix`
-- (".a.b."): scalars set, list elements one -r each, map entries key=value, a list of
-- structures one cursor move per element (then its fields through the cursor's path), empty
-- lists and maps as JSON (:=).
local function r_items(value, struct, prefix, out)
  for _, f in ipairs(struct.fields) do
    local v = value[f.key]
    local at = prefix .. f.name
    if v == nil then -- luacheck: ignore 542
    elseif f.type == "array" and next(v) == nil then
      out[#out + 1] = at .. ":=[]"
    elseif f.type == "array" and f.items.type == "object" then
      for _, element in ipairs(v) do
        out[#out + 1] = at
        r_items(element, seed.struct(f.items.ref), at .. ".", out)
      end
    elseif f.type == "array" then
      for _, element in ipairs(v) do out[#out + 1] = at .. "=" .. text_of(element) end
    elseif f.type == "map" and f.values.type ~= "object" and f.values.type ~= "any" and next(v) ~= nil then
      for k, x in pairs(v) do out[#out + 1] = at .. "=" .. k .. "=" .. text_of(x) end
    elseif f.type == "object" and next(v) ~= nil then
      r_items(v, seed.struct(f.ref), at .. ".", out)
    elseif f.type == "map" or f.type == "object" or f.type == "any" then
      out[#out + 1] = at .. ":=" .. cjson.encode(v)
    else
      out[#out + 1] = at .. "=" .. text_of(v)
    end
  end
  return out
end

local CREDENTIAL_PARAMS = { access_token = true, oauth_token = true, key = true }
local sa = em:service_account()
local CACHE = H.tmpdir()

-- The argv of fixture call c, and whether it carries its own credential.
local function argv_of(c, n)
  local m = api.method(c.method)
  local given = {}
  for _, pair in ipairs(c.params) do given[pair[1]] = pair[2] end
  local argv = { "projects", m.cli }
  for _, r in ipairs(m.required) do argv[#argv + 1] = given[r] end
  local own, in_query = {}, false
  for _, q in ipairs(m.query) do own[q.name] = q end
  for _, pair in ipairs(c.params) do
    local name, v = pair[1], pair[2]
    in_query = in_query or CREDENTIAL_PARAMS[name] == true
    local is_required = false
    for _, r in ipairs(m.required) do is_required = is_required or r == name end
    if not is_required then
      local shown_name = own[name] and seed.kebab(name) or name
      for _, x in ipairs(type(v) == "table" and v or { v }) do
        argv[#argv + 1] = "-p"
        argv[#argv + 1] = shown_name .. "=" .. text_of(x)
      end
    end
  end
  if c.http_body then
    local file = H.write_file(string.format("%s/body-%d", dir, n), c.http_body.data)
    for _, w in ipairs({ "-r", ".", "content-type=" .. c.http_body.content_type, "data=@" .. file }) do
      argv[#argv + 1] = w
    end
  elseif c.body then
    -- `-r .` first: a request value, even an empty one ({}), is sent.
    for _, item in ipairs(r_items(c.body, seed.struct(m.request), ".", { "." })) do
      argv[#argv + 1] = "-r"
      argv[#argv + 1] = item
    end
  end
  for _, w in ipairs({ "--endpoint", URL .. "/v1" }) do argv[#argv + 1] = w end
  if not in_query then
    argv[#argv + 1] = "--credentials"
    argv[#argv + 1] = sa.key_file
  end
  return argv, in_query
end

-- The differences between what arrived and what the Node client sent.
local function differences(got, c, in_query)
  local sent, diffs = c.sent, {}
  local function check(what, ours, theirs)
    if ours ~= theirs then
      diffs[#diffs + 1] = string.format("%s: command %s, Node %s", what, tostring(ours), tostring(theirs))
    end
  end
  local path, qs = got.target:match("^([^?]*)%??(.*)$")
  check("verb", got.verb, sent.verb)
  check("path", path, sent.path)
  check("query string", qs, sent.query_string)
  check("content type", got.headers["content-type"], sent.content_type)
  local body = unhex(got.body_hex)
  if sent.body_json and body ~= "" then
    check("body", H.canonical_json(body), H.canonical_json(sent.body_json))
  else
    check("body", body, sent.body_text or sent.body_json or "")
  end
  check("a bearer token", (got.headers.authorization or ""):match("^Bearer %S+$") ~= nil, not in_query)
  return diffs
end

-- The seed's own DICOMweb methods check more than the method table's patterns: a dicomStore
-- name's IDs are Google's (letters, digits, '-', '_', '.'; the fixture's "ds_1.a~b" and
-- "dicom:store@1" only match [^/]+), a dicomWebPath has the method's shape (UIDs, .../metadata,
-- .../rendered; the fixture's sample is often just "studies"). Such a call must be refused
-- (exit 2, nothing sent); then it is sent with the IDs and the path made valid, on both sides:
-- the rest (query parameters, standard ones, escaping, body) must still be the Node client's.
local ODD_STORE, VALID_STORE = "ds_1.a~b/dicomStores/dicom:store@1", "ds_1.a-b/dicomStores/dicom-store-1"
local UIDS = { study_uid = "1.2.840.113619.2.1", series_uid = "1.2.840.113619.2.1.2",
  instance_uid = "1.2.840.113619.2.1.2.3", frame_list = "1,2" }

local function seed_method(c)
  local m = seed.find_method(api.method(c.method).cli)
  return m.kind ~= "api" and m or nil
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function made_valid(c)
  local m = seed_method(c)
  local copy = cjson.decode(cjson.encode(c))
  for _, pair in ipairs(copy.params) do
    if pair[1] == "parent" then pair[2] = pair[2]:gsub(plain(ODD_STORE), VALID_STORE) end
    if pair[1] == "dicomWebPath" and m.paths and not seed.check_path(m, pair[2]) then
      pair[2] = m.paths[1]:gsub("{([%w_]+)}", UIDS)
      copy.sent.path = copy.sent.path:match("^(.-/dicomWeb/)") .. pair[2]
    end
  end
  copy.sent.path = copy.sent.path:gsub(plain(ODD_STORE), VALID_STORE)
  return copy
end

-- Runs fixture call c (the n-th) as a command line: nil when its request is the Node client's,
-- else what differs; and the exit code and how many requests arrived.
local function run_call(c, n)
  local argv, in_query = argv_of(c, n)
  local before = #captured()
  local out, err, code = H.run("XDG_CACHE_HOME=" .. H.q(CACHE) .. " " .. H.healthcare_command(argv))
  local list = captured()
  local arrived = #list - before
  if code ~= 0 or arrived ~= 1 then
    return string.format("%s: exit %s, %d requests: %s%s", c.method, tostring(code), arrived, err, out:sub(1, 200)),
      code, arrived
  end
  local diffs = differences(list[#list], c, in_query)
  if #diffs > 0 then return c.method .. ": " .. table.concat(diffs, "; "), code, arrived end
  return nil, code, arrived
end

describe("healthcare projects <method> against Google's Node client", function()
  it("sends every call of the oracle as the Node client did (the seed's stricter DICOMweb checks refuse first)",
    function()
    local equal, as_is, failures, methods = 0, 0, {}, {}
    for n, c in ipairs(ORACLE.calls) do
      local diff, code, arrived = run_call(c, n)
      if diff == nil then
        as_is = as_is + 1
      elseif seed_method(c) and code == 2 and arrived == 0 then
        c = made_valid(c)
        diff = run_call(c, n)
      end
      if diff then
        failures[#failures + 1] = diff
      else
        equal = equal + 1
        methods[c.method] = true
      end
    end
    local n = 0
    for _ in pairs(methods) do n = n + 1 end
    print(string.format("\noracle through the command: %d of %d requests equal, %d as in the fixture, %d with the "
      .. "dicomStore IDs or the DICOMweb path made valid for the seed's methods, which refused the fixture's (%d of %d "
      .. "methods, %s %s)", equal, #ORACLE.calls, as_is, equal - as_is, n, ORACLE.methods, ORACLE.package,
      ORACLE.version))
    assert.same({}, failures)
    assert.equal(#ORACLE.calls, equal)
    assert.equal(ORACLE.methods, n)
  end)
end)

describe("healthcare projects <method>'s answers", function()
  local ANSWERS = dir .. "/answers.json"
  local RESOURCE = "projects/p/locations/l/datasets/d/fhirStores/f/fhir/Patient/1"

  local function against_capture(...)
    local argv = { "projects", ... }
    for _, w in ipairs({ "--endpoint", URL .. "/v1", "--credentials", sa.key_file }) do argv[#argv + 1] = w end
    return H.run("XDG_CACHE_HOME=" .. H.q(CACHE) .. " " .. H.healthcare_command(argv))
  end

  it("prints an HttpBody answer as it came (JSON pretty), or streams it to -o FILE", function()
    local bytes = "line 1\r\n\0binary é"
    H.write_file(ANSWERS, cjson.encode({ { content_type = "application/octet-stream", body = bytes },
      { content_type = "application/fhir+json", body = '{"resourceType":"Patient","id":"1"}' },
      { content_type = "application/octet-stream", body = bytes } }))
    local out, err, code = against_capture("locations-datasets-fhir-stores-fhir-read", RESOURCE)
    assert.equal(0, code, err)
    assert.equal(bytes, out) -- byte for byte: `> file` is the server's bytes, no newline added
    out, err, code = against_capture("locations-datasets-fhir-stores-fhir-read", RESOURCE)
    assert.equal(0, code, err)
    assert.equal('{\n  "id": "1",\n  "resourceType": "Patient"\n}\n', out)
    local file = dir .. "/deep/er/patient.bin"
    out, err, code = against_capture("locations-datasets-fhir-stores-fhir-read", RESOURCE, "-o", file)
    assert.equal(0, code, err)
    assert.equal("", out)
    assert.equal(bytes, H.file_bytes(file))
    assert.matches("wrote " .. #bytes .. " bytes %(application/octet%-stream%) to ", err)
  end)

  it("prints a binary HttpBody of more than 64 MiB whole, held as the seed's DICOMweb reads are (1 GiB)", function()
    local size = 70 * 1024 * 1024
    H.write_file(ANSWERS, cjson.encode({ { content_type = "application/pdf", body = string.rep("%PDF", size / 4) } }))
    local file = dir .. "/big.pdf"
    local _, err, code = H.run("XDG_CACHE_HOME=" .. H.q(CACHE) .. " " .. H.healthcare_command({ "projects",
      "locations-datasets-fhir-stores-fhir--binary-read", "projects/p/locations/l/datasets/d/fhirStores/f/fhir/Binary/b",
      "--endpoint", URL .. "/v1", "--credentials", sa.key_file }) .. " >" .. H.q(file))
    assert.equal(0, code, err)
    assert.equal("", err)
    assert.equal(size, #H.file_bytes(file))
    os.remove(file)
  end)

  it("past the cap for standard output, says to write to a file with -o FILE (not a Lua option)", function()
    -- the command with a cap of 1000 bytes: the same code, a smaller number
    local bin = dir .. "/healthcare-small-cap"
    local text = assert(H.file_bytes(H.BIN))
    local last = 'os.exit(require("healthcare.cli").main(arg))'
    assert.truthy(text:find(last, 1, true), "the launcher's last line")
    H.write_file(bin, (text:gsub(last:gsub("%p", "%%%0"), function()
      return 'require("healthcare.cli.call").MAX_STDOUT_BYTES = 1000\n' .. last
    end)))
    assert(os.execute("chmod +x " .. H.q(bin)))
    H.write_file(ANSWERS, cjson.encode({ { content_type = "application/pdf", body = string.rep("x", 1001) },
      { content_type = "application/pdf", body = string.rep("x", 1000) },
      { content_type = "multipart/related; type=\"application/dicom\"; boundary=b", body = string.rep("x", 1001) } }))
    local function run(...)
      local argv = { ... }
      for _, w in ipairs({ "--endpoint", URL .. "/v1", "--credentials", sa.key_file }) do argv[#argv + 1] = w end
      local cmd = H.healthcare_command(argv):gsub("^%S+", H.q(bin), 1)
      return H.run("XDG_CACHE_HOME=" .. H.q(CACHE) .. " " .. cmd)
    end
    local binary = { "projects", "locations-datasets-fhir-stores-fhir--binary-read",
      "projects/p/locations/l/datasets/d/fhirStores/f/fhir/Binary/b" }
    local out, err, code = run(unpack(binary))
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.equal("healthcare: projects.locations.datasets.fhirStores.fhir.Binary-read: the answer is larger than 1000 "
      .. "bytes, the most the command holds in memory for standard output; write it to a file with -o FILE, which "
      .. "streams it\n", err)
    out, err, code = run(unpack(binary))
    assert.equal(0, code, err)
    assert.equal(1000, #out)
    -- the seed's DICOMweb reads: the same cap, the same advice
    out, err, code = run("projects", "locations-datasets-dicom-stores-studies-retrieve-study",
      "projects/p/locations/l/datasets/d/dicomStores/s", "studies/1.2")
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("the answer is larger than 1000 bytes, the most the command holds in memory for standard output; "
      .. "write it to a file with %-o FILE", err)
  end)

  it("a non-2xx answer is Google's envelope, exit 1; -o FILE left as it was", function()
    local file = H.write_file(dir .. "/kept.json", "old")
    H.write_file(ANSWERS, cjson.encode({ { status = 409, body = cjson.encode({ error = { code = 409,
      status = "ALREADY_EXISTS", message = "already exists\27[2J" } }) } }))
    local out, err, code = against_capture("locations-datasets-dicom-stores-create", "projects/p/locations/l/datasets/d",
      "-p", "dicom-store-id=s", "-o", file)
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("ALREADY_EXISTS", err)
    assert.falsy(err:find("\27", 1, true))
    assert.equal("old", H.file_bytes(file))
  end)
end)

-- ---- against the emulator ------------------------------------------------------------------

local LOCATION = "projects/test-project/locations/us-central1"

local function config(t) return em:control("config", t) end
local function requests() return em:count("store_requests_total") end

local fresh = H.fresh_id

-- `healthcare projects <method> <args...>` against the emulator: stdout, stderr, exit code.
local function projects(method, ...)
  local argv = { "projects", method, ... }
  for _, w in ipairs({ "-p", "access-token=" .. em.token, "--endpoint", em.endpoint }) do argv[#argv + 1] = w end
  return H.healthcare(argv)
end

local function ok_json(out, err, code)
  assert.equal(0, code, err)
  return assert(cjson.decode(out), out)
end

local function new_dataset()
  local id = fresh("ds")
  local ds = ok_json(projects("locations-datasets-create", LOCATION, "-p", "dataset-id=" .. id, "--wait"))
  return ds.name
end

describe("healthcare projects <method> against the emulator", function()
  before_each(function()
    config({ operation_polls = 0, operation_error = cjson.null, operation_units = 10 })
  end)

  it("creates a dataset (waited for) and a DICOM store; a second create is Google's 409, exit 1", function()
    local id = fresh("ds")
    local out, err, code = projects("locations-datasets-create", LOCATION, "-p", "dataset-id=" .. id,
      "-r", ".time-zone=Europe/Paris", "--wait")
    local ds = ok_json(out, err, code)
    assert.equal(LOCATION .. "/datasets/" .. id, ds.name)
    assert.equal("Europe/Paris", ds.timeZone)
    local store = ok_json(projects("locations-datasets-dicom-stores-create", ds.name, "-p", "dicom-store-id=imaging",
      "-r", ".labels=team=radiology", "-r", "notification-config.pubsub-topic=projects/test-project/topics/t"))
    assert.equal(ds.name .. "/dicomStores/imaging", store.name)
    assert.same({ team = "radiology" }, store.labels)
    assert.same(store, ok_json(projects("locations-datasets-dicom-stores-get", store.name)))
    out, err, code = projects("locations-datasets-dicom-stores-create", ds.name, "-p", "dicom-store-id=imaging")
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("409", err)
    assert.matches("ALREADY_EXISTS", err)
  end)

  it("prints the Operation without --wait", function()
    local out, err, code = projects("locations-datasets-create", LOCATION, "-p", "dataset-id=" .. fresh("ds"))
    local op = ok_json(out, err, code)
    assert.matches("^" .. LOCATION:gsub("%-", "%%-") .. "/datasets/[^/]+/operations/%d+$", op.name)
  end)

  it("lists across pages with --all: every item once, one request a page", function()
    local ds = new_dataset()
    local made = {}
    for i = 1, 5 do
      local id = string.format("store-%d", i)
      ok_json(projects("locations-datasets-dicom-stores-create", ds, "-p", "dicom-store-id=" .. id))
      made[#made + 1] = ds .. "/dicomStores/" .. id
    end
    local before = requests()
    local doc = ok_json(projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all"))
    assert.equal(3, requests() - before) -- 2 + 2 + 1
    local names = {}
    for i, s in ipairs(doc.dicomStores) do names[i] = s.name end
    table.sort(names)
    assert.same(made, names)
    -- one page without --all: two items and the next page's token
    local page = ok_json(projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2"))
    assert.equal(2, #page.dicomStores)
    assert.is_string(page.nextPageToken)
  end)

  it("patches labels with -r .labels=team=imaging and update-mask", function()
    local ds = new_dataset()
    local store = ok_json(projects("locations-datasets-dicom-stores-create", ds, "-p", "dicom-store-id=s",
      "-r", ".labels=team=radiology"))
    local patched = ok_json(projects("locations-datasets-dicom-stores-patch", store.name, "-p", "update-mask=labels",
      "-r", ".labels=team=imaging", "-r", ".labels=site=lyon"))
    assert.same({ team = "imaging", site = "lyon" }, patched.labels)
    assert.same(patched, ok_json(projects("locations-datasets-dicom-stores-get", store.name)))
  end)

  it("gets and sets an IAM policy (a list of structures through the cursor, bare fields after -r)", function()
    local ds = new_dataset()
    local policy = ok_json(projects("locations-datasets-get-iam-policy", ds))
    assert.is_string(policy.etag)
    local set = ok_json(projects("locations-datasets-set-iam-policy", ds, "-r", ".policy.bindings",
      "role=roles/healthcare.datasetViewer", "members=user:a@example.com", "members=group:b@example.com",
      "-r", ".policy.etag=" .. policy.etag))
    assert.same({ { role = "roles/healthcare.datasetViewer", members = { "user:a@example.com", "group:b@example.com" } } },
      set.bindings)
    local again = ok_json(projects("locations-datasets-get-iam-policy", ds, "-p", "options.requested-policy-version=3"))
    assert.same(set.bindings, again.bindings)
  end)

  it("--wait follows an operation to success, a progress line a poll when not on a terminal", function()
    config({ operation_polls = 1 })
    local ds = new_dataset()
    local polls = em:count("operation_polls")
    local out, err, code = projects("locations-datasets-deidentify", ds, "-r",
      ".destination-dataset=" .. LOCATION .. "/datasets/" .. fresh("deid"), "--wait")
    local response = ok_json(out, err, code)
    assert.matches("DeidentifySummary", response["@type"])
    assert.equal(2, em:count("operation_polls") - polls)
    -- healthcare.cli.wait's lines, as import and export show them: the name, progress, then the summary
    assert.matches("^operation " .. ds:gsub("%-", "%%-") .. "/operations/%d+ started\ndeidentify: [^\n]*; %d+ s\n", err)
    assert.matches("\ndeidentify done in %d+ s: [^\n]*\noperation " .. ds:gsub("%-", "%%-") .. "/operations/%d+\n", err)
    assert.falsy(err:find("\r", 1, true))
  end)

  it("--wait rewrites one progress line on a terminal", function()
    config({ operation_polls = 1 })
    local ds = new_dataset()
    local cmd = H.healthcare_command({ "projects", "locations-datasets-deidentify", ds, "-r",
      ".destination-dataset=" .. LOCATION .. "/datasets/" .. fresh("deid"), "--wait", "-p", "access-token=" .. em.token,
      "--endpoint", em.endpoint })
    -- script(1) gives the command a terminal; what it wrote comes back as the terminal saw it
    local out, err, code = H.run("script -qec " .. H.q(cmd) .. " /dev/null")
    assert.equal(0, code, err)
    assert.truthy(out:find("\rdeidentify: ", 1, true), out)
    assert.truthy(out:find("\r\27[Kdeidentify done in ", 1, true), out)
    assert.truthy(out:find("DeidentifySummary", 1, true), out)
  end)

  it("--wait follows a seed DICOMweb delete's operation (the study gone from Orthanc)", function()
    local f = H.gen_dicom({ count = 1 })[1]
    H.store_with_cli({ f })
    assert.is_string(H.orthanc_find_instance(f.sop_instance_uid))
    local polls = em:count("operation_polls")
    local out, err, code = projects("locations-datasets-dicom-stores-studies-delete", E.store,
      "studies/" .. f.study_uid, "--wait")
    assert.equal(0, code, err)
    assert.is_table(cjson.decode(out), out)
    assert.is_true(em:count("operation_polls") > polls)
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
    -- an instance's delete answers no Operation: --wait is refused before any request
    local before = requests()
    out, err, code = projects("locations-datasets-dicom-stores-studies-series-instances-delete", E.store,
      "studies/1.2/series/1.3/instances/1.4", "--wait")
    assert.equal(2, code, err)
    assert.equal("", out)
    assert.equal(before, requests())
  end)

  it("Ctrl-C stops waiting, not the operation: exit 130, the operation named", function()
    config({ operation_polls = 1000 })
    local cmd = H.healthcare_command({ "projects", "locations-datasets-create", LOCATION, "-p",
      "dataset-id=" .. fresh("ds"), "--wait", "-p", "access-token=" .. em.token, "--endpoint", em.endpoint })
    local out, err = H.run(cmd .. " & pid=$!; sleep 1.5; kill -INT $pid; wait $pid; echo \"exit=$?\"")
    assert.truthy(out:find("exit=130", 1, true), out .. err)
    assert.matches("interrupted: stopped waiting for operation " .. LOCATION:gsub("%-", "%%-")
      .. "/datasets/[^/]+/operations/%d+; it goes on running on the server", err)
  end)

  it("--wait on an operation that fails: exit 1 and Google's message, made printable", function()
    config({ operation_error = { code = 8, message = "quota exceeded for datasets\27[31m" } })
    local out, err, code = projects("locations-datasets-create", LOCATION, "-p", "dataset-id=" .. fresh("ds"), "--wait")
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("quota exceeded for datasets", err, 1, true)
    assert.matches("RESOURCE_EXHAUSTED", err)
    assert.falsy(err:find("\27", 1, true))
  end)

  it("refuses a bad command line before any request (exit 2, the emulator's count unchanged)", function()
    local ds = new_dataset()
    local before = requests()
    local cases = {
      { { "locations-datasets-dicom-stores-creat", ds }, "unknown method 'locations%-datasets%-dicom%-stores%-creat'; "
        .. "closest: locations%-datasets%-dicom%-stores%-create" },
      { { "locations-datasets-dicom-stores-list", ds, "-p", "page-size=ten" }, "parameter page%-size must be an integer" },
      { { "locations-datasets-dicom-stores-list", ds, "-p", "page-sise=2" },
        "unknown parameter 'page%-sise' for locations%-datasets%-dicom%-stores%-list %(did you mean 'page%-size'%?%)" },
      { { "locations-datasets-dicom-stores-create" }, "missing argument <parent>" },
      { { "locations-datasets-dicom-stores-create", "projects/test-project/datasets/x" }, "does not match" },
      { { "locations-datasets-dicom-stores-create", ds, "-r", ".lables=a=b" },
        "unknown field 'lables' in DicomStore; valid fields: labels, name, notification%-config, stream%-configs" },
      { { "locations-datasets-dicom-stores-create", ds, "-r", ".labels=team" }, "give <key>=<value>" },
      { { "locations-datasets-set-iam-policy", ds, "-r", ".policy.version=three" },
        "field 'version' of Policy is a number, got 'three'" },
      { { "locations-datasets-get", ds, "--wait" }, "%-%-wait is for methods answering an Operation" },
      { { "locations-datasets-get", ds, "--all" }, "%-%-all is for list methods" },
    }
    for _, c in ipairs(cases) do
      local out, err, code = projects(unpack(c[1]))
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches(c[2], err)
    end
    assert.equal(before, requests())
  end)
end)

describe("healthcare projects <method>: exact answers, bounded lists, interrupts, waits told", function()
  local DS_ = "projects.locations.datasets."
  local function faults(rules) return em:control("faults", { rules = rules, replace = true }) end

  before_each(function()
    config({ operation_polls = 0, operation_error = cjson.null, operation_units = 10 })
    faults({})
  end)
  teardown(function() faults({}) end)

  -- A FHIR store of a new dataset; its name.
  local function new_fhir_store()
    return ok_json(projects("locations-datasets-fhir-stores-create", new_dataset(), "-p", "fhir-store-id=f",
      "-r", ".version=R4")).name
  end

  -- `healthcare projects <method> <args...>` in the background, stdin from `input` (a file) when
  -- given; SIGNAL sent once the shell test `ready` holds (or after 1.5 s). stdout, stderr, exit code
  -- and the milliseconds from the signal to the end.
  -- (timeout --foreground: without it, timeout passes the signal on to its process group as well,
  -- a second signal that ends the command before it can tidy up.)
  local function signalled(signal, input, ready, method, ...)
    local argv = { "projects", method, ... }
    for _, w in ipairs({ "-p", "access-token=" .. em.token, "--endpoint", em.endpoint }) do argv[#argv + 1] = w end
    local err = dir .. "/signalled-" .. math.random(1, 1e9)
    local out = H.run(string.format("timeout --foreground 30 %s%s 2>%s & pid=$!; %s; kill -%s $pid; "
      .. "t0=$(date +%%s%%N); wait $pid; rc=$?; echo \"exit=$rc ms=$(( ($(date +%%s%%N) - t0) / 1000000 ))\"",
      H.healthcare_command(argv), input and (" <" .. H.q(input)) or "", H.q(err),
      ready and ("for i in $(seq 100); do " .. ready:format(H.q(err)) .. " && break; sleep 0.1; done") or "sleep 1.5",
      signal))
    local text = H.file_bytes(err) or ""
    os.remove(err)
    local code, ms = out:match("exit=(%d+) ms=(%d+)\n$")
    return out:gsub("exit=%d+ ms=%d+\n$", ""), text, tonumber(code), tonumber(ms)
  end

  -- The copies of standard input (os.tmpname's /tmp/lua_XXXXXX) that hold `marker`.
  local function copies_of(marker)
    return (H.run("grep -l " .. H.q(marker) .. " /tmp/lua_* 2>/dev/null"))
  end

  it("prints the numbers of a JSON answer exactly (cjson's 14 digits changed them)", function()
    local store = new_fhir_store()
    local resource = '{"resourceType":"Observation","valueQuantity":{"value":3.14159265358979,"unit":"mg"},'
      .. '"component":[{"valueInteger":123456789012345},{"valueQuantity":{"value":0.976562500000001}},'
      .. '{"valueQuantity":{"value":1e-7}}]}'
    local out, err, code = projects("locations-datasets-fhir-stores-fhir-create", store, "Observation",
      "-r", ".", "content-type=application/fhir+json", "data=" .. resource)
    assert.equal(0, code, err)
    local id = assert(cjson.decode(out), out).id
    out, err, code = projects("locations-datasets-fhir-stores-fhir-read", store .. "/fhir/Observation/" .. id)
    assert.equal(0, code, err)
    for _, n in ipairs({ '"value": 3.14159265358979', '"valueInteger": 123456789012345', '"value": 0.976562500000001',
      '"value": 1e-07' }) do
      assert.truthy(out:find(n, 1, true), n .. " in " .. out)
    end
  end)

  it("--all with -p fields that leaves out nextPageToken still reads every page", function()
    local ds = new_dataset()
    for i = 1, 5 do ok_json(projects("locations-datasets-dicom-stores-create", ds, "-p", "dicom-store-id=s" .. i)) end
    local before = requests()
    local doc = ok_json(projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "-p",
      "fields=dicomStores/name", "--all"))
    assert.equal(5, #doc.dicomStores)
    assert.equal(3, requests() - before)
  end)

  it("--all stops at --limit on a list that never ends, and says so; items print as their page arrives", function()
    local ds = new_dataset()
    -- a page of one item and a new token, for ever
    faults({ { match = "admin", method = DS_ .. "dicomStores.list", body = { dicomStores = { { name = ds .. "/dicomStores/x" } } },
      fresh_page_token = true, times = 1000 } })
    local before = requests()
    local out, err, code = projects("locations-datasets-dicom-stores-list", ds, "--all", "--limit", "7")
    assert.equal(0, code, err)
    assert.equal(7, #assert(cjson.decode(out), out).dicomStores)
    assert.equal(7, requests() - before)
    assert.equal("healthcare: 7 items; stopped at --limit 7, there are more (a larger --limit)\n", err)
    -- empty pages for ever: as many pages as --limit, then the same note
    faults({ { match = "admin", method = DS_ .. "dicomStores.list", body = {}, fresh_page_token = true, times = 1000 } })
    before = requests()
    out, err, code = projects("locations-datasets-dicom-stores-list", ds, "--all", "--limit", "5")
    assert.equal(0, code, err)
    assert.equal('{\n  "dicomStores": []\n}\n', out)
    assert.equal(5, requests() - before)
    assert.matches("0 items; stopped at %-%-limit 5", err)
    -- a page that fails after one that came: its items are out (the JSON closed), then the error
    faults({})
    for i = 1, 3 do ok_json(projects("locations-datasets-dicom-stores-create", ds, "-p", "dicom-store-id=s" .. i)) end
    faults({ { match = "admin", method = DS_ .. "dicomStores.list", status = 400, message = "page token expired", skip = 1,
      times = 1 } })
    out, err, code = projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all")
    assert.equal(1, code, err)
    local doc = assert(cjson.decode(out), out)
    assert.same({ ds .. "/dicomStores/s1", ds .. "/dicomStores/s2" }, { doc.dicomStores[1].name, doc.dicomStores[2].name })
    assert.equal(2, #doc.dicomStores)
    assert.matches("page token expired %(after 2 items%)", err)
    -- the same text as one answer printed whole (json.pretty's)
    local whole = ok_json(projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all"))
    out = projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all")
    assert.equal(require("healthcare.cli.json").pretty(whole) .. "\n", out)
    -- -o FILE: written once whole; a failed page leaves it as it was
    local file = H.write_file(dir .. "/stores.json", "old")
    faults({ { match = "admin", method = DS_ .. "dicomStores.list", status = 400, skip = 1, times = 1 } })
    out, err, code = projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all", "-o", file)
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("%(after 2 items; nothing written%)", err)
    assert.equal("old", H.file_bytes(file))
    out, err, code = projects("locations-datasets-dicom-stores-list", ds, "-p", "page-size=2", "--all", "-o", file)
    assert.equal(0, code, err)
    assert.equal("", out)
    assert.same(whole, cjson.decode(H.file_bytes(file)))
  end)

  for _, case in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    it("SIG" .. case[1] .. " during a call with data=@- ends it (" .. case[2] .. "): no copy of standard input "
      .. "left", function()
      local store = new_fhir_store()
      local marker = "HC46-PHI-" .. math.random(1, 1e9)
      local input = H.write_file(dir .. "/patient.json",
        '{"resourceType":"Patient","name":[{"family":"' .. marker .. '"}]}')
      faults({ { match = "store", parent = store, delay = 5, times = 1 } })
      local out, err, code, ms = signalled(case[1], input, nil, "locations-datasets-fhir-stores-fhir-create", store,
        "Patient", "-r", ".", "content-type=application/fhir+json", "data=@-")
      assert.equal(case[2], code, err)
      assert.is_true(ms < 3000, "the answer was waited for (" .. ms .. " ms)") -- the server holds it 5 s
      assert.equal("", out)
      assert.equal("healthcare: interrupted; nothing written (the request may have reached the server)\n", err)
      assert.equal("", copies_of(marker))
      -- the seed's StoreInstances alike
      faults({ { match = "store", parent = E.store, delay = 5, times = 1 } })
      out, err, code, ms = signalled(case[1], input, nil, "locations-datasets-dicom-stores-studies-store-instances",
        E.store, "studies", "-r", ".", "content-type=application/dicom", "data=@-")
      assert.equal(case[2], code, err)
      assert.is_true(ms < 3000, "the answer was waited for (" .. ms .. " ms)")
      assert.equal("", out)
      assert.matches("interrupted", err)
      assert.equal("", copies_of(marker))
      -- and a call that is not interrupted leaves none either
      faults({})
      out, err, code = H.healthcare({ "projects", "locations-datasets-fhir-stores-fhir-create", store, "Patient", "-r",
        ".", "content-type=application/fhir+json", "data=@-", "-p", "access-token=" .. em.token, "--endpoint",
        em.endpoint }, H.file_bytes(input))
      assert.equal(0, code, err)
      assert.equal(marker, assert(cjson.decode(out), out).name[1].family)
      assert.equal("", copies_of(marker))
    end)
  end

  it("SIGTERM during a read to -o FILE (143) leaves FILE as it was and no temporary file", function()
    local store = new_fhir_store()
    local created = ok_json(projects("locations-datasets-fhir-stores-fhir-create", store, "Patient", "-r", ".",
      "content-type=application/fhir+json", "data=" .. '{"resourceType":"Patient"}'))
    local out_dir = H.tmpdir()
    local file = H.write_file(out_dir .. "/patient.json", "old")
    faults({ { match = "store", parent = store, delay = 5, times = 1 } })
    local out, err, code, ms = signalled("TERM", nil, nil, "locations-datasets-fhir-stores-fhir-read",
      store .. "/fhir/Patient/" .. created.id, "-o", file)
    assert.equal(143, code, err)
    assert.is_true(ms < 3000, "the answer was waited for (" .. ms .. " ms)")
    assert.equal("", out)
    assert.equal("healthcare: interrupted; nothing written\n", err)
    assert.equal("old", H.file_bytes(file))
    assert.same({ "patient.json" }, H.files_under(out_dir))
  end)

  it("says when it waits for a Retry-After, and the first Ctrl-C ends the wait (130)", function()
    local ds = new_dataset()
    faults({ { match = "admin", method = DS_ .. "get", status = 503, retry_after = "30", message = "busy", times = 1 } })
    local out, err, code, ms = signalled("INT", nil, "grep -q 'trying again' %s", "locations-datasets-get", ds)
    assert.equal(130, code, err)
    assert.is_true(ms < 3000, "it slept on (" .. ms .. " ms)")
    assert.equal("", out)
    assert.equal("healthcare: projects.locations.datasets.get: HTTP 503 UNAVAILABLE: busy; trying again in 30.0 s "
      .. "(attempt 2)\nhealthcare: interrupted; nothing written\n", err)
  end)
end)

describe("README's command example", function()
  it("runs word for word against the emulator", function()
    local text = assert(H.file_bytes("README.md"))
    local at = assert(text:find("spec/46 runs this block word for word", 1, true), "no marker in README.md")
    local script = assert(text:match("\n```sh\n(.-\n)```", at), "no ```sh block after the marker")
    -- as a user would run it: Application Default Credentials, the endpoint from the environment
    local home = H.tmpdir()
    local key = H.write_file(home .. "/service-account.json", assert(H.file_bytes(em:service_account().key_file)))
    H.write_file(home .. "/example.sh", script)
    config({ operation_polls = 0, operation_error = cjson.null, operation_units = 10 })
    local bin_dir = H.BIN:match("^(.*)/[^/]+$")
    local out, err, code = H.run(string.format("cd %s && env HOME=%s HEALTHCARE_ENDPOINT=%s "
      .. "GOOGLE_APPLICATION_CREDENTIALS=%s PATH=%s:\"$PATH\" sh -e example.sh", H.q(home), H.q(home),
      H.q(em.endpoint), H.q(key), H.q(bin_dir)))
    assert.equal(0, code, err)
    local ds = "projects/my-project/locations/us-central1/datasets/imaging"
    local store = ok_json(projects("locations-datasets-dicom-stores-get", ds .. "/dicomStores/ct"))
    assert.same({ team = "imaging" }, store.labels)
    local policy = ok_json(projects("locations-datasets-get-iam-policy", ds))
    assert.same({ { role = "roles/healthcare.datasetViewer", members = { "user:ana@example.com" } } }, policy.bindings)
    -- what it printed: the dataset, the store twice, the list, the policy
    assert.truthy(out:find('"timeZone": "UTC"', 1, true), out)
    assert.truthy(out:find('"dicomStores": [', 1, true), out)
  end)
end)

-- ---- --help ------------------------------------------------------------------------------

-- Text with its runs of white space made one space, as the help's wrapping leaves it.
local function flat(s)
  return (s:gsub("%s+", " "))
end

describe("healthcare projects <method> --help", function()
  local function page(cli)
    local out, err, code = H.healthcare({ "projects", cli, "--help" })
    assert.equal(0, code, err)
    return out
  end

  -- The section of `text` headed `title` (up to the next unindented line).
  local function section(text, title)
    return assert(text:match("\n" .. title:gsub("%p", "%%%0") .. "\n(.-)\n%S"), title)
  end

  for _, id in ipairs({ "projects.locations.datasets.dicomStores.create", "projects.locations.datasets.setIamPolicy",
    "projects.locations.datasets.fhirStores.fhir.create" }) do
    it("shows " .. id .. "'s page from the method table", function()
      local m = api.method(id)
      local text = page(m.cli)
      assert.truthy(flat(text):find(flat(m.description), 1, true), "the description")
      local args = flat(section(text, "Required scalar arguments"))
      for _, r in ipairs(m.required) do
        assert.truthy(args:find("<" .. seed.kebab(r) .. "> (string)", 1, true), r)
        for _, p in ipairs(m.path_params) do
          if p.name == r then assert.truthy(args:find(flat(p.description), 1, true), r .. "'s description") end
        end
      end
      local props = #m.query > 0 and flat(section(text, "Optional method properties")) or ""
      for _, q in ipairs(m.query) do
        assert.truthy(props:find("-p " .. seed.kebab(q.name) .. "=", 1, true), q.name)
        assert.truthy(props:find(flat(q.description), 1, true), q.name .. "'s description")
      end
      local value = section(text, "Required request value")
      if m.http_body then
        assert.truthy(value:find("-r . content-type=<type>", 1, true))
      else
        for _, f in ipairs(api.schema(m.request).fields) do
          assert.truthy(value:find("\n    " .. seed.kebab(f.name) .. ": ", 1, true), f.name)
        end
      end
      assert.truthy(text:find("\nOptional output flags\n", 1, true))
      assert.truthy(text:find("\nOptional general properties\n", 1, true))
      assert.truthy(text:find("https://www.googleapis.com/auth/cloud-healthcare", 1, true))
    end)
  end

  it("lists every method of the table in healthcare projects --help", function()
    local text, err, code = H.healthcare({ "projects", "--help" })
    assert.equal(0, code, err)
    local n = 0
    for _, id in ipairs(api.ids()) do
      assert.truthy(text:find("\n  " .. api.method(id).cli .. "\n", 1, true), id)
      n = n + 1
    end
    assert.equal(152, n)
  end)
end)
