package clamav

// One test per defect of github.com/dutchcoders/go-clamd listed in issue 3.
// Each runs go-clamd itself against the fault-injecting fake clamd first (the
// "go-clamd" subtest confirms the defect and logs it), then this package
// against the same fault (the "popgate" subtest proves it closed).

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clamd "github.com/dutchcoders/go-clamd"
)

// errBroken is the error of failingReader.
var errBroken = errors.New("spool read error (injected)")

// failingReader yields data up to failAt, then fails.
type failingReader struct {
	data   []byte
	failAt int
	off    int
}

func (r *failingReader) Read(p []byte) (int, error) {
	if r.off >= r.failAt {
		return 0, errBroken
	}
	n := copy(p, r.data[r.off:r.failAt])
	r.off += n
	return n, nil
}

// countReader counts what is read from it.
type countReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// virusAtEnd is size bytes of clean text followed by EICAR.
func virusAtEnd(size int) []byte {
	b := bytes.Repeat([]byte("a clean line of text\r\n"), size/22+1)[:size]
	return append(b, eicar...)
}

func assertNoVerdict(t *testing.T, res Result, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("got a verdict (%+v), want an error", res)
	}
	if res.Infected || res.Backend != "" || res.Signature != "" {
		t.Fatalf("error %v came with a verdict %+v", err, res)
	}
}

// goClamdResult waits up to d for go-clamd's first result.
func goClamdResult(ch chan *clamd.ScanResult, d time.Duration) (r *clamd.ScanResult, closed, timedOut bool) {
	select {
	case r, ok := <-ch:
		return r, !ok, false
	case <-time.After(d):
		return nil, false, true
	}
}

// goroutinesIn counts the goroutines with fn on their stack.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

func drain(ch chan *clamd.ScanResult) {
	for range ch {
	}
}

// Defect 1: ScanStream ignores write errors and scans whatever was sent when
// the reader fails (go-clamd clamd.go:279-296: a read error ends the loop and
// the end marker is sent; sendChunk's errors are dropped at clamd.go:284 and
// conn.go:78).
func TestDefect1ReadErrorScansPartialStream(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	msg := virusAtEnd(200_000) // the virus comes after the point where the reader fails
	const failAt = 100_000

	t.Run("go-clamd", func(t *testing.T) {
		abort := make(chan bool)
		defer close(abort)
		ended := f.ended.Load()
		ch, err := clamd.NewClamd(f.url).ScanStream(&failingReader{data: msg, failAt: failAt}, abort)
		if err != nil {
			t.Fatalf("go-clamd: %v", err)
		}
		r, _, _ := goClamdResult(ch, 5*time.Second)
		drain(ch)
		if r == nil || r.Status != clamd.RES_OK || f.ended.Load() != ended+1 {
			t.Fatalf("defect not reproduced: %+v", r)
		}
		t.Logf("DEFECT CONFIRMED: the reader failed after %d of %d bytes, go-clamd sent the end marker anyway and returned %q with no error", failAt, len(msg), r.Raw)
	})

	t.Run("popgate", func(t *testing.T) {
		s := newTestScanner(t, testConfig(f.url))
		ended := f.ended.Load()
		res, err := s.ScanReader(context.Background(), &failingReader{data: msg, failAt: failAt}, int64(len(msg)))
		assertNoVerdict(t, res, err)
		if !errors.Is(err, errBroken) {
			t.Errorf("error %v does not wrap the read error", err)
		}
		if f.ended.Load() != ended {
			t.Errorf("the end marker was sent: clamd scanned a partial stream")
		}
		t.Logf("read error: %v", err)
	})

	t.Run("popgate/size-mismatch", func(t *testing.T) {
		s := newTestScanner(t, testConfig(f.url))
		ended := f.ended.Load()
		// Shorter than declared: the rest (with the virus) never comes.
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg[:failAt]), int64(len(msg)))
		assertNoVerdict(t, res, err)
		// Longer than declared: the virus would be past the declared end.
		res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), failAt)
		assertNoVerdict(t, res, err)
		// A reader that makes no progress.
		res, err = s.ScanReader(context.Background(), stuckReader{}, 10)
		assertNoVerdict(t, res, err)
		if !errors.Is(err, io.ErrNoProgress) {
			t.Errorf("stuck reader: %v", err)
		}
		if f.ended.Load() != ended {
			t.Errorf("the end marker was sent for a stream that did not match its size")
		}
	})
}

