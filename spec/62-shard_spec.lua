-- SPDX-License-Identifier: MIT
-- Shards (healthcare.dicomweb.shard, core.hash32, `healthcare store --shard K/N`): the parser and its
-- errors, the hash checked against Python's arithmetic (not our C), a partition property over
-- many synthetic paths, and two and three shards of one real folder stored into the test bed's
-- Orthanc: together they cover the folder exactly, without overlap, and a shard's share does
-- not change when the folder moves.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/62-shard_spec.lua
local H = require "helpers"
local core = require "healthcare.core"
local shard = require "healthcare.dicomweb.shard"
local healthcare = require "healthcare"

local E = H.env
local PY = "/usr/bin/python3"

local function usage_message(spec)
  return "invalid shard '" .. spec .. "': expected K/N with whole numbers 1 <= K <= N <= 1000000 (e.g. 1/4)"
end

describe("shard.parse", function()
  it("accepts K/N strings and {K, N} tables", function()
    local cases = {
      { "1/1", 1, 1 }, { "2/3", 2, 3 }, { " 3 / 3 ", 3, 3 }, { "01/04", 1, 4 },
      { { 1, 2 }, 1, 2 }, { { 2.0, 4.0 }, 2, 4 }, { "1000000/1000000", 1000000, 1000000 },
    }
    for _, c in ipairs(cases) do
      local s, err = shard.parse(c[1])
      assert.is_nil(err)
      assert.equal(c[2], s.k)
      assert.equal(c[3], s.n)
      assert.equal(c[2] .. "/" .. c[3], tostring(s))
      assert.is_function(s.includes)
    end
  end)

  it("refuses anything else with a usage error", function()
    local cases = {
      { "0/3", "0/3" }, { "4/3", "4/3" }, { "1/0", "1/0" }, { "a/b", "a/b" }, { "1/2/3", "1/2/3" },
      { "", "" }, { "1", "1" }, { "-1/2", "-1/2" }, { "1.5/2", "1.5/2" }, { "1/2000000", "1/2000000" },
      { { 0, 1 }, "{0, 1}" }, { { 1.5, 2 }, "{1.5, 2}" }, { { "1", "2" }, "{1, 2}" }, { {}, "{nil, nil}" },
      { 3, "3" }, { "1/2x", "1/2x" }, { "1/2\0", "1/2\0", "1/2\\x00" },
    }
    for _, c in ipairs(cases) do
      local s, err = shard.parse(c[1])
      assert.is_nil(s)
      assert.equal("usage", err.kind)
      assert.equal(usage_message(c[2]), err.message)
      -- tostring(err) is the message made printable (c[3]: how it reads when it differs)
      assert.equal(usage_message(c[3] or c[2]), tostring(err))
    end
  end)
end)

