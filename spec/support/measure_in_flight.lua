-- SPDX-License-Identifier: MIT
-- Measures what a resume costs after a crash that left many instances in flight: N files are
-- journaled as "sending" (what a kill -9 leaves), of which the test bed's Orthanc already holds a
-- share (the requests it had read whole before the client died), then the same store run resumes
-- them. Prints the requests the resume made by kind and the seconds the in-flight check took
-- (batch.settle_in_flight: the searches and the read-backs) and the whole run took. Not a spec (no
-- assertion beyond the counts): a measurement, run by hand, inside the test bed:
--
--   spec/support/testbed env LUA_PATH='lua/?.lua;lua/?/init.lua;spec/?.lua;;' \
--     LUA_CPATH='build/?.so;;' lua5.4 spec/support/measure_in_flight.lua [N [HELD [CONCURRENCY [SIZE [OTHERS [COST]]]]]]
--
-- N files (default 2000: concurrency 4 x 500 instances per request, the most a crash leaves in
-- flight with the defaults), HELD the share Orthanc holds (default 1: all), CONCURRENCY the run's
-- (default 4), SIZE the pixel bytes per file (default 4096), in one series; OTHERS instances of
-- the same series Orthanc holds that were not in flight (default 0: stored by earlier requests),
-- COST read_back.REQUEST_COST_BYTES (0: a series is read whole only when all of it was in flight).
-- With LUA_PATH naming an older tree first, the same numbers for that version.
local H = require "helpers"
local batch = require "healthcare.dicomweb.batch"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local journal = require "healthcare.dicomweb.journal"
local lfs = require "lfs"

assert(H.in_testbed(), H.NOT_IN_TESTBED)
local E = H.env
local n = tonumber(arg[1]) or 2000
local held_share = tonumber(arg[2]) or 1
local concurrency = tonumber(arg[3]) or 4
local size = tonumber(arg[4]) or 4096
local others = tonumber(arg[5]) or 0

local dir = H.tmpdir()
local t = core.now()
local files = H.gen_dicom({ count = n, size = size, dir = dir .. "/in" })
table.sort(files, function(a, b) return a.path < b.path end)
local nheld = math.floor(n * held_share + 0.5)
io.write(string.format("%d files of %d pixel bytes made in %.1f s\n", n, size, core.now() - t))
local earlier = others > 0 and H.gen_dicom({ count = others, size = size, dir = dir .. "/earlier",
  study = files[1].study_uid, series = files[1].series_uid }) or {}

local st = assert(healthcare.dicomweb(E.dicomweb, { concurrency = concurrency }))
if nheld > 0 then
  local held = {}
  for i = 1, nheld do held[i] = files[i].path end
  for _, f in ipairs(earlier) do held[#held + 1] = f.path end
  t = core.now()
  local r = assert(st:store(held, { concurrency = concurrency }))
  assert(r.counts.stored == #held, "Orthanc did not store them all")
  io.write(string.format("%d of them stored into Orthanc first (and %d others of the series) in %.1f s\n", nheld,
    #earlier, core.now() - t))
end

-- what a kill -9 with all N in flight leaves
local jpath = dir .. "/journal"
local j = assert(journal.open(jpath, nil, { store = st.name }))
local list = {}
for i, f in ipairs(files) do
  local a = assert(lfs.attributes(f.path))
  list[i] = { entry = { path = f.path, size = a.size, mtime = a.modification }, outcome = "sending" }
end
assert(j:record(list))
j:close()

-- the requests of the resume, by kind, as the client made them (send: one at a time; start: the
-- transfers a caller runs side by side)
local counts = { search = 0, read_back = 0, series_read_back = 0, store = 0, other = 0 }
local function kind(req)
  local url = req.url or ""
  if (req.method or "GET") == "POST" then return "store" end
  if url:find("/instances/[^/?]+$") then return "read_back" end
  if url:find("/series/[^/?]+$") then return "series_read_back" end
  if url:find("/instances", 1, true) then return "search" end
  return "other"
end
local client = st.client
for _, name in ipairs({ "send", "start" }) do
  local method = client[name]
  client[name] = function(self, req)
    local k = kind(req)
    counts[k] = counts[k] + 1
    return method(self, req)
  end
end
-- seconds spent in each step of the check
local spent = {}
local function timed(mod, name)
  local f = mod[name]
  spent[name] = 0
  mod[name] = function(...)
    local t0 = core.now()
    local a, b = f(...)
    spent[name] = spent[name] + core.now() - t0
    return a, b
  end
end
timed(require("healthcare.dicomweb.verify"), "listed_in")
local ok_rb, read_back = pcall(require, "healthcare.dicomweb.read_back")
if ok_rb then
  read_back.REQUEST_COST_BYTES = tonumber(arg[6]) or read_back.REQUEST_COST_BYTES
  timed(read_back, "read_back_all")
else timed(require("healthcare.dicomweb.overwrite"), "read_back") end
timed(journal.Journal, "in_flight")
timed(journal.Journal, "mark_stored")
local settle = batch.settle_in_flight
local settle_seconds
batch.settle_in_flight = function(...)
  local t0 = core.now()
  local a, b = settle(...)
  settle_seconds = core.now() - t0
  return a, b
end

t = core.now()
local r = assert(st:store(dir .. "/in", { journal = jpath, concurrency = concurrency }))
local total = core.now() - t
local inf = r.journal.in_flight
assert(inf.in_flight == n and inf.found == nheld and not inf.error,
  string.format("in_flight %s found %s error %s", inf.in_flight, inf.found, inf.error))
assert(r.counts.stored == n - nheld and r.counts.already_stored == nheld and r.counts.failed == 0)
io.write(string.format("resume: %d in flight, %d held and read back equal; concurrency %d\n", n, nheld, concurrency))
io.write(string.format("  in-flight check: %.2f s (%d searches, %d read-backs of an instance, %d of a series)\n",
  settle_seconds, counts.search, counts.read_back, counts.series_read_back))
local steps = {}
for k, v in pairs(spent) do steps[#steps + 1] = string.format("%s %.2f s", k, v) end
table.sort(steps)
io.write("  of which: " .. table.concat(steps, ", ") .. "\n")
io.write(string.format("  whole run: %.2f s (%d store requests, %d other)\n", total, counts.store, counts.other))
st:close()
os.execute("rm -rf " .. H.q(dir))
