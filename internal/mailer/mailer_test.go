package mailer

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/textproto"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/popgate/popgate/internal/mailtext"
)

// Send leaves nothing running: no goroutine watching a context, no relay.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type want struct {
	stage     string
	rcpt      string
	code      int
	enhanced  [3]int
	temporary bool
	uncertain bool
	is        error // errors.Is must find it, when set
}

func checkErr(t *testing.T, err error, w want) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *mailer.Error", err, err)
	}
	got := want{e.Stage, e.Recipient, e.Code, e.EnhancedCode, e.Temporary, e.Uncertain, w.is}
	if got != w {
		t.Errorf("error %q:\n got %+v\nwant %+v", err, got, w)
	}
	if w.is != nil && !errors.Is(err, w.is) {
		t.Errorf("error %q is not %v", err, w.is)
	}
	return e
}

// fakeConn is the server side of one connection to a fake server: an
// in-process server, for the faults a real one does not show on demand.
type fakeConn struct {
	*textproto.Conn
	t    *testing.T
	raw  net.Conn
	done <-chan struct{} // closed when the test ends
}

// fake serves one connection on loopback with script and returns the
// address. The test's end stops a script that waits for it (hang).
func fake(t *testing.T, script func(f *fakeConn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		script(&fakeConn{Conn: textproto.NewConn(c), t: t, raw: c, done: done})
	}()
	t.Cleanup(func() {
		close(done)
		_ = ln.Close()
		<-finished
	})
	return ln.Addr().String()
}

// say writes reply lines.
func (f *fakeConn) say(lines ...string) {
	for _, l := range lines {
		if err := f.PrintfLine("%s", l); err != nil {
			runtime.Goexit()
		}
	}
}

// expect reads a command that must start with prefix and returns it. A
// closed connection ends the script.
func (f *fakeConn) expect(prefix string) string {
	l, err := f.ReadLine()
	if err != nil {
		f.t.Errorf("fake: waiting for %q: %v", prefix, err)
		runtime.Goexit()
	}
	if !strings.HasPrefix(l, prefix) {
		f.t.Errorf("fake: got %q, want %q…", l, prefix)
	}
	return l
}

// hello greets and answers EHLO or LHLO with the extensions given.
func (f *fakeConn) hello(exts ...string) {
	f.say("220 fake.test ESMTP")
	if l := f.expect(""); !strings.HasPrefix(l, "EHLO ") && !strings.HasPrefix(l, "LHLO ") {
		f.t.Errorf("fake: got %q, want EHLO or LHLO", l)
	}
	lines := append([]string{"fake.test"}, exts...)
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		f.say("250" + sep + l)
	}
}

// envelope accepts MAIL and n recipients.
func (f *fakeConn) envelope(n int) {
	f.expect("MAIL FROM:")
	f.say("250 2.1.0 ok")
	for i := 0; i < n; i++ {
		f.expect("RCPT TO:")
		f.say("250 2.1.5 ok")
	}
}

// data answers DATA and reads the message, up to the final dot.
func (f *fakeConn) data() string {
	f.expect("DATA")
	f.say("354 go ahead")
	b, err := f.ReadDotBytes()
	if err != nil {
		runtime.Goexit()
	}
	return string(b)
}

func (f *fakeConn) hang() { <-f.done }

// endless is a message without end, for servers that stop reading.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	const line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"
	for i := range p {
		p[i] = line[i%len(line)]
	}
	return len(p), nil
}

