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

## manifests: regenerate deploy/**/*.yaml from their templates and configs
manifests:
	$(GO) run ./hack/manifests

## tools: binaries built from Go modules that tests need
tools:

clean:
	rm -rf $(BIN)
