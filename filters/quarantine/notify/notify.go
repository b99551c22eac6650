// Package notify tells people what the quarantine holds: an administrator
// digest when messages are held, rate-limited so that a virus burst makes
// one mail and not thousands, and a periodic digest to each user of what
// was held for them, with release links where policy allows.
//
// The admin digest is kept in memory: Held only appends (the first
// maxItems messages, a counter for the rest), Run sends. The user digest is
// made from the quarantine directory itself, so that every instance sharing
// it sees the same records; which instance sends a period's digest is
// decided by a claim file (see claim).
package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
)

// Bounds.
const (
	maxItems     = 50              // held messages a digest lists; the rest are counted
	maxOutbox    = 64              // failed user digests kept for a retry
	maxTries     = 3               // attempts at one user digest
	sendTimeout  = 2 * time.Minute // one Send
	flushTimeout = 10 * time.Second
)

// Options configure a Notifier. Zero durations take the defaults.
type Options struct {
	// Send delivers one message (internal/mailer's (*Mailer).Send).
	Send func(ctx context.Context, from string, to []string, msg io.Reader) error
	// From is the header From and, its address, the envelope sender; ""
	// means quarantine.DefaultNoticeFrom.
	From string

	// Admin digest: mail to these addresses when something is held, at
	// most one mail per AdminInterval (default 15m); the first message held
	// after a quiet period is reported AdminDelay (default 1m) later, so
	// that the digest gathers a burst.
	Admin                     []string
	AdminInterval, AdminDelay time.Duration
	AdminSubject              string             // template text; "" means the default
	AdminTemplate             *template.Template // nil means the default

	// User digest: every UserDigest (whole seconds; 0 = off), at the end
	// of each period (aligned to the Unix epoch, so that instances agree),
	// one mail per recipient listing what was held for them in the period.
	UserDigest    time.Duration
	UserRecipient func(m quarantine.Meta) (address string, ok bool) // nil: the login, when it is an address
	UserSubject   string
	UserTemplate  *template.Template
	// Link returns the release URL of m where policy lets the user release
	// it, else "". Nil: no links.
	Link  func(m quarantine.Meta) string
	Store *quarantine.Store // the user digest lists its records

	// RetryDelay is the wait before a failed send is tried again (default 1m).
	RetryDelay time.Duration
	Log        zerolog.Logger
	Now        func() time.Time // nil: time.Now
}

// Notifier sends the digests. Held may be called from any goroutine; Run
// runs in one.
type Notifier struct {
	o         Options
	from      *mail.Address
	admin     []*mail.Address
	idHost    string         // the right side of Message-IDs
	loc       *time.Location // of the times in digests: Now's
	claims    string         // <store dir>/notify
	adminMail *kind
	userMail  *kind
	wake      chan struct{}

	mu    sync.Mutex
	batch batch // the admin digest being gathered

	// Run's own.
	lastAdmin, adminRetry time.Time
	userDone              time.Time // the end of the last period handled
	outbox                []outMail
	outboxRetry           time.Time
}

// batch is an admin digest being gathered.
type batch struct {
	items []Item
	more  int       // held beyond items
	first time.Time // when the first was held; zero: empty
}

// New checks o and returns a Notifier. With neither Admin nor UserDigest
// it does nothing.
func New(o Options) (*Notifier, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.From == "" {
		o.From = quarantine.DefaultNoticeFrom
	}
	if o.UserRecipient == nil {
		o.UserRecipient = func(m quarantine.Meta) (string, bool) { return m.User, strings.Contains(m.User, "@") }
	}
	if o.Link == nil {
		o.Link = func(quarantine.Meta) string { return "" }
	}
	for _, d := range []struct {
		p    *time.Duration
		def  time.Duration
		name string
	}{{&o.AdminInterval, 15 * time.Minute, "admin interval"}, {&o.AdminDelay, time.Minute, "admin delay"}, {&o.RetryDelay, time.Minute, "retry delay"}} {
		if *d.p < 0 {
			return nil, fmt.Errorf("notify: %s %v is negative", d.name, *d.p)
		}
		if *d.p == 0 {
			*d.p = d.def
		}
	}
	n := &Notifier{o: o, loc: o.Now().Location(), wake: make(chan struct{}, 1)}
	var err error
	if n.from, err = mail.ParseAddress(o.From); err != nil {
		return nil, fmt.Errorf("notify: sender %q: %w", o.From, err)
	}
	n.idHost = messageIDHost(n.from.Address)
	for _, a := range o.Admin {
		addr, err := mail.ParseAddress(a)
		if err != nil {
			return nil, fmt.Errorf("notify: admin address %q: %w", a, err)
		}
		n.admin = append(n.admin, addr)
	}
	switch {
	case o.UserDigest < 0 || o.UserDigest%time.Second != 0:
		return nil, fmt.Errorf("notify: user digest period %v: want a positive number of whole seconds", o.UserDigest)
	case o.UserDigest > 0 && o.Store == nil:
		return nil, errors.New("notify: the user digest needs the quarantine store")
	case (len(n.admin) > 0 || o.UserDigest > 0) && o.Send == nil:
		return nil, errors.New("notify: no mailer")
	}
	if o.UserDigest > 0 {
		n.claims = filepath.Join(o.Store.Dir(), "notify")
		if err := os.Mkdir(n.claims, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("notify: %w", err)
		}
	}
	if n.adminMail, err = newKind("admin", o.AdminSubject, o.AdminTemplate, defaultAdminSubject, defaultAdminTemplate); err != nil {
		return nil, err
	}
	if n.userMail, err = newKind("user", o.UserSubject, o.UserTemplate, defaultUserSubject, defaultUserTemplate); err != nil {
		return nil, err
	}
	return n, nil
}

