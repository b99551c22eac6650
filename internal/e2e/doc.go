// Package e2e holds popgate's end-to-end tests, and only tests: the real
// popgate binary (built from cmd/popgate by TestMain, with -race when the
// tests run with -race), started as a subprocess with a generated HCL
// configuration, driven by real third-party POP3 clients (curl, Python's
// poplib, fetchmail, mpop) against the real Dovecot and clamd of
// scripts/testenv.sh. They live here, not in cmd/popgate, so that building
// the binary is not a cost of cmd/popgate's unit tests.
//
// Run with the test environment loaded:
//
//	. "$(scripts/testenv.sh envfile)" && go test -race -count=1 ./internal/e2e/
//
// Without it the tests that need Dovecot or a client program skip loudly (or
// fail with POPGATE_REQUIRE_INTEGRATION=1), see internal/testenv.
package e2e
