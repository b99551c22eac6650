package notify

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// recorder is a Send that records what it is given. fail makes the next
// sends fail; block, when set, holds every send until it is closed.
type recorder struct {
	mu    sync.Mutex
	mails []sent
	fail  int
	block chan struct{}
	sends chan struct{} // one value per call
}

type sent struct {
	from string
	to   []string
	msg  string
	at   time.Time
}

func newRecorder() *recorder { return &recorder{sends: make(chan struct{}, 1<<16)} }

func (r *recorder) Send(ctx context.Context, from string, to []string, msg io.Reader) error {
	r.sends <- struct{}{}
	if r.block != nil {
		select {
		case <-r.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	data, err := io.ReadAll(msg)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("451 try again later")
	}
	r.mails = append(r.mails, sent{from, to, string(data), time.Now()})
	return nil
}

func (r *recorder) got() []sent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sent(nil), r.mails...)
}

// waitMails waits until n mails were sent and returns them.
func (r *recorder) waitMails(t *testing.T, n int) []sent {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if m := r.got(); len(m) >= n {
			return m
		}
	}
	t.Fatalf("%d mails sent, want %d", len(r.got()), n)
	return nil
}

// parse checks the wire form of a mail and returns its header and text.
func parse(t *testing.T, raw string) (mail.Header, string) {
	t.Helper()
	if strings.Contains(strings.ReplaceAll(raw, "\r\n", ""), "\n") || strings.Contains(strings.ReplaceAll(raw, "\r\n", ""), "\r") {
		t.Fatalf("bare CR or LF in %q", raw)
	}
	head, body, _ := strings.Cut(raw, "\r\n\r\n")
	for i, part := range []string{head, body} {
		for _, l := range strings.Split(part, "\r\n") {
			if len(l) > []int{78, 76}[i] {
				t.Errorf("line of %d bytes: %q", len(l), l)
			}
		}
	}
	m, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("mail does not parse: %v\n%s", err, raw)
	}
	for _, f := range []string{"From", "To", "Date", "Subject", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"} {
		if len(m.Header[textproto.CanonicalMIMEHeaderKey(f)]) != 1 {
			t.Errorf("%d %s fields", len(m.Header[f]), f)
		}
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	text, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	return m.Header, strings.ReplaceAll(string(text), "\r\n", "\n")
}

