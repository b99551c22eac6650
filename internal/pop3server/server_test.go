package pop3server

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"math/big"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/pop3"
)

var (
	msg1 = Message{UIDL: "uid-1", Data: []byte("From: alice@example.com\r\nSubject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n")}
	msg2 = Message{UIDL: "uid-2", Data: []byte("Subject: two\r\n\r\nbody\r\n")}
	msg3 = Message{UIDL: "uid-3", Data: []byte("Subject: header only\r\n")}
)

func testConfig() Config {
	return Config{
		Users:     map[string]string{"bob": "secret pw", "eve": "x"},
		Mailboxes: map[string][]Message{"bob": {msg1, msg2, msg3}},
		Hostname:  "test.example",
	}
}

func start(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s := New(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, l.Addr().String()
}

type client struct {
	t        *testing.T
	conn     net.Conn
	br       *bufio.Reader
	greeting string
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := &client{t: t, conn: conn, br: bufio.NewReader(conn)}
	c.greeting = c.line()
	return c
}

func (c *client) send(lines ...string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, strings.Join(lines, "\r\n")+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	l, err := pop3.ReadLine(c.br, pop3.MaxStatusLine)
	if err != nil {
		c.t.Fatalf("reading response: %v", err)
	}
	return string(l)
}

func (c *client) status() pop3.Status {
	c.t.Helper()
	l := c.line()
	s, err := pop3.ParseStatus([]byte(l))
	if err != nil {
		c.t.Fatalf("bad status %q", l)
	}
	return s
}

// cmd sends a command and returns its status, failing unless its OK-ness
// is ok.
func (c *client) cmd(line string, ok bool) pop3.Status {
	c.t.Helper()
	c.send(line)
	s := c.status()
	if s.OK != ok {
		c.t.Fatalf("%s: got %q, want OK=%v", line, s.Line(), ok)
	}
	return s
}

func (c *client) multi() string {
	c.t.Helper()
	var b bytes.Buffer
	if _, err := pop3.NewDotReader(c.br).WriteTo(&b); err != nil {
		c.t.Fatalf("multi-line: %v", err)
	}
	return b.String()
}

func (c *client) login() {
	c.t.Helper()
	c.cmd("USER bob", true)
	c.cmd("PASS secret pw", true)
}

func (c *client) expectEOF() {
	c.t.Helper()
	if b, err := c.br.ReadByte(); err == nil {
		c.t.Fatalf("connection still open, got %q", b)
	}
}

func waitSessions(t *testing.T, s *Server, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.Sessions() != n; {
		if time.Now().After(deadline) {
			t.Fatalf("Sessions() = %d, want %d", s.Sessions(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

var timestampRE = regexp.MustCompile(`^\+OK .*(<[0-9]+\.[0-9]+@test\.example>)$`)

func TestGreetingAndCapa(t *testing.T) {
	_, addr := start(t, testConfig())
	c := dial(t, addr)
	if !timestampRE.MatchString(c.greeting) {
		t.Fatalf("greeting %q", c.greeting)
	}
	c2 := dial(t, addr)
	if timestampRE.FindStringSubmatch(c.greeting)[1] == timestampRE.FindStringSubmatch(c2.greeting)[1] {
		t.Fatal("two sessions got the same APOP timestamp")
	}
	c.cmd("CAPA", true)
	capa := c.multi()
	for _, want := range []string{"TOP\r\n", "USER\r\n", "UIDL\r\n", "RESP-CODES\r\n", "PIPELINING\r\n", "SASL PLAIN\r\n"} {
		if !strings.Contains(capa, want) {
			t.Errorf("CAPA lacks %q: %q", want, capa)
		}
	}
	if strings.Contains(capa, "STLS") {
		t.Errorf("STLS offered without TLS: %q", capa)
	}
	c.cmd("STLS", false)
	c.cmd("BOGUS", false)
	c.cmd("STAT", false) // not before login
	c.cmd("QUIT", true)
	c.expectEOF()
}

func TestUserPass(t *testing.T) {
	s, addr := start(t, testConfig())
	c := dial(t, addr)
	c.cmd("PASS x", false) // no USER
	c.cmd("USER bob", true)
	if st := c.cmd("PASS wrong", false); st.Code != "AUTH" {
		t.Fatalf("failed PASS: %q", st.Line())
	}
	c.cmd("PASS secret pw", false) // USER was reset by the failure
	c.cmd("USER nobody", true)
	c.cmd("PASS secret pw", false)
	c.cmd("USER bob", true)
	st := c.cmd("PASS secret pw", true)
	if st.Text != "maildrop has 3 messages (112 octets)" {
		t.Fatalf("login: %q", st.Text)
	}
	c.cmd("USER bob", false) // already logged in
	c.cmd("CAPA", true)
	c.multi()
	c.cmd("QUIT", true)
	c.expectEOF()
	if s.QuitCount() != 1 {
		t.Fatalf("QuitCount = %d", s.QuitCount())
	}
}

func TestAPOP(t *testing.T) {
	_, addr := start(t, testConfig())
	c := dial(t, addr)
	ts := timestampRE.FindStringSubmatch(c.greeting)[1]
	sum := md5.Sum([]byte(ts + "secret pw"))
	if st := c.cmd("APOP bob 0123456789abcdef0123456789abcdef", false); st.Code != "AUTH" {
		t.Fatalf("bad digest: %q", st.Line())
	}
	c.cmd("APOP bob", false)
	c.cmd("APOP bob "+strings.ToUpper(hex.EncodeToString(sum[:])), true)
	c.cmd("STAT", true)
}

func TestAuthPlain(t *testing.T) {
	_, addr := start(t, testConfig())
	plain := func(authz, user, pw string) string {
		return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pw))
	}
	c := dial(t, addr)
	c.cmd("AUTH", true)
	if m := c.multi(); m != "PLAIN\r\n" {
		t.Fatalf("mechanisms %q", m)
	}
	c.cmd("AUTH CRAM-MD5", false)
	c.cmd("AUTH PLAIN !!!", false)
	if st := c.cmd("AUTH PLAIN "+plain("", "bob", "nope"), false); st.Code != "AUTH" {
		t.Fatalf("%q", st.Line())
	}
	c.cmd("AUTH PLAIN "+plain("eve", "bob", "secret pw"), false)
	// Continuation, cancelled.
	c.send("AUTH PLAIN")
	if l := c.line(); !pop3.IsContinuation([]byte(l)) {
		t.Fatalf("continuation %q", l)
	}
	c.send("*")
	c.status()
	// Continuation, successful.
	c.send("AUTH PLAIN")
	c.line()
	c.send(plain("bob", "bob", "secret pw"))
	if st := c.status(); !st.OK {
		t.Fatalf("%q", st.Line())
	}
	c.cmd("STAT", true)

	// Initial response.
	c2 := dial(t, addr)
	c2.cmd("AUTH plain "+plain("", "bob", "secret pw"), true)
	c2.cmd("NOOP", true)
}

func TestTransaction(t *testing.T) {
	_, addr := start(t, testConfig())
	c := dial(t, addr)
	c.login()
	if st := c.cmd("STAT", true); st.Text != "3 112" {
		t.Fatalf("STAT %q", st.Text)
	}
	c.cmd("LIST", true)
	if m := c.multi(); m != "1 68\r\n2 22\r\n3 22\r\n" {
		t.Fatalf("LIST %q", m)
	}
	if st := c.cmd("LIST 2", true); st.Text != "2 22" {
		t.Fatalf("LIST 2 %q", st.Text)
	}
	c.cmd("LIST 4", false)
	c.cmd("LIST 0", false)
	c.cmd("LIST x", false)
	c.cmd("LIST +1", false)
	c.cmd("UIDL", true)
	if m := c.multi(); m != "1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n" {
		t.Fatalf("UIDL %q", m)
	}
	if st := c.cmd("UIDL 3", true); st.Text != "3 uid-3" {
		t.Fatalf("UIDL 3 %q", st.Text)
	}
	for i, m := range []Message{msg1, msg2, msg3} {
		c.cmd(fmt.Sprintf("RETR %d", i+1), true)
		if got := c.multi(); got != string(m.Data) {
			t.Fatalf("RETR %d = %q", i+1, got)
		}
	}
	// The wire form is dot-stuffed.
	c.send("RETR 1")
	c.status()
	var raw bytes.Buffer
	pop3.NewRawDotReader(c.br).WriteTo(&raw)
	if !strings.Contains(raw.String(), "\r\n..dot line\r\n") {
		t.Fatalf("not stuffed: %q", raw.String())
	}
	c.cmd("RETR 9", false)
	c.cmd("RETR", false)

	tops := []struct {
		cmd, want string
	}{
		{"TOP 1 0", "From: alice@example.com\r\nSubject: one\r\n\r\n"},
		{"TOP 1 2", "From: alice@example.com\r\nSubject: one\r\n\r\nline 1\r\n.dot line\r\n"},
		{"TOP 1 100", string(msg1.Data)},
		{"TOP 3 5", string(msg3.Data)},
	}
	for _, tt := range tops {
		c.cmd(tt.cmd, true)
		if got := c.multi(); got != tt.want {
			t.Fatalf("%s = %q, want %q", tt.cmd, got, tt.want)
		}
	}
	c.cmd("TOP 1", false)
	c.cmd("TOP 1 -1", false)
	c.cmd("TOP 7 1", false)

	c.cmd("DELE 2", true)
	c.cmd("DELE 2", false)
	c.cmd("RETR 2", false)
	c.cmd("LIST 2", false)
	if st := c.cmd("STAT", true); st.Text != "2 90" {
		t.Fatalf("STAT after DELE %q", st.Text)
	}
	c.cmd("LIST", true)
	if m := c.multi(); m != "1 68\r\n3 22\r\n" {
		t.Fatalf("LIST after DELE %q", m)
	}
	c.cmd("RSET", true)
	c.cmd("RETR 2", true)
	c.multi()
	c.cmd("NOOP", true)
	c.cmd("STLS", false)
	c.cmd("XYZZY", false)
	c.cmd("", false)
	c.cmd("US\x00ER", false)
	c.send(strings.Repeat("A", 300))
	if st := c.status(); st.OK {
		t.Fatal("long line accepted")
	}
	c.cmd("NOOP", true) // still in sync
}

func TestDeleQuitCommits(t *testing.T) {
	s, addr := start(t, testConfig())
	c := dial(t, addr)
	c.login()
	c.cmd("DELE 1", true)
	c.cmd("DELE 3", true)
	if n := len(s.Mailbox("bob")); n != 3 {
		t.Fatalf("deleted before QUIT: %d left", n)
	}
	if st := c.cmd("QUIT", true); st.Text != "bye (2 messages deleted)" {
		t.Fatalf("QUIT %q", st.Text)
	}
	c.expectEOF()
	box := s.Mailbox("bob")
	if len(box) != 1 || box[0].UIDL != "uid-2" {
		t.Fatalf("mailbox after QUIT: %v", box)
	}
	if s.QuitCount() != 1 {
		t.Fatalf("QuitCount = %d", s.QuitCount())
	}
	// A new session sees the committed mailbox.
	c2 := dial(t, addr)
	c2.login()
	if st := c2.cmd("STAT", true); st.Text != "1 22" {
		t.Fatalf("STAT %q", st.Text)
	}
}

func TestDeleDisconnectKeeps(t *testing.T) {
	s, addr := start(t, testConfig())
	c := dial(t, addr)
	c.login()
	c.cmd("DELE 1", true)
	c.conn.Close()
	waitSessions(t, s, 0)
	if n := len(s.Mailbox("bob")); n != 3 {
		t.Fatalf("disconnect deleted: %d left", n)
	}
	// Close also does not commit.
	c2 := dial(t, addr)
	c2.login()
	c2.cmd("DELE 2", true)
	waitSessions(t, s, 1)
	s.Close()
	c2.expectEOF()
	if n := len(s.Mailbox("bob")); n != 3 || s.QuitCount() != 0 || s.Sessions() != 0 {
		t.Fatalf("after Close: %d messages, %d quits, %d sessions", n, s.QuitCount(), s.Sessions())
	}
}

func TestQuitInAuthorization(t *testing.T) {
	s, addr := start(t, testConfig())
	c := dial(t, addr)
	c.cmd("QUIT", true)
	c.expectEOF()
	if s.QuitCount() != 1 {
		t.Fatalf("QuitCount = %d", s.QuitCount())
	}
}

func TestPipelining(t *testing.T) {
	_, addr := start(t, testConfig())
	c := dial(t, addr)
	c.send("USER bob", "PASS secret pw", "STAT", "RETR 2", "LIST 1", "DELE 3", "NOOP", "QUIT")
	var out []string
	for i := 0; i < 8; i++ {
		st := c.status()
		out = append(out, st.Line())
		if i == 3 {
			if m := c.multi(); m != string(msg2.Data) {
				t.Fatalf("RETR 2 = %q", m)
			}
		}
	}
	want := []string{"+OK send PASS", "+OK maildrop has 3 messages (112 octets)", "+OK 3 112", "+OK 22 octets", "+OK 1 68", "+OK message 3 deleted", "+OK", "+OK bye (1 messages deleted)"}
	if strings.Join(out, "|") != strings.Join(want, "|") {
		t.Fatalf("responses:\n%q\nwant\n%q", out, want)
	}
	c.expectEOF()
}

func TestCutResponse(t *testing.T) {
	statusLen := len("+OK 68 octets\r\n")
	for _, cut := range []int{0, 5, statusLen, statusLen + 10, statusLen + len(msg1.Data) + 1, statusLen + len(msg1.Data) + 3} {
		cfg := testConfig()
		var mu sync.Mutex
		var calls []string
		cfg.CutResponse = func(cmd string, msg int) int {
			mu.Lock()
			calls = append(calls, fmt.Sprintf("%s %d", cmd, msg))
			mu.Unlock()
			if cmd == "RETR" && msg == 1 {
				return cut
			}
			return -1
		}
		s, addr := start(t, cfg)
		c := dial(t, addr)
		c.login()
		c.cmd("TOP 2 0", true)
		c.multi()
		c.cmd("DELE 3", true)
		c.send("RETR 1")
		got, _ := io.ReadAll(c.br)
		if len(got) != cut {
			t.Fatalf("cut %d: got %d bytes: %q", cut, len(got), got)
		}
		if cut >= statusLen {
			br := bufio.NewReader(bytes.NewReader(got[statusLen:]))
			if _, err := io.Copy(io.Discard, pop3.NewDotReader(br)); err != io.ErrUnexpectedEOF {
				t.Fatalf("cut %d: dot reader err %v", cut, err)
			}
		}
		waitSessions(t, s, 0)
		mu.Lock()
		if strings.Join(calls, ",") != "TOP 2,RETR 1" {
			t.Fatalf("calls %q", calls)
		}
		mu.Unlock()
		if len(s.Mailbox("bob")) != 3 || s.QuitCount() != 0 {
			t.Fatal("cut session committed deletions")
		}
	}
}

func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

func (c *client) startTLS(pool *x509.CertPool) {
	c.t.Helper()
	if c.br.Buffered() != 0 {
		c.t.Fatalf("plaintext left before TLS: %d bytes", c.br.Buffered())
	}
	tc := tls.Client(c.conn, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

func TestSTLS(t *testing.T) {
	cfg := testConfig()
	srvTLS, pool := selfSigned(t)
	cfg.TLS = srvTLS
	_, addr := start(t, cfg)

	c := dial(t, addr)
	c.cmd("CAPA", true)
	if capa := c.multi(); !strings.Contains(capa, "\r\nSTLS\r\n") {
		t.Fatalf("STLS not offered: %q", capa)
	}
	c.cmd("STLS", true)
	c.startTLS(pool)
	c.cmd("CAPA", true)
	if capa := c.multi(); strings.Contains(capa, "STLS") {
		t.Fatalf("STLS offered after TLS: %q", capa)
	}
	c.cmd("STLS", false)
	c.login()
	c.cmd("RETR 1", true)
	if got := c.multi(); got != string(msg1.Data) {
		t.Fatalf("RETR over TLS %q", got)
	}
	c.cmd("QUIT", true)

	// Commands pipelined behind STLS in plaintext are discarded, and so is
	// a USER given before STLS.
	c2 := dial(t, addr)
	c2.cmd("USER bob", true)
	c2.send("STLS", "USER eve")
	if st := c2.status(); !st.OK {
		t.Fatalf("STLS %q", st.Line())
	}
	c2.startTLS(pool)
	c2.cmd("PASS secret pw", false) // neither USER survived
	c2.cmd("PASS x", false)
	c2.login()

	// Not after login.
	c3 := dial(t, addr)
	c3.login()
	c3.cmd("STLS", false)
}

func TestConcurrentSessions(t *testing.T) {
	s, addr := start(t, testConfig())
	// All sessions log in first, so that all of their snapshots hold
	// uid-1 as message 1; then all delete it.
	var wg, loggedIn sync.WaitGroup
	loggedIn.Add(8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			io.WriteString(conn, "USER bob\r\nPASS secret pw\r\n")
			for range 2 {
				if l, err := pop3.ReadLine(br, 1000); err != nil || l[0] != '+' {
					t.Errorf("login: %q %v", l, err)
				}
			}
			loggedIn.Done()
			loggedIn.Wait()
			io.WriteString(conn, "RETR 1\r\nDELE 1\r\nQUIT\r\n")
			var lines []string
			for {
				l, err := pop3.ReadLine(br, 1000)
				if err != nil {
					break
				}
				lines = append(lines, string(l))
			}
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, "+OK bye") {
				t.Errorf("session ended with %q", last)
			}
			_ = s.Sessions()
			_ = s.Mailbox("bob")
		}()
	}
	wg.Wait()
	box := s.Mailbox("bob")
	if len(box) != 2 || box[0].UIDL != "uid-2" {
		t.Fatalf("mailbox %v", box)
	}
	if s.QuitCount() != 8 {
		t.Fatalf("QuitCount %d", s.QuitCount())
	}
}

func TestConfigCopied(t *testing.T) {
	cfg := testConfig()
	s := New(cfg)
	cfg.Mailboxes["bob"][0] = msg3
	cfg.Users["bob"] = "changed"
	if s.Mailbox("bob")[0].UIDL != "uid-1" || s.cfg.Users["bob"] != "secret pw" {
		t.Fatal("config not copied")
	}
	if s.Mailbox("nobody") != nil {
		t.Fatal("unknown mailbox not empty")
	}
}

func TestServeAfterClose(t *testing.T) {
	s := New(testConfig())
	s.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Fatal("listener still open")
	}
}

func TestTop(t *testing.T) {
	tests := []struct {
		in   string
		k    int
		want string
	}{
		{"", 3, ""},
		{"H: 1\r\n\r\nb1\r\nb2\r\n", 1, "H: 1\r\n\r\nb1\r\n"},
		{"H: 1\n\nb1\nb2", 5, "H: 1\n\nb1\nb2"},
		{"H: 1\r\n\r\nb1\r\nb2", 1, "H: 1\r\n\r\nb1\r\n"},
		{"\r\nbody\r\n", 0, "\r\n"},
		{"H: 1\r\nH: 2", 0, "H: 1\r\nH: 2"},
	}
	for _, tt := range tests {
		if got := string(top([]byte(tt.in), tt.k)); got != tt.want {
			t.Errorf("top(%q, %d) = %q, want %q", tt.in, tt.k, got, tt.want)
		}
	}
}
