-- SPDX-License-Identifier: MIT
-- The contract of the Lua API (README "Lua API"), checked without a server: a misuse raises at
-- the line of the caller, through the store's methods too, naming the public function; bad
-- content returns a "usage" error; closed objects say so; a store and a client own what they made
-- and close it (sessions observed as the file descriptors of their libcurl handles), with <close>
-- under Lua 5.4; a credentials module that does not load is an error naming it; old option names
-- still work. Nothing here sends a request (spec/42 has the partial results of failed ones).
local H = require "helpers"
local lfs = require "lfs"
local healthcare = require "healthcare"

local URL = "http://127.0.0.1:9/dicom-web"
local PARENT = "projects/p/locations/l/datasets/d/dicomStores/s"

-- A new empty directory under os.tmpname()'s.
local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  assert(lfs.mkdir(path))
  return path
end

local fds = H.open_fds

local raises_at_call = H.raises_at_call

describe("a misuse raises at the caller's line, naming the public function", function()
  local client, store, dir
  setup(function()
    client = assert(healthcare.new { credentials = false, endpoint = "http://127.0.0.1:9/v1" })
    store = assert(healthcare.dicomweb(URL))
    dir = tmpdir()
  end)
  teardown(function()
    client:close()
    store:close()
  end)

  it("in the constructors", function()
    raises_at_call(function() local _ = healthcare.new { bogus = 1 } end, "unknown option 'bogus' to 'healthcare.new'; "
      .. "valid options: access_token, api_key, basic_auth, ca_file, concurrency, connect_timeout, credentials, debug, delegates, "
      .. "endpoint, http2, iam_endpoint, idle_timeout, impersonate, insecure, max_compression_ratio, min_speed, "
      .. "no_proxy, params, proxy, quota_project, refresh_margin, "
      .. "retry, scopes, self_signed_jwt, subject, timeout, token_cache, transport, user_agent")
    raises_at_call(function() local _ = healthcare.new(42) end,
      "bad argument to 'healthcare.new' (options table expected, got number)")
    raises_at_call(function() local _ = healthcare.new { timeout = "10" } end,
      "bad option 'timeout' to 'healthcare.new' (number expected, got string)")
    raises_at_call(function() local _ = healthcare.new { credentials = 42 } end,
      "bad option 'credentials' to 'healthcare.new' (path, table or false expected, got number)")
    raises_at_call(function() local _ = healthcare.new { timeout = -1 } end,
      "bad option 'timeout' to 'healthcare.new' (a number >= 0 expected, got -1)")
    raises_at_call(function() local _ = healthcare.new { concurrency = 0 } end,
      "bad option 'concurrency' to 'healthcare.new' (a whole number >= 1 expected, got 0)")
    raises_at_call(function() local _ = healthcare.new { retry = { max_attempts = 0 } } end,
      "bad option 'retry.max_attempts' to 'healthcare.new' (a whole number >= 1 expected, got 0)")
    raises_at_call(function() local _ = healthcare.dicomweb(42) end,
      "bad argument #1 to 'dicomweb' (string expected, got number)")
    raises_at_call(function() local _ = healthcare.dicomweb(URL, { insecure = "yes" }) end,
      "bad option 'insecure' to 'dicomweb' (boolean expected, got string)")
    raises_at_call(function() local _ = healthcare.dicom_store(nil) end,
      "bad argument #1 to 'dicom_store' (string expected, got nil)")
    raises_at_call(function() local _ = healthcare.dicom_store(PARENT, { scopes = 1 }) end,
      "bad option 'scopes' to 'dicom_store' (string or table expected, got number)")
  end)

  it("in the client's methods", function()
    raises_at_call(function() local _ = client:send(42) end, "bad argument #1 to 'send' (table expected, got number)")
    raises_at_call(function() local _ = client:send { url = 1 } end,
      "bad option 'url' to 'send' (string expected, got number)")
    raises_at_call(function() local _ = client:send { url = URL, bogus = 1 } end, "unknown option 'bogus' to 'send'; "
      .. "valid options: body, compressed, headers, idle_timeout, max_compression_ratio, max_response_bytes, method, "
      .. "min_speed, on_parts, on_progress, query, sink, take_parts, timeout, url")
    raises_at_call(function() local _ = client:start { url = URL, on_progress = print } end,
      "bad option 'on_progress' to 'start' (not taken: call request:progress() between waits)")
    raises_at_call(function() local _ = client:start { url = URL, on_parts = print } end,
      "bad option 'on_parts' to 'start' (not taken: the parts come with finish()'s result)")
    raises_at_call(function() local _ = client:send { url = URL, on_parts = true } end,
      "bad option 'on_parts' to 'send' (function expected, got boolean)")
    raises_at_call(function() local _ = client:send { url = URL, take_parts = 1 } end,
      "bad option 'take_parts' to 'send' (boolean expected, got number)")
    raises_at_call(function() local _ = client:start { url = URL, take_parts = true } end,
      "bad option 'take_parts' to 'start' (not taken: the parts come with finish()'s result)")
    raises_at_call(function() local _ = client:poll("1") end, "bad argument #1 to 'poll' (number expected, got string)")
    raises_at_call(function() local _ = client:wait(1) end, "bad argument #1 to 'wait' (operation or operation name "
      .. "expected, got number; the requests in flight are poll(seconds)'s)")
    raises_at_call(function() local _ = client:finish({}) end,
      "bad argument #1 to 'finish' (a request of this client that poll returned expected)")
    raises_at_call(function() local _ = client:dicom_store(nil) end,
      "bad argument #1 to 'dicom_store' (string expected, got nil)")
    raises_at_call(function() local _ = client:store_instances(nil, "studies", {}) end,
      "bad argument #1 to 'store_instances' (string expected, got nil)")
    raises_at_call(function() local _ = client:store_instances(PARENT, "studies", 42) end,
      "bad argument #3 to 'store_instances' (table expected, got number)")
    -- the store's store_instances' options, blamed on the caller of the client's
    raises_at_call(function() local _ = client:store_instances(PARENT, "studies", {}, nil, { bogus = 1 }) end,
      "unknown option 'bogus' to 'store_instances'; valid options: on_progress")
    raises_at_call(function() local _ = client:store_instances(PARENT, "studies", {}, nil, { on_progress = 1 }) end,
      "bad option 'on_progress' to 'store_instances' (function expected, got number)")
    raises_at_call(function() local _ = client.send(store, {}) end,
      "bad self to 'send' (healthcare.Client expected, got healthcare.Store)")
  end)

  it("through the store's methods, which are the modules' functions themselves", function()
    local to = { to = dir }
    for _, case in ipairs({
      { function() local _ = store:store(42) end, "bad argument #1 to 'store' (path or list of paths expected, got number)" },
      { function() local _ = store:store({}, { concurrency = "4" }) end,
        "bad option 'concurrency' to 'store' (number expected, got string)" },
      { function() local _ = store:store({}, { retry = 5 }) end, "bad option 'retry' to 'store' (table expected, got number)" },
      { function() local _ = store:store({}, { concurrency = 0 }) end,
        "bad option 'concurrency' to 'store' (a whole number >= 1 expected, got 0)" },
      { function() local _ = store:store({}, { max_request_bytes = 0.5 }) end,
        "bad option 'max_request_bytes' to 'store' (a whole number >= 1 expected, got 0.5)" },
      { function() local _ = store:search_studies({}, { page_size = 0 }) end,
        "bad option 'page_size' to 'search_studies' (a whole number >= 1 expected, got 0)" },
      { function() local _ = store:delete_study("1.2", { poll_interval = 0 }) end,
        "bad option 'poll_interval' to 'delete_study' (a number > 0 expected, got 0)" },
      { function() local _ = store:verify({}, { page_size = -1 }) end,
        "bad option 'page_size' to 'verify' (a whole number >= 1 expected, got -1)" },
      { function() local _ = store:store_instances(42) end, "bad argument #1 to 'store_instances' (string expected, got number)" },
      { function() local _ = store:search_studies(42) end,
        "bad argument #1 to 'search_studies' (query table expected, got number)" },
      { function() local _ = store:search_series({}, { pagesize = 1 }) end, "unknown option 'pagesize' to 'search_series'; "
        .. "valid options: max_page_bytes, on_retry, page_size, params, retry, timeout" },
      { function() local _ = store:search_instances({}, { timeout = "1" }) end,
        "bad option 'timeout' to 'search_instances' (number expected, got string)" },
      { function() local _ = store:retrieve_study(42, to) end, "bad argument #1 to 'retrieve_study' (string expected, got number)" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, bogus = 1 }) end, "unknown option 'bogus' to "
        .. "'retrieve_study'; valid options: compressed, idle_timeout, keep_rejected, list_files, max_bytes, "
        .. "max_compression_ratio, max_part_bytes, max_parts, min_speed, on_file, on_progress, on_retry, params, request_cost, retry, skip_existing, timeout, to, transfer_syntax" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, on_progress = true }) end,
        "bad option 'on_progress' to 'retrieve_study' (function expected, got boolean)" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, on_file = 1 }) end,
        "bad option 'on_file' to 'retrieve_study' (function expected, got number)" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, max_bytes = -1 }) end,
        "bad option 'max_bytes' to 'retrieve_study' (a whole number >= 0 expected, got -1)" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, list_files = "no" }) end,
        "bad option 'list_files' to 'retrieve_study' (boolean expected, got string)" },
      { function() local _ = store:retrieve_study("1.2", { to = dir, request_cost = 1.5 }) end,
        "bad option 'request_cost' to 'retrieve_study' (a whole number >= 0 expected, got 1.5)" },
      { function() local _ = store:retrieve_instance("1.2", "1.3", "1.4", { to = dir, request_cost = 0 }) end,
        "unknown option 'request_cost' to 'retrieve_instance'; valid options: compressed, idle_timeout, "
        .. "keep_rejected, list_files, max_bytes, max_compression_ratio, max_part_bytes, max_parts, min_speed, on_file, "
        .. "on_progress, on_retry, params, retry, timeout, to, transfer_syntax" },
      { function() local _ = store:retrieve_series("1.2", 3, to) end,
        "bad argument #2 to 'retrieve_series' (string expected, got number)" },
      { function() local _ = store:retrieve_instance("1.2", "1.3", "1.4") end, "bad option 'to' to 'retrieve_instance' "
        .. "(path expected, got nil)" },
      { function() local _ = store:retrieve_metadata("1.2", { timeout = -1 }) end,
        "bad option 'timeout' to 'retrieve_metadata' (a number of seconds >= 0 expected, got -1)" },
      { function() local _ = store:retrieve_rendered("1", "2", 3, to) end,
        "bad argument #3 to 'retrieve_rendered' (string expected, got number)" },
      { function() local _ = store:retrieve_frames("1", "2", "3", "1", to) end,
        "bad argument #4 to 'retrieve_frames' (frame number or list expected, got string)" },
      { function() local _ = store:delete_study(42) end, "bad argument #1 to 'delete_study' (string expected, got number)" },
      { function() local _ = store:delete_series("1.2", nil) end,
        "bad argument #2 to 'delete_series' (string expected, got nil)" },
      { function() local _ = store:delete_instance("1.2", "1.3", "1.4", { poll_interval = "1" }) end,
        "bad option 'poll_interval' to 'delete_instance' (number expected, got string)" },
      { function() local _ = store:verify(42) end, "bad argument #1 to 'verify' (report or list expected, got number)" },
      { function() local _ = store:verify({}, { bogus = 1 }) end, "unknown option 'bogus' to 'verify'; "
        .. "valid options: page_size, params, retry" },
      { function() local _ = store:fetch(42) end, "bad argument #1 to 'fetch' (string expected, got number)" },
      { function() local _ = store:fetch("studies", { method = "POST" }) end,
        "bad option 'method' to 'fetch' ('GET' or 'DELETE' expected, got 'POST')" },
      { function() local _ = store:fetch("studies", { query = { PatientID = "x" } }) end,
        "bad option 'query' to 'fetch' (string expected, got table)" },
      { function() local _ = store:fetch("studies", { max_bytes = 0 }) end,
        "bad option 'max_bytes' to 'fetch' (a whole number >= 1 expected, got 0)" },
      { function() local _ = store:fetch("studies", { accept = "image/png" }) end, "unknown option 'accept' to "
        .. "'fetch'; valid options: compressed, idle_timeout, max_bytes, max_compression_ratio, method, min_speed, "
        .. "on_progress, on_retry, params, query, retry, timeout, to" },
      { function() local _ = store:fetch("studies", { on_retry = true }) end,
        "bad option 'on_retry' to 'fetch' (function expected, got boolean)" },
      { function() local _ = store.retrieve_study(client, "1.2", to) end,
        "bad self to 'retrieve_study' (healthcare.Store expected, got healthcare.Client)" },
    }) do
      raises_at_call(case[1], case[2])
    end
  end)

  it("on a search's results", function()
    local results = assert(store:search_studies({}))
    raises_at_call(function() local _ = results.all(store) end, "bad self to 'all' (healthcare.Results expected, got "
      .. "healthcare.Store)")
  end)
