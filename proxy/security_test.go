package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

// Security tests of issue 6 (docs/SECURITY.md points here). STLS injection
// on both sides is in faults_test.go (TestClientSTLSInjectionDiscarded,
// TestUpstreamSTLSInjectionRefused), secrets in logs in TestSecretsNeverLogged
// and, end to end, in internal/e2e's secrets scan.

// tlsClientCase is a client (or, upstream side, a server) TLS setting and
// whether popgate must accept it.
type tlsCase struct {
	name   string
	mod    func(*tls.Config)
	accept bool
}

var cbcOnly = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
}

var tlsCases = []tlsCase{
	{"TLS 1.0", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS10 }, false},
	{"TLS 1.1", func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }, false},
	{"TLS 1.2 with CBC-SHA suites only", func(c *tls.Config) { c.MaxVersion, c.CipherSuites = tls.VersionTLS12, cbcOnly }, false},
	{"TLS 1.2 with AES-GCM", func(c *tls.Config) {
		c.MaxVersion, c.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	}, true},
	{"TLS 1.2 with ChaCha20", func(c *tls.Config) {
		c.MaxVersion, c.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
	}, true},
	{"TLS 1.3", func(c *tls.Config) { c.MinVersion = tls.VersionTLS13 }, true},
}

// TLS towards clients: 1.2 at least, AEAD suites only, on STLS and on
// implicit-TLS listeners, even when the caller's tls.Config sets neither.
func TestTLSListenerMinimumVersionAndCiphers(t *testing.T) {
	cert, pool := testCert(t)
	_, up := startMailServer(t, mailConfig())
	for _, implicit := range []bool{false, true} {
		_, addr, _ := startProxy(t, up, func(l *Listener, _ *Options) {
			l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}} // no MinVersion, no suites
			l.Implicit = implicit
		})
		for _, tc := range tlsCases {
			name := tc.name + map[bool]string{false: " over STLS", true: " implicit"}[implicit]
			t.Run(name, func(t *testing.T) {
				c := dialClient(t, addr)
				if !implicit {
					c.line()
					c.expectOK("STLS")
				}
				cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
				tc.mod(cfg)
				tc2 := tls.Client(c.conn, cfg)
				err := tc2.Handshake()
				if tc.accept != (err == nil) {
					t.Fatalf("handshake: %v, want accepted=%v", err, tc.accept)
				}
				if err == nil {
					if st := tc2.ConnectionState(); st.Version < tls.VersionTLS12 {
						t.Fatalf("negotiated version %x", st.Version)
					}
					r := bufio.NewReader(tc2)
					if implicit {
						if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
							t.Fatalf("greeting over TLS: %q", l)
						}
					}
					io.WriteString(tc2, "QUIT\r\n")
					if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
						t.Fatalf("QUIT over TLS: %q", l)
					}
				}
			})
		}
	}
}

