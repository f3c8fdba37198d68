-- SPDX-License-Identifier: MIT
--[[
healthcare.cli.help: the --help texts of the seed's command form, adapted from the seed
page. Nothing is listed here by hand: options, methods, arguments and the request
value's fields come from healthcare.cli.seed, the query parameters and scopes from
healthcare.params, so a list changes in one place only.
]]

local commands = require("healthcare.cli.commands")
local params = require("healthcare.params")
local pages = require("healthcare.api.pages")
local seed = require("healthcare.cli.seed")

local help = {}

local format, concat = string.format, table.concat

local WIDTH = 79

local api_output_text

-- Word-wraps `text` at WIDTH with every line starting with `indent`. Words longer than
-- the line (URLs) stand alone rather than being cut. A '~' is a space that does not
-- break, so that an example such as -r~f.s.o stays on one line.
local function wrap(text, indent)
  local lines, line = {}, nil
  for word in text:gmatch("%S+") do
    if line and #line + 1 + #word > WIDTH then
      lines[#lines + 1] = line
      line = nil
    end
    line = line and (line .. " " .. word) or (indent .. word)
  end
  lines[#lines + 1] = line or indent
  return (concat(lines, "\n"):gsub("~", " "))
end

-- "-r . content-type=<type> data=<value>": the first field after `-r .`, as the seed does.
local function request_usage(struct)
  local parts = {}
  for i, f in ipairs(struct.fields) do
    parts[i] = (i == 1 and "-r . " or "") .. f.name .. "=" .. (f.placeholder or "<value>")
  end
  return concat(parts, " ")
end

local function method_usage(m)
  if m.kind == "api" then
    local args = {}
    for i, a in ipairs(m.args) do args[i] = a.name end
    local flags = {}
    if m.method.response == "Operation" then flags[#flags + 1] = "[--wait]" end
    if pages.items_field(m.method) then flags[#flags + 1] = "[--all [--limit <n>]]" end
    return format("healthcare [global options] %s %s%s%s [-p <name>=<value>]... [-o <out>]%s [--scope <url>]...",
      seed.COMMAND, m.name, #args > 0 and (" " .. concat(args, " ")) or "",
      m.request == seed.HttpBody and (" " .. request_usage(m.request))
        or m.request and " [-r <field>=<value>]..." or "",
      #flags > 0 and (" " .. concat(flags, " ")) or "")
  end
  local args = {}
  for i, a in ipairs(m.args) do args[i] = a.name end
  if m.kind == "search" then args[#args] = args[#args] .. "[?<query>]" end
  return format("healthcare [global options] %s %s %s%s [-o <out>] [-p <key>=<value>]...%s "
    .. "[--scope <url>]...", seed.COMMAND, m.name, concat(args, " "),
    m.request and (" " .. request_usage(m.request)) or "",
    seed.table_entry(m).response == "Operation" and " [--wait]" or "")
end

local function option_lines(list)
  local out = {}
  for _, o in ipairs(list) do
    local names = o.short and o.long and (o.short .. ", " .. o.long) or (o.long or o.short)
    out[#out + 1] = "  " .. names .. (o.arg and (" " .. o.arg) or "")
    out[#out + 1] = wrap(o.help, "      ")
  end
  return concat(out, "\n")
end

-- The first sentence of a description.
local function summary(text)
  return text:match("^(.-%.)%s") or text
end

-- Every method: its command name, then what it does and Google's name for it.
local function methods_list()
  local out = {}
  for _, name in ipairs(seed.method_names()) do
    local m = seed.find_method(name)
    out[#out + 1] = "  " .. m.name
    local what = m.kind == "api" and summary(m.description):gsub("%.$", "") or m.what
    out[#out + 1] = wrap(what .. " (" .. m.api .. ").", "      ")
  end
  return concat(out, "\n")
end

local function top()
  return concat({
    wrap("healthcare: the Cloud Healthcare API's DICOMweb: store (STOW-RS), search (QIDO-RS), "
      .. "retrieve (WADO-RS) and delete; any DICOMweb server for the friendly commands; every other "
      .. "method of the API (datasets, stores, FHIR, HL7v2, IAM, operations) in the seed's form.", ""),
    "",
    "Usage:",
    "  healthcare [global options] " .. seed.COMMAND .. " <method> <parent> <dicom-web-path> "
      .. request_usage(seed.HttpBody) .. " [-o <out>] [-p <key>=<value>]...",
    "  healthcare [global options] " .. seed.COMMAND .. " <method> <parent> <dicom-web-path> "
      .. "[-o <out>] [-p <key>=<value>]...",
    "  healthcare [global options] " .. seed.COMMAND .. " <method> <argument>... [-r <field>=<value>]... "
      .. "[-p <name>=<value>]... [--wait] [--all]",
    "  healthcare " .. seed.COMMAND .. " --help",
    "  healthcare " .. seed.COMMAND .. " <method> --help",
    "  healthcare store <store> <file-or-dir>... [--verify] [options]",
    "  healthcare search <store> [studies|series|instances] [-q <key>=<value>]... [options]",
    "  healthcare retrieve <store> <study>[/<series>[/<instance>]] -o <dir> [options]",
    "  healthcare delete <store> <study>[/<series>[/<instance>]]... --yes [options]",
    "  healthcare import <store> gs://<bucket>/<path> [--no-wait] [options]",
    "  healthcare export <store> gs://<bucket>/<prefix> | bq://<project>.<dataset>.<table>",
    "  healthcare deidentify <source> <destination> --config <file> [options]",
    "  healthcare operations list <dataset> | get|wait|cancel <operation> [options]",
    "",
    "Commands:",
    concat(commands.lines(), "\n"),
    "  Each takes --help; <store> is a dicomStore name (through --endpoint) or a",
    "  DICOMweb base URL. healthcare --version names the versions of the module,",
    "  Lua, libcurl and OpenSSL.",
    "",
    "Global options (before the command or after the method's arguments):",
    option_lines(seed.global_options),
    "",
    wrap("Exit status: 0 on success, 1 when the call (or some instance) failed, 2 for a "
      .. "usage or configuration error.", ""),
  }, "\n") .. "\n"
end

local function command()
  return concat({
    "Usage:",
    "  healthcare [global options] " .. seed.COMMAND .. " <method> ...",
    "  healthcare " .. seed.COMMAND .. " <method> --help",
    "",
    format("Methods (%d, every method of the Cloud Healthcare API v1):", #seed.method_names()),
    methods_list(),
    "",
    "Global options:",
    option_lines(seed.global_options),
  }, "\n") .. "\n"
end

local function cursor_rules(struct)
  local rules = {
    "The cursor position is always set relative to the current one, unless the field "
      .. "name starts with the '.' character. Fields can be nested: -r~f.s.o moves the "
      .. "cursor into f, then s, then o.",
    "The cursor position is set relative to the top-level structure if it starts "
      .. "with '.', e.g. -r~.s.s; a lone '.' moves the cursor back to the top (-r~.).",
    "You can also set nested fields without setting the cursor explicitly. For "
      .. "example, to set a value relative to the current cursor position, you would "
      .. "specify -r~struct.sub_struct=bar. Setting a field does not move the cursor.",
    "You can move the cursor one level up by using '..'. Each additional '.' moves it "
      .. "up one additional level, e.g. '...' goes two levels up.",
    "A field set twice keeps the value given last.",
  }
  if struct ~= seed.HttpBody then
    for _, r in ipairs({
      "A list field takes one more element each time it is set (-r~.members=user:a -r~.members=user:b). "
        .. "Moving the cursor into a list of structures starts a new element of it; setting a field "
        .. "through it (-r~bindings.role=x) sets it in the last element.",
      "A map field takes <key>=<value>, one more entry each time: -r~.labels=team=imaging.",
      "Numbers and true/false are checked. Any field can also be given as JSON with :=, e.g. "
        .. "-r~.policy.bindings:=[] or -r~.labels:={\"team\":\"imaging\"}.",
    }) do rules[#rules + 1] = r end
  end
  local nested = false
  for _, f in ipairs(struct.fields) do
    if seed.struct_of(f) then nested = true end
  end
  if not nested then
    rules[#rules + 1] = struct.name .. " has no nested structures, so for this method "
      .. "the cursor only ever stands at the top."
  end
  local out = {}
  for _, r in ipairs(rules) do out[#out + 1] = "  - " .. wrap(r, "    "):sub(5) end
  return concat(out, "\n")
end

local function request_section(struct)
  local out = {
    wrap("The request value is a data-structure with various fields. Each field may be "
      .. "a simple scalar or another data-structure. In the latter case it is advised to "
      .. "set the field-cursor to the data-structure's field to specify values more "
      .. "concisely.", "  "),
    "",
    "  " .. struct.name .. ":",
  }
  for _, f in ipairs(struct.fields) do
    local t = type(f.type) == "table" and f.type.name or f.type
    out[#out + 1] = "    " .. f.name .. ": " .. t
  end
  out[#out + 1] = ""
  out[#out + 1] = wrap("It can be set completely with the following arguments, "
    .. "executed in the given order:", "  ")
  out[#out + 1] = ""
  for i, f in ipairs(struct.fields) do
    out[#out + 1] = "  " .. (i == 1 and "-r . " or "") .. f.name .. "="
      .. (f.placeholder or "<value>")
    out[#out + 1] = wrap(f.help, "      ")
  end
  out[#out + 1] = ""
  out[#out + 1] = wrap("data=<value> sends the literal string; data=@<file> sends the "
    .. "file's bytes, data=@- standard input, and data=@@<text> the literal @<text>.", "  ")
  local sep, rel, abs = {}, {}, {}
  for i, f in ipairs(struct.fields) do
    local v = f.name .. "=" .. (f.placeholder or "<value>")
    sep[i], rel[i], abs[i] = v, "-r " .. v, "-r ." .. v
  end
  out[#out + 1] = "  These spellings are equivalent:"
  out[#out + 1] = "    -r " .. concat(sep, " ")
  out[#out + 1] = "    " .. concat(rel, " ")
  out[#out + 1] = "    " .. concat(abs, " ")
  out[#out + 1] = "  Example: -r . content-type=application/dicom data=@image.dcm"
  return concat(out, "\n")
end

-- The request value's structure, nested: each field with its type; a structure's fields below
-- it, a structure already being shown (schemas refer to themselves) by its name only.
local function structure_lines(struct, indent, seen, out)
  for _, f in ipairs(struct.fields) do
    out[#out + 1] = indent .. f.name .. ": " .. seed.type_text(f)
    local sub = seed.struct_of(f)
    if sub and not seen[sub.name] then
      seen[sub.name] = true
      structure_lines(sub, indent .. "  ", seen, out)
      seen[sub.name] = nil
    end
  end
  return out
end

-- Every field as -r sets it from the top, with its description.
local function field_lines(struct, prefix, seen, out)
  for _, f in ipairs(struct.fields) do
    local sub = seed.struct_of(f)
    if not sub then
      local placeholder = f.type == "map" and "<key>=<value>" or ("<" .. seed.type_text(f) .. ">")
      out[#out + 1] = "  -r " .. prefix .. f.name .. "=" .. placeholder
      out[#out + 1] = wrap(f.help ~= "" and f.help or "(no description)", "      ")
    elseif not seen[sub.name] then
      out[#out + 1] = "  -r " .. prefix .. f.name .. (f.type == "array" and "   (a new element)" or "")
      out[#out + 1] = wrap(f.help ~= "" and f.help or "(no description)", "      ")
      seen[sub.name] = true
      field_lines(sub, prefix .. f.name .. ".", seen, out)
      seen[sub.name] = nil
    end
  end
  return out
end

-- "Request value" for a method of the table with a JSON request.
local function api_request_section(struct)
  local out = {
    wrap("The request value is a data-structure with various fields. Each field may be a simple scalar "
      .. "or another data-structure. In the latter case it is advised to set the field-cursor to the "
      .. "data-structure's field to specify values more concisely. Fields left unset are not sent.", "  "),
    "",
    "  " .. struct.name .. ":",
  }
  structure_lines(struct, "    ", { [struct.name] = true }, out)
  out[#out + 1] = ""
  out[#out + 1] = wrap("Its fields, set from the top (the API's own names, e.g. -r~.notificationConfig, are "
    .. "taken too):", "  ")
  out[#out + 1] = ""
  field_lines(struct, ".", { [struct.name] = true }, out)
  return concat(out, "\n")
end

-- The method's own query parameters (-p), with Google's descriptions.
local function method_params(m)
  local out = {}
  for _, q in ipairs(seed.table_entry(m).query) do
    local t = q.type == "repeated" and "string (repeatable)" or q.type
    out[#out + 1] = format("  -p %s=%s", seed.kebab(q.name), t)
    out[#out + 1] = wrap(q.description ~= "" and q.description or "(no description)", "      ")
  end
  return concat(out, "\n")
end

local function properties()
  local out = {
    wrap("The following properties can configure any call, and are not specific to this "
      .. "method. The API's own (wire) names are accepted too, e.g. -p~prettyPrint=false.",
      "  "),
    "",
  }
  for _, p in ipairs(params.list()) do
    out[#out + 1] = format("  -p %s=%s", p.cli, p.type)
    out[#out + 1] = wrap(p.help, "      ")
  end
  return concat(out, "\n")
end

-- What a method of the table prints.
api_output_text = function(m)
  local t = m.method
  local parts = { t.response == "HttpBody"
    and ("The server's answer is written to standard output by default: JSON pretty-printed, other bytes exactly "
      .. "as received, held in memory up to 1 GiB (-o <file> streams an answer of any size).")
    or format("The server's answer (%s, as JSON) is written pretty-printed to standard output by default.",
      t.response or "empty") }
  if t.response == "Operation" then
    parts[#parts + 1] = "It is a long-running operation: with --wait the command waits for it to end, "
      .. "showing its progress on standard error (one line rewritten on a terminal, a line per poll "
      .. "otherwise), and prints the operation's response instead; an operation that ends in an error "
      .. "prints Google's message and exits with 1. Ctrl-C stops waiting, not the operation."
  end
  local field = pages.items_field(t)
  if field then
    parts[#parts + 1] = format("With --all, every page is fetched (nextPageToken) and its items printed as it "
      .. "arrives, into one { \"%s\": [...] } (with -o <file>, written once whole); at most --limit <n> items "
      .. "(default %d) from at most <n> pages, and a note on standard error when there are more. A -p fields=... "
      .. "gets nextPageToken added.", field, seed.DEFAULT_LIMIT)
  end
  return concat(parts, " ")
end

local function output_flags(m)
  local says = {
    store = "The server's response (DICOM JSON for a store) is written to standard output by default.",
    search = "The server's answer, a DICOM JSON array, is written pretty-printed to standard output "
      .. "by default ([] when nothing matches).",
    metadata = "The server's answer, a DICOM JSON array, is written pretty-printed to standard "
      .. "output by default.",
    delete = "The server's answer (Google's long-running Operation, as JSON) is written to standard "
      .. "output by default.",
  }
  if seed.table_entry(m).response == "Operation" then
    says.delete = says.delete .. " With --wait the command waits for the operation to end, showing its "
      .. "progress on standard error, and prints its response instead; an operation that ends in an error "
      .. "prints Google's message and exits with 1."
  end
  says.api = m.kind == "api" and api_output_text(m) or nil
  local text = says[m.kind] or ("The server's answer is written as received, byte for byte, to "
    .. "standard output by default; with -o <file> it is streamed to a temporary file that becomes "
    .. "<file> only when the answer arrived whole.")
  return {
    "Optional output flags",
    wrap(text, "  "),
    "  -o <out>",
    wrap("<out> specifies the destination to which to write the server's result. The "
      .. "destination may be - to indicate standard output, or a filepath that is to "
      .. "contain the received bytes. If unset, it defaults to standard output. A file is "
      .. "replaced only once the whole answer is in (written next to it, then renamed over it; "
      .. "a symbolic link there is replaced, not followed), so a failed call leaves it as it was.",
      "      "),
  }
end

local function method(m)
  local args = {}
  for _, a in ipairs(m.args) do
    args[#args + 1] = format("  %s (%s)", a.name, a.type)
    args[#args + 1] = wrap(a.help, "      ")
  end
  local scopes = {}
  for _, s in ipairs(params.SCOPES) do scopes[#scopes + 1] = "    " .. s end
  local lines = {
    "healthcare " .. seed.COMMAND .. " " .. m.name,
    "",
    wrap(m.description, ""),
    "",
    "Usage:",
    "  " .. method_usage(m),
    "",
    "Scopes",
    wrap("You will need authorization for at least one of the following scopes to make "
      .. "a valid call:", "  "),
    concat(scopes, "\n"),
    wrap("If unset, the scope for this method defaults to " .. params.DEFAULT_SCOPE
      .. ". You can set the scope for this method like this: healthcare --scope <scope> "
      .. seed.COMMAND .. " " .. m.name .. " ...", "  "),
    "",
    "Required scalar arguments",
    concat(args, "\n"),
    "",
  }
  if m.request then
    local section = (m.kind == "api" and m.request ~= seed.HttpBody) and api_request_section(m.request)
      or request_section(m.request)
    for _, l in ipairs({ "Required request value", section, "", "About cursors", cursor_rules(m.request), "" }) do
      lines[#lines + 1] = l
    end
  end
  if #seed.table_entry(m).query > 0 then
    for _, l in ipairs({ "Optional method properties", method_params(m), "" }) do lines[#lines + 1] = l end
  end
  for _, l in ipairs(output_flags(m)) do lines[#lines + 1] = l end
  for _, l in ipairs({ "", "Optional general properties", properties(), "", "Global options",
    option_lines(seed.global_options) }) do lines[#lines + 1] = l end
  return concat(lines, "\n") .. "\n"
end

-- The help text for a topic of a help command from seed.parse: "top", "projects", or
-- a method id ("store-instances", "studies-store-instances") or CLI method name. Raises
-- for an unknown topic (a programming error, since seed.parse only returns valid ones).
function help.text(topic)
  if topic == "top" then return top() end
  if topic == seed.COMMAND then return command() end
  local m = seed.find_method(topic)
  if not m then error(format("bad argument #1 to 'text' (unknown help topic '%s')",
    tostring(topic)), 2) end
  return method(m)
end

-- The one-line usage of a method (id or CLI name), for short messages after an error.
function help.usage(topic)
  local m = seed.find_method(topic or "studies-store-instances")
  if not m then error(format("bad argument #1 to 'usage' (unknown method '%s')",
    tostring(topic)), 2) end
  return "usage: " .. method_usage(m)
end

return help
