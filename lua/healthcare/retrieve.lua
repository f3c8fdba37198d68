-- SPDX-License-Identifier: MIT
-- Retrieve (WADO-RS): studies, series and instances to files, their metadata, rendered images
-- and frames. The C transport streams each multipart part to a hidden temporary file in the
-- target directory (Client:send with `sink`); this module checks what arrived and names it.
-- A file is named from what it contains (the SOP Instance UID read by core.dicom_probe and
-- checked as a UID), never from anything the server says about it, so a server cannot choose
-- where a file lands. Temporary files are always renamed or removed before returning.
local core = require "healthcare.core"
local lfs = require "lfs"
local dicomweb = require "healthcare.dicomweb"
local errors = require "healthcare.errors"
local util = require "healthcare.util"

local M = {}

M.DEFAULT_TRANSFER_SYNTAX = "*"   -- as stored: Orthanc and Google then send the stored bytes
M.DEFAULT_RENDERED_ACCEPT = "image/jpeg"
M.DEFAULT_FRAME_TYPE = "application/octet-stream"
M.METADATA_ACCEPT = "application/dicom+json"
-- Instances, frames and rendered images are asked for without content coding. The transport
-- accepts gzip by default, and Orthanc then compresses on the fly: a 100 MB instance took 6.6 s
-- against 3.8 s uncompressed on loopback. Pixel data is either compressed already or large,
-- and what the server saves in bytes it pays in time; metadata (JSON) keeps gzip.
local IDENTITY = "Accept-Encoding: identity"
-- A study's metadata is held in memory; a very large study's JSON exceeds the transport's
-- default cap of an answer in memory.
M.MAX_METADATA_BYTES = 1024 * 1024 * 1024

local INSTANCE_OPTIONS = { "to", "transfer_syntax", "params", "on_progress" }
local COLLECTION_OPTIONS = { "to", "transfer_syntax", "params", "on_progress", "skip_existing" }
local METADATA_OPTIONS = { "params" }
local RENDERED_OPTIONS = { "to", "accept", "frame", "params" }
local FRAMES_OPTIONS = { "to", "accept", "transfer_syntax", "params", "on_progress" }

-- File name extensions of the media types a frame or a rendered image comes as.
local EXTENSIONS = {
  ["application/octet-stream"] = "raw", ["image/jpeg"] = "jpg", ["image/png"] = "png",
  ["image/gif"] = "gif", ["image/jp2"] = "jp2", ["image/jpx"] = "jpx", ["image/jls"] = "jls",
  ["image/x-jls"] = "jls", ["image/dicom-rle"] = "rle", ["image/x-dicom-rle"] = "rle",
  ["video/mpeg"] = "mpg", ["video/mp4"] = "mp4", ["application/dicom"] = "dcm",
}

-- Values quoted in messages go in as they are: tostring(err) makes a message printable, and the
-- command prints a file's warning through common.printable.
local shown = tostring

local function check_string(v, n, fname)
  if type(v) ~= "string" then
    error(string.format("bad argument #%d to '%s' (string expected, got %s)", n, fname, type(v)), 3)
  end
end

-- The UIDs of a request path, checked before anything is sent: a UID lands in the URL path.
-- uids = { { "study", uid }, { "series", uid }, ... }. Returns the path below the base URL.
local function resource_path(uids)
  local segments = { study = "studies", series = "series", instance = "instances" }
  local path = {}
  for _, pair in ipairs(uids) do
    local what, uid = pair[1], pair[2]
    if not dicomweb.valid_uid(uid) then
      return nil, errors.new("usage", string.format(
        "invalid %s UID '%s': expected digits and dots, at most %d characters", what, shown(uid),
        dicomweb.MAX_UID))
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

local function not_found_or(res, what, uids)
  local err = errors.from_response(res, what)
  if res.status == 404 then
    err.message = string.format("%s not found: %s", describe(uids), err.message)
  end
  return err
end

local function is_dir(path)
  return lfs.attributes(path, "mode") == "directory"
end

local function parent_of(path)
  local dir = path:match("^(.*)/[^/]*$")
  if dir == nil then return "." end
  if dir == "" then return "/" end
  return dir
end

local function join(dir, name)
  if dir:sub(-1) == "/" then return dir .. name end
  return dir .. "/" .. name
end

