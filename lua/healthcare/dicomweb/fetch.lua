-- SPDX-License-Identifier: MIT
-- store:fetch: one DICOMweb request of a resource path below the store's base URL, its answer as
-- it came (any status), in memory or streamed byte for byte to one file. The level below
-- search_*, retrieve_* and delete_*, for callers that want the wire answer itself (the command's
-- seed form writes it as received): the path is checked against DICOMweb's resource shapes
-- (healthcare.dicomweb.names), the Accept value and the content coding follow from what the path
-- names (healthcare.dicomweb.media), and the request goes the client's one way (client:send).
local api_send = require "healthcare.api.send"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local params = require "healthcare.params"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "method", "query", "params", "to", "max_bytes", "timeout", "idle_timeout", "min_speed",
  "compressed", "max_compression_ratio", "on_progress", "retry", "on_retry" }
local METHODS = { GET = true, DELETE = true }

--- What a request names, by its method and path (checked): "delete", "search" (studies, series
--- or instances without a UID after them), "metadata", "rendered", "frames" or "retrieve".
function M.kind_of(method, path)
  if method == "DELETE" then return "delete" end
  local last = path:match("([^/]*)$")
  if last == "metadata" or last == "rendered" then return last end
  if path:find("/frames/", 1, true) then return "frames" end
  if last == "studies" or last == "series" or last == "instances" then return "search" end
  return "retrieve"
end

-- Raises for a misuse (level 3 from here: the user's line); returns the options.
local function check_call(store, path, opts)
  util.check_self(store, "healthcare.Store", "fetch", 3)
  util.check_arg(path, 1, "fetch", "string", 3)
  opts = util.check_options(opts, M.OPTIONS, "fetch", 3)
  if opts.method ~= nil and not METHODS[opts.method] then
    error(string.format("bad option 'method' to 'fetch' ('GET' or 'DELETE' expected, got %s)",
      type(opts.method) == "string" and ("'" .. opts.method .. "'") or type(opts.method)), 3)
  end
  for name, types in pairs({ query = "string", params = "table", to = "string", compressed = "boolean",
    on_progress = "function", on_retry = "function" }) do
    util.check_option(opts[name], name, "fetch", types, 3)
  end
  util.check_number(opts.max_bytes, "max_bytes", "fetch", "whole >= 1", 3)
  for _, name in ipairs({ "timeout", "idle_timeout", "min_speed", "max_compression_ratio" }) do
    util.check_number(opts[name], name, "fetch", ">= 0", 3)
  end
  retry.check(opts.retry, "fetch", 3)
  return opts
end

-- The path, checked against every DICOMweb resource shape; nil, err (kind "usage") for another.
local function check_path(path, query)
  local ok = false
  for _, shape in ipairs(names.PATHS) do
    if names.matches_path(path, shape) then ok = true break end
  end
  if not ok then
    return nil, errors.new("usage", string.format("invalid DICOMweb path '%s': expected a DICOMweb resource "
      .. "such as studies, studies/{uid}/series/{uid}/metadata or .../instances/{uid}/frames/1,2 (UIDs are "
      .. "digits and dots, at most %d characters)", path, names.MAX_UID))
  end
  if query and query ~= "" then
    local fine, why = names.check_query(query, path .. "?" .. query)
    if not fine then return nil, errors.new("usage", why) end
  end
  return true
end

--- store:fetch(dicom_web_path, opts): GET (or opts.method "DELETE") {base}/{dicom_web_path}
--- [?opts.query, sent as typed], asking for what the path names as stored (media.ACCEPT): JSON
--- compressed (gzip, decoded as it comes), bytes as they are. opts.to: a file the answer is
--- streamed to (a temporary file beside it, renamed once whole); else the answer is held in
--- memory, capped at opts.max_bytes (default the client's 64 MiB). Sent again as client:call
--- sends a GET or a DELETE (opts.retry, else the client's: healthcare.api.send.retry_of), with
--- opts.on_retry(err, seconds, attempt) told before each wait, as a search's (the answer that
--- failed as the error value it is: "GET studies: HTTP 503 ..."). Returns the last attempt's raw
--- response { status, headers, body or file, bytes } of any HTTP status, or nil, err.
function M.fetch(store, dicom_web_path, opts)
  opts = check_call(store, dicom_web_path, opts)
  local ok, perr = check_path(dicom_web_path, opts.query)
  if not ok then return nil, perr end
  local query, qerr = params.query(opts.params)
  if not query then return nil, qerr end
  local method = opts.method or "GET"
  local kind = M.kind_of(method, dicom_web_path)
  local compressed = opts.compressed
  if compressed == nil then compressed = media.JSON_KINDS[kind] == true end
  local q = opts.query ~= nil and opts.query ~= "" and ("?" .. opts.query) or ""
  if opts.to then
    local made, why = util.make_dirs(util.parent_dir(opts.to))
    if not made then return nil, errors.new("io", why) end
  end
  local url, uerr = route.url(store, method, dicom_web_path)
  if not url then return nil, uerr end
  local again = api_send.retry_of(method)
  return retry.new(nil, opts.retry, store.client.retry):run(function()
    return store.client:send {
      method = method,
      url = url .. q,
      headers = { "Accept: " .. media.ACCEPT[kind] },
      query = query,
      sink = opts.to and { file = opts.to, max_bytes = opts.max_bytes } or nil,
      max_response_bytes = not opts.to and opts.max_bytes or nil,
      timeout = opts.timeout,
      idle_timeout = opts.idle_timeout,
      min_speed = opts.min_speed,
      compressed = compressed,
      max_compression_ratio = opts.max_compression_ratio,
      on_progress = opts.on_progress,
    }
  end, again, nil, nil, api_send.on_wait_of(opts.on_retry, store.client, method .. " " .. dicom_web_path))
end

return M
