package quarantine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"strings"
	"text/template"
	"time"
	"unicode"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// Defaults of NoticeConfig.
const (
	DefaultNoticeFrom          = "Mail gateway <postmaster@localhost>"
	DefaultNoticeSubjectPrefix = "[popgate: message withheld]"
)

// Bounds of Notice.
const (
	maxOriginalHeader = 256 << 10 // bytes of the original's header read
	maxNoticeText     = 64 << 10  // bytes of template output
	maxSubjectBytes   = 200
	maxAddresses      = 20
)

// DefaultNoticeText is the notice text used when none is configured.
const DefaultNoticeText = `This message was withheld by the mail gateway and replaced by this notice.

  From:    {{or .OriginalFrom "(unknown)"}}
  Subject: {{or .OriginalSubject "(none)"}}
  Date:    {{or .OriginalDate "(unknown)"}}

Reason: {{.Reason}}
{{range .Verdicts}}  - {{.Filter}}: {{.Action}}{{if .Reason}} ({{.Reason}}){{end}}
{{end}}
The original message is kept in quarantine under the id

  {{.QuarantineID}}

{{if .ReleaseURL}}You can have it delivered to your mailbox from this page:

  {{.ReleaseURL}}

(the link works once and expires; or ask your mail administrator, quoting the id).
{{else}}If you need it, ask your mail administrator to release it, quoting this id.
{{end}}
-- 
popgate, {{.Time.Format "2006-01-02 15:04:05 MST"}}
`

// defaultNoticeTemplate is DefaultNoticeText parsed. It is unexported so
// that nobody can change the default for every notice (a template is safe
// for concurrent Execute, not for changes).
var defaultNoticeTemplate = template.Must(template.New("notice").Parse(DefaultNoticeText))

// NoticeData is what a notice template is executed with. Every string has
// been decoded (RFC 2047) and cleaned by mailtext.Text: no control
// characters, no bidi or other invisible characters, valid UTF-8, bounded
// length.
type NoticeData struct {
	OriginalFrom    string
	OriginalTo      string
	OriginalSubject string
	OriginalDate    string
	User            string
	Reason          string
	QuarantineID    string
	// ReleaseURL is the release link for the user, "" where the policy
	// does not let the user release the message (or links are off).
	ReleaseURL string
	Verdicts   []NoticeVerdict
	Time       time.Time
}

// NoticeVerdict is one filter's step, for the template.
type NoticeVerdict struct {
	Filter string
	Action string // "pass", "replace", "reject", "retry", or "error"
	Reason string
}

// ParseNoticeTemplate parses a notice template and checks it by executing
// it on sample data, so that a misspelt field is reported when the policy
// loads rather than when the first message is withheld.
func ParseNoticeTemplate(name, text string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, err
	}
	sample := NoticeData{
		OriginalFrom: "Sender <sender@example.org>", OriginalTo: "user@example.org", OriginalSubject: "Subject",
		OriginalDate: "Mon, 02 Jan 2006 15:04:05 +0000", User: "user", Reason: "reason",
		QuarantineID: "20060102T150405.000000Z-abcdefghij", Time: time.Now(),
		ReleaseURL: "https://mailgw.example.org/release/token",
		Verdicts:   []NoticeVerdict{{Filter: "av", Action: "reject", Reason: "Eicar-Signature FOUND"}},
	}
	if err := t.Execute(&limitWriter{max: maxNoticeText}, sample); err != nil {
		return nil, err
	}
	return t, nil
}

// NoticeConfig builds the notices that stand in for withheld messages. The
// zero value uses the defaults.
type NoticeConfig struct {
	// From is the notice's sender; "" means DefaultNoticeFrom. Check
	// validates it.
	From string
	// SubjectPrefix goes before the original subject; "" means
	// DefaultNoticeSubjectPrefix.
	SubjectPrefix string
	// Template renders the text; nil means DefaultNoticeText.
	Template *template.Template
	// Hostname is the right side of the notice's Message-ID; "" means
	// the host's name (or "popgate.invalid").
	Hostname string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Spool holds the notices ChainNotice builds; nil means a Spool with
	// the defaults.
	Spool *filters.Spool
	// ReleaseLink returns the release link for the original stored under
	// id, "" when the user may not release it; nil means no links.
	ReleaseLink func(env *filters.Envelope, res *filters.Result, id string) string
}

