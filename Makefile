# popgate — see README.md. `make demo` and `make test` are the quick start.
GO       ?= go
BIN      := bin/popgate
TESTENV  := scripts/testenv.sh
# Each fuzz target runs for this long in `make fuzz`.
FUZZTIME ?= 30s

.PHONY: build test vet lint fuzz bench demo clean testenv-up testenv-down

build:
	$(GO) build -o $(BIN) ./cmd/popgate

demo: build
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

test: lint
	@$(WITH_TESTENV); $(GO) test -race -count=1 -timeout 30m ./...

testenv-up:
	$(TESTENV) up

testenv-down:
	$(TESTENV) down

# fuzz runs every fuzz target of every package for FUZZTIME each.
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; done

bench: build
	@$(WITH_TESTENV); $(GO) run ./scripts/bench -out docs/PERFORMANCE.md

clean:
	rm -rf bin
