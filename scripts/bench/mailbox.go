package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"log"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/testenv"
)

// benchTB lets the harness use internal/testenv (NewUser, AddMessages) outside
// of `go test`. Only the methods testenv calls are implemented; the embedded
// nil testing.TB makes any other call panic, which would be a bug here.
// Fatalf and Skipf abort by panicking with tbAbort, which withTB recovers.
type benchTB struct {
	testing.TB
	cleanups []func()
}

type tbAbort struct{ msg string }

func (t *benchTB) Helper()                         {}
func (t *benchTB) Failed() bool                    { return false } // always remove bench users
func (t *benchTB) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (t *benchTB) Logf(format string, args ...any) { log.Printf(format, args...) }
func (t *benchTB) Fatalf(format string, args ...any) {
	panic(tbAbort{fmt.Sprintf(format, args...)})
}
func (t *benchTB) Skipf(format string, args ...any) {
	panic(tbAbort{fmt.Sprintf(format, args...)})
}

// runCleanups runs the registered cleanups (user files and Maildirs) in
// reverse order, as testing does.
func (t *benchTB) runCleanups() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}

// withTB runs f and turns a testenv abort into an error.
func withTB(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			a, ok := r.(tbAbort)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("testenv: %s", a.msg)
		}
	}()
	f()
	return nil
}

type benchUser struct {
	name, password string
}

// createMailboxes makes n Dovecot users of the test environment, each holding
// the same msgs (POP3 numbers 1..len(msgs) in order). They are removed by
// tb.runCleanups.
func createMailboxes(tb *benchTB, n int, msgs [][]byte) ([]benchUser, error) {
	users := make([]benchUser, 0, n)
	err := withTB(func() {
		env := testenv.Dovecot(tb)
		for range n {
			u := env.NewUser(tb)
			u.AddMessages(tb, msgs...)
			users = append(users, benchUser{name: u.Name, password: u.Password})
		}
	})
	return users, err
}

// words for the text part; the exact prose does not matter, its shape does:
// short lines of mixed words, a few of them with dots.
var words = strings.Fields(`the of and to in a is that for it as was with be by on not he this are or
his from at which but have an they you were her she there been one all we their has would when if
so no will more can out said what up its about into than them only other new some could time these
two may then first any like now my such make over our even most me state after also made many did
must before back see through way where get much go well your know should down work year because
come people just say each those take day good how long very mail server client message proxy filter
gateway attachment invoice report quarter budget meeting schedule review draft final version e.g.
i.e. etc. Mr. Dr. www.example.com 3.14 v1.2.3`)

// makeMessage builds message i (1-based) of exactly size bytes, CRLF line
// ends, deterministic: headers, a multipart/mixed body with a plain-text part
// (a few lines start with "." so dot-stuffing is exercised) and a base64
// attachment of pseudo-random bytes that makes up most of the size.
// Dovecot serves a CRLF-stored message byte for byte.
func makeMessage(i int, size int) ([]byte, error) {
	rng := rand.New(rand.NewPCG(uint64(i), 0x706f7067617465)) // "popgate"
	boundary := fmt.Sprintf("=_bench_%08x", rng.Uint32())
	var head bytes.Buffer
	fmt.Fprintf(&head, "Return-Path: <sender%d@example.com>\r\n", i%7)
	fmt.Fprintf(&head, "Received: from mx%d.example.com (mx%d.example.com [192.0.2.%d])\r\n\tby mail.example.net with ESMTPS id %016x\r\n\tfor <bench@example.net>; Mon, 2 Feb 2026 10:%02d:%02d +0000\r\n",
		i%3, i%3, 10+i%200, rng.Uint64(), (i/60)%60, i%60)
	fmt.Fprintf(&head, "From: Sender %d <sender%d@example.com>\r\n", i%7, i%7)
	head.WriteString("To: Bench User <bench@example.net>\r\n")
	fmt.Fprintf(&head, "Subject: Quarterly report %d, draft %d\r\n", i, rng.IntN(9)+1)
	fmt.Fprintf(&head, "Date: Mon, 2 Feb 2026 10:%02d:%02d +0000\r\n", (i/60)%60, i%60)
	fmt.Fprintf(&head, "Message-ID: <bench.%d.%016x@example.com>\r\n", i, rng.Uint64())
	head.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&head, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	head.WriteString("This is a multi-part message in MIME format.\r\n\r\n")
	fmt.Fprintf(&head, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)

	var text bytes.Buffer
	for l := 0; l < 40; l++ {
		line := ""
		if l%13 == 5 {
			line = "." // a line that starts with a dot, as in quoted lists
		}
		for len(line) < 60 {
			if line != "" && line != "." {
				line += " "
			}
			line += words[rng.IntN(len(words))]
		}
		text.WriteString(line)
		text.WriteString("\r\n")
	}
	text.WriteString("..\r\n-- \r\nSender\r\n\r\n")

	attHead := fmt.Sprintf("--%s\r\nContent-Type: application/pdf; name=\"report-%d.pdf\"\r\nContent-Disposition: attachment; filename=\"report-%d.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
	tail := fmt.Sprintf("--%s--\r\n", boundary)

	fixed := head.Len() + text.Len() + len(attHead) + len(tail)
	// The attachment is whole 76-character base64 lines (57 raw bytes each,
	// so the encoding stays valid); the rest of the size goes into one
	// filler line of the text part (at least CRLF).
	const b64Line = 76 + 2
	rest := size - fixed - 2
	if rest < 0 {
		return nil, fmt.Errorf("-size %d is too small for a message (at least %d bytes)", size, fixed+2)
	}
	lines := rest / b64Line
	filler := rest - lines*b64Line // plus the CRLF counted above
	raw := make([]byte, 57*lines)
	for k := range raw {
		raw[k] = byte(rng.Uint32())
	}
	enc := base64.StdEncoding.EncodeToString(raw)

	var m bytes.Buffer
	m.Grow(size)
	m.Write(head.Bytes())
	m.Write(text.Bytes())
	fill := make([]byte, filler)
	for k := range fill {
		fill[k] = 'a' + byte(k%26)
	}
	m.Write(fill)
	m.WriteString("\r\n")
	m.WriteString(attHead)
	for k := 0; k < len(enc); k += 76 {
		m.WriteString(enc[k : k+76])
		m.WriteString("\r\n")
	}
	m.WriteString(tail)
	if m.Len() != size {
		return nil, fmt.Errorf("internal error: message %d is %d bytes, want %d", i, m.Len(), size)
	}
	return m.Bytes(), nil
}
