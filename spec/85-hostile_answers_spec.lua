-- SPDX-License-Identifier: MIT
-- Bounded answers: a hostile DICOMweb server (spec/support/hostile_server.py) tries to exhaust
-- the client's memory with gzip bombs (metadata, search, the seed form's JSON, retrieve), to
-- fill its disk with an answer encoded though identity was asked for or with an endless one, to
-- hold it forever with a trickle, to make 100,000 files of 100,000 tiny parts, and to pass junk
-- off as instances. Each is stopped early, with an error naming the option that bounds it, and
-- leaves no partial file; the peak memory of the command (or of a Lua process) is measured with
-- /usr/bin/time -v and stays under 64 MiB. Honest compressed JSON from Orthanc still works.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/85-hostile_answers_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local retrieve = require "healthcare.dicomweb.retrieve"

local E = H.env
local PY = "/usr/bin/python3"
local RSS_LIMIT_KB = 64 * 1024
-- Under AddressSanitizer (scripts/test-sanitize) memory numbers mean nothing: the bombs must still
-- be stopped early (asserted from the errors), the peak RSS is not compared.
local ASAN = (os.getenv("HC_LUA") or ""):find("asan", 1, true) ~= nil
local STUDY = "1.2.826.0.1.3680043.8.498.85"
local SEED_SEARCH = "locations-datasets-dicom-stores-search-for-studies"

-- ---- the hostile server, serving three real DICOM files of one study -----------------------

