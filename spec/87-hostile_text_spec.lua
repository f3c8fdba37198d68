-- SPDX-License-Identifier: MIT
-- Hostile text and proxies (issue 13, points 8, 9 and 11):
--   * a server's error message with terminal controls (OSC, CSI, CR/LF, a C1 CSI, a byte that is
--     not UTF-8), search results carrying them, and file names with a newline and ESC reach
--     standard error escaped, one line per message, from `healthcare store`, `search`,
--     `retrieve`, `delete` and the seed form; --json stays exact JSON with the real names;
--   * a server that echoes the bearer token, the API key, the assertion, the refresh token or the
--     client secret it was sent (raw and percent-encoded) gets REDACTED printed instead, in
--     stderr, --json, the journal and error values of the Lua API;
--   * with http_proxy set, a credential is not sent to a plain-http endpoint or token endpoint
--     through the proxy (Debian's tinyproxy, on 127.0.0.1, its log read) unless --insecure;
--     NO_PROXY and libcurl's other rules are followed.
-- The hostile server is spec/support/hostile_text_server.py.
-- Run: spec/support/testbed lua5.4 /usr/bin/busted spec/87-hostile_text_spec.lua
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson"
local core = require "healthcare.core"
local healthcare = require "healthcare"
local util = require "healthcare.util"

local E = H.env
local PY = "/usr/bin/python3"
local PARENT = "projects/p/locations/l/datasets/d/dicomStores/s"
local STORE_METHOD = "locations-datasets-dicom-stores-studies-store-instances"
local SEARCH_METHOD = "locations-datasets-dicom-stores-search-for-studies"

-- The bytes hostile_text_server.py puts in its messages (HOSTILE there).
local HOSTILE = "evil\27]0;pwned\7 \27[31mred\27[0m\r\nFAKE: second line\194\155" .. "31m c1 \255 end"
-- How it must be shown.
local HOSTILE_SHOWN = [[evil\x1b]0;pwned\x07 \x1b[31mred\x1b[0m\r\nFAKE: second line\u009b31m c1 \xff end]]

-- Secrets of this file: long enough to be looked for, with characters that percent-encoding
-- changes (a refresh token has '/').
local TOKEN = "tok-" .. core.random_hex(20)
local API_KEY = "key-" .. core.random_hex(20)
local REFRESH = "1//0g-" .. core.random_hex(16) .. "/refresh+x"
local CLIENT_SECRET = "secret-" .. core.random_hex(12)
-- Header values of an external_account's url source (a CI system's bearer token, a vault token).
local SOURCE_BEARER = "ci-bearer-" .. core.random_hex(12)
local VAULT_TOKEN = "hvs." .. core.random_hex(16)

-- ---- servers ---------------------------------------------------------------------------------

local URL, stop_server = H.start_server("hostile text server", H.q(PY) .. " " .. H.q(E.support .. "/hostile_text_server.py"),
  H.tmpdir())
teardown(stop_server)

-- ---- checks ----------------------------------------------------------------------------------

-- Nothing in text acts on a terminal or splits a line: no C0 control but the newlines ending
-- lines, no DEL, no C1 control (raw or in UTF-8), only valid UTF-8.
local function assert_printable(text, where)
  for line in text:gmatch("([^\n]*)\n?") do
    local bad = line:find("[%z\1-\31\127]")
    assert.is_nil(bad, where .. " has a control character in: " .. string.format("%q", line))
    assert.is_nil(line:find("\194[\128-\159]"), where .. " has a C1 control in: " .. string.format("%q", line))
    assert.is_nil(line:find("[\128-\255]"), where .. " has a non-ASCII byte (none was valid text) in: "
      .. string.format("%q", line))
  end
end

local SECRETS = { TOKEN, API_KEY, REFRESH, CLIENT_SECRET, core.escape(REFRESH), core.escape(CLIENT_SECRET),
  SOURCE_BEARER, VAULT_TOKEN,
  -- The Basic client authentication of "client-1" and CLIENT_SECRET, as sent.
  (core.base64url("client-1:" .. CLIENT_SECRET):gsub("-", "+"):gsub("_", "/")) }
local function assert_no_secret(text, where)
  for _, s in ipairs(SECRETS) do
    assert.is_nil(text:find(s, 1, true), where .. " holds a secret: " .. s:sub(1, 8) .. "...")
  end
  assert.is_nil(H.find_jwt(text), where .. " holds a JWT")
end

-- Runs the command with a clean proxy environment plus env (a table); returns stdout, stderr, code.
local function run(args, env)
  local words = { "env", "-u", "http_proxy", "-u", "https_proxy", "-u", "all_proxy", "-u", "ALL_PROXY",
    "-u", "HTTPS_PROXY", "-u", "HTTP_PROXY", "-u", "no_proxy", "-u", "NO_PROXY",
    "XDG_CACHE_HOME=" .. H.tmpdir() }
  for k, v in pairs(env or {}) do words[#words + 1] = k .. "=" .. v end
  for i, w in ipairs(words) do words[i] = H.q(w) end
  return H.run(table.concat(words, " ") .. " " .. H.healthcare_command(args))
end

local dicom_file = H.gen_dicom({ count = 1, size = 2000 })[1].path

describe("util.printable", function()
  it("escapes controls, C1, bidi overrides, bad UTF-8 and the backslash, and keeps text", function()
    local cases = {
      { "plain text", "plain text" },
      { HOSTILE, HOSTILE_SHOWN },
      { "tab\there\0nul\127del", [[tab\there\x00nul\x7fdel]] },
      { [[a\b]], [[a\\b]] },
      { "Ümlaut Éé 日本 😀", "Ümlaut Éé 日本 😀" },
      { "rtl\226\128\174txt\226\128\168sep", [[rtl\u202etxt\u2028sep]] },
      { "overlong\192\175 cut\226\130", [[overlong\xc0\xaf cut\xe2\x82]] },
      { "surrogate\237\160\128", [[surrogate\xed\xa0\x80]] },
    }
    for _, c in ipairs(cases) do
      assert.are.equal(c[2], util.printable(c[1]))
    end
  end)

  it("is what tostring gives for an error, while err.message keeps the server's text", function()
    local store = assert(healthcare.dicomweb(URL .. "/esc/dicom-web"))
    local results, err = store:search_studies({})
    if results then err = select(2, results:all()) end
    store:close()
    assert.truthy(err.message:find(HOSTILE, 1, true))
    assert.truthy(tostring(err):find(HOSTILE_SHOWN, 1, true))
  end)
end)

describe("server text on a terminal", function()
  local function check(args, env)
    local so, se, code = run(args, env)
    assert_printable(se, "stderr of " .. args[1])
    assert_printable(so, "stdout of " .. args[1])
    assert.truthy(se:find(HOSTILE_SHOWN, 1, true), "stderr shows the message escaped:\n" .. se)
    return so, se, code
  end

  it("healthcare search", function()
    local _, se, code = check({ "search", URL .. "/esc/dicom-web" })
    assert.are.equal(1, code)
    local n = 0
    for _ in se:gmatch("[^\n]+") do n = n + 1 end
    assert.are.equal(1, n, "one line:\n" .. se)
  end)

  it("healthcare retrieve", function()
    local _, _, code = check({ "retrieve", URL .. "/esc/dicom-web", "1.2.3", "-o", H.tmpdir() .. "/r" })
    assert.are.equal(1, code)
  end)

  it("healthcare delete", function()
    local _, _, code = check({ "delete", URL .. "/esc/dicom-web", "1.2.3", "--yes" })
    assert.are.equal(1, code)
  end)

  it("healthcare store", function()
    local _, se, code = check({ "store", URL .. "/esc/dicom-web", dicom_file, "--no-progress" })
    assert.are.equal(1, code)
    assert.truthy(se:find("failed  " .. dicom_file .. ": ", 1, true), se)
  end)

  it("the seed form, through the API's URL shape", function()
    local _, _, code = check({ "projects", STORE_METHOD, PARENT, "studies", "-r", ".",
      "content-type=application/dicom", "data=@" .. dicom_file, "--endpoint", URL .. "/esc/v1",
      "-p", "access-token=" .. TOKEN })
    assert.are.equal(1, code)
    check({ "projects", SEARCH_METHOD, PARENT, "studies", "--endpoint", URL .. "/esc/v1",
      "-p", "access-token=" .. TOKEN })
    -- and a parse error quoting what was typed
    local _, se, code2 = run({ "projects", SEARCH_METHOD, PARENT, "studies?a=x\r\n\27[31mHost: evil" })
    assert.are.equal(2, code2)
    assert_printable(se, "stderr of a parse error")
    assert.truthy(se:find([['studies?a=x\r\n\x1b[31mHost: evil']], 1, true), se)
  end)

  it("search results: table cells escaped, --json exact (valid JSON: a byte that is not UTF-8 as U+FFFD)", function()
    local so, se, code = run({ "search", URL .. "/cells/dicom-web", "--access-token", TOKEN,
      "--include", "StudyDescription" })
    assert.are.equal(0, code, se)
    assert_printable(so, "the table")
    assert_printable(se, "stderr")
    assert.truthy(so:find(HOSTILE_SHOWN, 1, true), so)
    assert.truthy(so:find([[line one\nline two]], 1, true), so)
    assert_no_secret(so, "the table")
    local js = run({ "search", URL .. "/cells/dicom-web", "--access-token", TOKEN, "--json" })
    local doc = cjson.decode(js)
    assert.are.equal((HOSTILE:gsub("\255", "\239\191\189")), doc[1]["00100010"].Value[1].Alphabetic)
    assert.are.equal("line one\nline two", doc[1]["00081030"].Value[1])
    assert.are.equal("REDACTED", doc[1]["00100020"].Value[1])
  end)
end)

describe("file names with a newline and ESC", function()
  local dir = H.tmpdir() .. "/in"
  H.check_run("mkdir -p " .. H.q(dir))
  local dicom_name = dir .. "/scan\n\27[2Kstored 99\27]0;x\7.dcm"
  local text_name = dir .. "/notes\r\nskipped fake\27[31m.txt"
  local dicom_shown = dir .. [[/scan\n\x1b[2Kstored 99\x1b]0;x\x07.dcm]]
  local text_shown = dir .. [[/notes\r\nskipped fake\x1b[31m.txt]]
  H.check_run("cp " .. H.q(dicom_file) .. " " .. H.q(dicom_name))
  H.write_file(text_name, "not DICOM")

  it("stay one summary line per file", function()
    local _, se, code = run({ "store", URL .. "/esc/dicom-web", dir, "--no-progress" })
    assert.are.equal(1, code)
    assert_printable(se, "the summary")
    assert.truthy(se:find("\nfailed  " .. dicom_shown .. ": ", 1, true), se)
    assert.truthy(se:find("\nskipped " .. text_shown .. ": not a DICOM file", 1, true), se)
    local lines = {}
    for l in se:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.are.equal(4, #lines, se) -- the counts, one failed, one skipped, the reason tally
  end)

  it("are exact in --json, stored into Orthanc", function()
    local so, se, code = run({ "store", E.dicomweb, dir, "--json" })
    assert.are.equal(0, code, se)
    assert_printable(se, "stderr")
    local report = cjson.decode(so)
    assert.are.equal(dicom_name, report.stored[1].path)
    assert.are.equal(text_name, report.skipped[1].path)
  end)
end)

describe("secrets echoed by a server", function()
  local function check_clean(so, se, where)
    assert_no_secret(so, "stdout of " .. where)
    assert_no_secret(se, "stderr of " .. where)
    assert.truthy((so .. se):find("REDACTED", 1, true), where .. ": the echo is shown redacted:\n" .. se)
  end

  it("never reach stderr, --json or the journal (a bearer token)", function()
    local journal = H.tmpdir() .. "/journal.jsonl"
    local so, se, code = run({ "store", URL .. "/echo/dicom-web", dicom_file, "--access-token", TOKEN,
      "--journal", journal, "--json" })
    assert.are.equal(1, code)
    check_clean(so, se, "store --json")
    assert.truthy(so:find("REDACTED", 1, true), so)
    local jtext = H.file_bytes(journal)
    assert.truthy(jtext:find("REDACTED", 1, true), jtext)
    assert_no_secret(jtext, "the journal")
    for _, args in ipairs({
      { "search", URL .. "/echo/dicom-web", "--access-token", TOKEN },
      { "retrieve", URL .. "/echo/dicom-web", "1.2.3", "-o", H.tmpdir(), "--access-token", TOKEN, "--json" },
      { "delete", URL .. "/echo/dicom-web", "1.2.3", "--yes", "--access-token", TOKEN },
      { "search", URL .. "/echo/dicom-web", "--access-token", TOKEN, "--debug" },
    }) do
      so, se = run(args)
      check_clean(so, se, args[1])
    end
  end)

  it("never reach stderr (an API key and an access token as query parameters, seed form)", function()
    for _, p in ipairs({ "key=" .. API_KEY, "access-token=" .. TOKEN }) do
      local so, se = run({ "projects", STORE_METHOD, PARENT, "studies", "-r", ".",
        "content-type=application/dicom", "data=@" .. dicom_file, "--endpoint", URL .. "/echo/v1", "-p", p,
        "--debug" })
      check_clean(so, se, "seed " .. p)
    end
  end)

  it("never reach error values, report reasons or the journal of the Lua API", function()
    local client = assert(healthcare.new { endpoint = URL .. "/echo/v1", api_key = API_KEY })
    local store = assert(client:dicom_store(PARENT))
    local journal = H.tmpdir() .. "/j.jsonl"
    local report = assert(store:store({ dicom_file }, { journal = journal }))
    assert.are.equal(1, #report.failed)
    assert.truthy(report.failed[1].reason:find("REDACTED", 1, true))
    assert_no_secret(report.failed[1].reason, "the reason")
    assert_no_secret(H.file_bytes(journal), "the journal")
    local results, err = store:search_studies({})
    if results then err = select(2, results:all()) end
    assert.truthy(err.message:find("REDACTED", 1, true), err.message)
    assert_no_secret(err.message, "err.message")
    client:close()
  end)

  it("never reach stderr from a token endpoint (assertion, refresh token, client secret)", function()
    local dir = H.tmpdir()
    H.check_run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. H.q(dir .. "/k.pem")
      .. " 2>/dev/null")
    local sa = H.write_file(dir .. "/sa.json", cjson.encode {
      type = "service_account", client_email = "sa@p.iam.gserviceaccount.com", private_key_id = "k1",
      private_key = H.file_bytes(dir .. "/k.pem"), token_uri = URL .. "/echo/token" })
    local au = H.write_file(dir .. "/au.json", cjson.encode {
      type = "authorized_user", client_id = "client-1", client_secret = CLIENT_SECRET,
      refresh_token = REFRESH, token_uri = URL .. "/echo/token" })
    for _, key in ipairs({ sa, au }) do
      local so, se, code = run({ "search", PARENT, "--endpoint", URL .. "/ok/v1", "--credentials", key,
        "--no-token-cache", "--debug" })
      assert.are.equal(2, code, se)
      check_clean(so, se, "search --credentials " .. key)
      assert.truthy(se:find("invalid_grant", 1, true), se)
    end
  end)

  -- Secrets in headers: the Basic client authentication of a workforce refresh, and whatever
  -- credential_source.headers hold (the debug lines used to show X-Vault-Token's value).
  it("never reach stderr from the headers of a token or subject token request", function()
    local dir = H.tmpdir()
    local wf = H.write_file(dir .. "/wf.json", cjson.encode {
      type = "external_account_authorized_user", audience = "//iam.googleapis.com/locations/global/workforcePools/"
        .. "p/providers/x", refresh_token = REFRESH, token_url = URL .. "/echo/token", client_id = "client-1",
      client_secret = CLIENT_SECRET })
    local ext = H.write_file(dir .. "/ext.json", cjson.encode {
      type = "external_account", audience = "//iam.googleapis.com/projects/1/locations/global/"
        .. "workloadIdentityPools/p/providers/oidc", subject_token_type = "urn:ietf:params:oauth:token-type:jwt",
      token_url = URL .. "/echo/token", credential_source = { url = URL .. "/echo/idtoken",
        headers = { Authorization = "Bearer " .. SOURCE_BEARER, ["X-Vault-Token"] = VAULT_TOKEN,
          Accept = "text/plain" } } })
    for _, key in ipairs({ wf, ext }) do
      local so, se, code = run({ "search", PARENT, "--endpoint", URL .. "/ok/v1", "--credentials", key,
        "--no-token-cache", "--debug" })
      assert.are.equal(2, code, se)
      check_clean(so, se, "search --credentials " .. key)
    end
    local _, se = run({ "search", PARENT, "--endpoint", URL .. "/ok/v1", "--credentials", ext, "--no-token-cache",
      "--debug" })
    assert.truthy(se:find("> X-Vault-Token: REDACTED", 1, true), se)
    assert.truthy(se:find("> Accept: text/plain", 1, true), "a header known to carry no secret is shown: " .. se)
  end)
end)

-- ---- proxies ---------------------------------------------------------------------------------

describe("a proxy over plain http", function()
  local tinyproxy = require("support.proxy").start()
  teardown(function() tinyproxy:stop() end)
  local proxy = tinyproxy.url

  -- The requests the proxy forwarded so far.
  local function forwarded()
    return tinyproxy:count()
  end

  local ok_url = URL .. "/ok/dicom-web"

  it("refuses a bearer token before anything is sent, and exits 2", function()
    local before = forwarded()
    for _, args in ipairs({
      { "search", ok_url, "--access-token", TOKEN },
      { "store", ok_url, dicom_file, "--access-token", TOKEN, "--no-progress" },
      { "retrieve", ok_url, "1.2.3", "-o", H.tmpdir(), "--access-token", TOKEN },
      { "delete", ok_url, "1.2.3", "--yes", "--access-token", TOKEN },
      { "projects", SEARCH_METHOD, PARENT, "studies", "--endpoint", URL .. "/ok/v1", "-p", "key=" .. API_KEY },
      { "search", ok_url, "--access-token", TOKEN, env = { http_proxy = "", ALL_PROXY = proxy } },
    }) do
      local _, se, code = run(args, args.env or { http_proxy = proxy })
      assert.are.equal(2, code, args[1] .. ": " .. se)
      assert.truthy(se:find("refusing to send ", 1, true), se)
      assert.truthy(se:find("through the proxy " .. proxy .. " (from " .. (args.env and "ALL_PROXY" or "http_proxy")
        .. ") over plain http", 1, true), se)
      assert_no_secret(se, "stderr")
    end
    assert.are.equal(before, forwarded(), "the proxy saw a request")
  end)

  it("refuses a token request (a signed assertion) to a plain-http token endpoint", function()
    local dir2 = H.tmpdir()
    H.check_run("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. H.q(dir2 .. "/k.pem")
      .. " 2>/dev/null")
    local sa = H.write_file(dir2 .. "/sa.json", cjson.encode {
      type = "service_account", client_email = "sa@p.iam.gserviceaccount.com", private_key_id = "k1",
      private_key = H.file_bytes(dir2 .. "/k.pem"), token_uri = URL .. "/echo/token" })
    local before = forwarded()
    local _, se, code = run({ "search", PARENT, "--endpoint", "https://127.0.0.1:1/v1", "--credentials", sa,
      "--no-token-cache" }, { ALL_PROXY = proxy })
    assert.are.equal(2, code, se)
    assert.truthy(se:find("refusing to send a token request", 1, true), se)
    assert.truthy(se:find("(from ALL_PROXY)", 1, true), se)
    assert.are.equal(before, forwarded())
  end)

  it("sends through the proxy with --insecure", function()
    local before = forwarded()
    local _, se, code = run({ "search", ok_url, "--access-token", TOKEN, "--insecure" }, { http_proxy = proxy })
    assert.are.equal(0, code, se)
    assert.are.equal(before + 1, forwarded())
    assert.truthy(H.file_bytes(tinyproxy.log):find("GET " .. ok_url .. "/studies", 1, true))
  end)

  it("sends what carries no credential through the proxy", function()
    local before = forwarded()
    local _, se, code = run({ "search", ok_url }, { http_proxy = proxy })
    assert.are.equal(0, code, se)
    assert.are.equal(before + 1, forwarded())
  end)

  it("follows NO_PROXY and libcurl's rules (HTTP_PROXY is ignored)", function()
    local before = forwarded()
    for _, env in ipairs({
      { http_proxy = proxy, NO_PROXY = "127.0.0.1" },
      { http_proxy = proxy, no_proxy = "localhost, 127.0.0.0/8" },
      { http_proxy = proxy, no_proxy = "*" },
      { HTTP_PROXY = proxy },
      { https_proxy = proxy },
      { http_proxy = proxy, no_proxy = "", NO_PROXY = "127.0.0.1" },
    }) do
      local _, se, code = run({ "search", ok_url, "--access-token", TOKEN }, env)
      assert.are.equal(0, code, cjson.encode(env) .. ": " .. se)
    end
    assert.are.equal(before, forwarded(), "no request went through the proxy")
  end)
end)
