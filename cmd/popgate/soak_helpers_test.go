package main

// Helpers of TestSoak (soak_test.go), copied from the end-to-end suite when
// it moved to internal/e2e: the soak calls unexported functions of package
// main (proxyOptions, newMonitor, …) and so stays here until it is moved
// too. Keep them in step with their originals in internal/e2e (the
// secrets registry in harness_test.go, crlf in helpers_test.go, the
// messages in filters_test.go, the raw fault client and Dovecot's log in
// faults_test.go and shutdown_test.go).
//
// No TestMain scans registry at the end of the run here (the soak is this
// package's only user of it); TestSoak checks its own log against every
// secret it registered.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

type secret struct{ what, value string }

type collectedOutput struct {
	test string
	name string // "stderr", "stdout", "log file"
	data []byte
}

var registry struct {
	sync.Mutex
	secrets []secret
	outputs []collectedOutput
	procs   int
}

func addSecret(what, value string) {
	if len(value) < 6 {
		panic("e2e: secret too short to scan for: " + what)
	}
	registry.Lock()
	defer registry.Unlock()
	registry.secrets = append(registry.secrets, secret{what, value})
}

// registerUser records a Dovecot user's password and its encodings on the
// wire (base64 as in AUTH LOGIN, AUTH PLAIN with and without an
// authorization identity).
func registerUser(u *testenv.User) {
	b64 := base64.StdEncoding.EncodeToString
	addSecret("password of "+u.Name, u.Password)
	addSecret("base64 password of "+u.Name, b64([]byte(u.Password)))
	addSecret("AUTH PLAIN of "+u.Name, b64([]byte("\x00"+u.Name+"\x00"+u.Password)))
	addSecret("AUTH PLAIN (authzid) of "+u.Name, b64([]byte(u.Name+"\x00"+u.Name+"\x00"+u.Password)))
}

func secretsSnapshot() []secret {
	registry.Lock()
	defer registry.Unlock()
	return append([]secret(nil), registry.secrets...)
}

func findSecrets(data []byte, secrets []secret) []string {
	var found []string
	for _, s := range secrets {
		if bytes.Contains(data, []byte(s.value)) {
			found = append(found, s.what)
		}
	}
	return found
}

// hclString quotes s as an HCL string literal (no interpolation).
func hclString(s string) string {
	q := strconv.Quote(s)
	q = strings.ReplaceAll(q, "${", "$${")
	return strings.ReplaceAll(q, "%{", "%%{")
}

// crlf is the form Dovecot serves a stored message in (CRLF line ends), and
// what a client holds after un-dot-stuffing.
func crlf(msg []byte) []byte {
	s := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(s, []byte("\n"), []byte("\r\n"))
}

// stampHeader is what the "stamp" tag filter adds at the top of every
// message it passes.
const stampHeader = "X-Popgate-Scanned: yes\r\n"

// b64Lines is data in base64, in lines of 76 characters, each ending in
// CRLF.
func b64Lines(data []byte) string {
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 0 {
		n := min(76, len(enc))
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	return b.String()
}

// fakeEXE is the first bytes of a Windows executable, enough for a type
// sniffer.
var fakeEXE = "MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8\x00\x00\x00\x00\x00\x00\x00@\x00" +
	strings.Repeat("\x00", 34) + "\x80\x00\x00\x00\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21" +
	"This program cannot be run in DOS mode.\r\r\n$" + strings.Repeat("\x00", 64)

// multipartMsg is a multipart/mixed message with boundary "=_b1-"+tag and
// the given parts (each a header, an empty line and a body, without line
// breaks around it), a preamble and an epilogue; CRLF line ends.
func multipartMsg(tag, subject string, parts ...string) []byte {
	bnd := "=_b1-" + tag
	var b strings.Builder
	fmt.Fprintf(&b, "From: Sender <sender@example.net>\r\nTo: user@example.com\r\nSubject: %s\r\n", subject)
	fmt.Fprintf(&b, "Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%s@example.net>\r\nMIME-Version: 1.0\r\n", tag)
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\nThis is a multi-part message in MIME format.\r\n", bnd)
	for _, p := range parts {
		b.WriteString("--" + bnd + "\r\n" + strings.TrimSuffix(p, "\r\n") + "\r\n")
	}
	b.WriteString("--" + bnd + "--\r\nepilogue, kept as it is\r\n")
	return []byte(b.String())
}

func textPart(text string) string {
	return "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + string(crlf([]byte(text)))
}

func attachment(ctype, name string, data []byte) string {
	return fmt.Sprintf("Content-Type: %s; name=\"%s\"\r\nContent-Disposition: attachment; filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n%s",
		ctype, name, name, b64Lines(data))
}

// eicarForms are the byte strings whose presence in what a client got
// means the test virus got through: the string itself, its middle (which
// the quoted-printable forms hold as it is), and its base64 forms at the
// three alignments (less the edge characters that depend on the
// neighbours).
func eicarForms() []string {
	forms := []string{testenv.EICAR, "EICAR-STANDARD-ANTIVIRUS-TEST-FILE"}
	for pad := 0; pad < 3; pad++ {
		enc := base64.StdEncoding.EncodeToString(append(bytes.Repeat([]byte{'A'}, pad), testenv.EICAR...))
		forms = append(forms, enc[4:len(enc)-4])
	}
	return forms
}

// reportSummary makes a summary line visible: go test shows neither t.Log
// nor the output of a passing package unless -v, so it also goes to the
// file POPGATE_TEST_SUMMARY names (make test prints that file at the end).
func reportSummary(t *testing.T, line string) {
	t.Log(line)
	fmt.Fprintln(os.Stderr, line)
	if path := os.Getenv("POPGATE_TEST_SUMMARY"); path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Errorf("summary file: %v", err)
			return
		}
		defer f.Close()
		fmt.Fprintln(f, line)
	}
}

