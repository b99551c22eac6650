package proxy

import (
	"bufio"
	"crypto/hmac"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// Messages as real mail looks on disk: CRLF and LF-only files, dot lines,
// 8-bit text, NUL-free binary-ish base64, a long line and a big message.
func dovecotMessages() [][]byte {
	big := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n", 20000)
	return [][]byte{
		[]byte("From: a@example.com\r\nSubject: crlf\r\n\r\nline one\r\n.\r\n..\r\n.leading dot\r\nlast\r\n"),
		[]byte("From: b@example.com\nSubject: lf only\n\nbody with bare LF\n.\n.x\n"),
		[]byte("From: c@example.com\r\nSubject: =?utf-8?q?8bit?=\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — ça va? \xff\xfe\r\n"),
		[]byte("From: d@example.com\r\nSubject: long line\r\n\r\n" + strings.Repeat("x", 5000) + "\r\n"),
		[]byte("From: e@example.com\r\nSubject: big\r\n\r\n" + big),
	}
}

// wire is what a POP3 server sends for a stored message: CRLF line ends,
// dot-stuffed.
func wire(msg []byte) string {
	s := strings.ReplaceAll(string(msg), "\r\n", "\n")
	return stuff([]byte(strings.ReplaceAll(s, "\n", "\r\n")))
}

func dovecotProxy(t *testing.T, mod func(*Listener, *Options)) (*testenv.DovecotEnv, string, *syncBuffer) {
	d := testenv.Dovecot(t)
	_, addr, logs := startProxy(t, d.Addr, mod)
	return d, addr, logs
}

// Invariant 1: a message reaches the client byte-identical to what the
// upstream sends, and to the Maildir file (modulo the CRLF wire form).
func TestDovecotByteIdentical(t *testing.T) {
	d, addr, _ := dovecotProxy(t, nil)
	u := d.NewUser(t)
	msgs := dovecotMessages()
	u.AddMessages(t, msgs...)

	direct, via := dialClient(t, d.Addr), dialClient(t, addr)
	for _, c := range []*client{direct, via} {
		c.line()
		c.login(u.Name, u.Password)
	}
	for _, cmd := range []string{"STAT", "LIST", "UIDL"} {
		a, b := direct.expectOK(cmd), via.expectOK(cmd)
		if cmd != "STAT" {
			a, b = a+direct.body(), b+via.body()
		}
		if a != b {
			t.Fatalf("%s differs: direct %q, popgate %q", cmd, a, b)
		}
	}
	for i, m := range msgs {
		n := i + 1
		for _, cmd := range []string{fmt.Sprintf("RETR %d", n), fmt.Sprintf("TOP %d 2", n), fmt.Sprintf("TOP %d 0", n)} {
			a := direct.expectOK(cmd) + "\n" + direct.body()
			b := via.expectOK(cmd) + "\n" + via.body()
			if a != b {
				t.Fatalf("%s: popgate sent %d bytes, Dovecot %d", cmd, len(b), len(a))
			}
		}
		direct.expectOK(fmt.Sprintf("RETR %d", n))
		if got := direct.body(); got != wire(m) {
			t.Fatalf("message %d: Dovecot's wire form is not the Maildir file's (test assumption)", n)
		}
	}
	via.expectOK("QUIT")
	direct.expectOK("QUIT")
}

func TestDovecotAPOP(t *testing.T) {
	d, addr, _ := dovecotProxy(t, nil)
	u := d.NewUser(t)
	u.AddMessages(t, dovecotMessages()[0])
	c := dialClient(t, addr)
	ts := regexp.MustCompile(`<[^>]+>`).FindString(c.line())
	if ts == "" {
		t.Fatal("greeting through popgate lost its APOP timestamp")
	}
	sum := md5.Sum([]byte(ts + u.Password))
	c.expectOK("APOP " + u.Name + " " + hex.EncodeToString(sum[:]))
	c.expectOK("RETR 1")
	if got := c.body(); got != wire(dovecotMessages()[0]) {
		t.Fatalf("RETR after APOP: %q", got)
	}
	c.expectOK("QUIT")
}

func TestDovecotAuthPlain(t *testing.T) {
	d, addr, logs := dovecotProxy(t, nil)
	u := d.NewUser(t)
	cred := base64.StdEncoding.EncodeToString([]byte("\x00" + u.Name + "\x00" + u.Password))

	c := dialClient(t, addr) // initial response
	c.line()
	c.expectOK("AUTH PLAIN " + cred)
	c.expectOK("STAT")
	c.expectOK("QUIT")

	c = dialClient(t, addr) // continuation
	c.line()
	if got := c.cmd("AUTH PLAIN"); !strings.HasPrefix(got, "+") {
		t.Fatalf("AUTH PLAIN: %q", got)
	}
	c.expectOK(cred)
	c.expectOK("QUIT")

	c = dialClient(t, addr) // wrong password, then cancel
	c.line()
	bad := base64.StdEncoding.EncodeToString([]byte("\x00" + u.Name + "\x00wrong"))
	if got := c.cmd("AUTH PLAIN " + bad); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("bad AUTH PLAIN: %q", got)
	}
	if got := c.cmd("AUTH PLAIN"); !strings.HasPrefix(got, "+") {
		t.Fatalf("AUTH PLAIN: %q", got)
	}
	if got := c.cmd("*"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("cancelled AUTH: %q", got)
	}
	c.expectOK("QUIT")

	c = dialClient(t, addr) // CRAM-MD5: the login name is learned too
	c.line()
	chal := c.cmd("AUTH CRAM-MD5")
	raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(chal, "+ "))
	if err != nil {
		t.Fatalf("CRAM-MD5 challenge %q: %v", chal, err)
	}
	mac := hmac.New(md5.New, []byte(u.Password))
	mac.Write(raw)
	c.expectOK(base64.StdEncoding.EncodeToString([]byte(u.Name + " " + hex.EncodeToString(mac.Sum(nil)))))
	c.expectOK("QUIT")
	waitFor(t, func() bool { return strings.Count(logs.String(), "session end") == 4 })
	if strings.Count(logs.String(), `"user":"`+u.Name+`"`) < 4 {
		t.Fatalf("not every SASL login was logged with its user:\n%s", logs)
	}
	if strings.Contains(logs.String(), u.Password) || strings.Contains(logs.String(), cred) {
		t.Fatal("AUTH exchange reached the logs")
	}
	if !strings.Contains(logs.String(), `"user":"`+u.Name+`"`) {
		t.Fatal("AUTH PLAIN login not logged with its user")
	}
}

