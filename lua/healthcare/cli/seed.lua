-- SPDX-License-Identifier: MIT
--[[
healthcare.cli.seed: parses the seed's command form,
  healthcare [global options] projects <method> <parent> <dicom-web-path>
             -r . content-type=<type> data=<value> [-o <out>] [-p <key>=<value>]...
(the store methods) or, for the read and delete methods, without the request value:
  healthcare [global options] projects <method> <parent> <dicom-web-path>[?<query>] [-o <out>] ...
into a plain command table for healthcare.cli to run. Pure Lua, no I/O: files named by
data=@path are not opened here; UIDs, frame lists and queries are checked by
healthcare.dicomweb.names, so that the Lua API and the CLI share one check. The option list, the methods and the
request value's schema are written once here; healthcare.cli.help renders them.
]]

local api = require("healthcare.api")
local commands = require("healthcare.cli.commands")
local dicomweb_names = require("healthcare.dicomweb.names")
local params = require("healthcare.params")
local pages = require("healthcare.api.pages")
local request = require("healthcare.api.request")
local util = require("healthcare.util")

local seed = {}

local format, concat = string.format, table.concat

--------------------------------------------------------------------------------------
-- The request value's schema
--------------------------------------------------------------------------------------

-- A structure is { name = ..., fields = { ... } }. A field is { name = as typed on the
-- command line, key = its key in the command table, type = "string" or a structure,
-- required, placeholder (for usage lines), help }. Only HttpBody exists today; the
-- cursor below works on any nesting.
seed.HttpBody = {
  name = "HttpBody",
  fields = {
    { name = "content-type", key = "content_type", type = "string", required = true,
      placeholder = "<type>",
      help = "The HTTP Content-Type header value specifying the content type of the body." },
    { name = "data", key = "data", type = "string", required = true,
      placeholder = "<value>",
      help = "The HTTP request/response body as raw binary." },
  },
}

