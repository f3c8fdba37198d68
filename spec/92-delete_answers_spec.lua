-- SPDX-License-Identifier: MIT
-- store:delete_* against odd answers a server may give to a DELETE, played by the capture server
-- (spec/support/capture_server.py: each request recorded, the answers the spec wrote given in
-- order). spec/92-delete_spec.lua deletes for real through the emulator.
local H = require "helpers"
if not H.need_testbed() then return end
local healthcare = require "healthcare"
local cjson = H.json

local FAST_RETRY = { max_attempts = 4, initial = 0.01, multiplier = 2, max_delay = 0.05 }

local cap = H.capture_server()
teardown(cap.stop)
local URL, answers = cap.url, cap.answers

-- The verbs of the requests captured so far.
local function verbs()
  local list = {}
  for i, r in ipairs(cap.captured()) do list[i] = r.verb end
  return list
end

local function envelope(code, message)
  return { status = code, content_type = "application/json",
    body = cjson.encode({ error = { code = code, message = message } }) }
end

local store = assert(healthcare.dicomweb(URL .. "/dicomweb", { retry = FAST_RETRY }))
teardown(function() store:close() end)

describe("delete's answers", function()
  before_each(function()
    answers({})
    cap.forget()
  end)

  it("counts a 410 after a 502 as deleted (already_gone), a 410 at once as an error", function()
    answers({ envelope(502, "bad gateway"), envelope(410, "gone") })
    local res, err = store:delete_series("1.2.3", "1.2.3.4")
    assert.is_nil(err)
    assert.same({ status = 410, already_gone = true }, res)
    -- the DELETE, again, then the one study search that finds the store is there
    assert.same({ "DELETE", "DELETE", "GET" }, verbs())

    answers({ envelope(410, "gone") })
    res, err = store:delete_series("1.2.3", "1.2.3.4")
    assert.is_nil(res)
    assert.equal(410, err.http_status)
  end)

  it("says an answer whose name is not a string is not an Operation", function()
    for _, case in ipairs({ { "null", "null" }, { "42", "a number" }, { "{}", "an object" } }) do
      answers({ { status = 200, content_type = "application/json", body = '{"name": ' .. case[1] .. "}" } })
      local res, err = store:delete_study("1.2.3")
      assert.is_nil(res)
      assert.equal("http", err.kind)
      assert.equal(200, err.http_status)
      assert.equal("DeleteStudy: the server's answer (HTTP 200) is not an Operation: its name is "
        .. case[2] .. ", not a string; the study 1.2.3 may or may not be deleted", tostring(err))
    end
    -- no name at all: a delete that answers at once (an instance's, at Google)
    answers({ { status = 200, content_type = "application/json", body = "{}" } })
    local res, err = store:delete_instance("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert.is_nil(err)
    assert.same({ status = 200 }, res)
  end)

  it("healthcare delete says a 404 after a 503 is gone already and exits 0; a 404 at once exits 1", function()
    answers({ envelope(503, "deleted, but the gateway timed out"), envelope(404, "not found") })
    local out, err, code = H.healthcare({ "delete", URL .. "/dicomweb", "1.2.3", "--yes" })
    assert.equal(0, code, err)
    assert.equal("deleted study 1.2.3 (already gone: an earlier attempt may have deleted it)\n", out)

    answers({ envelope(404, "not found") })
    out, err, code = H.healthcare({ "delete", URL .. "/dicomweb", "1.2.3", "--yes" })
    assert.equal(1, code, err)
    assert.equal("", out)
    assert.matches("DeleteStudy: study 1%.2%.3 not found", err)
  end)
end)
