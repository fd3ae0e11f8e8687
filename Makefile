# addond — see README.md. Every target works on a fresh Debian 12 machine
# with Go; `make test` installs or builds what its tests need.

SHELL    := /bin/bash
GO       ?= go
VERSION  ?= 0.1.0-dev+$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/addond/addond/daemon.Version=$(VERSION) -X github.com/addond/addond/capabilities.Version=$(VERSION)
GOBUILD  := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'

# MinIO for the S3 tests and the benchmark: built once into a cache outside
# the repository and reused.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
TEST_CACHE    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/addond-test
MINIO_BIN     := $(TEST_CACHE)/minio-$(MINIO_VERSION)/minio
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2

BINARIES := addond addonctl addond-updater
EXAMPLES := hello pingsweep probe ticker

.PHONY: all build demo test test-stress vmtest faults soak unit deps minio bench fleet-sim lint fuzz fuzz-short proto packages clean

all: build

build:
	$(GOBUILD) -o bin/ $(addprefix ./cmd/,$(BINARIES))
	$(GOBUILD) -o bin/examples/ $(addprefix github.com/addond/addond/sdk/examples/,$(EXAMPLES))

# The main job on the embedded default: a file:// store in a temp dir.
demo: build
	bash docs/demo.sh

# Host packages the tests use (idempotent; needs root, as CI has). nginx
# and squid are for the http(s) store's tests, which start their own on
# free ports; prometheus is for promtool, which checks and unit-tests the
# alert rules of packaging/monitoring: the services the packages start are
# stopped and disabled.
deps:
	@missing=""; for p in openssl util-linux systemd-container mmdebstrap libcap2-bin rpm lintian qemu-system-x86 e2fsprogs gcc libc6-dev nginx-light squid prometheus; do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		for s in nginx squid prometheus; do case " $$missing " in *" $$s"*) systemctl disable --now $$s >/dev/null 2>&1 || true;; esac; done; \
	fi

minio: $(MINIO_BIN)
$(MINIO_BIN):
	@echo "building MinIO $(MINIO_VERSION) into $(dir $@) (once, about 2 minutes)"
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) $(GO) install github.com/minio/minio@$(MINIO_VERSION)

# Everything, nothing skipped: ends with "tests: N passed, M failed, K skipped".
# Two go test runs share the two cores, one package at a time each: the
# agent's packages under the race detector (RACE_PKGS; cmd/addond's
# end-to-end tests then run a race-enabled addond that stops at its first
# race), and the rest, the VM tier first. The two runs' lengths are
# balanced (about 15 min each here): packaging joins the race run, and the
# service and timer backends' machine tests (RACE_PLAIN) run in the other;
# their code still runs race-enabled inside cmd/addond's addond.
# After the go tests, every fuzz target for 6s (fuzz-short): a crasher
# fails `make test` too. The summary line is held back so that it stays
# the last line; before it, the ten slowest tests. The go test -json log
# stays in TEST_LOG.
TEST_LOG  ?= $(TEST_CACHE)/test.json
RACE_PKGS := ./cmd/addond ./packaging ./cmd/... ./daemon/... ./supervisors/...
RACE_PLAIN := github.com/addond/addond/supervisors/service github.com/addond/addond/supervisors/timer
# The add-on SDK is its own module (sdk/go.mod): its tests run in the plain
# run, from that module, against its own dependencies, as an add-on
# author's would.
test: deps build minio
	@set -o pipefail; sum=$$(mktemp); runs=$$(mktemp -d); mkdir -p $(dir $(TEST_LOG)); \
	export ADDOND_TEST_STRICT=1 ADDOND_MINIO_BIN=$(MINIO_BIN); \
	race=$$($(GO) list $(RACE_PKGS) | grep -vxF $(addprefix -e ,$(RACE_PLAIN))); \
	plain=$$($(GO) list ./vmtest/vm ./... | grep -vxF "$$race"); \
	{ $(GO) test -json -count=1 -timeout 30m -p 1 $$plain; \
	  $(GO) test -C sdk -json -count=1 -timeout 10m -p 1 ./...; } >$$runs/plain.json 2>&1 & pid=$$!; \
	$(GO) test -race -json -count=1 -timeout 30m -p 1 $$race >$$runs/race.json 2>&1; \
	wait $$pid; cat $$runs/plain.json $$runs/race.json | tee $(TEST_LOG) | \
		$(GO) run ./vmtest/testsum -strict -slowest 10 | tee $$sum | sed '$$d'; \
	rc=$$?; rm -rf $$runs; $(MAKE) --no-print-directory fuzz-short; frc=$$?; \
	tail -n 1 $$sum; rm -f $$sum; [ $$rc = 0 ] && [ $$frc = 0 ]

