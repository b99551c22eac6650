package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// What a scanner or an attacker does to an internet-facing port, against
// the real binary: TLS handshake floods, half-open TLS, ClientHello
// garbage, PROXY headers where none are expected (and none where one is),
// idle connections up to the listener's limits. Attackers come from other
// loopback addresses than the well-behaved client (127.0.0.1), as they
// would from other hosts, so the per-address limit applies to them.

// hostileConfig has an implicit-TLS listener "pop3s", a plain listener
// "plain" that takes no PROXY header, and a listener "pp" that takes
// PROXY headers from 127.0.0.3 only; each with a login timeout of 5 s and
// a per-address limit of perIP.
func hostileConfig(d *testenv.DovecotEnv, perIP int) string {
	var b strings.Builder
	for _, l := range []struct{ name, extra string }{
		{"pop3s", fmt.Sprintf("  tls {\n    cert_file = %s\n    key_file  = %s\n    implicit  = true\n  }\n", hclString(d.CertFile), hclString(d.KeyFile))},
		{"plain", ""},
		{"pp", "  proxy_protocol {\n    trusted = [\"127.0.0.3\"]\n    timeout = \"2s\"\n  }\n"},
	} {
		fmt.Fprintf(&b, "listener %q {\n  address = \"127.0.0.1:0\"\n  upstream = \"dovecot\"\n  login_timeout = \"5s\"\n  max_connections = 2000\n  max_connections_per_ip = %d\n%s}\n",
			l.name, perIP, l.extra)
	}
	fmt.Fprintf(&b, "upstream \"dovecot\" {\n  address = %s\n}\nmetrics {\n  address = \"127.0.0.1:0\"\n}\nlog {\n  level = \"info\"\n}\nshutdown_timeout = \"3s\"\n", hclString(d.Addr))
	return b.String()
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(src, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp", addr)
}

// downloadTLS logs in over implicit TLS and retrieves every message, checking
// each byte for byte; it returns how long that took.
func downloadTLS(t *testing.T, addr string, tc *tls.Config, u *testenv.User, msgs [][]byte) time.Duration {
	t.Helper()
	start := time.Now()
	c, _ := dialPOPS(t, addr, tc.ServerName, tc.RootCAs)
	c.ok("USER " + u.Name)
	c.ok("PASS " + u.Password)
	for i, m := range msgs {
		c.ok(fmt.Sprintf("RETR %d", i+1))
		if got, want := c.multi(), strings.ReplaceAll(string(crlf(m)), "\r\n.", "\r\n.."); got != want {
			t.Fatalf("message %d: got %d bytes, want %d, byte for byte", i+1, len(got), len(want))
		}
	}
	c.ok("QUIT")
	took := time.Since(start)
	c.c.Close()
	return took
}

// clientHello is the start of a real ClientHello, to send half of.
func clientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	go func() { _ = tls.Client(a, &tls.Config{ServerName: "localhost"}).Handshake() }()
	buf := make([]byte, 4096)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b.Close()
	return buf[:n]
}

// abortedHandshake makes the server do a full handshake's work (key
// exchange, certificate, signature) and then fails it on the client side,
// as a scanner collecting certificates does.
func abortedHandshake(src, addr string) error {
	c, err := dialFrom(src, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	errAbort := errors.New("scanner: seen enough")
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true,
		VerifyPeerCertificate: func([][]byte, [][]*x509.Certificate) error { return errAbort }})
	if err := tc.Handshake(); !errors.Is(err, errAbort) {
		return fmt.Errorf("handshake not aborted by the client: %v", err)
	}
	return nil
}

// hostileLoad runs every kind of hostile connection in a loop until stop
// is closed, and counts what each kind met.
type hostileLoad struct {
	t     *testing.T
	p     *popgateProc
	perIP int
	hello []byte
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	seen  map[string]map[string]int // kind → outcome → count
	fails atomic.Int64
}

func (h *hostileLoad) note(kind, outcome string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen[kind] == nil {
		h.seen[kind] = map[string]int{}
	}
	h.seen[kind][outcome]++
}

func (h *hostileLoad) loop(kind string, workers int, f func() string) {
	for range workers {
		h.wg.Go(func() {
			for {
				select {
				case <-h.stop:
					return
				default:
				}
				h.note(kind, f())
			}
		})
	}
}

