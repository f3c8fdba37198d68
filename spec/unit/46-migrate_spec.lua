-- SPDX-License-Identifier: MIT
-- healthcare.migrate and healthcare.cli.wait without a server: the URIs and names refused before
-- any request (kind "usage"; the client's endpoint is a closed port, so a request that went out
-- would fail as "transport"), the raised misuses, and the text of the progress line and the
-- summary from an operation's metadata.
local healthcare = require "healthcare"
local migrate = require "healthcare.migrate"
local wait = require "healthcare.cli.wait"

local ENDPOINT = "http://127.0.0.1:9/v1"
local DATASET = "projects/p/locations/l/datasets/d"
local STORE = DATASET .. "/dicomStores/s"
local FHIR = DATASET .. "/fhirStores/f"

describe("healthcare.migrate: checked before any request", function()
  local client
  setup(function() client = assert(healthcare.new({ endpoint = ENDPOINT, credentials = false })) end)
  teardown(function() client:close() end)

  it("gs:// URIs: a bucket, a valid bucket name, an object for an import, no control character", function()
    for _, case in ipairs({
      { "gs://", "names no bucket" }, { "gs:///x.dcm", "names no bucket" }, { "gs://bkt", "names no object" },
      { "gs://bkt/", "names no object" }, { "gs://ab/x", "invalid bucket name" }, { "gs://Bkt/x", "invalid bucket" },
      { "gs://-bkt/x", "invalid bucket" }, { "gs://" .. string.rep("a", 64) .. "/x", "3 to 63" },
      { "gs://a..b/x", "dot%-separated" }, { "GS://bkt/x", "not a Cloud Storage URI" },
      { "/archive/x.dcm", "not a Cloud Storage URI" }, { "gs://bkt/x\ny", "control character" },
    }) do
      local res, err = migrate.import(client, STORE, case[1])
      assert.is_nil(res)
      assert.equal("usage", err.kind, tostring(err))
      assert.matches(case[2], err.message, case[1])
    end
    -- an export's prefix may be the whole bucket
    assert.equal("bkt", (migrate.check_gs("gs://bkt", false)))
    assert.equal("bkt", (migrate.check_gs("gs://bkt/", false)))
    assert.equal("my.bucket-1", (migrate.check_gs("gs://my.bucket-1/a/**.dcm", true)))
  end)

  it("bq:// URIs: a table for a DICOM store, a dataset for a FHIR store", function()
    for _, uri in ipairs({ "bq://", "bq://p", "bq://test-project.d", "bq://test-project.d.t.x", "bq://Test-Project.d.t",
      "bq://test-project.d-x.t", "bq://test-project..t", "bq://test-project.d.t/x", "bq://a.d.t", "gs://x" }) do
      assert.is_nil(migrate.check_bq(uri), uri)
    end
    assert.truthy(migrate.check_bq("bq://test-project.dicom.meta_1"))
    assert.truthy(migrate.check_bq("bq://example.com:test-project.dicom.t"))
    assert.truthy(migrate.check_bq("bq://test-project.fhir", true))
    assert.is_nil(migrate.check_bq("bq://test-project.fhir.t", true))
    local _, err = migrate.export(client, STORE, "bq://test-project.only")
    assert.matches("is not a BigQuery table", err.message)
    _, err = migrate.export(client, FHIR, "bq://test-project.d.t")
    assert.matches("is not a BigQuery dataset", err.message)
  end)

  it("names of the right kind, options that fit the destination", function()
    local _, err = migrate.import(client, DATASET, "gs://bkt/x")
    assert.matches("is not a dicomStore or fhirStore name", err.message)
    _, err = migrate.import(client, DATASET .. "/hl7V2Stores/h", "gs://bkt/x")
    assert.matches("is not a dicomStore or fhirStore name", err.message)
    _, err = migrate.import(client, STORE, "gs://bkt/x", { content_structure = "BUNDLE" })
    assert.matches("applies to a FHIR store", err.message)
    _, err = migrate.import(client, FHIR, "gs://bkt/x", { content_structure = "NDJSON" })
    assert.matches("is not one of BUNDLE", err.message)
    _, err = migrate.export(client, STORE, "gs://bkt/x", { write_disposition = "WRITE_APPEND" })
    assert.matches("apply to a BigQuery destination", err.message)
    _, err = migrate.export(client, STORE, "bq://test-project.d.t", { mime_type = "application/dicom" })
    assert.matches("applies to a Cloud Storage destination", err.message)
    _, err = migrate.export(client, FHIR, "gs://bkt/x", { mime_type = "application/dicom" })
    assert.matches("applies to a DICOM store", err.message)
    _, err = migrate.deidentify(client, STORE, DATASET .. "/datasets2")
    assert.matches("is not a dicomStore name, as the source is", err.message)
    _, err = migrate.deidentify(client, DATASET, STORE)
    assert.matches("is not a dataset name", err.message)
    _, err = migrate.deidentify(client, STORE, STORE .. "2", { config = {}, gcs_config_uri = "gs://bkt/c.json" })
    assert.matches("one or the other", err.message)
    _, err = migrate.deidentify(client, STORE, STORE .. "2", { gcs_config_uri = "gs://" })
    assert.matches("names no bucket", err.message)
    -- what passes the checks goes out (and meets the closed port)
    _, err = migrate.import(client, STORE, "gs://bkt/x/**.dcm", { retry = { max_attempts = 1 } })
    assert.equal("transport", err.kind)
    _, err = migrate.deidentify(client, DATASET, DATASET .. "-copy", { wait = false, retry = { max_attempts = 1 } })
    assert.equal("transport", err.kind)
  end)

  it("raises for a misuse, at the caller's line", function()
    assert.has_error(function() migrate.import(client, STORE, 1) end,
      "bad argument #2 to 'import' (string expected, got number)")
    assert.has_error(function() migrate.import({}, STORE, "gs://bkt/x") end)
    assert.has_error(function() migrate.export(client, STORE, "gs://bkt/x", { colour = "red" }) end)
    assert.has_error(function() migrate.export(client, STORE, "bq://test-project.d.t", { force = "yes" }) end,
      "bad option 'force' to 'export' (boolean expected, got string)")
    assert.has_error(function() migrate.deidentify(client, STORE, STORE .. "2", { config = "deid.json" }) end,
      "bad option 'config' to 'deidentify' (table expected, got string)")
    local store = assert(client:dicom_store(STORE))
    assert.has_error(function() store:import() end, "bad argument #1 to 'import' (string expected, got nil)")
    assert.has_error(function() store.export(client, "gs://bkt/x") end)
    local ok, err = pcall(function() store:import("gs://bkt/x", { wait = 1 }) end)
    assert.is_false(ok)
    assert.matches("46%-migrate_spec%.lua:%d+: bad option 'wait' to 'import'", err)
  end)
end)

