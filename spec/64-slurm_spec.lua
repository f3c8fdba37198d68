-- SPDX-License-Identifier: MIT
-- The README's Slurm recipe ("Migrating an archive", the block after the `slurm-recipe` marker),
-- run word for word on a real one-node Slurm cluster (spec/support/slurm: Debian's slurm-wlm and
-- munge on 127.0.0.1 in the test bed's namespace; jobs run as root there) into the test bed's
-- Orthanc: 4 shards over a 2,000-file archive, shard 3 cancelled with scancel once it has
-- journaled its first instances, then resubmitted alone. Only STORE, ARCHIVE and JOURNALS are
-- given, through the environment the script reads.
--
-- Checked: each journal holds only its shard's files (the shard of a path is computed here in
-- Python from the documented rule, not by our C) and the four together hold the archive; no path
-- is journaled as stored twice, across shards and across runs; the cancelled run stopped
-- mid-way, and the resubmitted one reports as already stored exactly what it had journaled and
-- stores only the rest; Orthanc holds every instance of the archive, each once.
--
-- The files are 160 KiB, so that a shard (about 80 MB) takes about ten 8 MiB requests, four at a
-- time: the cancel lands while whole requests are still unsent.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/64-slurm_spec.lua
-- (HC_TESTBED_SLURM=1 in front: the test bed's cluster is used instead of one of the spec's own)
local H = require "helpers"

local E = H.env
local PY = "/usr/bin/python3"
local SHARDS = 4
local FOLDERS, PER_FOLDER = 8, 250   -- 2,000 files
local SIZE = 160 * 1024
local WAIT_S = 600                   -- for a set of jobs to end; generous for a loaded machine
local MARKER = "<!-- slurm-recipe:"

local source = os.getenv("HC_SOURCE_DIR") or "."

-- The script under the README's marker: the first ```sh block after it.
local function readme_recipe()
  local text = assert(H.file_bytes(source .. "/README.md"), "cannot read README.md")
  local at = text:find(MARKER, 1, true)
  assert(at, "README.md has no " .. MARKER .. " marker")
  local script = text:match("\n```sh\n(.-\n)```", at)
  assert(script, "no ```sh block after the marker in README.md")
  return script
end

