package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// Invariant 6, client side: commands pipelined behind STLS arrived in
// plaintext and are never executed.
func TestClientSTLSInjectionDiscarded(t *testing.T) {
	cert, pool := testCert(t)
	f, up := startFakeUpstream(t, "+OK hello\r\n", func(conn net.Conn, l string) bool {
		io.WriteString(conn, "+OK\r\n")
		return true
	})
	_, addr, logs := startProxy(t, up, func(l *Listener, _ *Options) {
		l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c := dialClient(t, addr)
	c.line()
	c.send("STLS\r\nUSER injected\r\n")
	if got := c.line(); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("STLS: %q", got)
	}
	tc := tls.Client(c.conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	r := bufio.NewReader(tc)
	io.WriteString(tc, "USER real\r\n")
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("USER after TLS: %q", l)
	}
	if got := f.received(); slices.Contains(got, "USER injected") || !slices.Contains(got, "USER real") {
		t.Fatalf("upstream received %q", got)
	}
	if !strings.Contains(logs.String(), "discarded plaintext pipelined after STLS") {
		t.Fatal("injection attempt not logged")
	}
	// STLS again inside TLS is refused.
	io.WriteString(tc, "STLS\r\n")
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "-ERR") {
		t.Fatalf("second STLS: %q", l)
	}
}

// Invariant 6, upstream side: a response injected behind the server's
// STLS +OK is refused; the session never starts.
func TestUpstreamSTLSInjectionRefused(t *testing.T) {
	_, up := startFakeUpstream(t, "+OK hello\r\n", func(conn net.Conn, l string) bool {
		if l == "STLS" {
			io.WriteString(conn, "+OK begin\r\n+OK injected\r\n")
		}
		return true
	})
	_, addr, logs := startProxy(t, up, func(l *Listener, _ *Options) {
		l.Upstream.TLSMode = TLSStartTLS
	})
	c := dialClient(t, addr)
	if got := c.line(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("greeting: %q", got)
	}
	if !strings.Contains(logs.String(), "plaintext bytes after STLS") {
		t.Fatalf("logs do not say why: %s", logs)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	_, addr, _ := startProxy(t, dead, nil)
	c := dialClient(t, addr)
	if got := c.readAll(); got != "-ERR [SYS/TEMP] mail server unavailable, try again later\r\n" {
		t.Fatalf("got %q", got)
	}
}

func TestUpstreamHugeStatusLine(t *testing.T) {
	_, up := startFakeUpstream(t, "+OK hello\r\n", func(conn net.Conn, l string) bool {
		io.WriteString(conn, "+OK "+strings.Repeat("z", 1<<20)+"\r\n")
		return true
	})
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	c.send("USER x\r\n")
	if got := c.readAll(); got != "-ERR [SYS/TEMP] mail server connection lost, try again later\r\n" {
		t.Fatalf("got %d bytes: %.80q", len(got), got)
	}
}

func TestUpstreamGarbageResponse(t *testing.T) {
	_, up := startFakeUpstream(t, "+OK hello\r\n", func(conn net.Conn, l string) bool {
		io.WriteString(conn, "HTTP/1.1 400 Bad Request\r\n")
		return true
	})
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	c.send("USER x\r\n")
	if got := c.readAll(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("got %q", got)
	}
}

func TestUpstreamStallsTimesOut(t *testing.T) {
	_, up := startFakeUpstream(t, "+OK hello\r\n", func(conn net.Conn, l string) bool {
		if l == "RETR 1" {
			io.WriteString(conn, "+OK\r\npartial line\r\n") // then silence
		} else {
			io.WriteString(conn, "+OK\r\n")
		}
		return true
	})
	_, addr, _ := startProxy(t, up, func(l *Listener, _ *Options) { l.Upstream.Timeout = 300 * time.Millisecond })
	c := dialClient(t, addr)
	c.line()
	c.login("u", "p")
	c.send("RETR 1\r\n")
	if got := c.readAll(); strings.Contains(got, ".\r\n") || !strings.HasPrefix("+OK\r\npartial line\r\n", got) {
		t.Fatalf("stalled RETR: got %q, want at most the partial data and no terminator", got)
	}
}

func TestConnectionLimits(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, func(l *Listener, _ *Options) { l.MaxConnectionsPerIP = 2 })
	a, b := dialClient(t, addr), dialClient(t, addr)
	a.line()
	b.line()
	third := dialClient(t, addr)
	if got := third.readAll(); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many connections") {
		t.Fatalf("third connection: %q", got)
	}
	a.expectOK("QUIT")
	waitFor(t, func() bool {
		c := dialClient(t, addr)
		defer c.conn.Close()
		return strings.HasPrefix(c.line(), "+OK")
	})
}

// Invariant 7: no password or AUTH exchange reaches the logs, even at
// debug level.
func TestSecretsNeverLogged(t *testing.T) {
	cfg := mailConfig()
	_, up := startMailServer(t, cfg)
	_, addr, logs := startProxy(t, up, nil)

	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	c.expectOK("QUIT")

	c = dialClient(t, addr)
	c.line()
	// AUTH PLAIN with the credentials in a continuation.
	if got := c.cmd("AUTH PLAIN"); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("AUTH PLAIN: %q", got)
	}
	plain := "AGJvYgBzM2NyZXQgcGFzcy1waHJhc2U=" // "\0bob\0s3cret pass-phrase"
	if got := c.cmd(plain); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("AUTH PLAIN response: %q", got)
	}
	c.expectOK("QUIT")
	waitFor(t, func() bool { return strings.Count(logs.String(), "session end") == 2 })
	out := logs.String()
	for _, secret := range []string{testPass, "s3cret", plain} {
		if strings.Contains(out, secret) {
			t.Fatalf("log contains %q:\n%s", secret, out)
		}
	}
	if strings.Count(out, `"user":"bob"`) < 2 {
		t.Fatalf("logins not logged with the user name:\n%s", out)
	}
}

// A login name is client text: in the log its control and bidi characters
// are shown as <U+XXXX>, so AUTH PLAIN (whose base64 may hold any byte but
// CR and LF) cannot drive the terminal a console log is read on or reorder
// what the reader sees.
func TestLoginNameLoggedVisible(t *testing.T) {
	const user = "eve\x1b[2J\t\u202egnp.exe\u009b"
	cfg := mailConfig()
	cfg.Users[user] = "pw"
	_, up := startMailServer(t, cfg)
	_, addr, logs := startProxy(t, up, nil)

	c := dialClient(t, addr)
	c.line()
	if got := c.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00pw"))); !strings.HasPrefix(got, "+OK") {
		t.Fatalf("AUTH PLAIN: %q", got)
	}
	c.expectOK("QUIT")
	waitFor(t, func() bool { return strings.Contains(logs.String(), "session end") })
	out := logs.String()
	want := `"user":"eve<U+001B>[2J<U+0009><U+202E>gnp.exe<U+009B>"`
	if strings.Count(out, want) < 2 {
		t.Fatalf("login name not logged as %s:\n%s", want, out)
	}
	if strings.Contains(out, "\u202e") || strings.Contains(out, `\u001b`) {
		t.Fatalf("raw control or bidi characters of the login name in the log:\n%s", out)
	}
}
