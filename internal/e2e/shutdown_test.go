package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// SIGTERM while a client is in the middle of a large RETR: popgate drains
// for shutdown_timeout, then closes the session without QUIT and exits 0.
// The client must never see a terminating "." for the cut message, and
// Dovecot must delete nothing although the client had sent DELE 1.
// smallBufferDialer dials with a 16 KiB receive buffer, so popgate's writes
// block on a client that reads slowly instead of filling megabytes of kernel
// buffers.
var smallBufferDialer = net.Dialer{Timeout: 10 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
	}); err != nil {
		return err
	}
	return serr
}}

func TestSIGTERMMidDownload(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)

	var big bytes.Buffer // ~12 MB: more than all socket buffers on the way hold
	big.WriteString("From: big@example.com\r\nTo: u@example.com\r\nSubject: big\r\n\r\n")
	for i := 0; big.Len() < 12<<20; i++ {
		fmt.Fprintf(&big, "line %07d of a big message, no dots here: abcdefghijklmnopqrstuvwxyz0123456789\r\n", i)
	}
	msgs := [][]byte{corpus("sigterm")[0], big.Bytes()}
	u, paths := newMailbox(t, d, msgs)
	// A second user's session is idle after DELE 1 when SIGTERM comes: the
	// state in which a relayed QUIT would delete at once.
	idleMsgs := corpus("sigterm-idle")[:2]
	idleUser, idlePaths := newMailbox(t, d, idleMsgs)
	p := startPopgate(t, dovecotConfig(d, configOpts{upstreamTLS: "none", shutdownTimeout: "1s"}), "", "plain")

	idle := dialPOP(t, p.addr("plain"))
	idle.ok("USER " + idleUser.Name)
	idle.ok("PASS " + idleUser.Password)
	idle.ok("DELE 1")

	conn, err := smallBufferDialer.Dial("tcp", p.addr("plain"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := &rawPOP{t: t, c: conn, r: bufio.NewReaderSize(conn, 16<<10)}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	c.line()
	c.ok("USER " + u.Name)
	c.ok("PASS " + u.Password)
	c.ok("DELE 1")
	c.ok("RETR 2")

	// Read slowly; after 256 kB, SIGTERM popgate; once it has exited, read
	// the rest at full speed until the connection ends.
	var got []byte
	var sent time.Time
	buf := make([]byte, 16<<10)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := c.r.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("client connection still open 20 s after the last byte (popgate exited: %v)", exited(p))
			}
			break // EOF or reset: popgate closed the connection
		}
		if sent.IsZero() && len(got) >= 256<<10 {
			p.signal(syscall.SIGTERM)
			sent = time.Now()
		}
		if !exited(p) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if sent.IsZero() {
		t.Fatalf("connection ended after %d bytes, before SIGTERM was sent", len(got))
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("popgate still running 10 s after SIGTERM")
	}
	took := p.endedAt.Sub(sent)
	if p.waitErr != nil {
		t.Fatalf("popgate exited with %v after SIGTERM, want status 0; output:\n%s", p.waitErr, p.output())
	}
	t.Logf("SIGTERM to exit: %v; the client got %d of %d bytes", took.Round(time.Millisecond), len(got), len(crlf(big.Bytes())))
	if took < 900*time.Millisecond || took > 5*time.Second {
		t.Errorf("popgate exited %v after SIGTERM; want the 1s shutdown_timeout of draining, and exit within a few seconds", took)
	}

	// The client got a true prefix of the message and never a terminator.
	want := crlf(big.Bytes())
	if !bytes.HasPrefix(want, got) {
		t.Errorf("the %d bytes the client got are not a prefix of the message", len(got))
	}
	if len(got) >= len(want) {
		t.Errorf("the client got the whole message (%d bytes): the shutdown did not cut it, the test proves nothing", len(got))
	}
	if bytes.Contains(got, []byte("\r\n.\r\n")) || bytes.HasSuffix(got, []byte(".\r\n")) {
		t.Errorf("the client saw a terminating \".\" for a message it did not get whole")
	}

	evs := p.events()
	var end logEvent
	for _, e := range evs {
		if e.str("message") == "session end" {
			end = e
		}
	}
	if end == nil || end.str("end") != "shutdown" {
		t.Errorf("session end not logged as ended by the shutdown: %v", end)
	}
	if !slices.ContainsFunc(evs, func(e logEvent) bool {
		return strings.Contains(e.str("message"), "without QUIT")
	}) {
		t.Errorf("popgate did not log that it closed the session without QUIT; output:\n%s", p.output())
	}

	// The idle client's connection was closed too, without a goodbye line
	// that would pretend its DELE took effect.
	_ = idle.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if rest, err := io.ReadAll(idle.r); err != nil && !isReset(err) {
		t.Errorf("idle client: %v", err)
	} else if len(rest) > 0 && !bytes.HasPrefix(rest, []byte("-ERR")) {
		t.Errorf("idle client got %q at shutdown", rest)
	}

	// Dovecot saw both connections close without a QUIT ("Logged out" is
	// what it says after QUIT), and deleted nothing.
	for _, tc := range []struct {
		u     *testenv.User
		paths []string
		msgs  [][]byte
	}{{u, paths, msgs}, {idleUser, idlePaths, idleMsgs}} {
		checkUpstreamTLS(t, d, tc.u, 1, false) // tls = "none"
		if line := dovecotDisconnect(t, d, tc.u); line != "" && strings.Contains(line, "Logged out") {
			t.Errorf("Dovecot says the session of %s logged out (QUIT was relayed): %s", tc.u.Name, line)
		}
		if got := tc.u.Files(t); !slices.Equal(got, tc.paths) {
			t.Errorf("Maildir of %s after the shutdown: %v, want all of %v", tc.u.Name, got, tc.paths)
		}
		direct := dialPOP(t, d.Addr)
		direct.ok("USER " + tc.u.Name)
		direct.ok("PASS " + tc.u.Password)
		size := 0
		for _, m := range tc.msgs {
			size += len(crlf(m))
		}
		if st, want := direct.ok("STAT"), fmt.Sprintf("+OK %d %d", len(tc.msgs), size); st != want {
			t.Errorf("Dovecot STAT for %s after the shutdown: %q, want %q", tc.u.Name, st, want)
		}
		direct.ok("QUIT")
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

func exited(p *popgateProc) bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// dovecotLog returns the path of the test Dovecot's log, or "" (with a log
// message) if it cannot be found.
func dovecotLog(t *testing.T, d *testenv.DovecotEnv) string {
	t.Helper()
	if d.Conf == "" {
		t.Logf("POPGATE_TEST_DOVECOT_CONF is not set: not checking Dovecot's log")
		return ""
	}
	conf, err := os.ReadFile(d.Conf)
	if err != nil {
		t.Logf("Dovecot's configuration is not readable (%v): not checking its log", err)
		return ""
	}
	m := regexp.MustCompile(`(?m)^log_path\s*=\s*(\S+)`).FindSubmatch(conf)
	if m == nil {
		t.Logf("no log_path in %s: not checking Dovecot's log", d.Conf)
		return ""
	}
	return string(m[1])
}

// dovecotLogLines waits until Dovecot has logged n lines that contain all
// of substrs, and returns them; nil if its log is not available.
func dovecotLogLines(t *testing.T, d *testenv.DovecotEnv, n int, substrs ...string) []string {
	t.Helper()
	path := dovecotLog(t, d)
	if path == "" {
		return nil
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		log, err := os.ReadFile(path)
		if err != nil {
			t.Logf("Dovecot's log: %v", err)
			return nil
		}
		var found []string
	lines:
		for line := range strings.Lines(string(log)) {
			for _, s := range substrs {
				if !strings.Contains(line, s) {
					continue lines
				}
			}
			found = append(found, strings.TrimSpace(line))
		}
		if len(found) >= n {
			return found
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot logged %d lines with %q within 15 s, want %d", len(found), substrs, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dovecotDisconnect waits for Dovecot's log line that ends u's first POP3
// session and returns it; "" if Dovecot's log is not available.
func dovecotDisconnect(t *testing.T, d *testenv.DovecotEnv, u *testenv.User) string {
	t.Helper()
	lines := dovecotLogLines(t, d, 1, "pop3("+u.Name+")", "Disconnected")
	if len(lines) == 0 {
		return ""
	}
	return lines[0]
}

// checkUpstreamTLS checks that Dovecot logged n logins of u, all over TLS
// (it writes "TLS" in the login line) or all without.
func checkUpstreamTLS(t *testing.T, d *testenv.DovecotEnv, u *testenv.User, n int, tls bool) {
	t.Helper()
	for _, line := range dovecotLogLines(t, d, n, "Login: user=<"+u.Name+">") {
		if got := strings.Contains(line, ", TLS"); got != tls {
			t.Errorf("Dovecot logged a login of %s with TLS=%v, want %v: %s", u.Name, got, tls, line)
		}
	}
}
