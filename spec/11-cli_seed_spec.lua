-- The `healthcare` command in the seed's form, run as a user runs it, against the Google
-- emulator (forwarding to Orthanc); results read back from Orthanc with curl.
local H = require "helpers"
if not H.need_testbed() then return end
local cjson = require "cjson.safe"

local E = H.env
-- This file counts the emulator's requests ("nothing was sent"): a private emulator keeps other
-- spec files, run in parallel by ctest, out of the count.
local em = require("support.emulator_instance").use_privately()
teardown(function() em:stop() end)
local METHOD = "locations-datasets-dicom-stores-studies-store-instances"
local BIN = H.BIN

local function healthcare(args, stdin, env)
  return H.run((env or "") .. " " .. H.q(BIN) .. " " .. args, stdin)
end

local function q(s) return H.q(s) end

local function store_requests()
  return H.emulator_stats().store_requests_total or 0
end

describe("healthcare projects " .. METHOD, function()
  it("stores a file given as data=@path and prints the server's answer as JSON", function()
    local f = H.gen_dicom { count = 1 }[1]
    local out, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path),
      "-p", "access-token=" .. q(E.token), "--endpoint", q(E.endpoint) }, " "))
    assert.equal(0, code, err)
    local doc = assert(cjson.decode(out))
    assert.equal(f.sop_instance_uid, doc["00081199"].Value[1]["00081155"].Value[1])
    assert.truthy(out:find('\n  "00081199": {', 1, true), "pretty-printed")
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  local spellings = {
    { "-r", ".content-type=application/dicom", "-r", "data=@FILE" },
    { "-r", ".", "content-type=application/dicom", "data=@FILE" },
    { "-r", "content-type=application/dicom", "-r", "data=@FILE" },
    { "-r", "content-type=application/dicom", "data=@FILE" },
  }
  for _, sp in ipairs(spellings) do
    it("accepts the request value spelled " .. table.concat(sp, " "), function()
      local f = H.gen_dicom { count = 1 }[1]
      local words = {}
      for i, w in ipairs(sp) do words[i] = q((w:gsub("FILE", f.path))) end
      local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
        table.concat(words, " "), "-p", "access-token=" .. q(E.token), "--endpoint", q(E.endpoint) }, " "))
      assert.equal(0, code, err)
      assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
    end)
  end

  it("takes global options before 'projects', the sibling method, HEALTHCARE_ENDPOINT and -o", function()
    local f = H.gen_dicom { count = 1 }[1]
    local out_file = H.tmpdir() .. "/answer.json"
    local out, err, code = healthcare(table.concat({ "--scope", "https://www.googleapis.com/auth/cloud-platform",
      "projects", "locations-datasets-dicom-stores-store-instances", q(E.store), "studies/" .. f.study_uid,
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "oauth-token=" .. q(E.token),
      "-o", q(out_file) }, " "), nil, "HEALTHCARE_ENDPOINT=" .. q(E.endpoint))
    assert.equal(0, code, err)
    assert.equal("", out)
    local doc = assert(cjson.decode(H.file_bytes(out_file)))
    assert.equal(f.sop_instance_uid, doc["00081199"].Value[1]["00081155"].Value[1])
  end)

  it("reads the body from standard input with data=@-", function()
    local f = H.gen_dicom { count = 1 }[1]
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@-", "-p", "key=" .. q(E.api_key),
      "--endpoint", q(E.endpoint) }, " "), H.file_bytes(f.path))
    assert.equal(0, code, err)
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  it("prints request and response lines with --debug, with the token redacted", function()
    local f = H.gen_dicom { count = 1 }[1]
    local out, err, code = healthcare(table.concat({ "--debug", "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(E.token),
      "--endpoint", q(E.endpoint) }, " "))
    assert.equal(0, code, err)
    assert.matches("> POST " .. E.endpoint:gsub("%p", "%%%0") .. "/" .. E.store:gsub("%p", "%%%0")
      .. "/dicomWeb/studies%?access_token=REDACTED", err)
    assert.matches("< HTTP/1.1 200", err)
    assert.is_nil((out .. err):find(E.token, 1, true))
  end)

  it("exits 2 naming every place it looked when no credential is found", function()
    local before = store_requests()
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=x", "--endpoint", q(E.endpoint) }, " "),
      nil, "GOOGLE_APPLICATION_CREDENTIALS= CLOUDSDK_CONFIG=/nonexistent GCE_METADATA_HOST=127.0.0.1:9")
    assert.equal(2, code)
    assert.matches("no Google credentials found", err)
    assert.matches("/nonexistent/application_default_credentials.json", err)
    assert.matches("metadata server", err)
    assert.equal(before, store_requests())
  end)

  it("exits 2 with UNAUTHENTICATED when the server refuses the token", function()
    local f = H.gen_dicom { count = 1 }[1]
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=wrong-token",
      "--endpoint", q(E.endpoint) }, " "))
    assert.equal(2, code)
    assert.matches("UNAUTHENTICATED", err)
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
  end)

  it("exits 2 with NOT_FOUND for an unknown store", function()
    local f = H.gen_dicom { count = 1 }[1]
    local _, err, code = healthcare(table.concat({ "projects", METHOD,
      "projects/test-project/locations/us-central1/datasets/test-dataset/dicomStores/missing", "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(E.token),
      "--endpoint", q(E.endpoint) }, " "))
    assert.equal(2, code)
    assert.matches("NOT_FOUND", err)
  end)

  local usage_cases = {
    { "a malformed parent", { "projects/p/datasets/d", "studies", "-r", ".", "content-type=application/dicom", "data=x" }, "invalid dicomStore name" },
    { "a malformed path", { E.store, "studies/abc", "-r", ".", "content-type=application/dicom", "data=x" }, "invalid DICOMweb path" },
    { "an unknown -r field", { E.store, "studies", "-r", ".", "contnt-type=application/dicom", "data=x" },
      "unknown field 'contnt%-type' in HttpBody; valid fields: content%-type, data" },
    { "a cursor above the top", { E.store, "studies", "-r", "..", "content-type=application/dicom", "data=x" }, "above" },
    { "a missing data file", { E.store, "studies", "-r", ".", "content-type=application/dicom", "data=@/nonexistent/f.dcm" }, "/nonexistent/f.dcm" },
    { "CR/LF in the content type", { E.store, "studies", "-r", ".", "content-type=application/dicom\r\nX-Evil: 1", "data=x" }, "CR, LF" },
    { "an unknown -p parameter", { E.store, "studies", "-r", ".", "content-type=application/dicom", "data=x", "-p", "bogus=1" }, "unknown parameter 'bogus'" },
    { "a missing request value", { E.store, "studies" }, "missing request value" },
  }
  for _, case in ipairs(usage_cases) do
    it("exits 2 and sends nothing for " .. case[1], function()
      local before = store_requests()
      local words = {}
      for i, w in ipairs(case[2]) do words[i] = q(w) end
      local _, err, code = healthcare(table.concat({ "projects", METHOD, table.concat(words, " "),
        "-p", "access-token=" .. q(E.token), "--endpoint", q(E.endpoint) }, " "))
      assert.equal(2, code, err)
      assert.matches(case[3], err)
      assert.equal(before, store_requests())
    end)
  end

  it("exits 2 and sends nothing when -o cannot be written", function()
    local f = H.gen_dicom { count = 1 }[1]
    local before = store_requests()
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(E.token),
      "--endpoint", q(E.endpoint), "-o", q(H.write_file(H.tmpdir() .. "/a-file", "x") .. "/out.json") }, " "))
    assert.equal(2, code)
    assert.matches("cannot write the output: .*/a%-file exists and is not a directory", err)
    assert.equal(before, store_requests())
    assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
  end)

  it("exits 1 with a transport error when the server is unreachable", function()
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=x", "-p", "access-token=secret-xyz",
      "--endpoint", "http://127.0.0.1:9/v1" }, " "))
    assert.equal(1, code)
    assert.matches("Couldn't connect", err)
    assert.is_nil(err:find("secret-xyz", 1, true))
  end)

  it("prints help at every level and exits 0", function()
    for _, args in ipairs({ "--help", "projects --help", "projects " .. METHOD .. " --help" }) do
      local out, err, code = healthcare(args)
      assert.equal(0, code, err)
      assert.matches("healthcare", out)
    end
    local out = healthcare("projects " .. METHOD .. " --help")
    assert.matches("cloud%-healthcare", out)
    assert.matches("content%-type", out)
    assert.matches("quota%-user", out)
  end)
