package clamav

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// sessionConfig is testConfig with connections reused.
func sessionConfig(addrs ...string) Config {
	cfg := testConfig(addrs...)
	cfg.ReuseConnections = true
	return cfg
}

// sessionScanner is a scanner with cfg once its backends' first health
// check found out whether they keep sessions.
func sessionScanner(t *testing.T, cfg Config) *Scanner {
	t.Helper()
	s := newTestScanner(t, cfg)
	waitFor(t, 2*time.Second, "the sessions check", func() bool {
		for _, b := range s.pool.Members() {
			if b.sessions.known.Load() == sessionsUnknown {
				return false
			}
		}
		return true
	})
	return s
}

// scanWant scans msg and fails the test unless the verdict is infected.
func scanWant(t *testing.T, s *Scanner, msg []byte, infected bool) {
	t.Helper()
	res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
	if err != nil || res.Infected != infected {
		t.Fatalf("got %+v, %v; want infected = %v", res, err, infected)
	}
}

// TestSessionsReuseConnections checks that scans in a row share one clamd
// session, each with its own right verdict, and that without reuse each
// scan has its own connection.
func TestSessionsReuseConnections(t *testing.T) {
	leakCheck(t)
	virus := virusAtEnd(200_000)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := newFake(t, network)
			s := sessionScanner(t, sessionConfig(f.url))
			for i := range 6 {
				scanWant(t, s, virus, true)
				scanWant(t, s, []byte("clean\r\n"), false)
				if res, err := s.ScanReader(context.Background(), strings.NewReader(""), 0); err != nil || res.Infected {
					t.Fatalf("round %d, empty message: %+v, %v", i, res, err)
				}
			}
			if got, conns, streams := f.sessions.Load(), f.scanConns.Load(), f.streams.Load(); got != 1 || conns != 1 || streams != 18 {
				t.Errorf("%d streams in %d sessions on %d connections, want 18 in 1 on 1", streams, got, conns)
			}
		})
	}
	t.Run("not-kept-by-the-backend", func(t *testing.T) {
		f := newFake(t, "tcp")
		f.set(fakeMode{noSessions: true})
		s := sessionScanner(t, sessionConfig(f.url))
		f.set(fakeMode{})
		for range 3 {
			scanWant(t, s, virus, true)
		}
		if got, conns := f.sessions.Load(), f.scanConns.Load(); got != 0 || conns != 3 {
			t.Errorf("%d sessions, %d scan connections; want 0 and 3", got, conns)
		}
	})
	t.Run("off", func(t *testing.T) {
		f := newFake(t, "tcp")
		s := newTestScanner(t, testConfig(f.url))
		for range 3 {
			scanWant(t, s, virus, true)
		}
		if got, conns := f.sessions.Load(), f.scanConns.Load(); got != 0 || conns != 3 {
			t.Errorf("%d sessions, %d connections; want 0 and 3", got, conns)
		}
	})
}

