-- SPDX-License-Identifier: MIT
-- The media types of DICOMweb, written once: what the store asks for (the Accept header of each
-- kind of request: search, metadata, retrieve, rendered, frames, delete, store) and the file
-- name extensions of what comes back. The store's modules and the command's seed form read them
-- here; none writes an Accept value of its own.
local M = {}

M.DICOM = "application/dicom"
M.DICOM_JSON = "application/dicom+json"
M.DICOM_XML = "application/dicom+xml"
M.JSON = "application/json"
M.OCTET_STREAM = "application/octet-stream"
M.JPEG = "image/jpeg"

--- 'multipart/related; type="<part_type>"[; transfer-syntax=<ts>]': instances (part_type
--- application/dicom) or frames, in transfer syntax ts ("*": as stored; nil: the standard's
--- default for the part type, PS3.18 8.7.3.5.2).
function M.multipart(part_type, ts)
  local value = string.format('multipart/related; type="%s"', part_type)
  if ts then value = value .. "; transfer-syntax=" .. ts end
  return value
end

--- The Accept value of each kind of request, as sent when nothing more specific is asked for
--- (a transfer syntax, a frame or image type): the answers as stored.
M.ACCEPT = {
  search = M.DICOM_JSON,
  metadata = M.DICOM_JSON,
  store = M.DICOM_JSON,
  retrieve = M.multipart(M.DICOM, "*"),
  rendered = M.JPEG,
  frames = M.multipart(M.OCTET_STREAM, "*"),
  delete = M.JSON,
}

--- Whether answers of a kind are JSON (asked for gzip-compressed, held in memory) rather than
--- bytes (asked for as they are, streamed).
M.JSON_KINDS = { search = true, metadata = true, store = true, delete = true }

-- File name extensions of the media types a frame or a rendered image comes as.
local EXTENSIONS = {
  ["application/octet-stream"] = "raw", ["image/jpeg"] = "jpg", ["image/png"] = "png",
  ["image/gif"] = "gif", ["image/jp2"] = "jp2", ["image/jpx"] = "jpx", ["image/jls"] = "jls",
  ["image/x-jls"] = "jls", ["image/dicom-rle"] = "rle", ["image/x-dicom-rle"] = "rle",
  ["video/mpeg"] = "mpg", ["video/mp4"] = "mp4", ["application/dicom"] = "dcm",
}

--- The file name extension for a media type ("bin" for one not listed).
function M.extension(mtype)
  return EXTENSIONS[mtype] or "bin"
end

--- The media type of a Content-Type header value (lower case, no parameters; "" for none).
function M.of(content_type)
  return ((content_type or ""):match("^%s*([^;%s]+)") or ""):lower()
end

return M
