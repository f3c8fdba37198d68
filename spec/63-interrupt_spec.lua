-- SPDX-License-Identifier: MIT
-- Stopping cleanly: `healthcare store` given SIGINT (Ctrl-C) or SIGTERM (a scheduler) while
-- requests are in flight through the emulator (slowed by its fault injection) lets them finish,
-- leaves a valid journal, says so, and exits 130 (143); a second Ctrl-C ends it at once with the
-- journal still valid; a resume completes the upload with each instance stored once. In the
-- library, core.trap_interrupts() makes store:store stop and report what it abandoned after
-- batch.INTERRUPT_GRACE.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/63-interrupt_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
-- This file sets the emulator's fault rules: a private emulator keeps other spec files, run in
-- parallel by ctest, from seeing (or consuming) them.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)

local cjson = require "cjson"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local batch = require "healthcare.dicomweb.batch"

local E = H.env

-- The journal's outcome records (not the "sending" lines written before each request); fails
-- unless every line is whole and valid.
local function records_of(path)
  local out = {}
  for _, t in ipairs(H.journal_lines(path)) do
    if t.outcome == "sending" then
      assert.is_number(t.size) -- path, size, mtime: the UIDs are read from the file on resume
      assert.is_nil(t.sop_instance_uid)
    elseif t.outcome then
      assert.equal("stored", t.outcome)
      out[#out + 1] = t
    else
      assert.equal("healthcare", t.journal)
    end
  end
  return out
end

-- `healthcare store` of dir/in to the emulator's store, with the static token and the journal
-- dir/journal, and args.
local function store_command(dir, args)
  local words = { "store", E.store, dir .. "/in", "--endpoint", E.endpoint, "--access-token", E.token,
    "--no-token-cache", "--journal", dir .. "/journal" }
  for _, a in ipairs(args) do words[#words + 1] = a end
  return H.healthcare_command(words)
end

-- The CLI against the emulator, started in the background; once its journal has its first
-- line, the signals are sent, each after its delay (seconds): { {"INT", 0.6}, ... }.
local function signalled(dir, signals)
  local cmd = store_command(dir, { "--max-instances", "2", "--concurrency", "2" })
  local script = { cmd .. " & pid=$!",
    "for i in $(seq 200); do [ -s " .. H.q(dir .. "/journal") .. " ] && break; sleep 0.02; done" }
  for _, s in ipairs(signals) do
    script[#script + 1] = string.format("sleep %.2f; kill -%s $pid", s[2], s[1])
  end
  script[#script + 1] = "wait $pid"
  local t0 = core.now()
  local so, se, code = H.run(table.concat(script, "\n"))
  return code, se, core.now() - t0, so
end

describe("an interrupted store", function()
  local pool, used = nil, 0
  local function fresh(n)
    pool = pool or H.gen_dicom({ count = 40, size = 500, dir = H.tmpdir() .. "/pool" })
    local dir = H.tmpdir()
    H.check_run("mkdir " .. H.q(dir .. "/in"))
    local out = {}
    for i = 1, n do
      local f = assert(pool[used + i], "pool exhausted")
      local to = dir .. "/in/" .. f.path:match("[^/]+$")
      H.check_run("cp -p " .. H.q(f.path) .. " " .. H.q(to))
      out[i] = { path = to, sop_instance_uid = f.sop_instance_uid, study_uid = f.study_uid }
    end
    used = used + n
    return dir, out
  end

  after_each(function()
    H.emulator_faults({})
    batch.INTERRUPT_GRACE = 10
  end)

  for _, case in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    it("stops on SIG" .. case[1] .. " after the requests in flight, journal valid, exit " .. case[2], function()
      local dir, files = fresh(12)
      H.emulator_faults({ { delay = 0.5, times = 100 } })   -- 6 requests, 2 at a time: about 1.5 s
      local code, se = signalled(dir, { { case[1], 0.6 } })
      assert.equal(case[2], code, se)
      assert.truthy(se:find("interrupted: 0 instances in flight abandoned; run the same command again to resume",
        1, true), se)
      local stored = tonumber(se:match("stored (%d+),"))
      assert.truthy(stored, se)
      assert.is_true(stored > 0 and stored < 12, se)
      assert.equal(stored, #records_of(dir .. "/journal"))
      -- Resume: everything, each once.
      H.emulator_faults({})
      local so, se2, code2 = H.run(store_command(dir, { "--json" }))
      assert.equal(0, code2, se2)
      local report = cjson.decode(so)
      assert.same({ 12 - stored, stored, 0, 1 },
        { #report.stored, #report.already_stored, #report.failed, report.journal.earlier_runs })
      assert.equal(12, #records_of(dir .. "/journal"))
      local held = H.orthanc_sops(files[1].study_uid)
      for _, f in ipairs(files) do assert.equal(1, held[f.sop_instance_uid]) end
    end)
  end

  it("ends at once on a second SIGINT, and the journal stays valid", function()
    local dir, files = fresh(8)
    H.emulator_faults({ { times = 2 }, { delay = 4, times = 100 } })   -- two quick requests, then slow ones
    local code, se, elapsed = signalled(dir, { { "INT", 1.0 }, { "INT", 0.3 } })
    assert.equal(130, code, se)
    assert.is_nil(se:find("interrupted:", 1, true), se)   -- killed by the signal, no summary
    assert.is_true(elapsed < 3, string.format("took %.2f s", elapsed))
    local recs = records_of(dir .. "/journal")
    assert.equal(4, #recs)
    -- Resume finds the 4 and sends the rest.
    H.emulator_faults({})
    local c = assert(healthcare.new({ endpoint = E.endpoint, access_token = E.token }))
    local st = assert(c:dicom_store(E.store))
    local report = assert(st:store(dir .. "/in", { journal = dir .. "/journal" }))
    assert.same({ 4, 4, 0 }, { #report.stored, #report.already_stored, #report.failed })
    local held = H.orthanc_sops(files[1].study_uid)
    for _, f in ipairs(files) do assert.equal(1, held[f.sop_instance_uid]) end
    c:close()
  end)

  it("in the library: abandons what is still in flight after INTERRUPT_GRACE and says how much", function()
    local dir = fresh(8)
    local pid = assert(io.open("/proc/self/stat")):read("n")
    local c = assert(healthcare.new({ endpoint = E.endpoint, access_token = E.token }))
    local st = assert(c:dicom_store(E.store))
    H.emulator_faults({ { times = 1 }, { delay = 3, times = 100 } })   -- the first request quick, the rest slow
    batch.INTERRUPT_GRACE = 0.3
    local sent = false
    core.trap_interrupts()
    local t0 = core.now()
    local report = assert(st:store(dir .. "/in", {
      journal = dir .. "/journal", max_request_instances = 2, concurrency = 2,
      on_progress = function(p)
        if p.files_done >= 2 and not sent then
          sent = true
          -- Not os.execute: system(3) ignores SIGINT in the caller while the child runs.
          assert(io.popen("kill -INT " .. pid)):close()
        end
      end,
    }))
    local elapsed = core.now() - t0
    assert.truthy(core.interrupted())
    core.trap_interrupts(false)
    assert.is_false(core.interrupted())
    assert.is_true(report.interrupted)
    assert.same({ 2, 0, 2 }, { #report.stored, #report.failed, report.abandoned })
    assert.is_true(elapsed < 2, string.format("took %.2f s", elapsed))
    assert.equal(2, #records_of(dir .. "/journal"))
    c:close()
  end)
end)
