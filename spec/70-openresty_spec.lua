-- SPDX-License-Identifier: MIT
-- healthcare.ngx and examples/openresty/nginx.conf: Debian's nginx + ngx_http_lua running the
-- example gateway, pointed at a private Google emulator (which forwards to the test bed's
-- Orthanc). Clients send plain STOW-RS without credentials; the gateway adds the service
-- account's token. nginx runs the LuaJIT build of healthcare.core (build-luajit/).
local H = require "helpers"

describe("healthcare.ngx.map_path", function()
  -- Loading healthcare.ngx needs no nginx (ngx is only used when a request is served).
  local ngxmod = require "healthcare.ngx"
  local parent = "projects/p/locations/l/datasets/d/dicomStores/s"
  local function map(uri, method)
    return ngxmod.map_path(uri, method or "POST", "/dicomWeb", "/v1", parent)
  end

  it("maps StoreInstances paths to the dicomStore's dicomWeb path", function()
    assert.equal("/v1/" .. parent .. "/dicomWeb/studies", map("/dicomWeb/studies"))
    assert.equal("/v1/" .. parent .. "/dicomWeb/studies", map("/dicomWeb/studies/"))
    assert.equal("/v1/" .. parent .. "/dicomWeb/studies/1.2.840.3", map("/dicomWeb/studies/1.2.840.3"))
  end)

  it("refuses other POST paths and bad study UIDs with 404", function()
    for _, uri in ipairs({ "/dicomWeb", "/dicomWeb/", "/dicomWeb/series", "/dicomWeb/studies/1.2/series",
      "/dicomWeb/studies/abc", "/dicomWeb/studies/1..2", "/dicomWeb/studies/" .. string.rep("1", 65),
      "/dicomWebstudies", "/other/studies" }) do
      local path, status, message = map(uri)
      assert.is_nil(path, uri)
      assert.equal(404, status, uri)
      assert.truthy(message:find("/dicomWeb", 1, true), uri)
    end
  end)

  it("maps other methods' paths of safe segments only", function()
    assert.equal("/v1/" .. parent .. "/dicomWeb/studies/1.2/series", map("/dicomWeb/studies/1.2/series", "GET"))
    assert.equal("/v1/" .. parent .. "/dicomWeb/instances", map("/dicomWeb/instances/", "GET"))
    for _, uri in ipairs({ "/dicomWeb", "/dicomWeb/a/../b", "/dicomWeb/a//b", "/dicomWeb/a b", "/dicomWeb/%2e" }) do
      assert.is_nil(map(uri, "GET"), uri)
    end
  end)

  it("writes errors in Google's envelope", function()
    local doc = H.json.decode(ngxmod.envelope(503, "no token"))
    assert.same({ error = { code = 503, message = "no token", status = "UNAVAILABLE" } }, doc)
  end)
end)

describe("healthcare.ngx.rewrite_urls", function()
  local ngxmod = require "healthcare.ngx"
  local api = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s/dicomWeb"
  local gw = "http://gw.example:8080/dicomWeb"

  it("puts the gateway's root in place of the API's at the start of JSON strings", function()
    local text = '{"00081190":{"vr":"UR","Value":["' .. api .. '/studies/1.2.3"]},'
      .. '"00081199":{"vr":"SQ","Value":[{"00081190":{"vr":"UR","Value":["' .. api
      .. '/studies/1.2.3/series/4/instances/5"]}}]},"0040E010":{"vr":"UR","Value":["' .. api .. '"]},'
      .. '"x":"' .. api .. '?a=1"}'
    local out, n = ngxmod.rewrite_urls(text, api, gw)
    assert.equal(4, n)
    assert.equal('{"00081190":{"vr":"UR","Value":["' .. gw .. '/studies/1.2.3"]},'
      .. '"00081199":{"vr":"SQ","Value":[{"00081190":{"vr":"UR","Value":["' .. gw
      .. '/studies/1.2.3/series/4/instances/5"]}}]},"0040E010":{"vr":"UR","Value":["' .. gw .. '"]},'
      .. '"x":"' .. gw .. '?a=1"}', out)
    -- JSON may spell '/' as '\/'.
    local esc = api:gsub("/", "\\/")
    out, n = ngxmod.rewrite_urls('["' .. esc .. '\\/studies\\/1.2"]', api, gw)
    assert.equal(1, n)
    assert.equal('["' .. gw:gsub("/", "\\/") .. '\\/studies\\/1.2"]', out)
  end)

  it("leaves everything else alone", function()
    for _, text in ipairs({
      '["' .. api .. 'X/studies"]',                       -- another root that starts the same
      '["' .. api:gsub("/s/dicomWeb", "/s2/dicomWeb") .. '/studies"]', -- another store
      '["see ' .. api .. '/studies"]',                    -- not at the start of the string
      '["' .. api:gsub("^https", "http") .. '/studies"]', -- another origin
      '{"' .. api:sub(1, -2) .. '":1}', "", "[]",
    }) do
      local out, n = ngxmod.rewrite_urls(text, api, gw)
      assert.equal(text, out)
      assert.equal(0, n, text)
    end
  end)

  it("writes the gateway's root as JSON", function()
    local out = ngxmod.rewrite_urls('["' .. api .. '/studies"]', api, 'http://h/"x\\')
    assert.equal('["http://h/\\"x\\\\/studies"]', out)
  end)

  it("rewrites DICOM JSON, JSON, FHIR JSON and DICOM XML answers only", function()
    assert.is_true(ngxmod.rewritable("application/dicom+json"))
    assert.is_true(ngxmod.rewritable("application/fhir+json; charset=utf-8"))
    assert.same({ true, true }, { ngxmod.rewritable("application/dicom+xml") }) -- the second: XML
    assert.is_true(ngxmod.rewritable("Application/DICOM+JSON; charset=utf-8"))
    assert.is_true(ngxmod.rewritable("application/json; charset=UTF-8"))
    assert.is_true(ngxmod.rewritable({ "application/json" }))
    for _, t in ipairs({ 'multipart/related; type="application/dicom+json"', "application/dicom",
      "text/html", "image/jpeg", "" }) do
      assert.is_false(ngxmod.rewritable(t), t)
    end
    assert.is_false(ngxmod.rewritable(nil))
  end)

  it("checks the options of rewriting", function()
    local parent = "projects/p/locations/l/datasets/d/dicomStores/s"
    for opt, v in pairs({ rewrite_urls = "yes", max_rewrite_size = -1, api_origin = "healthcare.googleapis.com",
      public_url = "gateway/dicomWeb", retry_after = 0, max_form_size = "1m" }) do
      local ok, err = pcall(ngxmod.configure, { parent = parent, [opt] = v })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("bad option '" .. opt .. "'", 1, true), tostring(err))
    end
  end)
