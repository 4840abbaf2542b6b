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

# The worker image's recipe (docs/ENVIRONMENTS.md): images/recipes/slim for tests and CI,
# images/recipes/full for the seed's toolbox (`make run RECIPE=images/recipes/full`), or a
# directory of your own (`make image RECIPE=dir` prints the environment entry that serves it).
RECIPE         ?= images/recipes/slim
IMAGE_NAME     = $(notdir $(abspath $(RECIPE)))
IMAGE_HASH     = $(shell images/hash.sh $(RECIPE))
IMAGE_REF      = codebox.local/worker:$(IMAGE_NAME)-$(IMAGE_HASH)
IMAGE_ARCHIVE  = $(CACHE_DIR)/worker-$(IMAGE_NAME)-$(IMAGE_HASH).oci.tar

PREFIX     ?= /usr/local
DESTDIR    ?=

.PHONY: all build deps test-deps node-deps image image-full run bench test test-unit test-agent test-clients test-e2e test-fleet test-chaos test-image-full test-systemd test-install lint install uninstall clean

all: build

# codeboxd finds the agent it mounts into workers at ../lib/codebox/agent beside itself.
build:
	scripts/build-agent.sh lib/codebox/agent
	$(GO) build -o bin/codeboxd ./cmd/codeboxd
	$(GO) build -o bin/codebox-log-sink ./cmd/codebox-log-sink
	$(GO) build -o bin/codebox ./cmd/codebox
	$(GO) build -o bin/codebox-bench ./cmd/codebox-bench

# deps: what running codeboxd and building its image take; test-deps: what the tests and
# the benchmarks drive it with besides (never installed by `make run`).
deps:
	@scripts/install-deps.sh

test-deps:
	@scripts/install-deps.sh test

# The Node clients of the end-to-end tests (playwright-core, the MCP SDK), pinned.
node-deps: test-deps
	@scripts/install-node-deps.sh

image: deps
	@images/build.sh $(RECIPE) "$(IMAGE_ARCHIVE)" "$(IMAGE_REF)"

# The full image is not part of `make test` (its first build takes long); see test-image-full.
image-full:
	@$(MAKE) --no-print-directory image RECIPE=images/recipes/full

run: deps image build
	addr=$$(scripts/ensure-containerd.sh); \
	exec bin/codeboxd --containerd-address "$$addr" --state-dir "$(STATE_DIR)" \
		--worker-image "$(IMAGE_REF)" --worker-image-archive "$(IMAGE_ARCHIVE)" $(RUN_FLAGS)

# bench: the figures of docs/benchmarks.md (table on stdout; JSON and charts in
# bench-results/). BENCH_FLAGS passes e.g. --users 25 --requests 100.
bench: test-deps image build
	addr=$$(scripts/ensure-containerd.sh); \
	bin/codebox-bench --codeboxd bin/codeboxd --containerd-address "$$addr" \
		--image "$(IMAGE_REF)" --archive "$(IMAGE_ARCHIVE)" --out bench-results --charts docs/bench $(BENCH_FLAGS)

# e2e runs the e2e tests: go test's flags in $(1), more environment in $(2). The log is
# kept in test-artifacts/e2e.log; on a failure each failed test's own messages are printed
# again at the end, where a viewer that shows the tail finds them.
e2e = addr=$$(scripts/ensure-containerd.sh); mkdir -p test-artifacts; \
	images=$$(scripts/test-images.sh "$(CACHE_DIR)"); \
	env $$images CODEBOX_E2E=1 CODEBOX_E2E_CONTAINERD="$$addr" CODEBOX_E2E_IMAGE="$(IMAGE_REF)" \
	CODEBOX_E2E_ARCHIVE="$(IMAGE_ARCHIVE)" CODEBOX_E2E_BIN="$(CURDIR)/bin/codeboxd" CODEBOX_E2E_CACHE="$(CACHE_DIR)" \
	CODEBOX_E2E_ARTIFACTS="$(CURDIR)/test-artifacts" $(2) \
		$(GO) test -count=1 -v $(1) ./e2e/ 2>&1 | tee test-artifacts/e2e.log \
		|| { scripts/test-failures.sh test-artifacts/e2e.log; exit 1; }

