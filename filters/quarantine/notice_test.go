package quarantine

import (
	"context"
	"io"
	"mime/quotedprintable"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

func readBody(t *testing.T, b filters.Body) string {
	t.Helper()
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// parseNotice checks the wire form and parses the notice.
func parseNotice(t *testing.T, raw string) (*mail.Message, string) {
	t.Helper()
	for i := 0; i < len(raw); i++ {
		if raw[i] == '\n' && (i == 0 || raw[i-1] != '\r') {
			t.Fatalf("bare LF at %d in %q", i, raw)
		}
		if raw[i] == '\r' && (i+1 == len(raw) || raw[i+1] != '\n') {
			t.Fatalf("bare CR at %d in %q", i, raw)
		}
	}
	for _, l := range strings.Split(raw, "\r\n") {
		if len(l) > 998 {
			t.Fatalf("line of %d bytes", len(l))
		}
	}
	m, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("notice does not parse: %v\n%s", err, raw)
	}
	if m.Header.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Fatalf("unexpected transfer encoding")
	}
	text, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	return m, string(text)
}

func fieldNames(raw string) []string {
	head, _, _ := strings.Cut(raw, "\r\n\r\n")
	var names []string
	for _, l := range strings.Split(head, "\r\n") {
		if l == "" || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		name, _, _ := strings.Cut(l, ":")
		names = append(names, name)
	}
	return names
}

var noticeFields = []string{"From", "To", "Date", "Subject", "Message-ID", "In-Reply-To", "References",
	"Auto-Submitted", "X-Popgate-Quarantine-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"}

