package mailer

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// hardMessage holds what a mail client must not alter: a line that is a dot
// alone and lines that start with dots, a 10,000-byte line, 8-bit bytes
// (Latin-1, UTF-8, 0xFF), a body of more than 2 MB, and a last line that
// starts with a dot.
func hardMessage() []byte {
	var b bytes.Buffer
	b.WriteString("From: Sender <sender@example.org>\r\nTo: rcpt@example.com\r\n" +
		"Subject: mailer test\r\nMessage-ID: <mailer-test@example.org>\r\n\r\n")
	b.WriteString(".\r\n..\r\n.leading dot\r\n")
	b.WriteString(strings.Repeat("L", 10000) + "\r\n")
	b.WriteString("8-bit: caf\xe9 caf\xc3\xa9 \xff\x80\r\n")
	for n := 0; b.Len() < 2<<20; n++ {
		fmt.Fprintf(&b, "line %07d %s\r\n", n, strings.Repeat("x", 64))
	}
	b.WriteString(".last\r\n")
	return b.Bytes()
}

// delivered returns the user's only message file. Dovecot stores LF line
// ends (and serves CRLF again over POP3); everything else is as received,
// below the trace fields it adds on top.
func delivered(t *testing.T, u *testenv.User) []byte {
	t.Helper()
	files := u.Files(t)
	if len(files) != 1 {
		t.Fatalf("%d messages in %s, want 1", len(files), u.Maildir)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tlsRelay serves implicit TLS on loopback in front of addr: the test
// Dovecot's LMTP offers STARTTLS only, and this lets implicit TLS reach it.
func tlsRelay(t *testing.T, cfg *tls.Config, addr string) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", addr)
				if err != nil {
					return
				}
				defer up.Close()
				go func() {
					_, _ = io.Copy(up, c)
					_ = up.(*net.TCPConn).CloseWrite()
				}()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestDovecotLMTP delivers to the real Dovecot over LMTP, in each TLS mode,
// and finds the message stored byte for byte below Dovecot's trace fields.
func TestDovecotLMTP(t *testing.T) {
	d := testenv.Dovecot(t)
	msg := hardMessage()
	stored := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	for _, tc := range []struct {
		name string
		opts func() Options
	}{
		{"none", func() Options { return Options{Address: d.LMTP, TLS: TLSNone} }},
		{"starttls", func() Options {
			return Options{Address: d.LMTP, TLS: TLSStartTLS, TLSConfig: d.ClientTLSConfig(t)}
		}},
		{"implicit", func() Options {
			return Options{Address: tlsRelay(t, d.ServerTLSConfig(t), d.LMTP), TLS: TLSImplicit, TLSConfig: d.ClientTLSConfig(t)}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := d.NewUser(t)
			o := tc.opts()
			o.LMTP, o.Helo, o.Timeout = true, "popgate.test", 20*time.Second
			m, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Send(context.Background(), "", []string{u.Name + "@example.com"}, bytes.NewReader(msg)); err != nil {
				t.Fatalf("Send: %v", err)
			}
			got := delivered(t, u)
			if !bytes.HasSuffix(got, stored) {
				i := 0
				for i < len(stored) && i < len(got) && got[len(got)-1-i] == stored[len(stored)-1-i] {
					i++
				}
				t.Fatalf("stored message (%d bytes) does not end with the %d bytes sent; last %d bytes match",
					len(got), len(stored), i)
			}
			head := string(got[:len(got)-len(stored)])
			if !strings.HasPrefix(head, "Return-Path: <>\n") || !strings.Contains(head, "Delivered-To: "+u.Name+"@example.com\n") {
				t.Errorf("trace fields: %q", head)
			}
		})
	}
}

// TestDovecotTLSRefused: a certificate that is not trusted, or not for the
// name, fails the TLS stage, permanently, before anything is delivered.
func TestDovecotTLSRefused(t *testing.T) {
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	wrongName := d.ClientTLSConfig(t)
	wrongName.ServerName = "mail.example.net"
	for _, o := range []Options{
		{Address: d.LMTP, TLS: TLSStartTLS, TLSConfig: wrongName},
		{Address: d.LMTP, TLS: TLSStartTLS}, // system roots: the test CA is not among them
		{Address: tlsRelay(t, d.ServerTLSConfig(t), d.LMTP), TLS: TLSImplicit},
	} {
		o.LMTP, o.Timeout = true, 10*time.Second
		m, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		err = m.Send(context.Background(), "", []string{u.Name + "@example.com"}, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
		checkErr(t, err, want{stage: StageTLS})
		t.Logf("%s %s: %v", o.TLS, o.Address, err)
	}
	if files := u.Files(t); len(files) != 0 {
		t.Errorf("delivered: %v", files)
	}
}

// TestDovecotRefusesRecipient: Dovecot refuses an unknown user at RCPT, for
// good; with a known user beside it, the error names the unknown one and
// nothing is delivered to either.
func TestDovecotRefusesRecipient(t *testing.T) {
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	m, err := New(Options{Address: d.LMTP, TLS: TLSNone, LMTP: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	unknown := "nosuchuser-" + u.Name + "@example.com"
	for _, to := range [][]string{{unknown}, {u.Name + "@example.com", unknown}} {
		err := m.Send(context.Background(), "sender@example.org", to, strings.NewReader("Subject: x\r\n\r\nx\r\n"))
		checkErr(t, err, want{stage: StageRcpt, rcpt: unknown, code: 550, enhanced: [3]int{5, 1, 1}})
		if !strings.Contains(err.Error(), unknown) {
			t.Errorf("%q does not name %s", err, unknown)
		}
		t.Logf("%v: %v", to, err)
	}
	if files := u.Files(t); len(files) != 0 {
		t.Errorf("delivered: %v", files)
	}
}

// TestDovecotReaderFails: a message that cannot be read whole is not
// delivered, not even in part: Send stops without the final dot.
func TestDovecotReaderFails(t *testing.T) {
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	m, err := New(Options{Address: d.LMTP, TLS: TLSNone, LMTP: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk read error")
	msg := io.MultiReader(bytes.NewReader(hardMessage()), &failing{boom})
	err = m.Send(context.Background(), "", []string{u.Name + "@example.com"}, msg)
	checkErr(t, err, want{stage: StageData, is: boom})
	// The cut session is over before the next one is accepted: the next
	// message arrives alone.
	next := []byte("Subject: next\r\n\r\nnext\r\n")
	if err := m.Send(context.Background(), "", []string{u.Name + "@example.com"}, bytes.NewReader(next)); err != nil {
		t.Fatal(err)
	}
	if got := delivered(t, u); !bytes.HasSuffix(got, []byte("Subject: next\n\nnext\n")) {
		t.Errorf("delivered: %q", got)
	}
}

type failing struct{ err error }

func (f *failing) Read([]byte) (int, error) { return 0, f.err }

// TestAuthAfterSTARTTLS: with STARTTLS, the EHLO and AUTH come only over
// TLS. The test Dovecot's LMTP has no AUTH, so a fake server plays the MTA,
// with the test certificate.
func TestAuthAfterSTARTTLS(t *testing.T) {
	d := testenv.Dovecot(t)
	serverTLS := d.ServerTLSConfig(t)
	addr := fake(t, func(f *fakeConn) {
		f.hello("STARTTLS") // no AUTH offered in plain text
		f.expect("STARTTLS")
		f.say("220 2.0.0 ready")
		tc := tls.Server(f.raw, serverTLS)
		if err := tc.Handshake(); err != nil {
			f.t.Errorf("fake: handshake: %v", err)
			return
		}
		s := &fakeConn{Conn: textproto.NewConn(tc), t: f.t, raw: tc, done: f.done}
		s.expect("EHLO relay.example.org")
		s.say("250-fake.test", "250 AUTH PLAIN")
		want := "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00popgate\x00s3cret-pw"))
		if l := s.expect("AUTH PLAIN"); l != want {
			s.t.Errorf("fake: %q, want %q", l, want)
		}
		s.say("235 2.7.0 ok")
		s.envelope(1)
		s.data()
		s.say("250 2.0.0 queued")
		s.expect("QUIT")
		s.say("221 bye")
	})
	o := Options{Address: addr, TLS: TLSStartTLS, TLSConfig: d.ClientTLSConfig(t),
		Username: "popgate", Password: "s3cret-pw", Helo: "relay.example.org"}
	if err := send(context.Background(), t, o); err != nil {
		t.Fatal(err)
	}
}
