package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/internal/mailer"
	"github.com/popgate/popgate/internal/testenv"
)

func openStore(t *testing.T, dir string) *quarantine.Store {
	t.Helper()
	s, err := quarantine.Open(dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hold quarantines a message of user and returns its record.
func hold(t *testing.T, s *quarantine.Store, user, subject, reason string) quarantine.Meta {
	t.Helper()
	w := (*filters.Spool)(nil).NewWriter()
	fmt.Fprintf(w, "From: Sender <sender@example.org>\r\nSubject: %s\r\n\r\nbody\r\n", subject)
	b, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	res := &filters.Result{Outcome: filters.Refuse, Reason: reason, Steps: []filters.Step{{Filter: "av", Action: filters.Reject, Reason: reason}}}
	id, err := s.Store(context.Background(), &filters.Envelope{User: user}, b, res)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// periodAfter is the end of the hour m was held in, and a time the digest
// of that hour is due at.
func periodAfter(m quarantine.Meta) (end, due time.Time) {
	end = time.Unix((m.Time.Unix()/3600+1)*3600, 0)
	return end, end.Add(10 * time.Second)
}

func claims(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "notify"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func userOptions(r *recorder, s *quarantine.Store, now time.Time) Options {
	o := Options{UserDigest: time.Hour, Store: s, Now: func() time.Time { return now },
		Link: func(m quarantine.Meta) string {
			if m.Reason == "spam" {
				return "https://gateway.example.org/release/" + m.ID
			}
			return ""
		}}
	if r != nil {
		o.Send = r.Send
	}
	return o
}

// TestUserDigestOnce: two instances on one directory send one digest per
// recipient and period; a restart does not send it again.
func TestUserDigestOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	s1, s2 := openStore(t, dir), openStore(t, dir)
	virus := hold(t, s1, "alice@example.org", "=?utf-8?q?Rechnung_M=C3=A4rz?=", "Eicar-Signature FOUND")
	spam := hold(t, s2, "alice@example.org", "cheap pills", "spam")
	hold(t, s1, "bob@example.org", "hello", "spam")
	last := hold(t, s1, "carol", "no address", "spam") // no recipient: not mailed
	end, due := periodAfter(last)
	r := newRecorder()
	var wg sync.WaitGroup
	for _, s := range []*quarantine.Store{s1, s2} {
		n := newNotifier(t, userOptions(r, s, due))
		wg.Go(func() { n.userStep(context.Background(), due) })
	}
	wg.Wait()
	mails := r.got()
	if len(mails) != 2 {
		t.Fatalf("%d mails, want 2 (alice, bob)", len(mails))
	}
	if c := claims(t, dir); len(c) != 1 || c[0] != fmt.Sprintf("digest-%d", end.Unix()-3600) {
		t.Errorf("claims %q", c)
	}
	alice := mails[0]
	if alice.to[0] != "alice@example.org" {
		alice = mails[1]
	}
	h, text := parse(t, alice.msg)
	if h.Get("To") != "<alice@example.org>" || subject(t, h) != "[popgate] 2 message(s) held for you" {
		t.Errorf("To %q, Subject %q", h.Get("To"), subject(t, h))
	}
	for _, want := range []string{"Subject: Rechnung März", "Subject: cheap pills", "From:    Sender <sender@example.org>",
		"Release it: https://gateway.example.org/release/" + spam.ID, "quoting the id " + virus.ID} {
		if !strings.Contains(text, want) {
			t.Errorf("alice's digest lacks %q:\n%s", want, text)
		}
	}
	// A restart: the period is claimed; the next one holds nothing.
	n := newNotifier(t, userOptions(r, s1, due))
	n.userStep(context.Background(), due)
	n.userStep(context.Background(), due.Add(time.Hour))
	if got := len(r.got()); got != 2 {
		t.Errorf("%d mails after the restart, want still 2", got)
	}
	if c := claims(t, dir); len(c) != 2 {
		t.Errorf("claims %q, want the next period's too", c)
	}
}

func writeClaim(t *testing.T, dir string, start, until time.Time) {
	t.Helper()
	data, _ := json.Marshal(claimRecord{From: start, Until: until})
	if err := os.WriteFile(filepath.Join(dir, "notify", fmt.Sprintf("digest-%d", start.Unix())), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestUserDigestCatchUp: periods no instance sent are folded into the next
// digest; old claims are removed, the newest kept.
func TestUserDigestCatchUp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	s := openStore(t, dir)
	m := hold(t, s, "alice@example.org", "hello", "spam")
	end, due := periodAfter(m)
	r := newRecorder()
	n := newNotifier(t, userOptions(r, s, due))
	writeClaim(t, dir, end.Add(-30*time.Hour), end.Add(-29*time.Hour))
	writeClaim(t, dir, end.Add(-4*time.Hour), end.Add(-3*time.Hour)) // then all instances were down
	n.userStep(context.Background(), due.Add(time.Hour))             // the period after m's
	mails := r.got()
	if len(mails) != 1 {
		t.Fatalf("%d mails, want 1", len(mails))
	}
	if _, text := parse(t, mails[0].msg); !strings.Contains(text, "between "+end.Add(-3*time.Hour).Format("2006-01-02 15:04 MST")) ||
		!strings.Contains(text, m.ID) {
		t.Errorf("digest:\n%s", text)
	}
	want := []string{fmt.Sprintf("digest-%d", end.Add(-4*time.Hour).Unix()), fmt.Sprintf("digest-%d", end.Unix())}
	if c := claims(t, dir); strings.Join(c, " ") != strings.Join(want, " ") {
		t.Errorf("claims %q, want %q", c, want)
	}
}

// TestUserDigestRetry: a failed user digest is retried, at most maxTries
// times.
func TestUserDigestRetry(t *testing.T) {
	for _, fails := range []int{1, maxTries} {
		dir := filepath.Join(t.TempDir(), "q")
		s := openStore(t, dir)
		_, due := periodAfter(hold(t, s, "alice@example.org", "hello", "spam"))
		r := newRecorder()
		r.fail = fails
		n := newNotifier(t, userOptions(r, s, due))
		if next := n.step(context.Background(), due); !next.Equal(due.Add(n.o.RetryDelay)) {
			t.Errorf("next step at %v, want the retry at %v", next, due.Add(n.o.RetryDelay))
		}
		for i := range maxTries {
			n.step(context.Background(), due.Add(time.Duration(i+1)*n.o.RetryDelay))
		}
		if got, want := len(r.got()), map[bool]int{true: 1}[fails < maxTries]; got != want || len(n.outbox) != 0 {
			t.Errorf("%d failures: %d mails, want %d; %d queued", fails, got, want, len(n.outbox))
		}
	}
}

// TestDovecotLMTP delivers an admin and a user digest to a real mailbox
// through internal/mailer.
func TestDovecotLMTP(t *testing.T) {
	d := testenv.Dovecot(t)
	u := d.NewUser(t)
	m, err := mailer.New(mailer.Options{Address: d.LMTP, LMTP: true, TLS: mailer.TLSNone, Helo: "popgate.test"})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "q")
	s := openStore(t, dir)
	held := hold(t, s, u.Name+"@example.org", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "spam")
	_, due := periodAfter(held)
	o := userOptions(nil, s, due)
	o.Send, o.Admin, o.AdminDelay = m.Send, []string{u.Name + "@example.org"}, time.Millisecond
	n := newNotifier(t, o)
	n.Held(held)
	n.step(context.Background(), due.Add(time.Second))
	files := u.Files(t)
	if len(files) != 2 {
		t.Fatalf("%d messages delivered, want 2", len(files))
	}
	var subjects []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Delivery adds Return-Path, Delivered-To and Received on top; the
		// Maildir may keep LF line ends.
		crlf := strings.ReplaceAll(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n", "\r\n")
		_, after, ok := strings.Cut(crlf, "\r\nFrom: ")
		h, text := parse(t, "From: "+after)
		if !ok || !strings.Contains(text, held.ID) {
			t.Errorf("delivered:\n%s", data)
		}
		subjects = append(subjects, subject(t, h))
	}
	slices.Sort(subjects)
	if want := "[popgate] 1 message(s) held,[popgate] 1 message(s) held for you"; strings.Join(subjects, ",") != want {
		t.Errorf("subjects %q, want %q", subjects, want)
	}
}
