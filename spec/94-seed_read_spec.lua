-- SPDX-License-Identifier: MIT
-- The seed's form of the DICOMweb read and delete methods, `healthcare projects
-- locations-datasets-dicom-stores-<method> <parent> <dicom-web-path> [-p k=v]... [-o out]`, run as a
-- user runs it against this file's emulator (in front of the test bed's Orthanc).
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson.safe"

local E = H.env
local P = "locations-datasets-dicom-stores-"

-- This file's own emulator: it counts requests ("nothing was sent").
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local TOKEN = E.token .. "-private"

-- healthcare projects <P..method> <store> <path> <args...> with this file's endpoint and token
local function call(method, path, args, parent)
  local words = { "projects", P .. method, parent or E.store, path, "-p", "access-token=" .. TOKEN,
    "--endpoint", em.endpoint }
  for _, a in ipairs(args or {}) do words[#words + 1] = a end
  return H.healthcare(words)
end

local function requests()
  return #em:stats().requests
end

local patient, files, f
lazy_setup(function()
  patient = "HC94-" .. math.random(1, 1e9)
  files = H.gen_dicom({ count = 2, patient_id = patient })
  f = files[1]
  H.store_with_cli(files)
end)

local function tag(item, t) return item[t] and item[t].Value and item[t].Value[1] end

describe("healthcare projects search methods", function()
  it("search-for-studies with a ?query and -o writes pretty-printed DICOM JSON", function()
    local out_file = H.tmpdir() .. "/studies.json"
    local out, err, code = call("search-for-studies", "studies?PatientID=" .. patient, { "-o", out_file })
    assert.equal(0, code, err)
    assert.equal("", out)
    local text = H.file_bytes(out_file)
    assert.matches("^%[\n  {\n    \"", text)
    local list = assert(cjson.decode(text))
    assert.equal(1, #list)
    assert.equal(f.study_uid, tag(list[1], "0020000D"))
    assert.equal(patient, tag(list[1], "00100020"))
  end)

  it("search-for-series and studies-search-for-series list the study's series", function()
    for _, case in ipairs({ { "search-for-series", "series?StudyInstanceUID=" .. f.study_uid },
      { "search-for-series", "studies/" .. f.study_uid .. "/series" },
      { "studies-search-for-series", "studies/" .. f.study_uid .. "/series" } }) do
      local out, err, code = call(case[1], case[2])
      assert.equal(0, code, err)
      local list = assert(cjson.decode(out), out)
      assert.equal(1, #list, case[2])
      assert.equal(f.series_uid, tag(list[1], "0020000E"))
    end
  end)

  it("search-for-instances and the scoped forms list both instances, -p fields passes through", function()
    local want = { files[1].sop_instance_uid, files[2].sop_instance_uid }
    table.sort(want)
    for _, case in ipairs({ { "search-for-instances", "instances?StudyInstanceUID=" .. f.study_uid },
      { "search-for-instances", "studies/" .. f.study_uid .. "/instances" },
      { "studies-search-for-instances", "studies/" .. f.study_uid .. "/instances" },
      { "studies-series-search-for-instances", "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/instances" } }) do
      local out, err, code = call(case[1], case[2], { "-p", "quota-user=spec94" })
      assert.equal(0, code, err)
      local got = {}
      for _, item in ipairs(assert(cjson.decode(out), out)) do got[#got + 1] = tag(item, "00080018") end
      table.sort(got)
      assert.same(want, got, case[2])
    end
    local last = em:stats().requests
    assert.matches("quotaUser", table.concat(last[#last].query or {}, ","))
  end)

  it("prints [] when nothing matches, and honours limit in the query", function()
    local out, err, code = call("search-for-studies", "studies?PatientID=nobody-" .. H.fresh_uid())
    assert.equal(0, code, err)
    assert.equal("[]\n", out)
    out, err, code = call("search-for-instances", "instances?StudyInstanceUID=" .. f.study_uid .. "&limit=1")
    assert.equal(0, code, err)
    assert.equal(1, #cjson.decode(out))
  end)
end)

describe("healthcare projects retrieve methods", function()
  it("retrieve-instance writes the answer to -o as received: the instance's bytes in a multipart body", function()
    local out_file = H.tmpdir() .. "/instance.multipart"
    local _, err, code = call("studies-series-instances-retrieve-instance",
      "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/instances/" .. f.sop_instance_uid, { "-o", out_file })
    assert.equal(0, code, err)
    local body = H.file_bytes(out_file)
    local original = H.file_bytes(f.path)
    local boundary = body:match("^%-%-([^\r\n]+)\r\n")
    assert.is_string(boundary, body:sub(1, 100))
    local s = body:find("\r\n\r\n", 1, true)
    local e = body:find("\r\n--" .. boundary .. "--", 1, true)
    assert.equal(original, body:sub(s + 4, e - 1))
    assert.matches("wrote %d+ bytes %(multipart/related", err)
  end)

  it("retrieve-study and retrieve-series hold every instance", function()
    for _, case in ipairs({ { "studies-retrieve-study", "studies/" .. f.study_uid },
      { "studies-series-retrieve-series", "studies/" .. f.study_uid .. "/series/" .. f.series_uid } }) do
      local out_file = H.tmpdir() .. "/all"
      local _, err, code = call(case[1], case[2], { "-o", out_file })
      assert.equal(0, code, err)
      local body = H.file_bytes(out_file)
      for _, x in ipairs(files) do
        assert.truthy(body:find(H.file_bytes(x.path), 1, true), case[1] .. " " .. x.path)
      end
    end
  end)

  it("retrieve-metadata at each level prints DICOM JSON", function()
    for _, case in ipairs({ { "studies-retrieve-metadata", "studies/" .. f.study_uid .. "/metadata", 2 },
      { "studies-series-retrieve-metadata", "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/metadata", 2 },
      { "studies-series-instances-retrieve-metadata", "studies/" .. f.study_uid .. "/series/" .. f.series_uid
        .. "/instances/" .. f.sop_instance_uid .. "/metadata", 1 } }) do
      local out, err, code = call(case[1], case[2])
      assert.equal(0, code, err)
      local list = assert(cjson.decode(out), out)
      assert.equal(case[3], #list, case[1])
      assert.equal(patient, tag(list[1], "00100020"))
    end
  end)

  it("retrieves frames and rendered images as bytes", function()
    local base = "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/instances/" .. f.sop_instance_uid
    local dir = H.tmpdir()
    local _, err, code = call("studies-series-instances-frames-retrieve-frames", base .. "/frames/1", { "-o", dir .. "/frames" })
    assert.equal(0, code, err)
    assert.matches("^%-%-", H.file_bytes(dir .. "/frames"))
    _, err, code = call("studies-series-instances-retrieve-rendered", base .. "/rendered", { "-o", dir .. "/r.jpg" })
    assert.equal(0, code, err)
    assert.equal("\255\216\255", H.file_bytes(dir .. "/r.jpg"):sub(1, 3))
    _, err, code = call("studies-series-instances-frames-retrieve-rendered", base .. "/frames/1/rendered",
      { "-o", dir .. "/f.jpg" })
    assert.equal(0, code, err)
    assert.equal("\255\216\255", H.file_bytes(dir .. "/f.jpg"):sub(1, 3))
  end)

  it("exits 1 for an unknown study and leaves an existing -o file as it was", function()
    local out_file = H.write_file(H.tmpdir() .. "/keep", "old")
    local _, err, code = call("studies-retrieve-study", "studies/" .. H.fresh_uid(), { "-o", out_file })
    assert.equal(1, code, err)
    assert.matches("NOT_FOUND", err)
    assert.equal("old", H.file_bytes(out_file))
  end)
end)

describe("healthcare projects delete methods", function()
  it("deletes an instance, a series and a study through the emulator and prints the answer", function()
    local del = H.gen_dicom({ count = 2, patient_id = patient .. "-del" })
    H.store_with_cli(del)
    local x = del[1]
    local out, err, code = call("studies-series-instances-delete",
      "studies/" .. x.study_uid .. "/series/" .. x.series_uid .. "/instances/" .. x.sop_instance_uid)
    assert.equal(0, code, err)
    assert.is_table(cjson.decode(out), out)
    assert.is_nil(H.orthanc_find_instance(x.sop_instance_uid))
    assert.is_string(H.orthanc_find_instance(del[2].sop_instance_uid))
    out, err, code = call("studies-series-delete", "studies/" .. x.study_uid .. "/series/" .. x.series_uid)
    assert.equal(0, code, err)
    assert.is_table(cjson.decode(out), out)
    local more = H.gen_dicom({ count = 1, patient_id = patient .. "-del2" })[1]
    H.store_with_cli({ more })
    out, err, code = call("studies-delete", "studies/" .. more.study_uid)
    assert.equal(0, code, err)
    local op = assert(cjson.decode(out), out)
    if op.name then assert.matches("^projects/.+/operations/", op.name) end
  end)

  it("exits 1 for an unknown instance", function()
    local _, err, code = call("studies-series-instances-delete",
      "studies/" .. H.fresh_uid() .. "/series/" .. H.fresh_uid() .. "/instances/" .. H.fresh_uid())
    assert.equal(1, code, err)
    assert.matches("NOT_FOUND", err)
  end)
end)

describe("healthcare projects read and delete methods, bad input", function()
  local S, R, I = "1.2.3", "1.2.3.4", "1.2.3.4.5"
  -- A wrong path for every method: each shape broken somewhere.
  local BAD = {
    ["search-for-studies"] = "studies/" .. S,
    ["search-for-series"] = "studies/abc/series",
    ["search-for-instances"] = "studies/" .. S .. "/series/1..2/instances",
    ["studies-search-for-series"] = "series",
    ["studies-search-for-instances"] = "studies/" .. S .. "/instances/" .. I,
    ["studies-retrieve-study"] = "studies/../" .. S,
    ["studies-retrieve-metadata"] = "studies/" .. S,
    ["studies-delete"] = "studies",
    ["studies-series-retrieve-series"] = "studies/" .. S .. "/series/",
    ["studies-series-retrieve-metadata"] = "studies/" .. S .. "/series/" .. R .. "/meta",
    ["studies-series-search-for-instances"] = "studies/" .. S .. "/series/" .. R .. "/instances?limit=1#x",
    ["studies-series-delete"] = "studies/" .. S .. "/series/" .. R .. "?x=1",
    ["studies-series-instances-retrieve-instance"] = "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "x",
    ["studies-series-instances-retrieve-metadata"] = "studies/" .. S .. "/series/" .. R .. "/instances/metadata",
    ["studies-series-instances-retrieve-rendered"] = "studies/" .. S .. "/series/" .. R .. "/instances/" .. I,
    ["studies-series-instances-delete"] = "studies/" .. S .. "/series/" .. R .. "/instances/" .. string.rep("9", 65),
    ["studies-series-instances-frames-retrieve-frames"] = "studies/" .. S .. "/series/" .. R .. "/instances/" .. I
      .. "/frames/0",
    ["studies-series-instances-frames-retrieve-rendered"] = "studies/" .. S .. "/series/" .. R .. "/instances/" .. I
      .. "/frames/1,a/rendered",
  }
  local seed = require "healthcare.cli.seed"
  for _, m in ipairs(seed.methods) do
    if not m.request then
      it("exits 2 and sends nothing for a bad path to " .. m.id, function()
        assert.is_string(BAD[m.id])
        local before = requests()
        local out, err, code = call(m.id, BAD[m.id])
        assert.equal(2, code, err)
        assert.equal("", out)
        assert.matches("invalid DICOMweb path", err)
        assert.equal(before, requests())
      end)
    end
  end

  it("exits 2 and sends nothing for a bad parent, a control character in the query, -r, or a bad -o", function()
    local before = requests()
    local _, err, code = call("search-for-studies", "studies", nil, "projects/p/datasets/d")
    assert.equal(2, code, err)
    assert.matches("invalid dicomStore name", err)
    _, err, code = call("search-for-studies", "studies?PatientID=%0d%0aX")
    assert.equal(2, code, err)
    assert.matches("control character", err)
    _, err, code = call("studies-delete", "studies/1.2", { "-r", ".", "data=x" })
    assert.equal(2, code, err)
    assert.matches("takes no request value", err)
    local a_file = H.write_file(H.tmpdir() .. "/a-file", "x")
    _, err, code = call("studies-retrieve-study", "studies/1.2", { "-o", a_file .. "/out" })
    assert.equal(2, code, err)
    assert.matches("cannot write the output: " .. a_file:gsub("%p", "%%%0") .. " exists and is not a directory", err)
    assert.equal(before, requests())
  end)

  it("exits 2 for a store that does not exist", function()
    local _, err, code = call("search-for-studies", "studies", nil, E.store:gsub("test%-store$", "missing"))
    assert.equal(2, code, err)
    assert.matches("NOT_FOUND", err)
  end)

  it("prints each method's help", function()
    for _, m in ipairs(seed.methods) do
      local out, err, code = H.healthcare({ "projects", m.name, "--help" })
      assert.equal(0, code, err)
      assert.truthy(out:find("healthcare projects " .. m.name, 1, true))
    end
  end)
end)

describe("healthcare projects read methods and Retry-After", function()
  after_each(function() em:control("faults", { rules = {}, replace = true }) end)

  it("waits as a 503's Retry-After asks, says so on standard error, and prints the answer", function()
    em:control("faults", { replace = true, rules = { { http_method = "GET", path = "^studies$", status = 503,
      retry_after = 1, message = "busy", times = 1 } } })
    local out, err, code = call("search-for-studies", "studies?PatientID=" .. patient)
    assert.equal(0, code, err)
    assert.equal("healthcare: SearchForStudies: HTTP 503 UNAVAILABLE: busy; trying again in 1.0 s (attempt 2)\n", err)
    local list = assert(cjson.decode(out), out)
    assert.equal(1, #list)
    assert.equal(f.study_uid, tag(list[1], "0020000D"))
  end)
end)

describe("store:fetch, the store's raw request the seed form uses", function()
  local healthcare = require "healthcare"
  local media = require "healthcare.dicomweb.media"
  local store
  lazy_setup(function()
    store = assert(healthcare.dicom_store(E.store, { endpoint = em.endpoint, access_token = TOKEN }))
  end)
  lazy_teardown(function() if store then store:close() end end)

  local function last_request()
    local list = em:stats().requests
    return list[#list]
  end

  it("asks for what the path names, as media.lua says, and gives the answer of any status as it came", function()
    local base = "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/instances/" .. f.sop_instance_uid
    for _, c in ipairs({ { "instances", "search" }, { "studies/" .. f.study_uid .. "/series", "search" },
      { base .. "/metadata", "metadata" }, { base .. "/rendered", "rendered" }, { base .. "/frames/1", "frames" },
      { base, "retrieve" } }) do
      local res = assert(store:fetch(c[1], { query = c[2] == "search" and ("StudyInstanceUID=" .. f.study_uid)
        or nil }))
      assert.equal(200, res.status, c[1])
      assert.equal(media.ACCEPT[c[2]], last_request().accept, c[1])
    end
    local res = assert(store:fetch("studies/" .. H.fresh_uid() .. "/metadata"))
    assert.equal(404, res.status)
    assert.matches("inexistent", res.body)  -- the server's own words, not an error value
  end)

  it("streams an answer byte for byte to the file `to`, or cuts one held in memory at max_bytes", function()
    local path = "studies/" .. f.study_uid .. "/series/" .. f.series_uid .. "/instances/" .. f.sop_instance_uid
    local out = H.tmpdir() .. "/answer"
    local res = assert(store:fetch(path, { to = out }))
    assert.equal(200, res.status)
    local body = H.file_bytes(out)
    assert.equal(#body, res.bytes)
    assert.truthy(body:find(H.file_bytes(f.path), 1, true))
    local inmem = assert(store:fetch(path))
    assert.is_nil(inmem.file)
    assert.truthy(inmem.body:find(H.file_bytes(f.path), 1, true))
    local cut, err = store:fetch(path .. "/metadata", { max_bytes = 10 })
    assert.is_nil(cut)
    assert.equal("response_too_large", err.status)
  end)
end)