type stuckReader struct{}

func (stuckReader) Read([]byte) (int, error) { return 0, nil }

// Defect 1, the write side: go-clamd goes on reading the message into a dead
// connection (write errors ignored, clamd.go:284, conn.go:78), and a reply
// that arrives before the end of the stream is taken as the verdict.
func TestDefect1WriteErrorsAndEarlyReply(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	msg := virusAtEnd(4 << 20)

	t.Run("go-clamd/dead-connection", func(t *testing.T) {
		f.set(fakeMode{closeAfter: 64 << 10})
		abort := make(chan bool)
		defer close(abort)
		cr := &countReader{r: bytes.NewReader(msg)}
		ch, err := clamd.NewClamd(f.url).ScanStream(cr, abort)
		if ch != nil {
			drain(ch)
		}
		if cr.n.Load() != int64(len(msg)) {
			t.Fatalf("defect not reproduced: go-clamd read %d of %d bytes", cr.n.Load(), len(msg))
		}
		t.Logf("DEFECT CONFIRMED: clamd closed the connection after 64 KiB; go-clamd ignored the write errors, read all %d bytes of the message and returned err=%v", len(msg), err)
	})

	t.Run("go-clamd/early-reply", func(t *testing.T) {
		f.set(fakeMode{earlyReply: "stream: OK\n"})
		abort := make(chan bool)
		defer close(abort)
		ch, err := clamd.NewClamd(f.url).ScanStream(bytes.NewReader(msg), abort)
		if err != nil {
			t.Fatalf("go-clamd: %v", err)
		}
		r, _, _ := goClamdResult(ch, 5*time.Second)
		drain(ch)
		if r == nil || r.Status != clamd.RES_OK {
			t.Fatalf("defect not reproduced: %+v", r)
		}
		t.Logf("DEFECT CONFIRMED: a reply sent before the end of the stream is go-clamd's verdict: %q for a message ending in EICAR", r.Raw)
	})

	t.Run("popgate/dead-connection", func(t *testing.T) {
		f.set(fakeMode{closeAfter: 64 << 10})
		s := newTestScanner(t, testConfig(f.url))
		cr := &countReader{r: bytes.NewReader(msg)}
		res, err := s.ScanReader(context.Background(), cr, int64(len(msg)))
		assertNoVerdict(t, res, err)
		var ce *connError
		if !errors.As(err, &ce) {
			t.Errorf("want a connection error, got %v", err)
		}
		// It stops at the first failed write; what it read beyond 64 KiB sat
		// in socket buffers when clamd closed.
		if n := cr.n.Load(); n == int64(len(msg)) {
			t.Errorf("read the whole message (%d bytes) into a dead connection", n)
		}
		t.Logf("read %d of %d bytes: %v", cr.n.Load(), len(msg), err)
	})

	t.Run("popgate/early-reply", func(t *testing.T) {
		f.set(fakeMode{earlyReply: "stream: OK\x00"})
		s := newTestScanner(t, testConfig(f.url))
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		var re *ReplyError
		// Seen as early, or (when the reader got to it only after the end
		// marker went out) by the real verdict that follows it.
		if !errors.As(err, &re) || !(strings.Contains(re.Problem, "before the end") || strings.Contains(re.Problem, "after the reply")) {
			t.Errorf("want a ReplyError about an early reply, got %v", err)
		}
	})
}

