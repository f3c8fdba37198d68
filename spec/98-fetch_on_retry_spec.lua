-- SPDX-License-Identifier: MIT
-- store:fetch's on_retry(err, seconds, attempt), as search_* and retrieve_* have it: told before
-- each wait for another attempt, with the failure (an answer such as a 503 with Retry-After made
-- the error value it is, or the transport's error), the wait and the number of the attempt to
-- come; the answer fetch returns is still the last attempt's raw response.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/98-fetch_on_retry_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- Fault rules are consumed by whoever asks first: a private emulator keeps other spec files out.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local core = require "healthcare.core"
local healthcare = require "healthcare"
local E = H.env

-- Short waits: backoff starts at 10 ms, so a wait of a second can only come from the server.
local FAST = { initial = 0.01, multiplier = 2, max_delay = 0.05, max_attempts = 5 }

describe("store:fetch's on_retry", function()
  local client, store
  setup(function()
    client = assert(healthcare.new { endpoint = E.endpoint, access_token = E.token, retry = FAST })
    store = assert(client:dicom_store(E.store))
  end)
  teardown(function() client:close() end)
  after_each(function() H.emulator_faults({}) end)

  it("is told of each wait before it: a timeout, a Retry-After answer as the error it is, a 429", function()
    H.emulator_faults({
      { http_method = "GET", path = "^studies$", delay = 1 }, -- past the fetch's timeout
      { http_method = "GET", path = "^studies$", status = 503, retry_after = "1", message = "busy" },
      { http_method = "GET", path = "^studies$", status = 429, message = "slow down" },
    })
    local told = {}
    local t0 = core.now()
    local res = assert(store:fetch("studies", { query = "PatientID=" .. H.fresh_id("nobody"), timeout = 0.3,
      on_retry = function(err, seconds, attempt)
        told[#told + 1] = { kind = err.kind, status = err.status, text = tostring(err), retry_after = err.retry_after,
          long = seconds >= 1, attempt = attempt }
      end }))
    assert.equal(200, res.status)
    assert.is_true(core.now() - t0 >= 1.3)
    assert.equal(3, #told)
    assert.same({ "transport", "timeout", false, 2 }, { told[1].kind, told[1].status, told[1].long, told[1].attempt })
    assert.same({ kind = "http", status = "UNAVAILABLE", text = "GET studies: HTTP 503 UNAVAILABLE: busy",
      retry_after = 1, long = true, attempt = 3 }, told[2])
    assert.same({ kind = "http", status = "RESOURCE_EXHAUSTED", text = "GET studies: HTTP 429 RESOURCE_EXHAUSTED: "
      .. "slow down", long = false, attempt = 4 }, told[3])
  end)

  it("is not told when the answer is final, and the last attempt's answer comes back as it is", function()
    H.emulator_faults({ { http_method = "GET", path = "^studies$", status = 503, times = 2 } })
    local told = 0
    local res = assert(store:fetch("studies", { retry = { max_attempts = 2, initial = 0.01 },
      on_retry = function() told = told + 1 end }))
    assert.equal(503, res.status)
    assert.equal(1, told) -- before the second attempt; none after it, the last
    H.emulator_faults({ { http_method = "GET", path = "^studies$", status = 404 } })
    res = assert(store:fetch("studies", { on_retry = function() told = told + 1 end }))
    assert.equal(404, res.status)
    assert.equal(1, told)
  end)
end)
