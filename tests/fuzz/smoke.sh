#!/usr/bin/env bash
# CI's short fuzzing pass: every target for about 30 seconds.
exec "$(dirname "$0")/run.sh" -max_total_time="${FUZZ_SECONDS:-30}" "$@"
