package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// v1Header and v2Header are PROXY headers for a client at src talking to dst.
func v1Header(t *testing.T, src, dst string) []byte {
	return proxyHeader(t, 1, src, dst)
}

func proxyHeader(t *testing.T, version byte, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(version,
		net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func localHeader(t *testing.T) []byte {
	t.Helper()
	b, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProxyProtocolInbound: a trusted balancer's header (v1 or v2) makes its
// client the session's client for policy matching and logs; a missing or
// malformed header from a trusted source, and any header from an untrusted
// one, is refused; an untrusted client without a header is served.
func TestProxyProtocolInbound(t *testing.T) {
	_, mail := startMailServer(t, mailConfig())
	tests := []struct {
		name    string
		trusted string // the prefix the listener trusts
		send    func(t *testing.T) []byte
		// wantClient is the client address the policy sees; "" means the
		// connection is refused before any greeting, "err" after it.
		wantClient string
	}{
		{"v1 from trusted", "127.0.0.0/8", func(t *testing.T) []byte { return v1Header(t, "192.0.2.10:40000", "198.51.100.1:110") }, "192.0.2.10:40000"},
		{"v2 from trusted", "127.0.0.0/8", func(t *testing.T) []byte { return proxyHeader(t, 2, "192.0.2.11:40001", "198.51.100.1:110") }, "192.0.2.11:40001"},
		{"v2 IPv6 from trusted", "127.0.0.1/32", func(t *testing.T) []byte { return proxyHeader(t, 2, "[2001:db8::5]:40002", "[2001:db8::1]:110") }, "[2001:db8::5]:40002"},
		{"v2 LOCAL (health check)", "127.0.0.0/8", localHeader, "127.0.0.1"},
		{"no header from trusted", "127.0.0.0/8", func(*testing.T) []byte { return []byte("CAPA\r\n") }, ""},
		{"malformed v1 from trusted", "127.0.0.0/8", func(*testing.T) []byte { return []byte("PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n") }, ""},
		{"truncated v2 from trusted", "127.0.0.0/8", func(t *testing.T) []byte { return proxyHeader(t, 2, "192.0.2.12:1", "198.51.100.1:110")[:20] }, ""},
		{"v1 from untrusted", "10.0.0.0/8", func(t *testing.T) []byte { return v1Header(t, "192.0.2.13:40003", "198.51.100.1:110") }, "err"},
		{"v2 from untrusted", "10.0.0.0/8", func(t *testing.T) []byte { return proxyHeader(t, 2, "192.0.2.14:40004", "198.51.100.1:110") }, "err"},
		{"plain client from untrusted", "10.0.0.0/8", func(*testing.T) []byte { return nil }, "127.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen netip.AddrPort
			srv, addr, logs := startProxy(t, mail, func(l *Listener, o *Options) {
				l.ProxyProtocol = &ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix(tc.trusted)}, Timeout: time.Second}
				o.PolicyFor = func(si SessionInfo) (*SessionPolicy, error) {
					mu.Lock()
					seen = si.Client
					mu.Unlock()
					return nil, nil
				}
			})
			c := dialClient(t, addr)
			if b := tc.send(t); len(b) > 0 {
				if _, err := c.conn.Write(b); err != nil {
					t.Fatal(err)
				}
			}
			switch tc.wantClient {
			case "":
				if got := c.readAll(); got != "" {
					t.Fatalf("refused connection got %q, want nothing", got)
				}
				waitFor(t, func() bool { return strings.Contains(logs.String(), `"reason":"bad PROXY protocol header"`) })
				return
			case "err":
				if g := c.line(); !strings.HasPrefix(g, "+OK") {
					t.Fatalf("greeting %q", g)
				}
				if l := c.line(); !strings.HasPrefix(l, "-ERR") {
					t.Fatalf("after an untrusted header: %q, want -ERR", l)
				}
				if rest := c.readAll(); rest != "" {
					t.Fatalf("connection not closed after -ERR, got %q", rest)
				}
				return
			}
			if g := c.line(); !strings.HasPrefix(g, "+OK") {
				t.Fatalf("greeting %q", g)
			}
			c.login(testUser, testPass)
			c.expectOK("QUIT")
			mu.Lock()
			got := seen
			mu.Unlock()
			want := tc.wantClient
			if got.String() != want && got.Addr().String() != want {
				t.Errorf("policy saw client %v, want %s", got, want)
			}
			waitFor(t, func() bool { return srv.Sessions() == 0 })
			if !strings.Contains(logs.String(), `"client":"`+got.String()+`"`) {
				t.Errorf("logs do not name client %v:\n%s", got, logs.String())
			}
		})
	}
}

