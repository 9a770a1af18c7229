# Penny. `make demo` and `make test` are the two set-up commands (README).
SHELL := /bin/bash
GO    ?= go
BIN   := $(CURDIR)/bin

.PHONY: all build test demo lint tools generate fuzz-short gpu-check

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

test:
	$(GO) test ./...
	$(MAKE) fuzz-short

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# --- telemetry API (pkg/api/telemetry/v1) -------------------------------------
# The generated Go is committed, so building and CI never need protoc. To
# regenerate: apt-get install protobuf-compiler (Debian's protoc, which also
# ships google/protobuf/*.proto), then `make generate`. protoc-gen-go is the
# version go.mod pins for the protobuf runtime, so generator and runtime match;
# protoc-gen-go-grpc is pinned here.
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
TOOLS := $(BIN)/tools
TELEMETRY_API := pkg/api/telemetry/v1

generate:
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler"; exit 1; }
	$(GO) build -o $(TOOLS)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS):$$PATH protoc -I $(TELEMETRY_API) -I /usr/include \
		--go_out=$(TELEMETRY_API) --go_opt=paths=source_relative \
		--go-grpc_out=$(TELEMETRY_API) --go-grpc_opt=paths=source_relative \
		$(TELEMETRY_API)/telemetry.proto

# Fuzz targets run their seed corpus in `go test`; fuzz-short also fuzzes each
# one briefly (`go test -fuzz` takes one target per run). Add yours as
# <package dir>:<FuzzName>.
FUZZ_TIME ?= 5s
FUZZ_TARGETS := \
	./pkg/api/telemetry/v1:FuzzNodeReport \
	./pkg/api/telemetry/v1:FuzzGPUFields \
	./pkg/api/telemetry/v1:FuzzMIGProfile

fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($(FUZZ_TIME))"; \
		$(GO) test -run='^$$' -fuzz="^$${t#*:}\$$" -fuzztime=$(FUZZ_TIME) $${t%%:*}; \
	done
