-- SPDX-License-Identifier: MIT
-- The library inside OpenResty handlers (healthcare.ngx.transport): Debian's nginx + ngx_http_lua
-- running examples/openresty/nginx.conf with one worker, against a private Google emulator. A
-- handler's call held 2 s by the emulator leaves the worker free for 50 other requests; the same
-- handler with libcurl forced (transport = "curl") blocks them all (the control). The example
-- handler (examples/openresty/patient_studies.lua: a search and each study's metadata), a 100 MB
-- retrieve streamed to a file with flat worker memory, and a call from a phase that cannot yield.
-- nginx runs LuaJIT: this spec runs under nginx's LuaJIT whatever Lua runs busted.
local H = require "helpers"
local N = require "support.nginx"
local E = H.env
local now = require("healthcare.core").now

-- Test locations beside the example's own, in front of its catch-all `location /`.
local HANDLERS = [[
        location = /t/ping {
            content_by_lua_block { ngx.update_time() ngx.print(string.format("%.3f", ngx.now())) }
        }
        location = /t/held {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local g = require("healthcare.ngx").gateway()
                ngx.update_time()
                local started = ngx.now()
                local client = assert(require("healthcare").new { endpoint = g.api_origin .. g.api_path,
                  transport = ngx.var.arg_transport, credentials = require("healthcare.ngx.transport").credential() })
                local store = assert(client:dicom_store(g.parent))
                local results, err = store:search_studies({ PatientID = ngx.var.arg_patient })
                local list = results and results:all()
                err = err or (results and results.error)
                client:close()
                ngx.update_time()
                ngx.print(cjson.encode { started = started, done = ngx.now(), count = list and #list,
                  session = tostring(client._session):match("^[%w.]+"), error = err and tostring(err) })
            }
        }
        location = /t/retrieve {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local g = require("healthcare.ngx").gateway()
                local client = assert(require("healthcare").new { endpoint = g.api_origin .. g.api_path })
                local store = assert(client:dicom_store(g.parent))
                local a = ngx.req.get_uri_args()
                local got, err = store:retrieve_instance(a.study, a.series, a.instance, { to = a.to })
                client:close()
                ngx.print(cjson.encode { files = got and got.files, bytes = got and got.bytes,
                  error = err and tostring(err), status = err and err.status })
            }
        }
        location = /t/same {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local g = require("healthcare.ngx").gateway()
                local a = ngx.req.get_uri_args()
                local client = assert(require("healthcare").new { endpoint = g.api_origin .. g.api_path,
                  transport = a.transport, credentials = require("healthcare.ngx.transport").credential() })
                local store = assert(client:dicom_store(g.parent))
                local out = { session = tostring(client._session):match("^[%w.]+") }
                local got, res = client:call("projects.locations.datasets.dicomStores.get", { name = g.parent })
                out.get = got and { name = got.name, status = res.status } or tostring(res)
                local report, rerr = store:store(a.dir, { concurrency = 3, max_request_instances = 1 })
                out.store = report and { stored = #report.stored, failed = #report.failed } or tostring(rerr)
                local list = assert(store:search_studies({ StudyInstanceUID = a.study })):all()
                out.found = list and #list
                local meta = store:retrieve_metadata(a.study)
                out.metadata = meta and #meta
                local _, merr = store:retrieve_metadata(a.missing)
                out.missing = { kind = merr.kind, status = merr.status, http_status = merr.http_status,
                  not_found = merr.not_found, message = merr.message }
                local _, berr = store:search_studies({ Bogus = "x" })
                out.bad = berr and (berr.kind .. " " .. berr.message)
                local _, cerr = client:call("projects.locations.datasets.dicomStores.get", { name = g.parent .. "-none" })
                out.call_error = cerr and { kind = cerr.kind, status = cerr.status, http_status = cerr.http_status }
                client:close()
                ngx.print(cjson.encode(out))
            }
        }
        location = /t/timer {
            content_by_lua_block {
                local dict = ngx.shared.healthcare
                dict:delete("spec71:timer")
                local patient = ngx.var.arg_patient
                local ok, err = ngx.timer.at(0, function(premature)
                    if premature then return end
                    local g = require("healthcare.ngx").gateway()
                    local client = assert(require("healthcare").new { endpoint = g.api_origin .. g.api_path })
                    local store = assert(client:dicom_store(g.parent))
                    local results, serr = store:search_studies({ PatientID = patient })
                    local list = results and results:all()
                    serr = serr or (results and results.error)
                    dict:set("spec71:timer", list and ("found " .. #list .. " " .. tostring(client._session))
                      or ("error " .. tostring(serr)))
                    client:close()
                end)
                ngx.print(ok and "started" or err)
            }
        }
        location = /t/timer_result {
            content_by_lua_block { ngx.print(ngx.shared.healthcare:get("spec71:timer") or "") }
        }
        location = /t/send {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local a = ngx.req.get_uri_args()
                local client = assert(require("healthcare").new { credentials = false, transport = a.transport,
                  idle_timeout = tonumber(a.idle), insecure = a.insecure == "1", proxy = a.proxy,
                  no_proxy = a.no_proxy, ca_file = a.ca_file })
                local req = { url = a.url, max_response_bytes = tonumber(a.max) }
                if a.dir then req.sink = { dir = a.dir, max_parts = tonumber(a.max_parts) } end
                if a.file then req.sink = { file = a.file } end
                local res, err = client:send(req)
                client:close()
                local parts = res and res.parts
                ngx.print(cjson.encode(res and { status = res.status, bytes = res.bytes, body = #res.body,
                  file = res.file, parts = parts and #parts, sizes = parts and table.concat((function()
                    local t = {} for i, p in ipairs(parts) do t[i] = p.size os.remove(p.path) end return t end)(), ",") }
                  or { kind = err.kind, status = err.status, http_status = err.http_status,
                    kept = err.parts and #err.parts, message = a.message and err.message or nil }))
            }
        }
        location = /t/blocking_credential {
            content_by_lua_block {
                local c, err = require("healthcare").new { credentials = { type = "authorized_user",
                  client_id = "id.apps.googleusercontent.com", client_secret = "not-a-secret", refresh_token = "1//x" } }
                ngx.print(c and "made" or (err.kind .. " " .. err.status .. " " .. err.message))
            }
        }
        location = /t/hostile {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local a = ngx.req.get_uri_args()
                local client = assert(require("healthcare").new { credentials = false, transport = a.transport,
                  timeout = tonumber(a.timeout), proxy = a.proxy })
                ngx.update_time()
                local t0 = ngx.now()
                local req = { url = a.url, timeout = tonumber(a.rtimeout) }
                if a.body_mib then -- a body of that many MiB, one string or read from a file
                  req.method = "POST"
                  req.body = string.rep("x", tonumber(a.body_mib) * 1048576)
                  if a.body_file then
                    local f = assert(io.open(a.body_file, "wb"))
                    f:write(req.body)
                    f:close()
                    req.body = { { file = a.body_file } }
                  end
                end
                ngx.update_time()
                local sent_at = ngx.now() -- the request's deadline starts about here
                local called, res, err = pcall(client.send, client, req)
                ngx.update_time()
                local send_seconds = ngx.now() - sent_at
                client:close()
                ngx.print(cjson.encode { seconds = ngx.now() - t0, send_seconds = send_seconds,
                  status = called and res and res.status or nil, raised = not called and tostring(res) or nil,
                  kind = err and err.kind, estatus = err and err.status, message = err and err.message })
            }
        }
        location = /t/startpoll {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local a = ngx.req.get_uri_args()
                local client = assert(require("healthcare").new { credentials = false, timeout = tonumber(a.timeout) })
                assert(client:start { url = a.url })
                ngx.update_time()
                local t0, out = ngx.now(), { finished = false }
                while ngx.now() - t0 < 8 do
                  local done = client:poll(0.5)
                  ngx.update_time()
                  if #done > 0 then
                    local res, err = client:finish(done[1])
                    out = { finished = true, status = res and res.status, kind = err and err.kind,
                      estatus = err and err.status, message = err and err.message }
                    break
                  end
                end
                out.seconds = ngx.now() - t0
                client:close()
                ngx.print(cjson.encode(out))
            }
        }
        location = /t/store_hostile {
            content_by_lua_block {
                local cjson = require "cjson.safe"
                local a = ngx.req.get_uri_args()
                local store = assert(require("healthcare").dicomweb(a.base, { credentials = false, timeout = 1,
                  retry = { max_attempts = 1 } }))
                ngx.update_time()
                local t0 = ngx.now()
                local report, err = store:store({ a.file }, { concurrency = 2 })
                ngx.update_time()
                store:close()
                ngx.print(cjson.encode { seconds = ngx.now() - t0, error = err and tostring(err),
                  stored = report and #report.stored, failed = report and #report.failed })
            }
        }
        location = /t/basic {
            content_by_lua_block {
                -- user and password come in headers: nginx writes the request line, not those,
                -- into its logs
                local cjson = require "cjson.safe"
                local h = ngx.req.get_headers()
                local store = assert(require("healthcare").dicomweb(ngx.var.arg_base, {
                  basic_auth = { user = h["x-user"], password = h["x-password"] }, retry = { max_attempts = 1 },
                  debug = function(line) ngx.log(ngx.NOTICE, "spec71 debug: ", line) end }))
                local out = { session = tostring(store.client._session):match("^[%w.]+") }
                if ngx.var.arg_file then
                  local report, err = store:store({ ngx.var.arg_file })
                  out.stored = report and #report.stored
                  err = err or (report and report.failed[1] and report.failed[1].reason)
                  out.store_error = err and tostring(err)
                end
                local results, err = store:search_studies({ StudyInstanceUID = ngx.var.arg_study })
                local list = results and results:all()
                err = err or (results and results.error)
                store:close()
                out.count = list and #list
                if err then
                  out.kind, out.status, out.http_status, out.error = err.kind, err.status, err.http_status, tostring(err)
                  out.message = err.message
                end
                ngx.print(cjson.encode(out))
            }
        }
        location = /t/set_wait {
            set_by_lua_block $outcome {
                local client = assert(require("healthcare").new { access_token = "not-a-token",
                  endpoint = "http://127.0.0.1:9/v1" })
                local res, err = client:wait("projects/p/locations/l/datasets/d/operations/42", { poll_interval = 5 })
                return res and "done" or (err.kind .. " " .. err.status .. " " .. err.message)
            }
            return 200 $outcome;
        }
        location = /t/set_phase {
            set_by_lua_block $outcome {
                local g = require("healthcare.ngx").gateway()
                local client = assert(require("healthcare").new { endpoint = g.api_origin .. g.api_path })
                local res, err = client:send { url = g.api_origin .. g.api_path .. "/" .. g.parent .. "/dicomWeb/studies" }
                return (res and "sent " .. res.status) or (err.kind .. " " .. err.status .. " " .. err.message)
            }
            return 200 $outcome;
        }
        location / {]]

local function start(emu, sa)
  local examples = (os.getenv("HC_SOURCE_DIR") or ".") .. "/examples/openresty"
  return N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1,
    edits = { { "        location / {", HANDLERS },
      { "content_by_lua_file /etc/healthcare/patient_studies.lua;",
        "content_by_lua_file " .. examples .. "/patient_studies.lua;" } } })
