-- SPDX-License-Identifier: MIT
-- client:pages(method, params, opts): the items of a list method of the API, page after page
-- across nextPageToken, fetched as the caller iterates. Which field holds the items comes from
-- the method table: the one array field of the method's response schema (datasets,
-- dicomStores, operations, ...). Like a search's Results: pages:each() for a generic for (a
-- failed page ends it and sets pages.error), pages:all() for a list or nil, err, partial.
-- opts.max_pages bounds the pages a loop reads (a server whose pages never end).
local api = require "healthcare.api"
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local request = require "healthcare.api.request"
local retry = require "healthcare.retry"
local send = require "healthcare.api.send"
local util = require "healthcare.util"

local M = {}

M.OPTIONS = { "query", "headers", "timeout", "idle_timeout", "min_speed", "max_page_bytes", "max_pages", "retry",
  "on_retry" }
-- A page is held in memory, then decoded: capped as a search's page is.
M.DEFAULT_MAX_PAGE_BYTES = 64 * 1024 * 1024
local SUGGESTIONS = 5

local Pages = {}
Pages.__index = Pages
Pages.__name = "healthcare.Pages"
M.Pages = Pages

--- The field of method m's answer that holds the items, when m is a list method: it takes
--- pageToken as a query parameter and its response schema has nextPageToken and one array field
--- (evaluateUserConsents, whose page token is in its request body, is not one). Else nil.
function M.items_field(m)
  local takes_token = false
  for _, q in ipairs(m.query) do
    if q.name == "pageToken" then takes_token = true end
  end
  local schema = m.response and api.schema(m.response)
  if not takes_token or not schema then return nil end
  local field, has_next
  for _, f in ipairs(schema.fields) do
    if f.name == "nextPageToken" then
      has_next = true
    elseif f.type == "array" then
      if field then return nil end
      field = f.name
    end
  end
  return has_next and field or nil
end

--- A partial response's `fields` (the standard parameter) that keeps nextPageToken: Google leaves
--- out every field not named, and a list whose answers lack nextPageToken ends after its first
--- page. `fields` as given when it names nextPageToken (or *) at the top level, or is not a
--- non-empty string; else with ",nextPageToken" added (dicomStores.name,nextPageToken;
--- dicomStores(name),nextPageToken).
function M.fields_with_token(fields)
  if type(fields) ~= "string" or fields:match("^%s*$") then return fields end
  local depth, start = 0, 1
  for i = 1, #fields + 1 do
    local c = fields:sub(i, i)
    if c == "(" then
      depth = depth + 1
    elseif c == ")" then
      depth = depth - 1
    elseif depth == 0 and (c == "," or c == "") then
      local name = fields:sub(start, i - 1):match("^%s*([^/(%s]*)")
      if name == "nextPageToken" or name == "*" then return fields end
      start = i + 1
    end
  end
  return fields .. ",nextPageToken"
end

local function list_methods(id)
  local list = {}
  for _, other in ipairs(api.ids()) do
    if M.items_field(api.method(other)) then list[#list + 1] = other end
  end
  return request.closest(id, list, SUGGESTIONS)
end

-- Raises for a misuse of pages' options (level: as util.check_arg's); returns them.
local function check_options(opts, level)
  level = level + 1
  opts = util.check_options(opts, M.OPTIONS, "pages", level)
  util.check_option(opts.query, "query", "pages", "table", level)
  util.check_option(opts.headers, "headers", "pages", "table", level)
  util.check_option(opts.on_retry, "on_retry", "pages", "function", level)
  for i, h in ipairs(opts.headers or {}) do
    if type(h) ~= "string" then
      error(string.format("bad option 'headers' to 'pages' (a list of strings expected; item %d is a %s)", i,
        type(h)), level)
    end
  end
  util.check_number(opts.timeout, "timeout", "pages", ">= 0", level)
  util.check_number(opts.idle_timeout, "idle_timeout", "pages", ">= 0", level)
  util.check_number(opts.min_speed, "min_speed", "pages", "whole >= 0", level)
  util.check_number(opts.max_page_bytes, "max_page_bytes", "pages", "whole >= 1", level)
  util.check_number(opts.max_pages, "max_pages", "pages", "whole >= 1", level)
  retry.check(opts.retry, "pages", level)
  return opts
end

