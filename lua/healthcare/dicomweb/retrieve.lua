-- SPDX-License-Identifier: MIT
-- Retrieve (WADO-RS): studies, series and instances to files, their metadata, rendered images
-- and frames. The C transport streams each multipart part to a hidden temporary file in the
-- target directory (Client:send with `sink`); this module checks what arrived and names it.
-- A file is named from what it contains (the SOP Instance UID read by core.dicom_probe and
-- checked as a UID), never from anything the server says about it, so a server cannot choose
-- where a file lands. Temporary files are always renamed or removed before returning.
-- Every answer is bounded (M.BOUNDS): bytes in all, parts, bytes per part, a deadline, a floor
-- speed, content codings; a part that is not a DICOM instance is reported (res.rejected), not
-- counted among the instances, and written only when asked (keep_rejected).
local core = require "healthcare.core"
local lfs = require "lfs"
local errors = require "healthcare.errors"
local media = require "healthcare.dicomweb.media"
local names = require "healthcare.dicomweb.names"
local params = require "healthcare.params"
local retry = require "healthcare.retry"
local route = require "healthcare.dicomweb.route"
local util = require "healthcare.util"
local search = require "healthcare.dicomweb.search"

local M = {}

M.DEFAULT_TRANSFER_SYNTAX = "*"   -- as stored: Orthanc and Google then send the stored bytes
M.DEFAULT_RENDERED_ACCEPT = media.ACCEPT.rendered
M.DEFAULT_FRAME_TYPE = media.OCTET_STREAM
M.METADATA_ACCEPT = media.ACCEPT.metadata
-- Instances, frames and rendered images are asked for without content coding (the transport
-- sends "Accept-Encoding: identity" and refuses an encoded answer): Orthanc compresses on the
-- fly when allowed, and a 100 MB instance took 6.6 s against 3.8 s uncompressed on loopback.
-- Pixel data is either compressed already or large, and what the server saves in bytes it pays
-- in time. `compressed = true` opts in (gzip or deflate, decoded as it comes). Metadata (JSON)
-- is asked for compressed.
-- A study's metadata is decoded into Lua tables several times its size: this cap on the JSON
-- (counted decoded) bounds the memory; max_bytes raises it.
M.MAX_METADATA_BYTES = 256 * 1024 * 1024

-- Bounds of a retrieve, with defaults a real study does not reach; each passed bound stops the
-- transfer at once (its partial file removed) and the error names the option (err.option).
M.BOUNDS = {
  max_bytes = 1024 * 1024 * 1024 * 1024,  -- 1 TiB: the decoded body, in all
  max_parts = 100000,                       -- parts (instances, frames) of the answer(s)
  max_part_bytes = 64 * 1024 * 1024 * 1024, -- 64 GiB: one instance, frame or rendered image
  timeout = 24 * 3600,                      -- seconds for the whole retrieve
  -- idle_timeout and min_speed: the client's (300 s, 1024 bytes/s) unless given
}
-- The option behind each reason a transfer is stopped for (err.status).
local BOUND_OPTION = {
  too_large = "max_bytes", too_many_parts = "max_parts", part_too_large = "max_part_bytes",
  timeout = "timeout", too_slow = "min_speed", compression_ratio = "max_compression_ratio",
}
local BOUND_OPTIONS = { "timeout", "idle_timeout", "min_speed", "max_bytes", "max_parts", "max_part_bytes",
  "compressed", "max_compression_ratio" }

