-- consul-enricher-span: copies the attributes the consul_enricher filter left in
-- kong.ctx.shared.consul_enricher (a JSON object of attribute name -> value) onto
-- Kong's request span, so the opentelemetry plugin exports them with that span.
--
-- Proxy-Wasm ABI 0.2.1 has no span API; Kong maps the filter's property
-- "kong.ctx.shared.<key>" onto kong.ctx.shared, which is how the values get here.
-- PDK used: kong.ctx.shared, kong.tracing.active_span() (the request's root span
-- unless a plugin changed it), span:set_attribute(), kong.log.debug() (Kong 3.9 PDK
-- reference, "kong.tracing" and "kong.ctx").

local cjson = require "cjson.safe"

local CTX_KEY = "consul_enricher"

local ConsulEnricherSpan = {
  VERSION = "0.1.0",
  -- Log handlers run in descending priority and the opentelemetry plugin (14) exports
  -- the request span from its own log handler, so this one must run just before it.
  PRIORITY = 15,
}

local ATTRIBUTE_TYPES = { string = true, number = true, boolean = true }

-- Decodes the filter's JSON; returns the attribute table, or nil and why not.
local function decode_attributes(raw)
  if type(raw) ~= "string" then
    return nil, "kong.ctx.shared." .. CTX_KEY .. " is a " .. type(raw) .. ", not a JSON string"
  end
  local attributes, err = cjson.decode(raw)
  if err then
    return nil, "kong.ctx.shared." .. CTX_KEY .. " is not valid JSON: " .. err
  end
  if type(attributes) ~= "table" then
    return nil, "kong.ctx.shared." .. CTX_KEY .. " is not a JSON object"
  end
  return attributes
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

  local span = kong.tracing.active_span()
  if not span then
    kong.log.debug("no active span (tracing_instrumentations off?): attributes not recorded")
    return
  end

  for name, value in pairs(attributes) do
    if type(name) == "string" and ATTRIBUTE_TYPES[type(value)] then
      span:set_attribute(name, value)
    else
      kong.log.debug("skipping attribute ", tostring(name), ": unsupported value type ", type(value))
    end
  end
end

return ConsulEnricherSpan
