-- SPDX-License-Identifier: MIT
-- StoreInstances as the API states it: one DICOM file, streamed from disk, to a dicomStore.
--
--   lua5.4 examples/store_file.lua <dicomStore name> <file.dcm>
--
-- Credentials: Application Default Credentials ($GOOGLE_APPLICATION_CREDENTIALS, gcloud's file
-- or the metadata server); $HEALTHCARE_ENDPOINT replaces the endpoint.
local healthcare = require "healthcare"

local parent, path = arg[1], arg[2]
if not parent or not path then
  io.stderr:write("usage: store_file.lua <dicomStore name> <file.dcm>\n")
  os.exit(2)
end

local client = assert(healthcare.new())
-- Google accepts a single instance as application/dicom; the body is read from the file as it is
-- sent, never loaded whole.
local res, err = client:store_instances(parent, "studies", {
  content_type = "application/dicom",
  data = { file = path },
})
client:close()
if not res then
  io.stderr:write("store_file: ", tostring(err), "\n")
  os.exit(err.kind == "transport" and 1 or 2)
end
local items = res.json and res.json["00081199"] and res.json["00081199"].Value or {}
for _, item in ipairs(items) do
  print("stored " .. item["00081155"].Value[1])
end
os.exit(res.ok and 0 or 1)
