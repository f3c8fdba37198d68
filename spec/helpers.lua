-- SPDX-License-Identifier: MIT
--
-- Helpers for the busted specs: the test bed's addresses (HC_TEST_*), shell
-- commands, the curl COMMAND (never our library) to look at Orthanc and the
-- emulator, generated and sample DICOM files. Run specs inside the test bed:
--
--   spec/support/testbed lua5.4 /usr/bin/busted
--
-- local H = require "helpers"   (spec/ is on LUA_PATH)
-- if not H.need_testbed() then return end   -- at the top of a spec file

local cjson = require "cjson.safe"

local H = {}

local PY = "/usr/bin/python3"

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

-- The test bed's addresses; nil fields outside the test bed.
H.env = {
  orthanc = getenv("HC_TEST_ORTHANC"),
  dicomweb = getenv("HC_TEST_DICOMWEB"),
  emulator = getenv("HC_TEST_EMULATOR"),
  store = getenv("HC_TEST_STORE"),
  token = getenv("HC_TEST_TOKEN"),
  api_key = getenv("HC_TEST_API_KEY"),
  tmp = getenv("HC_TEST_TMP"),
  samples = getenv("HC_TEST_SAMPLES"),
  metadata_host = getenv("HC_TEST_METADATA_HOST"),
  aws_metadata = getenv("HC_TEST_AWS_METADATA"),   -- the EC2 instance metadata service's URL
  support = getenv("HC_TEST_SUPPORT") or "spec/support",
  gcs = getenv("HC_TEST_GCS"),                 -- the directory standing for Cloud Storage
  netns = getenv("HC_TEST_NETNS") == "1",
}
local E = H.env
if E.emulator then
  E.endpoint = E.emulator .. "/v1"             -- what healthcare.new{endpoint=} takes
  E.token_uri = E.emulator .. "/token"          -- a key file's token_uri
  E.store_url = E.endpoint .. "/" .. E.store .. "/dicomWeb"
end

H.NOT_IN_TESTBED = "not inside the test bed: run `spec/support/testbed lua5.4 /usr/bin/busted`"

-- True inside the test bed. Outside it raises, unless HC_TEST_ALLOW_SKIP=1,
-- in which case the calling spec is marked pending and false is returned.
function H.in_testbed()
  return E.netns and E.orthanc ~= nil and E.emulator ~= nil
end

function H.need_testbed()
  if H.in_testbed() then return true end
  if getenv("HC_TEST_ALLOW_SKIP") == "1" and pending then
    pending(H.NOT_IN_TESTBED)
    return false
  end
  error(H.NOT_IN_TESTBED, 2)
end

-- Quote one word for /bin/sh.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_all(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- LuaJIT starts math.random from the same seed in every process, and Lua 5.4's own seed (time
-- and an address) repeats under the ASan wrapper, whose addresses are fixed: specs running side
-- by side would pick the same temporary names and UIDs. The process id tells them apart.
do
  local f = io.open("/proc/self/stat")
  local pid = f and tonumber(f:read("*l"):match("^%d+")) or 0
  if f then f:close() end
  math.randomseed((os.time() % 1000000) * 100000 + pid % 100000 + math.floor(os.clock() * 1e6) % 1000)
end

local tmp_count = 0
local function tmpname()
  tmp_count = tmp_count + 1
  local base = E.tmp or os.getenv("TMPDIR") or "/tmp"
  return string.format("%s/h-%d-%d-%d", base, os.time(), tmp_count, math.random(1, 1e9))
end

-- run(cmd [, stdin_string]) -> stdout, stderr, exit code (a number; 128+n for a signal).
function H.run(cmd, stdin)
  local out, err = tmpname(), tmpname()
  if stdin then
    local inp = tmpname()
    write_all(inp, stdin)
    cmd = "(" .. cmd .. ") <" .. H.q(inp) .. "; rc=$?; rm -f " .. H.q(inp) .. "; exit $rc"
  end
  local ok, how, code = os.execute("(" .. cmd .. ") >" .. H.q(out) .. " 2>" .. H.q(err))
  local so, se = read_all(out) or "", read_all(err) or ""
  os.remove(out)
  os.remove(err)
  if type(ok) == "number" then
    -- Lua 5.1 / LuaJIT: os.execute returns system(3)'s wait status.
    if ok % 256 == 0 then code = math.floor(ok / 256) else code = 128 + ok % 128 end
  end
  if how == "signal" then code = 128 + code end
  if ok == true and code == nil then code = 0 end
  return so, se, code
