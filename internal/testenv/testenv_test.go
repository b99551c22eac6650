package testenv_test

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// pop is a minimal raw POP3 client for these tests.
type pop struct {
	t        testing.TB
	c        net.Conn
	r        *bufio.Reader
	greeting string
}

func newPop(t testing.TB, c net.Conn) *pop {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	p := &pop{t: t, c: c, r: bufio.NewReader(c)}
	p.greeting = p.line()
	if !strings.HasPrefix(p.greeting, "+OK") {
		t.Fatalf("greeting %q", p.greeting)
	}
	t.Cleanup(func() { c.Close() })
	return p
}

func dialPop(t testing.TB, addr string) *pop {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return newPop(t, c)
}

func (p *pop) line() string {
	p.t.Helper()
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("read: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		p.t.Fatalf("line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// cmd sends a command and returns the status line.
func (p *pop) cmd(format string, args ...any) string {
	p.t.Helper()
	if _, err := fmt.Fprintf(p.c, format+"\r\n", args...); err != nil {
		p.t.Fatal(err)
	}
	return p.line()
}

// ok sends a command that must succeed and returns the status line.
func (p *pop) ok(format string, args ...any) string {
	p.t.Helper()
	l := p.cmd(format, args...)
	if !strings.HasPrefix(l, "+OK") {
		p.t.Fatalf("%s: %q", strings.Fields(fmt.Sprintf(format, args...))[0], l)
	}
	return l
}

// multi reads a multi-line body after a +OK, undoes dot-stuffing, and returns it with its CRLFs.
func (p *pop) multi() []byte {
	p.t.Helper()
	var b bytes.Buffer
	for {
		l := p.line()
		if l == "." {
			return b.Bytes()
		}
		l = strings.TrimPrefix(l, ".")
		b.WriteString(l)
		b.WriteString("\r\n")
	}
}

func (p *pop) login(u *testenv.User) {
	p.t.Helper()
	p.ok("USER %s", u.Name)
	p.ok("PASS %s", u.Password)
}

func (p *pop) stat() (n, size int) {
	p.t.Helper()
	l := p.ok("STAT")
	if _, err := fmt.Sscanf(l, "+OK %d %d", &n, &size); err != nil {
		p.t.Fatalf("STAT %q: %v", l, err)
	}
	return n, size
}

// crlf turns bare LFs into CRLF, as Dovecot does on the wire.
func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

func testMessages(tag string) [][]byte {
	return [][]byte{
		// LF-only, with a line that needs dot-stuffing on the wire.
		[]byte("From: a@example.org\nTo: b@example.org\nSubject: one " + tag + "\n\nfirst body\n.hidden dot line\n..two dots\nend\n"),
		// CRLF.
		[]byte("From: a@example.org\r\nTo: b@example.org\r\nSubject: two " + tag + "\r\n\r\nsecond body\r\n"),
		// Bigger, LF-only.
		[]byte("Subject: three " + tag + "\n\n" + strings.Repeat("0123456789abcdef ", 5000) + "\n"),
	}
}

func TestUserPassStatListRetr(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	msgs := testMessages(u.Name)
	paths := u.AddMessages(t, msgs...)
	if len(paths) != len(msgs) {
		t.Fatalf("AddMessages returned %d paths", len(paths))
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if uid := fileUID(fi); uid >= 0 && uid != d.MailUID {
			t.Errorf("%s owned by uid %d, want %d", p, uid, d.MailUID)
		}
	}

	p := dialPop(t, d.Addr)
	p.login(u)
	total := 0
	for _, m := range msgs {
		total += len(crlf(m))
	}
	if n, size := p.stat(); n != len(msgs) || size != total {
		t.Fatalf("STAT = %d %d, want %d %d", n, size, len(msgs), total)
	}
	p.ok("LIST")
	list := p.multi()
	var want strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&want, "%d %d\r\n", i+1, len(crlf(m)))
	}
	if string(list) != want.String() {
		t.Fatalf("LIST = %q, want %q", list, want.String())
	}
	for i, m := range msgs {
		l := p.ok("RETR %d", i+1)
		got := p.multi()
		if !bytes.Equal(got, crlf(m)) {
			t.Fatalf("RETR %d (%s) = %q, want %q", i+1, l, trunc(got), trunc(crlf(m)))
		}
	}
	p.ok("UIDL")
	uidl := p.multi()
	if !regexp.MustCompile(`^(\d+ [0-9a-f]{16}\r\n){3}$`).Match(uidl) {
		t.Errorf("UIDL (pop3_uidl_format %%08Xu%%08Xv) = %q", uidl)
	}
	p.ok("QUIT")
	if got := u.Files(t); !equal(got, paths) {
		t.Fatalf("Files = %v, want %v (nothing deleted, nothing renamed)", got, paths)
	}
}

