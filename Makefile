# Penny. The two set-up commands are `make demo` and `make test` (README).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# Tests that start servers put their tools (etcd for scheduler_perf) on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: all build demo test test-race lint manifests tools clean bench-schedperf bench-memory generate fuzz-short gpu-check e2e-reclaim

all: build

## build: bin/penny-scheduler, bin/penny (and every other command under cmd/)
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## demo: a local cluster with simulated GPU nodes, the demo workload, and what Penny did
## (on a free port in a new temporary directory, so that it runs beside a `penny up` left running)
demo:
	$(GO) build -o $(BIN)/penny ./cmd/penny
	$(BIN)/penny up --demo --exit-after-demo --port 0 --dir ''

## test: unit, integration (real kube-apiserver + etcd + KWOK) and end-to-end tests,
## the small scheduler_perf workloads (so CI catches a plugin that breaks under the harness)
## and a short run of every fuzz target
test: tools
	$(GO) test -count=1 -timeout 25m ./...
	$(MAKE) fuzz-short
	mkdir -p $(SCHEDPERF_OUT)-test
	cd benchmarks/schedperf && ARTIFACTS=$(SCHEDPERF_OUT)-test KUBE_CACHE_MUTATION_DETECTOR=false $(GO) test . -count=1 \
		-run '^$$' -bench BenchmarkPerfScheduling -benchtime 1x -timeout 10m -short \
		-perf-scheduling-label-filter=integration-test -data-items-dir $(SCHEDPERF_OUT)-test

## test-race: every test under the race detector; not part of make test, since building the scheduler and the
## API server with -race takes about 15 minutes on 2 cores when nothing is cached
test-race: tools
	$(GO) test -race -count=1 -timeout 60m ./...

## bench-schedperf: kube-scheduler's scheduler_perf harness, Penny's profile against the default and the
## in-tree gang plugin, both sides back to back, BENCH_COUNT runs; writes benchmarks/results/schedperf.{json,md}
SCHEDPERF_OUT := $(CURDIR)/_output/schedperf
BENCH_COUNT   ?= 5
bench-schedperf: tools
	rm -rf $(SCHEDPERF_OUT)
	benchmarks/schedperf/bench.sh $(SCHEDPERF_OUT) $(BENCH_COUNT) bench
	mkdir -p benchmarks/results
	$(GO) run ./benchmarks/schedperf/report -in $(SCHEDPERF_OUT) -json benchmarks/results/schedperf.json \
		-md benchmarks/results/schedperf.md -command "make bench-schedperf BENCH_COUNT=$(BENCH_COUNT)"

## bench-memory: penny-scheduler's peak RSS against kube-scheduler's (default profile), each as its own process on a
## fresh control plane with MEMORY_NODES GPU nodes and the same pods; writes benchmarks/results/memory.{json,md}
MEMORY_NODES         ?= 1000,5000
MEMORY_PODS_PER_NODE ?= 1
bench-memory:
	$(GO) build -o $(BIN)/penny-scheduler ./cmd/penny-scheduler
	$(GO) build -o $(BIN)/kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
	$(GO) build -o $(BIN)/bench-memory ./benchmarks/memory
	$(BIN)/bench-memory -nodes $(MEMORY_NODES) -pods-per-node $(MEMORY_PODS_PER_NODE) \
		-json benchmarks/results/memory.json -md benchmarks/results/memory.md \
		-command "make bench-memory MEMORY_NODES=$(MEMORY_NODES) MEMORY_PODS_PER_NODE=$(MEMORY_PODS_PER_NODE)"

## e2e-reclaim: the reclaim end-to-end test (notice -> gang checkpoint -> eviction -> placement -> resume)
## RUNS times per cloud (AWS, GCP, Azure); writes benchmarks/results/reclaim.json with p50/p99 latencies
RUNS ?= 20
e2e-reclaim:
	mkdir -p benchmarks/results
	PENNY_RECLAIM_RUNS=$(RUNS) PENNY_RECLAIM_RESULTS=$(CURDIR)/benchmarks/results/reclaim.json \
		$(GO) test -count=1 -timeout 60m -run TestGangCheckpointsOnReclaimNotice ./test/e2e/reclaim/

## lint: gofmt, go vet and staticcheck (its default checks: bugs, dead code, deprecated APIs, style)
STATICCHECK_VERSION := v0.8.2
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(BIN)/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	$(BIN)/tools/staticcheck ./...

# The openb trace sits in shared/ beside the main checkout (CI: ../shared).
OPENB ?= $(abspath $(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)/../../shared/data/openb)
SIM_POLICIES ?= random,dotprod,clustering,packing,bestfit,fgd
SIM_RESULTS  ?= benchmarks/results

