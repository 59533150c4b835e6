# Shoal: build, test and benchmark. `make` alone lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Debian packages the build and the tests need: nghttp2, OpenSSL and zlib (RPC layer), SQLite (Harpoon's store), protobuf-c (reference codec),
# protoc and protoc-c (parser agreement and regenerating the reference C), pkg-config, and PostgreSQL (the stores of deployments
# beyond one machine: the tests start throwaway servers of their own with its initdb and postgres).
APT_PACKAGES := libnghttp2-dev libssl-dev zlib1g-dev libsqlite3-dev libprotobuf-c-dev protobuf-compiler protobuf-c-compiler pkg-config postgresql
SWIFT_BUILD_FLAGS ?= -Xswiftc -warnings-as-errors
FUZZ_RUNS ?= 2000000
DEFRAMER_FUZZ_RUNS ?= 3000000
SHARED ?= $(abspath ../shared)
ANCHOR_BUILD := $(CURDIR)/.build-anchor
FUZZ_PKG := Tests/Fuzz
# Python grpcio (from PyPI) for the interop tests, in a venv of its own, with stubs for the test protos.
INTEROP_DIR := $(CURDIR)/.build-interop
INTEROP_PY := $(INTEROP_DIR)/venv/bin/python

.PHONY: help
help: ## List the targets.
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the Debian packages the build and tests need (as root; apt-get).
	@missing=(); for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$$p"); done; \
	if [ $${#missing[@]} -gt 0 ]; then \
	  echo "installing: $${missing[*]}"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq "$${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$${missing[@]}"; }; \
	fi

.PHONY: build
build: deps ## Build everything (debug).
	swift build $(SWIFT_BUILD_FLAGS)

.PHONY: run
run: deps ## Build and start the whole cluster on 127.0.0.1: SQLite under .shoal/, a simulated fleet, the API on :8080 (RUN_FLAGS for more).
	swift build --product shoal-local
	swift build
	exec "$$(swift build --show-bin-path)/shoal-local" $(RUN_FLAGS)

.PHONY: interop-deps
interop-deps: ## Install Python grpcio, pydo and h2 in .build-interop/venv and generate the grpcio stubs for the interop tests.
	@test -x $(INTEROP_PY) || python3 -m venv $(INTEROP_DIR)/venv
	@$(INTEROP_PY) -c 'import grpc, grpc_tools, pydo, h2' 2>/dev/null || $(INTEROP_DIR)/venv/bin/pip install -q grpcio grpcio-tools pydo h2
	@mkdir -p $(INTEROP_DIR)/stubs
	@$(INTEROP_PY) -m grpc_tools.protoc -I Tests/Protos --python_out=$(INTEROP_DIR)/stubs --grpc_python_out=$(INTEROP_DIR)/stubs rpctest/v1/rpctest.proto
	@$(INTEROP_PY) -m grpc_tools.protoc -I Protos --python_out=$(INTEROP_DIR)/stubs --grpc_python_out=$(INTEROP_DIR)/stubs \
	  grpc/testing/empty.proto grpc/testing/messages.proto grpc/testing/test.proto

# The Swift files swift-format owns: everything but build directories (generated files opt out in their header).
FORMAT_FILES = $(shell find Package.swift Sources Tests Benchmarks/Package.swift Benchmarks/Sources -name '*.swift' -not -path '*/.build/*' | sort)

.PHONY: format
format: ## Format every Swift file with the committed .swift-format (swift-format ships with the toolchain).
	@swift format format --in-place --parallel --configuration .swift-format $(FORMAT_FILES)

.PHONY: lint
lint: ## Check formatting and swift-format's lint rules; fails on any finding (make format fixes most).
	@swift format lint --strict --parallel --configuration .swift-format $(FORMAT_FILES)

.PHONY: test
test: deps lint check-generated interop-deps ## Install what is missing, lint, build, and run every test (what CI runs).
	swift build --build-tests $(SWIFT_BUILD_FLAGS)
	@# The multi-process cluster tests run on their own, after the rest: on 2 cores, a dozen processes beside the
	@# in-process network tests would only measure the contention.
	swift test --skip-build --skip IntegrationTests 2>&1 | tee .build/swift-test.log
	swift test --skip-build --no-parallel --filter IntegrationTests 2>&1 | tee .build/swift-test-integration.log
	$(MAKE) fuzz FUZZ_RUNS=$(FUZZ_RUNS)
	@# One plain closing line for CI: the XCTest runner also prints "Executed 0 tests" (all tests are Swift Testing).
	@n=$$(sed -nE 's/.*Test run with ([0-9]+) tests? .*passed.*/\1/p' .build/swift-test.log | tail -1); \
	  m=$$(sed -nE 's/.*Test run with ([0-9]+) tests? .*passed.*/\1/p' .build/swift-test-integration.log | tail -1); \
	  echo "fuzz: $(FUZZ_RUNS) decoder runs and $(DEFRAMER_FUZZ_RUNS) deframer runs clean"; echo "tests: $$(( $${n:-0} + $${m:-0} )) passed, 0 failed"

.PHONY: test-unit
test-unit: interop-deps ## Run the Swift tests only, no fuzzing (fast inner loop).
	swift test

.PHONY: generate-reference
generate-reference: deps ## Regenerate protobuf-c's C for the conformance protos (the differential-test reference).
	rm -rf Tests/CProtobufCReference/generated/conformance Tests/CProtobufCReference/generated/google
	tmp=$$(mktemp -d); protoc -I Tests/Protos -I Protos --c_out=$$tmp conformance/v1/all_types.proto google/protobuf/timestamp.proto; \
	for f in conformance/v1/all_types google/protobuf/timestamp; do \
	  mkdir -p Tests/CProtobufCReference/generated/$$(dirname $$f) Tests/CProtobufCReference/include/$$(dirname $$f); \
	  cp $$tmp/$$f.pb-c.c Tests/CProtobufCReference/generated/$$f.pb-c.c; \
	  cp $$tmp/$$f.pb-c.h Tests/CProtobufCReference/include/$$f.pb-c.h; \
	done; rm -rf $$tmp

.PHONY: check-generated
check-generated: deps ## Check that committed generated files match their sources.
	tmp=$$(mktemp -d); protoc -I Tests/Protos -I Protos --c_out=$$tmp conformance/v1/all_types.proto google/protobuf/timestamp.proto; \
	status=0; for f in conformance/v1/all_types google/protobuf/timestamp; do \
	  cmp -s $$tmp/$$f.pb-c.c Tests/CProtobufCReference/generated/$$f.pb-c.c || { echo "stale: generated/$$f.pb-c.c (run make generate-reference)"; status=1; }; \
	  cmp -s $$tmp/$$f.pb-c.h Tests/CProtobufCReference/include/$$f.pb-c.h || { echo "stale: include/$$f.pb-c.h (run make generate-reference)"; status=1; }; \
	done; rm -rf $$tmp; exit $$status

.PHONY: fuzz
fuzz: deps ## Fuzz the message decoder (FUZZ_RUNS, default 2,000,000) and the gRPC deframer (DEFRAMER_FUZZ_RUNS) with libFuzzer; fails on any finding.
	swift build --product protogen
	mkdir -p $(FUZZ_PKG)/Sources/ProtoDecodeFuzz/Generated
	"$$(swift build --show-bin-path)/protogen" --out $(FUZZ_PKG)/Sources/ProtoDecodeFuzz/Generated \
	  --proto-path Tests/Protos --proto-path Protos conformance/v1/all_types.proto google/protobuf/timestamp.proto
	rm -f $(FUZZ_PKG)/.build/release.yaml  # a path dependency's new files are otherwise missed
	cd $(FUZZ_PKG) && swift build -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address \
	  > .build-fuzz.log 2>&1 || { grep -v 'Cannot export local symbol' .build-fuzz.log; exit 1; }
	mkdir -p .build-fuzz/corpus .build-fuzz/artifacts
	SWIFT_BACKTRACE=enable=no $(FUZZ_PKG)/.build/release/ProtoDecodeFuzz -runs=$(FUZZ_RUNS) -max_len=4096 -seed=1 \
	  -artifact_prefix=.build-fuzz/artifacts/ .build-fuzz/corpus Tests/Fuzz/Seeds
	SWIFT_BACKTRACE=enable=no $(FUZZ_PKG)/.build/release/ProtoDecodeFuzz -runs=0 Tests/Fuzz/FailCases
	mkdir -p .build-fuzz/deframer-corpus
	SWIFT_BACKTRACE=enable=no $(FUZZ_PKG)/.build/release/DeframerFuzz -runs=$(DEFRAMER_FUZZ_RUNS) -max_len=1024 -seed=1 \
	  -artifact_prefix=.build-fuzz/artifacts/ .build-fuzz/deframer-corpus Tests/Fuzz/DeframerSeeds

.PHONY: bench
bench: bench-codec bench-rpc bench-pipeline bench-api ## Run every benchmark.

.PHONY: bench-pipeline
bench-pipeline: deps ## The event pipeline as processes, 20, 1,000 and 15,000 agents (STORE=postgres: SQLite beside 2 Harpoon replicas on PostgreSQL).
	swift build -c release --product scheduler
	swift build -c release --product harpoon
	swift build -c release --product event-router
	swift build -c release --product hypervisor
	swift build -c release --product pipeline-bench
ifeq ($(STORE),postgres)
	@echo "== 1000 agents, 96 creations in flight, Harpoon on SQLite"; .build/release/pipeline-bench --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 96
	@echo "== 20 agents, 32 in flight, 2 Harpoon replicas on PostgreSQL (connections as the server counts them)"
	.build/release/pipeline-bench --postgres --agents 20 --seconds 1 --concurrency 32 --warmup-milliseconds 300 | tail -4
	@echo "== 1000 agents, 96 creations in flight, 2 Harpoon replicas on PostgreSQL (durable: fsync, synchronous_commit on)"
	.build/release/pipeline-bench --postgres --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 96
else
	@echo "== 20 agents (short and light: 20 hypervisors hold 2,700 droplets at most)"; .build/release/pipeline-bench --agents 20 --seconds 1 --concurrency 32 --warmup-milliseconds 300 | tail -5
	@echo "== 1000 agents, 256 creations in flight (the most it sustains; latency is queueing)"; .build/release/pipeline-bench --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 256 | tail -5
	@echo "== 1000 agents, 96 creations in flight (rate and p99 at one load: the target point)"; .build/release/pipeline-bench --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 96
	@echo "== 15000 agents: 3 regions, 2 routers each, 6 fleet processes; 96 creations in flight; Explain timed at the end"
	.build/release/pipeline-bench --agents 15000 --regions 3 --routers-per-region 2 --fleet-processes 6 --heartbeat-milliseconds 2000 \
	  --seconds $${SECONDS_15K:-10} --concurrency 96 --warmup-milliseconds 3000 --explain-samples 200 --label fleet15k --base-port 23000
endif

.PHONY: bench-rpc
bench-rpc: deps ## gRPC echo under h2load vs the grpc-swift-2 and gRPC C++ anchor servers (ends with the min rps ratios).
	@test -d $(SHARED)/anchors/rpc || { echo "needs ../shared/anchors/rpc beside the repository"; exit 1; }
	@command -v h2load >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nghttp2-client; }; }
	rm -f Benchmarks/.build/release.yaml  # a path dependency's new files are otherwise missed
	cd Benchmarks && swift build -c release --product EchoServer && swift build -c release --product RPCChurn
	BUILD_DIR=$(ANCHOR_BUILD) SHARED=$(SHARED) CHURN=$(CURDIR)/Benchmarks/.build/release/RPCChurn \
	  Benchmarks/rpc/run.sh $(CURDIR)/Benchmarks/.build/release/EchoServer

