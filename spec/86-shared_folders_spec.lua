-- SPDX-License-Identifier: MIT
-- Shared folders (issue 13, points 5, 6, 7 and 10): what another user can plant where the
-- command reads or writes. A journal that is a symbolic link, not a regular file, another user's
-- or writable by others is refused before anything is read or written; every -o of the seed
-- form is written through a temporary file renamed into place (a symbolic link there is
-- replaced, its target untouched; a failed or interrupted call leaves the old file and no
-- temporary one); a FIFO, device, missing or unreadable file named on the command line exits 2
-- before anything is sent. Run as root and, through runuser, as nobody.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/86-shared_folders_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson.safe"
local lfs = require "lfs"

local E = H.env
local NOBODY_UID = 65534

-- This file's own emulator: it counts requests ("nothing was sent").
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local TOKEN = E.token .. "-private"

-- A directory nobody can reach: the test bed's scratch directory is private to root, so this
-- one is made beside it in /tmp (world-traversable, writable by root only) and removed at the
-- end. It holds a copy of the build's Lua files, module and interpreter line (the checkout may
-- sit where nobody cannot read), so that `as_nobody` runs this build, whatever its path.
local shared
local NOBODY_BIN
lazy_setup(function()
  shared = H.check_run("mktemp -d /tmp/hc-86.XXXXXX"):gsub("%s+$", "")
  H.check_run("chmod 755 " .. H.q(shared))
  local tree = shared .. "/tree"
  local src = os.getenv("HC_SOURCE_DIR") or "."
  local build = os.getenv("HC_BUILD_DIR") or "build"
  H.check_run(string.format("mkdir -p %s/healthcare && cp -R %s/lua %s/lua && cp %s/healthcare/core.so %s/healthcare/",
    H.q(tree), H.q(src), H.q(tree), H.q(build), H.q(tree)))
  -- The build's interpreter line: lua5.4, or test-sanitize's wrapper that preloads ASan (a
  -- script: copied, so nobody can run it wherever the build is).
  local interp, flags = H.file_bytes(H.BIN):match("^#!(%S+)([^\n]*)\n")
  if (H.file_bytes(interp) or ""):sub(1, 2) == "#!" then
    H.check_run("cp " .. H.q(interp) .. " " .. H.q(tree .. "/lua-interp"))
    interp = tree .. "/lua-interp"
  end
  NOBODY_BIN = tree .. "/healthcare-command"
  H.write_file(NOBODY_BIN, table.concat({
    "#!" .. interp .. flags,
    string.format("package.path = %q .. package.path", tree .. "/lua/?.lua;" .. tree .. "/lua/?/init.lua;"),
    string.format("package.cpath = %q .. package.cpath", tree .. "/?.so;"),
    'os.exit(require("healthcare.cli").main(arg))', "" }, "\n"))
  H.check_run("chmod -R a+rX " .. H.q(tree) .. " && chmod 755 " .. H.q(NOBODY_BIN))
end)
lazy_teardown(function()
  if shared then H.run("rm -rf " .. H.q(shared)) end
end)

-- The command with args, each quoted, as nobody (runuser) or as root; `timeout` makes a hang a
-- failure (exit 124) rather than a stuck suite.
local function command(args, nobody)
  local words = { nobody and ("cd " .. H.q(shared) .. " && timeout 60 runuser -u nobody -- " .. H.q(NOBODY_BIN))
    or ("timeout 60 " .. H.q(H.BIN)) }
  for _, a in ipairs(args) do words[#words + 1] = H.q(a) end
  return table.concat(words, " ")
end
local function hc(args, opts)
  opts = opts or {}
  return H.run(command(args, opts.nobody), opts.stdin)
end

-- A new directory in `shared` (mode 0755 unless given, owned by owner or root).
local dir_count = 0
local function shared_dir(mode, owner)
  dir_count = dir_count + 1
  local d = shared .. "/d" .. dir_count
  H.check_run(string.format("mkdir %s && chmod %s %s", H.q(d), mode or "755", H.q(d))
    .. (owner and (" && chown " .. owner .. " " .. H.q(d)) or ""))
  return d
end

-- Fresh DICOM files (new UIDs, not in Orthanc), copied into dir (readable by all).
local fresh = H.fresh_files(24)
local function fresh_in(dir, n)
  local list = {}
  for i = 1, n do
    local f = fresh()
    local path = dir .. "/f" .. i .. ".dcm"
    H.check_run("cp " .. H.q(f.path) .. " " .. H.q(path) .. " && chmod 644 " .. H.q(path))
    list[i] = { path = path, size = f.size, sop_instance_uid = f.sop_instance_uid, study_uid = f.study_uid,
      mtime = lfs.attributes(path, "modification") }
  end
  return list
end

local function none_in_orthanc(files)
  for _, f in ipairs(files) do
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid), f.path .. " was sent")
  end
