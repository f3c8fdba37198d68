-- SPDX-License-Identifier: MIT
-- A private instance of spec/support/emulator.py for the credential specs, in front of the test
-- bed's Orthanc. The test bed's own emulator is shared by every spec file, and ctest runs spec
-- files in parallel: its token counters, its `expires_in` setting and its fault rules would be
-- seen (and consumed) by other files. This instance is this file's alone.
--   local emulator = require "support.emulator_instance"
--   local em = emulator.start()   -- em.url, em.token_uri, em.endpoint, em.store_url, em.metadata_host,
--                                 -- em.sts_url, em.iam_url, em.aws_metadata (the EC2 metadata service)
--   local em = emulator.start({ gcs = true })   -- with a Cloud Storage directory of its own: em.gcs
--   em:control("keys", {...}); em:stats(); em:count("token_requests", grant); em:stop()
--   em:service_account(); em:authorized_user()   -- credentials it knows
--   em:new_dicom_store(); em:new_bucket()          -- a dataset and store, a bucket, of our own
local H = require "helpers"

local M = {}
local PY = "/usr/bin/python3"

local Instance = {}
Instance.__index = Instance

--- Starts an emulator on free ports of 127.0.0.1 (with a metadata-only port) and waits for it.
--- opts.gcs: true for a directory of its own standing for Cloud Storage (--gcs-root), or that
--- directory's path; without it import/export/de-identify only report (see the README).
function M.start(opts)
  opts = opts or {}
  local E = H.env
  local dir = H.tmpdir()
  local out = dir .. "/out"
  local gcs = opts.gcs == true and dir .. "/gcs" or opts.gcs or nil
  local pid = H.check_run(table.concat({
    H.q(PY), H.q(E.support .. "/emulator.py"), "--port 0 --metadata-port 0 --aws-metadata-port 0",
    "--orthanc", H.q(E.orthanc), "--store", H.q(E.store), "--token", H.q(E.token .. "-private"),
    "--api-key", H.q(E.api_key .. "-private"), "--tmp", H.q(dir),
    gcs and "--gcs-root " .. H.q(gcs) or "",
    ">", H.q(out), "2>", H.q(dir .. "/err"), "& echo $!",
  }, " ")):match("%d+")
  local url, info
  for _ = 1, 600 do
    local text = H.file_bytes(out) or ""
    url, info = text:match("^(%S+)\n(%b{})\n")
    if url then break end
    os.execute("sleep 0.05")
  end
  assert(url, "the private emulator did not start: " .. (H.file_bytes(dir .. "/err") or ""))
  local self = setmetatable({ pid = pid, dir = dir, url = url, gcs = gcs, token = E.token .. "-private" },
    Instance)
  local details = H.json.decode(info)
  self.metadata_host = details.metadata_host
  self.aws_metadata = details.aws_metadata
  self.sts_url = url .. "/v1/token"                  -- an external_account file's token_url
  self.iam_url = url .. "/v1/projects/-/serviceAccounts/"   -- .. email .. ":generateAccessToken"
  self.token_uri = url .. "/token"
  self.endpoint = url .. "/v1"
  self.store_url = self.endpoint .. "/" .. E.store .. "/dicomWeb"
  return self
end

--- Starts a private emulator and points H.env (and so every helper: emulator_faults,
--- emulator_stats, service_account, ...) at it for the rest of this spec file, which stops it
--- with teardown(function() em:stop() end). For files that count the emulator's requests or
--- set its fault rules and config: on the shared one, other files run in parallel by ctest
--- would see and consume them.
function M.use_privately(opts)
  local em = M.start(opts)
  local E = H.env
  E.emulator, E.endpoint, E.store_url, E.token_uri = em.url, em.endpoint, em.store_url, em.token_uri
  E.metadata_host, E.aws_metadata = em.metadata_host, em.aws_metadata
  E.token, E.api_key = em.token, E.api_key .. "-private"
  return em
end

