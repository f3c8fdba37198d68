-- SPDX-License-Identifier: MIT
-- Store a folder of DICOM files and say what became of each one.
--
--   lua5.4 examples/store_folder.lua <DICOMweb URL | dicomStore name> <folder>
--
-- A DICOMweb base URL (e.g. http://127.0.0.1:8042/dicom-web for Orthanc) is used without
-- credentials. A dicomStore name (projects/P/locations/L/datasets/D/dicomStores/S) goes to the
-- Cloud Healthcare API with Application Default Credentials ($GOOGLE_APPLICATION_CREDENTIALS,
-- gcloud's file, or the metadata server); $HEALTHCARE_ENDPOINT replaces the endpoint.
-- Exits 0 when nothing failed, 1 when something did, 2 on a usage error.
local healthcare = require "healthcare"

local target, folder = arg[1], arg[2]
if not target or not folder then
  io.stderr:write("usage: store_folder.lua <DICOMweb URL | dicomStore name> <folder>\n")
  os.exit(2)
end

-- A URL is used as it is; a dicomStore name goes through the API endpoint with credentials.
local store, err = healthcare.dicom_store(target)
if not store then
  io.stderr:write("store_folder: ", tostring(err), "\n")
  os.exit(2)
end

-- Every file is probed first; only DICOM instances are sent, many per request, streamed.
local report
report, err = store:store(folder, {
  on_instance = function(r, outcome)
    print(string.format("%-6s %s%s", outcome, r.path, r.reason and ("  (" .. r.reason .. ")") or ""))
  end,
})
if not report then
  io.stderr:write("store_folder: ", tostring(err), "\n")
  os.exit(2)
end
for _, s in ipairs(report.skipped) do
  print(string.format("%-6s %s  (%s)", "skip", s.path, s.reason))
end
print(string.format("%d stored, %d failed, %d skipped: %d bytes in %.1f s, %d request(s)",
  #report.stored, #report.failed, #report.skipped, report.bytes, report.seconds, report.requests))
store:close() -- and the client it made
os.exit(#report.failed == 0 and 0 or 1)