local function with(list, ...)
  local out = {}
  for _, v in ipairs(list) do out[#out + 1] = v end
  for _, v in ipairs({ ... }) do out[#out + 1] = v end
  return out
end

local INSTANCE_OPTIONS = with(BOUND_OPTIONS, "to", "transfer_syntax", "params", "on_progress", "keep_rejected",
  "on_file", "list_files", "retry", "on_retry")
local COLLECTION_OPTIONS = with(INSTANCE_OPTIONS, "skip_existing", "request_cost")
local METADATA_OPTIONS = { "params", "max_bytes", "timeout", "retry", "on_retry" }
-- (one image to one file: no parts to count)
local RENDERED_OPTIONS = with({ "timeout", "idle_timeout", "min_speed", "max_bytes", "max_part_bytes", "compressed",
  "max_compression_ratio" }, "to", "accept", "frame", "params", "on_progress", "retry", "on_retry")
local FRAMES_OPTIONS = with(BOUND_OPTIONS, "to", "accept", "transfer_syntax", "params", "on_progress", "retry",
  "on_retry")

-- Values quoted in messages go in as they are: tostring(err) makes a message printable, and the
-- command prints a file's warning through common.printable.
local shown = tostring

-- Raises for a misuse of store:retrieve_* (level 3 from here: the user's line): self, the UID
-- arguments (strings; n of them), the options (of the list `valid`). Returns the options.
local function check_call(store, fname, uids, n, opts, valid)
  util.check_self(store, "healthcare.Store", fname, 3)
  for i = 1, n do util.check_arg(uids[i], i, fname, "string", 3) end
  opts = util.check_options(opts, valid, fname, 3)
  util.check_option(opts.params, "params", fname, "table", 3)
  util.check_option(opts.on_progress, "on_progress", fname, "function", 3)
  util.check_option(opts.on_file, "on_file", fname, "function", 3)
  util.check_option(opts.on_retry, "on_retry", fname, "function", 3)
  util.check_option(opts.skip_existing, "skip_existing", fname, "boolean", 3)
  util.check_option(opts.list_files, "list_files", fname, "boolean", 3)
  util.check_option(opts.transfer_syntax, "transfer_syntax", fname, "string", 3)
  util.check_option(opts.accept, "accept", fname, "string", 3)
  retry.check(opts.retry, fname, 3)
  return opts
end

-- The retry policy of one retrieve: its `retry`, else the client's, else the module's.
local function policy_of(store, opts)
  return retry.new(nil, opts.retry, store.client.retry)
end

local worth_again = retry.read_again

local attempts_told = retry.attempts_told

local function total_bytes(files)
  local n = 0
  for _, f in ipairs(files) do n = n + (f.size or 0) end
  return n
end

-- What a failed retrieve returns: nil, err and the partial result, in the shape of a result
-- (files, count, rejected, kept, bytes): the instances that arrived whole before the failure,
-- and those `to` already held (skip_existing). err.files, err.rejected and err.kept, where a
-- failure after the transfer began sets them, say the same (the form before the partial result;
-- kept for one release, README "Lua API"). With list_files = false, files is empty and
-- err.count, err.files_bytes say how many arrived.
local function failed(err)
  local files = err.files or {}
  local partial = { files = files, rejected = err.rejected or {}, kept = err.kept,
    count = err.count or #files, bytes = err.files_bytes or total_bytes(files), retries = err.retries }
  err.count, err.files_bytes = nil, nil
  return nil, err, partial
end

-- The return of a public retrieve: res, or failed(err).
local function outcome(res, err)
  if res then return res end
  return failed(err)
end

-- The UIDs of a request path, checked before anything is sent: a UID lands in the URL path.
-- uids = { { "study", uid }, { "series", uid }, ... }. Returns the path below the base URL.
local function resource_path(uids)
  local segments = { study = "studies", series = "series", instance = "instances" }
  local path = {}
  for _, pair in ipairs(uids) do
    local what, uid = pair[1], pair[2]
    if not names.valid_uid(uid) then
      return nil, errors.new("usage", string.format(
        "invalid %s UID '%s': expected digits and dots, at most %d characters", what, shown(uid),
        names.MAX_UID))
    end
    path[#path + 1] = segments[what] .. "/" .. uid
  end
  return table.concat(path, "/")
end

-- "study 1.2", "series 3.4 of study 1.2", "instance 5.6 of series 3.4 of study 1.2"
local function describe(uids)
  local words = {}
  for i = #uids, 1, -1 do words[#words + 1] = uids[i][1] .. " " .. uids[i][2] end
  return table.concat(words, " of ")
end

-- The error of an answer that is not a success; a 404 names what was not found (err.not_found:
-- "store" when the store itself does not exist, else the level asked for).
local function not_found_or(store, res, what, uids, opts)
  local err = errors.from_response(res, what)
  if res.status == 404 then
    if search.store_missing(store, opts.params) then
      err.message = string.format("store %s not found: %s", store.name, err.message)
      err.not_found = "store"
    else
      err.message = string.format("%s not found: %s", describe(uids), err.message)
      err.not_found = uids[#uids][1]
    end
  end
  return err
end

local function is_dir(path)
  return lfs.attributes(path, "mode") == "directory"
end

local parent_of = util.parent_dir

local function join(dir, name)
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

-- A directory the sink can write to: found, or made with its parents, and proven writable by
-- creating a file in it, so that a bad `to` fails before the request.
local function ready_dir(dir)
  local made, merr = util.make_dirs(dir)
  if not made then return nil, errors.new("io", merr) end
  local probe = join(dir, ".hc-probe-" .. core.random_hex(8))
  local f, why = io.open(probe, "wb")
  if not f then
    why = tostring(why):match(": ([^:]+)$") or tostring(why)
    return nil, errors.new("io", string.format("cannot write in the directory %s: %s", dir, why))
  end
  f:close()
  os.remove(probe)
  return true
end

-- A whole number >= 0 (a count of bytes or parts) or a number of seconds >= 0, or nil.
-- level: as util.check_arg's (2: the caller of the function that calls check_bound).
local function check_bound(opts, name, fname, whole, level)
  local v = opts[name]
  if v == nil then return end
  if type(v) ~= "number" or not (v >= 0 and v < 2 ^ 53) or (whole and v ~= math.floor(v)) then
    error(string.format("bad option '%s' to '%s' (%s expected, got %s)", name, fname,
      whole and "a whole number >= 0" or "a number of seconds >= 0",
      type(v) == "number" and tostring(v) or type(v)), level + 1)
  end
end

-- The bounds of one retrieve (opts checked, defaults filled): what is left of them is carried
-- from one request to the next (skip_existing makes several).
local function bounds_of(store, opts, fname)
  for _, name in ipairs({ "max_bytes", "max_parts", "max_part_bytes", "min_speed", "request_cost" }) do
    check_bound(opts, name, fname, true, 3)
  end
  for _, name in ipairs({ "timeout", "idle_timeout", "max_compression_ratio" }) do
    check_bound(opts, name, fname, false, 3)
  end
  for _, name in ipairs({ "compressed", "keep_rejected" }) do
    if opts[name] ~= nil and type(opts[name]) ~= "boolean" then
      error(string.format("bad option '%s' to '%s' (boolean expected, got %s)", name, fname, type(opts[name])), 3)
    end
  end
  local b = M.BOUNDS
  -- 0 turns a bound off
  local function bound(v, default)
    if v == 0 then return math.huge end
    return v or default
  end
  local bounds = {
    bytes = bound(opts.max_bytes, b.max_bytes), parts = bound(opts.max_parts, b.max_parts),
    part_bytes = bound(opts.max_part_bytes, b.max_part_bytes),
    timeout = bound(opts.timeout, store.client.timeout or b.timeout),
  }
  -- the limits as given, for messages
  bounds.max_bytes, bounds.max_parts = bounds.bytes, bounds.parts
  bounds.deadline = core.now() + bounds.timeout
  return bounds
end

-- An error for a bound already used up by earlier requests of the same retrieve.
local function spent(what, status, option, text)
  return nil, errors.new("transport", string.format("%s: %s (option %s)", what, text, option),
    { status = status, option = option, files = {}, rejected = {} })
end

-- The error of a stopped transfer, naming the option behind the bound it passed.
local function name_option(err, what, bounds, compressed)
  local option = BOUND_OPTION[err.status]
  -- an unasked coding; asked (compressed), a coding that is not decoded names no option
  if err.status == "encoding" and not compressed and err.message:find("identity was asked for", 1, true) then
    option = "compressed"
  end
  if err.status == "timeout" then
    -- the deadline (not a connect timeout); the transport knew only what was left of it
    local at = err.message:find("within the timeout of", 1, true)
    option = at and option or nil
    if at and bounds then
      err.message = err.message:sub(1, at - 1) .. string.format("within the timeout of %g s", bounds.timeout)
        .. err.message:sub(at):gsub("^within the timeout of [^s]* s", "")
    end
  end
  if option then
    err.option = option
    if not err.message:find(option, 1, true) then
      err.message = string.format("%s (option %s)", err.message, option)
    end
    err.message = what .. ": " .. err.message
  end
  return err
end

-- One GET of the retrieve. how = { what = the method's name for messages, sink = the transport's
-- sink (files) or nil (an answer in memory of at most max_bytes), on_parts = the transport's
-- (the sink's parts as they complete), compressed = whether gzip is asked for (else
-- opts.compressed), bounds = bounds_of's (what is left of them is updated) }.
local function send(store, method_path, headers, opts, how)
  local query, qerr = params.query(opts.params)
  if not query then return nil, qerr end
  local url, uerr = route.url(store, "GET", method_path)
  if not url then return nil, uerr end
  local bounds, sink, what = how.bounds, how.sink, how.what
  local compressed = how.compressed or opts.compressed == true
  local timeout = opts.timeout
  -- math.huge (no bound) is 0 (none) to the transport
  local function finite(v) return v < 2 ^ 53 and v or 0 end
  if bounds then
    timeout = bounds.deadline < math.huge and bounds.deadline - core.now() or 0
    if timeout <= 0 and bounds.deadline < math.huge then
      return spent(what, "timeout", "timeout", string.format("not done within the timeout of %g s", bounds.timeout))
    end
    if sink then
      if bounds.bytes <= 0 then
        return spent(what, "too_large", "max_bytes", string.format("the answers are larger than %.0f bytes",
          bounds.max_bytes))
      end
      sink.max_bytes, sink.max_part_bytes = finite(bounds.bytes), finite(bounds.part_bytes)
      if sink.dir then
        if bounds.parts <= 0 then
          return spent(what, "too_many_parts", "max_parts", string.format("the answers have more than %.0f parts",
            bounds.max_parts))
        end
        sink.max_parts = finite(bounds.parts)
      end
    end
  end
  local res, err = store.client:send {
    method = "GET",
    url = url,
    headers = headers,
    query = query,
    sink = sink,
    max_response_bytes = how.max_bytes,
    timeout = timeout,
    idle_timeout = opts.idle_timeout,
    min_speed = opts.min_speed,
    compressed = compressed,
    max_compression_ratio = opts.max_compression_ratio,
    -- on_progress{ bytes_received, ... } about five times a second; false stops the transfer
    -- (and removes what it wrote).
    on_progress = opts.on_progress,
    on_parts = how.on_parts,
    take_parts = how.take_parts,
  }
  if bounds and res then
    bounds.bytes = bounds.bytes - (res.bytes or 0)
    bounds.parts = bounds.parts - (res.part_count or #(res.parts or {}))
  end
  if not res then return nil, name_option(err, what, bounds, compressed) end
  return res
end

local function transfer_syntax_of(opts)
  local ts = opts.transfer_syntax
  if ts == nil then return M.DEFAULT_TRANSFER_SYNTAX end
  if ts == "*" or names.valid_uid(ts) then return ts end
  return nil, errors.new("usage", string.format(
    "invalid transfer syntax '%s': expected '*' (as stored) or a transfer syntax UID", shown(ts)))
end

-- A media type for an Accept header or a file name: type/subtype, nothing else.
local function check_media_type(v, what)
  if type(v) ~= "string" or not v:match("^[%w!#$&^_.+-]+/[%w!#$&^_.+-]+$") then
    return nil, errors.new("usage", string.format("invalid %s '%s': expected a media type such as %s",
      what, shown(v), what == "accept" and M.DEFAULT_RENDERED_ACCEPT or M.DEFAULT_FRAME_TYPE))
  end
  return v
end

local function media_type(headers)
  return media.of(headers and headers["content-type"])
end

-- (parts: a list with no part on_parts listed early, which only a named instance's answer has)
local function remove_parts(parts, from)
  for i = from or 1, #(parts or {}) do os.remove(parts[i].path) end
end

-- Moves a temporary file to its name; on failure the temporary file is removed.
local function place(tmp, path)
  local ok, why = os.rename(tmp, path)
  if ok then return true end
  os.remove(tmp)
  return nil, errors.new("io", string.format("cannot rename a received file to %s: %s", path, tostring(why)))
end

-- A rejected part kept (keep_rejected) at dir/part-<n>.rejected, or part-<n>.<k>.rejected (k = 1,
-- 2, ...) when that name is taken: each request of a retrieve numbers its parts from 1 (an instance
-- asked alone is part 1, as is a series asked again), and a second run into the same directory
-- numbers them alike; none may replace a part kept before. A hard link never replaces a name;
-- where the file system has none, a name nothing holds is taken by a rename. Returns the path,
-- or nil, err (the temporary file removed).
M.MAX_REJECTED_NAMES = 1000

local function place_rejected(tmp, dir, number)
  local last
  for k = 0, M.MAX_REJECTED_NAMES - 1 do
    local path = join(dir, k == 0 and string.format("part-%d.rejected", number)
      or string.format("part-%d.%d.rejected", number, k))
    local ok, why, code = lfs.link(tmp, path)
    if ok then
      os.remove(tmp)
      return path
    elseif code ~= 17 then -- not EEXIST: no hard links here
      if not lfs.symlinkattributes(path, "mode") then
        local placed, perr = place(tmp, path)
        if placed then return path end
        return nil, perr
      end
    end
    last = why
  end
  os.remove(tmp)
  return nil, errors.new("io", string.format("cannot keep rejected part %d in %s: %d names taken (%s)", number, dir,
    M.MAX_REJECTED_NAMES, tostring(last)))
end

-- Why a part cannot be kept as a DICOM instance, or nil with its SOP Instance UID and the probe.
-- used: UID -> the part that had it; part.duplicate_of: the sink found one.
local function instance_of(part, used)
  local info, perr = core.dicom_probe(part.path)
  local uid = info and (info.sop_instance_uid or info.media_sop_instance_uid)
  if not info then
    local ctype = media_type(part.headers)
    return string.format("not a DICOM file (%s)%s", perr.message, (ctype ~= media.DICOM and ctype ~= "")
      and (", Content-Type " .. shown(ctype)) or "")
  elseif uid == nil then
    return "a DICOM file without a SOP Instance UID"
  elseif not names.valid_uid(uid) then
    return "a DICOM file with an invalid SOP Instance UID '" .. shown(uid) .. "'"
  elseif used[uid] or part.duplicate_of then
    return string.format("a second copy of SOP Instance UID %s (part %d)", uid, used[uid] or part.duplicate_of)
  end
  return nil, uid, info
end

-- Why an instance is not of the scope asked for (scope = { study =, series =, instance = }), or
-- nil. info: its study_uid and series_uid.
local function scope_warning(scope, uid, info)
  if scope.instance and uid ~= scope.instance then
    return string.format("SOP Instance UID %s is not the instance asked for (%s)", uid, scope.instance)
  elseif scope.series and info.series_uid ~= scope.series then
    return string.format("instance %s belongs to series %s, not %s", uid, tostring(info.series_uid), scope.series)
  elseif scope.study and info.study_uid ~= scope.study then
    return string.format("instance %s belongs to study %s, not %s", uid, tostring(info.study_uid), scope.study)
  end
end

-- The file of a part the sink named by its UID as it arrived (sink.name_by_uid): it is at
-- dir/<uid>.dcm already (the sink joins them as join does), and an instance of its own, since
-- the sink names no two parts alike.
local function named_file(part, scope)
  local uid = part.sop_instance_uid
  return { path = part.path, sop_instance_uid = uid, size = part.size, warning = scope_warning(scope, uid, part) }
end

-- Moves a received instance to path, unless skip (retrieve_instances') holds its UID and the file
-- there has the size skip says: this retrieve wrote it and told of it already, at that size, so
-- that copy stays and the new one goes (its entry is not listed again; what was reported stays
-- true). A file of another size there was cut short or written over since: the new copy takes its
-- place. Returns the size of the file at path, or nil, err (the temporary file removed either way).
local function land(part, path, uid, skip)
  if skip and skip[uid] then
    local size = lfs.attributes(path, "size")
    if size == skip[uid] and lfs.attributes(path, "mode") == "file" then
      os.remove(part.path)
      return size
    end
  end
  local ok, err = place(part.path, path)
  if not ok then return nil, err end
  return part.size
end

-- Names the received DICOM parts in dir after their SOP Instance UIDs. how = { scope (the UIDs
-- asked for, checked against what came: a mismatch is a warning), fixed_path, keep_rejected,
-- early, on_file, skip }. A part that is not an instance of its own (not DICOM, no valid SOP
-- Instance UID, a UID already received) is rejected: { part = i, reason, size, path =
-- place_rejected's when keep_rejected, else removed }; so is, when an instance was asked for
-- alone (scope.instance), an instance other than it, whose UID is then listed in `others`.
-- early: the files of named parts already listed while the answer streamed, by part (their
-- parts are false in the list); on_file(file) is called for each of the others once all are
-- named. skip: as land's. A part's number (in messages, rejected, its file's name) is
-- part.index, else its place in parts. Returns files, rejected, others; or nil, err with
-- err.files and err.rejected (what was done) when a rename fails. Every temporary file is gone
-- either way.
local function name_instances(parts, dir, how)
  local scope, early, on_file = how.scope, how.early, how.on_file
  local files, rejected, others, used, told = {}, {}, {}, nil, {}
  -- Parts the sink already named by their UID as they arrived hold their UID first, whatever
  -- their place: another part with it is the second copy (when there are parts to name here).
  for _, part in ipairs(parts) do
    if part and not part.named then
      used = {}
      break
    end
  end
  if used then
    for i, part in ipairs(parts) do
      if not part then
        used[early[i].sop_instance_uid] = i
      elseif part.named then
        used[part.sop_instance_uid] = part.index or i
      end
    end
  end
  local function add(i, f)
    files[#files + 1] = f
    if not early[i] then told[#told + 1] = f end
  end
  for i, part in ipairs(parts) do
    if not part or part.named then
      local f = early[i]
      if not f then
        f = named_file(part, scope)
        told[#told + 1] = f
      end
      files[#files + 1] = f
    else
      local reason, uid, info = instance_of(part, used)
      if not reason and scope.instance and uid ~= scope.instance then
        reason = scope_warning(scope, uid, info)
        others[#others + 1] = uid
      end
      local path, number, size = nil, part.index or i, nil
      local ok, err = true, nil
      if reason then
        rejected[#rejected + 1] = { part = number, reason = reason, size = part.size }
        if how.keep_rejected then
          path, err = place_rejected(part.path, dir, number)
          ok = path ~= nil
        else
          os.remove(part.path)
        end
      else
        used[uid] = number
        path = how.fixed_path or join(dir, uid .. ".dcm")
        size, err = land(part, path, uid, how.skip)
        ok = size ~= nil
      end
      if not ok then
        -- the later parts: those the sink named are in place and listed, the others removed
        for j = i + 1, #parts do
          local p = parts[j]
          if not p or p.named then add(j, early[j] or named_file(p, scope)) else os.remove(p.path) end
        end
        err.files, err.rejected = files, rejected
        if on_file then for _, f in ipairs(told) do on_file(f) end end
        return nil, err
      end
      if reason then
        if path then rejected[#rejected].path = path end
      else
        add(i, { path = path, sop_instance_uid = uid, size = size, warning = scope_warning(scope, uid, info) })
      end
    end
  end
  if on_file then for _, f in ipairs(told) do on_file(f) end end
  return files, rejected, others
end

-- A failed streaming transfer: the parts that completed are kept, named, in err.files (and
-- err.rejected). force: name holds parts of its own to judge, even when the transfer has none.
local function keep_completed(err, name, force)
  local parts = err.parts or {}
  err.parts = nil
  err.files, err.rejected = {}, {}
  if #parts > 0 or force then
    local files, rejected_or_err = name(parts)
    if not files then
      local nerr = rejected_or_err
      err.files, err.rejected = nerr.files or {}, nerr.rejected or {}
      err.message = err.message .. "; " .. nerr.message
    else
      err.files, err.rejected = files, rejected_or_err or {}
    end
  end
  return err
end

-- How the parts of a retrieve's answer reach its result and on_file. list_files (the default):
-- the files of the parts the sink named, listed (and on_file told) while the answer streams, by
-- part: what is left once it has ended is then only the last moment's parts. A part so listed
-- leaves the transport's list (false): its file's entry says all it did. Returns { early,
-- on_parts, gather(parts) -> the parts to name at the end, pending() -> whether some wait,
-- told = { count, bytes } of the files told and not listed (none here) }.
local function lister(scope, on_file)
  local early = {}
  local function on_parts(parts, first)
    for i = first, #parts do
      local part = parts[i]
      if part.named then
        local f = named_file(part, scope)
        early[i], parts[i] = f, false
        if on_file then on_file(f) end
      end
    end
  end
  return { early = early, on_parts = on_parts, gather = function(parts) return parts end,
    pending = function() return false end, told = { count = 0, bytes = 0 } }
end

-- list_files = false: the transport hands each batch of parts over (take_parts) and forgets
-- them, and so does this: a named part's file goes to on_file and is counted, the others (rare:
-- not DICOM, a second copy) wait in `rest` to be judged at the end, numbered by their place in
-- the answer (part.index). Memory then does not grow with the instances. A file on_file was told
-- of is the caller's, kept whatever comes next; when on_file raises, the batch's files it was
-- not told of go. A file whose UID is in skip (retrieve_instances') is not counted. The shape
-- of lister's, take_parts set.
local function handover(scope, on_file, skip)
  local given, rest, told = 0, {}, { count = 0, bytes = 0 }
  local function take(parts)
    local named = {}
    for j, part in ipairs(parts) do
      part.index = given + j
      if part.named then named[#named + 1] = part else rest[#rest + 1] = part end
    end
    given = given + #parts
    for j, part in ipairs(named) do
      local f = named_file(part, scope)
      local fresh = not (skip and skip[f.sop_instance_uid])
      if fresh then told.count, told.bytes = told.count + 1, told.bytes + (f.size or 0) end
      if fresh and on_file then
        local fine, e = pcall(on_file, f)
        if not fine then
          remove_parts(named, j + 1)
          remove_parts(rest)
          rest = {}
          error(e, 0)
        end
      end
    end
  end
  local function gather(parts)
    for j, part in ipairs(parts) do
      part.index = given + j
      rest[#rest + 1] = part
    end
    local all = rest
    rest = {}
    return all
  end
  return { early = {}, on_parts = take, take_parts = true, gather = gather, pending = function() return #rest > 0 end,
    told = told }
end

-- The error of an answer to an instance asked for alone that holds other instances (others, their
-- UIDs) but not it: a failure of that instance, whatever the server meant (a broken one, or one
-- passing off an instance this retrieve already has as the one missing).
local function not_the_instance(what, uids, others, rejected)
  local more = #others > 1 and string.format(" (and %d more)", #others - 1) or ""
  return errors.new("dicom", string.format("%s: asked for %s, the server sent instance %s%s instead", what,
    describe(uids), shown(others[1]), more), { files = {}, rejected = rejected })
end

-- Where a retrieve writes: the directory, and the file when a RetrieveInstance's `to` is one.
local function target_of(what, to)
  if what == "RetrieveInstance" and not (to:sub(-1) == "/" or is_dir(to)) then return parent_of(to), to end
  return to
end

--- WADO-RS of a study, series or instance into files. uids as in resource_path; what: the
--- method's name for messages (a RetrieveInstance's `to` may be a file path); bounds: bounds_of's.
--- skip: nil, or the UIDs of files an earlier attempt of the same retrieve wrote and told of, each
--- with the size it was told of at: a part with one of them (the series came whole again) is not
--- written over that file (unless its size changed since), nor listed, counted or told of twice.
local function retrieve_instances(store, uids, opts, what, bounds, skip)
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  local ts, terr = transfer_syntax_of(opts)
  if not ts then return nil, terr end
  local dir, fixed_path = target_of(what, opts.to)
  local ok, derr = ready_dir(dir)
  if not ok then return nil, derr end

  local scope = { study = uids[1][2], series = uids[2] and uids[2][2], instance = uids[3] and uids[3][2] }
  -- An instance asked for alone is named here once the answer has ended, not by the sink as it
  -- streams: a part that is another instance is then judged before it lands anywhere, and can
  -- neither take the place of a file there (one this retrieve wrote) nor count.
  local alone = scope.instance ~= nil
  local list_files = opts.list_files ~= false
  local on_file = opts.on_file
  if skip and on_file then
    on_file = function(f)
      if not skip[f.sop_instance_uid] then return opts.on_file(f) end
    end
  end
  local recv = (list_files or alone) and lister(scope, on_file) or handover(scope, on_file, skip)
  -- The files to list, their count and bytes (list_files = false: none listed, all counted).
  local function settle(files)
    if skip then
      local fresh = {}
      for _, f in ipairs(files) do
        if not skip[f.sop_instance_uid] then fresh[#fresh + 1] = f end
      end
      files = fresh
    end
    local told = recv.told
    return list_files and files or {}, told.count + #files, told.bytes + total_bytes(files)
  end
  local function name(parts)
    parts = recv.gather(parts)
    if fixed_path and #parts ~= 1 then
      remove_parts(parts)
      return nil, errors.new("dicom", string.format("%s: expected one instance, the server sent %d parts",
        what, #parts), { files = {}, rejected = {} })
    end
    local files, rejected, others = name_instances(parts, dir, { scope = scope, fixed_path = fixed_path,
      keep_rejected = opts.keep_rejected, early = recv.early, on_file = on_file, skip = skip })
    if files and alone and #files == 0 and #others > 0 then
      return nil, not_the_instance(what, uids, others, rejected)
    end
    return files, rejected
  end
  -- name_by_uid: each instance is probed as it streams and renamed into place as it ends
  -- (fewer system calls, and the work overlaps the transfer); what the sink could not name
  -- is named below as before. on_progress or on_file raising stops the transfer (the transport
  -- removes its files) and goes up to the caller: the parts handed over and waiting to be
  -- judged (list_files = false) are removed first.
  local sent, res, err = pcall(send, store, path,
    { "Accept: " .. media.multipart(media.DICOM, ts) }, opts,
    { what = what, sink = { dir = dir, name_by_uid = not alone }, bounds = bounds,
      on_parts = not alone and recv.on_parts or nil, take_parts = not alone and recv.take_parts or nil })
  if not sent then
    remove_parts(recv.gather({}))
    error(res, 0)
  end
  if not res then
    err = keep_completed(err, name, recv.pending())
    err.files, err.count, err.files_bytes = settle(err.files)
    return nil, err
  end
  if res.status < 200 or res.status > 299 then
    remove_parts(res.parts)
    return nil, not_found_or(store, res, what, uids, opts)
  end
  local files, rejected = name(res.parts or {})
  if not files then
    rejected.files, rejected.count, rejected.files_bytes = settle(rejected.files or {})
    return nil, rejected
  end
  local count, bytes
  files, count, bytes = settle(files)
  return { files = files, count = count, rejected = rejected, bytes = bytes, status = res.status }
end

local function check_to(opts, fname)
  if type(opts.to) ~= "string" or opts.to == "" then
    error(string.format("bad option 'to' to '%s' (path expected, got %s)", fname,
      opts.to == "" and "an empty string" or type(opts.to)), 3)
  end
end

-- The instances of `study` (of its `series`, when not nil) already in dir, by SOP Instance UID:
-- <uid>.dcm files whose content carries that UID and says it is of the study (and series) asked
-- for (a file only gets that name once it arrived whole; one of another study, or a copy of the
-- instance that says so, is no instance of this retrieve's). Returns uid -> { path, size }, and
-- what dir holds of each series of `study`: series UID -> { count, bytes, uids }. keep: nil, or
-- keep(uid, path, size, asked) -> whether to count that file at all (asked: it is of the study
-- and series asked for; without keep, only those count).
local function already_in(dir, study, series, keep)
  local have, held = {}, {}
  if not is_dir(dir) then return have, held end
  for name in lfs.dir(dir) do
    local uid = name:match("^(.+)%.dcm$")
    if uid and names.valid_uid(uid) then
      local path = join(dir, name)
      local info = core.dicom_probe(path)
      local size = info and (info.size or lfs.attributes(path, "size"))
      local asked = info and info.study_uid == study and (series == nil or info.series_uid == series)
      if info and (info.sop_instance_uid or info.media_sop_instance_uid) == uid
        and (keep and keep(uid, path, size, asked) or (not keep and asked)) then
        have[uid] = { path = path, size = size }
        if info.study_uid == study and info.series_uid then
          local h = held[info.series_uid] or { count = 0, bytes = 0, uids = {} }
          held[info.series_uid] = h
          h.count, h.bytes = h.count + 1, h.bytes + (size or 0)
          h.uids[#h.uids + 1] = uid
        end
      end
    end
  end
  return have, held
end

-- The options of a retrieve that its sub-retrieves (skip_existing) pass on, with `to`.
local SUB_OPTIONS = { "transfer_syntax", "params", "on_progress", "on_file", "keep_rejected", "idle_timeout",
  "min_speed", "compressed", "max_compression_ratio", "list_files" }

local function sub_options(opts, to)
  local sub = { to = to }
  for _, k in ipairs(SUB_OPTIONS) do sub[k] = opts[k] end
  return sub
end

-- The bytes a request is reckoned to cost over the transfer itself (a round trip, the server's
-- lookups: 27 ms an instance from Orthanc on loopback in a study of 20,000, 0.1 to 0.3 s from a
-- cloud API, at 100 MB/s to 1 GB/s): skip_existing fetches a series whole again, rather than
-- each missing instance alone, when the instances dir holds of it are fewer bytes than this
-- many per missing one. The option request_cost sets it for one retrieve (0: never again).
M.REQUEST_COST_BYTES = 8 * 1024 * 1024

-- What skip_existing does with each series of the study (or the one series) the server lists:
-- { uid, how = "whole" (none there, or fetching it again costs less), "listed" (its missing
-- instances, found by a search of the series, one request each) or "complete" (dir holds as
-- many of its instances as the server counts: nothing asked) }, in the server's order; the
-- count is the series' NumberOfSeriesRelatedInstances, and a series listed without it is
-- searched. Returns the list, or nil, err.
-- The seconds left before a retrieve's deadline, for a search's timeout (nil: no deadline).
-- The searches of a retrieve try once: a failed one fails the retrieve's attempt, and the next
-- attempt starts over from what the directory holds.
local ONCE = { max_attempts = 1 }

local function seconds_left(deadline)
  return deadline < math.huge and math.max(deadline - core.now(), 0.001) or nil
end

-- A UID a search answered with, before a request carries it: junk there is the server's failure
-- (kind "dicom", quoted as it came: tostring(err) makes it printable), not a usage error.
local function listed_uid(uid, what, where)
  if names.valid_uid(uid) then return uid end
  return nil, errors.new("dicom", string.format("the server listed '%s' as a %s UID %s: expected digits and dots, "
    .. "at most %d characters", shown(uid), what, where, names.MAX_UID))
end

local function plan_series(store, study, series, opts, held, deadline)
  local results, serr = store:search_series({ StudyInstanceUID = study, SeriesInstanceUID = series,
    includefield = { "NumberOfSeriesRelatedInstances" } }, { params = opts.params, timeout = seconds_left(deadline),
    retry = ONCE })
  if not results then return nil, serr end
  local cost = opts.request_cost or M.REQUEST_COST_BYTES
  local plan = {}
  for item in results:each() do
    local se, n = item.SeriesInstanceUID, tonumber(item.NumberOfSeriesRelatedInstances)
    if type(se) == "string" then
      local _, uerr = listed_uid(se, "series", "of study " .. study)
      if uerr then return nil, uerr end
      local there = held[se] or { count = 0, bytes = 0, uids = {} }
      local how = "listed"
      if there.count == 0 then
        how = "whole"
      elseif n and there.count >= n then
        how = "complete"
      elseif n and there.bytes <= (n - there.count) * cost then
        how = "whole"
      end
      plan[#plan + 1] = { uid = se, how = how, there = there, count = n }
    end
  end
  if results.error then return nil, results.error end
  return plan
end

-- The instances of a series the server lists (a search) that are not in `have`: all of them, or
-- (want) the first `want` found, the search stopped there. Pages of 1000 (Orthanc finds every
-- match again for each page: 200 pages of 100 made a search of 20,000 instances three times as
-- long), or as many as `want` and the `there` instances of the series in `have` add up to when
-- fewer. Returns the list of their UIDs, or nil, err.
local function missing_of(store, study, se, opts, have, deadline, want, there)
  local page_size = want and math.min(1000, want + (there or 0)) or 1000
  local results, serr = store:search_instances({ StudyInstanceUID = study, SeriesInstanceUID = se,
    includefield = { "SOPInstanceUID" } }, { params = opts.params, page_size = page_size,
    timeout = seconds_left(deadline), retry = ONCE })
  if not results then return nil, serr end
  local missing = {}
  for item in results:each() do
    local sop = item.SOPInstanceUID
    if type(sop) == "string" and not have[sop] then
      local _, uerr = listed_uid(sop, "SOP Instance", "in series " .. se .. " of study " .. study)
      if uerr then return nil, uerr end
      missing[#missing + 1] = sop
      if want and #missing >= want then break end
    end
  end
  if results.error then return nil, results.error end
  return missing
end

-- Whether err, of an instance asked for alone, is that instance's own: the server has it not
-- (404, 410) or answered with something else than it (kind "dicom"); not the server's or the
-- connection's state, nor a bound or a stop, which the next instance would meet too.
local function instance_own(err)
  return err.kind == "dicom" or err.kind == "http" and (err.http_status == 404 or err.http_status == 410)
end

-- skip_existing: the series the server lists (a search, with their instance counts) less what
-- dir already holds of them (plan_series): a series none of which is there in one request, one
-- whose files there are fewer bytes than request_cost per missing instance whole again in one
-- request (those files then not among `kept`), a series as complete as the server counts not at
-- all, and of the others each missing instance alone; all within one set of bounds. Returns the
-- result of a retrieve with `kept` (the files dir already held and kept) added, or nil, err
-- (err.files, err.rejected: what did arrive). told: nil, or the UIDs of the files in `have`
-- that an earlier attempt of this retrieve wrote and told of, with their sizes
-- (retrieve_instances' skip): not among `kept`, and not told of again.
local function retrieve_missing(store, study, series, opts, have, held, bounds, told)
  local out = { files = {}, count = 0, rejected = {}, kept = {}, bytes = 0, status = 200 }
  local function add(res)
    for _, f in ipairs(res.files) do out.files[#out.files + 1] = f end
    for _, r in ipairs(res.rejected or {}) do out.rejected[#out.rejected + 1] = r end
    out.count, out.bytes = out.count + res.count, out.bytes + res.bytes
  end
  local function fail_with(err)
    local files = err.files or {}
    add({ files = files, rejected = err.rejected, count = err.count or #files,
      bytes = err.files_bytes or total_bytes(files) })
    err.files, err.rejected, err.kept = out.files, out.rejected, out.kept
    err.count, err.files_bytes = out.count, out.bytes
    return nil, err
  end
  -- An instance asked for alone that fails on its own (gone, or answered with something else) is
  -- no reason to leave the others unasked: they are fetched, and the first such failure ends the
  -- retrieve once they were (a retry then asks for that one alone again).
  local own_failure
  local plan, perr = plan_series(store, study, series, opts, held, bounds.deadline)
  -- kept: what dir holds, less the files of the series fetched whole again
  local again = {}
  for _, entry in ipairs(plan or {}) do
    if entry.how == "whole" then for _, uid in ipairs(entry.there.uids) do again[uid] = true end end
  end
  for uid, f in pairs(have) do
    if not again[uid] and not (told and told[uid]) then out.kept[#out.kept + 1] = f end
  end
  table.sort(out.kept, function(a, b) return a.path < b.path end)
  if not plan then return fail_with(perr) end
  for _, entry in ipairs(plan) do
    local se = entry.uid
    if entry.how == "whole" then
      local res, err = retrieve_instances(store, { { "study", study }, { "series", se } },
        sub_options(opts, opts.to), "RetrieveSeries", bounds, told)
      if not res then return fail_with(err) end
      add(res)
    elseif entry.how == "listed" then
      local missing, merr = missing_of(store, study, se, opts, have, bounds.deadline)
      if not missing then return fail_with(merr) end
      for _, sop in ipairs(missing) do
        local res, err = retrieve_instances(store, { { "study", study }, { "series", se }, { "instance", sop } },
          sub_options(opts, join(opts.to, "")), "RetrieveInstance", bounds)
        if res then
          add(res)
        elseif not instance_own(err) then
          return fail_with(err)
        else
          local files = err.files or {}
          add({ files = files, rejected = err.rejected, count = err.count or #files,
            bytes = err.files_bytes or total_bytes(files) })
          own_failure = own_failure or err
        end
      end
    end
  end
  if own_failure then
    own_failure.files, own_failure.rejected, own_failure.kept = out.files, out.rejected, out.kept
    own_failure.count, own_failure.files_bytes = out.count, out.bytes
    return nil, own_failure
  end
  return out
end

--- retrieve.missing(store, study, series, dir, opts) -> { count, uids } or nil, err: the instances
--- of the study (or of its series, series not nil) that dir does not hold as <uid>.dcm files of
--- theirs, told as skip_existing tells them (the command names what a failed retrieve left
--- missing): one search of the series with their instance counts, and no further one of a series
--- dir holds as many instances of as the server counts. opts.names: nil, the other series are
--- searched whole and each missing instance named (count = #uids); or a number, at most that many
--- are named (the searches stop once they have them, and a series with a count is not searched
--- when they are named already), count being the server's counts less what dir holds.
--- opts.params, opts.timeout (seconds for it all). Each search is tried once.
function M.missing(store, study, series, dir, opts)
  opts = opts or {}
  local want = opts.names
  local deadline = opts.timeout and core.now() + opts.timeout or math.huge
  local have, held = already_in(dir, study, series)
  local plan, perr = plan_series(store, study, series, opts, held, deadline)
  if not plan then return nil, perr end
  local out = { count = 0, uids = {} }
  for _, entry in ipairs(plan) do
    if entry.how ~= "complete" then
      -- the names still wanted; a series without a count is searched whole to count it
      local left = want and math.max(want - #out.uids, 0)
      local n, there = entry.count, entry.there.count
      local found = {}
      if not (n and left == 0) then
        local merr
        found, merr = missing_of(store, study, entry.uid, opts, have, deadline, n and left or nil, there)
        if not found then return nil, merr end
      end
      for i = 1, left and math.min(left, #found) or #found do out.uids[#out.uids + 1] = found[i] end
      out.count = out.count + ((want and n) and math.max(n - there, #found) or #found)
    end
  end
  table.sort(out.uids)
  return out
end

-- A UID's key in the record of the files a retrieve told of (record_of): 53 bits (exact in
-- LuaJIT's numbers) of two 32-bit hashes of the core, rather than the UID itself, so that the
-- record costs about 32 bytes an instance (a UID string kept alive would add about 90). Two UIDs
-- of a retrieve share a key with a chance of about n^2 / 2^54 (10^-4 for a million instances).
local function told_key(uid)
  return core.hash32(uid) * 2097152 + core.hash32(uid .. "/") % 2097152
end

-- The record a retrieve that may try again keeps of the files it told of (listed, counted,
-- on_file): key (told_key) -> the size told, or false once the file was found removed or damaged
-- (it is then no longer listed nor counted). Returns the record and the on_file to pass down in
-- place of the caller's: it notes each file, and tells the caller of it unless the caller was
-- told of it already (a file written again after it was lost).
local function record_of(on_file)
  local sizes = {}
  return sizes, function(f)
    local k = told_key(f.sop_instance_uid)
    local was = sizes[k]
    sizes[k] = f.size or 0
    if was ~= false and on_file then return on_file(f) end
  end
end

-- The files of the record (sizes) not found whole (whole: key -> true), marked false in sizes:
-- lost (key -> true), their number and bytes, as tally's forget takes them.
local function mark_lost(sizes, whole)
  local keys, n, bytes = {}, 0, 0
  for k, s in pairs(sizes) do
    if s and not whole[k] then
      -- (a value changed during the traversal: allowed, no key is added)
      keys[k], sizes[k], n, bytes = true, false, n + 1, bytes + s
    end
  end
  return keys, n, bytes
end

-- At a later attempt: which of the <uid>.dcm files of dir are this retrieve's (sizes: record_of's)
-- and whole, as already_in's keep. Returns keep, told (uid -> size: the whole ones, as
-- retrieve_instances' skip) and lost() -> lost, n, bytes (tally's forget) once already_in has
-- run: the files told of that are not there whole, marked false in sizes. A file of the record at
-- another size (cut short, or written over) is not this retrieve's: fetched again. A file not of
-- the record was there before (or put there by another process) and counts only with
-- skip_existing, and when it is of the study and series asked for (one of the record counts
-- whatever its data set says: it was listed so, its warning telling).
local function sort_told(sizes, skip_existing)
  local told, whole = {}, {}
  local function keep(uid, _, size, asked)
    local k = told_key(uid)
    local s = sizes[k]
    if s == nil then return skip_existing and asked end
    if s ~= size then return false end
    told[uid], whole[k] = s, true
    return true
  end
  return keep, told, function() return mark_lost(sizes, whole) end
end

-- After an attempt that fetched anything (the transfer went on while the files kept from before
-- lay in dir, open to other processes): the files kept (a list of { path, size }, changed in
-- place) that dir no longer holds (removed, renamed away) are taken out of the list; returns how
-- many. One listing of dir, and none without kept files. The files this retrieve wrote are not
-- looked for: once told of (on_file) they are the caller's, who may move them away (a store's
-- read-back compares each and removes it).
local function kept_gone(dir, kept)
  if not kept or #kept == 0 or not is_dir(dir) then return 0 end
  local there = {}
  for name in lfs.dir(dir) do there[name] = true end
  local gone, still = 0, {}
  for _, f in ipairs(kept) do
    if there[f.path:match("[^/]+$")] then still[#still + 1] = f else gone = gone + 1 end
  end
  if gone > 0 then
    for i = 1, #kept do kept[i] = still[i] end
  end
  return gone
end

-- The failure of an attempt after which `gone` files kept from before were no longer in dir:
-- worth another attempt, which fetches them. err: the attempt's own failure, its message then
-- telling of them too.
local function files_gone(what, gone, err)
  local why = string.format("%d file%s it kept from before %s removed before the retrieve ended", gone,
    gone == 1 and "" or "s", gone == 1 and "was" or "were")
  if err then
    err.message = err.message .. "; " .. why
    return err
  end
  return errors.new("io", what .. ": " .. why, { retryable = true })
end

-- What the attempts of one retrieve brought, added up: the files of each (those of a failed one
-- too: they arrived whole, and stay), their count, bytes and rejected parts; `kept` is the last
-- attempt's (what dir held before and is kept).
local function tally()
  local t = { files = {}, rejected = {}, count = 0, bytes = 0 }
  function t.add(r, failed_attempt)
    -- a failure before any transfer began (a directory that cannot be written) has no files
    t.began = t.began or r.files ~= nil
    local files = r.files or {}
    for _, f in ipairs(files) do t.files[#t.files + 1] = f end
    for _, x in ipairs(r.rejected or {}) do t.rejected[#t.rejected + 1] = x end
    t.count = t.count + (r.count or #files)
    local bytes
    if failed_attempt then bytes = r.files_bytes else bytes = r.bytes end
    t.bytes = t.bytes + (bytes or total_bytes(files))
    t.kept = r.kept
  end
  -- Files told of and since removed or damaged (lost: key -> true, told_key's; n of them, bytes):
  -- no longer listed nor counted; each is listed and counted again when it comes again.
  function t.forget(lost, n, bytes)
    t.count, t.bytes = t.count - n, t.bytes - bytes
    local files = {}
    for _, f in ipairs(t.files) do
      if not lost[told_key(f.sop_instance_uid)] then files[#files + 1] = f end
    end
    t.files = files
  end
  function t.into(r, failed_attempt, attempts)
    r.retries = attempts - 1
    if not t.began then return r end
    r.files, r.rejected, r.kept = t.files, t.rejected, t.kept
    if failed_attempt then
      r.count, r.files_bytes = t.count, t.bytes
    else
      r.count, r.bytes = t.count, t.bytes
    end
    return r
  end
  return t
end

-- retrieve_study and retrieve_series: uids = { { "study", uid } [, { "series", uid }] }. A failed
-- attempt that is worth another (worth_again) is followed, after the policy's wait, by one that
-- asks only for what the directory does not hold yet of what this retrieve wrote (and, with
-- skip_existing, of what it held before): the series and instances a search of the server names,
-- as skip_existing does. A series that comes whole again is written again, but its files this
-- retrieve already had are not listed, counted or told of twice. After an attempt that fetched
-- anything the files it kept from before are looked for (kept_gone): one that is gone makes the
-- attempt a failure worth another, which fetches it; after the last, the retrieve fails saying
-- so, and the file is not among those kept.
local function retrieve_collection(store, uids, opts, what, bounds)
  local _, perr = resource_path(uids)
  if perr then return nil, perr end
  local study, series, dir = uids[1][2], uids[2] and uids[2][2], opts.to
  local policy = policy_of(store, opts)
  -- What a later attempt needs to tell this retrieve's files from the others, and the files it
  -- told of that were removed or damaged since (they are fetched again, and listed once): the
  -- record of the files it told of, kept through on_file (record_of).
  local sizes
  if policy.max_attempts > 1 then
    local mine = {}
    for k, v in pairs(opts) do mine[k] = v end
    opts = mine
    sizes, opts.on_file = record_of(opts.on_file)
  end
  local sum, attempts = tally(), 0
  local function attempt(n)
    attempts = n
    local have, held, told = {}, {}, nil
    if n == 1 and opts.skip_existing then
      have, held = already_in(dir, study, series)
    elseif n > 1 then
      local keep, lost
      keep, told, lost = sort_told(sizes, opts.skip_existing == true)
      have, held = already_in(dir, study, series, keep)
      local keys, count, bytes = lost()
      if count > 0 then sum.forget(keys, count, bytes) end
    end
    local res, err
    if next(have) then
      res, err = retrieve_missing(store, study, series, opts, have, held, bounds, told)
    else
      res, err = retrieve_instances(store, uids, opts, what, bounds)
    end
    sum.add(res or err, not res)
    -- without skip_existing nothing is kept: what a later attempt found there is this retrieve's
    if not opts.skip_existing then sum.kept = nil end
    -- (an attempt that fetched nothing only searched, moments after it read the kept files)
    local fetched = not res or res.count > 0 or #res.rejected > 0
    local gone = fetched and kept_gone(dir, sum.kept) or 0
    if gone > 0 then res, err = nil, files_gone(what, gone, err) end
    return res, err
  end
  -- an attempt that brought instances starts the count of attempts (and the policy's deadline)
  -- again: a long retrieve cut now and then goes on
  local res, err = policy:run(attempt, worth_again, bounds.deadline, function() return sum.count end,
    retry.on_wait_of(opts.on_retry))
  if not res then return nil, attempts_told(sum.into(err, true, attempts), attempts) end
  return sum.into(res, false, attempts)
end

-- Runs attempt() under the retrieve's policy (stop_at: the time past which none starts) until
-- its outcome is final: res, or nil, err (its message saying how many attempts were made);
-- either with `retries`, the attempts past the first, unless bare. again: as worth_again (the
-- default).
local function until_final(store, opts, stop_at, attempt, again, bare)
  local n = 0
  local res, err = policy_of(store, opts):run(function(i)
    n = i
    return attempt()
  end, again or worth_again, stop_at, nil, retry.on_wait_of(opts.on_retry))
  if not res then
    if not bare then err.retries = n - 1 end
    return nil, attempts_told(err, n)
  end
  if not bare then res.retries = n - 1 end
  return res
end

--- store:retrieve_study(study, opts): every instance of the study into the directory opts.to.
--- opts.skip_existing: keep the instances opts.to already holds and fetch only the others.
--- Returns the result, or nil, err, partial.
function M.retrieve_study(store, study, opts)
  opts = check_call(store, "retrieve_study", { study }, 1, opts, COLLECTION_OPTIONS)
  check_to(opts, "retrieve_study")
  local bounds = bounds_of(store, opts, "retrieve_study")
  return outcome(retrieve_collection(store, { { "study", study } }, opts, "RetrieveStudy", bounds))
end

--- store:retrieve_series(study, series, opts): every instance of the series into opts.to.
function M.retrieve_series(store, study, series, opts)
  opts = check_call(store, "retrieve_series", { study, series }, 2, opts, COLLECTION_OPTIONS)
  check_to(opts, "retrieve_series")
  local bounds = bounds_of(store, opts, "retrieve_series")
  return outcome(retrieve_collection(store, { { "study", study }, { "series", series } }, opts, "RetrieveSeries",
    bounds))
end

--- store:retrieve_instance(study, series, instance, opts): one instance to the file opts.to,
--- or into opts.to when it is an existing directory (or ends with "/").
function M.retrieve_instance(store, study, series, instance, opts)
  opts = check_call(store, "retrieve_instance", { study, series, instance }, 3, opts, INSTANCE_OPTIONS)
  check_to(opts, "retrieve_instance")
  local bounds = bounds_of(store, opts, "retrieve_instance")
  local uids = { { "study", study }, { "series", series }, { "instance", instance } }
  return outcome(until_final(store, opts, bounds.deadline, function()
    return retrieve_instances(store, uids, opts, "RetrieveInstance", bounds)
  end, function(res, err)
    -- an instance that arrived whole (told of, kept) before the answer failed is not asked again
    if err and (err.count or 0) > 0 then return false end
    return worth_again(res, err)
  end))
end

--- store:retrieve_metadata(study[, series[, instance]][, opts]) -> list of datasets.
function M.retrieve_metadata(store, study, series, instance, opts)
  -- the optional UIDs may be left out before the options
  if type(series) == "table" then series, instance, opts = nil, nil, series end
  if type(instance) == "table" then instance, opts = nil, instance end
  opts = check_call(store, "retrieve_metadata", { study }, 1, opts, METADATA_OPTIONS)
  util.check_arg(series, 2, "retrieve_metadata", "string|nil")
  util.check_arg(instance, 3, "retrieve_metadata", "string|nil")
  if instance ~= nil and series == nil then
    error("bad argument #2 to 'retrieve_metadata' (series UID expected with an instance)", 2)
  end
  check_bound(opts, "max_bytes", "retrieve_metadata", true, 2)
  check_bound(opts, "timeout", "retrieve_metadata", false, 2)
  local uids = { { "study", study } }
  if series then uids[2] = { "series", series } end
  if instance then uids[3] = { "instance", instance } end
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  local max_bytes = opts.max_bytes or M.MAX_METADATA_BYTES
  local timeout = opts.timeout or store.client.timeout
  local res, err = until_final(store, opts, timeout and timeout > 0 and core.now() + timeout or nil, function()
    local r, e = send(store, path .. "/metadata", { "Accept: " .. M.METADATA_ACCEPT }, opts,
      { what = "RetrieveMetadata", max_bytes = max_bytes, compressed = true })
    if r and (r.status < 200 or r.status > 299) then
      return nil, not_found_or(store, r, "RetrieveMetadata", uids, opts)
    end
    return r, e
  end, nil, true)
  if not res then
    if err.status == "response_too_large" then
      err.option = "max_bytes"
      err.message = string.format("RetrieveMetadata: the metadata of %s is larger than %.0f bytes (option "
        .. "max_bytes)", describe(uids), max_bytes)
    end
    return nil, err
  end
  local list = require("healthcare.util").decode_json(res.body)
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
    return nil, errors.new("dicom", string.format("RetrieveMetadata: the answer is not a DICOM JSON list "
      .. "(HTTP %d, %s)", res.status, res.headers["content-type"] or "no Content-Type"))
  end
  local dicomjson = require "healthcare.dicomweb.dicomjson"
  local out = {}
  for i, raw in ipairs(list) do
    if type(raw) ~= "table" then
      return nil, errors.new("dicom", string.format("RetrieveMetadata: item %d is not a DICOM JSON object", i))
    end
    out[i] = dicomjson.dataset(raw)
  end
  return out
end

local function check_frame(n, what)
  if math.type then
    if math.type(n) ~= "integer" and not (type(n) == "number" and n == math.floor(n)) then n = nil end
  elseif type(n) ~= "number" or n ~= math.floor(n) then
    n = nil
  end
  if not n or n < 1 or n > 2147483647 then
    return nil, errors.new("usage", string.format("invalid %s: expected a frame number (1, 2, ...)", what))
  end
  return string.format("%d", n)
end

local function rendered(store, study, series, instance, opts, bounds)
  local uids = { { "study", study }, { "series", series }, { "instance", instance } }
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  local accept, aerr = check_media_type(opts.accept or M.DEFAULT_RENDERED_ACCEPT, "accept")
  if not accept then return nil, aerr end
  local suffix = ""
  if opts.frame ~= nil then
    local n, ferr = check_frame(opts.frame, "frame")
    if not n then return nil, ferr end
    path = path .. "/frames/" .. n
    suffix = "-frame-" .. n
  end
  local to = opts.to
  if to:sub(-1) == "/" or is_dir(to) then
    local ok, derr = ready_dir(to)
    if not ok then return nil, derr end
    to = join(to, instance .. suffix .. "." .. media.extension(accept:lower()))
  else
    local ok, derr = ready_dir(parent_of(to))
    if not ok then return nil, derr end
  end
  local res, err = send(store, path .. "/rendered", { "Accept: " .. accept }, opts,
    { what = "RetrieveRendered", sink = { file = to }, bounds = bounds })
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then
    return nil, not_found_or(store, res, "RetrieveRendered", uids, opts)
  end
  local ctype = media_type(res.headers)
  return { files = { { path = res.file or to, size = res.bytes, content_type = ctype } }, count = 1, bytes = res.bytes,
    status = res.status, content_type = ctype }
end

--- store:retrieve_rendered(study, series, instance, opts): the rendered image (opts.accept,
--- default image/jpeg) of the instance, or of its frame opts.frame, to the file opts.to (or
--- into the existing directory opts.to as <instance>[-frame-<n>].<ext>).
function M.retrieve_rendered(store, study, series, instance, opts)
  opts = check_call(store, "retrieve_rendered", { study, series, instance }, 3, opts, RENDERED_OPTIONS)
  util.check_option(opts.frame, "frame", "retrieve_rendered", "number")
  check_to(opts, "retrieve_rendered")
  local bounds = bounds_of(store, opts, "retrieve_rendered")
  return outcome(until_final(store, opts, bounds.deadline, function()
    return rendered(store, study, series, instance, opts, bounds)
  end))
end

-- Names received frame parts frame-<n>.<ext> in dir, in the order the frames were asked for.
local function name_frames(parts, dir, numbers)
  local files = {}
  -- a broken answer with more parts than frames asked for: the extra ones are no frame of ours
  remove_parts(parts, #numbers + 1)
  for i = 1, math.min(#parts, #numbers) do
    local part = parts[i]
    local ctype = media_type(part.headers)
    local path = join(dir, string.format("frame-%s.%s", numbers[i], media.extension(ctype)))
    local ok, err = place(part.path, path)
    if not ok then
      remove_parts(parts, i + 1)
      err.files = files
      return nil, err
    end
    files[#files + 1] = { path = path, frame = tonumber(numbers[i]), size = part.size, content_type = ctype }
  end
  return files
end

local function frames_to(store, study, series, instance, frames, opts, bounds)
  local uids = { { "study", study }, { "series", series }, { "instance", instance } }
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  if type(frames) == "number" then frames = { frames } end
  if #frames == 0 then return nil, errors.new("usage", "no frame numbers given") end
  local numbers, seen = {}, {}
  for i, f in ipairs(frames) do
    local n, ferr = check_frame(f, "frame number #" .. i)
    if not n then return nil, ferr end
    -- one file per frame: a number asked twice would come twice and land on one name
    if seen[n] then return nil, errors.new("usage", "frame " .. n .. " is asked for twice") end
    seen[n] = true
    numbers[i] = n
  end
  local mtype, merr = check_media_type(opts.accept or M.DEFAULT_FRAME_TYPE, "frame media type")
  if not mtype then return nil, merr end
  local ts, terr = transfer_syntax_of(opts)
  if not ts then return nil, terr end
  local dir = opts.to
  local ok, derr = ready_dir(dir)
  if not ok then return nil, derr end
  -- Without a transfer-syntax, PS3.18 (8.7.3.5.2) means Explicit VR Little Endian for
  -- application/octet-stream: uncompressed pixels, what most callers of frames want.
  local accept = "Accept: " .. media.multipart(mtype, opts.transfer_syntax and ts or nil)
  local function name(parts)
    return name_frames(parts, dir, numbers)
  end
  local res, err = send(store, path .. "/frames/" .. table.concat(numbers, ","), { accept }, opts,
    { what = "RetrieveFrames", sink = { dir = dir }, bounds = bounds })
  if not res then return nil, keep_completed(err, name) end
  if res.status < 200 or res.status > 299 then
    remove_parts(res.parts)
    return nil, not_found_or(store, res, "RetrieveFrames", uids, opts)
  end
  local parts = res.parts or {}
  if #parts ~= #numbers then
    remove_parts(parts)
    return nil, errors.new("dicom", string.format("RetrieveFrames: asked for %d frames, the server sent %d parts",
      #numbers, #parts), { files = {} })
  end
  local files, nerr = name(parts)
  if not files then return nil, nerr end
  return { files = files, count = #files, bytes = total_bytes(files), status = res.status }
end

--- store:retrieve_frames(study, series, instance, frames, opts): frames (a number or a list)
--- of the instance into the directory opts.to as frame-<n>.<ext>. opts.accept: the frames'
--- media type (default application/octet-stream: uncompressed pixel data); opts.transfer_syntax.
function M.retrieve_frames(store, study, series, instance, frames, opts)
  opts = check_call(store, "retrieve_frames", { study, series, instance }, 3, opts, FRAMES_OPTIONS)
  util.check_arg(frames, 4, "retrieve_frames", "number|table", nil, "frame number or list")
  check_to(opts, "retrieve_frames")
  local bounds = bounds_of(store, opts, "retrieve_frames")
  -- the frames a failed attempt kept, by path: a later attempt asks for them all again and
  -- writes over them; if none succeeds, each is listed once
  local kept, order = {}, {}
  local res, err = until_final(store, opts, bounds.deadline, function()
    local r, e = frames_to(store, study, series, instance, frames, opts, bounds)
    for _, f in ipairs(e and e.files or {}) do
      if not kept[f.path] then order[#order + 1] = f.path end
      kept[f.path] = f
    end
    return r, e
  end)
  if err and err.files then
    err.files = {}
    for i, path in ipairs(order) do err.files[i] = kept[path] end
  end
  return outcome(res, err)
end

return M