func TestNotice(t *testing.T) {
	orig := "From: =?utf-8?q?J=C3=BCrgen?= <juergen@example.org>\r\n" +
		"To: Alice <alice@example.org>,\r\n bob@example.org\r\n" +
		"Subject: =?iso-8859-1?q?Rechnung_f=FCr?=\r\n November\r\n" +
		"Date: Tue, 24 Nov 2026 09:00:00 +0100\r\n" +
		"Message-ID: <abc.123@mail.example.org>\r\n" +
		"\r\nbody with Subject: not a header\r\n"
	id := "20261125T103000.000000Z-abcdefghij"
	res := testResult()
	res.Steps = append(res.Steps, filters.Step{Filter: "quarantine", Action: filters.Pass, Reason: id})
	now := time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC)
	c := &NoticeConfig{From: "Postmaster <postmaster@gw.example.org>", Hostname: "gw.example.org", Now: func() time.Time { return now }}
	b, err := c.Build(testEnv, filters.BytesBody([]byte(orig)), res, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Remove()
	raw := readBody(t, b)
	m, text := parseNotice(t, raw)

	if got := fieldNames(raw); !slices.Equal(got, noticeFields) {
		t.Errorf("fields %v, want %v", got, noticeFields)
	}
	h := m.Header
	checks := map[string]string{
		"From":                    `"Postmaster" <postmaster@gw.example.org>`,
		"To":                      `"Alice" <alice@example.org>, <bob@example.org>`,
		"Date":                    "Tue, 24 Nov 2026 09:00:00 +0100",
		"In-Reply-To":             "<abc.123@mail.example.org>",
		"References":              "<abc.123@mail.example.org>",
		"X-Popgate-Quarantine-ID": id,
		"MIME-Version":            "1.0",
		"Content-Type":            "text/plain; charset=utf-8",
		"Auto-Submitted":          "auto-generated",
	}
	for k, want := range checks {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if subj := mailtext.DecodeWords(h.Get("Subject")); subj != "[popgate: message withheld] Rechnung für November" {
		t.Errorf("Subject %q", subj)
	}
	if mid := h.Get("Message-ID"); !strings.HasPrefix(mid, "<notice."+id+".") || !strings.HasSuffix(mid, "@gw.example.org>") {
		t.Errorf("Message-ID %q", mid)
	}
	for _, want := range []string{
		id, "Eicar-Signature FOUND", "Jürgen <juergen@example.org>", "Rechnung für November",
		"Tue, 24 Nov 2026 09:00:00 +0100", "av: reject (Eicar-Signature FOUND)", "broken: error (clamd: timeout)",
		"2026-11-25 10:30:00 UTC",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "quarantine: pass") {
		t.Errorf("the chain's own quarantine step is listed:\n%s", text)
	}
}

// Hostile header values from the original cannot add fields to the notice
// or smuggle line breaks, whether raw, folded or RFC 2047-encoded.
func TestNoticeHostileHeaders(t *testing.T) {
	origs := []string{
		"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@example.org=0D=0A=0D=0Abody?=\r\n" +
			"From: =?utf-8?q?x=0D=0ABcc:_v@example.org?= <a@example.org>\r\n" +
			"To: \"q\r\n Bcc: v@example.org\" <b@example.org>\r\n" +
			"Message-ID: <a@b>\r\n Bcc: v@example.org\r\n" +
			"Date: Tue, 24 Nov 2026 09:00:00 +0100\r\nBcc: v@example.org\r\n\r\n",
		"Subject: =?utf-8?b?" + "aGkNCkJjYzogdkBleGFtcGxlLm9yZw0K" + "?= =?x-unknown?q?=0D=0ABcc:_v?=\r\n" +
			"To: =?utf-8?q?=0D=0ABcc=3A_v=40example=2Eorg?= <c@example.org>\r\nMessage-ID: <a@b>\r\nBcc: x\r\n\r\n",
		"Subject: \u202eexe.pdf =?utf-8?q?=1B]0;x=07?= =?ascii?q?=3D=3Fwrapped=3F=3D?=\r\nTo: not an address\r\n\r\n",
		"Subject: " + strings.Repeat("long ", 10000) + "\r\n\r\n",
		"\r\n",
		"",
		"X: y\nSubject: lf only\n\n",
	}
	for _, orig := range origs {
		b, err := Notice(testEnv, filters.BytesBody([]byte(orig)), testResult(), "20261125T103000.000000Z-abcdefghij", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		raw := readBody(t, b)
		b.Remove()
		m, text := parseNotice(t, raw)
		names := fieldNames(raw)
		if !slices.Equal(names, noticeFields) && !slices.Equal(names, slices.DeleteFunc(slices.Clone(noticeFields), func(s string) bool {
			return s == "In-Reply-To" || s == "References"
		})) {
			t.Errorf("fields %v for %q", names, orig)
		}
		if m.Header.Get("Bcc") != "" {
			t.Errorf("Bcc injected for %q", orig)
		}
		for k, vs := range m.Header {
			for _, v := range vs {
				dec := mailtext.DecodeWords(v)
				if strings.ContainsAny(dec, "\r\n\x1b\x07\u202e") {
					t.Errorf("%s decodes to %q (original %q)", k, dec, orig)
				}
			}
		}
		if strings.ContainsAny(text, "\x1b\x07\u202e") {
			t.Errorf("text holds control characters: %q", text)
		}
		subj := mailtext.DecodeWords(m.Header.Get("Subject"))
		if strings.Contains(orig, "wrapped") && !strings.Contains(subj, "=?wrapped?=") {
			t.Errorf("text that looks like an encoded word was not kept literally: %q", subj)
		}
		if len(subj) > 400 {
			t.Errorf("subject of %d bytes", len(subj))
		}
	}
}

func TestNoticeTemplates(t *testing.T) {
	if _, err := ParseNoticeTemplate("x", "{{.NoSuchField}}"); err == nil {
		t.Error("misspelt field accepted")
	}
	if _, err := ParseNoticeTemplate("x", "{{.Reason"); err == nil {
		t.Error("syntax error accepted")
	}
	if _, err := ParseNoticeTemplate("x", `{{range $i := .Verdicts}}{{printf "%0100000d" 1}}{{end}}`); err == nil {
		t.Error("oversized output accepted")
	}
	tmpl, err := ParseNoticeTemplate("x", "Withheld: {{.QuarantineID}} for {{.User}}\nbecause {{.Reason}}")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res := testResult()
	res.QuarantineID = "20261125T103000.000000Z-abcdefghij"
	c := &NoticeConfig{Template: tmpl, SubjectPrefix: "[held]", Spool: &filters.Spool{Dir: t.TempDir(), MemoryLimit: -1}}
	b, err := c.ChainNotice()(ctx, testEnv, filters.BytesBody([]byte("Subject: x\r\n\r\n")), res)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Remove()
	m, text := parseNotice(t, readBody(t, b))
	if text != "Withheld: 20261125T103000.000000Z-abcdefghij for alice@example.org\r\nbecause Eicar-Signature FOUND\r\n" {
		t.Errorf("text %q", text)
	}
	if m.Header.Get("Subject") != "[held] x" {
		t.Errorf("Subject %q", m.Header.Get("Subject"))
	}
	if m.Header.Get("To") != "undisclosed-recipients:;" {
		t.Errorf("To %q", m.Header.Get("To"))
	}

	bad := &NoticeConfig{From: "not an address\r\nBcc: x"}
	if _, err := bad.Build(nil, nil, nil, "", nil); err == nil {
		t.Error("invalid From accepted")
	}
	failing := template.Must(template.New("f").Parse(`{{index .Verdicts 99}}`))
	if _, err := Notice(nil, nil, nil, "", failing, nil); err == nil {
		t.Error("failing template accepted")
	}
	if _, err := Notice(nil, brokenBody{filters.BytesBody(nil)}, nil, "", nil, nil); err == nil || !strings.Contains(err.Error(), "spool gone") {
		t.Errorf("unreadable original: %v", err)
	}
}

// FuzzNotice: whatever the original's header holds, the notice parses, has
// exactly the notice's own fields, and no header value decodes to a line
// break.
func FuzzNotice(f *testing.F) {
	f.Add("Subject: =?utf-8?q?a=0D=0ABcc:_x?=\r\nTo: a@b\r\n\r\n")
	f.Add("From: \"x\\\r\n y\" <a@b>\r\nMessage-ID: <a@b>\r\n\r\n")
	f.Add("Subject: =?utf-8?q?=3D=3F?=\nDate: Tue, 24 Nov 2026 09:00:00 +0100\n\n")
	f.Fuzz(func(t *testing.T, orig string) {
		b, err := Notice(testEnv, filters.BytesBody([]byte(orig)), testResult(), "20261125T103000.000000Z-abcdefghij", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Remove()
		raw := readBody(t, b)
		m, _ := parseNotice(t, raw)
		names := fieldNames(raw)
		short := slices.DeleteFunc(slices.Clone(noticeFields), func(s string) bool { return s == "In-Reply-To" || s == "References" })
		if !slices.Equal(names, noticeFields) && !slices.Equal(names, short) {
			t.Fatalf("fields %v", names)
		}
		for k, vs := range m.Header {
			for _, v := range vs {
				if dec := mailtext.DecodeWords(v); strings.ContainsAny(dec, "\r\n") {
					t.Fatalf("%s decodes to %q", k, dec)
				}
			}
		}
	})
}