// firstReply reads what the server says first, within d: a line, or how
// the connection ended.
func firstReply(c net.Conn, d time.Duration) string {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	switch {
	case n > 0:
		line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
		if len(line) > 40 {
			line = line[:40]
		}
		return line
	case errors.Is(err, io.EOF):
		return "closed"
	case err != nil && strings.Contains(err.Error(), "reset"):
		return "reset"
	case err != nil && strings.Contains(err.Error(), "timeout"):
		return "no answer within " + d.String()
	}
	return fmt.Sprint(err)
}

func (h *hostileLoad) start() {
	pop3s, plain, pp := h.p.addr("pop3s"), h.p.addr("plain"), h.p.addr("pp")
	// Full handshakes the client aborts.
	h.loop("handshake flood", 3, func() string {
		if err := abortedHandshake("127.0.0.2", pop3s); err != nil {
			return err.Error()
		}
		return "server did the handshake's work, client aborted"
	})
	// Half-open TLS: connect and say nothing, or half a ClientHello; the
	// login timeout (5 s) bounds the handshake.
	for i, payload := range [][]byte{nil, h.hello[:len(h.hello)/2]} {
		kind := []string{"half-open TLS: silent", "half-open TLS: half a ClientHello"}[i]
		src := []string{"127.0.0.4", "127.0.0.8"}[i]
		h.loop(kind, 20, func() string {
			c, err := dialFrom(src, pop3s)
			if err != nil {
				return "dial: " + err.Error()
			}
			defer c.Close()
			if payload != nil {
				_, _ = c.Write(payload)
			}
			start := time.Now()
			r := firstReply(c, 15*time.Second)
			return fmt.Sprintf("%s after %ds", r, int(time.Since(start).Round(time.Second).Seconds()))
		})
	}
	// Garbage where a ClientHello belongs: random bytes, a TLS record
	// header with a random body, a plaintext POP3 command.
	h.loop("ClientHello garbage", 2, func() string {
		c, err := dialFrom("127.0.0.5", pop3s)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		junk := make([]byte, 300)
		_, _ = rand.Read(junk)
		switch junk[0] % 3 {
		case 0:
			copy(junk, []byte{0x16, 0x03, 0x01, 0x01, 0x20, 0x01}) // handshake record, ClientHello type, random inside
		case 1:
			junk = []byte("USER bob\r\n")
		}
		_, _ = c.Write(junk)
		r := firstReply(c, 10*time.Second)
		if strings.HasPrefix(r, "\x15") {
			return "TLS alert"
		}
		return r
	})
	// An idle flood from one address, more connections than its limit on
	// the plain listener, where a session dials its upstream at connect
	// (the costlier case): perIP are greeted and held until the login
	// timeout, the others refused at once.
	h.loop("idle flood", h.perIP+10, func() string {
		c, err := dialFrom("127.0.0.7", plain)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		r := firstReply(c, 10*time.Second)
		if strings.HasPrefix(r, "-ERR") {
			time.Sleep(100 * time.Millisecond) // no busy loop on the shared machine
			return r
		}
		start := time.Now()
		return fmt.Sprintf("greeted, then %s after %ds", firstReply(c, 15*time.Second), int(time.Since(start).Round(time.Second).Seconds()))
	})
	// PROXY headers: on a listener that takes none, from an untrusted
	// source on one that does, and none from a trusted source.
	proxyV1 := "PROXY TCP4 203.0.113.7 127.0.0.1 40000 110\r\n"
	h.loop("PROXY header, listener takes none", 1, func() string {
		c, err := dialFrom("127.0.0.6", plain)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		_ = firstReply(c, 10*time.Second) // the greeting
		_, _ = io.WriteString(c, proxyV1)
		return firstReply(c, 10*time.Second)
	})
	h.loop("PROXY header from an untrusted source", 1, func() string {
		c, err := dialFrom("127.0.0.6", pp)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		_ = firstReply(c, 10*time.Second) // the greeting, sent at connect
		_, _ = io.WriteString(c, proxyV1)
		return firstReply(c, 10*time.Second)
	})
	h.loop("no PROXY header from a trusted source", 1, func() string {
		c, err := dialFrom("127.0.0.3", pp)
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		_, _ = io.WriteString(c, "CAPA\r\n")
		return firstReply(c, 10*time.Second)
	})
}

