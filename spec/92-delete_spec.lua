-- SPDX-License-Identifier: MIT
-- store:delete_study / delete_series / delete_instance. Deleting is Google's own method (DICOMweb
-- has none), so these run against the emulator, which deletes in the test bed's real Orthanc;
-- what is gone and what remains is checked in Orthanc itself with curl. Orthanc's own DICOMweb
-- plugin shows what a server without DELETE answers.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local cjson = require "cjson.safe"
local E = H.env

-- This file's own emulator: it changes the operation config, sets fault rules and counts polls.
local em = require("support.emulator_instance").start()
local TOKEN = E.token .. "-private"
local FAST_RETRY = { max_attempts = 4, initial = 0.05, multiplier = 2, max_delay = 0.2 }
local OPERATION = "^projects/test%-project/locations/us%-central1/datasets/test%-dataset/operations/%d+$"

local function google_store(opts)
  local o = { endpoint = em.endpoint, access_token = TOKEN, retry = FAST_RETRY }
  for k, v in pairs(opts or {}) do o[k] = v end
  local client = assert(healthcare.new(o))
  return assert(client:dicom_store(E.store))
end

local function config(t) return em:control("config", t) end
local function faults(rules) return em:control("faults", { rules = rules, replace = true }) end
local function api_requests() return em:stats().store_requests_total end

-- Studies of our own, each with two series (a, b) of two instances: one Python run makes them
-- all (pydicom takes a second to import), one store() run stores them through the emulator.
local GEN = [[
import importlib.util, json, sys
from pydicom.uid import generate_uid
script, out, count = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("gen_dicom", script)
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
for n in range(int(count)):
    study = generate_uid()
    for series in ("a", "b"):
        sys.argv = ["gen_dicom.py", "2", "-o", out, "--size", "1000", "--study", study,
                    "--series", generate_uid(), "--prefix", "%d%s" % (n, series)]
        gen.main()
]]
local studies = {}

