-- SPDX-License-Identifier: MIT
-- Retries of store:store (healthcare.dicomweb.batch) against the emulator's fault injection, in front of
-- the test bed's real Orthanc: 503 twice then success, 429 with Retry-After: 1 and with
-- RetryInfo, a connection dropped mid-body, a server slower than the timeout, a token that
-- expires mid-batch (service account, short lifetime, and a 401), the attempt limit, and the
-- statuses that must never be retried. Each time every instance is stored exactly once and the
-- report's retry count equals the faults injected.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/60-retry_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- This file sets the emulator's fault rules and token lifetime: a private emulator keeps other spec files, run in
-- parallel by ctest, from seeing (or consuming) them.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local core = require "healthcare.core"
local healthcare = require "healthcare"

local E = H.env
local JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
-- Short waits: backoff starts at 10 ms, so a wait of a second can only come from the server.
local FAST = { initial = 0.01, multiplier = 2, max_delay = 5, max_attempts = 5 }

local function client(opts)
  opts = opts or {}
  local o = { endpoint = E.endpoint, access_token = E.token }
  for k, v in pairs(opts) do o[k] = v end
  if o.credentials then o.access_token = nil end
  local c = assert(healthcare.new(o))
  return c, assert(c:dicom_store(E.store))
end

-- Every generated file stored exactly once: once in the report, once in Orthanc.
local function assert_stored_once(files, report)
  assert.equal(0, #report.failed, report.failed[1] and report.failed[1].reason)
  assert.equal(#files, #report.stored)
  local seen = {}
  for _, r in ipairs(report.stored) do
    assert.is_nil(seen[r.sop_instance_uid], "reported twice")
    seen[r.sop_instance_uid] = true
  end
  local held = H.orthanc_sops(files[1].study_uid)
  for _, f in ipairs(files) do
    assert.truthy(seen[f.sop_instance_uid])
    assert.equal(1, held[f.sop_instance_uid])
  end
end

local function paths(files)
  local out = {}
  for i, f in ipairs(files) do out[i] = f.path end
  return out
end

local function fired()
  return H.emulator_stats().faults_fired
end

-- One generator run for the whole file (starting Python with pydicom costs about a second);
-- each test takes fresh instances from the pool.
local pool, used = nil, 0
local function take(n)
  pool = pool or H.gen_dicom({ count = 50, size = 3000 })
  local out = {}
  for i = 1, n do out[i] = assert(pool[used + i], "pool exhausted") end
  used = used + n
  return out
end

describe("store retries", function()
  after_each(function()
    H.emulator_faults({})
    H.emulator_control("config", { expires_in = 3600 })
  end)

  it("stores everything after 503 twice, with two retries", function()
    local files = take(6)
    local c, st = client()
    H.emulator_faults({ { status = 503, times = 2 } })
    local before = fired()
    local report = assert(st:store(paths(files), { retry = FAST, max_request_instances = 2, concurrency = 2 }))
    assert_stored_once(files, report)
    assert.equal(2, fired() - before)
    assert.equal(2, report.retries)
    assert.equal(5, report.requests)
    c:close()
  end)

  for _, case in ipairs({
    { name = "Retry-After: 1", rule = { status = 429, retry_after = 1 } },
    { name = "RetryInfo retryDelay 1s", rule = { status = 429, retry_delay = "1s" } },
    { name = "Retry-After: 1 on a 503", rule = { status = 503, retry_after = 1 } },
  }) do
    it("waits as the server asks (" .. case.name .. ") before retrying", function()
      local files = take(3)
      local c, st = client()
      H.emulator_faults({ case.rule })
      local t0 = core.now()
      local report = assert(st:store(paths(files), { retry = FAST, concurrency = 1 }))
      local elapsed = core.now() - t0
      assert_stored_once(files, report)
      assert.equal(1, report.retries)
      assert.is_true(elapsed >= 1.0, string.format("retried after %.3f s", elapsed))
      assert.is_true(elapsed < 4, string.format("took %.3f s", elapsed))
      c:close()
    end)
  end

  it("sends again, from disk, after the connection is dropped mid-body", function()
    local files = take(4)
    local c, st = client()
    H.emulator_faults({ { drop_after_bytes = 2500 } })
    local before = H.emulator_stats()
    local report = assert(st:store(paths(files), { retry = FAST, concurrency = 1 }))
    local after = H.emulator_stats()
    assert_stored_once(files, report)
    assert.equal(1, report.retries)
    assert.equal(1, (after.store_requests.dropped or 0) - (before.store_requests.dropped or 0))
    for _, f in ipairs(files) do
      assert.equal(H.sha256(f.path), H.sha256_string(H.orthanc_instance_file(f.sop_instance_uid)))
    end
    c:close()
  end)

  it("gives up on a server slower than the timeout and sends again", function()
    local files = take(3)
    local c, st = client({ timeout = 1 })
    H.emulator_faults({ { delay = 2 } })
    local t0 = core.now()
    local report = assert(st:store(paths(files), { retry = FAST, concurrency = 1 }))
    assert_stored_once(files, report)
    assert.equal(1, report.retries)
    assert.equal(2, report.requests)
    assert.is_true(core.now() - t0 < 1.9, "waited for the slow answer")
    c:close()
  end)

  it("keeps storing when the token expires mid-batch (refreshes, and one 401 resent with a new token)", function()
    H.emulator_control("config", { expires_in = 2 })   -- refreshed after 1 s (half its life)
    local sa = H.service_account()
    local files = take(8)
    local c, st = client({ credentials = sa.key_file, token_cache = false })
    H.emulator_faults({ { delay = 0.4, times = 3 }, { status = 401, times = 1 }, { delay = 0.4, times = 5 } })
    local stats0 = H.emulator_stats()
    local report = assert(st:store(paths(files), { retry = FAST, concurrency = 1, max_request_instances = 1 }))
    local stats1 = H.emulator_stats()
    assert_stored_once(files, report)
    assert.equal(0, report.retries)          -- a 401 is a refresh, not a retry
    assert.equal(9, report.requests)
    assert.equal(9, stats1.faults_fired - stats0.faults_fired)
    local grants = (stats1.token_requests[JWT_GRANT] or 0) - (stats0.token_requests[JWT_GRANT] or 0)
    assert.is_true(grants >= 3, grants .. " tokens")  -- the first, at least one refresh, the 401's
    assert.equal(grants, c:credential().refreshes)
    assert.equal((stats0.auth_kinds.expired_token or 0), (stats1.auth_kinds.expired_token or 0))
    c:close()
  end)

  it("stops after max_attempts and reports the instances as failed", function()
    local files = take(2)
    local c, st = client()
    H.emulator_faults({ { status = 503, times = 3, message = "backend overloaded" } })
    local report = assert(st:store(paths(files), { retry = { initial = 0.01, max_attempts = 3 } }))
    assert.equal(0, #report.stored)
    assert.equal(2, #report.failed)
    assert.equal(2, report.retries)
    assert.equal(3, report.requests)
    assert.equal("StoreInstances: HTTP 503 UNAVAILABLE: backend overloaded (after 3 attempts)", report.failed[1].reason)
    assert.is_nil(H.orthanc_find_instance(files[1].sop_instance_uid))
    c:close()
  end)

  it("does not wait for a retry that would start past the deadline", function()
    local files = take(2)
    local c, st = client()
    -- The server asks for 30 s; the deadline is 2 s: failing now beats sleeping 30 s for nothing.
    H.emulator_faults({ { status = 429, retry_after = 30, times = 1, message = "slow down" } })
    local t0 = core.now()
    local report = assert(st:store(paths(files), { retry = { initial = 0.01, max_delay = 60, deadline = 2 } }))
    local elapsed = core.now() - t0
    assert.same({ 0, 2, 0, 1 }, { #report.stored, #report.failed, report.retries, report.requests })
    assert.truthy(report.failed[1].reason:find("past the 2 s retry deadline", 1, true), report.failed[1].reason)
    assert.is_true(elapsed < 20, string.format("waited %.1f s", elapsed))
    assert.is_nil(H.orthanc_find_instance(files[1].sop_instance_uid))
    c:close()
  end)

  for _, status in ipairs({ 400, 403, 404, 409, 413 }) do
    it("never retries HTTP " .. status, function()
      local files = take(2)
      local c, st = client()
      H.emulator_faults({ { status = status, times = 1 } })
      local report = assert(st:store(paths(files), { retry = FAST }))
      assert.same({ 0, 2, 0, 1 }, { #report.stored, #report.failed, report.retries, report.requests })
      assert.truthy(report.failed[1].reason:find("HTTP " .. status, 1, true), report.failed[1].reason)
      c:close()
    end)
  end

  it("never retries a 401 it cannot refresh (a static token)", function()
    local files = take(1)
    local c, st = client()
    H.emulator_faults({ { status = 401, times = 1 } })
    local report = assert(st:store(paths(files), { retry = FAST }))
    assert.same({ 0, 1, 0, 1 }, { #report.stored, #report.failed, report.retries, report.requests })
    c:close()
  end)
end)
