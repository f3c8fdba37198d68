-- SPDX-License-Identifier: MIT
-- The README, run as written, in a fresh container-like directory: a copy of this checkout (its
-- tracked and new files, committed to a git repository of its own, as a fresh clone is), a
-- HOME of its own, and /usr/local an empty tmpfs (in a mount namespace of this spec's own: the
-- machine's /usr/local is never written). So "Install"'s make and LuaRocks routes install as a
-- user types them, and the command the README's transcripts show is the one just installed.
--
-- Every fenced block of the README is one of:
--   ```sh         run as it is, in the copy of the checkout, one bash -e each, in order;
--   ```console    a transcript: each `$ ` line is run (in a work directory), and each line of
--                 output shown must have its shape in what the command wrote (numbers, sizes,
--                 spacing and what follows a "..." may differ);
--   marked skipped by the HTML comment on the line before it, <!-- readme-skip: why -->, or run
--   by another spec (<!-- slurm-recipe: ... -->, spec/64); <!-- readme-run: SETUP --> names the
--   files a transcript needs, made here first (scans: DICOM files and one text file;
--   patient: a study of patient P-1 in Orthanc, three instances in one series). A UID shown cut
--   short (1.2.826...) stands for that study. 127.0.0.1:8042 is the test bed's Orthanc.
-- Other languages (lua, yaml, text) are not shell and are left alone.
--
-- Then, in the same namespace, what the README promises and a block cannot show by its exit
-- code: each installed command says its Lua and stores an instance in Orthanc; installing the
-- LuaJIT build left the Lua 5.4 `healthcare` in place; `luarocks make` left nothing in the
-- checkout, and refuses PUC-Rio's Lua 5.1 naming the supported ones; the LuaRocks launchers name
-- no temporary path; the bash completion is installed and completes the installed command.
-- Lua 5.4 only (ctest's luajit/ list leaves it out): it installs for both Luas itself.
local H = require "helpers"
local cjson = require "cjson"
local E = H.env

local SOURCE = os.getenv("HC_SOURCE_DIR") or "."

-- Finds Lua pattern specials in s and escapes them.
local function literal(s) return (s:gsub("%p", "%%%0")) end

--- The README's fenced blocks: { lang, text, line, marker = { kind, value } or nil }.
local function readme_blocks()
  local text = assert(H.file_bytes(SOURCE .. "/README.md"))
  local blocks, n, prev = {}, 0, nil
  local open
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if open then
      if line == "```" then
        blocks[#blocks + 1] = open
        open = nil
      else
        open.text = open.text .. line .. "\n"
      end
    elseif line:match("^```") then
      local marker
      local kind, value = (prev or ""):match("^<!%-%- ([%w-]+): (.-) %-%->$")
      if kind then marker = { kind, value } end
      open = { lang = line:match("^```(%S*)"), text = "", line = n, marker = marker, index = #blocks + 1 }
    end
    prev = line
  end
  assert(open == nil, "README.md: a fence is not closed")
  return blocks
end

-- The shape of a transcript's output line as a Lua pattern: numbers (with their dots: sizes,
-- UIDs, times), a size unit after a number, and runs of spaces may differ; a "..." ends what is
-- compared.
local function shape(line)
  local cut = line:find("...", 1, true)
  if cut then line = line:sub(1, cut - 1) end
  local out, i = {}, 1
  while i <= #line do
    local num = line:match("^%d[%d.]*", i)
    local spaces = line:match("^ +", i)
    if num then
      out[#out + 1] = "[%d.]+"
      i = i + #num
      local unit = line:match("^ [KMGT]?B%f[^%a]", i)
      if unit then
        out[#out + 1] = "%s+[KMGT]?B"
        i = i + #unit
      end
    elseif spaces then
      out[#out + 1] = "%s+"
      i = i + #spaces
    else
      out[#out + 1] = literal(line:sub(i, i))
      i = i + 1
    end
  end
  return table.concat(out)
end

describe("the README", function()
  if not H.need_testbed() then return end

  local T                       -- the fresh directory: src/ (the checkout), home/, work/, out/
  local steps = {}              -- what the namespace runs, in order: { name, dir, script, block }
  local result = {}             -- name -> { rc, out, err, ls }
  local blocks = readme_blocks()
  local orthanc_hostport = E.orthanc:match("^https?://([^/]+)")
  local study                   -- the "patient" setup's study
  local stored = {}             -- installed command -> the file it stored

  local function add(name, dir, script, block)
    steps[#steps + 1] = { name = name, dir = dir, script = script, block = block }
  end

  local SETUPS = {
    scans = function()
      H.gen_dicom { count = 3, dir = T .. "/work/scans", size = 2000 }
      H.write_file(T .. "/work/scans/notes.txt", "not DICOM\n")
    end,
    patient = function()
      local files = H.gen_dicom { count = 3, dir = T .. "/patient", patient_id = "P-1" }
      for _, f in ipairs(files) do H.orthanc_put_file(f.path) end
      study = files[1].study_uid
    end,
  }

  lazy_setup(function()
    T = H.tmpdir()
    for _, d in ipairs({ "home", "work", "out", "other-home" }) do H.check_run("mkdir -p " .. H.q(T .. "/" .. d)) end
    -- the checkout's files (not build/ nor what .gitignore leaves out), as a fresh clone has them
    H.check_run("cd " .. H.q(SOURCE) .. " && git ls-files -co --exclude-standard -z | "
      .. "xargs -0 sh -c 'for f; do [ -e \"$f\" ] && printf \"%s\\0\" \"$f\"; done' sh | "
      .. "tar --null -T - -cf - | (mkdir -p " .. H.q(T .. "/src") .. " && tar -xf - -C " .. H.q(T .. "/src") .. ")")
    H.check_run("cd " .. H.q(T .. "/src") .. " && git init -q && git add -A && "
      .. "git -c user.name=spec -c user.email=spec@localhost commit -qm copy")

    for i, b in ipairs(blocks) do
      local skip = b.marker and (b.marker[1] == "readme-skip" or b.marker[1] == "slurm-recipe")
      if b.marker and b.marker[1] == "readme-run" then
        assert(SETUPS[b.marker[2]], "README.md:" .. b.line .. ": unknown setup " .. b.marker[2])()
      end
      if b.lang == "sh" and not skip then
        add("block" .. i, T .. "/src", (b.text:gsub("127%.0%.0%.1:8042", orthanc_hostport)), b)
      elseif b.lang == "console" and not skip then
        local k = 0
        for cmd in b.text:gmatch("%$ ([^\n]+)") do
          k = k + 1
          cmd = cmd:gsub("127%.0%.0%.1:8042", orthanc_hostport):gsub("%d[%d.]*%.%.%.", study or "NO-STUDY")
          add("block" .. i .. "." .. k, T .. "/work", cmd, b)
        end
      end
    end

    -- What the README promises beyond exit codes, checked where the installs are.
    local files = H.gen_dicom { count = 5, dir = T .. "/mine" }
    local commands = { "/usr/local/bin/healthcare", "/usr/local/bin/healthcare-luajit",
      T .. "/home/lua-rocks/bin/healthcare", T .. "/home/.luarocks/bin/healthcare-luajit",
      T .. "/home/binary-rock/bin/healthcare" }
    for i, c in ipairs(commands) do
      stored[c] = files[i]
      add("version " .. c, T .. "/work", H.q(c) .. " --version")
      add("store " .. c, T .. "/work", H.q(c) .. " store " .. H.q(E.dicomweb) .. " " .. H.q(files[i].path)
        .. " --json --no-progress")
    end
    add("shebangs", T .. "/work", "head -n 2 /usr/local/bin/healthcare /usr/local/bin/healthcare-luajit")
    -- each installed module and its compiled twin (bin/compiled-modules.lua.in): "<mtime> <path>"
    add("compiled", T .. "/work", "cd /usr/local/share/lua/5.4 && find healthcare -name '*.lua' | sort | "
      .. "while read -r f; do c=/usr/local/lib/lua/5.4/healthcare/luac/${f%.lua}.luac; "
      .. "m=$(stat -c %.9Y \"$c\"); echo \"$(stat -c %.9Y \"$f\") $m $f\"; done")
    add("launchers", T .. "/work", "cat " .. H.q(T .. "/home/lua-rocks/lib/luarocks/rocks-5.4/healthcare/scm-1/bin/healthcare")
      .. " " .. H.q(T .. "/home/binary-rock/lib/luarocks/rocks-5.4/healthcare/scm-1/bin/healthcare"))
    add("completion", T .. "/work", "set -e; ls /usr/local/share/bash-completion/completions; "
      .. "source /usr/local/share/bash-completion/completions/healthcare; "
      .. "COMP_WORDS=(healthcare ret); COMP_CWORD=1; _healthcare; echo \"${COMPREPLY[*]}\"; "
      .. "COMP_WORDS=(healthcare-luajit projects locations-datasets-dicom-stores-studies-series-instances-frames-retrieve-f); "
      .. "COMP_CWORD=2; _healthcare; echo \"${COMPREPLY[*]}\"")
    -- Debian's default Lua 5.1 is PUC-Rio's: refused, naming the supported ones (a HOME without
    -- the README's lua_interpreter setting)
    add("puc-lua", T .. "/src", "HOME=" .. H.q(T .. "/other-home") .. " luarocks make --deps-mode=none --tree "
      .. H.q(T .. "/puc-tree") .. " rockspec/healthcare-scm-1.rockspec")
    add("lint", T .. "/src", "luarocks lint rockspec/healthcare-scm-1.rockspec")

    -- One namespace for everything: /usr/local is a tmpfs there, gone with it.
    local runner = { "set -u", "mount -t tmpfs -o mode=0755 hc-usr-local /usr/local || exit 97",
      "export HOME=" .. H.q(T .. "/home"), "export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
      "unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 HC_BUILD_DIR" }
    for i, s in ipairs(steps) do
      local f = T .. "/out/" .. i
      H.write_file(f .. ".sh", s.script)
      runner[#runner + 1] = string.format("(cd %s && bash -e -o pipefail %s) >%s 2>%s </dev/null; echo $? >%s; "
        .. "ls -A %s >%s", H.q(s.dir), H.q(f .. ".sh"), H.q(f .. ".out"), H.q(f .. ".err"), H.q(f .. ".rc"),
        H.q(T .. "/src"), H.q(f .. ".ls"))
    end
    H.write_file(T .. "/runner.sh", table.concat(runner, "\n") .. "\n")
    local _, err, code = H.run("unshare --mount --propagation private bash " .. H.q(T .. "/runner.sh"))
    assert(code == 0, "the namespace's runner failed (" .. tostring(code) .. "): " .. err)
    for i, s in ipairs(steps) do
      local f = T .. "/out/" .. i
      result[s.name] = { rc = tonumber(H.file_bytes(f .. ".rc")), out = H.file_bytes(f .. ".out") or "",
        err = H.file_bytes(f .. ".err") or "", ls = H.file_bytes(f .. ".ls") or "", index = i }
    end
  end)

  it("marks every fenced shell block run, run with a setup, or skipped with a reason", function()
    local shells = 0
    for _, b in ipairs(blocks) do
      if b.lang == "sh" or b.lang == "console" or b.lang == "" then
        shells = shells + 1
        assert.is_true(b.lang ~= "" or not b.text:find("^%$ "), "README.md:" .. b.line .. ": a transcript "
          .. "needs ```console")
        if b.marker then
          assert.truthy(({ ["readme-skip"] = true, ["readme-run"] = true, ["slurm-recipe"] = true })[b.marker[1]],
            "README.md:" .. b.line .. ": unknown marker " .. b.marker[1])
          assert.truthy(b.marker[2]:find("%a%a%a"), "README.md:" .. b.line .. ": a marker without its reason")
        end
      end
    end
    assert.is_true(shells >= 15, shells)
    assert.is_true(#steps >= 20, #steps)
  end)

  it("runs each shell block not marked skipped, and each transcript's commands, without an error", function()
    for _, s in ipairs(steps) do
      if s.block then
        local r = result[s.name]
        assert.equal(0, r.rc, string.format("README.md:%d (%s): exit %s\n%s\n--- stdout\n%s--- stderr\n%s",
          s.block.line, s.name, tostring(r.rc), s.script, r.out, r.err))
      end
    end
  end)

  it("prints what its transcripts show, in shape", function()
    for _, b in ipairs(blocks) do
      if b.lang == "console" and not (b.marker and b.marker[1] == "readme-skip") then
        local outputs, k = {}, 0
        for line in b.text:gmatch("([^\n]*)\n") do
          if line:sub(1, 2) == "$ " then
            k = k + 1
            outputs[k] = {}
          elseif k > 0 and line ~= "..." and line ~= "" then
            table.insert(outputs[k], line)
          end
        end
        for n, expected in ipairs(outputs) do
          local r = result["block" .. b.index .. "." .. n]
          local got = r.out .. r.err
          for _, line in ipairs(expected) do
            local found = false
            for actual in got:gmatch("[^\n]+") do
              if actual:find("^" .. shape(line)) then found = true break end
            end
            assert.is_true(found, string.format("README.md:%d: no line shaped like\n  %s\nin\n%s", b.line, line, got))
          end
        end
      end
    end
  end)

  it("installs commands that say which Lua runs them and store into Orthanc", function()
    for c, f in pairs(stored) do
      local v = result["version " .. c]
      assert.equal(0, v.rc, c .. ": " .. v.err)
      if c:find("luajit$") then
        assert.matches("\nLua +LuaJIT 2%.1", v.out)
      else
        assert.matches("\nLua +Lua 5%.4 ", v.out)
      end
      assert.matches("^healthcare %d+%.%d+%.%d+\nLua", v.out)
      local s = result["store " .. c]
      assert.equal(0, s.rc, c .. ": " .. s.err)
      local report = cjson.decode(s.out)
      assert.equal(1, #report.stored, c)
      assert.equal(f.sop_instance_uid, report.stored[1].sop_instance_uid)
      assert.is_string(H.orthanc_find_instance(f.sop_instance_uid), c)
    end
  end)

  it("installs Lua 5.4's command with its modules compiled, each with its source's mtime", function()
    local r = result.compiled
    assert.equal(0, r.rc, r.err)
    local n = 0
    for src_mtime, compiled_mtime, file in r.out:gmatch("(%S+) (%S+) (%S+)\n") do
      n = n + 1
      assert.equal(src_mtime, compiled_mtime, file)
    end
    assert.is_true(n > 40, r.out)
  end)

  it("keeps the Lua 5.4 command when the LuaJIT build is installed after it", function()
    local out = result.shebangs.out
    assert.truthy(out:find("==> /usr/local/bin/healthcare <==\n#!/usr/bin/lua5.4\n", 1, true), out)
    assert.truthy(out:find("==> /usr/local/bin/healthcare-luajit <==\n#!/usr/bin/luajit\n", 1, true), out)
  end)

  it("builds with LuaRocks leaving nothing in the checkout, and with no temporary path in the command", function()
    local before
    for _, s in ipairs(steps) do
      local r = result[s.name]
      if s.block and s.script:find("luarocks[^\n]* make") and not s.script:find("make rock") then
        assert.equal(before, r.ls, "README.md:" .. s.block.line .. " left files in the checkout")
      end
      before = r.ls
    end
    assert.is_nil(result.launchers.out:find("/tmp/", 1, true), result.launchers.out)
    assert.is_nil(result.launchers.out:find(T, 1, true), result.launchers.out)
  end)

  it("refuses PUC-Rio's Lua 5.1 (Debian's LuaRocks default), naming Lua 5.4 and LuaJIT 2.1, installing nothing", function()
    local r = result["puc-lua"]
    assert.is_true(r.rc ~= 0)
    local said = (r.out .. r.err):gsub("%s+", " ")
    assert.truthy(said:find("healthcare runs on Lua 5.4 and on LuaJIT 2.1", 1, true), said)
    assert.truthy(said:find("this build is for Lua 5.1 (interpreter /usr/bin/lua5.1", 1, true), said)
    assert.truthy(said:find("luarocks --lua-version 5.4 make", 1, true), said)
    assert.is_nil(H.file_bytes(T .. "/puc-tree/bin/healthcare"))
  end)

  it("has a rockspec luarocks lint finds clean", function()
    assert.equal(0, result.lint.rc, result.lint.err)
    assert.equal("", result.lint.out .. result.lint.err)
  end)

  it("installs the bash completion with make install, for both commands, and it completes", function()
    local r = result.completion
    assert.equal(0, r.rc, r.err)
    assert.equal("healthcare\nhealthcare-luajit\nretrieve\n"
      .. "locations-datasets-dicom-stores-studies-series-instances-frames-retrieve-frames\n", r.out)
  end)

  it("names in its apt-get line only packages scripts/debian-packages.txt installs", function()
    local listed = {}
    for p in assert(H.file_bytes(SOURCE .. "/scripts/debian-packages.txt")):gmatch("[^\n]+") do
      if not p:find("^#") then listed[p] = true end
    end
    local n = 0
    for _, b in ipairs(blocks) do
      local line = b.text:gsub("\\\n", " "):match("^apt%-get install ([^\n#]+)")
      if line and b.line < 100 then
        for p in line:gmatch("%S+") do
          n = n + 1
          assert.is_true(listed[p], p)
        end
      end
    end
    assert.is_true(n >= 10, n)
  end)
end)
