-- SPDX-License-Identifier: MIT
-- Which files a store call sends: paths, lists of paths and directories walked recursively
-- (sorted, following symbolic links, each directory entered once so link loops end), lazily so
-- an archive of millions of files is never listed in memory at once.
local core = require "healthcare.core"
local lfs = require "lfs"

local M = {}

local function join(dir, name)
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

--- The nanoseconds of the mtime of what path names (lfs gives whole seconds), or nil.
function M.mtime_nsec(path)
  local a = core.file_stat(path)
  return a and a.mtime_nsec
end

--- Returns an iterator of entries, in order:
---   { path, rel, size, mtime, mtime_nsec, dev, ino }  a regular file (rel: its path below the
---                                    input it came from; mtime_nsec: the nanoseconds of its mtime;
---                                    dev, ino: its device and inode numbers, so that a file
---                                    replaced before it is sent can be told from the one checked)
---   { path, rel, skip = reason }    something that is not a file to send (a FIFO, a broken
---                                    symbolic link, a link loop), with the reason
---   { path, rel, fail = reason }    what cannot be read (a file, a folder): what it holds is
---                                    not stored, a failure rather than something to pass over
--- inputs: a path or a list of paths.
function M.iterate(inputs)
  if type(inputs) == "string" then inputs = { inputs } end
  return coroutine.wrap(function()
    local seen = {}  -- "dev:ino" of directories entered
    local function walk(path, rel)
      -- (one stat: lfs.attributes and the mtime's nanoseconds apart took two per file)
      local a, err = core.file_stat(path)
      if not a then
        local l = lfs.symlinkattributes(path)
        -- "cannot stat <path>: <strerror>": the path is in the record already
        err = tostring(err):match(": ([^:]+)$") or tostring(err)
        if l then
          coroutine.yield { path = path, rel = rel, skip = "broken symbolic link" }
        else
          coroutine.yield { path = path, rel = rel, fail = "cannot read: " .. err }
        end
        return
      end
      if a.mode == "file" then
        coroutine.yield { path = path, rel = rel, size = a.size, mtime = a.modification,
          mtime_nsec = a.mtime_nsec, dev = a.dev, ino = a.ino }
      elseif a.mode == "directory" then
        local key = a.dev .. ":" .. a.ino
        if seen[key] then
          coroutine.yield { path = path, rel = rel, skip = "directory already visited (symbolic link loop)" }
          return
        end
        seen[key] = true
        local names = {}
        local ok, iter, state = pcall(lfs.dir, path)
        if not ok then
          coroutine.yield { path = path, rel = rel, fail = "cannot list directory: " .. tostring(iter) }
          return
        end
        for name in iter, state do
          if name ~= "." and name ~= ".." then names[#names + 1] = name end
        end
        table.sort(names)
        for _, name in ipairs(names) do
          walk(join(path, name), rel == "" and name or (rel .. "/" .. name))
        end
      else
        coroutine.yield { path = path, rel = rel, skip = "not a regular file (" .. tostring(a.mode) .. ")" }
      end
    end
    for _, p in ipairs(inputs) do
      if type(p) ~= "string" then error("file list must hold strings", 3) end
      local a = lfs.attributes(p)
      walk(p, (a and a.mode == "directory") and "" or p)
    end
  end)
end

-- lfs says "cannot obtain information from file '<path>': <strerror>" and io.open
-- "<path>: <strerror>": the reason alone, the path being said by the caller.
local function reason_of(err)
  err = tostring(err)
  return err:match(": ([^:]+)$") or err
end

--- Why a path the user named (a command-line argument) cannot be stored from, or nil when it
--- can: it must be a regular file this process may read or a directory it may list. A FIFO, a
--- device or a socket is not opened (opening one may block or have effects). Entries met while
--- walking a directory are not judged here: iterate yields them with skip or fail = reason.
function M.unreadable(path)
  local a, err = lfs.attributes(path)
  if not a then
    return lfs.symlinkattributes(path) and "broken symbolic link" or reason_of(err)
  end
  if a.mode == "directory" then
    local ok, iter, dir = pcall(lfs.dir, path)
    if not ok then return "cannot list directory: " .. reason_of(iter) end
    if dir and dir.close then dir:close() end
    return nil
  elseif a.mode == "file" then
    local f, why = io.open(path, "rb")
    if not f then return reason_of(why) end
    f:close()
    return nil
  end
  return "not a regular file (" .. tostring(a.mode) .. ")"
end

-- What core.dicom_probe says of a file that is not DICOM at all (hc_dicom.h's reasons): skipped.
-- Any other refusal is of a DICOM file cut short or malformed, or of one that cannot be read: not
-- stored, so a failure.
local NOT_DICOM = {
  ["not a DICOM file (empty)"] = true,
  ["not a DICOM file (no DICM prefix)"] = true,
  ["no File Meta Information"] = true,
}

--- Whether err, from core.dicom_probe, says the file is not DICOM (to skip) rather than a DICOM
--- file that cannot be read or used (to fail).
function M.not_dicom(err)
  return err.kind == "dicom" and NOT_DICOM[err.message] == true
end

return M
