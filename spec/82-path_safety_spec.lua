-- SPDX-License-Identifier: MIT
-- Path safety: dicomStore names, DICOMweb paths, study UIDs, endpoints and base URLs that try to
-- leave their place in the URL ("..", "%2F", "?", "#", whitespace, non-ASCII, CR/LF, NUL) are
-- refused with a usage error before any request is made, through the Lua API and both forms of the
-- command. "No request" is checked on a private emulator (this file's alone), which logs every
-- request it receives, whatever its path; every refused name also carries a marker that would
-- show in that log had it been sent anyway. Query parameter values cannot add parameters.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/82-path_safety_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"

local E = H.env
local BIN = H.BIN
local METHOD = "locations-datasets-dicom-stores-studies-store-instances"
local em = require("support.emulator_instance").start()
teardown(function() em:stop() end)
local TOKEN = E.token .. "-private"

-- Markers: a word that may stand in a resource ID, and digits that may stand in a UID.
local M = "p82x" .. core.random_hex(5)
local D = tostring(math.random(100000000, 999999999))

-- Requests the private emulator has logged (the control API's own excepted).
local function requests()
  local n, marked = 0, 0
  for line in (H.file_bytes(em.dir .. "/err") or ""):gmatch("[^\n]+") do
    local path = line:match("^emulator: %u+ (%S+)")
    if path and not path:find("^/_control/") then
      n = n + 1
      if path:find(M, 1, true) or path:find(D, 1, true) then marked = marked + 1 end
    end
  end
  return n, marked
end

-- Runs fn and checks that no request reached the emulator meanwhile.
local function no_request(fn)
  local before, before_marked = requests()
  local a, b, c = fn()
  local after, marked = requests()
  assert.equal(before_marked, marked, "a request carried a refused name")
  assert.equal(before, after, "a request was made")
  return a, b, c
end

-- The emulator logs a request just after answering it: after each test, a moment later, the log
-- must hold exactly the requests made on purpose.
local sent, sent_marked = 0, 0
after_each(function()
  os.execute("sleep 0.3")
  local n, marked = requests()
  assert.equal(sent_marked, marked, "a request carried a refused name")
  assert.equal(sent, n, "a request was made")
end)

local PREFIX = "projects/" .. M .. "/locations/us-central1/datasets/d/dicomStores/"
local GOOD = PREFIX .. "s"
local function parent(s) return PREFIX .. s end

-- Resource names that must be refused: every trick in one segment or around it.
local BAD_PARENTS = {
  parent(".."), parent("."), parent("s/.."), parent("s/../../x"), parent("..%2F..%2Fx"),
  parent("s%2Fx"), parent("s%2fx"), parent("s?x=1"), parent("s#f"), parent("s x"), parent("s\t"),
  parent(" s"), parent("s\r\nX-Injected: 1"), parent("s\n"), parent("s\0"), parent("s%00"),
  parent("d\xc3\xa9"), parent("s\xe2\x80\x8b"), parent("\xef\xbd\x93"), parent("s\xff"), parent("s/"),
  parent(""), parent("s/dicomWeb/studies"), parent("s@evil"), parent("s\\x"), parent("s;x"),
  "/" .. GOOD, GOOD .. "/", "projects/" .. M .. "/../locations/l/datasets/d/dicomStores/s",
  "projects/" .. M .. "/locations/l/datasets/d/../../dicomStores/s",
  "projects/" .. M .. "/locations/l/datasets/d/dicomStores/s/../s",
  "projects/" .. M .. "%2Flocations/l/datasets/d/dicomStores/s",
}

-- DICOMweb paths that must be refused.
local UID = "1.2.826.0.1." .. D
local BAD_PATHS = {
  "studies/" .. UID .. "/..", "studies/" .. UID .. "/../../x", "studies/../" .. UID,
  "studies/" .. UID .. "%2F..", "studies/" .. UID .. "?x=1", "studies/" .. UID .. "#f",
  "studies/" .. UID .. " ", "studies/ " .. UID, "studies/" .. UID .. "\r\nX: 1", "studies/" .. UID .. "\n",
  "studies/" .. UID .. "\0", "studies/" .. UID .. ".", "studies/." .. UID, "studies/1.2..826." .. D,
  "studies/" .. UID .. "\xc3\xa9", "studies/\xef\xbc\x91.2." .. D, "studies/" .. UID .. "/series",
  "studies/" .. UID .. "/", "studies//" .. UID, "Studies/" .. UID, "studies/" .. string.rep("1.", 30) .. D,
  "studies/" .. UID .. "x", "series/" .. UID, "studies" .. D, "",
}

-- Study UIDs (store:store's study_uid, the command's --study) that must be refused.
local BAD_UIDS = {}
for _, p in ipairs(BAD_PATHS) do
  local uid = p:match("^studies/(.+)$")
  if uid and not uid:find("^/") then BAD_UIDS[#BAD_UIDS + 1] = uid end
end

local function shown(s) return (s:gsub("%c", "?")) end

local function client()
  return assert(healthcare.new { endpoint = em.endpoint, access_token = TOKEN })
end

local body = { content_type = "application/dicom", data = "not sent" }

describe("client:store_instances and client:dicom_store", function()
  it("refuse every escaping dicomStore name before any request", function()
    local c = client()
    for _, p in ipairs(BAD_PARENTS) do
      local res, err = no_request(function() return c:store_instances(p, "studies", body) end)
      assert.is_nil(res, shown(p))
      assert.equal("usage", err.kind, shown(p))
      assert.truthy(err.message:find("invalid dicomStore name", 1, true), err.message)
      local store, serr = no_request(function() return c:dicom_store(p) end)
      assert.is_nil(store, shown(p))
      assert.equal("usage", serr.kind)
      -- tostring(err) shows control characters escaped, so it stays one line.
      assert.is_nil(tostring(err):find("[\r\n%z]"), shown(p))
    end
    c:close()
  end)

  it("refuse every escaping DICOMweb path before any request", function()
    local c = client()
    for _, p in ipairs(BAD_PATHS) do
      local res, err = no_request(function() return c:store_instances(E.store, p, body) end)
      assert.is_nil(res, shown(p))
      assert.equal("usage", err.kind, shown(p))
      assert.truthy(err.message:find("invalid DICOMweb path", 1, true), err.message)
      assert.is_nil(tostring(err):find("[\r\n%z]"), shown(p))
    end
    c:close()
  end)

  it("send a good name and path (the checks are not simply refusing everything)", function()
    local c = client()
    local res = assert(c:store_instances(E.store, "studies/" .. UID, body))
    assert.truthy(res.status >= 400)  -- not DICOM, but it was sent
    sent, sent_marked = sent + 1, sent_marked + 1
    c:close()
  end)
end)

describe("a DICOMweb store object", function()
  it("refuses escaping paths in store_instances and study UIDs in store", function()
    local store = assert(healthcare.dicomweb(em.store_url, { access_token = TOKEN }))
    local f = H.gen_dicom()[1]
    for _, p in ipairs(BAD_PATHS) do
      local res, err = no_request(function() return store:store_instances(p, body) end)
      assert.is_nil(res, shown(p))
      assert.equal("usage", err.kind)
    end
    for _, uid in ipairs(BAD_UIDS) do
      local report, err = no_request(function() return store:store({ f.path }, { study_uid = uid }) end)
      assert.is_nil(report, shown(uid))
      assert.equal("usage", err.kind, shown(uid))
      assert.truthy(err.message:find("invalid study UID", 1, true), err.message)
    end
    store:close()
  end)
end)

describe("endpoints and base URLs", function()
  local BAD_BASES = { "/x y", "/x\r\nX-Injected: 1", "/x\n", "/x\0", "/x?y=1", "/x#y", "/x\t", "/d\xc3\xa9" }

  it("are refused by healthcare.new and healthcare.dicomweb before any request", function()
    for _, b in ipairs(BAD_BASES) do
      local c, err = no_request(function()
        return healthcare.new { endpoint = em.url .. "/" .. M .. b, access_token = TOKEN }
      end)
      assert.is_nil(c, shown(b))
      assert.equal("usage", err.kind)
      assert.truthy(err.message:find("^endpoint must be an http%(s%) URL"), err.message)
      local s, serr = no_request(function() return healthcare.dicomweb(em.url .. "/" .. M .. b) end)
      assert.is_nil(s, shown(b))
      assert.equal("usage", serr.kind)
      assert.truthy(serr.message:find("^DICOMweb base URL must be an http%(s%) URL"), serr.message)
    end
  end)
end)

describe("query parameters", function()
  it("are percent-encoded: a value cannot add a parameter, a fragment or a path", function()
    local c = assert(healthcare.new { endpoint = em.endpoint, access_token = TOKEN,
      params = { ["quota-user"] = "q&access_token=evil#frag/../x?y=1 \r\n" } })
    local n = #em:stats().requests
    local res = assert(c:store_instances(E.store, "studies", body))
    assert.truthy(res.status >= 400)
    sent = sent + 1
    local r = em:stats().requests[n + 1]
    assert.same({ "quotaUser" }, r.query)
    assert.equal("/v1/" .. E.store .. "/dicomWeb/studies", r.path)
    c:close()
  end)
end)

describe("the healthcare command", function()
  local function run(args)
    local words = { BIN }
    for _, a in ipairs(args) do words[#words + 1] = H.q(a) end
    return H.run(table.concat(words, " "))
  end
  local f

  -- Arguments with NUL cannot reach a process. The Lua API above takes every case; the command
  -- shares its checks, so every third case (each kind of trick still appears) proves the wiring
  -- at a third of the process starts.
  local function some(list)
    local out = {}
    for i = 1, #list, 3 do
      if not list[i]:find("%z") and list[i] ~= "" then out[#out + 1] = list[i] end
    end
    return out
  end

  it("refuses escaping names and paths in the seed's form (exit 2, no request)", function()
    f = f or H.gen_dicom()[1]
    local function seed(p, path)
      return run({ "projects", METHOD, p, path, "-r", ".", "content-type=application/dicom", "data=@" .. f.path,
        "-p", "access-token=" .. TOKEN, "--endpoint", em.endpoint })
    end
    for _, p in ipairs(some(BAD_PARENTS)) do
      local _, se, code = no_request(function() return seed(p, "studies") end)
      assert.equal(2, code, shown(p) .. ": " .. se)
      assert.truthy(se:find("invalid dicomStore name", 1, true), se)
    end
    for _, p in ipairs(some(BAD_PATHS)) do
      local _, se, code = no_request(function() return seed(E.store, p) end)
      assert.equal(2, code, shown(p) .. ": " .. se)
      assert.truthy(se:find("invalid DICOMweb path", 1, true), se)
    end
  end)

  it("refuses escaping store names and --study values in `healthcare store` (exit 2, no request)", function()
    f = f or H.gen_dicom()[1]
    local function store(name, extra)
      local args = { "store", "--no-progress", "--access-token", TOKEN, "--endpoint", em.endpoint }
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      args[#args + 1] = name
      args[#args + 1] = f.path
      return run(args)
    end
    for _, p in ipairs(some(BAD_PARENTS)) do
      local _, se, code = no_request(function() return store(p) end)
      assert.equal(2, code, shown(p) .. ": " .. se)
      assert.truthy(se:find("invalid dicomStore name", 1, true), se)
    end
    for _, uid in ipairs(some(BAD_UIDS)) do
      local _, se, code = no_request(function() return store(E.store, { "--study", uid }) end)
      assert.equal(2, code, shown(uid) .. ": " .. se)
      assert.truthy(se:find("invalid study UID", 1, true), se)
    end
  end)
end)