// Check reports an invalid From address or subject prefix.
func (c *NoticeConfig) Check() error {
	if c.From != "" {
		if _, err := mail.ParseAddress(c.From); err != nil {
			return fmt.Errorf("notice sender %q: %w", c.From, err)
		}
	}
	if strings.ContainsAny(c.SubjectPrefix, "\r\n") {
		return errors.New("notice subject prefix: line break")
	}
	return nil
}

// ChainNotice returns c as a filters.Chain Notice function: it builds the
// notice for res.QuarantineID and writes it to c.Spool.
func (c *NoticeConfig) ChainNotice() func(ctx context.Context, env *filters.Envelope, original filters.Body, res *filters.Result) (filters.Body, error) {
	return func(ctx context.Context, env *filters.Envelope, original filters.Body, res *filters.Result) (filters.Body, error) {
		id := ""
		if res != nil {
			id = res.QuarantineID
		}
		return c.Build(env, original, res, id, c.Spool)
	}
}

// Notice builds the message delivered in place of a withheld one with the
// default sender and subject prefix and the template tmpl (nil: the
// default). See NoticeConfig.Build.
func Notice(env *filters.Envelope, original filters.Body, res *filters.Result, id string, tmpl *template.Template, spool *filters.Spool) (filters.Body, error) {
	c := NoticeConfig{Template: tmpl}
	return c.Build(env, original, res, id, spool)
}

