# popgate — see README.md. `make demo` and `make test` are the quick start.
GO       ?= go
BIN      := bin/popgate
TESTENV  := scripts/testenv.sh
# Each fuzz target runs for this long in `make fuzz`.
FUZZTIME ?= 30s
# How long `make soak` keeps 200 sessions with random faults going; its go
# test flags (no -race by default: the race detector's memory never shrinks,
# so only without it is RSS checked; make test runs a short soak with -race).
SOAK_TIME ?= 3m
SOAK_FLAGS ?=
# The version `make build` stamps into the binary (popgate version, the
# X-Popgate-Version header): the release tag, or the commit when untagged.
# An unstamped `go build` falls back to the VCS revision in Go's build info.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: build test vet lint fuzz fuzz-short bench soak demo clean testenv-up testenv-down screenshot

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/popgate

# demo runs `popgate demo`, which starts a clamd of its own (examples/clamd's
# EICAR-only signatures, a unix socket in a temp dir, stopped with the demo).
# First, as root, clamav-daemon is installed from Debian when clamd is missing
# (POPGATE_DEMO_INSTALL=no skips that); without root it says what is missing.
demo: build
	@$(TESTENV) demo-deps
	$(BIN) demo

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# test starts the real Dovecot and clamd of scripts/testenv.sh for the run,
# then runs vet, gofmt and every test with the race detector.
# An environment that was already running (someone else's) is left running.
WITH_TESTENV = set -e; \
	  if ! $(TESTENV) status >/dev/null 2>&1; then trap '$(TESTENV) down' EXIT; fi; \
	  $(TESTENV) up; \
	  . "$$($(TESTENV) envfile)"

# Tests write their summary lines (fault matrix, soak) to POPGATE_TEST_SUMMARY:
# go test shows the output of a passing package only with -v.
test: lint fuzz-short
	@$(WITH_TESTENV); export POPGATE_TEST_SUMMARY=$$(mktemp); rc=0; \
	  $(GO) test -race -count=1 -timeout 30m ./... || rc=$$?; \
	  cat "$$POPGATE_TEST_SUMMARY"; rm -f "$$POPGATE_TEST_SUMMARY"; exit $$rc

# soak runs the soak test (internal/e2e TestSoak) for SOAK_TIME instead of the
# short version in `make test`.
soak:
	@$(WITH_TESTENV); POPGATE_SOAK_TIME=$(SOAK_TIME) $(GO) test $(SOAK_FLAGS) -count=1 -timeout 60m -run '^TestSoak$$' -v ./internal/e2e/

testenv-up:
	$(TESTENV) up

testenv-down:
	$(TESTENV) down

# fuzz runs every fuzz target (each `func Fuzz...` in a _test.go file) for
# FUZZTIME and ends with one line per target: `fuzz: <pkg> <target> <N> execs`.
# A failure prints that run's output (the crasher is saved under the
# package's testdata/fuzz/<target>/) and stops.
fuzz:
	@set -e; log=$$(mktemp); sum=$$(mktemp); trap 'rm -f $$log $$sum' EXIT; \
	for dir in $$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go | sed 's/^func //'); do \
	    echo "== $$dir $$f ($(FUZZTIME))"; \
	    if ! $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 10s $$dir >$$log 2>&1; then \
	      cat $$log; echo "fuzz: $$dir $$f FAILED"; exit 1; fi; \
	    n=$$(grep -o 'execs: [0-9]*' $$log | tail -1 | cut -d' ' -f2); \
	    echo "fuzz: $$dir $$f $${n:-0} execs" | tee -a $$sum; \
	  done; done; \
	cat $$sum

# fuzz-short is CI's share of fuzzing (part of `make test`): 10000 executions
# per target (up to ~10 s each), about 1 min in all with a warm build cache, 2 min
# cold. A count, not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with a spurious "context deadline exceeded" when the
# machine is loaded (golang/go#75804, fixed in Go 1.27); a count has no
# deadline to race. (`make fuzz FUZZTIME=30000x` works the same way.)
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10000x

bench: build
	@$(WITH_TESTENV); $(GO) run ./scripts/bench -out docs/PERFORMANCE.md

# screenshot saves the release link's confirmation page, for a sample
# message, as docs/release-page.png: headless Chromium (Debian's chromium
# package) renders it.
screenshot:
	POPGATE_SCREENSHOT=$(CURDIR)/docs/release-page.png $(GO) test -count=1 -run '^TestScreenshotReleasePage$$' ./filters/quarantine/web/

clean:
	rm -rf bin
