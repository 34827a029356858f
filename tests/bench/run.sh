#!/usr/bin/env bash
# `make bench`: builds the filters, runs the criterion micro-benchmarks of the parsers and
# the enrichment step, then the host-level figures (bench-host): per-request cost, wrk
# throughput through the gateway, Consul load, memory and size, each beside the baseline
# filter measured in the same run; then the fleet figures (bench-fleet): gateway processes
# against one Consul with 1,000 services, poll mode against watch mode; then the same
# comparison on the official Envoy (bench-envoy, tests/envoy): no filter, the baseline filter
# and the enricher on cache hits, serving stale and with Consul down, in interleaved rounds
# through one Envoy; last the soak (bench-soak): a steady load through the official Envoy
# and the Kong flavour while Consul fails in every way it can (docs/soak.md). Each part ends
# with its machine-readable `key value` lines.
#
# `tests/bench/run.sh --quick` does all of it briefly (tests/bench/smoke.sh uses it), on the
# dev profile the other tests already built: its figures only show that everything runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=0
case "${1:-}" in
  "") ;;
  --quick) quick=1 ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

make build
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target_dir/bench"

# The baseline goes through the same Binaryen step as the shipped filter, so both are
# measured as they would be deployed.
npx --yes -p binaryen@132.0.0 wasm-opt -Oz \
  --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int \
  --strip-debug --strip-producers \
  "$target_dir/wasm32-wasip1/release/baseline_filter.wasm" -o "$target_dir/bench/baseline_filter.wasm"
export CONSUL_ENRICHER_WASM="$PWD/dist/consul_enricher.wasm"
export BASELINE_FILTER_WASM="$target_dir/bench/baseline_filter.wasm"

if [ "$quick" = 1 ]; then profile=dev; else profile=host; fi
# bench-host, bench-fleet and bench-soak run the gateway binary from their own directory;
# bench-soak runs echo-service from the dev profile's, as the Envoy tests do.
cargo build --profile "$profile" -p consul-enricher-gateway --bin gateway
cargo build -p echo-service

if [ "$quick" = 1 ]; then
  # Each micro-benchmark runs once, as a test.
  cargo test --profile "$profile" -p consul-enricher-bench --benches
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-host -- --quick
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-fleet -- --quick
  cargo run --profile "$profile" -p consul-enricher-envoy --bin bench-envoy -- --quick
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-soak -- --quick
else
  cargo bench --profile "$profile" -p consul-enricher-bench --bench filter_logic
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-host
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-fleet
  cargo run --profile "$profile" -p consul-enricher-envoy --bin bench-envoy
  cargo run --profile "$profile" -p consul-enricher-bench --bin bench-soak
fi
