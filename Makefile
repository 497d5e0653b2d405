# Everything a fresh machine needs: `make run` and `make test` set themselves up.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GEN_STAMP := gen/.generated
PROTO_INCLUDE = $$($(VPY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
DURABLE_PROTOS := $(wildcard proto/durable/v1/*.proto)
DEMO_PROTOS := $(wildcard proto/flights/*.proto proto/cars/*.proto proto/payments/*.proto proto/trips/*.proto proto/benchsvc/*.proto proto/playground/*.proto proto/chaos/*.proto)
TESTS ?= tests

.PHONY: setup proto bytecode run cluster test test-unit lint fmt verify bench bench-cluster bench-peer chaos dist clean browser nats

setup: $(STAMP) $(GEN_STAMP)

$(STAMP): pyproject.toml setup.py sdk_python/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# The SDK and the broker are two distributions; one pip run resolves the broker's
	# pin of the SDK to this checkout's. Uninstall first: in a venv made before the split,
	# removing the old single distribution would delete the SDK's new protoc-gen-durable.
	$(VPY) -m pip uninstall -q -y durable-broker durable-sdk 2>/dev/null
	$(VPY) -m pip install -q -e ./sdk_python -e '.[dev]'
	# Generated demo contracts live in gen/ (one import root for every component); the
	# demo services (never installed) import from the repository root.
	printf '%s\n' "$(CURDIR)/gen" "$(CURDIR)" > $$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/durable_broker_gen.pth
	touch $@

# Broker protocol -> sdk_python/durable/v1 (it ships with the SDK); demo contracts -> gen/.
$(GEN_STAMP): $(STAMP) $(DURABLE_PROTOS) $(DEMO_PROTOS) $(wildcard sdk_python/durable/_codegen/*.py)
	mkdir -p gen sdk_python/durable/v1
	$(VPY) -m grpc_tools.protoc -I proto -I $(PROTO_INCLUDE) \
		--python_out=sdk_python --grpc_python_out=sdk_python \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=sdk_python \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=sdk_python $(DURABLE_PROTOS)
	touch sdk_python/durable/v1/__init__.py
	# Shipped with the SDK: users' contracts import durable/v1/options.proto from it.
	cp $(DURABLE_PROTOS) sdk_python/durable/v1/
	$(VPY) -m grpc_tools.protoc -I proto -I $(PROTO_INCLUDE) \
		--python_out=gen --grpc_python_out=gen \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=gen \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=gen \
		--plugin=protoc-gen-durable=$(VENV)/bin/protoc-gen-durable --durable_out=gen $(DEMO_PROTOS)
	for d in gen/*/; do touch $$d/__init__.py; done
	touch $@

proto: $(STAMP)
	rm -f $(GEN_STAMP)
	$(MAKE) $(GEN_STAMP)

# Every broker, service and brokerctl process imports this checkout's modules. Where
# PYTHONDONTWRITEBYTECODE is set (it is in our dev containers) no process writes their
# bytecode, so each one compiled ~100 modules again (~0.2 s of a broker start). Compiled
# once here (a second or two; then only what changed); a file edited since is compiled in
# memory, as before.
bytecode: setup
	@$(VPY) -m compileall -q -j 0 broker sdk_python/durable services tests gen >/dev/null

run: setup bytecode
	$(VPY) -m services.run_demo

# The console's browser tests drive Debian's Chromium and its driver (no browser download
# at run time); installed once, skipped when both are there.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; fi

# Cluster mode (issue 14) keeps partition logs on NATS JetStream: Debian's nats-server
# (2.9.10, JetStream built in). Tests and `make cluster` start their own servers from it;
# installed once, skipped when it is there.
nats:
	@if [ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null; then :; else \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nats-server; fi

# Three NATS servers, three broker nodes and the demo services on one machine (README:
# "A cluster on one machine").
cluster: setup bytecode nats
	$(VPY) -m services.run_cluster

test: setup bytecode browser nats
	$(VPY) -m pytest $(TESTS)

test-unit: setup bytecode
	$(VPY) -m pytest tests/unit

lint: setup
	$(VENV)/bin/ruff check broker sdk_python services tests bench tools setup.py
	$(VENV)/bin/ruff format --check broker sdk_python services tests bench tools setup.py
	$(VENV)/bin/mypy broker sdk_python/durable services bench tools tests

fmt: setup
	$(VENV)/bin/ruff check --fix broker sdk_python services tests bench tools setup.py
	$(VENV)/bin/ruff format broker sdk_python services tests bench tools setup.py

verify: lint test

bench: setup
	$(VPY) -m bench $(BENCH_ARGS)

# Cluster mode (issue 14) against the embedded broker in one run: 1 and 2 broker nodes over
# 3 NATS servers, then 10 SIGKILLs of a partition's leader (failover p50/max). ~4 minutes.
BENCH_CLUSTER_ARGS ?= --workers 0 --cluster 1,2 --scenarios trivial,saga --concurrency 1,64
bench-cluster: setup bytecode nats
	$(VPY) -m bench $(BENCH_CLUSTER_ARGS)

# Side by side with the real Restate (issue 15): installs it into .data/peer on first use
# (npm, PyPI), then runs both in a loopback-only network namespace (needs root). Minutes:
# never part of `make test`.
PEER_ARGS ?= --duration 10 --repeat 1
bench-peer: setup
	$(VPY) -m bench --peer restate $(PEER_ARGS)

# The verification runner: random programs under crashes, checked against the model.
CHAOS_ARGS ?= --programs 500 --duration 120 --faults broker,service,stream
chaos: setup
	$(VPY) -m tests.chaos.runner $(CHAOS_ARGS)

# The SDK and broker wheels and sdists, built out of tree (tools/dist.py stages a copy).
DIST_DIR ?= dist
dist: setup
	$(VPY) tools/dist.py --outdir $(DIST_DIR)

clean:
	rm -rf $(VENV) gen sdk_python/durable/v1 .data dist
