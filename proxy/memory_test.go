package proxy

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestIdleSessionMemory measures what an idle logged-in session costs
// popgate: the heap and stacks with n sessions open through the proxy, minus
// the same n sessions open directly to the same server (the clients and the
// server's side of them), divided by n. Each session first downloads a
// message, so the big response buffers were in use once (issue 5: at most
// 40 KiB per idle session).
func TestIdleSessionMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2×400 sessions")
	}
	const n = 400
	const limit = 40 << 10
	_, mail := startMailServer(t, mailConfig())
	_, proxyAddr, _ := startProxy(t, mail, func(l *Listener, o *Options) {
		o.Logger = o.Logger.Level(1) // info: no per-command debug lines
	})

	direct := idleCost(t, mail, n)
	proxied := idleCost(t, proxyAddr, n)
	perSession := (proxied - direct) / n
	t.Logf("idle session: %d bytes through popgate (direct %d B/session, proxied %d B/session)", perSession, direct/n, proxied/n)
	if perSession > limit {
		t.Errorf("an idle session costs popgate %d bytes, want at most %d", perSession, limit)
	}
}

// idleCost opens n sessions to addr, logs each in and downloads a message,
// and returns by how much heap and stack in use grew while they sit idle.
func idleCost(t *testing.T, addr string, n int) int64 {
	t.Helper()
	before := inUse()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReaderSize(c, 256)
		expect := func(cmd string) {
			if cmd != "" {
				fmt.Fprintf(c, "%s\r\n", cmd)
			}
			l, err := r.ReadString('\n')
			if err != nil || !strings.HasPrefix(l, "+OK") {
				t.Fatalf("session %d %q: %q %v", i, cmd, l, err)
			}
		}
		expect("")
		expect("USER " + testUser)
		expect("PASS " + testPass)
		expect("RETR 2")
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("session %d RETR: %v", i, err)
			}
			if l == ".\r\n" {
				break
			}
		}
	}
	// Let the sessions settle into their read of the next command.
	time.Sleep(200 * time.Millisecond)
	return inUse() - before
}

// inUse is heap and goroutine stack memory in use after a full collection
// (run twice: the first may leave pooled buffers for the second).
func inUse() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
