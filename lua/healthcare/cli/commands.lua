-- SPDX-License-Identifier: MIT
-- The `healthcare` command's commands, in the order --help lists them, each with its one line:
-- what the dispatch (healthcare.cli), the top --help (healthcare.cli.help), the suggestions for a
-- mistyped command and the bash completion (healthcare.cli.complete) all read; and the one
-- way a mistyped name gets its suggestion (commands, options).
local request = require "healthcare.api.request"

local M = {}

M.list = {
  { name = "projects", summary = "the API's methods by Google's names (healthcare projects --help)" },
  { name = "store", summary = "store DICOM files and folders: batched, streamed, reported" },
  { name = "watch", summary = "store each complete DICOM file that lands in a spool folder" },
  { name = "search", summary = "search for studies, series or instances (a table, or --json)" },
  { name = "retrieve", summary = "retrieve a study, series or instance: one file per instance" },
  { name = "delete", summary = "delete studies, series or instances (asks for --yes)" },
  { name = "import", summary = "import from Cloud Storage on Google's side, with progress" },
  { name = "export", summary = "export a store to Cloud Storage or BigQuery on Google's side" },
  { name = "deidentify", summary = "de-identify a store or dataset into a new one (--config FILE)" },
  { name = "operations", summary = "list, show, wait for or cancel long-running operations" },
}

-- The friendly commands: modules healthcare.cli.<name> with main(argv) and parser().
M.FRIENDLY = { store = true, watch = true, search = true, retrieve = true, delete = true,
  import = true, export = true, deidentify = true, operations = true }

--- The command names, in order.
function M.names()
  local out = {}
  for i, c in ipairs(M.list) do out[i] = c.name end
  return out
end

--- "  <name>  <summary>" lines, names padded to one column.
function M.lines(indent)
  local width = 0
  for _, c in ipairs(M.list) do width = math.max(width, #c.name) end
  local out = {}
  for i, c in ipairs(M.list) do
    out[i] = (indent or "  ") .. c.name .. string.rep(" ", width - #c.name + 2) .. c.summary
  end
  return out
end

--- " (did you mean 'x'?)" naming the names closest to `word` by edit distance (api.request's),
--- when they are close enough to be what was meant (at most 2 edits, fewer than half the
--- word's length: "-x" suggests nothing, "stor" suggests store); "" otherwise.
function M.suggestion(word, names)
  local best, most = {}, math.min(2, math.ceil(#word / 2) - 1)
  for _, n in ipairs(request.closest(word, names)) do
    local d = request.distance(word, n)
    if d > most then break end
    most = d
    best[#best + 1] = "'" .. n .. "'"
  end
  if #best == 0 then return "" end
  return " (did you mean " .. table.concat(best, " or ") .. "?)"
end

return M
