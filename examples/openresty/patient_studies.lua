-- SPDX-License-Identifier: MIT
-- The library inside an OpenResty handler: GET /patients/{PatientID}/studies answers a summary
-- of the patient's studies as JSON, from the dicomStore the gateway of nginx.conf serves.
--
--   location ~ ^/patients/[^/]+/studies$ {
--       content_by_lua_file /etc/healthcare/patient_studies.lua;
--   }
--
-- Inside nginx, healthcare.new sends its requests over nginx's cosockets (healthcare.ngx.transport):
-- while this handler waits for Google, the worker serves every other connection. With no
-- credentials named, the client uses the gateway's access token (its lua_shared_dict), so no
-- handler ever fetches a token of its own. The search is QIDO-RS; each study's metadata (WADO-RS)
-- gives its series and modalities.
local cjson = require "cjson.safe"
local healthcare = require "healthcare"
local gateway = require("healthcare.ngx").gateway()

local function reply(status, doc)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(type(doc) == "string" and doc or cjson.encode(doc))
  return ngx.exit(ngx.HTTP_OK)
end

-- A JSON array of the encoded values (Debian's lua-cjson 2.1.0 writes an empty table as {}).
local function json_array(list, encode)
  local out = {}
  for i, v in ipairs(list) do out[i] = (encode or cjson.encode)(v) end
  return "[" .. table.concat(out, ",") .. "]"
end

local function study_json(entry)
  local modalities = entry.modalities
  entry.modalities = nil
  return cjson.encode(entry):gsub("}$", ',"modalities":' .. json_array(modalities) .. "}")
end

local function failed(what, err)
  local status = err.http_status and err.http_status >= 400 and err.http_status < 600 and err.http_status or 502
  -- the API's text may name the gateway's service account or project: the log keeps it, the
  -- client (who is not checked here) gets what failed and its status only
  ngx.log(ngx.ERR, what, ": ", tostring(err))
  return reply(status, { error = { code = status, message = what .. " failed (the server's error log says why)",
    status = err.status or "UNKNOWN" } })
end

local patient = ngx.unescape_uri(ngx.var.uri:match("^/patients/([^/]+)/studies/?$") or "")
if patient == "" or patient:find("[%c\\*?]") then
  return reply(400, { error = { code = 400, message = "a PatientID without wildcards, please",
    status = "INVALID_ARGUMENT" } })
end

-- The API's origin and version as the gateway knows them (the emulator's in the specs). Someone
-- waits for this answer: a few quick retries of a 429, 5xx or dropped connection, not the
-- library's default of up to a minute between attempts.
local client = assert(healthcare.new { endpoint = gateway.api_origin:gsub("/$", "") .. gateway.api_path,
  timeout = 60, retry = { max_attempts = 3, initial = 0.25, max_delay = 1 } })
local store = assert(client:dicom_store(gateway.parent))

local results, err = store:search_studies({ PatientID = patient }, { page_size = 50 })
if not results then return failed("search", err) end
local studies = {}
for study in results:each() do
  local uid = study.StudyInstanceUID
  local entry = { study_uid = uid, date = study.StudyDate, accession = study.AccessionNumber,
    series = 0, instances = 0, modalities = {} }
  -- One metadata read per study: the data set of every instance, counted by series.
  local metadata, merr = store:retrieve_metadata(uid)
  if not metadata then return failed("metadata of " .. uid, merr) end
  local series, modalities = {}, {}
  for _, ds in ipairs(metadata) do
    entry.instances = entry.instances + 1
    entry.description = entry.description or ds.StudyDescription
    if ds.SeriesInstanceUID and not series[ds.SeriesInstanceUID] then
      series[ds.SeriesInstanceUID] = true
      entry.series = entry.series + 1
    end
    if ds.Modality and not modalities[ds.Modality] then
      modalities[ds.Modality] = true
      entry.modalities[#entry.modalities + 1] = ds.Modality
    end
  end
  table.sort(entry.modalities)
  studies[#studies + 1] = entry
end
if results.error then return failed("search", results.error) end
client:close()
table.sort(studies, function(a, b) return (a.date or "") .. a.study_uid < (b.date or "") .. b.study_uid end)
return reply(200, string.format('{"patient_id":%s,"count":%d,"studies":%s}', cjson.encode(patient), #studies,
  json_array(studies, study_json)))
