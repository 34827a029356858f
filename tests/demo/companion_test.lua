-- Unit test of kong/plugins/consul-enricher-span against a model of Kong's tracing as Kong
-- 3.9.3 implements it (github.com/Kong/kong, tag 3.9.3), run with real lua-cjson under
-- LuaJIT, the interpreter Kong runs. Every modelled behaviour below names the Kong source
-- file it is taken from; where Kong 3.8 differs (the encoder, arrays), the 3.8.1 file is
-- named too. The model is small on purpose: only what decides where the plugin's values
-- end up in the exported OTLP span.
--
-- The access phase is modelled the same way, down to the OpenResty 1.25.3.2 modules Kong
-- 3.9.3 builds on (github.com/openresty/lua-nginx-module v0.10.26, lua-resty-core v0.1.28):
-- the request headers as nginx's headers_in list, and the PDK calls that read and change it.
--
-- Run from the repository root: luajit tests/demo/companion_test.lua

package.path = "./kong/plugins/?.lua;" .. package.path

local cjson = require "cjson.safe"

local failures = 0
local tests = 0
local current_case = ""

local function fail(name, message)
  failures = failures + 1
  io.write("FAIL [", current_case, "] ", name, ": ", message, "\n")
end

local function show(value)
  if type(value) == "table" then
    local encoded = cjson.encode(value)
    return encoded or tostring(value)
  end
  return tostring(value)
end

local function expect_equal(name, actual, expected)
  if show(actual) ~= show(expected) then
    fail(name, "expected " .. show(expected) .. ", got " .. show(actual))
    return false
  end
  return true
end

------------------------------------------------------------------------ the model of Kong

local phase = "init_worker"
local ngx_errors = {}

