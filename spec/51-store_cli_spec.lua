-- SPDX-License-Identifier: MIT
-- `healthcare store` as a user runs it: a folder of real, generated and broken files stored in
-- Orthanc and through the Google-shaped emulator, the summary and the --json report, exit codes
-- 0, 1 and 2, and the progress bar, which appears on a terminal (script(1) gives the command
-- one) and nowhere else.
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson"
local E = H.env

local LUA = os.getenv("HC_LUA") or "lua5.4"
local BIN = H.BIN

-- This file's own emulator: the shared one's fault rules (set by the retry specs running at the
-- same time) and counters are not ours.
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local STORE = E.store

-- The command line (without redirections) and its run: stdout, stderr, exit code.
local function cmdline(args)
  local words = { H.q(LUA), H.q(BIN), "store" }
  for _, a in ipairs(args) do words[#words + 1] = H.q(a) end
  return table.concat(words, " ")
end
local function hc(args, stdin) return H.run(cmdline(args), stdin) end
local function google(args)
  local t = { STORE }
  for _, a in ipairs(args) do t[#t + 1] = a end
  t[#t + 1] = "--endpoint"; t[#t + 1] = em.endpoint
  t[#t + 1] = "--access-token"; t[#t + 1] = E.token .. "-private"
  return t
end

local function my_posts()
  local n = 0
  for _, r in ipairs(em:stats().requests) do
    if r.method == "POST" then n = n + 1 end
  end
  return n
end

local function by_path(list)
  local t = {}
  for _, r in ipairs(list) do t[r.path] = r end
  return t
end

local function lines(s)
  local t = {}
  for l in s:gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

local SUMMARY = "^stored (%d+), already stored (%d+), failed (%d+), skipped (%d+); [%d.]+ [KMGT]?B in [%d.]+ s "
  .. "%([%d.]+ MB/s%); (%d+) requests?, (%d+) retr[a-z]+$"

-- Three real files, a generated study of two, and what must not be sent (with the pattern of
-- the reason it is skipped for).
local dir, valid, generated, others
local function folder()
  if dir then return end
  dir = H.tmpdir()
  valid, others = {}, {}
  local uses = {}
  local samples = H.sample_info()
  for _, s in ipairs(samples) do uses[s.sop_instance_uid] = (uses[s.sop_instance_uid] or 0) + 1 end
  for _, s in ipairs(samples) do
    if uses[s.sop_instance_uid] == 1 and #valid < 3 then
      local p = dir .. "/" .. s.path:match("[^/]+$")
      H.check_run("cp " .. H.q(s.path) .. " " .. H.q(p))
      valid[#valid + 1] = { path = p, sop_instance_uid = s.sop_instance_uid, study_uid = s.study_uid }
    end
  end
  generated = H.gen_dicom { dir = dir .. "/gen", count = 2, ts = "implicit" }
  for _, g in ipairs(generated) do valid[#valid + 1] = g end
  H.write_file(dir .. "/README.txt", "scans\n")
  others[dir .. "/README.txt"] = "not a DICOM file %(no DICM prefix%)"
  H.write_file(dir .. "/empty.dcm", "")
  others[dir .. "/empty.dcm"] = "not a DICOM file %(empty%)"
  H.check_run("ln -s nowhere " .. H.q(dir .. "/dangling.dcm") .. " && mkfifo " .. H.q(dir .. "/pipe.dcm")
    .. " && ln -s .. " .. H.q(dir .. "/gen/up"))
  others[dir .. "/dangling.dcm"] = "broken symbolic link"
  others[dir .. "/pipe.dcm"] = "not a regular file %(named pipe%)"
  others[dir .. "/gen/up"] = "directory already visited %(symbolic link loop%)"
end

describe("healthcare store", function()
  lazy_setup(folder)

  it("a journal that cannot be written mid-run: the partial report, the error, how to resume; exit 2", function()
    local files = H.tmpdir()
    H.gen_dicom { dir = files, count = 40, size = 256 }
    -- a file size limit (ulimit -f, 1 KiB blocks) makes the journal's writes fail with EFBIG after
    -- a few lines; SIGXFSZ ignored, so that the command sees the error instead of dying
    local LIMIT = "trap '' XFSZ; ulimit -f 4; exec "
    for _, json in ipairs({ false, true }) do
      local journal = H.tmpdir() .. "/j.jsonl"
      local args = { E.dicomweb, files, "--journal", journal, "--max-request-instances", "4", "--concurrency", "1" }
      if json then args[#args + 1] = "--json" end
      local out, err, code = H.run(LIMIT .. cmdline(args))
      assert.equal(2, code, out .. err)
      assert.matches("File too large", err, 1, true)
      assert.matches("run the same command again to resume", err, 1, true)
      local stored
      if json then
        local report = assert(cjson.decode(out))
        assert.matches("File too large", report.error, 1, true)
        stored = #report.stored
      else
        assert.equal("", out)
        stored = tonumber(err:match("stored (%d+),"))
      end
      assert.truthy(stored and stored > 0 and stored < 40, out .. err)
    end
  end)

  it("stores a folder in Orthanc and prints the report with --json, exit 0", function()
    local out, err, code = hc { E.dicomweb, dir, "--json" }
    assert.equal(0, code, err)
    assert.equal("", err)
    local report = assert(cjson.decode(out))
    assert.equal(#valid, #report.stored)
    local stored = by_path(report.stored)
    for _, v in ipairs(valid) do
      assert.equal(v.sop_instance_uid, stored[v.path].sop_instance_uid)
      assert.is_true(H.orthanc_instance_file(v.sop_instance_uid) == H.file_bytes(v.path), v.path)
    end
    local skipped = by_path(report.skipped)
    local n = 0
    for path, reason in pairs(others) do
      n = n + 1
      assert.is_table(skipped[path], path)
      assert.matches("^" .. reason .. "$", skipped[path].reason)
    end
    assert.equal(n, #report.skipped)
    -- empty lists stay JSON arrays
    assert.matches('"failed":%[%]', out)
    assert.matches('"already_stored":%[%]', out)
    assert.equal(1, report.requests)
  end)

  it("stores through a dicomStore name and prints a summary on stderr, nothing on stdout", function()
    local before = my_posts()
    local out, err, code = hc(google { dir })
    assert.equal(0, code, err)
    assert.equal("", out)
    local l = lines(err)
    local s, a, f, k, r, t = l[1]:match(SUMMARY)
    assert.is_string(s, l[1])
    assert.same({ #valid, 0, 0, 5, 1, 0 }, { tonumber(s), tonumber(a), tonumber(f), tonumber(k), tonumber(r), tonumber(t) })
    for path, reason in pairs(others) do
      assert.is_truthy(err:find("\nskipped " .. path:gsub("%p", "%%%0") .. ": " .. reason .. "\n"), path)
    end
    assert.equal(before + 1, my_posts())
    -- no progress bar when stderr is not a terminal
    assert.is_nil(err:find("\r", 1, true))
    assert.is_nil(err:find("ETA", 1, true))
  end)

  it("splits requests with --max-request-instances (or its old spelling --max-instances) and --max-request-bytes",
    function()
    local out, err, code
    for _, flag in ipairs({ "--max-request-instances", "--max-instances" }) do
      out, err, code = hc { E.dicomweb, dir, "--json", flag, "2" }
      assert.equal(0, code, err)
      assert.equal(3, cjson.decode(out).requests, flag)
    end
    out, err, code = hc { E.dicomweb, generated[1].path, generated[2].path, "--json", "--max-request-bytes", "1000" }
    assert.equal(0, code, err)
    assert.equal(2, cjson.decode(out).requests)   -- each file alone, none dropped
  end)

  it("skips files of another study with --study-uid (or its old spelling --study)", function()
    local study = generated[1].study_uid
    local out, err, code = hc(google { dir, "--json", "--study", study })
    assert.equal(0, code, err)
    assert.equal(2, #cjson.decode(out).stored)
    out, err, code = hc(google { dir, "--json", "--study-uid", study })
    assert.equal(0, code, err)
    local report = cjson.decode(out)
    assert.equal(2, #report.stored)
    local skipped = by_path(report.skipped)
    for i = 1, 3 do
      assert.equal("Study Instance UID " .. valid[i].study_uid .. " does not match the requested study " .. study,
        skipped[valid[i].path].reason)
    end
  end)

  it("reads more paths from standard input with --from-list -", function()
    local out, err, code = hc({ E.dicomweb, "--from-list", "-", "--json" },
      valid[1].path .. "\r\n\n" .. generated[2].path .. "\n")
    assert.equal(0, code, err)
    local report = cjson.decode(out)
    assert.equal(2, #report.stored)
    assert.equal(valid[1].path, report.stored[1].path)
  end)

  it("exits 1 and names the server's reason when an instance fails (a 409 at Google)", function()
    local g = generated[1]
    local changed = H.gen_dicom { sop = g.sop_instance_uid, study = g.study_uid, prefix = "changed" }[1]
    local before = my_posts()
    local out, err, code = hc(google { changed.path })
    assert.equal(1, code, err)
    assert.equal("", out)
    local detail = "0x0110 processing failure: an instance with the same SOP Instance UID already exists "
      .. "with different content"
    assert.is_truthy(err:find("\nfailed  " .. changed.path .. ": " .. detail .. "\n", 1, true), err)
    assert.matches("^stored 0, already stored 0, failed 1, skipped 0;", err)
    assert.equal(before + 1, my_posts())
    out, err, code = hc(google { changed.path, "--json" })
    assert.equal(1, code, err)
    assert.same({ { path = changed.path, sop_instance_uid = g.sop_instance_uid, study_uid = g.study_uid,
      reason = detail } }, cjson.decode(out).failed)
  end)

  local function lit(text) return (text:gsub("%p", "%%%0")) end

  it("exits 1 for a DICOM file met in a folder that it cannot read or that is cut short (failed, with the reason)",
    function()
    local d = H.tmpdir()
    local g = H.gen_dicom { dir = d, count = 1, prefix = "ok" }[1]
    H.write_file(d .. "/cut.dcm", H.file_bytes(g.path):sub(1, 200))
    H.check_run("ln -s /proc/self/mem " .. H.q(d .. "/eio.dcm")) -- EIO, even for root
    H.write_file(d .. "/notes.txt", "not DICOM\n")
    local out, err, code = hc { E.dicomweb, d }
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("^stored 1, already stored 0, failed 2, skipped 1;", err)
    assert.matches("\nfailed  " .. lit(d .. "/cut.dcm") .. ": truncated at offset %d+\n", err)
    assert.matches("\nfailed  " .. lit(d .. "/eio.dcm") .. ": cannot read [^\n]*: Input/output error\n", err)
    assert.matches("\nskipped " .. lit(d .. "/notes.txt") .. ": not a DICOM file", err)
    out, err, code = hc { E.dicomweb, d, "--json" }
    assert.equal(1, code, err)
    local report = cjson.decode(out)
    local failed = by_path(report.failed)
    assert.matches("^truncated at offset %d+$", failed[d .. "/cut.dcm"].reason)
    assert.matches("Input/output error$", failed[d .. "/eio.dcm"].reason)
    assert.equal(2, #report.failed)
    assert.same({ d .. "/notes.txt" }, { report.skipped[1].path })
  end)

  local usage = {
    { "no files", { E.dicomweb }, "^healthcare store: no files given\n" },
    { "a missing store", {}, "^healthcare store: missing argument 'store'\n" },
    { "an unknown option", { E.dicomweb, ".", "--bogus" }, "^healthcare store: unknown option '%-%-bogus'\n" },
    { "a request size of 0", { E.dicomweb, ".", "--max-request-bytes", "0" },
      "^healthcare store: %-%-max%-request%-bytes must be a whole number of at least 1\n$" },
    { "a non-number", { E.dicomweb, ".", "--max-instances", "many" },
      "^healthcare store: malformed argument 'many'\nUsage: healthcare store " },
    { "a fractional number", { E.dicomweb, ".", "--concurrency", "1.5" },
      "^healthcare store: %-%-concurrency must be a whole number of at least 1\n$" },
    { "an invalid study UID", { E.dicomweb, ".", "--study", "1.2.x" },
      "^healthcare store: invalid study UID '1%.2%.x'\n$" },
    { "a malformed dicomStore name", { "projects/p/datasets/d", "." },
      "^healthcare store: invalid dicomStore name 'projects/p/datasets/d'" },
    { "an unreadable --from-list", { E.dicomweb, "--from-list", "/nonexistent/list" },
      "^healthcare store: cannot read %-%-from%-list: /nonexistent/list: No such file or directory\n$" },
  }
  for _, c in ipairs(usage) do
    it("exits 2 for " .. c[1], function()
      local out, err, code = hc(c[2])
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches(c[3], err)
    end)
  end

  describe("on a terminal", function()
    -- script(1) runs the command on a pseudo-terminal and copies what it wrote to our stdout.
    local function on_tty(args)
      return H.run("script -qec " .. H.q(cmdline(args)) .. " /dev/null </dev/null")
    end
    local big
    lazy_setup(function() big = H.gen_dicom { size = 48 * 1024 * 1024, fill = "zero" }[1] end)

    it("draws a progress bar on stderr: share, files, bytes, rate and ETA, then clears it", function()
      local out, _, code = on_tty { E.dicomweb, dir, big.path }
      assert.equal(0, code, out)
      local bars = {}
      for bar in out:gmatch("\r(%[[#.]+%][^\r\27]*)\27%[K") do bars[#bars + 1] = bar end
      assert.is_true(#bars >= 1, out)
      local pct, done, total = bars[#bars]:match("^%[[#.]+%] +(%d+)%%  (%d+)/(%d+) files  [%d.]+ [KMGT]?B  [%d.]+ [KMGT]?B/s  ETA %d+s$")
      assert.is_string(pct, bars[#bars])
      -- every entry of the folder is counted, the skipped ones too
      assert.equal(#valid + 5 + 1, tonumber(total))
      assert.is_true(tonumber(done) <= tonumber(total))
      -- the bar is erased before the summary
      assert.matches("\r\27%[Kstored " .. (#valid + 1) .. ", already stored 0, failed 0, skipped 5;", out)
    end)

    it("draws no bar with --json or --no-progress", function()
      local out, _, code = on_tty { E.dicomweb, big.path, "--json" }
      assert.equal(0, code, out)
      assert.is_nil(out:find("ETA", 1, true))
      assert.equal(1, #cjson.decode((out:gsub("\r\n", "\n"))).stored)
      out, _, code = on_tty { E.dicomweb, big.path, "--no-progress" }
      assert.equal(0, code, out)
      assert.is_nil(out:find("ETA", 1, true))
      assert.matches("^stored 1, already stored 0", out)
    end)
  end)
end)