// Defect 2: the abort goroutine (go-clamd clamd.go:267-275) leaks, with the
// connection, until abort is closed; `abort <- true` is received and the loop
// goes on, so it does not abort anything.
func TestDefect2AbortGoroutine(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")

	t.Run("go-clamd", func(t *testing.T) {
		// go-clamd's abort goroutine is the closure in ScanStream.
		aborters := func() int { return goroutinesIn("go-clamd.(*Clamd).ScanStream.func1") }
		base := aborters()
		abort := make(chan bool)
		ch, err := clamd.NewClamd(f.url).ScanStream(strings.NewReader("clean"), abort)
		if err != nil {
			t.Fatal(err)
		}
		drain(ch)
		time.Sleep(200 * time.Millisecond)
		leaked := aborters() - base
		abort <- true // "abort": received, ignored
		time.Sleep(50 * time.Millisecond)
		still := aborters() - base
		close(abort)
		waitFor(t, 2*time.Second, "go-clamd's abort goroutine to end", func() bool { return aborters() <= base })
		if leaked < 1 || still < 1 {
			t.Fatalf("defect not reproduced: %d, %d goroutines left", leaked, still)
		}
		t.Logf("DEFECT CONFIRMED: after the verdict, %d goroutine(s) remain until abort is closed; abort <- true leaves %d", leaked, still)

		// On a hung clamd, abort <- true does not end the scan either.
		f.set(fakeMode{hangAfterAccept: true})
		abort = make(chan bool)
		ch, err = clamd.NewClamd(f.url).ScanStream(strings.NewReader("clean"), abort)
		if err != nil {
			t.Fatal(err)
		}
		abort <- true
		_, _, timedOut := goClamdResult(ch, 300*time.Millisecond)
		close(abort) // this one does close the connection
		drain(ch)
		if !timedOut {
			t.Fatalf("defect not reproduced: abort <- true ended the scan")
		}
		t.Logf("DEFECT CONFIRMED: abort <- true does not end a scan on a hung clamd; only close(abort) does")
	})

	t.Run("popgate", func(t *testing.T) {
		f.set(fakeMode{})
		s := newTestScanner(t, testConfig(f.url))
		base := runtime.NumGoroutine()
		for range 20 {
			if _, err := s.ScanReader(context.Background(), strings.NewReader("clean"), 5); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 2*time.Second, "goroutines back to the baseline after 20 scans", func() bool { return runtime.NumGoroutine() <= base })

		// Cancelling the context ends a scan on a clamd that does not
		// answer at once and closes the connection (the fake sees it).
		f.set(fakeMode{replyDelay: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(200*time.Millisecond, cancel)
		msg := virusAtEnd(1 << 20)
		start := time.Now()
		res, err := s.ScanReader(ctx, bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("want context.Canceled, got %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("cancellation took %v", d)
		}
		select {
		case <-f.connClosed:
		case <-time.After(3 * time.Second):
			t.Errorf("the fake clamd did not see the connection closed")
		}
		waitFor(t, 2*time.Second, "goroutines back to the baseline after a cancelled scan", func() bool { return runtime.NumGoroutine() <= base })
	})
}

// Defect 3: no read/write deadlines and no context (go-clamd conn.go:171-178
// dials unix sockets without a timeout, conn.go:98 reads the reply with no
// deadline, clamd.go:261 takes no context): a hung clamd hangs the caller.
func TestDefect3NoDeadlines(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "unix")
	f.set(fakeMode{hangAfterAccept: true, pingHang: true})

	t.Run("go-clamd", func(t *testing.T) {
		abort := make(chan bool)
		ch, err := clamd.NewClamd(f.url).ScanStream(strings.NewReader("clean"), abort)
		if err != nil {
			t.Fatal(err)
		}
		_, _, timedOut := goClamdResult(ch, time.Second)
		close(abort)
		drain(ch)
		if !timedOut {
			t.Fatalf("defect not reproduced")
		}
		pinged := make(chan struct{})
		go func() {
			defer close(pinged)
			defer func() { _ = recover() }() // it panics once the fake lets go (defect 5)
			_ = clamd.NewClamd(f.url).Ping()
		}()
		select {
		case <-pinged:
			t.Fatalf("defect not reproduced: Ping returned")
		case <-time.After(500 * time.Millisecond):
		}
		t.Logf("DEFECT CONFIRMED: ScanStream and Ping wait forever on a clamd that accepts and never answers")
		f.stop() // lets the Ping goroutine go
		<-pinged
		f.start()
	})

	t.Run("popgate/hang-after-accept", func(t *testing.T) {
		cfg := testConfig(f.url)
		s := newTestScanner(t, cfg)
		start := time.Now()
		res, err := s.ScanReader(context.Background(), strings.NewReader("clean"), 5)
		assertNoVerdict(t, res, err)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("want a timeout, got %v", err)
		}
		if d, max := time.Since(start), s.ScanTimeout(5)+time.Second; d > max {
			t.Errorf("took %v, deadline %v", d, s.ScanTimeout(5))
		}
		t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
	})

	t.Run("popgate/hang-mid-stream", func(t *testing.T) {
		f.set(fakeMode{hangAfter: 64 << 10})
		s := newTestScanner(t, testConfig(f.url))
		msg := virusAtEnd(8 << 20) // more than the socket buffers: the writes block
		start := time.Now()
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("want a timeout, got %v", err)
		}
		if d := time.Since(start); d > s.ScanTimeout(int64(len(msg)))+time.Second {
			t.Errorf("took %v", d)
		}
	})

	t.Run("popgate/slow-but-progressing", func(t *testing.T) {
		// The deadline scales with the size: 0.5 s + 1 MB at 1 MB/s = 1.5 s.
		cfg := testConfig(f.url)
		cfg.Throughput = 1 << 20
		cfg.Timeout = 10 * time.Second
		s := newTestScanner(t, cfg)
		msg := virusAtEnd(1 << 20)
		if got := s.ScanTimeout(int64(len(msg))); got < 1400*time.Millisecond || got > 1600*time.Millisecond {
			t.Fatalf("ScanTimeout = %v", got)
		}
		f.set(fakeMode{readRate: 8 << 20}) // done in about 1/8 s
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		if err != nil || !res.Infected {
			t.Fatalf("slow clamd within the deadline: %+v, %v", res, err)
		}
		f.set(fakeMode{readRate: 200 << 10}) // would take 5 s
		start := time.Now()
		res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		if d := time.Since(start); d < time.Second || d > 3*time.Second {
			t.Errorf("too slow a clamd gave up after %v, deadline 1.5 s", d)
		}
	})

	t.Run("popgate/ping", func(t *testing.T) {
		f.set(fakeMode{pingHang: true})
		s := newTestScanner(t, testConfig(f.url))
		start := time.Now()
		if err := s.Ping(context.Background()); err == nil {
			t.Fatal("Ping of a hung clamd succeeded")
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("Ping took %v with PingTimeout 300ms", d)
		}
		if s.Healthy() != 0 {
			t.Errorf("hung backend still healthy")
		}
	})
}

