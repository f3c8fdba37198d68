-- SPDX-License-Identifier: MIT
-- core.dir_open at the C/Lua seam (healthcare watch holds its spool, failed and done folders
-- open): the lock a second holder is refused, and files moved, removed and made relative to
-- folders held open, never through a symbolic link on the way, whichever side it is on, and into
-- the folder held even once another was put at its name.
local core = require "healthcare.core"
local lfs = require "lfs"
local H = require "helpers"

local function sh(cmd) assert(os.execute(cmd)) end

describe("core.dir_open", function()
  local dir, spool, done, victim
  before_each(function()
    dir = H.tmpdir()
    spool, done, victim = dir .. "/spool", dir .. "/done", dir .. "/victim"
    sh(string.format("mkdir -p '%s/study' '%s' '%s'", spool, done, victim))
    H.write_file(spool .. "/study/a.dcm", "A")
  end)
  after_each(function() sh(string.format("rm -rf '%s'", dir)) end)

  it("locks a folder for one open handle at a time, until it is closed", function()
    local first = assert(core.dir_open(spool))
    assert.is_true(first:lock())
    local second = assert(core.dir_open(spool .. "/"))
    local ok, err = second:lock()
    assert.is_nil(ok)
    assert.same({ "io", "busy" }, { err.kind, err.status })
    first:close()
    assert.is_true(second:lock())
    second:close()
  end)

  it("moves a file keeping its folders, making missing ones, never over a file there", function()
    local s, d = assert(core.dir_open(spool)), assert(core.dir_open(done))
    assert.equal("study/a.dcm", s:move("study/a.dcm", d, "study/a.dcm"))
    H.write_file(spool .. "/study/a.dcm", "A2")
    H.write_file(done .. "/study/a.dcm.1.reason", "")
    -- a.dcm taken, and a.dcm.1 by its .reason: a.dcm.2
    assert.equal("study/a.dcm.2", s:move("study/a.dcm", d, "study/a.dcm"))
    assert.equal("A", H.file_bytes(done .. "/study/a.dcm"))
    assert.equal("A2", H.file_bytes(done .. "/study/a.dcm.2"))
    assert.is_true(d:create("study/a.dcm.2.reason", "why\n"))
    assert.equal("why\n", H.file_bytes(done .. "/study/a.dcm.2.reason"))
    local ok, err = d:create("study/a.dcm.2.reason", "again")
    assert.is_nil(ok)
    assert.equal("write", err.status)
    s:close()
    d:close()
  end)

  it("never follows a link on the way, on either side, nor at the name removed", function()
    local s, d = assert(core.dir_open(spool)), assert(core.dir_open(done))
    -- in the done folder
    sh(string.format("ln -s '%s' '%s/study'", victim, done))
    local to, err = s:move("study/a.dcm", d, "study/a.dcm")
    assert.is_nil(to)
    assert.same({ "link", done .. "/study is not a folder: not followed" }, { err.status, err.message })
    -- in the spool: another's file of the same name is neither moved nor removed
    H.write_file(victim .. "/b.dcm", "theirs")
    sh(string.format("ln -s '%s' '%s/other'", victim, spool))
    sh(string.format("rm '%s/study'", done))
    to, err = s:move("other/b.dcm", d, "other/b.dcm")
    assert.is_nil(to)
    assert.equal("link", err.status)
    local ok
    ok, err = s:remove("other/b.dcm")
    assert.is_nil(ok)
    assert.equal("link", err.status)
    -- a link is not a folder removed, and a made file is never written through one
    ok, err = s:remove("other", true)
    assert.is_nil(ok)
    assert.equal("remove", err.status)
    ok, err = s:create("other/c.reason", "x")
    assert.is_nil(ok)
    assert.equal("link", err.status)
    assert.equal("theirs", H.file_bytes(victim .. "/b.dcm"))
    assert.is_nil(H.file_bytes(victim .. "/c.reason"))
    assert.same({ ".", "..", "b.dcm" }, (function()
      local t = {}
      for n in lfs.dir(victim) do t[#t + 1] = n end
      table.sort(t)
      return t
    end)())
    -- and a folder of the held one, not a link, is removed when empty, not when not
    ok, err = s:remove("study", true)
    assert.is_nil(ok)
    assert.equal("remove", err.status)
    assert.is_true(s:remove("study/a.dcm"))
    assert.is_true(s:remove("study", true))
    assert.is_nil(lfs.attributes(spool .. "/study"))
    s:close()
    d:close()
  end)

  it("moves into the folder held, though a link was put at its name since", function()
    local s, d = assert(core.dir_open(spool)), assert(core.dir_open(done))
    assert(os.rename(done, dir .. "/done.old"))
    sh(string.format("ln -s '%s' '%s'", victim, done))
    assert.equal("study/a.dcm", s:move("study/a.dcm", d, "study/a.dcm"))
    assert.equal("A", H.file_bytes(dir .. "/done.old/study/a.dcm"))
    assert.is_nil(H.file_bytes(victim .. "/study/a.dcm"))
    -- opened again without following: refused
    local h, err = core.dir_open(done, false)
    assert.is_nil(h)
    assert.same({ "link", done .. " is not a folder: not followed" }, { err.status, err.message })
    s:close()
    d:close()
  end)

  it("moves a file of a name as long as names go, and one beside it only while a suffix fits", function()
    local s, d = assert(core.dir_open(spool)), assert(core.dir_open(done))
    for _, len in ipairs({ 250, 255 }) do
      local name = string.rep("n", len)
      H.write_file(spool .. "/" .. name, "1")
      assert.equal(name, s:move(name, d, name))
      H.write_file(spool .. "/" .. name, "2")
      local to, err = s:move(name, d, name)
      if len == 250 then
        assert.equal(name .. ".1", to)
      else
        assert.is_nil(to)
        assert.matches("File name too long", err.message)
        assert.equal("2", H.file_bytes(spool .. "/" .. name))
      end
    end
    s:close()
    d:close()
  end)

  it("raises for a closed handle and for a path without a name", function()
    local s = assert(core.dir_open(spool))
    assert.error_matches(function() s:move("", s, "x") end, "must end with a name")
    s:close()
    s:close()
    assert.error_matches(function() s:lock() end, "attempt to use a closed folder handle")
    local h, err = core.dir_open(dir .. "/none")
    assert.is_nil(h)
    assert.equal("read", err.status)
  end)
end)
