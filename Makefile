SHELL := /bin/bash
# dsmigrate: live process migration for DSM clusters.
# make demo  - install what is missing, build, run the demo on a namespace cluster
# make test  - install what is missing, run unit and integration tests (root)
# make bench - benchmarks (ratios measured side by side)

# scripts/go runs the first Go new enough for go.mod (PATH's, else $GO_PREFIX,
# default /usr/local/go), installing one there if none is (make deps does).
export GO ?= $(CURDIR)/scripts/go
export GOFLAGS ?= -mod=mod
BIN     := bin
CMDS    := migrated dsmrun

.PHONY: all build deps demo test unit integration bench clean vet

all: build

deps:
	@bash scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet ./...

demo: deps build
	@bash scripts/demo.sh

# -race everywhere but dsmshm, whose cgo fault handler the race detector's
# own signal handling disturbs.
unit: build
	$(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v -e /test/integration -e /dsmshm)
	$(GO) test -count=1 -timeout 30m ./dsmshm/...

integration: deps build
	$(GO) test -count=1 -timeout 40m -v ./test/integration/ 2>&1 | tee /tmp/dsmigrate-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go'; exit $${PIPESTATUS[0]}

test: deps build vagrant-validate unit integration

bench: deps build
	@bash scripts/bench.sh

clean:
	rm -rf $(BIN)

.PHONY: test-vagrant vagrant-validate

# The Vagrantfile's VMs on this machine (libvirt, QEMU/TCG, a box built from
# Debian's packages): up, smoke test, integration tests, destroy (root).
test-vagrant:
	@bash scripts/vagrant/test.sh

# `vagrant validate` of the Vagrantfile (installs vagrant if it can; needs no libvirt).
vagrant-validate:
	@bash scripts/vagrant/validate.sh