// startTLSUpstream runs a POP3 server speaking TLS with cfg, implicitly or
// after STLS, that answers +OK to everything.
func startTLSUpstream(t *testing.T, cfg *tls.Config, implicit bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
				var c net.Conn = conn
				if implicit {
					c = tls.Server(conn, cfg)
				}
				io.WriteString(c, "+OK ready\r\n")
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					io.WriteString(c, "+OK\r\n")
					if l == "STLS\r\n" && !implicit {
						c = tls.Server(conn, cfg)
						r = bufio.NewReader(c)
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TLS towards upstreams: 1.2 at least, AEAD suites only, and certificate
// verification on unless switched off.
func TestTLSUpstreamMinimumVersionCiphersAndVerification(t *testing.T) {
	cert, pool := testCert(t)
	other, _ := testCert(t) // a certificate popgate does not trust
	type upCase struct {
		name   string
		server func(*tls.Config)
		client func(*Upstream)
		accept bool
	}
	var cases []upCase
	for _, tc := range tlsCases {
		cases = append(cases, upCase{"server " + tc.name, tc.mod, func(u *Upstream) { u.TLS = &tls.Config{RootCAs: pool} }, tc.accept})
	}
	cases = append(cases,
		upCase{"untrusted certificate, default verification", nil, func(u *Upstream) {}, false},
		upCase{"certificate from another CA", func(c *tls.Config) { c.Certificates = []tls.Certificate{other} },
			func(u *Upstream) { u.TLS = &tls.Config{RootCAs: pool} }, false},
		upCase{"trusted certificate, wrong server name", nil,
			func(u *Upstream) { u.TLS = &tls.Config{RootCAs: pool, ServerName: "mail.other.example"} }, false},
		upCase{"trusted certificate, right server name", nil,
			func(u *Upstream) { u.TLS = &tls.Config{RootCAs: pool, ServerName: "localhost"} }, true},
	)
	for _, mode := range []TLSMode{TLSImplicit, TLSStartTLS} {
		for _, tc := range cases {
			name := tc.name + map[TLSMode]string{TLSImplicit: " (implicit)", TLSStartTLS: " (STLS)"}[mode]
			t.Run(name, func(t *testing.T) {
				scfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS10}
				if tc.server != nil {
					tc.server(scfg)
				}
				up := startTLSUpstream(t, scfg, mode == TLSImplicit)
				_, addr, logs := startProxy(t, up, func(l *Listener, _ *Options) {
					l.Upstream.TLSMode = mode
					tc.client(l.Upstream)
				})
				c := dialClient(t, addr)
				got := c.line()
				if tc.accept != strings.HasPrefix(got, "+OK") {
					t.Fatalf("greeting %q, want accepted=%v; log:\n%s", got, tc.accept, logs)
				}
				if !tc.accept && got != "-ERR [SYS/TEMP] mail server unavailable, try again later" {
					t.Fatalf("refusal %q", got)
				}
			})
		}
	}
}

// Slow clients cannot hold sessions: with a per-IP limit of 2, two clients
// that trickle bytes (during the greeting, mid-login, or with complete but
// endless commands before login) do not keep a client from another address
// out, and the login deadline closes them however they trickle.
func TestSlowClientsCannotExhaustSessions(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	const loginTimeout = 400 * time.Millisecond
	srv, addr, _ := startProxy(t, up, func(l *Listener, _ *Options) {
		l.MaxConnectionsPerIP = 2
		l.MaxConnections = 3
		l.LoginTimeout = loginTimeout
	})
	for _, tc := range []struct {
		name  string
		drip  string        // sent one byte per step, over and over
		every time.Duration // step; below the idle timeout unless noted
	}{
		{"silent after connecting", "", 0},
		{"one byte at a time mid-command", "USER bob", 150 * time.Millisecond},
		{"endless commands before login", "NOOP\r\n", 20 * time.Millisecond},
		{"endless failed logins", "USER bob\r\nPASS wrong\r\n", 10 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				d   time.Duration
				err error
			}
			results := make(chan result, 2)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			defer func() { close(stop); wg.Wait() }()
			waitFor(t, func() bool { return srv.Sessions() == 0 })
			for range 2 {
				conn := dialFrom(t, "127.0.0.1", addr)
				start := time.Now()
				r := bufio.NewReader(conn)
				_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				if g, _ := r.ReadString('\n'); !strings.HasPrefix(g, "+OK") {
					t.Fatalf("slow client's greeting: %q", g)
				}
				wg.Add(2)
				go func() { // drip
					defer wg.Done()
					for i := 0; tc.drip != ""; i++ {
						select {
						case <-stop:
							return
						case <-time.After(tc.every):
						}
						if _, err := conn.Write([]byte{tc.drip[i%len(tc.drip)]}); err != nil {
							return
						}
					}
				}()
				go func() { // wait for popgate to hang up
					defer wg.Done()
					_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
					_, err := io.Copy(io.Discard, r)
					results <- result{time.Since(start), err}
				}()
			}
			time.Sleep(50 * time.Millisecond)
			// Same address: refused at once.
			if got := readAllFrom(t, "127.0.0.1", addr); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many connections from your address") {
				t.Fatalf("a third connection from the slow clients' address: %q", got)
			}
			// Another address: served.
			c := &client{t: t, conn: dialFrom(t, "127.0.0.2", addr)}
			c.r = bufio.NewReader(c.conn)
			c.line()
			c.login(testUser, testPass)
			c.expectOK("STAT")
			// The listener total (3) is now reached: a fourth address waits.
			if got := readAllFrom(t, "127.0.0.3", addr); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many connections") {
				t.Fatalf("a connection over the listener's total: %q", got)
			}
			c.expectOK("QUIT")
			// Both slow clients are cut off by the login deadline: the idle
			// timeout for a silent one, the total login time for the rest.
			for range 2 {
				r := <-results
				if r.err != nil {
					t.Fatalf("slow client still connected after %v: %v", r.d, r.err)
				}
				if limit := loginDeadlineFactor*loginTimeout + 2*time.Second; r.d > limit {
					t.Fatalf("slow client closed after %v, want within %v", r.d, limit)
				}
			}
			// Their address is free again.
			waitFor(t, func() bool {
				return strings.HasPrefix(readFirstLineFrom(t, "127.0.0.1", addr), "+OK")
			})
		})
	}
}

func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readAllFrom(t *testing.T, local, addr string) string {
	conn := dialFrom(t, local, addr)
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(conn)
	return string(b)
}

func readFirstLineFrom(t *testing.T, local, addr string) string {
	conn := dialFrom(t, local, addr)
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	l, _ := bufio.NewReader(conn).ReadString('\n')
	return l
}

// namedFilter is a filter with a scanner-like name, so a leak of filter
// names shows.
type namedFilter struct {
	name string
	fn   func(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error)
}

func (f namedFilter) Name() string { return f.name }
func (f namedFilter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	return f.fn(ctx, env, body)
}

type failingQuarantine struct{}

func (failingQuarantine) Store(context.Context, *filters.Envelope, filters.Body, *filters.Result) (string, error) {
	return "", errors.New("open /var/lib/popgate/quarantine/2026/x.eml: read-only file system")
}

