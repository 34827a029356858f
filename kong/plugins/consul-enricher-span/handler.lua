-- consul-enricher-span: copies the attributes the consul_enricher filter left in
-- kong.ctx.shared.consul_enricher (a JSON object of attribute name -> value) onto Kong's
-- request span, the root span, so the opentelemetry plugin exports them with that span.
--
-- Proxy-Wasm ABI 0.2.1 has no span API; from Kong 3.6 the filter's property
-- "kong.ctx.shared.<key>" is Kong's kong.ctx.shared (kong/runloop/wasm.lua), which is how
-- the values get here.
--
-- What this relies on, as Kong 3.4-3.9 implement it:
--
-- * The root span. kong/observability/tracing/instrumentation.lua (runloop_log_before),
--   run by the log phase's runloop before any plugin's log handler (kong/init.lua,
--   Kong.log), finishes the active span, which by then is the root span; finishing the
--   active span makes its parent active (kong/pdk/tracing.lua, span_mt:finish) and the root
--   has none. So kong.tracing.active_span() is nil in every log handler. The root span
--   stays ngx.ctx.KONG_SPANS[1] (kong/pdk/tracing.lua, link_span), which is where the
--   opentelemetry plugin reads it (kong/plugins/opentelemetry/traces.lua), and Kong 3.9
--   also answers it through kong.tracing.get_root_span().
--
-- * The OTLP encoding (Kong 3.9: kong/observability/otlp/init.lua; 3.4-3.8:
--   kong/plugins/opentelemetry/otlp.lua): a Lua string becomes string_value, a boolean
--   bool_value, and every Lua number double_value: the only int_value path is a fixed
--   table keyed by attribute name that lists "http.status_code" alone. A cdata int64
--   gets no value at all, and span:set_attribute logs it as an invalid type. So the
--   filter's integers (ports, the lookup duration) would arrive as 8080.0. This plugin
--   therefore wraps the encoder's attribute function, in each worker, so that the
--   attributes the filter wrote as JSON integers, and only while their value is still a
--   whole number, are encoded as int_value; see install_int_encoding.
--
-- * Arrays. Kong 3.9 encodes a Lua array as array_value (kong/observability/otlp/init.lua,
--   transform_value) and span:set_attribute accepts tables; Kong 3.4-3.8 encode a table
--   as an attribute without a value and log it as an invalid type. A JSON array of
--   strings (consul.service.tags) is therefore a string array on 3.9 and the strings
--   joined by "," before.

local cjson = require "cjson.safe"

local CTX_KEY = "consul_enricher"
local SOURCE = "kong.ctx.shared." .. CTX_KEY

-- Bounds on what one request can make this plugin do: the filter writes a few dozen
-- attributes at most.
local MAX_ATTRIBUTES = 128
local MAX_INT_KEYS = 64
-- Integers beyond 2^53 do not survive a Lua number (a double) exactly.
local MAX_EXACT_INTEGER = 2 ^ 53

-- Kong 3.9.0 is the first release whose tracing PDK and OTLP encoder take arrays
-- (changelog/3.9.0/kong/feat-tracing-pdk-attributes.yml).
local ARRAYS_SINCE = 3009000

-- The OTLP encoder module of each release line, newest first.
local OTLP_MODULES = { "kong.observability.otlp", "kong.plugins.opentelemetry.otlp" }

local ConsulEnricherSpan = {
  VERSION = "0.2.0",
  -- Log handlers run in descending priority and the opentelemetry plugin (14) encodes the
  -- root span in its own log handler, so this one must run just before it.
  PRIORITY = 15,
}

-- Attribute names the filter has written as integers in this worker: the encoder wrapper
-- turns their whole-number values into int_value.
local int_keys = {}
local int_key_count = 0

local function is_whole(value)
  return type(value) == "number" and value == value and value % 1 == 0
    and value > -MAX_EXACT_INTEGER and value < MAX_EXACT_INTEGER
end

local function remember_int_key(name)
  if int_keys[name] or int_key_count >= MAX_INT_KEYS then
    return
  end
  int_keys[name] = true
  int_key_count = int_key_count + 1
end

-- The index and value of the upvalue `name` of function `fn`, or nil.
local function find_upvalue(fn, name)
  local i = 1
  while true do
    local upvalue_name, value = debug.getupvalue(fn, i)
    if upvalue_name == nil then
      return nil
    end
    if upvalue_name == name then
      return i, value
    end
    i = i + 1
  end
end

-- Whether the encoder is wrapped in this worker; if it cannot be, why not (tried once).
local int_encoding = { done = false, failed = nil }

