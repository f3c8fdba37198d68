-- SPDX-License-Identifier: MIT
-- `healthcare search <store> [studies|series|instances] [-q key=value]...`: QIDO-RS through
-- store:search_*. Prints an aligned table of the columns people look at for each level, or with
-- --json the DICOM JSON array. Results are printed as the pages arrive, so memory stays flat
-- with --json; the table waits for all rows to size its columns.
local argparse = require "argparse"
local common = require "healthcare.cli.common"
local json = require "healthcare.cli.json"

local M = {}

local say = common.sayer("healthcare search")

-- Per level: { keyword, heading }. UIDs last: they are long and the same width.
M.COLUMNS = {
  studies = {
    { "StudyDate", "Date" }, { "PatientID", "Patient ID" }, { "PatientName", "Patient name" },
    { "ModalitiesInStudy", "Modalities" }, { "NumberOfStudyRelatedSeries", "Series" },
    { "NumberOfStudyRelatedInstances", "Instances" }, { "StudyDescription", "Description" },
    { "StudyInstanceUID", "Study UID" },
  },
  series = {
    { "Modality", "Modality" }, { "SeriesNumber", "Number" },
    { "NumberOfSeriesRelatedInstances", "Instances" }, { "SeriesDescription", "Description" },
    { "StudyInstanceUID", "Study UID" }, { "SeriesInstanceUID", "Series UID" },
  },
  instances = {
    { "InstanceNumber", "Number" }, { "Rows", "Rows" }, { "Columns", "Columns" },
    { "NumberOfFrames", "Frames" }, { "SeriesInstanceUID", "Series UID" },
    { "SOPInstanceUID", "SOP Instance UID" },
  },
}

local SINGULAR = { studies = "study", series = "series", instances = "instance" }
local FUNCTION = { studies = "search_studies", series = "search_series", instances = "search_instances" }

local function parser()
  local p = argparse("healthcare search", "Search a DICOM store (QIDO-RS) for studies, series or instances.")
  p:epilog("Examples:\n"
    .. "  healthcare search http://127.0.0.1:8042/dicom-web -q PatientID=P-1 -q StudyDate=20240101-20241231\n"
    .. "  healthcare search STORE series --study 1.2.3 --json\n"
    .. "  healthcare search STORE instances -q 00080060=CT --include all --limit 10")
  common.add_store_options(p)
  p:argument("level", "What to search for.", "studies"):choices({ "studies", "series", "instances" })
  p:option("-q --query", "Match an attribute: KEYWORD=VALUE or TAG=VALUE (e.g. PatientID=P-1, "
    .. "StudyDate=20240101-20241231, 00080060=CT); repeatable. A key given twice matches any of "
    .. "its values.", nil, nil, 1, "*"):count("*"):argname("<key=value>")
  p:option("--study", "Only in this study (Study Instance UID)."):argname("<uid>")
  p:option("--series", "Only in this series (Series Instance UID; series and instances)."):argname("<uid>")
  p:option("--limit", "At most N results in all."):argname("<n>"):convert(tonumber)
  p:option("--offset", "Skip the first N results."):argname("<n>"):convert(tonumber)
  p:option("--include", "Also return this attribute (keyword or tag; 'all' for all); repeatable, "
    .. "and shown as a column.", nil, nil, 1, "*"):count("*"):argname("<field>")
  p:flag("--fuzzy", "Fuzzy matching of person names (where the server offers it).")
  p:flag("--json", "Print the DICOM JSON array of the results on standard output.")
  common.add_retry_option(p)
  return p
end
M.parser = parser -- the bash completion reads its options