local dicom = H.gen_dicom { count = 3, study = STUDY, size = 2048 }
local server_dir = H.tmpdir()
local words = { H.q(PY), H.q(E.support .. "/hostile_server.py") }
for _, f in ipairs(dicom) do words[#words + 1] = H.q(f.path) end
local URL, stop_server = H.start_server("hostile server", table.concat(words, " "), server_dir)
teardown(stop_server)

-- ---- helpers -------------------------------------------------------------------------------

local function store_at(scenario)
  -- one attempt: a hostile server answers alike every time (retries: spec 96)
  return assert(healthcare.dicomweb(URL .. "/" .. scenario, { retry = { max_attempts = 1 } }))
end

-- The names in dir, hidden ones too, sorted.
local function listing(dir)
  local names = {}
  for name in H.check_run("ls -A " .. H.q(dir)):gmatch("[^\n]+") do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- The Accept-Encoding of the server's last request for path.
local function last_accept_encoding(path)
  local r = H.curl { URL .. "/_requests" }
  local found
  for _, q in ipairs(r.json or {}) do
    if q.path == path then found = q end
  end
  assert(found, "no request for " .. path)
  return found.accept_encoding
end

-- A shell command run under /usr/bin/time -v: stdout, stderr, exit code, peak RSS in KiB.
local function measured(cmd)
  local out, err, code = H.run("/usr/bin/time -v " .. cmd)
  local kb = tonumber(err:match("Maximum resident set size %(kbytes%): (%d+)"))
  assert(kb, "no RSS in: " .. err)
  return out, err, code, kb
end

-- The peak RSS of a run under a bomb: printed, and under 64 MiB.
local function assert_rss(kb, what)
  print(string.format("\npeak RSS under a gzip bomb, %s: %.1f MiB", what, kb / 1024))
  if not ASAN then assert.is_true(kb < RSS_LIMIT_KB, string.format("peak RSS %.1f MiB", kb / 1024)) end
end

-- `healthcare args...` as a process, measured.
local function healthcare_measured(args)
  return measured(H.healthcare_command(args))
end

-- A Lua process (the interpreter running these specs) that runs `code` with `store` bound to
-- healthcare.dicomweb(url), measured. It prints what code returns.
local function lua_measured(url, code)
  local script = H.write_file(H.tmpdir() .. "/child.lua", [[
package.path = arg[1] .. "/lua/?.lua;" .. arg[1] .. "/lua/?/init.lua;" .. package.path
package.cpath = arg[2] .. "/?.so;" .. package.cpath
local healthcare = require "healthcare"
local store = assert(healthcare.dicomweb(arg[3], { retry = { max_attempts = 1 } }))
local function run() ]] .. code .. [[ end
local res, err = run()
io.write(tostring(res), "\n", err and tostring(err.status) or "", "\n", err and tostring(err) or "", "\n")
]])
  local lua = os.getenv("HC_LUA") or "lua5.4"
  local cdir = jit and (os.getenv("HC_LUAJIT_DIR") or "build/luajit") or (os.getenv("HC_BUILD_DIR") or "build")
  return measured(table.concat({ H.q(lua), H.q(script), H.q(os.getenv("HC_SOURCE_DIR") or "."), H.q(cdir),
    H.q(url) }, " "))
end

-- ---- gzip bombs ----------------------------------------------------------------------------

describe("a gzip bomb (1 MB on the wire, 1 GiB decoded)", function()
  it("against retrieve_metadata is cut early: kind transport, code compression_ratio, < 64 MiB", function()
    local out, err, _, kb = lua_measured(URL .. "/gzip-json", "return store:retrieve_metadata('1.2.3')")
    local lines = {}
    for l in out:gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
    assert.equal("nil", lines[1], out .. err)
    assert.equal("compression_ratio", lines[2], out)
    assert.matches("compression bomb", out)
    assert.matches("max_compression_ratio", out)
    -- stopped after a few MiB decoded from a few KB: "(4259840 bytes from 4249)"
    local decoded, wire = out:match("%((%d+) bytes from (%d+)%)")
    assert.is_true(tonumber(decoded) < 8 * 1024 * 1024 and tonumber(wire) < 64 * 1024, out)
    assert_rss(kb, "retrieve_metadata")
    -- metadata is JSON: asked for compressed
    assert.equal("gzip, deflate", last_accept_encoding("/gzip-json/studies/1.2.3/metadata"))
  end)

  it("against a search (healthcare search) is cut early, exit 1, < 64 MiB", function()
    local _, err, code, kb = healthcare_measured { "search", URL .. "/gzip-json", "studies" }
    assert.equal(1, code, err)
    assert.matches("compression bomb", err)
    assert_rss(kb, "healthcare search")
    assert.equal("gzip, deflate", last_accept_encoding("/gzip-json/studies"))
  end)

  it("against the seed form's JSON answer is cut early, exit 1, nothing written, < 64 MiB", function()
    local out_file = H.tmpdir() .. "/answer.json"
    local out, err, code, kb = healthcare_measured { "projects", SEED_SEARCH, E.store, "studies",
      "--endpoint", URL .. "/gzip-json", "-p", "access-token=x", "-o", out_file }
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("compression bomb", err)
    assert.is_nil(H.file_bytes(out_file))
    assert_rss(kb, "healthcare projects ..." .. SEED_SEARCH)
  end)

  it("against healthcare retrieve is refused (identity was asked), or cut with --compressed; no file", function()
    for _, extra in ipairs({ {}, { "--compressed" } }) do
      local dir = H.tmpdir() .. "/out"
      local args = { "retrieve", URL .. "/gzip-multipart", STUDY, "-o", dir }
      for _, a in ipairs(extra) do args[#args + 1] = a end
      local _, err, code, kb = healthcare_measured(args)
      assert.equal(1, code, err)
      if extra[1] then
        assert.matches("compression bomb", err)
        assert.equal("gzip, deflate", last_accept_encoding("/gzip-multipart/studies/" .. STUDY))
      else
        assert.matches("gzip%-encoded %(Content%-Encoding%) although identity was asked for", err)
        assert.matches("%-%-compressed asks for and accepts", err)
        assert.equal("identity", last_accept_encoding("/gzip-multipart/studies/" .. STUDY))
      end
      assert.same({}, listing(dir))
      assert_rss(kb, "healthcare retrieve " .. (extra[1] or ""))
    end
  end)
end)

describe("a gzip bomb as Transfer-Encoding: gzip (libcurl would decode it unasked)", function()
  it("is refused at its header, for a retrieve (no file) and a search alike", function()
    local dir = H.tmpdir()
    for _, compressed in ipairs({ false, true }) do
      local res, err = store_at("gzip-te"):retrieve_study(STUDY, { to = dir, compressed = compressed })
      assert.is_nil(res)
      assert.equal("encoding", err.status)
      assert.matches("Transfer%-Encoding 'gzip'; only chunked is accepted", err.message)
      assert.same({}, listing(dir))
    end
    local results = assert(store_at("gzip-te"):search_studies {})
    local list, err = results:all()
    assert.is_nil(list)
    assert.equal("encoding", err.status)
  end)
end)

-- ---- content codings on a retrieve -----------------------------------------------------------

describe("a retrieve answered with Content-Encoding: gzip", function()
  it("fails with code 'encoding' naming the option when identity was asked for, and writes nothing", function()
    local dir = H.tmpdir()
    local res, err = store_at("gzip-files"):retrieve_study(STUDY, { to = dir })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("encoding", err.status)
    assert.equal("compressed", err.option)
    assert.matches("^RetrieveStudy: .*gzip%-encoded .*identity was asked for.*%(option compressed%)$", err.message)
    assert.same({}, err.files)
    assert.same({}, listing(dir))
    assert.equal("identity", last_accept_encoding("/gzip-files/studies/" .. STUDY))
  end)

  it("with a coding other than one gzip or deflate, is refused even when compressed = true", function()
    local dir = H.tmpdir()
    local res, err = store_at("odd-coding"):retrieve_study(STUDY, { to = dir, compressed = true })
    assert.is_nil(res)
    assert.equal("encoding", err.status)
    assert.is_nil(err.option)
    assert.matches("Content%-Encoding 'br, gzip%?%]0;pwned%?'; only gzip or deflate, applied once, is decoded",
      err.message)
    assert.same({}, listing(dir))
  end)

  it("is decoded when the caller opted in (compressed = true): the instances arrive whole", function()
    local dir = H.tmpdir()
    local res = assert(store_at("gzip-files"):retrieve_study(STUDY, { to = dir, compressed = true }))
    assert.equal(3, #res.files)
    assert.same({}, res.rejected)
    local want = {}
    for _, f in ipairs(dicom) do
      want[#want + 1] = f.sop_instance_uid .. ".dcm"
      assert.equal(H.sha256(f.path), H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    end
    table.sort(want)
    assert.same(want, listing(dir))
    assert.equal("gzip, deflate", last_accept_encoding("/gzip-files/studies/" .. STUDY))
  end)
end)

-- ---- bounds of a retrieve --------------------------------------------------------------------

describe("retrieve bounds", function()
  it("an endless answer stops at max_bytes (code too_large), no partial file", function()
    local dir = H.tmpdir()
    local res, err = store_at("endless"):retrieve_study(STUDY, { to = dir, max_bytes = 20 * 1024 * 1024 })
    assert.is_nil(res)
    assert.equal("transport", err.kind)
    assert.equal("too_large", err.status)
    assert.equal("max_bytes", err.option)
    assert.matches("larger than 20971520 bytes.*%(option max_bytes%)", err.message)
    assert.same({}, listing(dir))
  end)

  it("an endless part stops at max_part_bytes (code part_too_large), no partial file", function()
    local dir = H.tmpdir()
    local res, err = store_at("endless"):retrieve_series(STUDY, STUDY .. ".1", { to = dir,
      max_part_bytes = 5 * 1024 * 1024 })
    assert.is_nil(res)
    assert.equal("part_too_large", err.status)
    assert.equal("max_part_bytes", err.option)
    assert.matches("part 1 of the answer is larger than 5242880 bytes", err.message)
    assert.same({}, listing(dir))
  end)

  it("healthcare retrieve: an endless answer stops at --max-bytes, exit 1, nothing left", function()
    local dir = H.tmpdir() .. "/out"
    local t0 = core.now()
    local _, err, code = H.healthcare { "retrieve", URL .. "/endless", STUDY, "-o", dir, "--max-bytes", "30M" }
    assert.equal(1, code, err)
    assert.matches("larger than 31457280 bytes", err)
    assert.matches("%-%-max%-bytes raises this limit", err)
    assert.same({}, listing(dir))
    assert.is_true(core.now() - t0 < 60)
  end)

  it("a trickle is cut by the floor speed (code too_slow) and by the deadline (code timeout)", function()
    local dir = H.tmpdir()
    local store = store_at("trickle/every=0.3")
    local t0 = core.now()
    local res, err = store:retrieve_study(STUDY, { to = dir, idle_timeout = 2, min_speed = 100 })
    assert.is_nil(res)
    assert.equal("too_slow", err.status)
    assert.equal("min_speed", err.option)
    assert.is_true(err.retryable)
    assert.matches("fewer than 100 bytes per second moved for 2 s", err.message)
    res, err = store:retrieve_study(STUDY, { to = dir, timeout = 1.5 })
    assert.is_nil(res)
    assert.equal("timeout", err.status)
    assert.equal("timeout", err.option)
    assert.matches("not done within the timeout of 1.5 s", err.message)
    assert.is_true(core.now() - t0 < 30)
    assert.same({}, listing(dir))
  end)

  it("healthcare retrieve --timeout cuts a trickle, exit 1, nothing left", function()
    local dir = H.tmpdir() .. "/out"
    local _, err, code = H.healthcare { "retrieve", URL .. "/trickle/every=0.3", STUDY, "-o", dir, "--timeout", "1.5" }
    assert.equal(1, code, err)
    assert.matches("not done within the timeout of 1.5 s", err)
    assert.matches("%-%-timeout raises this limit", err)
    assert.same({}, listing(dir))
  end)

  it("the seed form's --timeout cuts a trickle (exit 1); a bad value is a usage error (exit 2)", function()
    local t0 = core.now()
    local _, err, code = H.healthcare { "projects", SEED_SEARCH, E.store, "studies", "--timeout", "1.5",
      "--endpoint", URL .. "/trickle/every=0.3", "-p", "access-token=x" }
    assert.equal(1, code, err)
    assert.matches("not done within the timeout of 1.5 s", err)
    assert.is_true(core.now() - t0 < 30)
    _, err, code = H.healthcare { "projects", SEED_SEARCH, E.store, "studies", "--timeout", "soon" }
    assert.equal(2, code, err)
    assert.matches("%-%-timeout needs a number of seconds greater than 0, got 'soon'", err)
  end)

  it("100,000 tiny parts stop at the parts bound, and no file is left", function()
    local dir = H.tmpdir() .. "/out"
    local _, err, code = H.healthcare { "retrieve", URL .. "/parts/n=100000", STUDY, "-o", dir, "--max-parts", "2000" }
    assert.equal(1, code, err)
    assert.matches("the answer has more than 2000 parts", err)
    assert.matches("%-%-max%-parts raises this limit", err)
    assert.same({}, listing(dir))
    -- The default bound applies when none is given (lowered here: the real one is 100,000).
    local saved = retrieve.BOUNDS.max_parts
    retrieve.BOUNDS.max_parts = 500
    local ok, res, rerr = pcall(store_at("parts/n=100000").retrieve_study, store_at("parts/n=100000"), STUDY,
      { to = H.tmpdir() })
    retrieve.BOUNDS.max_parts = saved
    assert.is_true(ok, res)
    assert.is_nil(res)
    assert.equal("too_many_parts", rerr.status)
    assert.equal("max_parts", rerr.option)
    assert.matches("more than 500 parts", rerr.message)
    -- the 500 parts that did arrive are one byte each: not instances, not written
    assert.same({}, rerr.files)
    assert.equal(500, #rerr.rejected)
  end)

  it("skip_existing asks no more than the series when each is as complete as the server counts", function()
    local dir = H.tmpdir()
    for _, f in ipairs(dicom) do
      H.check_run("cp " .. H.q(f.path) .. " " .. H.q(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    end
    -- the paths the server was asked for by a retrieve_study of scenario
    local function asked(scenario)
      local before = #(H.curl { URL .. "/_requests" }.json or {})
      local res = assert(store_at(scenario):retrieve_study(STUDY, { to = dir, skip_existing = true }))
      assert.same({ 0, #dicom }, { res.count, #res.kept })
      local paths = {}
      for i, q in ipairs(H.curl { URL .. "/_requests" }.json or {}) do
        if i > before then paths[#paths + 1] = q.path:match("/studies/.*$") end
      end
      return paths
    end
    -- with NumberOfSeriesRelatedInstances: the search of the series, and that is all
    assert.same({ "/studies/" .. STUDY .. "/series" }, asked("parts/n=3"))
    -- without it: the series' instances are searched, and none is missing
    local paths = asked("parts/n=3/nocount=1")
    assert.equal(2, #paths, table.concat(paths, "\n"))
    assert.equal("/studies/" .. STUDY .. "/series", paths[1])
    assert.matches("^/studies/" .. STUDY:gsub("%p", "%%%0") .. "/series/[%d.]+/instances$", paths[2])
  end)

  it("bounds are shared by the requests of a skip_existing retrieve", function()
    -- The first instance is there: the two others are fetched one request each (request_cost =
    -- 0: never the series again), and each answer has 3 (tiny) parts. max_parts = 4 lets the
    -- first through and leaves 1 for the second.
    local dir = H.tmpdir()
    H.check_run("cp " .. H.q(dicom[1].path) .. " " .. H.q(dir .. "/" .. dicom[1].sop_instance_uid .. ".dcm"))
    local store = store_at("parts/n=3")
    local res, err = store:retrieve_study(STUDY, { to = dir, skip_existing = true, max_parts = 4, request_cost = 0 })
    assert.is_nil(res)
    assert.equal("too_many_parts", err.status)
    assert.equal("max_parts", err.option)
    assert.matches("the answer has more than 1 parts", err.message)
    assert.equal(4, #err.rejected)  -- 3 of the first answer, 1 of the second
    assert.same({ dicom[1].sop_instance_uid .. ".dcm" }, listing(dir))
    -- with room for both, both answers are taken (and their parts rejected: not DICOM)
    res = assert(store:retrieve_study(STUDY, { to = dir, skip_existing = true, max_parts = 6, request_cost = 0 }))
    assert.equal(6, #res.rejected)
    assert.equal(1, #res.kept)
  end)

  it("raises on bounds of the wrong type or sign (programming mistakes)", function()
    local store = store_at("endless")
    for _, case in ipairs({ { max_bytes = -1 }, { max_parts = 1.5 }, { timeout = "5" }, { compressed = 1 } }) do
      case.to = H.tmpdir()
      local ok, err = pcall(store.retrieve_study, store, STUDY, case)
      assert.is_false(ok)
      assert.matches("bad option '[%w_]+' to 'retrieve_study'", err)
    end
  end)
end)

-- ---- parts that are not DICOM ---------------------------------------------------------------

describe("parts that are not DICOM instances", function()
  -- D: a DICOM file, X: text, E: an empty part, H: an HTML page, R: a DICOM file repeated
  local PATTERN = "DXDEHRD"

  it("are rejected with a reason, not counted, and not written by default", function()
    local dir = H.tmpdir()
    local res = assert(store_at("mixed/pattern=" .. PATTERN):retrieve_study(STUDY, { to = dir }))
    local want = {}
    for i, f in ipairs(dicom) do
      assert.equal(dir .. "/" .. f.sop_instance_uid .. ".dcm", res.files[i].path)
      assert.equal(f.sop_instance_uid, res.files[i].sop_instance_uid)
      assert.equal(H.sha256(f.path), H.sha256(res.files[i].path))
      want[i] = f.sop_instance_uid .. ".dcm"
    end
    assert.equal(3, #res.files)
    table.sort(want)
    assert.same(want, listing(dir))
    local reasons = {}
    for _, r in ipairs(res.rejected) do
      reasons[#reasons + 1] = r.part
      assert.is_nil(r.path)
    end
    assert.same({ 2, 4, 5, 6 }, reasons)
    assert.matches("^not a DICOM file", res.rejected[1].reason)
    assert.matches("^not a DICOM file", res.rejected[2].reason)
    assert.matches("Content%-Type text/html", res.rejected[3].reason)
    assert.equal("a second copy of SOP Instance UID " .. dicom[2].sop_instance_uid .. " (part 3)",
      res.rejected[4].reason)
  end)

  it("are rejected alike with list_files = false: the instances told to on_file and counted, none listed",
    function()
    local dir = H.tmpdir()
    local told = {}
    -- a pause after each part: the parts are handed over as they come, the first copy long before the repeat
    local res = assert(store_at("mixed/pattern=" .. PATTERN .. "/pause=0.25"):retrieve_study(STUDY, { to = dir,
      list_files = false, on_file = function(f) told[#told + 1] = f end }))
    assert.same({}, res.files)
    assert.equal(3, res.count)
    assert.equal(3, #told)
    local bytes, want = 0, {}
    for i, f in ipairs(dicom) do
      assert.equal(dir .. "/" .. f.sop_instance_uid .. ".dcm", told[i].path)
      assert.equal(H.sha256(f.path), H.sha256(told[i].path))
      bytes = bytes + told[i].size
      want[i] = f.sop_instance_uid .. ".dcm"
    end
    assert.equal(bytes, res.bytes)
    table.sort(want)
    assert.same(want, listing(dir))
    local reasons = {}
    for _, r in ipairs(res.rejected) do reasons[#reasons + 1] = r.part end
    assert.same({ 2, 4, 5, 6 }, reasons)
    -- the sink knows the UIDs of the parts it handed over: the repeat is still a second copy
    assert.equal("a second copy of SOP Instance UID " .. dicom[2].sop_instance_uid .. " (part 3)",
      res.rejected[4].reason)
  end)

  it("are written as part-<n>.rejected with keep_rejected", function()
    local dir = H.tmpdir()
    local res = assert(store_at("mixed/pattern=" .. PATTERN):retrieve_study(STUDY, { to = dir, keep_rejected = true }))
    assert.equal(3, #res.files)
    assert.equal(4, #res.rejected)
    assert.equal(dir .. "/part-2.rejected", res.rejected[1].path)
    assert.equal(string.rep("not DICOM\n", 30), H.file_bytes(dir .. "/part-2.rejected"))
    assert.equal("", H.file_bytes(dir .. "/part-4.rejected"))
    assert.equal(H.sha256(dicom[2].path), H.sha256(dir .. "/part-6.rejected"))
    assert.equal(7, #listing(dir))
  end)

  it("never replace a part kept before: a second run, and instances asked one by one, take the next name",
    function()
    local dir = H.tmpdir()
    local first = assert(store_at("mixed/pattern=DXD"):retrieve_study(STUDY, { to = dir, keep_rejected = true }))
    assert.equal(dir .. "/part-2.rejected", first.rejected[1].path)
    H.write_file(dir .. "/part-2.rejected", "kept by the first run\n")
    local second = assert(store_at("mixed/pattern=DXD"):retrieve_study(STUDY, { to = dir, keep_rejected = true }))
    assert.equal(1, #second.rejected)
    assert.equal(2, second.rejected[1].part)
    assert.equal(dir .. "/part-2.1.rejected", second.rejected[1].path)
    assert.equal("kept by the first run\n", H.file_bytes(dir .. "/part-2.rejected"))
    assert.equal(string.rep("not DICOM\n", 30), H.file_bytes(dir .. "/part-2.1.rejected"))

    -- skip_existing asks each missing instance alone (request_cost = 0): each answer's part 1
    dir = H.tmpdir()
    H.write_file(dir .. "/" .. dicom[1].sop_instance_uid .. ".dcm", H.file_bytes(dicom[1].path))
    local res = assert(store_at("mixed/pattern=X"):retrieve_study(STUDY, { to = dir, keep_rejected = true,
      skip_existing = true, request_cost = 0 }))
    assert.equal(0, res.count)
    assert.equal(1, #res.kept)
    assert.equal(2, #res.rejected)
    assert.same({ dir .. "/part-1.rejected", dir .. "/part-1.1.rejected" }, { res.rejected[1].path, res.rejected[2].path })
    for _, r in ipairs(res.rejected) do
      assert.equal(1, r.part)
      assert.equal(string.rep("not DICOM\n", 30), H.file_bytes(r.path))
    end
    assert.same({ dicom[1].sop_instance_uid .. ".dcm", "part-1.1.rejected", "part-1.rejected" }, listing(dir))
  end)

  it("healthcare retrieve: each is reported with its reason, exit 1; --json lists them", function()
    local dir = H.tmpdir() .. "/out"
    local out, err, code = H.healthcare { "retrieve", URL .. "/mixed/pattern=XDXXXXXXXXX", STUDY, "-o", dir,
      "--no-progress" }
    assert.equal(1, code, err)
    assert.equal(dir .. "/" .. dicom[1].sop_instance_uid .. ".dcm\n", out)
    local n = 0
    for part, reason in err:gmatch("part (%d+) of the answer is not kept as an instance: ([^\n]*)") do
      n = n + 1
      assert.not_equal("2", part)
      assert.matches("^not a DICOM file", reason)
    end
    assert.equal(10, n, err)
    assert.matches("retrieved 1 instance, .*; 10 parts rejected", err)
    assert.same({ dicom[1].sop_instance_uid .. ".dcm" }, listing(dir))

    dir = H.tmpdir() .. "/out"
    out, err, code = H.healthcare { "retrieve", URL .. "/mixed/pattern=DX", STUDY, "-o", dir, "--json",
      "--keep-rejected" }
    assert.equal(1, code, err)
    local report = assert(cjson.decode(out), out)
    assert.equal(1, #report.files)
    assert.equal(1, #report.rejected)
    assert.equal(2, report.rejected[1].part)
    assert.equal(dir .. "/part-2.rejected", report.rejected[1].path)
    assert.matches("^not a DICOM file", report.rejected[1].reason)
  end)
end)

-- ---- an instance asked for alone --------------------------------------------------------------

describe("an instance asked for alone", function()
  -- every answer to an instance asked for alone is the first file, whichever was asked
  local function ino(path) return require("lfs").attributes(path, "ino") end
  local first = dicom[1].sop_instance_uid .. ".dcm"
  local asked = "asked for instance " .. dicom[2].sop_instance_uid:gsub("%p", "%%%0")

  it("answered with another is a failure of it: not counted, and the file there (kept, skip_existing) stays",
    function()
    for _, list_files in ipairs({ true, false }) do
      local dir = H.tmpdir()
      H.check_run("cp " .. H.q(dicom[1].path) .. " " .. H.q(dir .. "/" .. first))
      local before = ino(dir .. "/" .. first)
      local told = 0
      -- request_cost = 0: the two missing instances are asked for one by one
      local res, err, partial = store_at("mixed/pattern=DDD/alone=D"):retrieve_study(STUDY, { to = dir,
        skip_existing = true, request_cost = 0, list_files = list_files, on_file = function() told = told + 1 end })
      assert.is_nil(res)
      assert.equal("dicom", err.kind)
      assert.matches("^RetrieveInstance: " .. asked .. " of series [%d.]+ of study [%d.]+, the server sent instance "
        .. dicom[1].sop_instance_uid:gsub("%p", "%%%0") .. " instead$", tostring(err))
      assert.same({ 0, 0, 0 }, { partial.count, #partial.files, told })
      assert.same({ dir .. "/" .. first }, { partial.kept[1].path })
      -- each of the two is asked for (one's failure leaves no other unasked), and each rejected
      assert.equal(2, #partial.rejected)
      assert.matches("is not the instance asked for %(" .. dicom[2].sop_instance_uid:gsub("%p", "%%%0") .. "%)$",
        partial.rejected[1].reason)
      assert.matches("is not the instance asked for %(" .. dicom[3].sop_instance_uid:gsub("%p", "%%%0") .. "%)$",
        partial.rejected[2].reason)
      -- the file that was there, untouched: no other name, nothing left of the answer
      assert.same({ first }, listing(dir))
      assert.equal(before, ino(dir .. "/" .. first))
    end
  end)

  it("after a broken answer, answered with another: a failure too; what came first stays, listed and told once",
    function()
    local dir = H.tmpdir()
    local told = {}
    -- the study's answer: the first file, then cut; the next attempt asks for the two others alone
    local res, err, partial = store_at("mixed/pattern=D/cut=1/alone=D"):retrieve_study(STUDY, { to = dir,
      request_cost = 0, retry = { max_attempts = 3, initial = 0.01 },
      on_file = function(f) told[#told + 1] = f.path end })
    assert.is_nil(res)
    assert.equal("dicom", err.kind)
    assert.matches("^RetrieveInstance: " .. asked .. " of series", err.message)
    assert.equal(1, partial.retries)
    assert.same({ 1, 1 }, { partial.count, #partial.files })
    assert.same({ dir .. "/" .. first }, told)
    assert.equal(dir .. "/" .. first, partial.files[1].path)
    assert.same({ first }, listing(dir))
    assert.equal(H.sha256(dicom[1].path), H.sha256(dir .. "/" .. first))
  end)

  it("is never asked for with a UID a search gave that is not one: a clear error, made printable", function()
    local dir = H.tmpdir()
    H.check_run("cp " .. H.q(dicom[1].path) .. " " .. H.q(dir .. "/" .. first))
    local res, err = store_at("mixed/pattern=D/junkuid=1"):retrieve_study(STUDY, { to = dir, skip_existing = true,
      request_cost = 0 })
    assert.is_nil(res)
    -- the server's failure, not the caller's (a usage error, exit 2 from the command)
    assert.equal("dicom", err.kind)
    assert.matches("^the server listed '1%.2%.3.*' as a SOP Instance UID in series [%d.]+ of study ", tostring(err))
    assert.not_matches("%c", tostring(err))
  end)

  it("by retrieve_instance or the command, answered with another: a failure, nothing written (keep_rejected: aside)",
    function()
    local series = dicom[2].series_uid
    local store = store_at("mixed/pattern=D/alone=D")
    for _, to in ipairs({ "dir", "file" }) do
      local dir = H.tmpdir()
      H.check_run("cp " .. H.q(dicom[1].path) .. " " .. H.q(dir .. "/" .. first))
      H.write_file(dir .. "/one.dcm", "there before\n")
      local res, err = store:retrieve_instance(STUDY, series, dicom[2].sop_instance_uid,
        { to = to == "dir" and dir or dir .. "/one.dcm" })
      assert.is_nil(res)
      assert.matches("^RetrieveInstance: " .. asked, err.message)
      assert.same({ first, "one.dcm" }, listing(dir))
      assert.equal("there before\n", H.file_bytes(dir .. "/one.dcm"))
    end
    local dir = H.tmpdir()
    local res, err = store:retrieve_instance(STUDY, series, dicom[2].sop_instance_uid, { to = dir,
      keep_rejected = true })
    assert.is_nil(res)
    assert.equal(dir .. "/part-1.rejected", err.rejected[1].path)
    assert.equal(H.sha256(dicom[1].path), H.sha256(dir .. "/part-1.rejected"))
    local out, stderr, code = H.healthcare { "retrieve", URL .. "/mixed/pattern=D/alone=D",
      STUDY .. "/" .. series .. "/" .. dicom[2].sop_instance_uid, "-o", H.tmpdir() }
    assert.equal(1, code, stderr)
    assert.equal("", out)
    assert.matches(asked, stderr)
    assert.matches("missing 1 instance", stderr)
  end)
end)

-- ---- answers that end oddly ------------------------------------------------------------------

describe("an answer that ends oddly", function()
  local function assert_instances(files, dir)
    assert.equal(#dicom, #files)
    local want = {}
    for _, f in ipairs(dicom) do want[#want + 1] = f.sop_instance_uid .. ".dcm" end
    table.sort(want)
    assert.same(want, listing(dir))
    for _, f in ipairs(dicom) do
      assert.equal(H.sha256(f.path), H.sha256(dir .. "/" .. f.sop_instance_uid .. ".dcm"))
    end
  end

  it("with a chunked trailer line that looks like a status line is no new answer: every instance stays", function()
    -- libcurl hands a trailer to the header callback; taken for a new response, it reset the
    -- sink and removed the instances it had named
    for _, list_files in ipairs({ true, false }) do
      local dir = H.tmpdir()
      local n = 0
      local res = assert(store_at("trailer"):retrieve_study(STUDY, { to = dir, list_files = list_files,
        on_file = function() n = n + 1 end }))
      assert.equal(#dicom, res.count)
      assert.equal(#dicom, n)
      assert_instances(list_files and res.files or dicom, dir)
    end
  end)

  it("with a trailer after an empty body: its fields are no headers of the answer", function()
    -- no body byte came before the trailer, and its lines were taken for header lines
    local session = core.session()
    local r = assert(session:request({ method = "GET", url = URL .. "/trailer/empty=1/studies/" .. STUDY,
      timeout = 10 }))
    session:close()
    assert.equal(200, r.status)
    assert.equal("", r.body)
    assert.is_nil(r.headers["x-from-trailer"])
    assert.matches("^multipart/related", r.headers["content-type"])
  end)

  it("with a trailer past the headers' cap fails naming it, and keeps the instances that came whole", function()
    local dir = H.tmpdir()
    local res, err, partial = store_at("trailer/lines=1000"):retrieve_study(STUDY, { to = dir })
    assert.is_nil(res)
    assert.equal("response_too_large", err.status)
    assert.matches("header %(or trailer%) lines are larger than 262144 bytes", tostring(err))
    assert_instances(partial.files, dir)
  end)

  it("with more parts than frames asked for, broken: the frame asked for is named, the others removed", function()
    local dir = H.tmpdir()
    local res, err, partial = store_at("trailer/lines=1000"):retrieve_frames(STUDY, "1.2.3", "1.2.3.4", 1,
      { to = dir })
    assert.is_nil(res)
    assert.equal("response_too_large", err.status)
    assert.equal(1, #partial.files)
    assert.equal(1, partial.files[1].frame)
    assert.equal(dir .. "/frame-1.dcm", partial.files[1].path)
    assert.same({ "frame-1.dcm" }, listing(dir))
  end)

  it("stopped by on_progress raising (list_files = false) leaves no temporary file of a part not judged yet",
    function()
    local dir = H.tmpdir()
    local told = {}
    local store = store_at("mixed/pattern=XDD/pause=0.3")
    local ok, raised = pcall(store.retrieve_study, store, STUDY, { to = dir, list_files = false,
      on_file = function(f) told[#told + 1] = f end,
        on_progress = function() if #told >= 1 then error("enough") end end })
    assert.is_false(ok)
    assert.matches("enough", tostring(raised))
    -- the instance on_file was told of is the caller's; the text part waiting to be judged is gone
    assert.equal(1, #told)
    assert.same({ dicom[1].sop_instance_uid .. ".dcm" }, listing(dir))
  end)
end)

-- ---- status lines that are no HTTP ----------------------------------------------------------

describe("an answer whose status line is no HTTP status line, all else a good answer", function()
  -- libcurl takes many a line it cannot read that starts with "HTTP/" for "HTTP/1.0 200", and
  -- refuses others as if the URL were at fault (status "url"). Either is a recv failure, as the
  -- cosocket transport's "not an HTTP answer", retried like one. QUOTED: lines libcurl lets
  -- through, stopped and quoted by the transport; REFUSED: lines libcurl refuses itself.
  local QUOTED = { "HTTP/1.1  200", "HTTP/1.1 200x", "HTTP/1.1 200\tOK", "HTTP/\27[31m\r\27]0;pwned\7",
    "HTTP/1.1  200 " .. ("x"):rep(500), "HTTP/1.1 999 OK", "HTTP/2 600 " }
  local REFUSED = { "HTTP/1.1 abc", "HTTP/9 2000 X", "HTTP/1.1 20", "HTTP/", "HTTP/1.1 2" .. ("0"):rep(500),
    "garbage 200 OK", "HTTP/1.1 099 OK" }
  local function scenario(line, extra)
    return "status/line=" .. line:gsub("[^%w.]", function(c) return string.format("%%%02X", c:byte()) end)
      .. (extra or "")
  end

  it("fails a retrieve (kind transport, status recv, retryable), quoting the line printable and cut; "
    .. "writes nothing", function()
    local lines = {}
    for _, line in ipairs(QUOTED) do lines[#lines + 1] = line end
    for _, line in ipairs(REFUSED) do lines[#lines + 1] = line end
    for i, line in ipairs(lines) do
      local dir = H.tmpdir()
      local res, err = store_at(scenario(line)):retrieve_study(STUDY, { to = dir })
      assert.is_nil(res, line)
      assert.same({ "transport", "recv", true }, { err.kind, err.status, err.retryable }, line)
      assert.matches("not an HTTP answer", err.message, 1, true)
      if i <= #QUOTED then
        assert.matches("its status line is 'HTTP/", err.message, 1, true)
        assert.is_nil(err.message:find("[%c\127-\255]"), err.message)
        assert.is_true(#err.message:match("not an HTTP answer.*$") <= 130, err.message)
      end
      assert.same({}, listing(dir), line)
    end
  end)

  it("is quoted with its control bytes as '?', and a long one cut with '...'", function()
    local _, err = store_at(scenario(QUOTED[4])):retrieve_study(STUDY, { to = H.tmpdir() })
    assert.matches("its status line is 'HTTP/?[31m??]0;pwned?'", err.message, 1, true)
    _, err = store_at(scenario(QUOTED[5])):retrieve_study(STUDY, { to = H.tmpdir() })
    assert.matches("its status line is 'HTTP/1.1  200 " .. ("x"):rep(60), err.message, 1, true)
    assert.matches("x...'", err.message, 1, true)
  end)

  it("fails a store: no instance counted stored, every one failed with the reason", function()
    local paths = {}
    for _, f in ipairs(dicom) do paths[#paths + 1] = f.path end
    for _, line in ipairs({ "HTTP/\27[31mjunk", "HTTP/1.1  200" }) do
      local report = assert(store_at(scenario(line, "/stored=1")):store(paths))
      assert.same({}, report.stored, line)
      assert.same({}, report.already_stored, line)
      assert.equal(#dicom, #report.failed, line)
      for _, f in ipairs(report.failed) do assert.matches("not an HTTP answer", f.reason, 1, true) end
    end
  end)

  it("healthcare retrieve: exit 1, nothing written, no escape byte on the terminal", function()
    local dir = H.tmpdir()
    local out, err, code = H.healthcare { "retrieve", URL .. "/" .. scenario(QUOTED[4]), STUDY, "-o", dir }
    assert.equal(1, code, out .. err)
    assert.matches("not an HTTP answer", err, 1, true)
    assert.is_nil((out .. err):find("\27", 1, true), err)
    assert.same({}, H.files_under(dir))
  end)

  it("a header line libcurl cannot read (no colon) is a recv failure too, not another kind", function()
    local dir = H.tmpdir()
    local res, err = store_at(scenario("HTTP/1.1 200 OK\r\nno colon here")):retrieve_study(STUDY, { to = dir })
    assert.is_nil(res)
    assert.same({ "transport", "recv", true }, { err.kind, err.status, err.retryable }, err.message)
    assert.matches("Header without colon", err.message, 1, true)
    assert.same({}, listing(dir))
  end)

  it("--concurrency holds over plain http against a server that closes every connection", function()
    -- libcurl's PIPEWAIT made each request wait for the connection before it to say whether it
    -- could multiplex: with no HTTP/2 and no keep-alive, one request at a time
    local paths = {}
    for _, f in ipairs(dicom) do paths[#paths + 1] = f.path end
    local base = scenario("HTTP/1.1 200 OK", "/stored=1/delay=1")
    local report = assert(store_at(base):store(paths, { concurrency = #paths, max_request_instances = 1 }))
    assert.equal(#paths, #report.stored)
    local most = 0
    for _, q in ipairs(H.curl({ URL .. "/_requests" }).json) do
      if q.path:find(base, 1, true) then most = math.max(most, q.in_flight) end
    end
    assert.equal(#paths, most)
  end)

  it("good status lines still work: with a reason, without one, HTTP/1.0", function()
    for _, line in ipairs({ "HTTP/1.1 200 OK", "HTTP/1.1 200", "HTTP/1.0 200 OK" }) do
      local dir = H.tmpdir()
      local res = assert(store_at(scenario(line)):retrieve_study(STUDY, { to = dir }))
      assert.equal(#dicom, res.count, line)
      assert.equal(#dicom, #listing(dir), line)
    end
  end)
end)

-- ---- honest compressed JSON (Orthanc) --------------------------------------------------------

describe("gzip-compressed JSON from Orthanc", function()
  local study
  lazy_setup(function()
    study = H.make_study { patient_id = "HC85-" .. math.random(1, 1e9), series = { { count = 3 } } }
  end)

  it("is asked for, received compressed and decoded for metadata and searches", function()
    local lines = {}
    local store = assert(healthcare.dicomweb(E.dicomweb, { debug = function(l) lines[#lines + 1] = l end }))
    local list = assert(store:retrieve_metadata(study.study_uid))
    assert.equal(3, #list)
    local results = assert(store:search_instances({ StudyInstanceUID = study.study_uid }))
    assert.equal(3, #assert(results:all()))
    local gz = 0
    for _, l in ipairs(lines) do
      if l:lower() == "< content-encoding: gzip" then gz = gz + 1 end
    end
    assert.equal(2, gz, table.concat(lines, "\n"))
  end)

  it("metadata larger than max_bytes fails naming the option", function()
    local store = assert(healthcare.dicomweb(E.dicomweb))
    local list, err = store:retrieve_metadata(study.study_uid, { max_bytes = 1000 })
    assert.is_nil(list)
    assert.equal("response_too_large", err.status)
    assert.equal("max_bytes", err.option)
    assert.matches("larger than 1000 bytes %(option max_bytes%)", err.message)
  end)
end)
