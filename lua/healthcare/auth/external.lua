-- SPDX-License-Identifier: MIT
-- Workload and workforce identity federation: credentials without key files, from ADC files of
--   external_account                   a subject token (OIDC, SAML or AWS) exchanged at Google's
--                                      STS (`token_url`, RFC 8693), then, with
--                                      `service_account_impersonation_url`, a service account's
--                                      token (healthcare.auth.impersonate)
--   external_account_authorized_user   a workforce user's refresh token (`gcloud auth login
--                                      --login-config`), refreshed at its `token_url`
-- The subject token comes from credential_source, as Google's client libraries read it:
--   file        a file's text, or a JSON field of it (format.type "json", subject_token_field_name)
--   url         a GET of url with `headers`, text or JSON the same way
--   executable  a command run without a shell (only when GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES
--               is 1), within timeout_millis, its JSON answer kept in output_file when named
--   aws         the AWS region and role credentials (environment, else the instance metadata
--               with an IMDSv2 session token), and a GetCallerIdentity request signed with SigV4
--               (core.sigv4_sign) as the subject token
-- Every secret met on the way (subject tokens, AWS keys and session tokens, IMDSv2 tokens,
-- refresh tokens, client secrets) is held in cred.held, so redaction finds it; none is written
-- anywhere (the token cache keeps the access token only).
local cjson = require "cjson.safe"
local core = require "healthcare.core"
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

M.TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
M.ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
M.AWS_TOKEN_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
M.DEFAULT_TOKEN_URL = "https://sts.googleapis.com/v1/token"
M.AWS_VERIFICATION_URL = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
M.ALLOW_EXECUTABLES = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"
-- Google's libraries: 30 s unless timeout_millis says otherwise, 5 s to 120 s.
M.EXECUTABLE_TIMEOUT_MS, M.EXECUTABLE_MIN_MS, M.EXECUTABLE_MAX_MS = 30000, 5000, 120000
M.MAX_SUBJECT_TOKEN = 1024 * 1024
M.IMDSV2_TTL = 300
M.WORKFORCE_AUDIENCE = "^//iam%.googleapis%.com/locations/[^/]+/workforcePools/"
-- Headers of a url source whose values are no secret (see read_url_source).
M.PLAIN_HEADERS = { accept = true, ["content-type"] = true, metadata = true, ["metadata-flavor"] = true,
  ["user-agent"] = true }
M.EXECUTABLE_TOKEN_TYPES = { ["urn:ietf:params:oauth:token-type:jwt"] = "id_token",
  ["urn:ietf:params:oauth:token-type:id_token"] = "id_token",
  ["urn:ietf:params:oauth:token-type:saml2"] = "saml_response" }

local function creds() return require "healthcare.auth.credentials" end
local function fail(message, fields) return nil, errors.new("auth", message, fields) end
local function getenv(name)
  local v = creds().getenv(name)
  if v == "" then return nil end
  return v
end

-- s quoted for /bin/sh: one word, nothing expanded.
local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local base64 = util.base64

-- Keeps a secret in cred.held, where redaction finds it; returns it.
local function hold(self, value)
  if type(value) == "string" and value ~= "" then self.held[#self.held + 1] = value end
  -- A long-lived credential refreshes many times: keep the latest few only.
  while #self.held > 32 do table.remove(self.held, 1) end
  return value
end

-- ---- plain requests (the url and aws sources) ------------------------------------------------

-- One request for a source (not a token endpoint): the reply's body when it is 200, or nil,
-- err (kind "auth") naming what was asked.
local function source_request(self, req, what)
  req.timeout = req.timeout or self.timeout
  -- A subject token (or an AWS metadata answer) is small; a bigger answer would be held as a
  -- secret and searched for in every later message.
  req.max_response_bytes = req.max_response_bytes or M.MAX_SUBJECT_TOKEN
  local secrets = creds().header_secrets(req.headers, self:secrets())
  local shown = util.redact_url(req.url, secrets)
  local proxy, variable = util.proxy_for(req.url, nil, self.proxy_settings)
  if proxy and not self.insecure and req.url:lower():match("^http://") then
    return fail(self.label .. ": " .. require("healthcare.client").proxy_refusal(req.url, what, proxy, variable),
      { status = "CLEARTEXT_PROXY" })
  end
  self:log("> " .. req.method .. " " .. shown .. " (" .. what .. " for " .. self.label .. ")")
  for _, h in ipairs(req.headers or {}) do self:log("> " .. util.redact_header(h, secrets)) end
  req.proxy = proxy or "" -- as decided, for libcurl too (util.transport_proxy)
  local res, err = self:http():request(req)
  if not res then
    err = creds().auth_transport_error(err, "source_answer_too_large")
    return fail(string.format("%s: cannot get %s from %s: %s", self.label, what, shown,
      (util.redact(err.message, secrets):gsub("^%u+ %S+: ", ""))), { status = err.status })
  end
  self:log(string.format("< HTTP %d", res.status))
  if res.status ~= 200 then
    local body = util.redact(res.body or "", secrets):sub(1, 200)
    return fail(string.format("%s: cannot get %s: %s answered HTTP %d%s", self.label, what, shown, res.status,
      body ~= "" and (": " .. body) or ""), { http_status = res.status })
  end
  return res.body or ""
end

-- ---- subject tokens ------------------------------------------------------------------------

-- The subject token in text (a file's or a URL's), by the source's format.
local function from_format(self, text, where)
  if self.format == "json" then
    local doc = util.decode_json(text)
    local v = type(doc) == "table" and doc[self.field_name]
    if type(v) ~= "string" or v == "" then
      return fail(string.format("%s: %s is not JSON with a string field '%s' (subject_token_field_name)",
        self.label, where, self.field_name))
    end
    return v
  end
  if text == "" then return fail(string.format("%s: %s is empty: no subject token", self.label, where)) end
  return text
end

local function file_token(self)
  local where = "the subject token file '" .. self.source_file .. "'"
  -- Another user's token would make this user act as that user's identity.
  local text, err = creds().read_trusted(self.source_file, where, M.MAX_SUBJECT_TOKEN, self.label)
  if not text then return nil, err end
  return from_format(self, text, where)
end

local function url_token(self)
  local body, err = source_request(self, { method = "GET", url = self.source_url, headers = self.source_headers },
    "the subject token")
  if not body then return nil, err end
  return from_format(self, body, "the answer of " .. util.redact_url(self.source_url))
end

-- ---- the executable source ---------------------------------------------------------------

-- Splits a command line into words as a POSIX shell would split plain words and quotes (no
-- expansion of any kind): Google's libraries run the command without a shell too.
function M.split_command(s)
  local words, cur, i, quote, have = {}, {}, 1, nil, false
  while i <= #s do
    local c = s:sub(i, i)
    if quote then
      if c == quote then quote = nil
      elseif c == "\\" and quote == '"' and s:sub(i + 1, i + 1):match('["\\$`]') then
        i = i + 1
        cur[#cur + 1] = s:sub(i, i)
      else cur[#cur + 1] = c end
    elseif c == "'" or c == '"' then quote, have = c, true
    elseif c == "\\" and i < #s then
      i = i + 1
      cur[#cur + 1], have = s:sub(i, i), true
    elseif c:match("%s") then
      if have or #cur > 0 then words[#words + 1] = table.concat(cur) end
      cur, have = {}, false
    else cur[#cur + 1], have = c, true end
    i = i + 1
  end
  if quote then return nil, "an unclosed quote" end
  if have or #cur > 0 then words[#words + 1] = table.concat(cur) end
  if #words == 0 then return nil, "no command" end
  return words
end

-- The subject token of an executable's answer (a decoded table), or nil, err; checks the
-- version, success, token type and expiry as Google's libraries do. where names it.
local function executable_answer(self, doc, where, need_expiry)
  if type(doc) ~= "table" then return fail(string.format("%s: %s is not a JSON object", self.label, where)) end
  if doc.version ~= 1 then
    return fail(string.format("%s: %s has version %s; version 1 is supported", self.label, where,
      type(doc.version) == "number" and string.format("%g", doc.version) or tostring(doc.version)))
  end
  if doc.success == false then
    return fail(string.format("%s: %s says it failed: %s: %s", self.label, where,
      errors.cut(tostring(doc.code), errors.MAX_STATUS), errors.cut(tostring(doc.message))),
      { status = "EXECUTABLE_FAILED" })
  end
  if doc.success ~= true then return fail(string.format("%s: %s has no 'success'", self.label, where)) end
  local field = M.EXECUTABLE_TOKEN_TYPES[doc.token_type]
  if not field then
    return fail(string.format("%s: %s has token_type '%s'; expected a jwt, id_token or saml2 token type",
      self.label, where, errors.cut(tostring(doc.token_type), errors.MAX_STATUS)))
  end
  local exp = doc.expiration_time
  -- An infinity (1e400 is JSON) would make a cached answer good for ever.
  if exp ~= nil and not util.finite_number(exp) then
    return fail(string.format("%s: %s has a non-numeric expiration_time", self.label, where))
  end
  if exp == nil and need_expiry then
    return fail(string.format("%s: %s has no expiration_time, which an output_file needs", self.label, where))
  end
  if exp and exp <= os.time() then return nil, "expired" end
  local token = doc[field]
  if type(token) ~= "string" or token == "" then
    return fail(string.format("%s: %s has no %s", self.label, where, field))
  end
  return hold(self, token)
end

local function executable_env(self)
  local env = {
    GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE = self.audience,
    GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE = self.subject_token_type,
    GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE = "0",
    GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL = self.impersonated_email,
    GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE = self.output_file,
  }
  local parts = {}
  for _, k in ipairs({ "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE", "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE",
    "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE", "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL",
    "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE" }) do
    if env[k] then parts[#parts + 1] = k .. "=" .. shell_quote(env[k]) end
  end
  return table.concat(parts, " ")
end

-- The shell script the executable runs in, under coreutils' timeout (TERM at timeout_millis,
-- KILL a second later, to the whole process group): its output through head, so no more than
-- the cap is ever read, then its exit status. A child it detaches (setsid) may keep the pipe to
-- head open; head is then killed at the timeout, which is kept. Arguments: the command's words.
local RUN_SCRIPT = [[{ "$@" </dev/null 2>/dev/null; s=$?; echo; echo "#exit $s"; } | head -c %d]]

-- Runs the executable with its timeout. Returns its standard output (no more than
-- MAX_SUBJECT_TOKEN + 1 bytes and a marker's), its exit status (nil when unknown), and whether
-- it timed out.
local function run_executable(self)
  local words = {}
  for i, w in ipairs(self.command) do words[i] = shell_quote(w) end
  local seconds = self.timeout_ms / 1000
  local script = string.format(RUN_SCRIPT, M.MAX_SUBJECT_TOKEN + 32)
  local line = string.format('env %s timeout -k 1 %.3f /bin/sh -c %s sh %s 2>/dev/null; t=$?; echo; echo "#timeout $t"',
    executable_env(self), seconds, shell_quote(script), table.concat(words, " "))
  self:log(string.format("running the executable %s (timeout %.3f s) for %s", util.printable(self.command[1]),
    seconds, self.label))
  local t0 = core.now()
  local p = io.popen(line, "r")
  if not p then return nil, nil, false end
  local out = p:read("*a") or ""
  p:close()
  local inner, t = out:match("^(.*)\n#timeout (%d+)\n$")
  -- timeout's own statuses when the time ran out; the command's 124 is its own (in #exit).
  local timed_out = (t == "124" or t == "137") and core.now() - t0 >= seconds - 0.01
  local body, status = (inner or ""):match("^(.-)\n#exit (%d+)\n$")
  return body or inner or "", tonumber(status), timed_out
end

local function executable_token(self)
  if getenv(M.ALLOW_EXECUTABLES) ~= "1" then
    return fail(self.label .. ": executables need to be explicitly allowed (set " .. M.ALLOW_EXECUTABLES
      .. " to '1') to run", { status = "EXECUTABLE_NOT_ALLOWED" })
  end
  if self.output_file then
    -- A planted answer would be used as this user's subject token: not another user's file.
    local text, rerr = creds().read_trusted(self.output_file, "the executable's output_file '" .. self.output_file
      .. "'", M.MAX_SUBJECT_TOKEN, self.label)
    if not text and rerr.status == "UNSAFE_FILE" then return nil, rerr end
    if text then
      local token = executable_answer(self, util.decode_json(text), "the output_file", true)
      -- An expired or unusable cached answer: run the executable again, as Google's libraries do.
      if type(token) == "string" then
        self:log("using the executable's answer cached in its output_file for " .. self.label)
        return token
      end
    end
  end
  local out, status, timed_out = run_executable(self)
  if timed_out then
    return fail(string.format("%s: the executable timed out after %d ms", self.label, self.timeout_ms),
      { status = "EXECUTABLE_TIMEOUT" })
  end
  if #out > M.MAX_SUBJECT_TOKEN then
    return fail(string.format("%s: the executable's answer is larger than %d bytes", self.label, M.MAX_SUBJECT_TOKEN),
      { status = "EXECUTABLE_FAILED" })
  end
  if status ~= 0 then
    return fail(string.format("%s: the executable failed (exit status %s)", self.label, tostring(status)),
      { status = "EXECUTABLE_FAILED" })
  end
  local doc = util.decode_json(out or "")
  if out and not doc then hold(self, (out:gsub("%s+$", ""))) end
  local token, err = executable_answer(self, doc, "the executable's answer", self.output_file ~= nil)
  if token == nil and err == "expired" then
    return fail(self.label .. ": the executable's answer has already expired")
  end
  return token, err
end

-- ---- the aws source -----------------------------------------------------------------------
-- The requests go through self.fetch_source when set (the OpenResty gateway's internal
-- location, healthcare.ngx.token_sources), else through source_request.

local function aws_request(self, req, what)
  req.max_response_bytes = req.max_response_bytes or M.MAX_SUBJECT_TOKEN
  return (self.fetch_source or source_request)(self, req, what)
end

-- The IMDSv2 session token, when the source names its URL and the metadata is needed.
local function imds_headers(self)
  if not self.aws.imdsv2_session_token_url then return {} end
  local token, err = aws_request(self, { method = "PUT", url = self.aws.imdsv2_session_token_url,
    headers = { "X-aws-ec2-metadata-token-ttl-seconds: " .. M.IMDSV2_TTL } }, "an IMDSv2 session token")
  if not token then return nil, err end
  hold(self, token)
  -- It goes into a header: a CR, LF or NUL there would be refused by the transport (raised).
  if token == "" or core.has_ctl(token) then
    return fail(self.label .. ": the AWS metadata answered an IMDSv2 session token that is not one (empty or "
      .. "with control characters)")
  end
  return { "X-aws-ec2-metadata-token: " .. token }
end

local function aws_region(self, headers)
  local region = getenv("AWS_REGION") or getenv("AWS_DEFAULT_REGION")
  if region then return region end
  if not self.aws.region_url then return fail(self.label .. ": no AWS region: set AWS_REGION or region_url") end
  local zone, err = aws_request(self, { method = "GET", url = self.aws.region_url, headers = headers },
    "the AWS region")
  if not zone then return nil, err end
  zone = zone:gsub("%s+$", "")
  if not zone:match("^[a-z0-9-]+[a-z]$") then
    return fail(self.label .. ": the AWS metadata answered an availability zone that is not one")
  end
  return zone:sub(1, -2)
end

-- The AWS keys as SigV4 signing takes them (it raises on anything else): the key id and secret
-- strings, the session token a string or absent, none with a control character (they go into
-- headers). names: the field of each, as its origin (where) calls it; no value is quoted.
local ROLE_FIELDS = { id = "AccessKeyId", secret = "SecretAccessKey", token = "Token" }
local ENV_FIELDS = { id = "AWS_ACCESS_KEY_ID", secret = "AWS_SECRET_ACCESS_KEY", token = "AWS_SESSION_TOKEN" }
local function check_keys(self, keys, names, where)
  if keys.token == "" then keys.token = nil end
  for _, k in ipairs({ "id", "secret", "token" }) do
    local v = keys[k]
    if not (v == nil and k == "token") and (type(v) ~= "string" or v == "" or core.has_ctl(v)) then
      return fail(string.format("%s: %s: '%s' is not a non-empty string without control characters", self.label,
        where, names[k]))
    end
  end
  return keys
end

local function aws_keys(self, headers)
  local id, secret = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
  if id and secret then
    return check_keys(self, { id = id, secret = hold(self, secret), token = hold(self, getenv("AWS_SESSION_TOKEN")) },
      ENV_FIELDS, "the AWS variables")
  end
  if not self.aws.url then return fail(self.label .. ": no AWS credentials: no url in credential_source") end
  local role, err = aws_request(self, { method = "GET", url = self.aws.url, headers = headers }, "the AWS role")
  if not role then return nil, err end
  role = role:gsub("%s+$", "")
  -- The role goes into the next URL: a NUL (which %s misses) would be refused there (raised).
  if role == "" or role:find("[/%s?#]") or core.has_ctl(role) then
    return fail(self.label .. ": the AWS metadata named no usable role")
  end
  local body
  body, err = aws_request(self, { method = "GET", url = self.aws.url:gsub("/$", "") .. "/" .. role,
    headers = headers }, "the AWS role's credentials")
  if not body then return nil, err end
  local doc = util.decode_json(body)
  if type(doc) ~= "table" then
    return fail(self.label .. ": the AWS role's credentials are not JSON with AccessKeyId and SecretAccessKey")
  end
  hold(self, doc.SecretAccessKey)
  hold(self, doc.Token)
  return check_keys(self, { id = doc.AccessKeyId, secret = doc.SecretAccessKey, token = doc.Token }, ROLE_FIELDS,
    "the AWS role's credentials")
end

local function aws_token(self)
  local needs_metadata = not (getenv("AWS_REGION") or getenv("AWS_DEFAULT_REGION"))
    or not (getenv("AWS_ACCESS_KEY_ID") and getenv("AWS_SECRET_ACCESS_KEY"))
  local headers, err = {}
  if needs_metadata then
    headers, err = imds_headers(self)
    if not headers then return nil, err end
  end
  local region
  region, err = aws_region(self, headers)
  if not region then return nil, err end
  local keys
  keys, err = aws_keys(self, headers)
  if not keys then return nil, err end
  local url = self.aws.verification_url:gsub("{region}", region)
  local host, query = url:match("^https://([^/?#]+)/?%??(.*)$")
  if not host then return fail(self.label .. ": regional_cred_verification_url must be an https URL") end
  local target = self.audience
  local signed, serr = core.sigv4_sign({ method = "POST", host = host, path = "/", query = query,
    headers = { ["x-goog-cloud-target-resource"] = target }, region = region, service = "sts",
    access_key_id = keys.id, secret_access_key = keys.secret, session_token = keys.token })
  if not signed then return fail(self.label .. ": " .. serr.message) end
  local list = {
    { key = "Authorization", value = signed.Authorization }, { key = "Host", value = host },
    { key = "X-Amz-Date", value = signed["x-amz-date"] }, { key = "X-Goog-Cloud-Target-Resource", value = target },
  }
  if signed["x-amz-security-token"] then list[#list + 1] = { key = "X-Amz-Security-Token", value = keys.token } end
  hold(self, signed.Authorization)
  return core.escape(cjson.encode({ url = url, method = "POST", headers = list }))
end

M.SOURCES = { file = file_token, url = url_token, executable = executable_token, aws = aws_token }

--- The aws source's subject token for another transport: self = { aws (from_info's), label,
--- audience, held = {} (the secrets met are added), fetch_source(self, req, what) -> the body of
--- a 200, or nil, err }. Returns the token, or nil, err.
M.aws_subject_token = aws_token

-- ---- the STS exchange ---------------------------------------------------------------------

-- The Basic client authentication of client_id and client_secret (RFC 6749 2.3.1: each
-- form-encoded first), or nil. It is a secret of its own: an echo of it does not hold the
-- client secret as text.
local function basic_auth(client_id, client_secret)
  if not (client_id and client_secret) then return nil end
  return base64(core.escape(client_id) .. ":" .. core.escape(client_secret))
end

local function client_auth(self, headers)
  if self.basic_auth then headers[#headers + 1] = "Authorization: Basic " .. self.basic_auth end
  return headers
end

local function fetch_sts(self, scopes)
  local subject, err = M.SOURCES[self.source_kind](self)
  if not subject then return nil, err end
  hold(self, subject)
  local form = { grant_type = M.TOKEN_EXCHANGE, requested_token_type = M.ACCESS_TOKEN_TYPE,
    audience = self.audience, scope = table.concat(scopes, " "), subject_token_type = self.subject_token_type,
    subject_token = subject }
  -- Google's libraries: not with client authentication (the client names the project then).
  if self.user_project and not self.client_id then form.options = cjson.encode({ userProject = self.user_project }) end
  local res
  res, err = self:request_token({ method = "POST", url = self.token_uri, timeout = self.timeout,
    headers = client_auth(self, { "Content-Type: application/x-www-form-urlencoded", "Accept: application/json" }),
    body = util.query_string(form) }, { subject })
  if not res then return nil, err end
  return creds().internal.read_token(self, res, {})
end

local function fetch_refresh(self, scopes)
  local form = { grant_type = "refresh_token", refresh_token = self.refresh_token }
  if self.scoped then form.scope = table.concat(scopes, " ") end
  local res, err = self:request_token({ method = "POST", url = self.token_uri, timeout = self.timeout,
    headers = client_auth(self, { "Content-Type: application/x-www-form-urlencoded", "Accept: application/json" }),
    body = util.query_string(form) }, {})
  if not res then return nil, err end
  local doc = util.decode_json(res.body or "")
  -- A rotated refresh token replaces the old one (kept for redaction: an answer may echo it).
  if type(doc) == "table" and type(doc.refresh_token) == "string" and doc.refresh_token ~= "" then
    hold(self, self.refresh_token)
    self.refresh_token = doc.refresh_token
  end
  return creds().internal.read_token(self, res, {})
end

-- ---- reading the files --------------------------------------------------------------------

local function text_field(t, k, where)
  local v = t[k]
  if v == nil or v == "" then return nil end
  if type(v) ~= "string" then return false, errors.new("auth", string.format("%s: '%s' must be a string", where, k)) end
  return v
end

local function read_format(self, cs, where)
  local fmt = cs.format
  if fmt == nil then self.format = "text" return true end
  if type(fmt) ~= "table" or (fmt.type ~= nil and fmt.type ~= "text" and fmt.type ~= "json") then
    return fail(where .. ": credential_source.format.type must be 'text' or 'json'")
  end
  self.format = fmt.type or "text"
  if self.format == "json" then
    if type(fmt.subject_token_field_name) ~= "string" or fmt.subject_token_field_name == "" then
      return fail(where .. ": credential_source.format.subject_token_field_name is needed for the json format")
    end
    self.field_name = fmt.subject_token_field_name
  end
  return true
end

local function read_url_source(self, cs, where)
  local ok, err = creds().internal.check_url(cs.url, where, "credential_source.url")
  if not ok then return nil, err end
  self.source_url, self.source_headers = cs.url, {}
  if cs.headers ~= nil and type(cs.headers) ~= "table" then
    return fail(where .. ": credential_source.headers must be an object")
  end
  local names = {}
  for k in pairs(cs.headers or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = cs.headers[k]
    if type(k) ~= "string" or type(v) ~= "string" or core.has_ctl(k .. v) or not k:match("^[%w!#$%%&'*+.^_`|~-]+$") then
      return fail(where .. ": credential_source.headers must map header names to strings without CR, LF or NUL")
    end
    self.source_headers[#self.source_headers + 1] = k .. ": " .. v
    -- Which header carries a credential is the identity provider's choice (X-Vault-Token,
    -- Authorization, a CI system's own): every value is a secret but those of the headers known
    -- to carry none, which would otherwise garble messages (Accept: application/json).
    if not M.PLAIN_HEADERS[k:lower()] then self.sent_secrets[#self.sent_secrets + 1] = v end
  end
  return read_format(self, cs, where)
end

local function read_executable(self, cs, where)
  local ex = cs.executable
  if type(ex) ~= "table" or type(ex.command) ~= "string" then
    return fail(where .. ": credential_source.executable.command must be a string")
  end
  local words, why = M.split_command(ex.command)
  if not words then return fail(where .. ": credential_source.executable.command: " .. why) end
  self.command = words
  local t = ex.timeout_millis or M.EXECUTABLE_TIMEOUT_MS
  if not util.finite_number(t, M.EXECUTABLE_MIN_MS, M.EXECUTABLE_MAX_MS) then -- (NaN passes < and >)
    return fail(string.format("%s: credential_source.executable.timeout_millis must be %d to %d", where,
      M.EXECUTABLE_MIN_MS, M.EXECUTABLE_MAX_MS))
  end
  self.timeout_ms = math.floor(t)
  local out, err = text_field(ex, "output_file", where)
  if out == false then return nil, err end
  self.output_file = out
  return true
end

local function read_aws(self, cs, where)
  local env = cs.environment_id
  local version = type(env) == "string" and env:match("^aws(%d+)$")
  if version ~= "1" then
    return fail(where .. ": credential_source.environment_id must be 'aws1' (got '"
      .. creds().internal.shown(env) .. "')")
  end
  self.aws = { verification_url = cs.regional_cred_verification_url or M.AWS_VERIFICATION_URL }
  for _, k in ipairs({ "region_url", "url", "imdsv2_session_token_url" }) do
    if cs[k] ~= nil then
      local ok, err = creds().internal.check_url(cs[k], where, "credential_source." .. k)
      if not ok then return nil, err end
      self.aws[k] = cs[k]
    end
  end
  if type(self.aws.verification_url) ~= "string" or not self.aws.verification_url:match("^https://") then
    return fail(where .. ": credential_source.regional_cred_verification_url must be an https URL")
  end
  return true
end

local function read_source(self, cs, where)
  if type(cs) ~= "table" then return fail(where .. ": 'credential_source' must be an object") end
  if cs.environment_id ~= nil then
    self.source_kind = "aws"
    return read_aws(self, cs, where)
  end
  if cs.executable ~= nil then
    self.source_kind = "executable"
    return read_executable(self, cs, where)
  end
  if cs.file ~= nil and cs.url ~= nil then
    return fail(where .. ": credential_source has both 'file' and 'url'; give one")
  end
  if cs.file ~= nil then
    if type(cs.file) ~= "string" or cs.file == "" then
      return fail(where .. ": credential_source.file must be a path")
    end
    self.source_kind, self.source_file = "file", cs.file
    return read_format(self, cs, where)
  end
  if cs.url ~= nil then
    self.source_kind = "url"
    return read_url_source(self, cs, where)
  end
  return fail(where .. ": credential_source needs one of file, url, executable or environment_id (aws)")
end

-- The fields every external kind shares, checked: strings or absent.
local function strings(info, names, where)
  local out = {}
  for _, k in ipairs(names) do
    local v, err = text_field(info, k, where)
    if v == false then return nil, err end
    out[k] = v
  end
  return out
end

local function external_account(info, opts, where)
  local C = creds()
  local f, err = strings(info, { "audience", "subject_token_type", "token_url", "service_account_impersonation_url",
    "client_id", "client_secret", "workforce_pool_user_project" }, where)
  if not f then return nil, err end
  for _, k in ipairs({ "audience", "subject_token_type" }) do
    if not f[k] then return fail(string.format("%s: missing '%s' (required for type 'external_account')", where, k)) end
  end
  local token_url = f.token_url or M.DEFAULT_TOKEN_URL
  local ok, uerr = C.internal.check_url(token_url, where, "token_url")
  if not ok then return nil, uerr end
  if f.workforce_pool_user_project and not f.audience:match(M.WORKFORCE_AUDIENCE) then
    return fail(where .. ": workforce_pool_user_project is only for a workforce pool audience")
  end
  if (f.client_id == nil) ~= (f.client_secret == nil) then
    return fail(where .. ": client_id and client_secret go together")
  end
  local qp, qerr = C.internal.quota_project(opts, info, where)
  if qp == false then return nil, qerr end
  local impersonation = f.service_account_impersonation_url
  -- The pool and provider: what tells one configuration from another.
  local provider = f.audience:match("([^/]+/[^/]+/providers/[^/]+)$") or f.audience
  local fields = { label = "external account " .. C.internal.shown(provider), audience = f.audience,
    subject_token_type = f.subject_token_type, token_uri = token_url, token_url_shown = util.redact_url(token_url),
    client_id = f.client_id, client_secret = f.client_secret, user_project = f.workforce_pool_user_project,
    basic_auth = basic_auth(f.client_id, f.client_secret), sent_secrets = {},
    quota_project = qp, fetch = fetch_sts, scoped = true, held = {}, source = nil,
    impersonated_email = impersonation and require("healthcare.auth.impersonate").target_of(impersonation) }
  local rok, rerr = read_source(fields, info.credential_source, where)
  if not rok then return nil, rerr end
  fields.sent_secrets[#fields.sent_secrets + 1] = fields.basic_auth
  -- Sorted keys (cjson's order follows the table's hash, which changes from run to run): the same
  -- file, the same token cache entry (cjson's text for one encode_any refuses: not UTF-8).
  local source_text = require("healthcare.api.request").encode_any(info.credential_source)
    or cjson.encode(info.credential_source) or ""
  fields.identity = table.concat({ "external_account", f.audience, token_url, f.subject_token_type,
    core.sha256_hex(source_text), f.client_id or "" }, "\n")
  -- Behind an impersonation the STS token is an intermediate: not cached on disk.
  local sopts = opts
  if impersonation then
    sopts = {}
    for k, v in pairs(opts) do sopts[k] = v end
    sopts.token_cache = nil
  end
  local cred = C.internal.new_credential("external_account", sopts, fields)
  if not impersonation then return cred end
  local lifetime = type(info.service_account_impersonation) == "table"
    and info.service_account_impersonation.token_lifetime_seconds or nil
  local imp, ierr = require("healthcare.auth.impersonate").wrap(cred, impersonation, opts,
    { lifetime = lifetime, quota_project = qp }, where)
  if not imp then cred:close() end
  return imp, ierr
end

local function authorized_user(info, opts, where)
  local C = creds()
  local f, err = strings(info, { "audience", "refresh_token", "token_url", "client_id", "client_secret" }, where)
  if not f then return nil, err end
  local missing = {}
  for _, k in ipairs({ "refresh_token", "token_url", "client_id", "client_secret" }) do
    if not f[k] then missing[#missing + 1] = "'" .. k .. "'" end
  end
  if #missing > 0 then
    return fail(string.format("%s: missing %s (required for type 'external_account_authorized_user')", where,
      table.concat(missing, ", ")))
  end
  local ok, uerr = C.internal.check_url(f.token_url, where, "token_url")
  if not ok then return nil, uerr end
  local qp, qerr = C.internal.quota_project(opts, info, where)
  if qp == false then return nil, qerr end
  local basic = basic_auth(f.client_id, f.client_secret)
  return C.internal.new_credential("external_account_authorized_user", opts, {
    label = "workforce user of client " .. C.internal.shown(f.client_id), audience = f.audience,
    client_id = f.client_id, client_secret = f.client_secret, refresh_token = f.refresh_token,
    basic_auth = basic, sent_secrets = { basic },
    token_uri = f.token_url, token_url_shown = util.redact_url(f.token_url), quota_project = qp, held = {},
    -- As authorized_user: the sign-in fixed the scopes.
    fetch = fetch_refresh, scoped = false,
    identity = table.concat({ "external_account_authorized_user", f.client_id, core.sha256_hex(f.refresh_token),
      f.token_url }, "\n"),
  })
end

--- A credential from an external_account or external_account_authorized_user ADC file
--- (decoded; where names it in errors), or nil, err.
function M.from_info(info, opts, where)
  for _, k in ipairs({ "subject", "self_signed_jwt" }) do
    if opts[k] then
      return fail(string.format("%s: %s needs a service account key, not an %s file", where, k, info.type))
    end
  end
  if info.type == "external_account" then return external_account(info, opts, where) end
  return authorized_user(info, opts, where)
end

return M
