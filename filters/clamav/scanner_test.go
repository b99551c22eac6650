package clamav

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestScanCleanAndFound(t *testing.T) {
	leakCheck(t)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			f := newFake(t, network)
			s := newTestScanner(t, testConfig(f.url))
			res, err := s.ScanReader(context.Background(), strings.NewReader("hello\r\n"), 7)
			if err != nil || res.Infected || res.Backend != f.url || res.Duration <= 0 {
				t.Fatalf("clean: %+v, %v", res, err)
			}
			msg := virusAtEnd(300_000)
			res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
			if err != nil || !res.Infected || res.Signature != fakeSig || res.Backend != f.url {
				t.Fatalf("infected: %+v, %v", res, err)
			}
			// Unknown size within max_size.
			res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), -1)
			if err != nil || !res.Infected {
				t.Fatalf("unknown size: %+v, %v", res, err)
			}
			// Empty message.
			res, err = s.ScanReader(context.Background(), strings.NewReader(""), 0)
			if err != nil || res.Infected {
				t.Fatalf("empty: %+v, %v", res, err)
			}
		})
	}
}

func TestReplies(t *testing.T) {
	leakCheck(t)
	a, b := newFake(t, "tcp"), newFake(t, "tcp")
	s := newTestScanner(t, testConfig(a.url, b.url))
	cases := []struct {
		reply    string
		infected string // signature, or "" for an error
	}{
		{"stream: Win.Test.EICAR_HDB-1 FOUND\x00", "Win.Test.EICAR_HDB-1"},
		{"stream: Bad\x01Name FOUND\x00", "Bad<U+0001>Name"},
		{"stream: Evil\u202eName\u009b FOUND\x00", "Evil<U+202E>Name<U+009B>"},
		{"stream:  FOUND\x00", "unnamed"},
		{"stream: OK", ""},       // no NUL: cut short
		{"stream: OK\n", ""},     // wrong terminator
		{"OK\x00", ""},           // not a stream reply
		{"stream: ok\x00", ""},   // case matters
		{"stream: OK \x00", ""},  // so does space
		{"stream: OKAY\x00", ""}, // garbage
		{"stream: Can't allocate memory ERROR\x00", ""},
		{"INSTREAM: Size limit reached. ERROR\x00", ""},
		{"COMMAND READ TIMED OUT\x00", ""},
		{strings.Repeat("x", 10000), ""},
		{"", ""}, // closed without a reply
	}
	for _, c := range cases {
		for _, f := range []*fakeClamd{a, b} {
			f.set(fakeMode{reply: c.reply})
		}
		if c.reply == "" {
			for _, f := range []*fakeClamd{a, b} {
				f.set(fakeMode{closeAfter: 1})
			}
		}
		before := a.streams.Load() + b.streams.Load()
		res, err := s.ScanReader(context.Background(), strings.NewReader("some mail"), 9)
		tried := a.streams.Load() + b.streams.Load() - before
		if c.infected != "" {
			if err != nil || !res.Infected || res.Signature != c.infected {
				t.Errorf("%q: %+v, %v", c.reply, res, err)
			}
		} else {
			if err == nil || res.Infected || res.Backend != "" {
				t.Errorf("%q: %+v, %v: want an error", c.reply, res, err)
			}
		}
		want := int64(1)
		if c.reply == "" {
			want = 2 // a connection closed without a reply is a connection error: failover
		}
		if tried != want {
			t.Errorf("%q: tried on %d backends, want %d (err %v)", c.reply, tried, want, err)
		}
		t.Logf("%.60q → %+v, %.200v", c.reply, res, err)
		s.Ping(context.Background()) // both healthy again
	}
}

