-- SPDX-License-Identifier: MIT
-- healthcare.ngx.routes: the gateway's FHIR and HL7v2 prefixes, beside DICOMweb's. Configured
-- with the gateway (healthcare.ngx.configure):
--
--   fhir_store = "projects/P/locations/L/datasets/D/fhirStores/S"   -- serves {fhir_prefix}/...
--   fhir_prefix = "/fhir", fhir_methods = { "GET", "POST", "PUT", "PATCH", "DELETE" }
--   hl7v2_store = "projects/P/locations/L/datasets/D/hl7V2Stores/H" -- serves {hl7v2_prefix}/...
--   hl7v2_prefix = "/hl7v2", hl7v2_methods = { "GET", "POST" }
--
-- FHIR: {prefix}/{type}[/{id}[/_history[/{vid}]]], {prefix}/{type}/{id}/$everything (and other
-- $operations), {prefix}/metadata, and POST {prefix} (executeBundle: a batch or transaction
-- Bundle) map to {api_path}/{fhir_store}/fhir/...; the query goes as it came. HL7v2:
-- {prefix}/messages (create, list), {prefix}/messages:ingest and {prefix}/messages/{id} map to
-- {api_path}/{hl7v2_store}/messages.... Same token handling, streaming both ways (proxy_pass),
-- method allow-lists (405 with Allow) and Google's JSON errors as DICOMweb's; the API's URLs in
-- JSON answers (FHIR fullUrl, link.url, ...) and in Location headers become the gateway's.
local M = {}

M.OPTIONS = { "fhir_store", "fhir_prefix", "fhir_methods", "hl7v2_store", "hl7v2_prefix", "hl7v2_methods" }
M.DEFAULTS = {
  fhir = { prefix = "/fhir", methods = { "GET", "POST", "PUT", "PATCH", "DELETE" } },
  hl7v2 = { prefix = "/hl7v2", methods = { "GET", "POST" } },
}
local STORE_RE = { fhir = "^projects/[%w._-]+/locations/[%w._-]+/datasets/[%w._-]+/fhirStores/[%w._-]+$",
  hl7v2 = "^projects/[%w._-]+/locations/[%w._-]+/datasets/[%w._-]+/hl7V2Stores/[%w._-]+$" }
local WHAT = { fhir = "FHIR store", hl7v2 = "HL7v2 store" }

-- One path segment of a FHIR or HL7v2 path: resource types, ids, versions, $operations.
local function safe_segment(s)
  return s ~= "" and s ~= "." and s ~= ".." and s:match("^%$?[%w._-]+$") ~= nil
end

local function bad(fmt, ...)
  error("healthcare.ngx.configure: " .. string.format(fmt, ...), 4)
end

-- The route of one kind from the options, or nil when its store is not configured.
local function route_of(kind, opts, api_origin, api_path)
  local store = opts[kind .. "_store"]
  if store == nil then return nil end
  if type(store) ~= "string" or not store:match(STORE_RE[kind]) then
    bad("bad option '%s_store' (a %s name like %s expected, got %s)", kind, WHAT[kind],
      STORE_RE[kind]:gsub("%[%%w%._%-%]%+", "X"):gsub("[%^%$]", ""), tostring(store):gsub("%c", "?"))
  end
  local prefix = opts[kind .. "_prefix"] or M.DEFAULTS[kind].prefix
  if type(prefix) ~= "string" or not prefix:match("^/[%w._/-]*[%w._-]$") then
    bad("bad option '%s_prefix' (a path like %s expected)", kind, M.DEFAULTS[kind].prefix)
  end
  local methods = opts[kind .. "_methods"] or M.DEFAULTS[kind].methods
  if type(methods) ~= "table" then bad("bad option '%s_methods' (a list like { \"GET\" } expected)", kind) end
  local allowed = {}
  for _, m in ipairs(methods) do allowed[m] = true end
  local tail = kind == "fhir" and "/fhir" or ""
  return { kind = kind, store = store, prefix = prefix, methods = methods, allowed = allowed,
    upstream_root = api_origin:gsub("/$", "") .. api_path .. "/" .. store .. tail }
end

--- The routes of the gateway's options (a list, longest prefix first), or nil when none is
--- configured. Raises for a bad option (nginx refuses to start and says why).
function M.configure(opts, api_origin, api_path, dicom_prefix)
  local list = {}
  for _, kind in ipairs({ "fhir", "hl7v2" }) do
    local r = route_of(kind, opts, api_origin, api_path)
    if r then
      for _, other in ipairs(list) do
        if other.prefix == r.prefix then bad("fhir_prefix and hl7v2_prefix are both %s", r.prefix) end
      end
      if r.prefix == dicom_prefix then bad("%s_prefix is the DICOMweb prefix %s", kind, r.prefix) end
      list[#list + 1] = r
    end
  end
  if #list == 0 then return nil end
  table.sort(list, function(a, b) return #a.prefix > #b.prefix end)
  return list
end

--- The route serving uri (its prefix, then '/' or the end), or nil (DICOMweb's).
function M.find(routes, uri)
  for _, r in ipairs(routes or {}) do
    local rest = uri:sub(#r.prefix + 1)
    if uri:sub(1, #r.prefix) == r.prefix and (rest == "" or rest:sub(1, 1) == "/") then return r, rest end
  end
  return nil
end

-- The FHIR path after the prefix: "" (executeBundle, POST only) or segments that are safe.
local function fhir_path(rest, method)
  rest = rest:gsub("/$", "")
  if rest == "" then
    if method ~= "POST" then return nil, "a Bundle is POSTed to the FHIR root; resources are under /{type}" end
    return ""
  end
  local n = 0
  for seg in rest:gmatch("[^/]+") do
    n = n + 1
    if not safe_segment(seg) then return nil, "not a FHIR path" end
  end
  if rest:find("//", 1, true) or n > 5 then return nil, "not a FHIR path" end
  return rest
end

local HL7V2_PATHS = { "^/messages$", "^/messages:ingest$", "^/messages/[%w_=-]+$" }

--- The upstream path for a request of route r, or nil, status, message.
function M.map_path(r, rest, method, api_path)
  local base = api_path .. "/" .. r.store
  if r.kind == "fhir" then
    local path, why = fhir_path(rest, method)
    if not path then return nil, 404, why .. " under " .. r.prefix .. "/" end
    return base .. "/fhir" .. path
  end
  rest = rest:gsub("/$", "")
  for _, p in ipairs(HL7V2_PATHS) do
    if rest:match(p) then return base .. rest end
  end
  return nil, 404, "the HL7v2 gateway serves " .. r.prefix .. "/messages, " .. r.prefix
    .. "/messages:ingest and " .. r.prefix .. "/messages/{id}"
end

--- The route's root as the client reached it: public_url's origin and the route's prefix when
--- public_url is set, else the request's scheme and host (see healthcare.ngx).
function M.client_root(r, dicom_root, dicom_prefix)
  local origin = dicom_root:sub(1, #dicom_root - #dicom_prefix)
  if dicom_root:sub(-#dicom_prefix) ~= dicom_prefix then
    origin = dicom_root:match("^(%a[%w+.-]*://[^/]+)") or dicom_root
  end
  return origin .. r.prefix
end

--- A Location (or Content-Location) header value with the API's root made the gateway's.
function M.rewrite_location(value, from, to)
  if type(value) ~= "string" or value:sub(1, #from) ~= from then return value end
  local nxt = value:sub(#from + 1, #from + 1)
  if nxt ~= "" and nxt ~= "/" and nxt ~= "?" and nxt ~= "#" then return value end
  return to .. value:sub(#from + 1)
end

return M
