package e2e

// Scale-out: Debian's real haproxy, configured from examples/haproxy.cfg, in
// front of two real popgate processes (PROXY v2 in, /readyz health checks on
// their metrics ports) that share the test clamd, with the real Dovecot
// behind them.

import (
	"bufio"
	"crypto/tls"
	"encoding/csv"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// haproxyServer is where the test puts one popgate instance of the example.
type haproxyServer struct {
	pop3, pop3s, metrics string // host:port
}

// renderHAProxy is examples/haproxy.cfg with the test's addresses: the
// frontends bind pop3 and pop3s, the servers popgate1 and popgate2 are
// servers[0] and [1], the stats socket is sock, and haproxy logs to stdout.
// The process settings of a packaged service (chroot, user, group, daemon)
// are dropped. Every replacement must find its line, so the example cannot
// drift from what is tested.
func renderHAProxy(t *testing.T, example, pop3, pop3s, sock string, servers [2]haproxyServer) string {
	t.Helper()
	cfg := example
	sub := func(re, repl string, want int) {
		t.Helper()
		r := regexp.MustCompile(re)
		if n := len(r.FindAllStringIndex(cfg, -1)); n != want {
			t.Fatalf("examples/haproxy.cfg: %d lines match %s, want %d: adapt the example or this test", n, re, want)
		}
		cfg = r.ReplaceAllString(cfg, repl)
	}
	sub(`(?m)^([ \t]*)log /dev/log .*$`, "${1}log stdout format raw local0 info", 1)
	sub(`(?m)^[ \t]*(chroot|user|group|daemon)\b.*\n`, "", 4)
	sub(`(?m)^([ \t]*stats socket )\S+`, "${1}"+sock, 1)
	// haproxy needs two descriptors per connection; the test machine's hard
	// limit (20000 here) is below what maxconn 20000 asks for.
	sub(`(?m)^([ \t]*maxconn )\d+$`, "${1}1000", 1)
	sub(`(?m)^([ \t]*bind ):110$`, "${1}"+pop3, 1)
	sub(`(?m)^([ \t]*bind ):995$`, "${1}"+pop3s, 1)
	for i, host := range []string{"10.0.0.11", "10.0.0.12"} {
		s := servers[i]
		name := fmt.Sprintf("popgate%d", i+1)
		line := `(?m)^([ \t]*server ` + name + ` )` + regexp.QuoteMeta(host)
		// Each server line carries the PROXY header and the /readyz check on
		// the metrics port: the test's assertions depend on both.
		sub(line+`:110( send-proxy-v2 check) port 9110( .*)?$`, "${1}"+s.pop3+"${2} port "+portOf(s.metrics)+"${3}", 1)
		sub(line+`:995( send-proxy-v2 check) port 9110( .*)?$`, "${1}"+s.pop3s+"${2} port "+portOf(s.metrics)+"${3}", 1)
	}
	sub(`(?m)^[ \t]*option httpchk GET /readyz$`, "$0", 2)
	return cfg
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// freeAddr is a loopback address with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// tcpForwarder relays connections to target until closed: a clamd address
// the test can take away from one popgate only.
type tcpForwarder struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newForwarder(t *testing.T, target string) *tcpForwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &tcpForwarder{ln: ln, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !f.track(c, up) {
				return
			}
			f.wg.Add(2)
			go func() { defer f.wg.Done(); _, _ = io.Copy(up, c); _ = up.(*net.TCPConn).CloseWrite() }()
			go func() { defer f.wg.Done(); _, _ = io.Copy(c, up); _ = c.(*net.TCPConn).CloseWrite() }()
		}
	}()
	t.Cleanup(f.close)
	return f
}

func (f *tcpForwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = true
	}
	return true
}

func (f *tcpForwarder) addr() string { return f.ln.Addr().String() }

// close stops accepting and cuts every relayed connection.
func (f *tcpForwarder) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// haproxyPopgateConfig is one popgate instance of the scale-out: plain and
// implicit-TLS listeners that take PROXY headers from loopback (haproxy),
// the metrics listener, a clamd + tag chain, Dovecot behind.
func haproxyPopgateConfig(d *testenv.DovecotEnv, clamd, metrics, qdir string) string {
	return dovecotConfig(d, configOpts{upstreamTLS: "none", trustedProxies: []string{"127.0.0.0/8", "::1/128"}}) +
		fmt.Sprintf("metrics {\n  address = %s\n}\n", hclString(metrics)) +
		scanTagConfig(clamd, "yes", qdir)
}

