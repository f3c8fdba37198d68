-- SPDX-License-Identifier: MIT
-- The command introduces itself, without a server: `--version` names the module, the Lua running
-- it, libcurl (and its TLS library) and OpenSSL; bare `healthcare` and `--help` list every command
-- with one line each (healthcare.cli.commands, the one list); a mistyped command or option gets
-- the closest names; the bash completion (bin/healthcare.bash-completion, asking the command with
-- `__complete`) offers the commands, each command's options and, after `projects`, every method of
-- the generated API table (not only those the seed form runs today).
local H = require "helpers"
local api = require "healthcare.api"
local commands = require "healthcare.cli.commands"
local core = require "healthcare.core"
local healthcare = require "healthcare"

local hc = H.healthcare
local SOURCE = os.getenv("HC_SOURCE_DIR") or "."
local BUILD = os.getenv("HC_BUILD_DIR") or "build"

local function lines_of(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

describe("healthcare --version", function()
  it("names the module, Lua, libcurl with its TLS library, OpenSSL and where the module came from", function()
    local out, err, code = hc { "--version" }
    assert.equal(0, code, err)
    assert.equal("", err)
    local l = lines_of(out)
    assert.equal(5, #l, out)
    assert.equal("healthcare " .. healthcare._VERSION, l[1])
    -- the build's command runs lua5.4, whatever interpreter runs this spec
    assert.matches("^Lua +Lua 5%.4 %(module built with Lua 5%.4%.%d+'s headers%)$", l[2])
    assert.equal("libcurl  " .. core.curl_version:gsub("^libcurl/", "") .. " (" .. core.curl_ssl_version
      .. (core.http2 and ", HTTP/2" or "") .. ")", l[3])
    assert.matches("^libcurl +%d+%.%d+%.%d+ %(OpenSSL/3%.", l[3])
    assert.equal("OpenSSL  " .. core.openssl_version, l[4])
    assert.matches("^OpenSSL +OpenSSL %d", l[4])
    assert.equal("module   " .. SOURCE .. "/lua/healthcare/init.lua, " .. BUILD .. "/healthcare/core.so", l[5])
  end)
end)

describe("healthcare without a command, and --help", function()
  it("bare: the usage and every command with its one line, on standard error, exit 2", function()
    local out, err, code = hc {}
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("^usage: healthcare <command>", err)
    for _, c in ipairs(commands.list) do
      assert.truthy(err:find("\n  " .. c.name .. " +" .. c.summary:gsub("%p", "%%%0") .. "\n"), c.name)
    end
    assert.truthy(err:find("healthcare --version", 1, true))
  end)

  it("--help: every command with its one line, on standard output, exit 0", function()
    for _, flag in ipairs({ "--help", "-h" }) do
      local out, err, code = hc { flag }
      assert.equal(0, code, err)
      for _, c in ipairs(commands.list) do
        assert.truthy(out:find("\n  " .. c.name .. " +" .. c.summary:gsub("%p", "%%%0") .. "\n"), c.name)
      end
    end
  end)

  it("keeps each command's line within 79 columns", function()
    for _, l in ipairs(commands.lines()) do assert.is_true(#l <= 79, l) end
  end)
end)

describe("a mistyped command or option", function()
  local cases = {
    { "stor", "store" }, { "serach", "search" }, { "retreive", "retrieve" }, { "delte", "delete" },
    { "projets", "projects" }, { "Store", "store" },
  }
  for _, c in ipairs(cases) do
    it("suggests " .. c[2] .. " for " .. c[1] .. " and lists the commands, exit 2, nothing on stdout", function()
      local out, err, code = hc { c[1], "x" }
      assert.equal(2, code)
      assert.equal("", out)
      assert.equal("healthcare: unknown command '" .. c[1] .. "' (did you mean '" .. c[2] .. "'?); commands: "
        .. table.concat(commands.names(), ", ") .. "\nTry 'healthcare --help'.\n", err)
    end)
  end

  it("suggests nothing for a word close to no command, and still lists them all", function()
    local _, err, code = hc { "xyz" }
    assert.equal(2, code)
    assert.equal("healthcare: unknown command 'xyz'; commands: " .. table.concat(commands.names(), ", ")
      .. "\nTry 'healthcare --help'.\n", err)
  end)

  it("shows a command word made printable", function()
    local _, err, code = hc { "st\27[31mor" }
    assert.equal(2, code)
    assert.truthy(err:find("unknown command 'st\\x1b[31mor'", 1, true), err)
  end)

  it("says where a friendly command's options go when they come before it", function()
    local _, err, code = hc { "--debug", "store", "x" }
    assert.equal(2, code)
    assert.matches("^healthcare: the options of store go after it: healthcare store ", err)
  end)

  it("a friendly command's unknown option: argparse's suggestion on a line of its own", function()
    local _, err, code = hc { "store", "http://127.0.0.1:9/dicom-web", "x.dcm", "--concurency", "2" }
    assert.equal(2, code)
    assert.truthy(err:find("healthcare store: unknown option '--concurency'\nDid you mean '--concurrency'?\n",
      1, true), err)
  end)

  it("the seed form's unknown option: the closest option", function()
    local _, err, code = hc { "projects", "locations-datasets-dicom-stores-studies-delete",
      "projects/p/locations/l/datasets/d/dicomStores/s", "studies/1.2", "--endpont", "x" }
    assert.equal(2, code)
    assert.matches("^healthcare: unknown option '%-%-endpont' %(did you mean '%-%-endpoint'%?%); valid options: ", err)
  end)

  -- An option the seed form does not know may carry a token, after '=' or as the next word:
  -- the messages name the option, never quote its value as an option, a command or a method.
  local TOKEN = "ya29.not-a-real-token-" .. core.random_hex(8)
  local GET = { "locations-datasets-get", "projects/p/locations/l/datasets/d" }
  -- argv as a test's name, the token shown as <token>.
  local function named(argv)
    local out = {}
    for i, a in ipairs(argv) do out[i] = a == TOKEN and "<token>" or (a:gsub("=ya29%..*", "=<token>")) end
    return table.concat(out, " ")
  end
  for _, argv in ipairs({
    { "--access-token=" .. TOKEN, "projects", GET[1], GET[2] },
    { "--access-token", TOKEN, "projects", GET[1], GET[2] },
    { "projects", "--access-token", TOKEN, GET[1], GET[2] },
    { "projects", GET[1], GET[2], "--access-token", TOKEN },
    { "projects", GET[1], "--access-token=" .. TOKEN, GET[2] },
  }) do
    it("the seed form's unknown option names it without its value: " .. named(argv), function()
      local out, err, code = hc(argv)
      assert.equal(2, code)
      assert.equal("", out)
      assert.is_nil(err:find(TOKEN, 1, true), err)
      assert.matches("^healthcare: unknown option '%-%-access%-token' %(this form takes a token as "
        .. "%-p access%-token=<token>%); valid options: ", err)
    end)
  end

  for _, argv in ipairs({
    { "-p", "access-token", TOKEN, "projects", GET[1], GET[2] },
    { "projects", "-p", "access-token", TOKEN, GET[1], GET[2] },
    { "projects", GET[1], GET[2], "-p", TOKEN },
  }) do
    it("a -p without '=' is refused without quoting the word that may be its value: " .. named(argv), function()
      local out, err, code = hc(argv)
      assert.equal(2, code)
      assert.equal("", out)
      assert.is_nil(err:find(TOKEN, 1, true), err)
      assert.matches("^healthcare: %-p needs <key>=<value>, got ", err)
    end)
  end

  it("a short unknown option is named by its letter, not its attached value", function()
    local _, err, code = hc { "-X" .. TOKEN, "projects", GET[1], GET[2] }
    assert.equal(2, code)
    assert.is_nil(err:find(TOKEN, 1, true), err)
    assert.matches("^healthcare: unknown option '%-X'; valid options: ", err)
  end)

  it("--help still works after an unknown option and the word after it", function()
    local out, err, code = hc { "--access-token", TOKEN, "projects", GET[1], "--help" }
    assert.equal(0, code, err)
    assert.matches("^healthcare projects locations%-datasets%-get\n", out)
    assert.is_nil((out .. err):find(TOKEN, 1, true))
  end)

  it("a word after an unknown option is not taken for a mistyped command", function()
    local _, err, code = hc { "--bogus", "serach" }
    assert.equal(2, code)
    assert.matches("^healthcare: unknown option '%-%-bogus'; valid options: ", err)
    _, err, code = hc { "--json", "search", "x" }
    assert.equal(2, code)
    assert.matches("^healthcare: the options of search go after it", err)
  end)

  for _, c in ipairs({ { "-x", {} }, { "stor", { "store" } }, { "sotre", { "store" } },
    { "deletee", { "delete" } }, { "s", {} }, { "retrieve", { "retrieve" } } }) do
    it("commands.suggestion(" .. c[1] .. ") names " .. (#c[2] > 0 and c[2][1] or "nothing"), function()
      local s = commands.suggestion(c[1], commands.names())
      if #c[2] == 0 then assert.equal("", s) else assert.equal(" (did you mean '" .. c[2][1] .. "'?)", s) end
    end)
  end
end)

describe("bash completion", function()
  local function complete(words)
    local args = { "__complete" }
    for _, w in ipairs(words) do args[#args + 1] = w end
    local out, err, code = hc(args)
    assert.equal(0, code, err)
    return lines_of(out)
  end

  it("offers the commands, --help and --version first", function()
    local want = commands.names()
    want[#want + 1] = "--help"
    want[#want + 1] = "--version"
    assert.same(want, complete {})
  end)

  it("offers every method of the generated API table after projects (all 152), and the options", function()
    local got = set_of(complete { "projects" })
    local n = 0
    for _, m in pairs(api.table().methods) do
      n = n + 1
      assert.is_true(got[m.cli], m.cli)
    end
    assert.equal(152, n)
    for _, o in ipairs({ "--scope", "--endpoint", "--credentials", "-r", "-p", "-o", "--help" }) do
      assert.is_true(got[o], o)
    end
  end)

  it("offers a friendly command's options, not the hidden deprecated spellings", function()
    local got = set_of(complete { "store" })
    for _, o in ipairs({ "--concurrency", "--journal", "--max-request-instances", "--study-uid", "--help" }) do
      assert.is_true(got[o], o)
    end
    assert.is_nil(got["--max-instances"])
    assert.is_nil(got["--retry-max"])
    assert.is_true(set_of(complete { "retrieve", "http://x/dicom-web", "1.2" })["--output"])
    assert.is_true(set_of(complete { "delete" })["--yes"])
    assert.is_true(set_of(complete { "search" })["--include"])
  end)

  it("offers nothing where a value or a file goes (bash then completes file names)", function()
    assert.same({}, complete { "store", "--journal" })
    assert.same({}, complete { "projects", "locations-datasets-dicom-stores-studies-delete", "-o" })
    assert.same({}, complete { "--endpoint" })
  end)

  it("offers the commands again after global options", function()
    local got = set_of(complete { "--debug" })
    assert.is_true(got.projects)
    assert.is_true(got.store)
    assert.is_true(got["--scope"])
  end)

  it("works through bash's completion function, as installed", function()
    local script = table.concat({
      "set -e",
      "source " .. H.q(SOURCE .. "/bin/healthcare.bash-completion"),
      "complete -p healthcare",
      "complete -p healthcare-luajit",
      "COMP_WORDS=(" .. H.q(H.BIN) .. " sto); COMP_CWORD=1; _healthcare; printf '1:%s\\n' \"${COMPREPLY[@]}\"",
      "COMP_WORDS=(" .. H.q(H.BIN) .. " projects locations-datasets-dicom-stores-studies-series-instances-frames-retr);"
        .. " COMP_CWORD=2; _healthcare; printf '2:%s\\n' \"${COMPREPLY[@]}\"",
      "COMP_WORDS=(" .. H.q(H.BIN) .. " store --conc); COMP_CWORD=2; _healthcare; printf '3:%s\\n' \"${COMPREPLY[@]}\"",
    }, "\n")
    local out = H.check_run("bash -c " .. H.q(script))
    assert.truthy(out:find("complete %-o default %-F _healthcare healthcare\n"), out)
    assert.truthy(out:find("\n1:store\n", 1, true), out)
    assert.is_nil(out:find("1:search", 1, true))
    assert.truthy(out:find("\n2:locations-datasets-dicom-stores-studies-series-instances-frames-retrieve-frames\n"
      .. "2:locations-datasets-dicom-stores-studies-series-instances-frames-retrieve-rendered\n", 1, true), out)
    assert.truthy(out:find("\n3:--concurrency\n", 1, true), out)
  end)
end)
