package testenv_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// echoServer greets with "HELLO <stamp>\r\n" (a varying prefix, as a POP3
// greeting), then echoes what it reads until EOF; what each connection
// received in all goes to received, if not nil.
func echoServer(t *testing.T, received chan<- string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, "HELLO <"+time.Now().Format(time.RFC3339Nano)+">\r\n")
				var all strings.Builder
				_, _ = io.Copy(c, io.TeeReader(c, &all))
				if received != nil {
					received <- all.String()
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// exchange sends msg through the relay in pieces of at most piece bytes
// (with pauses, so they arrive as separate reads), half-closes, and returns
// everything that comes back until the relay closes.
func exchange(t *testing.T, addr string, msg string, piece int) string {
	return exchangeAwaiting(t, addr, msg, piece, "")
}

// exchangeAwaiting is exchange that, before it half-closes, waits until
// what came back holds await: a stalled relay ends the exchange at the
// half-close, and the answer to what it forwarded must not race it.
func exchangeAwaiting(t *testing.T, addr string, msg string, piece int, await string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = c.SetDeadline(deadline)
	var mu sync.Mutex
	var back []byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			back = append(back, buf[:n]...)
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	for len(msg) > 0 {
		n := min(piece, len(msg))
		if _, err := io.WriteString(c, msg[:n]); err != nil {
			break
		}
		msg = msg[n:]
		time.Sleep(5 * time.Millisecond)
	}
	for await != "" && time.Now().Before(deadline) {
		mu.Lock()
		arrived := strings.Contains(string(back), await)
		mu.Unlock()
		if arrived {
			break
		}
		time.Sleep(time.Millisecond)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return string(back)
}

func TestRelayFaults(t *testing.T) {
	t.Parallel()
	received := make(chan string, 1)
	target := echoServer(t, received)
	const msg = "USER a\r\nPASS b\r\nRETR 1\r\nQUIT\r\n"
	for _, tc := range []struct {
		name  string
		fault testenv.Fault
		piece int
		check func(got string) bool // nil: check what the target received
		recv  string                // … which must be this
		await string                // what must come back before the half-close
	}{
		{"none", testenv.Fault{Dir: testenv.ToTarget, After: "NEVER", Action: testenv.Cut}, 4,
			func(got string) bool { return strings.HasSuffix(got, msg) }, "", ""},
		{"cut to-target at anchor+offset, anchor split across reads", testenv.Fault{Dir: testenv.ToTarget, After: "RETR 1", Offset: 2, Action: testenv.Cut}, 3,
			nil, "USER a\r\nPASS b\r\nRE", ""},
		{"cut at once at the end of a read", testenv.Fault{Dir: testenv.ToTarget, After: "USER a\r\n", Offset: 8, Action: testenv.Cut}, 8,
			nil, "USER a\r\n", ""},
		{"cut to-client after the varying greeting", testenv.Fault{Dir: testenv.ToClient, After: ">\r\n", Offset: 3 + 9, Action: testenv.Cut}, 100,
			func(got string) bool { return strings.HasSuffix(got, ">\r\nUSER a\r\nP") }, "", ""},
		{"cut at stream start", testenv.Fault{Dir: testenv.ToClient, Action: testenv.Cut}, 100,
			func(got string) bool { return got == "" }, "", ""},
		{"corrupt", testenv.Fault{Dir: testenv.ToTarget, After: "PASS", Offset: 5, Action: testenv.Corrupt, Data: []byte("XY")}, 5,
			func(got string) bool { return strings.HasSuffix(got, "USER a\r\nPASS XY\nRETR 1\r\nQUIT\r\n") }, "", ""},
		{"stall", testenv.Fault{Dir: testenv.ToTarget, After: "RETR", Action: testenv.Stall}, 100,
			func(got string) bool { return strings.HasSuffix(got, ">\r\nUSER a\r\nPASS b\r\n") }, "", "PASS b\r\n"},
		{"delay", testenv.Fault{Dir: testenv.ToClient, After: "QUIT", Action: testenv.Delay, Delay: 300 * time.Millisecond}, 100,
			func(got string) bool { return strings.HasSuffix(got, msg) }, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testenv.NewRelay(t, target)
			r.SetFaults(tc.fault)
			start := time.Now()
			got := exchangeAwaiting(t, r.Addr(), msg, tc.piece, tc.await)
			recv := <-received
			if tc.check == nil {
				if recv != tc.recv {
					t.Errorf("the target received %q, want %q", recv, tc.recv)
				}
			} else if !tc.check(got) {
				t.Errorf("through the relay: %q", got)
			}
			want := 1
			if tc.name == "none" {
				want = 0
			}
			if r.Fired() != want {
				t.Errorf("fired %d faults, want %d", r.Fired(), want)
			}
			if tc.fault.Action == testenv.Delay && time.Since(start) < 300*time.Millisecond {
				t.Errorf("the delay did not hold the stream back")
			}
			r.Close()
			if r.Active() != 0 {
				t.Errorf("%d connections open after Close", r.Active())
			}
		})
	}
}

// Faults go to the connections the plan names; SetTarget sends new
// connections elsewhere (a restarted server).
func TestRelayPlanAndTarget(t *testing.T) {
	t.Parallel()
	a, b := echoServer(t, nil), echoServer(t, nil)
	r := testenv.NewRelay(t, a)
	r.SetPlan(func(n int) []testenv.Fault {
		if n == 2 {
			return []testenv.Fault{{Dir: testenv.ToClient, After: "ping", Action: testenv.Cut}}
		}
		return nil
	})
	if got := exchange(t, r.Addr(), "ping\r\n", 100); !strings.HasSuffix(got, "ping\r\n") {
		t.Errorf("connection 1: %q", got)
	}
	if got := exchange(t, r.Addr(), "ping\r\n", 100); strings.Contains(got, "ping") {
		t.Errorf("connection 2 was not cut: %q", got)
	}
	r.SetTarget(b)
	if got := exchange(t, r.Addr(), "ping\r\n", 100); !strings.HasSuffix(got, "ping\r\n") {
		t.Errorf("connection 3: %q", got)
	}
	if r.Accepted() != 3 || r.Fired() != 1 {
		t.Errorf("accepted %d, fired %d; want 3 and 1", r.Accepted(), r.Fired())
	}
	// A target that is down: the client sees a closed connection.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	r.SetTarget(dead)
	if got := exchange(t, r.Addr(), "ping\r\n", 100); got != "" {
		t.Errorf("dead target: %q", got)
	}
}
