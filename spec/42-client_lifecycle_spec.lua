-- SPDX-License-Identifier: MIT
-- A client owns its session and its credential, with the credential's own session for token
-- requests: close() closes all three (their sockets are gone from /proc/self/fd), and a closed
-- client or credential says so. One request path for client:send and for client:start / poll /
-- finish: a 401 is answered with one token refresh and one resend on either, and requests that
-- get their 401 together share one refresh (counted as the token requests of a private
-- emulator). on_progress gets one table.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/42-client_lifecycle_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end

local healthcare = require "healthcare"

local E = H.env
local JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

-- This file's own emulator: its token counter and faults are not shared with other files.
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)

local function token_requests() return em:count("token_requests", JWT_GRANT) end

local function faults(rules)
  em:control("faults", { replace = true, rules = rules })
end

local fds = H.open_fds

local function new_client(opts)
  local o = { endpoint = em.endpoint, credentials = em:service_account().key_file, token_cache = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  return assert(healthcare.new(o))
end

-- A GET the emulator forwards to Orthanc: a QIDO-RS search of the store.
local function search_request()
  return { method = "GET", url = em.store_url .. "/studies?limit=1", headers = { "Accept: application/dicom+json" } }
end

describe("client:close", function()
  after_each(function() faults({}) end)

  it("closes the client's session and its credential's session, and the client says it is closed", function()
    local n0 = fds()
    local client = new_client()
    local cred = client:credential()
    local res = assert(client:send(search_request()))
    assert.equal(200, res.status)
    assert.equal(1, cred.refreshes) -- a token came over the credential's own session
    assert.is_true(fds() > n0 + 2, "the credential's session and connections are open")
    client:close()
    assert.equal(n0, fds())
    assert.equal("healthcare.Client (closed)", tostring(client))
    assert.equal("healthcare.Credential service_account (closed)", tostring(cred))
    local ok, err = pcall(function() local _ = client:send(search_request()) end)
    assert.is_false(ok)
    assert.matches("42%-client_lifecycle_spec%.lua:%d+: attempt to use a closed client$", err)
    ok, err = pcall(function() local _ = cred:token() end)
    assert.is_false(ok)
    assert.matches("42%-client_lifecycle_spec%.lua:%d+: attempt to use a closed credential$", err)
    client:close() -- twice is fine
  end)

  it("abandons the requests in flight", function()
    local n0 = fds()
    local client = new_client()
    faults({ { match = "store", delay = 3, times = 1 } })
    local request = assert(client:start(search_request()))
    assert.same({}, client:poll(0.3))
    client:close()
    assert.equal(n0, fds())
    assert.equal(0, (request:progress()))
  end)

  it("closes Application Default Credentials found at the first request", function()
    local sa = em:service_account()
    local n0 = fds()
    local credentials = require "healthcare.auth.credentials"
    local getenv = credentials.getenv
    credentials.getenv = function(name)
      if name == "GOOGLE_APPLICATION_CREDENTIALS" then return sa.key_file end
      return getenv(name)
    end
    local client = assert(healthcare.new { endpoint = em.endpoint })
    local ok, res = pcall(client.send, client, search_request())
    credentials.getenv = getenv
    assert.is_true(ok, tostring(res))
    assert.equal(200, res.status)
    client:close()
    assert.equal(n0, fds())
  end)
end)

describe("one request path for send and start/poll/finish", function()
  after_each(function() faults({}) end)

  it("send answers a 401 with one refresh and one resend", function()
    local client = new_client()
    assert(client:send(search_request()))
    local before = token_requests()
    faults({ { match = "store", status = 401, times = 1, parent = E.store } })
    local res = assert(client:send(search_request()))
    assert.equal(200, res.status)
    assert.equal(1, token_requests() - before)
    -- a second 401 in a row is the answer: one refresh per request, not a loop
    faults({ { match = "store", status = 401, times = 2, parent = E.store } })
    res = assert(client:send(search_request()))
    assert.equal(401, res.status)
    assert.equal(2, token_requests() - before)
    client:close()
  end)

  it("finish answers a 401 the same way: the request is sent again and comes back from poll", function()
    local client = new_client()
    assert(client:send(search_request()))
    local before = token_requests()
    faults({ { match = "store", status = 401, times = 1, parent = E.store } })
    local request = assert(client:start(search_request()))
    local outcomes = {}
    while #outcomes == 0 or outcomes[#outcomes] == false do
      for _, done in ipairs(client:poll(1)) do
        assert.equal(request, done)
        outcomes[#outcomes + 1] = client:finish(done)
      end
    end
    assert.equal(false, outcomes[1]) -- sent again
    assert.equal(200, outcomes[2].status)
    assert.equal(1, token_requests() - before)
    client:close()
  end)

  it("refreshes once for requests that get their 401 together", function()
    local client = new_client()
    assert(client:send(search_request()))
    local before = token_requests()
    faults({ { match = "store", delay = 0.3, status = 401, times = 3, parent = E.store } })
    local left = {}
    for _ = 1, 3 do left[assert(client:start(search_request()))] = true end
    local statuses, resent = {}, 0
    while next(left) do
      for _, done in ipairs(client:poll(1)) do
        local res, err = client:finish(done)
        if res == false then
          resent = resent + 1
        else
          statuses[#statuses + 1] = res and res.status or tostring(err)
          left[done] = nil
        end
      end
    end
    assert.same({ 200, 200, 200 }, statuses)
    assert.equal(3, resent)
    assert.equal(1, token_requests() - before)
    client:close()
  end)
end)

describe("on_progress", function()
  after_each(function() faults({}) end)

  it("gets one table of counters in client:send, and false stops the request", function()
    local client = new_client()
    faults({ { match = "store", delay = 1, times = 1, parent = E.store } })
    local seen = {}
    local req = search_request()
    req.on_progress = function(p)
      seen[#seen + 1] = p
      if #seen == 2 then return false end
    end
    local res, err = client:send(req)
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("aborted", err.status)
    assert.equal(2, #seen)
    for _, p in ipairs(seen) do
      local keys = {}
      for k, v in pairs(p) do
        keys[#keys + 1] = k
        assert.is_number(v)
      end
      table.sort(keys)
      assert.same({ "bytes_received", "bytes_sent", "bytes_to_send" }, keys)
    end
    client:close()
  end)
end)

describe("a call that fails part way", function()
  local CLOSED = "http://127.0.0.1:9/dicom-web" -- nothing listens there in the test bed

  it("returns nil, err, partial from retrieve_*, results:all() and verify, in their results' shape", function()
    -- (one attempt each: a refused connection is tried again after a wait by default)
    local store = assert(healthcare.dicomweb(CLOSED, { retry = { max_attempts = 2, initial = 0 } }))
    local dir = H.tmpdir()
    local res, err, partial = store:retrieve_study("1.2.3", { to = dir })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.same({ files = {}, count = 0, rejected = {}, bytes = 0, retries = 1 }, partial)
    res, err, partial = store:retrieve_frames("1.2.3", "1.2.4", "1.2.5", { 1, 2 }, { to = dir })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.same({ files = {}, count = 0, rejected = {}, bytes = 0, retries = 1 }, partial)
    local results = assert(store:search_studies({ PatientID = "x" }))
    res, err, partial = results:all()
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.same({}, partial)
    assert.equal(err, results.error) -- what each() leaves for a loop, which cannot return it
    -- verify takes entries with `study`, the old name of study_uid: the search was tried
    res, err, partial = store:verify({ { study = "1.2.3", sop_instance_uid = "1.2.3.4", path = "a.dcm" } })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.same({ checked = 0, missing = {} }, partial)
    store:close()
  end)
end)