func TestOrderAcrossCallsAndDele(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	var msgs [][]byte
	for i := 1; i <= 25; i++ {
		msgs = append(msgs, []byte(fmt.Sprintf("Subject: msg %d\n\nbody %d\n", i, i)))
	}
	// Written in one batch and in two later calls; Dovecot has synced the Maildir in between.
	paths := u.AddMessages(t, msgs[:20]...)
	p := dialPop(t, d.Addr)
	p.login(u)
	if n, _ := p.stat(); n != 20 {
		t.Fatalf("STAT n = %d, want 20", n)
	}
	p.ok("QUIT")
	paths = append(paths, u.AddMessages(t, msgs[20:23]...)...)
	paths = append(paths, u.AddMessages(t, msgs[23:]...)...)

	p = dialPop(t, d.Addr)
	p.login(u)
	if n, _ := p.stat(); n != len(msgs) {
		t.Fatalf("STAT n = %d, want %d", n, len(msgs))
	}
	for i := range msgs {
		p.ok("TOP %d 0", i+1)
		if h := string(p.multi()); !strings.HasPrefix(h, fmt.Sprintf("Subject: msg %d\r\n", i+1)) {
			t.Fatalf("message %d is %q", i+1, h)
		}
	}
	p.ok("DELE 1")
	p.ok("DELE 21")
	p.ok("QUIT")
	want := append(append([]string{}, paths[1:20]...), paths[21:]...)
	if got := u.Files(t); !equal(got, want) {
		t.Fatalf("after DELE 1, 21: Files = %v, want %v", got, want)
	}
}

func TestAPOP(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	u.AddMessages(t, []byte("Subject: apop\n\nx\n"))
	p := dialPop(t, d.Addr)
	ts := regexp.MustCompile(`<[^<>]+>`).FindString(p.greeting)
	if ts == "" {
		t.Fatalf("no APOP timestamp in greeting %q", p.greeting)
	}
	bad := md5.Sum([]byte(ts + "wrong"))
	if l := p.cmd("APOP %s %s", u.Name, hex.EncodeToString(bad[:])); !strings.HasPrefix(l, "-ERR") {
		t.Fatalf("APOP with a wrong digest: %q", l)
	}
	p = dialPop(t, d.Addr)
	ts = regexp.MustCompile(`<[^<>]+>`).FindString(p.greeting)
	sum := md5.Sum([]byte(ts + u.Password))
	p.ok("APOP %s %s", u.Name, hex.EncodeToString(sum[:]))
	if n, _ := p.stat(); n != 1 {
		t.Fatalf("STAT n = %d, want 1", n)
	}
	p.ok("QUIT")
}

func TestSTLS(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	u.AddMessages(t, []byte("Subject: stls\n\nx\n"))
	p := dialPop(t, d.Addr)
	p.ok("CAPA")
	if capa := string(p.multi()); !strings.Contains(capa, "STLS\r\n") {
		t.Fatalf("CAPA without STLS: %q", capa)
	}
	p.ok("STLS")
	tc := tls.Client(p.c, d.ClientTLSConfig(t)) // verifies the DNS SAN localhost
	if err := tc.Handshake(); err != nil {
		t.Fatalf("STLS handshake: %v", err)
	}
	p.c, p.r = tc, bufio.NewReader(tc)
	p.login(u)
	if n, _ := p.stat(); n != 1 {
		t.Fatalf("STAT n = %d, want 1", n)
	}
	p.ok("QUIT")
}

func TestPOP3S(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	msg := []byte("Subject: pop3s\n\nover implicit TLS\n")
	u.AddMessages(t, msg)
	cfg := d.ClientTLSConfig(t)
	cfg.ServerName = "" // tls.Dial takes it from the address: verifies the IP SAN 127.0.0.1
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", d.TLSAddr, cfg)
	if err != nil {
		t.Fatalf("POP3S: %v", err)
	}
	p := newPop(t, c)
	p.login(u)
	p.ok("RETR 1")
	if got := p.multi(); !bytes.Equal(got, crlf(msg)) {
		t.Fatalf("RETR = %q", got)
	}
	p.ok("QUIT")
}

