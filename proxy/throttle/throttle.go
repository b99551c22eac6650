// Package throttle counts failed logins per client address and per login
// name, and says when the next attempt must wait and when it must be
// refused without reaching the server (docs/SECURITY.md, "Password
// guessing").
//
// Failures are counted when the server answers. An attempt is only
// checked against the locks on its way in: counting attempts in flight
// would refuse the legitimate logins of a busy address (an office behind
// one NAT address logging in at nine) once more of them are in flight
// than the limit. A guesser running many connections at once can so have
// at most as many attempts in flight as the listener's per-address
// connection limit beyond the limit. A success deletes the counts of its
// address and name. A key's count lives for Window from its first
// failure; the failure that reaches a limit locks the key for Lockout
// from then, and attempts on a locked key are refused and not counted (so
// refusals never extend a lock).
//
// The counts live in a bounded table in memory, or, when the Throttle has
// a Shared store (redis, shared by instances), there; a Shared store that
// fails is replaced by the local table for that attempt, never by a
// refusal.
package throttle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Scopes: what a count or a lock is keyed by.
const (
	ScopeAddress = "address"
	ScopeName    = "name"
)

// Defaults of Limits, chosen with Dovecot's and fail2ban's usual settings
// in mind (docs/CONFIG.md, listener login_throttle).
const (
	DefaultAddressFailures = 10
	DefaultNameFailures    = 5
	DefaultWindow          = 10 * time.Minute
	DefaultLockout         = 15 * time.Minute
	DefaultDelay           = time.Second
	DefaultMaxDelay        = 8 * time.Second
	// DefaultCapacity is the local table's size in keys (some 200 bytes
	// each with the map and list overhead).
	DefaultCapacity = 100000
)

// freeFailures are the failures of a key that cost no delay: a user who
// mistypes once or twice is not slowed.
const freeFailures = 2

// Limits are a listener's throttling settings.
type Limits struct {
	// AddressFailures and NameFailures are the attempts a client address
	// (IPv6: its /64) and a login name may fail within Window before they
	// are locked; 0 turns that scope off.
	AddressFailures int
	NameFailures    int
	Window          time.Duration
	Lockout         time.Duration
	// Delay is the wait before the third attempt of a key that failed
	// twice; it doubles with each further failure, up to MaxDelay. 0: no
	// delays.
	Delay    time.Duration
	MaxDelay time.Duration
	// Allow lists the networks never throttled (webmail, monitoring).
	Allow []netip.Prefix
}