// scanTagConfig is the filtering part of a configuration: one clamd
// (health checked every second), a tag filter stamping
// "X-Popgate-Scanned: stamp", a quarantine in qdir and the default policy
// ["av", "stamp"].
func scanTagConfig(clamd, stamp, qdir string) string {
	return fmt.Sprintf(`scanner "clamav" "pool" {
  addresses       = [%s]
  timeout         = "20s"
  health_interval = "1s"
}
filter "clamav" "av" {
  scanner = "pool"
}
filter "tag" "stamp" {
  headers = { "X-Popgate-Scanned" = %s }
}
quarantine {
  dir = %s
}
policy "default" {
  chain = ["av", "stamp"]
}
`, hclString(clamd), hclString(stamp), hclString(qdir))
}

// readyz is the status of GET http://metrics/readyz (0 when it does not answer).
func readyz(metrics string) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + metrics + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitReadyz(t *testing.T, metrics string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := readyz(metrics)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET http://%s/readyz: %d after 20s, want %d", metrics, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// haproxyStatus returns each server's status in a backend ("UP", "DOWN",
// "UP 1/2", …) from the stats socket's `show stat`.
func haproxyStatus(t *testing.T, sock, backend string) map[string]string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 3*time.Second)
	if err != nil {
		t.Fatalf("haproxy stats socket: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("haproxy show stat: %v", err)
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(string(data), "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("haproxy show stat: %v: %q", err, data)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if len(row) > col["status"] && row[col["pxname"]] == backend && strings.HasPrefix(row[col["svname"]], "popgate") {
			out[row[col["svname"]]] = row[col["status"]]
		}
	}
	return out
}