func dovecotCA(t *testing.T, d *testenv.DovecotEnv) *x509.CertPool {
	pem, err := os.ReadFile(d.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate in", d.CAFile)
	}
	return pool
}

// TLS on both sides: clients use STLS or implicit TLS to popgate, popgate
// uses STLS or implicit TLS to Dovecot, verifying its certificate.
func TestDovecotTLSBothSides(t *testing.T) {
	d := testenv.Dovecot(t)
	pool := dovecotCA(t, d)
	cert, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	u := d.NewUser(t)
	u.AddMessages(t, dovecotMessages()[1])
	for _, tc := range []struct {
		name     string
		implicit bool
		mode     TLSMode
		addr     string
	}{
		{"client STLS, upstream STLS", false, TLSStartTLS, d.Addr},
		{"client implicit, upstream implicit", true, TLSImplicit, d.TLSAddr},
		{"client STLS, upstream plain", false, TLSNone, d.Addr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr, _ := startProxy(t, tc.addr, func(l *Listener, _ *Options) {
				l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
				l.Implicit = tc.implicit
				l.Upstream.TLSMode = tc.mode
				l.Upstream.TLS = &tls.Config{RootCAs: pool}
			})
			var conn net.Conn
			var err error
			cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
			if tc.implicit {
				conn, err = tls.Dial("tcp", addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
			} else {
				c := dialClient(t, addr)
				c.line()
				c.expectOK("CAPA")
				if !strings.Contains(c.body(), "STLS\r\n") {
					t.Fatal("CAPA does not offer STLS")
				}
				c.expectOK("STLS")
				tc := tls.Client(c.conn, cfg)
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				conn = tc
			}
			defer conn.Close()
			c := &client{t: t, conn: conn, r: bufio.NewReader(conn)}
			if !tc.implicit {
				c.expectOK("CAPA")
				if strings.Contains(c.body(), "STLS") {
					t.Fatal("STLS offered again inside TLS")
				}
			} else {
				c.line()
			}
			c.login(u.Name, u.Password)
			c.expectOK("RETR 1")
			if got := c.body(); got != wire(dovecotMessages()[1]) {
				t.Fatalf("RETR over TLS: %q", got)
			}
			c.expectOK("QUIT")
		})
	}
}

