#!/usr/bin/env bash
# Runs Makefile targets one after the other as phases, each on its own (IN_PHASES=1: a
# target does not first make its prerequisites, the order here does):
#
#   tests/tools/phases.sh [--live] PHASE... [--live] PHASE...
#
# A phase's output goes to target/logs/<phase>.log; the terminal gets a line when it starts,
# its last output line every 30 s while it runs, and a line with its duration when it ends.
# A phase after --live also shows its output as it comes. The first failure stops the run
# with the end of that phase's log. The last lines sum up every phase's duration.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
logs="target/logs"
mkdir -p "$logs"

duration() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }

# The counts of cargo's "test result:" lines, for the phase's end line.
test_counts() {
  awk '/^test result: /{ for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
       END { if (p + f > 0) printf "  (%d tests passed, %d failed)", p, f }' "$1"
}

run_phase() {
  local phase="$1" live="$2" log="$logs/$1.log" start=$SECONDS pid status last=""
  echo "[$phase] started, log: $log"
  if [ "$live" = 1 ]; then
    make --no-print-directory "$phase" IN_PHASES=1 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
  else
    make --no-print-directory "$phase" IN_PHASES=1 >"$log" 2>&1 </dev/null &
    pid=$!
    while ! wait_for "$pid" 30; do
      echo "[$phase] $(duration $((SECONDS - start))) $(progress "$log")"
    done
    wait "$pid"
    status=$?
  fi
  local took=$((SECONDS - start))
  if [ "$status" != 0 ]; then
    [ "$live" = 1 ] || { echo "---- last 40 lines of $log"; tail -n 40 "$log"; echo "----"; }
    echo "[$phase] FAILED after $(duration $took) (exit $status); the whole output is in $log"
    return 1
  fi
  echo "[$phase] ok in $(duration $took)$(test_counts "$log")"
  summary+=("$(printf '%-12s %6s' "$phase" "$(duration $took)")")
}

# progress LOG: how many crates cargo compiled or checked so far, and the log's last line.
progress() {
  local compiled last
  compiled="$(grep -cE '^ *(Compiling|Checking) ' "$1")"
  last="$(tail -n 1 "$1" | tr -d '\r' | sed 's/^ *//' | cut -c 1-90)"
  [ "$compiled" = 0 ] || printf '%s crates compiled; ' "$compiled"
  echo "${last:-(no output yet)}"
}

# wait_for PID SECONDS: true once the process has ended, false if it still runs after SECONDS.
wait_for() {
  local i
  for ((i = 0; i < $2; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 1
  done
  ! kill -0 "$1" 2>/dev/null
}

summary=()
passed=0
total_start=$SECONDS
live=0
for arg in "$@"; do
  if [ "$arg" = --live ]; then live=1; continue; fi
  if ! run_phase "$arg" "$live"; then
    echo "phases: $passed passed, 1 failed"
    exit 1
  fi
  passed=$((passed + 1))
  live=0
done
echo "---- phases (m:ss)"
printf '%s\n' "${summary[@]}"
printf '%-12s %6s\n' total "$(duration $((SECONDS - total_start)))"
echo "phases: $passed passed, 0 failed"
