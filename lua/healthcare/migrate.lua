-- SPDX-License-Identifier: MIT
-- The server-side routes of a migration, as long-running operations Google runs on its own
-- workers: import from Cloud Storage into a DICOM or FHIR store, export of a store to Cloud
-- Storage or BigQuery, de-identification of a store or a dataset into a new one. Each builds
-- the request body from a URI and options, checks what it can before anything is sent (a gs://
-- URI without a bucket, a malformed bq:// URI, a name that is no store of the right kind), and
-- goes through client:call with wait = true (or returns the Operation with wait = false).
-- store:import, store:export and store:deidentify (healthcare.dicomweb) are these on a store's
-- own dicomStore. Each returns the operation's response and the final Operation; or nil, err
-- (an operation that ended with an error: kind "operation", err.metadata its counters).
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

local DS = "projects.locations.datasets."
local NAME = "^projects/[^/]+/locations/[^/]+/datasets/[^/]+"
-- The options every route takes: waiting (client:call's) and wait itself.
local WAIT_OPTIONS = { "wait", "on_progress", "operation_timeout", "poll_interval", "timeout", "retry" }
M.IMPORT_OPTIONS = { "content_structure" }
M.EXPORT_OPTIONS = { "mime_type", "force", "write_disposition" }
M.DEIDENTIFY_OPTIONS = { "config", "gcs_config_uri" }
M.WRITE_DISPOSITIONS = { "WRITE_EMPTY", "WRITE_TRUNCATE", "WRITE_APPEND" }
M.CONTENT_STRUCTURES = { "BUNDLE", "RESOURCE", "BUNDLE_PRETTY", "RESOURCE_PRETTY" }

local function usage(fmt, ...)
  return nil, errors.new("usage", string.format(fmt, ...))
end

--- The kind of a resource name: "dicomStores", "fhirStores", "hl7V2Stores" or "dataset"; nil
--- for anything else.
function M.kind_of(name)
  if type(name) ~= "string" then return nil end
  local kind = name:match(NAME .. "/(%w+)/[^/]+$")
  if kind == "dicomStores" or kind == "fhirStores" or kind == "hl7V2Stores" then return kind end
  if name:match(NAME .. "$") then return "dataset" end
  return nil
end

-- The store `name` when it is of one of the kinds (a set), or nil, err naming what was expected.
local function need_kind(name, kinds, what)
  local kind = M.kind_of(name)
  if kind and kinds[kind] then return kind end
  return usage("%s: '%s' is not %s", what, util.printable(tostring(name)), kinds.shown)
end

-- Cloud Storage's bucket naming rules: why `bucket` breaks them, or nil.
local function bucket_problem(bucket)
  if #bucket < 3 or #bucket > 222 then return "a bucket name has 3 to 63 characters" end
  if not bucket:match("^[a-z0-9][a-z0-9._%-]*[a-z0-9]$") then
    return "a bucket name has lowercase letters, digits, -, _ and ., and starts and ends with a letter or digit"
  end
  if not bucket:find(".", 1, true) and #bucket > 63 then return "a bucket name has 3 to 63 characters" end
  for part in (bucket .. "."):gmatch("([^.]*)%.") do
    if #part == 0 or #part > 63 then return "a bucket name has dot-separated parts of 1 to 63 characters" end
  end
  return nil
end

--- Checks a gs:// URI: gs://BUCKET/OBJECT (need_object: an object or pattern after the bucket,
--- as an import's source; otherwise a prefix, possibly empty). Returns the bucket and the rest,
--- or nil, err (kind "usage") saying what is wrong.
function M.check_gs(uri, need_object)
  if type(uri) ~= "string" or uri:sub(1, 5) ~= "gs://" then
    return usage("'%s' is not a Cloud Storage URI gs://BUCKET/%s", util.printable(tostring(uri)),
      need_object and "OBJECT" or "PREFIX")
  end
  if uri:find("[%c]") then return usage("the Cloud Storage URI holds a control character") end
  local bucket, rest = uri:sub(6):match("^([^/]*)/?(.*)$")
  if bucket == "" then return usage("'%s' names no bucket: gs://BUCKET/... expected", util.printable(uri)) end
  local why = bucket_problem(bucket)
  if why then return usage("'%s': invalid bucket name '%s': %s", util.printable(uri), util.printable(bucket), why) end
  if need_object and rest == "" then
    return usage("'%s' names no object: gs://%s/OBJECT (or a pattern: gs://%s/dir/**.dcm) expected",
      util.printable(uri), bucket, bucket)
  end
  return bucket, rest
end

--- Checks a bq:// URI: bq://PROJECT.DATASET.TABLE (a DICOM store's export), or bq://PROJECT.DATASET
--- with `dataset_only` (a FHIR store's, which writes a table per resource type). Returns the
--- URI, or nil, err.
function M.check_bq(uri, dataset_only)
  local shape = dataset_only and "bq://PROJECT.DATASET" or "bq://PROJECT.DATASET.TABLE"
  local project
  if type(uri) == "string" and #uri <= 2000 and uri:sub(1, 5) == "bq://" then
    if dataset_only then
      project = uri:sub(6):match("^(.+)%.[%w_]+$")
    else
      project = uri:sub(6):match("^(.+)%.[%w_]+%.[%w_%-]+$")
    end
  end
  -- A project id (6 to 30 characters), or a domain-scoped one: example.com:project-id.
  local id = project and (project:match("^[%w.%-]+:([^:]+)$") or project)
  if not (id and #id >= 6 and #id <= 30 and id:match("^[a-z][a-z0-9%-]*[a-z0-9]$")) then
    return usage("'%s' is not a BigQuery %s %s (a project id has 6 to 30 lowercase letters, digits and -)",
      util.printable(tostring(uri)), dataset_only and "dataset" or "table", shape)
  end
  return uri
end

-- Raises for a misuse of a route's options (`extra`: its own); returns them.
local function check_options(opts, extra, fname)
  local valid = {}
  for _, k in ipairs(WAIT_OPTIONS) do valid[#valid + 1] = k end
  for _, k in ipairs(extra) do valid[#valid + 1] = k end
  opts = util.check_options(opts, valid, fname, 3)
  util.check_option(opts.wait, "wait", fname, "boolean", 3)
  for _, k in ipairs({ "content_structure", "mime_type", "write_disposition", "gcs_config_uri" }) do
    util.check_option(opts[k], k, fname, "string", 3)
  end
  util.check_option(opts.force, "force", fname, "boolean", 3)
  util.check_option(opts.config, "config", fname, "table", 3)
  return opts
end

local function one_of(value, list, what)
  for _, v in ipairs(list) do
    if v == value then return true end
  end
  return usage("%s '%s' is not one of %s", what, util.printable(value), table.concat(list, ", "))
end

-- client:call of the method on the resource `name` (the parameter `param`: "name" unless
-- said) with wait as opts say (default true).
local function start(client, method, name, body, opts, param)
  local wait = opts.wait ~= false
  local res, other = client:call(method, { [param or "name"] = name }, body, {
    wait = wait, on_progress = wait and opts.on_progress or nil, timeout = opts.timeout, retry = opts.retry,
    operation_timeout = wait and opts.operation_timeout or nil, poll_interval = wait and opts.poll_interval or nil,
  })
  return res, other
end

local STORES = { dicomStores = true, fhirStores = true, shown = "a dicomStore or fhirStore name" }

-- Import from Cloud Storage into a DICOM store (uri: gs://BUCKET/path, wildcards * ** ?) or a
-- FHIR store (opts.content_structure: BUNDLE, RESOURCE, ...).
local function run_import(client, name, uri, opts)
  local kind, err = need_kind(name, STORES, "import")
  if not kind then return nil, err end
  local ok
  ok, err = M.check_gs(uri, true)
  if not ok then return nil, err end
  local body = { gcsSource = { uri = uri } }
  if kind == "fhirStores" then
    local cs = opts.content_structure or "BUNDLE"
    ok, err = one_of(cs, M.CONTENT_STRUCTURES, "content structure")
    if not ok then return nil, err end
    body.contentStructure = cs
  elseif opts.content_structure then
    return usage("import: content_structure applies to a FHIR store, not to %s", util.printable(name))
  end
  return start(client, DS .. kind .. ".import", name, body, opts)
end

-- The destination of an export, checked: { bigqueryDestination = ... } for bq:// (a DICOM store
-- exports to a table, a FHIR store to a dataset: `fhir`), else { gcsDestination = ... }; or nil,
-- err. extra: fields of the destination's table (the DICOM MIME type, the FHIR schema).
local function export_destination(destination, opts, fhir, bq_extra, gcs_extra)
  if destination:sub(1, 5) == "bq://" then
    local ok, err = M.check_bq(destination, fhir)
    if not ok then return nil, err end
    if opts.write_disposition then
      ok, err = one_of(opts.write_disposition, M.WRITE_DISPOSITIONS, "write disposition")
      if not ok then return nil, err end
    end
    local bq = { force = opts.force, writeDisposition = opts.write_disposition }
    bq[fhir and "datasetUri" or "tableUri"] = destination
    for k, v in pairs(bq_extra or {}) do bq[k] = v end
    return { bigqueryDestination = bq }
  end
  if opts.force ~= nil or opts.write_disposition then
    return usage("export: force and write_disposition apply to a BigQuery destination (bq://...)")
  end
  local ok, err = M.check_gs(destination, false)
  if not ok then return nil, err end
  local gcs = { uriPrefix = destination }
  for k, v in pairs(gcs_extra or {}) do gcs[k] = v end
  return { gcsDestination = gcs }
end

-- The body of a DICOM store's export to `destination`, or nil, err.
local function dicom_export_body(destination, opts)
  if opts.mime_type and destination:sub(1, 5) == "bq://" then
    return usage("export: a MIME type applies to a Cloud Storage destination")
  end
  return export_destination(destination, opts, false, nil, { mimeType = opts.mime_type })
end

-- The body of a FHIR store's export to `destination`, or nil, err.
local function fhir_export_body(destination, opts)
  if opts.mime_type then return usage("export: a MIME type applies to a DICOM store") end
  return export_destination(destination, opts, true, { schemaConfig = { schemaType = "ANALYTICS_V2" } })
end

-- Export a DICOM or FHIR store to Cloud Storage (gs://BUCKET/prefix) or BigQuery (bq://...):
-- opts.mime_type (DICOM to Cloud Storage: "application/dicom; transfer-syntax=..."), opts.force
-- and opts.write_disposition (BigQuery).
local function run_export(client, name, destination, opts)
  local kind, err = need_kind(name, STORES, "export")
  if not kind then return nil, err end
  local body
  if kind == "dicomStores" then
    body, err = dicom_export_body(destination, opts)
  else
    body, err = fhir_export_body(destination, opts)
  end
  if not body then return nil, err end
  return start(client, DS .. kind .. ".export", name, body, opts)
end

local SOURCES = { dicomStores = true, fhirStores = true, dataset = true,
  shown = "a dataset, dicomStore or fhirStore name" }

-- De-identify a dataset into a new dataset, or a DICOM or FHIR store into a new store (of
-- any dataset): opts.config (the API's DeidentifyConfig as a table) or opts.gcs_config_uri
-- (gs://... of a JSON DeidentifyConfig).
local function run_deidentify(client, source, destination, opts)
  local kind, err = need_kind(source, SOURCES, "deidentify")
  if not kind then return nil, err end
  local dest_kind = M.kind_of(destination)
  if dest_kind ~= kind then
    return usage("deidentify: the destination '%s' is not a %s name, as the source is", util.printable(destination),
      kind == "dataset" and "dataset" or kind:sub(1, -2))
  end
  if opts.config and opts.gcs_config_uri then
    return usage("deidentify: config and gcs_config_uri are one or the other")
  end
  if opts.gcs_config_uri then
    local ok, gerr = M.check_gs(opts.gcs_config_uri, true)
    if not ok then return nil, gerr end
  end
  local body = { config = opts.config, gcsConfigUri = opts.gcs_config_uri }
  if kind == "dataset" then body.destinationDataset = destination else body.destinationStore = destination end
  return start(client, (kind == "dataset" and DS or DS .. kind .. ".") .. "deidentify", source, body, opts,
    kind == "dataset" and "sourceDataset" or "sourceStore")
end

-- The routes as the README states them: misuse raises at the caller's line.
local ROUTES = {
  import = { run = run_import, options = M.IMPORT_OPTIONS },
  export = { run = run_export, options = M.EXPORT_OPTIONS },
  deidentify = { run = run_deidentify, options = M.DEIDENTIFY_OPTIONS },
}

for fname, route in pairs(ROUTES) do
  --- migrate.import(client, name, uri, opts), migrate.export(client, name, destination, opts),
  --- migrate.deidentify(client, source, destination, opts).
  M[fname] = function(client, name, target, opts)
    util.check_self(client, "healthcare.Client", fname)
    util.check_arg(name, 1, fname, "string")
    util.check_arg(target, 2, fname, "string")
    opts = check_options(opts, route.options, fname)
    return route.run(client, name, target, opts)
  end
  --- store:import(uri, opts), store:export(destination, opts), store:deidentify(destination,
  --- opts): the same on the store's dicomStore (a plain DICOMweb server has none: kind "usage").
  M["store_" .. fname] = function(store, target, opts)
    util.check_self(store, "healthcare.Store", fname)
    util.check_arg(target, 1, fname, "string")
    opts = check_options(opts, route.options, fname)
    if not store.parent then
      return usage("%s: %s is a DICOMweb server, not a Google dicomStore: it has no %s", fname,
        util.printable(store.name), fname)
    end
    return route.run(store.client, store.parent, target, opts)
  end
end

return M
