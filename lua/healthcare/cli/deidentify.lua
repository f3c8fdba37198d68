-- SPDX-License-Identifier: MIT
-- `healthcare deidentify <source> <destination> --config FILE`: Google's de-identification of a
-- dataset (into a new dataset) or a DICOM or FHIR store (into a new store), a long-running
-- operation that the command waits for (healthcare.cli.wait). Google may call the operation a
-- success while some instances failed: the summary gives the counters, and the exit code is 1
-- when the failure counter is not zero.
local common = require "healthcare.cli.common"
local migrate = require "healthcare.migrate"
local cli_migrate = require "healthcare.cli.migrate"
local util = require "healthcare.util"

local M = {}

local say = common.sayer("healthcare deidentify")

-- A config file larger than this is no DeidentifyConfig (Google caps requests far lower).
M.MAX_CONFIG_BYTES = 1024 * 1024

local function parser()
  return cli_migrate.parser("deidentify", "De-identify a dataset, DICOM store or FHIR store into a new one, on "
    .. "Google's side (a long-running operation), and wait for it.",
    "Example:\n"
    .. "  healthcare deidentify projects/P/locations/L/datasets/D/dicomStores/S "
    .. "projects/P/locations/L/datasets/D/dicomStores/S-deid --config deid.json\n"
    .. "with deid.json: {\"dicom\": {\"removeList\": {\"tags\": [\"PatientName\", \"00080050\"]}}}",
    function(p)
      p:argument("source", "The dataset, dicomStore or fhirStore to de-identify.")
      p:argument("destination", "The new dataset or store (of the same kind); it must not exist.")
      p:option("--config", "The API's DeidentifyConfig as a JSON file.")
      p:option("--gcs-config", "gs://BUCKET/OBJECT: a DeidentifyConfig in Cloud Storage, read by Google.")
        :argname("<uri>")
    end)
end
M.parser = parser -- the bash completion reads its options

-- The DeidentifyConfig of the file at path: a JSON object. Or nil and why not.
local function read_config(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read --config: " .. common.printable(err) end
  local text, rerr = f:read(M.MAX_CONFIG_BYTES + 1)
  f:close()
  if not text and rerr then
    return nil, string.format("cannot read --config %s: %s", common.printable(path), common.printable(rerr))
  end
  if text and #text > M.MAX_CONFIG_BYTES then
    return nil, string.format("--config %s is larger than %d bytes", common.printable(path), M.MAX_CONFIG_BYTES)
  end
  local config, jerr = util.decode_json(text or "")
  if type(config) ~= "table" or (text or ""):match("^%s*%[") then
    return nil, string.format("--config %s is not a JSON object (a DeidentifyConfig)%s", common.printable(path),
      jerr and (": " .. common.printable(jerr)) or "")
  end
  return config
end

function M.main(argv)
  local a, code = cli_migrate.parse(parser(), argv, say)
  if not a then return code end
  if a.config and a.gcs_config then
    say("--config and --gcs-config are one or the other")
    return common.EXIT_USAGE
  end
  local config
  if a.config then
    local why
    config, why = read_config(a.config)
    if not config then
      say("%s", why)
      return common.EXIT_USAGE
    end
  end
  return cli_migrate.run(a, "deidentify", say, function(client)
    return migrate.deidentify(client, a.source, a.destination, { wait = false, config = config,
      gcs_config_uri = a.gcs_config })
  end)
end

return M