func (l *Limits) allows(a netip.Addr) bool {
	for _, p := range l.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// delay is the wait before an attempt on a key that failed n times.
func (l *Limits) delay(n int) time.Duration {
	if n < freeFailures || l.Delay <= 0 {
		return 0
	}
	d := l.Delay
	for i := freeFailures; i < n && d < l.MaxDelay; i++ {
		d *= 2
	}
	return min(d, l.MaxDelay)
}

// Options configure a Throttle.
type Options struct {
	// Shared, when set, holds the counts for every instance that uses it;
	// the local table stands in while it fails.
	Shared Shared
	// Timeout bounds each call to Shared (default 250ms).
	Timeout time.Duration
	// Capacity is the local table's size in keys (default DefaultCapacity).
	Capacity int
	Log      zerolog.Logger
	// Now is the clock of the local table (default time.Now).
	Now func() time.Time
}

// Throttle holds the counts of every listener of a process.
type Throttle struct {
	local  *table
	shared Shared
	o      Options
	down   atomic.Bool // the shared store failed last time
}

// New returns a Throttle.
func New(o Options) *Throttle {
	if o.Timeout <= 0 {
		o.Timeout = 250 * time.Millisecond
	}
	if o.Capacity <= 0 {
		o.Capacity = DefaultCapacity
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Throttle{local: newTable(o.Capacity, o.Now), shared: o.Shared, o: o}
}

// counter is one key an attempt counts against.
type counter struct {
	scope string
	key   string
	limit int
}

// outcome is a store's answer to an attempt's check.
type outcome struct {
	locked int           // index of the locked counter, -1 when allowed
	retry  time.Duration // how long the lock still holds
	failed []int         // each counter's failures so far
}

// store is where counts live: the local table or a Shared store.
type store interface {
	// check says whether one of the counters is locked, and else how
	// often each failed.
	check(ctx context.Context, cs []counter) (outcome, error)
	// fail counts a failure on every counter and returns the indexes of
	// those it locked (that reached their limit with it).
	fail(ctx context.Context, cs []counter, window, lockout time.Duration) ([]int, error)
	reset(ctx context.Context, keys []string) error
}

// Attempt is one login attempt, as the throttle judged it.
type Attempt struct {
	// Locked is the scope whose lock refuses the attempt, "" when it may
	// go ahead.
	Locked string
	// Retry is how long that lock still holds.
	Retry time.Duration
	// Delay is how long to wait before sending the attempt on.
	Delay time.Duration
	// Name is NameHash of the login name, for logs ("" when not counted).
	Name string

	t               *Throttle
	st              store
	cs              []counter
	window, lockout time.Duration
}

// Attempt checks a login attempt of name from addr on the server
// upstream (names are per server: two servers' "alice" are two people).
// name may be empty when the mechanism does not reveal it; lim nil means
// no throttling.
func (t *Throttle) Attempt(ctx context.Context, lim *Limits, addr netip.Addr, upstream, name string) *Attempt {
	a := &Attempt{t: t}
	if t == nil || lim == nil || lim.allows(addr) {
		return a
	}
	if lim.AddressFailures > 0 {
		a.cs = append(a.cs, counter{ScopeAddress, addressKey(addr), lim.AddressFailures})
	}
	if name != "" && lim.NameFailures > 0 {
		a.Name = NameHash(upstream, name)
		a.cs = append(a.cs, counter{ScopeName, "n:" + a.Name, lim.NameFailures})
	}
	if len(a.cs) == 0 {
		return a
	}
	out, st := t.check(ctx, a.cs)
	a.st, a.window, a.lockout = st, lim.Window, lim.Lockout
	if out.locked >= 0 {
		a.Locked, a.Retry = a.cs[out.locked].scope, out.retry
		a.cs = nil // a refusal counts nowhere
		return a
	}
	for i := range a.cs {
		a.Delay = max(a.Delay, lim.delay(out.failed[i]))
	}
	return a
}

// check asks the shared store, or the local table when there is none or
// it fails.
func (t *Throttle) check(ctx context.Context, cs []counter) (outcome, store) {
	if t.shared != nil {
		ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
		out, err := t.shared.check(ctx, cs)
		cancel()
		t.sharedResult(err)
		if err == nil {
			return out, t.shared
		}
	}
	out, _ := t.local.check(ctx, cs)
	return out, t.local
}

// sharedResult logs when the shared store starts and stops failing.
func (t *Throttle) sharedResult(err error) {
	switch {
	case err != nil && !t.down.Swap(true):
		t.o.Log.Warn().Err(err).Msg("login throttle: the shared store failed; counting failed logins in this instance only until it answers again")
	case err == nil && t.down.Swap(false):
		t.o.Log.Info().Msg("login throttle: the shared store answers again")
	}
}

// Succeeded records that the attempt logged in: the counts of its address
// and name start again from zero.
func (a *Attempt) Succeeded(ctx context.Context) {
	if len(a.cs) == 0 {
		return
	}
	keys := make([]string, len(a.cs))
	for i, c := range a.cs {
		keys[i] = c.key
	}
	ctx, cancel := context.WithTimeout(ctx, a.t.o.Timeout)
	defer cancel()
	if err := a.st.reset(ctx, keys); err != nil {
		// The counts stay until their window ends or the next success
		// resets them; the login itself has succeeded regardless.
		a.t.sharedResult(err)
	}
	a.cs = nil
}

// Failed records that the attempt failed; it returns the scopes this
// failure locked (a lock is reported by the one failure that set it).
// When the shared store fails, the failure is counted locally.
func (a *Attempt) Failed(ctx context.Context) []string {
	cs := a.cs
	a.cs = nil
	if len(cs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.t.o.Timeout)
	defer cancel()
	locked, err := a.st.fail(ctx, cs, a.window, a.lockout)
	if err != nil {
		a.t.sharedResult(err)
		locked, _ = a.t.local.fail(ctx, cs, a.window, a.lockout)
	}
	var scopes []string
	for _, i := range locked {
		scopes = append(scopes, cs[i].scope)
	}
	return scopes
}

// addressKey is the key of a client address: IPv6 clients by their /64,
// which one subscriber usually has whole.
func addressKey(a netip.Addr) string {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return "a:" + p.String()
	}
	return "a:" + a.String()
}

// NameHash stands for a login name on a server in the counts and the log:
// the first 16 hex digits of SHA-256(upstream NUL lower-case name), so that
// neither the shared store nor the log holds a name as typed (it may be a
// password typed into the wrong field), while an administrator can still
// check a name: printf 'mail\0alice' | sha256sum | cut -c1-16. Names are
// compared without case, as most servers do.
func NameHash(upstream, name string) string {
	h := sha256.Sum256([]byte(upstream + "\x00" + strings.ToLower(strings.TrimSpace(name))))
	return hex.EncodeToString(h[:8])
}