func TestParallelUsers(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	const users = 6
	var wg sync.WaitGroup
	for i := 0; i < users; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			u := d.NewUser(t)
			var msgs [][]byte
			for j := 0; j <= i; j++ {
				msgs = append(msgs, []byte(fmt.Sprintf("Subject: %s %d\n\nfor %s\n", u.Name, j, u.Name)))
			}
			paths := u.AddMessages(t, msgs...)
			c, err := net.DialTimeout("tcp", d.Addr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(c)
			// Pipelined, to keep this goroutine free of t.Fatal.
			fmt.Fprintf(c, "USER %s\r\nPASS %s\r\nSTAT\r\nTOP %d 0\r\nDELE 1\r\nQUIT\r\n", u.Name, u.Password, i+1)
			var lines []string
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					break
				}
				lines = append(lines, strings.TrimSuffix(l, "\r\n"))
			}
			all := strings.Join(lines, "\n")
			want := fmt.Sprintf("+OK %d ", i+1)
			if len(lines) < 4 || lines[2] != "+OK Logged in." || !strings.HasPrefix(lines[3], want) ||
				!strings.Contains(all, fmt.Sprintf("Subject: %s %d", u.Name, i)) {
				t.Errorf("user %d (%s): session\n%s", i, u.Name, all)
				return
			}
			if got := u.Files(t); !equal(got, paths[1:]) {
				t.Errorf("user %d: Files after DELE 1 = %v, want %v", i, got, paths[1:])
			}
		}(i)
	}
	wg.Wait()
}

func TestFailedLoginIsQuick(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	// Dovecot's default would answer after 2 s, then 4, 8, 15 s for everyone on 127.0.0.1.
	for i := 0; i < 3; i++ {
		p := dialPop(t, d.Addr)
		p.ok("USER %s", u.Name)
		start := time.Now()
		if l := p.cmd("PASS wrong-%d", i); !strings.HasPrefix(l, "-ERR") {
			t.Fatalf("wrong password accepted: %q", l)
		}
		if el := time.Since(start); el > 4*time.Second {
			t.Errorf("failed login %d took %v", i, el)
		}
	}
	p := dialPop(t, d.Addr)
	p.login(u)
	p.ok("QUIT")
}

func TestFixedUsersAndEnv(t *testing.T) {
	d := testenv.Dovecot(t)
	if _, err := os.Stat(d.Conf); err != nil {
		t.Errorf("POPGATE_TEST_DOVECOT_CONF: %v", err)
	}
	for _, f := range []string{d.CAFile, d.CertFile, d.KeyFile, d.Passwd} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	if _, err := tls.LoadX509KeyPair(d.CertFile, d.KeyFile); err != nil {
		t.Error(err)
	}
	if !strings.HasPrefix(d.Addr, "127.0.0.1:") || !strings.HasPrefix(d.TLSAddr, "127.0.0.1:") {
		t.Errorf("addresses %s %s are not on loopback", d.Addr, d.TLSAddr)
	}
	passwd, err := os.ReadFile(d.Passwd)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(passwd), "alice:{PLAIN}alice-secret-pw:") {
		t.Fatalf("alice not in %s", d.Passwd)
	}
	p := dialPop(t, d.Addr)
	p.ok("USER alice")
	p.ok("PASS alice-secret-pw")
	p.stat()
	p.ok("QUIT")
}

