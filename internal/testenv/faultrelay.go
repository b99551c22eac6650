package testenv

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Direction is one way through a Relay.
type Direction int

const (
	// ToTarget is what the relay's client (popgate) sends to the target
	// (Dovecot, clamd): commands, INSTREAM chunks.
	ToTarget Direction = iota
	// ToClient is what the target answers: greetings, responses, verdicts.
	ToClient
)

func (d Direction) String() string {
	if d == ToTarget {
		return "to-target"
	}
	return "to-client"
}

// Action is what a Fault does when its position is reached.
type Action int

const (
	// Cut forwards everything before the position, then closes both
	// connections.
	Cut Action = iota
	// Stall forwards everything before the position, then nothing more in
	// that direction: what comes is read and dropped, the connections stay
	// open until the sender closes its end (a hung peer).
	Stall
	// Corrupt replaces the bytes from the position on with Fault.Data
	// (as many bytes as Data holds), then forwards the rest unchanged.
	Corrupt
	// Delay pauses the direction at the position for Fault.Delay, then
	// forwards the rest unchanged: a slow peer.
	Delay
)

func (a Action) String() string {
	return [...]string{"cut", "stall", "corrupt", "delay"}[a]
}

// Fault is one fault of one connection through a Relay. Its position is
// Offset bytes after the start of the first occurrence of After in the
// direction's stream (After "" means the start of the stream), so that a
// test can name "the 100th byte of the RETR response" although the bytes
// before it (a greeting with a timestamp) vary.
type Fault struct {
	Dir    Direction
	After  string
	Offset int64
	Action Action
	Data   []byte        // Corrupt: the replacement bytes
	Delay  time.Duration // Delay: how long to pause
}

// Relay is an in-process TCP relay between a client under test and a real
// server, which injects Faults at chosen bytes: a connection cut, a stall,
// corrupted bytes or a pause, in either direction. Faults come per
// connection from a plan (SetPlan, SetFaults); the target can be changed
// while the relay runs (SetTarget), as a restarted server on a new port.
//
// A Fault whose After string never occurs does not fire: tests check
// Fired to be sure the fault was really injected.
type Relay struct {
	t  testing.TB
	ln net.Listener

	mu     sync.Mutex
	target string
	plan   func(conn int) []Fault
	conns  map[net.Conn]struct{}
	closed bool

	accepted atomic.Int64
	fired    atomic.Int64
	wg       sync.WaitGroup
}

// NewRelay listens on a free loopback port and relays every connection to
// target. It is closed when the test ends.
func NewRelay(t testing.TB, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r := &Relay{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.Close)
	return r
}

// Addr is the relay's host:port.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// SetTarget makes new connections go to addr.
func (r *Relay) SetTarget(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = addr
}

// SetPlan sets the faults of each new connection: plan gets the
// connection's number (1 for the first the relay accepted) and may return
// nil. plan is called from the relay's goroutines.
func (r *Relay) SetPlan(plan func(conn int) []Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plan = plan
}

// SetFaults gives every new connection the same faults.
func (r *Relay) SetFaults(faults ...Fault) {
	r.SetPlan(func(int) []Fault { return faults })
}

// Accepted is the number of connections accepted so far.
func (r *Relay) Accepted() int { return int(r.accepted.Load()) }

// Fired is the number of faults that reached their position so far.
func (r *Relay) Fired() int { return int(r.fired.Load()) }

// Active is the number of connections (client or target side) still open.
func (r *Relay) Active() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// CutAll closes the connections open now, both sides, as a target that
// restarts or times idle connections out; the relay goes on accepting.
func (r *Relay) CutAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		_ = c.Close()
	}
}

// Close stops the relay, closes every connection and waits for its
// goroutines. It is idempotent.
func (r *Relay) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	_ = r.ln.Close()
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// track registers c; false when the relay is closed (c is then closed).
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		_ = c.Close()
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.conns, c)
	_ = c.Close()
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		n := int(r.accepted.Add(1))
		if !r.track(c) {
			return
		}
		r.wg.Add(1)
		go r.handle(c, n)
	}
}