.PHONY: bench-spot
## bench-spot: the Spot cost/risk benchmark (default, spot-first, penny on an elastic mixed fleet): openb default
## into benchmarks/results/spot.{json,md}, and a synthetic Philly-style training trace (600 jobs, 1-32 GPUs,
## generated with a fixed seed by benchmarks/spot/trainingtrace) into benchmarks/results/spot-training.{json,md}, and a
## heavier one (half the jobs 8-32 GPUs, 7 days) into benchmarks/results/spot-training-heavy.{json,md}
SPOT_SCENARIO ?= benchmarks/scenarios/spot-openb.yaml
SPOT_SEED     ?= 42
bench-spot:
	$(GO) build -o $(BIN)/penny ./cmd/penny
	@mkdir -p $(SIM_RESULTS)
	$(BIN)/penny sim replay --scenario $(SPOT_SCENARIO) --pods $(OPENB)/openb_pod_list_default.csv \
		--policy default,spot-first,penny --seed $(SPOT_SEED) \
		--out $(SIM_RESULTS)/spot.json --markdown $(SIM_RESULTS)/spot.md
	$(GO) run ./benchmarks/spot/trainingtrace --jobs 600 --days 14 --seed 1 --out bin/training-600.csv
	$(BIN)/penny sim replay --scenario $(SPOT_SCENARIO) --pods bin/training-600.csv --format philly \
		--policy default,spot-first,penny --seed $(SPOT_SEED) \
		--out $(SIM_RESULTS)/spot-training.json --markdown $(SIM_RESULTS)/spot-training.md
	$(GO) run ./benchmarks/spot/trainingtrace --jobs 600 --days 7 --seed 2 --sizes 1:0.4,8:0.4,16:0.15,32:0.05 --out bin/training-600-heavy.csv
	$(BIN)/penny sim replay --scenario $(SPOT_SCENARIO) --pods bin/training-600-heavy.csv --format philly \
		--policy default,spot-first,penny --seed $(SPOT_SEED) \
		--out $(SIM_RESULTS)/spot-training-heavy.json --markdown $(SIM_RESULTS)/spot-training-heavy.md

.PHONY: bench-gpupack
## bench-gpupack: Penny's packing against FGD and BestFit on openb (fill protocol, seeds 42..51), and on a
## MIG fleet against first-fit and best-fit (seeds 42..46), into benchmarks/results/gpupack-*
bench-gpupack:
	$(GO) build -o $(BIN)/penny ./cmd/penny
	@mkdir -p $(SIM_RESULTS)
	$(BIN)/penny sim fill --nodes $(OPENB)/openb_node_list_all_node.csv --pods $(OPENB)/openb_pod_list_default.csv \
		--policy penny,fgd,bestfit --seeds 42-51 --parallel 2 \
		--out $(SIM_RESULTS)/gpupack-openb.json --plot $(SIM_RESULTS)/gpupack-openb.png
	$(BIN)/penny sim fill --nodes $(OPENB)/openb_node_list_all_node.csv --pods $(OPENB)/openb_pod_list_default.csv \
		--mig A100-80GB,H100-80GB --policy penny,firstfit,bestfit --seeds 42-46 --parallel 2 \
		--out $(SIM_RESULTS)/gpupack-mig.json --plot $(SIM_RESULTS)/gpupack-mig.png

.PHONY: bench-gpupack-score
## bench-gpupack-score: PennyGPUPack's PreScore+Score+NormalizeScore cost per pod at 5,000 nodes, on one and two
## cores (benchmarks/results/gpupack-score.md has the last numbers and the machine)
bench-gpupack-score:
	$(GO) test ./plugins/gpupack/ -run XXX -bench Score5000Nodes -benchtime 300x -cpu 1,2 -count $(BENCH_COUNT)

.PHONY: bench-sim
## bench-sim: the FGD paper's baselines on openb default (fill protocol, seeds 42..51) and a replay, into benchmarks/results
bench-sim:
	$(GO) build -o $(BIN)/penny ./cmd/penny
	@mkdir -p $(SIM_RESULTS)
	$(BIN)/penny sim fill --nodes $(OPENB)/openb_node_list_gpu_node.csv --pods $(OPENB)/openb_pod_list_default.csv \
		--policy $(SIM_POLICIES) --seeds 42-51 --parallel 2 \
		--out $(SIM_RESULTS)/openb-default.json --plot $(SIM_RESULTS)/openb-default.png | tee $(SIM_RESULTS)/openb-default.txt
	$(BIN)/penny sim fill --nodes $(OPENB)/openb_node_list_all_node.csv --pods $(OPENB)/openb_pod_list_default.csv \
		--policy $(SIM_POLICIES) --seeds 42-51 --parallel 2 \
		--out $(SIM_RESULTS)/openb-default-all-nodes.json --plot $(SIM_RESULTS)/openb-default-all-nodes.png | tee $(SIM_RESULTS)/openb-default-all-nodes.txt
	$(BIN)/penny sim replay --nodes $(OPENB)/openb_node_list_all_node.csv --pods $(OPENB)/openb_pod_list_default.csv \
		--policy fgd --out $(SIM_RESULTS)/openb-default-replay.json --plot $(SIM_RESULTS)/openb-default-replay.png | tee $(SIM_RESULTS)/openb-default-replay.txt

