# consul-enricher: `make demo` runs the demo, `make test` runs everything CI runs.
# Both first install what they need and do not find (tests/tools/ensure.sh), then run in
# phases (tests/tools/phases.sh): a line per phase with its duration, its output in
# target/logs/<phase>.log.

WASM_TARGET := wasm32-wasip1
CARGO_WASM := target/$(WASM_TARGET)/release/consul_enricher.wasm
# Binaryen's optimiser (from npm) takes about a fifth off what rustc's size profile gives.
WASM_OPT := npx --yes -p binaryen@132.0.0 wasm-opt
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int

ENSURE := tests/tools/ensure.sh
PHASES := tests/tools/phases.sh
# What `cargo install` installs (wasm-bindgen-cli, cargo-fuzz) is found even off the PATH.
export PATH := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)

DEMO_TOOLS := rust node chromium envoy
TEST_TOOLS := $(DEMO_TOOLS) wasm-bindgen nightly cargo-fuzz wrk luajit

.PHONY: setup demo-setup build test lint unit wasm-unit integration services demo-check demo demo-local e2e-deps e2e bench bench-smoke fuzz fuzz-smoke clean

## test: everything CI runs
test:
	@$(PHASES) --live setup lint unit wasm-unit build integration services demo-check e2e-deps e2e bench-smoke fuzz-smoke

## demo: the whole stack with docker compose (Ctrl-C stops it); without Docker, the same
## path on this machine (stand-ins, echo-service x2, the filter in the test host, Chromium)
## and the span tree of one click printed to the terminal
demo:
	@if docker compose version >/dev/null 2>&1; then \
	  tests/demo/up.sh; \
	else \
	  $(PHASES) --live demo-setup build e2e-deps --live demo-local; \
	fi

## setup: installs what `make test` needs and does not find; demo-setup: what `make demo` needs
setup:
	@$(ENSURE) $(TEST_TOOLS)
demo-setup:
	@$(ENSURE) $(DEMO_TOOLS)

# Alone, a target first makes what it needs. `make test` and `make demo` run the phases in
# order themselves (IN_PHASES=1), so that each phase's time and log are its own.
ifndef IN_PHASES
integration e2e-deps: build
e2e demo-local: e2e-deps
endif

## build: the filter (dist/consul_enricher.wasm + its Kong schema) and the baseline fixture
build:
	@$(ENSURE) rust node
	cargo build --release --target $(WASM_TARGET) -p consul-enricher -p baseline-filter
	mkdir -p dist
	$(WASM_OPT) -Oz $(WASM_FEATURES) --strip-debug --strip-producers $(CARGO_WASM) -o dist/consul_enricher.wasm
	cp kong/consul_enricher.meta.json dist/consul_enricher.meta.json
	@echo "consul_enricher.wasm: $$(wc -c < dist/consul_enricher.wasm) bytes"

lint:
	@$(ENSURE) rust
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p consul-enricher --target $(WASM_TARGET) -- -D warnings

## unit: host-independent logic on the native target
unit:
	@$(ENSURE) rust
	cargo test -p consul-enricher

## wasm-unit: the same unit tests compiled for wasm32, run by wasm-bindgen-test on Node
wasm-unit:
	@$(ENSURE) rust node wasm-bindgen
	cargo test -p consul-enricher --lib --target wasm32-unknown-unknown

## integration: the real .wasm in the official Envoy binary (tests/envoy, in front of
## echo-service processes) and in the wasmtime test host (tests/host)
integration:
	@$(ENSURE) envoy
	cargo build -p echo-service
	CONSUL_ENRICHER_WASM=$(CURDIR)/dist/consul_enricher.wasm \
	BASELINE_FILTER_WASM=$(CURDIR)/target/$(WASM_TARGET)/release/baseline_filter.wasm \
	cargo test -p consul-enricher-envoy -p consul-enricher-test-host

# The browser runner, on the binaries e2e-deps builds.
E2E_RUN := cd tests/e2e && BIN_DIR=$(CURDIR)/target/debug node run.mjs

demo-local:
	@$(ENSURE) chromium envoy
	$(E2E_RUN) --demo --flavour envoy --flavour kong

# What the browser runs need: the filter, the page, the binaries, playwright-core.
e2e-deps:
	cd web && npm ci --no-audit --no-fund && npm run build
	cargo build -p consul-enricher-gateway -p consul-enricher-envoy -p echo-service -p consul-enricher-standins -p consul-enricher-report --bins
	cd tests/e2e && npm ci --no-audit --no-fund

## e2e: headless Chromium clicks the page 20 times through the official Envoy and through
## the test host's Kong flavour; every trace is checked
e2e:
	@$(ENSURE) chromium envoy
	$(E2E_RUN) --flavour envoy --flavour kong

## bench: every figure of docs/performance.md (with the fleet's and the soak's)
bench:
	@$(ENSURE) rust node wrk envoy
	tests/bench/run.sh

## bench-smoke: the benchmarks run briefly (that they run, never how fast)
bench-smoke:
	@$(ENSURE) rust node wrk envoy
	tests/bench/smoke.sh

## demo-check: the demo files without Docker: Compose schema, filter configs against the
## Kong schema, cross-file consistency, the Kong companion's test, the links and anchors of
## README.md and docs/, the configuration reference's keys, the page's build and test
demo-check:
	@$(ENSURE) luajit
	tests/demo/check.sh

## services: echo-service, the stand-ins and the report, against each other over loopback
services:
	@$(ENSURE) rust
	cargo test -p echo-service -p consul-enricher-standins -p consul-enricher-report

## fuzz-smoke: every fuzz target for about 30 seconds
fuzz-smoke:
	tests/fuzz/smoke.sh

## fuzz: every fuzz target for 10 million executions (about 40 minutes)
fuzz:
	tests/fuzz/run.sh -runs=10000000

clean:
	cargo clean
	rm -rf dist
