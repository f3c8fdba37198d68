-- SPDX-License-Identifier: MIT
-- The command loads the modules luac compiled at build time (bin/compiled-modules.lua.in) only
-- while each compiled file has its source's mtime to the nanosecond; otherwise, and when the
-- compiled file is not one, it loads the source. Checked on a copy of the build's launcher that
-- looks for its compiled modules in a directory of the spec's own.
local H = require "helpers"
local lfs = require "lfs"

local BUILD = os.getenv("HC_BUILD_DIR") or "build"
local SOURCE = os.getenv("HC_SOURCE_DIR") or "."
local LUAC = "luac5.4"

local core = require "healthcare.core"

local function mtime(path)
  local st = assert(core.file_stat(path))
  return string.format("%d.%09d", st.modification, st.mtime_nsec)
end

local function each_source(dir, rel, acc)
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then
      local path, r = dir .. "/" .. name, rel .. "/" .. name
      if lfs.attributes(path, "mode") == "directory" then
        each_source(path, r, acc)
      elseif name:match("%.lua$") then
        acc[#acc + 1] = r:sub(2)
      end
    end
  end
  return acc
end

describe("the build's compiled modules", function()
  it("are there for every module, each with its source's mtime", function()
    local sources = each_source(SOURCE .. "/lua/healthcare", "/healthcare", {})
    assert.is_true(#sources > 40, #sources)
    for _, rel in ipairs(sources) do
      local compiled = BUILD .. "/luac/" .. rel:gsub("%.lua$", ".luac")
      assert.is_not_nil(lfs.attributes(compiled), compiled .. " missing")
      assert.equal(mtime(SOURCE .. "/lua/" .. rel), mtime(compiled), rel)
    end
  end)
end)

describe("the command", function()
  local T, launcher
  local MAIN = "healthcare/cli/init"

  setup(function()
    T = H.tmpdir()
    H.check_run("cp -a " .. H.q(BUILD .. "/luac") .. " " .. H.q(T .. "/luac"))
    local text = assert(H.file_bytes(BUILD .. "/bin/healthcare"))
    local abs = H.check_run("cd " .. H.q(BUILD) .. " && pwd"):gsub("%s+$", "")
    local n
    local from, to = (abs .. "/luac/"):gsub("%p", "%%%0"), (T .. "/luac/"):gsub("%%", "%%%%")
    text, n = text:gsub(from, to)
    assert.equal(2, n, "the launcher names its compiled modules' directory in two templates")
    launcher = T .. "/healthcare"
    H.write_file(launcher, text)
    H.check_run("chmod +x " .. H.q(launcher))
  end)

  teardown(function() H.check_run("rm -rf " .. H.q(T)) end)

  -- Puts a compiled module of `code` in place of the copy's healthcare.cli, with its source's
  -- mtime or another.
  local function replace_main(code, same_mtime)
    local src = T .. "/fake.lua"
    H.write_file(src, code)
    local out = T .. "/luac/" .. MAIN .. ".luac"
    H.check_run(H.q(LUAC) .. " -o " .. H.q(out) .. " " .. H.q(src))
    if same_mtime then
      H.check_run("touch -r " .. H.q(SOURCE .. "/lua/" .. MAIN .. ".lua") .. " " .. H.q(out))
    else
      H.check_run("touch -d '2001-02-03 04:05:06' " .. H.q(out))
    end
  end

  local FAKE = "return { main = function() io.write('the compiled one') return 0 end }"

  it("loads a compiled module whose mtime is its source's", function()
    replace_main(FAKE, true)
    local out, err, code = H.run(H.q(launcher) .. " --version")
    assert.equal(0, code, err)
    assert.equal("the compiled one", out)
  end)

  it("loads the source when the compiled module's mtime is another", function()
    replace_main(FAKE, false)
    local out, err, code = H.run(H.q(launcher) .. " --version")
    assert.equal(0, code, err)
    assert.matches("^healthcare %d", out)
  end)

  it("loads the source when the compiled file is not compiled Lua", function()
    local out_path = T .. "/luac/" .. MAIN .. ".luac"
    H.write_file(out_path, "return { main = function() io.write('text, not bytecode') return 0 end }")
    H.check_run("touch -r " .. H.q(SOURCE .. "/lua/" .. MAIN .. ".lua") .. " " .. H.q(out_path))
    local out, err, code = H.run(H.q(launcher) .. " --version")
    assert.equal(0, code, err)
    assert.matches("^healthcare %d", out)
    H.write_file(out_path, "\27Lua garbage")
    H.check_run("touch -r " .. H.q(SOURCE .. "/lua/" .. MAIN .. ".lua") .. " " .. H.q(out_path))
    out, err, code = H.run(H.q(launcher) .. " --version")
    assert.equal(0, code, err)
    assert.matches("^healthcare %d", out)
  end)

  it("runs the same as from source when every compiled module is there", function()
    H.check_run("rm -rf " .. H.q(T .. "/luac") .. " && cp -a " .. H.q(BUILD .. "/luac") .. " " .. H.q(T .. "/luac"))
    local compiled_out, _, c1 = H.run(H.q(launcher) .. " retrieve --help")
    H.check_run("rm -rf " .. H.q(T .. "/luac"))
    local source_out, _, c2 = H.run(H.q(launcher) .. " retrieve --help")
    assert.equal(0, c1)
    assert.equal(c1, c2)
    assert.equal(source_out, compiled_out)
  end)
end)