## manifests: regenerate deploy/scheduler/penny-scheduler.yaml, deploy/pricing/penny-prices.yaml and
## deploy/agent/reclaim.yaml from their templates, the scheduler config and the price catalog
manifests:
	$(GO) run ./hack/manifests

## tools: binaries built from Go modules that tests need
tools: $(BIN)/etcd

# etcd for the kube-apiservers scheduler_perf starts, built from the etcd
# module go.mod pins, so no download is needed.
$(BIN)/etcd: go.mod
	$(GO) build -o $@ go.etcd.io/etcd/server/v3

clean:
	rm -rf $(BIN)

# --- gRPC APIs: telemetry (pkg/api/telemetry/v1), Cluster Autoscaler's expander (pkg/api/expander)
# The generated Go is committed, so building and CI never need protoc. To
# regenerate: apt-get install protobuf-compiler (Debian's protoc, which also
# ships google/protobuf/*.proto), then `make generate`. protoc-gen-go is the
# version go.mod pins for the protobuf runtime, so generator and runtime match;
# protoc-gen-go-grpc is pinned here.
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
TOOLS := $(BIN)/tools
TELEMETRY_API := pkg/api/telemetry/v1
EXPANDER_API := pkg/api/expander

## generate: regenerate pkg/api/telemetry/v1 and pkg/api/expander from their .proto files (needs protoc)
generate:
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler"; exit 1; }
	$(GO) build -o $(TOOLS)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS):$$PATH protoc -I $(TELEMETRY_API) -I /usr/include \
		--go_out=$(TELEMETRY_API) --go_opt=paths=source_relative \
		--go-grpc_out=$(TELEMETRY_API) --go-grpc_opt=paths=source_relative \
		$(TELEMETRY_API)/telemetry.proto
	PATH=$(TOOLS):$$PATH protoc -I $(EXPANDER_API) \
		--go_out=$(EXPANDER_API) --go_opt=paths=source_relative \
		--go-grpc_out=$(EXPANDER_API) --go-grpc_opt=paths=source_relative \
		$(EXPANDER_API)/expander.proto

# Fuzz targets run their seed corpus in `go test`; fuzz-short also fuzzes each
# one briefly (`go test -fuzz` takes one target per run). Add yours as
# <package dir>:<FuzzName>. The budget is a count of inputs, not a duration:
# in Go 1.26 a duration can end while a worker is mid-input and fail the
# target with a bare "context deadline exceeded" on a loaded machine
# (golang/go#75804, fixed in Go 1.27); a count has no deadline to race.
# Left to their seed corpus in `go test`, for CI's time: agent/reclaim's
# FuzzFileName and FuzzReadState (their fuzz build took 7.5 minutes on 2
# cores with the plain build cached) and pkg/sim's FuzzLoadTrace and
# FuzzParseSpotScenario (about a minute each); fuzz them by hand after
# changing what they read.
FUZZ_TIME ?= 20000x
FUZZ_TARGETS := \
	./pkg/api/telemetry/v1:FuzzNodeReport \
	./pkg/api/telemetry/v1:FuzzGPUFields \
	./pkg/api/telemetry/v1:FuzzMIGProfile \
	./pkg/api/telemetry/v1:FuzzNameChecks \
	./agent/notice/aws:FuzzInstanceAction \
	./agent/notice/aws:FuzzRebalance \
	./agent/notice/aws:FuzzScheduledEvents \
	./agent/notice/gcp:FuzzPreempted \
	./agent/notice/gcp:FuzzMaintenanceEvent \
	./agent/notice/gcp:FuzzUpcomingMaintenance \
	./agent/notice/azure:FuzzScheduledEvents \
	./pkg/pricing:FuzzParseCatalog \
	./pkg/pricing:FuzzParseBucket \
	./pkg/pricing:FuzzParseSavedPools \
	./pkg/reclaim:FuzzParseNotices \
	./pkg/reclaim:FuzzParseReturns \
	./pkg/gpu:FuzzParseMIGResource \
	./pkg/gpu:FuzzParseAssignment \
	./pkg/gpu:FuzzParsePodRequest \
	./pkg/gang:FuzzOf \
	./pkg/pluginargs:FuzzDecode \
	./plugins/spotrisk:FuzzClassify \
	./plugins/spotrisk:FuzzParseRisk \
	./plugins/spotrisk:FuzzDurationAnnotation

## fuzz-short: each fuzz target for FUZZ_TIME (20000x: inputs, a few seconds each)
fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($(FUZZ_TIME))"; \
		$(GO) test -run='^$$' -fuzz="^$${t#*:}\$$" -fuzztime=$(FUZZ_TIME) $${t%%:*}; \
	done

## gpu-check: on a machine with an NVIDIA GPU, build penny-agent and print (and cross-check) its report from the real NVML; SAVE=1 writes benchmarks/results/agent-gpu-check.json, LOAD=1 also checks a GPU under a PyTorch load
gpu-check:
	hack/gpu-check.sh $(if $(SAVE),--save) $(if $(LOAD),--load)
