package e2e

// The fault matrix (issue 6): the real popgate binary in front of the real
// Dovecot and the real clamd, with an in-process fault relay
// (testenv.Relay) between popgate and each of them that cuts, stalls,
// corrupts or delays the stream at a chosen byte; the client side is a raw
// POP3 client that can vanish at any point. Every case then checks the
// mailbox on disk and what the client got:
//
//   - lost: a Maildir file is gone although its session did not send QUIT
//     after a DELE of the message, received whole;
//   - truncated: a response that ended in the terminating "." is not exactly
//     the stored message (or, under the filtering policy, the stored message
//     with the tag on top, or a notice for the virus);
//   - unscanned: under the filtering policy, the EICAR test virus reached the
//     client in any form, even in part, or a message arrived without the
//     tag the chain adds after the virus scan.
//
// The counts go into one summary line, printed to stderr, into the file
// named by POPGATE_TEST_SUMMARY (make test prints it) and into the test log:
//
//	faults: N cases, 0 lost, 0 truncated, 0 unscanned

import (
	"bufio"
	"bytes"
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/examples"
	"github.com/popgate/popgate/internal/testenv"
	"github.com/popgate/popgate/proxy/pop3"
)

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

// ---------------------------------------------------------------------------
// The raw client and what it saw

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

// clientOpts shape the standard client session.
type clientOpts struct {
	vanishAfterDele bool // close after the DELEs, without QUIT
	vanishInRetr    int  // close (with a reset) during RETR of this message
	vanishAfter     int  // … after this many bytes of its data
	noDele          bool // retrieve only, then QUIT
}

type faultClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
	s *faultSession
}

func dialFault(t *testing.T, addr string) *faultClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	return &faultClient{t: t, c: c, r: bufio.NewReader(c), s: &faultSession{
		complete: map[int][]byte{}, partial: map[int][]byte{}, errs: map[int]string{},
	}}
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

// standardSession is what a mail client does: log in, LIST, RETR every
// message, DELE those it got whole, QUIT. It stops where the connection
// fails.
func standardSession(t *testing.T, addr string, u *testenv.User, nmsgs int, o clientOpts) *faultSession {
	fc := dialFault(t, addr)
	defer fc.c.Close()
	if !fc.greet() || !fc.login(u) {
		return fc.s
	}
	if _, ok := fc.cmd("LIST"); !ok {
		return fc.s
	}
	if _, ok := fc.multi(0); !ok {
		fc.end(errors.New("LIST cut"))
		return fc.s
	}
	for n := 1; n <= nmsgs; n++ {
		after := 0
		if n == o.vanishInRetr {
			after = cmp.Or(o.vanishAfter, 1)
		}
		if !fc.retr(n, after) {
			return fc.s
		}
	}
	if !o.noDele {
		for n := 1; n <= nmsgs; n++ {
			if _, ok := fc.s.complete[n]; ok && !fc.dele(n) {
				return fc.s
			}
		}
	}
	if o.vanishAfterDele {
		fc.vanish()
		return fc.s
	}
	fc.quit()
	return fc.s
}

// ---------------------------------------------------------------------------
// Checks

// faultTally counts, over all cases, what the invariants forbid.
type faultTally struct {
	mu                         sync.Mutex
	cases, lost, trunc, unscan int
	lines                      []string
}

func (ft *faultTally) add(name string, lost, trunc, unscan int, note string) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.cases++
	ft.lost += lost
	ft.trunc += trunc
	ft.unscan += unscan
	ft.lines = append(ft.lines, fmt.Sprintf("%-34s lost %d, truncated %d, unscanned %d; %s", name, lost, trunc, unscan, note))
}