test: test-deps node-deps image build lint test-unit test-agent test-clients test-systemd test-install test-e2e

test-unit:
	$(GO) test -race -count=1 -timeout 5m $$($(GO) list ./... | grep -v /e2e)
	# A count, not a duration: a duration races go1.26's fuzz coordinator at its end
	# (go.dev/issue/75804) and fails with "context deadline exceeded" under load.
	$(GO) test -run '^$$' -fuzz FuzzCleanDir -fuzztime 300000x -parallel 2 ./sandboxfs/

test-agent: test-deps
	/usr/bin/python3 -m unittest discover -s images/agent -p 'test_*.py' -v

# The Python client against a stub server (its live tests are part of test-e2e).
test-clients: test-deps
	PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m unittest discover -s clients/python/tests -p 'test_unit.py' -v

test-e2e: build node-deps
	$(call e2e,-timeout 30m -skip TestFullImage)

# Three codeboxd nodes behind HAProxy's consistent hashing on this host, each with its own
# containerd namespace, bridge, subnet, state and ports (also part of test-e2e).
test-fleet: build
	$(call e2e,-timeout 15m -run TestFleet)

# The faults of docs/ARCHITECTURE.md under the seed load (also part of test-e2e): codeboxd
# killed, containerd restarted, a task killed, a worker out of memory; codeboxd killed while
# it makes workers.
test-chaos: build
	$(call e2e,-timeout 15m -run 'TestChaos|TestContainerdRestart|TestSIGKILLWhileCreating')

# One real task per capability family in a full worker, through the API; writes
# docs/CAPABILITIES.md from what the image holds.
test-image-full: RECIPE = images/recipes/full
test-image-full: test-deps image build
	$(call e2e,-timeout 30m -run TestFullImage,CODEBOX_E2E_FULL=1 CODEBOX_CAPABILITIES_OUT="$(CURDIR)/docs/CAPABILITIES.md")

# The unit must pass systemd-analyze verify without a warning (its exit status alone
# ignores parse errors); then it runs under a real systemd: a Debian tree booted with
# systemd-nspawn, codebox installed with `make install`, started, executed, restarted
# (scripts/systemd-boot/test.sh).
test-systemd: test-deps build image
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	sed "s|$(PREFIX)/bin/codeboxd|$(CURDIR)/bin/codeboxd|g" systemd/codeboxd.service > "$$tmp/codeboxd.service"; \
	out=$$(systemd-analyze verify "$$tmp/codeboxd.service" 2>&1) || { echo "$$out"; exit 1; }; \
	if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; echo "systemd-analyze verify: ok"
	CACHE_DIR="$(CACHE_DIR)" scripts/systemd-boot/test.sh

# install and uninstall into a scratch root: every file lands, and goes again.
test-install: build image
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(MAKE) -s install DESTDIR="$$tmp" >/dev/null; \
	for f in $(PREFIX)/bin/codeboxd $(PREFIX)/bin/codebox-log-sink $(PREFIX)/bin/codebox /etc/systemd/system/codeboxd.service \
	         /etc/default/codeboxd /var/lib/codeboxd/images/worker-$(IMAGE_NAME).oci.tar $(PREFIX)/share/doc/codebox/README.md \
	         $(PREFIX)/lib/codebox/agent/codebox_agent.py $(PREFIX)/lib/codebox/agent/tini $(PREFIX)/lib/codebox/agent/vendor/codebox_websockets/frames.py; do \
		[ -s "$$tmp$$f" ] || { echo "install: $$f missing"; exit 1; }; done; \
	grep -q '^CODEBOX_WORKER_IMAGE=$(IMAGE_REF)$$' "$$tmp/etc/default/codeboxd" || { echo "install: image not configured"; exit 1; }; \
	[ "$$(stat -c %a "$$tmp/etc/default/codeboxd")" = 600 ] || { echo "install: /etc/default/codeboxd (where AUTH_TOKEN goes) is not 0600"; exit 1; }; \
	$(MAKE) -s uninstall DESTDIR="$$tmp" >/dev/null; \
	left=$$(find "$$tmp" -type f ! -path '*/etc/default/*'); \
	if [ -n "$$left" ]; then echo "uninstall left: $$left"; exit 1; fi; echo "install/uninstall: ok"