-- OpenResty's ngx: a per-request ngx.ctx and ngx.var (an undeclared variable reads nil),
-- the phase, the error log.
_G.ngx = {
  ctx = {},
  var = {},
  ERR = 4,
  DEBUG = 8,
  get_phase = function()
    return phase
  end,
  log = function(level, ...)
    if level == 4 then
      ngx_errors[#ngx_errors + 1] = table.concat({ ... })
    end
  end,
}

-- kong/pdk/tracing.lua: the phases in which active_span(), set_active_span() and
-- start_span() act at all (VALID_TRACING_PHASES).
local TRACING_PHASES = {
  ssl_cert = true, rewrite = true, access = true, header_filter = true,
  response = true, body_filter = true, log = true, content = true, balancer = true,
}

-- kong/pdk/tracing.lua: the tracer and its spans. `accepts_tables` is the 3.9 behaviour of
-- span:set_attribute (3.8.1 logs a table value as an invalid type; 3.9.0 added "table" to
-- the accepted types, changelog/3.9.0/kong/feat-tracing-pdk-attributes.yml).
local function new_tracer(name, accepts_tables)
  local tracer = { name = name }
  local span_mt = {}
  span_mt.__index = span_mt

  -- span_mt:set_attribute: a non-string key is an error; a value of another type than
  -- string, number, boolean (and table from 3.9) is logged at ERR, and stored anyway.
  function span_mt:set_attribute(key, value)
    if type(key) ~= "string" then
      error("invalid key", 2)
    end
    local kind = type(value)
    local accepted = value == nil or kind == "string" or kind == "number" or kind == "boolean"
      or (accepts_tables and kind == "table")
    if not accepted then
      ngx.log(ngx.ERR, "invalid span attribute value type: " .. kind)
    end
    self.attributes = self.attributes or {}
    self.attributes[key] = value
  end

  -- span_mt:finish: records the end; if the span is the active one, its parent becomes
  -- active (nil for the root span, which has no parent).
  function span_mt:finish()
    if self.end_time_ns then
      return
    end
    self.end_time_ns = 2
    if self.active and tracer.active_span() == self then
      tracer.set_active_span(self.parent)
      self.active = nil
    end
  end

  -- new_tracer: the active span is ngx.ctx.KONG_active_span.
  function tracer.active_span()
    if not TRACING_PHASES[ngx.get_phase()] then
      return nil
    end
    return ngx.ctx.KONG_active_span
  end

  function tracer.set_active_span(span)
    if not TRACING_PHASES[ngx.get_phase()] then
      return
    end
    if span then
      span.active = true
    end
    ngx.ctx.KONG_active_span = span
  end

  -- init_spans / get_spans: ngx.ctx.KONG_SPANS, created on first use, count in [0].
  function tracer.get_spans()
    local spans = ngx.ctx.KONG_SPANS
    if not spans then
      spans = { [0] = 0 }
      ngx.ctx.KONG_SPANS = spans
    end
    return spans
  end

  -- get_root_span (3.9.0 and later): the first span of KONG_SPANS.
  function tracer.get_root_span()
    return tracer.get_spans()[1]
  end

  -- create_span + link_span: the parent is options.parent or the active span; the span is
  -- appended to KONG_SPANS and inherits its parent's sampling decision.
  function tracer.start_span(span_name, options)
    options = options or {}
    local parent = options.parent or tracer.active_span()
    local span = setmetatable({
      name = span_name,
      tracer = tracer,
      parent = parent,
      kind = options.span_kind or 1,
      attributes = options.attributes,
      should_sample = true,
      start_time_ns = 1,
    }, span_mt)
    if parent then
      span.should_sample = parent.should_sample
    end
    local spans = tracer.get_spans()
    spans[0] = spans[0] + 1
    spans[spans[0]] = span
    return span
  end

  -- process_span: every span of KONG_SPANS that this tracer made.
  function tracer.process_span(processor)
    for _, span in ipairs(tracer.get_spans()) do
      if span.tracer and span.tracer.name == tracer.name then
        processor(span)
      end
    end
  end

  return tracer
end

-- kong/pdk/tracing.lua: with tracing_instrumentations off, kong.tracing is the noop
-- tracer, whose functions, get_root_span and active_span included, return nothing.
local NOOP = function() end
local noop_tracer = {
  name = "noop", active_span = NOOP, set_active_span = NOOP, get_root_span = NOOP,
  get_spans = NOOP, process_span = NOOP,
  start_span = function()
    return { set_attribute = NOOP, finish = NOOP }
  end,
}

-- The OTLP encoder of Kong 3.9, kong/observability/otlp/init.lua: a Lua string is
-- string_value, a boolean bool_value, a number double_value, except the attribute names
-- of KEY_TO_ATTRIBUTE_TYPES ("http.status_code" alone, int_value); an array (strict:
-- keys 1..n) is array_value of the elements so encoded, another table kvlist_value, any
-- other type an attribute without a value. transform_span encodes the span's attributes
-- through the local function transform_attributes, an upvalue of transform_span.
local function kong_3_9_otlp()
  local by_name = { ["http.status_code"] = "int_value" }
  local by_type = { string = "string_value", number = "double_value", boolean = "bool_value" }
  local no_value = {}

  local function is_array(t)
    local n, max = 0, 0
    for k in pairs(t) do
      if type(k) ~= "number" or k < 1 or k % 1 ~= 0 then
        return false
      end
      n, max = n + 1, math.max(max, k)
    end
    return n == max
  end

  local encode_value
  encode_value = function(key, value)
    if type(value) == "table" then
      local list = {}
      if is_array(value) then
        for i = 1, #value do
          list[i] = encode_value(nil, value[i])
        end
        return { array_value = { values = list } }
      end
      for k, v in pairs(value) do
        list[#list + 1] = { key = k, value = encode_value(k, v) }
      end
      return { kvlist_value = { values = list } }
    end
    local field = (key and by_name[key]) or by_type[type(value)]
    if not field then
      return no_value
    end
    return { [field] = value }
  end

  local function transform_attributes(attributes)
    local out = {}
    for k, v in pairs(attributes) do
      out[#out + 1] = { key = k, value = encode_value(k, v) }
    end
    return out
  end

  local function transform_span(span)
    return {
      name = span.name,
      kind = span.kind,
      attributes = span.attributes and transform_attributes(span.attributes),
    }
  end

  return { transform_span = transform_span }
end

-- The OTLP encoder of Kong 3.4-3.8, kong/plugins/opentelemetry/otlp.lua (3.8.1): the same
-- name and type tables, no table support (a table value is an attribute without a value),
-- transform_attributes again an upvalue of transform_span.
local function kong_3_8_otlp()
  local by_name = { ["http.status_code"] = "int_value" }
  local by_type = { string = "string_value", number = "double_value", boolean = "bool_value" }
  local no_value = {}

  local function transform_attributes(attributes)
    local out = {}
    for k, v in pairs(attributes) do
      local field = by_name[k] or by_type[type(v)]
      out[#out + 1] = { key = k, value = field and { [field] = v } or no_value }
    end
    return out
  end

  local function transform_span(span)
    return { name = span.name, attributes = span.attributes and transform_attributes(span.attributes) }
  end

  return { transform_span = transform_span }
end

-- The request's headers as nginx holds them: headers_in.headers, a list of { name, value }
-- in the order the client sent them; the filter and the upstream get whatever is left in it.
local header_list = {}
-- Every header write a plugin made in this request, as "clear <name>" / "set <name>".
local header_writes = {}

-- kong/templates/kong_defaults.lua: lua_max_req_headers = 100.
local LUA_MAX_REQ_HEADERS = 100

-- lua-resty-core lib/resty/core/request.lua, req_headers_mt: a lookup lowercases the name
-- and tries "_" as "-".
local req_headers_mt = {
  __index = function(t, key)
    key = key:lower()
    local value = rawget(t, key)
    if value == nil and key:find("_", 1, true) then
      value = rawget(t, (key:gsub("_", "-")))
    end
    return value
  end,
}

-- ngx.req.get_headers(max): kong/globalpatches.lua makes a missing max lua_max_req_headers;
-- lua-nginx-module src/ngx_http_lua_headers.c (ngx_http_lua_ffi_req_get_headers_count)
-- takes a negative max as 100 and 0 as no limit, and past max returns "truncated";
-- lua-resty-core lib/resty/core/request.lua (get_headers) lowercases the names and makes a
-- repeated header an array of its values in list order.
local function ngx_req_get_headers(max)
  max = max or LUA_MAX_REQ_HEADERS
  if max < 0 then
    max = 100
  end
  local headers, truncated = setmetatable({}, req_headers_mt), nil
  for i, h in ipairs(header_list) do
    if max > 0 and i > max then
      truncated = "truncated"
      break
    end
    local key = h.name:lower()
    local existing = rawget(headers, key)
    if existing == nil then
      headers[key] = h.value
    elseif type(existing) == "table" then
      existing[#existing + 1] = h.value
    else
      headers[key] = { existing, h.value }
    end
  end
  return headers, truncated
end

-- ngx.req.set_header / clear_header: lua-nginx-module src/ngx_http_lua_headers_in.c,
-- ngx_http_set_header_helper: names compared case-insensitively; an empty value (clear)
-- takes every copy out of the list (ngx_http_lua_rm_header_helper), a value replaces the
-- first copy and takes the others out, or is appended when there is none.
local function ngx_req_set_header(name, value)
  if value ~= nil and type(value) ~= "string" then
    error("the model takes a string value only", 2)
  end
  header_writes[#header_writes + 1] = (value == nil and "clear " or "set ") .. name
  local lname, matched, i = name:lower(), false, 1
  while i <= #header_list do
    local h = header_list[i]
    if h.name:lower() == lname then
      if value == nil or matched then
        table.remove(header_list, i)
      else
        h.value, matched = value, true
        i = i + 1
      end
    else
      i = i + 1
    end
  end
  if value ~= nil and not matched then
    header_list[#header_list + 1] = { name = name, value = value }
  end
end

-- kong/pdk/request.lua: get_headers(max) is ngx.req.get_headers(max) with max nil or in
-- 1..1000 (MIN_HEADERS, MAX_HEADERS); get_header (kong/tools/http.lua, get_header) is the
-- first value of a repeated header.
local kong_request = {
  get_headers = function(max)
    if max ~= nil and (type(max) ~= "number" or max < 1 or max > 1000) then
      error("max_headers must be in 1..1000", 2)
    end
    return ngx_req_get_headers(max)
  end,
  get_header = function(name)
    local value = ngx_req_get_headers()[name]
    return type(value) == "table" and value[1] or value
  end,
}

-- kong/pdk/service/request.lua: set_header checks the value (kong/pdk/private/checks.lua,
-- validate_header) and is ngx.req.set_header; clear_header is ngx.req.clear_header. Both
-- only in the rewrite and access phases (clear_header) or also balancer (set_header).
local kong_service_request = {
  set_header = function(name, value)
    if phase ~= "access" and phase ~= "rewrite" and phase ~= "balancer" then
      error("set_header in the " .. phase .. " phase", 2)
    end
    if type(name) ~= "string" or type(value) ~= "string" then
      error("invalid header", 2)
    end
    ngx_req_set_header(name, value)
  end,
  clear_header = function(name)
    if phase ~= "access" and phase ~= "rewrite" then
      error("clear_header in the " .. phase .. " phase", 2)
    end
    if type(name) ~= "string" then
      error("header must be a string", 2)
    end
    ngx_req_set_header(name, nil)
  end,
}

ngx.req = {
  get_headers = ngx_req_get_headers,
  set_header = ngx_req_set_header,
  clear_header = function(name)
    ngx_req_set_header(name, nil)
  end,
}

-- The companion's configuration as Kong stores it: the schema's defaults
-- (kong/db/schema/init.lua fills them in) under the fields given.
local function plugin_config(fields)
  package.loaded["kong.db.schema.typedefs"] = { protocols_http = { type = "set" } }
  package.loaded["consul-enricher-span.schema"] = nil
  local schema = require "consul-enricher-span.schema"
  local conf = {}
  for _, field in ipairs(schema.fields[2].config.fields) do
    local name, def = next(field)
    conf[name] = def.default
  end
  for name, value in pairs(fields or {}) do
    conf[name] = value
  end
  return conf
end

-- One Kong node (one worker): its version, tracer, encoder, opentelemetry plugin and the
-- companion, freshly loaded.
--   options.version: "3.9" (default) or "3.8"
--   options.tracing: false for tracing_instrumentations=off
--   options.otlp: an encoder module to use instead of the release's
local function kong_node(options)
  options = options or {}
  local v39 = (options.version or "3.9") == "3.9"
  local otlp_module = v39 and "kong.observability.otlp" or "kong.plugins.opentelemetry.otlp"
  local otlp = options.otlp or (v39 and kong_3_9_otlp() or kong_3_8_otlp())
  for _, name in ipairs({ "kong.observability.otlp", "kong.plugins.opentelemetry.otlp" }) do
    package.loaded[name] = nil
  end
  package.preload["kong.observability.otlp"] = nil
  package.preload["kong.plugins.opentelemetry.otlp"] = nil
  package.preload[otlp_module] = function()
    return otlp
  end

  -- kong/observability/tracing/instrumentation.lua, init: the global tracer is "instrument",
  -- or the noop tracer when tracing_instrumentations is off.
  local tracer = options.tracing == false and noop_tracer or new_tracer("instrument", v39)

  local node = { log_lines = {}, exported = {} }
  _G.kong = {
    version_num = v39 and 3009003 or 3008001,
    tracing = tracer,
    ctx = { shared = {} },
    request = kong_request,
    service = { request = kong_service_request },
    log = {
      debug = function(...)
        node.log_lines[#node.log_lines + 1] = "debug: " .. table.concat({ ... })
      end,
      notice = function(...)
        node.log_lines[#node.log_lines + 1] = "notice: " .. table.concat({ ... })
      end,
    },
  }

  -- kong/plugins/opentelemetry/traces.lua: captures otlp.transform_span when it is loaded
  -- (before the companion, which Kong loads after the bundled plugins); its log handler
  -- encodes every span of kong.tracing that is sampled.
  local encode_span = require(otlp_module).transform_span
  local opentelemetry = {
    PRIORITY = 14, -- kong/plugins/opentelemetry/handler.lua
    log = function()
      kong.tracing.process_span(function(span)
        if span.should_sample == false then
          return
        end
        node.exported[#node.exported + 1] = encode_span(span)
      end)
    end,
  }

  package.loaded["consul-enricher-span.handler"] = nil
  local companion = require "consul-enricher-span.handler"
  node.companion = companion
  node.otlp = otlp

  -- kong/init.lua, init_worker: each plugin handler's init_worker, if it has one.
  phase = "init_worker"
  for _, plugin in ipairs({ opentelemetry, companion }) do
    if plugin.init_worker then
      plugin:init_worker()
    end
  end

  -- kong/init.lua, Kong.log: plugins' log handlers in descending priority.
  local log_order = { opentelemetry, companion }
  table.sort(log_order, function(a, b)
    return a.PRIORITY > b.PRIORITY
  end)

  -- One proxied request; `written` is what the filter left in the nginx variable
  -- (`variable`, default consul_enricher, declared with `set $consul_enricher ''`), and
  -- `conf` the companion's configuration.
  function node.request(written, conf, variable)
    ngx.ctx = {}
    ngx.var = { [variable or "consul_enricher"] = "" }
    kong.ctx.shared = {}
    node.exported = {}

    -- kong/runloop/handler.lua rewrite.before -> instrumentation.lua request(): the root
    -- span "kong" (server kind), started with no active span, so without a parent; it
    -- becomes the active span.
    phase = "rewrite"
    local root = kong.tracing.start_span("kong", {
      span_kind = 2,
      attributes = { ["http.method"] = "POST", ["kong.request.id"] = "r-1" },
    })
    kong.tracing.set_active_span(root)

    -- access: the router span and plugin spans are started, made active and finished
    -- (instrumentation.lua router(), plugin_callback), which makes the root active again.
    phase = "access"
    local router = kong.tracing.start_span("kong.router")
    kong.tracing.set_active_span(router)
    router:finish()
    -- instrumentation.lua precreate_balancer_span: a child of KONG_SPANS[1].
    local balancer = kong.tracing.start_span("kong.balancer", {
      span_kind = 3,
      parent = ngx.ctx.KONG_SPANS and ngx.ctx.KONG_SPANS[1],
    })
    -- kong/plugins/opentelemetry/traces.lua get_inject_ctx: with tracing off there is no
    -- root span, so the plugin makes a propagation-only one that is never exported.
    if options.tracing == false then
      local otel_root = new_tracer("otel", v39).start_span("root")
      otel_root:set_attribute("kong.propagation_only", true)
      otel_root.should_sample = false
    end

    -- instrumentation.lua runloop_before_header_filter: the status on the root span.
    phase = "header_filter"
    local spans = ngx.ctx.KONG_SPANS
    if spans and spans[1] then
      spans[1]:set_attribute("http.status_code", 200)
    end

    -- What the filter wrote through its property ngx.<variable>.
    if written ~= nil then
      ngx.var[variable or "consul_enricher"] = written
    end

    -- kong/init.lua Kong.log: runloop.log.before (kong/runloop/handler.lua) calls
    -- instrumentation.lua runloop_log_before: balancer(ctx) makes the balancer span
    -- active and finishes it (the root is active again), then the active span, the root,
    -- is finished: there is no active span left for any plugin's log handler.
    phase = "log"
    if balancer.finish then
      kong.tracing.set_active_span(balancer)
      balancer:set_attribute("net.peer.port", 8080)
      balancer:finish()
    end
    local active = kong.tracing.active_span()
    if active and type(active.finish) == "function" then
      active:finish()
    end
    node.active_span_in_log = kong.tracing.active_span()

    for _, plugin in ipairs(log_order) do
      plugin:log(plugin == companion and conf or nil)
    end
    phase = "done"
    return node.exported
  end

  -- The access phase of one request that sends `headers` (an array of { name, value }),
  -- with the companion configured as `conf`: kong/init.lua, Kong.access, runs the plugins'
  -- access handlers (execute_collecting_plugins_iterator) and then attaches the filter
  -- chain (runloop.wasm_attach, kong/runloop/wasm.lua attach). Returns the headers the
  -- filter then reads, which are also what nginx's proxy module forwards: every entry left
  -- in headers_in (src/http/modules/ngx_http_proxy_module.c, ngx_http_proxy_create_request).
  function node.access(headers, conf)
    ngx.ctx = {}
    kong.ctx.shared = {}
    header_list, header_writes = {}, {}
    for i, h in ipairs(headers) do
      header_list[i] = { name = h[1], value = h[2] }
    end
    phase = "access"
    if companion.access then
      companion:access(conf)
    end
    phase = "done"
    local seen = {}
    for i, h in ipairs(header_list) do
      seen[i] = { h.name, h.value }
    end
    return seen
  end

  return node
end

-- The values of every header named `name` (any case) in `headers`, in order.
local function header_values(headers, name)
  local values = {}
  for _, h in ipairs(headers) do
    if h[1]:lower() == name then
      values[#values + 1] = h[2]
    end
  end
  return values
end

-- The exported span named `name`, its attributes as name -> OTLP AnyValue.
local function exported_span(exported, name)
  for _, span in ipairs(exported) do
    if span.name == name then
      local by_key = {}
      for _, entry in ipairs(span.attributes or {}) do
        by_key[entry.key] = entry.value
      end
      return by_key
    end
  end
  return nil
end

local function find_line(lines, text)
  for _, line in ipairs(lines) do
    if line:find(text, 1, true) then
      return line
    end
  end
  return nil
end

local function case(name, body)
  tests = tests + 1
  current_case = name
  ngx_errors = {}
  local ok, err = pcall(body)
  if not ok then
    fail(name, "raised an error: " .. tostring(err))
  end
end

-- What the filter writes (src/enrich.rs to_json_object): attribute name -> JSON string or
-- JSON integer; the tags as a JSON array of strings.
local FILTER_JSON = '{"service.peer.name":"echo","consul.lookup":"miss","consul.lookup.duration_ms":3,'
  .. '"ui.component":"checkout-form","consul.service.id":"echo-2","consul.node":"node-2",'
  .. '"consul.datacenter":"dc1","consul.service.meta.version":"2.0.0-rc.1",'
  .. '"consul.service.meta.region":"us-east-1","server.address":"10.77.0.22","server.port":8080,'
  .. '"network.peer.address":"10.77.0.22","network.peer.port":8080,'
  .. '"consul.service.tags":["http","blue"]}'

------------------------------------------------------------------------ the cases

case("the model: no active span is left in the log phase, the root is KONG_SPANS[1]", function()
  local node = kong_node()
  node.request(nil)
  expect_equal("kong.tracing.active_span() in the log phase", node.active_span_in_log, nil)
  expect_equal("kong.tracing.get_root_span() is KONG_SPANS[1]",
    kong.tracing.get_root_span() == ngx.ctx.KONG_SPANS[1], true)
end)

case("Kong 3.9: every attribute on the exported root span, with its OTLP type", function()
  local node = kong_node()
  local root = exported_span(node.request(FILTER_JSON), "kong")
  if not root then
    fail("root span exported", "no span named kong")
    return
  end
  local s = function(v) return { string_value = v } end
  local i = function(v) return { int_value = v } end
  expect_equal("service.peer.name", root["service.peer.name"], s("echo"))
  expect_equal("consul.lookup", root["consul.lookup"], s("miss"))
  expect_equal("ui.component", root["ui.component"], s("checkout-form"))
  expect_equal("consul.service.id", root["consul.service.id"], s("echo-2"))
  expect_equal("consul.node", root["consul.node"], s("node-2"))
  expect_equal("consul.datacenter", root["consul.datacenter"], s("dc1"))
  expect_equal("consul.service.meta.version", root["consul.service.meta.version"], s("2.0.0-rc.1"))
  expect_equal("consul.service.meta.region", root["consul.service.meta.region"], s("us-east-1"))
  expect_equal("server.address", root["server.address"], s("10.77.0.22"))
  expect_equal("network.peer.address", root["network.peer.address"], s("10.77.0.22"))
  expect_equal("server.port is an int", root["server.port"], i(8080))
  expect_equal("network.peer.port is an int", root["network.peer.port"], i(8080))
  expect_equal("consul.lookup.duration_ms is an int", root["consul.lookup.duration_ms"], i(3))
  expect_equal("consul.service.tags is a string array", root["consul.service.tags"],
    { array_value = { values = { s("http"), s("blue") } } })
  expect_equal("Kong's own http.status_code untouched", root["http.status_code"], i(200))
  expect_equal("Kong's own http.method untouched", root["http.method"], s("POST"))
  expect_equal("no ERR from span:set_attribute", #ngx_errors, 0)
end)

case("Kong 3.9: other numbers keep Kong's encoding", function()
  local node = kong_node()
  local exported = node.request('{"server.port":8080,"consul.lookup.duration_ms":3}')
  -- Kong's balancer span sets net.peer.port, a name the filter does not write: double.
  local balancer = exported_span(exported, "kong.balancer")
  expect_equal("net.peer.port on the balancer span", balancer and balancer["net.peer.port"],
    { double_value = 8080 })
  -- A later request where another plugin put a fraction under a name the filter writes
  -- as an integer: it stays a double rather than being cut.
  local encoded = node.otlp.transform_span({ name = "x", attributes = { ["server.port"] = 8080.5 } })
  expect_equal("a fraction under an integer name", encoded.attributes[1].value, { double_value = 8080.5 })
end)

case("Kong 3.8: the same span, tags joined, ports still ints", function()
  local node = kong_node({ version = "3.8" })
  local root = exported_span(node.request(FILTER_JSON), "kong")
  expect_equal("consul.service.tags", root and root["consul.service.tags"], { string_value = "http,blue" })
  expect_equal("server.port", root and root["server.port"], { int_value = 8080 })
  expect_equal("service.peer.name", root and root["service.peer.name"], { string_value = "echo" })
  expect_equal("no ERR from span:set_attribute", #ngx_errors, 0)
end)

case("an encoder of another shape: attributes still exported, numbers as doubles, said once", function()
  -- transform_span without a transform_attributes upvalue (for instance stripped bytecode).
  local opaque = {
    transform_span = function(span)
      local out = {}
      for k, v in pairs(span.attributes or {}) do
        out[#out + 1] = { key = k, value = type(v) == "number" and { double_value = v } or { string_value = tostring(v) } }
      end
      return { name = span.name, attributes = out }
    end,
  }
  local node = kong_node({ otlp = opaque })
  local root = exported_span(node.request('{"server.port":8080,"service.peer.name":"echo"}'), "kong")
  node.request('{"server.port":8080}')
  expect_equal("server.port", root and root["server.port"], { double_value = 8080 })
  expect_equal("service.peer.name", root and root["service.peer.name"], { string_value = "echo" })
  local notices = 0
  for _, line in ipairs(node.log_lines) do
    if line:find("^notice: integer attributes will be exported as doubles") then
      notices = notices + 1
    end
  end
  expect_equal("one notice", notices, 1)
end)

case("the encoder is wrapped once per worker", function()
  local function encoder_function(node)
    for i = 1, 16 do
      local name, value = debug.getupvalue(node.otlp.transform_span, i)
      if name == "transform_attributes" then
        return value
      end
    end
  end
  local node = kong_node()
  local first = encoder_function(node)
  node.companion:init_worker()
  node.request(FILTER_JSON)
  local second = encoder_function(node)
  expect_equal("same function after a second init_worker and a request", first == second, true)
end)

case("values the span cannot take are skipped and logged", function()
  local node = kong_node()
  local root = exported_span(node.request('{"ok":"yes","flag":true,"nested":{"a":"b"},'
    .. '"numbers":[1,2],"empty":[],"nothing":null}'), "kong")
  expect_equal("string", root and root["ok"], { string_value = "yes" })
  expect_equal("boolean", root and root["flag"], { bool_value = true })
  expect_equal("object skipped", root and root["nested"], nil)
  expect_equal("array of numbers skipped", root and root["numbers"], nil)
  expect_equal("empty array skipped", root and root["empty"], nil)
  expect_equal("null skipped", root and root["nothing"], nil)
  local skipped = 0
  for _, line in ipairs(node.log_lines) do
    if line:find("^debug: skipping attribute") then
      skipped = skipped + 1
    end
  end
  expect_equal("skips logged", skipped, 4)
end)

case("invalid JSON is logged at debug and changes nothing", function()
  local node = kong_node()
  local root = exported_span(node.request('{"service.peer.name": "echo"'), "kong")
  expect_equal("no attribute", root and root["service.peer.name"], nil)
  if not find_line(node.log_lines, "not valid JSON") then
    fail("debug line names the problem", show(node.log_lines))
  end
end)

case("a JSON array or scalar is not an attribute object", function()
  for _, raw in ipairs({ '["echo", "hit"]', '"echo"', "42" }) do
    local node = kong_node()
    node.request(raw)
    if not find_line(node.log_lines, "not a JSON object") then
      fail(raw, "no debug line: " .. show(node.log_lines))
    end
  end
end)

case("the variable the configuration names is the one read", function()
  local node = kong_node()
  local conf = { nginx_variable = "edge_attributes" }
  local root = exported_span(node.request(FILTER_JSON, conf, "edge_attributes"), "kong")
  expect_equal("read from $edge_attributes", root and root["service.peer.name"], { string_value = "echo" })
  local default = exported_span(node.request(FILTER_JSON, nil, "edge_attributes"), "kong")
  expect_equal("$consul_enricher undeclared: nothing", default and default["service.peer.name"], nil)
  expect_equal("no log", #node.log_lines, 0)
end)

case("nothing written by the filter: nothing to do, nothing logged", function()
  local node = kong_node()
  node.request(nil)
  expect_equal("no log", #node.log_lines, 0)
end)

case("tracing_instrumentations off: no span to put them on, logged, no error", function()
  local node = kong_node({ tracing = false })
  local exported = node.request(FILTER_JSON)
  expect_equal("nothing exported", #exported, 0)
  if not find_line(node.log_lines, "tracing_instrumentations off") then
    fail("debug line", show(node.log_lines))
  end
end)

case("runs before the opentelemetry plugin (priority 14) encodes the span", function()
  local node = kong_node()
  if not (node.companion.PRIORITY > 14) then
    fail("priority", "PRIORITY " .. tostring(node.companion.PRIORITY) .. " is not above 14")
  end
end)

-- A request as a client could send it: forged filter headers in several cases, other
-- headers, and two baggage lines with forged consul.* members.
local FORGED_REQUEST = {
  { "Host", "echo.example" },
  { "x-consul-service", "forged" },
  { "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
  { "X-Consul-Lookup", "hit" },
  { "baggage", "ui.component=checkout-form, consul.service=forged" },
  { "x-consul-meta-version", "9.9.9" },
  { "X-Consulting", "kept" },
  { "x-request-id", "r-1" },
  { "Baggage", "Consul.Service=x;p=1, ,tenant=t1;ttl=5 ,  consul.node = n" },
  { "X-CONSUL-LOOKUP", "hit" },
}

case("access: forged x-consul-* headers are removed, every copy, any case", function()
  local node = kong_node()
  local seen = node.access(FORGED_REQUEST, plugin_config())
  for _, name in ipairs({ "x-consul-service", "x-consul-lookup", "x-consul-meta-version" }) do
    expect_equal(name, header_values(seen, name), {})
  end
end)

case("access: other headers are kept, as they came and in order", function()
  local node = kong_node()
  local seen = node.access(FORGED_REQUEST, plugin_config())
  local others = {}
  for _, h in ipairs(seen) do
    if h[1]:lower() ~= "baggage" then
      others[#others + 1] = h
    end
  end
  expect_equal("the other headers", others, {
    { "Host", "echo.example" },
    { "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
    { "X-Consulting", "kept" },
    { "x-request-id", "r-1" },
  })
end)

case("access: two baggage lines become one list, in order, without consul.* members", function()
  local node = kong_node()
  local seen = node.access(FORGED_REQUEST, plugin_config())
  expect_equal("one baggage line", header_values(seen, "baggage"),
    { "ui.component=checkout-form,tenant=t1;ttl=5" })
end)

case("access: a forged header after lua_max_req_headers others is removed too", function()
  local node = kong_node()
  local request = {}
  for i = 1, LUA_MAX_REQ_HEADERS + 20 do
    request[i] = { "x-filler-" .. i, "f" }
  end
  request[#request + 1] = { "X-Consul-Service", "forged" }
  request[#request + 1] = { "baggage", "a=1" }
  request[#request + 1] = { "baggage", "consul.lookup=hit" }
  local seen = node.access(request, plugin_config())
  expect_equal("x-consul-service", header_values(seen, "x-consul-service"), {})
  expect_equal("baggage", header_values(seen, "baggage"), { "a=1" })
  expect_equal("the fillers and one baggage line kept", #seen, LUA_MAX_REQ_HEADERS + 21)
end)

case("access: one baggage line with nothing to remove is not rewritten", function()
  local node = kong_node()
  local seen = node.access({
    { "Host", "echo.example" },
    { "baggage", "ui.component=checkout-form , consulting=yes;p=consul.x" },
  }, plugin_config())
  expect_equal("baggage byte for byte", header_values(seen, "baggage"),
    { "ui.component=checkout-form , consulting=yes;p=consul.x" })
  expect_equal("no header written", header_writes, {})
end)

case("access: a baggage header with only consul.* members is removed", function()
  local node = kong_node()
  local seen = node.access({
    { "baggage", "CONSUL.lookup=hit" },
    { "baggage", "\tconsul.node=n1" },
  }, plugin_config())
  expect_equal("no baggage", header_values(seen, "baggage"), {})
end)

case("access: a request without baggage or forged headers is untouched", function()
  local node = kong_node()
  local request = {
    { "Host", "echo.example" },
    { "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
    { "X-Consul", "no dash: not under the prefix" },
  }
  local seen = node.access(request, plugin_config())
  expect_equal("the same headers", seen, request)
  expect_equal("no header written", header_writes, {})
end)

case("access: strip_incoming=false leaves everything", function()
  local node = kong_node()
  local seen = node.access(FORGED_REQUEST, plugin_config({ strip_incoming = false }))
  expect_equal("the same headers", seen, FORGED_REQUEST)
  expect_equal("no header written", header_writes, {})
end)

case("access: header_prefix names the filter's headers", function()
  local node = kong_node()
  local seen = node.access({
    { "X-Svc-Service", "forged" },
    { "x-consul-service", "not the filter's here" },
  }, plugin_config({ header_prefix = "x-svc-" }))
  expect_equal("only the x-svc-* header removed", seen,
    { { "x-consul-service", "not the filter's here" } })
end)

case("schema declares the plugin for HTTP with the access handler's config", function()
  package.loaded["kong.db.schema.typedefs"] = { protocols_http = { type = "set" } }
  package.loaded["consul-enricher-span.schema"] = nil
  local schema = require "consul-enricher-span.schema"
  expect_equal("name", schema.name, "consul-enricher-span")
  expect_equal("protocols", schema.fields[1].protocols.type, "set")
  expect_equal("config", schema.fields[2].config.type, "record")
  local defaults = plugin_config()
  expect_equal("default header_prefix", defaults.header_prefix, "x-consul-")
  expect_equal("default strip_incoming", defaults.strip_incoming, true)
  -- kong/db/schema/init.lua, the match validator: value:match(pattern).
  local pattern
  for _, field in ipairs(schema.fields[2].config.fields) do
    if field.header_prefix then
      pattern = field.header_prefix.match
    end
  end
  for _, good in ipairs({ "x-consul-", "x-svc-" }) do
    expect_equal("header_prefix " .. good, good:match(pattern) ~= nil, true)
  end
  for _, bad in ipairs({ "X-Consul-", "x consul", "" }) do
    expect_equal("header_prefix " .. show(bad), bad:match(pattern) ~= nil, false)
  end
end)

io.write(string.format("%d cases, %d failures\n", tests, failures))
os.exit(failures == 0 and 0 or 1)