// TestSessionsConcurrent runs scans at once: each gets its own verdict,
// and no more connections stay open than scans may run at once.
func TestSessionsConcurrent(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	cfg := sessionConfig(f.url)
	cfg.MaxConcurrent = 4
	s := sessionScanner(t, cfg)
	virus := virusAtEnd(100_000)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range 8 {
		wg.Go(func() {
			for i := range 8 {
				msg, want := []byte("clean\r\n"), false
				if (w+i)%3 == 0 {
					msg, want = virus, true
				}
				res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
				if err != nil || res.Infected != want {
					errs <- errors.Join(err, errors.New("wrong verdict"))
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.sessions.Load(); n < 1 || n > 4 {
		t.Errorf("%d sessions for 64 scans, at most 4 at once: want 1 to 4", n)
	}
}

// TestSessionsBroken checks that a connection is reused only after a
// clean exchange: clamd closing idle sessions, a reply numbered for
// another command, a connection cut mid-stream, a timeout. Each scan
// after such a failure gets a verdict on a new connection, and the backend
// stays up.
func TestSessionsBroken(t *testing.T) {
	leakCheck(t)
	virus := virusAtEnd(100_000)

	t.Run("closed-while-idle", func(t *testing.T) {
		f := newFake(t, "tcp")
		f.set(fakeMode{closeAfterReply: true})
		s := sessionScanner(t, sessionConfig(f.url))
		for range 4 {
			scanWant(t, s, virus, true)
			waitFor(t, time.Second, "the fake to close the session", func() bool {
				f.mu.Lock()
				defer f.mu.Unlock()
				return len(f.conns) == 0
			})
		}
		if n := f.sessions.Load(); n != 4 {
			t.Errorf("%d sessions, want 4: a closed session must not be reused", n)
		}
		if s.Healthy() != 1 {
			t.Error("the backend was marked down")
		}
	})

	// Replies that end the exchange without a verdict: the session is not
	// used again.
	for _, c := range []struct {
		name, problem string
		mode          fakeMode
	}{
		{"misnumbered-reply", "reply not numbered 2, for the command sent in the clamd session", fakeMode{misnumber: true}},
		{"error-reply", "clamd error", fakeMode{answerWith: "stream: Can't allocate memory ERROR"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFake(t, "tcp")
			s := sessionScanner(t, sessionConfig(f.url))
			scanWant(t, s, virus, true)
			f.set(c.mode)
			res, err := s.ScanReader(context.Background(), bytes.NewReader(virus), int64(len(virus)))
			var re *ReplyError
			if !errors.As(err, &re) || re.Problem != c.problem || res.Infected {
				t.Fatalf("%+v, %v; want a ReplyError %q and no verdict", res, err, c.problem)
			}
			f.set(fakeMode{})
			scanWant(t, s, virus, true)
			if n := f.sessions.Load(); n != 2 {
				t.Errorf("%d sessions, want 2: the session of the bad reply must be closed", n)
			}
		})
	}

	t.Run("cut-mid-stream", func(t *testing.T) {
		f := newFake(t, "tcp")
		s := sessionScanner(t, sessionConfig(f.url))
		scanWant(t, s, virus, true)
		f.set(fakeMode{closeAfter: 50_000})
		res, err := s.ScanReader(context.Background(), bytes.NewReader(virus), int64(len(virus)))
		assertNoVerdict(t, res, err)
		f.set(fakeMode{})
		scanWant(t, s, virus, true)
		scanWant(t, s, []byte("clean\r\n"), false)
		if n := f.sessions.Load(); n != 2 {
			t.Errorf("%d sessions, want 2", n)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		f := newFake(t, "tcp")
		cfg := sessionConfig(f.url)
		cfg.Timeout, cfg.MinTimeout = 300*time.Millisecond, 300*time.Millisecond
		s := sessionScanner(t, cfg)
		scanWant(t, s, virus, true)
		f.set(fakeMode{replyDelay: time.Second})
		res, err := s.ScanReader(context.Background(), bytes.NewReader(virus), int64(len(virus)))
		if !errors.Is(err, context.DeadlineExceeded) || res.Infected {
			t.Fatalf("late reply: %+v, %v; want a timeout", res, err)
		}
		f.set(fakeMode{})
		// The late reply to the timed-out scan must not be taken for this
		// scan's verdict: the connection it comes on was closed.
		scanWant(t, s, []byte("clean\r\n"), false)
		scanWant(t, s, virus, true)
	})
}

// heldReader is a bytes.Reader whose first Read waits for open: a message
// whose first bytes are late, as one still arriving from the server.
type heldReader struct {
	*bytes.Reader
	open chan struct{}
}

func (h *heldReader) Read(p []byte) (int, error) {
	<-h.open
	return h.Reader.Read(p)
}

// TestSessionsClosedAfterTaken checks a connection that clamd closes after
// a scan took it idle, while the scan waits for the message's first
// bytes: the scan must notice before it sends anything, go on on a new
// connection, and leave the backend up.
func TestSessionsClosedAfterTaken(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := sessionScanner(t, sessionConfig(f.url))
	scanWant(t, s, []byte("clean\r\n"), false)
	b := s.pool.Members()[0]
	idle := func() int {
		b.sessions.mu.Lock()
		defer b.sessions.mu.Unlock()
		return len(b.sessions.idle)
	}
	virus := virusAtEnd(100_000)
	msg := &heldReader{Reader: bytes.NewReader(virus), open: make(chan struct{})}
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := s.ScanReader(context.Background(), msg, int64(len(virus)))
		done <- result{res, err}
	}()
	waitFor(t, time.Second, "the scan to take the idle connection", func() bool { return idle() == 0 })
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	time.Sleep(20 * time.Millisecond) // the close reaches the scanner's side
	close(msg.open)
	r := <-done
	if r.err != nil || !r.res.Infected {
		t.Fatalf("%+v, %v; want the verdict from a new connection", r.res, r.err)
	}
	if s.Healthy() != 1 {
		t.Error("the backend was marked down for a connection it had closed while idle")
	}
	if n := f.sessions.Load(); n != 2 {
		t.Errorf("%d sessions carried scans, want 2", n)
	}
}

// TestSessionsClosedWithScanner checks that Close ends the idle sessions.
func TestSessionsClosedWithScanner(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	s := sessionScanner(t, sessionConfig(f.url))
	scanWant(t, s, []byte("clean\r\n"), false)
	f.mu.Lock()
	open := len(f.conns)
	f.mu.Unlock()
	if open != 1 {
		t.Fatalf("%d connections open after a scan, want the session's", open)
	}
	s.Close()
	waitFor(t, time.Second, "the session to be closed", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.conns) == 0
	})
}
