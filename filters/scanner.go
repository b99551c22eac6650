package filters

import (
	"cmp"
	"context"
	"slices"
	"strings"
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
	// Where names the part of the message Found was found in, when the
	// scanner was given the message part by part (clamav's scan =
	// "parts"): "part 3 (application/zip, invoice.zip)"; "" otherwise.
	Where string
	// Backend is the address (as configured) that gave the verdict.
	Backend string
	// Took is the whole scan, waiting and failed attempts included.
	Took time.Duration
	// Spam is a spam scanner's assessment (rspamd); nil for other kinds.
	Spam *SpamReport
}

// SpamReport is what a spam scanner says of a message. Filters of a spam
// kind decide with it; the scanner only reports.
type SpamReport struct {
	// Score and Required are the message's score and the scanner's own
	// threshold for its strongest action.
	Score, Required float64
	// Action is the scanner's own recommendation, as it names it (rspamd:
	// "no action", "greylist", "add header", "rewrite subject",
	// "soft reject", "reject").
	Action string
	// Symbols are the rules that matched, by name.
	Symbols []SpamSymbol
	// AddHeaders and RemoveHeaders are the header changes the scanner asks
	// for (rspamd's milter block: Authentication-Results, X-Spam, ...).
	AddHeaders    []HeaderField
	RemoveHeaders []string
	// Subject is the scanner's rewritten subject, for "rewrite subject".
	Subject string
	// Skipped: the scanner did not examine the message (its own limits or
	// settings); a filter treats it as no verdict.
	Skipped bool
}

// StrongestSymbols returns a copy of the symbols, the highest score first
// (by name among equal scores), the order in which people read them.
func (r *SpamReport) StrongestSymbols() []SpamSymbol {
	syms := slices.Clone(r.Symbols)
	slices.SortStableFunc(syms, func(a, b SpamSymbol) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return syms
}

// SpamSymbol is one matched rule of a SpamReport.
type SpamSymbol struct {
	Name    string
	Score   float64
	Options []string
}

// HeaderField is a header field name and its (unfolded) value.
type HeaderField struct {
	Name, Value string
}

// Backend is the state of one backend of a scanner.
type Backend struct {
	Address string // as configured
	Up      bool   // answered its last health check or scan (or not checked yet)
	// Problem is a misconfiguration the scanner found on the backend
	// (clamav: clamd's StreamMaxLength below max_size); "" when none is
	// known.
	Problem string
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