# The timing-sensitive packages, each test STRESS_N times (-count), while
# stress-ng keeps every core busy: a test that passes only on an idle
# machine fails here. Ends with each test's pass count, then the usual
# "tests: N passed, ..." line; docs/RELIABILITY.md has the last figures.
# STRESS_PKGS and STRESS_RUN (a -run pattern) narrow it.
STRESS_N    ?= 5
STRESS_PKGS ?= ./cmd/addond ./daemon/... ./supervisors/...
STRESS_RUN  ?= .
STRESS_LOG  ?= $(TEST_CACHE)/stress.json
test-stress: deps build minio
	@command -v stress-ng >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng; }
	@set -o pipefail; mkdir -p $(dir $(STRESS_LOG)); \
	stress-ng --cpu $$(nproc) --cpu-method matrixprod --quiet --timeout 12h & load=$$!; \
	trap 'kill $$load 2>/dev/null; wait $$load 2>/dev/null' EXIT; \
	echo "stress-ng: $$(nproc) CPU workers (pid $$load); $(STRESS_PKGS) -count=$(STRESS_N) -run '$(STRESS_RUN)'"; \
	start=$$(date +%s); \
	ADDOND_TEST_STRICT=1 ADDOND_MINIO_BIN=$(MINIO_BIN) \
		$(GO) test -json -count=$(STRESS_N) -timeout 6h -run '$(STRESS_RUN)' $(STRESS_PKGS) 2>&1 | tee $(STRESS_LOG) | \
		$(GO) run ./vmtest/testsum -strict -counts; rc=$$?; \
	echo "test-stress took $$(( $$(date +%s) - start )) s under load; go test -json log: $(STRESS_LOG)"; exit $$rc

# The VM tier alone (vmtest/vm, also part of `make test`): the deb `make
# packages` put in dist/, installed and driven in Debian 12 VMs under qemu.
# Ends with "tests: N passed, M failed, K skipped".
vmtest: deps minio packages
	@set -o pipefail; \
	ADDOND_TEST_STRICT=1 ADDOND_MINIO_BIN=$(MINIO_BIN) \
	ADDOND_VM_DEB='$(CURDIR)/dist/addond_$(subst -,~,$(VERSION))_amd64.deb' \
		$(GO) test -json -count=1 -timeout 30m ./vmtest/vm 2>&1 | $(GO) run ./vmtest/testsum -strict -v

# The fault-injection suite alone (also part of `make test`): store faults
# through a fault proxy in front of MinIO, kill -9 at each staging step and
# in a rollback, manager reexec, stdout floods, forking add-ons and 200
# add-ons in booted Debian machines, the updater missing, a clock jump in a
# VM. docs/RELIABILITY.md has the matrix. Ends with "tests: N passed, ...".
FAULTS := ^(TestFault.*|TestCrashConsistency|TestCapsInMachine|TestClockJump)$$
FAULTS_LOG ?= $(TEST_CACHE)/faults.json
faults: deps build minio
	@set -o pipefail; mkdir -p $(dir $(FAULTS_LOG)); \
	ADDOND_TEST_STRICT=1 ADDOND_MINIO_BIN=$(MINIO_BIN) \
		$(GO) test -json -count=1 -timeout 30m -run '$(FAULTS)' ./cmd/addond ./vmtest/vm 2>&1 | tee $(FAULTS_LOG) | \
		$(GO) run ./vmtest/testsum -strict -v; rc=$$?; \
	echo "every case's output (go test -json; its measurements are the t.Logf lines): $(FAULTS_LOG)"; exit $$rc

# The soak (a short one is part of `make test`): assignment churn, add-on
# kills, store outages and artifact faults for SOAK, then addond's RSS,
# goroutines and fds must be back within 10 % of their start.
# SOAKSEED replays a run.
SOAK ?= 10m
soak: deps build minio
	ADDOND_TEST_STRICT=1 ADDOND_MINIO_BIN=$(MINIO_BIN) ADDOND_SOAK_DURATION=$(SOAK) ADDOND_SOAK_SEED=$(SOAKSEED) \
		$(GO) test -count=1 -timeout 60m -run '^TestSoak$$' -v ./cmd/addond

