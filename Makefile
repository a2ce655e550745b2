# tagcache — `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
RELEASE_SO := target/release/libtagcache.so
DEBUG_SO := target/debug/libtagcache.so

.PHONY: help deps build release run test lint unit integration bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## Check (install when root) redis-server, redis-cli and libclang
	@bash scripts/deps.sh

build: deps ## Debug build of the module (target/debug/libtagcache.so)
	$(CARGO) build

release: deps ## Release build of the module (target/release/libtagcache.so)
	$(CARGO) build --release

run: release ## Build the release module and run redis-server redis.conf (127.0.0.1:6379)
	redis-server redis.conf

lint: deps ## clippy with -D warnings (the lib forbids unwrap/expect/panic/indexing/overflow)
	$(CARGO) clippy --all-targets -- -D warnings

unit: deps ## Unit tests of the pure core
	$(CARGO) test --lib

integration: build ## Integration tests against real redis-servers started by the harness
	TAGCACHE_MODULE=$(CURDIR)/$(DEBUG_SO) $(CARGO) test --tests

test: lint build ## Everything: clippy, unit tests, integration tests (ends with a total line)
	@set -o pipefail; TAGCACHE_MODULE=$(CURDIR)/$(DEBUG_SO) $(CARGO) test --no-fail-fast --lib --tests 2>&1 \
	  | tee target/test-output.log; status=$$?; \
	  awk '/^test result:/ { p += $$4; f += $$6 } END { printf "%d passed, %d failed\n", p, f }' target/test-output.log; \
	  exit $$status

bench: release ## Benchmarks: ratios against native commands, measured side by side
	$(CARGO) run --release --example bench -- $(BENCH_ARGS)

clean: ## Remove build output
	$(CARGO) clean