// stored is a mailbox as the test filled it.
type stored struct {
	u     *testenv.User
	paths []string
	msgs  [][]byte
	virus map[int]bool // message numbers holding EICAR
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

// judge checks one session's results and the mailbox after it, and
// returns the counts. Deletions are allowed only for messages the session
// got whole, DELEd and then sent QUIT for; the caller waits until Dovecot
// has ended every session of the user first. It also returns the
// quarantine ids of the notices the client got.
func judge(t *testing.T, mb *stored, filtered bool, sessions ...*faultSession) (lost, trunc, unscan int, ids []string) {
	t.Helper()
	allowed := map[int]bool{}
	for _, s := range sessions {
		for n, data := range s.complete {
			orig := crlf(mb.msgs[n-1])
			switch {
			case filtered && containsEICAR(data):
				unscan++
				t.Errorf("message %d: the client got the EICAR test virus", n)
			case !filtered && !bytes.Equal(data, orig):
				trunc++
				t.Errorf("message %d: the client got %d bytes ending in the terminator, not the %d-byte message", n, len(data), len(orig))
			case filtered && mb.virus[n]:
				if id, ok := isNotice(data); ok {
					ids = append(ids, id)
				} else {
					trunc++
					t.Errorf("message %d (EICAR): the client got %d bytes that are no notice: %.200q", n, len(data), data)
				}
			case filtered && bytes.Equal(data, orig):
				unscan++
				t.Errorf("message %d: delivered without the scan's tag", n)
			case filtered && !bytes.Equal(data, append([]byte(stampHeader), orig...)):
				trunc++
				t.Errorf("message %d: the client got %d bytes ending in the terminator, not the %d-byte tagged message", n, len(data), len(stampHeader)+len(orig))
			}
		}
		for n, data := range s.partial {
			if filtered && containsEICAR(data) {
				unscan++
				t.Errorf("message %d: the client got (part of) the EICAR test virus", n)
			}
		}
		if s.quitSent {
			for _, n := range s.deleted {
				if _, ok := s.complete[n]; ok {
					allowed[n] = true
				}
			}
		}
	}
	present := map[string]bool{}
	for _, p := range mb.u.Files(t) {
		present[p] = true
	}
	for i, p := range mb.paths {
		if !present[p] {
			if !allowed[i+1] {
				lost++
				t.Errorf("message %d is gone from the Maildir, but no session QUIT after DELE of it received whole", i+1)
			}
			continue
		}
		if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, mb.msgs[i]) {
			lost++
			t.Errorf("Maildir file of message %d changed (%v)", i+1, err)
		}
	}
	return lost, trunc, unscan, ids
}

// waitDovecotIdle waits until every session Dovecot logged in for u has
// ended: only then is the Maildir final (a QUIT that reached Dovecot
// expunges before its answer, but the answer may have been cut).
func waitDovecotIdle(t *testing.T, d *testenv.DovecotEnv, u *testenv.User) {
	t.Helper()
	waitDovecotUsers(t, d, []*testenv.User{u})
}

var (
	dovecotLogin = regexp.MustCompile(`Login: user=<([^>]*)>.* mpid=([0-9]+),.* session=<([^>]*)>`)
	dovecotEnd   = regexp.MustCompile(`pop3\(([^)]*)\)<[0-9]+><([^>]*)>: .*Disconnected`)
)

// dovecotLogOffset is where Dovecot's log stood when TestFaultMatrix
// began: the log is shared by every test of the run and grows.
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

// ---------------------------------------------------------------------------
// Messages

// bigCleanMsg is a clean multipart message with a base64 attachment of
// about size bytes, CRLF line ends.
func bigCleanMsg(tag string, size int) []byte {
	var raw bytes.Buffer
	for i := 0; raw.Len() < size*3/4; i++ {
		fmt.Fprintf(&raw, "%s %07d \x00\x01\xfe\xff report data\r\n", tag, i)
	}
	return multipartMsg("big-"+tag, "quarterly report", textPart("the report is attached\n.\n..\n"),
		attachment("application/pdf", "report.pdf", raw.Bytes()))
}

// lfMsg is a message stored with bare LF line ends (Dovecot serves CRLF).
func lfMsg(tag string) []byte {
	return []byte("From: b@example.com\nTo: u@example.com\nSubject: lf only\nMessage-ID: <lf." + tag + "@example.com>\n\n" +
		"body with bare LF\n.\n.x\nFrom the start of a line\nend\n")
}

// faultMailbox makes a user with a clean dotted message, a big clean one,
// an LF-only one and, for filtered cases, an EICAR one.
func faultMailbox(t *testing.T, d *testenv.DovecotEnv, tag string, withVirus bool) *stored {
	t.Helper()
	msgs := [][]byte{cleanMsg(tag), bigCleanMsg(tag, 120_000), lfMsg(tag)}
	virus := map[int]bool{}
	if withVirus {
		msgs = append(msgs, eicarCases(t, tag)[0].msg)
		virus[len(msgs)] = true
	}
	u, paths := newMailbox(t, d, msgs)
	return &stored{u: u, paths: paths, msgs: msgs, virus: virus}
}