--- One API call at /v1/<path> with the curl command: verb, path, query (a map, sent sorted),
--- body (a table sent as JSON, or a string as it is), opts.token (false: no credential) ->
--- H.curl's result.
function Instance:api(verb, path, query, body, opts)
  opts = opts or {}
  local args = { "--path-as-is", "-X", verb }
  if opts.token ~= false then
    args[#args + 1] = "-H"
    args[#args + 1] = "Authorization: Bearer " .. (opts.token or self.token)
  end
  if body ~= nil then
    args[#args + 1] = "-H"
    args[#args + 1] = "Content-Type: application/json"
    args[#args + 1] = "--data-binary"
    args[#args + 1] = type(body) == "string" and body or H.json.encode(body)
  end
  local names, parts = {}, {}
  for k in pairs(query or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    parts[#parts + 1] = k .. "=" .. (tostring(query[k]):gsub("[^%w%-%._~]", function(c)
      return string.format("%%%02X", c:byte())
    end))
  end
  args[#args + 1] = self.endpoint .. "/" .. path .. (#parts > 0 and "?" .. table.concat(parts, "&") or "")
  return H.curl(args)
end

--- POST /_control/<what> with t as JSON; returns the decoded answer (raises on failure).
function Instance:control(what, t)
  local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
    H.json.encode(t or {}), self.url .. "/_control/" .. what })
  assert(r.status == 200, "emulator control " .. what .. " -> " .. tostring(r.status) .. " " .. r.body)
  return r.json
end

function Instance:stats()
  local r = H.curl({ self.url .. "/_control/stats" })
  assert(r.status == 200, "emulator stats -> " .. tostring(r.status))
  return r.json
end

--- One counter of stats (stats()[field], or stats()[field][sub]) as a number: 0 until counted.
function Instance:count(field, sub)
  local v = self:stats()[field]
  if sub then v = type(v) == "table" and v[sub] or nil end
  return tonumber(v) or 0
end

--- A service account whose key file's token_uri is here, registered here unless opts.register ==
--- false; opts.form and opts.fields as H.service_account's, and its fields.
function Instance:service_account(opts)
  opts = opts or {}
  local fields = { token_uri = self.token_uri }
  for k, v in pairs(opts.fields or {}) do fields[k] = v end
  local sa = H.service_account({ form = opts.form, fields = fields, register = false })
  if opts.register ~= false then
    self:control("keys", { kid = sa.kid, client_email = sa.client_email, public_key_pem = sa.public_key_pem })
  end
  return sa
end

--- An authorized_user registered here: { key_file, client_id, client_secret, refresh_token }.
function Instance:authorized_user()
  local n = math.random(1, 1e9)
  local u = { client_id = "client-" .. n .. ".apps.googleusercontent.com", client_secret = "secret-" .. n,
    refresh_token = "refresh-" .. n }
  self:control("authorized_users", u)
  u.key_file = H.write_file(H.tmpdir() .. "/authorized_user.json", H.json.encode({ type = "authorized_user",
    client_id = u.client_id, client_secret = u.client_secret, refresh_token = u.refresh_token,
    token_uri = self.token_uri }))
  return u
end

--- The test bed's location at this emulator.
Instance.LOCATION = "projects/test-project/locations/us-central1"

-- An /v1 answer that must be 200: its JSON.
local function ok(r)
  assert(r.status == 200, "expected 200, got " .. tostring(r.status) .. ": " .. r.body)
  return r.json
end

--- A dataset and a DICOM store ("s") of our own, made through the API: their names.
function Instance:new_dicom_store()
  local id = H.fresh_id("ds")
  ok(self:api("POST", Instance.LOCATION .. "/datasets", { datasetId = id }, {}))
  local dataset = Instance.LOCATION .. "/datasets/" .. id
  ok(self:api("POST", dataset .. "/dicomStores", { dicomStoreId = "s" }, {}))
  return dataset, dataset .. "/dicomStores/s"
end

--- A bucket of our own under this emulator's Cloud Storage directory (start{ gcs = true }): its
--- name and path.
function Instance:new_bucket()
  local name = "bkt-" .. math.random(1, 1e9)
  H.check_run("mkdir -p " .. H.q(self.gcs .. "/" .. name))
  return name, self.gcs .. "/" .. name
end

function Instance:stop()
  if self.pid then
    H.run("kill " .. self.pid .. "; for i in $(seq 100); do kill -0 " .. self.pid
      .. " 2>/dev/null || exit 0; sleep 0.05; done; kill -9 " .. self.pid)
    self.pid = nil
  end
end

return M