// Build builds the notice for the original message stored under id: a
// well-formed RFC 5322 message (CRLF, text/plain, utf-8, quoted-printable)
// whose To, Date and Subject come from the original, that refers to the
// original's Message-ID, and whose text is the template executed with
// NoticeData. Values from the original are decoded and cleaned before they
// go into the notice's header or text, and re-encoded where needed: they
// cannot add header fields. The original's header is read up to 256 KiB.
// The notice is written to spool (nil: the defaults).
func (c *NoticeConfig) Build(env *filters.Envelope, original filters.Body, res *filters.Result, id string, spool *filters.Spool) (filters.Body, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	t := now()
	var h origHeader
	if original != nil {
		var err error
		if h, err = readOrigHeader(original); err != nil {
			return nil, fmt.Errorf("notice: read the original's header: %w", err)
		}
	}

	// The text.
	hl := h.headline()
	data := NoticeData{
		OriginalFrom:    hl.From,
		OriginalTo:      displayAddresses(h.get("to")),
		OriginalSubject: hl.Subject,
		OriginalDate:    hl.Date,
		QuarantineID:    mailtext.Text(id, 100),
		Time:            t,
	}
	if env != nil {
		data.User = mailtext.Text(env.User, 200)
	}
	if c.ReleaseLink != nil && id != "" {
		data.ReleaseURL = mailtext.Text(c.ReleaseLink(env, res, id), 2000)
	}
	if res != nil {
		data.Reason = mailtext.Text(res.Reason, 500)
		for _, st := range res.Steps {
			if st.Filter == "quarantine" && st.Reason == id && st.Err == nil {
				continue // the chain's own step of storing the original
			}
			v := NoticeVerdict{Filter: mailtext.Text(st.Filter, 100), Action: st.Action.String(), Reason: mailtext.Text(st.Reason, 300)}
			if st.Err != nil {
				v.Action, v.Reason = "error", mailtext.Text(st.Err.Error(), 300)
			}
			data.Verdicts = append(data.Verdicts, v)
		}
	}
	if data.Reason == "" {
		data.Reason = "withheld by policy"
	}
	tmpl := c.Template
	if tmpl == nil {
		tmpl = defaultNoticeTemplate
	}
	var text bytes.Buffer
	if err := tmpl.Execute(&limitWriter{w: &text, max: maxNoticeText}, data); err != nil {
		return nil, fmt.Errorf("notice: template: %w", err)
	}

	// The header.
	var hdr bytes.Buffer
	from := c.From
	if from == "" {
		from = DefaultNoticeFrom
	}
	fromAddr, _ := mail.ParseAddress(from) // checked by Check
	hdr.WriteString(mailtext.Field("From", fromAddr.String(), "\r\n"))
	hdr.WriteString(mailtext.Field("To", headerAddresses(h.get("to")), "\r\n"))
	date := t
	if d, err := mail.ParseDate(h.get("date")); err == nil {
		date = d
	}
	hdr.WriteString(mailtext.Field("Date", date.Format(time.RFC1123Z), "\r\n"))
	prefix := c.SubjectPrefix
	if prefix == "" {
		prefix = DefaultNoticeSubjectPrefix
	}
	subject := mailtext.Text(prefix, 200)
	if data.OriginalSubject != "" {
		subject += " " + data.OriginalSubject
	}
	hdr.WriteString(mailtext.Field("Subject", mailtext.EncodeWords(subject), "\r\n"))
	hdr.WriteString(mailtext.Field("Message-ID", c.messageID(id), "\r\n"))
	if mid := msgID(h.get("message-id")); mid != "" {
		hdr.WriteString(mailtext.Field("In-Reply-To", mid, "\r\n"))
		hdr.WriteString(mailtext.Field("References", mid, "\r\n"))
	}
	hdr.WriteString(mailtext.Field("Auto-Submitted", "auto-generated", "\r\n"))
	if validID(id) {
		hdr.WriteString(mailtext.Field("X-Popgate-Quarantine-ID", id, "\r\n"))
	}
	hdr.WriteString(mailtext.Field("MIME-Version", "1.0", "\r\n"))
	hdr.WriteString(mailtext.Field("Content-Type", "text/plain; charset=utf-8", "\r\n"))
	hdr.WriteString(mailtext.Field("Content-Transfer-Encoding", "quoted-printable", "\r\n"))
	hdr.WriteString("\r\n")

	sw := spool.NewWriter()
	err := func() error {
		if _, err := sw.Write(hdr.Bytes()); err != nil {
			return err
		}
		qp := quotedprintable.NewWriter(sw)
		body := strings.ReplaceAll(strings.ToValidUTF8(text.String(), "\uFFFD"), "\r\n", "\n")
		if _, err := qp.Write([]byte(body)); err != nil {
			return err
		}
		if err := qp.Close(); err != nil {
			return err
		}
		if !strings.HasSuffix(body, "\n") {
			_, err := sw.Write([]byte("\r\n"))
			return err
		}
		return nil
	}()
	if err != nil {
		sw.Abort()
		return nil, fmt.Errorf("notice: %w", err)
	}
	b, err := sw.Finish()
	if err != nil {
		return nil, fmt.Errorf("notice: %w", err)
	}
	return b, nil
}

// messageID makes the notice's own Message-ID.
func (c *NoticeConfig) messageID(id string) string {
	host := c.Hostname
	if host == "" {
		host, _ = os.Hostname()
	}
	host = dotAtom(host)
	if host == "" || !strings.Contains(host, ".") {
		host = "popgate.invalid"
	}
	var b [9]byte
	_, _ = rand.Read(b[:])
	left := "notice." + base64.RawURLEncoding.EncodeToString(b[:])
	if validID(id) {
		left = "notice." + id + "." + base64.RawURLEncoding.EncodeToString(b[:6])
	}
	return "<" + strings.ReplaceAll(left, "_", "-") + "@" + host + ">"
}

// dotAtom keeps the letters, digits, '-' and '.' of s.
func dotAtom(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '.') {
			b.WriteRune(r)
		}
	}
	return strings.Trim(b.String(), ".")
}