// retrAnchor is the start of Dovecot's answer to RETR of msg.
func retrAnchor(msg []byte) string { return fmt.Sprintf("+OK %d octets\r\n", len(crlf(msg))) }

// ---------------------------------------------------------------------------
// The matrix popgate: one listener per case, each with its own upstream
// (a relay or Dovecot itself), its own scanner (a relay or clamd itself)
// and its own policy.

type matrixCase struct {
	name     string
	filtered bool
	tls      bool            // the listener offers STLS
	up       []testenv.Fault // faults between popgate and Dovecot
	clamd    []testenv.Fault // faults between popgate and clamd
	// rspamd, when set, adds a spam filter on a relay to the test rspamd
	// with these faults to the case's chain.
	rspamd []testenv.Fault
	scan   string           // the clamav filter's scan mode; default "message"
	upTO   string           // upstream timeout; default "10s"
	scanTO string           // scanner timeout; default "10s"
	opts   clientOpts       // the standard session's variations
	run    func(*matrixRun) // instead of one standard session
	// expect checks what the case promises beyond the invariants (e.g.
	// that a slow clamd still gives verdicts).
	expect func(t *testing.T, mr *matrixRun, sessions []*faultSession)

	upRelay, clamdRelay, rspamdRelay *testenv.Relay
	clamdTarget                      *secondClamd
}

type matrixRun struct {
	t     *testing.T
	tc    *matrixCase
	p     *popgateProc
	d     *testenv.DovecotEnv
	mb    *stored
	addr  string
	saw   []*faultSession
	nmsgs int
}

func (mr *matrixRun) session(o clientOpts) *faultSession {
	s := standardSession(mr.t, mr.addr, mr.mb.u, mr.nmsgs, o)
	mr.saw = append(mr.saw, s)
	return s
}

func matrixConfig(t *testing.T, d *testenv.DovecotEnv, clamdAddr, qdir string, cases []*matrixCase) string {
	var b strings.Builder
	for i, tc := range cases {
		id := fmt.Sprintf("%02d", i)
		upAddr := d.Addr
		if tc.upRelay != nil {
			upAddr = tc.upRelay.Addr()
		}
		fmt.Fprintf(&b, "listener \"c%s\" {\n  address = \"127.0.0.1:0\"\n  upstream = \"u%s\"\n  login_timeout = \"30s\"\n", id, id)
		if tc.tls {
			fmt.Fprintf(&b, "  tls {\n    cert_file = %s\n    key_file = %s\n  }\n", hclString(d.CertFile), hclString(d.KeyFile))
		}
		b.WriteString("}\n")
		fmt.Fprintf(&b, "upstream \"u%s\" {\n  address = %s\n  tls = \"none\"\n  connect_timeout = \"5s\"\n  timeout = %s\n}\n",
			id, hclString(upAddr), hclString(cmp.Or(tc.upTO, "10s")))
		if !tc.filtered {
			fmt.Fprintf(&b, "policy \"p%s\" {\n  match {\n    listeners = [\"c%s\"]\n  }\n  chain = []\n}\n", id, id)
			continue
		}
		scan := "tcp://" + clamdAddr
		if tc.clamdRelay != nil {
			scan = "tcp://" + tc.clamdRelay.Addr()
		}
		fmt.Fprintf(&b, "scanner \"clamav\" \"s%s\" {\n  addresses = [%s]\n  timeout = %s\n  health_interval = \"1s\"\n}\n",
			id, hclString(scan), hclString(cmp.Or(tc.scanTO, "10s")))
		fmt.Fprintf(&b, "filter \"clamav\" \"av%s\" {\n  scanner = \"s%s\"\n  scan = %s\n}\n", id, id, hclString(cmp.Or(tc.scan, "message")))
		spam := ""
		if tc.rspamdRelay != nil {
			fmt.Fprintf(&b, "scanner \"rspamd\" \"r%s\" {\n  addresses = [%s]\n  timeout = %s\n  health_interval = \"1s\"\n}\n",
				id, hclString("http://"+tc.rspamdRelay.Addr()), hclString(cmp.Or(tc.scanTO, "10s")))
			fmt.Fprintf(&b, "filter \"spam\" \"sp%s\" {\n  scanner = \"r%s\"\n  tag_above = 5\n  quarantine_above = 15\n}\n", id, id)
			spam = fmt.Sprintf(", \"sp%s\"", id)
		}
		fmt.Fprintf(&b, "policy \"p%s\" {\n  match {\n    listeners = [\"c%s\"]\n  }\n  chain = [\"av%s\"%s, \"dangerous\", \"stamp\"]\n}\n", id, id, id, spam)
	}
	b.WriteString(`filter "strip" "dangerous" {
  extensions = ["exe", "scr", "js"]
}
filter "tag" "stamp" {
  headers = { "X-Popgate-Scanned" = "yes" }
}
`)
	fmt.Fprintf(&b, "quarantine {\n  dir = %s\n}\n", hclString(qdir))
	b.WriteString("log {\n  level = \"debug\"\n  format = \"json\"\n}\nshutdown_timeout = \"2s\"\n")
	return b.String()
}