end

-- n requests to /t/ping one after the other (one curl, one connection): their worker times, and
-- the time (the same clock: seconds since the epoch) the first one was sent.
local function pings(gw, n)
  local args = { "date +%s.%N;", "curl", "-sS", "-m", "20", "-w", "' %{http_code}\\n'" }
  for _ = 1, n do args[#args + 1] = H.q(gw.url .. "/t/ping") end
  local out = H.check_run(table.concat(args, " "))
  local sent = tonumber(out:match("^([%d.]+)\n"))
  out = out:gsub("^[^\n]*\n", "")
  local times = {}
  for t, code in out:gmatch("([%d.]+) (%d+)\n") do
    assert.equal("200", code)
    times[#times + 1] = tonumber(t)
  end
  return times, sent
end

-- Starts /t/held in the background; returns a function that waits for its JSON.
local function held(gw, query)
  local dir = H.tmpdir()
  H.check_run(string.format("curl -sS -m 30 -o %s %s >/dev/null 2>&1 &", H.q(dir .. "/body"),
    H.q(gw.url .. "/t/held?" .. query)))
  return function()
    for _ = 1, 300 do
      local body = H.file_bytes(dir .. "/body")
      local doc = body and H.json.decode(body)
      if doc then return doc end
      os.execute("sleep 0.1")
    end
    error("no answer from /t/held")
  end
end

describe("the library in OpenResty handlers (healthcare.ngx.transport)", function()
  local emu, sa, gw, study
  setup(function()
    emu = N.emulator()
    sa = emu:service_account()
    gw = start(emu, sa)
    study = H.make_study({ patient_id = "NB-" .. math.random(1, 1e9), study_description = "held",
      series = { { modality = "CT", count = 2 }, { modality = "MR", count = 1 } } })
  end)
  teardown(function()
    N.stop_all()
  end)

  it("answers 50 other requests while a handler's call is held 2 s, then the call succeeds", function()
    assert.equal(1, #gw:workers())
    emu:control("faults", { match = "store", delay = 2, times = 1 })
    local wait = held(gw, "patient=" .. study.patient_id)
    os.execute("sleep 0.4")
    local t0 = now()
    local times, sent = pings(gw, 50)
    local took = now() - t0
    local doc = wait()
    assert.truthy(sent > doc.started and sent < doc.done, "the pings were not sent while the call was held")
    assert.is_nil(doc.error)
    assert.equal(1, doc.count)
    assert.equal("healthcare.NgxSession", doc.session)
    assert.truthy(doc.done - doc.started >= 1.9, "the call was not held: " .. (doc.done - doc.started))
    assert.equal(50, #times)
    local inside = 0
    for _, t in ipairs(times) do
      if t > doc.started and t < doc.done then inside = inside + 1 end
    end
    assert.equal(50, inside, "pings answered while the call was held")
    print(string.format("\n50 requests answered in %.3f s while the held call took %.2f s", took, doc.done - doc.started))
  end)

  it("with libcurl forced (the control), the held call blocks the worker: no request answered meanwhile", function()
    emu:control("faults", { match = "store", delay = 2, times = 1 })
    local wait = held(gw, "transport=curl&patient=" .. study.patient_id)
    os.execute("sleep 0.4")
    local times, sent = pings(gw, 50)
    local doc = wait()
    assert.is_nil(doc.error)
    assert.equal(1, doc.count)
    assert.equal("healthcare.Session", doc.session)
    -- Sent while the call was held (well before its end), answered only once it was over.
    assert.truthy(sent > doc.started and sent < doc.done - 0.5, "the pings were not sent while the call was held")
    assert.equal(50, #times)
    for _, t in ipairs(times) do
      assert.truthy(t >= doc.done - 0.01, string.format("a ping at %.3f, before the call ended at %.3f", t, doc.done))
    end
  end)

  it("the example handler: a patient's studies (search, then each study's metadata) as JSON", function()
    local patient = "PS-" .. math.random(1, 1e9)
    local a = H.make_study({ patient_id = patient, study_date = "20230105", study_description = "chest",
      accession_number = "A1", series = { { modality = "CT", count = 2 }, { modality = "PT", count = 1 } } })
    local b = H.make_study({ patient_id = patient, study_date = "20240210",
      series = { { modality = "MR", count = 1 } } })
    local r = H.curl({ gw.url .. "/patients/" .. patient .. "/studies" })
    assert.equal(200, r.status, r.body .. gw:log())
    assert.same({ patient_id = patient, count = 2, studies = {
      { study_uid = a.study_uid, date = "20230105", description = "chest", accession = "A1", series = 2,
        instances = 3, modalities = { "CT", "PT" } },
      { study_uid = b.study_uid, date = "20240210", series = 1, instances = 1, modalities = { "MR" } },
    } }, r.json)
    -- Nobody's studies: an empty list, not an error; a wildcard is refused.
    r = H.curl({ gw.url .. "/patients/NOBODY-" .. math.random(1, 1e9) .. "/studies" })
    assert.equal(200, r.status, r.body)
    assert.equal(0, r.json.count)
    assert.equal("[]", r.body:match('"studies":(%[%])'))
    r = H.curl({ gw.url .. "/patients/A*/studies" })
    assert.equal(400, r.status, r.body)
    -- The API's error comes back as the handler's, with its status.
    emu:control("faults", { match = "store", status = 503, times = 5 })
    r = H.curl({ gw.url .. "/patients/" .. patient .. "/studies" })
    emu:control("faults", { replace = true, rules = {} })
    assert.equal(503, r.status, r.body)
    assert.equal("UNAVAILABLE", r.json.error.status)
    -- the API's words stay in the error log (they may name the gateway's account)
    assert.equal("search failed (the server's error log says why)", r.json.error.message)
    -- The library was loaded in init_by_lua: no handler set a global.
    assert.falsy(gw:log():find("writing a global Lua variable", 1, true), gw:log())
  end)

  it("sends a handler's request again with a fresh gateway token after a 401, once", function()
    local patient = "R401-" .. math.random(1, 1e9)
    H.make_study({ patient_id = patient })
    assert.equal(200, H.curl({ gw.url .. "/patients/" .. patient .. "/studies" }).status)
    -- The emulator forgets every token it issued (and the keys: register ours again).
    emu:control("reset", {})
    emu:control("keys", { kid = sa.kid, client_email = sa.client_email, public_key_pem = sa.public_key_pem })
    local r = H.curl({ gw.url .. "/patients/" .. patient .. "/studies" })
    assert.equal(200, r.status, r.body .. gw:log())
    assert.equal(1, r.json.count)
    assert.equal(1, emu:token_requests())
    local statuses = {}
    for _, q in ipairs(emu:stats().requests or {}) do statuses[#statuses + 1] = q.status end
    assert.equal(401, statuses[1])
  end)

  it("streams a 100 MB retrieve to a file with the worker's memory flat", function()
    local size = 100 * 1000 * 1000
    local g = H.gen_dicom({ count = 1, size = size, frames = 25, fill = "zero" })[1]
    local stored = H.orthanc_put_file(g.path)
    -- nginx's worker runs as www-data: a folder of its own, outside the test's private ones.
    local dir = H.check_run("mktemp -d /tmp/hc-ngx-retrieve.XXXXXX"):match("[^\n]+")
    H.check_run("chmod 777 " .. H.q(dir))
    local out = dir .. "/instance.dcm"
    finally(function()
      H.curl({ "-X", "DELETE", E.orthanc .. "/instances/" .. stored.ID })
      os.remove(g.path)
      H.run("rm -rf " .. H.q(dir))
    end)
    local worker = gw:workers()[1]
    local base = N.rss_kb(worker)
    local samples = H.tmpdir() .. "/rss"
    local url = string.format("%s/t/retrieve?study=%s&series=%s&instance=%s&to=%s", gw.url, g.study_uid,
      g.series_uid, g.sop_instance_uid, out)
    local t0 = now()
    local so, se, code = H.run(table.concat({ H.q(E.support .. "/nginx_rss.sh"), gw.pid, H.q(samples),
      "curl", "-sS", "-m", "300", H.q(url) }, " "))
    local took = now() - t0
    assert.equal(0, code, se)
    local doc = assert(H.json.decode(so), so)
    assert.is_nil(doc.error, doc.error)
    assert.equal(1, #doc.files)
    assert.equal(out, doc.files[1].path)
    assert.equal(g.sop_instance_uid, doc.files[1].sop_instance_uid)
    assert.equal(H.sha256(g.path), H.sha256(out))
    local grew, n = 0, 0
    for line in (H.file_bytes(samples) or ""):gmatch("[^\n]+") do
      local pid, kb = line:match("^(%d+) (%d+)$")
      if tonumber(pid) == worker then
        grew = math.max(grew, tonumber(kb) - base)
        n = n + 1
      end
    end
    assert.truthy(n >= 3, "too few memory samples: " .. n)
    print(string.format("\n%d MB retrieve in a handler in %.1f s: %d RSS samples, worker grew %d kB",
      math.floor(g.size / 1000000), took, n, grew))
    assert.truthy(grew < 5 * 1024, string.format("the worker's RSS grew by %d kB", grew))
  end)

  it("gives the same answers and error values as libcurl: call, store (several in flight), search, metadata", function()
    local outs = {}
    for _, transport in ipairs({ "ngx", "curl" }) do
      local dir = H.check_run("mktemp -d /tmp/hc-ngx-store.XXXXXX"):match("[^\n]+")
      finally(function() H.run("rm -rf " .. H.q(dir)) end)
      local files = H.gen_dicom({ count = 4, dir = dir })
      H.check_run("chmod -R a+rwX " .. H.q(dir))
      local r = H.curl({ string.format("%s/t/same?transport=%s&dir=%s&study=%s&missing=%s", gw.url, transport, dir,
        files[1].study_uid, H.fresh_uid()) })
      assert.equal(200, r.status, r.body .. gw:log())
      outs[transport] = assert(r.json, r.body)
    end
    local ngx_out, curl_out = outs.ngx, outs.curl
    assert.equal("healthcare.NgxSession", ngx_out.session)
    assert.equal("healthcare.Session", curl_out.session)
    ngx_out.session, curl_out.session = nil, nil
    assert.same({ stored = 4, failed = 0 }, ngx_out.store)
    assert.equal(1, ngx_out.found)
    assert.equal(4, ngx_out.metadata)
    assert.equal(N.STORE, ngx_out.get.name)
    assert.same({ kind = "http", status = "NOT_FOUND", http_status = 404, not_found = "study" },
      { kind = ngx_out.missing.kind, status = ngx_out.missing.status, http_status = ngx_out.missing.http_status,
        not_found = ngx_out.missing.not_found })
    assert.truthy(ngx_out.bad:find("^usage "), ngx_out.bad)
    assert.equal(404, ngx_out.call_error.http_status)
    -- Messages name the study each run looked for: the same once that is taken out.
    ngx_out.missing.message = ngx_out.missing.message:gsub("2%.25%.%d+", "UID")
    curl_out.missing.message = curl_out.missing.message:gsub("2%.25%.%d+", "UID")
    assert.same(curl_out, ngx_out)
  end)

  it("runs the same calls from a timer (ngx.timer.at), over cosockets, with the gateway's cached token", function()
    local patient = "TIMER-" .. math.random(1, 1e9)
    H.make_study({ patient_id = patient })
    H.make_study({ patient_id = patient })
    local r = H.curl({ gw.url .. "/t/timer?patient=" .. patient })
    assert.equal("started", r.body)
    local result = ""
    for _ = 1, 100 do
      result = H.curl({ gw.url .. "/t/timer_result" }).body
      if result ~= "" then break end
      os.execute("sleep 0.1")
    end
    assert.truthy(result:find("^found 2 healthcare.NgxSession"), result)
  end)

  it("meets bad answers with the errors libcurl gives: cut, malformed parts, caps, codings, silence", function()
    local dir = H.tmpdir()
    local pid = tonumber(H.check_run(string.format("/usr/bin/python3 %s >%s 2>%s </dev/null & echo $!",
      H.q(E.support .. "/raw_server.py"), H.q(dir .. "/out"), H.q(dir .. "/err"))):match("%d+"))
    local hostile = tonumber(H.check_run(string.format("/usr/bin/python3 %s >%s 2>%s </dev/null & echo $!",
      H.q(E.support .. "/hostile_server.py"), H.q(dir .. "/hout"), H.q(dir .. "/herr"))):match("%d+"))
    local sinkdir = H.check_run("mktemp -d /tmp/hc-ngx-sink.XXXXXX"):match("[^\n]+")
    H.check_run("chmod 777 " .. H.q(sinkdir))
    finally(function()
      os.execute("kill " .. pid .. " " .. hostile .. " 2>/dev/null")
      H.run("rm -rf " .. H.q(sinkdir))
    end)
    local url, hurl
    for _ = 1, 200 do
      url = (H.file_bytes(dir .. "/out") or ""):match("^(http://%S+)\n")
      hurl = (H.file_bytes(dir .. "/hout") or ""):match("^(http://%S+)\n")
      if url and hurl then break end
      os.execute("sleep 0.05")
    end
    assert(url and hurl, "the raw or hostile server did not start")
    local function escape(v)
      return (tostring(v):gsub("[^%w._~-]", function(c) return string.format("%%%02X", c:byte()) end))
    end
    local cases = {
      { "/multipart?sizes=10,0,5000&chunked=1", { dir = sinkdir } },
      { "/multipart?sizes=10,0,5000", { dir = sinkdir } },
      { "/multipart?sizes=10,70000,5&cut=30000", { dir = sinkdir } },
      { "/multipart?sizes=10,70000,5&cut=30000&chunked=1", { dir = sinkdir } },
      { "/multipart?sizes=10,20&badhead=1", { dir = sinkdir } },
      { "/multipart?sizes=1,1,1,1", { dir = sinkdir, max_parts = 2 } },
      { "/dicom?size=100000", { file = sinkdir .. "/one.dcm" } },
      { "/dicom?size=100000&chunked=1&drip=999", {} },
      { "/dicom?size=100000", { max = 1000 } },
      { "/status?code=404", { dir = sinkdir } },
      { "/empty?code=204", {} },
      { "/dicom?size=100000&cut=10&hang=1", { idle = 1 } },
      { hurl .. "/gzip-json/mib=1", {} },
      { hurl .. "/odd-coding", { dir = sinkdir } },
    }
    for _, c in ipairs(cases) do
      local target = c[1]:find("^http") and c[1] or url .. c[1]
      local outs = {}
      for _, transport in ipairs({ "ngx", "curl" }) do
        local q = { "transport=" .. transport, "url=" .. escape(target) }
        for k, v in pairs(c[2]) do q[#q + 1] = k .. "=" .. escape(v) end
        local r = H.curl({ "-m", "30", gw.url .. "/t/send?" .. table.concat(q, "&") })
        assert.equal(200, r.status, r.body .. gw:log())
        outs[transport] = assert(r.json, r.body)
      end
      assert.same(outs.curl, outs.ngx, c[1])
    end
  end)

  it("refuses a credential that would fetch its tokens through libcurl inside nginx", function()
    local r = H.curl({ gw.url .. "/t/blocking_credential" })
    assert.equal(200, r.status, r.body)
    assert.truthy(r.body:find("^usage NO_CREDENTIALS inside nginx, a credential of kind authorized_user would fetch", 1), r.body)
    assert.truthy(r.body:find('require("healthcare.ngx.transport").credential()', 1, true), r.body)
  end)

  it("refuses a call from a phase that cannot yield with a clear error, at once", function()
    local t0 = now()
    local r = H.curl({ gw.url .. "/t/set_phase" })
    assert.equal(200, r.status, r.body .. gw:log())
    assert.truthy(r.body:find("^usage phase "), r.body)
    assert.truthy(r.body:find("nginx's set phase cannot wait for the network", 1, true), r.body)
    assert.truthy(now() - t0 < 2)
  end)

  it("refuses client:wait from a phase that cannot yield at once, before its first sleep", function()
    local t0 = now()
    local r = H.curl({ gw.url .. "/t/set_wait" })
    local took = now() - t0
    assert.equal(200, r.status, r.body .. gw:log())
    assert.truthy(r.body:find("^usage phase "), r.body)
    assert.truthy(r.body:find("nginx's set phase cannot wait", 1, true), r.body)
    -- poll_interval is 5 s: a sleep before the first poll would have held the worker that long
    assert.truthy(took < 2.5, string.format("the worker was held %.1f s", took))
  end)

  describe("against hostile answers (spec/support/hostile_lines.py)", function()
    local hurl, stop
    local function esc(v)
      return (tostring(v):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
    end
    -- /t/hostile's JSON for a request of url (its query args as a table) under one transport.
    local function hostile(transport, url, args)
      local q = { "transport=" .. transport, "url=" .. esc(url) }
      for k, v in pairs(args or {}) do q[#q + 1] = k .. "=" .. esc(v) end
      local r = H.curl({ "-m", "60", gw.url .. "/t/hostile?" .. table.concat(q, "&") })
      assert.equal(200, r.status, r.body .. gw:log())
      return assert(r.json, r.body)
    end
    setup(function()
      hurl, stop = H.start_server("hostile lines server", "/usr/bin/python3 "
        .. H.q(E.support .. "/hostile_lines.py"), H.tmpdir())
    end)
    teardown(function()
      if stop then stop() end
    end)

    it("cuts a line without end (status, header, trailer, chunk size, a proxy's CONNECT answer) at its cap", function()
      local worker = gw:workers()[1]
      local too_large = "the answer's header (or trailer) lines are larger than 262144 bytes"
      for _, c in ipairs({
        { "/long-status", "response_too_large", too_large },
        { "/long-header", "response_too_large", too_large },
        { "/long-trailer", "response_too_large", too_large },
        { "/long-chunk", "recv", "a chunk-size line longer than 4096 bytes" },
      }) do
        local out = hostile("ngx", hurl .. c[1] .. "?mib=8")
        assert.same({ "transport", c[2] }, { out.kind, out.estatus }, c[1] .. ": " .. H.json.encode(out))
        assert.truthy(out.message:find(c[3], 1, true), out.message)
      end
      -- libcurl counts a trailer the same way (a giant header line it refuses on its own terms)
      local curl = hostile("curl", hurl .. "/long-trailer?mib=8")
      assert.same({ "transport", "response_too_large" }, { curl.kind, curl.estatus }, H.json.encode(curl))
      local out = hostile("ngx", "https://localhost:9/", { proxy = hurl })
      assert.same({ "transport", "proxy" }, { out.kind, out.estatus }, H.json.encode(out))
      assert.truthy(out.message:find("header past 65536 bytes", 1, true), out.message)
      -- the same worker, still serving
      assert.same({ worker }, gw:workers())
      assert.equal(200, H.curl({ gw.url .. "/t/ping" }).status)
    end)

    it("ends a call at its timeout even while bytes trickle in (body, trailer), as libcurl does", function()
      for _, path in ipairs({ "/drip-trailer?n=20&every=0.5", "/drip?n=20&every=0.5" }) do
        local outs = {}
        for _, transport in ipairs({ "ngx", "curl" }) do
          local out = hostile(transport, hurl .. path, { rtimeout = 2 })
          assert.same({ "transport", "timeout" }, { out.kind, out.estatus }, path .. " " .. transport .. ": "
            .. H.json.encode(out))
          -- the server takes 10 s to send it all
          assert.truthy(out.seconds < 6, string.format("%s over %s took %.1f s", path, transport, out.seconds))
          outs[transport] = out
        end
        assert.truthy(outs.ngx.message:find("not done within the timeout of 2 s", 1, true), outs.ngx.message)
      end
    end)

    it("ends a call at its timeout while the server does not read the body, or reads it slowly (string, file)", function()
      -- nginx's worker writes the file there
      local dir = H.check_run("mktemp -d /tmp/hc-ngx-body.XXXXXX"):match("[^\n]+")
      finally(function() H.run("rm -rf " .. H.q(dir)) end)
      H.check_run("chmod a+rwx " .. H.q(dir))
      local file = dir .. "/body"
      -- /hang reads the head, then nothing more for 30 s; /slow-read takes 64 MiB in about 13 s,
      -- and nginx's send timeout starts again each time bytes move (at 16 KiB every 0.5 s a 64 KiB
      -- piece would take 2 s to drain). The time is the send's own, from just before client:send
      -- (the 64 MiB string and file are made before it): at most 0.15 s past the 2 s timeout.
      for _, path in ipairs({ "/hang", "/slow-read?kib=256&every=0.05", "/slow-read?kib=16&every=0.5" }) do
        for _, extra in ipairs({ { body_mib = 64 }, { body_mib = 64, body_file = file } }) do
          extra.rtimeout = 2
          local what = path .. (extra.body_file and " (a file)" or " (a string)")
          local out = hostile("ngx", hurl .. path, extra)
          assert.same({ "transport", "timeout" }, { out.kind, out.estatus }, what .. ": " .. H.json.encode(out))
          assert.truthy(out.message:find("not done within the timeout of 2 s", 1, true), out.message)
          assert.truthy(out.send_seconds >= 2 and out.send_seconds < 2.15,
            string.format("%s: the send took %.3f s", what, out.send_seconds))
        end
      end
    end)

    it("takes healthcare.new's timeout, in send and in a started request (its light thread)", function()
      for _, path in ipairs({ "/hang", "/drip?n=20&every=0.5", "/drip?n=20&every=0.5&close=1" }) do
        local out = hostile("ngx", hurl .. path, { timeout = 2 })
        assert.same({ "transport", "timeout" }, { out.kind, out.estatus }, path .. ": " .. H.json.encode(out))
        assert.truthy(out.message:find("timeout of 2 s", 1, true), out.message)
        assert.truthy(out.seconds < 6, string.format("%s took %.1f s", path, out.seconds))
      end
      -- a started request's failure comes back from poll() (the handler gives up after 8 s)
      local r = H.curl({ "-m", "30", gw.url .. "/t/startpoll?timeout=1&url=" .. esc(hurl .. "/drip?n=20&every=0.5&close=1") })
      assert.equal(200, r.status, r.body .. gw:log())
      assert.is_true(r.json.finished, r.body)
      assert.same({ "transport", "timeout" }, { r.json.kind, r.json.estatus }, r.body)
      -- store's requests in flight (light threads) fail and are reported, the store returns
      local dir = H.check_run("mktemp -d /tmp/hc-ngx-hostile.XXXXXX"):match("[^\n]+")
      finally(function() H.run("rm -rf " .. H.q(dir)) end)
      local files = H.gen_dicom({ count = 1, dir = dir })
      H.check_run("chmod -R a+rwX " .. H.q(dir))
      r = H.curl({ "-m", "30", gw.url .. "/t/store_hostile?base=" .. esc(hurl .. "/drip-close") .. "&file="
        .. esc(files[1].path) })
      assert.equal(200, r.status, r.body .. gw:log())
      assert.is_nil(r.json.error, r.body)
      assert.same({ 0, 1 }, { r.json.stored, r.json.failed }, r.body)
      assert.truthy(r.json.seconds < 6, r.body)
    end)

    it("refuses a URL with CR, LF or NUL as libcurl does (raised), and a space or control character", function()
      local injected = hurl .. "/x HTTP/1.1\r\nX-Injected: 1\r\nX-Pad:"
      local raised = {}
      for _, transport in ipairs({ "ngx", "curl" }) do
        local out = hostile(transport, injected)
        assert.truthy(out.raised, H.json.encode(out))
        raised[transport] = out.raised:gsub("^[^:]*:%d+: ", "")
        for _, bad in ipairs({ hurl .. "/a b", hurl .. "/a\tb", hurl .. "/a\127b" }) do
          out = hostile(transport, bad)
          assert.same({ "transport", "url" }, { out.kind, out.estatus }, transport .. " " .. H.json.encode(out))
        end
      end
      assert.equal("bad argument #1 to 'request' (option 'url' contains CR, LF or NUL)", raised.ngx)
      assert.equal(raised.curl, raised.ngx)
      -- none of them reached the server
      local seen = H.curl({ hurl .. "/seen" })
      for _, head in ipairs(assert(seen.json, seen.body)) do
        assert.falsy(head:find("X-Injected", 1, true) or head:find("^GET /a[%s\127]"), head)
      end
    end)
  end)

  describe("against a DICOMweb server with Basic authentication (Orthanc, as spec 97 runs it)", function()
    local core = require "healthcare.core"
    local USER, PASSWORD, WRONG = "alice", "pw-" .. core.random_hex(8), "wrong-" .. core.random_hex(8)
    local orthanc = {}
    setup(function()
      local dir = H.tmpdir()
      local out, pidfile = dir .. "/orthanc.out", dir .. "/orthanc.pid"
      H.check_run("( /usr/bin/python3 " .. H.q(E.support .. "/orthanc.py") .. " --workdir "
        .. H.q(dir .. "/orthanc") .. " --auth " .. H.q(USER .. ":" .. PASSWORD) .. " >" .. H.q(out) .. " 2>"
        .. H.q(dir .. "/orthanc.err") .. " & echo $! >" .. H.q(pidfile) .. " ) >/dev/null 2>&1")
      orthanc.pid = assert(H.wait_for(10, function() return tonumber((H.file_bytes(pidfile) or ""):match("%d+")) end))
      orthanc.url = H.wait_for(60, function() return (H.file_bytes(out) or ""):match("^(http://[^\n]+)\n{") end)
      assert(orthanc.url, "Orthanc did not start: " .. tostring(H.file_bytes(dir .. "/orthanc.err")))
    end)
    teardown(function()
      if orthanc.pid then H.run("kill -TERM " .. orthanc.pid) end
    end)

    local function basic(password, query)
      local r = H.curl({ "-m", "60", "-H", "X-User: " .. USER, "-H", "X-Password: " .. password,
        gw.url .. "/t/basic?base=" .. orthanc.url .. "/dicom-web" .. (query or "") })
      assert.equal(200, r.status, r.body .. gw:log())
      return assert(r.json, r.body)
    end

    it("stores and searches with basic_auth over cosockets; a refused password is never shown", function()
      local dir = H.check_run("mktemp -d /tmp/hc-ngx-basic.XXXXXX"):match("[^\n]+")
      finally(function() H.run("rm -rf " .. H.q(dir)) end)
      local f = H.gen_dicom({ count = 1, dir = dir })[1]
      H.check_run("chmod -R a+rwX " .. H.q(dir))
      local out = basic(PASSWORD, "&file=" .. f.path .. "&study=" .. f.study_uid)
      assert.same({ session = "healthcare.NgxSession", stored = 1, count = 1 }, out)
      -- the server refuses a wrong password: 401, as under libcurl
      out = basic(WRONG, "&file=" .. f.path .. "&study=" .. f.study_uid)
      assert.equal(401, out.http_status, H.json.encode(out))
      assert.equal(0, out.stored, H.json.encode(out))
      assert.truthy(out.store_error:find("401", 1, true), out.store_error)
      -- the debug lines went to the error log: the header is there, its value is not
      local log = gw:log()
      assert.truthy(log:find("spec71 debug: > Authorization: ", 1, true), log)
      local secrets = { PASSWORD, WRONG }
      for _, pw in ipairs({ PASSWORD, WRONG }) do
        secrets[#secrets + 1] = H.check_run("printf %s " .. H.q(USER .. ":" .. pw) .. " | base64 -w0")
      end
      for _, secret in ipairs(secrets) do
        assert.is_nil(log:find(secret, 1, true), "the error log shows a secret")
        assert.is_nil(out.error:find(secret, 1, true), out.error)
        assert.is_nil(out.message:find(secret, 1, true), out.message)
        assert.is_nil(out.store_error:find(secret, 1, true), out.store_error)
      end
    end)
  end)

  describe("over TLS (nginx's lua_ssl_trusted_certificate)", function()
    local tls, gw2
    setup(function()
      tls = require("support.tls_server").start { upstream = emu.url }
      -- Trusts a CA that did not sign the server's certificate.
      gw2 = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1,
        edits = { { "        location / {", HANDLERS },
          { "lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
            "lua_ssl_trusted_certificate " .. tls.other_ca_file .. ";" } } })
    end)
    teardown(function()
      if tls then tls:stop() end
    end)

    local function send(query)
      local r = H.curl({ "-m", "30", gw2.url .. "/t/send?message=1&url="
        .. (tls.url .. "/v1/" .. N.STORE .. "/dicomWeb/studies"):gsub(":", "%%3A") .. query })
      assert.equal(200, r.status, r.body .. gw2:log())
      return assert(r.json, r.body)
    end

    it("verifies the server's certificate by default, and refuses one it cannot trust", function()
      local out = send("")
      assert.equal("transport", out.kind)
      assert.equal("tls", out.status)
      assert.truthy(out.message:find("certificate", 1, true), out.message)
      assert.is_nil(out.message:find("Bearer", 1, true))
    end)

    it("checks the certificate's names too: trusted CA, but the host (an IP address) not among its DNS names", function()
      local gw3 = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1,
        edits = { { "        location / {", HANDLERS },
          { "lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
            "lua_ssl_trusted_certificate " .. tls.ca_file .. ";" } } })
      finally(function() gw3:stop() end)
      local r = H.curl({ "-m", "30", gw3.url .. "/t/send?message=1&url="
        .. (tls.url .. "/v1/" .. N.STORE .. "/dicomWeb/studies"):gsub(":", "%%3A") })
      -- The CA is trusted: the name is what fails ("certificate host mismatch" in the message or,
      -- when resty.core raises instead of returning it, "does not match host" in nginx's error log).
      assert.equal("tls", r.json.status, r.body)
      assert.truthy(r.json.message:find("certificate", 1, true), r.json.message)
      local log = gw3:log()
      assert.truthy(r.json.message:find("host mismatch", 1, true) or log:find("certificate does not match host", 1, true),
        r.json.message)
    end)

    it("speaks HTTP over TLS (insecure = true: no verification), a connection kept between requests", function()
      for _ = 1, 2 do
        local out = send("&insecure=1")
        assert.equal(401, out.status)    -- no credentials sent: the emulator's answer, through TLS
      end
    end)
  end)

  describe("through a proxy (Debian's tinyproxy), as the libcurl transport goes", function()
    local proxy = require "support.proxy"
    local tls, gw4, p, ca_file
    local function esc(v)
      return (v:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
    end
    setup(function()
      tls = require("support.tls_server").start { upstream = emu.url }
      p = proxy.start()
      -- libcurl reads its CA file in the worker, which runs as nobody: a copy it can read
      ca_file = "/tmp/hc-spec71-ca-" .. math.random(1, 1e9) .. ".pem"
      H.write_file(ca_file, H.file_bytes(tls.ca_file))
      H.check_run("chmod 0644 " .. H.q(ca_file))
      gw4 = N.gateway({ emulator = emu, key_file = sa.key_file, workers = 1,
        edits = { { "        location / {", HANDLERS },
          { "lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;",
            "lua_ssl_trusted_certificate " .. tls.ca_file .. ";" } } })
    end)
    teardown(function()
      for _, x in ipairs({ gw4, p, tls }) do x:stop() end
      if ca_file then os.remove(ca_file) end
    end)

    -- /t/send of url through proxy_url (extra: more query) under one transport: its JSON.
    local function send(transport, url, proxy_url, extra)
      local r = H.curl({ "-m", "30", gw4.url .. "/t/send?message=1&transport=" .. transport .. "&ca_file="
        .. esc(ca_file) .. "&proxy=" .. esc(proxy_url) .. "&url=" .. esc(url) .. (extra or "") })
      assert.equal(200, r.status, r.body .. gw4:log())
      return assert(r.json, r.body)
    end
    -- The same under both transports, with the message left out of the comparison.
    local function both(url, proxy_url, extra)
      local outs = {}
      for _, transport in ipairs({ "ngx", "curl" }) do
        outs[transport] = send(transport, url, proxy_url, extra)
      end
      local messages = { ngx = outs.ngx.message, curl = outs.curl.message }
      outs.ngx.message, outs.curl.message = nil, nil
      assert.same(outs.curl, outs.ngx)
      return outs.ngx, messages
    end

    it("https through a CONNECT tunnel, the server's certificate verified for its name (the proxy resolves it)", function()
      local target = "localhost:" .. tls.port
      local before = p:count("CONNECT")
      local out = both("https://" .. target .. "/v1/" .. N.STORE .. "/dicomWeb/studies", p.url)
      assert.equal(401, out.status) -- the emulator's answer, through the tunnel (no credentials sent)
      assert.equal(before + 2, p:count("CONNECT"))
      local seen = 0
      for _, q in ipairs(p:requests()) do if q.method == "CONNECT" and q.target == target then seen = seen + 1 end end
      assert.equal(2, seen)
    end)

    it("plain http as an absolute-form request to the proxy; NO_PROXY goes around it", function()
      local url = emu.url .. "/v1/" .. N.STORE .. "/dicomWeb/studies"
      local before = p:count()
      local out = both(url, p.url)
      assert.equal(401, out.status)
      assert.equal(before + 2, p:count())
      local last = p:requests()[p:count()]
      assert.equal("GET", last.method)
      assert.equal(url, last.target)
      out = both(url, p.url, "&no_proxy=127.0.0.1")
      assert.equal(401, out.status)
      assert.equal(before + 2, p:count()) -- direct: the proxy saw nothing more
    end)

    it("a proxy that refuses the tunnel, or a password: status 'proxy' under both, no secret shown", function()
      local q = proxy.start { connect_ports = { 443 } }
      local password = "pw-" .. math.random(1, 1e6)
      local a = proxy.start { user = "alice", password = password }
      finally(function() q:stop() a:stop() end)
      local url = "https://localhost:" .. tls.port .. "/v1/" .. N.STORE .. "/dicomWeb/studies"
      local out, messages = both(url, q.url)
      assert.same({ "transport", "proxy" }, { out.kind, out.status })
      assert.truthy(messages.ngx:find("CONNECT", 1, true), messages.ngx)
      -- the right password passes, a wrong one is refused (407); the password is never shown
      out = both(url, "http://alice:" .. password .. "@" .. a.url:match("//(.*)$"))
      assert.equal(401, out.status)
      out, messages = both(url, "http://alice:wrong-" .. password .. "@" .. a.url:match("//(.*)$"))
      assert.same({ "transport", "proxy" }, { out.kind, out.status })
      -- (tinyproxy answers a wrong password with 401, not 407)
      assert.truthy(messages.ngx:find("answered CONNECT localhost:%d+ with 40[17]"), messages.ngx)
      for _, m in pairs(messages) do assert.is_nil(m:find(password, 1, true), m) end
    end)

    it("an https:// proxy, or one that is no host[:port], is refused by name inside nginx (usage)", function()
      local out = send("ngx", "https://localhost:" .. tls.port .. "/", "https://127.0.0.1:9")
      assert.same({ "usage", "proxy" }, { out.kind, out.status })
      assert.truthy(out.message:find("http:// only", 1, true), out.message)
      out = send("ngx", "https://localhost:" .. tls.port .. "/", "http://u:p@:8080")
      assert.same({ "usage", "proxy" }, { out.kind, out.status })
      assert.truthy(out.message:find("is not a host[:port]", 1, true), out.message)
      assert.is_nil(out.message:find("u:p", 1, true), out.message)
    end)

    it("a hostile proxy: an answer that is not HTTP, or a header without end, is cut (status 'proxy')", function()
      for _, c in ipairs({ { "garbage", "did not answer CONNECT in HTTP" }, { "endless", "header past 65536 bytes" } }) do
        local dir = H.tmpdir()
        local url, stop = H.start_server("hostile proxy", "/usr/bin/python3 "
          .. H.q(E.support .. "/hostile_proxy.py") .. " " .. c[1], dir)
        finally(stop)
        local out = send("ngx", "https://localhost:" .. tls.port .. "/", url)
        assert.same({ "transport", "proxy" }, { out.kind, out.status }, c[1])
        assert.truthy(out.message:find(c[2], 1, true), out.message)
        stop()
      end
    end)
  end)
end)
