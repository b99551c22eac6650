package throttle

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/internal/testenv"
)

// clock is a settable time for the local table.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }
func addr(s string) netip.Addr           { return netip.MustParseAddr(s) }
func limits(a, n int) *Limits            { return testLimits(a, n, nil) }
func testLimits(a, n int, allow []netip.Prefix) *Limits {
	return &Limits{AddressFailures: a, NameFailures: n, Window: 10 * time.Minute, Lockout: 15 * time.Minute,
		Delay: time.Second, MaxDelay: 8 * time.Second, Allow: allow}
}

// step is one attempt of a table test and what the throttle must say.
type step struct {
	advance    time.Duration
	addr, name string
	fail       bool // the attempt fails (else it succeeds), when allowed
	locked     string
	delay      time.Duration
	locks      []string // scopes the failure locks
}

func runSteps(t *testing.T, th *Throttle, c *clock, lim *Limits, steps []step) {
	t.Helper()
	ctx := context.Background()
	for i, s := range steps {
		c.advance(s.advance)
		a := th.Attempt(ctx, lim, addr(s.addr), "mail", s.name)
		if a.Locked != s.locked || a.Delay != s.delay {
			t.Fatalf("step %d (%s %q): locked %q delay %v, want locked %q delay %v", i, s.addr, s.name, a.Locked, a.Delay, s.locked, s.delay)
		}
		if a.Locked != "" {
			continue
		}
		if !s.fail {
			a.Succeeded(ctx)
			continue
		}
		if got := a.Failed(ctx); !slices.Equal(got, s.locks) {
			t.Fatalf("step %d: failure locks %v, want %v", i, got, s.locks)
		}
	}
}

func TestThrottleTable(t *testing.T) {
	const A, B = "192.0.2.1", "192.0.2.2"
	fails := func(n int, a, name string, delays ...time.Duration) []step {
		var out []step
		for i := range n {
			out = append(out, step{addr: a, name: name, fail: true, delay: delays[i]})
		}
		return out
	}
	cases := []struct {
		name  string
		lim   *Limits
		steps []step
	}{
		{"name lock after 5, delays 0,0,1,2,4", limits(10, 5), append(append(
			fails(4, A, "alice", 0, 0, time.Second, 2*time.Second),
			step{addr: A, name: "alice", fail: true, delay: 4 * time.Second, locks: []string{ScopeName}}),
			step{addr: A, name: "alice", locked: ScopeName},
			step{addr: B, name: "ALICE ", locked: ScopeName},   // another address, same name (case, blanks)
			step{addr: A, name: "bob", delay: 8 * time.Second}, // the guesser's address is slowed for any name; bob's success resets it
			step{advance: 15 * time.Minute, addr: A, name: "alice"},
		)},
		{"address lock across names", limits(3, 5), []step{
			{addr: A, name: "u1", fail: true},
			{addr: A, name: "u2", fail: true},
			{addr: A, name: "u3", fail: true, delay: time.Second, locks: []string{ScopeAddress}},
			{addr: A, name: "u4", locked: ScopeAddress},
			{addr: B, name: "u4"}, // another address logs in
			{advance: 15*time.Minute - time.Second, addr: A, name: "u5", locked: ScopeAddress},
			{advance: time.Second, addr: A, name: "u5"},
		}},
		{"success resets", limits(3, 3), []step{
			{addr: A, name: "alice", fail: true},
			{addr: A, name: "alice", fail: true},
			{addr: A, name: "alice", delay: time.Second}, // succeeds
			{addr: A, name: "alice", fail: true},
			{addr: A, name: "alice", fail: true},
		}},
		{"window expires", limits(3, 0), []step{
			{addr: A, fail: true},
			{addr: A, fail: true},
			{advance: 10 * time.Minute, addr: A, fail: true},
			{addr: A, fail: true},
		}},
		{"IPv6 by /64", limits(2, 0), []step{
			{addr: "2001:db8:1:2::1", fail: true},
			{addr: "2001:db8:1:2:ffff::7", fail: true, locks: []string{ScopeAddress}},
			{addr: "2001:db8:1:2::99", locked: ScopeAddress},
			{addr: "2001:db8:1:3::1"},
		}},
		{"allowlisted network never throttled", testLimits(1, 1, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}), []step{
			{addr: "10.1.2.3", name: "alice", fail: true},
			{addr: "10.1.2.3", name: "alice", fail: true},
			{addr: "10.1.2.3", name: "alice"},
			{addr: A, name: "alice", fail: true, locks: []string{ScopeAddress, ScopeName}},
			{addr: "10.1.2.3", name: "alice"}, // even a locked name
		}},
		{"scopes off", limits(0, 0), []step{
			{addr: A, name: "alice", fail: true},
			{addr: A, name: "alice", fail: true},
			{addr: A, name: "alice", fail: true},
		}},
		{"max delay", &Limits{AddressFailures: 20, Window: time.Hour, Lockout: time.Hour, Delay: 500 * time.Millisecond, MaxDelay: 3 * time.Second},
			fails(7, A, "", 0, 0, 500*time.Millisecond, time.Second, 2*time.Second, 3*time.Second, 3*time.Second)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			runSteps(t, New(Options{Now: c.now}), c, tc.lim, tc.steps)
		})
	}
}

