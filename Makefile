# tagcache — `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
RELEASE_SO := target/release/libtagcache.so
DEBUG_SO := target/debug/libtagcache.so
NODE_DIR := clients/node
PY_DIR := clients/python
PY_VENV := $(PY_DIR)/.venv
export TAGCACHE_MODULE := $(CURDIR)/$(DEBUG_SO)

.PHONY: help deps build release run test test-rust test-node test-python compat lint unit integration bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## Check (install when root) redis-server, redis-cli, libclang, node/npm, python3 venv
	@bash scripts/deps.sh

build: deps ## Debug build of the module (target/debug/libtagcache.so)
	$(CARGO) build

release: deps ## Release build of the module (target/release/libtagcache.so)
	$(CARGO) build --release

run: release ## Build the release module and run redis-server redis.conf (127.0.0.1:6379)
	redis-server redis.conf

lint: deps ## clippy -D warnings (no unwrap/expect/panic/indexing/overflow, unsafe only in src/ffi), no import cycles
	$(CARGO) clippy --all-targets -- -D warnings
	python3 scripts/module_cycles.py src

unit: deps ## Unit tests of the pure core
	$(CARGO) test --lib

integration: build ## Integration tests against real redis-servers started by the harness
	$(CARGO) test --tests

test-rust: build ## Module: unit and integration tests (log in target/test-rust.log)
	@set -o pipefail; $(CARGO) test --no-fail-fast --lib --tests 2>&1 | tee target/test-rust.log

$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund

test-node: build $(NODE_DIR)/node_modules/.package-lock.json ## Node package tests (log in target/test-node.log)
	@set -o pipefail; (cd $(NODE_DIR) && npm test) 2>&1 | tee target/test-node.log

test-python: build ## Python package tests (venv in clients/python/.venv; log in target/test-python.log)
	@set -o pipefail; bash $(PY_DIR)/test.sh 2>&1 | tee target/test-python.log

test: lint build ## Everything: clippy, module tests, Node and Python packages; ends with a total line
	@rm -f target/test-*.log; status=0; \
	  $(MAKE) --no-print-directory test-rust || status=1; \
	  $(MAKE) --no-print-directory test-node || status=1; \
	  $(MAKE) --no-print-directory test-python || status=1; \
	  bash scripts/total.sh target/test-rust.log target/test-node.log target/test-python.log; \
	  exit $$status

compat: build ## Smoke test on every supported server (Redis 7.2/7.4/8.2, Valkey 8.1/9.1 from PyPI wheels)
	TAGCACHE_COMPAT=all $(CARGO) test --test compat -- --nocapture

bench: release ## Benchmarks: ratios against native commands, measured side by side (servers on core 0, client on core 1)
	$(CARGO) build --release --example bench
	TAGCACHE_MODULE=$(CURDIR)/$(RELEASE_SO) TAGCACHE_SERVER_CPUS=0 taskset -c 1 target/release/examples/bench $(BENCH_ARGS)

clean: ## Remove build output (and the packages' installed dependencies)
	$(CARGO) clean
	rm -rf $(NODE_DIR)/node_modules $(NODE_DIR)/dist $(PY_VENV)