// internalsRE matches what a -ERR popgate writes must never show: addresses,
// ports, paths, Go error texts, filter and scanner names.
var internalsRE = regexp.MustCompile(`(?i)\d+\.\d+\.\d+\.\d+|\[?::1\]?|:\d{2,5}\b|/[a-z0-9_.-]+/|dial tcp|no such file|connection refused|` +
	`read-only|i/o timeout|EOF|x509|certificate|tls:|panic|goroutine|clamd|clamav|av-scanner|quarantine|spool|policy file|\.hcl|fuzz`)

// -ERR texts popgate writes itself never leak internals. Each fault case
// below makes popgate answer with its own -ERR while the underlying error
// holds an address, a path, a Go error text or a component name.
func TestErrTextsLeakNoInternals(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	dead := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	clamdDown := namedFilter{"clamav-av-scanner", func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
		return filters.Verdict{}, fmt.Errorf("clamd tcp://%s: dial tcp %s: connect: connection refused", dead, dead)
	}}
	rejects := namedFilter{"clamav-av-scanner", func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
		return filters.Verdict{Action: filters.Reject, Reason: "clamav: Eicar-Test-Signature FOUND"}, nil
	}}
	lossy := namedFilter{"strip-dangerous", func(_ context.Context, _ *filters.Envelope, b filters.Body) (filters.Verdict, error) {
		return filters.Verdict{Action: filters.Replace, Body: filters.BytesBody([]byte("Subject: x\r\n\r\nstripped\r\n"))}, nil
	}}
	panics := namedFilter{"clamav-av-scanner", func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
		panic("runtime error: index out of range /src/filters/clamav/clamav.go:42")
	}}
	policyWith := func(c *filters.Chain) func(*Listener, *Options) {
		return func(_ *Listener, o *Options) { o.PolicyFor = chainPolicy(c) }
	}
	retr := func(c *client) []string { c.line(); c.login(testUser, testPass); return []string{c.cmd("RETR 1")} }
	var all []string
	for _, tc := range []struct {
		name     string
		upstream string
		mod      func(*Listener, *Options)
		session  func(c *client) []string // the lines to check
	}{
		{"upstream down", dead, nil, func(c *client) []string { return []string{c.line()} }},
		{"upstream TLS handshake fails", up, func(l *Listener, _ *Options) { l.Upstream.TLSMode = TLSImplicit },
			func(c *client) []string { return []string{c.line()} }},
		{"clamd down (tempfail)", up, policyWith(&filters.Chain{Filters: []filters.Filter{clamdDown}}), retr},
		{"clamd down (reject)", up, policyWith(&filters.Chain{Filters: []filters.Filter{clamdDown}, OnError: filters.RejectMessage}), retr},
		{"virus found, no quarantine", up, policyWith(&filters.Chain{Filters: []filters.Filter{rejects}}), retr},
		{"quarantine fails", up, policyWith(&filters.Chain{Filters: []filters.Filter{rejects}, Quarantine: failingQuarantine{}}), retr},
		{"lossy change without quarantine", up, policyWith(&filters.Chain{Filters: []filters.Filter{lossy}}), retr},
		{"filter panics", up, policyWith(&filters.Chain{Filters: []filters.Filter{panics}}), retr},
		{"spool directory missing", up, policyWith(&filters.Chain{Filters: []filters.Filter{rejects},
			Spool: &filters.Spool{Dir: "/nonexistent/popgate-spool", MemoryLimit: -1}}), retr},
		{"policy refuses the login", up, func(_ *Listener, o *Options) {
			o.PolicyFor = func(SessionInfo) (*SessionPolicy, error) {
				return nil, errors.New("no policy matches in /etc/popgate/popgate.hcl:12")
			}
		}, func(c *client) []string {
			c.line()
			c.expectOK("USER " + testUser)
			return []string{c.cmd("PASS " + testPass)}
		}},
		{"routing refuses the login", up, func(l *Listener, _ *Options) {
			l.Router = func(string) (*Upstream, string, error) {
				return nil, "", errors.New("login names host 10.0.0.1:110, not in login_routing")
			}
		}, func(c *client) []string { c.line(); return []string{c.cmd("USER bob#10.0.0.1:110")} }},
		{"routed upstream down", up, func(l *Listener, _ *Options) {
			l.Router = func(string) (*Upstream, string, error) { return &Upstream{Name: "down", Address: dead}, "bob", nil }
		}, func(c *client) []string { c.line(); return []string{c.cmd("USER bob")} }},
		{"bad command, overlong line", up, nil, func(c *client) []string {
			c.line()
			return []string{c.cmd("\x00"), c.cmd(strings.Repeat("x", 300))}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr, _ := startProxy(t, tc.upstream, tc.mod)
			c := dialClient(t, addr)
			lines := tc.session(c)
			for _, l := range lines {
				if !strings.HasPrefix(l, "-ERR") {
					t.Fatalf("want -ERR, got %q", l)
				}
				if m := internalsRE.FindString(l); m != "" {
					t.Errorf("-ERR leaks %q: %q", m, l)
				}
				all = append(all, l)
			}
		})
	}
	// The upstream's own -ERR texts are its word and relayed as they are;
	// those above are all popgate's.
	t.Logf("%d -ERR lines checked:\n%s", len(all), strings.Join(all, "\n"))
}
