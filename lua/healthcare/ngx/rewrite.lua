-- SPDX-License-Identifier: MIT
-- healthcare.ngx.rewrite: the API's URLs in answers made the gateway's, for the answer kinds
-- healthcare.ngx's JSON rewriting (M.rewrite_urls) does not cover: DICOM XML (PS3.19
-- NativeDicomModel, what Google answers a STOW-RS that sent no Accept, as Python's and npm's
-- dicomweb-client do) and the hosts of a client's Host header.
local M = {}

-- s as XML character data.
local function xml_escape(s)
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
    ["'"] = "&apos;" }))
end

--- `text` with every `delim .. from` that the URL's boundary ends (boundary(c, c2): the character
--- after the match and the two after it) made `delim .. to`; `from` and `to` already in the
--- text's escaping. The one loop of the JSON and XML rewrites. Returns the text and the count.
function M.replace_url_prefix(text, delim, from, to, boundary)
  local pat, repl = delim .. from, delim .. to
  local parts, pos, n = {}, 1, 0
  while true do
    local i, j = text:find(pat, pos, true)
    if not i then break end
    if boundary(text:sub(j + 1, j + 1), text:sub(j + 1, j + 2)) then
      parts[#parts + 1] = text:sub(pos, i - 1)
      parts[#parts + 1] = repl
      n = n + 1
    else
      parts[#parts + 1] = text:sub(pos, j)
    end
    pos = j + 1
  end
  if n == 0 then return text, 0 end
  parts[#parts + 1] = text:sub(pos)
  return table.concat(parts), n
end

-- Where a URL in XML character data may go on after the DICOMweb root.
local function xml_boundary(c)
  return c == "/" or c == "<" or c == "?" or c == "#"
end

--- A DICOM XML text with every element text (a <Value> of RetrieveURL 00081190 or any other UR
--- attribute) that starts with the URL `from` (the API's DICOMweb root) made to start with `to`
--- (the gateway's), when the URL goes on with '/', '?', '#' or ends there; nothing else changes.
--- Returns the text and the number of URLs replaced.
function M.rewrite_xml_urls(text, from, to)
  return M.replace_url_prefix(text, ">", xml_escape(from), xml_escape(to), xml_boundary)
end

--- Whether a media type (lower case, no parameters) is DICOM XML or XML.
function M.is_xml(media_type)
  return media_type == "application/dicom+xml" or media_type == "application/xml" or media_type == "text/xml"
end

--- The host[:port] clients reached: the Host header's, with the server's port added when the
--- header has none and the port is not the scheme's default (Python's dicomweb-client sends
--- `Host: 127.0.0.1` to a gateway on port 8080; its URLs must come back with :8080).
function M.host_with_port(host, scheme, server_port)
  if host:match(":%d+$") then return host end
  local default = scheme == "https" and "443" or "80"
  if tostring(server_port) == default then return host end
  return host .. ":" .. tostring(server_port)
end

return M
