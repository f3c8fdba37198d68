-- SPDX-License-Identifier: MIT
-- core.inotify at the C/Lua seam (healthcare watch takes spool files on its events): a file
-- closed after writing, one renamed in, a folder made, the watched folder gone, a wait that ends
-- empty, errors as nil, err, and the raise for a closed handle.
local core = require "healthcare.core"
local lfs = require "lfs"

local function tmpdir()
  local base = os.getenv("TMPDIR") or "/tmp"
  local d = string.format("%s/inotify-%d-%d", base, os.time(), math.random(1, 1e9))
  assert(lfs.mkdir(d))
  return d
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- name -> the flags set on its events, over one read.
local function flags_by_name(events)
  local out = {}
  for _, ev in ipairs(events) do
    local t = out[ev.name or ""] or {}
    for _, k in ipairs({ "closed", "moved_in", "created", "dir", "gone", "overflow" }) do
      if ev[k] then t[k] = true end
    end
    out[ev.name or ""] = t
  end
  return out
end

describe("core.inotify", function()
  local h, dir
  before_each(function()
    dir = tmpdir()
    h = assert(core.inotify())
  end)
  after_each(function()
    h:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("reports a file closed after writing, one renamed in and a folder made", function()
    local wd = assert(h:add(dir))
    assert.is_number(wd)
    assert.same({}, h:read(0))
    write(dir .. "/a.dcm", "x")
    write(dir .. "/.b.part", "y")
    assert(os.rename(dir .. "/.b.part", dir .. "/b.dcm"))
    assert(lfs.mkdir(dir .. "/sub"))
    local f = flags_by_name(h:read(1))
    assert.same({ created = true, closed = true }, f["a.dcm"])
    assert.same({ moved_in = true }, f["b.dcm"])
    assert.same({ created = true, dir = true }, f["sub"])
    assert.same({ created = true, closed = true }, f[".b.part"])
  end)

  it("waits at most its timeout, and says when the watched folder is gone", function()
    assert(h:add(dir))
    local t0 = core.now()
    assert.same({}, h:read(0.3))
    assert.is_true(core.now() - t0 >= 0.25)
    os.execute("rm -rf '" .. dir .. "'")
    local f = flags_by_name(h:read(1))
    assert.is_true(f[""].gone)
  end)

  it("returns nil, err for a folder that cannot be watched", function()
    local wd, err = h:add(dir .. "/missing")
    assert.is_nil(wd)
    assert.equal("io", err.kind)
    assert.equal("inotify", err.status)
    assert.matches("cannot watch '.*missing': No such file or directory", err.message)
    write(dir .. "/file", "x")
    wd, err = h:add(dir .. "/file")
    assert.is_nil(wd)
    assert.matches("Not a directory", err.message)
  end)

  it("raises once closed; close twice is fine", function()
    h:close()
    h:close()
    assert.matches("closed", tostring(h))
    assert.error_matches(function() h:read(0) end, "attempt to use a closed inotify handle")
    assert.error_matches(function() h:add(dir) end, "attempt to use a closed inotify handle")
  end)
end)
