-- Unit test of kong/plugins/consul-enricher-span against a model of Kong's tracing as Kong
-- 3.9.3 implements it (github.com/Kong/kong, tag 3.9.3), run with real lua-cjson under
-- LuaJIT, the interpreter Kong runs. Every modelled behaviour below names the Kong source
-- file it is taken from; where Kong 3.8 differs (the encoder, arrays), the 3.8.1 file is
-- named too. The model is small on purpose: only what decides where the plugin's values
-- end up in the exported OTLP span.
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

-- OpenResty's ngx: a per-request ngx.ctx, the phase, the error log.
_G.ngx = {
  ctx = {},
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

  -- One proxied request; `shared` is what the filter left in kong.ctx.shared.consul_enricher.
  function node.request(shared)
    ngx.ctx = {}
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

    -- What the filter wrote through the property kong.ctx.shared.consul_enricher.
    kong.ctx.shared.consul_enricher = shared

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
      plugin:log()
    end
    phase = "done"
    return node.exported
  end

  return node
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

case("a non-string value in kong.ctx.shared is logged, not decoded", function()
  local node = kong_node()
  local root = exported_span(node.request({ ["service.peer.name"] = "echo" }), "kong")
  expect_equal("no attribute", root and root["service.peer.name"], nil)
  if not find_line(node.log_lines, "not a JSON string") then
    fail("debug line", show(node.log_lines))
  end
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

case("schema declares the plugin for HTTP with an empty config", function()
  package.loaded["kong.db.schema.typedefs"] = { protocols_http = { type = "set" } }
  local schema = require "consul-enricher-span.schema"
  expect_equal("name", schema.name, "consul-enricher-span")
  expect_equal("protocols", schema.fields[1].protocols.type, "set")
  expect_equal("config", schema.fields[2].config.type, "record")
end)

io.write(string.format("%d cases, %d failures\n", tests, failures))
os.exit(failures == 0 and 0 or 1)
