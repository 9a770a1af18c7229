# Penny. `make demo` and `make test` are the two set-up commands (README).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin

.PHONY: all build test demo lint tools

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

test:
	$(GO) test ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The openb trace sits in shared/ beside the main checkout (CI: ../shared).
OPENB ?= $(abspath $(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)/../../shared/data/openb)
SIM_POLICIES ?= random,dotprod,clustering,packing,bestfit,fgd
SIM_RESULTS  ?= benchmarks/results

.PHONY: bench-sim
# bench-sim reproduces the FGD paper's baselines on openb default (fill
# protocol, seeds 42..51) and times a replay; results in $(SIM_RESULTS).
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
