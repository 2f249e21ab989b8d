# Courier: the entry point for building, testing and installing.
#   make build    binaries into bin/
#   make test     the whole test suite, with the race detector (what CI runs)
#   make bench    the benchmarks whose numbers the README quotes
#   make bench-multi  only the multi-instance (Redis) ones, with medians
#   make bench-e2e  only the end-to-end (sidecar) ones, with medians
#   make lint     gofmt check and go vet
#   make vendor-check  the light client's vendored npm files are what package-lock.json gives (needs npm)
#   make install  binaries, service units and example configs (PREFIX, DESTDIR)

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR  ?= /etc/systemd/system
BENCHCOUNT ?= 3
CMDS     := courier courier-relay devnode

.PHONY: all build test bench bench-multi bench-e2e lint vendor-check install clean demo

all: build

build:
	@mkdir -p bin
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(CMDS))

test:
	$(GO) test -race -count=1 -timeout 9m ./...

# Benchmarks run without -race, one package at a time, BENCHCOUNT times
# each; quote medians. The relay's load benchmarks (a relay child process
# whose CPU is measured apart from the load clients) print their medians
# next to the targets at the end of their part. IdleConnections and
# EndToEnd are fixed experiments (10,000 connections; a 30 s window), so
# they run once per count.
RELAYBENCH := bin/bench-relay.txt
bench:
	@mkdir -p bin
	@uptime
	$(GO) test -p 1 -run '^$$' -bench 'Throughput|Sustained' -benchtime 40000x -count $(BENCHCOUNT) ./relay/ > $(RELAYBENCH) || { cat $(RELAYBENCH); exit 1; }
	$(GO) test -p 1 -run '^$$' -bench 'PublishDeliverLatency' -benchtime 3000x -count $(BENCHCOUNT) ./relay/ >> $(RELAYBENCH) || { cat $(RELAYBENCH); exit 1; }
	@cat $(RELAYBENCH); awk -f scripts/benchmedian.awk $(RELAYBENCH); uptime
	$(GO) test -p 1 -run '^$$' -bench IdleConnections -benchtime 1x -count $(BENCHCOUNT) ./relay/
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 2s -count $(BENCHCOUNT) ./relay/sqlitestore/ ./sidecar/queue/
	$(MAKE) bench-multi
	$(MAKE) bench-e2e

# Several relay instances on one Redis (issue 9): two instances as child
# processes on a redis-server the benchmark starts (appendonly yes,
# appendfsync always); publisher on one, acking subscriber on the other,
# 1 KiB. CrossInstance: as fast as it goes with 256 publishes awaiting
# their result, and at the target rate (10,000/s); CrossInstancePush: one
# message at a time, same instance vs across; CrossInstanceIdle: 10,000
# idle subscribers over the two. Medians of BENCHCOUNT runs, next to the
# targets. With BENCHCOUNT=3: 51 s on a quiet 2-core machine, 134 s at a
# load average of 12-15.
MULTIBENCH ?= $(or $(TMPDIR),/tmp)/courier-multi-bench.txt
bench-multi:
	@uptime
	$(GO) test -p 1 -run '^$$' -bench 'CrossInstance$$' -benchtime 20000x -count $(BENCHCOUNT) ./relay/ > $(MULTIBENCH) || { cat $(MULTIBENCH); exit 1; }
	$(GO) test -p 1 -run '^$$' -bench 'CrossInstancePush' -benchtime 2000x -count $(BENCHCOUNT) ./relay/ >> $(MULTIBENCH) || { cat $(MULTIBENCH); exit 1; }
	$(GO) test -p 1 -run '^$$' -bench 'CrossInstanceIdle' -benchtime 1x -count $(BENCHCOUNT) ./relay/ >> $(MULTIBENCH) || { cat $(MULTIBENCH); exit 1; }
	@cat $(MULTIBENCH); awk -f scripts/benchmedian.awk $(MULTIBENCH); uptime

# The sidecar's targets (issue 8): node A -> sidecar A -> relay -> sidecar B
# -> node B, 1 KiB, durability on; 32 concurrent posters for 10 s, and one
# message at a time. Medians of BENCHCOUNT runs, next to the targets.
E2EBENCH ?= $(or $(TMPDIR),/tmp)/courier-e2e-bench.txt
bench-e2e:
	@uptime
	$(GO) test -p 1 -run '^$$' -bench EndToEnd -benchtime 1x -count $(BENCHCOUNT) -timeout 30m ./bench/ -args -e2e.posters 32 -e2e.window 10s > $(E2EBENCH) || { cat $(E2EBENCH); exit 1; }
	@cat $(E2EBENCH); awk -f scripts/benchmedian.awk $(E2EBENCH); uptime

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

vendor-check:
	relay/webclient/vendor/update.sh --check

install: build
	install -D -m 0755 bin/courier $(DESTDIR)$(BINDIR)/courier
	install -D -m 0755 bin/courier-relay $(DESTDIR)$(BINDIR)/courier-relay
	install -D -m 0644 systemd/courier.service $(DESTDIR)$(UNITDIR)/courier.service
	install -D -m 0644 systemd/courier-relay.service $(DESTDIR)$(UNITDIR)/courier-relay.service
	install -D -m 0644 systemd/courier-relay@.service $(DESTDIR)$(UNITDIR)/courier-relay@.service
	@# Never overwrite an operator's edited config.
	@for f in courier.toml:config.example.toml courier-relay.toml:courier-relay.example.toml; do \
		dst=$(DESTDIR)$(SYSCONFDIR)/courier/$${f%%:*}; src=$${f##*:}; \
		if [ -e "$$dst" ]; then echo "kept existing $$dst"; else install -D -m 0644 "$$src" "$$dst" && echo "installed $$dst"; fi; \
	done

clean:
	rm -rf bin

# One command that shows Courier working: relay, two sidecars, stand-in
# nodes on loopback; messages A -> B INDIRECT, then a light client writing
# to a node with Courier (INDIRECT) and to one without (the relay's OFFLINE
# bridge), both delays printed; everything stopped.
demo:
	$(GO) run ./cmd/courier-demo
