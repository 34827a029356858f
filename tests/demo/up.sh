#!/usr/bin/env bash
# `make demo`: builds dist/consul_enricher.wasm (+ its Kong schema), then brings the whole
# stack of docker-compose.yml up; the page and echo-service images are built by Compose.
# Extra arguments go to `docker compose up` (e.g. -d).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

if ! docker compose version >/dev/null 2>&1; then
  echo "make demo needs Docker with the Compose plugin (docker compose)" >&2
  exit 1
fi

make build
test -s dist/consul_enricher.wasm
test -s dist/consul_enricher.meta.json

cat <<'TEXT'
Starting the demo. When it is up:
  page     http://localhost:8080            (Kong; ?gateway=envoy for Envoy)
  Jaeger   http://localhost:16686
  Consul   http://localhost:8500
  Kong     http://localhost:8000/echo       Envoy   http://localhost:10000/echo
TEXT
exec docker compose up --build "$@"