func (h *hostileLoad) end() {
	close(h.stop)
	h.wg.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	for kind, outcomes := range h.seen {
		h.t.Logf("%-40s %v", kind, outcomes)
	}
}

// TestHostileListener: while every kind of hostile connection runs in a
// loop (an idle-connection flood from one address filling its per-address
// limit among them), a well-behaved client downloads its mailbox over implicit TLS byte
// for byte, within 10 times its unloaded time (or 15 s, whichever is
// more); each hostile kind meets the answer it should, and popgate stays
// up and ready.
func TestHostileListener(t *testing.T) {
	d := testenv.Dovecot(t)
	var msgs [][]byte
	for i := range 4 {
		msgs = append(msgs, bigCleanMsg(fmt.Sprintf("hostile%d", i), 1<<20))
	}
	u, _ := newMailbox(t, d, msgs)
	const perIP = 40
	p := startPopgate(t, hostileConfig(d, perIP), "", "pop3s", "plain", "pp")
	tc := d.ClientTLSConfig(t)
	metrics := "http://" + p.metricsAddr() + "/metrics"

	downloadTLS(t, p.addr("pop3s"), tc, u, msgs) // warm up
	unloaded := downloadTLS(t, p.addr("pop3s"), tc, u, msgs)

	h := &hostileLoad{t: t, p: p, perIP: perIP, hello: clientHello(t), stop: make(chan struct{}), seen: map[string]map[string]int{}}
	h.start()
	time.Sleep(2 * time.Second) // let the floods build up
	loaded := downloadTLS(t, p.addr("pop3s"), tc, u, msgs)
	time.Sleep(4 * time.Second) // the half-open ones meet the login timeout
	h.end()
	t.Logf("download of %d × 1 MB over TLS: %v unloaded, %v under hostile load", len(msgs), unloaded.Round(time.Millisecond), loaded.Round(time.Millisecond))
	if limit := max(10*unloaded, 15*time.Second); loaded > limit {
		t.Errorf("the download took %v under hostile load, over %v", loaded, limit)
	}

	want := map[string]func(string) bool{
		"handshake flood":                   func(o string) bool { return o == "server did the handshake's work, client aborted" },
		"half-open TLS: silent":             func(o string) bool { return o == "closed after 5s" || o == "closed after 6s" },
		"half-open TLS: half a ClientHello": func(o string) bool { return o == "closed after 5s" || o == "closed after 6s" },
		"ClientHello garbage":               func(o string) bool { return o == "TLS alert" || o == "closed" || o == "reset" },
		"PROXY header, listener takes none": func(o string) bool { return strings.HasPrefix(o, "-ERR") },
		"idle flood": func(o string) bool {
			return strings.HasPrefix(o, "-ERR [SYS/TEMP] too many connections") ||
				o == "greeted, then -ERR disconnected for inactivity after 5s" || o == "greeted, then -ERR disconnected for inactivity after 6s"
		},
		"PROXY header from an untrusted source": func(o string) bool { return o == "-ERR PROXY protocol header not accepted" },
		"no PROXY header from a trusted source": func(o string) bool { return o == "closed" || o == "reset" },
	}
	for kind, ok := range want {
		if len(h.seen[kind]) == 0 {
			t.Errorf("%s: never ran", kind)
		}
		for outcome, n := range h.seen[kind] {
			if !ok(outcome) {
				t.Errorf("%s: %d times %q", kind, n, outcome)
			}
		}
	}
	if code, _ := httpGet(t, "http://"+p.metricsAddr()+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d after the hostile load", code)
	}
	_, page := httpGet(t, metrics)
	if v := metricValue(page, `popgate_limit_rejections_total{limit="per_ip",listener="plain"}`); v < 1 {
		t.Errorf("per_ip rejections on plain = %v: the idle flood never reached the limit", v)
	}
	if v := metricValue(page, `popgate_limit_rejections_total{limit="proxy_header",listener="pp"}`); v < 2 {
		t.Errorf("proxy_header rejections on pp = %v", v)
	}
}

// closedByLoginTimeout: a connection closed by the 5 s login timeout,
// measured from the client (deadlines may fire up to 250 ms early, the
// client's clock starts after its write).
func closedByLoginTimeout(o string) bool {
	return o == "closed after 4s" || o == "closed after 5s" || o == "closed after 6s"
}

