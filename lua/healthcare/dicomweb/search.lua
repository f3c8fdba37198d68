-- SPDX-License-Identifier: MIT
-- Search (QIDO-RS, PS3.18 10.6): SearchForStudies, SearchForSeries, SearchForInstances.
-- The query is checked whole before anything is sent; results come page by page (limit and
-- offset) as the caller iterates, each item a DICOM JSON data set wrapped for keyword access.
local core = require "healthcare.core"
local dicomjson = require "healthcare.dicomweb.dicomjson"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local params = require "healthcare.params"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local util = require "healthcare.util"

local M = {}

M.DEFAULT_PAGE_SIZE = 100
-- A page of results is held in memory, then decoded into tables: its JSON (counted decoded, as it
-- arrives; pages are asked for gzip-compressed) is capped.
M.DEFAULT_MAX_PAGE_BYTES = 64 * 1024 * 1024
-- A page of more results than max(limit asked, page_size) times this is refused before its
-- results are made (each takes several tables: 15 MB of "{}" items took 3.3 GB).
M.MAX_PAGE_ITEMS_FACTOR = 10
M.OPTIONS = { "page_size", "params", "timeout", "max_page_bytes", "retry", "on_retry" }

local STUDY_UID, SERIES_UID = "0020000D", "0020000E"
-- The UID that names a result, per level.
local RESULT_UID = { studies = STUDY_UID, series = SERIES_UID, instances = "00080018" }
local MODALITIES_IN_STUDY = "00080061"