// Defect 4: the size-limit reply is lost. go-clamd's reply regexp
// (conn.go:43-45) needs "path: …", so "INSTREAM size limit exceeded. ERROR"
// becomes Status "PARSE ERROR"; and when clamd's close makes a write fail,
// sendEOF's error is returned without reading the reply (clamd.go:293-296).
func TestDefect4SizeLimit(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	const limit = 1 << 20 // the fake's StreamMaxLength
	f.set(fakeMode{sizeLimit: limit})

	t.Run("go-clamd", func(t *testing.T) {
		abort := make(chan bool)
		defer close(abort)
		ch, err := clamd.NewClamd(f.url).ScanStream(bytes.NewReader(virusAtEnd(limit)), abort)
		if err != nil {
			// The fake's close raced go-clamd's last write: the reply is
			// lost in the write error, the other face of this defect.
			t.Logf("DEFECT CONFIRMED: the size-limit reply is lost in %v", err)
		} else {
			r, _, _ := goClamdResult(ch, 5*time.Second)
			drain(ch)
			if r == nil || r.Status != clamd.RES_PARSE_ERROR {
				t.Fatalf("defect not reproduced: %+v", r)
			}
			t.Logf("DEFECT CONFIRMED: the size-limit reply %q comes back as Status %q (not %q)", r.Raw, r.Status, clamd.RES_ERROR)
		}

		abort2 := make(chan bool)
		defer close(abort2)
		var r *clamd.ScanResult
		ch, err = clamd.NewClamd(f.url).ScanStream(bytes.NewReader(virusAtEnd(16<<20)), abort2)
		if ch != nil {
			r, _, _ = goClamdResult(ch, 5*time.Second)
			drain(ch)
		}
		if r != nil && r.Status == clamd.RES_ERROR {
			t.Fatalf("go-clamd reported the size limit properly")
		}
		if r != nil {
			t.Logf("DEFECT CONFIRMED (16 MiB): go-clamd returns err=%v and Status %q", err, r.Status)
		} else {
			t.Logf("DEFECT CONFIRMED (16 MiB): go-clamd returns err=%v and no result: the size-limit reply is lost", err)
		}
	})

	t.Run("popgate/over-max-size", func(t *testing.T) {
		cfg := testConfig(f.url)
		cfg.MaxSize = limit
		s := newTestScanner(t, cfg)
		streams := f.streams.Load()
		msg := virusAtEnd(limit)
		res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		assertNoVerdict(t, res, err)
		if !errors.Is(err, ErrOversize) {
			t.Errorf("want ErrOversize, got %v", err)
		}
		if f.streams.Load() != streams {
			t.Errorf("connected to clamd for a message over max_size")
		}
		// Unknown size: exactly max_size bytes go out, no end marker.
		ended := f.ended.Load()
		res, err = s.ScanReader(context.Background(), bytes.NewReader(msg), -1)
		assertNoVerdict(t, res, err)
		if !errors.Is(err, ErrOversize) {
			t.Errorf("unknown size: want ErrOversize, got %v", err)
		}
		if f.ended.Load() != ended || f.lastStream.Load() > limit {
			t.Errorf("sent %d bytes (max_size %d) and the end marker %v", f.lastStream.Load(), limit, f.ended.Load() != ended)
		}
		// Exactly max_size: scanned.
		res, err = s.ScanReader(context.Background(), bytes.NewReader(msg[len(msg)-limit:]), limit)
		if err != nil || !res.Infected {
			t.Errorf("a message of exactly max_size: %+v, %v", res, err)
		}
	})

	t.Run("popgate/misconfigured", func(t *testing.T) {
		other := newFake(t, "tcp") // must not be asked: a size limit is not retried
		s := newTestScanner(t, testConfig(f.url, other.url))
		for _, size := range []int{limit + 1 - len(eicar), 8 << 20} {
			msg := virusAtEnd(size)
			res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
			assertNoVerdict(t, res, err)
			if !errors.Is(err, ErrSizeLimit) {
				t.Errorf("%d bytes: want ErrSizeLimit, got %v", len(msg), err)
			}
			s.pool.Candidates() // a turn of the round-robin of two: the next scan starts at f again
		}
		if n := other.streams.Load(); n != 0 {
			t.Errorf("a size-limit refusal was retried on another backend (%d streams)", n)
		}
	})
}

