#!/usr/bin/env bash
# CI's benchmark smoke: every benchmark runs briefly and must finish without error. It
# checks that the benchmarks still run and that the final figure lines are all printed,
# never that anything is fast.
set -euo pipefail
cd "$(dirname "$0")/../.."

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
tests/bench/run.sh --quick | tee "$out"
for key in ratio.hot_path_vs_baseline ratio.hit_host_calls_vs_baseline ratio.rps_vs_baseline consul.calls_per_cold_burst \
  consul.calls_per_100k wasm.size_bytes consul.requests_per_service_minute.poll \
  ratio.envoy_hit_rps_vs_baseline; do
  if ! grep -Eq "^$key [0-9]+(\.[0-9]+)?$" "$out"; then
    echo "bench smoke: the line \`$key <number>\` is missing" >&2
    exit 1
  fi
done
# Watch mode's figures are `n/a` while the filter refuses its configuration keys.
for key in consul.requests_per_service_minute.watch consul.change_visible_p50_ms \
  consul.change_visible_p99_ms; do
  if ! grep -Eq "^$key ([0-9]+(\.[0-9]+)?|n/a)$" "$out"; then
    echo "bench smoke: the line \`$key <number or n/a>\` is missing" >&2
    exit 1
  fi
done
for gateway in envoy kong_flavour; do
  for figure in failed_requests p99_ms_during_faults calls_per_service_per_backoff rss_growth_pct \
    recovered_within_ttl; do
    key="soak.$gateway.$figure"
    if ! grep -Eq "^$key -?[0-9]+(\.[0-9]+)?$" "$out"; then
      echo "bench smoke: the line \`$key <number>\` is missing" >&2
      exit 1
    fi
  done
done
echo "bench smoke: all benchmarks ran"
