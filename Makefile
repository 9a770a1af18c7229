# Penny. `make demo` and `make test` are the two set-up commands (README).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin

.PHONY: all build test demo lint tools bench-schedperf

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# etcd for kube-apiserver in tests and benchmarks, built from the etcd
# module this repository pins (go.mod), so no download is needed.
ETCD := $(BIN)/etcd
$(ETCD): go.mod
	$(GO) build -o $@ go.etcd.io/etcd/server/v3

tools: $(ETCD)

# scheduler_perf (benchmarks/schedperf): one run of each workload, on a fresh
# etcd + kube-apiserver each; results and logs under _output/.
SCHEDPERF_OUT  := $(CURDIR)/_output/schedperf
SCHEDPERF_TEST := $(GO) test . -run '^$$' -bench BenchmarkPerfScheduling -benchtime 1x -timeout 60m
SCHEDPERF_ENV  := cd benchmarks/schedperf && PATH=$(BIN):$$PATH KUBE_CACHE_MUTATION_DETECTOR=false

test: $(ETCD)
	$(GO) test ./...
	# The small scheduler_perf workloads, so CI catches a plugin that breaks under the harness.
	mkdir -p $(SCHEDPERF_OUT)-test
	$(SCHEDPERF_ENV) ARTIFACTS=$(SCHEDPERF_OUT)-test $(SCHEDPERF_TEST) -short \
		-perf-scheduling-label-filter=integration-test -data-items-dir $(SCHEDPERF_OUT)-test

# Both sides of every comparison back to back, BENCH_COUNT runs, at sizes
# that finish on 2 cores; writes benchmarks/results/schedperf.{json,md}.
BENCH_COUNT ?= 5
bench-schedperf: $(ETCD)
	rm -rf $(SCHEDPERF_OUT)
	PATH=$(BIN):$$PATH benchmarks/schedperf/bench.sh $(SCHEDPERF_OUT) $(BENCH_COUNT) bench
	mkdir -p benchmarks/results
	$(GO) run ./benchmarks/schedperf/report -in $(SCHEDPERF_OUT) -json benchmarks/results/schedperf.json \
		-md benchmarks/results/schedperf.md -command "make bench-schedperf BENCH_COUNT=$(BENCH_COUNT)"

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