// procCPU is the CPU time (user + system) process pid has used, from
// /proc/PID/stat, in clock ticks of 10 ms (USER_HZ is 100 on Linux).
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64) // fields 14 and 15 of stat(5)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procRSS is the resident memory of process pid, from /proc/PID/status.
func procRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestHostileConnectionCost measures, on the real binary, the memory a
// half-open TLS connection holds (resident memory per connection, 600 of
// them from 15 addresses, silent or stopped half way through a
// ClientHello), that of an idle connection on a plain listener (which has
// dialled its upstream), and the CPU a failed handshake costs (a full
// handshake the client aborts; garbage instead of a ClientHello). Each
// memory figure comes from a fresh process: memory freed by an earlier
// batch would be reused and hide the cost. The numbers go to the test log;
// docs/SECURITY.md quotes a run without -race. The bounds only catch gross
// regressions.
func TestHostileConnectionCost(t *testing.T) {
	d := testenv.Dovecot(t)
	hello := clientHello(t)
	hold := func(listener string, n int, payload []byte) (*popgateProc, float64) {
		p := startPopgate(t, hostileConfig(d, 1000), "", "pop3s", "plain", "pp")
		metrics := "http://" + p.metricsAddr() + "/metrics"
		time.Sleep(500 * time.Millisecond)
		rss0 := procRSS(t, p.cmd.Process.Pid)
		var conns []net.Conn
		for i := range n {
			c, err := dialFrom(fmt.Sprintf("127.0.1.%d", 1+i/40), p.addr(listener))
			if err != nil {
				t.Fatal(err)
			}
			if payload != nil {
				_, _ = c.Write(payload)
			}
			conns = append(conns, c)
		}
		waitUntil(t, "the connections to be sessions", func() bool {
			_, page := httpGet(t, metrics)
			return metricValue(page, fmt.Sprintf("popgate_sessions_active{listener=%q}", listener)) >= float64(n)
		})
		time.Sleep(500 * time.Millisecond)
		rss := float64(procRSS(t, p.cmd.Process.Pid)-rss0) / float64(n)
		for _, c := range conns {
			c.Close()
		}
		return p, rss
	}
	const n = 600
	_, rssSilent := hold("pop3s", n, nil)
	_, rssHalf := hold("pop3s", n, hello[:len(hello)/2])
	p, rssIdle := hold("plain", 200, nil) // each also holds an upstream connection
	t.Logf("resident memory per half-open TLS connection: %.1f KiB silent, %.1f KiB with half a ClientHello; per idle plain connection (upstream dialled): %.1f KiB",
		rssSilent/1024, rssHalf/1024, rssIdle/1024)

	pid := p.cmd.Process.Pid
	cpu := func(k int, f func(i int) error) time.Duration {
		time.Sleep(500 * time.Millisecond)
		c0 := procCPU(t, pid)
		for i := range k {
			if err := f(i); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond) // sessions end after the client
		return (procCPU(t, pid) - c0) / time.Duration(k)
	}
	const k = 400
	aborted := cpu(k, func(i int) error { return abortedHandshake(fmt.Sprintf("127.0.2.%d", 1+i/100), p.addr("pop3s")) })
	garbage := cpu(k, func(i int) error {
		c, err := dialFrom(fmt.Sprintf("127.0.3.%d", 1+i/100), p.addr("pop3s"))
		if err != nil {
			return err
		}
		defer c.Close()
		junk := make([]byte, 300)
		_, _ = rand.Read(junk)
		copy(junk, []byte{0x16, 0x03, 0x01, 0x01, 0x20, 0x01})
		_, _ = c.Write(junk)
		firstReply(c, 5*time.Second)
		return nil
	})
	t.Logf("CPU per failed handshake: %v (full handshake, client aborts), %v (garbage ClientHello)", aborted, garbage)

	// Gross regressions only: the race detector multiplies both.
	if rssSilent > 512<<10 || rssHalf > 512<<10 {
		t.Errorf("a half-open TLS connection holds over 512 KiB")
	}
	if aborted > 50*time.Millisecond {
		t.Errorf("a failed handshake costs over 50 ms of CPU")
	}
}