end)

if not H.need_testbed() then return end
local N = require "support.nginx"
local healthcare = require "healthcare"

local JSON = H.json
local E = H.env

-- A multipart/related STOW-RS body holding these files, written to a file: its path, content type.
local function multipart(paths)
  local boundary = "hc-spec-" .. math.random(1, 1e9)
  local out = H.tmpdir() .. "/body"
  local f = assert(io.open(out, "wb"))
  for _, p in ipairs(paths) do
    f:write("--", boundary, "\r\nContent-Type: application/dicom\r\n\r\n", assert(H.file_bytes(p)), "\r\n")
  end
  f:write("--", boundary, "--\r\n")
  f:close()
  return out, 'multipart/related; type="application/dicom"; boundary=' .. boundary
end

-- POST a body file to the gateway; extra = more curl arguments.
local function stow(gw, path, body, ctype, extra)
  local args = { "-X", "POST", "-H", "Content-Type: " .. ctype, "-H", "Accept: application/dicom+json",
    "--data-binary", "@" .. body }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  args[#args + 1] = gw.url .. path
  return H.curl(args)
end

-- SOP Instance UIDs in a store response's 00081199.
local function stored_uids(doc)
  local set = {}
  local seq = type(doc) == "table" and doc["00081199"] and doc["00081199"].Value or {}
  for _, item in ipairs(seq) do
    local v = item["00081155"] and item["00081155"].Value
    if v then set[v[1]] = true end
  end
  return set
end

-- Runs n STOWs of body at once (curl processes in parallel); returns their status codes.
local function parallel_stow(gw, n, body, ctype)
  local dir = H.tmpdir()
  local cmd = {}
  for i = 1, n do
    cmd[#cmd + 1] = string.format("curl -sS -o /dev/null -w '%%{http_code}' -H 'Expect:' -X POST -H %s "
      .. "--data-binary @%s %s > %s/%d &", H.q("Content-Type: " .. ctype), H.q(body),
      H.q(gw.url .. "/dicomWeb/studies"), dir, i)
  end
  cmd[#cmd + 1] = "wait"
  H.check_run(table.concat(cmd, "\n"))
  local codes = {}
  for i = 1, n do codes[i] = tonumber(H.file_bytes(dir .. "/" .. i)) end
  return codes
end

local function pids_in_access_log(gw)
  local set, n = {}, 0
  for _, line in ipairs(gw:access_lines()) do
    local pid = line:find("POST /dicomWeb/", 1, true) and line:match("pid=(%d+)")
    if pid and not set[pid] then set[pid], n = true, n + 1 end
  end
  return n
end

local now = require("healthcare.core").now
local function sleep_until(t)
  local d = t - now()
  if d > 0 then os.execute(string.format("sleep %.2f", d)) end
end

local function assert_all(codes, want)
  for i, c in ipairs(codes) do assert.equal(want, c, "request " .. i) end
end

-- The error in Google's JSON envelope, from a curl result.
local function assert_envelope(r, code, status)
  assert.equal(code, r.status, r.body)
  assert.truthy((r.headers["content-type"] or ""):find("application/json", 1, true), r.raw_headers)
  assert.is_table(r.json, r.body)
  assert.equal(code, r.json.error.code)
  assert.equal(status, r.json.error.status)
  assert.is_string(r.json.error.message)
end

-- A 503 for want of a token says only that: not the service account, its token endpoint or
-- what the endpoint said (the error log has those).
local function assert_untold(r, sa)
  assert.equal("The gateway could not get an access token for the Cloud Healthcare API "
    .. "(the gateway's error log says why).", r.json.error.message)
  for _, s in ipairs({ sa.client_email, "token request", "HTTP 5", "temporarily_unavailable", "127.0.0.1" }) do
    assert.falsy(r.body:find(s, 1, true), s .. " in " .. r.body)
  end
end

describe("the OpenResty gateway (examples/openresty/nginx.conf)", function()
  teardown(N.stop_all)

  describe("with a service account key", function()
    local emu, gw, sa
    setup(function()
      emu = N.emulator()
      sa = emu:service_account()
      gw = N.gateway({ emulator = emu, key_file = sa.key_file })
    end)
    teardown(function()
      if gw then gw:stop() end
      if emu then emu:stop() end
    end)

    it("stores real files sent without credentials in Orthanc, with the gateway's token", function()
      local samples = H.sample_info({ unique = true })
      local files, want = {}, {}
      for i = 1, math.min(4, #samples) do
        files[#files + 1] = samples[i].path
        want[samples[i].sop_instance_uid] = samples[i].path
      end
      for _, g in ipairs(H.gen_dicom({ count = 3, size = 200000 })) do
        files[#files + 1] = g.path
        want[g.sop_instance_uid] = g.path
      end
      local body, ctype = multipart(files)
      -- A client's own Authorization header is replaced, not forwarded.
      local r = stow(gw, "/dicomWeb/studies", body, ctype, { "-H", "Authorization: Bearer not-a-token" })
      assert.equal(200, r.status, r.body .. gw:log())
      local got = stored_uids(r.json)
      for uid, path in pairs(want) do
        assert.truthy(got[uid], uid)
        assert.equal(H.sha256(path), H.sha256_string(assert(H.orthanc_instance_file(uid), uid)), path)
      end
      local stats = emu:stats()
      assert.equal(1, stats.auth_kinds.issued_token)
      assert.is_nil(stats.auth_kinds.invalid)
      assert.is_nil(stats.auth_kinds.none)
      assert.equal(1, emu:token_requests())
      -- The path the API saw: {parent}/dicomWeb/studies under /v1.
      local last = stats.requests[#stats.requests]
      assert.equal("/v1/" .. E.store .. "/dicomWeb/studies", last.path)
      assert.equal("POST", last.method)
    end)

    it("stores into studies/{uid}, and streams a chunked body", function()
      local g = H.gen_dicom({ count = 1, size = 300000 })[1]
      local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/dicom", "-H", "Transfer-Encoding: chunked",
        "-H", "Accept: application/dicom+json",
        "-T", g.path, gw.url .. "/dicomWeb/studies/" .. g.study_uid })
      assert.equal(200, r.status, r.body)
      assert.truthy(stored_uids(r.json)[g.sop_instance_uid], r.body)
      local stats = emu:stats()
      local last = stats.requests[#stats.requests]
      assert.equal("/v1/" .. E.store .. "/dicomWeb/studies/" .. g.study_uid, last.path)
      assert.equal("chunked", last["transfer-encoding"])
      assert.equal(1, emu:token_requests())
    end)

    it("answers errors of its own in Google's JSON envelope", function()
      assert_envelope(H.curl({ "-X", "POST", "--data-binary", "x", gw.url .. "/dicomWeb/series" }), 404, "NOT_FOUND")
      assert_envelope(H.curl({ "-X", "POST", "--data-binary", "x", gw.url .. "/dicomWeb/studies/not-a-uid" }),
        404, "NOT_FOUND")
      local r = H.curl({ gw.url .. "/dicomWeb/studies" })
      assert_envelope(r, 405, "METHOD_NOT_ALLOWED")
      assert.equal("POST", r.headers["allow"])
      assert_envelope(H.curl({ gw.url .. "/elsewhere" }), 404, "NOT_FOUND")
      -- The token location is internal: nginx itself refuses it to clients.
      assert.equal(404, H.curl({ "-X", "POST", "--data-binary", "x", gw.url .. "/_healthcare/token" }).status)
    end)

    it("fetches a new token when the API refuses the cached one (401)", function()
      local g = H.gen_dicom({ count = 1 })[1]
      -- The emulator forgets every token it issued (and the keys: register ours again).
      emu:control("reset", {})
      emu:control("keys", { kid = sa.kid, client_email = sa.client_email, public_key_pem = sa.public_key_pem })
      local body, ctype = multipart({ g.path })
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert.equal(401, r.status, r.body)
      assert.truthy(gw:log():find("refused the access token", 1, true))
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert.equal(200, r.status, r.body)
      assert.equal(1, emu:token_requests())   -- the reset zeroed the count: one since
    end)
  end)

  describe("with several workers", function()
    local emu, gw, body, ctype
    setup(function()
      emu = N.emulator()
      local sa = emu:service_account()
      emu:control("config", { expires_in = 20 })   -- refreshed 10 s in (half its life), used until 18 s
      gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 4 })
      body, ctype = multipart({ H.gen_dicom({ count = 1 })[1].path })
    end)
    teardown(function()
      if gw then gw:stop() end
      if emu then emu:stop() end
    end)

    it("makes one token request for many requests at once, then one per expiry", function()
      assert.equal(4, #gw:workers())
      local t1 = now()
      assert_all(parallel_stow(gw, 24, body, ctype), 200)
      local t1_end = now()   -- the first token came between t1 and t1_end
      assert.equal(1, emu:token_requests())
      assert.truthy(pids_in_access_log(gw) >= 2, "requests were served by one worker only")
      -- Past its refresh point (10 s), before its end (18 s): one request refreshes, the others
      -- go on with the old token.
      sleep_until(t1_end + 10.1)
      assert_all(parallel_stow(gw, 12, body, ctype), 200)
      local t2_end = now()
      assert.truthy(t2_end < t1 + 17.9, "too slow to test the refresh window")
      assert.equal(2, emu:token_requests())
      -- Past the end of that one: no valid token at all; one refresh for all of them.
      sleep_until(t2_end + 18.1)
      assert_all(parallel_stow(gw, 12, body, ctype), 200)
      assert.equal(3, emu:token_requests())
      local stats = emu:stats()
      assert.equal(48, stats.auth_kinds.issued_token)
      assert.equal(3, #stats.bearer_credentials)
      assert.is_nil(stats.auth_kinds.expired_token)
    end)
  end)

  describe("with self_signed_jwt = true", function()
    local emu, gw
    setup(function()
      emu = N.emulator()
      local sa = emu:service_account()
      gw = N.gateway({ emulator = emu, key_file = sa.key_file, configure_extra = "self_signed_jwt = true," })
    end)
    teardown(function()
      if gw then gw:stop() end
      if emu then emu:stop() end
    end)

    it("sends a JWT it signed itself and makes no token request", function()
      local body, ctype = multipart({ H.gen_dicom({ count = 1 })[1].path })
      assert_all(parallel_stow(gw, 6, body, ctype), 200)
      local stats = emu:stats()
      assert.equal(6, stats.auth_kinds.self_signed_jwt)
      assert.equal(1, #stats.bearer_credentials)
      assert.equal(0, emu:token_requests())
    end)
  end)

  describe("streaming", function()
    local emu, gw
    setup(function()
      emu = N.emulator()
      local sa = emu:service_account()
      gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 2 })
    end)
    teardown(function()
      if gw then gw:stop() end
      if emu then emu:stop() end
    end)

    it("passes a 1 GiB upload with the workers' memory flat", function()
      local size = 1024 * 1024 * 1024
      local g = H.gen_dicom({ count = 1, size = size, fill = "zero" })[1]
      -- Warm up each worker (Lua loaded, token cached), then take the baseline.
      local small = H.gen_dicom({ count = 1 })[1]
      local sbody, sctype = multipart({ small.path })
      assert_all(parallel_stow(gw, 8, sbody, sctype), 200)
      local base = {}
      for _, w in ipairs(gw:workers()) do base[w] = N.rss_kb(w) end
      local samples = H.tmpdir() .. "/rss"
      local out = H.tmpdir() .. "/out"
      local so, se, code = H.run(table.concat({ H.q(E.support .. "/nginx_rss.sh"), gw.pid, H.q(samples),
        "curl", "-sS", "-H", "'Expect:'", "-X", "POST", "-H", "'Content-Type: application/dicom'",
        "-H", "'Accept: application/dicom+json'", "-T", H.q(g.path), "-o", H.q(out), "-w", "'%{http_code}'",
        H.q(gw.url .. "/dicomWeb/studies") }, " "))
      assert.equal(0, code, se)
      assert.equal("200", so, (H.file_bytes(out) or "") .. gw:log())
      assert.truthy(stored_uids(JSON.decode(H.file_bytes(out)))[g.sop_instance_uid])
      local id = assert(H.orthanc_find_instance(g.sop_instance_uid))
      local grew, n = 0, 0
      for line in (H.file_bytes(samples) or ""):gmatch("[^\n]+") do
        local pid, kb = line:match("^(%d+) (%d+)$")
        pid, kb = tonumber(pid), tonumber(kb)
        if base[pid] then
          grew = math.max(grew, kb - base[pid])
          n = n + 1
        end
      end
      assert.truthy(n >= 10, "too few memory samples: " .. n)
      -- 1 GiB went through; a worker grew by less than 16 MiB.
      assert.truthy(grew < 16 * 1024, string.format("a worker's RSS grew by %d kB", grew))
      assert.truthy(emu:stats().bytes_received >= size)
      print(string.format("\n1 GiB upload: %d RSS samples, largest growth of a worker %d kB", n, grew))
      H.curl({ "-X", "DELETE", E.orthanc .. "/instances/" .. id })
      os.remove(g.path)
    end)
  end)

  describe("reads (QIDO-RS, WADO-RS) and the URLs in answers", function()
    local emu, gw, study
    local GET = 'methods = { "POST", "GET" },'
    local WADO = 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*'
    setup(function()
      emu = N.emulator()
      local sa = emu:service_account()
      gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1, configure_extra = GET })
      study = H.make_study({ patient_id = "NGX-" .. math.random(1, 1e9), size = 20000,
        series = { { modality = "CT", count = 3 }, { modality = "MR", count = 2 } } })
      gw.sa = sa
    end)
    teardown(function()
      if gw then gw:stop() end
      if emu then emu:stop() end
    end)

    -- The API's DICOMweb root in the emulator's answers, and the gateway's.
    local function api_root() return emu.url .. "/v1/" .. E.store .. "/dicomWeb" end
    local function gw_root() return gw.url .. "/dicomWeb" end

    -- A JSON answer whose length is right (curl checks a Content-Length; none is fine too).
    local function assert_json(r)
      assert.equal(200, r.status, r.body .. gw:log())
      assert.is_table(r.json, r.body)
      local len = r.headers["content-length"]
      assert.truthy(len == nil or tonumber(len) == #r.body, r.raw_headers)
      assert.falsy(r.body:find(emu.url, 1, true), "the API's URL is in the answer: " .. r.body)
    end

    local function url_of(item)
      return item["00081190"] and item["00081190"].Value[1]
    end

    it("answers a STOW with RetrieveURLs on the gateway", function()
      local files = H.gen_dicom({ count = 2 })
      local body, ctype = multipart({ files[1].path, files[2].path })
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_json(r)
      local study_url = gw_root() .. "/studies/" .. files[1].study_uid
      assert.equal(study_url, url_of(r.json))
      local seen = 0
      for _, item in ipairs(r.json["00081199"].Value) do
        local sop = item["00081155"].Value[1]
        assert.equal(study_url .. "/series/" .. files[1].series_uid .. "/instances/" .. sop, url_of(item))
        seen = seen + 1
      end
      assert.equal(2, seen)
    end)

    it("searches, with RetrieveURLs on the gateway as the client reached it, and follows them", function()
      local r = H.curl({ "-H", "Accept: application/dicom+json", gw_root() .. "/studies?PatientID=" .. study.patient_id })
      assert_json(r)
      assert.equal(1, #r.json)
      assert.equal(study.study_uid, r.json[1]["0020000D"].Value[1])
      local study_url = gw_root() .. "/studies/" .. study.study_uid
      assert.equal(study_url, url_of(r.json[1]))
      -- Another name for the gateway: the URLs follow the client's Host.
      r = H.curl({ "-H", "Host: pacs.example:8443", gw_root() .. "/studies?PatientID=" .. study.patient_id })
      assert_json(r)
      assert.equal("http://pacs.example:8443/dicomWeb/studies/" .. study.study_uid, url_of(r.json[1]))
      r = H.curl({ gw_root() .. "/studies/" .. study.study_uid .. "/series" })
      assert_json(r)
      assert.equal(2, #r.json)
      for _, s in ipairs(r.json) do
        assert.equal(study_url .. "/series/" .. s["0020000E"].Value[1], url_of(s))
      end
      -- Following the study's RetrieveURL: every instance, through the gateway.
      r = H.curl({ "-H", WADO, study_url })
      assert.equal(200, r.status, r.body)
      assert.truthy(r.headers["content-type"]:find("multipart/related", 1, true), r.raw_headers)
      for _, f in ipairs(study.files) do
        assert.truthy(r.body:find(assert(H.file_bytes(f.path)), 1, true), f.path)
      end
      -- The API saw our token and the dicomStore's paths only.
      local stats = emu:stats()
      assert.is_nil(stats.auth_kinds.none)
      assert.equal("/v1/" .. E.store .. "/dicomWeb/studies/" .. study.study_uid, stats.requests[#stats.requests].path)
    end)

    it("retrieves a study with healthcare.dicomweb through the gateway, byte for byte", function()
      local store = assert(healthcare.dicomweb(gw_root()))
      local dir = H.tmpdir()
      local res = assert(store:retrieve_study(study.study_uid, { to = dir }))
      assert.equal(#study.files, #res.files)
      for _, f in ipairs(study.files) do
        local got = dir .. "/" .. f.sop_instance_uid .. ".dcm"
        assert.equal(H.sha256(f.path), H.sha256(got), f.path)
      end
      local meta = assert(store:retrieve_metadata(study.study_uid))
      assert.equal(#study.files, #meta)
      store:close()
    end)

    it("rewrites a JSON answer read in many pieces, to public_url, and nothing else in it", function()
      -- Reference: a gateway that passes JSON answers over 100 bytes through unchanged.
      local plain = N.gateway({ emulator = emu, key_file = gw.sa.key_file, workers = 1,
        configure_extra = GET .. " max_rewrite_size = 100," })
      -- And one that reads the API's answers 1 KiB at a time, for clients behind a TLS proxy.
      local public = "https://pacs.example/dicom/web"
      local small = N.gateway({ emulator = emu, key_file = gw.sa.key_file, workers = 1,
        configure_extra = GET .. string.format(" public_url = %q,", public .. "/"),
        edits = { { "proxy_buffer_size 64k;", "proxy_buffer_size 1k;" } } })
      finally(function()
        plain:stop()
        small:stop()
      end)
      local path = "/dicomWeb/studies/" .. study.study_uid .. "/instances?includefield=all"
      local before = H.curl({ plain.url .. path })
      assert.equal(200, before.status, before.body)
      assert.truthy(#before.body > 4 * 1024, #before.body)
      assert.truthy(before.body:find('"' .. api_root() .. "/studies/", 1, true), before.body)
      assert.equal(#before.body, tonumber(before.headers["content-length"]))
      local log = plain:log()
      assert.truthy(log:find("is over max_rewrite_size (100)", 1, true), log)
      local after = H.curl({ small.url .. path })
      assert.equal(200, after.status, after.body)
      local want = before.body
      local from, n = api_root(), 0
      local i = want:find(from, 1, true)
      while i do
        want = want:sub(1, i - 1) .. public .. want:sub(i + #from)
        n = n + 1
        i = want:find(from, i + #public, true)
      end
      assert.truthy(n >= #study.files, n)
      assert.equal(want, after.body)
    end)

    it("rewrites a chunked JSON answer, or passes it on unchanged past max_rewrite_size", function()
      -- An API that answers in 1000-byte chunks: URLs are cut across them.
      local items = {}
      for i = 1, 150 do
        items[i] = string.format('{"00081190":{"vr":"UR","Value":["http://127.0.0.1:{PORT}/v1/%s/dicomWeb'
          .. '/studies/1.2.%d"]}}', E.store, i)
      end
      local api = N.canned("[" .. table.concat(items, ",") .. "]", "application/dicom+json")
      local function gateway(extra)
        return N.gateway({ emulator = emu, key_file = gw.sa.key_file, workers = 1, api_port = api.port,
          token_port = emu.port, configure_extra = GET .. extra })
      end
      local fits, over = gateway(""), gateway(" max_rewrite_size = 20000,")
      finally(function()
        fits:stop()
        over:stop()
        api:stop()
      end)
      assert.truthy(#api.body > 20000, #api.body)
      local r = H.curl({ fits.url .. "/dicomWeb/studies" })
      assert.equal(200, r.status, r.body .. fits:log())
      assert.equal(150, #r.json)
      for i, item in ipairs(r.json) do
        assert.equal(fits.url .. "/dicomWeb/studies/1.2." .. i, item["00081190"].Value[1])
      end
      r = H.curl({ over.url .. "/dicomWeb/studies" })
      assert.equal(200, r.status, r.body)
      assert.equal(api.body, r.body)
      local log = over:log()
      assert.truthy(log:find("is over max_rewrite_size (20000 bytes)", 1, true), log)
    end)

    it("streams a large retrieve with the worker's memory flat", function()
      local size = 120 * 1000 * 1000
      local g = H.gen_dicom({ count = 1, size = size, frames = 30, fill = "zero" })[1]
      local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/dicom", "-H", "Accept: application/dicom+json",
        "-T", g.path, gw_root() .. "/studies" })
      assert.equal(200, r.status, r.body)
      local id = assert(H.orthanc_find_instance(g.sop_instance_uid))
      finally(function()
        H.curl({ "-X", "DELETE", E.orthanc .. "/instances/" .. id })
        os.remove(g.path)
      end)
      local workers = gw:workers()
      assert.equal(1, #workers)
      local base = N.rss_kb(workers[1])
      local samples = H.tmpdir() .. "/rss"
      local out = H.tmpdir() .. "/out"
      local url = gw_root() .. "/studies/" .. g.study_uid .. "/series/" .. g.series_uid .. "/instances/"
        .. g.sop_instance_uid
      local t0 = now()
      local so, se, code = H.run(table.concat({ H.q(E.support .. "/nginx_rss.sh"), gw.pid, H.q(samples),
        "curl", "-sS", "-H", H.q(WADO), "-o", H.q(out), "-w", "'%{http_code}'", H.q(url) }, " "))
      local took = now() - t0
      finally(function() os.remove(out) end)
      assert.equal(0, code, se)
      assert.equal("200", so, gw:log())
      local grew, n = 0, 0
      for line in (H.file_bytes(samples) or ""):gmatch("[^\n]+") do
        local pid, kb = line:match("^(%d+) (%d+)$")
        if tonumber(pid) == workers[1] then
          grew = math.max(grew, tonumber(kb) - base)
          n = n + 1
        end
      end
      assert.truthy(n >= 5, "too few memory samples: " .. n)
      -- The instance is the one part of the answer, byte for byte.
      local f = assert(io.open(out, "rb"))
      local head = f:read(4096)
      f:close()
      local skip = assert(head:find("\r\n\r\n", 1, true), "no part header") + 3
      assert.equal(H.sha256(g.path), H.check_run(string.format("tail -c +%d %s | head -c %d | sha256sum",
        skip + 1, H.q(out), g.size)):match("^%x+"))
      assert.falsy(gw:log():find("temporary file", 1, true), gw:log())
      print(string.format("\n%d MB retrieve through the gateway in %.1f s: %d RSS samples, worker grew %d kB",
        math.floor(g.size / 1000000), took, n, grew))
      assert.truthy(grew < 4 * 1024, string.format("the worker's RSS grew by %d kB", grew))
    end)
  end)

  describe("what of a client's request reaches the API", function()
    -- The API is a capture server (every request's headers and target, recorded; answers {}); the
    -- token comes from the emulator.
    local emu, sa, gw, billed, fhir, log_file, answers_file
    setup(function()
      emu = N.emulator()
      sa = emu:service_account()
      local dir = H.tmpdir()
      log_file = dir .. "/captured.jsonl"
      answers_file = dir .. "/answers.json"
      local url, stop = H.start_server("capture server", "/usr/bin/python3 " .. H.q(E.support .. "/capture_server.py")
        .. " " .. H.q(log_file) .. " " .. H.q(answers_file), dir)
      local port = tonumber(url:match(":(%d+)$"))
      gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1, api_port = port, token_port = emu.port })
      billed = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1, api_port = port,
        token_port = emu.port, configure_extra = 'quota_project = "gateway-billed",' })
      -- FHIR as examples/openresty/fhir.conf serves it; a small client_body_buffer_size puts a
      -- form body of more than 4 KiB in nginx's temporary file; it also speaks HTTP/2 (h2c) on h2_url
      local fhir_port, h2_port = N.free_port(), N.free_port()
      while h2_port == fhir_port do h2_port = N.free_port() end
      fhir = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1, api_port = port,
        token_port = emu.port, example = (os.getenv("HC_SOURCE_DIR") or ".") .. "/examples/openresty/fhir.conf",
        configure_extra = "max_form_size = 64 * 1024,", port = fhir_port,
        edits = { { "client_body_buffer_size 1m;", "client_body_buffer_size 4k;" },
          { "listen 127.0.0.1:" .. fhir_port .. ";",
            "listen 127.0.0.1:" .. fhir_port .. "; listen 127.0.0.1:" .. h2_port .. " http2;" } } })
      fhir.h2_url = "http://127.0.0.1:" .. h2_port
      gw.stop_capture = stop
    end)
    teardown(function()
      if gw then gw.stop_capture() end
      N.stop_all()
    end)

    local function captured()
      local list = {}
      for line in (H.file_bytes(log_file) or ""):gmatch("[^\n]+") do list[#list + 1] = JSON.decode(line) end
      return list
    end

    local function post(g, url, headers)
      local args = { "-X", "POST", "-H", "Content-Type: application/dicom", "--data-binary", "x" }
      for _, h in ipairs(headers or {}) do
        args[#args + 1] = "-H"
        args[#args + 1] = h
      end
      args[#args + 1] = g.url .. url
      return H.curl(args)
    end

    it("refuses a method override or a Google system parameter in the query, before any token", function()
      local before, tokens = #captured(), emu:token_requests()
      -- A hundred other headers first: the check sees every header.
      local many = {}
      for i = 1, 120 do many[i] = "X-Filler-" .. i .. ": " .. i end
      local cases = {
        { headers = { "X-HTTP-Method-Override: DELETE" } }, { headers = { "x-http-method: DELETE" } },
        { headers = { "X-Method-Override: PUT" } }, { headers = many, more = "X-HTTP-Method-Override: DELETE" },
        { query = "?$httpMethod=DELETE" }, { query = "?%24httpMethod=DELETE" }, { query = "?a=1&HTTPMETHOD=DELETE" },
        { query = "?userProject=someone-else" }, { query = "?%24userProject=x" }, { query = "?key=AIza" },
        { query = "?access_token=ya29.x" }, { query = "?callback=steal" }, { query = "?$.xgafv=1" },
        { query = "?_method=DELETE" }, { query = "?%24ct=text/plain" },
      }
      for _, c in ipairs(cases) do
        local headers = { table.unpack(c.headers or {}) }
        headers[#headers + 1] = c.more
        local r = post(gw, "/dicomWeb/studies/1.2.3" .. (c.query or ""), headers)
        assert_envelope(r, 400, "INVALID_ARGUMENT")
      end
      -- A query that only looks like one goes through.
      assert.equal(200, post(gw, "/dicomWeb/studies?keyword=1&method=x").status)
      assert.equal(before + 1, #captured())
      assert.equal(tokens + 1, emu:token_requests())
    end)

    it("refuses a Google system parameter in a form body (FHIR's POST _search) as in the query", function()
      local before, tokens = #captured(), emu:token_requests()
      local function search(body, headers, path)
        local args = { "-X", "POST", "--data-binary", body }
        for _, h in ipairs(headers or { "Content-Type: application/x-www-form-urlencoded" }) do
          args[#args + 1] = "-H"
          args[#args + 1] = h
        end
        args[#args + 1] = fhir.url .. (path or "/fhir/Patient/_search")
        return H.curl(args)
      end
      local pad = "&name=" .. string.rep("a", 8000) -- past client_body_buffer_size: in a file
      for _, c in ipairs({
        { "name=Smith&$httpMethod=DELETE" }, { "%24httpMethod=DELETE" }, { "name=x&access_token=ya29.x" },
        { "KEY=AIza" }, { "_method=DELETE&name=x" }, { "userProject=someone-else" }, { "callback=steal" },
        { "name=x&%0D%0Akey=AIza" }, { "name=x" .. pad .. "&$.xgafv=1" },
        { "name=x;oauth_token=ya29.x", { "Content-Type: Application/X-WWW-Form-Urlencoded; charset=UTF-8" } },
        -- HL7v2's and DICOMweb's paths too, whatever the method
        { "key=AIza", nil, "/hl7v2/messages" }, { "key=AIza", nil, "/dicomWeb/studies" },
      }) do
        local r = search(c[1], c[2], c[3])
        assert_envelope(r, 400, "INVALID_ARGUMENT")
        assert.truthy(r.json.error.message:find("in a form body", 1, true), r.body)
      end
      -- a form body that cannot be checked: compressed, without a length, over max_form_size
      local r = search("name=x", { "Content-Type: application/x-www-form-urlencoded", "Content-Encoding: gzip" })
      assert_envelope(r, 400, "INVALID_ARGUMENT")
      r = search("name=" .. string.rep("a", 64 * 1024))
      assert_envelope(r, 413, "INVALID_ARGUMENT")
      assert.truthy(r.json.error.message:find("max_form_size", 1, true), r.body)
      assert.equal(before, #captured())
      assert.equal(tokens, emu:token_requests())
      -- a form that only looks like one goes through, its body byte for byte, from memory or the file
      for _, body in ipairs({ "name=Smith&keyword=1&method=x", "name=Smith" .. pad }) do
        r = search(body)
        assert.equal(200, r.status, r.body .. fhir:log())
        local got = captured()
        assert.equal("POST", got[#got].verb)
        assert.equal("/v1/projects/PROJECT/locations/LOCATION/datasets/DATASET/fhirStores/FHIR/fhir/Patient/_search",
          got[#got].target)
        assert.equal(body, H.unhex(got[#got].body_hex))
      end
      assert.truthy(fhir:log():find("request body is buffered to a temporary file", 1, true), fhir:log())
      -- other bodies are not read: a STOW-RS body that reads as a form streams through
      r = search("key=AIza&$httpMethod=DELETE", { "Content-Type: application/dicom" }, "/dicomWeb/studies")
      assert.equal(200, r.status, r.body)
      -- nor is multipart/form-data: Google takes system parameters from the query and headers only
      r = search('--b\r\nContent-Disposition: form-data; name="key"\r\n\r\nAIza\r\n--b--\r\n',
        { "Content-Type: multipart/form-data; boundary=b" })
      assert.equal(200, r.status, r.body)
    end)

    it("reads a form body without a length (HTTP/1.1 chunked, HTTP/2) up to max_form_size, checked the same", function()
      local before, tokens = #captured(), emu:token_requests()
      local dir = H.tmpdir()
      -- curl sends a body chunked over HTTP/1.1, without a length over HTTP/2, told Transfer-Encoding
      local function search(url, body, h2)
        local file = dir .. "/form"
        H.write_file(file, body)
        local args = { "-X", "POST", "-H", "Content-Type: application/x-www-form-urlencoded",
          "-H", "Transfer-Encoding: chunked", "--data-binary", "@" .. file, url .. "/fhir/Patient/_search" }
        if h2 then table.insert(args, 1, "--http2-prior-knowledge") end
        return H.curl(args)
      end
      local pad = "&name=" .. string.rep("a", 8000) -- past client_body_buffer_size: in a file
      for _, h2 in ipairs({ false, true }) do
        local url = h2 and fhir.h2_url or fhir.url
        for _, body in ipairs({ "name=Smith&$httpMethod=DELETE", "name=x" .. pad .. "&key=AIza" }) do
          local r = search(url, body, h2)
          assert_envelope(r, 400, "INVALID_ARGUMENT")
          assert.truthy(r.json.error.message:find("in a form body", 1, true), r.body)
        end
        -- a little over max_form_size: refused with its length, or as soon as nginx's file has more
        local r = search(url, "name=" .. string.rep("a", 64 * 1024), h2)
        assert_envelope(r, 413, "INVALID_ARGUMENT")
        assert.truthy(r.json.error.message:find("this one has 65541", 1, true)
          or r.json.error.message:find("this one has more than 65536.", 1, true), r.body)
        assert.equal(before, #captured())
        assert.equal(tokens, emu:token_requests())
        for _, body in ipairs({ "name=Smith&keyword=1", "name=Smith" .. pad }) do
          r = search(url, body, h2)
          assert.equal(200, r.status, r.body .. fhir:log())
          local got = captured()
          assert.equal("/v1/projects/PROJECT/locations/LOCATION/datasets/DATASET/fhirStores/FHIR/fhir/Patient/_search",
            got[#got].target)
          assert.equal(body, H.unhex(got[#got].body_hex))
        end
        before = #captured()
      end
      -- far over it: nginx stops reading it (it would else put it all in its temporary file), give or
      -- take what a client on the same machine sends between two looks of the gateway's
      local big = "name=" .. string.rep("a", 64 * 1024 * 1024)
      local r = search(fhir.url, big)
      assert_envelope(r, 413, "INVALID_ARGUMENT")
      assert.truthy(r.json.error.message:find("more than 65536", 1, true), r.body)
      assert.equal(before, #captured())
      local lines = fhir:access_lines()
      local read = tonumber(lines[#lines]:match('"POST /fhir/Patient/_search HTTP/1.1" 413 (%d+)'))
      assert.truthy(read and read < 16 * 1024 * 1024, lines[#lines])
      print(string.format("\n64 MiB chunked form body: %d bytes read before the 413", read))
    end)

    -- spec/support/form_body_client.py: its status (or "none", "closed") and seconds
    local function form_client(args)
      local status, seconds = H.check_run("/usr/bin/python3 " .. H.q(E.support .. "/form_body_client.py") .. " "
        .. args):match("^(%S+) ([%d.]+)")
      return status, tonumber(seconds)
    end

    it("refuses a length-less form body once past max_form_size, not at its end", function()
      local port, run = tonumber(fhir.url:match(":(%d+)$")), form_client
      local before = #captured()
      -- 80000 bytes, the body then left open: the 413 comes while the client waits, not at its end.
      -- What nginx may hold past the cap before the gateway looks: its buffer (4 KiB here) and one
      -- read from the socket; 80000 is past 64 KiB by more than that buffer. (curl, over HTTP/2, sees
      -- the stream reset after the answer and drops the answer: the log says it was the 413.)
      local logged = #fhir:log()
      for _, c in ipairs({ "h1 " .. port .. " /fhir/Patient/_search 80000 16384 5",
        "h2 " .. fhir.h2_url .. "/fhir/Patient/_search 80000 5" }) do
        local got_status, seconds = run(c)
        assert.truthy(got_status == "413" or (got_status == "closed" and c:find("^h2")),
          c .. ": " .. got_status .. " after " .. tostring(seconds) .. " s\n" .. fhir:log())
        assert.truthy(seconds < 2, string.format("%s: the 413 came %.3f s after the last byte", c, seconds))
      end
      assert.truthy(fhir:log():sub(logged + 1):find('413 for POST /fhir/Patient/_search: The gateway reads form '
        .. 'bodies of at most 65536 bytes (max_form_size) to check them; this one has more than 65536., client: '
        .. '127.0.0.1, server: , request: "POST /fhir/Patient/_search HTTP/2.0"', 1, true), fhir:log())
      assert.equal(before, #captured())
    end)

    it("counts a length-less form body's bytes without its chunked framing", function()
      local port, run = tonumber(fhir.url:match(":(%d+)$")), form_client
      local before = #captured()
      -- max_form_size is 64 KiB: 60000 bytes in chunks of one byte are 360 kB on the wire, and pass
      local status = run("h1 " .. port .. " /fhir/Patient/_search 60000 1 0")
      assert.equal("200", status, fhir:log())
      assert.equal(before + 1, #captured())
      local got = captured()
      assert.equal("name=" .. string.rep("a", 59995), H.unhex(got[#got].body_hex))
      -- so do 65536 bytes in chunks of 7 (the cap exactly); one more byte is refused
      assert.equal("200", (run("h1 " .. port .. " /fhir/Patient/_search 65536 7 0")))
      assert.equal("413", (run("h1 " .. port .. " /fhir/Patient/_search 65537 7 0")))
      -- framing for its own sake (100-byte chunk extensions: past 8 times the cap on the wire) too
      assert.equal("413", (run("h1 " .. port .. " /fhir/Patient/_search 10000 1 0 100")))
      assert.equal(before + 2, #captured())
    end)

    it("writes an answer's Content-Encoding into its error log printable only", function()
      H.write_file(answers_file, JSON.encode({ { status = 200, content_type = "application/dicom+json", body = "[]",
        headers = { ["Content-Encoding"] = "br\27[2J\27]0;title\7" } } }))
      local r = post(gw, "/dicomWeb/studies")
      assert.equal(200, r.status, r.body)
      local log = gw:log()
      assert.truthy(log:find("a br\\x1b[2J\\x1b]0;title\\x07 JSON answer", 1, true), log)
      assert.falsy(log:find("[\27\7]"), log)
    end)

    it("passes the client's media types and conditions, nothing else, with the gateway's credential", function()
      local r = post(gw, "/dicomWeb/studies", { "Accept: application/dicom+json", "User-Agent: modality/1.0",
        "If-Match: W/\"1\"", "Cookie: session=abc", "Proxy-Authorization: Basic cHJveHk6cHc=",
        "X-Goog-User-Project: someone-elses-project", "X-Goog-Api-Key: AIza-client", "X-Forwarded-For: 10.9.9.9",
        "Authorization: Bearer client-token", "Connection: keep-alive, X-Internal, Accept-Language",
        "X-Internal: 1", "Accept-Language: fr", "COOKIE: second=1", "x-goog-api-key: AIza-lower" })
      assert.equal(200, r.status, r.body)
      local got = captured()
      local h = got[#got].headers
      assert.equal("application/dicom", h["content-type"])
      assert.equal("application/dicom+json", h["accept"])
      assert.equal("modality/1.0", h["user-agent"])
      assert.equal('W/"1"', h["if-match"])
      assert.truthy(h["authorization"]:match("^Bearer ") and h["authorization"] ~= "Bearer client-token",
        h["authorization"])
      for _, name in ipairs({ "cookie", "proxy-authorization", "x-goog-user-project", "x-goog-api-key",
        "x-forwarded-for", "x-internal", "accept-language" }) do
        assert.is_nil(h[name], name .. ": " .. tostring(h[name]))
      end
      -- The billed project is the gateway's choice when it has one.
      r = post(billed, "/dicomWeb/studies", { "X-Goog-User-Project: someone-elses-project" })
      assert.equal(200, r.status, r.body)
      got = captured()
      assert.equal("gateway-billed", got[#got].headers["x-goog-user-project"])
    end)
  end)

  describe("the example's handler location (/patients/{id}/studies)", function()
    it("reads the store for this machine only", function()
      local emu = N.emulator()
      local sa = emu:service_account()
      local examples = (os.getenv("HC_SOURCE_DIR") or ".") .. "/examples/openresty"
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1,
        edits = { { "content_by_lua_file /etc/healthcare/patient_studies.lua;",
          "content_by_lua_file " .. examples .. "/patient_studies.lua;" } } })
      finally(function()
        gw:stop()
        emu:stop()
      end)
      local url = gw.url .. "/patients/NGX-NOBODY/studies"
      local r = H.curl({ url })
      assert.equal(200, r.status, r.body .. gw:log())
      local reads = emu:stats().store_requests_total
      assert.truthy(reads > 0)
      -- Another address of this host stands for another machine: nginx refuses it.
      r = H.curl({ "--interface", "127.0.0.2", url })
      assert.equal(403, r.status, r.body)
      assert.equal(reads, emu:stats().store_requests_total)
    end)
  end)

  describe("bad input", function()
    local emu
    setup(function() emu = N.emulator() end)
    teardown(function()
      N.stop_all()
    end)

    it("starts without a credentials file, says why in its log and answers 503", function()
      local missing = H.tmpdir() .. "/no-such-key.json"
      local gw = N.gateway({ emulator = emu, key_file = missing })
      finally(function() gw:stop() end)
      local log = gw:log()
      assert.truthy(log:find("has no usable credentials", 1, true), log)
      assert.truthy(log:find("cannot read credentials file '" .. missing .. "': No such file or directory", 1, true),
        log)
      local g = H.gen_dicom({ count = 1 })[1]
      local body, ctype = multipart({ g.path })
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      assert.truthy(r.headers["retry-after"])
      assert.equal(0, emu:token_requests())
      assert.equal(0, emu:stats().store_requests_total)
      -- The key put in place, a reload (HUP) reads it: the same gateway stores.
      local sa = emu:service_account()
      H.check_run("cp " .. H.q(sa.key_file) .. " " .. H.q(missing) .. " && kill -HUP " .. gw.pid)
      local deadline = now() + 10
      repeat
        os.execute("sleep 0.2")
        r = stow(gw, "/dicomWeb/studies", body, ctype)
      until r.status ~= 503 or now() > deadline
      assert.equal(200, r.status, r.body .. gw:log())
      assert.equal(1, emu:token_requests())
    end)

    it("answers 503 at once when the token endpoint is down, and recovers", function()
      local sa = emu:service_account()
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file, token_port = N.free_port() })
      finally(function() gw:stop() end)
      local g = H.gen_dicom({ count = 1 })[1]
      local body, ctype = multipart({ g.path })
      local t0 = os.time()
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      assert.truthy(r.json.error.message:find("could not get an access token", 1, true), r.body)
      -- What failed is for the error log: a client learns nothing of the gateway's credential.
      assert_untold(r, sa)
      assert.truthy(gw:log():find("HTTP 502", 1, true), gw:log())
      assert.equal("2", r.headers["retry-after"])
      assert.truthy(os.time() - t0 <= 3)
      -- Within retry_after, clients get the remembered failure without another try.
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      local log = gw:log()
      assert.truthy(log:find("token request for service account", 1, true), log)
      assert.truthy(log:find("Connection refused", 1, true), log)
      assert.falsy(log:find(sa.private_key_pem:match("\n(%S+)\n"), 1, true))
    end)

    it("refuses to start with retry_after = 0 (a failure remembered for ever), saying why", function()
      local sa = emu:service_account()
      local ok, err = pcall(N.gateway, { emulator = emu, key_file = sa.key_file, configure_extra = "retry_after = 0," })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("bad option 'retry_after' (a number > 0 expected)", 1, true), tostring(err))
    end)

    it("refuses to start with a malformed dicomStore name, saying why", function()
      local sa = emu:service_account()
      local ok, err = pcall(N.gateway, { emulator = emu, key_file = sa.key_file, store = "projects/p/datasets/d" })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("healthcare.ngx.configure: invalid dicomStore name 'projects/p/datasets/d'",
        1, true), tostring(err))
    end)

    it("answers 503 in Google's JSON when the API cannot be reached", function()
      local sa = emu:service_account()
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file, api_port = N.free_port() })
      finally(function() gw:stop() end)
      local g = H.gen_dicom({ count = 1 })[1]
      local body, ctype = multipart({ g.path })
      local before = emu:token_requests()
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      assert.truthy(r.json.error.message:find("cannot reach the Cloud Healthcare API", 1, true), r.body)
      assert.equal(before + 1, emu:token_requests())
    end)

    it("writes a token endpoint's words into its error log printable only", function()
      local sa = emu:service_account()
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file })
      finally(function() gw:stop() end)
      local forged = "\n2026/01/01 00:00:00 [emerg] 1#1: forged line"
      emu:control("faults", { match = "token", status = 400, error = "invalid_grant\27[2J",
        message = "denied\r" .. forged .. "\27]0;title\7" })
      local body, ctype = multipart({ H.gen_dicom({ count = 1 })[1].path })
      assert_envelope(stow(gw, "/dicomWeb/studies", body, ctype), 503, "UNAVAILABLE")
      local log = gw:log()
      assert.truthy(log:find("HTTP 400 invalid_grant\\x1b[2J: denied\\r\\n2026/01/01", 1, true), log)
      assert.falsy(log:find(forged, 1, true), log)
      assert.falsy(log:find("[\27\7\r]"), log)
    end)

    it("answers 503 when the token endpoint fails or hangs, never waits longer than its timeout", function()
      local sa = emu:service_account()
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file })
      finally(function() gw:stop() end)
      local g = H.gen_dicom({ count = 1 })[1]
      local body, ctype = multipart({ g.path })
      emu:control("faults", { match = "token", status = 503, message = "backend trouble" })
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      assert_untold(r, sa)
      assert.truthy(gw:log():find("HTTP 503 temporarily_unavailable: backend trouble", 1, true), gw:log())
      -- A token endpoint that never answers: the token location's proxy_read_timeout (10 s) ends it.
      os.execute("sleep 2.2")   -- the remembered failure expires
      emu:control("faults", { match = "token", delay = 30 })
      local t0 = os.time()
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      local took = os.time() - t0
      assert_envelope(r, 503, "UNAVAILABLE")
      assert_untold(r, sa)
      assert.truthy(gw:log():find("HTTP 504", 1, true), gw:log())
      assert.truthy(took >= 9 and took <= 14, "took " .. took .. " s")
      -- And then it works again.
      os.execute("sleep 2.2")
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert.equal(200, r.status, r.body)
    end)
  end)
end)