-- The API's schemas as structures of the same form (healthcare.api's table, generated from
-- Google's description): a field's `name` is the API's in kebab-case, as the seed spells
-- content-type (the API's own name is taken too), `key` the API's; `type` is "string",
-- "number", "boolean", "any", "object" (ref: the schema), "array" (items) or "map" (values).
-- Built on first use and kept: schemas refer to each other, some to themselves.
local structs = {}

--- "dicomStoreId" -> "dicom-store-id", as the seed writes names on the command line.
function seed.kebab(name)
  return (name:gsub("(%l)(%u)", "%1-%2"):gsub("(%d)(%u)", "%1-%2"):gsub("(%u)(%u%l)", "%1-%2"):lower())
end

--- The structure of the API schema `schema_name`, or nil when there is none of that name.
function seed.struct(schema_name)
  local s = structs[schema_name]
  if s then return s end
  local schema = api.schema(schema_name)
  if not schema then return nil end
  s = { name = schema_name, description = schema.description, fields = {} }
  structs[schema_name] = s
  for i, f in ipairs(schema.fields) do
    s.fields[i] = { name = seed.kebab(f.name), key = f.name, type = f.type, ref = f.ref, items = f.items,
      values = f.values, help = f.description or "" }
  end
  return s
end

-- The structure a cursor can move into through `field`: an object's, or the elements' of a list
-- of objects; nil for a value field. (The seed's HttpBody fields have type "string".)
local function struct_of(field)
  if type(field.type) == "table" then return field.type end
  if field.type == "object" then return seed.struct(field.ref) end
  if field.type == "array" and field.items.type == "object" then return seed.struct(field.items.ref) end
  return nil
end
seed.struct_of = struct_of

--- A field's type as help and messages name it: "string", "list of string", "map of string",
--- "list of Binding", "DicomStore".
function seed.type_text(t)
  if type(t.type) == "table" then return t.type.name end
  if t.type == "object" then return t.ref end
  if t.type == "array" then return "list of " .. seed.type_text(t.items) end
  if t.type == "map" then return "map of " .. seed.type_text(t.values) end
  return t.type
end

-- "content-type, data" ("none" for a structure without fields)
function seed.field_names(struct)
  local names = {}
  for i, f in ipairs(struct.fields) do names[i] = f.name end
  return #names > 0 and concat(names, ", ") or "none"
end

local function find_field(struct, name)
  for _, f in ipairs(struct.fields) do
    if f.name == name or f.key == name then return f end
  end
  return nil
end

--------------------------------------------------------------------------------------
-- The field cursor (the seed's "About Cursors")
--------------------------------------------------------------------------------------

-- Splits a cursor spec into steps: { reset = true }, { up = n } or { name = field }.
-- As in the seed (and google-apis-rs, where these rules come from): one leading '.'
-- means "from the top"; a run of k dots moves k - 1 levels up, so '..' is one level and
-- each further '.' one more ('...' is two levels; the seed's prose says "three", which
-- contradicts its own rule, and we follow the rule); a single trailing '.' is an error.
local function split_steps(spec)
  if spec == "" then return nil, "missing field name" end
  local steps = {}
  local lead = #spec:match("^%.*")
  if lead == 1 then
    steps[1] = { reset = true }
  elseif lead > 1 then
    steps[1] = { up = lead - 1 }
  end
  local pos = lead + 1
  while pos <= #spec do
    local name, dots = spec:match("^([^.]+)(%.*)", pos)
    steps[#steps + 1] = { name = name }
    pos = pos + #name + #dots
    if #dots > 1 then
      steps[#steps + 1] = { up = #dots - 1 }
    elseif #dots == 1 and pos > #spec then
      return nil, format("field name '%s' ends with a single '.'", spec)
    end
  end
  return steps
end

local Request = {}
Request.__index = Request

-- A request value being built against `schema`: `cursor` is the list of structure
-- fields from the top to the cursor, `value` the nested table of what was set.
function seed.request_value(schema)
  return setmetatable({ schema = schema, cursor = {}, value = {} }, Request)
end

function Request:struct_at(path)
  return #path == 0 and self.schema or struct_of(path[#path])
end

-- Follows `spec` from the cursor. For a move, returns the new path. For an assignment
-- (`assigning`), the spec must end on a value field (on any field when assigning is "json"):
-- returns the path of the structure holding it and the field. Otherwise nil and a message
-- listing the valid fields.
function Request:walk(spec, assigning)
  local steps, err = split_steps(spec)
  if not steps then
    return nil, format("%s; valid fields: %s", err, seed.field_names(self:struct_at(self.cursor)))
  end
  local path = {}
  for i, f in ipairs(self.cursor) do path[i] = f end
  for i, step in ipairs(steps) do
    local struct = self:struct_at(path)
    if step.reset then
      path = {}
    elseif step.up then
      if step.up > #path then
        return nil, format("'%s' moves the cursor above the top-level structure %s; "
          .. "valid fields: %s", spec, self.schema.name, seed.field_names(self.schema))
      end
      for _ = 1, step.up do path[#path] = nil end
    else
      local f = find_field(struct, step.name)
      if not f then
        return nil, format("unknown field '%s' in %s; valid fields: %s", step.name,
          struct.name, seed.field_names(struct))
      end
      if assigning and i == #steps and (assigning == "json" or not struct_of(f) or f.type == "array") then
        return path, f
      end
      if not struct_of(f) then
        return nil, format("cannot move the cursor into '%s': it is a %s field of %s, "
          .. "not a structure; valid fields: %s", f.name, seed.type_text(f), struct.name,
          seed.field_names(struct))
      end
      path[#path + 1] = f
    end
  end
  if not assigning then return path end
  local struct = self:struct_at(path)
  if steps[#steps].name then
    return nil, format("field '%s' is a structure (%s), not a value; set one of its "
      .. "fields: %s", steps[#steps].name, struct.name, seed.field_names(struct))
  end
  return nil, format("'%s' names no field; valid fields: %s", spec, seed.field_names(struct))
end

-- The table of the request value at `path`, made as needed. A list of structures stands for its
-- last element (made when the list is empty); with `fresh`, a new element is added to the list
-- the path ends on.
function Request:node(path, fresh)
  local node = self.value
  for i, f in ipairs(path) do
    if type(node[f.key]) ~= "table" then node[f.key] = {} end
    node = node[f.key]
    if f.type == "array" then
      if #node == 0 or (fresh and i == #path) or type(node[#node]) ~= "table" then node[#node + 1] = {} end
      node = node[#node]
    end
  end
  return node
end

-- Moves the cursor (`-r f.s.o`, `-r .`, `-r ..`); moving into a list of structures starts a new
-- element of it. Returns true, or nil and a message.
function Request:move(spec)
  local path, err = self:walk(spec, false)
  if not path then return nil, err end
  self.cursor = path
  local last = path[#path]
  if last and last.type == "array" and spec:sub(-1) ~= "." then self:node(path, true) end
  return true
end

-- A value typed on the command line as a field of type t wants: a string, a number, true or
-- false; or nil and a message.
local function scalar_value(t, value, f, struct)
  if t == "number" then
    local n = not value:find("[xX]") and tonumber(value)
    if n and n == n and n ~= math.huge and n ~= -math.huge then return n end
    return nil, format("field '%s' of %s is a number, got '%s'", f.name, struct.name, value)
  elseif t == "boolean" then
    if value == "true" or value == "false" then return value == "true" end
    return nil, format("field '%s' of %s is true or false, got '%s'", f.name, struct.name, value)
  elseif t == "string" or t == "any" then
    return value
  end
  return nil, format("field '%s' of %s is a %s: give it as JSON, -r %s:=<json>", f.name, struct.name,
    seed.type_text(f), f.name)
end

-- Sets field f of the structure `struct` in `node` from the typed `value`: a scalar replaces,
-- a list element is appended, a map entry is key=value. Returns true, or nil and a message.
local function assign(node, f, struct, value)
  if f.type == "array" then
    if f.items.type == "object" then
      return nil, format("field '%s' of %s is a %s: move the cursor into it (-r %s) to add an element, or "
        .. "give it as JSON, -r %s:=[...]", f.name, struct.name, seed.type_text(f), f.name, f.name)
    end
    local v, err = scalar_value(f.items.type, value, f, struct)
    if v == nil then return nil, err end
    if type(node[f.key]) ~= "table" then node[f.key] = {} end
    node[f.key][#node[f.key] + 1] = v
  elseif f.type == "map" then
    local k, text = value:match("^([^=]+)=(.*)$")
    if not k then
      return nil, format("field '%s' of %s is a %s: give <key>=<value>, e.g. -r %s=team=imaging", f.name,
        struct.name, seed.type_text(f), f.name)
    end
    local v, err = scalar_value(f.values.type, text, f, struct)
    if v == nil then return nil, err end
    if type(node[f.key]) ~= "table" then node[f.key] = {} end
    node[f.key][k] = v
  else
    local v, err = scalar_value(f.type, value, f, struct)
    if v == nil then return nil, err end
    node[f.key] = v
  end
  return true
end

-- A value given as JSON text (-r f:=<json>), or nil and a message.
local function json_value(key, text)
  local v, err = util.decode_json(text)
  if v == nil then return nil, format("'%s:=' needs a JSON value, got '%s' (%s)", key, text, tostring(err)) end
  if type(v) == "table" and next(v) == nil and text:match("^%s*%[") then setmetatable(v, request.array_mt) end
  return v
end

-- Sets the field named by `key` relative to the cursor (or the top with a leading
-- '.'), without moving the cursor. A field set twice keeps the later value, as a
-- later option overrides an earlier one; a list field takes one more element each time, a map
-- field one more key=value. `key:` (as in f:=<json>) sets the field to a JSON value.
-- Returns true, or nil and a message.
function Request:set(key, value)
  local json = key:sub(-1) == ":" and key ~= ":"
  if json then key = key:sub(1, -2) end
  if key == "" then
    return nil, format("missing field name before '=' in '=%s'; valid fields: %s", value,
      seed.field_names(self:struct_at(self.cursor)))
  end
  local path, field = self:walk(key, json and "json" or true)
  if not path then return nil, field end
  local node = self:node(path)
  if json then
    local v, err = json_value(key, value)
    if v == nil then return nil, err end
    node[field.key] = v
    return true
  end
  if type(field.type) ~= "string" or self.schema == seed.HttpBody then
    node[field.key] = value
    return true
  end
  return assign(node, field, self:struct_at(path), value)
end

-- One `-r` item: `name=value` sets a field (split at the first '=', so values may hold
-- '='), anything else moves the cursor.
function Request:apply(item)
  local key, value = item:match("^([^=]*)=(.*)$")
  if key then return self:set(key, value) end
  return self:move(item)
end

--------------------------------------------------------------------------------------
-- Commands, methods and options, written once (help.lua renders them)
--------------------------------------------------------------------------------------

seed.COMMAND = "projects"

local DESCRIPTION = "StoreInstances stores DICOM instances associated with study instance "
  .. "unique identifiers (SUID). See [Store Transaction] "
  .. "(http://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5). "
  .. "For details on the implementation of StoreInstances, see Store transaction in the "
  .. "Cloud Healthcare API conformance statement. For samples that show how to call "
  .. "StoreInstances, see Store DICOM data."

-- The seed's required scalar arguments, in order.
local ARGS = {
  { name = "<parent>", key = "parent", type = "string",
    help = "Required. The name of the DICOM store that is being accessed. For example, "
      .. "projects/{project_id}/locations/{location_id}/datasets/{dataset_id}/"
      .. "dicomStores/{dicom_store_id}." },
  { name = "<dicom-web-path>", key = "dicom_web_path", type = "string",
    help = "Required. The path of the StoreInstances DICOMweb request. For example, "
      .. "studies/[{study_uid}]. Note that the study_uid is optional." },
}

-- Both methods take the same arguments and send the same request.
seed.methods = {
  { name = "locations-datasets-dicom-stores-store-instances", id = "store-instances",
    api = "projects.locations.datasets.dicomStores.storeInstances", what = "StoreInstances",
    kind = "store", description = DESCRIPTION, args = ARGS, request = seed.HttpBody },
  { name = "locations-datasets-dicom-stores-studies-store-instances",
    id = "studies-store-instances",
    api = "projects.locations.datasets.dicomStores.studies.storeInstances", what = "StoreInstances",
    kind = "store", description = DESCRIPTION, args = ARGS, request = seed.HttpBody },
}

-- The DICOMweb read and delete methods: raw calls, GET or DELETE
-- {endpoint}/{parent}/dicomWeb/{dicom-web-path}, with no request value. `kind` says what is
-- asked for and what the answer is (JSON printed, or bytes written as received); `paths` are the
-- dicom-web-path shapes the method accepts, `{..._uid}` standing for a UID and `{frame_list}`
-- for frame numbers (1,2,3). Search paths may end in ?<query> (QIDO-RS parameters).
local SEARCH_HELP = "Query parameters (QIDO-RS) follow a '?', e.g. %s?PatientID=P-1&limit=10."
local KIND_SUMMARY = {
  search = "Searches (QIDO-RS) for %s; the answer is a DICOM JSON array (an empty one when "
    .. "nothing matches).",
  metadata = "Retrieves the metadata (WADO-RS) of %s as a DICOM JSON array; bulk data such as "
    .. "pixel data is left out.",
  retrieve = "Retrieves %s (WADO-RS) as a multipart/related answer of DICOM instances "
    .. "(application/dicom, in the transfer syntax they are stored in).",
  rendered = "Retrieves %s rendered as a consumer image (WADO-RS, image/jpeg).",
  frames = "Retrieves %s (WADO-RS) as a multipart/related answer of uncompressed frames "
    .. "(application/octet-stream).",
  delete = "Deletes %s. Google answers with a long-running operation (its name in JSON), "
    .. "which finishes the deletion in the background.",
}
local READS = {
  { "search-for-studies", "searchForStudies", "SearchForStudies", "search", "the studies of a DICOM store",
    { "studies" } },
  { "search-for-series", "searchForSeries", "SearchForSeries", "search", "series in a DICOM store",
    { "series", "studies/{study_uid}/series" } },
  { "search-for-instances", "searchForInstances", "SearchForInstances", "search",
    "instances in a DICOM store",
    { "instances", "studies/{study_uid}/instances", "studies/{study_uid}/series/{series_uid}/instances" } },
  { "studies-search-for-series", "studies.searchForSeries", "SearchForSeries", "search",
    "the series of a study", { "studies/{study_uid}/series" } },
  { "studies-search-for-instances", "studies.searchForInstances", "SearchForInstances", "search",
    "the instances of a study", { "studies/{study_uid}/instances" } },
  { "studies-retrieve-study", "studies.retrieveStudy", "RetrieveStudy", "retrieve",
    "every instance of a study", { "studies/{study_uid}" } },
  { "studies-retrieve-metadata", "studies.retrieveMetadata", "RetrieveStudyMetadata", "metadata",
    "every instance of a study", { "studies/{study_uid}/metadata" } },
  { "studies-delete", "studies.delete", "DeleteStudy", "delete", "a study and all its series and instances",
    { "studies/{study_uid}" } },
  { "studies-series-retrieve-series", "studies.series.retrieveSeries", "RetrieveSeries", "retrieve",
    "every instance of a series", { "studies/{study_uid}/series/{series_uid}" } },
  { "studies-series-retrieve-metadata", "studies.series.retrieveMetadata", "RetrieveSeriesMetadata",
    "metadata", "every instance of a series", { "studies/{study_uid}/series/{series_uid}/metadata" } },
  { "studies-series-search-for-instances", "studies.series.searchForInstances", "SearchForInstances",
    "search", "the instances of a series", { "studies/{study_uid}/series/{series_uid}/instances" } },
  { "studies-series-delete", "studies.series.delete", "DeleteSeries", "delete",
    "a series and all its instances", { "studies/{study_uid}/series/{series_uid}" } },
  { "studies-series-instances-retrieve-instance", "studies.series.instances.retrieveInstance",
    "RetrieveInstance", "retrieve", "one instance",
    { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}" } },
  { "studies-series-instances-retrieve-metadata", "studies.series.instances.retrieveMetadata",
    "RetrieveInstanceMetadata", "metadata", "one instance",
    { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/metadata" } },
  { "studies-series-instances-retrieve-rendered", "studies.series.instances.retrieveRendered",
    "RetrieveRenderedInstance", "rendered", "one instance",
    { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/rendered" } },
  { "studies-series-instances-delete", "studies.series.instances.delete", "DeleteInstance", "delete",
    "one instance", { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}" } },
  { "studies-series-instances-frames-retrieve-frames", "studies.series.instances.frames.retrieveFrames",
    "RetrieveFrames", "frames", "frames of an instance",
    { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/{frame_list}" } },
  { "studies-series-instances-frames-retrieve-rendered", "studies.series.instances.frames.retrieveRendered",
    "RetrieveRenderedFrames", "rendered", "frames of an instance",
    { "studies/{study_uid}/series/{series_uid}/instances/{instance_uid}/frames/{frame_list}/rendered" } },
}

for _, r in ipairs(READS) do
  local id, api_name, what, kind, object, paths = r[1], r[2], r[3], r[4], r[5], r[6]
  local examples = #paths == 1 and paths[1]
    or (concat(paths, ", ", 1, #paths - 1) .. " or " .. paths[#paths])
  local path_help = format("Required. The path of the %s DICOMweb request: %s.", what, examples)
  if kind == "search" then path_help = path_help .. " " .. format(SEARCH_HELP, paths[1]) end
  seed.methods[#seed.methods + 1] = {
    name = "locations-datasets-dicom-stores-" .. id, id = id,
    api = "projects.locations.datasets.dicomStores." .. api_name, what = what, kind = kind,
    http_method = kind == "delete" and "DELETE" or "GET",
    paths = paths,
    description = what .. ": " .. format(KIND_SUMMARY[kind], object)
      .. " See the Cloud Healthcare API's DICOM conformance statement for what the server supports.",
    args = { ARGS[1], { name = "<dicom-web-path>", key = "dicom_web_path", type = "string",
      help = path_help } },
  }
end

-- Every other method of the API, from the method table: its required parameters in Google's
-- order are the arguments, its query parameters -p's, its request schema the request value.
-- kind "api"; run by healthcare.cli.call.api_method through client:call.
local api_entries = {}

local function api_entry(m)
  local args = {}
  for _, r in ipairs(m.required) do
    local help, patterns = "Required.", nil
    for _, p in ipairs(m.path_params) do
      if p.name == r then help, patterns = p.description, p.patterns end
    end
    args[#args + 1] = { name = "<" .. seed.kebab(r) .. ">", key = r, type = "string", help = help, patterns = patterns }
  end
  local request_struct
  if m.request then request_struct = m.http_body and seed.HttpBody or seed.struct(m.request) end
  return { name = m.cli, id = m.cli, api = m.id, what = m.id:match("[^.]+$"), kind = "api",
    description = m.description, args = args, request = request_struct, method = m }
end

--- The method table's entry of a method entry (the seed's own DICOMweb methods are in it too).
function seed.table_entry(m)
  return m.method or api.method(m.api)
end

-- The method entry for a CLI name ("locations-...") or an id ("store-instances"): the seed's
-- own DICOMweb methods first (they keep their checks and their answers), then the table's.
function seed.find_method(name)
  for _, m in ipairs(seed.methods) do
    if m.name == name or m.id == name then return m end
  end
  if type(name) ~= "string" then return nil end
  if api_entries[name] then return api_entries[name] end
  local m = api.by_cli(name)
  if not m then return nil end
  api_entries[name] = api_entry(m)
  return api_entries[name]
end

--- Every method's command name, sorted.
function seed.method_names()
  local names = {}
  for _, m in pairs(api.table().methods) do names[#names + 1] = m.cli end
  table.sort(names)
  return names
end

local SUGGESTIONS = 5

-- "closest: a, b, c (healthcare projects --help lists all 152)": the names holding the word
-- (shortest first: "store-instances" finds the two store methods), then the nearest by edits.
local function closest_methods(word)
  local names = seed.method_names()
  local holding, others = {}, {}
  for _, n in ipairs(names) do
    if n:find(word, 1, true) then holding[#holding + 1] = n else others[#others + 1] = n end
  end
  table.sort(holding, function(a, b)
    if #a ~= #b then return #a < #b end
    return a < b
  end)
  local pick = {}
  for i = 1, math.min(SUGGESTIONS, #holding) do pick[i] = holding[i] end
  for _, n in ipairs(request.closest(word, others, SUGGESTIONS - #pick)) do pick[#pick + 1] = n end
  return format("closest: %s (healthcare %s --help lists all %d)", concat(pick, ", "), seed.COMMAND, #names)
end

-- Global options may stand before `projects` or after the method's arguments.
seed.global_options = {
  { long = "--scope", arg = "<url>", key = "scope",
    help = "OAuth scope to request; repeatable. Default: " .. params.DEFAULT_SCOPE .. "." },
  { long = "--endpoint", arg = "<url>", key = "endpoint",
    help = "API endpoint. Default: $HEALTHCARE_ENDPOINT, else "
      .. "https://healthcare.googleapis.com/v1." },
  { long = "--credentials", arg = "<file>", key = "credentials",
    help = "A service_account or authorized_user JSON key file. Default: Application "
      .. "Default Credentials. Not with -p access-token, oauth-token or key: a request carries one credential." },
  { long = "--impersonate-service-account", arg = "<email>", key = "impersonate",
    help = "Act as this service account, with a token asked of IAM Credentials with the credential given "
      .. "(--credentials, -p access-token) or found." },
  { long = "--proxy", arg = "<url>", key = "proxy",
    help = "HTTP(S) proxy for every request, instead of the *_proxy variables ('' for none)." },
  { long = "--ca-file", arg = "<file>", key = "ca_file",
    help = "CA certificates (PEM) to verify the server with." },
  { long = "--insecure", key = "insecure",
    help = "Allow insecure transport: do not verify TLS certificates, and let a credential go to a "
      .. "plain-http server through a proxy (testing only)." },
  { long = "--no-token-cache", key = "no_token_cache",
    help = "Neither read nor write cached access tokens." },
  { long = "--timeout", arg = "<seconds>", key = "timeout",
    help = "Give up on a request not done within this many seconds. Default: none; a request "
      .. "moving fewer than 1024 bytes a second for 300 s is cut." },
  { long = "--debug", key = "debug", help = "Print requests and responses to standard error." },
  { long = "--help", short = "-h", key = "help",
    help = "Show help for the command or method named before it." },
}

-- --all: at most this many items, read from at most as many pages, unless --limit says (as
-- `healthcare operations list`): the items are printed as they arrive, so memory stays flat; the
-- bound is for a server whose pages never end.
seed.DEFAULT_LIMIT = 10000

seed.method_options = {
  { short = "-r", arg = "<kv>", key = "request",
    help = "Move the field cursor (-r <field>) or set a field (-r <field>=<value>)." },
  { short = "-p", arg = "<key>=<value>", key = "param",
    help = "Set a query parameter, the method's own (kebab-case) or a standard one; repeatable." },
  { short = "-o", arg = "<out>", key = "output",
    help = "Write the server's response to <out> ('-' for standard output)." },
  { long = "--wait", key = "wait",
    help = "For a method that answers a long-running Operation: wait for it to end (a progress line on "
      .. "a terminal) and print its response; its error is exit status 1." },
  { long = "--all", key = "all",
    help = "For a list method: follow nextPageToken through every page and print the items as the pages "
      .. "arrive, at most --limit of them." },
  { long = "--limit", arg = "<n>", key = "limit",
    help = "With --all: at most N items in all, from at most N pages (default " .. seed.DEFAULT_LIMIT .. "); a "
      .. "note on standard error says when there are more." },
}

local OPTIONS, OPTION_NAMES = {}, {}
-- What to say of an option the other commands take and this form spells another way.
local HINTS = {
  ["--access-token"] = " (this form takes a token as -p access-token=<token>)",
}
for _, list in ipairs({ seed.global_options, seed.method_options }) do
  for _, o in ipairs(list) do
    for _, spelling in ipairs({ o.short or false, o.long or false }) do
      if spelling then
        OPTIONS[spelling] = o
        OPTION_NAMES[#OPTION_NAMES + 1] = spelling
      end
    end
  end
end

--------------------------------------------------------------------------------------
-- dicom-web-paths of the read and delete methods
--------------------------------------------------------------------------------------

-- Checks a dicom-web-path against the method's shapes. Returns the path (without the query)
-- and, for a search, the query as typed after '?' (or nil); or nil and a message.
function seed.check_path(m, path)
  local shown = path -- as it is: the command prints a parse error through common.printable
  if path:find("[%c%s#]") then
    return nil, format("invalid DICOMweb path '%s' for %s: it has a space, a control character or "
      .. "'#'", shown, m.what)
  end
  local base, q = path:match("^([^?]*)%?(.*)$")
  base = base or path
  local function bad(extra)
    local shapes = {}
    for i, sh in ipairs(m.paths) do shapes[i] = "'" .. sh .. "'" end
    local frames = m.paths[1]:find("{frame_list}", 1, true) and "; frames are numbers from 1, comma-separated"
    return nil, format("invalid DICOMweb path '%s' for %s: expected %s (UIDs are digits and dots, at "
      .. "most %d characters%s)%s", shown, m.what, concat(shapes, " or "), dicomweb_names.MAX_UID, frames or "",
      extra or "")
  end
  if q and m.kind ~= "search" then
    return bad("; only search methods take a ?query")
  end
  local ok = false
  for _, shape in ipairs(m.paths) do
    if dicomweb_names.matches_path(base, shape) then ok = true break end
  end
  if not ok then return bad() end
  if not q or q == "" then return base end
  local fine, qerr = dicomweb_names.check_query(q, shown)
  if not fine then return nil, qerr end
  return base, q
end

--------------------------------------------------------------------------------------
-- Parsing
--------------------------------------------------------------------------------------

-- The word at argv[i] when it may be the value of an option typed wrong: an item marked
-- maybe_value (see positional_words). Returns the index after what it took.
local function maybe_value(argv, i, items)
  if argv[i] == nil or argv[i]:sub(1, 1) == "-" then return i end
  items[#items + 1] = { word = argv[i], maybe_value = true }
  return i + 1
end

-- Splits argv into { opt = option, value = ... } and { word = ... } items. Long options
-- take `--name value` or `--name=value`, short ones `-o value` or `-ovalue`; a value is
-- taken verbatim even when it starts with '-'. Everything after `--` is a word. Does
-- not stop at the first error, so that --help still works on a broken line: returns the
-- items and the first message, if any.
local function tokenize(argv)
  local items, first_err = {}, nil
  local function fail(msg) first_err = first_err or msg end
  local i, words_only = 1, false
  while i <= #argv do
    local t = argv[i]
    i = i + 1
    if words_only or t == "-" or t:sub(1, 1) ~= "-" then
      items[#items + 1] = { word = t }
    elseif t == "--" then
      words_only = true
    else
      local name, value
      local long = t:sub(1, 2) == "--"
      if long then
        name, value = t:match("^(%-%-[^=]*)=(.*)$")
        name = name or t
      else
        name, value = t:sub(1, 2), t:sub(3)
        if value == "" then value = nil end
      end
      local o = OPTIONS[name]
      if not o or (value and not long and not o.arg) then
        -- The name alone: what follows '=' may be a token, and so may what follows a short
        -- option's letter, unless it reads as a long option typed with one dash (`-scope`).
        local shown = t:match("^[^=]*")
        if not long and not shown:match("^%-[%l%-]+$") then shown = name end
        fail(format("unknown option '%s'%s%s; valid options: %s", shown, commands.suggestion(shown, OPTION_NAMES),
          HINTS[shown] or "", concat(OPTION_NAMES, ", ")))
        -- The word after an unknown option may be its value (`--access-token ya29...`): never
        -- taken for the command or the method, whose messages would quote it.
        if not value then i = maybe_value(argv, i, items) end
      elseif o.arg then
        if not value then
          value = argv[i]
          i = i + 1
        end
        if value == nil then
          fail(format("option %s needs a value %s", name, o.arg))
        elseif value == "" then
          fail(format("option %s needs a non-empty value %s", name, o.arg))
        else
          items[#items + 1] = { opt = o, value = value }
          -- `-p access-token ya29...`: the word after a -p without '=' may be the value.
          if o.key == "param" and not value:find("=", 1, true) then i = maybe_value(argv, i, items) end
        end
      elseif value then
        fail(format("option %s takes no value", name))
      else
        items[#items + 1] = { opt = o }
      end
    end
  end
  return items, first_err
end

-- The method for the positional words, or nil and a message.
local function resolve(words)
  if words[1] == nil then
    return nil, format("missing command; usage: healthcare [global options] %s <method> "
      .. "<parent> <dicom-web-path> -r . content-type=<type> data=<value>; "
      .. "see healthcare --help", seed.COMMAND)
  end
  if words[1] ~= seed.COMMAND then
    return nil, format("unknown command '%s'; valid commands: %s", words[1], seed.COMMAND)
  end
  if words[2] == nil then
    return nil, format("missing method after '%s'; healthcare %s --help lists all %d, e.g. %s",
      seed.COMMAND, seed.COMMAND, #seed.method_names(), concat({ "locations-datasets-create",
        "locations-datasets-dicom-stores-create", seed.methods[2].name }, ", "))
  end
  local m = seed.find_method(words[2])
  if not m or m.name ~= words[2] then
    return nil, format("unknown method '%s'; %s", words[2], closest_methods(words[2]))
  end
  return m
end

-- --help shows the deepest level named: the program, the command, or a method.
local function help_command(words)
  if words[1] == nil then return { action = "help", help_topic = "top" } end
  if words[1] == seed.COMMAND and words[2] == nil then
    return { action = "help", help_topic = seed.COMMAND }
  end
  local m, err = resolve(words)
  if not m then return nil, err end
  return { action = "help", help_topic = m.id, method = m.id }
end

-- data=@path reads a file, data=@- standard input, data=@@x is the literal "@x" (so a
-- literal can start with '@'); any other data=value is the literal string.
local function data_value(s)
  if s:sub(1, 1) ~= "@" then return s end
  local rest = s:sub(2)
  if rest == "-" then return { stdin = true } end
  if rest:sub(1, 1) == "@" then return rest end
  if rest == "" then
    return nil, "data=@ needs a file name: data=@<file>, or data=@- for standard input"
  end
  return { file = rest }
end

-- Missing required fields of `struct` in `value`, as "a, b", or nil.
local function missing_fields(struct, value)
  local missing = {}
  for _, f in ipairs(struct.fields) do
    if f.required and value[f.key] == nil then missing[#missing + 1] = f.name end
  end
  return #missing > 0 and concat(missing, ", ") or nil
end

-- Reads the --timeout value: seconds, or nil and a message.
local function timeout_value(value)
  local n = value:match("^%d+%.?%d*$") and tonumber(value)
  if not n or n <= 0 or n > 1e9 then
    return nil, format("--timeout needs a number of seconds greater than 0, got '%s'", value)
  end
  return n
end

-- The method's own query parameter named `name` (kebab-case or the API's name), or nil.
local function method_param(method, name)
  if method == nil then return nil end
  for _, q in ipairs(seed.table_entry(method).query) do
    if q.name == name or seed.kebab(q.name) == name then return q end
  end
  return nil
end

-- "unknown parameter 'x' for M (did you mean 'y'?); valid parameters: <the method's>, <standard>"
local function unknown_param(method, name)
  local names = {}
  for _, q in ipairs(method.method.query) do names[#names + 1] = seed.kebab(q.name) end
  for _, p in ipairs(params.list()) do names[#names + 1] = p.cli end
  return format("unknown parameter '%s' for %s%s; valid parameters: %s", name, method.name,
    commands.suggestion(name, names), concat(names, ", "))
end

-- One value of the method's own query parameter q into cmd.params: integers and booleans
-- checked, a repeated parameter's values kept in order. Returns true, or nil and a message.
local function set_method_param(cmd, q, v)
  local shown_name = seed.kebab(q.name)
  if q.type == "integer" and not (v:match("^%-?%d+$") and #v <= 16) then
    return nil, format("parameter %s must be an integer, got '%s'", shown_name, v)
  elseif q.type == "boolean" and v ~= "true" and v ~= "false" then
    return nil, format("parameter %s must be true or false, got '%s'", shown_name, v)
  end
  if cmd.method_query then -- a seed method's: sent in its query, in the order given
    for _, pair in ipairs(cmd.method_query) do
      if pair[1] == q.name then
        pair[2] = v
        return true
      end
    end
    cmd.method_query[#cmd.method_query + 1] = { q.name, v }
  elseif q.type == "repeated" then
    cmd.params[q.name] = cmd.params[q.name] or {}
    cmd.params[q.name][#cmd.params[q.name] + 1] = v
  else
    cmd.params[q.name] = v
  end
  return true
end

-- Reads one -p key=value into cmd.params (a later -p wins; a repeated parameter of the method
-- takes every value). Returns true, or nil and a message.
local function set_param(cmd, value, method)
  local name, v = value:match("^([^=]*)=(.*)$")
  if not name then
    -- Quoted only when it names a parameter: `-p ya29...` would print the token.
    if params.find(value) or method_param(method, value) then
      return nil, format("-p needs <key>=<value>, got '%s'", value)
    end
    return nil, "-p needs <key>=<value>, got a word without '=' (not shown: it may be a secret)"
  end
  if name == "" then
    return nil, "missing parameter name before '=' in -p =<value> (the value not shown: it may be a secret)"
  end
  local q = method_param(method, name)
  if q then
    if method.kind ~= "api" then cmd.method_query = cmd.method_query or {} end
    return set_method_param(cmd, q, v)
  end
  if method and method.kind == "api" and not params.find(name) then return nil, unknown_param(method, name) end
  local wire_value, msg = params.check(name, v)
  if not wire_value then return nil, msg end
  cmd.params[params.to_wire(name)] = wire_value
  return true
end

-- Applies one option item (tokenize's) to the command table `cmd` and the request value `rv`;
-- `state` carries what parse needs after the loop (scopes seen, -r seen, --help asked for).
-- Returns true, or nil and a message.
local function apply_option(cmd, rv, state, key, value)
  if key == "help" then
    state.want_help = true
  elseif key == "scope" then
    if not state.seen_scope[value] then
      state.seen_scope[value] = true
      cmd.scopes[#cmd.scopes + 1] = value
    end
  elseif key == "endpoint" or key == "credentials" or key == "output" or key == "impersonate" or key == "proxy"
      or key == "ca_file" then
    cmd[key] = value
  elseif key == "timeout" then
    local n, msg = timeout_value(value)
    if not n then return nil, msg end
    cmd.timeout = n
  elseif key == "debug" or key == "wait" or key == "all" or key == "insecure" then
    cmd[key] = true
  elseif key == "limit" then
    local n = tonumber(value)
    if not n or n < 1 or n ~= math.floor(n) or n == math.huge then
      return nil, format("--limit must be a whole number of at least 1, got '%s'", value)
    end
    cmd.limit = n
  elseif key == "no_token_cache" then
    cmd.token_cache = false
  elseif key == "request" then
    local m = state.method
    if m and m.kind == "api" and not m.request then
      return nil, format("%s takes no request value (-r): it is a %s of its arguments and -p parameters",
        m.name, m.method.http_method)
    end
    state.has_r = true
    return rv:apply(value)
  elseif key == "param" then
    return set_param(cmd, value, state.method)
  end
  return true
end

-- The positional words among tokenize's items: what is not an option, its value, nor a bare
-- name=value word after a -r (those continue the request value, as in the seed's
-- `-r . content-type=x data=y`).
local function positional_words(items)
  local words, has_r = {}, false
  for _, item in ipairs(items) do
    -- A word that may be the value of an option typed wrong is no positional one (tokenize's or
    -- set_param's error names the option), unless it names the command or a method.
    local skip = item.maybe_value and item.word ~= seed.COMMAND and not seed.find_method(item.word)
    if item.word and not skip and not (has_r and item.word:find("=", 1, true)) then
      words[#words + 1] = item.word
    elseif item.opt and item.opt.key == "request" then
      has_r = true
    end
  end
  return words
end

-- A structure without fields, for a method that takes no request value.
local NO_REQUEST = { name = "(no request value)", fields = {} }

-- The positional words and the rest of argv applied to a new command table and request value
-- (built against the named method's request schema, so the words are read first).
-- Returns words, cmd, rv, state and the first message, if any (--help must still work then).
local function read_items(argv)
  local items, err = tokenize(argv)
  local words = positional_words(items)
  local method = words[1] == seed.COMMAND and words[2] and seed.find_method(words[2]) or nil
  local schema = seed.HttpBody
  if method and method.kind == "api" then schema = method.request or NO_REQUEST end
  local rv = seed.request_value(schema)
  local cmd = { action = "call", params = {}, scopes = {}, debug = false, token_cache = true }
  local state = { seen_scope = {}, has_r = false, want_help = false, method = method }
  for _, item in ipairs(items) do
    local ok, msg = true, nil
    if item.word and state.has_r and item.word:find("=", 1, true) then
      ok, msg = rv:apply(item.word)
    elseif item.opt then
      ok, msg = apply_option(cmd, rv, state, item.opt.key, item.value)
    end
    if not ok then err = err or msg end
  end
  return words, cmd, rv, state, err
end

-- The method's positional arguments into cmd. Returns true, or nil and a message.
local function take_args(method, words, cmd)
  local nargs = #method.args
  if #words < 2 + nargs then
    local missing = {}
    for k = #words - 1, nargs do missing[#missing + 1] = method.args[k].name end
    return nil, format("missing argument%s %s", #missing > 1 and "s" or "", concat(missing, " "))
  end
  if #words > 2 + nargs then
    local extra = words[3 + nargs]
    local hint = ""
    if extra:find("=", 1, true) and method.request then
      hint = "; request value fields go after -r, e.g. -r . "
        .. (method.request == seed.HttpBody and "content-type=<type> data=<value>"
          or (method.request.fields[1] or { name = "<field>" }).name .. "=<value>")
    end
    return nil, format("unexpected argument '%s'%s", extra, hint)
  end
  for k, a in ipairs(method.args) do cmd[a.key] = words[2 + k] end
  return true
end

-- A read or delete method's command: its path checked, no request value.
local function read_command(method, cmd, has_r)
  if has_r then
    return nil, format("%s takes no request value (-r); it is a %s of <dicom-web-path>", method.name,
      method.http_method)
  end
  local path, query = seed.check_path(method, cmd.dicom_web_path)
  if not path then return nil, query end
  -- The method's own query parameters (-p viewport=...), escaped as client:call escapes them.
  local parts = { query }
  for _, pair in ipairs(cmd.method_query or {}) do
    parts[#parts + 1] = request.escape(pair[1]) .. "=" .. request.escape(pair[2])
  end
  cmd.method_query = nil
  cmd.dicom_web_path, cmd.query = path, #parts > 0 and concat(parts, "&") or nil
  return cmd
end

-- A store method's command: the request value complete, its data read as data_value says.
local function store_command(cmd, rv)
  local missing = missing_fields(seed.HttpBody, rv.value)
  if missing then
    return nil, format("missing request value: %s (e.g. -r . content-type=application/dicom "
      .. "data=@file.dcm)", missing)
  end
  if rv.value.content_type == "" then return nil, "content-type must not be empty" end
  local data, derr = data_value(rv.value.data)
  if data == nil then return nil, derr end
  cmd.body = { content_type = rv.value.content_type, data = data }
  return cmd
end

-- The methods answering an Operation, or a list method's: which -- flags fit.
local function check_flags(method, cmd)
  local m = method.method
  if cmd.wait and m.response ~= "Operation" then
    return nil, format("--wait is for methods answering an Operation; %s answers %s", method.name,
      tostring(m.response or "nothing"))
  end
  if cmd.all and not pages.items_field(m) then
    return nil, format("--all is for list methods (pageToken in, nextPageToken out); %s is not one", method.name)
  end
  if cmd.all and cmd.params.pageToken then
    return nil, "--all starts at the first page: not with -p page-token"
  end
  if cmd.limit and not cmd.all then
    return nil, "--limit applies with --all"
  end
  return true
end

-- A method of the table: its arguments as parameters, its request value as the body (JSON, or
-- an HttpBody), the whole call checked as client:call checks it, so that a mistake costs no
-- request. cmd.api is Google's name of the method.
local function api_command(method, cmd, rv, has_r)
  for _, a in ipairs(method.args) do
    cmd.params[a.key] = cmd[a.key]
    cmd[a.key] = nil
  end
  cmd.api = method.api
  if not method.request and has_r then
    return nil, format("%s takes no request value (-r): it is a %s of its arguments and -p parameters",
      method.name, method.method.http_method)
  end
  -- Without -r no body is sent, as Google's client sends none without a request value.
  local body
  if method.request == seed.HttpBody and has_r then
    local hcmd, herr = store_command(cmd, rv)
    if not hcmd then return nil, herr end
    body = cmd.body
  elseif method.request and has_r then
    body = rv.value
    cmd.body = body
  end
  -- data=@- (standard input) is read when the call runs: a placeholder for the check.
  local check_body = body
  if body and type(body.data) == "table" and body.data.stdin then
    check_body = { content_type = body.content_type, data = "" }
  end
  local req, err = request.build(method.api, cmd.params, check_body)
  if not req then
    -- request.build names the Lua call's parameter; the command's is an argument
    local message = err.message
    for _, a in ipairs(method.args) do
      local lua_name = format("parameter '%s' of %s ", a.key, method.api)
      if message:sub(1, #lua_name) == lua_name then
        message = format("argument %s of %s ", a.name, method.name) .. message:sub(#lua_name + 1)
        message = message:gsub("query parameters go in params or opts%.query, not in the path",
          "query parameters go in -p, not in the argument")
      end
    end
    return nil, message
  end
  local ok, ferr = check_flags(method, cmd)
  if not ok then return nil, ferr end
  return cmd
end

--[[
Parses argv (a list of strings, without the program name). Returns a command table, or
nil and a message for a usage error (the caller exits with 2):
  { action = "help", help_topic = "top" | "projects" | <method id>, method = <id> or nil }
  { action = "call", method = "store-instances" | "studies-store-instances",
    parent = ..., dicom_web_path = ...,
    body = { content_type = ..., data = <string> | { file = path } | { stdin = true } },
    params = { [wire name] = value }, scopes = { url, ... } (default: cloud-healthcare),
    output = path or "-" or nil, endpoint = url or nil, credentials = path or nil,
    debug = boolean, token_cache = boolean, timeout = seconds or nil }
  For a read or delete method (no request value): { action = "call", method = <id>, parent,
    dicom_web_path = the path without its query, query = what followed '?' or nil (search
    methods only), params, scopes, output, endpoint, credentials, debug, token_cache }.
]]
function seed.parse(argv)
  local words, cmd, rv, state, err = read_items(argv)
  if state.want_help then return help_command(words) end
  local method, merr = resolve(words)
  -- No word at all: an unknown option may have taken it (as its value); it says more.
  if not method then return nil, words[1] == nil and err or merr end
  if err then return nil, err end
  local ok, aerr = take_args(method, words, cmd)
  if not ok then return nil, aerr end
  cmd.method = method.id
  if #cmd.scopes == 0 then cmd.scopes[1] = params.DEFAULT_SCOPE end
  if method.kind == "api" then return api_command(method, cmd, rv, state.has_r) end
  for _, flag in ipairs({ "wait", "all", "limit" }) do
    if cmd[flag] and not (flag == "wait" and seed.table_entry(method).response == "Operation") then
      return nil, format("--%s is for the methods answering an Operation (--wait) or a list (--all%s); %s "
        .. "prints its answer as it comes", flag, flag == "limit" and " --limit" or "", method.name)
    end
  end
  if not method.request then return read_command(method, cmd, state.has_r) end
  return store_command(cmd, rv)
end

return seed