func TestFailover(t *testing.T) {
	leakCheck(t)
	t.Run("dead-backend", func(t *testing.T) {
		live := newFake(t, "unix")
		dead := deadAddress(t)
		s := newTestScanner(t, testConfig(dead, live.url))
		for range 3 {
			res, err := s.ScanReader(context.Background(), strings.NewReader(eicar), int64(len(eicar)))
			if err != nil || !res.Infected || res.Backend != live.url {
				t.Fatalf("%+v, %v", res, err)
			}
		}
		if s.Healthy() != 1 {
			t.Errorf("Healthy() = %d, want 1", s.Healthy())
		}
	})

	t.Run("mid-stream", func(t *testing.T) {
		a, b := newFake(t, "tcp"), newFake(t, "tcp")
		a.set(fakeMode{closeAfter: 100_000})
		s := newTestScanner(t, testConfig(a.url, b.url))
		// The pool's first health check runs at once in the background: let
		// it end, or on a loaded machine it may PING a after the failed
		// scan below and mark it up again, as it should then.
		for a.pings.Load() == 0 || b.pings.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(20 * time.Millisecond)
		msg := virusAtEnd(1 << 20)
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg))) // starts on a
		if err != nil || !res.Infected || res.Backend != b.url {
			t.Fatalf("%+v, %v", res, err)
		}
		if a.streams.Load() != 1 || s.Healthy() != 1 {
			t.Errorf("a: %d streams, healthy %d", a.streams.Load(), s.Healthy())
		}
		// a is skipped until it answers PING again.
		for range 3 {
			if res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg))); err != nil || res.Backend != b.url {
				t.Fatalf("%+v, %v", res, err)
			}
		}
		if a.streams.Load() != 1 {
			t.Errorf("a down backend got %d streams", a.streams.Load())
		}
		if err := s.Ping(context.Background()); err != nil || s.Healthy() != 2 {
			t.Errorf("after PING: %v, healthy %d", err, s.Healthy())
		}
	})

	t.Run("reader-cannot-rewind", func(t *testing.T) {
		a, b := newFake(t, "tcp"), newFake(t, "tcp")
		a.set(fakeMode{closeAfter: 100_000})
		s := newTestScanner(t, testConfig(a.url, b.url))
		msg := virusAtEnd(1 << 20)
		res, err := s.ScanReader(context.Background(), io.MultiReader(bytes.NewReader(msg)), int64(len(msg)))
		assertNoVerdict(t, res, err)
		if b.streams.Load() != 0 {
			t.Errorf("retried with a reader that had been read from")
		}
	})

	t.Run("all-down", func(t *testing.T) {
		s := newTestScanner(t, testConfig(deadAddress(t), deadAddress(t)))
		s.Ping(context.Background())
		if s.Healthy() != 0 {
			t.Fatalf("Healthy() = %d", s.Healthy())
		}
		res, err := s.ScanReader(context.Background(), strings.NewReader(eicar), int64(len(eicar)))
		assertNoVerdict(t, res, err)
		if !errors.Is(err, ErrNoVerdict) {
			t.Errorf("want ErrNoVerdict, got %v", err)
		}
		t.Log(err)
	})

	t.Run("bounded", func(t *testing.T) {
		var addrs []string
		for range 5 {
			addrs = append(addrs, deadAddress(t))
		}
		cfg := testConfig(addrs...)
		s := newTestScanner(t, cfg)
		_, err := s.ScanReader(context.Background(), strings.NewReader("x"), 1)
		if err == nil {
			t.Fatal("no error")
		}
		if n := strings.Count(err.Error(), "connecting"); n != DefaultMaxAttempts {
			t.Errorf("tried %d backends, want %d: %v", n, DefaultMaxAttempts, err)
		}
	})
}

// clamd restarting mid-scan: the connection drops; the message is never
// called clean: error with one backend, the other backend's verdict with two.
func TestRestartMidScan(t *testing.T) {
	leakCheck(t)
	msg := virusAtEnd(2 << 20)
	// restartAt makes f restart once it has n bytes of a stream; the
	// channel is closed when it listens again.
	restartAt := func(f *fakeClamd, n int64) chan struct{} {
		var once sync.Once
		restarted := make(chan struct{})
		f.set(fakeMode{onBytes: func(total int64) {
			if total >= n {
				once.Do(func() {
					f.set(fakeMode{})
					f.restart()
					close(restarted)
				})
			}
		}})
		return restarted
	}

	t.Run("one-backend", func(t *testing.T) {
		f := newFake(t, "tcp")
		restarted := restartAt(f, 500_000)
		s := newTestScanner(t, testConfig(f.url))
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		t.Log(err)
		// Back after the restart.
		<-restarted
		if err := s.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		if err != nil || !res.Infected {
			t.Fatalf("after the restart: %+v, %v", res, err)
		}
	})

	t.Run("two-backends", func(t *testing.T) {
		a, b := newFake(t, "unix"), newFake(t, "tcp")
		restartAt(a, 500_000)
		cfg := testConfig(a.url, b.url)
		cfg.HealthInterval = 50 * time.Millisecond
		s := newTestScanner(t, cfg) // a new scanner starts its round-robin at a
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		if err != nil || !res.Infected || res.Backend != b.url {
			t.Fatalf("%+v, %v", res, err)
		}
		waitFor(t, 2*time.Second, "the restarted backend back up", func() bool { return s.Healthy() == 2 })
	})

	t.Run("restart-while-waiting-for-the-verdict", func(t *testing.T) {
		f := newFake(t, "tcp")
		f.set(fakeMode{replyDelay: time.Minute})
		s := newTestScanner(t, testConfig(f.url))
		go func() {
			for f.ended.Load() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			f.restart()
		}()
		res, err := s.ScanReader(context.Background(), strings.NewReader(eicar), int64(len(eicar)))
		assertNoVerdict(t, res, err)
		t.Log(err)
	})
}