func send(ctx context.Context, t *testing.T, o Options, to ...string) error {
	t.Helper()
	if o.TLS == "" {
		o.TLS = TLSNone
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if len(to) == 0 {
		to = []string{"rcpt@example.com"}
	}
	return m.Send(ctx, "sender@example.org", to, strings.NewReader("Subject: x\r\n\r\n.dot\r\n"))
}

// TestSendSMTP: the happy path of the SMTP dialogue, as the server sees it.
func TestSendSMTP(t *testing.T) {
	addr := fake(t, func(f *fakeConn) {
		f.hello("8BITMIME", "PIPELINING")
		if l := f.expect("MAIL FROM:"); l != "MAIL FROM:<> BODY=8BITMIME" {
			f.t.Errorf("fake: %q", l)
		}
		f.say("250 2.1.0 ok")
		for _, want := range []string{"RCPT TO:<a@example.com>", "RCPT TO:<b@example.com>"} {
			if l := f.expect("RCPT TO:"); l != want {
				f.t.Errorf("fake: %q, want %q", l, want)
			}
			f.say("250 2.1.5 ok")
		}
		if got := f.data(); got != "Subject: x\n\n.dot\n" {
			f.t.Errorf("fake: message %q", got)
		}
		f.say("250 2.0.0 queued")
		f.expect("QUIT")
		f.say("221 bye")
	})
	m, err := New(Options{Address: addr, TLS: TLSNone, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Send(context.Background(), "", []string{"a@example.com", "b@example.com"},
		strings.NewReader("Subject: x\r\n\r\n.dot\r\n")); err != nil {
		t.Fatal(err)
	}
}

// TestFaults: each way a server can fail a send, and the Error it gives.
func TestFaults(t *testing.T) {
	const rcpt2 = "second@example.com"
	for _, tc := range []struct {
		name   string
		opts   Options
		to     []string
		script func(f *fakeConn)
		want   want
	}{
		{"greeting 421", Options{}, nil, func(f *fakeConn) {
			f.say("421 4.3.2 too busy")
		}, want{stage: StageConnect, code: 421, enhanced: [3]int{4, 3, 2}, temporary: true}},
		{"greeting 421 before STARTTLS", Options{TLS: TLSStartTLS}, nil, func(f *fakeConn) {
			f.say("421 4.3.2 too busy")
		}, want{stage: StageConnect, code: 421, enhanced: [3]int{4, 3, 2}, temporary: true}},
		{"sender refused", Options{}, nil, func(f *fakeConn) {
			f.hello()
			f.expect("MAIL FROM:<sender@example.org>")
			f.say("553 5.7.1 sender not allowed")
		}, want{stage: StageMail, code: 553, enhanced: [3]int{5, 7, 1}}},
		{"recipient refused 550", Options{}, []string{"rcpt@example.com", rcpt2}, func(f *fakeConn) {
			f.hello()
			f.envelope(1)
			f.expect("RCPT TO:<" + rcpt2 + ">")
			f.say("550 5.1.1 no such user")
		}, want{stage: StageRcpt, rcpt: rcpt2, code: 550, enhanced: [3]int{5, 1, 1}}},
		{"recipient refused 450", Options{}, nil, func(f *fakeConn) {
			f.hello()
			f.expect("MAIL")
			f.say("250 ok")
			f.expect("RCPT TO:<rcpt@example.com>")
			f.say("450 4.2.1 mailbox busy, try later")
		}, want{stage: StageRcpt, rcpt: "rcpt@example.com", code: 450, enhanced: [3]int{4, 2, 1}, temporary: true}},
		{"message refused after the dot", Options{}, nil, func(f *fakeConn) {
			f.hello()
			f.envelope(1)
			f.data()
			f.say("554 5.6.0 content rejected")
		}, want{stage: StageData, code: 554, enhanced: [3]int{5, 6, 0}}},
		{"no reply after the dot", Options{Timeout: 300 * time.Millisecond}, nil, func(f *fakeConn) {
			f.hello()
			f.envelope(1)
			f.data()
			f.hang()
		}, want{stage: StageData, temporary: true, uncertain: true, is: os.ErrDeadlineExceeded}},
		{"connection closed after the dot", Options{}, nil, func(f *fakeConn) {
			f.hello()
			f.envelope(1)
			f.data()
		}, want{stage: StageData, temporary: true, uncertain: true}},
		{"LMTP: one recipient refused after the dot", Options{LMTP: true}, []string{"rcpt@example.com", rcpt2}, func(f *fakeConn) {
			f.hello()
			f.envelope(2)
			f.data()
			f.say("250 2.0.0 <rcpt@example.com> saved", "452 4.2.2 <"+rcpt2+"> over quota")
		}, want{stage: StageData, rcpt: rcpt2, code: 452, enhanced: [3]int{4, 2, 2}, temporary: true}},
		{"LMTP: closed between the replies", Options{LMTP: true}, []string{"rcpt@example.com", rcpt2}, func(f *fakeConn) {
			f.hello()
			f.envelope(2)
			f.data()
			f.say("250 2.0.0 <rcpt@example.com> saved")
		}, want{stage: StageData, temporary: true, uncertain: true}},
		{"STARTTLS not offered", Options{TLS: TLSStartTLS}, nil, func(f *fakeConn) {
			f.hello("8BITMIME", "AUTH PLAIN")
			// The client leaves without a word more: above all no MAIL.
			if l, err := f.ReadLine(); err == nil {
				f.t.Errorf("fake: the client went on with %q", l)
			}
		}, want{stage: StageTLS}},
		{"STARTTLS refused", Options{TLS: TLSStartTLS}, nil, func(f *fakeConn) {
			f.hello("STARTTLS")
			f.expect("STARTTLS")
			f.say("454 4.7.0 TLS not available")
		}, want{stage: StageTLS, code: 454, enhanced: [3]int{4, 7, 0}, temporary: true}},
		{"STARTTLS with a reply injected ahead of TLS", Options{TLS: TLSStartTLS}, nil, func(f *fakeConn) {
			f.hello("STARTTLS")
			f.expect("STARTTLS")
			_, _ = f.raw.Write([]byte("220 go ahead\r\n250 2.1.0 injected\r\n"))
			f.hang()
		}, want{stage: StageTLS}},
		{"AUTH refused", Options{Username: "popgate", Password: "s3cret-pw"}, nil, func(f *fakeConn) {
			f.hello("AUTH PLAIN")
			f.expect("AUTH PLAIN ")
			f.say("535 5.7.8 authentication failed")
		}, want{stage: StageAuth, code: 535, enhanced: [3]int{5, 7, 8}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Address = fake(t, tc.script)
			err := send(context.Background(), t, tc.opts, tc.to...)
			e := checkErr(t, err, tc.want)
			if tc.opts.Password != "" && strings.Contains(err.Error(), tc.opts.Password) {
				t.Errorf("the error shows the password: %q", err)
			}
			if e.Code == 0 && e.Err == nil && e.Message == "" {
				t.Errorf("error %q says nothing", err)
			}
			t.Logf("%v", err)
		})
	}
}

// TestConnectionRefused: nothing listens; a temporary failure to connect.
func TestConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	err = send(context.Background(), t, Options{Address: addr})
	checkErr(t, err, want{stage: StageConnect, temporary: true, is: syscall.ECONNREFUSED})
}

// TestStalledData: a server that stops reading mid-message. The DATA phase
// as a whole is bounded by Timeout, and cancelling the context ends it at
// once; the final dot never went out, so delivery is not uncertain.
func TestStalledData(t *testing.T) {
	stall := func(f *fakeConn) {
		f.hello()
		f.envelope(1)
		f.expect("DATA")
		f.say("354 go ahead")
		f.hang() // reads nothing more: the client's writes fill the buffers and block
	}
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		cancel  time.Duration // cancel the context this long after the start; 0: never
		want    want
		max     time.Duration
	}{
		{"timeout", 500 * time.Millisecond, 0,
			want{stage: StageData, temporary: true, is: os.ErrDeadlineExceeded}, 3 * time.Second},
		{"cancelled", time.Minute, 300 * time.Millisecond,
			want{stage: StageData, temporary: true, is: context.Canceled}, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(Options{Address: fake(t, stall), TLS: TLSNone, Timeout: tc.timeout})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if tc.cancel > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(tc.cancel, cancel)
				defer cancel()
			}
			start := time.Now()
			err = m.Send(ctx, "", []string{"rcpt@example.com"}, endless{})
			took := time.Since(start)
			checkErr(t, err, tc.want)
			if took > tc.max {
				t.Errorf("Send took %v, want at most %v", took, tc.max)
			}
			t.Logf("%v after %v", err, took)
		})
	}
}