end)

describe("bad content returns a usage error, never raises", function()
  it("for names, UIDs, queries and URLs", function()
    local client = assert(healthcare.new { credentials = false })
    local store = assert(healthcare.dicomweb(URL))
    local dir = tmpdir()
    for _, call in ipairs({
      function() return client:dicom_store("projects/p/datasets/d") end,
      function() return healthcare.dicom_store("projects/p/datasets/d", { credentials = false }) end,
      function() return healthcare.dicomweb("ftp://host/dicom-web") end,
      function() return store:retrieve_study("1..2", { to = dir }) end,
      function() return store:delete_study("abc") end,
      function() return store:search_studies({ NoSuchKeyword = "x" }) end,
      function() return store:store_instances("series", { content_type = "application/dicom", data = "x" }) end,
      function() return store:store({}, { study_uid = "1.2.x" }) end,
      function() return store:fetch("studies/1.2/../1.3") end,
      function() return store:fetch("studies/1.2/frames/1") end,
      function() return store:fetch("studies/1.2/series/1.3/instances/1.4/frames/0") end,
      function() return store:fetch("studies/1.2 ") end,
      function() return store:fetch("studies", { query = "PatientID=%0d%0aX" }) end,
      function() return store:fetch("studies", { query = "PatientID=%zz" }) end,
      function() return store:fetch("studies", { query = "=x" }) end,
    }) do
      local res, err = call()
      assert.is_nil(res)
      assert.equal("usage", err.kind, tostring(err))
    end
    client:close()
    store:close()
  end)
end)