--- client:pages(method, params, opts): see README "The whole API". Returns a Pages object, or
--- nil, err (kind "usage": not a list method, or params the method refuses; nothing is sent).
function M.pages(client, method, params, opts)
  util.check_self(client, "healthcare.Client", "pages")
  util.check_arg(method, 1, "pages", "string")
  util.check_arg(params, 2, "pages", "table|nil", nil, "params table")
  opts = check_options(opts, 2)
  -- Built once here so that a bad call fails before any page is asked for.
  local req, err = request.build(method, params, nil, { query = opts.query })
  if not req then return nil, err end
  local m = api.method(req.method_id)
  local field = M.items_field(m)
  if not field then
    return nil, errors.new("usage", string.format("%s is not a list method (pageToken in, nextPageToken and one "
      .. "list out); list methods: %s, ...", m.id, table.concat(list_methods(m.id), ", ")), { method = m.id })
  end
  local copy = {}
  for k, v in pairs(params or {}) do copy[k] = v end
  -- The fields sent are the call's, else the client's (healthcare.new's params): either way
  -- without nextPageToken the list would end after its first page.
  copy.fields = M.fields_with_token(copy.fields or client.params.fields)
  return setmetatable({
    client = client, method = m.id, field = field, params = copy, opts = opts, requests = 0,
    policy = retry.new(nil, opts.retry, client.retry),
  }, Pages)
end

-- One page: its items and the next page's token (nil on the last page), or nil, err.
local function fetch(self, token)
  local params = {}
  for k, v in pairs(self.params) do params[k] = v end
  params.pageToken = token
  local req, err = request.build(self.method, params, nil, { query = self.opts.query })
  if not req then return nil, err end
  local o = self.opts
  local max_page_bytes = o.max_page_bytes or M.DEFAULT_MAX_PAGE_BYTES
  local res
  -- A trapped interrupt (core.trap_interrupts: the command's Ctrl-C) stops a page in flight.
  res, err = send.send(self.client, req, { headers = o.headers, timeout = o.timeout, idle_timeout = o.idle_timeout,
    min_speed = o.min_speed, max_bytes = max_page_bytes, on_retry = o.on_retry,
    on_progress = function() return not core.interrupted() end }, self.policy, nil, true)
  self.requests = self.requests + 1
  if not res then
    if err.option == "max_bytes" then
      err.option = "max_page_bytes"
      err.message = string.format("%s: a page is larger than %.0f bytes (option max_page_bytes; or a smaller "
        .. "pageSize)", self.method, max_page_bytes)
    end
    return nil, err
  end
  if res.status < 200 or res.status > 299 then return nil, errors.from_response(res, self.method) end
  local doc
  doc, err = send.json_object(res, self.method, self.client)
  if not doc then return nil, err end
  local items, nxt = doc[self.field], doc.nextPageToken
  if items == nil then items = {} end -- Google leaves an empty list out ({})
  if type(items) ~= "table" or (next(items) ~= nil and #items == 0) or (nxt ~= nil and type(nxt) ~= "string") then
    return nil, errors.new("http", string.format("%s: HTTP %d: the answer's %s is not a list, or its nextPageToken "
      .. "not a string", self.method, res.status, self.field), { http_status = res.status })
  end
  if nxt == "" then nxt = nil end
  return items, nxt
end

-- What `seen` keeps of a page token: a long one (a server may send megabytes) as its hash.
local function token_key(token)
  return #token > 64 and ("sha256:" .. core.sha256_hex(token)) or token
end

--- Iterates over every item, fetching pages as needed (from params.pageToken when given). A
--- failed page ends the loop and sets pages.error (all() returns it). With opts.max_pages, the
--- loop ends after that many pages; pages.next_page_token is then the token of the next one
--- (nil when there is none). Each call starts over.
function Pages:each()
  util.check_self(self, "healthcare.Pages", "each")
  self.error, self.next_page_token = nil, nil
  local token = self.params.pageToken
  local seen = {}
  if token then seen[token_key(token)] = true end
  local page, i, done, pending, fetched = {}, 0, false, nil, 0
  local max_pages = self.opts.max_pages
  return function()
    while true do
      i = i + 1
      local item = page[i]
      if item ~= nil then return item end
      if done then
        self.error = self.error or pending
        return nil
      end
      if max_pages and fetched >= max_pages then
        done, self.next_page_token = true, token
        return nil
      end
      fetched = fetched + 1
      local items, nxt = fetch(self, token)
      if not items then
        self.error, done = nxt, true
        page, i = {}, 0
        return nil
      end
      page, i, token = items, 0, nxt
      if not nxt then
        done = true
      elseif seen[token_key(nxt)] then
        -- A server that hands out a token again would have the loop go round for ever.
        done, pending = true, errors.new("http", string.format("%s: the server answered the page token '%s' a "
          .. "second time; stopping", self.method, nxt:sub(1, 80)), { status = "repeated_page_token" })
      end
      if nxt then seen[token_key(nxt)] = true end
    end
  end
end

--- Every item in a list, or nil, err and the items of the pages before the failure.
function Pages:all()
  util.check_self(self, "healthcare.Pages", "all")
  local out = {}
  for item in self:each() do out[#out + 1] = item end
  if self.error then return nil, self.error, out end
  return out
end

-- Pages live as long as their client.
function Pages:is_closed()
  return self.client:is_closed()
end

return M