// msgID returns v when it is a single well-formed msg-id ("<left@right>",
// printable ASCII without spaces or angle brackets inside), else "".
func msgID(v string) string {
	v = strings.TrimSpace(v)
	if len(v) < 5 || len(v) > 250 || v[0] != '<' || v[len(v)-1] != '>' {
		return ""
	}
	inner := v[1 : len(v)-1]
	at := strings.IndexByte(inner, '@')
	if at <= 0 || at == len(inner)-1 {
		return ""
	}
	for i := 0; i < len(inner); i++ {
		if c := inner[i]; c <= ' ' || c > '~' || c == '<' || c == '>' || c == '"' || c == '\\' {
			return ""
		}
	}
	return v
}

// origHeader holds the first value of the few fields Notice uses, unfolded.
type origHeader map[string]string

func (h origHeader) get(k string) string { return h[k] }

var wantedFields = map[string]bool{"from": true, "to": true, "date": true, "subject": true, "message-id": true}

// readOrigHeader reads the header of b, as parseOrigHeader.
func readOrigHeader(b filters.Body) (origHeader, error) {
	r, err := b.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return parseOrigHeader(r)
}

// parseOrigHeader reads the header section from r (up to maxOriginalHeader
// bytes, stopping at the blank line or at a line that is not a header line)
// and keeps the first value of each wanted field.
func parseOrigHeader(r io.Reader) (origHeader, error) {
	br := bufio.NewReader(io.LimitReader(r, maxOriginalHeader))
	h := origHeader{}
	var cur string // the wanted field being read, or ""
	var val strings.Builder
	flush := func() {
		if cur != "" {
			if _, dup := h[cur]; !dup {
				h[cur] = strings.TrimSpace(val.String())
			}
		}
		cur = ""
		val.Reset()
	}
	for {
		line, err := br.ReadString('\n')
		if line == "" && err != nil {
			break
		}
		content := strings.TrimRight(line, "\r\n")
		switch {
		case content == "":
			flush()
			return h, nil
		case content[0] == ' ' || content[0] == '\t':
			if cur != "" && val.Len() < maxOriginalHeader {
				val.WriteString(content) // unfold: the line break goes
			}
		default:
			flush()
			name, value, ok := strings.Cut(content, ":")
			name = strings.TrimRight(name, " \t")
			if !ok || !mailtext.ValidFieldName(name) {
				return h, nil // not a header line: the header ends here
			}
			if l := strings.ToLower(name); wantedFields[l] {
				cur = l
				val.WriteString(value)
			}
		}
		if err != nil {
			break
		}
	}
	flush()
	return h, nil
}

// parseAddresses parses an address list, cleaning the display names.
func parseAddresses(v string) []*mail.Address {
	if strings.TrimSpace(v) == "" {
		return nil
	}
	list, err := mailtext.ParseAddressList(v)
	if err != nil {
		return nil
	}
	if len(list) > maxAddresses {
		list = list[:maxAddresses]
	}
	out := list[:0]
	for _, a := range list {
		if mailtext.Text(a.Address, 320) != a.Address || strings.ContainsAny(a.Address, " \t") {
			continue
		}
		a.Name = mailtext.Text(a.Name, 100)
		out = append(out, a)
	}
	return out
}

// displayAddresses is an address list for the notice text.
func displayAddresses(v string) string {
	list := parseAddresses(v)
	if len(list) == 0 {
		return mailtext.Text(mailtext.DecodeWords(v), 300)
	}
	parts := make([]string, len(list))
	for i, a := range list {
		if a.Name != "" {
			parts[i] = a.Name + " <" + a.Address + ">"
		} else {
			parts[i] = a.Address
		}
	}
	return mailtext.Text(strings.Join(parts, ", "), 1000)
}

// headerAddresses is an address list for the notice's To field.
func headerAddresses(v string) string {
	list := parseAddresses(v)
	if len(list) == 0 {
		return "undisclosed-recipients:;"
	}
	parts := make([]string, len(list))
	for i, a := range list {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

// limitWriter fails once more than max bytes were written (w nil: discard).
type limitWriter struct {
	w   io.Writer
	n   int
	max int
}

var errNoticeTooLong = errors.New("notice text longer than 64 KiB")

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n+len(p) > l.max {
		return 0, errNoticeTooLong
	}
	l.n += len(p)
	if l.w == nil {
		return len(p), nil
	}
	return l.w.Write(p)
}
