# Penny. The two set-up commands are `make demo` and `make test` (README).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin
# Tests that start servers put their tools (etcd for scheduler_perf) on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: all build demo test lint manifests tools clean

all: build

## build: bin/penny-scheduler, bin/penny (and every other command under cmd/)
build:
	$(GO) build -o $(BIN)/ ./cmd/...

## demo: a local cluster with simulated GPU nodes, the demo workload, and what Penny did
demo:
	$(GO) build -o $(BIN)/penny ./cmd/penny
	$(BIN)/penny up --demo --exit-after-demo

## test: unit, integration (real kube-apiserver + etcd + KWOK) and end-to-end tests
test: tools
	$(GO) test -count=1 -timeout 25m ./...

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The openb trace sits in shared/ beside the main checkout (CI: ../shared).
OPENB ?= $(abspath $(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)/../../shared/data/openb)
SIM_POLICIES ?= random,dotprod,clustering,packing,bestfit,fgd
SIM_RESULTS  ?= benchmarks/results

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

## manifests: regenerate deploy/**/*.yaml from their templates and configs
manifests:
	$(GO) run ./hack/manifests

## tools: binaries built from Go modules that tests need
tools:

clean:
	rm -rf $(BIN)