-- Wraps the encoder's transform_attributes (an upvalue of its transform_span, in every
-- release 3.4-3.9) so that each entry {key = k, value = {double_value = n}} whose key the
-- filter wrote as an integer and whose n is whole becomes {key = k, value = {int_value =
-- n}}. Everything else passes through untouched; the wrapped function is shared by
-- transform_span, transform_events and the resource attributes, as the upvalue is.
local function install_int_encoding()
  if int_encoding.done or int_encoding.failed then
    return int_encoding.done
  end

  local otlp
  for _, name in ipairs(OTLP_MODULES) do
    local ok, module = pcall(require, name)
    if ok and type(module) == "table" then
      otlp = module
      break
    end
  end
  if not otlp or type(otlp.transform_span) ~= "function" then
    int_encoding.failed = "no OTLP encoder module with transform_span"
    return false
  end

  local index, transform_attributes = find_upvalue(otlp.transform_span, "transform_attributes")
  if not index or type(transform_attributes) ~= "function" then
    int_encoding.failed = "the OTLP encoder's transform_span has no transform_attributes"
    return false
  end

  local function transform_attributes_with_ints(attributes)
    local encoded = transform_attributes(attributes)
    if type(encoded) == "table" then
      for _, entry in ipairs(encoded) do
        local value = type(entry) == "table" and entry.value
        if type(value) == "table" and int_keys[entry.key] and is_whole(value.double_value) then
          -- A new table: the encoder may share one empty value table between entries.
          entry.value = { int_value = value.double_value }
        end
      end
    end
    return encoded
  end

  debug.setupvalue(otlp.transform_span, index, transform_attributes_with_ints)
  -- LuaJIT may have compiled the old function into a trace as a constant (upvalues that
  -- are never assigned are specialised): drop the traces so the wrapper is what runs.
  if jit and jit.flush then
    jit.flush()
  end
  int_encoding.done = true
  return true
end

-- The request's root span, or nil.
local function root_span()
  local tracing = kong.tracing
  if tracing and tracing.get_root_span then -- Kong 3.9
    local span = tracing.get_root_span()
    if span then
      return span
    end
  end
  local spans = ngx.ctx.KONG_SPANS
  return type(spans) == "table" and spans[1] or nil
end

-- Decodes the filter's JSON; returns the attribute table, or nil and why not.
local function decode_attributes(raw)
  if type(raw) ~= "string" then
    return nil, SOURCE .. " is a " .. type(raw) .. ", not a JSON string"
  end
  local attributes, err = cjson.decode(raw)
  if err then
    return nil, SOURCE .. " is not valid JSON: " .. err
  end
  if type(attributes) ~= "table" or (next(attributes) ~= nil and attributes[1] ~= nil) then
    return nil, SOURCE .. " is not a JSON object"
  end
  return attributes
end

-- A non-empty JSON array of strings as a fresh Lua array, or nil.
local function string_array(value)
  local count = #value
  if count == 0 then
    return nil
  end
  local n = 0
  for _ in pairs(value) do
    n = n + 1
  end
  if n ~= count then
    return nil
  end
  local out = {}
  for i = 1, count do
    if type(value[i]) ~= "string" then
      return nil
    end
    out[i] = value[i]
  end
  return out
end

-- The value to give span:set_attribute for one filter attribute, or nil and why not.
local function span_value(name, value, arrays)
  local kind = type(value)
  if kind == "string" or kind == "boolean" then
    return value
  end
  if kind == "number" then
    if is_whole(value) then
      remember_int_key(name)
    end
    return value
  end
  if kind == "table" then
    local strings = string_array(value)
    if not strings then
      return nil, "not an array of strings"
    end
    return arrays and strings or table.concat(strings, ",")
  end
  return nil, "unsupported value type " .. kind
end

function ConsulEnricherSpan:init_worker()
  if not install_int_encoding() then
    kong.log.notice("integer attributes will be exported as doubles: ", int_encoding.failed)
  end
end

function ConsulEnricherSpan:log()
  local raw = kong.ctx.shared[CTX_KEY]
  if raw == nil then
    return
  end

  local attributes, err = decode_attributes(raw)
  if not attributes then
    kong.log.debug(err)
    return
  end

  local span = root_span()
  if not span then
    kong.log.debug("no root span (tracing_instrumentations off?): attributes not recorded")
    return
  end
  if span.attributes and span.attributes["kong.propagation_only"] then
    kong.log.debug("the root span only propagates (tracing_instrumentations off): attributes not recorded")
    return
  end

  if not int_encoding.done and not int_encoding.failed and not install_int_encoding() then
    kong.log.notice("integer attributes will be exported as doubles: ", int_encoding.failed)
  end

  local arrays = (tonumber(kong.version_num) or 0) >= ARRAYS_SINCE
  local count = 0
  for name, value in pairs(attributes) do
    if type(name) ~= "string" then
      kong.log.debug("skipping an attribute without a name")
    elseif count >= MAX_ATTRIBUTES then
      kong.log.debug("skipping ", name, ": more than ", MAX_ATTRIBUTES, " attributes")
    else
      local v, why = span_value(name, value, arrays)
      if v == nil then
        kong.log.debug("skipping attribute ", name, ": ", why)
      else
        span:set_attribute(name, v)
        count = count + 1
      end
    end
  end
end

return ConsulEnricherSpan
