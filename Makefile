# Two commands for a fresh machine with the Rust toolchain:
#   make run    build the sample apps and berth, put the apps in ./apps, serve them on :8080
#   make services  (optional, first) PostgreSQL and Redis for the `todo` and `counter` apps
#   make test   run the whole test suite (unit, doc and integration tests on the real binary)
#   make bench  Berth vs. native hyper, uvicorn and aiohttp; writes BENCHMARKS.md (~20 min)

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
# The sample fetch, gather and proxy apps call back into this machine; every other upstream is denied.
ALLOW_OUTBOUND ?= http://127.0.0.1:*,http://localhost:*
APPS_DIR ?= apps
# Empty: the in-process pub/sub broker; `make run PUBSUB=redis://127.0.0.1:16379/` shares the
# channels through the Redis `make services` starts.
PUBSUB ?=
SAMPLE_APPS := hello echo fetch gather greeter upload proxy clock todo counter ws-echo chat
SO := $(if $(filter Darwin,$(shell uname -s)),dylib,so)

.PHONY: run apps services services-stop test lint bench

# sample-apps/berth.toml holds the settings of `todo` and `counter` (the servers `make services`
# starts); apps_dir in it is not set, so --apps-dir still decides.
run: apps
	$(CARGO) run --release -p berth-server --bin berth -- --config sample-apps/berth.toml --apps-dir $(APPS_DIR) --listen $(LISTEN) --allow-outbound "$(ALLOW_OUTBOUND)" $(if $(PUBSUB),--pubsub "$(PUBSUB)")

# A throwaway PostgreSQL (127.0.0.1:15432) and Redis (127.0.0.1:16379) for `todo` and `counter`.
services:
	sample-apps/data-services.sh start

services-stop:
	sample-apps/data-services.sh stop

# Cargo names a crate's library with `_` for `-` (ws-echo: libws_echo.so).
apps:
	$(CARGO) build --release $(addprefix -p ,$(SAMPLE_APPS))
	mkdir -p $(APPS_DIR)
	for app in $(SAMPLE_APPS); do cp target/release/lib$$(echo $$app | tr - _).$(SO) $(APPS_DIR)/$$app.$(SO); done

test:
	$(CARGO) test --workspace --all-features

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --all-features

# Three steps: bench/setup.py installs wrk, h2load, nginx, PostgreSQL and Redis (apt) and the Python peers (a
# virtualenv in target/bench-env) when missing; bench/run.py builds in release mode, measures and
# writes bench/results.json; bench/report.py writes BENCHMARKS.md and bench/results.svg from it.
# When some measurement saw errors, run.py exits 1 after writing the results: the report is still
# written, and make fails. Exit 2 or more means no results were written: no report.
bench:
	python3 bench/setup.py
	python3 bench/run.py; status=$$?; \
	if [ $$status -le 1 ]; then python3 bench/report.py bench/results.json || status=$$?; fi; \
	exit $$status
