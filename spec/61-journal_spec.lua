-- SPDX-License-Identifier: MIT
-- The journal (healthcare.dicomweb.journal on core.appender): its lines, lookups, the latest line of a
-- path winning, a torn last line cut off, locking, refusals (not a journal, another store),
-- odd paths; then against the test bed's Orthanc: a rerun skips stored files without reading
-- them, and a 500-file upload killed with SIGKILL at random moments three times, then resumed
-- with the same journal (and a torn line added), ends with every valid instance stored
-- exactly once and a report that adds up.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/61-journal_spec.lua
local H = require "helpers"
local cjson = require "cjson"
local journal = require "healthcare.dicomweb.journal"
local lfs = require "lfs"

local E = H.env

-- The journal's run lines and records, each line checked: complete, JSON, and a run line, a
-- time line or a record (format 2: an array in the order of journal.FIELDS, returned as a table
-- by field name).
local function lines_of(path)
  local s = H.file_bytes(path)
  assert.equal("\n", s:sub(-1), "journal does not end with a newline")
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do
    local t = cjson.decode(l)
    assert.is_table(t)
    if t[1] ~= nil then
      local r = {}
      for i, k in ipairs(journal.FIELDS) do if t[i] ~= cjson.null then r[k] = t[i] end end
      t = r
    end
    assert.is_true(t.journal == "healthcare" or t.outcome == "stored" or t.outcome == "failed" or t.outcome == "sending"
      or (t.time ~= nil and next(t, "time") == nil and next(t) == "time"), l)
    if t.journal or t.outcome then out[#out + 1] = t end
  end
  return out
end

-- The outcome records (not the "sending" lines written before each request).
local function records_of(path)
  local out = {}
  for _, t in ipairs(lines_of(path)) do
    if t.outcome and t.outcome ~= "sending" then out[#out + 1] = t end
  end
  return out
end

local function entry(path, size, mtime, sop)
  return { path = path, size = size, mtime = mtime, sop_instance_uid = sop or ("1.2.3." .. size),
    study_uid = "1.2.9" }
end

describe("journal.open", function()
  local dir
  before_each(function() dir = H.tmpdir() end)

  it("creates the file (mode 0600) with a run line and reports no earlier runs", function()
    local report = {}
    local j = assert(journal.open(dir .. "/j", report, { store = "S", shard = "2/3" }))
    j:close()
    local so = H.check_run("stat -c %a " .. H.q(dir .. "/j"))
    assert.equal("600", so:match("%d+"))
    local lines = lines_of(dir .. "/j")
    assert.equal(1, #lines)
    assert.same({ "healthcare", 2, "S", "2/3" }, { lines[1].journal, lines[1].version, lines[1].store, lines[1].shard })
    assert.truthy(lines[1].time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
    assert.same({ path = dir .. "/j", earlier_runs = 0, earlier_stored = 0, earlier_failed = 0,
      earlier_in_flight = 0, ignored_lines = 0, torn_bytes = 0 }, report.journal)
  end)

  it("writes one line per instance with the documented fields, in order", function()
    local j = assert(journal.open(dir .. "/j"))
    assert.is_true(j:record({
      { entry = entry("/data/a b/1.dcm", 10, 1700000000), outcome = "stored" },
      { entry = entry("/data/2.dcm", 20, 1700000001), outcome = "failed", reason = "HTTP 400" },
    }))
    assert.is_true(j:record({}))
    j:close()
    local s = H.file_bytes(dir .. "/j")
    local first = s:match('\n(%["stored"[^\n]*)\n')
    assert.equal('["stored","/data/a b/1.dcm",10,1700000000,"1.2.3.10","1.2.9"]', first)
    local recs = records_of(dir .. "/j")
    assert.equal(2, #recs)
    assert.same({ "failed", "/data/2.dcm", 20, 1700000001, "HTTP 400" },
      { recs[2].outcome, recs[2].path, recs[2].size, recs[2].mtime, recs[2].reason })
  end)

  it("finds what earlier runs stored, only with the same size and mtime; the latest line wins", function()
    local j = assert(journal.open(dir .. "/j"))
    assert(j:record({
      { entry = entry("/a", 1, 100), outcome = "stored" },
      { entry = entry("/b", 2, 200), outcome = "stored" },
      { entry = entry("/c", 3, 300), outcome = "failed", reason = "x" },
      { entry = entry("/d", 4, 400), outcome = "stored" },
    }))
    assert(j:record({
      { entry = entry("/c", 3, 300), outcome = "stored" },
      { entry = entry("/d", 4, 400), outcome = "failed", reason = "y" },
    }))
    assert.is_nil(j:lookup({ path = "/a", size = 1, mtime = 100 }), "a run sees earlier runs only")
    j:close()
    local report = {}
    j = assert(journal.open(dir .. "/j", report))
    assert.same({ path = "/a", size = 1, mtime = 100, sop_instance_uid = "1.2.3.1", study_uid = "1.2.9" },
      j:lookup({ path = "/a", size = 1, mtime = 100 }))
    assert.is_nil(j:lookup({ path = "/a", size = 2, mtime = 100 }))
    assert.is_nil(j:lookup({ path = "/a", size = 1, mtime = 101 }))
    assert.is_nil(j:lookup({ path = "/x", size = 1, mtime = 100 }))
    assert.truthy(j:lookup({ path = "/c", size = 3, mtime = 300 }))
    assert.is_nil(j:lookup({ path = "/d", size = 4, mtime = 400 }))
    assert.same({ 1, 3, 1 }, { report.journal.earlier_runs, report.journal.earlier_stored, report.journal.earlier_failed })
    j:close()
    assert.is_true(j:close())
    assert.error_matches(function() j:record({}) end, "attempt to use a closed journal$")
  end)

  it("keys files by absolute path, without '.' segments or repeated slashes", function()
    for _, case in ipairs({
      { "a/b.dcm", "/w/a/b.dcm" }, { "./a//./b.dcm", "/w/a/b.dcm" }, { "/x/./y/", "/x/y" },
      { "/x/../y", "/x/../y" }, { "a/.", "/w/a" }, { ".", "/w" }, { "/", "/" }, { "a/./././b", "/w/a/b" },
    }) do
      assert.equal(case[2], journal.key(case[1], "/w"), case[1])
    end
  end)

  it("keeps odd paths intact (spaces, quotes, backslashes, newlines, bytes that are not UTF-8)", function()
    local odd = { "/d/quote\"q.dcm", "/d/back\\slash/x", "/d/new\nline", "/d/\255\254latin", "/d/\\/both" }
    local j = assert(journal.open(dir .. "/j"))
    local list = {}
    for i, p in ipairs(odd) do list[i] = { entry = entry(p, i, i), outcome = "stored" } end
    assert(j:record(list))
    j:close()
    j = assert(journal.open(dir .. "/j"))
    for i, p in ipairs(odd) do assert.truthy(j:lookup({ path = p, size = i, mtime = i }), p) end
    j:close()
  end)

  it("ignores a torn last line and cuts it off, so later lines stay whole", function()
    local j = assert(journal.open(dir .. "/j"))
    assert(j:record({ { entry = entry("/a", 1, 1), outcome = "stored" } }))
    j:close()
    local torn = '{"time":"2024-01-01T00:00:00Z","outcome":"stored","path":"/b","si'
    local f = assert(io.open(dir .. "/j", "ab"))
    f:write(torn)
    f:close()
    local report = {}
    j = assert(journal.open(dir .. "/j", report))
    assert.equal(#torn, report.journal.torn_bytes)
    assert.truthy(j:lookup({ path = "/a", size = 1, mtime = 1 }))
    assert.is_nil(j:lookup({ path = "/b", size = 2, mtime = 2 }))
    assert(j:record({ { entry = entry("/b", 2, 2), outcome = "stored" } }))
    j:close()
    local lines = lines_of(dir .. "/j")   -- every line whole and valid
    assert.equal(4, #lines)
    j = assert(journal.open(dir .. "/j", report))
    assert.truthy(j:lookup({ path = "/b", size = 2, mtime = 2 }))
    assert.equal(0, report.journal.torn_bytes)
    j:close()
  end)

  it("counts and skips a whole line that is not a record", function()
    H.write_file(dir .. "/j", '{"journal":"healthcare","version":1}\nnot json\n{"outcome":"odd","path":"/z"}\n'
      .. '{"outcome":"stored","path":"/a","size":1,"mtime":1}\n')
    local report = {}
    local j = assert(journal.open(dir .. "/j", report))
    assert.equal(2, report.journal.ignored_lines)
    assert.truthy(j:lookup({ path = "/a", size = 1, mtime = 1 }))
    j:close()
  end)

  it("refuses a file that is not a journal, and leaves it unchanged", function()
    local f = H.gen_dicom({ count = 1, size = 64, dir = dir })[1]
    local before = H.sha256(f.path)
    local j, err = journal.open(f.path)
    assert.is_nil(j)
    assert.equal("usage", err.kind)
    assert.equal("'" .. f.path .. "' is not a journal of this program (it does not start with a JSON line);"
      .. " name a new file, or remove this one if a crash left it empty of records", err.message)
    assert.equal(before, H.sha256(f.path))
  end)

  it("refuses a journal of another store", function()
    assert(journal.open(dir .. "/j", nil, { store = "http://a/dicom-web" })):close()
    local j, err = journal.open(dir .. "/j", nil, { store = "http://b/dicom-web" })
    assert.is_nil(j)
    assert.equal("usage", err.kind)
    assert.equal("journal '" .. dir .. "/j' records a migration to http://a/dicom-web, not to http://b/dicom-web:"
      .. " use another journal file", err.message)
    assert(journal.open(dir .. "/j", nil, { store = "http://a/dicom-web" })):close()
  end)

  it("is used by one process at a time", function()
    local j = assert(journal.open(dir .. "/j"))
    local j2, err = journal.open(dir .. "/j")
    assert.is_nil(j2)
    assert.same({ "io", "busy", "journal '" .. dir .. "/j' is in use by another process" },
      { err.kind, err.status, err.message })
    -- another process too (flock(1) tries the same lock)
    local _, _, code = H.run("flock -n " .. H.q(dir .. "/j") .. " true")
    assert.equal(1, code)
    j:close()
    _, _, code = H.run("flock -n " .. H.q(dir .. "/j") .. " true")
    assert.equal(0, code)
    assert(journal.open(dir .. "/j")):close()
  end)

  it("creates the journal's folder, with its parents", function()
    local j = assert(journal.open(dir .. "/new/sub/j"))
    j:close()
    assert.equal("file", lfs.attributes(dir .. "/new/sub/j", "mode"))
  end)

  it("returns io errors for paths it cannot use", function()
    local j, err = journal.open(dir)
    assert.is_nil(j)
    assert.same({ "io", "cannot open journal '" .. dir .. "': Is a directory" }, { err.kind, err.message })
    H.write_file(dir .. "/a-file", "x")
    j, err = journal.open(dir .. "/a-file/sub/j")
    assert.is_nil(j)
    assert.same({ "io", "journal " .. dir .. "/a-file/sub/j: " .. dir .. "/a-file exists and is not a directory" },
      { err.kind, err.message })
    H.check_run("mkfifo " .. H.q(dir .. "/fifo"))
    j, err = journal.open(dir .. "/fifo")
    assert.is_nil(j)
    assert.equal("io", err.kind)
    j, err = journal.open("")
    assert.is_nil(j)
    assert.same({ "usage", "journal must be a file name" }, { err.kind, err.message })
  end)
end)

describe("store with a journal", function()
  if not H.need_testbed() then return end
  local healthcare = require "healthcare"

  it("skips stored files without reading them, and sends changed ones again", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 6, size = 300, dir = dir .. "/in" })
    local jpath = dir .. "/journal"
    local st = assert(healthcare.dicomweb(E.dicomweb))
    local c = files[3].path
    local c_sec = H.check_run("stat -c '%Y' " .. H.q(c)):match("%d+")
    H.check_run("touch -d @" .. c_sec .. ".100000000 " .. H.q(c))
    local r1 = assert(st:store(dir .. "/in", { journal = jpath, max_request_instances = 2 }))
    assert.same({ 6, 0, 0, 0 }, { #r1.stored, #r1.already_stored, #r1.failed, #r1.skipped })
    assert.equal(0, r1.journal.earlier_runs)
    -- Same size and mtime (to the nanosecond), other bytes (not even DICOM): trusted, so not read,
    -- so not skipped.
    local a = files[1].path
    local so = H.check_run("stat -c '%s %.9Y' " .. H.q(a))
    local size, mtime = so:match("(%d+) ([%d.]+)")
    H.write_file(a, string.rep("x", tonumber(size)))
    H.check_run("touch -d @" .. mtime .. " " .. H.q(a))
    -- A newer mtime: sent again.
    H.check_run("touch -d @" .. (tonumber(mtime:match("%d+")) + 5) .. " " .. H.q(files[2].path))
    -- Rewritten with other bytes of the same size in the second it was stored: sent again (the
    -- whole seconds alone would have it skipped for ever).
    local bytes = H.file_bytes(c)
    H.write_file(c, bytes:sub(1, -2) .. string.char((bytes:byte(-1) + 1) % 256))
    H.check_run("touch -d @" .. c_sec .. ".200000000 " .. H.q(c))
    local r2 = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ 4, 0, 0 }, { #r2.already_stored, #r2.failed, #r2.skipped })
    local sent = {}
    for _, r in ipairs(r2.stored) do sent[#sent + 1] = r.path end
    table.sort(sent)
    local expected = { files[2].path, c }
    table.sort(expected)
    assert.same(expected, sent)
    assert.same({ 1, 6, 0 }, { r2.journal.earlier_runs, r2.journal.earlier_stored, r2.journal.earlier_failed })
    local skipped = {}
    for _, r in ipairs(r2.already_stored) do
      skipped[r.path] = r
      assert.equal("stored in an earlier run", r.reason)
    end
    assert.equal(files[1].sop_instance_uid, skipped[a].sop_instance_uid)
    assert.equal(files[1].study_uid, skipped[a].study_uid)
    st:close()
  end)

  it("finds files stored by a relative path when resumed from elsewhere with an absolute one", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 3, size = 300, dir = dir .. "/in" })
    local jpath = dir .. "/journal"
    local st = assert(healthcare.dicomweb(E.dicomweb))
    local here = assert(lfs.currentdir())
    assert(lfs.chdir(dir))
    local ok, r1 = pcall(st.store, st, "./in/", { journal = jpath })
    assert(lfs.chdir(here))
    assert(ok, r1)
    assert.same({ 3, 0 }, { #r1.stored, #r1.already_stored })
    for _, rec in ipairs(records_of(jpath)) do
      assert.equal(dir .. "/in/", rec.path:sub(1, #dir + 4), rec.path)
    end
    local r2 = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ 0, 3, 0 }, { #r2.stored, #r2.already_stored, r2.requests })
    local skipped = {}
    for _, r in ipairs(r2.already_stored) do skipped[r.path] = true end
    for _, f in ipairs(files) do assert.truthy(skipped[f.path], f.path) end
    st:close()
  end)

  it("resumes a 500-file upload killed three times with SIGKILL: each valid instance stored once", function()
    local dir = H.tmpdir()
    local files = H.gen_dicom({ count = 500, size = 256, dir = dir .. "/in", prefix = "im" })
    for i = 1, 5 do H.write_file(dir .. "/in/junk" .. i .. ".dcm", string.rep("not dicom ", 30 + i)) end
    local study = files[1].study_uid
    local jpath = dir .. "/journal"
    local cmd = H.healthcare_command({ "store", E.dicomweb, dir .. "/in", "--journal", jpath,
      "--max-instances", "2", "--concurrency", "1" })
    local progress = {}
    for kill = 1, 3 do
      -- Killed at a random moment: once this run has journaled between 1 and 100 instances of its
      -- own (a fixed delay falls before the journal is opened on a loaded machine, and after the
      -- run's end on an idle one: 500 small files take well under a second).
      local lines_before = 0
      for _ in (H.file_bytes(jpath) or ""):gmatch("\n") do lines_before = lines_before + 1 end
      local target = lines_before + 1 + math.random(1, 100) -- this run's header, then records
      local _, se, code = H.run(string.format("%s & pid=$!; n=0; "
        .. "while [ \"$(cat %s 2>/dev/null | wc -l)\" -lt %d ] && [ $n -lt 6000 ]; do sleep 0.005; n=$((n+1)); done; "
        .. "kill -KILL $pid; wait $pid", cmd, H.q(jpath), target))
      assert.equal(137, code, "run " .. kill .. " ended before it was killed: " .. se)
      local stored = 0
      for _, r in ipairs(records_of(jpath)) do if r.outcome == "stored" then stored = stored + 1 end end
      progress[kill] = stored
    end
    -- The crash of a write: half a line at the end.
    local f = assert(io.open(jpath, "ab"))
    local torn = '{"time":"2024-01-01T00:00:00Z","outcome":"stored","path":"' .. files[500].path:sub(1, 20)
    f:write(torn)
    f:close()

    local so, se, code = H.run(cmd .. " --json")
    assert.equal(0, code, se)
    local report = assert(H.json.decode(so), so)
    -- The report adds up: each input file once, in exactly one list.
    assert.equal(0, #report.failed)
    assert.equal(5, #report.skipped)
    assert.equal(500, #report.stored + #report.already_stored)
    -- Already stored: what the runs journaled as stored, and what the last kill left in flight
    -- that the server was found to hold (asked, not sent again).
    local in_flight = report.journal.in_flight
    assert.is_nil(in_flight.error)
    assert.truthy(in_flight.found <= in_flight.in_flight)
    assert.equal(progress[3] + in_flight.found, #report.already_stored)
    assert.equal(report.journal.earlier_stored + in_flight.found, #report.already_stored)
    assert.equal(3, report.journal.earlier_runs)
    assert.equal(#torn, report.journal.torn_bytes)
    local seen = {}
    for _, list in ipairs({ report.stored, report.already_stored }) do
      for _, r in ipairs(list) do
        assert.is_nil(seen[r.path], r.path .. " twice in the report")
        seen[r.path] = r.sop_instance_uid
      end
    end
    for _, fl in ipairs(files) do assert.equal(fl.sop_instance_uid, seen[fl.path]) end
    -- The journal: whole lines only; each path stored exactly once over all runs (nothing a
    -- run had journaled was sent again).
    local stored_lines = {}
    for _, r in ipairs(records_of(jpath)) do
      assert.equal("stored", r.outcome)
      assert.is_nil(stored_lines[r.path], r.path .. " journaled as stored twice")
      stored_lines[r.path] = true
    end
    for _, fl in ipairs(files) do assert.truthy(stored_lines[fl.path], fl.path .. " not journaled") end
    -- Orthanc: every valid instance, each once, nothing else in the study.
    local held, n = H.orthanc_sops(study)
    assert.equal(500, n)
    for _, fl in ipairs(files) do assert.equal(1, held[fl.sop_instance_uid]) end
    -- A fourth run finds everything done.
    so, se, code = H.run(cmd .. " --json")
    assert.equal(0, code, se)
    report = H.json.decode(so)
    assert.same({ 0, 500, 4 }, { #report.stored, #report.already_stored, report.journal.earlier_runs })
    print(string.format("\n  journaled as stored after each SIGKILL: %s", table.concat(progress, ", ")))
  end)
end)

describe("a store resumed with instances in flight that the server lists", function()
  if not H.need_testbed() then return end
  local healthcare = require "healthcare"

  -- A listed SOP Instance UID does not prove these bytes were stored: the server (the emulator,
  -- Google's 409 in front of Orthanc) may hold other bytes under it and have refused the request
  -- a crash left in flight.
  it("journals as stored only what the server gives back byte for byte; a conflict is sent and fails", function()
    local dir = H.tmpdir()
    local st = assert(healthcare.dicom_store(E.store, { endpoint = E.endpoint, access_token = E.token,
      token_cache = false }))
    finally(function() st:close() end)
    local old = H.gen_dicom({ count = 1, size = 600, dir = dir .. "/old" })[1]
    local same = H.gen_dicom({ count = 1, size = 500, dir = dir .. "/in", prefix = "same" })[1]
    assert.equal(2, assert(st:store({ old.path, same.path })).counts.stored)
    local changed = H.gen_dicom({ count = 1, size = 900, dir = dir .. "/in", prefix = "changed", study = old.study_uid,
      series = old.series_uid, sop = old.sop_instance_uid })[1]
    -- what a kill -9 with both in flight leaves
    local jpath = dir .. "/journal"
    local j = assert(journal.open(jpath, nil, { store = st.name }))
    local list = {}
    for i, f in ipairs({ same, changed }) do
      local a = assert(lfs.attributes(f.path))
      list[i] = { entry = { path = f.path, size = a.size, mtime = a.modification }, outcome = "sending" }
    end
    assert(j:record(list))
    j:close()
    local r = assert(st:store(dir .. "/in", { journal = jpath }))
    assert.same({ in_flight = 2, found = 1 }, r.journal.in_flight)
    assert.same({ 0, 1, 1 }, { #r.stored, #r.already_stored, #r.failed })
    assert.equal(same.path, r.already_stored[1].path)
    assert.equal(changed.path, r.failed[1].path)
    assert.matches("already exists with different content", r.failed[1].reason)
    -- the store keeps its bytes, and the journal says failed: the next run sends it again
    assert.equal(H.sha256(old.path), H.sha256_string(H.orthanc_instance_file(old.sop_instance_uid)))
    local outcome = {}
    for _, rec in ipairs(records_of(jpath)) do outcome[rec.path] = rec.outcome end
    assert.same({ [same.path] = "stored", [changed.path] = "failed" }, outcome)
  end)
end)
