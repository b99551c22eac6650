package mailer

import (
	"context"
	"io"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// startTLS negotiates STARTTLS (RFC 3207) on g itself: go-smtp does it only
// after an EHLO as "localhost", and never for LMTP. It returns the TLS
// connection for go-smtp, which starts by reading a greeting: the server
// greeted once, before STARTTLS, so a greeting is replayed in front.
func (m *Mailer) startTLS(ctx context.Context, g *guard) (net.Conn, error) {
	tp := textproto.NewConn(g) // not closed: closing it would close g
	step := func(stage string, expect int, cmd string) (string, error) {
		_ = g.SetDeadline(time.Now().Add(m.o.Timeout))
		if cmd != "" {
			if err := tp.PrintfLine("%s", cmd); err != nil {
				return "", fail(ctx, stage, "", err)
			}
		}
		_, text, err := tp.ReadResponse(expect)
		if err != nil {
			return "", fail(ctx, stage, "", replyError(err))
		}
		return text, nil
	}
	hello := "EHLO "
	if m.o.LMTP {
		hello = "LHLO "
	}
	if _, err := step(StageConnect, 220, ""); err != nil {
		return nil, err
	}
	exts, err := step(StageConnect, 250, hello+m.o.Helo)
	if err != nil {
		return nil, err
	}
	if !offers(exts, "STARTTLS") {
		return nil, refuse(StageTLS, "", "the server does not offer STARTTLS")
	}
	if _, err := step(StageTLS, 220, "STARTTLS"); err != nil {
		return nil, err
	}
	if tp.R.Buffered() > 0 {
		// Lines sent before the handshake would be read as if they came
		// over TLS (CVE-2011-0411).
		return nil, refuse(StageTLS, "", "the server sent data ahead of the TLS handshake")
	}
	tc, err := m.handshake(ctx, g)
	if err != nil {
		return nil, err
	}
	return &replayed{Conn: tc, r: io.MultiReader(strings.NewReader("220 TLS\r\n"), tc)}, nil
}

// offers reports whether an EHLO/LHLO reply's text (one extension per line
// after the first) lists ext.
func offers(reply, ext string) bool {
	lines := strings.Split(reply, "\n")
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], ext) {
			return true
		}
	}
	return false
}

// replayed is a connection whose reads start with r.
type replayed struct {
	net.Conn
	r io.Reader
}

func (c *replayed) Read(p []byte) (int, error) { return c.r.Read(p) }
