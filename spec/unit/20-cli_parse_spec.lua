-- SPDX-License-Identifier: MIT
-- The seed's command form: healthcare.params, healthcare.cli.seed and
-- healthcare.cli.help. Pure Lua, no network, no files.

local params = require("healthcare.params")
local seed = require("healthcare.cli.seed")
local help = require("healthcare.cli.help")

local STUDIES = "locations-datasets-dicom-stores-studies-store-instances"
local STORE = "locations-datasets-dicom-stores-store-instances"
local PARENT = "projects/p/locations/l/datasets/d/dicomStores/s"
local HEALTHCARE = "https://www.googleapis.com/auth/cloud-healthcare"
local PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local FIELDS = "valid fields: content-type, data"
local unpack = table.unpack or unpack  -- luacheck: ignore 113 (LuaJIT has no table.unpack)

-- argv for the seed's form, with `...` appended after <dicom-web-path>.
local function call(...)
  local argv = { "projects", STUDIES, PARENT, "studies" }
  for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  return argv
end

-- Like call(...), with a complete request value first.
local function full(...)
  local argv = call("-r", ".", "content-type=application/dicom", "data=x")
  for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
  return argv
end

local function describe_argv(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = string.format("%q", a) end
  return "{" .. table.concat(parts, " ") .. "}"
end

local function normalize_ws(s) return (s:gsub("%s+", " ")) end

describe("healthcare.params", function()
  local EXPECTED = {
    { "$-xgafv", "$.xgafv", "string" }, { "access-token", "access_token", "string" },
    { "alt", "alt", "string" }, { "callback", "callback", "string" },
    { "fields", "fields", "string" }, { "key", "key", "string" },
    { "oauth-token", "oauth_token", "string" }, { "pretty-print", "prettyPrint", "boolean" },
    { "quota-user", "quotaUser", "string" }, { "upload-type", "uploadType", "string" },
    { "upload-protocol", "upload_protocol", "string" },
  }

  describe("list", function()
    it("holds the eleven standard parameters in the seed's order", function()
      local list = params.list()
      assert.are.equal(#EXPECTED, #list)
      for i, e in ipairs(EXPECTED) do
        assert.are.same({ e[1], e[2], e[3] }, { list[i].cli, list[i].wire, list[i].type })
        assert.is_string(list[i].help)
      end
      assert.are.equal("V1 error format.", list[1].help)
      assert.are.equal("JSONP", list[4].help)
    end)

    it("returns copies that callers cannot use to change the original", function()
      params.list()[1].wire = "changed"
      assert.are.equal("$.xgafv", params.list()[1].wire)
      assert.are.equal("$.xgafv", params.to_wire("$-xgafv"))
    end)
  end)

  describe("to_wire and to_cli", function()
    for _, e in ipairs(EXPECTED) do
      it("maps " .. e[1] .. " and " .. e[2], function()
        assert.are.equal(e[2], params.to_wire(e[1]))
        assert.are.equal(e[2], params.to_wire(e[2]))
        assert.are.equal(e[1], params.to_cli(e[2]))
        assert.are.equal(e[1], params.find(e[2]).cli)
      end)
    end

    it("returns nil for unknown names", function()
      assert.is_nil(params.to_wire("pretty_print"))
      assert.is_nil(params.to_cli("nope"))
      assert.is_nil(params.find("nope"))
    end)
  end)

  describe("check", function()
    it("accepts true/false for booleans, as strings or Lua booleans", function()
      assert.are.equal("false", params.check("prettyPrint", false))
      assert.are.equal("true", params.check("pretty-print", "true"))
      assert.are.same({ nil, "parameter pretty-print must be true or false, got 'yes'" },
        { params.check("pretty-print", "yes") })
    end)

    it("turns numbers into strings and refuses tables", function()
      assert.are.equal("2", params.check("$.xgafv", 2))
      assert.are.same({ nil, "parameter fields must be a string, got table" },
        { params.check("fields", {}) })
    end)
  end)

  describe("normalize", function()
    it("keys a table by wire names", function()
      assert.are.same({ prettyPrint = "false", quotaUser = "u", key = "k" },
        params.normalize({ ["pretty-print"] = false, quotaUser = "u", key = "k" }))
      assert.are.same({}, params.normalize(nil))
    end)

    it("refuses unknown names, listing the valid ones", function()
      assert.are.same({ nil, "unknown parameter 'pretty_print'; valid parameters: $-xgafv, "
        .. "access-token, alt, callback, fields, key, oauth-token, pretty-print, quota-user, "
        .. "upload-type, upload-protocol" }, { params.normalize({ pretty_print = true }) })
    end)

    it("refuses one parameter under two names", function()
      assert.are.same({ nil, "parameter quota-user given twice (as 'quota-user' and 'quotaUser')" },
        { params.normalize({ quotaUser = "a", ["quota-user"] = "b" }) })
    end)
  end)

  it("names the scopes, cloud-healthcare being the default", function()
    assert.are.equal(HEALTHCARE, params.DEFAULT_SCOPE)
    assert.are.same({ HEALTHCARE, PLATFORM }, params.SCOPES)
  end)
end)

describe("healthcare.cli.seed request_value", function()
  -- A nested schema, so that the cursor rules are exercised beyond HttpBody.
  local Inner = { name = "Inner", fields = {
    { name = "o", key = "o", type = "string" }, { name = "p", key = "p", type = "string" } } }
  local Mid = { name = "Mid", fields = {
    { name = "s", key = "s", type = Inner }, { name = "v", key = "v", type = "string" } } }
  local Top = { name = "Top", fields = {
    { name = "f", key = "f", type = Mid }, { name = "g", key = "g", type = Mid },
    { name = "x", key = "x", type = "string" } } }

  local function cursor_of(rv)
    local names = {}
    for i, f in ipairs(rv.cursor) do names[i] = f.name end
    return table.concat(names, ".")
  end

  -- { items applied in order, cursor after them, value after them }
  local OK = {
    { { "f" }, "f", {} },
    { { "f.s" }, "f.s", {} },
    { { "f", "s" }, "f.s", {} },
    { { "f.s", "." }, "", {} },
    { { "f.s", ".." }, "f", {} },
    { { "f.s", "..." }, "", {} },
    { { "f", ".." }, "", {} },
    { { "f.s", ".g" }, "g", {} },
    { { "f.s", ".g.s" }, "g.s", {} },
    { { "f", "..g" }, "g", {} },
    { { "f.s..s" }, "f.s", {} },
    { { "f.." }, "", {} },
    { { "f.s...g" }, "g", {} },
    { { "f.s", "o=1" }, "f.s", { f = { s = { o = "1" } } } },
    { { "f.s.o=1" }, "", { f = { s = { o = "1" } } } },
    { { "f", "s.o=1", "s.p=2" }, "f", { f = { s = { o = "1", p = "2" } } } },
    { { "f.s", "..v=1" }, "f.s", { f = { v = "1" } } },
    { { "f.s", "...x=3" }, "f.s", { x = "3" } },
    { { "f", ".x=3" }, "f", { x = "3" } },
    { { "f.s", ".g.s.o=4" }, "f.s", { g = { s = { o = "4" } } } },
    { { "x=1", "x=2" }, "", { x = "2" } },
    { { "x=a=b" }, "", { x = "a=b" } },
    { { "x=" }, "", { x = "" } },
  }
  for _, case in ipairs(OK) do
    it("moves to '" .. case[2] .. "' after " .. describe_argv(case[1]), function()
      local rv = seed.request_value(Top)
      for _, item in ipairs(case[1]) do assert.is_true(rv:apply(item)) end
      assert.are.equal(case[2], cursor_of(rv))
      assert.are.same(case[3], rv.value)
    end)
  end

  -- { items, where the last one fails with the message }
  local BAD = {
    { { ".." }, "'..' moves the cursor above the top-level structure Top; valid fields: f, g, x" },
    { { "f.s", "...." },
      "'....' moves the cursor above the top-level structure Top; valid fields: f, g, x" },
    { { "f", "...=1" },
      "'...' moves the cursor above the top-level structure Top; valid fields: f, g, x" },
    { { "y" }, "unknown field 'y' in Top; valid fields: f, g, x" },
    { { "f", "x=3" }, "unknown field 'x' in Mid; valid fields: s, v" },
    { { "f.q.o" }, "unknown field 'q' in Mid; valid fields: s, v" },
    { { "x" }, "cannot move the cursor into 'x': it is a string field of Top, not a "
      .. "structure; valid fields: f, g, x" },
    { { "f.s.o.p" }, "cannot move the cursor into 'o': it is a string field of Inner, not a "
      .. "structure; valid fields: o, p" },
    { { "f.s.o.p=1" }, "cannot move the cursor into 'o': it is a string field of Inner, not a "
      .. "structure; valid fields: o, p" },
    { { "f." }, "field name 'f.' ends with a single '.'; valid fields: f, g, x" },
    { { "f", "s.=1" }, "field name 's.' ends with a single '.'; valid fields: s, v" },
    { { "f=1" }, "field 'f' is a structure (Mid), not a value; set one of its fields: s, v" },
    { { ".=1" }, "'.' names no field; valid fields: f, g, x" },
    { { "f", "..=1" }, "'..' names no field; valid fields: f, g, x" },
    { { "f.s", "" }, "missing field name; valid fields: o, p" },
    { { "=1" }, "missing field name before '=' in '=1'; valid fields: f, g, x" },
  }
  for _, case in ipairs(BAD) do
    it("refuses " .. describe_argv(case[1]), function()
      local rv = seed.request_value(Top)
      local n = #case[1]
      for i = 1, n - 1 do assert.is_true(rv:apply(case[1][i])) end
      local before = cursor_of(rv)
      assert.are.same({ nil, case[2] }, { rv:apply(case[1][n]) })
      assert.are.equal(before, cursor_of(rv))
    end)
  end
end)

describe("healthcare.cli.seed.parse", function()
  local BODY = { content_type = "application/dicom", data = "x" }

  describe("request value spellings", function()
    local SPELLINGS = {
      { "-r", ".", "content-type=application/dicom", "data=x" },
      { "-r", ".content-type=application/dicom", "-r", "data=x" },
      { "-r", ".content-type=application/dicom", "-r", ".data=x" },
      { "-r", "content-type=application/dicom", "data=x" },
      { "-r", "content-type=application/dicom", "-r", "data=x" },
      { "-r", ".", "data=x", "content-type=application/dicom" },
      { "-r", ".", "-r", "content-type=application/dicom", "data=x" },
      { "-r.content-type=application/dicom", "-rdata=x" },
      { "-r", "content-type=text/plain", "-r", "content-type=application/dicom", "data=x" },
    }
    for _, extra in ipairs(SPELLINGS) do
      it("sets the HttpBody from " .. describe_argv(extra), function()
        local cmd = assert(seed.parse(call(unpack(extra))))
        assert.are.same(BODY, cmd.body)
      end)
    end

    it("accepts the request value before the positional arguments", function()
      local cmd = assert(seed.parse({ "projects", STUDIES, "-r", ".",
        "content-type=application/dicom", "data=x", PARENT, "studies/1.2.3" }))
      assert.are.same(BODY, cmd.body)
      assert.are.equal(PARENT, cmd.parent)
      assert.are.equal("studies/1.2.3", cmd.dicom_web_path)
    end)

    local VALUES = {
      { "content-type=multipart/related; type=\"application/dicom\"; boundary=abc",
        "content_type", "multipart/related; type=\"application/dicom\"; boundary=abc" },
      { "data=a=b=c", "data", "a=b=c" },
      { "data=", "data", "" },
      { "data=-", "data", "-" },
      { "data=@/tmp/x.dcm", "data", { file = "/tmp/x.dcm" } },
      { "data=@-", "data", { stdin = true } },
      { "data=@@x", "data", "@x" },
      { "content-type=a\r\nX-Injected: 1", "content_type", "a\r\nX-Injected: 1" },
      { "data=line1\nline2", "data", "line1\nline2" },
    }
    for _, v in ipairs(VALUES) do
      it("carries " .. string.format("%q", v[1]), function()
        local cmd = assert(seed.parse(full("-r", v[1])))
        assert.are.same(v[3], cmd.body[v[2]])
      end)
    end
  end)

  describe("-p", function()
    for _, p in ipairs(params.list()) do
      local value = p.type == "boolean" and "false" or "v=1"
      it("maps " .. p.cli .. " and " .. p.wire .. " to " .. p.wire, function()
        assert.are.same({ [p.wire] = value }, assert(seed.parse(full("-p", p.cli .. "=" .. value))).params)
        assert.are.same({ [p.wire] = value }, assert(seed.parse(full("-p", p.wire .. "=" .. value))).params)
      end)
    end

    it("collects several, a later one winning", function()
      local cmd = assert(seed.parse(full("-p", "alt=json", "-p", "quota-user=a",
        "-pquotaUser=b", "-p", "alt=media")))
      assert.are.same({ alt = "media", quotaUser = "b" }, cmd.params)
    end)
  end)

  describe("options", function()
    it("defaults everything but the request", function()
      local cmd = assert(seed.parse(full()))
      assert.are.same({
        action = "call", method = "studies-store-instances", parent = PARENT,
        dicom_web_path = "studies", body = BODY, params = {}, scopes = { HEALTHCARE },
        debug = false, token_cache = true,
      }, cmd)
    end)

    it("picks the sibling method", function()
      local cmd = assert(seed.parse({ "projects", STORE, PARENT, "studies", "-r", ".",
        "content-type=application/dicom", "data=x" }))
      assert.are.equal("store-instances", cmd.method)
    end)

    local GLOBALS = { "--scope", PLATFORM, "--endpoint", "http://127.0.0.1:9/v1", "--debug",
      "--credentials", "key.json", "--no-token-cache", "--scope", HEALTHCARE }
    local function check_globals(cmd)
      assert.are.same({ PLATFORM, HEALTHCARE }, cmd.scopes)
      assert.are.equal("http://127.0.0.1:9/v1", cmd.endpoint)
      assert.are.equal("key.json", cmd.credentials)
      assert.is_true(cmd.debug)
      assert.is_false(cmd.token_cache)
      assert.are.same(BODY, cmd.body)
    end

    it("takes global options before projects", function()
      local argv = {}
      for _, a in ipairs(GLOBALS) do argv[#argv + 1] = a end
      for _, a in ipairs(full()) do argv[#argv + 1] = a end
      check_globals(assert(seed.parse(argv)))
    end)

    it("takes global options after the method's arguments", function()
      check_globals(assert(seed.parse(full(unpack(GLOBALS)))))
    end)

    it("takes global options between the arguments and as --name=value", function()
      check_globals(assert(seed.parse({ "--debug", "projects", STUDIES, "--scope=" .. PLATFORM,
        PARENT, "--endpoint=http://127.0.0.1:9/v1", "studies", "-r", ".",
        "content-type=application/dicom", "--credentials=key.json", "data=x",
        "--no-token-cache", "--scope", HEALTHCARE })))
    end)

    it("keeps the first of repeated scopes once", function()
      local cmd = assert(seed.parse(full("--scope", "a", "--scope", "b", "--scope", "a")))
      assert.are.same({ "a", "b" }, cmd.scopes)
    end)

    local OUTPUTS = { { { "-o", "-" }, "-" }, { { "-o", "out.json" }, "out.json" },
      { { "-oout.json" }, "out.json" }, { { "-o", "a", "-o", "b" }, "b" } }
    for _, o in ipairs(OUTPUTS) do
      it("sets the output from " .. describe_argv(o[1]), function()
        assert.are.equal(o[2], assert(seed.parse(full(unpack(o[1])))).output)
      end)
    end

    it("treats every word after -- as an argument", function()
      local cmd = assert(seed.parse({ "projects", STUDIES, "-r", ".", "content-type=t",
        "data=x", "--", "-p", "--help" }))
      assert.are.equal("-p", cmd.parent)
      assert.are.equal("--help", cmd.dicom_web_path)
    end)
  end)

  describe("usage errors", function()
    local MISSING_VALUE = " (e.g. -r . content-type=application/dicom data=@file.dcm)"
    local OPTIONS = "valid options: --scope, --endpoint, --credentials, --impersonate-service-account, --proxy, --ca-file, --insecure, --no-token-cache, "
      .. "--timeout, --debug, -h, --help, -r, -p, -o, --wait, --all, --limit"
    local names = {}
    for i, m in ipairs(seed.methods) do names[i] = m.name end
    assert.are.same({ STORE, STUDIES }, { names[1], names[2] })
    -- every method of the table (152), so a mistyped one gets its closest five
    local ALL = " (healthcare projects --help lists all 152)"
    local ERRORS = {
      { {}, "missing command; usage: healthcare [global options] projects <method> <parent> "
        .. "<dicom-web-path> -r . content-type=<type> data=<value>; see healthcare --help" },
      { { "--debug" }, "missing command; usage: healthcare [global options] projects <method> "
        .. "<parent> <dicom-web-path> -r . content-type=<type> data=<value>; see healthcare --help" },
      { { "project" }, "unknown command 'project'; valid commands: projects" },
      { { "projects" }, "missing method after 'projects'; healthcare projects --help lists all 152, e.g. "
        .. "locations-datasets-create, locations-datasets-dicom-stores-create, " .. STUDIES },
      { { "projects", "store" }, "unknown method 'store'; closest: locations-datasets-fhir-stores-get, "
        .. "locations-datasets-dicom-stores-get, locations-datasets-fhir-stores-list, "
        .. "locations-datasets-dicom-stores-list, locations-datasets-fhir-stores-patch" .. ALL },
      { { "projects", "store-instances" }, "unknown method 'store-instances'; closest: " .. STORE .. ", "
        .. STUDIES .. ", locations-get, locations-list, locations-datasets-get" .. ALL },
      { { "projects", STUDIES }, "missing arguments <parent> <dicom-web-path>" },
      { { "projects", STUDIES, PARENT, "-r", ".", "content-type=t", "data=x" },
        "missing argument <dicom-web-path>" },
      { full("extra"), "unexpected argument 'extra'" },
      { call("content-type=t", "data=x"), "unexpected argument 'content-type=t'; request "
        .. "value fields go after -r, e.g. -r . content-type=<type> data=<value>" },
      { call(), "missing request value: content-type, data" .. MISSING_VALUE },
      { call("-r", "data=x"), "missing request value: content-type" .. MISSING_VALUE },
      { call("-r", ".", "content-type=t"), "missing request value: data" .. MISSING_VALUE },
      { call("-r", "content-type=", "data=x"), "content-type must not be empty" },
      { call("-r", "content-type=t", "data=@"),
        "data=@ needs a file name: data=@<file>, or data=@- for standard input" },
      { call("-r", "contnt-type=t", "data=x"), "unknown field 'contnt-type' in HttpBody; " .. FIELDS },
      { call("-r", "content-type=t", "dat=x"), "unknown field 'dat' in HttpBody; " .. FIELDS },
      { call("-r", "data", "content-type=t"), "cannot move the cursor into 'data': it is a "
        .. "string field of HttpBody, not a structure; " .. FIELDS },
      { call("-r", "content-type.x=t"), "cannot move the cursor into 'content-type': it is a "
        .. "string field of HttpBody, not a structure; " .. FIELDS },
      { call("-r", ".."), "'..' moves the cursor above the top-level structure HttpBody; " .. FIELDS },
      { call("-r", "..."), "'...' moves the cursor above the top-level structure HttpBody; "
        .. FIELDS },
      { call("-r", "..data=x"), "'..data' moves the cursor above the top-level structure "
        .. "HttpBody; " .. FIELDS },
      { call("-r", "data."), "field name 'data.' ends with a single '.'; " .. FIELDS },
      { call("-r", ".=t"), "'.' names no field; " .. FIELDS },
      { call("-r", "=t"), "missing field name before '=' in '=t'; " .. FIELDS },
      { call("-r"), "option -r needs a value <kv>" },
      { call("-r", ""), "option -r needs a non-empty value <kv>" },
      { full("-p", "foo=1"), "unknown parameter 'foo'; valid parameters: $-xgafv, access-token, "
        .. "alt, callback, fields, key, oauth-token, pretty-print, quota-user, upload-type, "
        .. "upload-protocol" },
      { full("-p", "alt"), "-p needs <key>=<value>, got 'alt'" },
      { full("-p", "=ya29.secret"), "missing parameter name before '=' in -p =<value> (the value not shown: it may "
        .. "be a secret)" },
      { full("-p", "pretty-print=yes"), "parameter pretty-print must be true or false, got 'yes'" },
      { full("-p"), "option -p needs a value <key>=<value>" },
      { full("-o"), "option -o needs a value <out>" },
      { full("-o", ""), "option -o needs a non-empty value <out>" },
      { full("--scope"), "option --scope needs a value <url>" },
      { full("--endpoint="), "option --endpoint needs a non-empty value <url>" },
      { full("--debug=1"), "option --debug takes no value" },
      { full("--bogus"), "unknown option '--bogus'; " .. OPTIONS },
      { full("-x"), "unknown option '-x'; " .. OPTIONS },
      { full("-hx"), "unknown option '-hx' (did you mean '-h'?); " .. OPTIONS },
      { full("-scope", "a"), "unknown option '-scope' (did you mean '--scope'?); " .. OPTIONS },
      { full("--endpont", "a"), "unknown option '--endpont' (did you mean '--endpoint'?); " .. OPTIONS },
    }
    for _, e in ipairs(ERRORS) do
      it("says \"" .. e[2] .. "\" for " .. describe_argv(e[1]), function()
        assert.are.same({ nil, e[2] }, { seed.parse(e[1]) })
      end)
    end
  end)

  describe("--help", function()
    local HELPS = {
      { { "--help" }, { action = "help", help_topic = "top" } },
      { { "-h" }, { action = "help", help_topic = "top" } },
      { { "--debug", "--scope", "a", "-h" }, { action = "help", help_topic = "top" } },
      { { "projects", "--help" }, { action = "help", help_topic = "projects" } },
      { { "projects", "-h" }, { action = "help", help_topic = "projects" } },
      { { "--help", "projects" }, { action = "help", help_topic = "projects" } },
      { { "projects", STUDIES, "--help" },
        { action = "help", help_topic = "studies-store-instances", method = "studies-store-instances" } },
      { { "projects", STORE, "-h" },
        { action = "help", help_topic = "store-instances", method = "store-instances" } },
      { call("-r", "bogus", "--bogus", "--help"),
        { action = "help", help_topic = "studies-store-instances", method = "studies-store-instances" } },
      { full("-h"),
        { action = "help", help_topic = "studies-store-instances", method = "studies-store-instances" } },
    }
    for _, h in ipairs(HELPS) do
      it("shows " .. h[2].help_topic .. " for " .. describe_argv(h[1]), function()
        assert.are.same(h[2], assert(seed.parse(h[1])))
      end)
    end

    it("still refuses an unknown method", function()
      assert.are.same({ nil, "unknown method 'x'; closest: locations-datasets-fhir-stores-export, "
        .. "locations-datasets-dicom-stores-export, locations-datasets-hl7-v2-stores-export, "
        .. "locations-datasets-fhir-stores-fhir-bulk-export, locations-datasets-fhir-stores-bulk-export-group "
        .. "(healthcare projects --help lists all 152)" },
        { seed.parse({ "projects", "x", "--help" }) })
    end)
  end)
end)

describe("healthcare.cli.seed.parse of the read and delete methods", function()
  local P = "locations-datasets-dicom-stores-"
  local S, R, I = "1.2.3", "1.2.3.4", "1.2.3.4.5"
  local function parse(method, path, ...)
    local argv = { "projects", P .. method, PARENT, path }
    for _, a in ipairs({ ... }) do argv[#argv + 1] = a end
    return seed.parse(argv)
  end

  -- { method id, a path it takes }
  local GOOD = {
    { "search-for-studies", "studies" },
    { "search-for-series", "series" },
    { "search-for-series", "studies/" .. S .. "/series" },
    { "search-for-instances", "instances" },
    { "search-for-instances", "studies/" .. S .. "/instances" },
    { "search-for-instances", "studies/" .. S .. "/series/" .. R .. "/instances" },
    { "studies-search-for-series", "studies/" .. S .. "/series" },
    { "studies-search-for-instances", "studies/" .. S .. "/instances" },
    { "studies-retrieve-study", "studies/" .. S },
    { "studies-retrieve-metadata", "studies/" .. S .. "/metadata" },
    { "studies-delete", "studies/" .. S },
    { "studies-series-retrieve-series", "studies/" .. S .. "/series/" .. R },
    { "studies-series-retrieve-metadata", "studies/" .. S .. "/series/" .. R .. "/metadata" },
    { "studies-series-search-for-instances", "studies/" .. S .. "/series/" .. R .. "/instances" },
    { "studies-series-delete", "studies/" .. S .. "/series/" .. R },
    { "studies-series-instances-retrieve-instance", "studies/" .. S .. "/series/" .. R .. "/instances/" .. I },
    { "studies-series-instances-retrieve-metadata",
      "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/metadata" },
    { "studies-series-instances-retrieve-rendered",
      "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/rendered" },
    { "studies-series-instances-delete", "studies/" .. S .. "/series/" .. R .. "/instances/" .. I },
    { "studies-series-instances-frames-retrieve-frames",
      "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/frames/1,2,10" },
    { "studies-series-instances-frames-retrieve-rendered",
      "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/frames/3/rendered" },
  }
  for _, g in ipairs(GOOD) do
    it("takes " .. g[2] .. " for " .. g[1], function()
      assert.are.same({ action = "call", method = g[1], parent = PARENT, dicom_web_path = g[2], params = {},
        scopes = { HEALTHCARE }, debug = false, token_cache = true, output = "o" },
        assert(parse(g[1], g[2], "-o", "o")))
    end)
  end

  it("has a method of each name in the brief, in pairs of GOOD", function()
    local seen = {}
    for _, g in ipairs(GOOD) do seen[g[1]] = true end
    for _, m in ipairs(seed.methods) do
      if not m.request then assert.is_true(seen[m.id], m.id) end
    end
  end)

  -- Each method with a path of another shape: the shapes of all the others, plus broken UIDs.
  local BAD_PATHS = { "", "studies/", "studies/1.2/", "/studies", "studies/abc", "studies/1..2",
    "studies/" .. S .. "/series/../../x", "studies/" .. string.rep("1", 65), "studies/" .. S .. "/frames/0",
    "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/frames/0",
    "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/frames/1,,2",
    "studies/" .. S .. "/series/" .. R .. "/instances/" .. I .. "/frames/a" }
  for _, g in ipairs(GOOD) do BAD_PATHS[#BAD_PATHS + 1] = g[2] end
  for _, m in ipairs(seed.methods) do
    if not m.request then
      it("refuses every other shape for " .. m.id, function()
        local n = 0
        for _, path in ipairs(BAD_PATHS) do
          local fits = false
          for _, g in ipairs(GOOD) do
            if g[1] == m.id and g[2] == path then fits = true end
          end
          if not fits then
            n = n + 1
            local cmd, err = parse(m.id, path)
            assert.is_nil(cmd, path)
            assert.are.equal("invalid DICOMweb path '" .. path .. "' for " .. m.what .. ": expected",
              err:sub(1, #("invalid DICOMweb path '" .. path .. "' for " .. m.what .. ": expected")), err)
          end
        end
        assert.is_true(n > 10)
      end)
    end
  end

  describe("a ?query on a search path", function()
    local QUERIES = { "PatientID=P-1&limit=10", "StudyDate=20200101-20201231",
      "PatientName=Doe%5EJohn&00080060=CT", "PatientName=Doe^John", "includefield=a&includefield=b",
      "x=", "a=b=c", "&a=1&", "ModalitiesInStudy=CT,MR&fuzzymatching=true" }
    for _, q in ipairs(QUERIES) do
      it("keeps studies?" .. q .. " as typed", function()
        local cmd = assert(parse("search-for-studies", "studies?" .. q))
        assert.are.equal("studies", cmd.dicom_web_path)
        assert.are.equal(q, cmd.query)
      end)
    end

    it("drops an empty query", function()
      local cmd = assert(parse("search-for-studies", "studies?"))
      assert.are.equal("studies", cmd.dicom_web_path)
      assert.is_nil(cmd.query)
    end)

    local BAD = {
      { "studies?PatientID", "invalid query 'PatientID' in 'studies?PatientID': expected name=value pairs "
        .. "separated by '&'" },
      { "studies?=x", "invalid query '=x' in 'studies?=x': expected name=value pairs separated by '&'" },
      { "studies?a=%zz", "invalid percent-escape in 'a=%zz' in 'studies?a=%zz'" },
      { "studies?a=%4", "invalid percent-escape in 'a=%4' in 'studies?a=%4'" },
      { "studies?a=%0A", "the query of 'studies?a=%0A' has a control character after decoding" },
      { "studies?%00=1", "the query of 'studies?%00=1' has a control character after decoding" },
      { "studies?a=\195\169", "the query of 'studies?a=\195\169' has a non-ASCII character; percent-encode it" },
      -- quoted as given: the command prints parse errors through common.printable (spec 87)
      { "studies?a=x\r\nHost: evil", "invalid DICOMweb path 'studies?a=x\r\nHost: evil' for SearchForStudies: it "
        .. "has a space, a control character or '#'" },
      { "studies?a=1#frag", "invalid DICOMweb path 'studies?a=1#frag' for SearchForStudies: it has a space, "
        .. "a control character or '#'" },
      { "series?a=1", "invalid DICOMweb path 'series?a=1' for SearchForStudies: expected 'studies'" },
    }
    for _, b in ipairs(BAD) do
      it("refuses " .. string.format("%q", b[1]), function()
        local cmd, err = parse("search-for-studies", b[1])
        assert.is_nil(cmd)
        assert.are.equal(b[2], err:sub(1, #b[2]))
      end)
    end

    it("is refused on a path that is not a search", function()
      local cmd, err = parse("studies-retrieve-study", "studies/1.2?a=1")
      assert.is_nil(cmd)
      assert.truthy(err:find("only search methods take a ?query", 1, true), err)
    end)
  end)

  it("takes -p, global options and --help", function()
    local cmd = assert(parse("studies-delete", "studies/1.2", "-p", "quota-user=q", "--debug",
      "--endpoint", "http://127.0.0.1:9/v1"))
    assert.are.same({ quotaUser = "q" }, cmd.params)
    assert.is_true(cmd.debug)
    assert.are.equal("http://127.0.0.1:9/v1", cmd.endpoint)
    assert.are.same({ action = "help", help_topic = "studies-delete", method = "studies-delete" },
      assert(parse("studies-delete", "bad path", "--help")))
  end)

  it("refuses a request value and a missing path", function()
    assert.are.same({ nil, P .. "studies-delete takes no request value (-r); it is a DELETE of "
      .. "<dicom-web-path>" }, { parse("studies-delete", "studies/1.2", "-r", ".", "data=x") })
    assert.are.same({ nil, "missing argument <dicom-web-path>" },
      { seed.parse({ "projects", P .. "search-for-studies", PARENT }) })
    assert.are.same({ nil, "unexpected argument 'PatientID=x'" },
      { parse("search-for-studies", "studies", "PatientID=x") })
  end)
end)

describe("healthcare.cli.help", function()
  describe("text", function()
    it("lists the command, the usage and every global option at the top", function()
      local text = help.text("top")
      assert.truthy(text:find("healthcare [global options] projects <method> <parent> "
        .. "<dicom-web-path> -r . content-type=<type> data=<value>", 1, true))
      for _, o in ipairs(seed.global_options) do
        assert.truthy(text:find(o.long, 1, true), o.long)
        assert.truthy(normalize_ws(text):find(normalize_ws(o.help), 1, true), o.help)
      end
      assert.truthy(text:find("-h, --help", 1, true))
    end)

    it("lists every method for projects", function()
      local text = help.text("projects")
      assert.truthy(text:find("\n  " .. STORE .. "\n", 1, true))
      assert.truthy(text:find("\n  " .. STUDIES .. "\n", 1, true))
      for _, m in ipairs(seed.methods) do
        assert.truthy(text:find("\n  " .. m.name .. "\n", 1, true), m.name)
      end
    end)

    it("lists every command at the top, one line each, and the friendly commands' usage", function()
      local text = help.text("top")
      for _, c in ipairs({ "projects", "store", "search", "retrieve", "delete" }) do
        assert.truthy(text:find("\n  " .. c .. " +[a-z][^\n]+\n"), c)
      end
      for _, c in ipairs({ "store", "search", "retrieve", "delete" }) do
        assert.truthy(text:find("\n  healthcare " .. c .. " <store> ", 1, true), c)
      end
      assert.truthy(text:find("healthcare --version", 1, true))
    end)

    for _, m in ipairs(seed.methods) do
      if m.request then it("adapts the seed page for " .. m.name, function()
        assert.are.equal(help.text(m.id), help.text(m.name))
        local text = help.text(m.id)
        local flat = normalize_ws(text)
        local function has(s) assert.truthy(flat:find(normalize_ws(s), 1, true), s) end
        has("healthcare projects " .. m.name)
        has("healthcare [global options] projects " .. m.name .. " <parent> <dicom-web-path> "
          .. "-r . content-type=<type> data=<value> [-o <out>] [-p <key>=<value>]... "
          .. "[--scope <url>]...")
        has("StoreInstances stores DICOM instances associated with study instance unique "
          .. "identifiers (SUID).")
        has("\n    " .. HEALTHCARE .. "\n    " .. PLATFORM .. "\n")
        has("If unset, the scope for this method defaults to " .. HEALTHCARE)
        has("healthcare --scope <scope> projects " .. m.name .. " ...")
        has("<parent> (string)")
        has("<dicom-web-path> (string)")
        for _, a in ipairs(m.args) do has(a.help) end
        has("HttpBody: content-type: string data: string")
        has("-r . content-type=<type> The HTTP Content-Type header value specifying the "
          .. "content type of the body.")
        has("data=<value> The HTTP request/response body as raw binary.")
        has("data=@<file>")
        has("data=@-")
        has("About cursors")
        has("'...' goes two levels up")
        has("-r f.s.o")
        has("-r .s.s")
        has("-r struct.sub_struct=bar")
        has("-o <out>")
        for _, p in ipairs(params.list()) do
          has("-p " .. p.cli .. "=" .. p.type .. " " .. p.help)
        end
        for _, o in ipairs(seed.global_options) do has(o.help) end
      end) end
    end

    for _, m in ipairs(seed.methods) do
      if not m.request then it("describes " .. m.name .. " without a request value", function()
        assert.are.equal(help.text(m.id), help.text(m.name))
        local text = help.text(m.id)
        local flat = normalize_ws(text)
        local function has(s) assert.truthy(flat:find(normalize_ws(s), 1, true), s) end
        has("healthcare projects " .. m.name)
        has("healthcare [global options] projects " .. m.name .. " <parent> <dicom-web-path>"
          .. (m.kind == "search" and "[?<query>]" or "") .. " [-o <out>] [-p <key>=<value>]..."
          .. (seed.table_entry(m).response == "Operation" and " [--wait]" or "") .. " [--scope <url>]...")
        has(m.what .. ": ")
        has("If unset, the scope for this method defaults to " .. HEALTHCARE)
        for _, a in ipairs(m.args) do has(a.help) end
        for _, shape in ipairs(m.paths) do has(shape) end
        has("-o <out>")
        for _, p in ipairs(params.list()) do has("-p " .. p.cli .. "=" .. p.type .. " " .. p.help) end
        assert.is_nil(text:find("About cursors", 1, true))
        assert.is_nil(text:find("content-type=", 1, true))
      end) end
    end

    it("raises for an unknown topic", function()
      assert.has_error(function() help.text("bogus") end,
        "bad argument #1 to 'text' (unknown help topic 'bogus')")
    end)

    it("wraps prose at 79 columns", function()
      for _, topic in ipairs({ "top", "projects", "studies-store-instances", "search-for-instances",
        "studies-series-instances-frames-retrieve-rendered" }) do
        for line in help.text(topic):gmatch("[^\n]+") do
          -- Only usage lines and unbreakable words (URLs, resource names) may be longer.
          -- (and a method's title, "healthcare projects <method>")
          if #line > 79 and not line:find("^  healthcare ") and not line:find("^healthcare projects %S+$") then
            assert.is_nil(line:match("^%s*%S+%s"), line)
          end
        end
      end
    end)
  end)

  it("gives a one-line usage", function()
    assert.are.equal("usage: healthcare [global options] projects " .. STORE .. " <parent> "
      .. "<dicom-web-path> -r . content-type=<type> data=<value> [-o <out>] "
      .. "[-p <key>=<value>]... [--scope <url>]...", help.usage("store-instances"))
  end)

  it("renders each help topic seed.parse returns", function()
    for _, argv in ipairs({ { "-h" }, { "projects", "-h" }, { "projects", STUDIES, "-h" },
      { "projects", STORE, "-h" } }) do
      local cmd = assert(seed.parse(argv))
      assert.is_string(help.text(cmd.help_topic))
    end
  end)
end)
