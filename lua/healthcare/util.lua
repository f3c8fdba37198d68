-- SPDX-License-Identifier: MIT
-- Small helpers shared by the Lua modules: arguments and option tables checked at every public
-- entry point (misuse raises with the caller's position), query strings, text made safe for a
-- terminal, redaction of secrets for debug output and error messages, and the proxy libcurl
-- takes from the environment.
local core = require "healthcare.core"

local M = {}

--- Sleeps `seconds`: inside OpenResty without blocking the worker (healthcare.ngx.transport),
--- else in the C core. Every wait of the module (retries, polling) goes through here. Returns
--- true; or nil, err at once inside nginx in a phase that cannot sleep without blocking the worker.
function M.sleep(seconds)
  local n = rawget(_G, "ngx")
  if type(n) == "table" and type(n.get_phase) == "function" then
    return require("healthcare.ngx.transport").sleep(seconds)
  end
  core.sleep(seconds)
  return true
end

-- ---- JSON from outside ------------------------------------------------------------------------
-- lua-cjson by default takes numbers JSON has not: NaN, Infinity, hex (0x10), a leading "+" or
-- "0". A server's answer, a credential file or a program's output holding them is no JSON, and
-- the values they make (NaN above all: it compares false with everything) would pass every
-- "seconds <= 0" or "count > 0" check of the code. One decoder of our own (new(): the module's
-- shared cjson, and OpenResty's, keep their settings), strict, decodes every such text.
local strict_json = require("cjson.safe").new()
strict_json.decode_invalid_numbers(false)

--- The value of a JSON text that came from outside (a server, a file, a program), or nil and
--- cjson's reason, which names a position and never quotes the text. A number too large for a
--- double (1e400) is JSON and decodes as an infinity: what the code computes with goes through
--- M.finite_number.
function M.decode_json(text)
  if type(text) ~= "string" then return nil, "no text" end
  return strict_json.decode(text)
end

--- v when it is a finite number (not NaN, not an infinity) within [min, max] (each optional),
--- else nil: for numbers a server sends and the code relies on (seconds, counts, codes).
function M.finite_number(v, min, max)
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then return nil end
  if (min and v < min) or (max and v > max) then return nil end
  return v
end

-- ---- misuse: raised with the caller's position ------------------------------------------------
-- Every public entry point checks its arguments and options with these two, first thing, so a
-- programming mistake raises "bad argument #1 to 'retrieve_study' (string expected, got number)"
-- at the line of the user that made it. `level` is error()'s level as seen from the function that
-- calls the check: 2 (the default) blames that function's caller, which is right when a public
-- function checks its own arguments; a helper one call further in passes 3.

--- Raises unless type(v) is one of `types` ("string", "string|table", "table|nil", ...).
--- Returns v. `shown` replaces the list of types in the message ("path or list of paths").
function M.check_arg(v, n, fname, types, level, shown)
  local t = type(v)
  for name in types:gmatch("[^|]+") do
    if name == t then return v end
  end
  if not shown then
    shown = types:gsub("|nil$", ""):gsub("|", " or ")
  end
  error(string.format("bad argument #%d to '%s' (%s expected, got %s)", n, fname, shown, t), (level or 2) + 1)
end

--- Raises unless v (the value of option `name`) is nil or of one of `types` (as check_arg).
function M.check_option(v, name, fname, types, level, shown)
  if v == nil then return nil end
  local t = type(v)
  for tname in types:gmatch("[^|]+") do
    if tname == t then return v end
  end
  error(string.format("bad option '%s' to '%s' (%s expected, got %s)", name, fname,
    shown or types:gsub("|", " or "), t), (level or 2) + 1)
end

--- Raises unless v (the value of option `name`) is nil or a number in `range`: "whole >= 1",
--- ">= 0", "> 0" (a whole number, and the bound). A setting out of its range is a programming
--- mistake like a wrong type; what names or queries something on a server (a UID, a store name,
--- a query value) is content, and a bad one is returned (kind "usage").
function M.check_number(v, name, fname, range, level)
  if v == nil then return nil end
  M.check_option(v, name, fname, "number", (level or 2) + 1)
  local whole = range:find("whole", 1, true) ~= nil
  local op, bound = range:match("([<>]=?)%s*(%S+)$")
  bound = tonumber(bound)
  local ok = v == v and (not whole or v == math.floor(v)) and (op == ">=" and v >= bound or op == ">" and v > bound)
  if not ok then
    error(string.format("bad option '%s' to '%s' (%s %s %s expected, got %s)", name, fname,
      whole and "a whole number" or "a number", op, range:match("%S+$"), tostring(v)), (level or 2) + 1)
  end
  return v
end

--- Checks an options table: nil or a table whose keys are all in `valid` (a list of names) or
--- in `aliases` (old name -> current name: a deprecated spelling still accepted, README "Lua
--- API"). Raises (a programming mistake) naming an unknown key and listing the valid ones, or
--- naming an option given under both its names. Returns the options with the current names
--- (a new table when an alias was used), {} for nil.
function M.check_options(opts, valid, fname, level, aliases)
  level = (level or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(string.format("bad argument to '%s' (options table expected, got %s)", fname, type(opts)), level)
  end
  local set = {}
  for _, k in ipairs(valid) do set[k] = true end
  local renamed
  for k in pairs(opts) do
    local current = aliases and aliases[k]
    if current then
      if opts[current] ~= nil then
        error(string.format("option '%s' to '%s' given twice (as '%s' and its old name '%s')", current, fname,
          current, k), level)
      end
      renamed = true
    elseif not set[k] then
      local names = {}
      for _, v in ipairs(valid) do names[#names + 1] = v end
      table.sort(names)
      error(string.format("unknown option '%s' to '%s'; valid options: %s", tostring(k), fname,
        table.concat(names, ", ")), level)
    end
  end
  if not renamed then return opts end
  local out = {}
  for k, v in pairs(opts) do out[aliases[k] or k] = v end
  return out
end

--- Raises "bad self to 'fname'" unless obj's metatable is named `class` (its __name), and
--- "attempt to use a closed <noun>" when obj:is_closed() says so (liolib's rule for files).
function M.check_self(obj, class, fname, level)
  level = (level or 2) + 1
  local mt = getmetatable(obj)
  if type(mt) ~= "table" or mt.__name ~= class then
    error(string.format("bad self to '%s' (%s expected, got %s)", fname, class,
      type(mt) == "table" and mt.__name or type(obj)), level)
  end
  local closed, what = obj:is_closed()
  if closed then error("attempt to use a closed " .. what, level) end
  return obj
end

--- An http(s) base URL with a host, and nothing that could change what the path appends mean
--- or reach a request line: no spaces, control characters, non-ASCII, '?' or '#'.
function M.is_base_url(s)
  return type(s) == "string" and s:match("^https?://[^/?#]+") ~= nil and not s:find("[%s%c?#\128-\255]")
end

--- RFC 4648 base64 (with padding) of s: the C core's base64url (OpenSSL), turned back.
function M.base64(s)
  local b = core.base64url(s):gsub("-", "+"):gsub("_", "/")
  return b .. string.rep("=", (4 - #b % 4) % 4)
end

--- Whether url carries a user name or password before its host (scheme://user:password@host).
function M.has_userinfo(url)
  local authority = type(url) == "string" and url:match("^%a[%w+.-]*://([^/?#]*)")
  return authority ~= nil and authority:find("@", 1, true) ~= nil
end

--- The message refusing a URL given as `what` (an endpoint, a base URL, a request's url) that
--- carries user:password@, or nil. libcurl would send them as Basic authentication, past the
--- proxy policy and into every message that names the URL: refused, and never echoed.
function M.userinfo_refusal(url, what)
  if not M.has_userinfo(url) then return nil end
  return string.format("%s must not hold a user name or password (user:password@ before the host), got "
    .. "'%s': give credentials with the client's options instead (basic_auth = { user = ..., password = ... } "
    .. "for HTTP Basic authentication, access_token, credentials; on the command line --basic-auth-file or "
    .. "HEALTHCARE_BASIC_AUTH, --access-token or --credentials, -p access-token=... in the projects form)", what,
    M.redact_url(url))
end

--- The `debug` option made callable: true writes lines to stderr (made printable: they hold
--- server text), a function gets them as they are (secrets redacted), else nil.
function M.debug_sink(d)
  if d == true then
    return function(line) io.stderr:write(M.printable(line), "\n") end
  elseif type(d) == "function" then
    return d
  end
  return nil
end

--- Builds "a=1&b=2" from a table, keys sorted so URLs are reproducible.
function M.query_string(q)
  local keys = {}
  for k in pairs(q or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "boolean" then v = tostring(v) end
    out[#out + 1] = core.escape(tostring(k)) .. "=" .. core.escape(tostring(v))
  end
  return table.concat(out, "&")
end

-- ---- text for a terminal ---------------------------------------------------------------------

-- Code points that are valid UTF-8 yet act on a terminal or on how a line reads: the C1
-- controls (U+009B is CSI, U+009D OSC on terminals that decode them), the line and paragraph
-- separators, and the bidirectional overrides and isolates that reorder what is shown.
local function unsafe_code_point(cp)
  return (cp >= 0x80 and cp <= 0x9F) or cp == 0x061C or cp == 0x200E or cp == 0x200F
    or (cp >= 0x2028 and cp <= 0x202E) or (cp >= 0x2066 and cp <= 0x2069)
end

--- The UTF-8 sequence of more than one byte at byte i of s: its length and code point, or nil
--- (an ASCII byte, a stray continuation byte, an overlong form, a surrogate, a cut sequence).
function M.utf8_sequence(s, i)
  local c = s:byte(i)
  local len, cp, min
  if c >= 0xC2 and c <= 0xDF then len, cp, min = 2, c - 0xC0, 0x80
  elseif c >= 0xE0 and c <= 0xEF then len, cp, min = 3, c - 0xE0, 0x800
  elseif c >= 0xF0 and c <= 0xF4 then len, cp, min = 4, c - 0xF0, 0x10000
  else return nil end
  if i + len - 1 > #s then return nil end
  for k = i + 1, i + len - 1 do
    local b = s:byte(k)
    if b < 0x80 or b > 0xBF then return nil end
    cp = cp * 64 + (b - 0x80)
  end
  if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
  return len, cp
end

-- A run of bytes >= 0x80: valid UTF-8 sequences kept (unless unsafe_code_point: \uXXXX), every
-- other byte shown as \xNN (overlong forms, surrogates, stray continuation bytes, cut sequences).
local function non_ascii(run)
  local out, i, n = {}, 1, #run
  while i <= n do
    local c = run:byte(i)
    local len, cp = M.utf8_sequence(run, i)
    if not len then
      out[#out + 1] = string.format("\\x%02x", c)
      i = i + 1
    else
      out[#out + 1] = unsafe_code_point(cp) and string.format("\\u%04x", cp) or run:sub(i, i + len - 1)
      i = i + len
    end
  end
  return table.concat(out)
end

local ASCII_ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\\"] = "\\\\" }

--- Any text (a server's message, a header, a DICOM value, a file name) made safe to write on a
--- terminal as one line: control characters (ESC, CR, LF, ...) become \xNN (\n, \r, \t), C1
--- controls and bidirectional overrides \uXXXX, bytes that are not UTF-8 \xNN, and "\" itself
--- "\\", so that what is shown says what was there. Printable ASCII and UTF-8 pass unchanged.
--- Applied once, where the text is written (tostring of an error does it for its message).
function M.printable(s)
  s = tostring(s)
  if not s:find("[%c\\\128-\255]") then return s end
  s = s:gsub("[%c\\]", function(ch)
    return ASCII_ESCAPES[ch] or string.format("\\x%02x", ch:byte())
  end)
  return (s:gsub("[\128-\255]+", non_ascii))
end

-- ---- secrets ------------------------------------------------------------------------------------

-- Query parameters and headers that carry secrets.
local SECRET_PARAMS = { access_token = true, oauth_token = true, key = true, assertion = true,
  refresh_token = true, client_secret = true }
M.SECRET_PARAMS = SECRET_PARAMS

-- Secrets shorter than this are not looked for in text: replacing "abc" everywhere would garble
-- messages, and no token or key is that short.
M.MIN_SECRET = 8

-- The forms in which a server may echo a secret it was sent: as is, percent-encoded (a query
-- value, a form body; hex in either case) and JSON-escaped ("/" as "\/").
local function secret_forms(secret, into)
  into[#into + 1] = secret
  local escaped = core.escape(secret)
  if escaped ~= secret then
    into[#into + 1] = escaped
    into[#into + 1] = (escaped:gsub("%%%x%x", string.lower))
  end
  if secret:find("/", 1, true) then into[#into + 1] = (secret:gsub("/", "\\/")) end
end

local function replace_plain(s, needle, by)
  local i = s:find(needle, 1, true)
  if not i then return s end
  local out, from = {}, 1
  while i do
    out[#out + 1] = s:sub(from, i - 1)
    out[#out + 1] = by
    from = i + #needle
    i = s:find(needle, from, true)
  end
  out[#out + 1] = s:sub(from)
  return table.concat(out)
end

--- text with every secret of the list (strings; shorter than MIN_SECRET ignored) replaced by
--- "REDACTED", in each form a server may echo it (see secret_forms). The one redaction by value
--- of the module: error messages, report reasons, answers and debug lines all go through it.
function M.redact(text, secrets)
  if type(text) ~= "string" or not secrets or #secrets == 0 then return text end
  local forms, seen = {}, {}
  for _, secret in ipairs(secrets) do
    if type(secret) == "string" and #secret >= M.MIN_SECRET and not seen[secret] then
      seen[secret] = true
      secret_forms(secret, forms)
    end
  end
  -- The longest first: a secret that holds another is replaced whole.
  table.sort(forms, function(a, b) return #a > #b end)
  for _, f in ipairs(forms) do text = replace_plain(text, f, "REDACTED") end
  return text
end

-- The user:password@ after each "scheme://" goes (the scheme: a letter, then letters, digits,
-- "+", "." or "-"). Found with plain searches, in time linear in the text: the pattern
-- "(%a[%w+.-]*://)" backtracks over every run of such characters from each of its starts, which is
-- quadratic (minutes for a failed request with a 70 kB query value, and every debug line goes here).
local function redact_userinfo(text)
  local out, from, init = {}, 1, 1
  while true do
    local colon = text:find("://", init, true)
    if not colon then break end
    init = colon + 3
    -- The run before "://" never holds a ":", so the runs scanned are disjoint.
    local run = colon
    while run > from and text:find("^[%w+.-]", run - 1) do run = run - 1 end
    local letter = text:sub(run, colon - 1):find("%a")
    if letter then
      -- The authority ends at the first "/", "?", "#" or space (none is in a "://"); its last "@"
      -- ends the user information.
      local stop = text:find("[/?#%s]", init) or #text + 1
      local at = text:sub(init, stop - 1):match("^.*()@")
      if at then
        out[#out + 1] = text:sub(from, colon + 2) .. "REDACTED@"
        from = init + at
        init = from
      end
    end
  end
  if from == 1 then return text end
  out[#out + 1] = text:sub(from)
  return table.concat(out)
end

--- The URL with the values of secret query parameters replaced by "REDACTED", and any of the
--- secrets (a list, optional) wherever else they appear (see M.redact).
-- Values in our URLs are percent-encoded, so a raw ":" or space ends one (as in error messages).
-- A user:password@ before a host goes whole (the last "@" of the authority ends it).
function M.redact_url(url, secrets)
  url = redact_userinfo(url)
  url = url:gsub("([?&])([^=&#%s?]+)=([^&#%s:]*)", function(sep, k, v)
    if SECRET_PARAMS[k] then v = "REDACTED" end
    return sep .. k .. "=" .. v
  end)
  return M.redact(url, secrets)
end

--- A header line with the value of Authorization (and the like) replaced, and any of the
--- secrets (a list, optional) in another header's value (a server that echoes one).
function M.redact_header(line, secrets)
  local name = line:match("^([^:]+):")
  local lname = name and name:lower()
  if lname == "authorization" or lname == "proxy-authorization" or lname == "x-goog-api-key"
    or lname == "cookie" or lname == "set-cookie" then
    return name .. ": REDACTED"
  end
  return M.redact(line, secrets)
end

-- ---- proxies ------------------------------------------------------------------------------------

-- "a.b.c.d" as a 32-bit number, or nil when s is not a dotted quad (what inet_pton accepts).
local function ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  local n = 0
  for _, part in ipairs({ a, b, c, d }) do
    local v = tonumber(part)
    if #part > 3 or v > 255 then return nil end
    n = n * 256 + v
  end
  return n
end

-- Whether one NO_PROXY entry covers host (lower case, no port, no brackets), as libcurl's
-- Curl_check_noproxy decides: names match exactly or as a domain suffix (a leading or trailing
-- "." ignored); IPv4 addresses exactly or by CIDR ("10.0.0.0/8"). IPv6 addresses match only as
-- written: where libcurl would see the same address written another way, this says no, and the
-- caller then assumes a proxy (the safe mistake).
local function no_proxy_entry(host, entry)
  entry = entry:lower()
  local h4 = ipv4(host)
  if h4 then
    local addr, bits = entry:match("^([^/]*)/?(.*)$")
    local e4 = ipv4(addr)
    local nbits = tonumber(bits:match("^%d*")) or 0
    if not e4 or nbits > 32 then return false end
    if nbits == 0 or nbits == 32 then return e4 == h4 end
    local size = 2 ^ (32 - nbits)
    return math.floor(e4 / size) == math.floor(h4 / size)
  elseif host:find(":", 1, true) then
    return entry == host or entry == "[" .. host .. "]"
  end
  entry = entry:gsub("%.$", ""):gsub("^%.", "")
  if entry == "" then return false end
  if entry == host then return true end
  return #entry < #host and host:sub(-#entry - 1) == "." .. entry
end

--- The proxy for url as the transport is to take it: proxy_for's, or "" for none. Given to
--- libcurl per request (CURLOPT_PROXY, and an empty CURLOPT_NOPROXY), it is what is used: libcurl
--- matches NO_PROXY by rules of its own that differ in corners (it rewrites 127.1 as 127.0.0.1
--- before matching; it never matches a bracketed IPv6 entry), and the proxy check, which keeps a
--- credential off a proxy over plain http, must hold for the proxy really used.
function M.transport_proxy(url, settings)
  return (M.proxy_for(url, nil, settings)) or ""
end

--- Whether the NO_PROXY list (libcurl's syntax: "*" alone, or entries separated by commas,
--- blanks around them) covers host. libcurl 7.88 also splits entries at blanks, later versions
--- stop at an entry with a blank inside: the later rule is taken, as it covers less (a proxy
--- assumed where there is none only costs a refusal).
function M.no_proxy_covers(host, list)
  if list == "*" then return true end
  local p, n = 1, #list
  while p <= n do
    p = select(2, list:find("^[ \t]*", p)) + 1
    local entry = list:match("^[^ \t,]*", p)
    p = p + #entry
    if entry ~= "" and no_proxy_entry(host, entry) then return true end
    p = select(2, list:find("^[ \t]*", p)) + 1
    if list:sub(p, p) ~= "," then break end
    p = select(2, list:find("^,*", p)) + 1
  end
  return false
end

--- The proxy libcurl will use for url, from the environment and by libcurl's rules, or nil:
--- returns the proxy and the variable that named it. no_proxy (else NO_PROXY) first; then
--- http_proxy for http (libcurl ignores HTTP_PROXY: a CGI program gets that from a request
--- header), <scheme>_proxy else <SCHEME>_PROXY for other schemes; then all_proxy, ALL_PROXY. A
--- variable set to "" counts as unset, as curl_getenv makes it (checked with curl 7.88: an empty
--- http_proxy lets ALL_PROXY through). getenv defaults to os.getenv. settings: the `proxy` and
--- `no_proxy` options, which win over the environment as CURLOPT_PROXY and CURLOPT_NOPROXY do
--- (proxy "" means no proxy; a no_proxy option replaces the variables); the proxy they name is
--- returned with "the proxy option".
function M.proxy_for(url, getenv, settings)
  settings = settings or {}
  local raw = getenv or os.getenv
  getenv = function(name)
    local v = raw(name)
    if v == "" then return nil end
    return v
  end
  local scheme, authority = url:match("^(%a[%w+.-]*)://([^/?#]*)")
  if not scheme then return nil end
  scheme = scheme:lower()
  local host = authority:gsub("^.*@", ""):lower()
  if host:sub(1, 1) == "[" then
    host = host:match("^%[([^%]]*)%]") or host
  else
    host = host:gsub(":%d*$", ""):gsub("%.$", "")
  end
  local no_proxy = settings.no_proxy
  if no_proxy == nil then no_proxy = getenv("no_proxy") end
  if no_proxy == nil then no_proxy = getenv("NO_PROXY") end
  if no_proxy and M.no_proxy_covers(host, no_proxy) then return nil end
  if settings.proxy ~= nil then
    if settings.proxy == "" then return nil end
    return settings.proxy, "the proxy option"
  end
  local name = scheme .. "_proxy"
  local proxy = getenv(name)
  if proxy == nil and scheme ~= "http" then
    name = name:upper()
    proxy = getenv(name)
  end
  if proxy == nil then
    name = "all_proxy"
    proxy = getenv(name)
    if proxy == nil then
      name = "ALL_PROXY"
      proxy = getenv(name)
    end
  end
  if proxy == nil then return nil end
  return proxy, name
end

--- A proxy URL as shown in messages and debug lines: its user:password (if any) replaced.
function M.redact_proxy(proxy)
  return (proxy:gsub("^(%a[%w+.-]*://)[^/@]*@", "%1REDACTED@"):gsub("^[^/@]*@", "REDACTED@"))
end

--- Creates the directory `path` and the parents it lacks, as `mkdir -p` (mode 0777 less the
--- umask): true, or nil and why not ("x exists and is not a directory", "cannot create the
--- directory x: Permission denied"). An existing directory, or one another process creates
--- meanwhile, is fine. Every folder the module writes answers or a journal to goes through this.
function M.make_dirs(path)
  local lfs = require "lfs"
  local mode = lfs.attributes(path, "mode")
  if mode == "directory" then return true end
  if mode ~= nil then return nil, path .. " exists and is not a directory" end
  local parent = path:match("^(.*[^/])/+[^/]+/*$")
  if parent then
    local ok, why = M.make_dirs(parent)
    if not ok then return nil, why end
  end
  local ok, why = lfs.mkdir(path)
  if not ok and lfs.attributes(path, "mode") ~= "directory" then
    return nil, "cannot create the directory " .. path .. ": " .. tostring(why)
  end
  return true
end

--- A new private (0700) directory beside the files os.tmpname makes, named `prefix` and random
--- hex, for instances fetched back to compare or keep: the sink writes a part with mode 0666 less
--- the umask, so in /tmp itself another user could read it. Returns the path, or nil and why not.
function M.private_tmpdir(prefix)
  local probe = os.tmpname()
  os.remove(probe)
  local dir = (probe:match("^(.*)/[^/]*$") or "/tmp") .. "/" .. prefix .. core.random_hex(8)
  if core.file_stat(dir, false) then return nil, "temporary directory " .. dir .. " exists" end
  local ok, err = core.private_mkdir(dir)
  if not ok then return nil, err.message end
  return dir
end

--- Removes a directory private_tmpdir made, with the files in it.
function M.remove_private_tmpdir(dir)
  local lfs = require "lfs"
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then os.remove(dir .. "/" .. name) end
  end
  lfs.rmdir(dir)
end

--- The directory part of a file path: "a/b" for "a/b/c", "." for "c", "/" for "/c".
function M.parent_dir(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir == nil then return "." end
  if dir == "" then return "/" end
  return dir
end

return M