// TestThrottleConcurrentAttempts: attempts in flight are not failures: 50
// logins at once from one address (an office behind NAT) all go ahead; the
// failures among them lock the address once, when they reach the limit,
// and the next attempt is refused.
func TestThrottleConcurrentAttempts(t *testing.T) {
	ctx := context.Background()
	th := New(Options{})
	lim := limits(10, 0)
	var pending []*Attempt
	for range 50 {
		a := th.Attempt(ctx, lim, addr("192.0.2.9"), "mail", "")
		if a.Locked != "" {
			t.Fatalf("attempt %d in flight refused: %+v", len(pending), a)
		}
		pending = append(pending, a)
	}
	locks := 0
	for _, a := range pending {
		locks += len(a.Failed(ctx))
	}
	if locks != 1 {
		t.Errorf("%d lockouts reported, want 1", locks)
	}
	if a := th.Attempt(ctx, lim, addr("192.0.2.9"), "mail", ""); a.Locked != ScopeAddress {
		t.Errorf("after 50 failures: %+v", a)
	}
}

// TestThrottleEviction: the table stays within its capacity under a flood
// of new keys, and forgets unlocked keys before a lock.
func TestThrottleEviction(t *testing.T) {
	c := newClock()
	th := New(Options{Capacity: 100, Now: c.now})
	lim := limits(2, 0)
	ctx := context.Background()
	locked := addr("198.51.100.1")
	for range 2 {
		th.Attempt(ctx, lim, locked, "mail", "").Failed(ctx)
	}
	for i := range 10000 {
		th.Attempt(ctx, lim, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), "mail", "").Failed(ctx)
		if n := len(th.local.keys); n > 100 {
			t.Fatalf("table holds %d keys, capacity 100", n)
		}
	}
	if a := th.Attempt(ctx, lim, locked, "mail", ""); a.Locked != ScopeAddress {
		t.Errorf("a flood of 10000 one-failure addresses flushed the lock of %v", locked)
	}

	// A table full of locks: the oldest lock goes, not the table's bound.
	th = New(Options{Capacity: 20, Now: c.now})
	for i := range 40 {
		a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		for range 2 {
			th.Attempt(ctx, lim, a, "mail", "").Failed(ctx)
		}
	}
	if n := len(th.local.keys); n != 20 {
		t.Errorf("table of locks holds %d keys, want 20", n)
	}
	if a := th.Attempt(ctx, lim, addr("10.0.0.39"), "mail", ""); a.Locked != ScopeAddress {
		t.Errorf("the newest lock was evicted")
	}
}

func TestNameHash(t *testing.T) {
	// printf 'mail\0alice' | sha256sum | cut -c1-16 (docs/CONFIG.md)
	if got, want := NameHash("mail", " Alice"), "d8174a250f5066f2"; got != want {
		t.Errorf("NameHash = %s, want %s", got, want)
	}
	if NameHash("mail", "alice") == NameHash("other", "alice") {
		t.Error("the same name on two servers has one hash")
	}
	if NameHash("mail", "alice") != NameHash("mail", "ALICE") {
		t.Error("case matters")
	}
}

// failingShared is a shared store that is down.
type failingShared struct{ calls int }

func (f *failingShared) check(context.Context, []counter) (outcome, error) {
	f.calls++
	return outcome{}, fmt.Errorf("connection refused")
}
func (f *failingShared) fail(context.Context, []counter, time.Duration, time.Duration) ([]int, error) {
	f.calls++
	return nil, fmt.Errorf("connection refused")
}
func (f *failingShared) reset(context.Context, []string) error {
	return fmt.Errorf("connection refused")
}

// TestThrottleSharedDown: a shared store that fails is replaced by the
// local table: logins are counted and limited, never all refused.
func TestThrottleSharedDown(t *testing.T) {
	f := &failingShared{}
	c := newClock()
	runSteps(t, New(Options{Shared: f, Now: c.now}), c, limits(10, 3), []step{
		{addr: "192.0.2.1", name: "bob"},
		{addr: "192.0.2.1", name: "alice", fail: true},
		{addr: "192.0.2.1", name: "alice", fail: true},
		{addr: "192.0.2.1", name: "alice", fail: true, delay: time.Second, locks: []string{ScopeName}},
		{addr: "192.0.2.1", name: "alice", locked: ScopeName},
	})
	if f.calls != 5 {
		t.Errorf("shared store asked %d times, want every attempt (5)", f.calls)
	}
}

