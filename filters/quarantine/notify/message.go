package notify

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"mime/quotedprintable"
	"net/mail"
	"strings"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/internal/mailtext"
)

// Bounds of a digest mail.
const (
	maxText    = 128 << 10 // bytes of text
	maxSubject = 200       // bytes of subject, after cleaning
)

// Data is what the digest templates are executed with. Every string has
// been cleaned by mailtext.Text: one line, no control or invisible
// characters, bounded.
type Data struct {
	Items []Item // the first held messages, oldest first
	More  int    // held messages not in Items
	Total int
	// Since and Until bound the digest: the admin digest's first message
	// and the sending; the user digest's period.
	Since, Until time.Time
	// User digest only: the login of the messages and the address mailed.
	User, Address string
}

// Item is one held message.
type Item struct {
	ID     string
	Time   time.Time
	User   string
	Reason string
	HeldBy string // the filters that held it, comma-separated
	// User digest only: the original's sender and subject ("" when
	// unknown) and its release link ("" when the user may not release it).
	From, Subject, Link string
}

// The defaults.
const (
	defaultAdminSubject = `[popgate] {{.Total}} message(s) held`
	defaultUserSubject  = `[popgate] {{.Total}} message(s) held for you`
)

var defaultAdminTemplate = template.Must(template.New("admin").Parse(
	`{{.Total}} message(s) were held by the mail gateway since {{.Since.Format "2006-01-02 15:04:05 MST"}}.
{{range .Items}}
{{.ID}}  {{.Time.Format "2006-01-02 15:04:05"}}
  User:    {{or .User "(unknown)"}}
  Reason:  {{or .Reason "(none)"}}
  Held by: {{or .HeldBy "(unknown)"}}
{{end}}{{if .More}}
... and {{.More}} more.
{{end}}
See one with: popgate quarantine show ID
-- 
popgate
`))

var defaultUserTemplate = template.Must(template.New("user").Parse(
	`{{.Total}} message(s) for you were held by the mail gateway between {{.Since.Format "2006-01-02 15:04 MST"}} and {{.Until.Format "2006-01-02 15:04 MST"}}.
{{range .Items}}
{{.Time.Format "2006-01-02 15:04"}}
  From:    {{or .From "(unknown)"}}
  Subject: {{or .Subject "(none)"}}
  Reason:  {{or .Reason "(none)"}}
{{if .Link}}  Release it: {{.Link}}
{{else}}  To get it, ask your mail administrator, quoting the id {{.ID}}
{{end}}{{end}}{{if .More}}
... and {{.More}} more.
{{end}}
-- 
popgate
`))

// ParseTemplate parses a digest template (text or subject) and checks it
// by executing it on sample data, so that a misspelt field is reported
// when the configuration loads.
func ParseTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("notify: template %s: %w", name, err)
	}
	return t, check(t)
}

func check(t *template.Template) error {
	now := time.Now()
	sample := Data{
		Items: []Item{{ID: "20060102T150405.000000Z-abcdefghij", Time: now, User: "user", Reason: "Eicar-Signature FOUND",
			HeldBy: "av", From: "Sender <sender@example.org>", Subject: "Subject", Link: "https://gateway.example.org/release/x"}},
		More: 1, Total: 2, Since: now, Until: now, User: "user", Address: "user@example.org",
	}
	if _, err := execute(t, sample, maxText); err != nil {
		return fmt.Errorf("notify: template %s: %w", t.Name(), err)
	}
	return nil
}

// kind is one digest's templates, configured and default.
type kind struct {
	name                string
	subject, text       *template.Template
	defSubject, defText *template.Template
	warned              atomic.Bool // a configured template failed: logged once
}

func newKind(name, subject string, text *template.Template, defSubject string, defText *template.Template) (*kind, error) {
	k := &kind{name: name, text: text, defText: defText}
	k.defSubject = template.Must(template.New(name + " subject").Parse(defSubject))
	k.subject = k.defSubject
	if subject != "" {
		var err error
		if k.subject, err = ParseTemplate(name+" subject", subject); err != nil {
			return nil, err
		}
	}
	if k.text == nil {
		k.text = defText
	} else if err := check(k.text); err != nil {
		return nil, err
	}
	return k, nil
}

