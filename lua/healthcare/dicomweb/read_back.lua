-- SPDX-License-Identifier: MIT
-- Reading instances back by their UIDs to compare them with the files they were sent from, many
-- at once: what a resume does with the instances a crash left in flight that the server lists
-- (batch.settle_in_flight). A crash of a big run leaves up to concurrency x max_request_instances
-- of them (2,000 with the defaults), mostly whole series of the requests it cut, and one WADO-RS
-- GET per instance, one after another, cost 2,000 requests. Now a series is read back whole (one
-- request) when the bytes of its other instances cost less than the requests it saves (the rule
-- of retrieve's skip_existing: REQUEST_COST_BYTES a request), and the rest instance by instance,
-- up to `concurrency` GETs at once on the client's session (client:start, poll, finish). Answers
-- land in a private directory and each file is removed once compared. The check is
-- overwrite.read_back's: an instance is equal only if the server gives back exactly the file's
-- bytes; any failure (a 404, another answer, a transfer that fails after its retries) means "not
-- equal", and the file is sent again.
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local overwrite = require "healthcare.dicomweb.overwrite"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local util = require "healthcare.util"

local M = {}

-- The stored bytes as they are (a transcoded instance would not be the file's).
M.ACCEPT = "Accept: " .. media.multipart(media.DICOM, "*")
-- Longest wait for answers between checks of the retries due and of Ctrl-C.
local POLL_SECONDS = 0.25

local function remove_parts(parts)
  for _, p in ipairs(parts or {}) do if p.path then os.remove(p.path) end end
end

-- Whether the answer res (any status) gives back job.e's file: one part, byte for byte the file.
-- Returns true, or false and the error when another attempt may do better (err.retryable).
local function judge(res, e)
  if res.status < 200 or res.status > 299 then
    remove_parts(res.parts)
    return false, errors.from_response(res, "RetrieveInstance")
  end
  local parts = res.parts or {}
  local same = #parts == 1 and parts[1].size == e.size and overwrite.same_bytes(e.path, parts[1].path) == true
  remove_parts(parts)
  return same
end

-- The run of one read_back_all call: its jobs ({ e, attempts, started, due }), those waiting for
-- a retry, those in flight (client request -> job), and which entries came back equal.
local Run = {}
Run.__index = Run

function Run:start(job)
  local e = job.e
  local url, uerr = route.url(self.store, "GET", string.format("studies/%s/series/%s/instances/%s",
    e.study_uid, e.series_uid, e.sop_instance_uid))
  if not url then return self:failed(job, uerr) end
  job.attempts, job.started = job.attempts + 1, job.started or core.now()
  -- a part larger than the file, or a second part, cannot be the file: the transfer stops there
  local req, err = self.client:start { method = "GET", url = url, headers = { M.ACCEPT },
    sink = { dir = self.dir, max_parts = 1, max_part_bytes = math.max(e.size, 1) } }
  if not req then return self:failed(job, err) end
  self.running[req], self.nrunning = job, self.nrunning + 1
end

-- After a failed attempt: queued again when it is worth one (retry.read_again) and the policy
-- allows, else given up (not equal: the file is sent again).
function Run:failed(job, err)
  if err and err.parts then remove_parts(err.parts) end
  local again, asked = retry.read_again(nil, err)
  if again and not core.interrupted() then
    local wait = self.policy:next_wait(job.attempts, job.started, asked)
    if wait then
      job.due = core.now() + wait
      self.waiting[#self.waiting + 1] = job
    end
  end
end

function Run:finish(req)
  local job = self.running[req]
  local res, err = self.client:finish(req)
  if res == false then return end -- sent again with a fresh token: still in flight
  self.running[req], self.nrunning = nil, self.nrunning - 1
  if not res then return self:failed(job, err) end
  local same, jerr = judge(res, job.e)
  if same then
    self.equal[job.e] = true
  elseif jerr then
    self:failed(job, jerr)
  end
end

-- The next job to start (a retry that is due first, then a new one), or nil.
function Run:next_job()
  local now = core.now()
  for i, job in ipairs(self.waiting) do
    if job.due <= now then return table.remove(self.waiting, i) end
  end
  if self.next <= #self.entries then
    self.next = self.next + 1
    return { e = self.entries[self.next - 1], attempts = 0 }
  end
end

-- Seconds until the first retry is due (nil: none waits).
function Run:until_due()
  local first
  for _, job in ipairs(self.waiting) do first = math.min(first or job.due, job.due) end
  return first and math.max(0, first - core.now())
end

function Run:go()
  while true do
    if core.interrupted() then break end
    while self.nrunning < self.concurrency do
      local job = self:next_job()
      if not job then break end
      self:start(job)
    end
    local due = self:until_due()
    if self.nrunning == 0 and not due then break end
    if self.nrunning == 0 then
      util.sleep(due)
    else
      for _, req in ipairs(self.client:poll(math.min(POLL_SECONDS, due or POLL_SECONDS))) do self:finish(req) end
    end
  end
end

-- What a request is reckoned to cost, in bytes of transfer (retrieve's: a round trip and the
-- server's lookups; Orthanc spent 15 ms an instance in a series of 5,000 here): a series is read
-- back whole when its instances that were not in flight (as many bytes each as those that were,
-- on average) come to less than this many bytes per instance read back.
M.REQUEST_COST_BYTES = require("healthcare.dicomweb.retrieve").REQUEST_COST_BYTES

-- Reads back the entries of `list` (all of one series) with one retrieve of the series into dir,
-- each file compared as it lands and removed; those equal are set in equal[e]. A failed retrieve
-- leaves the others unequal (sent again).
local function read_back_series(store, list, opts, dir, equal)
  local by_uid = {}
  for _, e in ipairs(list) do by_uid[e.sop_instance_uid] = e end
  store:retrieve_series(list[1].study_uid, list[1].series_uid, { to = dir, list_files = false, retry = opts.retry,
    on_file = function(f)
      local e = by_uid[f.sop_instance_uid]
      if e and overwrite.same_bytes(e.path, f.path) == true then equal[e] = true end
      os.remove(f.path)
    end })
end

-- Whether reading the series whole costs less than reading the entries g of it one by one, the
-- server listing `listed` instances in it (nil: not known, one by one).
local function whole_pays(g, listed)
  if #g < 2 or not listed then return false end
  local bytes = 0
  for _, e in ipairs(g) do bytes = bytes + e.size end
  return math.max(listed - #g, 0) * (bytes / #g) <= #g * M.REQUEST_COST_BYTES
end

-- The entries to read back instance by instance, after reading back whole (read_back_series) the
-- series where that costs less (whole_pays; counts: series UID -> instances the server lists).
local function by_series(store, entries, counts, opts, dir, equal)
  local groups, order = {}, {}
  for _, e in ipairs(entries) do
    local g = groups[e.series_uid]
    if not g then
      g = {}
      groups[e.series_uid], order[#order + 1] = g, e.series_uid
    end
    g[#g + 1] = e
  end
  local single = {}
  for _, series in ipairs(order) do
    local g = groups[series]
    if whole_pays(g, counts and counts[series]) and not core.interrupted() then
      read_back_series(store, g, opts, dir, equal)
    else
      for _, e in ipairs(g) do single[#single + 1] = e end
    end
  end
  return single
end

--- Reads back each entry of `entries` ({ path, size, study_uid, series_uid, sop_instance_uid },
--- the UIDs valid) and compares it with its file: whole series where that costs less than one
--- request each (opts.series_counts: series UID -> instances the server lists in it; nil: none
--- known, none whole), else one at a time with up to opts.concurrency requests at
--- once (default: the client's, else 4). opts.retry: the retry policy of each read (else the
--- client's). Returns the entries read back equal, in the order given; and, when none could be
--- read back because no private directory could be made for the answers, the reason.
function M.read_back_all(store, entries, opts)
  opts = opts or {}
  if #entries == 0 then return {} end
  local dir, derr = util.private_tmpdir("hc-read-back-")
  if not dir then return {}, derr end
  local equal = {}
  local fine, single = pcall(by_series, store, entries, opts.series_counts, opts, dir, equal)
  if not fine then
    util.remove_private_tmpdir(dir)
    error(single, 0)
  end
  local run = setmetatable({
    store = store, client = store.client, entries = single, dir = dir, next = 1,
    concurrency = opts.concurrency or store.client.concurrency or 4,
    policy = retry.new(nil, opts.retry, store.client.retry),
    running = {}, nrunning = 0, waiting = {}, equal = equal,
  }, Run)
  local ok, perr = pcall(Run.go, run)
  -- after Ctrl-C (or an error raised): what is still in flight is abandoned, not counted equal
  for req in pairs(run.running) do req:close() end
  util.remove_private_tmpdir(dir)
  if not ok then error(perr, 0) end
  local out = {}
  for _, e in ipairs(entries) do
    if equal[e] then out[#out + 1] = e end
  end
  return out
end

return M