# install: binaries, the agent, systemd unit, settings, the worker image archive codeboxd imports on
# its first start. Settings already in /etc/default/codeboxd are kept, but for the image.
install: build image
	install -D -m 0755 bin/codeboxd $(DESTDIR)$(PREFIX)/bin/codeboxd
	install -D -m 0755 bin/codebox-log-sink $(DESTDIR)$(PREFIX)/bin/codebox-log-sink
	install -D -m 0755 bin/codebox $(DESTDIR)$(PREFIX)/bin/codebox
	install -D -m 0644 systemd/codeboxd.service $(DESTDIR)/etc/systemd/system/codeboxd.service
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/codebox/README.md
	mkdir -p $(DESTDIR)$(PREFIX)/lib/codebox
	scripts/build-agent.sh $(DESTDIR)$(PREFIX)/lib/codebox/agent
	install -D -m 0600 "$(IMAGE_ARCHIVE)" $(DESTDIR)/var/lib/codeboxd/images/worker-$(IMAGE_NAME).oci.tar
	# AUTH_TOKEN may go in there: root's alone, an older install's file too.
	[ -e $(DESTDIR)/etc/default/codeboxd ] || install -D -m 0600 systemd/codeboxd.default $(DESTDIR)/etc/default/codeboxd
	chmod 0600 $(DESTDIR)/etc/default/codeboxd
	sed -i '/^CODEBOX_WORKER_IMAGE=/d; /^CODEBOX_WORKER_IMAGE_ARCHIVE=/d' $(DESTDIR)/etc/default/codeboxd
	printf 'CODEBOX_WORKER_IMAGE=%s\nCODEBOX_WORKER_IMAGE_ARCHIVE=%s\n' "$(IMAGE_REF)" /var/lib/codeboxd/images/worker-$(IMAGE_NAME).oci.tar >> $(DESTDIR)/etc/default/codeboxd
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; echo "now: systemctl enable --now codeboxd"; fi

# uninstall: stops the service, removes every worker and what install put; keeps
# /etc/default/codeboxd and the token in /var/lib/codeboxd.
uninstall:
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now codeboxd 2>/dev/null || true; fi
	if [ -z "$(DESTDIR)" ] && [ -x $(PREFIX)/bin/codeboxd ]; then \
		(set -a; [ -r /etc/default/codeboxd ] && . /etc/default/codeboxd; set +a; $(PREFIX)/bin/codeboxd cleanup --all) || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/codeboxd $(DESTDIR)$(PREFIX)/bin/codebox-log-sink $(DESTDIR)$(PREFIX)/bin/codebox $(DESTDIR)/etc/systemd/system/codeboxd.service
	rm -f $(DESTDIR)$(PREFIX)/share/doc/codebox/README.md $(DESTDIR)/var/lib/codeboxd/images/worker-$(IMAGE_NAME).oci.tar
	rm -rf $(DESTDIR)$(PREFIX)/lib/codebox
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The CLI depends on api alone: it builds for other systems than the daemon's.
lint: test-deps $(TOOLS)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	GOOS=darwin GOARCH=arm64 $(GO) build -o /dev/null ./cmd/codebox
	GOOS=linux GOARCH=arm64 $(GO) build -o /dev/null ./cmd/codebox
	# SC1091: scripts read the system's own /etc/os-release, which shellcheck cannot follow.
	shellcheck -e SC1091 $$(git ls-files '*.sh') scripts/systemd-boot/nspawn-prep .ci/run

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

clean:
	rm -rf bin lib test-artifacts bench-results