// faultSession is what a client saw in one session.
type faultSession struct {
	greeting string
	loggedIn bool
	complete map[int][]byte // RETR data (dot-unstuffed) that ended with the terminator
	partial  map[int][]byte // RETR data cut short
	errs     map[int]string // RETR answered -ERR
	deleted  []int          // DELE answered +OK
	quitSent bool
	quitOK   bool
	ended    error // why the session ended before QUIT's answer, if it did
}

type faultClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
	s *faultSession
}

func (fc *faultClient) end(err error) bool {
	if fc.s.ended == nil {
		fc.s.ended = err
	}
	return false
}

func (fc *faultClient) line() (string, error) {
	l, err := fc.r.ReadString('\n')
	if err != nil {
		return l, err
	}
	return strings.TrimRight(l, "\r\n"), nil
}

// cmd sends a command and reads its status line; false when the
// connection failed or the answer was not +OK (ended says which).
func (fc *faultClient) cmd(line string) (string, bool) {
	if _, err := io.WriteString(fc.c, line+"\r\n"); err != nil {
		return "", fc.end(fmt.Errorf("sending %s: %w", strings.Fields(line)[0], err))
	}
	st, err := fc.line()
	if err != nil {
		return st, fc.end(fmt.Errorf("reading the answer to %s: %w", strings.Fields(line)[0], err))
	}
	if !strings.HasPrefix(st, "+OK") {
		return st, fc.end(fmt.Errorf("%s: %s", strings.Fields(line)[0], st))
	}
	return st, true
}

// multi reads a multi-line body; complete when the terminator came.
// vanishAfter > 0 closes the connection (with a reset) after that many
// bytes.
func (fc *faultClient) multi(vanishAfter int) ([]byte, bool) {
	var data []byte
	for {
		l, err := fc.r.ReadString('\n')
		if err != nil {
			data = append(data, l...)
			return data, false
		}
		if l == ".\r\n" {
			return data, true
		}
		if strings.HasPrefix(l, ".") {
			l = l[1:]
		}
		data = append(data, l...)
		if vanishAfter > 0 && len(data) >= vanishAfter {
			fc.vanish()
			return data, false
		}
	}
}

// vanish drops the connection with a reset, as a client that crashed.
func (fc *faultClient) vanish() {
	if tc, ok := fc.c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = fc.c.Close()
	fc.end(errors.New("client vanished"))
}

func (fc *faultClient) greet() bool {
	g, err := fc.line()
	fc.s.greeting = g
	if err != nil {
		return fc.end(fmt.Errorf("greeting: %w", err))
	}
	if !strings.HasPrefix(g, "+OK") {
		return fc.end(fmt.Errorf("greeting: %s", g))
	}
	return true
}

func (fc *faultClient) login(u *testenv.User) bool {
	if _, ok := fc.cmd("USER " + u.Name); !ok {
		return false
	}
	if _, ok := fc.cmd("PASS " + u.Password); !ok {
		return false
	}
	fc.s.loggedIn = true
	return true
}

