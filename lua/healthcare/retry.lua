-- SPDX-License-Identifier: MIT
-- The one retry policy of the module, used by store (healthcare.dicomweb.batch), delete and its
-- operation polls (healthcare.dicomweb.delete) and token requests (healthcare.auth.credentials):
--   * exponential backoff with full jitter: the n-th wait is uniform in [0, min(max_delay,
--     initial * multiplier^(n-1))] (AWS architecture blog, "Exponential Backoff And Jitter"),
--     drawn from OpenSSL's generator;
--   * at least what the server asked for (err.retry_after: Retry-After or Google's RetryInfo),
--     even past max_delay, which caps the backoff only;
--   * at most max_attempts attempts, and a deadline: seconds from the first attempt past which no
--     attempt starts. A wait that would end past it fails at once instead of sleeping for an
--     attempt that is not allowed anyway (the caller, or a resumed run, decides what next).
-- Which failures are worth another attempt is the caller's to say (errors.RETRYABLE_*).
local core = require "healthcare.core"
local util = require "healthcare.util"

local M = {}

-- Written once: store's and delete's defaults (README "Lua API", retry options).
M.DEFAULTS = { max_attempts = 5, initial = 1, multiplier = 2, max_delay = 60, deadline = 3600 }
M.OPTIONS = { "max_attempts", "initial", "multiplier", "max_delay", "deadline" }

-- What each option must be: a whole number >= 1 or a number of seconds.
local CHECKS = {
  max_attempts = function(v) return v >= 1 and v == math.floor(v) end,
  initial = function(v) return v >= 0 end,
  multiplier = function(v) return v >= 1 end,
  max_delay = function(v) return v >= 0 end,
  deadline = function(v) return v > 0 end,
}
local EXPECTED = {
  max_attempts = "a whole number >= 1", initial = "seconds >= 0", multiplier = "a number >= 1",
  max_delay = "seconds >= 0", deadline = "seconds > 0",
}

--- A number in [0, 1) from OpenSSL's generator. Not math.random: LuaJIT seeds that alike in every
--- process, and shards retrying in step are what jitter is for.
function M.random()
  return tonumber(core.random_hex(4), 16) / 4294967296
end

local Policy = {}
Policy.__index = Policy
Policy.__name = "healthcare.RetryPolicy"
M.Policy = Policy

--- Raises (a programming mistake) unless `opts` is nil or a table of OPTIONS with valid values;
--- messages name the option as "retry.<name>". level: as util.check_arg's.
function M.check(opts, fname, level)
  level = (level or 2) + 1
  util.check_option(opts, "retry", fname, "table", level)
  opts = util.check_options(opts, M.OPTIONS, fname, level)
  for k, v in pairs(opts) do
    if type(v) ~= "number" or v ~= v or not CHECKS[k](v) then
      error(string.format("bad option 'retry.%s' to '%s' (%s expected, got %s)", k, fname, EXPECTED[k],
        type(v) == "number" and tostring(v) or type(v)), level)
    end
  end
  return opts
end

--- A policy: each field from the first of the option tables `...` (already checked; nil ones
--- skipped) that has it, else from `defaults` (nil: M.DEFAULTS).
function M.new(defaults, ...)
  local self = setmetatable({ random = M.random }, Policy)
  local n = select("#", ...)
  for _, k in ipairs(M.OPTIONS) do
    for i = 1, n do
      local layer = select(i, ...)
      if layer and layer[k] ~= nil then
        self[k] = layer[k]
        break
      end
    end
    if self[k] == nil then self[k] = (defaults or M.DEFAULTS)[k] end
  end
  return self
end

--- Seconds to wait after `attempts` failed attempts: full jitter over the backoff, and at least
--- `asked` (the server's Retry-After or RetryInfo, seconds) when given.
function Policy:backoff(attempts, asked)
  local cap = math.min(self.max_delay, self.initial * self.multiplier ^ (attempts - 1))
  local wait = self.random() * cap
  if type(asked) == "number" and asked > wait then wait = asked end
  return wait
end

--- Whether another attempt may go after `attempts` failed ones, the first started at `started`
--- (core.now()): returns the seconds to wait first, or nil and why not: "attempts" (max_attempts
--- made) or "deadline" (the wait would end past the deadline, or past `stop_at`, an absolute
--- core.now() time the caller has, when given). `now` defaults to core.now().
function Policy:next_wait(attempts, started, asked, now, stop_at)
  if attempts >= self.max_attempts then return nil, "attempts" end
  now = now or core.now()
  local wait = self:backoff(attempts, asked)
  if now + wait - started >= self.deadline or (stop_at and now + wait > stop_at) then
    return nil, "deadline"
  end
  return wait
end

--- Whether a failed read (a search page, a retrieve: the result, or nil and err) is worth another
--- attempt, and the seconds the server asked to wait, for Policy:run: a failure errors calls
--- retryable (408, 429, 5xx, a dropped, refused or stalled transfer), but not a bound the caller
--- set passing (err.option), except min_speed: a stalled connection is the network's, and the
--- next may be fine.
function M.read_again(res, err)
  if res or not err or not err.retryable then return false end
  if err.option and err.option ~= "min_speed" then return false end
  return true, err.retry_after
end

--- Policy:run's on_wait for a read's on_retry(err, seconds, attempt): the failure (the second
--- result of the attempt), the wait, and the number of the attempt to come. nil without on_retry.
function M.on_wait_of(on_retry)
  return on_retry and function(seconds, n, _, err) on_retry(err, seconds, n + 1) end
end

--- Says in err's message how many attempts were made, when more than one; returns err.
function M.attempts_told(err, n)
  if err and n > 1 then err.message = string.format("%s (after %d attempts)", err.message, n) end
  return err
end

--- Runs attempt(n) (n = 1, 2, ...) until its outcome is final, sleeping between attempts.
--- retry_of(...) gets attempt's results and returns whether they are worth another attempt and
--- the seconds the server asked to wait (or nil). Returns the last attempt's results as they
--- are. stop_at: see next_wait. A program that trapped Ctrl-C (core.trap_interrupts) and got it
--- makes no further attempt: the last one's results are returned at once.
--- progress: nil, or a function returning a number that grows with what the attempts achieved
--- (a resumable transfer's instances): a failed attempt that moved it on counts as the first of
--- a new run of failures, max_attempts and deadline counted from its end, as gsutil resets its
--- retries when a resumable transfer progressed. A long transfer cut now and then goes on.
--- on_wait: nil, or on_wait(seconds, n, ...) called before each wait, n the attempt that failed
--- and ... its results (a caller's "trying again in 2.3 s").
function Policy:run(attempt, retry_of, stop_at, progress, on_wait)
  local started = core.now()
  local n, failures = 0, 0
  local mark = progress and progress()
  while true do
    n = n + 1
    local a, b, c = attempt(n)
    local again, asked = retry_of(a, b, c)
    if not again or core.interrupted() then return a, b, c end
    failures = failures + 1
    if progress and progress() > mark then
      mark, failures, started = progress(), 1, core.now()
    end
    local wait = self:next_wait(failures, started, asked, nil, stop_at)
    if not wait then return a, b, c end
    if on_wait then on_wait(wait, n, a, b, c) end
    util.sleep(wait)
    if core.interrupted() then return a, b, c end
  end
end

return M