// secondClamd is a clamd process of the test's own (the test database of
// scripts/testenv.sh, another port), to kill and start again.
type secondClamd struct {
	t    *testing.T
	bin  string
	conf string
	cmd  *exec.Cmd
	addr string
	dir  string
	n    int
	// extra, when set (newOwnClamd), are configuration lines added to
	// the test clamd's, and sigs signature files (name: content) that
	// make its database with examples/clamd's.
	extra string
	sigs  map[string]string
}

// newOwnClamd is a secondClamd with settings and signatures of the test's
// own: the shared clamd is never reconfigured.
func newOwnClamd(t *testing.T, c *testenv.ClamdEnv, extra string, sigs map[string]string) *secondClamd {
	sc := newSecondClamd(t, c)
	sc.extra, sc.sigs = extra, sigs
	return sc
}

func newSecondClamd(t *testing.T, c *testenv.ClamdEnv) *secondClamd {
	t.Helper()
	bin := testenv.LookPath(t, "clamd")
	if c.Conf == "" {
		testenv.Require(t, "POPGATE_TEST_CLAMD_CONF is not set: cannot start a second clamd")
	}
	return &secondClamd{t: t, bin: bin, conf: c.Conf, dir: t.TempDir()}
}

// start runs a clamd on a free port and waits for its PONG.
func (sc *secondClamd) start() {
	t := sc.t
	t.Helper()
	base, err := os.ReadFile(sc.conf)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sc.n++
	var out strings.Builder
	for line := range strings.Lines(string(base)) {
		switch key := strings.Fields(line + " x")[0]; {
		case key == "Foreground", key == "PidFile", key == "LogFile", key == "LocalSocket", key == "LocalSocketMode", key == "TCPSocket", key == "TemporaryDirectory", key == "MaxThreads":
			continue
		case key == "DatabaseDirectory" && sc.sigs != nil:
			continue
		}
		out.WriteString(line)
	}
	fmt.Fprintf(&out, "\nForeground yes\nTCPSocket %d\nLogFile %s\nTemporaryDirectory %s\nMaxThreads 4\n%s\n",
		port, filepath.Join(sc.dir, fmt.Sprintf("clamd%d.log", sc.n)), sc.dir, sc.extra)
	if sc.sigs != nil {
		db := filepath.Join(sc.dir, "db")
		sigs, _ := fs.Sub(examples.ClamdSignatures, "clamd")
		if err := os.CopyFS(db, sigs); err != nil && !errors.Is(err, fs.ErrExist) {
			t.Fatal(err)
		}
		for name, content := range sc.sigs {
			if err := os.WriteFile(filepath.Join(db, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Fprintf(&out, "DatabaseDirectory %s\n", db)
	}
	conf := filepath.Join(sc.dir, fmt.Sprintf("clamd%d.conf", sc.n))
	if err := os.WriteFile(conf, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	sc.cmd = exec.Command(sc.bin, "-c", conf)
	if err := sc.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := sc.cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	sc.addr = fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", sc.addr, time.Second); err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Write([]byte("zPING\x00"))
			reply, _ := bufio.NewReader(c).ReadString(0)
			c.Close()
			if reply == "PONG\x00" {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(sc.dir, fmt.Sprintf("clamd%d.log", sc.n)))
			t.Fatalf("second clamd did not answer PING within 30 s; log:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill ends the clamd with SIGKILL, as a crash.
func (sc *secondClamd) kill() {
	_ = sc.cmd.Process.Kill()
	_ = sc.cmd.Wait()
}

// matrixCases is the table of the matrix; it is built per run (the
// anchors depend on the messages).
func matrixCases(big []byte) []*matrixCase {
	retr := retrAnchor(big)
	st := int64(len(retr))
	// The data on the wire: dot-stuffed.
	var wire bytes.Buffer
	dw := pop3.NewDotWriter(&wire)
	_, _ = dw.Write(crlf(big))
	size := int64(wire.Len())
	cut := func(dir testenv.Direction, after string, off int64) []testenv.Fault {
		return []testenv.Fault{{Dir: dir, After: after, Offset: off, Action: testenv.Cut}}
	}
	up, down := testenv.ToTarget, testenv.ToClient
	var cases []*matrixCase
	for _, filtered := range []bool{false, true} {
		kind := "plain"
		if filtered {
			kind = "filtered"
		}
		add := func(name string, tc matrixCase) {
			tc.name = kind + "/" + name
			tc.filtered = filtered
			cases = append(cases, &tc)
		}
		add("greeting-cut-at-0", matrixCase{up: cut(down, "", 0)})
		add("greeting-cut-at-10", matrixCase{up: cut(down, "", 10)})
		add("greeting-garbage", matrixCase{up: []testenv.Fault{{Dir: down, Action: testenv.Corrupt, Data: []byte("HTTP/1.1 ")}}})
		add("login-cut-before-USER", matrixCase{up: cut(up, "USER ", 0)})
		add("login-cut-in-PASS", matrixCase{up: cut(up, "PASS ", 7)})
		add("login-cut-in-PASS-answer", matrixCase{up: cut(down, "+OK Logged in.", 4)})
		add("list-cut-mid-listing", matrixCase{up: cut(down, "messages:\r\n", 15)})
		for _, o := range []struct {
			name string
			off  int64
		}{
			{"status-0", 0}, {"status-1", 1}, {"body-0", st}, {"mid-header", st + 40},
			{"mid-body", st + size/2}, {"before-last-LF", st + size - 1}, {"before-terminator", st + size},
			{"in-terminator-1", st + size + 1}, {"in-terminator-2", st + size + 2}, {"after-terminator", st + size + 3},
		} {
			add("retr-cut-at-"+o.name, matrixCase{up: cut(down, retr, o.off)})
		}
		add("retr-stall-mid-body", matrixCase{upTO: "5s", up: []testenv.Fault{{Dir: down, After: retr, Offset: st + size/2, Action: testenv.Stall}}})
		add("retr-garbage-status", matrixCase{up: []testenv.Fault{{Dir: down, After: retr, Action: testenv.Corrupt, Data: []byte("XXX")}}})
		add("retr-cut-command", matrixCase{up: cut(up, "RETR 2", 3)})
		add("dele-cut-command", matrixCase{up: cut(up, "DELE 1", 0)})
		add("dele-cut-answer", matrixCase{up: cut(down, "+OK Marked to be deleted.", 0)})
		add("quit-cut-command", matrixCase{up: cut(up, "QUIT", 0)})
		add("quit-cut-after-command", matrixCase{up: cut(up, "QUIT\r\n", 6)})
		add("quit-cut-answer", matrixCase{up: cut(down, "+OK Logging out", 0)})
		add("client-vanish-after-DELE", matrixCase{opts: clientOpts{vanishAfterDele: true}})
		add("client-vanish-mid-RETR", matrixCase{opts: clientOpts{vanishInRetr: 2, vanishAfter: 30_000}})
	}
	// Filtered only: the UIDL listing popgate fetches, and the scanner.
	add := func(name string, tc matrixCase) {
		tc.name = "filtered/" + name
		tc.filtered = true
		cases = append(cases, &tc)
	}
	add("uidl-cut-mid-listing", matrixCase{up: cut(down, "+OK\r\n1 0", 8)})
	instream := "zINSTREAM\x00"
	add("clamd-cut-mid-stream", matrixCase{clamd: cut(up, instream, 10+4+500)})
	add("clamd-cut-in-reply", matrixCase{clamd: cut(down, "stream: ", 3)})
	add("clamd-hung", matrixCase{scanTO: "2s", clamd: []testenv.Fault{{Dir: up, After: instream, Offset: 10, Action: testenv.Stall}}})
	add("clamd-garbage-reply", matrixCase{clamd: []testenv.Fault{{Dir: down, After: "stream: ", Action: testenv.Corrupt, Data: []byte("GARBAGE\n")}}})
	add("clamd-slow", matrixCase{scanTO: "10s",
		clamd:  []testenv.Fault{{Dir: down, After: "stream: ", Action: testenv.Delay, Delay: 1500 * time.Millisecond}},
		expect: expectAllScanned})
	add("clamd-restarted", matrixCase{run: clamdRestart, expect: expectAllScanned})
	// scan = "parts": each part is a stream of its own, so clamd can fail
	// after some parts of a message got their verdicts. The decoded
	// attachment of the big message (its "report data" lines are base64
	// in the message) is the third stream: cut, or stalled, there.
	add("clamd-parts-all-scanned", matrixCase{scan: "parts", expect: expectAllScanned})
	add("clamd-parts-cut-mid-part", matrixCase{scan: "parts", clamd: cut(up, "report data", 1000)})
	add("clamd-parts-hung-mid-part", matrixCase{scan: "parts", scanTO: "2s", clamd: []testenv.Fault{{Dir: up, After: "report data", Offset: 1000, Action: testenv.Stall}}})
	add("clamd-parts-garbage-reply", matrixCase{scan: "parts", clamd: []testenv.Fault{{Dir: down, After: "stream: ", Action: testenv.Corrupt, Data: []byte("GARBAGE\n")}}})
	// rspamd: down (the connection ends at once), hung (it reads the
	// request and never answers), garbage (an answer that is not its JSON):
	// no spam verdict, so on_error (tempfail), never a silent ham.
	add("rspamd-down", matrixCase{rspamd: cut(down, "", 0)})
	add("rspamd-hung", matrixCase{scanTO: "2s", rspamd: []testenv.Fault{{Dir: up, After: "\r\n\r\n", Offset: 5, Action: testenv.Stall}}})
	add("rspamd-garbage", matrixCase{rspamd: []testenv.Fault{{Dir: down, After: "\r\n\r\n", Offset: 4, Action: testenv.Corrupt, Data: []byte("<html>")}}})
	add("client-vanish-mid-STLS", matrixCase{tls: true, run: vanishMidSTLS})
	return cases
}

// expectAllScanned: every message was delivered (clean ones tagged, the
// virus as a notice) in some session.
func expectAllScanned(t *testing.T, mr *matrixRun, sessions []*faultSession) {
	for n := 1; n <= mr.nmsgs; n++ {
		got := false
		for _, s := range sessions {
			if _, ok := s.complete[n]; ok {
				got = true
			}
		}
		if !got {
			t.Errorf("message %d was never delivered, want it scanned and delivered", n)
		}
	}
}

// clamdRestart: clamd (a process of the test's own) is killed while it
// holds a stream, then started again; the message it held is deferred and
// delivered scanned when the client asks again, in the same session.
func clamdRestart(mr *matrixRun) {
	t := mr.t
	tc := mr.tc
	fc := dialFault(t, mr.addr)
	defer fc.c.Close()
	mr.saw = append(mr.saw, fc.s)
	if !fc.greet() || !fc.login(mr.mb.u) {
		t.Fatalf("session: %v", fc.s.ended)
	}
	if !fc.retr(1, 0) || fc.s.complete[1] == nil {
		t.Fatalf("RETR 1 before the restart: %v %q", fc.s.ended, fc.s.errs[1])
	}
	// The next stream is held for 2 s on its way to clamd: kill clamd
	// meanwhile. The faults are for new connections: the clamd session
	// RETR 1's scan left open is cut first, as clamd closing an idle
	// session would, and the scan must notice and connect anew.
	before := tc.clamdRelay.Fired()
	tc.clamdRelay.SetFaults(testenv.Fault{Dir: testenv.ToTarget, After: "zINSTREAM\x00", Offset: 10, Action: testenv.Delay, Delay: 2 * time.Second})
	tc.clamdRelay.CutAll()
	if _, err := io.WriteString(fc.c, "RETR 2\r\n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for tc.clamdRelay.Fired() == before {
		if time.Now().After(deadline) {
			t.Fatal("the stream of message 2 never reached the relay")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.clamdTarget.kill()
	st, err := fc.line()
	if err != nil {
		t.Fatalf("RETR 2 while clamd died: %v", err)
	}
	if !strings.HasPrefix(st, tempFailPrefix) {
		data, complete := fc.multi(0)
		t.Fatalf("RETR 2 while clamd died: %q (%d bytes, terminator %v), want %s", st, len(data), complete, tempFailPrefix)
	}
	fc.s.errs[2] = st
	// clamd is back (a new process, where the relay now leads).
	tc.clamdTarget.start()
	tc.clamdRelay.SetTarget(tc.clamdTarget.addr)
	tc.clamdRelay.SetFaults()
	for n := 2; n <= mr.nmsgs; n++ {
		if !fc.retr(n, 0) {
			t.Fatalf("RETR %d after the restart: %v", n, fc.s.ended)
		}
	}
	for n := 1; n <= mr.nmsgs; n++ {
		if _, ok := fc.s.complete[n]; ok && !fc.dele(n) {
			return
		}
	}
	fc.quit()
}

// vanishMidSTLS: a client asks for STLS, gets +OK and drops the connection
// half way through its TLS handshake; popgate stays up, and the mailbox is
// served whole to the next client over TLS.
func vanishMidSTLS(mr *matrixRun) {
	t := mr.t
	fc := dialFault(t, mr.addr)
	if !fc.greet() {
		t.Fatalf("greeting: %v", fc.s.ended)
	}
	if _, ok := fc.cmd("STLS"); !ok {
		t.Fatalf("STLS: %v", fc.s.ended)
	}
	// The start of a ClientHello, then a reset.
	_, _ = fc.c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
	fc.vanish()

	c, err := net.DialTimeout("tcp", mr.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting after the vanished STLS client: %q", l)
	}
	_, _ = io.WriteString(c, "STLS\r\n")
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("STLS: %q", l)
	}
	tc := tls.Client(c, mr.d.ClientTLSConfig(t))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	next := &faultClient{t: t, c: tc, r: bufio.NewReader(tc), s: &faultSession{
		complete: map[int][]byte{}, partial: map[int][]byte{}, errs: map[int]string{},
	}}
	mr.saw = append(mr.saw, next.s)
	if !next.login(mr.mb.u) {
		t.Fatalf("login over TLS: %v", next.s.ended)
	}
	for n := 1; n <= mr.nmsgs; n++ {
		if !next.retr(n, 0) {
			t.Fatalf("RETR %d: %v", n, next.s.ended)
		}
	}
	for n := 1; n <= mr.nmsgs; n++ {
		if _, ok := next.s.complete[n]; ok {
			next.dele(n)
		}
	}
	next.quit()
	if len(next.s.complete) != mr.nmsgs || !next.s.quitOK {
		t.Errorf("after the vanished STLS client: %d of %d messages, QUIT %v", len(next.s.complete), mr.nmsgs, next.s.quitOK)
	}
}

// TestFaultMatrix runs every fault case, then prints the summary line;
// it fails if any message was lost, truncated or delivered unscanned.
func TestFaultMatrix(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	markDovecotLog(t, d)
	tally := &faultTally{}
	start := time.Now()
	t.Run("cases", func(t *testing.T) {
		runMatrix(t, d, clamd, tally)
		var wg sync.WaitGroup
		for _, f := range []func(*testing.T, *testenv.DovecotEnv, *testenv.ClamdEnv, *faultTally){
			quarantineReadOnly, quarantineDiskFull, spoolDiskFull, sigtermMidDownload, sighupMidDownload,
		} {
			wg.Go(func() { f(t, d, clamd, tally) })
		}
		wg.Wait()
	})
	tally.mu.Lock()
	defer tally.mu.Unlock()
	slices.Sort(tally.lines)
	t.Logf("fault cases (%v):\n%s", time.Since(start).Round(time.Millisecond), strings.Join(tally.lines, "\n"))
	reportSummary(t, fmt.Sprintf("faults: %d cases, %d lost, %d truncated, %d unscanned", tally.cases, tally.lost, tally.trunc, tally.unscan))
	if tally.lost+tally.trunc+tally.unscan > 0 {
		t.Errorf("the fault matrix found %d lost, %d truncated and %d unscanned messages", tally.lost, tally.trunc, tally.unscan)
	}
	if tally.cases < 60 {
		t.Errorf("only %d fault cases ran", tally.cases)
	}
}

// runMatrix runs the relay cases against one popgate process, several at a
// time (t.Run from goroutines: independent of -parallel).
func runMatrix(t *testing.T, d *testenv.DovecotEnv, clamd *testenv.ClamdEnv, tally *faultTally) {
	big := bigCleanMsg("anchor", 120_000)
	cases := matrixCases(big)
	rspamd := testenv.Rspamd(t)
	for _, tc := range cases {
		if tc.rspamd != nil {
			tc.rspamdRelay = testenv.NewRelay(t, rspamd.Addr)
			tc.rspamdRelay.SetFaults(tc.rspamd...)
		}
		if tc.up != nil {
			tc.upRelay = testenv.NewRelay(t, d.Addr)
			tc.upRelay.SetFaults(tc.up...)
		}
		if tc.clamd != nil {
			tc.clamdRelay = testenv.NewRelay(t, clamd.Addr())
			tc.clamdRelay.SetFaults(tc.clamd...)
		}
		if tc.name == "filtered/clamd-restarted" {
			tc.clamdTarget = newSecondClamd(t, clamd)
			tc.clamdTarget.start()
			tc.clamdRelay = testenv.NewRelay(t, tc.clamdTarget.addr)
		}
	}
	qdir := filepath.Join(t.TempDir(), "quarantine")
	var listeners []string
	for i := range cases {
		listeners = append(listeners, fmt.Sprintf("c%02d", i))
	}
	p := startPopgate(t, matrixConfig(t, d, clamd.Addr(), qdir, cases), "", listeners...)

	sem := make(chan struct{}, 6)
	var wg sync.WaitGroup
	for i, tc := range cases {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			t.Run(tc.name, func(t *testing.T) {
				// Every case's mailbox is like the anchor's: the big
				// message has the anchor's size (same length tag).
				mb := faultMailbox(t, d, fmt.Sprintf("m%05d", i), tc.filtered)
				if len(crlf(mb.msgs[1])) != len(crlf(big)) {
					t.Fatalf("big message is %d bytes, the anchor's %d", len(crlf(mb.msgs[1])), len(crlf(big)))
				}
				mr := &matrixRun{t: t, tc: tc, p: p, d: d, mb: mb, addr: p.addr(fmt.Sprintf("c%02d", i)), nmsgs: len(mb.msgs)}
				if tc.run != nil {
					tc.run(mr)
				} else {
					mr.session(tc.opts)
				}
				waitDovecotIdle(t, d, mb.u)
				lost, trunc, unscan, ids := judge(t, mb, tc.filtered, mr.saw...)
				for _, id := range ids {
					if got := quarantineExport(t, qdir, id, false); !bytes.Equal(got, mb.msgs[3]) {
						t.Errorf("quarantine %s does not hold the original of the virus message", id)
					}
				}
				if tc.expect != nil {
					tc.expect(t, mr, mr.saw)
				}
				fired := 0
				for _, r := range []*testenv.Relay{tc.upRelay, tc.clamdRelay, tc.rspamdRelay} {
					if r != nil {
						fired += r.Fired()
					}
				}
				if (tc.up != nil || tc.clamd != nil || tc.rspamd != nil) && fired == 0 {
					t.Errorf("the fault never fired: the case tests nothing")
				}
				tally.add(tc.name, lost, trunc, unscan, describe(t, mr.saw, mb))
			})
		})
	}
	wg.Wait()
}

// describe sums up what a case's client sessions got, for the case list.
func describe(t *testing.T, saw []*faultSession, mb *stored) string {
	var parts []string
	for _, s := range saw {
		var got []string
		for n := 1; n <= len(mb.msgs); n++ {
			switch {
			case s.complete[n] != nil:
				got = append(got, strconv.Itoa(n)+":whole")
			case s.partial[n] != nil:
				got = append(got, fmt.Sprintf("%d:cut@%d", n, len(s.partial[n])))
			case s.errs[n] != "":
				f := strings.Fields(s.errs[n])
				got = append(got, strconv.Itoa(n)+":"+strings.Join(f[:min(2, len(f))], " "))
			}
		}
		end := "QUIT ok"
		if !s.quitOK {
			end = fmt.Sprint(s.ended)
			if len(end) > 60 {
				end = end[:60]
			}
		}
		parts = append(parts, fmt.Sprintf("[%s; DELE %v; %s]", strings.Join(got, " "), s.deleted, end))
	}
	left := len(mb.u.Files(t))
	return fmt.Sprintf("%s; %d of %d left", strings.Join(parts, " "), left, len(mb.msgs))
}