describe("healthcare.cli.wait: the lines", function()
  it("progress line and summary from the metadata counters (int64s as strings)", function()
    local m = { counter = { success = "25", failure = "2", pending = "73" },
      logsUrl = "https://console.cloud.google.com/logs/query?x" }
    assert.equal("import: success 25, failure 2, pending 73; 3 s", wait.progress_line("import", m, 3.2))
    assert.equal("import: no counters yet; 1 min 05 s", wait.progress_line("import", {}, 65))
    assert.same({ success = 25, failure = 2, pending = 73 }, wait.counters(m))
    assert.same({ success = 4, failure = 0, pending = 0 }, wait.counters({ counter = { success = "4" } }))
    assert.is_nil(wait.counters({}))
    assert.same({ "export done in 2 h 01 min: success 25, failure 2, pending 73", "operation projects/x/operations/1",
      "logs https://console.cloud.google.com/logs/query?x  (each failure, and why)" },
      wait.summary_lines("export", "projects/x/operations/1", m, 7260, "done"))
    assert.same({ "import failed in 0 s: no counters", "operation n" }, wait.summary_lines("import", "n", nil, 0, "failed"))
  end)

  it("counters that are no int64 (past 2^63, fractions, numbers, junk) are shown as they came, never raise", function()
    local m = { counter = { success = "99999999999999999999", failure = "2.5", pending = "007" } }
    assert.equal("import: success 99999999999999999999, failure 2.5, pending 7; 3 s", wait.progress_line("import", m, 3))
    local c, shown = wait.counters(m)
    assert.same({ success = 1e20, failure = 2.5, pending = 7 }, c)
    assert.same({ success = "99999999999999999999", failure = "2.5", pending = "7" }, shown)
    -- a failure counter that is not a whole number still says something failed
    assert.same({ "import done in 0 s: success 99999999999999999999, failure 2.5, pending 7", "operation n",
      "logs L  (each failure, and why)" }, wait.summary_lines("import", "n", {
      counter = m.counter, logsUrl = "L" }, 0, "done"))
    assert.equal("success 5, failure 1e+20, pending 1.5",
      wait.counters_text({ counter = { success = 5.0, failure = 1e20, pending = 1.5 } }))
    assert.equal("success ?, failure abc, pending 0",
      wait.counters_text({ counter = { success = {}, failure = "abc", pending = require("cjson").null } }))
    assert.equal("success " .. string.rep("9", 24) .. "... (100 bytes in all), failure 0, pending 0",
      wait.counters_text({ counter = { success = string.rep("9", 100) } }))
    assert.is_nil(wait.counters_text({ counter = "x" }))
  end)

  it("an answer that names no operation is the server's fault (exit 1), found before any poll", function()
    local client = assert(healthcare.new({ endpoint = ENDPOINT, credentials = false }))
    local said = {}
    local function say(fmt, ...) said[#said + 1] = string.format(fmt, ...) end
    for _, op in ipairs({ {}, { name = 42 }, { name = "projects/p/locations/l/datasets/d" },
      { name = "../../x" }, { name = "projects/p/locations/l/datasets/d/operations/1\27[2J" } }) do
      assert.equal(1, (wait.wait(client, op, { what = "import", say = say, poll_interval = 0.01 })))
    end
    assert.equal(5, #said)
    for _, line in ipairs(said) do
      assert.matches("^the server answered no operation to wait for", line)
      assert.is_nil(line:find("\27", 1, true), line)
    end
    -- done already: no poll, its outcome
    assert.equal(0, (wait.wait(client, { name = "x", done = true, response = {} }, { say = say })))
    assert.equal(1, (wait.wait(client, { name = "x", done = true, error = { code = 13, message = "m" } }, { say = say })))
    -- any error but null is a failure: a text, a number, an empty object
    for _, e in ipairs({ "INTERNAL: import aborted", 13, {} }) do
      assert.equal(1, (wait.wait(client, { name = "x", done = true, error = e }, { say = say })))
    end
    assert.equal(0, (wait.wait(client, { name = "x", done = true, error = require("cjson").null, response = {} },
      { say = say })))
    client:close()
  end)

  it("checks --operation-timeout and --poll-interval", function()
    assert.is_true(wait.check_options({ operation_timeout = 0, poll_interval = 0.01 }))
    for _, a in ipairs({ { operation_timeout = -1, poll_interval = 1 }, { operation_timeout = 0 / 0, poll_interval = 1 },
      { operation_timeout = 1, poll_interval = 0 }, { operation_timeout = 1, poll_interval = math.huge },
      { operation_timeout = 1, poll_interval = 0 / 0 }, { poll_interval = 1 } }) do
      assert.is_nil((wait.check_options(a)))
    end
  end)
end)

describe("healthcare.api.operation: an operation's error", function()
  local operation = require "healthcare.api.operation"
  local errors = require "healthcare.errors"

  it("is cut to 300 bytes of its message (errors.cut, never inside a UTF-8 character), with the length", function()
    local err = operation.failed("op/1", { code = 3, message = "\27]0;x\7" .. string.rep("A", 5000000) })
    assert.equal("operation", err.kind)
    assert.equal("INVALID_ARGUMENT", err.status)
    assert.equal("operation op/1 failed: \\x1b]0;x\\x07" .. string.rep("A", 294) .. "... (5000006 bytes in all) "
      .. "(code 3 INVALID_ARGUMENT)", tostring(err))
    assert.equal("ab", errors.cut("ab", 2))
    assert.equal("a... (3 bytes in all)", errors.cut("abc", 1))
    assert.equal("a... (4 bytes in all)", errors.cut("a\u{e9}b", 2))      -- not half of the é
    assert.equal("a\u{e9}... (5 bytes in all)", errors.cut("a\u{e9}bc", 3))
    assert.equal("... (6 bytes in all)", errors.cut("\u{20ac}\u{20ac}", 2))
  end)

  it("that is not a google.rpc.Status is a failure all the same: no code, UNKNOWN", function()
    local err = operation.failed("op/1", "INTERNAL: import aborted")
    assert.equal("UNKNOWN", err.status)
    assert.equal("operation op/1 failed: INTERNAL: import aborted (no code)", tostring(err))
    assert.equal("operation op/1 failed: no message (no code)", tostring(operation.failed("op/1", 42)))
    err = operation.failed("op/1", { code = string.rep("9", 100), message = "m" })
    assert.equal("operation op/1 failed: m (code " .. string.rep("9", 40) .. "... (100 bytes in all) CODE_"
      .. string.rep("9", 40) .. "... (100 bytes in all))", tostring(err))
    assert.is_true(operation.has_error({ error = "x" }))
    assert.is_true(operation.has_error({ error = false }))
    assert.is_false(operation.has_error({ error = require("cjson").null }))
    assert.is_false(operation.has_error({}))
    assert.is_true(operation.is_done({ error = "x" }))
    assert.is_false(operation.is_done({ done = false }))
  end)
end)