func TestConcurrencyBound(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	f.set(fakeMode{replyDelay: 100 * time.Millisecond})
	cfg := testConfig(f.url)
	cfg.MaxConcurrent = 2
	s := newTestScanner(t, cfg)
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			if res, err := s.ScanReader(context.Background(), strings.NewReader("mail"), 4); err != nil || res.Infected {
				t.Errorf("%+v, %v", res, err)
			}
		})
	}
	wg.Wait()
	if m := f.maxInflight.Load(); m != 2 {
		t.Errorf("at most %d scans at once, want 2", m)
	}

	// Waiting for a slot respects the context, and Close.
	f.set(fakeMode{hangAfterAccept: true})
	hung := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := s.ScanReader(context.Background(), strings.NewReader("mail"), 4)
			hung <- err
		}()
	}
	waitFor(t, 2*time.Second, "two scans in flight", func() bool { return f.inflight.Load() == 2 })
	streams := f.streams.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.ScanReader(ctx, strings.NewReader("mail"), 4)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 400*time.Millisecond {
		t.Errorf("waiting for a slot: %v after %v", err, time.Since(start))
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := s.ScanReader(context.Background(), strings.NewReader("mail"), 4)
		waiting <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case err := <-waiting:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("waiter after Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Errorf("Close did not end the wait for a slot")
	}
	if f.streams.Load() != streams {
		t.Errorf("a scan that waited for a slot reached clamd")
	}
	for range 2 {
		if err := <-hung; !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("hung scan: %v", err)
		}
	}
	if _, err := s.ScanReader(context.Background(), strings.NewReader("mail"), 4); !errors.Is(err, ErrClosed) {
		t.Errorf("Scan after Close: %v", err)
	}
}

func TestScanTimeout(t *testing.T) {
	cfg := Config{Addresses: []string{"tcp://127.0.0.1:1"}}.withDefaults()
	for _, c := range []struct {
		size int64
		want time.Duration
	}{
		{-1, 30 * time.Second},
		{0, 5 * time.Second},
		{100_000, 5*time.Second + 100*time.Millisecond},
		{10_000_000, 15 * time.Second},
		{25_000_000, 30 * time.Second},
		{1 << 40, 30 * time.Second},
		{1<<63 - 1, 30 * time.Second},
	} {
		if got := scanTimeout(cfg, c.size); got != c.want {
			t.Errorf("scanTimeout(%d) = %v, want %v", c.size, got, c.want)
		}
	}
	small := Config{Addresses: []string{"tcp://127.0.0.1:1"}, Timeout: 2 * time.Second}.withDefaults()
	if got := scanTimeout(small, 0); got != 2*time.Second {
		t.Errorf("floor above the ceiling: %v", got)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	leakCheck(t)
	hung := newFake(t, "tcp")
	hung.set(fakeMode{pingHang: true})
	ok := newFake(t, "unix")
	cfg := testConfig(hung.url, ok.url, deadAddress(t))
	cfg.HealthInterval = 20 * time.Millisecond
	cfg.PingTimeout = 10 * time.Second // a health check hangs while Close runs
	s, err := NewScanner(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "a PING to the hung backend", func() bool { return hung.pings.Load() > 0 })
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after Close: %v", err)
	}
}

func TestNewScannerErrors(t *testing.T) {
	for _, addrs := range [][]string{
		nil,
		{"127.0.0.1:3310"},
		{"tcp://127.0.0.1"},
		{"tcp://127.0.0.1:0"},
		{"tcp://127.0.0.1:3310/x"},
		{"tcp://:3310"},
		{"unix://relative.sock"},
		{"unix:///"},
		{"unix:///run/clamd.sock?x=1"},
		{"http://127.0.0.1:3310"},
		{"tcp://127.0.0.1:3310", "tcp://127.0.0.1:3310"},
	} {
		if s, err := NewScanner(Config{Addresses: addrs}, zerolog.Nop()); err == nil {
			s.Close()
			t.Errorf("%q accepted", addrs)
		}
	}
	for _, a := range []string{"tcp://127.0.0.1:3310", "tcp://[::1]:3310", "tcp://clamd.example.org:3310", "unix:///run/clamav/clamd.ctl"} {
		if _, _, err := ParseAddress(a); err != nil {
			t.Errorf("%q: %v", a, err)
		}
	}
}
