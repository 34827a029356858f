#!/usr/bin/env bash
# Runs tests/demo/check.py in a virtualenv under target/ with the pinned requirements, after
# making sure LuaJIT and lua-cjson (the companion plugin's test) and PCRE2 (Kong's regex
# engine, for the schema's patterns) are installed. All are installed only when missing: the
# virtualenv keeps the hash of the requirements it was built from and is brought up to date
# only when tests/demo/requirements.txt changes.
# Usage: tests/demo/check.sh [--skip-web]
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${DEMO_CHECK_VENV:-$root/target/demo-check-venv}"
requirements="$root/tests/demo/requirements.txt"

packages=()
if ! command -v luajit >/dev/null || ! luajit -e 'require "cjson.safe"' 2>/dev/null; then
  packages+=(luajit lua-cjson)
fi
# The library check.py loads, found the way it finds it.
if ! python3 -c 'import ctypes; ctypes.CDLL("libpcre2-8.so.0")' 2>/dev/null; then
  packages+=(libpcre2-8-0)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "installing ${packages[*]} (Debian packages)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "installing tests/demo/requirements.txt into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$wanted" > "$stamp"
fi
exec "$venv/bin/python" "$root/tests/demo/check.py" "$@"
