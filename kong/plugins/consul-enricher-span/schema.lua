-- consul-enricher-span: the filter's names that the access handler removes from incoming
-- requests (handler.lua, "Incoming headers"), and the nginx variable the log handler reads.
-- HTTP(S) traffic only.
local typedefs = require "kong.db.schema.typedefs"

return {
  name = "consul-enricher-span",
  fields = {
    { protocols = typedefs.protocols_http },
    { config = {
        type = "record",
        fields = {
          -- The filter's headers.prefix: every incoming request header whose name starts
          -- with it is removed. A lowercase header-name token, as the filter requires.
          { header_prefix = {
              type = "string",
              required = true,
              default = "x-consul-",
              match = "^[a-z0-9!#$%%&'*+.^_`|~-]+$",
              description = "Prefix of the filter's request headers (its headers.prefix); "
                .. "incoming request headers under it are removed. Lowercase.",
            },
          },
          -- The filter's strip_incoming: false only behind a trusted gateway that wrote
          -- these headers and baggage members itself.
          { strip_incoming = {
              type = "boolean",
              required = true,
              default = true,
              description = "Remove incoming headers under header_prefix and consul.* "
                .. "baggage members before the filter runs.",
            },
          },
          -- The filter's nginx_variable: the variable, declared in kong.conf with
          -- nginx_proxy_set, that holds the attributes by the log phase.
          { nginx_variable = {
              type = "string",
              required = true,
              default = "consul_enricher",
              match = "^[%w_]+$",
              description = "The nginx variable the consul_enricher filter writes (its "
                .. "nginx_variable), without the $.",
            },
          },
        },
      },
    },
  },
}