end)

describe("healthcare projects: the credential of a call", function()
  local sa = em:service_account()

  -- Every request the emulator saw so far (the private one: none of another file's).
  local function seen()
    return #(H.emulator_stats().requests or {})
  end

  local READ = { "locations-datasets-dicom-stores-search-for-studies", E.store, "studies" }
  local API = { "locations-datasets-get", "projects/p/locations/l/datasets/d" }
  local cases = {
    { "--credentials and -p access-token", { "--credentials", sa.key_file, "-p", "access-token=" .. E.token } },
    { "--credentials and -p access-token", { "-p", "access_token=" .. E.token, "--credentials", sa.key_file } },
    { "--credentials and -p oauth-token", { "--credentials", sa.key_file, "-p", "oauth-token=" .. E.token } },
    { "--credentials and -p key", { "--credentials", sa.key_file, "-p", "key=" .. E.api_key } },
    { "-p access-token and -p key", { "-p", "key=" .. E.api_key, "-p", "access-token=" .. E.token } },
    { "-p access-token and -p oauth-token", { "-p", "oauth-token=" .. E.token, "-p", "access-token=" .. E.token } },
  }
  for _, case in ipairs(cases) do
    it("refuses " .. table.concat(case[2], " "):gsub("=%S+", "=...") .. " (exit 2, nothing sent, no token shown)",
      function()
        local f = H.gen_dicom { count = 1 }[1]
        local calls = {
          { METHOD, E.store, "studies", "-r", ".", "content-type=application/dicom", "data=@" .. f.path },
          READ, API,
        }
        for _, words in ipairs(calls) do
          local argv = { "projects" }
          for _, w in ipairs(words) do argv[#argv + 1] = w end
          for _, w in ipairs(case[2]) do argv[#argv + 1] = w end
          argv[#argv + 1] = "--endpoint"
          argv[#argv + 1] = E.endpoint
          local before = seen()
          local out, err, code = H.healthcare(argv)
          assert.equal(2, code, err)
          assert.equal("healthcare: " .. case[1] .. " cannot be used together: a request carries one credential\n",
            err)
          assert.equal("", out)
          assert.equal(before, seen())
          assert.is_nil((out .. err):find(E.token, 1, true))
        end
        assert.is_nil(H.orthanc_find_instance(f.sop_instance_uid))
      end)
  end

  it("takes -p access-token alone, and over GOOGLE_APPLICATION_CREDENTIALS (a default, not a flag)", function()
    local f = H.gen_dicom { count = 1 }[1]
    local _, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(E.token),
      "--endpoint", q(E.endpoint) }, " "), nil, "GOOGLE_APPLICATION_CREDENTIALS=" .. q(sa.key_file))
    assert.equal(0, code, err)
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)

  it("impersonates over -p access-token with --impersonate-service-account, as over --access-token", function()
    local federation = require "support.federation"
    local source = "serviceAccount:" .. federation.fresh_email("seed-source")
    local target = federation.fresh_email("seed-target")
    em:control("service_accounts", { { email = target, impersonators = { source } } })
    local token = em:control("tokens", { principal = source,
      scopes = { "https://www.googleapis.com/auth/cloud-platform" } }).access_token
    local f = H.gen_dicom { count = 1 }[1]
    local impersonated = em:count("impersonations", "ok")
    local out, err, code = healthcare(table.concat({ "--debug", "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(token),
      "--impersonate-service-account", q(target), "--no-token-cache", "--endpoint", q(E.endpoint) }, " "),
      nil, "HEALTHCARE_IAM_ENDPOINT=" .. q(em.url .. "/v1"))
    assert.equal(0, code, err)
    assert.equal(impersonated + 1, em:count("impersonations", "ok"))
    assert.truthy(err:find("generateAccessToken (token for impersonated service account " .. target, 1, true), err)
    -- the impersonated token went, in the Authorization header: not the one given, in the query
    local requests = H.emulator_stats().requests
    assert.same({}, requests[#requests].query)
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
    assert.is_nil((out .. err):find(token, 1, true))
  end)
end)

describe("healthcare projects " .. METHOD .. "'s answer", function()
  local PY = "/usr/bin/python3"
  local dir = H.tmpdir()
  local ANSWERS = dir .. "/answers.json"
  local URL, stop_server = H.start_server("capture server", H.q(PY) .. " "
    .. H.q(E.support .. "/capture_server.py") .. " " .. H.q(dir .. "/captured.jsonl") .. " " .. H.q(ANSWERS), dir)
  teardown(stop_server)

  -- A STOW-RS answer in DICOM XML, as a server that answers no JSON sends it: no final line break.
  local XML = '<?xml version="1.0" encoding="UTF-8"?>\n<NativeDicomModel xml:space="preserve">'
    .. '<DicomAttribute tag="00081190" vr="UR" keyword="RetrieveURL"><Value number="1">'
    .. 'http://example/studies/1.2.3</Value></DicomAttribute></NativeDicomModel>'

  it("writes a DICOM XML answer byte for byte as received, to standard output and to -o", function()
    local out_file = dir .. "/answer.xml"
    for _, o in ipairs({ {}, { "-o", out_file } }) do
      H.write_file(ANSWERS, H.json.encode({ { status = 200, content_type = "application/dicom+xml", body = XML } }))
      local argv = { "projects", METHOD, E.store, "studies", "-r", ".", "content-type=application/dicom", "data=x",
        "-p", "access-token=t", "--endpoint", URL .. "/v1" }
      for _, w in ipairs(o) do argv[#argv + 1] = w end
      local out, err, code = H.healthcare(argv)
      assert.equal(0, code, err)
      if o[1] then
        assert.equal("", out)
        assert.equal(XML, H.file_bytes(out_file))
      else
        assert.equal(XML, out)
      end
    end
  end)
end)

describe("healthcare projects " .. METHOD .. " and Retry-After", function()
  after_each(function() H.emulator_faults({}) end)

  it("waits as a 429's Retry-After asks, says so, and stores", function()
    local f = H.gen_dicom { count = 1 }[1]
    H.emulator_faults({ { http_method = "POST", status = 429, retry_after = 1, message = "slow down", times = 1 } })
    local out, err, code = healthcare(table.concat({ "projects", METHOD, q(E.store), "studies",
      "-r", ".", "content-type=application/dicom", "data=@" .. q(f.path), "-p", "access-token=" .. q(E.token),
      "--endpoint", q(E.endpoint) }, " "))
    assert.equal(0, code, err)
    assert.matches("^healthcare: StoreInstances: HTTP 429 RESOURCE_EXHAUSTED: slow down; trying again in 1%.0 s "
      .. "%(attempt 2%)\n$", err)
    assert.equal(f.sop_instance_uid, assert(cjson.decode(out))["00081199"].Value[1]["00081155"].Value[1])
    assert.equal(H.file_bytes(f.path), H.orthanc_instance_file(f.sop_instance_uid))
  end)
end)