end

local function listing(dir)
  local names = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  table.sort(names)
  return names
end

local function stat(path, fmt)
  return (H.check_run("stat -c " .. H.q(fmt) .. " " .. H.q(path)):gsub("%s+$", ""))
end

-- A journal an earlier run could have written, recording f as stored: a forged
-- "stored" line makes a run skip f without reading it.
local function forged_journal(path, f)
  H.write_file(path, cjson.encode({ journal = "healthcare", version = 1, time = "2024-01-01T00:00:00Z" }) .. "\n" .. cjson.encode({ time = "2024-01-01T00:00:00Z", outcome = "stored",
    path = f.path, size = f.size, mtime = f.mtime, sop_instance_uid = f.sop_instance_uid,
    study_uid = f.study_uid }):gsub("\\/", "/") .. "\n")
  return path
end

describe("healthcare store --journal", function()
  -- A run that must refuse journal: exit 2, the reason on stderr, nothing sent, the file as it was.
  local function refused(journal, files, pattern, opts)
    local before = H.sha256(journal)
    local out, err, code = hc({ "store", E.dicomweb, files[1].path, files[2].path, "--journal", journal }, opts)
    assert.equal(2, code, err)
    assert.equal("", out)
    assert.matches(pattern, err)
    assert.equal(before, H.sha256(journal))
    none_in_orthanc(files)
  end

  it("refuses a symbolic link, and leaves the file it points to byte for byte as it was", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 2)
    -- A file of someone else's that starts like a journal and has no newline at its end: a
    -- journal opened through the link would lose that last line ("torn") and gain lines.
    local target = H.write_file(dir .. "/settings.json", '{"keep": true}\nthe last line, no newline')
    local link = dir .. "/journal.jsonl"
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(link))
    local before = H.file_bytes(target)
    refused(link, files, "refusing journal '" .. link:gsub("%p", "%%%0") .. "': it is a symbolic link")
    assert.equal(before, H.file_bytes(target))
    assert.equal("symbolic link", stat(link, "%F"))
    -- a dangling link: nothing is created at its other end
    local dangling = dir .. "/dangling.jsonl"
    H.check_run("ln -s " .. H.q(dir .. "/created-through-link") .. " " .. H.q(dangling))
    local _, err, code = hc({ "store", E.dicomweb, files[1].path, "--journal", dangling })
    assert.equal(2, code, err)
    assert.matches("it is a symbolic link", err)
    assert.is_nil(lfs.symlinkattributes(dir .. "/created-through-link"))
    none_in_orthanc(files)
  end)

  it("refuses another user's journal, with a forged 'stored' line (run as root, journal nobody's)", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 2)
    local journal = forged_journal(dir .. "/journal.jsonl", files[1])
    H.check_run("chown nobody " .. H.q(journal) .. " && chmod 600 " .. H.q(journal))
    refused(journal, files, "refusing journal '[^']+': it belongs to another user %(uid " .. NOBODY_UID
      .. "; this process runs as uid 0%)")
  end)

  it("refuses root's journal that nobody may write, when run as nobody", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 2)
    local journal = forged_journal(dir .. "/journal.jsonl", files[1])
    H.check_run("chmod 666 " .. H.q(journal))
    refused(journal, files, "refusing journal '[^']+': it belongs to another user %(uid 0; this process runs as uid "
      .. NOBODY_UID .. "%)", { nobody = true })
  end)

  for _, mode in ipairs({ "666", "620", "602" }) do
    it("refuses a journal of mode " .. mode .. " (the group or others may write to it)", function()
      local dir = shared_dir()
      local files = fresh_in(dir, 2)
      local journal = forged_journal(dir .. "/journal.jsonl", files[1])
      H.check_run("chmod " .. mode .. " " .. H.q(journal))
      refused(journal, files, "refusing journal '[^']+': the group or others may write to it %(mode 0"
        .. mode .. "%); only its owner may")
    end)
  end

  it("refuses a FIFO, a character device and a directory, without hanging", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 1)
    H.check_run("mkfifo " .. H.q(dir .. "/fifo"))
    for _, c in ipairs({
      { dir .. "/fifo", "refusing journal '[^']+': it is a FIFO, not a regular file" },
      { "/dev/null", "refusing journal '/dev/null': it is a character device, not a regular file" },
      { dir, "cannot open journal '[^']+': Is a directory" },
    }) do
      local out, err, code = hc({ "store", E.dicomweb, files[1].path, "--journal", c[1] })
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches(c[2], err)
    end
    assert.equal("fifo", stat(dir .. "/fifo", "%F"):match("fifo"))
    none_in_orthanc(files)
  end)

  -- The owner's journal, whoever the owner is: kept, resumed from (what it stored is skipped).
  local function resumes(dir, opts)
    local files = fresh_in(dir, 2)
    local journal = dir .. "/journal.jsonl"
    local args = { "store", E.dicomweb, files[1].path, files[2].path, "--journal", journal, "--json" }
    local out, err, code = hc(args, opts)
    assert.equal(0, code, err)
    assert.equal(2, #cjson.decode(out).stored)
    assert.equal("600", stat(journal, "%a"))
    out, err, code = hc(args, opts)
    assert.equal(0, code, err)
    local report = cjson.decode(out)
    assert.same({ 0, 2, 1 }, { #report.stored, #report.already_stored, report.journal.earlier_runs })
    return journal
  end

  it("keeps and resumes the owner's journal: nobody's, new in a world-writable sticky directory", function()
    local journal = resumes(shared_dir("1777"), { nobody = true })
    assert.equal(tostring(NOBODY_UID), stat(journal, "%u"))
  end)

  it("keeps and resumes the owner's journal: root's", function()
    local journal = resumes(H.tmpdir())
    assert.equal("0", stat(journal, "%u"))
  end)
end)

describe("journal.open reading through the checked descriptor", function()
  local journal = require "healthcare.dicomweb.journal"

  it("reads a 3 MB journal line by line across buffer edges, a 300 KB line too, and cuts a torn tail", function()
    local path = H.tmpdir() .. "/journal.jsonl"
    -- about 3 MB, with line lengths that shift every edge of the 64 KiB reads; a line larger
    -- than the buffer (it grows)
    local lines = { cjson.encode({ journal = "healthcare", version = 1 }),
      cjson.encode({ outcome = "failed", path = "/d/long", reason = string.rep("r", 300000) }) }
    local n = 12000
    for i = 1, n do
      lines[#lines + 1] = cjson.encode({ outcome = "stored", path = "/d/" .. string.rep("x", i % 97) .. "/" .. i,
        size = i, mtime = i })
    end
    local torn = '{"outcome":"stored","path":"/d/torn","si'
    H.write_file(path, table.concat(lines, "\n") .. "\n" .. torn)
    local report = {}
    local j = assert(journal.open(path, report))
    assert.same({ 1, n, 1, 0, #torn }, { report.journal.earlier_runs, report.journal.earlier_stored,
      report.journal.earlier_failed, report.journal.ignored_lines, report.journal.torn_bytes })
    for _, i in ipairs({ 1, 2, 4999, 5000, 5001, n - 1, n }) do
      assert.truthy(j:lookup({ path = "/d/" .. string.rep("x", i % 97) .. "/" .. i, size = i, mtime = i }), i)
    end
    j:close()   -- a closed journal answers no lookups (its index is freed with it)
    -- the torn tail cut off, this run's line after the whole ones
    local body = table.concat(lines, "\n") .. "\n"
    local now = H.file_bytes(path)
    assert.equal(body, now:sub(1, #body))
    assert.matches('^{"journal":"healthcare","version":2,[^\n]*}\n$', now:sub(#body + 1))
  end)

  it("returns kind io, code unsafe, for a journal it refuses", function()
    local dir = H.tmpdir()
    local target = H.write_file(dir .. "/t", "{}\n")
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(dir .. "/j") .. " && chmod 666 " .. H.q(target))
    for _, p in ipairs({ dir .. "/j", target }) do
      local j, err = journal.open(p)
      assert.is_nil(j)
      assert.same({ "io", "unsafe" }, { err.kind, err.status })
      assert.matches("^refusing journal '" .. p:gsub("%p", "%%%0") .. "': ", err.message)
    end
    assert.equal("{}\n", H.file_bytes(target))
  end)
end)

describe("healthcare store: files named on the command line", function()
  local function store(args, opts)
    local words = { "store", E.dicomweb }
    for _, a in ipairs(args) do words[#words + 1] = a end
    return hc(words, opts)
  end

  it("exits 2 and sends nothing for a FIFO, a device, a missing file or one in a missing folder", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 1)
    H.check_run("mkfifo " .. H.q(dir .. "/pipe.dcm"))
    for _, c in ipairs({
      { dir .. "/pipe.dcm", "not a regular file %(named pipe%)" },
      { "/dev/null", "not a regular file %(char device%)" },
      { dir .. "/missing.dcm", "No such file or directory" },
      { "/nonexistent-86/x.dcm", "No such file or directory" },
    }) do
      local out, err, code = store({ files[1].path, c[1] })
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches("^healthcare store: cannot read " .. c[1]:gsub("%p", "%%%0") .. ": " .. c[2]
        .. "\nhealthcare store: nothing was sent\n$", err)
    end
    none_in_orthanc(files)
  end)

  it("exits 2 and sends nothing, run as nobody, for a file or folder nobody may not read", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 1)
    local secret = fresh_in(shared_dir(), 1)[1].path
    H.check_run("chmod 000 " .. H.q(secret))
    local closed = shared_dir("700")
    fresh_in(closed, 1)
    local out, err, code = store({ files[1].path, secret, closed }, { nobody = true })
    assert.equal(2, code, err)
    assert.equal("", out)
    assert.equal("healthcare store: cannot read " .. secret .. ": Permission denied\n"
      .. "healthcare store: cannot read " .. closed .. ": cannot list directory: Permission denied\n"
      .. "healthcare store: nothing was sent\n", err)
    none_in_orthanc(files)
  end)

  it("names the file in printable form", function()
    local dir = shared_dir()
    local odd = dir .. "/pipe\27[31m\nred.dcm"
    H.check_run("mkfifo " .. H.q(odd))
    local _, err, code = store({ odd })
    assert.equal(2, code, err)
    assert.is_nil(err:find("\27", 1, true), err)
    assert.matches("^healthcare store: cannot read " .. (dir .. "/pipe"):gsub("%p", "%%%0") .. "[^\n]+red%.dcm: not a "
      .. "regular file %(named pipe%)\n", err)
  end)

  it("goes on past what it meets in a folder and what --from-list names: skipped, or failed if gone", function()
    local dir = shared_dir()
    local files = fresh_in(dir, 2)
    H.check_run("mkfifo " .. H.q(dir .. "/pipe.dcm"))
    local out, err, code = store({ dir, "--from-list", "-", "--json" },
      { stdin = dir .. "/gone.dcm\n" })
    -- a file named but gone is not stored: a failure, not a reason to stop the others
    assert.equal(1, code, err)
    local report = cjson.decode(out)
    local skipped = {}
    for _, s in ipairs(report.skipped) do skipped[s.path] = s.reason end
    assert.same({ [dir .. "/pipe.dcm"] = "not a regular file (named pipe)" }, skipped)
    assert.same({ { path = dir .. "/gone.dcm", reason = "cannot read: No such file or directory" } }, report.failed)
    for _, f in ipairs(files) do assert.truthy(H.orthanc_find_instance(f.sop_instance_uid)) end
  end)
end)

describe("credential files another user could have written", function()
  local credentials = require "healthcare.auth.credentials"
  local sa
  lazy_setup(function() sa = em:service_account() end)

  -- A copy of the emulator's service account key at path, with mode and owner (root's unless given).
  local function key_at(path, mode, owner)
    H.check_run(string.format("cp %s %s && chmod %s %s", H.q(sa.key_file), H.q(path), mode, H.q(path))
      .. (owner and (" && chown " .. owner .. " " .. H.q(path)) or ""))
    return path
  end

  -- A credential error that names the file and why, quoting nothing of it.
  local function refused(err, path, why)
    assert.are.equal("auth", err.kind, tostring(err))
    assert.are.equal("UNSAFE_FILE", err.status, tostring(err))
    assert.truthy(tostring(err):find("'" .. path .. "': " .. why, 1, true), tostring(err))
    assert.is_nil(tostring(err):find("PRIVATE KEY", 1, true))
  end

  it("refuses a key file another user owns or may write to, or reached through another user's link", function()
    local d = shared_dir("1777")   -- as /tmp: anyone may plant files and links there
    local target = key_at(d .. "/good.json", "600")
    H.check_run("runuser -u nobody -- ln -s " .. H.q(target) .. " " .. H.q(d .. "/nobodys-link.json"))
    local cases = {
      { key_at(d .. "/nobodys.json", "600", "nobody"), "another user owns it" },
      { key_at(d .. "/world.json", "666"), "group or others may write to it" },
      { key_at(d .. "/other-group.json", "660", "root:nogroup"), "group or others may write to it" },
      { d .. "/nobodys-link.json", "it is reached through a symbolic link that another user owns" },
    }
    for _, c in ipairs(cases) do
      local cred, err = credentials.from_file(c[1], {})
      assert.is_nil(cred)
      refused(err, c[1], c[2])
    end
    local before = em:count("token_requests")
    local out, err, code = hc({ "search", E.store, "--endpoint", em.endpoint, "--credentials", cases[1][1],
      "--no-token-cache" })
    assert.are.equal(2, code, err)
    assert.are.equal("", out)
    assert.truthy(err:find("refusing credentials file '" .. cases[1][1] .. "': another user owns it", 1, true), err)
    assert.are.equal(before, em:count("token_requests"), "a token was asked for")
  end)

  it("refuses a key in a directory another user owns or may write to, naming it; sticky ones are fine", function()
    local nobodys = shared_dir("755", "nobody")   -- nobody may put another key there between runs
    local open = shared_dir("777")
    local cases = {
      { key_at(nobodys .. "/key.json", "600"), nobodys, "another user owns the directory '" .. nobodys
        .. "' on its way, and could replace it" },
      { key_at(open .. "/key.json", "600"), open, "group or others may write to the directory '" .. open
        .. "' on its way (not sticky), and could replace it" },
    }
    for _, c in ipairs(cases) do
      local cred, err = credentials.from_file(c[1], {})
      assert.is_nil(cred)
      refused(err, c[1], c[3])
      assert.are.equal(c[2], err.directory)
    end
    local before = em:count("token_requests")
    local out, err, code = hc({ "search", E.store, "--endpoint", em.endpoint, "--credentials", cases[2][1],
      "--no-token-cache" })
    assert.are.equal(2, code, err)
    assert.are.equal("", out)
    assert.truthy(err:find(cases[2][3] .. "; every directory on its way must be yours (or root's) and writable by "
      .. "you alone, or sticky as /tmp", 1, true), err)
    assert.are.equal(before, em:count("token_requests"), "a token was asked for")
    -- Run as nobody: root's directory (mode 0755) and a sticky one are fine.
    local roots = shared_dir("755")
    local sticky = shared_dir("1777")
    for _, path in ipairs({ key_at(roots .. "/key.json", "600", "nobody"), key_at(sticky .. "/key.json", "600",
      "nobody") }) do
      local _, serr, scode = hc({ "search", E.store, "--endpoint", em.endpoint, "--credentials", path,
        "--no-token-cache" }, { nobody = true })
      assert.are.equal(0, scode, serr)
    end
  end)

  it("uses the user's own key, through the user's own links and in the user's private group", function()
    local d = shared_dir("1777")
    local own = key_at(d .. "/own.json", "600")
    local private_group = key_at(d .. "/upg.json", "660", "root:root")   -- root's group: root alone
    H.check_run("ln -s " .. H.q(own) .. " " .. H.q(d .. "/link1.json") .. " && ln -s link1.json "
      .. H.q(d .. "/link2.json"))
    for _, path in ipairs({ own, private_group, d .. "/link2.json" }) do
      local cred = assert(credentials.from_file(path, {}))
      assert(cred:token())
      cred:close()
    end
    -- nobody's own key, run as nobody.
    local mine = key_at(d .. "/nobody-own.json", "600", "nobody")
    local _, err, code = hc({ "search", E.store, "--endpoint", em.endpoint, "--credentials", mine, "--no-token-cache" },
      { nobody = true })
    assert.are.equal(0, code, err)
  end)

  it("refuses gcloud's well-known file of another user instead of looking further", function()
    local home = shared_dir("755")
    H.check_run("mkdir -p " .. H.q(home .. "/.config/gcloud"))
    local wk = key_at(home .. "/.config/gcloud/application_default_credentials.json", "644", "nobody")
    local saved = credentials.getenv
    credentials.getenv = function(k) return ({ HOME = home, GCE_METADATA_HOST = "127.0.0.1:1" })[k] end
    local cred, err = credentials.default({})
    credentials.getenv = saved
    assert.is_nil(cred)
    refused(err, wk, "another user owns it")
  end)

  it("refuses an executable's output_file or a subject token file another user wrote", function()
    local d = shared_dir("1777")
    local planted = d .. "/planted.json"
    H.write_file(planted, cjson.encode({ version = 1, success = true, token_type = "urn:ietf:params:oauth:token-type:jwt",
      id_token = "planted-subject-token", expiration_time = os.time() + 3600 }))
    H.check_run("chown nobody " .. H.q(planted) .. " && chmod 666 " .. H.q(planted))
    local function ext(cs)
      return { type = "external_account", subject_token_type = "urn:ietf:params:oauth:token-type:jwt",
        audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/oidc",
        token_url = em.url .. "/v1/token", credential_source = cs }
    end
    local saved = credentials.getenv
    credentials.getenv = function(k) return ({ GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" })[k] end
    local ok, perr = pcall(function()
      for _, c in ipairs({
        { { executable = { command = "/bin/false", output_file = planted } }, "the executable's output_file" },
        { { file = planted }, "the subject token file" },
      }) do
        local cred = assert(credentials.from_info(ext(c[1]), {}, "f"))
        local token, err = cred:token()
        cred:close()
        assert.is_nil(token)
        refused(err, planted, "another user owns it")
        assert.truthy(tostring(err):find("refusing " .. c[2], 1, true), tostring(err))
        assert.is_nil(tostring(err):find("planted-subject-token", 1, true))
      end
    end)
    credentials.getenv = saved
    assert(ok, perr)
  end)
end)

describe("-o of the seed form", function()
  local P = "projects"
  local function seed(method, path, args, opts)
    local words = { P, "locations-datasets-dicom-stores-" .. method, (opts and opts.parent) or E.store, path,
      "-p", "access-token=" .. TOKEN, "--endpoint", (opts and opts.endpoint) or em.endpoint }
    for _, a in ipairs(args or {}) do words[#words + 1] = a end
    return hc(words, opts)
  end
  local function store_instances(file, out, opts)
    return seed("studies-store-instances", "studies",
      { "-r", ".", "content-type=application/dicom", "data=@" .. file, "-o", out }, opts)
  end
  local function requests() return #em:stats().requests end

  local study
  lazy_setup(function()
    study = H.make_study { patient_id = "HC86-" .. math.random(1, 1e9) }
  end)

  -- A symbolic link at -o, to a file that must stay as it was.
  local function planted()
    local dir = H.tmpdir()
    local target = H.write_file(dir .. "/precious", "precious bytes\n")
    H.check_run("ln -s " .. H.q(target) .. " " .. H.q(dir .. "/answer"))
    return dir, dir .. "/answer", target
  end
  local function link_replaced(dir, out, target)
    assert.equal("precious bytes\n", H.file_bytes(target))
    assert.equal("file", lfs.symlinkattributes(out, "mode"))
    assert.same({ "answer", "precious" }, listing(dir))
  end

  it("store-instances replaces a symbolic link at -o with the answer; its target is untouched", function()
    local f = fresh()
    local dir, out, target = planted()
    local _, err, code = store_instances(f.path, out)
    assert.equal(0, code, err)
    link_replaced(dir, out, target)
    assert.is_table(cjson.decode(H.file_bytes(out)))
    assert.equal(644, tonumber(stat(out, "%a")))
  end)

  it("a search replaces a symbolic link at -o with its JSON; the target is untouched", function()
    local dir, out, target = planted()
    local _, err, code = seed("search-for-studies", "studies?PatientID=" .. study.patient_id, { "-o", out })
    assert.equal(0, code, err)
    link_replaced(dir, out, target)
    assert.equal(study.study_uid, cjson.decode(H.file_bytes(out))[1]["0020000D"].Value[1])
  end)

  it("a retrieve replaces a symbolic link at -o with the answer's bytes; the target is untouched", function()
    local dir, out, target = planted()
    local s = study.series[1]
    local _, err, code = seed("studies-series-instances-retrieve-instance",
      "studies/" .. study.study_uid .. "/series/" .. s.series_uid .. "/instances/" .. s.instances[1], { "-o", out })
    assert.equal(0, code, err)
    link_replaced(dir, out, target)
    assert.truthy(H.file_bytes(out):find(s.instances[1], 1, true))
  end)

  it("a failed call leaves an existing -o file as it was and no temporary file", function()
    local missing = E.store:gsub("test%-store$", "missing")
    local cases = {
      { function(out) return store_instances(fresh().path, out, { parent = missing }) end, 2 },
      { function(out) return seed("search-for-studies", "studies", { "-o", out }, { parent = missing }) end, 2 },
      { function(out) return seed("studies-retrieve-study", "studies/" .. H.fresh_uid(), { "-o", out }) end, 1 },
    }
    for i, c in ipairs(cases) do
      local dir = H.tmpdir()
      local out = H.write_file(dir .. "/answer", "old answer\n")
      local _, err, code = c[1](out)
      assert.equal(c[2], code, "case " .. i .. ": " .. err)
      assert.equal("old answer\n", H.file_bytes(out), "case " .. i)
      assert.same({ "answer" }, listing(dir), "case " .. i)
    end
  end)

  it("exits 2 and sends nothing when nobody may not create files in the -o directory", function()
    local dir = shared_dir()
    local before = requests()
    for _, run in ipairs({
      function() return seed("search-for-studies", "studies", { "-o", dir .. "/answer" }, { nobody = true }) end,
      function() return store_instances(shared .. "/tree/healthcare/core.so", dir .. "/answer", { nobody = true }) end,
    }) do
      local _, err, code = run()
      assert.equal(2, code, err)
      assert.matches("cannot write the output: cannot create files in " .. dir:gsub("%p", "%%%0")
        .. ": Permission denied", err)
    end
    assert.equal(before, requests())
    assert.same({}, listing(dir))
  end)

  describe("interrupted", function()
    -- spec/support/raw_server.py answers by path and query; the seed form appends its own path
    -- to the endpoint, so this wrapper reads the options from path segments with a "="
    -- (/dicom/size=N/cut=M/hang=1/projects/...): a body cut after M bytes, then silence.
    local WRAPPER = [[
import importlib.util, sys, urllib.parse
spec = importlib.util.spec_from_file_location("raw_server", sys.argv[1])
rs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rs)
def urlsplit(target):
    u = urllib.parse.urlsplit(target)
    segments = u.path.split("/")
    return u._replace(path="/" + segments[1], query="&".join(s for s in segments[2:] if "=" in s))
rs.urlsplit = urlsplit
rs.main()
]]
    local server
    lazy_setup(function()
      local dir = H.tmpdir()
      local pid = H.check_run(table.concat({ "/usr/bin/python3 -c", H.q(WRAPPER), H.q(E.support .. "/raw_server.py"),
        ">", H.q(dir .. "/out"), "2>", H.q(dir .. "/err"), "& echo $!" }, " ")):match("%d+")
      server = { pid = pid }
      for _ = 1, 200 do
        server.url = (H.file_bytes(dir .. "/out") or ""):match("^(%S+)\n")
        if server.url then break end
        os.execute("sleep 0.05")
      end
      assert(server.url, "raw server did not start: " .. (H.file_bytes(dir .. "/err") or ""))
    end)
    lazy_teardown(function()
      if server and server.pid then H.run("kill " .. server.pid) end
    end)

    for _, sig in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
      it("by SIG" .. sig[1] .. " mid-answer: exits " .. sig[2] .. ", the old -o file stays, no temporary file",
        function()
        local dir = H.tmpdir()
        local out = H.write_file(dir .. "/answer", "old answer\n")
        local cmd = H.healthcare_command({ P, "locations-datasets-dicom-stores-studies-retrieve-study", E.store, "studies/1.2.3",
          "-p", "access-token=x", "--endpoint", server.url .. "/dicom/size=300000/cut=1000/hang=1", "-o", out })
        -- The signal once the answer's temporary file exists: the transfer is under way.
        local _, err, code = H.run(table.concat({ cmd, "& pid=$!; n=0; while ! ls", H.q(dir),
          "| grep -q partial && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; sleep 0.2;",
          "kill -" .. sig[1] .. " $pid; wait $pid" }, " "))
        assert.equal(sig[2], code, err)
        assert.matches("interrupted; nothing written", err)
        assert.equal("old answer\n", H.file_bytes(out))
        assert.same({ "answer" }, listing(dir))
      end)
    end
  end)
end)