describe("closed objects", function()
  it("raise 'attempt to use a closed client/store' at the caller's line", function()
    local client = assert(healthcare.new { credentials = false })
    local borrowed = assert(client:dicom_store(PARENT))
    client:close()
    client:close() -- twice is fine
    assert.equal("healthcare.Client (closed)", tostring(client))
    assert.is_true(client:is_closed())
    raises_at_call(function() local _ = client:send { url = URL } end, "attempt to use a closed client")
    raises_at_call(function() local _ = client:dicom_store(PARENT) end, "attempt to use a closed client")
    raises_at_call(function() local _ = borrowed:search_studies({}) end, "attempt to use a closed client")
    local store = assert(healthcare.dicomweb(URL))
    store:close()
    store:close()
    assert.equal("healthcare.Store " .. URL .. " (closed)", tostring(store))
    raises_at_call(function() local _ = store:retrieve_study("1.2", { to = "x" }) end, "attempt to use a closed store")
    raises_at_call(function() local _ = store:fetch("studies") end, "attempt to use a closed store")
  end)
end)

describe("ownership", function()
  it("a store made by healthcare.dicomweb or dicom_store closes the client it made", function()
    local n0 = fds()
    local a = assert(healthcare.dicomweb(URL))
    local b = assert(healthcare.dicom_store(PARENT, { credentials = false }))
    assert.equal(n0 + 4, fds())
    a:close()
    b:close()
    assert.equal(n0, fds())
  end)

  it("a store from client:dicom_store leaves the caller's client open", function()
    local client = assert(healthcare.new { credentials = false })
    local n1 = fds()
    local store = assert(client:dicom_store(PARENT))
    store:close()
    assert.equal(n1, fds())
    assert.is_false(client:is_closed())
    assert.truthy(client:dicom_store(PARENT))
    client:close()
    assert.equal(n1 - 2, fds())
  end)

  it("a credential object passed in stays the caller's", function()
    local closed = 0
    local cred = { kind = "mine", refreshable = false, authorize = function() return {} end,
      invalidate = function() end, close = function() closed = closed + 1 end }
    local client = assert(healthcare.new { credentials = cred })
    assert.equal(cred, client:credential())
    client:close()
    assert.equal(0, closed)
  end)

  if _VERSION == "Lua 5.4" and not rawget(_G, "jit") then
    it("<close> closes a client and a store at the end of their scope (Lua 5.4)", function()
      -- load(): LuaJIT cannot parse <close>, and this file runs there too
      local run = assert(load([[
        local healthcare, fds, url = ...
        local n0 = fds()
        do
          local client <close> = assert(healthcare.new { credentials = false })
          local store <close> = assert(healthcare.dicomweb(url))
          assert(fds() == n0 + 4)
        end
        return fds() - n0
      ]]))
      assert.equal(0, run(healthcare, fds, URL))
    end)
  end
end)

