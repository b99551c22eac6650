package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/pop3server"
)

const (
	testUser = "bob"
	testPass = "s3cret pass-phrase"
)

func testMessages() []pop3server.Message {
	return []pop3server.Message{
		{UIDL: "u1", Data: []byte("Subject: one\r\n\r\nhello\r\n.dot line\r\n..two dots\r\n.\r\nend\r\n")},
		{UIDL: "u2", Data: []byte("Subject: two\r\n\r\n" + strings.Repeat("a long line of text\r\n", 5000))},
		{UIDL: "u3", Data: []byte("Subject: three\r\n\r\nno final newline")},
	}
}

func mailConfig() pop3server.Config {
	return pop3server.Config{
		Users:     map[string]string{testUser: testPass},
		Mailboxes: map[string][]pop3server.Message{testUser: testMessages()},
		Hostname:  "mail.test",
	}
}

// stuff dot-stuffs a message the way a server sends it, for comparisons.
func stuff(msg []byte) string {
	s := string(msg)
	if !strings.HasSuffix(s, "\n") {
		s += "\r\n"
	}
	var b strings.Builder
	for l := range strings.Lines(s) {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
	}
	return b.String()
}

func TestGreetingRelayedUnchanged(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	direct := dialClient(t, up).line()
	_, addr, _ := startProxy(t, up, nil)
	via := dialClient(t, addr).line()
	// Each connection gets its own APOP timestamp; the shape is the same.
	if !strings.HasPrefix(via, "+OK") || !strings.Contains(via, "<") || len(via) != len(direct) {
		t.Fatalf("greeting through popgate %q does not look like the server's %q", via, direct)
	}
}

func TestRelayCommandsAndBytes(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	if got := c.expectOK("STAT"); !strings.HasPrefix(got, "+OK 3 ") {
		t.Fatalf("STAT: %q", got)
	}
	c.expectOK("LIST")
	if got := c.body(); strings.Count(got, "\r\n") != 3 {
		t.Fatalf("LIST body: %q", got)
	}
	c.expectOK("UIDL")
	if got := c.body(); got != "1 u1\r\n2 u2\r\n3 u3\r\n" {
		t.Fatalf("UIDL body: %q", got)
	}
	for i, m := range testMessages() {
		c.expectOK(fmt.Sprintf("RETR %d", i+1))
		if got, want := c.body(), stuff(m.Data); got != want {
			t.Fatalf("RETR %d: got %d bytes, want %d identical bytes", i+1, len(got), len(want))
		}
	}
	c.expectOK("TOP 1 1")
	if got := c.body(); got != "Subject: one\r\n\r\nhello\r\n" {
		t.Fatalf("TOP: %q", got)
	}
	if got := c.cmd("RETR 9"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("RETR 9: %q", got)
	}
	c.expectOK("NOOP")
	c.expectOK("QUIT")
}

func TestPipelinedCommandsAnsweredInOrder(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	c.send("USER " + testUser + "\r\nPASS " + testPass + "\r\nSTAT\r\nUIDL 2\r\nRETR 1\r\nNOOP\r\nLIST 3\r\nBOGUS\r\nQUIT\r\n")
	want := []string{"+OK", "+OK", "+OK 3 ", "+OK 2 u2", "+OK"}
	for i, w := range want {
		if got := c.line(); !strings.HasPrefix(got, w) {
			t.Fatalf("response %d: got %q, want prefix %q", i, got, w)
		}
	}
	if got := c.body(); got != stuff(testMessages()[0].Data) {
		t.Fatalf("RETR body in pipeline: %q", got)
	}
	for i, w := range []string{"+OK", "+OK 3 ", "-ERR", "+OK"} {
		if got := c.line(); !strings.HasPrefix(got, w) {
			t.Fatalf("late response %d: got %q, want prefix %q", i, got, w)
		}
	}
}

func TestCapaIntersection(t *testing.T) {
	cert, _ := testCert(t)
	cfg := mailConfig()
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	_, up := startMailServer(t, cfg)
	f, fup := startFakeUpstream(t, "+OK ready\r\n", func(conn net.Conn, l string) bool {
		conn.Write([]byte("+OK\r\nTOP\r\nUSER\r\nSTLS\r\nX-SECRET-EXTENSION\r\nSASL PLAIN LOGIN\r\nPIPELINING\r\n.\r\n"))
		return true
	})
	_ = f
	for _, tc := range []struct {
		name     string
		upstream string
		tls      bool
		want     []string
	}{
		{"no stls offered", fup, false, []string{"TOP", "USER", "SASL PLAIN LOGIN", "PIPELINING"}},
		{"stls offered", fup, true, []string{"TOP", "USER", "SASL PLAIN LOGIN", "PIPELINING", "STLS"}},
		{"real server", up, true, []string{"TOP", "USER", "UIDL", "RESP-CODES", "PIPELINING", "SASL PLAIN", "IMPLEMENTATION popgate-test-server", "STLS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr, _ := startProxy(t, tc.upstream, func(l *Listener, _ *Options) {
				if tc.tls {
					l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
				}
			})
			c := dialClient(t, addr)
			c.line()
			c.expectOK("CAPA")
			got := strings.Split(strings.TrimSuffix(c.body(), "\r\n"), "\r\n")
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("CAPA: got %q, want %q", got, tc.want)
			}
		})
	}
}

