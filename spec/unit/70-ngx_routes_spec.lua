-- SPDX-License-Identifier: MIT
-- The parts of the OpenResty gateway and transport that need no nginx: the FHIR and HL7v2
-- routes (options refused, paths mapped or refused), DICOM XML URL rewriting, the Host port rule,
-- the core's body reader and sink the cosocket transport uses, and the `transport` option
-- outside nginx. Spec 70-72 run them inside nginx.
local routes = require "healthcare.ngx.routes"
local rewrite = require "healthcare.ngx.rewrite"
local core = require "healthcare.core"
local healthcare = require "healthcare"

local DS = "projects/p/locations/l/datasets/d"
local API = "https://healthcare.googleapis.com"

describe("healthcare.ngx.routes", function()
  local list = routes.configure({ fhir_store = DS .. "/fhirStores/f", hl7v2_store = DS .. "/hl7V2Stores/h" },
    API, "/v1", "/dicomWeb")

  it("finds the route of a path by its prefix, not by a prefix of a segment", function()
    assert.equal("fhir", routes.find(list, "/fhir/Patient/1").kind)
    assert.equal("fhir", routes.find(list, "/fhir").kind)
    assert.equal("hl7v2", routes.find(list, "/hl7v2/messages").kind)
    assert.is_nil(routes.find(list, "/fhirX/Patient"))
    assert.is_nil(routes.find(list, "/dicomWeb/studies"))
    assert.is_nil(routes.find(nil, "/fhir/Patient"))
  end)

  it("maps FHIR and HL7v2 paths to the stores' and refuses the rest with 404", function()
    local f, h = routes.find(list, "/fhir"), routes.find(list, "/hl7v2")
    local cases = {
      { f, "/Patient", "GET", "/v1/" .. DS .. "/fhirStores/f/fhir/Patient" },
      { f, "/Patient/abc-1.2/", "PUT", "/v1/" .. DS .. "/fhirStores/f/fhir/Patient/abc-1.2" },
      { f, "/Patient/1/$everything", "GET", "/v1/" .. DS .. "/fhirStores/f/fhir/Patient/1/$everything" },
      { f, "/Patient/1/_history/2", "GET", "/v1/" .. DS .. "/fhirStores/f/fhir/Patient/1/_history/2" },
      { f, "", "POST", "/v1/" .. DS .. "/fhirStores/f/fhir" },
      { f, "/", "POST", "/v1/" .. DS .. "/fhirStores/f/fhir" },
      { f, "", "GET", nil }, { f, "/Patient/../x", "GET", nil }, { f, "/Patient//1", "GET", nil },
      { f, "/a b", "GET", nil }, { f, "/a/b/c/d/e/f", "GET", nil }, { f, "/Patient/%2e", "GET", nil },
      { h, "/messages", "POST", "/v1/" .. DS .. "/hl7V2Stores/h/messages" },
      { h, "/messages:ingest", "POST", "/v1/" .. DS .. "/hl7V2Stores/h/messages:ingest" },
      { h, "/messages/AbC_-=", "GET", "/v1/" .. DS .. "/hl7V2Stores/h/messages/AbC_-=" }, { h, "/messages/a.b", "GET", nil },
      { h, "", "GET", nil }, { h, "/messages/a/b", "GET", nil }, { h, "/other", "POST", nil },
      { h, "/messages/..", "GET", nil },
    }
    for _, c in ipairs(cases) do
      local path, status, message = routes.map_path(c[1], c[2], c[3], "/v1")
      assert.equal(c[4], path, c[2])
      if not c[4] then
        assert.equal(404, status, c[2])
        assert.is_string(message)
      end
    end
  end)

  it("refuses bad options at start-up, naming them", function()
    local cases = {
      { { fhir_store = DS .. "/dicomStores/s" }, "bad option 'fhir_store'" },
      { { fhir_store = "projects/p/fhirStores/f" }, "bad option 'fhir_store'" },
      { { fhir_store = 3 }, "bad option 'fhir_store'" },
      { { hl7v2_store = DS .. "/hl7V2Stores/h/x" }, "bad option 'hl7v2_store'" },
      { { fhir_store = DS .. "/fhirStores/f", fhir_prefix = "fhir" }, "bad option 'fhir_prefix'" },
      { { fhir_store = DS .. "/fhirStores/f", fhir_prefix = "/fhir/" }, "bad option 'fhir_prefix'" },
      { { fhir_store = DS .. "/fhirStores/f", fhir_methods = "GET" }, "bad option 'fhir_methods'" },
      { { fhir_store = DS .. "/fhirStores/f", fhir_prefix = "/dicomWeb" }, "is the DICOMweb prefix" },
      { { fhir_store = DS .. "/fhirStores/f", hl7v2_store = DS .. "/hl7V2Stores/h", hl7v2_prefix = "/fhir" },
        "both /fhir" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(routes.configure, c[1], API, "/v1", "/dicomWeb")
      assert.is_false(ok)
      assert.truthy(tostring(err):find(c[2], 1, true), tostring(err))
    end
    assert.is_nil(routes.configure({}, API, "/v1", "/dicomWeb"))
  end)

  it("rewrites a Location header that starts with the API's root only", function()
    local from, to = API .. "/v1/" .. DS .. "/fhirStores/f/fhir", "http://gw:8080/fhir"
    assert.equal(to .. "/Patient/1/_history/1", routes.rewrite_location(from .. "/Patient/1/_history/1", from, to))
    assert.equal(from .. "X/Patient", routes.rewrite_location(from .. "X/Patient", from, to))
    assert.equal("https://elsewhere/x", routes.rewrite_location("https://elsewhere/x", from, to))
    assert.equal("http://gw:8080/fhir", routes.client_root({ prefix = "/fhir" }, "http://gw:8080/dicomWeb", "/dicomWeb"))
    assert.equal("https://gw.example/fhir",
      routes.client_root({ prefix = "/fhir" }, "https://gw.example/pacs", "/dicomWeb"))
  end)
end)

describe("healthcare.ngx.rewrite", function()
  local api = API .. "/v1/" .. DS .. "/dicomStores/s/dicomWeb"
  local gw = "http://127.0.0.1:8080/dicomWeb"

  it("points every UR value of DICOM XML that starts with the API's root at the gateway", function()
    local xml = '<NativeDicomModel><DicomAttribute tag="00081190" vr="UR"><Value number="1">' .. api
      .. '/studies/1.2</Value></DicomAttribute><DicomAttribute tag="00081199" vr="SQ"><Item number="1">'
      .. '<DicomAttribute tag="00081190" vr="UR"><Value number="1">' .. api .. '/studies/1.2/series/3/instances/4'
      .. '</Value></DicomAttribute></Item></DicomAttribute><DicomAttribute tag="0040E010" vr="UR">'
      .. '<Value number="1">' .. api .. '</Value></DicomAttribute></NativeDicomModel>'
    local out, n = rewrite.rewrite_xml_urls(xml, api, gw)
    assert.equal(3, n)
    assert.equal(xml:gsub(api:gsub("%p", "%%%0"), gw), out)
    for _, text in ipairs({ "<Value>" .. api .. "X/studies</Value>", "<Value>see " .. api .. "/studies</Value>",
      '<a href="' .. api .. '/studies"/>', "", "<x/>" }) do
      local same, m = rewrite.rewrite_xml_urls(text, api, gw)
      assert.equal(text, same)
      assert.equal(0, m)
    end
    -- The gateway's root goes in as XML text.
    out = rewrite.rewrite_xml_urls("<Value>" .. api .. "/x</Value>", api, "http://h/a&b")
    assert.equal("<Value>http://h/a&amp;b/x</Value>", out)
  end)

  it("adds the server's port to a Host without one, unless it is the scheme's default", function()
    assert.equal("127.0.0.1:8080", rewrite.host_with_port("127.0.0.1", "http", "8080"))
    assert.equal("127.0.0.1:9", rewrite.host_with_port("127.0.0.1:9", "http", "8080"))
    assert.equal("gw.example", rewrite.host_with_port("gw.example", "http", "80"))
    assert.equal("gw.example", rewrite.host_with_port("gw.example", "https", "443"))
    assert.equal("gw.example:80", rewrite.host_with_port("gw.example", "https", "80"))
    assert.equal("[::1]:8080", rewrite.host_with_port("[::1]", "http", "8080"))
    assert.equal("[::1]:81", rewrite.host_with_port("[::1]:81", "http", "8080"))
  end)
end)

describe("core.body_reader and core.sink (the cosocket transport's bodies and answers)", function()
  it("reads a body of memory and file segments in pieces, and a multipart body framed as libcurl sends it", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(string.rep("x", 100000))
    f:close()
    local r = assert(core.body_reader({ { data = "head:" }, { file = path } }))
    assert.equal(100005, r:length())
    local got = {}
    repeat
      local piece = assert(r:read(4096))
      got[#got + 1] = piece
    until piece == ""
    assert.equal("head:" .. string.rep("x", 100000), table.concat(got))
    r:close()
    assert.has_error(function() r:read(1) end, "attempt to use a closed body reader")
    r = assert(core.body_reader({ multipart = { boundary = "b0", parts = { { headers = "Content-Type: a/b\r\n", data = "1" } } } }))
    local body = r:read(1000)
    assert.truthy(body:find("--b0\r\nContent-Type: a/b\r\n\r\n1\r\n--b0--", 1, true), body)
    os.remove(path)
    local missing, err = core.body_reader({ { file = path .. ".none" } })
    assert.is_nil(missing)
    assert.equal("io", err.kind)
  end)

  it("writes a 2xx answer to a file, a multipart one to parts, and leaves others to memory", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir))
    local s = core.sink({ file = dir .. "/one" })
    assert(s:decide(200, "application/octet-stream"))
    assert.equal("file", s:mode())
    assert(s:write("abc"))
    local done = assert(s:finish(true))
    assert.equal(dir .. "/one", done.file)
    assert.equal(3, done.bytes)
    s = core.sink({ dir = dir })
    assert(s:decide(200, "multipart/related; boundary=zz"))
    assert(s:write("--zz\r\nContent-Type: application/dicom\r\n\r\nPART\r\n--zz--\r\n"))
    done = assert(s:finish(true))
    assert.equal(1, #done.parts)
    assert.equal(4, done.parts[1].size)
    assert.equal("application/dicom", done.parts[1].headers["content-type"])
    os.remove(done.parts[1].path)
    s = core.sink({ file = dir .. "/two", max_bytes = 2 })
    assert(s:decide(200, "application/octet-stream"))
    local ok, err = s:write("abc")
    assert.is_nil(ok)
    assert.equal("too_large", err.status)
    s:close()
    s = core.sink({ file = dir .. "/three" })
    assert(s:decide(404, "application/json"))
    assert.equal("memory", s:mode())
    s:close()
    assert.has_error(function() core.sink({ file = "a", dir = "b" }) end)
    os.remove(dir .. "/one")
    assert(os.execute("rmdir " .. dir))
  end)
end)

describe("healthcare.new's transport option outside nginx", function()
  it("uses libcurl, refuses transport = \"ngx\" with an error value and raises for a bad value", function()
    local c = assert(healthcare.new { credentials = false, transport = "curl" })
    c:close()
    c = assert(healthcare.new { credentials = false, transport = "auto" })
    assert.truthy(tostring(c._session):find("^healthcare.Session"))
    c:close()
    local none, err = healthcare.new { credentials = false, transport = "ngx" }
    assert.is_nil(none)
    assert.equal("usage", err.kind)
    assert.truthy(err.message:find("OpenResty", 1, true))
    assert.has_error(function() healthcare.new { transport = "cosocket" } end,
      "bad option 'transport' to 'healthcare.new' (\"auto\", \"ngx\" or \"curl\" expected, got 'cosocket')")
  end)
end)
