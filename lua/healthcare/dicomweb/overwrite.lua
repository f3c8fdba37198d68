-- SPDX-License-Identifier: MIT
-- store:store's overwrite = true (`healthcare store --overwrite`): an instance the server refused
-- because it holds other bytes under the same SOP Instance UID (Google: 409, FailureReason 272
-- with the detail "... already exists ...") is deleted, stored again, then read back by its UID
-- and compared byte for byte with the file, so that "replaced" means the store now gives back
-- exactly the new file; the stored instance is kept first and put back if the file is refused.
-- Done one instance at a time after the run's other requests, on the store's own synchronous
-- calls (retrieve_instance, delete_instance, store_instances).
local core = require "healthcare.core"
local dicomjson = require "healthcare.dicomweb.dicomjson"
local media = require "healthcare.dicomweb.media"
local util = require "healthcare.util"

local M = {}

-- Google's FailureDetail for a conflict ("an instance with the same SOP Instance UID already
-- exists with different content"), matched without regard to case.
M.CONFLICT_DETAIL = "already exists"
local CHUNK = 1024 * 1024

--- Whether a STOW-RS outcome (dicomjson.outcomes') is a conflict that overwrite replaces.
function M.is_conflict(oc)
  return oc ~= nil and oc.outcome == "failed" and type(oc.detail) == "string"
    and oc.detail:lower():find(M.CONFLICT_DETAIL, 1, true) ~= nil
end

--- Whether the files at a and b hold the same bytes (read a chunk at a time), or nil and why
--- (one cannot be opened or read: not a difference).
function M.same_bytes(a, b)
  local fa, ea = io.open(a, "rb")
  if not fa then return nil, ea end
  local fb, eb = io.open(b, "rb")
  if not fb then
    fa:close()
    return nil, eb
  end
  local same, why = true, nil
  while same do
    local x, xerr = fa:read(CHUNK)
    local y, yerr = fb:read(CHUNK)
    why = xerr or yerr -- a read that failed is not a difference (nil alone: the end of the file)
    if why then same = nil break end
    if x ~= y then same = false end
    if not x then break end
  end
  fa:close()
  fb:close()
  return same, why
end

-- Stores the one file of entry e again; true, or nil and why not.
local function store_again(store, e)
  local boundary = "healthcare-" .. core.random_hex(16)
  local res, err = store:store_instances("studies", {
    content_type = media.multipart(media.DICOM) .. "; boundary=" .. boundary,
    data = { multipart = { boundary = boundary, parts = { { headers = "Content-Type: " .. media.DICOM .. "\r\n",
      file = e.path, size = e.size, dev = e.dev, ino = e.ino, mtime = e.mtime, mtime_nsec = e.mtime_nsec } } } },
  })
  if not res then return nil, err.message end
  local ds = res.json or dicomjson.from_xml(res.body)
  local oc = ds and dicomjson.outcomes(ds)[e.sop_instance_uid]
  if not oc then return nil, string.format("not in the answer (HTTP %d)", res.status) end
  if oc.outcome ~= "stored" then return nil, oc.reason end
  return true
end

--- Reads the instance of entry e (path, study_uid, series_uid, sop_instance_uid) back by its UIDs
--- and compares it with the file: true, or nil and why not. opts: { retry } of the retrieve.
function M.read_back(store, e, opts)
  local dir, derr = util.private_tmpdir("hc-read-back-")
  if not dir then return nil, derr end
  local tmp = dir .. "/instance.dcm"
  local res, err = store:retrieve_instance(e.study_uid, e.series_uid, e.sop_instance_uid,
    { to = tmp, retry = opts and opts.retry })
  if not res then
    util.remove_private_tmpdir(dir)
    return nil, err.message
  end
  local same, why = M.same_bytes(e.path, tmp)
  util.remove_private_tmpdir(dir)
  if same == nil then return nil, why end
  if not same then return nil, "the store gives back other bytes than the file's" end
  return true
end

-- The stored instance of entry e, retrieved into a new private directory (util.private_tmpdir):
-- an entry for store_again and read_back (dir: the directory to remove with it), or nil (nothing
-- left behind) and why not. A 404: { absent = true }, nothing to keep.
local function keep_stored(store, e)
  local dir, derr = util.private_tmpdir("hc-kept-")
  if not dir then return nil, derr end
  local path = dir .. "/" .. e.sop_instance_uid .. ".dcm"
  local res, err = store:retrieve_instance(e.study_uid, e.series_uid, e.sop_instance_uid, { to = path })
  local a = res and core.file_stat(path, false)
  if not a then
    util.remove_private_tmpdir(dir)
    if not res and err.kind == "http" and err.http_status == 404 then return { absent = true } end
    return nil, res and "the copy is gone" or err.message
  end
  return { path = path, dir = dir, size = a.size, dev = a.dev, ino = a.ino, mtime = a.modification,
    mtime_nsec = a.mtime_nsec, study_uid = e.study_uid, series_uid = e.series_uid,
    sop_instance_uid = e.sop_instance_uid }
end

-- After the file was refused in place of the stored instance: that instance, kept before it was
-- deleted, stored back and read back. Returns the reason for the failure, saying what the store
-- holds now.
local function put_back(store, copy, why)
  local failed = "deleted the stored instance, but storing the file again failed: " .. why
  if copy.absent then return failed end
  local ok, back = store_again(store, copy)
  if ok then ok, back = M.read_back(store, copy) end
  if ok then
    util.remove_private_tmpdir(copy.dir)
    return failed .. "; the stored instance was put back (read back equal)"
  end
  return failed .. "; putting the stored instance back failed too (" .. back .. "): its copy is kept at "
    .. copy.path
end

--- Replaces the instance of entry e (path, size, study_uid, series_uid, sop_instance_uid): the
--- stored one kept in a private temporary directory, deleted (a 404 there: already gone, fine), the
--- file stored again, read back and compared. When the store refuses the file, the stored
--- instance is put back: a replacement that cannot be made never costs the instance the store
--- held. Returns true, or nil and the reason it failed, naming the step.
function M.replace(store, e)
  if not e.series_uid or e.series_uid == "" then
    return nil, "conflict not replaced: the file has no Series Instance UID to delete the stored instance by"
  end
  local copy, cerr = keep_stored(store, e)
  if not copy then return nil, "conflict not replaced: keeping a copy of the stored instance failed: " .. cerr end
  local res, err = store:delete_instance(e.study_uid, e.series_uid, e.sop_instance_uid)
  if not res and not (err.kind == "http" and err.http_status == 404) then
    if copy.dir then util.remove_private_tmpdir(copy.dir) end
    return nil, "conflict not replaced: deleting the stored instance failed: " .. err.message
  end
  local ok, why = store_again(store, e)
  if not ok then return nil, put_back(store, copy, why) end
  if copy.dir then util.remove_private_tmpdir(copy.dir) end
  ok, why = M.read_back(store, e)
  if not ok then return nil, "stored the file again, but reading it back failed: " .. why end
  return true
end

return M