-- A directory the sink can write to: found, or made (one level; the parent must exist), and
-- proven writable by creating a file in it, so that a bad `to` fails before the request.
local function ready_dir(dir)
  local mode = lfs.attributes(dir, "mode")
  if mode == nil then
    local ok, why = lfs.mkdir(dir)
    if not ok and not is_dir(dir) then
      return nil, errors.new("io", string.format("cannot create the directory %s: %s", dir, tostring(why)))
    end
  elseif mode ~= "directory" then
    return nil, errors.new("io", string.format("%s exists and is not a directory", dir))
  end
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

local function send(store, method_path, headers, opts, sink, max_bytes)
  local client_mod = require "healthcare.client"
  local query, qerr = client_mod.normalize_params(opts.params)
  if not query then return nil, qerr end
  return store.client:send {
    method = "GET",
    url = store.base_url .. "/" .. method_path,
    headers = headers,
    query = query,
    sink = sink,
    max_response_bytes = max_bytes,
    -- on_progress(bytes_received) about five times a second; false stops the transfer (and
    -- removes what it wrote).
    on_progress = opts.on_progress,
  }
end

local function transfer_syntax_of(opts)
  local ts = opts.transfer_syntax
  if ts == nil then return M.DEFAULT_TRANSFER_SYNTAX end
  if ts == "*" or dicomweb.valid_uid(ts) then return ts end
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
  local ct = headers and headers["content-type"] or ""
  return (ct:match("^%s*([^;%s]+)") or ""):lower()
end

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

