-- SPDX-License-Identifier: MIT
-- The friendly commands' flags and the command's JSON writer, without a server: a flag is the Lua
-- option's name with '-' (README "One name, one meaning") and its older spelling is still taken,
-- hidden from --help's list and named in its epilog; what is checked before any request answers
-- alike under both spellings (a closed port as the store: anything sent would fail otherwise).
-- healthcare.cli.json: sorted keys, [] for marked lists, "/" unescaped, the pretty layout.
local H = require "helpers"
local json = require "healthcare.cli.json"

local STORE = "http://127.0.0.1:9/dicom-web"

describe("healthcare.cli.json", function()
  it("writes valid JSON for strings that are not UTF-8 (file names are bytes): U+FFFD for each byte that is not", function()
    local FFFD = "\239\191\189"
    assert.equal('["a' .. FFFD .. 'b"]', json.encode({ "a\233b" }))
    assert.equal('{"k' .. FFFD .. '":"' .. FFFD .. FFFD .. '"}', json.encode({ ["k\255"] = "\192\128" }))
    -- valid UTF-8 (2, 3 and 4 bytes) is kept as it is
    local ok = "\195\169 \226\130\172 \240\159\152\128"
    assert.equal('"' .. ok .. '"', json.encode(ok))
    -- a surrogate (ED A0 80) and a cut sequence are not UTF-8
    assert.equal('"' .. FFFD .. FFFD .. FFFD .. 'x' .. FFFD .. FFFD .. '"', json.encode("\237\160\128x\226\130"))
  end)

  it("decodes JSON only: NaN, Infinity and hex numbers (which cjson takes unless told not to) are refused", function()
    for _, odd in ipairs({ "[NaN]", '{"a": Infinity}', "[0x10]", "[-inf]" }) do
      assert.is_nil((json.decode(odd)), odd)
    end
    assert.same({ a = { 1, 2.5 } }, json.decode('{"a": [1, 2.5]}'))
  end)

  local cases = {
    { "a scalar", "x/y", '"x/y"', '"x/y"' },
    { "a number", 3, "3", "3" },
    { "an empty table", {}, "{}", "{}" },
    { "an empty marked list", json.array({}), "[]", "[]" },
    { "a list", { 1, "a", true }, '[1,"a",true]', '[\n  1,\n  "a",\n  true\n]' },
    { "keys sorted, nested", { b = { 2 }, a = { c = json.array({}) } }, '{"a":{"c":[]},"b":[2]}',
      '{\n  "a": {\n    "c": []\n  },\n  "b": [\n    2\n  ]\n}' },
    { "a list with a hole is an object", { [1] = "x", [3] = "z" }, '{"1":"x","3":"z"}',
      '{\n  "1": "x",\n  "3": "z"\n}' },
    { "escapes kept, but '/'", { path = "a/b\n\"c\"\\/" }, '{"path":"a/b\\n\\"c\\"\\\\/"}',
      '{\n  "path": "a/b\\n\\"c\\"\\\\/"\n}' },
    { "a raw text as it is", { b = json.raw('{"x":1}'), a = json.array({ json.raw("[2]") }) },
      '{"a":[[2]],"b":{"x":1}}', '{\n  "a": [\n    [2]\n  ],\n  "b": {"x":1}\n}' },
  }
  for _, c in ipairs(cases) do
    it("writes " .. c[1], function()
      assert.equal(c[3], json.encode(c[2]))
      assert.equal(c[4], json.pretty(c[2]))
      -- what it writes reads back as the value
      local back = json.decode(json.encode(c[2]))
      if type(c[2]) ~= "table" then assert.equal(c[2], back) end
    end)
  end

  it("writes a string alone as it writes it inside a value (json.string)", function()
    for _, v in ipairs({ "a/b", "x\n\"y\"\\/z", "é/\1", "" }) do
      assert.equal(json.encode({ v }), "[" .. json.string(v) .. "]")
    end
  end)

  it("marks a list without changing a table that has a metatable of its own", function()
    local mt = {}
    local t = setmetatable({ 1 }, mt)
    local marked = json.array(t)
    assert.equal(mt, getmetatable(t))
    assert.equal("[1]", json.encode(marked))
    assert.equal("[]", json.encode(json.array(setmetatable({}, mt))))
  end)

  it("raises for what JSON cannot hold", function()
    assert.has_error(function() json.encode({ f = print }) end)
  end)

  it("writes NaN and the infinities as null (a server's 1e400 decodes as an infinity)", function()
    assert.equal('{"a":null,"b":null,"c":[null,1]}', json.encode({ a = 0 / 0, b = math.huge, c = { -math.huge, 1 } }))
  end)

  it("writes numbers exactly: cjson's 14 digits changed the server's values", function()
    -- as the command gets them: cjson decodes every number as a double
    local cjson = require "cjson.safe"
    for _, c in ipairs({
      { "3.14159265358979", "3.14159265358979" }, { "123456789012345", "123456789012345" },
      { "0.976562500000001", "0.976562500000001" }, { "9007199254740991", "9007199254740991" },
      { "9007199254740993", "9007199254740992" }, -- (a double holds no more)
      { "0.1", "0.1" }, { "1.5", "1.5" }, { "-2", "-2" }, { "100", "100" }, { "0.30000000000000004", "0.30000000000000004" },
      { "1e300", "1e+300" }, { "1e21", "1e+21" }, { "1.2345678901234567e19", "1.2345678901234567e+19" },
      { "5e-324", "4.9406564584125e-324" }, { "-1.5e-7", "-1.5e-07" },
    }) do
      local v = cjson.decode("[" .. c[1] .. "]")[1]
      local text = json.encode(v)
      assert.equal(c[2], text, c[1])
      assert.equal(v, cjson.decode(text), c[1])
      assert.equal('{\n  "x": ' .. c[2] .. "\n}", json.pretty({ x = v }))
    end
    -- Lua's own numbers: integers as they are, the others in the fewest digits that read back
    assert.equal("[3,-7,0.3333333333333333,0.5]", json.encode({ 3, -7, 1 / 3, 0.5 }))
    assert.equal("[9007199254740992,1e+100]", json.encode({ 2 ^ 53, 1e100 }))
  end)

  it("writes a value inside another at an indentation (json.pretty's second argument)", function()
    assert.equal('{\n      "a": [\n        1\n      ]\n    }', json.pretty({ a = { 1 } }, "    "))
  end)
end)

