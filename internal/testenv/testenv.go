// Package testenv gives tests the real Dovecot, clamd, redis-server and rspamd that scripts/testenv.sh starts
// (docs/ARCHITECTURE.md §5), through the POPGATE_TEST_* variables of its env file:
//
//	scripts/testenv.sh up && . "$(scripts/testenv.sh envfile)" && go test ./...
//
// `make test` does exactly that. When the variables are absent or the daemons do not answer,
// every helper here skips the test with a loud reason, or fails it when
// POPGATE_REQUIRE_INTEGRATION=1 (as .ci/run sets).
//
// Facts about the environment, verified by this package's tests:
//   - Users: NewUser writes one passwd-file per user into POPGATE_TEST_USERS (atomically, by
//     rename) instead of appending to the shared POPGATE_TEST_PASSWD. Dovecot re-reads a changed
//     passwd-file at most once per second, so a line appended in the same second as an earlier
//     lookup stays invisible until the next second; a per-user file is a path Dovecot has not
//     opened yet, read at the first lookup, so the user can log in at once.
//   - Order: Dovecot numbers new Maildir messages by file name (leading seconds, then the
//     ".M<usecs>" part, compared as numbers), not by mtime or directory order. AddMessages names
//     files so that POP3 message numbers follow the order of its arguments, across calls too.
//   - Files go into cur/ with an empty ":2," info part. The config sets
//     pop3_no_flag_updates = yes, so Dovecot never renames them (no \Seen at QUIT): the paths
//     AddMessages returns stay valid until a DELE+QUIT removes the file.
//   - Dovecot serves an LF-only stored message with CRLF line ends; LIST/STAT sizes count the
//     CRLF form. Store messages that end with a line end.
//   - APOP works (passwords are stored as {PLAIN}); failed logins answer within about a second
//     (auth_failure_delay = 0 and no growing per-IP auth penalty).
//   - clamd's database holds only the EICAR test signature, which clamd reports as
//     "Eicar-Test-Signature.UNOFFICIAL" (see EICARFound), and, from a testenv.sh `up` that
//     knows it, ClamAV's clam.exe ("ClamAV-Test-File.UNOFFICIAL"; /usr/share/clamav-testfiles).
//   - rspamd answers a message holding GTUBE with action "reject" (score = required_score,
//     is_skipped: the pattern stops the other rules). A complete ordinary message (From and To
//     with names, Date, Message-ID, MIME headers) gets "no action"; a bare one without Date and
//     Message-ID scores ~6, action "greylist" (rspamd's lowest threshold, 4, not greylisting).
//     Its DNS goes nowhere, so network rules fail fast. Greylisting is off (it soft-rejects any first sight). The controller checks
//     its password from 127.0.0.1 too, and Bayes keeps what it learns in the environment's
//     redis-server (db 3), shared by every test: learn messages of the test's own.
package testenv

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// RequireEnv is the variable that turns the skips of this package into failures.
const RequireEnv = "POPGATE_REQUIRE_INTEGRATION"

// EICAR is the 68-byte EICAR anti-virus test file (md5 44d88612fea8a8f36de82e1278abb02f).
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// EICARFound is clamd's exact INSTREAM reply (without the terminating NUL or newline) for EICAR:
// the test database defines the signature as "Eicar-Test-Signature", and clamd appends
// ".UNOFFICIAL" to the names of signatures that are not from the official databases.
const EICARFound = "stream: Eicar-Test-Signature.UNOFFICIAL FOUND"

// GTUBE is the Generic Test for Unsolicited Bulk Email: a message body holding this line gets
// rspamd's "reject" action (its symbol GTUBE), deterministically and without any network.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

const howto = "start it with `scripts/testenv.sh up && . \"$(scripts/testenv.sh envfile)\"`, or run `make test`"

// Require is the skip-or-fail rule for a missing integration component: it skips the test with
// a loud reason, or fails it when POPGATE_REQUIRE_INTEGRATION=1. what says what is missing.
func Require(t testing.TB, what string) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("INTEGRATION COMPONENT MISSING: %s (%s=1 makes this a failure)", what, RequireEnv)
		return
	}
	t.Skipf("SKIPPING INTEGRATION TEST: %s (set %s=1 to fail instead)", what, RequireEnv)
}

// LookPath returns the path of an executable (a real client such as curl, fetchmail, mpop),
// or applies Require when it is not installed.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Require(t, fmt.Sprintf("program %q not found (scripts/testenv.sh up installs it)", name))
		return ""
	}
	return p
}

