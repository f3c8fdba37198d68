# healthcare: build, test, demo and install. Everything goes through CMake; this file only
# strings the steps together and installs missing Debian packages first.
PREFIX ?= /usr/local
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
LUA_ENV = LUA_PATH='$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;' LUA_CPATH='$(CURDIR)/$(BUILD)/?.so;;'

# The sanitizer suite in `make test` reruns the C tests, the unit lane and the specs that drive the
# C core hardest (ctest -R).
SANITIZE_SPECS ?= ^(c_|unit/|10-|30-|4[02347]-|5[05]-|6[015]-|8[0-9]-|9[0-26]-)
FUZZ_SECONDS ?= 60
ROCK_LUA ?= 5.4

.PHONY: all deps build check test demo install install-luajit rock lint clean fuzz valgrind bench bench-retrieve bench-scale api api-check

all: build

deps:
	@scripts/install-deps

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/CMakeCache.txt
	cmake -S . -B $(BUILD) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

# The fast unit lane: the C tests and the specs of spec/unit/ (ctest label "unit"), under Lua 5.4
# and LuaJIT, outside the test bed: no network namespace, no Orthanc, no Python. Seconds.
check: build
	ctest --test-dir $(BUILD) --output-on-failure -L unit -j 2

# Every spec and C test. The unit lane first (make check); then, inside a private network
# namespace with Orthanc and the Google emulator started (spec/support/testbed) and stopped
# whatever happens, the specs under ASan+UBSan (scripts/test-sanitize) and the integration
# specs, whose ctest summary ends the output. Lua 5.4 and LuaJIT specs are both in each run
# (CMakeLists.txt).
test: check
	scripts/test-sanitize '$(SANITIZE_SPECS)'
	spec/support/testbed ctest --test-dir $(BUILD) --output-on-failure -j 2 -LE unit

# Each libFuzzer target for FUZZ_SECONDS (fuzz/README.md); crashes become spec/fixtures/fuzz inputs.
fuzz: deps
	scripts/fuzz $(FUZZ_SECONDS)

# valgrind memcheck of `healthcare store` against Orthanc: no errors, no definite leaks.
valgrind: build
	scripts/valgrind-store $(BUILD)

# Start Orthanc, store sample DICOM files with the `healthcare` command, show the study.
demo: build
	spec/support/testbed env $(LUA_ENV) PATH='$(CURDIR)/$(BUILD)/bin:$(PATH)' scripts/demo

# healthcare store vs curl and npm dicomweb-client, into a discard sink and into Orthanc (quick
# sizes; FULL=1 for the full corpora, which rewrites bench/RESULTS.md and bench/results.png).
bench: build
	FULL=$(FULL) bench/run

# healthcare retrieve vs curl, WADO-RS from Orthanc, and its resume (quick sizes, about a minute,
# the report in bench/out/; FULL=1 for the full corpora, about 8 minutes: rewrites
# bench/RESULTS-retrieve.md).
bench-retrieve: build
	FULL=$(FULL) bench/run --retrieve

# A migration's cost against its size: healthcare store of 1,000 to 100,000 files of 2 KB
# (1,000,000 with FULL=1) into the sink, with a journal, resumed, and by shards; about a minute
# (FULL=1: about 7, rewrites bench/RESULTS-scale.md and bench/results-scale.png; a quick run's go
# to bench/out/).
bench-scale: build
	FULL=$(FULL) bench/run --scale

# The method table of the whole API (lua/healthcare/api/v1.lua) and the oracle's captured requests
# (spec/fixtures/api/oracle-v1.json), both from Google's Node client pinned in
# scripts/api/package-lock.json. Needs node and npm; `make test` does not (both files are committed).
API_FILES = lua/healthcare/api/v1.lua spec/fixtures/api/oracle-v1.json
scripts/api/node_modules/.package-lock.json: scripts/api/package.json scripts/api/package-lock.json
	cd scripts/api && npm ci --no-audit --no-fund

api: scripts/api/node_modules/.package-lock.json
	scripts/gen-api
	scripts/api-oracle

# Fails when the committed files are not what the pinned package gives.
api-check: api
	@if [ -n "$$(git status --porcelain -- $(API_FILES))" ]; then \
	  git diff --stat -- $(API_FILES); \
	  echo "make api-check: $(API_FILES) differ from what scripts/gen-api and scripts/api-oracle write; commit them"; \
	  exit 1; \
	fi

# The Lua 5.4 install: the Lua files, healthcare/core.so, the `healthcare` command and its bash
# completion under PREFIX (README, "Install").
install: deps
	cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	cmake --install $(BUILD)

# The LuaJIT (OpenResty) install beside it: the module for LuaJIT and `healthcare-luajit`, never
# `healthcare` (built in build-luajit, without the tests).
install-luajit: deps
	cmake -S . -B build-luajit -DHC_LUAJIT=ON -DHC_TESTS=OFF -DCMAKE_INSTALL_PREFIX=$(PREFIX) >/dev/null
	cmake --build build-luajit -j $(JOBS)
	cmake --install build-luajit

# dist/: a .src.rock of the committed source and a binary .rock for Lua $(ROCK_LUA) (5.4).
rock: deps
	ROCK_LUA=$(ROCK_LUA) scripts/make-rock

lint: deps
	luacheck lua spec bench examples
	scripts/long-functions
	clang-tidy --quiet src/*.c -- -I/usr/include/lua5.4 -std=c99

clean:
	rm -rf $(BUILD) build-asan build-luajit fuzz/build dist