func (r *Relay) handle(client net.Conn, n int) {
	defer r.wg.Done()
	defer r.untrack(client)
	r.mu.Lock()
	target, plan := r.target, r.plan
	r.mu.Unlock()
	var faults []Fault
	if plan != nil {
		faults = plan(n)
	}
	// A target that is down looks to the client like a server that
	// accepted and closed at once.
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	var perDir [2][]Fault
	for _, f := range faults {
		perDir[f.Dir] = append(perDir[f.Dir], f)
	}
	// cut closes both connections once; the pumps then end.
	var once sync.Once
	cut := func() {
		once.Do(func() {
			_ = client.Close()
			_ = up.Close()
		})
	}
	done := make(chan struct{}, 2)
	go func() { r.pump(up, client, perDir[ToTarget], cut); done <- struct{}{} }()
	go func() { r.pump(client, up, perDir[ToClient], cut); done <- struct{}{} }()
	<-done
	// One direction ended (EOF or a cut): pass the end on, and give the
	// other direction a moment to deliver what is in flight.
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		cut()
		<-done
	}
}

// pump copies src to dst, applying faults (in order) on the way. At EOF it
// half-closes dst, so that a peer's orderly close is passed on as one.
func (r *Relay) pump(dst, src net.Conn, faults []Fault, cut func()) {
	var (
		pos     int64  // bytes of the stream taken from src so far
		tail    []byte // held back: a possible start of the active anchor
		anchor  = int64(-1)
		corrupt []byte // Corrupt: replacement bytes still to apply
		buf     = make([]byte, 32<<10)
	)
	write := func(b []byte) bool {
		_, err := dst.Write(b)
		return err == nil
	}
	for {
		if len(tail) > 0 {
			// Held-back bytes go on if nothing follows soon: the anchor
			// did not start there after all.
			_ = src.SetReadDeadline(time.Now().Add(holdBack))
		}
		n, err := src.Read(buf)
		if len(tail) > 0 {
			_ = src.SetReadDeadline(time.Time{})
			if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				if !write(tail) {
					return
				}
				tail = nil
				continue
			}
		}
		// chunk is the data not yet forwarded: held-back tail, then the new
		// bytes; it starts at stream position start.
		chunk := append(tail, buf[:n]...)
		start := pos - int64(len(tail))
		pos += int64(n)
		tail = nil
		for len(chunk) > 0 {
			if len(corrupt) > 0 {
				k := min(len(corrupt), len(chunk))
				copy(chunk[:k], corrupt[:k])
				corrupt = corrupt[k:]
				if !write(chunk[:k]) {
					return
				}
				chunk, start = chunk[k:], start+int64(k)
				continue
			}
			if len(faults) == 0 {
				if !write(chunk) {
					return
				}
				break
			}
			f := faults[0]
			if anchor < 0 {
				if f.After == "" {
					anchor = 0
				} else if i := bytes.Index(chunk, []byte(f.After)); i >= 0 {
					anchor = start + int64(i)
				} else {
					// Hold back a suffix that could start the anchor, for
					// at most holdBack.
					keep := partialSuffix(chunk, f.After)
					if !write(chunk[:len(chunk)-keep]) {
						return
					}
					tail = append([]byte(nil), chunk[len(chunk)-keep:]...)
					break
				}
			}
			at := anchor + f.Offset
			if at > start {
				k := int(min(at-start, int64(len(chunk))))
				if !write(chunk[:k]) {
					return
				}
				chunk, start = chunk[k:], start+int64(k)
				if len(chunk) == 0 {
					if start == at && f.Action == Cut {
						// The position is the end of what came: cut now,
						// not at the next read (the peer may wait for an
						// answer first).
						r.fired.Add(1)
						cut()
						return
					}
					break
				}
			}
			// The position is reached (or passed, with a held-back anchor
			// start: act at once).
			faults, anchor = faults[1:], -1
			r.fired.Add(1)
			switch f.Action {
			case Cut:
				cut()
				return
			case Stall:
				_, _ = io.Copy(io.Discard, src)
				cut()
				return
			case Corrupt:
				corrupt = append([]byte(nil), f.Data...)
			case Delay:
				time.Sleep(f.Delay)
			}
		}
		if err != nil {
			if len(tail) > 0 {
				write(tail)
			}
			// A fault at the very end of the stream (after its last byte).
			if len(faults) > 0 && anchor >= 0 && anchor+faults[0].Offset == pos && faults[0].Action == Cut {
				r.fired.Add(1)
				cut()
				return
			}
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					return
				}
			}
			cut()
			return
		}
	}
}

// holdBack is how long the relay holds back bytes that may start an
// anchor, waiting for the bytes that would complete it.
const holdBack = 50 * time.Millisecond

// partialSuffix is the length of the longest suffix of b that is a proper
// prefix of anchor.
func partialSuffix(b []byte, anchor string) int {
	for k := min(len(b), len(anchor)-1); k > 0; k-- {
		if bytes.HasSuffix(b, []byte(anchor[:k])) {
			return k
		}
	}
	return 0
}
