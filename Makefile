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

.PHONY: all build deps demo test unit integration bench clean vet install uninstall

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
	$(GO) test -count=1 -timeout 50m -v ./test/integration/ 2>&1 | tee /tmp/dsmigrate-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go'; exit $${PIPESTATUS[0]}

test: deps build vagrant-validate unit integration

bench: deps build
	@bash scripts/bench.sh

clean:
	rm -rf $(BIN)

# make install: the binaries, their man pages and shell completion (both
# written by the binaries themselves: `migrated man`, `migrated completion
# bash`) and the systemd unit, under PREFIX, staged under DESTDIR if set.
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
MANDIR      ?= $(PREFIX)/share/man
UNITDIR     ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	set -e; for c in $(CMDS); do \
		install -m 0755 $(BIN)/$$c $(DESTDIR)$(BINDIR)/$$c; \
		$(BIN)/$$c man >$(DESTDIR)$(MANDIR)/man1/$$c.1; \
		$(BIN)/$$c completion bash >$(DESTDIR)$(BASHCOMPDIR)/$$c; \
		$(BIN)/$$c completion zsh >$(DESTDIR)$(ZSHCOMPDIR)/_$$c; \
		$(BIN)/$$c completion fish >$(DESTDIR)$(FISHCOMPDIR)/$$c.fish; \
		chmod 0644 $(DESTDIR)$(MANDIR)/man1/$$c.1 $(DESTDIR)$(BASHCOMPDIR)/$$c \
			$(DESTDIR)$(ZSHCOMPDIR)/_$$c $(DESTDIR)$(FISHCOMPDIR)/$$c.fish; \
	done
	sed 's|/usr/local/bin/|$(BINDIR)/|g' scripts/systemd/migrated.service >$(DESTDIR)$(UNITDIR)/migrated.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/migrated.service

uninstall:
	for c in $(CMDS); do \
		rm -f $(DESTDIR)$(BINDIR)/$$c $(DESTDIR)$(MANDIR)/man1/$$c.1 $(DESTDIR)$(BASHCOMPDIR)/$$c \
			$(DESTDIR)$(ZSHCOMPDIR)/_$$c $(DESTDIR)$(FISHCOMPDIR)/$$c.fish; \
	done
	rm -f $(DESTDIR)$(UNITDIR)/migrated.service

.PHONY: test-vagrant vagrant-validate

# The Vagrantfile's VMs on this machine (libvirt, QEMU/TCG, a box built from
# Debian's packages): up, smoke test, integration tests, destroy (root).
test-vagrant:
	@bash scripts/vagrant/test.sh

# `vagrant validate` of the Vagrantfile (installs vagrant if it can; needs no libvirt).
vagrant-validate:
	@bash scripts/vagrant/validate.sh
