-- SPDX-License-Identifier: MIT
-- healthcare.retry, the one retry policy (store, delete, token requests): full jitter within the
-- exponential cap, a server's Retry-After honoured even past max_delay, max_attempts, and a
-- deadline that fails a wait at once instead of sleeping past it; option checking. No test bed:
-- core.now, core.sleep and OpenSSL's generator are all it needs.
local core = require "healthcare.core"
local retry = require "healthcare.retry"

-- A policy whose random() returns each value of `draws` in turn.
local function fixed(opts, draws)
  local p = retry.new(nil, opts)
  local i = 0
  p.random = function()
    i = i + 1
    return draws[(i - 1) % #draws + 1]
  end
  return p
end

describe("retry.new", function()
  it("takes each option from the first table that has it, else the defaults", function()
    local p = retry.new(nil, { max_attempts = 2 }, { max_attempts = 9, initial = 0.5 })
    assert.same({ 2, 0.5, 2, 60, 3600 }, { p.max_attempts, p.initial, p.multiplier, p.max_delay, p.deadline })
    p = retry.new({ max_attempts = 3, initial = 1, multiplier = 3, max_delay = 4, deadline = 10 }, nil, nil)
    assert.same({ 3, 1, 3, 4, 10 }, { p.max_attempts, p.initial, p.multiplier, p.max_delay, p.deadline })
  end)
end)

describe("Policy:backoff", function()
  it("draws each wait uniformly in [0, min(max_delay, initial * multiplier^(n-1))] (full jitter)", function()
    local p = retry.new(nil, { initial = 1, multiplier = 2, max_delay = 5 })
    local caps = { 1, 2, 4, 5, 5 }
    for n, cap in ipairs(caps) do
      local low, high, sum = math.huge, -math.huge, 0
      for _ = 1, 2000 do
        local w = p:backoff(n)
        assert.is_true(w >= 0 and w <= cap, string.format("wait %g after %d attempts, cap %g", w, n, cap))
        low, high, sum = math.min(low, w), math.max(high, w), sum + w
      end
      -- spread over the whole range, not a fixed delay: 2000 uniform draws land in its outer
      -- tenths and average near the middle (each bound fails with odds below 1e-90)
      assert.is_true(low < cap * 0.1 and high > cap * 0.9, string.format("draws in [%g, %g] of [0, %g]", low, high, cap))
      assert.is_true(math.abs(sum / 2000 - cap / 2) < cap * 0.1)
    end
  end)

  it("draws from OpenSSL, not math.random: reseeding math.random does not repeat the waits", function()
    local p = retry.new(nil, { initial = 1, multiplier = 1, max_delay = 1 })
    math.randomseed(42)
    local a = { p:backoff(1), p:backoff(1), p:backoff(1) }
    math.randomseed(42)
    local b = { p:backoff(1), p:backoff(1), p:backoff(1) }
    assert.are_not.same(a, b)
  end)

  it("waits at least what the server asked, even past max_delay", function()
    local p = fixed({ initial = 1, max_delay = 2 }, { 0.5 })
    assert.equal(0.5, p:backoff(1))
    assert.equal(0.9, p:backoff(1, 0.9))
    assert.equal(30, p:backoff(1, 30))
    assert.equal(0.5, p:backoff(1, 0.1)) -- a smaller ask does not shorten the backoff
  end)
end)

describe("Policy:next_wait", function()
  it("stops after max_attempts", function()
    local p = fixed({ max_attempts = 3, initial = 1 }, { 0.5 })
    assert.equal(0.5, p:next_wait(1, 100, nil, 100))
    assert.equal(1, p:next_wait(2, 100, nil, 100))
    assert.same({ nil, "attempts" }, { p:next_wait(3, 100, nil, 100) })
  end)

  it("fails at once when the wait would end past the deadline, whatever the server asked", function()
    local p = fixed({ initial = 1, deadline = 10 }, { 1 })
    -- first attempt at t=100; now t=108: a wait of 1 ends at 109, inside the 10 s
    assert.equal(1, p:next_wait(1, 100, nil, 108))
    -- now t=109.5: a wait of 1 would end at 110.5, past 110
    assert.same({ nil, "deadline" }, { p:next_wait(1, 100, nil, 109.5) })
    -- a Retry-After of 30 s with 8 s left: no sleeping for an attempt that may not start
    assert.same({ nil, "deadline" }, { p:next_wait(1, 100, 30, 102) })
    -- past the deadline already
    assert.same({ nil, "deadline" }, { p:next_wait(1, 100, nil, 111) })
    -- an absolute stop (delete's operation timeout) also ends it
    assert.same({ nil, "deadline" }, { p:next_wait(1, 100, nil, 101, 101.5) })
    assert.equal(1, p:next_wait(1, 100, nil, 101, 102.5))
  end)
end)

describe("Policy:run", function()
  it("attempts until the outcome is final, sleeping the jittered waits between", function()
    local p = fixed({ max_attempts = 5, initial = 0.05, multiplier = 2, max_delay = 1 }, { 1 })
    local calls, t0 = {}, core.now()
    local res, err = p:run(function(n)
      calls[#calls + 1] = core.now() - t0
      if n < 3 then return nil, { retryable = true } end
      return "done"
    end, function(r, e) return r == nil and e.retryable end)
    assert.same({ "done", nil }, { res, err })
    assert.equal(3, #calls)
    -- waits of 0.05 then 0.1 (random() = 1: the cap): at least that long, generously bounded
    assert.is_true(calls[2] - calls[1] >= 0.05 and calls[3] - calls[2] >= 0.1)
    assert.is_true(calls[3] < 5)
  end)

  it("honours the server's ask (Retry-After) between attempts", function()
    local p = fixed({ max_attempts = 2, initial = 0.01, max_delay = 0.01 }, { 0 })
    local t0 = core.now()
    local n = 0
    p:run(function() n = n + 1 return nil, { retryable = true, retry_after = 0.3 } end,
      function(_, e) return e.retryable, e.retry_after end)
    assert.equal(2, n)
    assert.is_true(core.now() - t0 >= 0.3, "did not wait the 0.3 s asked for")
  end)

  it("returns the last outcome once max_attempts are made, and never retries a final one", function()
    local p = fixed({ max_attempts = 3, initial = 0 }, { 0 })
    local n = 0
    local _, err = p:run(function() n = n + 1 return nil, { retryable = true, n = n } end,
      function(_, e) return e.retryable end)
    assert.equal(3, n)
    assert.equal(3, err.n)
    n = 0
    p:run(function() n = n + 1 return nil, { retryable = false } end, function(_, e) return e.retryable end)
    assert.equal(1, n)
  end)

  it("counts attempts afresh after one that made progress, and not after one that did not", function()
    local p = fixed({ max_attempts = 2, initial = 0 }, { 0 })
    -- attempts 1 to 4 each move progress on, each the first failure of a new run; 5 does not,
    -- and is the run's second: max_attempts
    local done, n = 0, 0
    local _, err = p:run(function()
      n = n + 1
      if n <= 4 then done = done + 1 end
      return nil, { retryable = true, n = n }
    end, function(_, e) return e.retryable end, nil, function() return done end)
    assert.equal(5, n)
    assert.equal(5, err.n)
    -- without a progress measure: max_attempts in all
    n = 0
    p:run(function() n = n + 1 return nil, { retryable = true } end, function(_, e) return e.retryable end)
    assert.equal(2, n)
  end)

  it("does not sleep for an attempt the deadline forbids", function()
    local p = fixed({ max_attempts = 5, initial = 1, deadline = 2 }, { 0 })
    local t0, n = core.now(), 0
    p:run(function() n = n + 1 return nil, { retry_after = 30 } end, function(_, e) return true, e.retry_after end)
    assert.equal(1, n)
    assert.is_true(core.now() - t0 < 1, "slept for a retry past the deadline")
  end)
end)

describe("retry.check", function()
  it("takes nil and valid tables, and returns them", function()
    assert.same({}, retry.check(nil, "store"))
    assert.same({ max_attempts = 2, deadline = 0.5 }, retry.check({ max_attempts = 2, deadline = 0.5 }, "store"))
  end)

  for _, case in ipairs({
    { 3, "bad option 'retry' to 'store' (table expected, got number)" },
    { { max_attempts = 0 }, "bad option 'retry.max_attempts' to 'store' (a whole number >= 1 expected, got 0)" },
    { { max_attempts = 1.5 }, "bad option 'retry.max_attempts' to 'store' (a whole number >= 1 expected, got 1.5)" },
    { { initial = -1 }, "bad option 'retry.initial' to 'store' (seconds >= 0 expected, got -1)" },
    { { multiplier = 0.5 }, "bad option 'retry.multiplier' to 'store' (a number >= 1 expected, got 0.5)" },
    { { max_delay = "60" }, "bad option 'retry.max_delay' to 'store' (seconds >= 0 expected, got string)" },
    { { deadline = 0 }, "bad option 'retry.deadline' to 'store' (seconds > 0 expected, got 0)" },
    { { deadline = 0 / 0 }, "bad option 'retry.deadline' to 'store' (seconds > 0 expected, got " .. tostring(0 / 0) .. ")" },
    { { attempts = 3 }, "unknown option 'attempts' to 'store'; valid options: deadline, initial, max_attempts, "
      .. "max_delay, multiplier" },
  }) do
    it("raises at the caller's line for " .. case[2]:match("'([^']+)'", 12), function()
      local line = debug.getinfo(1, "l").currentline + 2
      -- level 1: blame the function that called check (as a public function calling it would)
      local ok, err = pcall(function() retry.check(case[1], "store", 1) end)
      assert.is_false(ok)
      assert.equal("spec/unit/05-retry_policy_spec.lua:" .. line .. ": " .. case[2], err:match("(spec/.*)$"))
    end)
  end
end)