func subject(t *testing.T, h mail.Header) string {
	t.Helper()
	s, err := new(mime.WordDecoder).DecodeHeader(h.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func meta(id, user, reason string, at time.Time) quarantine.Meta {
	return quarantine.Meta{ID: id, User: user, Reason: reason, Time: at, Verdicts: []quarantine.Verdict{
		{Filter: "tag", Action: "pass"}, {Filter: "av", Action: "reject", Reason: reason}}, Held: []string{"av"}}
}

func newNotifier(t *testing.T, o Options) *Notifier {
	t.Helper()
	if o.From == "" {
		o.From = "Mail gateway <postmaster@gateway.example.org>"
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRender renders the digests with the default and with configured
// templates, and compares the wire form with the golden files.
func TestRender(t *testing.T) {
	hostile := meta("20260301T115900.000000Z-hhhhhhhhhh", "eve\r\nBcc: x@example.org", "Trojan\u202Egpj.exe\x1b[2J", fixedNow)
	adminData := Data{
		Items: []Item{item(meta("20260301T115800.123456Z-aaaaaaaaaa", "alice@example.org", "Eicar-Signature FOUND", fixedNow.Add(-2*time.Minute)), time.UTC),
			item(hostile, time.UTC)},
		More: 9950, Total: 9952, Since: fixedNow.Add(-2 * time.Minute), Until: fixedNow,
	}
	userItems := []Item{adminData.Items[0], adminData.Items[0]}
	userItems[0].From, userItems[0].Subject, userItems[0].Link = "Jürgen <j@example.org>", "Rechnung März", "https://gateway.example.org/release/tok"
	userData := Data{Items: userItems, Total: 2, Since: fixedNow.Add(-24 * time.Hour), Until: fixedNow, User: "alice@example.org", Address: "alice@example.org"}
	mustParse := func(text string) *template.Template { return template.Must(template.New("t").Parse(text)) }

	for _, tt := range []struct {
		name        string
		user        bool
		data        Data
		opts        Options
		golden      string
		wantSubject string
		wantText    []string
		wantLogged  bool
	}{
		{name: "admin default", data: adminData, golden: "admin.golden", wantSubject: "[popgate] 9952 message(s) held",
			wantText: []string{"... and 9950 more.", "Held by: av", "User:    eve Bcc: x@example.org", "Trojan gpj.exe [2J"}},
		{name: "user default", user: true, data: userData, golden: "user.golden", wantSubject: "[popgate] 2 message(s) held for you",
			wantText: []string{"Release it: https://gateway.example.org/release/tok", "quoting the id 20260301T115800.123456Z-aaaaaaaaaa", "Subject: Rechnung März"}},
		{name: "configured", data: adminData, opts: Options{AdminSubject: "Gehalten: {{.Total}} ✓", AdminTemplate: mustParse("{{range .Items}}{{.ID}}\t{{.Reason}}\r\n{{end}}\u202Eend")},
			wantSubject: "Gehalten: 9952 ✓", wantText: []string{"20260301T115800.123456Z-aaaaaaaaaa\tEicar-Signature FOUND\n", "\n end"}},
		{name: "failing template falls back", data: adminData, opts: Options{AdminTemplate: mustParse("{{if gt .Total 5}}{{index .Items 5}}{{end}}")},
			wantSubject: "[popgate] 9952 message(s) held", wantText: []string{"... and 9950 more."}, wantLogged: true},
		{name: "overlong template falls back", user: true, data: userData,
			opts:        Options{UserSubject: `{{range .Items}}{{printf "%500s" .ID}}{{end}}`, UserTemplate: mustParse(`{{range .Items}}{{printf "%100000s" .ID}}{{end}}`)},
			wantSubject: "[popgate] 2 message(s) held for you", wantText: []string{"Release it:"}, wantLogged: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			tt.opts.Log = zerolog.New(&logs)
			tt.opts.Now = func() time.Time { return fixedNow }
			n := newNotifier(t, tt.opts)
			k, to := n.adminMail, []*mail.Address{{Address: "admin@example.org"}, {Name: "Sécurité", Address: "sec@example.org"}}
			if tt.user {
				k, to = n.userMail, []*mail.Address{{Address: tt.data.Address}}
			}
			for range 2 {
				msg, err := n.compose(k, to, tt.data, fixedNow)
				if err != nil {
					t.Fatal(err)
				}
				h, text := parse(t, string(msg))
				if got := subject(t, h); got != tt.wantSubject {
					t.Errorf("Subject = %q, want %q", got, tt.wantSubject)
				}
				for _, w := range tt.wantText {
					if !strings.Contains(text, w) {
						t.Errorf("text lacks %q:\n%s", w, text)
					}
				}
				if strings.ContainsAny(text, "\r\x1b\u202E") {
					t.Errorf("unclean text: %q", text)
				}
				if tt.golden != "" {
					golden(t, tt.golden, regexp.MustCompile(`<popgate\.digest\.[a-z0-9]+@`).ReplaceAllString(string(msg), "<popgate.digest.X@"))
				}
			}
			if got := strings.Count(logs.String(), "template failed"); got != map[bool]int{true: 1}[tt.wantLogged] {
				t.Errorf("template failure logged %d times: %s", got, logs.String())
			}
		})
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it); got:\n%s", name, got)
	}
}

func TestNew(t *testing.T) {
	send := newRecorder().Send
	store, err := quarantine.Open(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"off", Options{}, true},
		{"admin", Options{Send: send, Admin: []string{"a@example.org", "B <b@example.org>"}}, true},
		{"user", Options{Send: send, UserDigest: 24 * time.Hour, Store: store}, true},
		{"bad sender", Options{Send: send, From: "not an address"}, false},
		{"bad admin", Options{Send: send, Admin: []string{"a@"}}, false},
		{"no mailer", Options{Admin: []string{"a@example.org"}}, false},
		{"negative interval", Options{Send: send, AdminInterval: -time.Second}, false},
		{"fractional period", Options{Send: send, UserDigest: 1500 * time.Millisecond, Store: store}, false},
		{"no store", Options{Send: send, UserDigest: time.Hour}, false},
		{"bad subject", Options{Send: send, AdminSubject: "{{.Nope}}"}, false},
		{"bad template", Options{Send: send, UserTemplate: template.Must(template.New("t").Parse("{{.Items.Nope}}"))}, false},
	} {
		if _, err := New(tt.o); (err == nil) != tt.ok {
			t.Errorf("%s: New: %v", tt.name, err)
		}
	}
	if _, err := ParseTemplate("t", "{{.Total}} {{range .Items}}{{.Link}}{{end}}"); err != nil {
		t.Errorf("ParseTemplate: %v", err)
	}
}

func run(t *testing.T, n *Notifier) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// TestAdminBurst: 10,000 messages held in a burst make one mail.
func TestAdminBurst(t *testing.T) {
	r := newRecorder()
	n := newNotifier(t, Options{Send: r.Send, Admin: []string{"admin@example.org"}, AdminDelay: 50 * time.Millisecond, AdminInterval: time.Hour})
	for i := range 10_000 {
		n.Held(meta(fmt.Sprintf("20260301T120000.%06dZ-aaaaaaaaaa", i), "u@example.org", "Eicar", time.Now()))
	}
	run(t, n) // after the burst, however slow the race detector makes it
	mails := r.waitMails(t, 1)
	time.Sleep(200 * time.Millisecond)
	if mails = r.got(); len(mails) != 1 {
		t.Fatalf("%d mails, want 1", len(mails))
	}
	if mails[0].from != "postmaster@gateway.example.org" || len(mails[0].to) != 1 || mails[0].to[0] != "admin@example.org" {
		t.Errorf("envelope %q -> %q", mails[0].from, mails[0].to)
	}
	h, text := parse(t, mails[0].msg)
	if subject(t, h) != "[popgate] 10000 message(s) held" || strings.Count(text, "Eicar") != maxItems ||
		!strings.Contains(text, "20260301T120000.000049Z") || strings.Contains(text, "20260301T120000.000050Z") ||
		!strings.Contains(text, "... and 9950 more.") {
		t.Errorf("digest:\n%s", text)
	}
}

// TestAdminInterval: the first message is reported AdminDelay after it
// was held, the next digest no sooner than AdminInterval after the first.
func TestAdminInterval(t *testing.T) {
	const delay, interval = 30 * time.Millisecond, 400 * time.Millisecond
	r := newRecorder()
	n := newNotifier(t, Options{Send: r.Send, Admin: []string{"admin@example.org"}, AdminDelay: delay, AdminInterval: interval})
	run(t, n)
	held := time.Now()
	n.Held(meta("20260301T120000.000000Z-aaaaaaaaaa", "u", "r1", held))
	first := r.waitMails(t, 1)[0]
	n.Held(meta("20260301T120000.000001Z-aaaaaaaaaa", "u", "r2", time.Now()))
	n.Held(meta("20260301T120000.000002Z-aaaaaaaaaa", "u", "r3", time.Now()))
	second := r.waitMails(t, 2)[1]
	if d := first.at.Sub(held); d < delay {
		t.Errorf("first digest after %v, want at least %v", d, delay)
	}
	if d := second.at.Sub(first.at); d < interval {
		t.Errorf("second digest %v after the first, want at least %v", d, interval)
	}
	if _, text := parse(t, second.msg); !strings.Contains(text, "r2") || !strings.Contains(text, "r3") || strings.Contains(text, "r1") {
		t.Errorf("second digest:\n%s", text)
	}
}

// TestAdminRetry: a failed digest is sent after RetryDelay, with what was
// held meanwhile; when Run ends, a pending digest is flushed.
func TestAdminRetry(t *testing.T) {
	r := newRecorder()
	r.fail = 1
	n := newNotifier(t, Options{Send: r.Send, Admin: []string{"admin@example.org"}, AdminDelay: time.Millisecond, RetryDelay: 200 * time.Millisecond, AdminInterval: time.Hour})
	stop := run(t, n)
	n.Held(meta("20260301T120000.000000Z-aaaaaaaaaa", "u", "before", time.Now()))
	<-r.sends // the failing attempt
	n.Held(meta("20260301T120000.000001Z-aaaaaaaaaa", "u", "meanwhile", time.Now()))
	mails := r.waitMails(t, 1)
	if _, text := parse(t, mails[0].msg); !strings.Contains(text, "before") || !strings.Contains(text, "meanwhile") || !strings.HasPrefix(text, "2 message(s)") {
		t.Errorf("retried digest:\n%s", text)
	}
	n.Held(meta("20260301T120000.000002Z-aaaaaaaaaa", "u", "at shutdown", time.Now()))
	stop()
	if mails = r.got(); len(mails) != 2 || !strings.Contains(mails[1].msg, "at shutdown") {
		t.Errorf("%d mails after stop, want the flushed digest", len(mails))
	}
}

// TestHeldNeverBlocks: with Send stuck, a million Held calls return at
// once and keep maxItems entries.
func TestHeldNeverBlocks(t *testing.T) {
	r := newRecorder()
	r.block = make(chan struct{})
	n := newNotifier(t, Options{Send: r.Send, Admin: []string{"admin@example.org"}, AdminDelay: time.Millisecond})
	stop := run(t, n)
	n.Held(meta("20260301T120000.000000Z-aaaaaaaaaa", "u", "first", time.Now()))
	<-r.sends // Send is stuck now
	start := time.Now()
	m := meta("20260301T120000.000001Z-aaaaaaaaaa", "u", "burst", time.Now())
	for range 1_000_000 {
		n.Held(m)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("1e6 Held took %v", d)
	}
	n.mu.Lock()
	items, more := len(n.batch.items), n.batch.more
	n.mu.Unlock()
	if items != maxItems || more != 1_000_000-maxItems {
		t.Errorf("batch of %d items and %d more", items, more)
	}
	close(r.block)
	stop()
}
