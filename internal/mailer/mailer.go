package mailer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/popgate/popgate/internal/mailtext"
)

// TLS modes, the values of Options.TLS.
const (
	TLSNone     = "none"
	TLSStartTLS = "starttls" // required: a server without STARTTLS fails the send
	TLSImplicit = "implicit"
)

// DefaultTimeout is Options.Timeout when it is not set.
const DefaultTimeout = 60 * time.Second

// Options say where and how to deliver.
type Options struct {
	Address   string      // host:port
	LMTP      bool        // speak LMTP (LHLO, a reply per recipient after DATA) instead of SMTP
	TLS       string      // TLSNone, TLSStartTLS or TLSImplicit
	TLSConfig *tls.Config // roots and server name; nil: the system roots and the host of Address
	// Username and Password: AUTH PLAIN when set, over TLS or to a loopback
	// address only.
	Username, Password string
	Helo               string        // the name in EHLO/LHLO; default os.Hostname()
	Timeout            time.Duration // connect, each command, DATA as a whole; default DefaultTimeout
}

// Mailer sends messages as its Options say. It is safe for concurrent use.
type Mailer struct {
	o   Options
	tls *tls.Config // nil with TLSNone
}

// New checks o; it does not connect.
func New(o Options) (*Mailer, error) {
	host, port, err := net.SplitHostPort(o.Address)
	if err != nil || host == "" || port == "" {
		return nil, fmt.Errorf("mailer: address %q is not host:port", o.Address)
	}
	switch o.TLS {
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		return nil, fmt.Errorf("mailer: tls %q is not %q, %q or %q", o.TLS, TLSNone, TLSStartTLS, TLSImplicit)
	}
	if (o.Username == "") != (o.Password == "") {
		return nil, errors.New("mailer: AUTH needs both a user name and a password")
	}
	if strings.ContainsRune(o.Username+o.Password, 0) {
		return nil, errors.New("mailer: the user name or password holds a NUL byte")
	}
	if o.Username != "" && o.TLS == TLSNone && !loopback(host) {
		return nil, fmt.Errorf("mailer: AUTH over plain text to %s: use tls %q or %q (plain text only to a loopback address)",
			host, TLSStartTLS, TLSImplicit)
	}
	if o.Helo == "" {
		if o.Helo, _ = os.Hostname(); o.Helo == "" {
			o.Helo = "localhost"
		}
	}
	if !plain(o.Helo) {
		return nil, fmt.Errorf("mailer: helo %q is not a host name", o.Helo)
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	m := &Mailer{o: o}
	if o.TLS != TLSNone {
		m.tls = &tls.Config{}
		if o.TLSConfig != nil {
			m.tls = o.TLSConfig.Clone()
		}
		if m.tls.ServerName == "" {
			m.tls.ServerName = host
		}
		if m.tls.MinVersion == 0 {
			m.tls.MinVersion = tls.VersionTLS12
		}
	}
	return m, nil
}

// Send delivers msg (CRLF lines, sent as they are; dot-stuffing is done
// here) from the envelope sender from ("" is the null sender <>) to every
// address in to, over a connection of its own. It returns nil only when the
// server accepted the message for every recipient; otherwise an *Error.
// Cancelling ctx closes the connection.
func (m *Mailer) Send(ctx context.Context, from string, to []string, msg io.Reader) error {
	if err := envelope(from, to); err != nil {
		return err
	}
	d := net.Dialer{Timeout: m.o.Timeout}
	raw, err := d.DialContext(ctx, "tcp", m.o.Address)
	if err != nil {
		return fail(ctx, StageConnect, "", err)
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	g := &guard{Conn: raw}
	c, err := m.open(ctx, g)
	if err != nil {
		return err
	}
	if err := m.transact(ctx, c, g, from, to, msg); err != nil {
		return err
	}
	_ = c.Quit() // delivered; a failing QUIT changes nothing
	return nil
}

// open brings the connection to the point where MAIL may be sent: TLS,
// EHLO/LHLO, AUTH.
func (m *Mailer) open(ctx context.Context, g *guard) (*smtp.Client, error) {
	var conn net.Conn = g
	var err error
	switch m.o.TLS {
	case TLSImplicit:
		conn, err = m.handshake(ctx, g)
	case TLSStartTLS:
		conn, err = m.startTLS(ctx, g)
	}
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	if m.o.LMTP {
		c = smtp.NewClientLMTP(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = m.o.Timeout, m.o.Timeout
	if err := c.Hello(m.o.Helo); err != nil {
		return nil, fail(ctx, StageConnect, "", err)
	}
	if m.o.Username == "" {
		return c, nil
	}
	// New allowed plain text to "localhost" by name: hold it to the address
	// actually reached.
	if peer, _, _ := net.SplitHostPort(g.RemoteAddr().String()); m.o.TLS == TLSNone && !loopback(peer) {
		return nil, refuse(StageAuth, "", "AUTH over plain text to "+peer+", not a loopback address")
	}
	if err := c.Auth(sasl.NewPlainClient("", m.o.Username, m.o.Password)); err != nil {
		return nil, fail(ctx, StageAuth, "", err)
	}
	return c, nil
}

// transact runs MAIL, RCPT and DATA.
func (m *Mailer) transact(ctx context.Context, c *smtp.Client, g *guard, from string, to []string, msg io.Reader) error {
	var opts *smtp.MailOptions
	if !ascii(from) || !allASCII(to) {
		opts = &smtp.MailOptions{UTF8: true} // go-smtp fails it when the server lacks SMTPUTF8
	}
	if err := c.Mail(from, opts); err != nil {
		return fail(ctx, StageMail, "", err)
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return fail(ctx, StageRcpt, rcpt, err)
		}
	}
	// go-smtp bounds each read after DATA, but not the writing of the
	// message: the ceiling bounds the whole phase.
	g.ceiling = time.Now().Add(m.o.Timeout)
	w, err := c.Data()
	if err != nil {
		return fail(ctx, StageData, "", err)
	}
	if _, err := io.Copy(w, msg); err != nil {
		// Return without the final dot: the server discards a message
		// that was not ended, so a truncated one is never delivered.
		return fail(ctx, StageData, "", err)
	}
	reads := g.reads
	if m.o.LMTP {
		_, err = w.CloseWithLMTPResponse()
	} else {
		_, err = w.CloseWithResponse()
	}
	switch replies := err.(type) {
	case nil:
		return nil
	case *smtp.SMTPError:
		return fail(ctx, StageData, "", err)
	case smtp.LMTPDataError: // every recipient answered; some refused
		for _, rcpt := range to {
			if r := replies[rcpt]; r != nil {
				return fail(ctx, StageData, rcpt, r)
			}
		}
		return fail(ctx, StageData, "", err)
	case interface{ Unwrap() []error }:
		// go-smtp joins the failure that cut the LMTP replies short with
		// the refusals read before it: the failure is what matters.
		err = replies.Unwrap()[0]
	}
	e := fail(ctx, StageData, "", err)
	// textproto reads the reply only once the final dot is flushed: a read
	// after the message means the dot went out.
	e.Uncertain = g.reads > reads
	return e
}

// handshake runs the TLS client handshake on g.
func (m *Mailer) handshake(ctx context.Context, g *guard) (*tls.Conn, error) {
	_ = g.SetDeadline(time.Now().Add(m.o.Timeout))
	tc := tls.Client(g, m.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fail(ctx, StageTLS, "", err)
	}
	return tc, nil
}

// guard is the network connection under go-smtp and TLS. It counts reads,
// which tells Send whether the final dot went out, and it caps every
// deadline at the end of the DATA phase once that has begun. Only the
// goroutine of Send uses it.
type guard struct {
	net.Conn
	reads   int
	ceiling time.Time // zero: no cap
}

func (g *guard) Read(p []byte) (int, error) {
	g.reads++
	return g.Conn.Read(p)
}

// SetDeadline is what go-smtp (and TLS) call; go-smtp sets a deadline per
// command and clears it after.
func (g *guard) SetDeadline(t time.Time) error {
	if !g.ceiling.IsZero() && (t.IsZero() || t.After(g.ceiling)) {
		t = g.ceiling
	}
	return g.Conn.SetDeadline(t)
}

func envelope(from string, to []string) error {
	if from != "" && !plain(from) {
		return refuse(StageMail, "", "invalid sender address")
	}
	if len(to) == 0 {
		return refuse(StageRcpt, "", "no recipients")
	}
	for _, rcpt := range to {
		if !plain(rcpt) {
			return refuse(StageRcpt, rcpt, "invalid recipient address")
		}
	}
	return nil
}

// plain reports a non-empty address or host name that cannot break out of
// its place in a command: no white space, control characters or angle
// brackets.
func plain(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return r == ' ' || r == '<' || r == '>' || mailtext.IsControl(r) || mailtext.IsInvisible(r)
	})
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !ascii(s) {
			return false
		}
	}
	return true
}