func waitHAProxyStatus(t *testing.T, sock string, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		var got map[string]string
		for _, backend := range []string{"popgate_pop3", "popgate_pop3s"} {
			got = haproxyStatus(t, sock, backend)
			for name, st := range want {
				if got[name] != st {
					ok = false
				}
			}
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy server states %v after 20s, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// haproxySession logs in through addr (plain, or TLS when tlsCfg is set),
// downloads message 1, checks popgate's tag and quits. It returns the
// client's own address: popgate must log exactly this one.
func haproxySession(t *testing.T, addr string, tlsCfg *tls.Config, u *testenv.User) string {
	t.Helper()
	var c net.Conn
	var err error
	if tlsCfg != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, tlsCfg)
	} else {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		t.Fatalf("connecting to haproxy at %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	p := &rawPOP{t: t, c: c, r: bufio.NewReader(c)}
	if g := p.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting through haproxy: %q", g)
	}
	p.ok("USER " + u.Name)
	p.ok("PASS " + u.Password)
	p.ok("RETR 1")
	if msg := p.multi(); !strings.HasPrefix(msg, "X-Popgate-Scanned: yes\r\n") {
		t.Fatalf("message 1 through haproxy is not tagged by popgate: %q", firstLine([]byte(msg)))
	}
	p.ok("QUIT")
	return c.LocalAddr().String()
}

// servedBy returns, for each client address, the index of the popgate
// instance whose login it logged.
func servedBy(procs []*popgateProc) map[string]int {
	out := map[string]int{}
	for i, p := range procs {
		for _, e := range logins(p.events()) {
			out[e.str("client")] = i
		}
	}
	return out
}

// waitServed waits until some popgate has logged the login of each of
// clients, and returns servedBy.
func waitServed(procs []*popgateProc, clients []string) map[string]int {
	var by map[string]int
	procs[0].waitEvents(fmt.Sprintf("the logins of %v", clients), func([]logEvent) bool {
		by = servedBy(procs)
		for _, c := range clients {
			if _, ok := by[c]; !ok {
				return false
			}
		}
		return true
	})
	return by
}

func TestHAProxyScaleOut(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	haproxy := testenv.LookPath(t, "haproxy")
	example, err := os.ReadFile(filepath.Join("..", "..", "examples", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}

	// popgate1 reaches the shared clamd through a forwarder the test can
	// take away; popgate2 directly.
	fwd := newForwarder(t, clamd.Addr())
	var procs []*popgateProc
	var servers [2]haproxyServer
	for i, scanAddr := range []string{"tcp://" + fwd.addr(), clamd.TCP} {
		// Not startPopgate: its check that the listeners accept is a
		// connection without a PROXY header from a trusted address, which
		// popgate refuses. /readyz below says the listeners are bound.
		pdir := t.TempDir()
		cfgPath := filepath.Join(pdir, "popgate.hcl")
		if err := os.WriteFile(cfgPath, []byte(haproxyPopgateConfig(d, scanAddr, "127.0.0.1:0", filepath.Join(pdir, "q"))), 0o600); err != nil {
			t.Fatal(err)
		}
		p := launchPopgate(t, exec.Command(popgateBin, "run", "-c", cfgPath), pdir, "", false, "plain", "pop3s")
		var metrics string
		p.waitEvents("the metrics listener", func(evs []logEvent) bool {
			for _, e := range evs {
				if e.str("message") == "metrics listening" {
					metrics = e.str("address")
				}
			}
			return metrics != ""
		})
		servers[i] = haproxyServer{pop3: p.addr("plain"), pop3s: p.addr("pop3s"), metrics: metrics}
		procs = append(procs, p)
		waitReadyz(t, metrics, http.StatusOK)
	}

	// On failure, what the popgates warned about (the full logs are long).
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for i, p := range procs {
			for _, e := range p.events() {
				if lv := e.str("level"); lv == "warn" || lv == "error" {
					t.Logf("popgate%d: %s", i+1, e)
				}
			}
		}
	})
	dir := t.TempDir()
	front, frontTLS, sock := freeAddr(t), freeAddr(t), filepath.Join(dir, "admin.sock")
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(renderHAProxy(t, string(example), front, frontTLS, sock, servers)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c rejects the rendered examples/haproxy.cfg: %v\n%s", err, out)
	}
	hlog, _ := startDaemon(t, "haproxy", exec.Command(haproxy, "-db", "-f", cfgPath))
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(sock); err != nil; _, err = os.Stat(sock) {
		if time.Now().After(deadline) {
			t.Fatalf("haproxy did not create its stats socket within 10s:\n%s", hlog.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitHAProxyStatus(t, sock, map[string]string{"popgate1": "UP", "popgate2": "UP"})

	u, _ := newMailbox(t, d, [][]byte{cleanMsg("haproxy")})
	tlsCfg := d.ClientTLSConfig(t)

	// 1. Both instances up: sessions are spread over both, and each logs the
	// client's own address and port (from the PROXY header), not haproxy's.
	var clients []string
	for i := 0; i < 6; i++ {
		clients = append(clients, haproxySession(t, front, nil, u))
	}
	clients = append(clients, haproxySession(t, frontTLS, tlsCfg, u), haproxySession(t, frontTLS, tlsCfg, u))
	by := waitServed(procs, clients)
	count := [2]int{}
	for _, c := range clients {
		count[by[c]]++
	}
	if count[0] < 2 || count[1] < 2 {
		t.Errorf("haproxy spread %d sessions as %d on popgate1 and %d on popgate2, want at least 2 on each", len(clients), count[0], count[1])
	}
	if n := len(servedBy(procs)); n != len(clients) {
		t.Errorf("the popgates logged %d distinct client addresses for %d sessions (from %v): %v", n, len(clients), clients, servedBy(procs))
	}

	// 2. popgate1 loses its clamd: its /readyz fails, haproxy takes it out,
	// and every new session goes to popgate2 and succeeds, although
	// popgate1 still accepts connections.
	fwd.close()
	waitReadyz(t, servers[0].metrics, http.StatusServiceUnavailable)
	waitHAProxyStatus(t, sock, map[string]string{"popgate1": "DOWN", "popgate2": "UP"})
	// popgate1 still serves a session (here with a hand-made PROXY v1
	// header): only haproxy's check keeps sessions away from it.
	c, err := net.DialTimeout("tcp", servers[0].pop3, 5*time.Second)
	if err != nil {
		t.Fatalf("popgate1 does not accept connections any more (%v): the test would not show that haproxy's check decides", err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	direct := &rawPOP{t: t, c: c, r: bufio.NewReader(c)}
	if _, err := io.WriteString(c, "PROXY TCP4 127.0.0.1 127.0.0.1 40000 110\r\n"); err != nil {
		t.Fatal(err)
	}
	if g := direct.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("popgate1 after losing its clamd: greeting %q, want it still serving", g)
	}
	direct.ok("QUIT")
	c.Close()
	var later []string
	for i := 0; i < 4; i++ {
		later = append(later, haproxySession(t, front, nil, u))
	}
	later = append(later, haproxySession(t, frontTLS, tlsCfg, u))
	by = waitServed(procs, later)
	for _, c := range later {
		if by[c] != 1 {
			t.Errorf("session from %s went to popgate1 after haproxy marked it DOWN", c)
		}
	}

	// 3. popgate1 stops altogether: sessions still succeed.
	procs[0].stop(10 * time.Second)
	for i := 0; i < 2; i++ {
		haproxySession(t, front, nil, u)
	}
}