-- Characters sent as they are in attribute values. Orthanc (1.10, DICOMweb plugin 1.7) does
-- not percent-decode QIDO values (only "%2C"): "PatientID=AB%2A" looks for "AB%2A", so the
-- DICOM matching characters (* ? , - . ^ : /) must reach it raw. They are legal in a query
-- (RFC 3986 pchar, plus "^" which servers accept), so Google reads them alike. Everything
-- else (space, & = + # % \ and non-ASCII) is percent-encoded; Orthanc then matches the
-- encoded text, which only a wildcard can get around.
local function escape_value(s)
  return (s:gsub("[^%w%-._~*?,^:@/!$'();]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function usage(what, fmt, ...)
  return nil, errors.new("usage", what .. ": " .. string.format(fmt, ...))
end

-- A value quoted in an error message goes in as it is: tostring(err) makes the message printable.
local shown = tostring

-- A count (limit, offset, page_size): a non-negative integer, as a number or a string.
local function count_of(v)
  local n = tonumber(v)
  if type(v) ~= "number" and not (type(v) == "string" and v:match("^%d+$")) then return nil end
  if not n or n < 0 or n ~= math.floor(n) or n >= 2 ^ 53 then return nil end
  return n
end

local function int_string(n)
  return string.format("%d", n)
end

-- "PatientID", "00100020" or a sequence path "ReferencedSeriesSequence.SeriesInstanceUID"
-- -> the wire form with tags ("00081115.0020000E"), the last tag; or nil.
local function attribute_path(key)
  local tags, last = {}, nil
  for part in (key .. "."):gmatch("([^.]*)%.") do
    last = dicomjson.to_tag(part)
    if not last then return nil end
    tags[#tags + 1] = last
  end
  if #tags == 0 then return nil end
  return table.concat(tags, "."), last
end

-- One attribute value as sent: a string, a number, or a list (UID list matching, joined with
-- ","). Returns the text or nil, reason.
local function attribute_value(v, tag)
  local list = type(v) == "table" and v or { v }
  if type(v) == "table" and #v == 0 then return nil, "an empty list matches nothing" end
  local out = {}
  for i, x in ipairs(list) do
    if type(x) == "number" then
      x = x == math.floor(x) and int_string(x) or tostring(x)
    elseif type(x) ~= "string" then
      return nil, "must be a string, a number or a list of them, got " .. type(x)
    end
    if x:find("%c") then return nil, "contains a control character" end
    if #list > 1 and x:find(",", 1, true) then
      return nil, "a list item contains ','"
    end
    if dicomjson.vr_of(tag) == "UI" and not (x == "" and #list == 1) then
      if not names.valid_uid(x) then
        return nil, "'" .. shown(x) .. "' is not a UID (digits and dots, at most 64 characters)"
      end
    end
    out[i] = x
  end
  return table.concat(out, ",")
end

--- Checks a query and turns it into { pairs = { {name, value}... }, study =, series =, limit =,
--- offset = }. level: "studies" | "series" | "instances". Returns it or nil, err.
function M.compile(query, level, what)
  if query == nil then query = {} end
  if type(query) ~= "table" then return usage(what, "the query must be a table, got %s", type(query)) end
  local q = { attrs = {}, includefield = {} }
  local seen = {}
  local keys = {}
  for k in pairs(query) do
    if type(k) ~= "string" then return usage(what, "query keys must be strings, got %s", type(k)) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = query[k]
    if k == "limit" or k == "offset" then
      local n = count_of(v)
      if not n or (k == "limit" and n == 0) then
        local kind = k == "limit" and "positive" or "non-negative"
        return usage(what, "%s must be a %s integer, got '%s'", k, kind, shown(v))
      end
      q[k] = n
    elseif k == "fuzzymatching" then
      if v == "true" or v == "false" then v = v == "true" end
      if type(v) ~= "boolean" then return usage(what, "fuzzymatching must be true or false, got '%s'", shown(v)) end
      q.fuzzymatching = v
    elseif k == "includefield" then
      local list = type(v) == "table" and v or { v }
      for _, f in ipairs(list) do
        if type(f) ~= "string" then return usage(what, "includefield must be a string or a list of strings") end
        local wire = f == "all" and "all" or attribute_path(f)
        if not wire then return usage(what, "includefield: unknown attribute '%s'", shown(f)) end
        q.includefield[#q.includefield + 1] = wire
      end
    else
      local wire, tag = attribute_path(k)
      if not wire then
        return usage(what, "unknown attribute '%s' (a DICOM keyword such as PatientID, or a tag such as 00100020)",
          shown(k))
      end
      if seen[wire] then return usage(what, "attribute %s is given twice ('%s' and '%s')", wire, seen[wire], k) end
      seen[wire] = k
      local text, why = attribute_value(v, tag)
      if not text then return usage(what, "%s %s", k, why) end
      q.attrs[wire] = { value = text, raw = v }
    end
  end
  -- A single UID scopes the path (studies/{uid}/series...); a list stays a matching key.
  local function scope(tag)
    local a = q.attrs[tag]
    if a and type(a.raw) == "string" and a.raw ~= "" then
      q.attrs[tag] = nil
      return a.raw
    end
  end
  if level == "series" or level == "instances" then q.study = scope(STUDY_UID) end
  if level == "instances" and q.study then q.series = scope(SERIES_UID) end
  return q
end

local function path_of(q, level)
  if level == "studies" then return "studies" end
  if level == "series" then
    return q.study and ("studies/" .. q.study .. "/series") or "series"
  end
  if q.series then return "studies/" .. q.study .. "/series/" .. q.series .. "/instances" end
  return q.study and ("studies/" .. q.study .. "/instances") or "instances"
end

local function query_text(q, limit, offset)
  local keys = {}
  for name in pairs(q.attrs) do keys[#keys + 1] = name end
  table.sort(keys)
  local out = {}
  for _, name in ipairs(keys) do out[#out + 1] = name .. "=" .. escape_value(q.attrs[name].value) end
  if #q.includefield > 0 then out[#out + 1] = "includefield=" .. table.concat(q.includefield, ",") end
  if q.fuzzymatching ~= nil then out[#out + 1] = "fuzzymatching=" .. tostring(q.fuzzymatching) end
  if limit then out[#out + 1] = "limit=" .. int_string(limit) end
  if offset and offset > 0 then out[#out + 1] = "offset=" .. int_string(offset) end
  return table.concat(out, "&")
end

-- Results ----------------------------------------------------------------------------------

local Results = {}
Results.__index = Results
Results.__name = "healthcare.Results"
M.Results = Results

-- The error of a 2xx answer the search cannot take, every such refusal worded alike:
-- "<what>: HTTP <status>: <why>" (why: string.format(fmt, ...)).
local function refused(self, status, fmt, ...)
  return errors.new("http", string.format("%s: HTTP %d: ", self.what, status) .. string.format(fmt, ...),
    { http_status = status })
end

-- One attempt at a page: the list of raw data sets, or nil, err. Sets self.warning from a
-- Warning header.
local function fetch_once(self, limit, offset)
  local qs = query_text(self.q, limit, offset)
  local res, err = self.store.client:send {
    method = "GET",
    url = self.url .. (qs ~= "" and ("?" .. qs) or ""),
    headers = { "Accept: " .. media.ACCEPT.search },
    query = self.params,
    timeout = self.timeout,
    compressed = true,
    max_response_bytes = self.max_page_bytes,
  }
  self.requests = self.requests + 1
  if not res then
    if err.status == "response_too_large" then
      err.option = "max_page_bytes"
      err.message = string.format("%s: a page of results is larger than %.0f bytes (option max_page_bytes; "
        .. "or a smaller page_size)", self.what, self.max_page_bytes)
    end
    return nil, err
  end
  if res.status == 204 then return {} end
  if res.status < 200 or res.status > 299 then return nil, errors.from_response(res, self.what) end
  -- Google says so when it returned fewer results than asked (its cap on limit).
  if res.headers.warning then self.warning = res.headers.warning end
  if (res.body or ""):match("^%s*$") then return {} end
  -- Text whatever its media type says (the client leaves a 2xx body it does not take for text as
  -- it came): an echo of the token must reach neither the results nor the error.
  local body = self.store.client:redact(res.body)
  -- A JSON array only: decoded, "{}" and "[]" are the same empty table.
  local list, why = nil, "not a JSON array"
  if body:find("^%s*%[") then list, why = util.decode_json(body) end
  if type(list) ~= "table" or (next(list) ~= nil and #list == 0) then
    return nil, refused(self, res.status, "the answer is not a DICOM JSON list (%s): %s", why or "not a list",
      (body:gsub("%s+", " "):sub(1, 200)))
  end
  local most = self.page_size * M.MAX_PAGE_ITEMS_FACTOR
  if limit and limit * M.MAX_PAGE_ITEMS_FACTOR > most then most = limit * M.MAX_PAGE_ITEMS_FACTOR end
  if limit and #list > most then
    return nil, refused(self, res.status, "the server answered %d results to a request for at most %s; refused "
      .. "above %d (it ignores limit?)", #list, int_string(limit), most)
  end
  for i, item in ipairs(list) do
    if type(item) ~= "table" then
      return nil, refused(self, res.status, "result %d is not a DICOM JSON object", i)
    end
  end
  return list, res
end

-- A page's first and last results' UIDs ("uid uid"), to tell a page seen already; nil when
-- either has none.
local function page_ends(list, tag)
  local ends = {}
  for i, item in ipairs({ list[1], list[#list] }) do
    local e = item and item[tag]
    local v = type(e) == "table" and type(e.Value) == "table" and e.Value[1]
    if type(v) ~= "string" then return nil end
    ends[i] = v
  end
  return table.concat(ends, " ")
end

-- Why a page cannot be taken after the ones before, or nil and what tells the pages so far from
-- the next: seen (nil before the first page), a set of 16-hex-digit keys, one for the UIDs at
-- each page's ends (page_ends; none without UIDs) and one for its body's SHA-256. A server that
-- ignores offset answers the same page for ever, or goes round a few: the same UIDs at a page's
-- ends or, where its results have none, the same bytes as a page before (no two pages can both
-- be the same results). One that ignores limit as well answers from the first result whatever
-- offset says. (About 100 bytes a page: a million results in pages of 100 keep 1 MB.)
local function page_refusal(self, list, res, ask, at, seen)
  if #list == 0 then return nil, seen end
  if ask and at > 0 and #list > ask then
    return refused(self, res.status, "the server answered %d results to a request for %d at offset %s: it ignores "
      .. "limit, and the results after an offset cannot be told", #list, ask, int_string(at))
  end
  seen = seen or {}
  local ends = page_ends(list, RESULT_UID[self.level])
  local keys = { "b" .. core.sha256_hex(res.body):sub(1, 16), ends and "e" .. core.sha256_hex(ends):sub(1, 16) }
  for _, k in ipairs(keys) do
    if seen[k] then
      return refused(self, res.status, "the server answered the same results again at offset %s (it ignores "
        .. "offset?)", int_string(at))
    end
  end
  for _, k in ipairs(keys) do seen[k] = true end
  return nil, seen
end

-- One page, tried again under the search's retry policy: as fetch_once.
local function fetch(self, limit, offset)
  local n = 0
  local list, res_or_err = self.policy:run(function(i)
    n = i
    return fetch_once(self, limit, offset)
  end, retry.read_again, nil, nil, retry.on_wait_of(self.on_retry))
  if not list then retry.attempts_told(res_or_err, n) end
  return list, res_or_err
end

--- Iterates over every result, fetching pages as needed. A failed page ends the loop and
--- sets results.error (an iterator has no other way to say why it ended: all() returns it).
--- Each call starts over from the first page (nothing is kept).
function Results:each()
  util.check_self(self, "healthcare.Results", "each")
  self.error, self.warning = nil, nil
  local q = self.q
  local want = q.limit   -- nil: all there are
  local got = 0          -- results handed out
  local skip = 0         -- results to drop before handing out (an offset applied here)
  local at = q.offset or 0 -- the next page's offset on the server
  -- Orthanc (1.10 with DICOMweb 1.7) gets offset wrong when filtering on ModalitiesInStudy
  -- (offset=1&limit=2 gives the 2nd match only: the slice [offset, limit)), so such a query
  -- asks for the first offset+limit matches in one request and drops the offset here. A
  -- server that caps an answer (Google) says so in a Warning header; paging goes on from there.
  local whole = q.attrs[MODALITIES_IN_STUDY] ~= nil
  if whole then skip, at = at, 0 end
  local page, i = {}, 0
  local done = false
  local last -- what tells the last page (page_refusal's)
  return function()
    while true do
      if want and got >= want then return nil end
      i = i + 1
      local raw = page[i]
      if raw and skip > 0 then
        skip = skip - 1
      elseif raw then
        got = got + 1
        return dicomjson.dataset(raw)
      else
        if done then return nil end
        local ask -- nil: no limit
        if whole and not self.warning then
          ask = want and (want - got + skip)
        else
          ask = self.page_size
          if want then ask = math.min(ask, want - got + skip) end
        end
        local list, res = fetch(self, ask, at)
        if not list then
          self.error, done = res, true
          page, i = {}, 0
          return nil
        end
        local refusal
        refusal, last = page_refusal(self, list, res, ask, at, last)
        if refusal then
          self.error, done = refusal, true
          page, i = {}, 0
          return nil
        end
        local capped = res ~= nil and res.headers.warning ~= nil
        at = at + #list
        -- A short page is the last one, unless the server said it cut it short; a page longer
        -- than asked comes from a server that ignored limit: it held everything from offset.
        if #list == 0 or (not capped and (ask == nil or #list ~= ask)) then done = true end
        page, i = list, 0
      end
    end
  end
end

--- Every result in a list, or nil, err and the list of the results that came before the failed
--- page (the partial result, as every call of the module returns it).
function Results:all()
  util.check_self(self, "healthcare.Results", "all")
  local out = {}
  for item in self:each() do out[#out + 1] = item end
  if self.error then return nil, self.error, out end
  return out
end

-- Results live as long as their store: a closed store's results cannot fetch pages.
function Results:is_closed()
  return self.store:is_closed()
end

local WHAT = { studies = "SearchForStudies", series = "SearchForSeries", instances = "SearchForInstances" }

-- Raises for a misuse of store:search_* (level 3 from here: the user's line); returns the options.
local function check_call(store, query, opts, fname)
  util.check_self(store, "healthcare.Store", fname, 3)
  util.check_arg(query, 1, fname, "table|nil", 3, "query table")
  opts = util.check_options(opts, M.OPTIONS, fname, 3)
  util.check_option(opts.params, "params", fname, "table", 3)
  util.check_number(opts.timeout, "timeout", fname, ">= 0", 3)
  util.check_number(opts.max_page_bytes, "max_page_bytes", fname, "whole >= 1", 3)
  retry.check(opts.retry, fname, 3)
  util.check_option(opts.on_retry, "on_retry", fname, "function", 3)
  -- a count, as a number or its digits
  local page_size = opts.page_size
  if page_size ~= nil and (count_of(page_size) or 0) < 1 then
    error(string.format("bad option 'page_size' to '%s' (a whole number >= 1 expected, got %s)", fname,
      type(page_size) == "string" and ("'" .. page_size .. "'") or tostring(page_size)), 3)
  end
  return opts
end

local function search(store, level, query, opts)
  local what = WHAT[level]
  local page_size = opts.page_size and count_of(opts.page_size) or M.DEFAULT_PAGE_SIZE
  local max_page_bytes = opts.max_page_bytes or M.DEFAULT_MAX_PAGE_BYTES
  local q, err = M.compile(query, level, what)
  if not q then return nil, err end
  local query_params, perr = params.query(opts.params)
  if not query_params then return nil, perr end
  local url, uerr = route.url(store, "GET", path_of(q, level))
  if not url then return nil, uerr end
  return setmetatable({
    store = store, what = what, level = level, q = q, page_size = page_size, params = query_params,
    timeout = opts.timeout, max_page_bytes = max_page_bytes, url = url, requests = 0,
    policy = retry.new(nil, opts.retry, store.client.retry), on_retry = opts.on_retry,
  }, Results)
end

--- store:search_studies(query, opts) -> Results, or nil, err (a bad query; nothing sent).
function M.search_studies(store, query, opts)
  opts = check_call(store, query, opts, "search_studies")
  local results, err = search(store, "studies", query, opts)
  return results, err
end

function M.search_series(store, query, opts)
  opts = check_call(store, query, opts, "search_series")
  local results, err = search(store, "series", query, opts)
  return results, err
end

function M.search_instances(store, query, opts)
  opts = check_call(store, query, opts, "search_instances")
  local results, err = search(store, "instances", query, opts)
  return results, err
end

--- After a 404 for something in the store (a study, series or instance): whether the store
--- itself is what is missing, so that the error names the right thing. One study search of one
--- result: a 404 there too means no such store; any other answer, or a failure, counts as a
--- store that is there.
function M.store_missing(store, query_params)
  local results, err = M.search_studies(store, { limit = 1 }, { page_size = 1, params = query_params,
    retry = { max_attempts = 1 } })
  if results then
    local _
    _, err = results:all()
  end
  return err ~= nil and err.kind == "http" and err.http_status == 404
end

return M
