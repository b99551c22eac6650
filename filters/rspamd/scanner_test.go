package rspamd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/testenv"
)

// Fault injection: in-process fakes of rspamd's normal worker (for faults
// only: the real answers are tested against the real rspamd), and the
// fault relay in front of the real one.

const fakeReply = `{"is_skipped":false,"score":1.5,"required_score":15.0,"action":"no action",` +
	`"symbols":{"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"options":["text/plain"]}}}`

// fake is an rspamd normal worker that answers /ping with pong and
// /checkv2 as its mode says.
type fake struct {
	srv    *httptest.Server
	url    string
	mode   atomic.Value // string: "ok", "garbage", "500", "huge", "hang", "cut"
	pings  atomic.Int32
	checks atomic.Int32

	mu      sync.Mutex
	lastReq *http.Request
	lastMsg []byte
}

func newFake(t *testing.T, mode string) *fake {
	t.Helper()
	f := &fake{}
	f.mode.Store(mode)
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	f.url = f.srv.URL
	return f
}

func (f *fake) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Server", "rspamd/9.9-fake")
	if r.URL.Path == "/ping" {
		f.pings.Add(1)
		io.WriteString(w, "pong\r\n")
		return
	}
	f.checks.Add(1)
	msg, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.lastReq, f.lastMsg = r, msg
	f.mu.Unlock()
	switch f.mode.Load().(string) {
	case "garbage":
		io.WriteString(w, "<html>It works!</html>")
	case "500":
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":"the fake is out of order"}`)
	case "huge":
		io.WriteString(w, `{"score":1,"required_score":15,"action":"no action","symbols":{`)
		io.WriteString(w, strings.Repeat(`"X":{"score":0},`, 200_000))
		io.WriteString(w, `"Y":{"score":0}}}`)
	case "hang":
		<-r.Context().Done()
	case "cut":
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, fakeReply[:20])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	default:
		io.WriteString(w, fakeReply)
	}
}