// Held reports a message the quarantine now holds, for the admin digest.
// It never waits for Run or for a send, and keeps at most maxItems entries
// and a counter however many messages are held. A nil Notifier does
// nothing.
func (n *Notifier) Held(m quarantine.Meta) {
	if n == nil || len(n.admin) == 0 {
		return
	}
	n.mu.Lock()
	first := n.batch.first.IsZero()
	if first {
		n.batch.first = n.o.Now()
	}
	if len(n.batch.items) < maxItems {
		n.batch.items = append(n.batch.items, item(m, n.loc))
	} else {
		n.batch.more++
	}
	n.mu.Unlock()
	if first {
		select {
		case n.wake <- struct{}{}:
		default: // Run has been woken already
		}
	}
}

// Run sends the digests until ctx ends, then sends a pending admin digest
// and the user digests awaiting a retry, within flushTimeout (the admin
// digest then ignores AdminInterval: it would otherwise be lost).
func (n *Notifier) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if next := n.step(ctx, n.o.Now()); next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(max(next.Sub(n.o.Now()), 0))
		}
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flushTimeout)
			n.sendAdmin(fctx, n.o.Now())
			n.retryOutbox(fctx, n.o.Now())
			cancel()
			return
		case <-n.wake:
		case <-timer.C:
		}
	}
}

// step does what is due at now and returns when something is due next
// (zero: nothing until Held).
func (n *Notifier) step(ctx context.Context, now time.Time) time.Time {
	var next time.Time
	if due, ok := n.adminDue(); ok && !now.Before(due) {
		n.sendAdmin(ctx, now)
	}
	if due, ok := n.adminDue(); ok {
		next = due
	}
	if n.o.UserDigest > 0 {
		next = earliest(next, n.userStep(ctx, now))
	}
	if len(n.outbox) > 0 && !now.Before(n.outboxRetry) {
		n.retryOutbox(ctx, now)
	}
	if len(n.outbox) > 0 {
		next = earliest(next, n.outboxRetry)
	}
	return next
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// adminDue says when the gathered admin digest is due: AdminDelay after
// its first message, AdminInterval after the last digest sent, RetryDelay
// after a failed attempt, whichever is latest.
func (n *Notifier) adminDue() (time.Time, bool) {
	n.mu.Lock()
	first := n.batch.first
	n.mu.Unlock()
	if first.IsZero() {
		return time.Time{}, false
	}
	due := first.Add(n.o.AdminDelay)
	for _, t := range []time.Time{n.lastAdmin.Add(n.o.AdminInterval), n.adminRetry} {
		if t.After(due) {
			due = t
		}
	}
	return due, true
}

// sendAdmin sends the gathered admin digest. When that fails, its
// messages go back before those held since, to be sent after RetryDelay.
func (n *Notifier) sendAdmin(ctx context.Context, now time.Time) {
	n.mu.Lock()
	b := n.batch
	n.batch = batch{}
	n.mu.Unlock()
	if b.first.IsZero() {
		return
	}
	d := Data{Items: b.items, More: b.more, Total: len(b.items) + b.more, Since: b.first.In(n.loc), Until: now.In(n.loc)}
	msg, err := n.compose(n.adminMail, n.admin, d, now)
	if err == nil {
		err = n.send(ctx, n.admin, msg)
	}
	if err != nil {
		n.o.Log.Warn().Err(err).Int("held", d.Total).Dur("retry_in", n.o.RetryDelay).Msg("notify: admin digest not sent")
		n.mu.Lock()
		n.batch = b.merge(n.batch)
		n.mu.Unlock()
		n.adminRetry = now.Add(n.o.RetryDelay)
		return
	}
	n.lastAdmin = n.o.Now() // the interval runs from the delivery
	n.o.Log.Info().Int("held", d.Total).Msg("notify: admin digest sent")
}

// merge puts the messages of the unsent b before those held since.
func (b batch) merge(since batch) batch {
	b.items = append(b.items, since.items...)
	b.more += since.more
	if extra := len(b.items) - maxItems; extra > 0 {
		b.items, b.more = b.items[:maxItems], b.more+extra
	}
	return b
}

// outMail is a composed user digest awaiting a retry.
type outMail struct {
	to    []*mail.Address
	msg   []byte
	tries int
}

// deliver sends m; a failure keeps it for a retry after RetryDelay, up to
// maxTries attempts and maxOutbox mails, so that an outage does not pile
// mail up.
func (n *Notifier) deliver(ctx context.Context, m outMail, now time.Time) {
	err := n.send(ctx, m.to, m.msg)
	if err == nil {
		return
	}
	m.tries++
	log := n.o.Log.Warn()
	if m.tries >= maxTries || len(n.outbox) >= maxOutbox {
		log = n.o.Log.Error().Bool("dropped", true)
	} else {
		n.outbox = append(n.outbox, m)
		n.outboxRetry = now.Add(n.o.RetryDelay)
	}
	log.Err(err).Str("to", m.to[0].Address).Int("attempt", m.tries).Msg("notify: user digest not sent")
}

func (n *Notifier) retryOutbox(ctx context.Context, now time.Time) {
	queued := n.outbox
	n.outbox = nil
	for _, m := range queued {
		n.deliver(ctx, m, now)
	}
}

func (n *Notifier) send(ctx context.Context, to []*mail.Address, msg []byte) error {
	rcpts := make([]string, len(to))
	for i, a := range to {
		rcpts[i] = a.Address
	}
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	return n.o.Send(ctx, n.from.Address, rcpts, bytes.NewReader(msg))
}
