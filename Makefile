# codebox: `make run` and `make test` do all the set-up on a fresh Debian 12 host (root):
# host packages, the worker image (cached by a hash of its recipe), a containerd to talk to.

SHELL      := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CACHE_DIR  ?= /var/cache/codebox
STATE_DIR  ?= /var/lib/codeboxd
GO         ?= go
RUN_FLAGS  ?= --min-idle-workers 2 --max-total-workers 10 --worker-cpu 1 --worker-ram-mb 1024
TOOLS      := $(CACHE_DIR)/tools
STATICCHECK_VERSION := v0.8.2

IMAGE_HASH     = $(shell images/hash.sh slim)
IMAGE_REF      = codebox.local/worker:slim-$(IMAGE_HASH)
IMAGE_ARCHIVE  = $(CACHE_DIR)/worker-slim-$(IMAGE_HASH).oci.tar

.PHONY: all build deps image run test test-unit test-agent test-e2e lint clean

all: build

build:
	$(GO) build -o bin/codeboxd ./cmd/codeboxd
	$(GO) build -o bin/codebox ./cmd/codebox

deps:
	@scripts/install-deps.sh

image: deps
	@images/build.sh slim "$(IMAGE_ARCHIVE)" "$(IMAGE_REF)"

run: deps image build
	addr=$$(scripts/ensure-containerd.sh); \
	exec bin/codeboxd --containerd-address "$$addr" --state-dir "$(STATE_DIR)" \
		--worker-image "$(IMAGE_REF)" --worker-image-archive "$(IMAGE_ARCHIVE)" $(RUN_FLAGS)

test: deps image build lint test-unit test-agent test-e2e

test-unit:
	$(GO) test -race -count=1 -timeout 5m $$($(GO) list ./... | grep -v /e2e)
	$(GO) test -run '^$$' -fuzz FuzzCleanDir -fuzztime 10s ./sandboxfs/

test-agent:
	/usr/bin/python3 -m unittest discover -s images/agent -p 'test_*.py' -v

test-e2e: build
	addr=$$(scripts/ensure-containerd.sh); \
	CODEBOX_E2E=1 CODEBOX_E2E_CONTAINERD="$$addr" CODEBOX_E2E_IMAGE="$(IMAGE_REF)" \
	CODEBOX_E2E_ARCHIVE="$(IMAGE_ARCHIVE)" CODEBOX_E2E_BIN="$(CURDIR)/bin/codeboxd" \
		$(GO) test -count=1 -timeout 30m -v ./e2e/

lint: $(TOOLS)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean:
	rm -rf bin
