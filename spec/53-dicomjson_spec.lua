-- SPDX-License-Identifier: MIT
-- healthcare.dicomweb.dicomjson on XML answers captured from the emulator (which writes private
-- attributes the way Google does: tag="00090097" privateCreator="GOOGLE"). The table-driven cases
-- that need no server are in spec/unit/53-dicomjson_spec.lua.
local H = require "helpers"
local dicomjson = require "healthcare.dicomweb.dicomjson"

describe("XML answers captured from the emulator", function()
  if not H.need_testbed() then return end
  local E = H.env
  -- our own instance: the shared one may hold fault rules of a spec running at the same time
  local em
  lazy_setup(function() em = require("support.emulator_instance").start() end)
  lazy_teardown(function() if em then em:stop() end end)

  -- POST one instance as application/dicom without asking for JSON: the emulator answers XML.
  local function post_xml(path)
    return H.curl({ "-X", "POST", "-H", "Authorization: Bearer " .. E.token .. "-private",
      "-H", "Accept: application/dicom+xml", "-H", "Content-Type: application/dicom",
      "--data-binary", "@" .. path, em.store_url .. "/studies" })
  end

  it("reads a stored instance and a 409 with Google's FailureDetail", function()
    local dir = H.tmpdir()
    local g = H.gen_dicom { dir = dir, prefix = "xml" }[1]
    local r = post_xml(g.path)
    assert.equal(200, r.status, r.body)
    assert.matches("application/dicom+xml", r.headers["content-type"], 1, true)
    local out = dicomjson.outcomes(assert(dicomjson.from_xml(r.body)))
    assert.same({ outcome = "stored" }, out[g.sop_instance_uid])

    local changed = H.gen_dicom { dir = dir, prefix = "changed", sop = g.sop_instance_uid, study = g.study_uid }[1]
    r = post_xml(changed.path)
    assert.equal(409, r.status, r.body)
    assert.matches('tag="00090097" vr="LT" privateCreator="GOOGLE"', r.body, 1, true)
    out = dicomjson.outcomes(assert(dicomjson.from_xml(r.body)))
    assert.same({ outcome = "failed", failure_reason = 272,
      detail = "an instance with the same SOP Instance UID already exists with different content",
      reason = "0x0110 processing failure: an instance with the same SOP Instance UID already exists with different content",
    }, out[g.sop_instance_uid])
  end)
end)