# Unit tests only (no MinIO needed; S3 tests skip with the reason).
unit:
	$(GO) test ./... && $(GO) test -C sdk ./...

# The fleet-scale simulation (issue 14; docs/FLEET.md has the figures):
# FLEETSIM_AGENTS agents, each the daemon's code with an in-memory
# supervisor, against one real MinIO through a counting proxy: idle cost
# per agent, a 3-wave rollout, a bad version halted after its canary, and
# addonctl fleet status. About 35 minutes with the defaults (a 60 s poll
# and probation); FLEETSIM_FLAGS adds flags (go run ./vmtest/fleetsim -h).
FLEETSIM_AGENTS ?= 2000
FLEETSIM_FLAGS  ?=
FLEETSIM_JSON   ?= $(TEST_CACHE)/fleetsim.json
fleet-sim: deps build minio
	@mkdir -p $(dir $(FLEETSIM_JSON))
	ADDOND_MINIO_BIN=$(MINIO_BIN) $(GO) run ./vmtest/fleetsim -addonctl bin/addonctl -agents $(FLEETSIM_AGENTS) -json $(FLEETSIM_JSON) $(FLEETSIM_FLAGS)

# Both benchmarks, against a real MinIO; see docs/BENCHMARKS.md.
bench: build minio
	cd bench && ADDOND_MINIO_BIN=$(MINIO_BIN) $(GO) run ./cmd/stagebench -addond ../bin/addond $(BENCHFLAGS)
	cd bench && ADDOND_MINIO_BIN=$(MINIO_BIN) $(GO) run ./cmd/runbench -addond ../bin/addond
	cd bench && $(GO) test -count=1 -timeout 20m -run '^TestUnitStartStop$$' -v ./unitbench/

# Fuzzing (scripts/fuzz.sh): every fuzz target of the module in turn, each
# for FUZZTIME with FUZZPARALLEL workers, then a markdown table of the runs
# (package, target, fuzz time, executions, new corpus entries, result).
# A crasher lands in <pkg>/testdata/fuzz/<FuzzName>/ and fails the run.
# `make fuzz-short` (6s each, part of `make test`) keeps the targets honest.
# FUZZPKGS (packages, in the order to run them), FUZZMATCH (a regexp of
# target names) and FUZZREPORT (a file for the table) pass through.
FUZZTIME     ?= 3m
FUZZPARALLEL ?= 1
export FUZZPKGS FUZZMATCH FUZZREPORT
fuzz:
	GO='$(GO)' FUZZTIME='$(FUZZTIME)' FUZZPARALLEL='$(FUZZPARALLEL)' bash scripts/fuzz.sh

# Two targets at a time, one worker each: both cores, about 2.5 minutes.
# Every seed and corpus entry also runs in the go tests themselves.
fuzz-short:
	GO='$(GO)' FUZZTIME=6s FUZZPARALLEL=1 FUZZJOBS=2 bash scripts/fuzz.sh

# Regenerate sdk/proto with the pinned generators (protoc from Debian's
# protobuf-compiler).
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0
PROTO_BIN          := $(TEST_CACHE)/protogen
proto:
	@command -v protoc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler; }
	GOBIN=$(PROTO_BIN) $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(PROTO_BIN) $(GO) install $(PROTOC_GEN_GO_GRPC)
	PATH=$(PROTO_BIN):$$PATH protoc --go_out=. --go_opt=module=github.com/addond/addond \
		--go-grpc_out=. --go-grpc_opt=module=github.com/addond/addond sdk/proto/addon.proto

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd sdk && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd bench && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	$(GO) vet -tags manpages ./cmd/... ./internal/manpage
	$(GO) mod tidy -diff && cd sdk && $(GO) mod tidy -diff
	@cmp -s LICENSE sdk/LICENSE || { echo "sdk/LICENSE differs from LICENSE"; exit 1; }

# deb and rpm packages for amd64 and arm64, and the pingsweep add-on's from
# the add-on template, into dist/ (packaging/README.md). nfpm and the man
# page generator come from their own module, packaging/tools.
packages:
	VERSION='$(VERSION)' GO='$(GO)' OUT=dist bash packaging/build.sh

clean:
	rm -rf bin dist
