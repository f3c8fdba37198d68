-- SPDX-License-Identifier: MIT
-- `healthcare export <store> gs://bucket/prefix/ | bq://project.dataset.table`: Google's export
-- of a store (dicomStores.export, fhirStores.export) to Cloud Storage or BigQuery, a long-running
-- operation that the command waits for (healthcare.cli.wait).
local common = require "healthcare.cli.common"
local migrate = require "healthcare.migrate"
local cli_migrate = require "healthcare.cli.migrate"

local M = {}

local say = common.sayer("healthcare export")

local function parser()
  return cli_migrate.parser("export", "Export a DICOM (or FHIR) store to Cloud Storage or BigQuery, on Google's "
    .. "side (a long-running operation), and wait for it.",
    "Examples:\n"
    .. "  healthcare export projects/P/locations/L/datasets/D/dicomStores/S gs://my-bucket/export/\n"
    .. "  healthcare export projects/P/locations/L/datasets/D/dicomStores/S gs://my-bucket/export/ "
    .. "--transfer-syntax 1.2.840.10008.1.2.1\n"
    .. "  healthcare export projects/P/locations/L/datasets/D/dicomStores/S bq://my-project.dicom.metadata "
    .. "--write-disposition WRITE_TRUNCATE",
    function(p)
      p:argument("store", "The dicomStore or fhirStore name.")
      p:argument("destination", "gs://BUCKET/prefix (one file per instance, STUDY/SERIES/INSTANCE.dcm below it) "
        .. "or bq://PROJECT.DATASET.TABLE (one row per instance; a FHIR store: bq://PROJECT.DATASET).")
      p:option("--mime-type", "Cloud Storage: the files' type, e.g. 'application/dicom; transfer-syntax=*' "
        .. "(the bytes as stored, the default).")
      p:option("--transfer-syntax", "Cloud Storage: application/dicom in this transfer syntax (a UID).")
        :argname("<uid>")
      p:flag("--force", "BigQuery: replace the table when it exists.")
      p:option("--write-disposition", "BigQuery: " .. table.concat(migrate.WRITE_DISPOSITIONS, ", ") .. ".")
        :argname("<disposition>")
    end)
end
M.parser = parser -- the bash completion reads its options

function M.main(argv)
  local a, code = cli_migrate.parse(parser(), argv, say)
  if not a then return code end
  local mime = a.mime_type
  if a.transfer_syntax then
    if mime then
      say("--mime-type and --transfer-syntax are one or the other")
      return common.EXIT_USAGE
    end
    if not a.transfer_syntax:match("^[%d.]+$") and a.transfer_syntax ~= "*" then
      say("--transfer-syntax '%s' is not a UID", common.printable(a.transfer_syntax))
      return common.EXIT_USAGE
    end
    mime = "application/dicom; transfer-syntax=" .. a.transfer_syntax
  end
  return cli_migrate.run(a, "export", say, function(client)
    return migrate.export(client, a.store, a.destination, { wait = false, mime_type = mime,
      force = a.force or nil, write_disposition = a.write_disposition })
  end)
end

return M
