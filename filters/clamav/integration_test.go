package clamav

// Tests against the real clamd of scripts/testenv.sh (ClamAV 1.4 with a
// database that holds only an .hdb line: the MD5 of the 68-byte EICAR file;
// StreamMaxLength 25M). They skip, or fail with POPGATE_REQUIRE_INTEGRATION=1,
// when that clamd is absent.

import (
	"archive/zip"
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clamd "github.com/dutchcoders/go-clamd"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/testenv"
)

// clamdStreamMax is the test clamd's StreamMaxLength 25M: 25 MiB.
const clamdStreamMax = 25 << 20

func realScanner(t *testing.T, addrs ...string) *Scanner {
	t.Helper()
	return newTestScanner(t, realConfig(addrs...))
}

func realConfig(addrs ...string) Config {
	return Config{
		Addresses:   addrs,
		Timeout:     30 * time.Second,
		MaxSize:     clamdStreamMax,
		PingTimeout: 5 * time.Second,
	}
}

const mailHeader = "From: alice@example.org\r\nTo: bob@example.org\r\nSubject: test\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t@example.org>\r\nMIME-Version: 1.0\r\n"

// multipart wraps parts (each with its own part header) into a
// multipart/mixed message after a short text part.
func multipart(parts ...string) string {
	var b strings.Builder
	b.WriteString(mailHeader)
	b.WriteString("Content-Type: multipart/mixed; boundary=\"BOUNDARY\"\r\n\r\nThis is a MIME message.\r\n")
	b.WriteString("--BOUNDARY\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee the attachment.\r\n")
	for _, p := range parts {
		b.WriteString("--BOUNDARY\r\n")
		b.WriteString(p)
		b.WriteString("\r\n")
	}
	b.WriteString("--BOUNDARY--\r\n")
	return b.String()
}

func b64lines(data []byte) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

func attachment(name, ctype, cte, body string) string {
	h := fmt.Sprintf("Content-Type: %s; name=%q\r\nContent-Disposition: attachment; filename=%q\r\n", ctype, name, name)
	if cte != "" {
		h += "Content-Transfer-Encoding: " + cte + "\r\n"
	}
	return h + "\r\n" + body
}

