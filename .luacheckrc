-- luacheck configuration (Debian package lua-check): `make lint`.
std = "lua54"
max_line_length = 120
-- Generated (scripts/gen-api): Google's descriptions are long lines.
files["lua/healthcare/api/v1.lua"] = { max_line_length = false }
files["lua/healthcare/ngx"] = { std = "luajit", globals = { "ngx" } }
files["spec"] = { std = "+busted", max_line_length = false, read_globals = { "jit" } }
files["examples/openresty"] = { std = "luajit", globals = { "ngx" } }
exclude_files = { "build", "build-*", "bench/out" }