// retr retrieves message n; false when the connection is gone.
func (fc *faultClient) retr(n, vanishAfter int) bool {
	st, ok := fc.cmd("RETR " + strconv.Itoa(n))
	if !ok {
		if strings.HasPrefix(st, "-ERR") {
			fc.s.errs[n] = st
			fc.s.ended = nil // an -ERR answer is not the end
			return true
		}
		return false
	}
	data, complete := fc.multi(vanishAfter)
	if complete {
		fc.s.complete[n] = data
		return true
	}
	fc.s.partial[n] = data
	return fc.end(fmt.Errorf("RETR %d cut after %d bytes", n, len(data)))
}

func (fc *faultClient) dele(n int) bool {
	st, ok := fc.cmd("DELE " + strconv.Itoa(n))
	if ok {
		fc.s.deleted = append(fc.s.deleted, n)
	} else if strings.HasPrefix(st, "-ERR") {
		fc.s.ended = nil
		return true
	}
	return ok
}

func (fc *faultClient) quit() {
	fc.s.quitSent = true
	if _, ok := fc.cmd("QUIT"); ok {
		fc.s.quitOK = true
		fc.s.ended = nil
	}
}

func containsEICAR(b []byte) bool {
	joined := bytes.ReplaceAll(b, []byte("\r\n"), nil)
	for _, f := range eicarForms() {
		if bytes.Contains(b, []byte(f)) || bytes.Contains(joined, []byte(f)) {
			return true
		}
	}
	return false
}

// isNotice tells whether got is a notice in place of a withheld message:
// it names a quarantine id and holds nothing of the virus.
func isNotice(got []byte) (string, bool) {
	if containsEICAR(got) {
		return "", false
	}
	m, err := mail.ReadMessage(bytes.NewReader(got))
	if err != nil {
		return "", false
	}
	id := m.Header.Get("X-Popgate-Quarantine-ID")
	return id, id != "" && strings.HasPrefix(m.Header.Get("Subject"), "[popgate: message withheld]")
}

var (
	dovecotLogin = regexp.MustCompile(`Login: user=<([^>]*)>.* mpid=([0-9]+),.* session=<([^>]*)>`)
	dovecotEnd   = regexp.MustCompile(`pop3\(([^)]*)\)<[0-9]+><([^>]*)>: .*Disconnected`)
)

// dovecotLogOffset is where Dovecot's log stood when TestSoak began: the
// log is shared by every test of the run and grows.
var dovecotLogOffset atomic.Int64

// markDovecotLog records the size of Dovecot's log, before the test makes
// any user.
func markDovecotLog(t *testing.T, d *testenv.DovecotEnv) {
	if path := dovecotLog(t, d); path != "" {
		if st, err := os.Stat(path); err == nil {
			dovecotLogOffset.Store(st.Size())
		}
	}
}

func readFrom(path string, off int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// waitDovecotUsers waits until no session of users is running in Dovecot:
// each login Dovecot logged has its "Disconnected" line, or its mail
// process is gone (a connection cut right after the login can end without
// that line).
func waitDovecotUsers(t *testing.T, d *testenv.DovecotEnv, users []*testenv.User) {
	t.Helper()
	path := dovecotLog(t, d)
	if path == "" {
		time.Sleep(time.Second)
		return
	}
	want := map[string]bool{}
	for _, u := range users {
		want[u.Name] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, err := readFrom(path, dovecotLogOffset.Load())
		if err != nil {
			t.Fatalf("Dovecot's log: %v", err)
		}
		ended := map[string]bool{}
		type login struct{ user, mpid, session string }
		var logins []login
		for line := range strings.Lines(string(log)) {
			if !strings.Contains(line, "pop3") {
				continue
			}
			if m := dovecotLogin.FindStringSubmatch(line); m != nil && want[m[1]] {
				logins = append(logins, login{m[1], m[2], m[3]})
			} else if m := dovecotEnd.FindStringSubmatch(line); m != nil && want[m[1]] {
				ended[m[2]] = true
			}
		}
		var busy []string
		for _, l := range logins {
			if _, err := os.Stat("/proc/" + l.mpid); !ended[l.session] && err == nil {
				busy = append(busy, l.user+" (mail process "+l.mpid+")")
			}
		}
		if len(busy) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot sessions still running 30 s after their clients ended: %v", busy)
		}
		time.Sleep(50 * time.Millisecond)
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