// Certificate verification is on by default: an upstream whose certificate
// the system roots do not trust is refused with a temporary error.
func TestDovecotUpstreamUntrusted(t *testing.T) {
	d := testenv.Dovecot(t)
	_, addr, logs := startProxy(t, d.TLSAddr, func(l *Listener, _ *Options) {
		l.Upstream.TLSMode = TLSImplicit
	})
	c := dialClient(t, addr)
	if got := c.readAll(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("untrusted upstream: %q", got)
	}
	if !strings.Contains(logs.String(), "certificate") {
		t.Fatalf("log does not say why: %s", logs)
	}
}

// Invariant 3 against the real server: DELE without QUIT deletes nothing;
// DELE then QUIT deletes.
func TestDovecotDeleteOnlyOnQuit(t *testing.T) {
	d, addr, _ := dovecotProxy(t, func(l *Listener, _ *Options) { l.IdleTimeout = 500 * time.Millisecond })
	for _, tc := range []struct {
		name string
		end  func(c *client)
		left int
	}{
		{"vanish", func(c *client) { c.conn.Close() }, 2},
		{"vanish mid-RETR", func(c *client) { c.send("RETR 2\r\n"); c.r.Read(make([]byte, 10)); c.conn.Close() }, 2},
		{"idle timeout", func(c *client) { io.ReadAll(c.r) }, 2},
		{"quit", func(c *client) { c.expectOK("QUIT") }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := d.NewUser(t)
			u.AddMessages(t, dovecotMessages()[0], dovecotMessages()[4])
			c := dialClient(t, addr)
			c.line()
			c.login(u.Name, u.Password)
			c.expectOK("DELE 1")
			tc.end(c)
			// Dovecot applies deletions when its session ends: wait until
			// a new session sees the mailbox.
			waitFor(t, func() bool {
				chk := dialClient(t, d.Addr)
				defer chk.conn.Close()
				chk.line()
				chk.send("USER " + u.Name + "\r\nPASS " + u.Password + "\r\n")
				chk.line()
				return strings.HasPrefix(chk.line(), "+OK")
			})
			if got := len(u.Files(t)); got != tc.left {
				t.Fatalf("%d messages left, want %d", got, tc.left)
			}
		})
	}
}

// Login routing against the real server: AUTH LOGIN, which popgate starts
// itself and replays, and a "#host" suffix stripped before Dovecot sees it.
func TestDovecotLoginRouting(t *testing.T) {
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	u.AddMessages(t, dovecotMessages()[0])
	_, addr, _ := startProxy(t, d.Addr, func(l *Listener, _ *Options) {
		l.Router = func(login string) (*Upstream, string, error) {
			user, ok := strings.CutSuffix(login, "#dovecot")
			if !ok {
				return nil, "", errors.New("no host")
			}
			return &Upstream{Name: "dovecot", Address: d.Addr}, user, nil
		}
	})
	c := dialClient(t, addr)
	c.line()
	if got := c.cmd("AUTH LOGIN"); got != "+ VXNlcm5hbWU6" {
		t.Fatalf("AUTH LOGIN: %q", got)
	}
	if got := c.cmd(base64.StdEncoding.EncodeToString([]byte(u.Name + "#dovecot"))); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("after the user name: %q", got)
	}
	c.expectOK(base64.StdEncoding.EncodeToString([]byte(u.Password)))
	c.expectOK("RETR 1")
	if got := c.body(); got != wire(dovecotMessages()[0]) {
		t.Fatalf("RETR: %q", got)
	}
	c.expectOK("QUIT")
}
