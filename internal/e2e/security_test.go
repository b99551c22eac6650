package e2e

import (
	"bufio"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// secClient is a raw POP3 client that keeps everything it received, so the
// client side of a session is scanned for secrets too.
type secClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	got  *strings.Builder
	// greeting is the server's first line (with the APOP timestamp).
	greeting string
}

func dialSec(t *testing.T, addr string, implicitTLS bool, got *strings.Builder) *secClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	if implicitTLS {
		conn = tls.Client(conn, &tls.Config{InsecureSkipVerify: true}) // popgate's certificate is not under test here
	}
	return &secClient{t: t, conn: conn, r: bufio.NewReader(conn), got: got}
}

func (c *secClient) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	c.got.WriteString(l)
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func (c *secClient) cmd(s string) string {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
	return c.line()
}

func (c *secClient) want(s, prefix string) string {
	c.t.Helper()
	l := c.cmd(s)
	if !strings.HasPrefix(l, prefix) {
		verb, _, _ := strings.Cut(s, " ")
		c.t.Fatalf("%s: %q, want %q", verb, l, prefix)
	}
	return l
}

func (c *secClient) body() {
	c.t.Helper()
	for c.line() != "." {
	}
}

func (c *secClient) startTLS() {
	c.t.Helper()
	c.want("STLS", "+OK")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("STLS handshake: %v", err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

// TestCredentialsNeverLeakFullRun: one popgate run at debug level with
// every way of logging in (USER/PASS in plaintext and after STLS, APOP,
// AUTH PLAIN with an initial response and continued, AUTH LOGIN, over
// POP3S), failed logins, passwords in commands that are refused, and
// filtering with quarantine. Afterwards every output of the run is
// scanned for every password and every encoded form of it: stderr, stdout,
// the log file, every file in the quarantine directory, the /metrics page,
// and what the clients themselves received.
func TestCredentialsNeverLeakFullRun(t *testing.T) {
	d := testenv.Dovecot(t)
	eicar := eicarCases(t, "secrets")[0].msg
	u, _ := newMailbox(t, d, [][]byte{cleanMsg("secrets"), eicar})
	qdir := t.TempDir()
	logFile := filepath.Join(t.TempDir(), "popgate.log")
	cfg := avConfig(t, d, avOpts{quarantine: qdir}) + "metrics {\n  address = \"127.0.0.1:0\"\n}\n"
	cfg = strings.Replace(cfg, "log {\n", "log {\n  file   = "+hclString(logFile)+"\n", 1)
	p := startPopgate(t, cfg, logFile, "plain", "pop3s")
	plain, pop3s := p.addr("plain"), p.addr("pop3s")

	// Wrong passwords are secrets too: a failed login must not log them.
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	wrong := "Wr0ng-" + hex.EncodeToString(rnd[:])
	b64 := base64.StdEncoding.EncodeToString
	addSecret("wrong password", wrong)
	addSecret("base64 wrong password", b64([]byte(wrong)))
	addSecret("AUTH PLAIN with the wrong password", b64([]byte("\x00"+u.Name+"\x00"+wrong)))

	var got strings.Builder // everything the clients received
	logins := 0
	session := func(name string, implicit bool, fn func(c *secClient)) {
		t.Run(name, func(t *testing.T) {
			addr := plain
			if implicit {
				addr = pop3s
			}
			c := dialSec(t, addr, implicit, &got)
			c.t = t
			c.greeting = c.line()
			if ts := apopStamp.FindString(c.greeting); ts != "" {
				sum := md5.Sum([]byte(ts + u.Password))
				addSecret("APOP digest of "+u.Name, hex.EncodeToString(sum[:]))
			}
			fn(c)
			c.want("QUIT", "+OK")
		})
	}
	okLogin := func(c *secClient) {
		c.want("RETR 1", "+OK")
		c.body()
		if strings.HasPrefix(c.cmd("RETR 2"), "+OK") { // EICAR: quarantined, a notice or -ERR
			c.body()
		}
		logins++
	}
	session("USER/PASS in plaintext", false, func(c *secClient) {
		c.want("USER "+u.Name, "+OK")
		c.want("PASS "+u.Password, "+OK")
		okLogin(c)
	})
	session("USER/PASS after STLS", false, func(c *secClient) {
		c.startTLS()
		c.want("USER "+u.Name, "+OK")
		c.want("PASS "+u.Password, "+OK")
		okLogin(c)
	})
	session("APOP", false, func(c *secClient) {
		ts := apopStamp.FindString(c.greeting)
		sum := md5.Sum([]byte(ts + u.Password))
		c.want("APOP "+u.Name+" "+hex.EncodeToString(sum[:]), "+OK")
		okLogin(c)
	})
	session("AUTH PLAIN initial response over POP3S", true, func(c *secClient) {
		c.want("AUTH PLAIN "+b64([]byte("\x00"+u.Name+"\x00"+u.Password)), "+OK")
		okLogin(c)
	})
	session("AUTH PLAIN continued", false, func(c *secClient) {
		c.want("AUTH PLAIN", "+")
		c.want(b64([]byte(u.Name+"\x00"+u.Name+"\x00"+u.Password)), "+OK")
		okLogin(c)
	})
	session("AUTH LOGIN", false, func(c *secClient) {
		c.want("AUTH LOGIN", "+ ")
		c.want(b64([]byte(u.Name)), "+ ")
		c.want(b64([]byte(u.Password)), "+OK")
		okLogin(c)
	})
	session("failed logins", false, func(c *secClient) {
		c.want("USER "+u.Name, "+OK")
		c.want("PASS "+wrong, "-ERR")
		c.want("AUTH PLAIN "+b64([]byte("\x00"+u.Name+"\x00"+wrong)), "-ERR")
		c.want("AUTH LOGIN", "+ ")
		c.want(b64([]byte(u.Name)), "+ ")
		c.want(b64([]byte(wrong)), "-ERR")
	})
	session("passwords in refused commands", false, func(c *secClient) {
		c.want("PASS "+u.Password, "-ERR")                              // PASS without USER
		c.want("PASS "+u.Password+" "+strings.Repeat("x", 300), "-ERR") // overlong
		c.want("\x01PASS "+wrong, "-ERR")                               // malformed
		c.want("XPASS "+wrong, "-ERR")                                  // unknown, relayed
	})

	metricsPage := func() string {
		_, page := httpGet(t, "http://"+p.metricsAddr()+"/metrics")
		return page
	}()
	p.stop(10 * time.Second)

	// Every output of the run, by name.
	outputs := map[string][]byte{
		"stderr":                     p.stderr.Bytes(),
		"stdout":                     p.stdout.Bytes(),
		"log file":                   p.logBytes(),
		"the clients' received data": []byte(got.String()),
		"/metrics page":              []byte(metricsPage),
	}
	qfiles := 0
	err := filepath.WalkDir(qdir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		outputs["quarantine file "+strings.TrimPrefix(path, qdir)] = b
		qfiles++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// The scan must have seen something: sessions logged at debug level,
	// quarantine records, a metrics page with session counts.
	log := string(outputs["log file"])
	if n := strings.Count(log, `"message":"login"`); n < logins || !strings.Contains(log, `"level":"debug"`) {
		t.Fatalf("log holds %d logins (want %d) or no debug lines", n, logins)
	}
	if qfiles == 0 || !strings.Contains(metricsPage, "popgate_") {
		t.Fatalf("nothing to scan: %d quarantine files, metrics page %d bytes", qfiles, len(metricsPage))
	}
	secrets := secretsSnapshot()
	total := 0
	for name, data := range outputs {
		total += len(data)
		if found := findSecrets(data, secrets); len(found) > 0 {
			t.Errorf("%s contains %s", name, strings.Join(found, ", "))
		}
	}
	t.Logf("secrets scan: %d outputs (%d quarantine files, %d bytes), %d secrets, %d logins: none found",
		len(outputs), qfiles, total, len(secrets), logins)
}
