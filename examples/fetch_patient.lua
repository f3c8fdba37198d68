-- SPDX-License-Identifier: MIT
-- Find a patient's studies and bring each one home, one file per instance.
--
--   lua5.4 examples/fetch_patient.lua <DICOMweb URL | dicomStore name> <PatientID> <folder>
--
-- The store argument is as in store_folder.lua (a DICOMweb base URL without credentials, or a
-- dicomStore name with Application Default Credentials). Each study goes to <folder>/<StudyUID>/,
-- its instances named <SOPInstanceUID>.dcm. Exits 0 when every study came back, 1 when one did
-- not, 2 on a usage error.
local healthcare = require "healthcare"

local target, patient, folder = arg[1], arg[2], arg[3]
if not target or not patient or not folder then
  io.stderr:write("usage: fetch_patient.lua <DICOMweb URL | dicomStore name> <PatientID> <folder>\n")
  os.exit(2)
end

-- A URL is used as it is; a dicomStore name goes through the API endpoint with credentials.
local store, err = healthcare.dicom_store(target)
if not store then
  io.stderr:write("fetch_patient: ", tostring(err), "\n")
  os.exit(2)
end

-- QIDO-RS, page by page as the loop asks; items are read by keyword.
local studies
studies, err = store:search_studies { PatientID = patient }
if not studies then
  io.stderr:write("fetch_patient: ", tostring(err), "\n")
  os.exit(2)
end
local fetched, failed = 0, 0
for study in studies:each() do
  local uid = study.StudyInstanceUID
  print(string.format("study %s  %s  %s  %s instance(s)", uid, study.StudyDate or "-",
    study.PatientName or "-", tostring(study.NumberOfStudyRelatedInstances or "?")))
  -- WADO-RS, streamed to disk as it arrives; a broken transfer keeps only whole instances.
  local got, rerr, partial = store:retrieve_study(uid, { to = folder .. "/" .. uid })
  if got then
    print(string.format("  %d file(s), %d bytes", #got.files, got.bytes))
    -- parts of the answer that were not DICOM instances: reported, not written
    for _, r in ipairs(got.rejected) do
      print(string.format("  part %d rejected: %s", r.part, (r.reason:gsub("%c", "?"))))
    end
    if #got.rejected == 0 then fetched = fetched + 1 else failed = failed + 1 end
  else
    failed = failed + 1
    -- partial: what arrived whole before the failure, in the shape of a result
    print(string.format("  failed: %s (%d whole instance(s) kept)", tostring(rerr), #partial.files))
  end
end
-- A loop cannot return an error: a failed page ends it and sets studies.error.
if studies.error then
  io.stderr:write("fetch_patient: search stopped: ", tostring(studies.error), "\n")
  failed = failed + 1
end
print(string.format("%d stud%s fetched, %d failed", fetched, fetched == 1 and "y" or "ies", failed))
store:close()
os.exit(failed == 0 and 0 or 1)
