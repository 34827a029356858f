-- consul-enricher-span: copies the attributes the consul_enricher filter left in the
-- nginx variable $consul_enricher (a JSON object of attribute name -> value) onto Kong's
-- request span, the root span, so the opentelemetry plugin exports them with that span.
-- In the access phase it also removes what a client forged under the filter's names (see
-- "Incoming headers" below).
--
-- Proxy-Wasm ABI 0.2.1 has no span API. The filter sets the variable on response headers
-- through its property ngx.consul_enricher, which ngx_wasm_module writes in C
-- (src/common/proxy_wasm/ngx_proxy_wasm_properties.c, ngx_proxy_wasm_properties_set_ngx),
-- so the variable must be declared: `nginx_proxy_set = $consul_enricher ''` in kong.conf
-- (KONG_NGINX_PROXY_SET), which Kong's template puts in the proxy server block
-- (kong/templates/nginx_kong.lua, nginx_proxy_directives). Not kong.ctx.shared: Kong
-- answers kong.* properties in Lua, through a LuaJIT FFI callback that ngx_wasm_module
-- calls from C (lib/resty/wasmx/proxy_wasm.lua, set_host_properties_handlers); LuaJIT runs
-- it on the coroutine that last used the FFI (src/lj_ccallback.c, lj_ccallback_enter),
-- which on response headers is another request's, and Kong 3.9.1's workers crash under
-- concurrent load.
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
--
-- Incoming headers. On Kong a Wasm filter cannot remove a request header: ngx_wasm_module
-- only zeroes its hash (src/http/ngx_http_wasm_headers.c, ngx_http_wasm_set_header_helper),
-- and so do its replacements for the second and later copies of a header, while nginx's
-- proxy module forwards every headers_in entry whatever its hash
-- (src/http/modules/ngx_http_proxy_module.c, ngx_http_proxy_create_request). So the
-- access handler removes, before the filter runs, every request header under
-- header_prefix and every baggage list-member whose key starts with "consul." (any case),
-- and leaves one baggage header, the lines joined by ",". As Kong 3.9 (OpenResty 1.25.3.2)
-- implements it:
--
-- * Order. kong/init.lua, Kong.access, runs every plugin's access handler and only then
--   attaches the filter chain (runloop.wasm_attach, kong/runloop/wasm.lua attach), so the
--   filter sees the request as this handler left it, whatever this plugin's priority.
--
-- * Removal. kong.service.request.clear_header and set_header (kong/pdk/service/request.lua)
--   are ngx.req.clear_header and ngx.req.set_header, which match names case-insensitively
--   and take the entries out of headers_in (lua-nginx-module
--   src/ngx_http_lua_headers_in.c, ngx_http_set_header_helper and
--   ngx_http_lua_rm_header_helper): clear_header removes every copy, set_header replaces the
--   first and removes the others.
--
-- * Reading. kong.request.get_headers() and ngx.req.get_headers() without an argument
--   return only the first lua_max_req_headers (100 by default) headers (kong/globalpatches.lua,
--   kong/templates/kong_defaults.lua), and kong.request.get_headers refuses more than 1000
--   (kong/pdk/request.lua), so a forged header placed after 100 others would be missed.
--   ngx.req.get_headers(0) returns them all (lua-nginx-module src/ngx_http_lua_headers.c,
--   ngx_http_lua_ffi_req_get_headers_count: 0 is no limit): names lowercased, a repeated
--   header as an array of its values in request order (lua-resty-core
--   lib/resty/core/request.lua).

local cjson = require "cjson.safe"

-- The schema's default nginx_variable (schema.lua), the filter's default too.
local DEFAULT_VARIABLE = "consul_enricher"

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

-- The schema's defaults (schema.lua), for a configuration without them.
local DEFAULT_HEADER_PREFIX = "x-consul-"
-- Baggage list-members under this key prefix (compared lowercased) belong to the filter.
local BAGGAGE_KEY_PREFIX = "consul."