describe("core.hash32", function()
  it("is FNV-1a 64 folded to 32 bits, as Python computes it", function()
    local strings = { "", "a", "foobar", "dir/file0001.dcm", "caf\195\169/\255\0x.dcm" }
    for i = 1, 200 do
      local t = {}
      for j = 1, math.random(1, 60) do t[j] = string.char(math.random(32, 126)) end
      strings[#strings + 1] = "p" .. i .. "/" .. table.concat(t)
    end
    local hex = {}
    for i, s in ipairs(strings) do hex[i] = (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
    local script = [[
import sys
for line in sys.stdin.read().split("\n"):
    if line == "-":
        line = ""
    elif not line:
        continue
    h = 14695981039346656037
    for b in bytes.fromhex(line):
        h = ((h ^ b) * 1099511628211) % 2**64
    print((h >> 32) ^ (h & 0xffffffff))
]]
    local input = {}
    for i, x in ipairs(hex) do input[i] = x == "" and "-" or x end
    local dir = H.tmpdir()
    H.write_file(dir .. "/fnv.py", script)
    local out = H.check_run(H.q(PY) .. " " .. H.q(dir .. "/fnv.py"), table.concat(input, "\n") .. "\n")
    local i = 0
    for n in out:gmatch("%d+") do
      i = i + 1
      assert.equal(tonumber(n), core.hash32(strings[i]), "hash of " .. string.format("%q", strings[i]))
    end
    assert.equal(#strings, i)
    -- Fixed points of the contract: these must never change.
    assert.equal(1339080641, core.hash32(""))
    assert.equal(175460407, core.hash32("dir/file0001.dcm"))
  end)
end)

describe("shards of N", function()
  it("put every path in exactly one shard, each with about its share", function()
    local paths = {}
    for i = 1, 3000 do
      paths[i] = string.format("patient%03d/study%d/series%d/IM%05d.dcm", i % 97, i % 7, i % 3, i)
    end
    for n = 1, 7 do
      local shards = {}
      for k = 1, n do shards[k] = assert(shard.parse(k .. "/" .. n)) end
      local counts = {}
      for k = 1, n do counts[k] = 0 end
      for _, p in ipairs(paths) do
        local owners = 0
        for k = 1, n do
          if shards[k].includes(p) then owners, counts[k] = owners + 1, counts[k] + 1 end
        end
        assert.equal(1, owners, p .. " in " .. owners .. " shards of " .. n)
      end
      for k = 1, n do
        local share = counts[k] / (#paths / n)
        assert.is_true(share > 0.85 and share < 1.15, string.format("shard %d/%d has %d paths", k, n, counts[k]))
      end
    end
  end)
end)

describe("healthcare store --shard", function()
  if not H.need_testbed() then return end

  local root, files, study

  local function run_shard(spec, dir)
    local so, se, code = H.run("healthcare store " .. H.q(E.dicomweb) .. " " .. H.q(dir)
      .. " --shard " .. spec .. " --json --max-instances 4")
    assert.equal(0, code, se)
    local report = assert(H.json.decode(so), so)
    return report
  end

  setup(function()
    root = H.tmpdir() .. "/archive"
    study = "1.2.826.0.1.3680043.8.498.62" .. math.random(100000, 999999)
    files = {}
    for _, sub in ipairs({ "a", "b/c", "b/d/e" }) do
      for _, f in ipairs(H.gen_dicom({ count = 8, size = 256, study = study, dir = root .. "/" .. sub })) do
        files[#files + 1] = f
      end
    end
  end)

  for _, n in ipairs({ 2, 3 }) do
    it("with " .. n .. " shards covers the folder exactly, without overlap", function()
      local seen, total = {}, 0
      for k = 1, n do
        local report = run_shard(k .. "/" .. n, root)
        assert.equal(0, #report.failed)
        assert.equal(0, #report.skipped)
        assert.is_true(#report.stored > 0, "shard " .. k .. "/" .. n .. " is empty")
        for _, r in ipairs(report.stored) do
          assert.is_nil(seen[r.path], r.path .. " stored by two shards")
          seen[r.path] = k
          total = total + 1
        end
      end
      assert.equal(#files, total)
      for _, f in ipairs(files) do assert.truthy(seen[f.path], f.path .. " in no shard") end
      local held = H.orthanc_sops(study)
      for _, f in ipairs(files) do assert.equal(1, held[f.sop_instance_uid]) end
    end)
  end

  it("takes the same share when the folder moves (the hash is of the relative path)", function()
    local before = run_shard("2/3", root)
    local moved = H.tmpdir() .. "/elsewhere"
    H.check_run("mv " .. H.q(root) .. " " .. H.q(moved))
    local after = run_shard("2/3", moved)
    H.check_run("mv " .. H.q(moved) .. " " .. H.q(root))
    local a, b = {}, {}
    for _, r in ipairs(before.stored) do a[#a + 1] = r.sop_instance_uid end
    for _, r in ipairs(after.stored) do b[#b + 1] = r.sop_instance_uid end
    table.sort(a)
    table.sort(b)
    assert.same(a, b)
  end)

  it("applies to paths read with --from-list, by the path as listed", function()
    local list = H.tmpdir() .. "/list.txt"
    local lines = {}
    for i, f in ipairs(files) do lines[i] = f.path end
    H.write_file(list, table.concat(lines, "\n") .. "\n")
    local got = {}
    for k = 1, 2 do
      local so, se, code = H.run("healthcare store " .. H.q(E.dicomweb) .. " --from-list " .. H.q(list)
        .. " --shard " .. k .. "/2 --json")
      assert.equal(0, code, se)
      local report = H.json.decode(so)
      for _, r in ipairs(report.stored) do
        assert.is_nil(got[r.path])
        got[r.path] = true
        assert.is_true(assert(shard.parse(k .. "/2")).includes(r.path))
      end
    end
    for _, f in ipairs(files) do assert.truthy(got[f.path]) end
  end)

  it("refuses a bad shard before sending anything", function()
    local _, se, code = H.run("healthcare store " .. H.q(E.dicomweb) .. " " .. H.q(root) .. " --shard 4/3")
    assert.equal(2, code)
    assert.truthy(se:find(usage_message("4/3"), 1, true), se)
    local st = assert(healthcare.dicomweb(E.dicomweb))
    local report, err = st:store(root, { shard = "0/2" })
    assert.is_nil(report)
    assert.equal("usage", err.kind)
    assert.equal(usage_message("0/2"), err.message)
    st:close()
  end)
end)
