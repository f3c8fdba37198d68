-- Build from a checkout (README, "Install"): luarocks --lua-version 5.4 make
rockspec_format = "3.0"
package = "healthcare"
version = "scm-1"
-- `luarocks make` builds the working tree it runs in; `make rock` packs a .src.rock of it.
source = { url = "git+file:///dev/null" }
description = {
  summary = "Google Cloud Healthcare API DICOMweb client (store, search, retrieve, delete) with a C core, for any DICOMweb server",
  detailed = [[
Lua 5.4 or LuaJIT 2.1 (OpenResty). Under Lua 5.4 the rock installs the `healthcare` command, under
LuaJIT (`luarocks --lua-version 5.1` with LuaJIT as LuaRocks' Lua 5.1) `healthcare-luajit`, so both
can share a tree. The C module links libcurl, OpenSSL's libcrypto and zlib.]],
  license = "MIT",
  labels = { "dicom", "dicomweb", "google-cloud", "healthcare" },
}
-- Lua 5.2, 5.3 and PUC-Rio's 5.1 are refused by the build, naming the supported ones.
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson",
  "luaexpat",
  "luafilesystem",
  "argparse",
}
-- Libraries, not headers: LuaRocks looks for headers in <dir>/include only, and Debian keeps
-- curl's in /usr/include/x86_64-linux-gnu; the build finds them from the directories given here.
external_dependencies = {
  CURL = { library = "curl" },
  OPENSSL = { library = "crypto" },
  ZLIB = { library = "z" },
}
build = {
  type = "command",
  build_command = [[sh scripts/rock-build "$(LUA)" "$(LUA_INCDIR)" "$(PREFIX)" "$(LUADIR)" "$(LIBDIR)" "$(BINDIR)" "$(CURL_INCDIR)" "$(CURL_LIBDIR)" "$(OPENSSL_INCDIR)" "$(OPENSSL_LIBDIR)" "$(ZLIB_INCDIR)" "$(ZLIB_LIBDIR)"]],
}
test = { type = "command", command = "make test" }
