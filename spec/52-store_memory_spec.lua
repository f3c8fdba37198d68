-- SPDX-License-Identifier: MIT
-- Streaming, proven: `healthcare store` sends one generated 1 GiB instance to Orthanc while its
-- peak resident memory, measured by /usr/bin/time -v (Debian package `time`), stays under
-- 64 MiB and within a few MiB of what storing a 4 KiB instance takes. Orthanc's MD5 of what it
-- stored matches the file, so the bytes went through whole.
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson"
local E = H.env

local LUA = os.getenv("HC_LUA") or "lua5.4"
local BIN = H.BIN
local GiB, MiB = 1024 * 1024 * 1024, 1024 * 1024

-- Runs `healthcare store` on path under /usr/bin/time -v: the report and the peak RSS in bytes.
local function store_measured(path)
  local _, err, code = H.run("/usr/bin/time -v " .. H.q(LUA) .. " " .. H.q(BIN) .. " store "
    .. H.q(E.dicomweb) .. " " .. H.q(path) .. " --json >" .. H.q(path .. ".json"))
  assert.equal(0, code, err)
  local kb = tonumber(err:match("Maximum resident set size %(kbytes%): (%d+)"))
  assert.is_number(kb, err)
  return cjson.decode(H.file_bytes(path .. ".json")), kb * 1024
end

local function orthanc_md5(sop_uid)
  local id = assert(H.orthanc_find_instance(sop_uid), "Orthanc has no " .. sop_uid)
  local r = H.curl { E.orthanc .. "/instances/" .. id .. "/attachments/dicom/md5" }
  assert.equal(200, r.status, r.body)
  return r.body:match("%x+"), id
end

describe("healthcare store memory", function()
  it("stays under 64 MiB while storing a 1 GiB instance", function()
    local small = H.gen_dicom { size = 4096 }[1]
    local report, small_rss = store_measured(small.path)
    assert.equal(1, #report.stored)

    local big = H.gen_dicom { size = GiB, fill = "zero" }[1]
    assert.is_true(big.size > GiB)
    local big_rss
    report, big_rss = store_measured(big.path)
    assert.equal(1, #report.stored)
    assert.equal(big.size, report.bytes)
    print(string.format("\npeak RSS: %.1f MiB for %d bytes, %.1f MiB for %d bytes; %.1f s (%.0f MB/s)",
      small_rss / MiB, small.size, big_rss / MiB, big.size, report.seconds, big.size / report.seconds / 1e6))
    assert.is_true(big_rss < 64 * MiB, string.format("peak RSS %.1f MiB", big_rss / MiB))
    assert.is_true(big_rss < small_rss + 8 * MiB,
      string.format("peak RSS grew with the file: %.1f MiB vs %.1f MiB", big_rss / MiB, small_rss / MiB))

    local md5, id = orthanc_md5(big.sop_instance_uid)
    assert.equal(H.check_run("md5sum " .. H.q(big.path)):match("^%x+"), md5)
    -- free Orthanc's disk and the test bed's
    assert.equal(200, H.curl { "-X", "DELETE", E.orthanc .. "/instances/" .. id }.status)
    os.remove(big.path)
  end)
end)
