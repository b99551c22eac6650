// Package release gives quarantined mail back: it re-delivers an original
// to the mailbox it was taken from (SMTP or LMTP), marks the delivered copy
// so that popgate recognises it when it comes back (Keys.Mark), and signs
// the per-message release links of notices (Keys.Link).
package release

import (
	"context"
	"time"
)

// Permission says who may release a quarantined message: the policy sets it
// per filter (attribute release), and a message held by several filters
// needs the strictest of theirs.
type Permission string

const (
	// User: the user may release it from the link in the notice (and an
	// administrator may).
	User Permission = "user"
	// Admin: only an administrator (command line, admin API).
	Admin Permission = "admin"
	// Never: nobody; the original can still be exported.
	Never Permission = "never"
)

// Request says how to release one message.
type Request struct {
	// To, when set, is the envelope recipient instead of the mailbox's
	// address (an administrator's --to).
	To string
	// Login, with To, is the login name the released copy is recognised
	// for; "" means the record's user.
	Login string
	// ByUser is set for a release from a link: it needs Permission User.
	ByUser bool
	// Actor names who released it, for the record and the log ("cli",
	// "api", "link").
	Actor string
	// Force delivers even when an earlier release is recorded: after an
	// uncertain or interrupted one, or for a second copy on purpose. Never
	// from a link.
	Force bool
}

// Result is what a release did.
type Result struct {
	ID        string
	Recipient string
	// Already is set when the message had been released before: nothing
	// was delivered this time.
	Already bool
	// At is when it was released (now, or the earlier release).
	At time.Time
}

// Releaser is what the command line, the admin API and release links
// release through.
type Releaser interface {
	Release(ctx context.Context, id string, req Request) (Result, error)
}