// TestProxyProtocolPerIPLimit: behind a balancer every connection comes from
// one address, so the per-IP limit must count the clients the headers name.
func TestProxyProtocolPerIPLimit(t *testing.T) {
	_, mail := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, mail, func(l *Listener, o *Options) {
		l.ProxyProtocol = &ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		l.MaxConnectionsPerIP = 1
	})
	open := func(src string) *client {
		c := dialClient(t, addr)
		if _, err := c.conn.Write(v1Header(t, src, "198.51.100.1:110")); err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := open("192.0.2.1:1000")
	if g := a.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("first client: %q", g)
	}
	b := open("192.0.2.2:1000") // another client: its own count
	if g := b.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("second client: %q", g)
	}
	c := open("192.0.2.1:1001") // the first client again: over its limit
	if g := c.line(); !strings.HasPrefix(g, "-ERR [SYS/TEMP]") {
		t.Fatalf("second connection of one client: %q, want -ERR [SYS/TEMP]", g)
	}
}

// TestProxyProtocolImplicitTLS: a balancer sends the header and the
// client's TLS ClientHello back to back; the handshake must still see it.
func TestProxyProtocolImplicitTLS(t *testing.T) {
	_, mail := startMailServer(t, mailConfig())
	cert, pool := testCert(t)
	_, addr, _ := startProxy(t, mail, func(l *Listener, o *Options) {
		l.ProxyProtocol = &ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		l.Implicit = true
	})
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	// One write: header and ClientHello arrive together.
	bw := &bufferedConn{Conn: raw, pending: proxyHeader(t, 2, "192.0.2.20:5555", "198.51.100.1:995")}
	tc := tls.Client(bw, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	r := bufio.NewReader(tc)
	greeting, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "+OK") {
		t.Fatalf("greeting over TLS after a PROXY header: %q %v", greeting, err)
	}
}

// bufferedConn prepends pending to the first write.
type bufferedConn struct {
	net.Conn
	pending []byte
}

func (c *bufferedConn) Write(p []byte) (int, error) {
	if c.pending != nil {
		b := append(c.pending, p...)
		c.pending = nil
		if _, err := c.Conn.Write(b); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// TestProxyProtocolOutbound: an upstream with ProxyProtocol gets a header
// naming the real client (here itself named by an inbound header) before
// anything else, so Dovecot's haproxy_trusted_networks sees it.
func TestProxyProtocolOutbound(t *testing.T) {
	for _, version := range []byte{1, 2} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		got := make(chan *proxyproto.Header, 1)
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			h, err := proxyproto.Read(bufio.NewReader(conn))
			if err != nil {
				t.Errorf("v%d: upstream read: %v", version, err)
			}
			got <- h
			io.WriteString(conn, "+OK ready\r\n")
			_, _ = io.Copy(io.Discard, conn)
		}()
		_, addr, _ := startProxy(t, "", func(l *Listener, o *Options) {
			l.Upstream = &Upstream{Name: "up", Address: ln.Addr().String(), ProxyProtocol: version}
			l.ProxyProtocol = &ProxyProtocol{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
		})
		c := dialClient(t, addr)
		if _, err := c.conn.Write(v1Header(t, "192.0.2.30:6000", "198.51.100.7:110")); err != nil {
			t.Fatal(err)
		}
		if g := c.line(); g != "+OK ready" {
			t.Fatalf("v%d: greeting %q", version, g)
		}
		h := <-got
		if h == nil {
			t.Fatalf("v%d: no header", version)
		}
		src, dst, ok := h.TCPAddrs()
		if !ok || h.Version != version || src.String() != "192.0.2.30:6000" || dst.String() != "198.51.100.7:110" {
			t.Errorf("v%d: upstream got header v%d %v → %v, want 192.0.2.30:6000 → 198.51.100.7:110", version, h.Version, src, dst)
		}
	}
}