// deadAddress is a loopback address where nothing listens.
func deadAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func newTestScanner(t *testing.T, cfg Config) *Scanner {
	t.Helper()
	if cfg.HealthInterval == 0 {
		cfg.HealthInterval = time.Hour
	}
	s, err := NewScanner(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// settled waits for the health checker's first round, so that its results
// cannot land after a test's own observations.
func settled(t *testing.T, fakes ...*fake) {
	t.Helper()
	for _, f := range fakes {
		waitFor(t, "the first health check", func() bool { return f.pings.Load() >= 1 })
	}
}

func upStates(s *Scanner) []bool {
	var up []bool
	for _, b := range s.Backends() {
		up = append(up, b.Up)
	}
	return up
}

func TestFailover(t *testing.T) {
	garbage, failing, good := newFake(t, "garbage"), newFake(t, "500"), newFake(t, "ok")
	s := newTestScanner(t, Config{Addresses: []string{garbage.url, failing.url, good.url}})
	settled(t, garbage, failing, good)
	res, err := s.Scan(context.Background(), filters.BytesBody([]byte("Subject: x\r\n\r\nhello\r\n")))
	if err != nil || res.Spam == nil || res.Backend != good.url || res.Spam.Score != 1.5 {
		t.Fatalf("%+v, %v", res, err)
	}
	if garbage.checks.Load() != 1 || failing.checks.Load() != 1 {
		t.Errorf("checks: garbage %d, 500 %d", garbage.checks.Load(), failing.checks.Load())
	}
	// Garbage is not rspamd talking: skipped until its health check passes.
	// A 500 comes from a live rspamd that refused this one request.
	if up := upStates(s); up[0] || !up[1] || !up[2] {
		t.Errorf("up after the scan: %v, want [false true true]", up)
	}
	if v := s.Version(); v != "rspamd/9.9-fake" {
		t.Errorf("Version %q", v)
	}
	// The health check finds the garbage backend's /ping fine: back up.
	if err := s.Check(context.Background()); err != nil || s.pool.Healthy() != 3 {
		t.Errorf("Check: %v, healthy %d", err, s.pool.Healthy())
	}
}

func TestNoBackendAnswers(t *testing.T) {
	for _, mode := range []string{"garbage", "500", "huge", "cut"} {
		t.Run(mode, func(t *testing.T) {
			a, b := newFake(t, mode), newFake(t, mode)
			s := newTestScanner(t, Config{Addresses: []string{a.url, deadAddress(t), b.url}})
			res, err := s.Scan(context.Background(), filters.BytesBody([]byte("Subject: x\r\n\r\nhello\r\n")))
			if err == nil || res.Spam != nil || !errors.Is(err, ErrNoVerdict) {
				t.Fatalf("%+v, %v: want no report and ErrNoVerdict", res, err)
			}
			t.Logf("%v", err)
			var want any
			switch mode {
			case "garbage", "huge":
				want = new(*ReplyError)
			case "500":
				want = new(*StatusError)
			case "cut":
				want = new(*transportError)
			}
			if !errors.As(err, want) {
				t.Errorf("want a %T among %v", want, err)
			}
			if mode == "huge" && !strings.Contains(err.Error(), "larger than 1048576 bytes") {
				t.Errorf("huge: %v", err)
			}
		})
	}
}

func TestHungBackend(t *testing.T) {
	hung, good := newFake(t, "hang"), newFake(t, "ok")
	s := newTestScanner(t, Config{Addresses: []string{hung.url, good.url}, Timeout: 300 * time.Millisecond})
	settled(t, hung, good)
	start := time.Now()
	res, err := s.Scan(context.Background(), filters.BytesBody([]byte("Subject: x\r\n\r\nhello\r\n")))
	if err != nil || res.Backend != good.url {
		t.Fatalf("%+v, %v", res, err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second || res.Took < 300*time.Millisecond {
		t.Errorf("took %v (result %v), want the 300ms timeout and then the other backend", d, res.Took)
	}
	if up := upStates(s); up[0] || !up[1] {
		t.Errorf("up %v: the hung backend must be skipped", up)
	}

	// Only the hung one: a timeout, never a report.
	s = newTestScanner(t, Config{Addresses: []string{hung.url}, Timeout: 200 * time.Millisecond})
	res, err = s.Scan(context.Background(), filters.BytesBody([]byte("Subject: x\r\n\r\nhello\r\n")))
	if res.Spam != nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer within 200ms") {
		t.Fatalf("%+v, %v", res, err)
	}

	// The caller giving up is not the backend's fault.
	s = newTestScanner(t, Config{Addresses: []string{hung.url, good.url}, Timeout: time.Minute})
	settled(t, hung)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	checks := good.checks.Load()
	res, err = s.Scan(ctx, filters.BytesBody([]byte("Subject: x\r\n\r\nhello\r\n")))
	if res.Spam != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%+v, %v", res, err)
	}
	if up := upStates(s); !up[0] || good.checks.Load() != checks {
		t.Errorf("up %v, other backend asked %d times: a cancelled scan marks nothing and tries nothing more", up, good.checks.Load()-checks)
	}
}

func TestRequest(t *testing.T) {
	f := newFake(t, "ok")
	s := newTestScanner(t, Config{Addresses: []string{strings.TrimPrefix(f.url, "http://")}, Password: "worker-pw"})
	msg := bytes.Repeat([]byte("Subject: x\r\n\r\nhello\r\n"), 10_000)
	env := &filters.Envelope{SessionID: "sess-1", User: "alice@example.org"}
	if _, err := s.ScanEnvelope(context.Background(), env, filters.BytesBody(msg)); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	req, got := f.lastReq, f.lastMsg
	f.mu.Unlock()
	if req.Method != http.MethodPost || req.URL.Path != "/checkv2" || req.ContentLength != int64(len(msg)) || !bytes.Equal(got, msg) {
		t.Errorf("%s %s, length %d: the message must go whole, with its length", req.Method, req.URL.Path, req.ContentLength)
	}
	h := req.Header
	if h.Get("Queue-Id") != "sess-1" || h.Get("Deliver-To") != "alice@example.org" || h.Get("Password") != "worker-pw" {
		t.Errorf("headers %v", h)
	}
	for _, absent := range []string{"User", "Ip", "Helo", "From", "Rcpt", "Accept-Encoding"} {
		if _, ok := h[absent]; ok {
			t.Errorf("header %s sent: %v", absent, h)
		}
	}
	// A login that is no header value is left out, not a reason to fail.
	env.User = "alice\r\nUser: root"
	if _, err := s.ScanEnvelope(context.Background(), env, filters.BytesBody(msg)); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	h = f.lastReq.Header
	f.mu.Unlock()
	if _, ok := h["Deliver-To"]; ok || h.Get("User") != "" {
		t.Errorf("headers %v", h)
	}
}

func TestLimits(t *testing.T) {
	f := newFake(t, "ok")
	s := newTestScanner(t, Config{Addresses: []string{f.url}, MaxSize: 10})
	res, err := s.Scan(context.Background(), filters.BytesBody([]byte("Subject: too long\r\n\r\n")))
	if !errors.Is(err, ErrOversize) || res.Spam != nil || f.checks.Load() != 0 {
		t.Fatalf("%+v, %v, %d checks: want ErrOversize without sending", res, err, f.checks.Load())
	}
	s.Close()
	if _, err := s.Scan(context.Background(), filters.BytesBody([]byte("x"))); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := s.Check(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Check after Close: %v", err)
	}
}

func TestOnScan(t *testing.T) {
	f := newFake(t, "500")
	s := newTestScanner(t, Config{Addresses: []string{f.url}})
	var mu sync.Mutex
	var errs []error
	s.OnScan(func(took time.Duration, err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	})
	_, _ = s.Scan(context.Background(), filters.BytesBody([]byte("x")))
	f.mode.Store("ok")
	_, _ = s.Scan(context.Background(), filters.BytesBody([]byte("x")))
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 2 || errs[0] == nil || errs[1] != nil {
		t.Fatalf("OnScan saw %v", errs)
	}
}

// The health checker marks a dead backend down and brings it back when it
// answers.
func TestHealth(t *testing.T) {
	dead := deadAddress(t)
	s := newTestScanner(t, Config{Addresses: []string{dead}, HealthInterval: 20 * time.Millisecond})
	waitFor(t, "the dead backend marked down", func() bool { return !s.Backends()[0].Up })
	if err := s.Check(context.Background()); err == nil {
		t.Fatal("Check succeeded with no backend")
	}
	ln, err := net.Listen("tcp", strings.TrimPrefix(dead, "http://"))
	if err != nil {
		t.Skipf("the port was taken meanwhile: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc((&fake{}).serve)}
	go srv.Serve(ln)
	defer srv.Close()
	waitFor(t, "the backend back up", func() bool { return s.Backends()[0].Up })
}

// Faults between popgate and the real rspamd, through the fault relay.
func TestRelayFaults(t *testing.T) {
	env := testenv.Rspamd(t)
	msg := filters.BytesBody(gtube())
	for _, c := range []struct {
		name  string
		fault testenv.Fault
		want  string
	}{
		{"cut-before-the-answer", testenv.Fault{Dir: testenv.ToClient, Action: testenv.Cut}, "EOF"},
		{"cut-in-the-json", testenv.Fault{Dir: testenv.ToClient, After: "\r\n\r\n", Offset: 10, Action: testenv.Cut}, "reading the answer"},
		// rspamd closes after its answer, and the relay with it: a stalled
		// answer is a cut one. A hung rspamd is one that never gets the
		// whole message.
		{"stall-answer", testenv.Fault{Dir: testenv.ToClient, Action: testenv.Stall}, "EOF"},
		{"stall", testenv.Fault{Dir: testenv.ToTarget, Action: testenv.Stall}, "no answer within 500ms"},
		{"stall-sending", testenv.Fault{Dir: testenv.ToTarget, After: "\r\n\r\n", Offset: 5, Action: testenv.Stall}, "no answer within 500ms"},
		{"corrupt-json", testenv.Fault{Dir: testenv.ToClient, After: "\r\n\r\n", Offset: 4, Action: testenv.Corrupt, Data: []byte("<html>")}, "not an rspamd answer"},
		{"corrupt-status", testenv.Fault{Dir: testenv.ToClient, Action: testenv.Corrupt, Data: []byte("HTTP/1.1 503")}, "503"},
	} {
		t.Run(c.name, func(t *testing.T) {
			relay := testenv.NewRelay(t, env.Addr)
			relay.SetFaults(c.fault)
			s := newTestScanner(t, Config{Addresses: []string{relay.Addr()}, Timeout: 500 * time.Millisecond})
			res, err := s.Scan(context.Background(), msg)
			if err == nil || res.Spam != nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%+v, %v: want no report and an error saying %q", res, err, c.want)
			}
			if relay.Fired() == 0 {
				t.Fatal("the fault did not fire")
			}
			// With the real rspamd as a second backend, the scan goes on there.
			relay.SetFaults(c.fault)
			s = newTestScanner(t, Config{Addresses: []string{relay.Addr(), env.Addr}, Timeout: 500 * time.Millisecond})
			res, err = s.Scan(context.Background(), msg)
			if err != nil || res.Spam.Action != "reject" || res.Backend != env.Addr {
				t.Fatalf("failover: %+v, %v", res, err)
			}
		})
	}
}

// Close leaves no goroutine behind (a generation's scanners are closed at
// every reload): the health checker ends, idle connections are closed.
func TestCloseLeavesNothing(t *testing.T) {
	f := newFake(t, "ok")
	base := runtime.NumGoroutine()
	s, err := NewScanner(Config{Addresses: []string{f.url}, HealthInterval: 10 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Scan(context.Background(), filters.BytesBody([]byte("Subject: x\r\n\r\nhi\r\n"))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	waitFor(t, fmt.Sprintf("goroutines back to %d", base), func() bool { return runtime.NumGoroutine() <= base })
}