// Invariant 2: an upstream that dies mid-response never makes popgate send
// a terminator, at any offset.
func TestUpstreamCutMidRetrNeverTerminates(t *testing.T) {
	msg := testMessages()[1]
	status := fmt.Sprintf("+OK %d octets\r\n", len(msg.Data))
	full := len(status) + len(stuff(msg.Data)) + 3
	offsets := []int{0, 1, len(status) - 1, len(status), len(status) + 1, 4096, 32768, 65535, full - 4, full - 3, full - 2, full - 1}
	for _, off := range offsets {
		t.Run(fmt.Sprint(off), func(t *testing.T) {
			cfg := mailConfig()
			cfg.CutResponse = func(cmd string, n int) int {
				if cmd == "RETR" {
					return off
				}
				return -1
			}
			mail, up := startMailServer(t, cfg)
			_, addr, _ := startProxy(t, up, nil)
			c := dialClient(t, addr)
			c.line()
			c.login(testUser, testPass)
			c.expectOK("DELE 1")
			c.send("RETR 2\r\n")
			rest := c.readAll()
			if strings.HasSuffix(rest, "\r\n.\r\n") {
				t.Fatalf("cut at %d: client got a terminated response (%d bytes)", off, len(rest))
			}
			if off < len(status) && rest != "" && !strings.HasPrefix(rest, "-ERR [SYS/TEMP]") {
				t.Fatalf("cut in status line: got %q", rest)
			}
			waitFor(t, func() bool { return mail.Sessions() == 0 })
			if mail.QuitCount() != 0 || len(mail.Mailbox(testUser)) != 3 {
				t.Fatalf("mailbox changed: quits=%d messages=%d", mail.QuitCount(), len(mail.Mailbox(testUser)))
			}
		})
	}
}

// Invariant 3: popgate sends QUIT upstream only when the client did.
func TestNoQuitUpstreamUnlessClientQuits(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(c *client, srv *Server)
		quit bool
	}{
		{"client vanishes after DELE", func(c *client, _ *Server) { c.conn.Close() }, false},
		{"client vanishes mid-RETR", func(c *client, _ *Server) { c.send("RETR 2\r\n"); c.r.ReadString('\n'); c.conn.Close() }, false},
		{"shutdown", func(c *client, srv *Server) {
			ctx, cancel := contextWithTimeout(50 * time.Millisecond)
			defer cancel()
			srv.Shutdown(ctx)
		}, false},
		{"client quits", func(c *client, _ *Server) { c.expectOK("QUIT") }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mail, up := startMailServer(t, mailConfig())
			srv, addr, _ := startProxy(t, up, nil)
			c := dialClient(t, addr)
			c.line()
			c.login(testUser, testPass)
			c.expectOK("DELE 1")
			tc.end(c, srv)
			waitFor(t, func() bool { return mail.Sessions() == 0 })
			want := 3
			if tc.quit {
				want = 2
			}
			if got := len(mail.Mailbox(testUser)); got != want || (mail.QuitCount() == 1) != tc.quit {
				t.Fatalf("after %s: %d messages (want %d), %d QUITs", tc.name, got, want, mail.QuitCount())
			}
		})
	}
}

func TestIdleTimeoutClosesWithoutQuit(t *testing.T) {
	mail, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, func(l *Listener, _ *Options) {
		l.LoginTimeout = 300 * time.Millisecond
		l.IdleTimeout = 600 * time.Millisecond
	})
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	c.expectOK("DELE 1")
	start := time.Now()
	if got := c.readAll(); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("idle client got %q", got)
	}
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Fatalf("closed after %v, before the idle timeout", d)
	}
	waitFor(t, func() bool { return mail.Sessions() == 0 })
	if mail.QuitCount() != 0 || len(mail.Mailbox(testUser)) != 3 {
		t.Fatal("idle timeout sent QUIT upstream")
	}
}

func TestBadClientInput(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	for _, bad := range []string{strings.Repeat("x", 300), "USER a\x00b", "\x01\x02\x03", "", "ÜSER bob"} {
		if got := c.cmd(bad); !strings.HasPrefix(got, "-ERR") {
			t.Fatalf("%q: got %q, want -ERR", bad, got)
		}
	}
	// A megabyte without a newline is answered once it ends; the session
	// survives it.
	c.send(strings.Repeat("A", 1<<20))
	if got := c.cmd(""); !strings.HasPrefix(got, "-ERR line too long") {
		t.Fatalf("1 MB line: %q", got)
	}
	c.login(testUser, testPass)
	c.expectOK("STAT")
	// The third overlong line ends the session.
	if got := c.cmd(strings.Repeat("y", 1000)); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("third overlong line: %q", got)
	}
	if rest := c.readAll(); rest != "" {
		t.Fatalf("after closing: %q", rest)
	}
}

func TestGarbageFloodCloses(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	_, addr, _ := startProxy(t, up, nil)
	c := dialClient(t, addr)
	c.line()
	c.send(strings.Repeat("\x00\x01garbage\r\n", maxBadCommands))
	got := c.readAll()
	if n := strings.Count(got, "-ERR"); n != maxBadCommands || !strings.Contains(got, "closing") {
		t.Fatalf("garbage flood: %d -ERR lines: %q", n, got)
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSessionEndTexts: each cause a session ends with reads differently in
// the "session end" log line, so a client that left and a client that broke
// the protocol are told apart without the metric.
func TestSessionEndTexts(t *testing.T) {
	errs := []error{errUpstreamLost, errUpstreamUnavailable, errClientGone, errClientFault, errClientIdle, errPolicyRefused}
	seen := map[string]bool{}
	for _, err := range errs {
		if seen[err.Error()] {
			t.Errorf("two session end causes read %q", err)
		}
		seen[err.Error()] = true
	}
	results := map[string]bool{}
	for _, err := range errs {
		results[sessionResult(fmt.Errorf("wrapped: %w", err), false)] = true
	}
	if len(results) != len(errs) {
		t.Errorf("session results %v: want one per cause (%d)", results, len(errs))
	}
}
