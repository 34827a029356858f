#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) one after the other, one process each, with
# the libFuzzer options given, and prints executions, duration and findings per target.
#
#   tests/fuzz/run.sh -max_total_time=30            # each target for 30 seconds
#   tests/fuzz/run.sh -runs=10000000 json config    # 10 million executions of two targets
#
# Installs the nightly toolchain and cargo-fuzz when missing (tests/tools/ensure.sh). New
# corpus entries go to tests/fuzz/corpus/<target> (not committed), crashes to
# tests/fuzz/artifacts/<target>.
set -uo pipefail
FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
cd "$FUZZ_DIR/../.."

OPTIONS=()
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    -*) OPTIONS+=("$arg") ;;
    *) TARGETS+=("$arg") ;;
  esac
done

tests/tools/ensure.sh nightly cargo-fuzz || exit 1
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cargo +nightly fuzz list --fuzz-dir "$FUZZ_DIR")
fi

# The parsers are safe Rust: AddressSanitizer would find nothing and halve the speed.
# Debug assertions and overflow checks stay on.
BUILD_OPTIONS=(--fuzz-dir "$FUZZ_DIR" --sanitizer none)
cargo +nightly fuzz build "${BUILD_OPTIONS[@]}" || exit 1

LOGS="$FUZZ_DIR/target/logs"
mkdir -p "$LOGS"
failed=()
summary=()
for target in "${TARGETS[@]}"; do
  corpus="$FUZZ_DIR/corpus/$target"
  mkdir -p "$corpus"
  echo "== $target ${OPTIONS[*]}"
  # A slow input (10 s for one execution) is a finding too: the filter runs per request.
  cargo +nightly fuzz run "${BUILD_OPTIONS[@]}" "$target" "$corpus" "$FUZZ_DIR/seeds/$target" -- \
    -timeout=10 -print_final_stats=1 "${OPTIONS[@]}" \
    >"$LOGS/$target.log" 2>&1
  status=$?
  done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$LOGS/$target.log" | tail -1)"
  runs="$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/' <<<"$done_line")"
  seconds="$(sed -E 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/' <<<"$done_line")"
  if [ $status -eq 0 ] && [ -n "$done_line" ]; then
    findings="none"
  else
    findings="FAILED (exit $status), see $LOGS/$target.log and $FUZZ_DIR/artifacts/$target"
    failed+=("$target")
    tail -30 "$LOGS/$target.log"
  fi
  summary+=("$(printf '%-16s %12s runs %6s s  corpus %5s  findings: %s' \
    "$target" "${runs:--}" "${seconds:--}" "$(ls "$corpus" | wc -l)" "$findings")")
  echo "${summary[-1]}"
done

echo "== summary"
printf '%s\n' "${summary[@]}"
[ ${#failed[@]} -eq 0 ]