// clamdCmd sends a z-command (with the chunks of INSTREAM, if any) and returns the reply.
func clamdCmd(t *testing.T, network, addr, cmd string, stream []byte) string {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	w := bufio.NewWriter(c)
	w.WriteString("z" + cmd + "\x00")
	if cmd == "INSTREAM" {
		for len(stream) > 0 {
			n := min(len(stream), 16)
			_ = binary.Write(w, binary.BigEndian, uint32(n))
			w.Write(stream[:n])
			stream = stream[n:]
		}
		_ = binary.Write(w, binary.BigEndian, uint32(0))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString(0)
	if err != nil {
		t.Fatalf("%s reply: %v (%q)", cmd, err, reply)
	}
	return strings.TrimSuffix(reply, "\x00")
}

func TestClamd(t *testing.T) {
	t.Parallel()
	c := testenv.Clamd(t)
	if !strings.HasPrefix(c.TCP, "tcp://127.0.0.1:") || !strings.HasPrefix(c.Unix, "unix:///") {
		t.Fatalf("ClamdEnv %+v", c)
	}
	for _, ep := range [][2]string{{"tcp", c.Addr()}, {"unix", c.SocketPath()}} {
		if r := clamdCmd(t, ep[0], ep[1], "PING", nil); r != "PONG" {
			t.Fatalf("%s PING = %q", ep[0], r)
		}
		// The name clamd reports is the database's "Eicar-Test-Signature" plus ".UNOFFICIAL".
		if r := clamdCmd(t, ep[0], ep[1], "INSTREAM", []byte(testenv.EICAR)); r != testenv.EICARFound {
			t.Fatalf("%s INSTREAM EICAR = %q, want %q", ep[0], r, testenv.EICARFound)
		}
		// clamd parses a mail, decodes its attachments and matches each as a file of its own.
		att := base64.StdEncoding.EncodeToString([]byte(testenv.EICAR))
		mail := []byte("From: a@example.org\r\nSubject: eicar\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n" +
			"--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"eicar.com\"\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\n" + att + "\r\n--b1--\r\n")
		if r := clamdCmd(t, ep[0], ep[1], "INSTREAM", mail); r != testenv.EICARFound {
			t.Fatalf("%s INSTREAM mail with EICAR attachment = %q, want %q", ep[0], r, testenv.EICARFound)
		}
		inline := []byte("Subject: eicar\r\n\r\nline before\r\n" + testenv.EICAR + "\r\n")
		t.Logf("%s INSTREAM mail with EICAR among other body lines: %q", ep[0], clamdCmd(t, ep[0], ep[1], "INSTREAM", inline))
		if r := clamdCmd(t, ep[0], ep[1], "INSTREAM", []byte("Subject: clean\r\n\r\nhello\r\n")); r != "stream: OK" {
			t.Fatalf("%s INSTREAM clean = %q", ep[0], r)
		}
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	addr := testenv.Redis(t)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("Redis() = %q", addr)
	}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	// The environment's redis keeps nothing on disk: no RDB snapshots, no AOF.
	if _, err := c.Write([]byte("CONFIG GET save\r\nCONFIG GET appendonly\r\n")); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for len(lines) < 10 {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading CONFIG GET replies: %v (so far %q)", err, lines)
		}
		lines = append(lines, strings.TrimSuffix(l, "\r\n"))
	}
	want := []string{"*2", "$4", "save", "$0", "", "*2", "$10", "appendonly", "$2", "no"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("CONFIG GET save/appendonly = %q, want %q", lines, want)
	}
}

// rspamdPost posts body to an rspamd worker and returns the status and the body of the answer.
func rspamdPost(t *testing.T, addr, path string, hdr map[string]string, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestRspamd(t *testing.T) {
	t.Parallel()
	r := testenv.Rspamd(t)
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") || !strings.HasPrefix(r.Controller, "127.0.0.1:") || r.Password == "" {
		t.Fatalf("RspamdEnv %+v", r)
	}
	type answer struct {
		Action        string  `json:"action"`
		Score         float64 `json:"score"`
		RequiredScore float64 `json:"required_score"`
	}
	check := func(msg string) answer {
		code, b := rspamdPost(t, r.Addr, "/checkv2", nil, msg)
		var a answer
		if err := json.Unmarshal(b, &a); code != http.StatusOK || err != nil {
			t.Fatalf("/checkv2: %d %q (%v)", code, trunc(b), err)
		}
		return a
	}
	if a := check("From: a@example.org\r\nSubject: spam\r\n\r\n" + testenv.GTUBE + "\r\n"); a.Action != "reject" || a.Score < a.RequiredScore {
		t.Fatalf("GTUBE: %+v, want action reject", a)
	}
	ham := "From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: Lunch\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <testenv-lunch@example.org>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nShall we meet for lunch on Thursday?\r\n"
	if a := check(ham); a.Action != "no action" {
		t.Fatalf("a plain message: %+v, want no action (is greylisting on?)", a)
	}
	// The controller wants its password, even from 127.0.0.1.
	// rspamd knows a learned message by its text: each run learns a new one.
	tok := randToken(t)
	msg := fmt.Sprintf("From: a@example.org\r\nSubject: learn %s\r\nMessage-ID: <testenv-%s@example.org>\r\n\r\n%s%s\r\n",
		tok, tok, strings.Repeat("words enough for the bayes tokenizer to learn from ", 4), tok)
	if code, b := rspamdPost(t, r.Controller, "/learnham", nil, msg); code != http.StatusUnauthorized {
		t.Fatalf("/learnham without password: %d %q, want 401", code, trunc(b))
	}
	if code, b := rspamdPost(t, r.Controller, "/learnham", map[string]string{"Password": r.Password}, msg); code != http.StatusOK {
		t.Fatalf("/learnham: %d %q, want 200", code, trunc(b))
	}
}