describe("a credentials module that does not load", function()
  it("is an error naming the module, not a silent fall back to no credentials", function()
    local saved = package.loaded["healthcare.auth.credentials"]
    package.loaded["healthcare.auth.credentials"] = nil
    package.preload["healthcare.auth.credentials"] = function() error("broken on purpose") end
    local ok, c, err = pcall(healthcare.new, { endpoint = "http://127.0.0.1:9/v1" })
    package.preload["healthcare.auth.credentials"] = nil
    package.loaded["healthcare.auth.credentials"] = saved
    assert.is_true(ok, tostring(c))
    assert.is_nil(c)
    assert.equal("auth", err.kind)
    assert.truthy(err.message:find("cannot load the module healthcare.auth.credentials", 1, true), err.message)
    assert.truthy(err.message:find("broken on purpose", 1, true), err.message)
    -- what does not need the module still works
    local static = assert(healthcare.new { access_token = "token-1234567890" })
    static:close()
  end)
end)

describe("deprecated option names (README 'Lua API') still work", function()
  local store
  setup(function() store = assert(healthcare.dicomweb(URL)) end)
  teardown(function() store:close() end)

  it("store's max_instances_per_request is max_request_instances", function()
    local report = assert(store:store({}, { max_instances_per_request = 2 }))
    assert.equal(0, report.requests)
    raises_at_call(function() local _ = store:store({}, { max_instances_per_request = 2, max_request_instances = 3 }) end,
      "option 'max_request_instances' to 'store' given twice (as 'max_request_instances' and its old name "
      .. "'max_instances_per_request')")
  end)

  it("delete's timeout is operation_timeout", function()
    -- taken (a bad UID is what comes back), and checked as operation_timeout
    local res, err = store:delete_study("abc", { timeout = 5 })
    assert.is_nil(res)
    assert.matches("^invalid StudyInstanceUID 'abc'", err.message)
    raises_at_call(function() local _ = store:delete_study("1.2", { timeout = -1 }) end,
      "bad option 'operation_timeout' to 'delete_study' (a number >= 0 expected, got -1)")
  end)
end)