describe("healthcare search's table", function()
  local search = require "healthcare.cli.search"

  it("measures a cell in the columns a terminal gives it, not in bytes", function()
    for _, c in ipairs({ { "Smith^John", 10 }, { "M\u{fc}ller^J\u{fc}rgen", 13 }, { "\u{5c71}\u{7530}^\u{592a}\u{90ce}", 9 },
      { "\u{3084}\u{307e}\u{3060}", 6 }, { "\u{d64d}\u{ae38}\u{b3d9}", 6 }, { "e\u{301}", 1 }, { "\u{ff21}", 2 },
      { "\\xff\\x1b", 8 }, { "", 0 } }) do
      assert.equal(c[2], search.display_width(c[1]), c[1])
    end
  end)

  it("aligns the columns after a name that is not ASCII", function()
    local columns = { { "PatientName", "Patient name" }, { "PatientID", "ID" }, { "StudyInstanceUID", "Study UID" } }
    local rows = { { "Smith^John", "P-1", "1.2.3" }, { "\u{5c71}\u{7530}^\u{592a}\u{90ce}", "P-2", "1.2.4" },
      { "M\u{fc}ller^J\u{fc}rgen", "P-3", "1.2.5" } }
    local lines = search.table_lines(columns, rows)
    assert.equal(4, #lines)
    assert.equal("Patient name   ID   Study UID", lines[1])
    assert.equal("Smith^John     P-1  1.2.3", lines[2])
    assert.equal("\u{5c71}\u{7530}^\u{592a}\u{90ce}      P-2  1.2.4", lines[3])
    assert.equal("M\u{fc}ller^J\u{fc}rgen  P-3  1.2.5", lines[4])
    for i = 2, 4 do
      local before = lines[i]:match("^(.-)1%.2%.%d$")
      assert.equal(20, search.display_width(before), lines[i])
    end
  end)
end)

describe("flags and their older spellings", function()
  local dir, file
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(require("lfs").mkdir(dir))
    file = H.write_file(dir .. "/a.dcm", "not DICOM")
  end)
  teardown(function()
    os.remove(file)
    os.remove(dir)
  end)

  -- { command words, the flag now, its old spelling, a value it refuses, the message }
  local cases = {
    { { "store", STORE }, "--max-request-instances", "--max-instances", "0",
      "healthcare store: --max-request-instances must be a whole number of at least 1\n" },
    { { "store", STORE }, "--retry-max-attempts", "--retry-max", "0",
      "healthcare store: --retry-max-attempts must be a whole number of at least 1\n" },
    { { "store", STORE }, "--study-uid", "--study", "1.2.x", "healthcare store: invalid study UID '1.2.x'\n" },
    { { "delete", STORE, "1.2.3", "--yes" }, "--operation-timeout", "--timeout", "-1",
      "healthcare delete: --operation-timeout must be a number of seconds >= 0\n" },
  }
  for _, c in ipairs(cases) do
    it(c[2] .. " and " .. c[3] .. " (" .. c[1][1] .. ") refuse " .. c[4] .. " alike, before any request", function()
      for _, flag in ipairs({ c[2], c[3] }) do
        local args = {}
        for i, w in ipairs(c[1]) do args[i] = w end
        if c[1][1] == "store" then args[#args + 1] = dir end
        args[#args + 1] = flag .. "=" .. c[4]
        local out, err, code = H.healthcare(args)
        assert.equal(2, code, flag .. ": " .. err)
        assert.equal("", out)
        assert.equal(c[5], err, flag)
      end
    end)
  end

  it("--help lists the current spellings and names the old ones in its epilog only", function()
    for _, c in ipairs({ { "store", { "--max-instances", "--retry-max", "--study" } }, { "delete", { "--timeout" } } }) do
      local out, err, code = H.healthcare({ c[1], "--help" })
      assert.equal(0, code, err)
      local options, epilog = out:match("^(.*)\nDeprecated spellings, still taken until the release after 0%.1%.0: "
        .. "([^\n]*)\n$")
      assert.is_string(epilog, out)
      for _, old in ipairs(c[2]) do
        assert.is_nil(options:find("\n%s*" .. old:gsub("%-", "%%-") .. "[%s,]"), old)
        assert.truthy(epilog:find(old .. " (now --", 1, true), old)
      end
    end
  end)
end)