// DovecotEnv describes the running test Dovecot.
type DovecotEnv struct {
	Addr     string // host:port, plain POP3 with STLS
	TLSAddr  string // host:port, POP3S (implicit TLS)
	CAFile   string // PEM of the test CA that signed CertFile
	CertFile string // server certificate for localhost and 127.0.0.1; tests reuse it
	KeyFile  string // its key
	Passwd   string // shared passwd-file (alice, bob); see the package doc before appending
	UsersDir string // per-user passwd-files, written by NewUser
	MailRoot string // directory holding the user homes
	MailUID  int    // owner of all mail files
	MailGID  int
	Conf     string // dovecot.conf, e.g. for `doveadm -c`
	// LMTP is host:port of Dovecot's LMTP service: RCPT TO:<NAME@any.domain>
	// delivers to the user NAME.
	LMTP string
}

// ClamdEnv describes the running test clamd.
type ClamdEnv struct {
	TCP  string // tcp://127.0.0.1:port
	Unix string // unix:///path/clamd.sock
	Conf string // clamd.conf
}

// Addr is TCP without its scheme: host:port for net.Dial("tcp", …).
func (c *ClamdEnv) Addr() string { return strings.TrimPrefix(c.TCP, "tcp://") }

// SocketPath is Unix without its scheme, for net.Dial("unix", …).
func (c *ClamdEnv) SocketPath() string { return strings.TrimPrefix(c.Unix, "unix://") }

// RspamdEnv describes the running test rspamd.
type RspamdEnv struct {
	Addr       string // host:port of the normal worker: POST /checkv2, GET /ping
	Controller string // host:port of the controller: POST /learnham, /learnspam; GET /stat
	Password   string // the controller's password (its enable_password too)
}

// getenv returns the named variables, or applies Require naming the first missing one.
func getenv(t testing.TB, component string, names ...string) (map[string]string, bool) {
	t.Helper()
	vals := make(map[string]string, len(names))
	for _, n := range names {
		v := os.Getenv(n)
		if v == "" {
			Require(t, fmt.Sprintf("%s test environment absent: %s is not set; %s", component, n, howto))
			return nil, false
		}
		vals[n] = v
	}
	return vals, true
}

// probes caches, per address, whether the daemon answered (nil) or why not.
var probes sync.Map // string -> error

func probe(key string, f func() error) error {
	if v, ok := probes.Load(key); ok {
		if v == nil {
			return nil
		}
		return v.(error)
	}
	err := f()
	probes.Store(key, err)
	return err
}

// Dovecot returns the running test Dovecot. When the environment variables are absent or
// Dovecot does not answer, it skips the test with a loud reason, or fails it when
// POPGATE_REQUIRE_INTEGRATION=1.
func Dovecot(t testing.TB) *DovecotEnv {
	t.Helper()
	v, ok := getenv(t, "Dovecot", "POPGATE_TEST_POP3", "POPGATE_TEST_POP3S", "POPGATE_TEST_CA",
		"POPGATE_TEST_CERT", "POPGATE_TEST_KEY", "POPGATE_TEST_PASSWD", "POPGATE_TEST_USERS",
		"POPGATE_TEST_MAILROOT", "POPGATE_TEST_MAILUID", "POPGATE_TEST_MAILGID", "POPGATE_TEST_LMTP")
	if !ok {
		return nil
	}
	d := &DovecotEnv{
		Addr: v["POPGATE_TEST_POP3"], TLSAddr: v["POPGATE_TEST_POP3S"],
		CAFile: v["POPGATE_TEST_CA"], CertFile: v["POPGATE_TEST_CERT"], KeyFile: v["POPGATE_TEST_KEY"],
		Passwd: v["POPGATE_TEST_PASSWD"], UsersDir: v["POPGATE_TEST_USERS"],
		MailRoot: v["POPGATE_TEST_MAILROOT"], Conf: os.Getenv("POPGATE_TEST_DOVECOT_CONF"),
		LMTP: v["POPGATE_TEST_LMTP"],
	}
	var err1, err2 error
	d.MailUID, err1 = strconv.Atoi(v["POPGATE_TEST_MAILUID"])
	d.MailGID, err2 = strconv.Atoi(v["POPGATE_TEST_MAILGID"])
	if err1 != nil || err2 != nil {
		t.Fatalf("testenv: bad POPGATE_TEST_MAILUID/MAILGID %q/%q", v["POPGATE_TEST_MAILUID"], v["POPGATE_TEST_MAILGID"])
	}
	if err := probe("dovecot "+d.Addr, func() error { return probePOP3(d.Addr) }); err != nil {
		Require(t, fmt.Sprintf("test Dovecot at %s does not answer (%v); %s", d.Addr, err, howto))
		return nil
	}
	return d
}