end

-- Polls fn() every 0.2 s until it returns a true value (returned) or `seconds` pass (nil).
function H.wait_for(seconds, fn)
  local deadline = os.time() + seconds
  repeat
    local v = fn()
    if v then return v end
    H.run("sleep 0.2")
  until os.time() > deadline
  return nil
end

-- Calls f, which must raise `message` at the line where f is written in a spec file (its one
-- call is on that line, and is not a tail call: `local _ = ...`).
function H.raises_at_call(f, message)
  local luassert = require "luassert" -- (the spec files' `assert`; this module sees Lua's own)
  local info = debug.getinfo(f, "S")
  local ok, err = pcall(f)
  luassert.is_false(ok, "did not raise: " .. message)
  luassert.equal(info.source:match("(spec/.*)$") .. ":" .. info.linedefined .. ": " .. message,
    tostring(err):match("(spec/.*)$"))
end

-- run(cmd) that must succeed: stdout, or an error with stderr in it.
function H.check_run(cmd, stdin)
  local so, se, code = H.run(cmd, stdin)
  if code ~= 0 then
    error(string.format("command failed (%s): %s\n%s", tostring(code), cmd, se), 2)
  end
  return so, se
end

-- The `healthcare` command of this build (ctest sets HC_BUILD_DIR) with args, each quoted: a shell
-- command, for specs that run it in the background or add redirections.
-- The build's `healthcare` command (runs this checkout's Lua files).
H.BIN = (getenv("HC_BUILD_DIR") or "build") .. "/bin/healthcare"
function H.healthcare_command(args)
  local words = { H.q(H.BIN) }
  for _, a in ipairs(args) do words[#words + 1] = H.q(a) end
  return table.concat(words, " ")
end

-- healthcare(args [, stdin]) -> stdout, stderr, exit code of the command (see run).
function H.healthcare(args, stdin)
  return H.run(H.healthcare_command(args), stdin)
end

local function parse_headers(raw)
  -- With redirects or 100 Continue there are several blocks: keep the last.
  local last = raw
  for block in raw:gmatch("HTTP/[^\r\n]*\r?\n.-\r?\n\r?\n") do last = block end
  local h = {}
  for name, value in last:gmatch("([%w%-]+):%s*([^\r\n]*)") do
    h[name:lower()] = value
  end
  return h
end

-- curl(args) with args a list of curl arguments (each quoted for you) or a
-- raw string. Sends an empty Expect: (Orthanc never answers 100-continue).
-- Returns { status = n, body = s, headers = {lower-case name = value},
-- json = decoded body or nil, stderr = s, exit = curl's exit code }.
function H.curl(args)
  local words = args
  if type(args) == "table" then
    local t = {}
    for i, a in ipairs(args) do t[i] = H.q(a) end
    words = table.concat(t, " ")
  end
  local body, hdr = tmpname(), tmpname()
  local so, se, code = H.run("curl -sS -H 'Expect:' -o " .. H.q(body) .. " -D " .. H.q(hdr) ..
    " -w '%{http_code}' " .. words)
  local r = {
    status = tonumber(so:match("(%d+)%s*$")),
    body = read_all(body) or "",
    raw_headers = read_all(hdr) or "",
    stderr = se,
    exit = code,
  }
  os.remove(body)
  os.remove(hdr)
  r.headers = parse_headers(r.raw_headers)
  if r.status == 0 then r.status = nil end
  r.json = cjson.decode(r.body)
  return r
end

-- Orthanc's id of the instance with this SOP Instance UID, or nil.
function H.orthanc_find_instance(sop_uid)
  local r = H.curl({ "-X", "POST", "--data-binary",
    cjson.encode({ Level = "Instance", Query = { SOPInstanceUID = sop_uid } }),
    E.orthanc .. "/tools/find" })
  if r.status ~= 200 or type(r.json) ~= "table" then
    error("Orthanc /tools/find failed: " .. tostring(r.status) .. " " .. r.body .. r.stderr, 2)
  end
  return r.json[1]
end

-- What Orthanc holds of one study: SOP Instance UID -> number of instances with it, and the
-- number of instances (a store that sent one twice shows a 2, or an n too large).
function H.orthanc_sops(study_uid)
  local r = H.curl({ "-X", "POST", "--data-binary",
    cjson.encode({ Level = "Instance", Query = { StudyInstanceUID = study_uid }, Expand = true }),
    E.orthanc .. "/tools/find" })
  if r.status ~= 200 or type(r.json) ~= "table" then
    error("Orthanc /tools/find failed: " .. tostring(r.status) .. " " .. r.body .. r.stderr, 2)
  end
  local out, n = {}, 0
  for _, inst in ipairs(r.json) do
    local uid = inst.MainDicomTags.SOPInstanceUID
    out[uid] = (out[uid] or 0) + 1
    n = n + 1
  end
  return out, n
end

-- The bytes Orthanc stored for this SOP Instance UID, or nil if it has none.
function H.orthanc_instance_file(sop_uid)
  local id = H.orthanc_find_instance(sop_uid)
  if not id then return nil end
  local r = H.curl({ E.orthanc .. "/instances/" .. id .. "/file" })
  if r.status ~= 200 then error("Orthanc GET file failed: " .. tostring(r.status), 2) end
  return r.body
end

-- Number of instances Orthanc holds.
function H.orthanc_count()
  local r = H.curl({ E.orthanc .. "/statistics" })
  return r.json and r.json.CountInstances
end

function H.file_bytes(path)
  return read_all(path)
end

function H.write_file(path, data)
  write_all(path, data)
  return path
end

-- Hex SHA-256 of a file (sha256sum), or of a string with sha256_string.
function H.sha256(path)
  local so = H.check_run("sha256sum " .. H.q(path))
  return so:match("^(%x+)")
end

function H.sha256_string(s)
  local p = tmpname()
  write_all(p, s)
  local h = H.sha256(p)
  os.remove(p)
  return h
end

-- A fresh directory under HC_TEST_TMP (removed with the test bed).
-- How many file descriptors this process has open (sessions hold libcurl's wakeup pair, and
-- their connections a socket each): a count that comes back down when something is closed.
function H.open_fds()
  local n = 0
  for name in require("lfs").dir("/proc/self/fd") do
    if name ~= "." and name ~= ".." then n = n + 1 end
  end
  return n
end

-- A test server of spec/support started for the spec file that calls this at its top level:
-- `cmd` (shell words, quoted) runs in the background with its output in `dir` (out, err) and
-- prints its URL as its first line. Returns the URL and a function that stops it, for the spec's
-- teardown (busted's, which this module cannot see); it is stopped at once (an error naming
-- `name` and its stderr) when no URL came within 10 s.
function H.start_server(name, cmd, dir)
  local pid = tonumber(H.check_run(string.format("%s >%s 2>%s </dev/null & echo $!", cmd,
    H.q(dir .. "/out"), H.q(dir .. "/err"))):match("%d+"))
  local url
  for _ = 1, 200 do
    url = (H.file_bytes(dir .. "/out") or ""):match("^(http://%S+)\n")
    if url then break end
    os.execute("sleep 0.05")
  end
  local function stop()
    if pid then
      os.execute("kill " .. pid .. " 2>/dev/null")
      pid = nil
    end
  end
  if not url then
    stop()
    error("the " .. name .. " did not start: " .. (H.file_bytes(dir .. "/err") or ""), 2)
  end
  return url, stop
end

--- The capture server (spec/support/capture_server.py) started in a directory of its own, with
--- answers the spec scripts: { url, stop (for teardown), answers(list) (the next requests get
--- these { status, content_type, body }, in order; then {} again), captured() (the requests
--- recorded so far, decoded), forget() (none recorded from now) }.
function H.capture_server()
  local dir = H.tmpdir()
  local log, answers = dir .. "/captured.jsonl", dir .. "/answers.json"
  local url, stop = H.start_server("capture server", "/usr/bin/python3 " .. H.q(E.support .. "/capture_server.py")
    .. " " .. H.q(log) .. " " .. H.q(answers), dir)
  local cap = { url = url, stop = stop }
  function cap.answers(list) H.write_file(answers, cjson.encode(list)) end
  function cap.captured()
    local list = {}
    for line in (H.file_bytes(log) or ""):gmatch("[^\n]+") do list[#list + 1] = assert(cjson.decode(line)) end
    return list
  end
  function cap.forget() H.write_file(log, "") end
  return cap
end

-- Where text holds a JWT (three base64url pieces joined by dots, the first a JSON header: "eyJ"),
-- or nil. Not "eyJ" alone: random folder names (mktemp's XXXXXX) can hold that.
function H.find_jwt(text)
  return text:find("eyJ[%w_-]*%.[%w_-]+%.")
end

-- Regular files under dir (relative names, sorted).
function H.files_under(dir)
  local so = H.check_run("cd " .. H.q(dir) .. " && find . -type f | sed 's|^\\./||' | sort")
  local out = {}
  for line in so:gmatch("[^\n]+") do out[#out + 1] = line end
  return out
end

-- The bytes of a hex text (capture_server.py's body_hex).
function H.unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

function H.tmpdir()
  local so = H.check_run("mktemp -d " .. H.q((E.tmp or "/tmp") .. "/spec.XXXXXX"))
  return (so:gsub("%s+$", ""))
end

local function json_lines(s)
  local list = {}
  for line in s:gmatch("[^\n]+") do
    list[#list + 1] = assert(cjson.decode(line), "bad JSON line: " .. line)
  end
  return list
end

-- gen_dicom{ count=1, dir=tmpdir(), study=uid, series=uid, sop=uid, size=4096,
--   ts="explicit"|"implicit"|"big"|"deflated", no_preamble=bool, no_meta=bool,
--   sequence_before_uids=bool, frames=n, fill="random"|"zero", prefix=s,
--   patient_id="HC-TEST", patient_name="Test^Healthcare", study_date="20240101",
--   study_time="120000", modality="OT", study_description=s, series_description=s,
--   accession_number=s, series_number=1 }
-- -> list of { path, sop_instance_uid, study_uid, series_uid, sop_class_uid,
--   transfer_syntax, size }
-- gen_dicom.py's flags for the options below (true: a switch).
local GEN_OPTIONS = {
  count = "--count", study = "--study", series = "--series", sop = "--sop", size = "--size",
  ts = "--ts", frames = "--frames", fill = "--fill", prefix = "--prefix", patient_id = "--patient-id",
  patient_name = "--patient-name", study_date = "--study-date", study_time = "--study-time",
  modality = "--modality", study_description = "--study-description",
  series_description = "--series-description", accession_number = "--accession-number",
  series_number = "--series-number",
  no_preamble = true, no_meta = true, sequence_before_uids = true,
}

-- gen_dicom.py's arguments (without the program) for one option table.
local function gen_argv(opts, who)
  local argv = { "-o", opts.dir or H.tmpdir() }
  for k, v in pairs(opts) do
    local flag = GEN_OPTIONS[k]
    if flag == true then
      if v then argv[#argv + 1] = "--" .. k:gsub("_", "-") end
    elseif flag then
      argv[#argv + 1] = flag
      argv[#argv + 1] = tostring(v)
    elseif k ~= "dir" then
      error(who .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  return argv
end

function H.gen_dicom(opts)
  local cmd = { PY, E.support .. "/gen_dicom.py" }
  for _, w in ipairs(gen_argv(opts or {}, "gen_dicom")) do cmd[#cmd + 1] = w end
  for i, w in ipairs(cmd) do cmd[i] = H.q(w) end
  return json_lines(H.check_run(table.concat(cmd, " ")))
end

-- gen_many{ opts1, opts2, ... }: what gen_dicom makes for each option table, in one Python run
-- (importing pydicom costs about a second per run) -> one list of all the files made.
local GEN_MANY = [[
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("gen_dicom", sys.argv[1])
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)
for line in sys.stdin:
    sys.argv = ["gen_dicom.py"] + json.loads(line)
    gen.main()
]]
function H.gen_many(list)
  local lines = {}
  for i, o in ipairs(list) do lines[i] = cjson.encode(gen_argv(o, "gen_many")) end
  return json_lines(H.check_run(PY .. " -c " .. H.q(GEN_MANY) .. " " .. H.q(E.support .. "/gen_dicom.py"),
    table.concat(lines, "\n") .. "\n"))
end

-- An id of our own for a dataset, store or bucket: prefix, a counter and random digits (the
-- random part keeps the ids of spec files run against one emulator apart).
local n_ids = 0
function H.fresh_id(prefix)
  n_ids = n_ids + 1
  return string.format("%s-%d-%d", prefix, n_ids, math.random(1, 1e6))
end

-- A UID of our own that nothing holds (2.25 and random digits), for "not found" cases.
function H.fresh_uid()
  return "2.25." .. math.random(1, 1e9) .. math.random(1, 1e9)
end

-- fresh_files(n) -> a function returning one new generated file (a gen_dicom entry, fresh UIDs)
-- at each call. They are made n at a time: each Python start costs about a second.
function H.fresh_files(n)
  local pool = {}
  return function()
    if #pool == 0 then pool = H.gen_dicom({ count = n }) end
    return table.remove(pool)
  end
end

-- Stores one file in Orthanc through its REST API (curl, not our library); raises on failure.
function H.orthanc_put_file(path)
  local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/dicom", "--data-binary", "@" .. path,
    E.orthanc .. "/instances" })
  if r.status ~= 200 or type(r.json) ~= "table" then
    error("Orthanc POST /instances failed: " .. tostring(r.status) .. " " .. r.body .. r.stderr, 2)
  end
  return r.json
end

-- A study with fresh UIDs, stored in Orthanc (so also seen through the emulator), for search,
-- retrieve and delete specs:
-- make_study{ patient_id = "P-1" (required: a prefix of your own keeps other specs' data out
--   of your searches), patient_name, study_date, study_time, study_description,
--   accession_number, size = 1024, dir = tmpdir(),
--   series = { { modality = "CT", count = 2, description = s }, ... } (default one OT series of 1) }
-- -> { study_uid, patient_id, dir, series = { { series_uid, modality, instances = { sop uids } } },
--   files = { gen_dicom entries } }
function H.make_study(opts)
  assert(type(opts) == "table" and opts.patient_id, "make_study: patient_id is required")
  local dir = opts.dir or H.tmpdir()
  local study = { patient_id = opts.patient_id, dir = dir, series = {}, files = {} }
  for i, s in ipairs(opts.series or { { modality = "OT", count = 1 } }) do
    local files = H.gen_dicom {
      dir = dir, count = s.count or 1, study = study.study_uid, size = opts.size or 1024,
      prefix = "s" .. i, patient_id = opts.patient_id, patient_name = opts.patient_name,
      study_date = opts.study_date, study_time = opts.study_time, modality = s.modality,
      study_description = opts.study_description, accession_number = opts.accession_number,
      series_description = s.description, series_number = i,
    }
    study.study_uid = files[1].study_uid
    local entry = { series_uid = files[1].series_uid, modality = s.modality or "OT", instances = {} }
    for _, f in ipairs(files) do
      H.orthanc_put_file(f.path)
      entry.instances[#entry.instances + 1] = f.sop_instance_uid
      study.files[#study.files + 1] = f
    end
    study.series[i] = entry
  end
  return study
end

-- Stores gen_dicom entries in Orthanc (by its DICOMweb URL) with `healthcare store`, for specs
-- that then read them back; raises on failure.
function H.store_with_cli(files)
  local args = { "store", E.dicomweb }
  for _, f in ipairs(files) do args[#args + 1] = f.path end
  H.check_run(H.healthcare_command(args))
end

-- POST /_control/<path> with tbl as JSON -> decoded answer, status.
function H.emulator_control(path, tbl)
  local body = tbl == nil and "{}" or cjson.encode(tbl)
  -- cjson encodes an empty table as {}; fault lists want [].
  if type(tbl) == "table" and next(tbl) == nil and path == "faults" then body = "[]" end
  local r = H.curl({ "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body,
    E.emulator .. "/_control/" .. path:gsub("^/", "") })
  if r.status ~= 200 then
    error("emulator control " .. path .. " -> " .. tostring(r.status) .. " " .. r.body .. r.stderr, 2)
  end
  return r.json, r.status
end

function H.emulator_stats()
  local r = H.curl({ E.emulator .. "/_control/stats" })
  assert(r.status == 200, "emulator stats -> " .. tostring(r.status))
  return r.json
end

function H.emulator_reset()
  return H.emulator_control("reset", {})
end

-- Replaces the pending fault rules of H.env's emulator with rules ({} clears them). A file that
-- sets them first takes an emulator of its own: emulator_instance.use_privately().
function H.emulator_faults(rules)
  return H.emulator_control("faults", { replace = true, rules = rules })
end

-- A new RSA key made by the openssl CLI (not our code): form "pkcs8" (`genpkey`, the default) or
-- "pkcs1" (`genrsa -traditional`), bits 2048 unless given.
-- -> { pem = the private key, pub = the public key, dir = where they are, as key.pem and pub.pem }.
function H.rsa_key(form, bits)
  local dir = H.tmpdir()
  local key, pub = dir .. "/key.pem", dir .. "/pub.pem"
  local gen = form == "pkcs1"
    and ("openssl genrsa -traditional -out " .. H.q(key) .. " " .. (bits or 2048))
    or ("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:" .. (bits or 2048) .. " -out " .. H.q(key))
  H.check_run(gen .. " 2>/dev/null && openssl pkey -in " .. H.q(key) .. " -pubout -out " .. H.q(pub))
  return { pem = read_all(key), pub = read_all(pub), dir = dir }
end

-- A new service-account identity, its key registered with the shared emulator unless
-- opts.register == false: opts.form is rsa_key's; opts.fields are added to (or replace those of)
-- the key file. A private emulator has its own (emulator_instance's service_account).
-- -> { key_file = path of the service_account JSON key (token_uri = the emulator), info = what
--   the key file holds, private_key_pem, public_key_pem, client_email, kid }.
function H.service_account(opts)
  opts = opts or {}
  local key = H.rsa_key(opts.form)
  local kid = opts.kid or ("kid-" .. math.random(1, 1e9))
  local email = opts.client_email or (kid .. "@test-project.iam.gserviceaccount.com")
  local sa = { kid = kid, client_email = email, private_key_pem = key.pem, public_key_pem = key.pub }
  if opts.register ~= false then
    H.emulator_control("keys", { kid = kid, client_email = email, public_key_pem = sa.public_key_pem })
  end
  sa.info = { type = "service_account", project_id = "test-project", private_key_id = kid,
    private_key = sa.private_key_pem, client_email = email, client_id = "1234567890", token_uri = E.token_uri }
  for k, v in pairs(opts.fields or {}) do sa.info[k] = v end
  sa.key_file = key.dir .. "/service_account.json"
  write_all(sa.key_file, cjson.encode(sa.info))
  return sa
end

-- Every 16-character run of the base64 lines of a PEM key: the pieces to look for in output
-- that must not quote the key.
function H.pem_runs(pem)
  local runs = {}
  for line in pem:gmatch("[^\n]+") do
    if not line:find("-----", 1, true) then
      for i = 1, #line - 15, 8 do runs[#runs + 1] = line:sub(i, i + 15) end
    end
  end
  return runs
end

-- base64url without padding (openssl CLI).
function H.b64url(s)
  local so = H.check_run("openssl base64 -A | tr '+/' '-_' | tr -d '='", s)
  return so
end

-- An RS256 JWT signed with the openssl CLI (not our code). claims: a table
-- (defaults: iss = sa.client_email, iat = now, exp = iat + 3600, aud = the
-- emulator's token URI, scope = cloud-healthcare; set a field to false to
-- leave it out). header: overrides of { alg = "RS256", typ = "JWT", kid = sa.kid }.
function H.sign_jwt(sa, claims, header)
  local now = os.time()
  local c = { iss = sa.client_email, iat = now, exp = now + 3600, aud = E.token_uri,
    scope = "https://www.googleapis.com/auth/cloud-healthcare" }
  for k, v in pairs(claims or {}) do c[k] = v end
  local h = { alg = "RS256", typ = "JWT", kid = sa.kid }
  for k, v in pairs(header or {}) do h[k] = v end
  for _, t in ipairs({ c, h }) do
    for k, v in pairs(t) do if v == false then t[k] = nil end end
  end
  local input = H.b64url(cjson.encode(h)) .. "." .. H.b64url(cjson.encode(c))
  local keyfile = H.tmpdir() .. "/key.pem"
  write_all(keyfile, sa.private_key_pem)
  local sig = H.check_run("openssl dgst -sha256 -binary -sign " .. H.q(keyfile) ..
    " | openssl base64 -A | tr '+/' '-_' | tr -d '='", input)
  os.remove(keyfile)
  return input .. "." .. sig
end

-- An authorized_user registered with the emulator: { key_file, client_id, client_secret, refresh_token }.
function H.authorized_user(opts)
  opts = opts or {}
  local n = math.random(1, 1e9)
  local u = { client_id = opts.client_id or ("client-" .. n ..  ".apps.googleusercontent.com"),
    client_secret = opts.client_secret or ("secret-" .. n),
    refresh_token = opts.refresh_token or ("refresh-" .. n) }
  H.emulator_control("authorized_users", u)
  u.key_file = H.tmpdir() .. "/authorized_user.json"
  write_all(u.key_file, cjson.encode({ type = "authorized_user", client_id = u.client_id,
    client_secret = u.client_secret, refresh_token = u.refresh_token, token_uri = E.token_uri }))
  return u
end

local samples_cache
-- pydicom's real test files that are valid Part-10 (preamble, DICM, meta with a
-- transfer syntax and the data set's SOP Instance UID, readable to the end,
-- accepted by Orthanc over STOW-RS), as { path, sop_instance_uid, study_uid,
-- transfer_syntax, size }. With unique=true, the first file of each SOP Instance
-- UID only (several samples share one UID with different bytes).
function H.sample_info(opts)
  if not samples_cache then
    local script = [[
import glob, json, os, sys
import pydicom
# Orthanc 1.10.1 answers STOW-RS 400 for these (seen on Debian 12).
REFUSED = {"SC_rgb_jpeg.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"}
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.dcm"))):
    if os.path.basename(p) in REFUSED:
        continue
    with open(p, "rb") as f:
        head = f.read(132)
    if len(head) < 132 or head[128:] != b"DICM":
        continue
    try:
        ds = pydicom.dcmread(p)
        ds.get("PixelData")
        ts = str(ds.file_meta.TransferSyntaxUID)
        sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        if ds.file_meta.MediaStorageSOPInstanceUID != sop:
            continue
    except Exception:
        continue
    print(json.dumps({"path": p, "sop_instance_uid": sop, "study_uid": study,
                      "transfer_syntax": ts, "size": os.path.getsize(p)}))
]]
    local dir = E.samples or "/usr/lib/python3/dist-packages/pydicom/data/test_files"
    samples_cache = json_lines(H.check_run(H.q(PY) .. " - " .. H.q(dir), script))
  end
  local list, seen = {}, {}
  for _, s in ipairs(samples_cache) do
    if not (opts and opts.unique) or not seen[s.sop_instance_uid] then
      seen[s.sop_instance_uid] = true
      list[#list + 1] = s
    end
  end
  return list
end

-- Paths of those files (see sample_info).
function H.sample_files(opts)
  local paths = {}
  for i, s in ipairs(H.sample_info(opts)) do paths[i] = s.path end
  return paths
end

-- JSON text in one canonical form (keys sorted, numbers and strings written one way), telling
-- [] from {}: cjson decodes both to an empty table, which would hide the difference.
function H.canonical_json(text)
  local pos = 1
  local function ws() pos = text:find("[^ \t\r\n]", pos) or #text + 1 end
  local function fail(what) error(string.format("bad JSON at %d (%s): %s", pos, what, text:sub(pos, pos + 20)), 0) end
  local value
  local function string_token()
    local i = pos + 1
    while true do
      local c = text:find('["\\]', i)
      if not c then fail("unterminated string") end
      if text:sub(c, c) == '"' then
        local tok = text:sub(pos, c)
        pos = c + 1
        return cjson.encode(cjson.decode(tok))
      end
      i = c + 2
    end
  end
  function value()
    ws()
    local c = text:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local members = {}
      ws()
      if text:sub(pos, pos) == "}" then pos = pos + 1 return "{}" end
      while true do
        ws()
        if text:sub(pos, pos) ~= '"' then fail("key") end
        local k = string_token()
        ws()
        if text:sub(pos, pos) ~= ":" then fail(":") end
        pos = pos + 1
        members[#members + 1] = k .. ":" .. value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "}" then break end
        if d ~= "," then fail(",") end
      end
      table.sort(members)
      return "{" .. table.concat(members, ",") .. "}"
    elseif c == "[" then
      pos = pos + 1
      local items = {}
      ws()
      if text:sub(pos, pos) == "]" then pos = pos + 1 return "[]" end
      while true do
        items[#items + 1] = value()
        ws()
        local d = text:sub(pos, pos)
        pos = pos + 1
        if d == "]" then break end
        if d ~= "," then fail(",") end
      end
      return "[" .. table.concat(items, ",") .. "]"
    elseif c == '"' then
      return string_token()
    end
    local tok = text:match("^[%w%.%+%-]+", pos)
    if not tok then fail("value") end
    pos = pos + #tok
    if tok == "true" or tok == "false" or tok == "null" then return tok end
    local n = tonumber(tok)
    if not n then fail("number") end
    if n == math.floor(n) and math.abs(n) < 2 ^ 53 then return string.format("%d", n) end
    return string.format("%.17g", n)
  end
  local out = value()
  ws()
  if pos <= #text then fail("trailing text") end
  return out
end

H.json = cjson

-- ---- the journal's lines (issue 20, journal format 2) --------------------------------------------

-- The run lines and records of the journal at path, in order, each line checked whole and valid:
-- a run line ({ journal = "healthcare", ... }), a time line ({ time } alone: left out) or a
-- record, of format 2 (an array in the order of journal.FIELDS) or format 1 (an object); records
-- come back as tables by field name. Fails on anything else or a last line without "\n".
function H.journal_lines(path)
  local fields = require("healthcare.dicomweb.journal").FIELDS
  local s = assert(H.file_bytes(path), "no journal at " .. path)
  assert(s == "" or s:sub(-1) == "\n", "journal " .. path .. " does not end with a newline")
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do
    local t = cjson.decode(l)
    assert(type(t) == "table", "not a JSON line in " .. path .. ": " .. l)
    if t[1] ~= nil then
      local r = {}
      for i, k in ipairs(fields) do if t[i] ~= cjson.null then r[k] = t[i] end end
      t = r
    end
    local time_line = type(t.time) == "string" and next(t, next(t)) == nil
    assert(t.journal == "healthcare" or (type(t.outcome) == "string" and type(t.path) == "string") or time_line,
      "not a journal line in " .. path .. ": " .. l)
    if not time_line then out[#out + 1] = t end
  end
  return out
end

return H
