-- SPDX-License-Identifier: MIT
--[[
healthcare.api.request: turns a call of any Cloud Healthcare API method, by Google's name, into
the HTTP request to send, checked against the method table (healthcare.api). Pure Lua: no I/O,
no transport; the client sends what this returns.

  request.build(method_id, params, body, opts) -> req | nil, err
    method_id  "projects.locations.datasets.dicomStores.create"
    params     by API name: path parameters ("parent"), the method's query parameters
               ("dicomStoreId", "updateMask") and the standard ones ("fields", "prettyPrint")
    body       a Lua table sent as JSON (checked against the request's schema), or for HttpBody
               methods { content_type = ..., data = string | { file = path } }, passed through
    opts.query extra query parameters the method table does not declare (QIDO-RS and FHIR search
               parameters), { { name, value }, ... } or { name = value }
  req = { method_id, method = "POST", path = "v1/projects/.../dicomStores" (no leading '/'),
          query = { { name, value }, ... } (strings, in order; repeated parameters repeat),
          query_string = "dicomStoreId=s1" (escaped; "" when none),
          body = JSON text | the HttpBody table | nil, content_type = ... | nil }
  request.url(endpoint, req.path) -> the URL under a client's endpoint (".../v1")

Escaping follows Google's Node client (RFC 6570 through url-template, query strings through qs),
checked request by request against it in spec/15-api_request_spec.lua:
  {+x}  keeps unreserved and reserved characters (so '/') and %XX triplets, encodes the rest;
  {x}   keeps only unreserved characters (A-Z a-z 0-9 - . _ ~);
  query names and values keep only unreserved characters, space is %20.
Where the Node client would send something other than what was meant, this refuses instead:
a '?' or '#' in a {+x} value (it would start the query or a fragment), a '.' or '..' path
segment (URL normalisation would climb: dicomStores/.. names the dataset), control characters
and text that is not UTF-8.

Usage errors (kind "usage", nothing to send) name the valid choices, closest first.
]]

local errors = require("healthcare.errors")
local api = require("healthcare.api")
local util = require("healthcare.util")

local M = {}

local format, concat, sort = string.format, table.concat, table.sort

-- A table with this metatable is a JSON array even when empty (Debian's lua-cjson 2.1.0 has no
-- empty_array_mt; OpenResty's cjson.empty_array_mt, array_mt and empty_array are honoured too).
M.array_mt = { __name = "healthcare.api.array" }

local cjson = require("cjson")
local JSON_NULL = cjson.null
local ARRAY_MTS = { [M.array_mt] = true }
if cjson.empty_array_mt then ARRAY_MTS[cjson.empty_array_mt] = true end
if cjson.array_mt then ARRAY_MTS[cjson.array_mt] = true end
local EMPTY_ARRAY = cjson.empty_array -- nil in Debian's cjson

local MAX_DEPTH = 64
local SHOWN_MAX = 80
local SUGGESTIONS = 5

local function usage(message, fields)
  return nil, errors.new("usage", message, fields)
end

-- Text from the caller, safe and short enough for one line of an error message.
local function shown(s)
  s = tostring(s)
  if #s > SHOWN_MAX then s = s:sub(1, SHOWN_MAX) .. "..." end
  return (s:gsub("%c", "?"))
end

--------------------------------------------------------------------------------------
-- Closest matches
--------------------------------------------------------------------------------------

-- Levenshtein distance, case-insensitive (dicomStoreID is one step from dicomStoreId).
local function distance(a, b)
  a, b = a:lower(), b:lower()
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    local ca = a:byte(i)
    for j = 1, #b do
      local cost = ca == b:byte(j) and 0 or 1
      local v = prev[j - 1] + cost
      if prev[j] + 1 < v then v = prev[j] + 1 end
      if cur[j - 1] + 1 < v then v = cur[j - 1] + 1 end
      cur[j] = v
    end
    prev = cur
  end
  return prev[#b]
end

-- `names` sorted by distance to `wanted` (then by name); at most `max` of them when given.
local function closest(wanted, names, max)
  local scored = {}
  for i, n in ipairs(names) do scored[i] = { n, distance(wanted, n) } end
  sort(scored, function(x, y)
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[1] < y[1]
  end)
  local out = {}
  for i = 1, max and math.min(max, #scored) or #scored do out[i] = scored[i][1] end
  return out
end
M.closest = closest
M.distance = distance

--------------------------------------------------------------------------------------
-- Escaping
--------------------------------------------------------------------------------------

local function pct(c)
  return format("%%%02X", c:byte())
end

--- Simple expansion {x} and query names and values: everything but A-Z a-z 0-9 - . _ ~ encoded.
function M.escape(s)
  return (s:gsub("[^A-Za-z0-9%-%._~]", pct))
end

--- Reserved expansion {+x}: unreserved and reserved characters kept, %XX triplets kept as they
--- are, everything else encoded (RFC 6570 3.2.3).
function M.escape_reserved(s)
  local out, i = {}, 1
  while true do
    local a, b = s:find("%%%x%x", i)
    local chunk = s:sub(i, (a or #s + 1) - 1)
    out[#out + 1] = (chunk:gsub("[^A-Za-z0-9%-%._~:/%?#%[%]@!%$&'%(%)%*%+,;=]", pct))
    if not a then break end
    out[#out + 1] = s:sub(a, b)
    i = b + 1
  end
  return concat(out)
end

local function valid_utf8(s)
  if not s:find("[\128-\255]") then return true end
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if c < 0x80 then
      i = i + 1
    else
      local len = util.utf8_sequence(s, i)
      if not len then return false end
      i = i + len
    end
  end
  return true
end
M.valid_utf8 = valid_utf8

--------------------------------------------------------------------------------------
-- Parameters
--------------------------------------------------------------------------------------

local function is_integral(v)
  return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge and v == math.floor(v)
end

local MAX_EXACT = 2 ^ 53

-- A value of a query parameter as text, or nil, what it must be and what it is instead. The
-- value of a string is never shown: it may be a token or a key.
local function scalar_text(kind, v)
  if kind == "integer" then
    if is_integral(v) and math.abs(v) <= MAX_EXACT then return format("%d", v) end
    if type(v) == "string" and v:match("^%-?%d+$") and #v <= 16 then return v end
    return nil, "an integer"
  elseif kind == "boolean" then
    if type(v) == "boolean" then return tostring(v) end
    if v == "true" or v == "false" then return v end
    return nil, "a boolean"
  end
  if type(v) ~= "string" then return nil, "a string" end
  if not valid_utf8(v) then return nil, "a string", "text that is not valid UTF-8" end
  return v
end

local function type_name(v)
  if type(v) == "number" and not is_integral(v) then return "non-integer number" end
  return type(v)
end

-- The texts of a query parameter's value: one for a scalar, one per element for "repeated".
local function query_values(p, v)
  if p.type == "repeated" then
    local list = type(v) == "table" and v or { v }
    local n = 0
    for k in pairs(list) do
      if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then n = -1 break end
      n = n + 1
    end
    if n < 0 or n ~= #list then
      return nil, format("parameter '%s' must be a string or a list of strings, got a table that is not a list",
        p.name)
    end
    local out = {}
    for i, item in ipairs(list) do
      local text, _, got = scalar_text("string", item)
      if not text then
        return nil, format("parameter '%s' must be a string or a list of strings; element %d is %s", p.name, i,
          got or type_name(item))
      end
      out[i] = text
    end
    return out
  end
  local text, want, got = scalar_text(p.type, v)
  if not text then
    if not got then got = type(v) == "string" and format("'%s'", shown(v)) or type_name(v) end
    return nil, format("parameter '%s' must be %s, got %s", p.name, want, got)
  end
  return { text }
end

local function has_dot_segment(v)
  local decoded = v:gsub("%%2[eE]", ".")
  for seg in (decoded .. "/"):gmatch("([^/]*)/") do
    if seg == "." or seg == ".." then return true end
  end
  return false
end

-- The escaped value of a path parameter, or nil and a message.
local function path_value(m, p, v)
  if type(v) ~= "string" then
    return nil, format("parameter '%s' of %s must be a string, got %s", p.name, m.id, type_name(v))
  end
  local patterns = concat(p.patterns, " or ")
  if v == "" then
    return nil, format("parameter '%s' of %s is empty; it must match %s", p.name, m.id, patterns)
  end
  if v:find("%c") then
    return nil, format("parameter '%s' of %s contains a control character: '%s'", p.name, m.id, shown(v))
  end
  if not valid_utf8(v) then
    return nil, format("parameter '%s' of %s is not valid UTF-8 text", p.name, m.id)
  end
  local ok = false
  for _, pat in ipairs(p.patterns) do
    if v:find(pat) then ok = true break end
  end
  if not ok then
    return nil, format("parameter '%s' of %s is '%s', which does not match %s", p.name, m.id, shown(v), patterns)
  end
  if has_dot_segment(v) then
    return nil, format("parameter '%s' of %s has a '.' or '..' segment: '%s'", p.name, m.id, shown(v))
  end
  if p.reserved then
    if v:find("[?#]") then
      return nil, format("parameter '%s' of %s contains '%s': query parameters go in params or opts.query, "
        .. "not in the path ('%s')", p.name, m.id, v:match("[?#]"), shown(v))
    end
    return M.escape_reserved(v)
  end
  return M.escape(v)
end

--------------------------------------------------------------------------------------
-- JSON bodies, checked against the request's schema
--------------------------------------------------------------------------------------

local encode_value

local function number_text(v, where)
  if v ~= v or v == math.huge or v == -math.huge then return nil, where .. " is not a finite number" end
  if v == math.floor(v) and math.abs(v) <= MAX_EXACT then return format("%d", v) end
  return format("%.17g", v)
end

local function string_text(v, where)
  if not valid_utf8(v) then return nil, where .. " is not valid UTF-8 text" end
  return cjson.encode(v)
end

-- The table's length when it is a list (keys 1..n), else nil.
local function list_length(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= math.floor(k) then return nil end
    n = n + 1
  end
  if n ~= #t then return nil end
  return n
end

local function is_array_marked(t)
  return t == EMPTY_ARRAY or ARRAY_MTS[getmetatable(t)] == true
end

local function encode_list(t, items, where, depth)
  local out = {}
  for i = 1, #t do
    local s, err = encode_value(t[i], items, format("%s[%d]", where, i), depth + 1)
    if not s then return nil, err end
    out[i] = s
  end
  return "[" .. concat(out, ",") .. "]"
end

-- Keys of a JSON object (strings), sorted so the text is the same every time.
local function object_keys(t, where)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      return nil, format("%s has a key that is not a string (%s %s)", where, type(k), shown(k))
    end
    if not valid_utf8(k) then return nil, where .. " has a key that is not valid UTF-8 text" end
    keys[#keys + 1] = k
  end
  sort(keys)
  return keys
end

-- Any JSON value (the schema says "any"): lists become arrays, other tables objects.
local function encode_any(v, where, depth)
  if depth > MAX_DEPTH then return nil, where .. " is nested too deeply (a table that contains itself?)" end
  local tv = type(v)
  if v == JSON_NULL then return "null" end
  if tv == "string" then return string_text(v, where) end
  if tv == "number" then return number_text(v, where) end
  if tv == "boolean" then return tostring(v) end
  if tv ~= "table" then return nil, format("%s is a %s, which JSON cannot hold", where, tv) end
  if is_array_marked(v) or (next(v) ~= nil and list_length(v)) then
    return encode_list(v, { type = "any" }, where, depth)
  end
  local keys, err = object_keys(v, where)
  if not keys then return nil, err end
  local out = {}
  for i, k in ipairs(keys) do
    local s, e = encode_any(v[k], where .. "." .. k, depth + 1)
    if not s then return nil, e end
    out[i] = cjson.encode(k) .. ":" .. s
  end
  return "{" .. concat(out, ",") .. "}"
end

local function field_names(schema)
  local names = {}
  for i, f in ipairs(schema.fields) do names[i] = f.name end
  return names
end

function encode_value(v, t, where, depth)
  if depth > MAX_DEPTH then return nil, where .. " is nested too deeply (a table that contains itself?)" end
  if v == JSON_NULL then return "null" end
  local kind = t.type
  if kind == "any" then return encode_any(v, where, depth) end
  local tv = type(v)
  if kind == "string" then
    if tv ~= "string" then return nil, format("%s must be a string, got %s", where, tv) end
    return string_text(v, where)
  elseif kind == "number" then
    if tv ~= "number" then return nil, format("%s must be a number, got %s", where, tv) end
    return number_text(v, where)
  elseif kind == "boolean" then
    if tv ~= "boolean" then return nil, format("%s must be a boolean, got %s", where, tv) end
    return tostring(v)
  elseif kind == "array" then
    if tv ~= "table" or (not is_array_marked(v) and not list_length(v)) then
      return nil, format("%s must be a list, got %s", where, tv == "table" and "a table with other keys" or tv)
    end
    return encode_list(v, t.items, where, depth)
  elseif kind == "map" then
    if tv ~= "table" or is_array_marked(v) then
      return nil, format("%s must be a table of name = value, got %s", where, tv == "table" and "a list" or tv)
    end
    local keys, err = object_keys(v, where)
    if not keys then return nil, err end
    local out = {}
    for i, k in ipairs(keys) do
      local s, e = encode_value(v[k], t.values, where .. "." .. k, depth + 1)
      if not s then return nil, e end
      out[i] = cjson.encode(k) .. ":" .. s
    end
    return "{" .. concat(out, ",") .. "}"
  end
  -- An object of a schema: its fields in the schema's order; an unknown one is refused (Google
  -- refuses it too, after the request went out).
  local schema = api.schema(t.ref)
  if tv ~= "table" or is_array_marked(v) or (next(v) ~= nil and list_length(v)) then
    return nil, format("%s must be a table with the fields of %s, got %s", where, t.ref,
      tv == "table" and "a list" or tv)
  end
  local known = {}
  for _, f in ipairs(schema.fields) do known[f.name] = f end
  for k in pairs(v) do
    if type(k) ~= "string" or not known[k] then
      local names = field_names(schema)
      return nil, format("%s has no field '%s' (%s); valid fields: %s", where, shown(k), t.ref,
        concat(type(k) == "string" and closest(k, names) or names, ", "))
    end
  end
  local out = {}
  for _, f in ipairs(schema.fields) do
    if v[f.name] ~= nil then
      local s, e = encode_value(v[f.name], f, where .. "." .. f.name, depth + 1)
      if not s then return nil, e end
      out[#out + 1] = cjson.encode(f.name) .. ":" .. s
    end
  end
  return "{" .. concat(out, ",") .. "}"
end

--- The JSON text of any value, objects' keys sorted (the same text every run), or nil and a
--- message.
function M.encode_any(value)
  return encode_any(value, "value", 0)
end

--- The JSON text of `value` as a `schema_name`, or nil and a message.
function M.encode(value, schema_name)
  return encode_value(value, { type = "object", ref = schema_name }, "body", 0)
end

local HTTP_BODY_KEYS = { content_type = true, data = true }

local function http_body(m, body)
  if type(body) ~= "table" then
    return nil, format("the body of %s is an HttpBody: { content_type = ..., data = string | { file = path } }, "
      .. "got %s", m.id, type(body))
  end
  for k in pairs(body) do
    if not HTTP_BODY_KEYS[k] then
      return nil, format("the body of %s has no field '%s'; valid fields: content_type, data", m.id, shown(k))
    end
  end
  if type(body.content_type) ~= "string" or body.content_type == "" or body.content_type:find("[%c\128-\255]") then
    return nil, format("the body of %s needs content_type, a media type such as application/dicom", m.id)
  end
  local data = body.data
  if type(data) == "table" then
    if type(data.file) ~= "string" or data.file == "" or next(data, next(data)) ~= nil then
      return nil, format("the data of %s's body must be a string or { file = path }", m.id)
    end
  elseif type(data) ~= "string" then
    return nil, format("the data of %s's body must be a string or { file = path }, got %s", m.id, type(data))
  end
  return body
end

--------------------------------------------------------------------------------------
-- build
--------------------------------------------------------------------------------------

local function all_param_names(m, standard)
  local names = {}
  for _, p in ipairs(m.path_params) do names[#names + 1] = p.name end
  for _, p in ipairs(m.query) do names[#names + 1] = p.name end
  for _, p in ipairs(standard) do names[#names + 1] = p.name end
  return names
end

-- opts.query as an ordered list of { name, value }.
local function extra_pairs(q, known)
  if q == nil then return {} end
  if type(q) ~= "table" then return nil, format("opts.query must be a table, got %s", type(q)) end
  local list = {}
  if list_length(q) then
    for i, pair in ipairs(q) do
      if type(pair) ~= "table" or type(pair[1]) ~= "string" or pair[1] == "" or pair[2] == nil then
        return nil, format("opts.query[%d] must be { name, value }", i)
      end
      list[i] = pair
    end
  else
    local keys = {}
    for k in pairs(q) do
      if type(k) ~= "string" or k == "" then return nil, "opts.query must have names as keys" end
      keys[#keys + 1] = k
    end
    sort(keys)
    for i, k in ipairs(keys) do list[i] = { k, q[k] } end
  end
  local out = {}
  for _, pair in ipairs(list) do
    local name, v = pair[1], pair[2]
    if known[name] then
      return nil, format("'%s' is a parameter of the method: give it in params, not opts.query", shown(name))
    end
    if not valid_utf8(name) then return nil, "an opts.query name is not valid UTF-8 text" end
    local values, err = query_values({ name = name, type = type(v) == "table" and "repeated"
      or type(v) == "boolean" and "boolean" or type(v) == "number" and "integer" or "string" }, v)
    if not values then return nil, "opts.query: " .. err end
    for _, text in ipairs(values) do out[#out + 1] = { name, text } end
  end
  return out
end

-- Nil, or the usage error for the first unknown name in params (a misspelt required parameter
-- is reported as what it is), else for the first required one missing. by_name: name -> entry.
local function check_names(m, t, params, by_name)
  local unknown = {}
  for k in pairs(params) do
    if type(k) ~= "string" or not by_name[k] then unknown[#unknown + 1] = tostring(k) end
  end
  if #unknown > 0 then
    sort(unknown)
    return format("unknown parameter '%s' for %s; valid parameters: %s", shown(unknown[1]), m.id,
      concat(closest(unknown[1], all_param_names(m, t.standard_params)), ", "))
  end
  for _, r in ipairs(m.required) do
    if params[r] == nil then
      return format("missing required parameter '%s' for %s (required, in order: %s)", r, m.id,
        concat(m.required, ", "))
    end
  end
end

-- The path, from the template; or nil and the reason.
local function build_path(m, params)
  local values = {}
  for _, p in ipairs(m.path_params) do
    local v, err = path_value(m, p, params[p.name])
    if not v then return nil, err end
    values[p.name] = v
  end
  return (m.path:gsub("{%+?([^}]+)}", values))
end

-- The query: the method's parameters, then the standard ones, in the table's order, then
-- opts.query as given. A list of { name, text }, or nil and the reason.
local function build_query(m, t, params, extra_query, by_name)
  local query = {}
  local function add(p)
    local v = params[p.name]
    if v == nil then return true end
    local texts, err = query_values(p, v)
    if not texts then return nil, err end
    for _, text in ipairs(texts) do query[#query + 1] = { p.name, text } end
    return true
  end
  for _, p in ipairs(m.query) do
    local ok, err = add(p)
    if not ok then return nil, err .. " (" .. m.id .. ")" end
  end
  for _, p in ipairs(t.standard_params) do
    if by_name[p.name] == p then
      local ok, err = add(p)
      if not ok then return nil, err .. " (" .. m.id .. ")" end
    end
  end
  local extra, xerr = extra_pairs(extra_query, by_name)
  if not extra then return nil, xerr .. " (" .. m.id .. ")" end
  for _, pair in ipairs(extra) do query[#query + 1] = pair end
  return query
end

-- Sets req.body and req.content_type from body (an HttpBody, or a JSON request); or nil and the
-- reason.
local function build_body(m, body, req)
  if not m.request then return nil, format("%s takes no request body", m.id) end
  if m.http_body then
    local b, err = http_body(m, body)
    if not b then return nil, err end
    req.body, req.content_type = b, b.content_type
  else
    local json, err = M.encode(body, m.request)
    if not json then return nil, err .. " (" .. m.id .. " takes a " .. m.request .. ")" end
    req.body, req.content_type = json, "application/json"
  end
  return true
end

--- The URL of a path of the table ("v1/projects/..."; build's req.path) under a client's endpoint,
--- which stands for the API's root and version (https://healthcare.googleapis.com/v1, or an
--- emulator's .../v1): the "v1/" of the path is the endpoint's.
function M.url(endpoint, path)
  return endpoint .. "/" .. (path:gsub("^v1/", "", 1))
end

--- The request for one call of `method_id`, or nil and a usage error (see the top of the file).
function M.build(method_id, params, body, opts)
  util.check_arg(method_id, 1, "build", "string")
  util.check_arg(params, 2, "build", "table|nil")
  util.check_arg(opts, 4, "build", "table|nil")
  opts = util.check_options(opts, { "query" }, "build")
  params = params or {}
  local t = api.table()
  local m = t.methods[method_id]
  if not m then
    return usage(format("unknown method '%s'; closest: %s (healthcare.api.ids() lists all %d)", shown(method_id),
      concat(closest(method_id, api.ids(), SUGGESTIONS), ", "), #api.ids()), { method = method_id })
  end
  local by_name = {}
  for _, p in ipairs(m.path_params) do by_name[p.name] = p end
  for _, p in ipairs(m.query) do by_name[p.name] = p end
  for _, p in ipairs(t.standard_params) do by_name[p.name] = by_name[p.name] or p end
  local bad = check_names(m, t, params, by_name)
  if bad then return usage(bad, { method = m.id }) end
  local path, perr = build_path(m, params)
  if not path then return usage(perr, { method = m.id }) end
  local query, qerr = build_query(m, t, params, opts.query, by_name)
  if not query then return usage(qerr, { method = m.id }) end
  local parts = {}
  for i, pair in ipairs(query) do parts[i] = M.escape(pair[1]) .. "=" .. M.escape(pair[2]) end
  local req = {
    method_id = m.id, method = m.http_method, path = path,
    query = query, query_string = concat(parts, "&"),
  }
  if body ~= nil then
    local ok, berr = build_body(m, body, req)
    if not ok then return usage(berr, { method = m.id }) end
  end
  return req
end

return M