// TestCancelledAwaitingReply: cancelled after the final dot, waiting for
// the reply: the message may have been delivered.
func TestCancelledAwaitingReply(t *testing.T) {
	sent := make(chan struct{})
	addr := fake(t, func(f *fakeConn) {
		f.hello()
		f.envelope(1)
		f.data()
		close(sent)
		f.hang()
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sent
		cancel()
	}()
	err := send(ctx, t, Options{Address: addr, Timeout: time.Minute})
	cancel()
	checkErr(t, err, want{stage: StageData, temporary: true, uncertain: true, is: context.Canceled})
}

// TestResetBeforeDot: the connection is reset while the end of the message
// (and the final dot) waits to be written: the send fails for sure, not
// uncertainly.
func TestResetBeforeDot(t *testing.T) {
	reset := make(chan struct{})
	addr := fake(t, func(f *fakeConn) {
		f.hello()
		f.envelope(1)
		f.expect("DATA")
		f.say("354 go ahead")
		_ = f.raw.(*net.TCPConn).SetLinger(0) // close with RST
		_ = f.raw.Close()
		close(reset)
	})
	m, err := New(Options{Address: addr, TLS: TLSNone, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The message stays in the client's buffer until the final flush,
	// which comes after the reset (on loopback, at once).
	msg := io.MultiReader(&gate{reset, 100 * time.Millisecond}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
	err = m.Send(context.Background(), "", []string{"rcpt@example.com"}, msg)
	checkErr(t, err, want{stage: StageData, temporary: true})
	t.Log(err)
}

// gate's first read waits for open to close, and then for settle.
type gate struct {
	open   <-chan struct{}
	settle time.Duration
}

func (g *gate) Read([]byte) (int, error) {
	<-g.open
	time.Sleep(g.settle)
	return 0, io.EOF
}

// TestAuth: AUTH PLAIN with the EHLO name given, to a loopback server over
// plain text.
func TestAuth(t *testing.T) {
	addr := fake(t, func(f *fakeConn) {
		f.say("220 fake.test")
		f.expect("EHLO relay.example.org")
		f.say("250-fake.test", "250 AUTH PLAIN LOGIN")
		want := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00popgate\x00s3cret-pw"))
		if l := f.expect("AUTH PLAIN"); l != want {
			f.t.Errorf("fake: %q, want %q", l, want)
		}
		f.say("235 2.7.0 ok")
		f.envelope(1)
		f.data()
		f.say("250 2.0.0 queued")
		f.expect("QUIT")
		f.say("221 bye")
	})
	o := Options{Address: addr, Username: "popgate", Password: "s3cret-pw", Helo: "relay.example.org"}
	if err := send(context.Background(), t, o); err != nil {
		t.Fatal(err)
	}
}

// TestServerText: what the server says is cleaned and bounded before it
// reaches an Error (and so a log or a terminal).
func TestServerText(t *testing.T) {
	addr := fake(t, func(f *fakeConn) {
		f.hello()
		f.envelope(0)
		f.expect("RCPT")
		f.say("550-5.1.1 first \x1b[2J line", "550 5.1.1 "+strings.Repeat("long ", 300))
	})
	e := checkErr(t, send(context.Background(), t, Options{Address: addr}),
		want{stage: StageRcpt, rcpt: "rcpt@example.com", code: 550, enhanced: [3]int{5, 1, 1}})
	if len(e.Message) > maxMessage || strings.ContainsFunc(e.Message, mailtext.IsControl) ||
		!strings.HasPrefix(e.Message, "first [2J line long long") {
		t.Errorf("message (%d bytes): %q", len(e.Message), e.Message)
	}
}

// TestEnvelopeRefused: addresses that would break out of their command are
// refused before connecting (the address has nothing listening).
func TestEnvelopeRefused(t *testing.T) {
	m, err := New(Options{Address: "127.0.0.1:1", TLS: TLSNone})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from string
		to   []string
		want want
	}{
		{"a@example.org\r\nRCPT TO:<evil@example.net>", []string{"b@example.com"}, want{stage: StageMail}},
		{"a@example.org", nil, want{stage: StageRcpt}},
		{"a@example.org", []string{"b@example.com> NOTIFY=NEVER"}, want{stage: StageRcpt, rcpt: "b@example.com> NOTIFY=NEVER"}},
		{"a@example.org", []string{""}, want{stage: StageRcpt}},
	} {
		err := m.Send(context.Background(), tc.from, tc.to, strings.NewReader("x\r\n"))
		checkErr(t, err, tc.want)
		if strings.ContainsAny(err.Error(), "\r\n") {
			t.Errorf("error %q holds a line break", err)
		}
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"plain", Options{Address: "mx.example.com:25", TLS: TLSNone}, true},
		{"no port", Options{Address: "mx.example.com", TLS: TLSNone}, false},
		{"no host", Options{Address: ":25", TLS: TLSNone}, false},
		{"no TLS mode", Options{Address: "mx.example.com:25"}, false},
		{"unknown TLS mode", Options{Address: "mx.example.com:25", TLS: "ssl"}, false},
		{"AUTH over TLS", Options{Address: "mx.example.com:587", TLS: TLSStartTLS, Username: "u", Password: "pw-Secret-9"}, true},
		{"AUTH in plain text to loopback", Options{Address: "127.0.0.1:25", TLS: TLSNone, Username: "u", Password: "pw-Secret-9"}, true},
		{"AUTH in plain text to ::1", Options{Address: "[::1]:25", TLS: TLSNone, Username: "u", Password: "pw-Secret-9"}, true},
		{"AUTH in plain text to localhost", Options{Address: "localhost:25", TLS: TLSNone, Username: "u", Password: "pw-Secret-9"}, true},
		{"AUTH in plain text over the network", Options{Address: "192.0.2.1:25", TLS: TLSNone, Username: "u", Password: "pw-Secret-9"}, false},
		{"AUTH in plain text to a name", Options{Address: "mx.example.com:25", TLS: TLSNone, Username: "u", Password: "pw-Secret-9"}, false},
		{"user without password", Options{Address: "mx.example.com:587", TLS: TLSImplicit, Username: "u"}, false},
		{"NUL in the password", Options{Address: "mx.example.com:587", TLS: TLSImplicit, Username: "u", Password: "p\x00q"}, false},
		{"helo with a space", Options{Address: "mx.example.com:25", TLS: TLSNone, Helo: "a b"}, false},
		{"helo with CRLF", Options{Address: "mx.example.com:25", TLS: TLSNone, Helo: "a\r\nMAIL FROM:<x>"}, false},
	} {
		m, err := New(tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%s: New: %v", tc.name, err)
			continue
		}
		if err != nil {
			if tc.o.Password != "" && strings.Contains(err.Error(), tc.o.Password) {
				t.Errorf("%s: the error shows the password: %q", tc.name, err)
			}
			continue
		}
		if m.o.Timeout != DefaultTimeout || m.o.Helo == "" {
			t.Errorf("%s: defaults: timeout %v, helo %q", tc.name, m.o.Timeout, m.o.Helo)
		}
		if tc.o.TLS != TLSNone && (m.tls.ServerName != "mx.example.com" || m.tls.MinVersion < 0x0303) {
			t.Errorf("%s: TLS config: name %q, min version %x", tc.name, m.tls.ServerName, m.tls.MinVersion)
		}
	}
}

func FuzzEnhanced(f *testing.F) {
	for _, s := range []string{"5.1.1 no such user", "4.7.0", "2.0.0 <a@b> saved", "no code", "5.1 x",
		"5.1.1.1 x", "+5.1.1 x", "5.-1.1 x", "5.1.1000 x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		code, text := enhanced(msg)
		if code == [3]int{} && (text == msg || strings.HasPrefix(msg, "0.0.0")) {
			return
		}
		for _, n := range code {
			if n < 0 || n > 999 {
				t.Fatalf("%q: code %v", msg, code)
			}
		}
		if !strings.HasSuffix(msg, text) || len(text) >= len(msg) {
			t.Fatalf("%q: text %q", msg, text)
		}
	})
}