local ConsulEnricherSpan = {
  VERSION = "0.3.0",
  -- Log handlers run in descending priority and the opentelemetry plugin (14) encodes the
  -- root span in its own log handler, so this one must run just before it. The access
  -- handler runs before the filter whatever the priority (see "Incoming headers").
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

-- Decodes the filter's JSON read from $`name`; returns the attribute table, or nil and
-- why not.
local function decode_attributes(name, raw)
  local attributes, err = cjson.decode(raw)
  if err then
    return nil, "$" .. name .. " is not valid JSON: " .. err
  end
  if type(attributes) ~= "table" or (next(attributes) ~= nil and attributes[1] ~= nil) then
    return nil, "$" .. name .. " is not a JSON object"
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

local function is_blank(b)
  return b == 32 or b == 9 -- space, tab
end

-- `text` without leading and trailing spaces and tabs (linear, whatever the input).
local function trim(text)
  local first, last = 1, #text
  while first <= last and is_blank(text:byte(first)) do
    first = first + 1
  end
  while last >= first and is_blank(text:byte(last)) do
    last = last - 1
  end
  return text:sub(first, last)
end

-- Whether a baggage list-member belongs to the filter: its key (the text before "=" or
-- ";", trimmed) starts with "consul.", in any case.
local function is_consul_member(member)
  local key_end = member:find("[=;]")
  local key = trim(key_end and member:sub(1, key_end - 1) or member)
  return key:sub(1, #BAGGAGE_KEY_PREFIX):lower() == BAGGAGE_KEY_PREFIX
end

-- The baggage header to send for the incoming value `lines` (a string, or an array of the
-- header's lines): nil to leave the request as it is (one line, nothing removed), false to
-- remove the header (nothing left), or the remaining list-members joined by ",".
local function stripped_baggage(lines)
  local several = type(lines) == "table"
  local joined = several and table.concat(lines, ",") or lines
  local changed = several
  local kept = {}
  for member in (joined .. ","):gmatch("([^,]*),") do
    member = trim(member)
    if member == "" or is_consul_member(member) then
      changed = true
    else
      kept[#kept + 1] = member
    end
  end
  if not changed then
    return nil
  end
  return #kept > 0 and table.concat(kept, ",") or false
end

-- Removes the request headers under `prefix` and the filter's baggage members.
local function strip_incoming(prefix)
  prefix = prefix:lower()
  local headers = ngx.req.get_headers(0)
  local removed = 0
  for name in pairs(headers) do
    if type(name) == "string" and name:sub(1, #prefix):lower() == prefix then
      kong.service.request.clear_header(name)
      removed = removed + 1
    end
  end

  local baggage = headers["baggage"]
  if baggage ~= nil then
    local value = stripped_baggage(baggage)
    if value == false then
      kong.service.request.clear_header("baggage")
    elseif value ~= nil then
      kong.service.request.set_header("baggage", value)
    end
  end

  if removed > 0 then
    kong.log.debug("removed ", removed, " incoming header name(s) under ", prefix)
  end
end

-- On every request, before the filter is attached: the trust boundary the filter cannot
-- hold on Kong (see "Incoming headers").
function ConsulEnricherSpan:access(conf)
  conf = conf or {}
  if conf.strip_incoming == false then
    return
  end
  strip_incoming(conf.header_prefix or DEFAULT_HEADER_PREFIX)
end

function ConsulEnricherSpan:init_worker()
  if not install_int_encoding() then
    kong.log.notice("integer attributes will be exported as doubles: ", int_encoding.failed)
  end
end

function ConsulEnricherSpan:log(conf)
  local name = conf and conf.nginx_variable or DEFAULT_VARIABLE
  -- nil when undeclared, "" when declared and not written (the filter did not run).
  local raw = ngx.var[name]
  if raw == nil or raw == "" then
    return
  end

  local attributes, err = decode_attributes(name, raw)
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