// Defect 5: Ping and Reload panic when clamd closes the connection without a
// reply: `s := <-ch` yields nil from the closed channel and s.Raw
// dereferences it (go-clamd clamd.go:117-118 and 180-181).
func TestDefect5PingPanics(t *testing.T) {
	leakCheck(t)
	f := newFake(t, "tcp")
	f.set(fakeMode{pingClose: true})

	t.Run("go-clamd", func(t *testing.T) {
		for name, call := range map[string]func(*clamd.Clamd) error{"Ping": (*clamd.Clamd).Ping, "Reload": (*clamd.Clamd).Reload} {
			p := func() (p any) {
				defer func() { p = recover() }()
				_ = call(clamd.NewClamd(f.url))
				return nil
			}()
			if p == nil {
				t.Fatalf("defect not reproduced: %s did not panic", name)
			}
			t.Logf("DEFECT CONFIRMED: go-clamd %s panics: %v", name, p)
		}
	})

	t.Run("popgate", func(t *testing.T) {
		cfg := testConfig(f.url)
		cfg.HealthInterval = 30 * time.Millisecond
		s := newTestScanner(t, cfg)
		waitFor(t, 2*time.Second, "the backend marked down", func() bool { return s.Healthy() == 0 })
		if err := s.Ping(context.Background()); err == nil {
			t.Error("Ping succeeded on a clamd that closes without a reply")
		}
		f.set(fakeMode{pingReply: "PANG"})
		if err := s.Ping(context.Background()); err == nil {
			t.Error("Ping succeeded on a wrong reply")
		}
		f.set(fakeMode{})
		waitFor(t, 2*time.Second, "the backend back up", func() bool { return s.Healthy() == 1 })
		f.set(fakeMode{pingHang: true})
		waitFor(t, 2*time.Second, "a hung backend marked down", func() bool { return s.Healthy() == 0 })
		start := time.Now()
		s.Close() // while a health check may hang
		if d := time.Since(start); d > time.Second {
			t.Errorf("Close took %v", d)
		}
	})
}