setup(function()
  local dir = H.tmpdir()
  local out = H.check_run("/usr/bin/python3 -c " .. H.q(GEN) .. " " .. H.q(E.support .. "/gen_dicom.py")
    .. " " .. H.q(dir) .. " 6")
  local by_study = {}
  for line in out:gmatch("[^\n]+") do
    local f = assert(cjson.decode(line))
    local s = by_study[f.study_uid]
    if not s then
      s = { uid = f.study_uid, series = {}, instances = {} }
      by_study[f.study_uid] = s
      studies[#studies + 1] = s
    end
    if not s.series[f.series_uid] then
      s.series[#s.series + 1] = f.series_uid
      s.series[f.series_uid] = {}
    end
    table.insert(s.series[f.series_uid], f)
    s.instances[#s.instances + 1] = f
  end
  assert(#studies == 6 and #studies[6].instances == 4, "generated: " .. out)
  local report = assert(google_store():store(dir))
  assert(#report.stored == 24, "stored " .. #report.stored .. " of 24")
end)

teardown(function()
  -- What a test left behind, removed through Orthanc's own API.
  for _, s in ipairs(studies) do
    local r = H.curl({ "-X", "POST", "--data-binary", s.uid, E.orthanc .. "/tools/lookup" })
    for _, hit in ipairs(r.json or {}) do
      if hit.Type == "Study" then H.curl({ "-X", "DELETE", E.orthanc .. "/studies/" .. hit.ID }) end
    end
  end
  em:stop()
end)

-- The SOP Instance UIDs of study s that Orthanc still holds, as a sorted list.
local function in_orthanc(s)
  local list = {}
  for _, f in ipairs(s.instances) do
    if H.orthanc_find_instance(f.sop_instance_uid) then list[#list + 1] = f.sop_instance_uid end
  end
  table.sort(list)
  return list
end

-- The SOP Instance UIDs of study s but those of the given instances, sorted.
local function all_but(s, gone)
  local skip, list = {}, {}
  for _, f in ipairs(gone or {}) do skip[f.sop_instance_uid] = true end
  for _, f in ipairs(s.instances) do
    if not skip[f.sop_instance_uid] then list[#list + 1] = f.sop_instance_uid end
  end
  table.sort(list)
  return list
end

local function series(s, i) return s.series[s.series[i]] end

-- The SOP Instance UIDs of study s that a search (QIDO-RS, through the emulator) lists, sorted.
local function searched(store, s)
  local items = assert(assert(store:search_instances({ StudyInstanceUID = s.uid })):all())
  local list = {}
  for i, item in ipairs(items) do list[i] = item.SOPInstanceUID end
  table.sort(list)
  return list
end

describe("delete", function()
  before_each(function()
    faults({})
    config({ operation_polls = 1, operation_error = cjson.null })
  end)

  it("deletes an instance, then a series, then the study, and nothing else", function()
    local s = studies[1]
    local a, b = series(s, 1), series(s, 2)
    assert.same(all_but(s), in_orthanc(s))
    local store = google_store()

    local res, err = store:delete_instance(s.uid, a[1].series_uid, a[1].sop_instance_uid)
    assert.is_nil(err)
    assert.same({ status = 200 }, res)
    assert.same(all_but(s, { a[1] }), in_orthanc(s))
    assert.same(all_but(s, { a[1] }), searched(store, s))

    config({ operation_polls = 2 })
    local polls_before = em:stats().operation_polls
    res, err = store:delete_series(s.uid, b[1].series_uid, { poll_interval = 0.02 })
    assert.is_nil(err)
    assert.equal(200, res.status)
    assert.matches(OPERATION, res.operation)
    -- two answers without "done", the third done
    assert.equal(3, res.polls)
    assert.equal(3, em:stats().operation_polls - polls_before)
    assert.same(all_but(s, { a[1], b[1], b[2] }), in_orthanc(s))
    assert.same(all_but(s, { a[1], b[1], b[2] }), searched(store, s))

    res, err = store:delete_study(s.uid, { poll_interval = 0.02 })
    assert.is_nil(err)
    assert.matches(OPERATION, res.operation)
    assert.same({}, in_orthanc(s))
    assert.same({}, searched(store, s))

    -- what went on the wire: DELETE with Accept: application/json, polls of the operation
    local seen = {}
    for _, r in ipairs(em:stats().requests) do
      if r.method == "DELETE" then
        assert.equal("application/json", r.accept)
        seen[#seen + 1] = r.path:match("dicomWeb/(.*)$")
      end
    end
    assert.same({
      "studies/" .. s.uid .. "/series/" .. a[1].series_uid .. "/instances/" .. a[1].sop_instance_uid,
      "studies/" .. s.uid .. "/series/" .. b[1].series_uid,
      "studies/" .. s.uid,
    }, seen)
  end)

  it("answers a study delete that is already gone with a 404 naming the study", function()
    local s = studies[1] -- deleted by the test above
    local res, err = google_store():delete_study(s.uid)
    assert.is_nil(res)
    assert.equal("http", err.kind)
    assert.equal(404, err.http_status)
    assert.equal("NOT_FOUND", err.status)
    assert.is_false(err.retryable)
    assert.matches("DeleteStudy: study " .. s.uid:gsub("%.", "%%.") .. " not found: HTTP 404", err.message)
  end)

  it("names the store, not the study, when the store does not exist", function()
    local gone = E.store:gsub("test%-store$", "missing-store")
    local client = assert(healthcare.new { endpoint = em.endpoint, access_token = TOKEN, retry = FAST_RETRY })
    local res, err = assert(client:dicom_store(gone)):delete_study(studies[3].uid)
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.equal("store", err.not_found)
    assert.matches("^DeleteStudy: store " .. gone:gsub("%p", "%%%0") .. " not found: HTTP 404", err.message)
    client:close()
  end)

  it("returns the operation's error (kind \"operation\", as client:wait's), with its status and message", function()
    local s = studies[2]
    config({ operation_error = { code = 13, message = "internal error while deleting" } })
    local res, err = google_store():delete_study(s.uid, { poll_interval = 0.02 })
    assert.is_nil(res)
    assert.equal("operation", err.kind)
    assert.is_nil(err.code) -- no code field (README "The error value"): the status names it
    assert.equal("INTERNAL", err.status)
    assert.matches(OPERATION, err.operation)
    assert.equal("DeleteStudy: operation " .. err.operation .. " failed: internal error while deleting "
      .. "(code 13 INTERNAL)", err.message)
    assert.equal("DeleteStudy: operation " .. err.operation .. " failed: internal error while deleting "
      .. "(code 13 INTERNAL)", tostring(err))
    -- this emulator's failing operations delete nothing
    assert.same(all_but(s), in_orthanc(s))
  end)

  it("stops waiting at opts.operation_timeout and names the operation to check later", function()
    local s = studies[3]
    config({ operation_polls = 100000 })
    local t0 = os.time()
    local res, err = google_store():delete_series(s.uid, s.series[1], { poll_interval = 0.02, operation_timeout = 0.5 })
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.equal("DEADLINE_EXCEEDED", err.status)
    assert.matches(OPERATION, err.operation)
    assert.truthy(err.polls >= 3, "polls: " .. tostring(err.polls))
    assert.truthy(os.time() - t0 <= 3)
    assert.equal("DeleteSeries: operation " .. err.operation .. " not done after 0.5 s; it may still finish: "
      .. "check it with GET " .. em.endpoint .. "/" .. err.operation, err.message)
    -- the operation is real: it answers when asked
    local r = H.curl({ "-H", "Authorization: Bearer " .. TOKEN, em.endpoint .. "/" .. err.operation })
    assert.equal(200, r.status)
    assert.equal(err.operation, r.json.name)
    -- `timeout`, the old name of operation_timeout (README "Lua API"), still means it
    t0 = os.time()
    res, err = google_store():delete_series(s.uid, s.series[2], { poll_interval = 0.02, timeout = 0.5 })
    assert.is_nil(res)
    assert.equal("timeout", err.kind)
    assert.truthy(err.message:find("not done after 0.5 s", 1, true), err.message)
    assert.truthy(os.time() - t0 <= 3)
  end)

  it("answers unknown UIDs with a 404 error naming them, and deletes nothing", function()
    local s = studies[2]
    local store = google_store()
    local unknown = "1.2.3.999." .. math.random(1, 1e9)
    local cases = {
      { "delete_study", { unknown }, "DeleteStudy: study " .. unknown },
      { "delete_series", { s.uid, unknown }, "DeleteSeries: series " .. s.uid .. "/" .. unknown },
      { "delete_series", { unknown, s.series[1] }, "DeleteSeries: series " .. unknown .. "/" .. s.series[1] },
      { "delete_instance", { s.uid, s.series[1], unknown },
        "DeleteInstance: instance " .. s.uid .. "/" .. s.series[1] .. "/" .. unknown },
      -- an instance that exists, under the wrong series
      { "delete_instance", { s.uid, s.series[2], series(s, 1)[1].sop_instance_uid },
        "DeleteInstance: instance " .. s.uid .. "/" .. s.series[2] .. "/" .. series(s, 1)[1].sop_instance_uid },
    }
    for _, c in ipairs(cases) do
      local args = c[2]
      local res, err = store[c[1]](store, args[1], args[2], args[3])
      assert.is_nil(res, c[1])
      assert.equal(404, err.http_status, c[1])
      local prefix = c[3] .. " not found: HTTP 404 NOT_FOUND"
      assert.equal(prefix, err.message:sub(1, #prefix))
    end
    assert.same(all_but(s), in_orthanc(s))
  end)

  it("refuses bad UIDs and bad options before sending anything", function()
    local s = studies[2]
    local store = google_store()
    local before = api_requests()
    local good = s.uid
    local bad = { "", "1..2", ".1.2", "1.2.", "1.2/3", "../1.2", "1.2.3?x=1", "1.2.3#x", "1.2 3",
      "1.2\n3", "1.2.3%2F4", string.rep("1", 65), "abc" }
    local calls = {
      { "delete_study", function(uid) return { uid } end, "StudyInstanceUID", 1 },
      { "delete_series", function(uid) return { good, uid } end, "SeriesInstanceUID", 2 },
      { "delete_series", function(uid) return { uid, good } end, "StudyInstanceUID", 1 },
      { "delete_instance", function(uid) return { good, good, uid } end, "SOPInstanceUID", 3 },
      { "delete_instance", function(uid) return { good, uid, good } end, "SeriesInstanceUID", 2 },
    }
    -- bad content: returned, kind "usage"
    for _, uid in ipairs(bad) do
      local shown = require("healthcare.util").printable(uid)
      for _, call in ipairs(calls) do
        local a = call[2](uid)
        local res, err = store[call[1]](store, a[1], a[2], a[3])
        assert.is_nil(res)
        assert.equal("usage", err.kind)
        assert.equal("invalid " .. call[3] .. " '" .. shown .. "': a UID is digits and dots, at most 64 characters",
          tostring(err))
      end
    end
    -- wrong types: raised, naming the argument
    for _, uid in ipairs({ 123, true, {}, false }) do
      for _, call in ipairs(calls) do
        local a = call[2](uid)
        assert.has_error(function() store[call[1]](store, a[1], a[2], a[3]) end,
          string.format("bad argument #%d to '%s' (string expected, got %s)", call[4], call[1], type(uid)))
      end
    end
    assert.has_error(function() store:delete_study(nil) end,
      "bad argument #1 to 'delete_study' (string expected, got nil)")
    -- settings out of range, or of a wrong type: raised (a zero poll interval would poll as fast
    -- as the server answers)
    for _, v in ipairs({ 0, -1, 0 / 0 }) do
      assert.has_error(function() store:delete_study(good, { poll_interval = v }) end,
        "bad option 'poll_interval' to 'delete_study' (a number > 0 expected, got " .. tostring(v) .. ")")
    end
    for _, v in ipairs({ -1, 0 / 0 }) do
      assert.has_error(function() store:delete_study(good, { operation_timeout = v }) end,
        "bad option 'operation_timeout' to 'delete_study' (a number >= 0 expected, got " .. tostring(v) .. ")")
    end
    for _, name in ipairs({ "poll_interval", "operation_timeout" }) do
      assert.has_error(function() store:delete_study(good, { [name] = "1" }) end,
        "bad option '" .. name .. "' to 'delete_study' (number expected, got string)")
    end
    local res, err
    assert.has_error(function() store:delete_study(good, { retry = 3 }) end,
      "bad option 'retry' to 'delete_study' (table expected, got number)")
    res, err = store:delete_study(good, { params = { nope = "1" } })
    assert.is_nil(res)
    assert.equal("usage", err.kind)
    assert.matches("unknown parameter 'nope'", err.message)
    assert.has_error(function() store:delete_study(good, { polling = 1 }) end,
      "unknown option 'polling' to 'delete_study'; valid options: operation_timeout, params, poll_interval, retry")
    assert.equal(before, api_requests())
    assert.same(all_but(s), in_orthanc(s))
  end)

  it("retries 429 and 503 on the delete and while polling", function()
    local s = studies[4]
    local a = series(s, 1)
    faults({
      { match = "store", status = 429, times = 2, parent = E.store, retry_after = "0" },
      { match = "operation", status = 503, times = 2 },
    })
    local fired = em:stats().faults_fired
    local res, err = google_store():delete_series(s.uid, s.series[1], { poll_interval = 0.02 })
    assert.is_nil(err)
    assert.matches(OPERATION, res.operation)
    assert.equal(4, em:stats().faults_fired - fired)
    assert.same(all_but(s, a), in_orthanc(s))
  end)

  it("gives up after retry.max_attempts with the server's error, deleting nothing", function()
    local s = studies[5]
    faults({ { match = "store", status = 503, times = 10, parent = E.store, message = "try later" } })
    local res, err = google_store():delete_study(s.uid)
    assert.is_nil(res)
    assert.equal(503, err.http_status)
    assert.is_true(err.retryable)
    assert.equal("DeleteStudy: HTTP 503 UNAVAILABLE: try later", err.message)
    local pending = H.curl({ em.url .. "/_control/faults" }).json
    assert.equal(10 - FAST_RETRY.max_attempts, pending[1].times)
    assert.same(all_but(s), in_orthanc(s))

    -- a poll failing for good ends with that error and the operation's name
    faults({ { match = "operation", status = 503, times = 10 } })
    res, err = google_store():delete_series(s.uid, s.series[2], { poll_interval = 0.02 })
    assert.is_nil(res)
    assert.equal(503, err.http_status)
    assert.matches(OPERATION, err.operation)
    assert.matches("^DeleteSeries %(polling operation projects/[^ ]+%): HTTP 503 UNAVAILABLE", err.message)
  end)

  it("sends opts.params on the delete and on every poll", function()
    local s = studies[6]
    local client = assert(healthcare.new { endpoint = em.endpoint, credentials = false })
    local store = assert(client:dicom_store(E.store))
    local res, err = store:delete_study(s.uid, { poll_interval = 0.02, params = { ["access-token"] = TOKEN } })
    assert.is_nil(err)
    assert.matches(OPERATION, res.operation)
    local n = 0
    for _, r in ipairs(em:stats().requests) do
      if r.path:find(s.uid, 1, true) or r.path:find(res.operation, 1, true) then
        assert.same({ "access_token" }, r.query)
        assert.equal(200, r.status)
        n = n + 1
      end
    end
    assert.equal(3, n) -- the DELETE, a poll not done, a poll done
    assert.same({}, in_orthanc(s))
  end)

  it("counts a 404 after a 503 as deleted (already_gone): the first attempt may have deleted it", function()
    local s = studies[5]
    local store = google_store()
    -- what a delete that took effect behind a 503 (a gateway's timeout) leaves: the study gone
    -- from the store, then a 503 for that DELETE; the retry finds nothing
    local r = H.curl({ "-X", "POST", "--data-binary", s.uid, E.orthanc .. "/tools/lookup" })
    assert.equal("Study", r.json[1].Type)
    assert.equal(200, H.curl({ "-X", "DELETE", E.orthanc .. "/studies/" .. r.json[1].ID }).status)
    faults({ { match = "store", status = 503, times = 1, parent = E.store, http_method = "DELETE" } })
    local res, err = store:delete_study(s.uid)
    assert.is_nil(err)
    assert.same({ status = 404, already_gone = true }, res)
    assert.same({}, in_orthanc(s))
    -- a 404 with no earlier attempt in doubt stays "not found"
    res, err = store:delete_study(s.uid)
    assert.is_nil(res)
    assert.equal(404, err.http_status)
    assert.equal("study", err.not_found)
    -- a 429 is an answer that nothing was done: a 404 after it is "not found" too
    faults({ { match = "store", status = 429, times = 1, parent = E.store, http_method = "DELETE", retry_after = "0" } })
    res, err = store:delete_study(s.uid)
    assert.is_nil(res)
    assert.equal(404, err.http_status)
  end)

  it("says a plain DICOMweb server does not support deleting, and nothing is deleted", function()
    local s = studies[2]
    local store = assert(healthcare.dicomweb(E.dicomweb))
    local a = series(s, 1)
    for _, call in ipairs({
      { "delete_study", { s.uid }, "DeleteStudy", "study " .. s.uid, "GET,POST" },
      { "delete_series", { s.uid, s.series[1] }, "DeleteSeries", "series " .. s.uid .. "/" .. s.series[1], "GET" },
      { "delete_instance", { s.uid, s.series[1], a[1].sop_instance_uid }, "DeleteInstance",
        "instance " .. s.uid .. "/" .. s.series[1] .. "/" .. a[1].sop_instance_uid, "GET" },
    }) do
      local args = call[2]
      local res, err = store[call[1]](store, args[1], args[2], args[3])
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(405, err.http_status, err.message)
      assert.equal("UNIMPLEMENTED", err.status)
      assert.is_false(err.retryable)
      assert.equal(call[3] .. ": the server does not support deleting through DICOMweb (HTTP 405, Allow: "
        .. call[5] .. "); delete the " .. call[4] .. " with the server's own tools", err.message)
    end
    assert.same(all_but(s), in_orthanc(s))
  end)
end)

describe("delete.valid_operation_name", function()
  local valid_operation_name = require("healthcare.dicomweb.delete").valid_operation_name
  it("accepts Google's operation names and nothing that could leave the path", function()
    for _, name in ipairs({
      "projects/p/locations/us-central1/datasets/d/operations/123",
      "projects/my-project/locations/europe-west4/datasets/ds.1/operations/abc_DEF-9",
    }) do
      assert.is_true(valid_operation_name(name), name)
    end
    for _, name in ipairs({
      "", "operations/1", "projects/p/operations/", "projects/p/operations/1/",
      "projects/p/operations/1?alt=media", "projects/p/operations/1#x", "projects/../operations/1",
      "projects/p/../../operations/1", "projects/p/locations/l/operations/..", "projects//operations/1",
      "projects/p /operations/1", "projects/p\n/operations/1", "projects/p/operations/1\r",
      "/projects/p/operations/1", "https://evil/projects/p/operations/1", "projects/p/operations/é",
      123, false,
    }) do
      assert.is_false(valid_operation_name(name), tostring(name))
    end
  end)
end)