// errTooLong is the error of template output over its bound.
var errTooLong = errors.New("template output too long")

// capped is a buffer that refuses to grow past max bytes.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if c.Len()+len(p) > c.max {
		return 0, errTooLong
	}
	return c.Buffer.Write(p)
}

func execute(t *template.Template, d Data, max int) (string, error) {
	c := &capped{max: max}
	if err := t.Execute(c, d); err != nil {
		return "", err
	}
	return c.String(), nil
}

// render executes k's templates on d. A configured template that fails is
// replaced by the default for this mail (logged once per Notifier), so that
// a mail is never sent half made.
func (n *Notifier) render(k *kind, d Data) (subject, text string, err error) {
	var failed error // of the configured templates
	run := func(t, def *template.Template, max int) (string, error) {
		s, err := execute(t, d, max)
		if err != nil && t != def {
			failed = errors.Join(failed, err)
			s, err = execute(def, d, max)
		}
		return s, err
	}
	subject, err1 := run(k.subject, k.defSubject, 4*maxSubject)
	text, err2 := run(k.text, k.defText, maxText)
	if failed != nil && !k.warned.Swap(true) {
		n.o.Log.Error().Err(failed).Str("digest", k.name).Msg("notify: a template failed; the default is used")
	}
	if err := errors.Join(err1, err2); err != nil { // a default failed: nothing to send
		return "", "", err
	}
	return mailtext.Text(subject, maxSubject), cleanText(text), nil
}

// cleanText keeps the lines and tabs of template output and turns every
// other control or invisible character (mailtext's rule) into a space:
// neither the data nor a template can hide text or drive a terminal.
func cleanText(s string) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\r\n", "\n")
	return strings.Map(func(r rune) rune {
		if r != '\n' && r != '\t' && (mailtext.IsControl(r) || mailtext.IsInvisible(r)) {
			return ' '
		}
		return r
	}, s)
}

// compose renders d with k's templates into a mail to to: RFC 5322, CRLF,
// text/plain in UTF-8, quoted-printable, the subject RFC 2047-encoded.
func (n *Notifier) compose(k *kind, to []*mail.Address, d Data, now time.Time) ([]byte, error) {
	subject, text, err := n.render(k, d)
	if err != nil {
		return nil, err
	}
	rcpts := make([]string, len(to))
	for i, a := range to {
		rcpts[i] = a.String()
	}
	var b bytes.Buffer
	for _, f := range [][2]string{
		{"From", n.from.String()},
		{"To", strings.Join(rcpts, ", ")},
		{"Date", now.Format(time.RFC1123Z)},
		{"Subject", mailtext.EncodeWords(subject)},
		{"Message-ID", "<popgate.digest." + strings.ToLower(rand.Text()) + "@" + n.idHost + ">"},
		{"Auto-Submitted", "auto-generated"},
		{"MIME-Version", "1.0"},
		{"Content-Type", "text/plain; charset=utf-8"},
		{"Content-Transfer-Encoding", "quoted-printable"},
	} {
		b.WriteString(mailtext.Field(f[0], f[1], "\r\n"))
	}
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b) // writes "\n" as CRLF
	if _, err := qp.Write([]byte(text)); err != nil {
		return nil, err
	}
	if err := qp.Close(); err != nil {
		return nil, err
	}
	if !strings.HasSuffix(text, "\n") {
		b.WriteString("\r\n")
	}
	return b.Bytes(), nil
}

// messageIDHost is the domain of the sender's address when it is a plain
// dot-atom with a dot, else "popgate.invalid".
func messageIDHost(addr string) string {
	_, host, _ := strings.Cut(addr, "@")
	ok := strings.Contains(host, ".") && !strings.HasPrefix(host, ".") && !strings.HasSuffix(host, ".")
	for _, r := range host {
		ok = ok && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.')
	}
	if !ok {
		return "popgate.invalid"
	}
	return host
}

// item is m as a digest lists it, cleaned.
func item(m quarantine.Meta, loc *time.Location) Item {
	return Item{
		ID: mailtext.Text(m.ID, 64), Time: m.Time.In(loc), User: mailtext.Text(m.User, 200),
		Reason: mailtext.Text(m.Reason, 300), HeldBy: mailtext.Text(strings.Join(m.Held, ", "), 300),
	}
}
