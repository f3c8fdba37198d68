-- SPDX-License-Identifier: MIT
-- healthcare.dicomweb.overwrite.same_bytes, the read-back check of `store --overwrite`: equal files,
-- a difference anywhere (also past the first chunk, and in length), and a file that cannot be read
-- (a directory: opened, then its read fails), which is an error, not a difference.
local H = require "helpers"
local lfs = require "lfs"
local overwrite = require "healthcare.dicomweb.overwrite"

describe("healthcare.dicomweb.overwrite.same_bytes", function()
  local dir, made
  before_each(function()
    dir, made = os.tmpname(), {}
    os.remove(dir)
    assert(lfs.mkdir(dir))
  end)
  after_each(function()
    for i = #made, 1, -1 do os.remove(made[i]) end
    os.remove(dir)
  end)

  local function file(name, bytes)
    made[#made + 1] = dir .. "/" .. name
    return H.write_file(made[#made], bytes)
  end

  it("says equal for the same bytes, different for a byte past the first chunk or another length", function()
    local big = string.rep("0123456789abcdef", 100000) -- 1.6 MB: two chunks and more
    local a, b = file("a", big), file("b", big)
    assert.same({ true }, { overwrite.same_bytes(a, b) })
    local changed = big:sub(1, 1200000) .. "X" .. big:sub(1200002)
    assert.same({ false }, { overwrite.same_bytes(a, file("c", changed)) })
    assert.same({ false }, { overwrite.same_bytes(a, file("d", big .. "+")) })
    assert.same({ false }, { overwrite.same_bytes(file("e", ""), a) })
    assert.same({ true }, { overwrite.same_bytes(file("f", ""), file("g", "")) })
  end)

  it("is an error, not a difference, when a file cannot be opened or read", function()
    local a = file("a", "bytes")
    local same, why = overwrite.same_bytes(a, dir .. "/missing")
    assert.is_nil(same)
    assert.truthy(why:find("missing", 1, true), why)
    assert(lfs.mkdir(dir .. "/sub"))
    made[#made + 1] = dir .. "/sub"
    same, why = overwrite.same_bytes(a, dir .. "/sub")
    assert.is_nil(same)
    assert.truthy(why:find("directory", 1, true), why)
  end)
end)
