// Package memory is popgate's memory of what its chains decided: one small
// record per message, keyed by where the message lives (upstream, mailbox,
// UIDL), so that a message downloaded again (leave-on-server clients, a
// second instance behind a balancer) is served the same way without a new
// scan or a new quarantine record, and LIST reports the size the client
// will receive.
//
// A record never holds the message: it holds its size and SHA-256 (a
// message the upstream changed under the same UIDL is never served from an
// old record), the decision, and the delivered form as pieces of the
// original (filters.Piece). Stores are caches: an error or a timeout is a
// miss, which costs a rescan and never lets a message pass unscanned.
package memory

import (
	"context"
	"time"

	"github.com/popgate/popgate/filters"
)

// Key names one message: the upstream (its address), the mailbox (the login
// name as the upstream knows it) and the upstream's UIDL.
type Key struct {
	Upstream, Mailbox, UIDL string
}

// Outcome is what the chain decided, as remembered. Tempfails are never
// remembered.
type Outcome uint8

const (
	// Deliver: the client gets the original (Pieces nil) or the original
	// changed as Pieces say.
	Deliver Outcome = iota + 1
	// Notice: the client gets a notice in its place (Pieces: one literal
	// piece holding the notice); the original is in quarantine.
	Notice
	// Refuse: the client gets -ERR [SYS/PERM].
	Refuse
)

// Record is what popgate remembers of one message.
type Record struct {
	// ListSize is the size the upstream's LIST gave; Size and SHA256 are
	// those of the message as fetched (RETR, dot-decoded).
	ListSize int64
	Size     int64
	SHA256   [32]byte
	Outcome  Outcome
	// Pieces is the delivered form against the original; nil for an
	// unchanged message.
	Pieces []filters.Piece
	// DeliveredSize is the size of what the client receives (0 for Refuse).
	DeliveredSize int64
	QuarantineID  string
	Reason        string
	// Fingerprint identifies the policy and chain the decision was made
	// under; Signatures the scanners' signature versions then.
	Fingerprint string
	Signatures  string
	// Created is when the message was scanned.
	Created time.Time
}

// Store keeps records. Implementations are safe for concurrent use; a
// record not found is (nil, nil).
type Store interface {
	Get(ctx context.Context, k Key) (*Record, error)
	// GetMany returns one entry per key, nil where there is no record.
	GetMany(ctx context.Context, ks []Key) ([]*Record, error)
	Put(ctx context.Context, k Key, r *Record) error
	Delete(ctx context.Context, ks ...Key) error
	Close() error
}
