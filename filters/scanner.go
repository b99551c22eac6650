package filters

import (
	"context"
	"time"
)

// Scanner is a connection to an outside scanning service (clamd today) that
// filters of its kind use. The running generation, metrics, /readyz and
// `check --explain` see every scanner kind through this interface only.
// Implementations are safe for concurrent use.
type Scanner interface {
	// Scan examines one message. An error means no verdict (the service is
	// down, timed out, or answered nonsense): never a clean result.
	Scan(ctx context.Context, body Body) (ScanResult, error)
	// Backends reports the last known state of each backend, in
	// configuration order, without waiting for the network.
	Backends() []Backend
	// Check asks every backend now; nil when at least one answers.
	Check(ctx context.Context) error
	// Version names the signatures the backends last reported ("" when
	// unknown); a message scanned under others may be scanned again.
	Version() string
	// Close stops what the scanner started (health checks); scans after
	// Close fail.
	Close() error
}

// ScanResult is a scanner's verdict on one message.
type ScanResult struct {
	// Found names what the scanner found (a virus signature); "" when the
	// message is clean.
	Found string
	// Backend is the address (as configured) that gave the verdict.
	Backend string
	// Took is the whole scan, waiting and failed attempts included.
	Took time.Duration
}

// Backend is the state of one backend of a scanner.
type Backend struct {
	Address string // as configured
	Up      bool   // answered its last health check or scan (or not checked yet)
}

// Healthy counts the backends that are up.
func Healthy(s Scanner) int {
	n := 0
	for _, b := range s.Backends() {
		if b.Up {
			n++
		}
	}
	return n
}
