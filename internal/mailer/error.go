package mailer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/popgate/popgate/internal/mailtext"
)

// Stages of a send, in order, as Error.Stage names them.
const (
	StageConnect = "connect" // dial, greeting, EHLO/LHLO
	StageTLS     = "tls"     // STARTTLS and the TLS handshake
	StageAuth    = "auth"
	StageMail    = "mail" // MAIL FROM
	StageRcpt    = "rcpt" // RCPT TO
	StageData    = "data" // DATA, the message, and the replies to it
)

// maxMessage bounds the server text kept in an Error: it reaches logs and
// the command line.
const maxMessage = 300

// Error is every error Send returns.
type Error struct {
	Stage string // one of the Stage constants
	// Recipient is the recipient refused, at StageRcpt, or at StageData
	// with LMTP: the first one refused there (in the order given to Send),
	// while the others may have received the message.
	Recipient string
	// Code and EnhancedCode are the server's reply (RFC 5321, RFC 3463);
	// zero when the failure was not a reply (network, TLS, cancelled).
	Code         int
	EnhancedCode [3]int
	Message      string // the server's text: one line, no control characters, bounded
	// Temporary: a 4xx reply, a network failure or a cancelled context;
	// trying later may work.
	Temporary bool
	// Uncertain: the connection failed, timed out or was cancelled after
	// the final "." of DATA went out and before the server's reply, so the
	// message may have been delivered (see the package doc).
	Uncertain bool
	Err       error // the cause that is not a reply (network, TLS, context), for errors.Is
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("mailer: " + e.Stage)
	if e.Recipient != "" {
		b.WriteString(" <" + mailtext.Visible(e.Recipient, 256) + ">")
	}
	b.WriteString(": ")
	switch {
	case e.Code != 0:
		b.WriteString(strconv.Itoa(e.Code))
		if e.EnhancedCode != [3]int{} {
			fmt.Fprintf(&b, " %d.%d.%d", e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
		}
		if e.Message != "" {
			b.WriteString(" " + e.Message)
		}
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString(e.Message)
	}
	if e.Uncertain {
		b.WriteString(" (after the message was sent: it may have been delivered)")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// fail makes the Error for err at stage. A cancelled ctx is the cause of
// whatever the closed connection reported.
func fail(ctx context.Context, stage, rcpt string, err error) *Error {
	e := &Error{Stage: stage, Recipient: rcpt}
	var reply *smtp.SMTPError
	switch {
	case errors.As(err, &reply):
		e.Code, e.EnhancedCode = reply.Code, reply.EnhancedCode
		e.Message = mailtext.Text(reply.Message, maxMessage)
		e.Temporary = reply.Temporary()
	case ctx.Err() != nil:
		e.Err, e.Temporary = ctx.Err(), true
	default:
		var ne net.Error
		e.Err = err
		e.Temporary = errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
	}
	return e
}

// refuse is an Error of this side's making: a bad argument, or a server that
// lacks what the options require.
func refuse(stage, rcpt, why string) *Error {
	return &Error{Stage: stage, Recipient: rcpt, Message: why}
}

// replyError turns a reply read by net/textproto (the STARTTLS negotiation)
// into go-smtp's form, with the RFC 3463 code split off the text as go-smtp
// does for the replies it reads.
func replyError(err error) error {
	var te *textproto.Error
	if !errors.As(err, &te) {
		return err
	}
	code, text := enhanced(te.Msg)
	return &smtp.SMTPError{Code: te.Code, EnhancedCode: code, Message: text}
}

// enhanced splits a leading RFC 3463 status code ("4.7.0 text") off a
// reply's text; without one it returns a zero code and the text unchanged.
func enhanced(msg string) (smtp.EnhancedCode, string) {
	first, rest, _ := strings.Cut(msg, " ")
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return smtp.EnhancedCode{}, msg
	}
	var code smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) > 3 || p[0] == '+' {
			return smtp.EnhancedCode{}, msg
		}
		code[i] = n
	}
	return code, rest
}