-- The query table for store:search_*, or nil and a message.
local function build_query(a)
  local query = {}
  for _, q in ipairs(a.query) do
    local key, value = q:match("^([^=]+)=(.*)$")
    if not key then return nil, string.format("-q needs KEY=VALUE, got '%s'", common.printable(q)) end
    local old = query[key]
    if old == nil then
      query[key] = value
    elseif type(old) == "table" then
      old[#old + 1] = value
    else
      query[key] = { old, value }
    end
  end
  if a.study then query.StudyInstanceUID = a.study end
  if a.series then
    if a.level == "studies" then return nil, "--series needs the series or instances level" end
    query.SeriesInstanceUID = a.series
  end
  for _, k in ipairs({ "limit", "offset" }) do
    local n = a[k]
    if n ~= nil then
      if n < 0 or n ~= math.floor(n) or (k == "limit" and n < 1) then
        return nil, string.format("--%s must be a whole number of at least %d", k, k == "limit" and 1 or 0)
      end
      query[k] = math.floor(n)
    end
  end
  if #a.include > 0 then query.includefield = a.include end
  if a.fuzzy then query.fuzzymatching = true end
  return query
end

-- Numbers as DICOM writes them: JSON decoding gives floats, and 3 should not read "3.0".
local function text(x)
  if type(x) == "number" then return string.format("%.14g", x) end
  if type(x) == "userdata" then return "" end        -- a JSON null among the values
  if type(x) == "table" then return "(item)" end   -- a sequence item
  return tostring(x)
end

-- A DICOM JSON data set made ready for json.encode: every Value is a JSON array (PS3.18 F.2.2),
-- which decoded empty is a table like {} (this cjson has no decode_array_with_array_mt); sequence
-- items too. Marked in place (the CLI owns the results).
local function mark_value_arrays(raw)
  for _, e in pairs(raw) do
    local v = type(e) == "table" and e.Value
    if type(v) == "table" and getmetatable(v) == nil and (next(v) == nil or #v > 0) then
      json.array(v)
      if e.vr == "SQ" then
        for _, item in ipairs(v) do
          if type(item) == "table" then mark_value_arrays(item) end
        end
      end
    end
  end
  return raw
end

-- A cell: lists joined with ',', control characters hidden.
local function cell(v)
  if v == nil then return "" end
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = text(x) end
    return common.printable(table.concat(parts, ","))
  end
  return common.printable(text(v))
end

-- Code points a terminal gives two columns (East Asian Wide and Fullwidth: Hangul, CJK, kana,
-- fullwidth forms, emoji), and those it gives none (combining marks), as { first, last } ranges.
local WIDE = { { 0x1100, 0x115F }, { 0x2E80, 0x303E }, { 0x3041, 0x33FF }, { 0x3400, 0x4DBF }, { 0x4E00, 0x9FFF },
  { 0xA000, 0xA4CF }, { 0xAC00, 0xD7A3 }, { 0xF900, 0xFAFF }, { 0xFE30, 0xFE4F }, { 0xFF00, 0xFF60 },
  { 0xFFE0, 0xFFE6 }, { 0x1F300, 0x1F64F }, { 0x1F900, 0x1F9FF }, { 0x20000, 0x2FFFD }, { 0x30000, 0x3FFFD } }
local ZERO = { { 0x0300, 0x036F }, { 0x1AB0, 0x1AFF }, { 0x1DC0, 0x1DFF }, { 0x200B, 0x200D }, { 0x20D0, 0x20FF },
  { 0xFE00, 0xFE0F }, { 0xFE20, 0xFE2F } }

local function within(ranges, cp)
  for _, r in ipairs(ranges) do
    if cp >= r[1] and cp <= r[2] then return true end
  end
  return false
end

--- The columns a cell takes on a terminal: its code points, two for a wide one, none for a
--- combining mark (a name in UTF-8 is fewer columns than bytes: sized by #, a row with an accent
--- or a CJK name pushed the columns after it). Cells are made printable first (common.printable:
--- a byte that is not UTF-8 becomes \xNN), so the text is UTF-8.
function M.display_width(s)
  if not s:find("[\128-\255]") then return #s end
  local w = 0
  for lead, rest in s:gmatch("([%z\1-\127\192-\255])([\128-\191]*)") do
    local b, n = lead:byte(), #rest
    local cp = n == 0 and b or b % 2 ^ (6 - n) -- the lead byte's bits
    for i = 1, n do cp = cp * 64 + rest:byte(i) % 64 end
    w = w + ((b < 0x80 and 1) or (within(ZERO, cp) and 0) or (within(WIDE, cp) and 2) or 1)
  end
  return w
end

--- The table's lines: a heading line, then a line per row, each column as wide as its widest
--- cell (display_width), two spaces between, no trailing blanks.
function M.table_lines(columns, rows)
  local widths = {}
  for i, c in ipairs(columns) do widths[i] = M.display_width(c[2]) end
  for _, r in ipairs(rows) do
    for i, v in ipairs(r) do widths[i] = math.max(widths[i], M.display_width(v)) end
  end
  local lines = {}
  local function line(values)
    local parts = {}
    for i, v in ipairs(values) do
      parts[i] = i < #values and (v .. string.rep(" ", widths[i] - M.display_width(v))) or v
    end
    lines[#lines + 1] = (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  local heads = {}
  for i, c in ipairs(columns) do heads[i] = c[2] end
  line(heads)
  for _, r in ipairs(rows) do line(r) end
  return lines
end

local function print_table(columns, rows)
  for _, l in ipairs(M.table_lines(columns, rows)) do io.stdout:write(l, "\n") end
end

-- The level's columns, then one per --include that is not already shown.
local function columns_for(level, includes)
  local cols, shown = {}, {}
  for i, c in ipairs(M.COLUMNS[level]) do
    cols[i] = c
    shown[c[1]] = true
  end
  for _, f in ipairs(includes) do
    if f ~= "all" and not shown[f] then
      shown[f] = true
      cols[#cols + 1] = { f, f }
    end
  end
  return cols
end

function M.main(argv)
  local p = parser()
  local a, code = common.parse(p, argv)
  if not a then return code end
  local query, qerr = build_query(a)
  if not query then
    say("%s", qerr)
    return common.EXIT_USAGE
  end
  local store, err
  store, code = common.open_store_or_say(a, say)
  if not store then return code end
  local results
  results, err = store[FUNCTION[a.level]](store, query, { on_retry = common.retry_teller(say) })
  if not results then
    store:close()
    say("%s", tostring(err))
    return common.exit_code_for(err)
  end

  local n = 0
  local columns = columns_for(a.level, a.include)
  local rows = {}
  if a.json then io.stdout:write("[") end
  for item in results:each() do
    n = n + 1
    if a.json then
      io.stdout:write(n > 1 and ",\n" or "\n", json.encode(mark_value_arrays(item:raw())))
    else
      local r = {}
      for i, c in ipairs(columns) do r[i] = cell(item[c[1]]) end
      rows[#rows + 1] = r
    end
  end
  if a.json then
    io.stdout:write(n > 0 and "\n]\n" or "]\n")
  elseif n > 0 then
    print_table(columns, rows)
  end
  store:close()
  if results.error then
    say("%s (after %d %s)", tostring(results.error), n, n == 1 and "result" or "results")
    return common.exit_code_for(results.error)
  end
  if not a.json then
    io.stderr:write(string.format("%d %s\n", n, n == 1 and SINGULAR[a.level] or a.level))
  end
  return common.EXIT_OK
end

return M
