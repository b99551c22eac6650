package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/pop3server"
)

// syncBuffer collects log output from concurrent sessions.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startMailServer runs the built-in POP3 server on loopback.
func startMailServer(t testing.TB, cfg pop3server.Config) (*pop3server.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := pop3server.New(cfg)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return srv, ln.Addr().String()
}

// startProxy runs popgate with a single listener in front of upstream addr.
// mod may adjust the listener and options before the server starts.
func startProxy(t testing.TB, upstream string, mod func(*Listener, *Options)) (*Server, string, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	l := Listener{Name: "test", Address: "127.0.0.1:0", Upstream: &Upstream{Name: "up", Address: upstream}}
	opts := Options{Logger: zerolog.New(logs).Level(zerolog.DebugLevel)}
	if mod != nil {
		mod(&l, &opts)
	}
	opts.Listeners = []Listener{l}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv, srv.Addrs()[0].String(), logs
}

// client is a raw POP3 client: tests see exactly the bytes popgate sends.
type client struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
}

func dialClient(t testing.TB, addr string) *client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one line, without CRLF.
func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read line: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// cmd sends one command and returns the status line.
func (c *client) cmd(s string) string {
	c.t.Helper()
	c.send(s + "\r\n")
	return c.line()
}

// expectOK sends a command and fails unless the answer is +OK.
func (c *client) expectOK(s string) string {
	c.t.Helper()
	l := c.cmd(s)
	if !strings.HasPrefix(l, "+OK") {
		c.t.Fatalf("%s: got %q, want +OK", strings.Fields(s)[0], l)
	}
	return l
}

// body reads a multi-line response body up to and including the
// terminator and returns it still dot-stuffed, terminator excluded.
func (c *client) body() string {
	c.t.Helper()
	var b strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read body: %v after %d bytes", err, b.Len())
		}
		if l == ".\r\n" {
			return b.String()
		}
		b.WriteString(l)
	}
}

// readAll reads until the connection closes and returns everything.
func (c *client) readAll() string {
	c.t.Helper()
	b, _ := io.ReadAll(c.r)
	return string(b)
}

func (c *client) login(user, pass string) {
	c.t.Helper()
	c.expectOK("USER " + user)
	c.expectOK("PASS " + pass)
}

// testCert makes a self-signed certificate for 127.0.0.1 and localhost.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// fakeUpstream is a scripted POP3 server for protocol faults the built-in
// server does not make: it greets, records every line it receives, and
// answers each with respond(line).
type fakeUpstream struct {
	mu    sync.Mutex
	lines []string
}

func (f *fakeUpstream) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.lines...)
}

func startFakeUpstream(t testing.TB, greeting string, respond func(conn net.Conn, line string) bool) (*fakeUpstream, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f := &fakeUpstream{}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.WriteString(conn, greeting)
				r := bufio.NewReader(conn)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					l = strings.TrimSuffix(l, "\r\n")
					f.mu.Lock()
					f.lines = append(f.lines, l)
					f.mu.Unlock()
					if !respond(conn, l) {
						return
					}
				}
			}()
		}
	}()
	return f, ln.Addr().String()
}