func probePOP3(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading greeting: %w", err)
	}
	if !strings.HasPrefix(line, "+OK") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

// Clamd returns the running test clamd, with the same skip-or-fail rule as Dovecot.
func Clamd(t testing.TB) *ClamdEnv {
	t.Helper()
	v, ok := getenv(t, "clamd", "POPGATE_TEST_CLAMD", "POPGATE_TEST_CLAMD_UNIX")
	if !ok {
		return nil
	}
	c := &ClamdEnv{TCP: v["POPGATE_TEST_CLAMD"], Unix: v["POPGATE_TEST_CLAMD_UNIX"], Conf: os.Getenv("POPGATE_TEST_CLAMD_CONF")}
	if err := probe("clamd "+c.TCP, func() error { return probeClamd(c.Addr()) }); err != nil {
		Require(t, fmt.Sprintf("test clamd at %s does not answer PING (%v); %s", c.TCP, err, howto))
		return nil
	}
	return c
}

func probeClamd(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("zPING\x00")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString(0)
	if err != nil {
		return fmt.Errorf("reading PING reply: %w", err)
	}
	if reply != "PONG\x00" {
		return fmt.Errorf("PING reply %q", reply)
	}
	return nil
}

// Redis returns the address (host:port) of the running test redis-server (in memory only, no
// persistence), with the same skip-or-fail rule as Dovecot. Tests share it: use keys of their
// own (a random prefix), never FLUSHALL.
func Redis(t testing.TB) string {
	t.Helper()
	v, ok := getenv(t, "redis", "POPGATE_TEST_REDIS")
	if !ok {
		return ""
	}
	addr := v["POPGATE_TEST_REDIS"]
	if err := probe("redis "+addr, func() error { return probeRedis(addr) }); err != nil {
		Require(t, fmt.Sprintf("test redis-server at %s does not answer PING (%v); %s", addr, err, howto))
		return ""
	}
	return addr
}

func probeRedis(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading PING reply: %w", err)
	}
	if reply != "+PONG\r\n" {
		return fmt.Errorf("PING reply %q", reply)
	}
	return nil
}

// Rspamd returns the running test rspamd, with the same skip-or-fail rule as Dovecot.
func Rspamd(t testing.TB) *RspamdEnv {
	t.Helper()
	v, ok := getenv(t, "rspamd", "POPGATE_TEST_RSPAMD", "POPGATE_TEST_RSPAMD_CONTROLLER", "POPGATE_TEST_RSPAMD_PASSWORD")
	if !ok {
		return nil
	}
	r := &RspamdEnv{Addr: v["POPGATE_TEST_RSPAMD"], Controller: v["POPGATE_TEST_RSPAMD_CONTROLLER"], Password: v["POPGATE_TEST_RSPAMD_PASSWORD"]}
	for _, addr := range []string{r.Addr, r.Controller} {
		if err := probe("rspamd "+addr, func() error { return probeRspamd(addr) }); err != nil {
			Require(t, fmt.Sprintf("test rspamd at %s does not answer /ping (%v); %s", addr, err, howto))
			return nil
		}
	}
	return r
}