func zipOf(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// qpEscaped is EICAR in quoted-printable with every byte escaped (=58=35…),
// so the raw message does not hold the EICAR string; every line, the last
// one included, ends in a soft line break, so it decodes to exactly the 68
// bytes.
func qpEscaped() string {
	var enc strings.Builder
	for i := range len(eicar) {
		fmt.Fprintf(&enc, "=%02X", eicar[i])
	}
	s := enc.String()
	var b strings.Builder
	for len(s) > 72 {
		b.WriteString(s[:72] + "=\r\n")
		s = s[72:]
	}
	b.WriteString(s + "=")
	return b.String()
}

// eicarCases are messages with EICAR, every one of which the test clamd
// detects. The second set is what an .hdb signature alone misses (clamd's
// line-oriented decoders write the part with a final newline: 69 bytes,
// whose MD5 is not EICAR's) and the database's .ndb body signature finds
// (docs/CLAMAV.md).
func eicarCases(t *testing.T) (found, hdbMisses map[string]string) {
	b64Part := attachment("eicar.com", "application/octet-stream", "base64", b64lines([]byte(eicar)))
	zipData := zipOf(t, "eicar.com", []byte(eicar))
	found = map[string]string{
		"raw 68 bytes":             eicar,
		"base64 attachment":        multipart(b64Part),
		"base64 attachment LF":     strings.ReplaceAll(multipart(b64Part), "\r\n", "\n"),
		"base64 single part":       mailHeader + "Content-Type: application/octet-stream; name=\"e.com\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64lines([]byte(eicar)),
		"quoted-printable escaped": multipart(attachment("eicar.com", "application/octet-stream", "quoted-printable", qpEscaped())),
		"quoted-printable soft":    multipart(attachment("eicar.com", "application/octet-stream", "quoted-printable", eicar+"=")),
		"zip raw":                  string(zipData),
		"zip base64 attachment":    multipart(attachment("eicar.zip", "application/zip", "base64", b64lines(zipData))),
		"zip in zip":               multipart(attachment("outer.zip", "application/zip", "base64", b64lines(zipOf(t, "inner.zip", zipData)))),
		"forwarded message/rfc822": multipart("Content-Type: message/rfc822\r\n\r\n" + multipart(b64Part)),
		"forwarded base64 rfc822":  multipart("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64lines([]byte(multipart(b64Part)))),
	}
	hdbMisses = map[string]string{
		"quoted-printable":   multipart(attachment("eicar.com", "application/octet-stream", "quoted-printable", eicar+"\r\n")),
		"7bit attachment":    multipart(attachment("eicar.com", "application/octet-stream", "", eicar)),
		"inline text/plain":  mailHeader + "Content-Type: text/plain\r\n\r\n" + eicar + "\r\n",
		"raw with a newline": eicar + "\r\n",
	}
	return found, hdbMisses
}

func TestRealClamdEICAR(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	found, misses := eicarCases(t)
	clean := multipart(attachment("notes.txt", "text/plain", "base64", b64lines([]byte("nothing to see here\r\n"))))
	for _, addr := range []string{env.TCP, env.Unix} {
		t.Run(strings.SplitN(addr, ":", 2)[0], func(t *testing.T) {
			s := realScanner(t, addr)
			for name, msg := range found {
				res, err := s.ScanReader(context.Background(), strings.NewReader(msg), int64(len(msg)))
				if err != nil || !res.Infected || res.Signature != "Eicar-Test-Signature.UNOFFICIAL" || res.Backend != addr {
					t.Errorf("%s: %+v, %v; want FOUND", name, res, err)
					continue
				}
				t.Logf("%-26s FOUND %s in %v", name, res.Signature, res.Duration.Round(time.Microsecond))
			}
			for name, msg := range misses {
				res, err := s.ScanReader(context.Background(), strings.NewReader(msg), int64(len(msg)))
				if err != nil || !res.Infected {
					t.Errorf("%s: %+v, %v; want FOUND (the .ndb body signature)", name, res, err)
				}
			}
			res, err := s.ScanReader(context.Background(), strings.NewReader(clean), int64(len(clean)))
			if err != nil || res.Infected {
				t.Errorf("clean mail: %+v, %v", res, err)
			}
		})
	}
}

func TestRealClamdFilter(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	s := realScanner(t, deadAddress(t), env.Unix, env.TCP)
	av := NewFilter("av", s, OversizeTempFail)
	found, _ := eicarCases(t)
	sp := &filters.Spool{Dir: t.TempDir(), MemoryLimit: 100}
	w := sp.NewWriter()
	io.WriteString(w, found["forwarded message/rfc822"])
	body, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	defer body.Remove()
	for range 3 { // the dead backend first, then skipped
		v, err := av.Filter(context.Background(), &filters.Envelope{}, body)
		if err != nil || v.Action != filters.Reject || v.Reason != "virus: Eicar-Test-Signature.UNOFFICIAL" {
			t.Fatalf("%+v, %v", v, err)
		}
	}
	v, err := av.Filter(context.Background(), &filters.Envelope{}, filters.BytesBody([]byte(mailHeader+"\r\nhello\r\n")))
	if err != nil || v.Action != filters.Pass || v.Reason != "clean" {
		t.Fatalf("clean: %+v, %v", v, err)
	}
	if s.Healthy() != 2 {
		t.Errorf("Healthy() = %d, want 2", s.Healthy())
	}
}

// bigMail is a text message of exactly n bytes.
func bigMail(n int) []byte {
	b := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog 0123456789\r\n"), n/56+1)
	copy(b, mailHeader+"\r\n")
	return b[:n]
}

// max_size mirrors StreamMaxLength: exactly 25 MiB is scanned, one byte
// more is not sent; with max_size above clamd's limit (a misconfiguration)
// clamd's refusal is an error, never clean.
func TestRealClamdStreamMaxLength(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	msg := bigMail(clamdStreamMax + 1)
	s := realScanner(t, env.TCP)
	res, err := s.ScanReader(context.Background(), bytes.NewReader(msg[:clamdStreamMax]), clamdStreamMax)
	if err != nil || res.Infected {
		t.Fatalf("exactly StreamMaxLength: %+v, %v", res, err)
	}
	t.Logf("25 MiB scanned clean in %v", res.Duration)
	_, err = s.ScanReader(context.Background(), bytes.NewReader(msg), int64(len(msg)))
	if !errors.Is(err, ErrOversize) {
		t.Errorf("one byte over max_size: %v", err)
	}

	for _, network := range []string{env.TCP, env.Unix} {
		cfg := Config{Addresses: []string{network}, MaxSize: 30 << 20}
		mis := newTestScanner(t, cfg)
		for _, m := range [][]byte{msg, bigMail(30 << 20)} {
			res, err := mis.ScanReader(context.Background(), bytes.NewReader(m), int64(len(m)))
			if err == nil || res.Infected || !errors.Is(err, ErrSizeLimit) {
				t.Errorf("%s, %d bytes over clamd's StreamMaxLength: %+v, %v; want ErrSizeLimit", network, len(m), res, err)
			}
			t.Logf("%s, %d bytes: %v", network, len(m), err)
		}
		// Unknown size: the same.
		_, err := mis.ScanReader(context.Background(), bytes.NewReader(msg), -1)
		if !errors.Is(err, ErrSizeLimit) {
			t.Errorf("unknown size: %v", err)
		}
	}
}

// gatedReader yields data up to gate, then waits for open before the rest.
type gatedReader struct {
	data    []byte
	gate    int
	off     int
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.off == g.gate {
		g.once.Do(func() { close(g.reached) })
		<-g.open
	}
	if g.off >= len(g.data) {
		return 0, io.EOF
	}
	end := len(g.data)
	if g.off < g.gate {
		end = g.gate
	}
	n := copy(p, g.data[g.off:end])
	g.off += n
	return n, nil
}

// clamdCommand sends one command to clamd and returns its reply.
func clamdCommand(t *testing.T, env *testenv.ClamdEnv, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", env.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write([]byte("z" + cmd + "\x00")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString(0)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return strings.TrimSuffix(reply, "\x00")
}

// clamd reloading its signatures while a stream is open: the scan still
// gets a real verdict (clamd 1.4 reloads concurrently by default).
func TestRealClamdReloadMidScan(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	s := realScanner(t, env.TCP)
	text := attachment("notes.txt", "text/plain", "", string(bigMail(2<<20)))
	msg := []byte(multipart(text, attachment("eicar.com", "application/octet-stream", "base64", b64lines([]byte(eicar)))))
	g := &gatedReader{data: msg, gate: len(msg) - 200, reached: make(chan struct{}), open: make(chan struct{})}
	type result struct {
		res Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := s.ScanReader(context.Background(), g, int64(len(msg)))
		done <- result{res, err}
	}()
	<-g.reached
	if r := clamdCommand(t, env, "RELOAD"); r != "RELOADING" {
		t.Fatalf("RELOAD: %q", r)
	}
	// Give the reload time to finish (about half a second with this
	// database); PING keeps answering meanwhile.
	time.Sleep(1500 * time.Millisecond)
	if r := clamdCommand(t, env, "PING"); r != "PONG" {
		t.Fatalf("PING after RELOAD: %q", r)
	}
	close(g.open)
	r := <-done
	if r.err != nil || !r.res.Infected {
		t.Fatalf("scan across a reload: %+v, %v", r.res, r.err)
	}
	t.Logf("scan across RELOAD: FOUND %s in %v", r.res.Signature, r.res.Duration)
}

// TestRealClamdSessions scans a run of infected and clean messages over
// clamd sessions, across a signature reload, on both of clamd's sockets:
// every verdict right, and one connection kept per backend for scans one
// after the other.
func TestRealClamdSessions(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	found, _ := eicarCases(t)
	clean := multipart(attachment("notes.txt", "text/plain", "base64", b64lines([]byte("nothing to see here\r\n"))))
	for _, addr := range []string{env.TCP, env.Unix} {
		t.Run(strings.SplitN(addr, ":", 2)[0], func(t *testing.T) {
			cfg := realConfig(addr)
			cfg.ReuseConnections = true
			s := sessionScanner(t, cfg)
			b := s.pool.Members()[0]
			if b.sessions.known.Load() != sessionsYes {
				t.Fatal("the real clamd was not found to keep sessions")
			}
			idle := func() int {
				b.sessions.mu.Lock()
				defer b.sessions.mu.Unlock()
				return len(b.sessions.idle)
			}
			run := func(when string) {
				for name, msg := range found {
					for _, m := range []struct {
						msg      string
						infected bool
					}{{msg, true}, {clean, false}} {
						res, err := s.ScanReader(context.Background(), strings.NewReader(m.msg), int64(len(m.msg)))
						if err != nil || res.Infected != m.infected {
							t.Fatalf("%s, %s: %+v, %v; want infected = %v", when, name, res, err, m.infected)
						}
					}
				}
			}
			run("before RELOAD")
			if n := idle(); n != 1 {
				t.Errorf("%d idle connections after scans one after the other, want 1", n)
			}
			if r := clamdCommand(t, env, "RELOAD"); r != "RELOADING" {
				t.Fatalf("RELOAD: %q", r)
			}
			time.Sleep(1500 * time.Millisecond)
			run("after RELOAD")
			if n := idle(); n != 1 {
				t.Errorf("%d idle connections after the reload, want 1", n)
			}
		})
	}
}

// BenchmarkRealClamd compares this package with go-clamd's ScanStream on the
// same clean messages against the test clamd (run with -bench RealClamd).
func BenchmarkRealClamd(b *testing.B) {
	env := testenv.Clamd(b)
	if env == nil {
		return
	}
	for _, size := range []int{100_000, 1 << 20, 20 << 20} {
		msg := bigMail(size)
		b.Run(fmt.Sprintf("popgate/%d", size), func(b *testing.B) {
			s := newTestScanner(b, Config{Addresses: []string{env.TCP}, MaxSize: clamdStreamMax})
			b.SetBytes(int64(size))
			for b.Loop() {
				if res, err := s.ScanReader(context.Background(), bytes.NewReader(msg), int64(size)); err != nil || res.Infected {
					b.Fatal(res, err)
				}
			}
		})
		b.Run(fmt.Sprintf("go-clamd/%d", size), func(b *testing.B) {
			c := clamd.NewClamd(env.TCP)
			b.SetBytes(int64(size))
			for b.Loop() {
				abort := make(chan bool)
				ch, err := c.ScanStream(bytes.NewReader(msg), abort)
				if err != nil {
					b.Fatal(err)
				}
				r := <-ch
				drain(ch)
				close(abort)
				if r == nil || r.Status != clamd.RES_OK {
					b.Fatal(r)
				}
			}
		})
	}
}

// The health checks learn the signature version of every backend: the
// message memory rescans what was scanned under an older database.
func TestVersionFromRealClamd(t *testing.T) {
	c := testenv.Clamd(t)
	s := realScanner(t, c.TCP, c.Unix)
	deadline := time.Now().Add(5 * time.Second)
	for s.Version() == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	v := s.Version()
	// With the official databases clamd says "ClamAV 1.4.6/27433/date";
	// with only the test environment's own signature file it names the
	// engine alone.
	if !strings.HasPrefix(v, "ClamAV 1.") || strings.Contains(v, ";") {
		t.Errorf("Version() = %q, want one \"ClamAV x.y.z[/db/date]\" for two backends of one clamd", v)
	}
}

// The StreamMaxLength probe against the real clamd (StreamMaxLength 25M):
// max_size 25 MiB fits; 30 MiB does not, and the probe narrows clamd's
// limit down to exactly 25 MiB within probePrecision, over TCP and the
// unix socket. clamd scans none of the probe streams.
func TestRealClamdProbeStreamMax(t *testing.T) {
	env := testenv.Clamd(t)
	if env == nil {
		return
	}
	for _, c := range []struct {
		addr string
		max  int64
		ok   bool
	}{
		{env.TCP, clamdStreamMax, true},
		{env.TCP, 30 << 20, false},
		{env.Unix, 30 << 20, false},
	} {
		s := newTestScanner(t, Config{Addresses: []string{c.addr}, MaxSize: c.max, ProbeStreamMax: true, Timeout: 30 * time.Second})
		start := time.Now()
		waitFor(t, 60*time.Second, "the probe", func() bool { return s.pool.Members()[0].probe.Load() == probeDone })
		p := s.Backends()[0].Problem
		t.Logf("%s, max_size %d: %v, problem %q", c.addr, c.max, time.Since(start).Round(time.Millisecond), p)
		if c.ok {
			if p != "" {
				t.Errorf("%s: problem %q with max_size = StreamMaxLength", c.addr, p)
			}
			continue
		}
		var lo, hi, max int64
		if _, err := fmt.Sscanf(p, "clamd's StreamMaxLength (%d to %d bytes) is below max_size (%d bytes)", &lo, &hi, &max); err != nil ||
			lo > clamdStreamMax || hi < clamdStreamMax || max != c.max {
			t.Errorf("%s: problem %q (%v), want StreamMaxLength %d found", c.addr, p, err, clamdStreamMax)
		}
	}
}