-- Names the received DICOM parts in dir after their SOP Instance UIDs. scope = { study =,
-- series =, instance = } the UIDs asked for, checked against what came. Returns the list of
-- files, or nil, err with err.files (the parts already named) when a rename fails; every
-- temporary file is gone either way.
local function name_instances(parts, dir, scope, fixed_path)
  local files, used = {}, {}
  for i, part in ipairs(parts) do
    local info, why = core.dicom_probe(part.path)
    local uid = info and (info.sop_instance_uid or info.media_sop_instance_uid)
    local warning
    if not info then
      warning = string.format("part %d is not a readable DICOM file (%s)", i, tostring(why))
      uid = nil
    elseif not dicomweb.valid_uid(uid) then
      warning = string.format("part %d has %s", i, uid and ("an invalid SOP Instance UID '"
        .. shown(uid) .. "'") or "no SOP Instance UID")
      uid = nil
    elseif used[uid] then
      warning = string.format("part %d repeats SOP Instance UID %s", i, uid)
    elseif scope.instance and uid ~= scope.instance then
      warning = string.format("SOP Instance UID %s is not the instance asked for (%s)", uid, scope.instance)
    elseif scope.series and info.series_uid ~= scope.series then
      warning = string.format("instance %s belongs to series %s, not %s", uid, tostring(info.series_uid),
        scope.series)
    elseif scope.study and info.study_uid ~= scope.study then
      warning = string.format("instance %s belongs to study %s, not %s", uid, tostring(info.study_uid),
        scope.study)
    end
    local path = fixed_path
    if not path then
      if uid and not used[uid] then
        path = join(dir, uid .. ".dcm")
      else
        path = join(dir, string.format("part-%d.dcm", i))
      end
    end
    local ok, err = place(part.path, path)
    if not ok then
      remove_parts(parts, i + 1)
      err.files = files
      return nil, err
    end
    if uid then used[uid] = true end
    files[#files + 1] = { path = path, sop_instance_uid = uid, size = part.size, warning = warning }
  end
  return files
end

local function total_bytes(files)
  local n = 0
  for _, f in ipairs(files) do n = n + (f.size or 0) end
  return n
end

-- A failed streaming transfer: the parts that completed are kept, named, in err.files.
local function keep_completed(err, name)
  local parts = err.parts
  err.parts = nil
  if parts and #parts > 0 then
    local files, nerr = name(parts)
    if not files then
      err.files = nerr.files
      err.message = err.message .. "; " .. nerr.message
    else
      err.files = files
    end
  else
    err.files = {}
  end
  return err
end

--- WADO-RS of a study, series or instance into files. uids as in resource_path; what: the
--- method's name for messages (a RetrieveInstance's `to` may be a file path).
local function retrieve_instances(store, uids, opts, what)
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  local ts, terr = transfer_syntax_of(opts)
  if not ts then return nil, terr end
  local to = opts.to
  local dir, fixed_path
  if what == "RetrieveInstance" and not (to:sub(-1) == "/" or is_dir(to)) then
    fixed_path, dir = to, parent_of(to)
    if not is_dir(dir) then
      return nil, errors.new("io", string.format("cannot write %s: the directory %s does not exist", to, dir))
    end
  else
    dir = to
  end
  local ok, derr = ready_dir(dir)
  if not ok then return nil, derr end

  local scope = { study = uids[1][2], series = uids[2] and uids[2][2], instance = uids[3] and uids[3][2] }
  local function name(parts)
    if fixed_path and #parts ~= 1 then
      remove_parts(parts)
      return nil, errors.new("dicom", string.format("%s: expected one instance, the server sent %d parts",
        what, #parts), { files = {} })
    end
    return name_instances(parts, dir, scope, fixed_path)
  end
  local res, err = send(store, path,
    { 'Accept: multipart/related; type="application/dicom"; transfer-syntax=' .. ts, IDENTITY }, opts,
    { dir = dir })
  if not res then
    return nil, keep_completed(err, name)
  end
  if res.status < 200 or res.status > 299 then
    remove_parts(res.parts)
    return nil, not_found_or(res, what, uids)
  end
  local files, nerr = name(res.parts or {})
  if not files then return nil, nerr end
  return { files = files, bytes = total_bytes(files), status = res.status }
end

local function check_to(opts, fname)
  if type(opts.to) ~= "string" or opts.to == "" then
    error(string.format("bad option 'to' to '%s' (path expected, got %s)", fname,
      opts.to == "" and "an empty string" or type(opts.to)), 3)
  end
end

-- The instances already in dir, by SOP Instance UID: <uid>.dcm files whose content carries that
-- UID (a file only gets that name once it arrived whole). Returns uid -> { path, size }.
local function already_in(dir)
  local have = {}
  if not is_dir(dir) then return have end
  for name in lfs.dir(dir) do
    local uid = name:match("^(.+)%.dcm$")
    if uid and dicomweb.valid_uid(uid) then
      local path = join(dir, name)
      local info = core.dicom_probe(path)
      if info and (info.sop_instance_uid or info.media_sop_instance_uid) == uid then
        have[uid] = { path = path, size = info.size or lfs.attributes(path, "size") }
      end
    end
  end
  return have
end

-- skip_existing: what the server lists (a search) less what dir already holds, retrieved series
-- by series when none of a series is there, else instance by instance. Returns the result of a
-- retrieve with `kept` (the files dir already held) added, or nil, err (err.files: what did arrive).
local function retrieve_missing(store, study, series, opts, what, have)
  local query = { StudyInstanceUID = study, SeriesInstanceUID = series,
    includefield = { "SOPInstanceUID", "SeriesInstanceUID" } }
  local results, serr = store:search_instances(query, { params = opts.params, page_size = 1000 })
  if not results then return nil, serr end
  local by_series, order = {}, {}
  for item in results:each() do
    local se, sop = item.SeriesInstanceUID, item.SOPInstanceUID
    if type(se) == "string" and type(sop) == "string" then
      if not by_series[se] then
        by_series[se] = { all = 0, missing = {} }
        order[#order + 1] = se
      end
      local entry = by_series[se]
      entry.all = entry.all + 1
      if not have[sop] then entry.missing[#entry.missing + 1] = sop end
    end
  end
  if results.error then return nil, results.error end
  local out = { files = {}, kept = {}, bytes = 0, status = 200 }
  for _, f in pairs(have) do out.kept[#out.kept + 1] = f end
  table.sort(out.kept, function(a, b) return a.path < b.path end)
  if #order == 0 and next(have) == nil then
    -- Nothing listed and nothing here: let the server say why (404 for an unknown study).
    return retrieve_instances(store, { { "study", study }, series and { "series", series } or nil },
      opts, what)
  end
  local sub = { to = opts.to, transfer_syntax = opts.transfer_syntax, params = opts.params,
    on_progress = opts.on_progress }
  local function add(res)
    for _, f in ipairs(res.files) do out.files[#out.files + 1] = f end
    out.bytes = out.bytes + res.bytes
  end
  local function failed(err)
    local files = out.files
    for _, f in ipairs(err.files or {}) do files[#files + 1] = f end
    err.files, err.kept = files, out.kept
    return nil, err
  end
  for _, se in ipairs(order) do
    local entry = by_series[se]
    if #entry.missing == entry.all then
      local res, err = retrieve_instances(store, { { "study", study }, { "series", se } }, sub, "RetrieveSeries")
      if not res then return failed(err) end
      add(res)
    else
      for _, sop in ipairs(entry.missing) do
        local res, err = retrieve_instances(store, { { "study", study }, { "series", se }, { "instance", sop } },
          { to = join(opts.to, ""), transfer_syntax = opts.transfer_syntax, params = opts.params,
            on_progress = opts.on_progress }, "RetrieveInstance")
        if not res then return failed(err) end
        add(res)
      end
    end
  end
  return out
end

--- store:retrieve_study(study, opts): every instance of the study into the directory opts.to.
--- opts.skip_existing: keep the instances opts.to already holds and fetch only the others.
function M.retrieve_study(store, study, opts)
  check_string(study, 1, "retrieve_study")
  opts = util.check_options(opts, COLLECTION_OPTIONS, "retrieve_study", 2)
  check_to(opts, "retrieve_study")
  if opts.skip_existing then
    local _, perr = resource_path({ { "study", study } })
    if perr then return nil, perr end
    local have = already_in(opts.to)
    if next(have) then return retrieve_missing(store, study, nil, opts, "RetrieveStudy", have) end
  end
  return retrieve_instances(store, { { "study", study } }, opts, "RetrieveStudy")
end

--- store:retrieve_series(study, series, opts): every instance of the series into opts.to.
function M.retrieve_series(store, study, series, opts)
  check_string(study, 1, "retrieve_series")
  check_string(series, 2, "retrieve_series")
  opts = util.check_options(opts, COLLECTION_OPTIONS, "retrieve_series", 2)
  check_to(opts, "retrieve_series")
  if opts.skip_existing then
    local _, perr = resource_path({ { "study", study }, { "series", series } })
    if perr then return nil, perr end
    local have = already_in(opts.to)
    if next(have) then return retrieve_missing(store, study, series, opts, "RetrieveSeries", have) end
  end
  return retrieve_instances(store, { { "study", study }, { "series", series } }, opts, "RetrieveSeries")
end

--- store:retrieve_instance(study, series, instance, opts): one instance to the file opts.to,
--- or into opts.to when it is an existing directory (or ends with "/").
function M.retrieve_instance(store, study, series, instance, opts)
  check_string(study, 1, "retrieve_instance")
  check_string(series, 2, "retrieve_instance")
  check_string(instance, 3, "retrieve_instance")
  opts = util.check_options(opts, INSTANCE_OPTIONS, "retrieve_instance", 2)
  check_to(opts, "retrieve_instance")
  return retrieve_instances(store, { { "study", study }, { "series", series }, { "instance", instance } },
    opts, "RetrieveInstance")
end

--- store:retrieve_metadata(study[, series[, instance]][, opts]) -> list of datasets.
function M.retrieve_metadata(store, study, series, instance, opts)
  -- the optional UIDs may be left out before the options
  if type(series) == "table" then series, instance, opts = nil, nil, series end
  if type(instance) == "table" then instance, opts = nil, instance end
  check_string(study, 1, "retrieve_metadata")
  if series ~= nil then check_string(series, 2, "retrieve_metadata") end
  if instance ~= nil then
    check_string(instance, 3, "retrieve_metadata")
    if series == nil then error("bad argument #2 to 'retrieve_metadata' (series UID expected with an instance)", 2) end
  end
  opts = util.check_options(opts, METADATA_OPTIONS, "retrieve_metadata", 2)
  local uids = { { "study", study } }
  if series then uids[2] = { "series", series } end
  if instance then uids[3] = { "instance", instance } end
  local path, perr = resource_path(uids)
  if not path then return nil, perr end
  local res, err = send(store, path .. "/metadata", { "Accept: " .. M.METADATA_ACCEPT }, opts, nil,
    M.MAX_METADATA_BYTES)
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then
    return nil, not_found_or(res, "RetrieveMetadata", uids)
  end
  local list = require("cjson.safe").decode(res.body)
  if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
    return nil, errors.new("dicom", string.format("RetrieveMetadata: the answer is not a DICOM JSON list "
      .. "(HTTP %d, %s)", res.status, res.headers["content-type"] or "no Content-Type"))
  end
  local dicomjson = require "healthcare.dicomjson"
  local out = {}
  for i, raw in ipairs(list) do
    if type(raw) ~= "table" then
      return nil, errors.new("dicom", string.format("RetrieveMetadata: item %d is not a DICOM JSON object", i))
    end
    out[i] = dicomjson.dataset(raw)
  end
  return out
end

local function extension_of(mtype)
  return EXTENSIONS[mtype] or "bin"
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

--- store:retrieve_rendered(study, series, instance, opts): the rendered image (opts.accept,
--- default image/jpeg) of the instance, or of its frame opts.frame, to the file opts.to (or
--- into the existing directory opts.to as <instance>[-frame-<n>].<ext>).
function M.retrieve_rendered(store, study, series, instance, opts)
  check_string(study, 1, "retrieve_rendered")
  check_string(series, 2, "retrieve_rendered")
  check_string(instance, 3, "retrieve_rendered")
  opts = util.check_options(opts, RENDERED_OPTIONS, "retrieve_rendered", 2)
  check_to(opts, "retrieve_rendered")
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
    to = join(to, instance .. suffix .. "." .. extension_of(accept:lower()))
  else
    local ok, derr = ready_dir(parent_of(to))
    if not ok then return nil, derr end
  end
  local res, err = send(store, path .. "/rendered", { "Accept: " .. accept, IDENTITY }, opts, { file = to })
  if not res then return nil, err end
  if res.status < 200 or res.status > 299 then
    return nil, not_found_or(res, "RetrieveRendered", uids)
  end
  local ctype = media_type(res.headers)
  return { files = { { path = res.file or to, size = res.bytes, content_type = ctype } }, bytes = res.bytes,
    status = res.status, content_type = ctype }
end

-- Names received frame parts frame-<n>.<ext> in dir, in the order the frames were asked for.
local function name_frames(parts, dir, numbers)
  local files = {}
  for i, part in ipairs(parts) do
    local ctype = media_type(part.headers)
    local path = join(dir, string.format("frame-%s.%s", numbers[i], extension_of(ctype)))
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

--- store:retrieve_frames(study, series, instance, frames, opts): frames (a number or a list)
--- of the instance into the directory opts.to as frame-<n>.<ext>. opts.accept: the frames'
--- media type (default application/octet-stream: uncompressed pixel data); opts.transfer_syntax.
function M.retrieve_frames(store, study, series, instance, frames, opts)
  check_string(study, 1, "retrieve_frames")
  check_string(series, 2, "retrieve_frames")
  check_string(instance, 3, "retrieve_frames")
  if type(frames) ~= "number" and type(frames) ~= "table" then
    error("bad argument #4 to 'retrieve_frames' (frame number or list expected, got " .. type(frames) .. ")", 2)
  end
  opts = util.check_options(opts, FRAMES_OPTIONS, "retrieve_frames", 2)
  check_to(opts, "retrieve_frames")
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
  local accept = string.format('Accept: multipart/related; type="%s"', mtype)
  -- Without a transfer-syntax, PS3.18 (8.7.3.5.2) means Explicit VR Little Endian for
  -- application/octet-stream: uncompressed pixels, what most callers of frames want.
  if opts.transfer_syntax then accept = accept .. "; transfer-syntax=" .. ts end
  local function name(parts)
    return name_frames(parts, dir, numbers)
  end
  local res, err = send(store, path .. "/frames/" .. table.concat(numbers, ","), { accept, IDENTITY }, opts,
    { dir = dir })
  if not res then return nil, keep_completed(err, name) end
  if res.status < 200 or res.status > 299 then
    remove_parts(res.parts)
    return nil, not_found_or(res, "RetrieveFrames", uids)
  end
  local parts = res.parts or {}
  if #parts ~= #numbers then
    remove_parts(parts)
    return nil, errors.new("dicom", string.format("RetrieveFrames: asked for %d frames, the server sent %d parts",
      #numbers, #parts), { files = {} })
  end
  local files, nerr = name(parts)
  if not files then return nil, nerr end
  return { files = files, bytes = total_bytes(files), status = res.status }
end

return M