describe("the store's methods", function()
  -- A new Lua process (this one has loaded everything): what `require "healthcare"` loads, then
  -- what a first call of a method does. pre: Lua run first ("ngx = {}": as under OpenResty).
  local function loaded_after(pre, code)
    local lua = os.getenv("HC_LUA") or "lua5.4"
    local script = pre .. [[
      local healthcare = require "healthcare"
      local store = healthcare.dicomweb("http://127.0.0.1:9/dicom-web")
      ]] .. code .. [[
      local names = {}
      for name in pairs(package.loaded) do
        if name:find("^healthcare%.dicomweb%.") or name == "healthcare.migrate" then names[#names + 1] = name end
      end
      table.sort(names)
      io.write(table.concat(names, " "))]]
    local out, err, code_ = H.run(H.q(lua) .. " -e " .. H.q(script))
    assert.equal(0, code_, err)
    return out
  end

  it("are loaded at their first use, and are then the module's function itself", function()
    local METHOD_MODULES = { "batch", "delete", "fetch", "retrieve", "search", "verify", "watch" }
    local function has(list, name)
      return (" " .. list .. " "):find(" " .. name .. " ", 1, true) ~= nil
    end
    local bare = loaded_after("", "")
    for _, m in ipairs(METHOD_MODULES) do assert.is_false(has(bare, "healthcare.dicomweb." .. m), bare) end
    assert.is_false(has(bare, "healthcare.migrate"), bare)
    local used = loaded_after("", [[
      assert(store.retrieve_study == require("healthcare.dicomweb.retrieve").retrieve_study)
      assert(store.retrieve_study == store.retrieve_study)
      assert(store.no_such_method == nil)]])
    assert.is_true(has(used, "healthcare.dicomweb.retrieve"), used)
    assert.is_false(has(used, "healthcare.dicomweb.watch"), used)
    -- outside OpenResty a client never loads the cosocket transport, unless asked for it by name
    local client = loaded_after("", [[
      local c = assert(healthcare.new { credentials = false, endpoint = "http://127.0.0.1:9/v1" })
      c:close()
      io.write(package.loaded["healthcare.ngx.transport"] and "ngx.transport " or "")]])
    assert.is_nil(client:find("ngx.transport", 1, true), client)
    local asked = loaded_after("", [[
      local c, err = healthcare.new { credentials = false, transport = "ngx" }
      assert(c == nil and err.kind == "usage", tostring(err))
      io.write(package.loaded["healthcare.ngx.transport"] and "ngx.transport " or "")]])
    assert.truthy(asked:find("ngx.transport", 1, true), asked)
    -- under OpenResty, all at once: `require "healthcare"` in init_by_lua leaves handlers nothing to load
    local ngx = loaded_after("ngx = {} ", "")
    for _, m in ipairs(METHOD_MODULES) do assert.is_true(has(ngx, "healthcare.dicomweb." .. m), ngx) end
    assert.is_true(has(ngx, "healthcare.migrate"), ngx)
  end)
end)