// probeRspamd asks an rspamd worker for GET /ping: "pong" (the controller adds a CRLF).
func probeRspamd(addr string) error {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/ping")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64))
	if err != nil {
		return fmt.Errorf("reading /ping reply: %w", err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "pong" {
		return fmt.Errorf("/ping reply %s %q", resp.Status, body)
	}
	return nil
}

// ClientTLSConfig trusts the test CA; ServerName is "localhost" (the certificate also holds
// the IP SAN 127.0.0.1).
func (d *DovecotEnv) ClientTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("testenv: no certificate in %s", d.CAFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
}

// ServerTLSConfig serves the test server certificate, for a test's own TLS listener.
func (d *DovecotEnv) ServerTLSConfig(t testing.TB) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// User is a Dovecot user made for one test.
type User struct {
	Name     string
	Password string
	Maildir  string // <home>/Maildir, with cur/, new/ and tmp/

	env  *DovecotEnv
	mu   sync.Mutex
	base int64 // seconds part of the first message file name
	seq  int64 // messages added so far
}

var userSeq atomic.Uint64

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return hex.EncodeToString(b)
}

// NewUser creates a user with a random password and an empty Maildir owned by the mail uid.
// The name is unique across concurrent test processes (pid, counter and random part). Dovecot
// accepts the user at once (see the package doc). The user's files are removed when the test
// ends, unless it failed.
func (d *DovecotEnv) NewUser(t testing.TB) *User {
	t.Helper()
	name := fmt.Sprintf("t%d-%d-%s", os.Getpid(), userSeq.Add(1), randHex(t, 3))
	u := &User{
		Name:     name,
		Password: randHex(t, 12),
		env:      d,
		base:     time.Now().Unix(),
	}
	home := filepath.Join(d.MailRoot, name)
	u.Maildir = filepath.Join(home, "Maildir")
	for _, dir := range []string{home, u.Maildir, filepath.Join(u.Maildir, "cur"),
		filepath.Join(u.Maildir, "new"), filepath.Join(u.Maildir, "tmp")} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		d.chown(t, dir)
	}
	line := fmt.Sprintf("%s:{PLAIN}%s:%d:%d::%s::\n", name, u.Password, d.MailUID, d.MailGID, home)
	file := filepath.Join(d.UsersDir, name)
	tmp := filepath.Join(d.UsersDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(line), 0o644); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testenv: keeping user %s (password %s, passwd-file %s, Maildir %s) of the failed test",
				name, u.Password, file, u.Maildir)
			return
		}
		_ = os.Remove(file)
		// A session the test left behind may still be syncing: give it a moment, to spare the
		// Dovecot log errors about a vanished Maildir.
		lock := filepath.Join(u.Maildir, "dovecot-uidlist.lock")
		for i := 0; i < 40; i++ {
			if _, err := os.Lstat(lock); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = os.RemoveAll(home)
	})
	return u
}

func (d *DovecotEnv) chown(t testing.TB, path string) {
	t.Helper()
	if os.Geteuid() != 0 && os.Geteuid() == d.MailUID {
		return // our own files already
	}
	if err := os.Lchown(path, d.MailUID, d.MailGID); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// AddMessages delivers msgs into the user's Maildir (cur/), stored byte for byte as given, so
// that their POP3 message numbers follow the argument order, after any messages added before.
// It returns the file paths in that order. Files are owned by the mail uid.
func (u *User) AddMessages(t testing.TB, msgs ...[]byte) []string {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	paths := make([]string, 0, len(msgs))
	for _, m := range msgs {
		u.seq++
		// Dovecot sorts new files by the leading seconds, numerically: one second per message.
		base := fmt.Sprintf("%d.M0P%dQ%d.popgate-testenv", u.base+u.seq, os.Getpid(), u.seq)
		tmp := filepath.Join(u.Maildir, "tmp", base)
		dst := filepath.Join(u.Maildir, "cur", base+":2,")
		if err := os.WriteFile(tmp, m, 0o600); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		u.env.chown(t, tmp)
		if err := os.Rename(tmp, dst); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		paths = append(paths, dst)
	}
	return paths
}

// Files lists the user's current message files (new/ and cur/), in Dovecot's order, which is
// the POP3 order of a new session.
func (u *User) Files(t testing.TB) []string {
	t.Helper()
	var files []string
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(u.Maildir, sub))
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		for _, e := range ents {
			if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				files = append(files, filepath.Join(u.Maildir, sub, e.Name()))
			}
		}
	}
	sort.SliceStable(files, func(i, j int) bool {
		return maildirLess(filepath.Base(files[i]), filepath.Base(files[j]))
	})
	return files
}

// maildirLess orders Maildir file names as Dovecot numbers new messages: by the leading
// seconds, then the ".M<usecs>" part, as numbers, then by name.
func maildirLess(a, b string) bool {
	sa, ua := maildirTime(a)
	sb, ub := maildirTime(b)
	if sa != sb {
		return sa < sb
	}
	if ua != ub {
		return ua < ub
	}
	return a < b
}

func maildirTime(name string) (secs, usecs int64) {
	dot := strings.IndexByte(name, '.')
	if dot < 0 {
		return 0, 0
	}
	secs, _ = strconv.ParseInt(name[:dot], 10, 64)
	rest := name[dot+1:]
	if strings.HasPrefix(rest, "M") {
		end := 1
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		usecs, _ = strconv.ParseInt(rest[1:end], 10, 64)
	}
	return secs, usecs
}
