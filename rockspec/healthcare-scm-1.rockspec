-- Build from a checkout: luarocks make rockspec/healthcare-scm-1.rockspec
rockspec_format = "3.0"
package = "healthcare"
version = "scm-1"
source = { url = "git+file:///dev/null" } -- built from the working tree with `luarocks make`
description = {
  summary = "Google Cloud Healthcare API DICOMweb client (store, search, retrieve, delete) with a C core, for any DICOMweb server",
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson",
  "luaexpat",
  "luafilesystem",
  "argparse",
}
external_dependencies = {
  CURL = { header = "curl/curl.h" },
  OPENSSL = { header = "openssl/evp.h" },
  ZLIB = { header = "zlib.h" },
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    HC_INSTALL_LMOD = "$(LUADIR)",
    HC_INSTALL_CMOD = "$(LIBDIR)",
    HC_INSTALL_BIN = "$(BINDIR)",
  },
}
test = { type = "command", command = "make test" }
