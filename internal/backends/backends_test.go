package backends

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type member struct {
	Health
	fail  atomic.Bool
	block chan struct{} // when set, the check waits for it (or its context)
}

func newPool(t *testing.T, interval time.Duration, check func(context.Context, *member) error, addrs ...string) (*Pool[*member], []*member) {
	t.Helper()
	var ms []*member
	for _, a := range addrs {
		ms = append(ms, &member{Health: Health{Addr: a}})
	}
	p := New("test", zerolog.Nop(), ms, interval, check)
	t.Cleanup(p.Close)
	return p, ms
}

func failing(_ context.Context, m *member) error {
	if m.fail.Load() {
		return errors.New(m.Addr + " fails")
	}
	return nil
}

func addrs(ms []*member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Addr)
	}
	return out
}

func TestCandidates(t *testing.T) {
	p, ms := newPool(t, time.Hour, failing, "a", "b", "c")
	for i, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := addrs(p.Candidates()); !slices.Equal(got, want) {
			t.Fatalf("turn %d: %v, want %v", i, got, want)
		}
	}
	p.Observe(ms[1], errors.New("refused"))
	if got := addrs(p.Candidates()); !slices.Equal(got, []string{"c", "a"}) {
		t.Fatalf("b down: %v, want the healthy ones only", got)
	}
	p.Observe(ms[0], errors.New("refused"))
	p.Observe(ms[2], errors.New("refused"))
	if got := addrs(p.Candidates()); len(got) != 3 {
		t.Fatalf("all down: %v, want all of them (the state may be stale)", got)
	}
	if p.Healthy() != 0 {
		t.Fatalf("Healthy = %d", p.Healthy())
	}
	p.Observe(ms[2], nil)
	if bs := p.Backends(); bs[2].Address != "c" || !bs[2].Up || bs[0].Up {
		t.Fatalf("Backends = %+v", bs)
	}
}

func TestCheck(t *testing.T) {
	p, ms := newPool(t, time.Hour, failing, "a", "b")
	ms[0].fail.Store(true)
	if err := p.Check(context.Background()); err != nil {
		t.Fatalf("one of two answers: %v", err)
	}
	if ms[0].Up() || !ms[1].Up() {
		t.Fatalf("a up %v, b up %v", ms[0].Up(), ms[1].Up())
	}
	ms[1].fail.Store(true)
	if err := p.Check(context.Background()); err == nil || p.Healthy() != 0 {
		t.Fatalf("none answers: %v, healthy %d", err, p.Healthy())
	}
	p.Close()
	if err := p.Check(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// A check that ends with its context says nothing about the backend, and one
// overtaken by a newer observation (a failed scan) is dropped.
func TestStaleChecks(t *testing.T) {
	var mu sync.Mutex
	release := make(chan struct{})
	check := func(ctx context.Context, m *member) error {
		mu.Lock()
		b := m.block
		mu.Unlock()
		if b == nil {
			return nil
		}
		select {
		case <-b:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p, ms := newPool(t, time.Hour, check, "a")
	mu.Lock()
	ms[0].block = release
	mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Check(ctx); err == nil || !ms[0].Up() {
		t.Fatalf("a check cut by its context: %v, up %v (want an error and no change)", err, ms[0].Up())
	}

	done := make(chan error)
	go func() { done <- p.Check(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	p.Observe(ms[0], errors.New("scan failed")) // newer than the check in flight
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ms[0].Up() {
		t.Fatal("the older check's success overwrote the newer failed scan")
	}
}

func TestLoopAndPanics(t *testing.T) {
	var calls atomic.Int32
	check := func(_ context.Context, m *member) error {
		calls.Add(1)
		if m.fail.Load() {
			panic("boom")
		}
		return nil
	}
	p, ms := newPool(t, 10*time.Millisecond, check, "a")
	ms[0].fail.Store(true)
	deadline := time.Now().Add(2 * time.Second)
	for ms[0].Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if ms[0].Up() {
		t.Fatal("a panicking check did not mark the backend down")
	}
	ms[0].fail.Store(false)
	for !ms[0].Up() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !ms[0].Up() {
		t.Fatal("the periodic check did not bring the backend back")
	}
	p.Close()
	n := calls.Load()
	time.Sleep(30 * time.Millisecond)
	if calls.Load() != n {
		t.Fatal("checks go on after Close")
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed")
	}
}

func TestVersion(t *testing.T) {
	p, ms := newPool(t, time.Hour, failing, "a", "b", "c")
	if v := p.Version(); v != "" {
		t.Fatalf("before any report: %q", v)
	}
	ms[0].SetVersion("rspamd/3.4")
	ms[1].SetVersion("")
	ms[2].SetVersion("rspamd/3.2")
	ms[1].SetVersion("rspamd/3.4")
	if v := p.Version(); v != "rspamd/3.2; rspamd/3.4" {
		t.Fatalf("Version = %q", v)
	}
}
