-- SPDX-License-Identifier: MIT
-- `healthcare delete` as a user runs it: targets given twice or inside one another, and the
-- question asked on a terminal. Deletes for real through this file's emulator (Orthanc behind
-- it, checked with curl); spec/93 has the rest of the command's cases.
local H = require "helpers"
if not H.need_testbed() then return end
local E = H.env

local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local TOKEN = E.token .. "-private"

-- args for the dicomStore through this file's emulator
local function google(args)
  local t = { args[1], E.store }
  for i = 2, #args do t[#t + 1] = args[i] end
  t[#t + 1] = "--endpoint"; t[#t + 1] = em.endpoint
  t[#t + 1] = "--access-token"; t[#t + 1] = TOKEN
  return t
end

-- The DELETE requests the emulator got, as paths below dicomWeb/.
local function deletes()
  local list = {}
  for _, r in ipairs(em:stats().requests) do
    if r.method == "DELETE" then list[#list + 1] = r.path:match("dicomWeb/(.*)$") end
  end
  return list
end

local function p(s) return (s:gsub("%p", "%%%0")) end

-- Two studies: a with series a1 (two instances) and a2, b with series b1; stored in Orthanc.
local function make_studies()
  local a, b = H.fresh_uid(), H.fresh_uid()
  local a1, a2, b1 = H.fresh_uid(), H.fresh_uid(), H.fresh_uid()
  local files = H.gen_many({
    { count = 2, study = a, series = a1 }, { count = 1, study = a, series = a2 },
    { count = 1, study = b, series = b1 },
  })
  H.store_with_cli(files)
  return { a = a, a1 = a1, a2 = a2, b = b, b1 = b1, files = files }
end

describe("healthcare delete", function()
  it("deletes a target given twice, or inside another target, once, and exits 0", function()
    local s = make_studies()
    local before = #deletes()
    local out, err, code = H.healthcare(google { "delete", s.a .. "/" .. s.a1, s.b .. "/" .. s.b1,
      s.a .. "/" .. s.a1, s.b, s.b .. "/" .. s.b1 .. "/" .. s.files[4].sop_instance_uid, "--yes" })
    assert.equal(0, code, err)
    assert.matches("^deleted series " .. p(s.a .. "/" .. s.a1) .. " %(operation [^)]+%)\ndeleted study "
      .. p(s.b) .. " %(operation [^)]+%)\n$", out)
    assert.matches("series " .. p(s.a .. "/" .. s.a1) .. " is given twice: deleting it once", err)
    assert.matches("series " .. p(s.b .. "/" .. s.b1) .. " is in study " .. p(s.b)
      .. ", also given: deleted with it", err)
    assert.matches("instance " .. p(s.b .. "/" .. s.b1 .. "/" .. s.files[4].sop_instance_uid) .. " is in study "
      .. p(s.b) .. ", also given: deleted with it", err)
    assert.matches("deleted 2 of 2\n$", err)
    local sent = deletes()
    assert.same({ "studies/" .. s.a .. "/series/" .. s.a1, "studies/" .. s.b }, { sent[before + 1], sent[before + 2] })
    assert.equal(before + 2, #sent)
    assert.is_nil(H.orthanc_find_instance(s.files[1].sop_instance_uid))
    assert.is_string(H.orthanc_find_instance(s.files[3].sop_instance_uid))
    assert.is_nil(H.orthanc_find_instance(s.files[4].sop_instance_uid))
  end)

  it("asks on a terminal naming the store; a 'n' deletes nothing, says so and exits 1", function()
    local s = make_studies()
    local before = #deletes()
    -- script(1) gives the command a terminal; what it types there is `answer`
    local function on_terminal(answer, target)
      return H.run("script -qec " .. H.q(H.healthcare_command(google { "delete", target })) .. " /dev/null", answer)
    end
    local out, _, code = on_terminal("n\n", s.a)
    assert.equal(1, code, out)
    assert.truthy(out:find("Delete study " .. s.a .. " from " .. E.store .. "? This cannot be undone. [y/N] ", 1, true),
      out)
    assert.matches("healthcare delete: not deleted\r?\n", out)
    assert.not_matches("without %-%-yes", out)
    assert.equal(before, #deletes())
    assert.is_string(H.orthanc_find_instance(s.files[1].sop_instance_uid))

    out, _, code = on_terminal("y\n", s.a)
    assert.equal(0, code, out)
    assert.matches("deleted study " .. p(s.a), out)
    assert.is_nil(H.orthanc_find_instance(s.files[1].sop_instance_uid))
    assert.is_string(H.orthanc_find_instance(s.files[4].sop_instance_uid))
  end)
end)