.PHONY: bench-codec
bench-codec: deps ## Codec throughput vs swift-protobuf and protobuf-c on the anchor corpus (ends with the min ratio).
	@test -d $(SHARED)/anchors/codec || { echo "needs ../shared/anchors/codec beside the repository"; exit 1; }
	rm -f Benchmarks/.build/release.yaml  # a path dependency's new files are otherwise missed
	cd Benchmarks && swift build -c release --product CodecBench
	BUILD_DIR=$(ANCHOR_BUILD) SHARED=$(SHARED) Benchmarks/codec/run.sh $(CURDIR)/Benchmarks/.build/release/CodecBench

.PHONY: clean
clean: ## Remove build products.
	rm -rf .build .build-fuzz .build-anchor .build-interop Benchmarks/.build $(FUZZ_PKG)/.build $(FUZZ_PKG)/Sources/ProtoDecodeFuzz/Generated

.PHONY: bench-observability
bench-observability: deps ## The cost of metrics, logs and traces: the 1,000-agent pipeline and the API bench, each without and with, alternating.
	swift build -c release --product scheduler
	swift build -c release --product harpoon
	swift build -c release --product event-router
	swift build -c release --product hypervisor
	swift build -c release --product pipeline-bench
	swift build -c release
	@for round in 1 2; do \
	  echo "== round $$round: 1000 agents, 96 in flight, without"; .build/release/pipeline-bench --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 96 | tail -4; \
	  echo "== round $$round: 1000 agents, 96 in flight, observed (/metrics served, every creation traced, spans exported)"; \
	  .build/release/pipeline-bench --agents 1000 --seconds $${SECONDS_1000:-10} --concurrency 96 --observability | tail -5; \
	done
	@for round in 1 2; do \
	  echo "== round $$round: API, without (warnings only, no spans)"; BIN=$$(swift build -c release --show-bin-path) Benchmarks/api/run.sh | tail -4; \
	  echo "== round $$round: API, observed (a log line per request, every request traced)"; OBSERVED=1 BIN=$$(swift build -c release --show-bin-path) Benchmarks/api/run.sh | tail -4; \
	done

.PHONY: bench-api
bench-api: deps ## wrk against the aggregator of a running cluster: GET /v2/reserved_ips/{ip} rps and p99, assign p99 to completed.
	@command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }; }
	swift build -c release
	BIN=$$(swift build -c release --show-bin-path) Benchmarks/api/run.sh