func randToken(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// fakeTB records what Require does with it.
type fakeTB struct {
	testing.TB
	skipped, fatal string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Skipf(format string, a ...any)  { f.skipped = fmt.Sprintf(format, a...) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.fatal = fmt.Sprintf(format, a...) }

func TestRequire(t *testing.T) {
	t.Setenv(testenv.RequireEnv, "")
	f := &fakeTB{TB: t}
	testenv.Require(f, "gizmo missing")
	if !strings.Contains(f.skipped, "gizmo missing") || f.fatal != "" {
		t.Fatalf("without %s: skipped %q, fatal %q", testenv.RequireEnv, f.skipped, f.fatal)
	}
	t.Setenv(testenv.RequireEnv, "1")
	f = &fakeTB{TB: t}
	testenv.Require(f, "gizmo missing")
	if !strings.Contains(f.fatal, "gizmo missing") || f.skipped != "" {
		t.Fatalf("with %s=1: skipped %q, fatal %q", testenv.RequireEnv, f.skipped, f.fatal)
	}
	t.Setenv("POPGATE_TEST_POP3", "")
	f = &fakeTB{TB: t}
	if d := testenv.Dovecot(f); d != nil || !strings.Contains(f.fatal, "POPGATE_TEST_POP3") {
		t.Fatalf("Dovecot without env: %v, fatal %q", d, f.fatal)
	}
	t.Setenv("POPGATE_TEST_CLAMD", "")
	t.Setenv(testenv.RequireEnv, "0")
	f = &fakeTB{TB: t}
	if c := testenv.Clamd(f); c != nil || !strings.Contains(f.skipped, "POPGATE_TEST_CLAMD") {
		t.Fatalf("Clamd without env: %v, skipped %q", c, f.skipped)
	}
	t.Setenv("POPGATE_TEST_REDIS", "")
	f = &fakeTB{TB: t}
	if a := testenv.Redis(f); a != "" || !strings.Contains(f.skipped, "POPGATE_TEST_REDIS") {
		t.Fatalf("Redis without env: %q, skipped %q", a, f.skipped)
	}
	t.Setenv("POPGATE_TEST_RSPAMD", "")
	f = &fakeTB{TB: t}
	if r := testenv.Rspamd(f); r != nil || !strings.Contains(f.skipped, "POPGATE_TEST_RSPAMD") {
		t.Fatalf("Rspamd without env: %v, skipped %q", r, f.skipped)
	}
	f = &fakeTB{TB: t}
	if p := testenv.LookPath(f, "no-such-program-popgate"); p != "" || f.skipped == "" {
		t.Fatalf("LookPath: %q, skipped %q", p, f.skipped)
	}
}

func TestNamesUnique(t *testing.T) {
	d := testenv.Dovecot(t)
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		u := d.NewUser(t)
		if seen[u.Name] || !strings.Contains(u.Name, strconv.Itoa(os.Getpid())) {
			t.Fatalf("name %q (seen before: %v)", u.Name, seen[u.Name])
		}
		seen[u.Name] = true
		if filepath.Dir(filepath.Dir(u.Maildir)) != d.MailRoot {
			t.Fatalf("Maildir %s not under %s", u.Maildir, d.MailRoot)
		}
	}
}

func equal(a, b []string) bool { return slices.Equal(a, b) }

func fileUID(fi os.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}

func trunc(b []byte) []byte {
	if len(b) > 200 {
		return append(b[:200:200], "..."...)
	}
	return b
}
