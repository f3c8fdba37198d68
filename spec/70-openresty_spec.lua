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

if not H.need_testbed() then return end
local N = require "support.nginx"

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
      assert.truthy(r.json.error.message:find("HTTP 502", 1, true), r.body)
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

    it("answers 503 when the token endpoint fails or hangs, never waits longer than its timeout", function()
      local sa = emu:service_account()
      local gw = N.gateway({ emulator = emu, key_file = sa.key_file })
      finally(function() gw:stop() end)
      local g = H.gen_dicom({ count = 1 })[1]
      local body, ctype = multipart({ g.path })
      emu:control("faults", { match = "token", status = 503, message = "backend trouble" })
      local r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert_envelope(r, 503, "UNAVAILABLE")
      assert.truthy(r.json.error.message:find("HTTP 503 temporarily_unavailable: backend trouble", 1, true), r.body)
      -- A token endpoint that never answers: the token location's proxy_read_timeout (10 s) ends it.
      os.execute("sleep 2.2")   -- the remembered failure expires
      emu:control("faults", { match = "token", delay = 30 })
      local t0 = os.time()
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      local took = os.time() - t0
      assert_envelope(r, 503, "UNAVAILABLE")
      assert.truthy(r.json.error.message:find("HTTP 504", 1, true), r.body)
      assert.truthy(took >= 9 and took <= 14, "took " .. took .. " s")
      -- And then it works again.
      os.execute("sleep 2.2")
      r = stow(gw, "/dicomWeb/studies", body, ctype)
      assert.equal(200, r.status, r.body)
    end)
  end)
end)
