-- consul-enricher-span has nothing to configure: it reads the one key the
-- consul_enricher filter writes. The schema only limits it to HTTP(S) traffic.
local typedefs = require "kong.db.schema.typedefs"

return {
  name = "consul-enricher-span",
  fields = {
    { protocols = typedefs.protocols_http },
    { config = {
        type = "record",
        fields = {},
      },
    },
  },
}
