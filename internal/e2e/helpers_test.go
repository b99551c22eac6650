package e2e

// Helpers the end-to-end tests share besides the harness (harness_test.go):
// test messages and their wire forms, running client programs, and a raw
// POP3 client.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// ---------------------------------------------------------------------------
// Messages and their wire forms

// crlf is the form Dovecot serves a stored message in (CRLF line ends), and
// what a client holds after un-dot-stuffing.
func crlf(msg []byte) []byte {
	s := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(s, []byte("\n"), []byte("\r\n"))
}

// lf is the form fetchmail and mpop deliver (line ends converted to LF).
func lf(msg []byte) []byte { return bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")) }

// topOf is what TOP n lines returns for msg: the header, the blank line and
// the first n body lines, in CRLF form.
func topOf(msg []byte, n int) []byte {
	c := crlf(msg)
	i := bytes.Index(c, []byte("\r\n\r\n"))
	out := append([]byte(nil), c[:i+4]...)
	body := c[i+4:]
	for ; n > 0 && len(body) > 0; n-- {
		j := bytes.Index(body, []byte("\r\n"))
		out = append(out, body[:j+2]...)
		body = body[j+2:]
	}
	return out
}

// corpus is mail as it is stored: CRLF and LF-only files, dot lines that
// need stuffing, "From " lines, 8-bit text, a line longer than poplib's and
// RFC 5322's limits, and a larger base64 attachment. Each has its own
// Message-ID; tag makes them unique per test.
func corpus(tag string) [][]byte {
	var raw bytes.Buffer // ~230 kB of binary-looking data, ~300 kB in base64
	for i := 0; raw.Len() < 230_000; i++ {
		fmt.Fprintf(&raw, "%s chunk %06d \x00\x01\xfe\xff\r\n.\r\n", tag, i)
	}
	enc := base64.StdEncoding.EncodeToString(raw.Bytes())
	var att strings.Builder
	for len(enc) > 0 {
		n := min(76, len(enc))
		att.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	return [][]byte{
		[]byte("From: a@example.com\r\nTo: u@example.com\r\nSubject: dots\r\nMessage-ID: <1." + tag + "@example.com>\r\n\r\n" +
			"line one\r\n.\r\n..\r\n.leading dot\r\n...\r\n. \r\nlast\r\n"),
		[]byte("From: b@example.com\nTo: u@example.com\nSubject: lf only\nMessage-ID: <2." + tag + "@example.com>\n\n" +
			"body with bare LF\n.\n.x\nFrom the start of a line\n>From quoted\nend\n"),
		[]byte("From: c@example.com\r\nTo: u@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <3." + tag + "@example.com>\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
			"Grüße aus Köln — ça va? \xff\xfe raw 8-bit\r\n\ttab line\r\n\r\n\r\ntrailing blank lines above\r\n"),
		[]byte("From: d@example.com\r\nTo: u@example.com\r\nSubject: long line\r\nMessage-ID: <4." + tag + "@example.com>\r\n\r\n" +
			strings.Repeat("0123456789", 600) + "\r\n.after the long line\r\n"),
		[]byte("From: e@example.com\r\nTo: u@example.com\r\nSubject: attachment\r\nMessage-ID: <5." + tag + "@example.com>\r\n" +
			"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
			"--b\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			att.String() + "--b--\r\n"),
	}
}

// newMailbox makes a Dovecot user for this test, registers its secrets and
// fills its Maildir with msgs.
func newMailbox(t *testing.T, d *testenv.DovecotEnv, msgs [][]byte) (*testenv.User, []string) {
	t.Helper()
	u := d.NewUser(t)
	registerUser(u)
	return u, u.AddMessages(t, msgs...)
}

// sameSet reports, for delivered files, whether they are exactly want (as a
// multiset), with a description of the first difference.
func sameSet(got, want [][]byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d messages delivered, want %d", len(got), len(want))
	}
	used := make([]bool, len(want))
next:
	for i, g := range got {
		for j, w := range want {
			if !used[j] && bytes.Equal(g, w) {
				used[j] = true
				continue next
			}
		}
		return fmt.Errorf("delivered message %d (%d bytes, starting %q) matches none of the stored messages", i+1, len(g), firstLine(g))
	}
	return nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// ---------------------------------------------------------------------------
// Running client programs

// runClient runs a client program with a timeout and returns its stdout; it
// fails the test, showing stderr, when the program fails.
func runClient(t *testing.T, timeout time.Duration, env []string, name string, args ...string) []byte {
	t.Helper()
	out, _ := runClientBoth(t, timeout, env, name, args...)
	return out
}

// runClientBoth is runClient that also returns stderr.
func runClientBoth(t *testing.T, timeout time.Duration, env []string, name string, args ...string) ([]byte, []byte) {
	t.Helper()
	out, errOut, err := runClientErr(t, timeout, env, name, args...)
	if err != nil {
		shown := slices.Clone(args)
		for i, a := range shown {
			if strings.Contains(a, "\n") { // a script
				shown[i] = "<script>"
			}
		}
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(shown, " "), err, out, errOut)
	}
	return out, errOut
}

func runClientErr(t *testing.T, timeout time.Duration, env []string, name string, args ...string) ([]byte, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v (%v)", timeout, err)
	}
	return stdout.Bytes(), stderr.Bytes(), err
}

// ---------------------------------------------------------------------------
// A minimal raw POP3 client, for direct Dovecot sessions and the shutdown
// test, where a real client program cannot be made to read slowly.

type rawPOP struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPOP(t *testing.T, addr string) *rawPOP {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return greeted(t, c, addr)
}

// greeted is a rawPOP over c (closed at the test's end) once the server's
// greeting was read from it.
func greeted(t *testing.T, c net.Conn, addr string) *rawPOP {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	p := &rawPOP{t: t, c: c, r: bufio.NewReader(c)}
	if g := p.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting from %s: %q", addr, g)
	}
	return p
}

func (p *rawPOP) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("reading from %s: %v (got %q)", p.c.RemoteAddr(), err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func (p *rawPOP) ok(cmd string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, cmd+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
	l := p.line()
	if !strings.HasPrefix(l, "+OK") {
		verb, _, _ := strings.Cut(cmd, " ")
		p.t.Fatalf("%s: %q", verb, l)
	}
	return l
}

// multi reads a multi-line response body up to the terminating line, raw.
func (p *rawPOP) multi() string {
	p.t.Helper()
	var b strings.Builder
	for {
		l, err := p.r.ReadString('\n')
		if err != nil {
			p.t.Fatalf("reading multi-line response: %v", err)
		}
		if l == ".\r\n" {
			return b.String()
		}
		b.WriteString(l)
	}
}

// directUIDL is the UIDL listing Dovecot itself gives for u.
func directUIDL(t *testing.T, d *testenv.DovecotEnv, u *testenv.User) string {
	t.Helper()
	p := dialPOP(t, d.Addr)
	p.ok("USER " + u.Name)
	p.ok("PASS " + u.Password)
	p.ok("UIDL")
	l := p.multi()
	p.ok("QUIT")
	return l
}

var apopStamp = regexp.MustCompile(`<[^<>@]+@[^<>]+>`)
