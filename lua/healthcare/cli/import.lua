-- SPDX-License-Identifier: MIT
-- `healthcare import <store> gs://bucket/path/**.dcm`: Google's import from Cloud Storage
-- (dicomStores.import, or fhirStores.import with --content-structure), run on Google's workers
-- as a long-running operation that the command waits for (healthcare.cli.wait): a progress
-- line, then the counters and the logs URL (each failed file is named in Cloud Logging only).
local common = require "healthcare.cli.common"
local migrate = require "healthcare.migrate"
local cli_migrate = require "healthcare.cli.migrate"

local M = {}

local say = common.sayer("healthcare import")

local function parser()
  return cli_migrate.parser("import", "Import DICOM files (or FHIR resources) from Cloud Storage into a store, "
    .. "on Google's side (a long-running operation), and wait for it.",
    "Examples:\n"
    .. "  healthcare import projects/P/locations/L/datasets/D/dicomStores/S 'gs://my-bucket/archive/**.dcm'\n"
    .. "  healthcare import projects/P/locations/L/datasets/D/fhirStores/F gs://my-bucket/ndjson/*.ndjson "
    .. "--content-structure RESOURCE\n\n"
    .. "Exit 0 when every file was imported, 1 when some failed (the summary names the logs URL, where "
    .. "each failure is), 2 for usage and credential errors, 130 after Ctrl-C (the import goes on).",
    function(p)
      p:argument("store", "The dicomStore or fhirStore name (projects/P/locations/L/datasets/D/dicomStores/S).")
      p:argument("source", "gs://BUCKET/path: an object, or a pattern (* within a folder, ** across folders, "
        .. "? one character).")
      p:option("--content-structure", "FHIR stores: " .. table.concat(migrate.CONTENT_STRUCTURES, ", ")
        .. " (default BUNDLE)."):argname("<structure>")
    end)
end
M.parser = parser -- the bash completion reads its options

function M.main(argv)
  local a, code = cli_migrate.parse(parser(), argv, say)
  if not a then return code end
  return cli_migrate.run(a, "import", say, function(client)
    return migrate.import(client, a.store, a.source, { wait = false, content_structure = a.content_structure })
  end)
end

return M