// TestThrottleRedis runs the same rules against the test environment's
// redis, with two Throttles (two instances) sharing it.
func TestThrottleRedis(t *testing.T) {
	raddr := testenv.Redis(t)
	c := redis.NewClient(&redis.Options{Addr: raddr})
	t.Cleanup(func() { _ = c.Close() })
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := "popgate:test:login:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() {
		keys, _ := c.Keys(context.Background(), prefix+"*").Result()
		if len(keys) > 0 {
			c.Del(context.Background(), keys...)
		}
	})
	one := New(Options{Shared: NewRedis(c, prefix)})
	two := New(Options{Shared: NewRedis(c, prefix)})
	ctx := context.Background()
	lim := &Limits{AddressFailures: 4, NameFailures: 3, Window: time.Minute, Lockout: 2 * time.Second, Delay: 100 * time.Millisecond, MaxDelay: time.Second}
	A := addr("192.0.2.77")

	// Failures alternate between the instances and add up.
	var delays []time.Duration
	var locks []string
	for i := range 3 {
		th := []*Throttle{one, two}[i%2]
		a := th.Attempt(ctx, lim, A, "mail", "carol")
		if a.Locked != "" {
			t.Fatalf("attempt %d locked by %s", i, a.Locked)
		}
		delays = append(delays, a.Delay)
		locks = append(locks, a.Failed(ctx)...)
	}
	if !slices.Equal(delays, []time.Duration{0, 0, 100 * time.Millisecond}) || !slices.Equal(locks, []string{ScopeName}) {
		t.Errorf("delays %v locks %v, want [0 0 100ms] [name]", delays, locks)
	}
	a := two.Attempt(ctx, lim, addr("192.0.2.78"), "mail", "Carol")
	if a.Locked != ScopeName || a.Retry <= 0 || a.Retry > 2*time.Second {
		t.Errorf("the other instance, another address: locked %q retry %v, want name lock", a.Locked, a.Retry)
	}
	// Another name from the address: one attempt left before its lock.
	if a := one.Attempt(ctx, lim, A, "mail", "dave"); a.Locked != "" {
		t.Fatalf("dave locked by %s", a.Locked)
	} else if got := a.Failed(ctx); !slices.Equal(got, []string{ScopeAddress}) {
		t.Errorf("4th failure from the address locks %v, want [address]", got)
	}
	if a := two.Attempt(ctx, lim, A, "mail", "erin"); a.Locked != ScopeAddress {
		t.Errorf("address not locked on the other instance: %q", a.Locked)
	}
	// The lock ends with its lockout; a success then resets.
	time.Sleep(2100 * time.Millisecond)
	a = one.Attempt(ctx, lim, A, "mail", "carol")
	if a.Locked != "" || a.Delay != 0 {
		t.Fatalf("after the lockout: locked %q delay %v", a.Locked, a.Delay)
	}
	a.Succeeded(ctx)
	if n, _ := c.Exists(ctx, prefix+addressKey(A), prefix+"n:"+NameHash("mail", "carol")).Result(); n != 0 {
		t.Errorf("a success left %d keys", n)
	}
}

// TestThrottleRedisDown: a redis that does not answer falls back to the
// local table, and says so once in the log.
func TestThrottleRedisDown(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	th := New(Options{Shared: NewRedis(c, ""), Timeout: 100 * time.Millisecond})
	// With redis down a failure is counted, and locks, locally.
	up := New(Options{Shared: NewRedis(c, "")})
	a := up.Attempt(context.Background(), limits(1, 0), addr("192.0.2.6"), "mail", "")
	if got := a.Failed(context.Background()); !slices.Equal(got, []string{ScopeAddress}) {
		t.Errorf("a failure with redis down locks %v, want [address] (counted locally)", got)
	}
	lim := limits(2, 0)
	for range 2 {
		if a := th.Attempt(context.Background(), lim, addr("192.0.2.5"), "mail", ""); a.Locked != "" {
			t.Fatal("refused with redis down")
		} else {
			a.Failed(context.Background())
		}
	}
	if a := th.Attempt(context.Background(), lim, addr("192.0.2.5"), "mail", ""); a.Locked != ScopeAddress {
		t.Errorf("redis down: the local table did not count (locked %q)", a.Locked)
	}
	if !th.down.Load() {
		t.Error("the throttle did not note the shared store down")
	}
}
