// Package filters defines the contract between the proxy and the message
// filters: a spooled message Body, the Verdict a Filter returns, and the Chain
// that runs filters in order and applies the policy's on_error action.
package filters

import (
	"context"
	"io"
	"net/netip"
)

// Body is a message held by the proxy while filters look at it. Open may be
// called any number of times; each reader starts at the first byte. The owner
// (whoever created the Body) calls Remove exactly once when done.
//
// The Bodies of this package (Spool, BytesBody, SplicedBody, PrependHeader)
// are safe for concurrent use, their readers are independent of each other,
// Remove is idempotent, and Open after Remove returns an error. Their readers
// also implement io.ReaderAt and io.Seeker, except SplicedBody's (and so
// PrependHeader's), which implement io.ReaderAt when the wrapped body's
// readers do.
type Body interface {
	Open() (io.ReadCloser, error)
	Size() int64
	Remove() error
}

// Action is what a filter (or the whole chain) decided for a message.
type Action int

const (
	// Pass delivers the message the filter was given, unchanged.
	Pass Action = iota
	// Replace delivers Verdict.Body instead of the message the filter was given.
	Replace
	// Reject withholds the message for good (a virus, a banned attachment):
	// the original goes to quarantine and the client gets a notice in its
	// place, or -ERR [SYS/PERM] where the policy says so.
	Reject
	// Retry withholds the message for now (-ERR [SYS/TEMP]): the client
	// keeps it on the server and tries again later. For a filter that made
	// a deliberate decision not to decide (a message over the scanner's size
	// limit with oversize = "tempfail"); an error is for failures.
	Retry
)

func (a Action) String() string {
	switch a {
	case Pass:
		return "pass"
	case Replace:
		return "replace"
	case Reject:
		return "reject"
	case Retry:
		return "retry"
	}
	return "unknown"
}

// Verdict is one filter's decision. Body is set only for Replace and is then
// owned by the chain, which removes it when it is no longer needed. A Body on
// any other verdict is a filter bug; the chain removes it too (unless it is
// the body the filter was given). Replace with a nil Body counts as a filter
// error.
type Verdict struct {
	Action Action
	Body   Body
	Reason string
	// KeepsOriginal marks a Replace that loses nothing: its Body holds the
	// given message byte for byte with header fields added in front, or
	// with a change the filter documents how to undo exactly (tag keeps the
	// original Subject in X-Popgate-Original-Subject; tag.Restore puts it
	// back). Such a change does not need the original in quarantine first;
	// every other Replace does (docs/ARCHITECTURE.md §4, invariant 4).
	KeepsOriginal bool
	// Edits, optional on a Replace, states Body as pieces of the body the
	// filter was given: SplicedBody(given, Edits) reads byte for byte as
	// Body (so PiecesSize(Edits) is Body.Size()), its runs in increasing,
	// non-overlapping order. The chain composes the Edits of a run into
	// Result.Pieces, which lets popgate's message memory rebuild the
	// delivered message from the upstream's copy without filtering it
	// again. A Replace without Edits is valid: the message's delivered form
	// is then not remembered (Result.Reproducible is false). Edits the
	// chain finds inconsistent with the bodies (runs beyond the given body,
	// out of order, or a size other than Body's) count as none. Body is
	// still a body of its own: Edits describe it, they do not replace it.
	Edits []Piece
	// Scan, optional, is the scanner's result the filter decided with (a
	// spam score and its symbols, a virus name), for `popgate scan` and
	// whoever reads Result.Steps; the chain copies it into the Step. It
	// never changes what the chain does.
	Scan *ScanResult
}

// Envelope describes where a message comes from and who downloads it.
type Envelope struct {
	SessionID string
	User      string
	Client    netip.AddrPort
	Listener  string
	Upstream  string
	Command   string // "RETR" or "TOP"
	MsgNum    int
	UIDL      string // the server's unique id of the message, "" if it has none
	// Steps are what the filters before this one in the chain did (for a
	// filter that reports verdicts, like tag); the chain fills it in.
	Steps []Step

	input   *input   // the chain run's input, for Signatures
	started *Started // the work a filter began on the input as it arrived
}

// Filter inspects one message. An error means the filter could not decide;
// the chain then applies its OnError action. A filter never removes the Body
// it is given. Filter may be called concurrently for different messages and
// should return promptly when ctx ends; the chain abandons a filter that does
// not. A filter writes a replacement Body to the Spool it was built with
// (BuildContext.Spool).
type Filter interface {
	Name() string
	Filter(ctx context.Context, env *Envelope, body Body) (Verdict, error)
}

// Inline is a Filter that runs in the chain's goroutine instead of one of
// its own: it waits for no network or lock and its reads check ctx, so it
// returns promptly when ctx ends without the chain having to abandon it.
// A goroutine per filter per message cost its start, the growth of a
// fresh stack and a handoff, a tenth of the time a small message spends in
// a strip+tag chain.
type Inline interface {
	Filter
	Inline()
}
