-- SPDX-License-Identifier: MIT
-- HTTP Basic authentication to a DICOMweb server: an Orthanc of this file's own with
-- "AuthenticationEnabled" (spec/support/orthanc.py --auth). The Lua option basic_auth stores and
-- retrieves (without it: 401); the command with --basic-auth-file and with $HEALTHCARE_BASIC_AUTH
-- stores and retrieves; a wrong password is a clear error (exit 2, as every 401) without the
-- password; --debug lines, error values and messages never show the password nor the header's
-- base64; a file others may write is refused; basic_auth with another credential is a usage
-- error; a plain-http proxy does not get it (as a bearer token).
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/97-basic_auth_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local core = require "healthcare.core"
local healthcare = require "healthcare"
local proxy = require "support.proxy"

local E = H.env
local PY = "/usr/bin/python3"

local USER = "alice"
local PASSWORD = "pw-" .. core.random_hex(8)
local WRONG = "wrong-" .. core.random_hex(8)
-- The header values, computed by Python (not this project's code).
local function b64(s)
  return (H.check_run(PY .. " -c 'import base64,sys; print(base64.b64encode(sys.argv[1].encode()).decode())' "
    .. H.q(s)):gsub("%s+$", ""))
end
local B64 = b64(USER .. ":" .. PASSWORD)
local WRONG_B64 = b64(USER .. ":" .. WRONG)
local SECRETS = { PASSWORD, B64, WRONG, WRONG_B64 }

local wait_for = H.wait_for

-- ---- an Orthanc with authentication -------------------------------------------------------------

local dir = H.tmpdir()
local orthanc = {}
do
  local out, pidfile = dir .. "/orthanc.out", dir .. "/orthanc.pid"
  H.check_run("( " .. PY .. " " .. H.q(E.support .. "/orthanc.py") .. " --workdir " .. H.q(dir .. "/orthanc")
    .. " --auth " .. H.q(USER .. ":" .. PASSWORD) .. " >" .. H.q(out) .. " 2>" .. H.q(dir .. "/orthanc.err")
    .. " & echo $! >" .. H.q(pidfile) .. " ) >/dev/null 2>&1")
  orthanc.pid = assert(wait_for(10, function() return tonumber((H.file_bytes(pidfile) or ""):match("%d+")) end))
  local url = wait_for(60, function() return (H.file_bytes(out) or ""):match("^(http://[^\n]+)\n{") end)
  assert(url, "Orthanc did not start: " .. tostring(H.file_bytes(dir .. "/orthanc.err")))
  orthanc.url = url
  orthanc.dicomweb = url .. "/dicom-web"
end
local px = proxy.start()
teardown(function()
  px:stop()
  H.run("kill -TERM " .. orthanc.pid)
end)

local new_file = H.fresh_files(10)

-- text must hold none of the secrets (the password, the right and wrong headers' base64).
local function no_secrets(text, what)
  for _, s in ipairs(SECRETS) do
    assert.is_nil(text:find(s, 1, true), (what or "text") .. " shows a secret: " .. text)
  end
end

local function auth(password) return { user = USER, password = password or PASSWORD } end

local function file_with(text, mode)
  local path = H.tmpdir() .. "/basic"
  H.write_file(path, text)
  H.check_run("chmod " .. (mode or "600") .. " " .. H.q(path))
  return path
end

describe("healthcare.dicomweb(url, { basic_auth = ... })", function()
  it("stores and retrieves through an Orthanc with authentication; without it, 401", function()
    local lines = {}
    local store = assert(healthcare.dicomweb(orthanc.dicomweb, { basic_auth = auth(),
      debug = function(l) lines[#lines + 1] = l end }))
    local f = new_file()
    local report = assert(store:store(f.path))
    assert.equal(1, #report.stored, H.json.encode(report))
    local out = H.tmpdir() .. "/one.dcm"
    local res = assert(store:retrieve_instance(f.study_uid, f.series_uid, f.sop_instance_uid, { to = out }))
    assert.equal(1, #res.files)
    assert.equal(H.sha256(f.path), H.sha256(out))
    store:close()
    local debug = table.concat(lines, "\n")
    assert.truthy(debug:find("> Authorization", 1, true), debug)
    no_secrets(debug, "--debug lines")

    local anonymous = assert(healthcare.dicomweb(orthanc.dicomweb, { retry = { max_attempts = 1 } }))
    local _, err = anonymous:retrieve_instance(f.study_uid, f.series_uid, f.sop_instance_uid,
      { to = H.tmpdir() .. "/no.dcm" })
    anonymous:close()
    assert.equal(401, err and err.http_status, tostring(err))
  end)

  it("a wrong password: a 401 error value without the password, nor in --debug lines", function()
    local lines = {}
    local store = assert(healthcare.dicomweb(orthanc.dicomweb, { basic_auth = auth(WRONG),
      retry = { max_attempts = 1 }, debug = function(l) lines[#lines + 1] = l end }))
    local f = new_file()
    local report = assert(store:store(f.path))
    store:close()
    assert.equal(1, #report.failed, H.json.encode(report))
    no_secrets(H.json.encode(report), "the report")
    local results = assert(healthcare.dicomweb(orthanc.dicomweb, { basic_auth = auth(WRONG) }))
    local list, err = results:search_studies({ limit = 1 })
    if list then list, err = list:all() end
    results:close()
    assert.is_nil(list)
    assert.equal(401, err.http_status, tostring(err))
    no_secrets(tostring(err), "the error")
    no_secrets(H.json.encode(err.details or {}), "the error's details")
    no_secrets(table.concat(lines, "\n"), "--debug lines")
  end)

  it("with another credential: a usage error naming both", function()
    for _, other in ipairs({ { access_token = "token-1234567890" }, { api_key = "key-1234567890" },
      { credentials = false }, { impersonate = "sa@p.iam.gserviceaccount.com" } }) do
      local opts = { basic_auth = auth() }
      local name = next(other)
      opts[name] = other[name]
      local store, err = healthcare.dicomweb(orthanc.dicomweb, opts)
      assert.is_nil(store)
      assert.equal("usage", err.kind)
      assert.equal("options 'basic_auth' and '" .. name .. "' cannot be used together: a request carries one "
        .. "credential", err.message)
    end
  end)

  it("is not sent through a proxy over plain http, unless insecure", function()
    local before = #px:requests()
    local store = assert(healthcare.dicomweb(orthanc.dicomweb, { basic_auth = auth(), proxy = px.url,
      retry = { max_attempts = 1 } }))
    local list, err = store:search_studies({ limit = 1 })
    if list then list, err = list:all() end
    store:close()
    assert.is_nil(list)
    assert.equal("usage", err.kind)
    assert.equal("CLEARTEXT_PROXY", err.status)
    assert.truthy(tostring(err):find("refusing to send the Authorization header (Basic authentication", 1, true),
      tostring(err))
    no_secrets(tostring(err), "the error")
    assert.equal(before, #px:requests())
    store = assert(healthcare.dicomweb(orthanc.dicomweb, { basic_auth = auth(), proxy = px.url, insecure = true }))
    list, err = store:search_studies({ limit = 1 })
    if list then list, err = list:all() end
    store:close()
    assert(list, tostring(err))
    assert.is_true(#px:requests() > before, "went through the proxy")
  end)
end)

describe("the command", function()
  local function cmd(args, env)
    local words = {}
    for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. H.q(v) end
    words[#words + 1] = H.healthcare_command(args)
    return H.run(table.concat(words, " "))
  end

  it("--basic-auth-file stores, $HEALTHCARE_BASIC_AUTH retrieves; --debug shows no secret", function()
    local f = new_file()
    local file = file_with(USER .. ":" .. PASSWORD .. "\n")
    local so, se, code = cmd({ "store", orthanc.dicomweb, f.path, "--json", "--debug", "--basic-auth-file", file })
    assert.equal(0, code, so .. se)
    assert.truthy(se:find("Authorization", 1, true), se)
    no_secrets(so .. se, "the command's output")
    local out = H.tmpdir()
    so, se, code = cmd({ "retrieve", orthanc.dicomweb, f.study_uid .. "/" .. f.series_uid .. "/" .. f.sop_instance_uid,
      "-o", out, "--debug" }, { HEALTHCARE_BASIC_AUTH = USER .. ":" .. PASSWORD })
    assert.equal(0, code, so .. se)
    no_secrets(so .. se, "the command's output")
    assert.equal(H.sha256(f.path), H.sha256(out .. "/" .. f.sop_instance_uid .. ".dcm"))
    -- Without either: Orthanc's 401.
    so, se, code = cmd({ "retrieve", orthanc.dicomweb, f.study_uid, "-o", H.tmpdir() })
    assert.equal(2, code, so .. se)
  end)

  it("a wrong password: exit 2 (as every 401; store: 1, a failed file), a message without the password", function()
    for _, args in ipairs({ { "search", orthanc.dicomweb, "--debug", "--basic-auth-file",
      file_with(USER .. ":" .. WRONG) }, { "search", orthanc.dicomweb, "--debug" } }) do
      local so, se, code = cmd(args, { HEALTHCARE_BASIC_AUTH = USER .. ":" .. WRONG })
      assert.equal(2, code, so .. se)
      assert.truthy(se:find("401", 1, true), se)
      no_secrets(so .. se, "the command's output")
    end
    -- store goes on past a file the server refuses: exit 1 (as with a wrong token), the reason the 401.
    local so, se, code = cmd({ "store", orthanc.dicomweb, new_file().path, "--json", "--debug", "--basic-auth-file",
      file_with(USER .. ":" .. WRONG) })
    assert.equal(1, code, so .. se)
    assert.truthy((so .. se):find("401", 1, true), so .. se)
    no_secrets(so .. se, "the command's output")
  end)

  it("refuses a file others may write, a file without user:password, and another credential", function()
    local so, se, code = cmd({ "search", orthanc.dicomweb, "--basic-auth-file",
      file_with(USER .. ":" .. PASSWORD, "666") })
    assert.equal(2, code, so .. se)
    assert.truthy(se:find("refusing --basic-auth-file", 1, true), se)
    no_secrets(so .. se)
    so, se, code = cmd({ "search", orthanc.dicomweb, "--basic-auth-file", file_with(PASSWORD .. "\n") })
    assert.equal(2, code, so .. se)
    assert.truthy(se:find("must hold one line user:password", 1, true), se)
    no_secrets(so .. se)
    so, se, code = cmd({ "search", orthanc.dicomweb, "--basic-auth-file", file_with(USER .. ":" .. PASSWORD),
      "--access-token", "token-1234567890" })
    assert.equal(2, code, so .. se)
    assert.truthy(se:find("--basic-auth-file and --access-token cannot be used together", 1, true), se)
  end)

  it("a user:password@ URL is refused with a pointer to basic_auth and --basic-auth-file", function()
    local so, se, code = cmd({ "search", "http://" .. USER .. ":" .. PASSWORD .. "@" .. orthanc.url:sub(8)
      .. "/dicom-web" })
    assert.equal(2, code, so .. se)
    assert.truthy(se:find("--basic-auth-file", 1, true), se)
    no_secrets(so .. se)
  end)
end)