-- k (1..n) of each path relative to root, by the README's rule (FNV-1a 64 of the relative path,
-- folded to 32 bits, modulo n, plus one), in Python.
local SHARD_PY = [[
import sys
n = int(sys.argv[1])
for rel in sys.stdin.read().split("\n"):
    if not rel:
        continue
    h = 14695981039346656037
    for b in rel.encode():
        h = ((h ^ b) * 1099511628211) % 2**64
    print(((h >> 32) ^ (h & 0xffffffff)) % n + 1)
]]
local function shards_of(rels, n)
  local dir = H.tmpdir()
  H.write_file(dir .. "/shard.py", SHARD_PY)
  local out = H.check_run(H.q(PY) .. " " .. H.q(dir .. "/shard.py") .. " " .. n, table.concat(rels, "\n") .. "\n")
  local ks = {}
  for k in out:gmatch("%d+") do ks[#ks + 1] = tonumber(k) end
  assert(#ks == #rels, "shard.py gave " .. #ks .. " answers for " .. #rels .. " paths")
  return ks
end

-- A journal's runs: a list (one per run header) of lists of { outcome, path } lines: the
-- outcomes only (a "sending" line says a request was about to start, not how it ended).
local function journal_runs(path)
  if not H.file_bytes(path) then return {} end
  local runs = {}
  for _, t in ipairs(H.journal_lines(path)) do
    if t.journal then
      runs[#runs + 1] = {}
    elseif t.outcome ~= "sending" then
      assert(#runs > 0, "an instance line before any run header in " .. path)
      table.insert(runs[#runs], t)
    end
  end
  return runs
end

-- "stored N, already stored M, failed F, skipped S;" from a log, as numbers, or nil.
local function summary(log)
  local s, a, f, k = (log or ""):match("stored (%d+), already stored (%d+), failed (%d+), skipped (%d+);")
  if not s then return nil end
  return { stored = tonumber(s), already_stored = tonumber(a), failed = tonumber(f), skipped = tonumber(k) }
end

describe("the README's Slurm recipe", function()
  if not H.need_testbed() then return end

  local slurm_env, own_cluster          -- "SLURM_CONF=..." for every Slurm command; our cluster dir
  local work, archive, journals, script
  local files, study                    -- gen_dicom entries; their study
  local shard_of, shard_files           -- path -> k; k -> set of paths
  local bin_dir

  local function slurm(cmd)
    return H.check_run(slurm_env .. " " .. cmd)
  end

  -- scontrol's view of a job's array tasks: task id -> { state, exit }.
  local function tasks(job)
    local so = slurm("scontrol -o show job " .. job)
    local t = {}
    for line in so:gmatch("[^\n]+") do
      local id = line:match("ArrayTaskId=(%d+)")
      if id then
        t[tonumber(id)] = { state = line:match("JobState=(%S+)"), exit = line:match(" ExitCode=(%S+)") }
      end
    end
    return t
  end

  local function log_of(job, k)
    return H.file_bytes(string.format("%s/migration-%s_%d.log", work, job, k))
  end

  -- Waits until every task in ks has ended and its `healthcare store` has written its summary
  -- (a cancelled task is marked ended before its process has finished its requests in flight).
  local function wait_job(job, ks)
    local deadline = os.time() + WAIT_S
    local ended = { COMPLETED = true, CANCELLED = true, FAILED = true, TIMEOUT = true, NODE_FAIL = true,
      OUT_OF_MEMORY = true, PREEMPTED = true, BOOT_FAIL = true, DEADLINE = true }
    while true do
      local t, done = tasks(job), true
      for _, k in ipairs(ks) do
        if not (t[k] and ended[t[k].state] and summary(log_of(job, k))) then done = false end
      end
      if done then return t end
      if os.time() > deadline then
        local logs = {}
        for _, k in ipairs(ks) do logs[#logs + 1] = "task " .. k .. ": " .. tostring(log_of(job, k)) end
        error("job " .. job .. " did not end within " .. WAIT_S .. " s: " .. H.json.encode(t) .. "\n"
          .. table.concat(logs, "\n"))
      end
      H.run("sleep 0.2")
    end
  end

  -- sbatch the recipe from work/ with the three variables; extra: sbatch options. -> job id.
  local function submit(extra)
    local so = H.check_run(string.format("cd %s && %s STORE=%s ARCHIVE=%s JOURNALS=%s PATH=%s sbatch --parsable %s %s",
      H.q(work), slurm_env, H.q(E.dicomweb), H.q(archive), H.q(journals), H.q(bin_dir .. ":" .. os.getenv("PATH")),
      extra or "", H.q(script)))
    local job = so:match("^(%d+)")
    assert(job, "sbatch printed no job id: " .. so)
    return job
  end

  setup(function()
    local conf = os.getenv("HC_TEST_SLURM_CONF")
    if not conf then
      own_cluster = H.tmpdir() .. "/slurm"
      local so = H.check_run(H.q(E.support .. "/slurm") .. " start " .. H.q(own_cluster))
      conf = so:match("SLURM_CONF=([^\n]+)")
    end
    slurm_env = "SLURM_CONF=" .. H.q(conf)
    bin_dir = H.BIN:match("^(.*)/[^/]+$")
    if bin_dir:sub(1, 1) ~= "/" then bin_dir = H.check_run("pwd"):gsub("%s+$", "") .. "/" .. bin_dir end

    work = H.tmpdir()
    archive, journals = work .. "/archive", work .. "/journals"
    H.check_run("mkdir -m 700 " .. H.q(journals))
    script = H.write_file(work .. "/migration.sbatch", readme_recipe())
    study = "1.2.826.0.1.3680043.8.498.64" .. math.random(100000, 999999)
    local opts = {}
    for i = 1, FOLDERS do
      opts[i] = { count = PER_FOLDER, size = SIZE, study = study, prefix = "IM",
        dir = string.format("%s/patient-%02d/study-1", archive, i) }
    end
    files = H.gen_many(opts)
    assert.equal(FOLDERS * PER_FOLDER, #files)
    shard_of, shard_files = {}, {}
    local list = {}   -- the paths relative to the archive, which --shard hashes
    for i, f in ipairs(files) do
      assert.equal(archive .. "/", f.path:sub(1, #archive + 1))
      list[i] = f.path:sub(#archive + 2)
    end
    for k = 1, SHARDS do shard_files[k] = {} end
    for i, k in ipairs(shards_of(list, SHARDS)) do
      shard_of[files[i].path] = k
      shard_files[k][files[i].path] = true
    end
  end)

  teardown(function()
    if own_cluster then H.run(H.q(E.support .. "/slurm") .. " stop " .. H.q(own_cluster)) end
  end)

  it("stores every file once over 4 shards; a shard cancelled mid-way and resubmitted resumes", function()
    local n3 = 0
    for _ in pairs(shard_files[3]) do n3 = n3 + 1 end
    local journal3 = journals .. "/shard-3.jsonl"

    -- 1. The whole array; shard 3 cancelled as soon as its journal records a stored instance.
    local job = submit()
    -- (every second, whether task 3 still runs: a recipe that journals nowhere fails here)
    local _, se, code = H.run(string.format(
      "t=0; until grep -q '^\\[\"stored\"' %s 2>/dev/null; do sleep 0.02; t=$((t+1)); "
      .. "if [ $((t %% 50)) = 0 ] && [ -z \"$(%s squeue -h -j %s_3 -t PD,R,CG -o %%i)\" ]; then "
      .. "echo 'task 3 ended with nothing journaled as stored in %s' >&2; exit 1; fi; "
      .. "[ $t -lt 30000 ] || { echo 'task 3 journaled nothing in 600 s' >&2; exit 1; }; done; %s scancel %s_3",
      H.q(journal3), slurm_env, job, journal3, slurm_env, job))
    assert.equal(0, code, se)
    local t = wait_job(job, { 1, 2, 3, 4 })
    for _, k in ipairs({ 1, 2, 4 }) do
      assert.equal("COMPLETED", t[k].state, "task " .. k .. ": " .. tostring(log_of(job, k)))
      assert.equal("0:0", t[k].exit)
    end
    assert.equal("CANCELLED", t[3].state)

    -- Each journal: one run, only its shard's files, each stored once.
    local first = {}
    for k = 1, SHARDS do
      local runs = journal_runs(journals .. "/shard-" .. k .. ".jsonl")
      assert.equal(1, #runs, "shard " .. k .. " journal runs")
      local seen = {}
      for _, l in ipairs(runs[1]) do
        assert.equal("stored", l.outcome, l.path .. ": " .. tostring(l.reason))
        assert.equal(k, shard_of[l.path], l.path .. " is not a file of shard " .. k)
        assert.is_nil(seen[l.path], l.path .. " journaled twice in shard " .. k)
        seen[l.path] = true
      end
      first[k] = seen
    end
    for _, k in ipairs({ 1, 2, 4 }) do
      assert.same(shard_files[k], first[k])
      local s = summary(log_of(job, k))
      assert.same({ stored = #journal_runs(journals .. "/shard-" .. k .. ".jsonl")[1], already_stored = 0,
        failed = 0, skipped = 0 }, s)
    end
    -- Cancelled mid-way: some of shard 3 stored and journaled, whole requests never sent.
    local had = 0
    for _ in pairs(first[3]) do had = had + 1 end
    local log3 = log_of(job, 3)
    assert.is_true(had > 0 and had < n3, string.format("shard 3 had journaled %d of %d when it ended", had, n3))
    assert.truthy(log3:find("interrupted:", 1, true), log3)
    assert.equal(had, summary(log3).stored)

    -- 2. Shard 3 alone again: it sends only what it had not stored.
    local job2 = submit("--array=3")
    local t2 = wait_job(job2, { 3 })
    local log2 = log_of(job2, 3)
    assert.equal("COMPLETED", t2[3].state, log2)
    assert.same({ stored = n3 - had, already_stored = had, failed = 0, skipped = 0 }, summary(log2))
    local runs = journal_runs(journal3)
    assert.equal(2, #runs)
    for _, l in ipairs(runs[2]) do
      assert.equal("stored", l.outcome, l.path .. ": " .. tostring(l.reason))
      assert.equal(3, shard_of[l.path], l.path .. " is not a file of shard 3")
      assert.is_nil(first[3][l.path], l.path .. " was journaled as stored by the cancelled run and sent again")
      first[3][l.path] = true
    end
    assert.equal(n3 - had, #runs[2])
    assert.same(shard_files[3], first[3])

    -- Together: the archive, each path stored once across shards and runs.
    local stored_lines, union = 0, {}
    for k = 1, SHARDS do
      for _, run in ipairs(journal_runs(journals .. "/shard-" .. k .. ".jsonl")) do
        for _, l in ipairs(run) do
          assert.is_nil(union[l.path], l.path .. " journaled as stored twice")
          union[l.path] = true
          stored_lines = stored_lines + 1
        end
      end
    end
    assert.equal(#files, stored_lines)
    for _, f in ipairs(files) do assert.is_true(union[f.path], f.path .. " in no journal") end

    -- Orthanc holds each instance of the archive, once.
    local sops, count = H.orthanc_sops(study)
    assert.equal(#files, count)
    for _, f in ipairs(files) do
      assert.equal(1, sops[f.sop_instance_uid], f.sop_instance_uid)
    end
  end)
end)
