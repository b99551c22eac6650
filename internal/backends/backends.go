// Package backends keeps the health of a scanner's backends (the clamd and
// rspamd daemons a scanner block lists): which ones answered their last
// health check or scan, the order in which a scan tries them, and the
// periodic health checks. The scanner kinds share it so that failover
// behaves the same for every kind; each kind brings its own check (clamd's
// PING, rspamd's /ping).
package backends

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
)

// Health is the state of one backend. A kind embeds it in its own backend
// type, which makes that type a Member.
type Health struct {
	// Addr is the backend's address as configured, for results and logs.
	Addr string

	up      atomic.Bool
	version atomic.Pointer[string] // what it last said it runs
	mu      sync.Mutex             // serialises state changes, so that a transition logs once
	// seen counts observations; a health check's result is dropped when
	// something newer (a failed scan) was observed while it ran.
	seen uint64
}

// Up reports whether the backend answered its last health check or scan,
// or has not been checked yet.
func (h *Health) Up() bool { return h.up.Load() }

// SetVersion records what the backend said it runs ("ClamAV 1.4.6/27433/…",
// "rspamd/3.4"); "" is ignored.
func (h *Health) SetVersion(v string) {
	if v != "" {
		h.version.Store(&v)
	}
}

func (h *Health) health() *Health { return h }

// Member is a kind's backend type: one that embeds Health.
type Member interface{ health() *Health }

// Pool is the backends of one scanner, in configuration order. New starts
// one goroutine (the health checker); Close stops it.
type Pool[M Member] struct {
	kind     string // names the daemon in logs: "clamd", "rspamd"
	log      zerolog.Logger
	members  []M
	check    func(context.Context, M) error
	interval time.Duration
	next     atomic.Uint64 // round-robin start

	done      chan struct{} // closed by Close
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New returns the pool of members, all counted up until they fail, and
// starts checking them with check at once and then every interval, in the
// background: New never waits for the network. check must honour its
// context; a panic in it counts as a failed check.
func New[M Member](kind string, log zerolog.Logger, members []M, interval time.Duration, check func(context.Context, M) error) *Pool[M] {
	p := &Pool[M]{kind: kind, log: log, members: members, check: check, interval: interval, done: make(chan struct{})}
	for _, m := range members {
		m.health().up.Store(true)
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.loop()
	return p
}

// Members returns the backends in configuration order.
func (p *Pool[M]) Members() []M { return p.members }

// Backends returns the state of every backend, in configuration order.
func (p *Pool[M]) Backends() []filters.Backend {
	out := make([]filters.Backend, len(p.members))
	for i, m := range p.members {
		h := m.health()
		out[i] = filters.Backend{Address: h.Addr, Up: h.Up()}
	}
	return out
}

// Version names the versions the backends last reported: distinct, sorted,
// joined by "; "; "" before any did. A scanner's Version (filters.Scanner):
// the message memory scans again what was scanned under others.
func (p *Pool[M]) Version() string {
	var vs []string
	for _, m := range p.members {
		if v := m.health().version.Load(); v != nil && !slices.Contains(vs, *v) {
			vs = append(vs, *v)
		}
	}
	slices.Sort(vs)
	return strings.Join(vs, "; ")
}

// Healthy counts the backends that are up.
func (p *Pool[M]) Healthy() int {
	n := 0
	for _, m := range p.members {
		if m.health().Up() {
			n++
		}
	}
	return n
}

// Candidates returns the backends a scan tries, in order, round-robin from
// a rotating start: the healthy ones; or, when none is healthy, all of them
// (the health state may be stale: trying costs a refused connection, while
// waiting for the next health check would refuse every message until then).
func (p *Pool[M]) Candidates() []M {
	n := len(p.members)
	first := int(p.next.Add(1)-1) % n
	healthy := make([]M, 0, n)
	down := make([]M, 0, n)
	for i := range n {
		m := p.members[(first+i)%n]
		if m.health().Up() {
			healthy = append(healthy, m)
		} else {
			down = append(down, m)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return down
}

// Observe records the outcome of a scan on m (nil: it answered), logging
// transitions.
func (p *Pool[M]) Observe(m M, err error) { p.observe(m.health(), err, 0, false) }

// snapshot returns h's observation count, for observe after a check.
func snapshot(h *Health) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen
}

// observe records err on h. With ifUnchanged, it is dropped when h was
// observed since the snapshot since was taken.
func (p *Pool[M]) observe(h *Health, err error, since uint64, ifUnchanged bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ifUnchanged && h.seen != since {
		return
	}
	h.seen++
	was := h.up.Load()
	h.up.Store(err == nil)
	switch {
	case was && err != nil:
		p.log.Warn().Str("backend", h.Addr).Err(err).Msgf("%s backend down: skipped until it answers its health check again", p.kind)
	case !was && err == nil:
		p.log.Info().Str("backend", h.Addr).Msgf("%s backend up", p.kind)
	}
}

// ErrClosed: the pool was closed.
var ErrClosed = errors.New("backends: closed")

// Check checks every backend now, concurrently, and records the outcomes.
// It returns nil when at least one answered, otherwise the backends'
// errors. A check that failed because ctx ended says nothing about its
// backend and is not recorded.
func (p *Pool[M]) Check(ctx context.Context) error {
	if p.Closed() {
		return ErrClosed
	}
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, m := range p.members {
		wg.Go(func() {
			h := m.health()
			since := snapshot(h)
			err := p.safeCheck(ctx, m)
			if err == nil || ctx.Err() == nil {
				p.observe(h, err, since, true)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) < len(p.members) {
		return nil
	}
	return errors.Join(errs...)
}

// safeCheck is check that turns a panic into an error: a health check must
// never take the process down.
func (p *Pool[M]) safeCheck(ctx context.Context, m M) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: health check panicked: %v", p.kind, r)
		}
	}()
	return p.check(ctx, m)
}

// loop checks every backend at once and then every interval, until Close.
func (p *Pool[M]) loop() {
	defer p.wg.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		_ = p.Check(p.ctx)
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Done is closed by Close.
func (p *Pool[M]) Done() <-chan struct{} { return p.done }

// Closed reports whether Close was called.
func (p *Pool[M]) Closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Close stops the health checks and waits for them. It is idempotent.
func (p *Pool[M]) Close() {
	p.closeOnce.Do(func() {
		close(p.done)
		p.cancel()
	})
	p.wg.Wait()
}
