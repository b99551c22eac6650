package rspamd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/testenv"
)

// Tests against the real rspamd of scripts/testenv.sh.

// gtube is a spam message: rspamd's GTUBE pattern.
func gtube() []byte {
	return []byte("From: Spammer <spam@example.net>\r\nTo: Alice <alice@example.org>\r\nSubject: Cheap pills\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <gtube-" + token() + "@example.net>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + testenv.GTUBE + "\r\n")
}

// ham is an ordinary message, unique per call so that learning it is news
// to rspamd; words adds body text (Bayes wants 11 tokens).
func ham(words int) []byte {
	tok := token() // rspamd knows a learned message by its text
	body := "Shall we meet for lunch on Thursday at noon? Ref " + tok + "."
	for i := 0; i < words; i++ {
		body += fmt.Sprintf(" The architects sent drawing %d of the new library.", i)
	}
	return []byte("From: Bob <bob@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: Lunch " + tok + "\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\nMessage-ID: <lunch-" + token() + "@example.org>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n")
}

func token() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func realScanner(t *testing.T, cfg Config) (*Scanner, *testenv.RspamdEnv) {
	t.Helper()
	env := testenv.Rspamd(t)
	if cfg.Addresses == nil {
		cfg.Addresses = []string{"http://" + env.Addr}
	}
	s, err := NewScanner(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, env
}

func symbolNames(r *filters.SpamReport) []string {
	var names []string
	for _, s := range r.Symbols {
		names = append(names, s.Name)
	}
	return names
}

func TestRealGTUBE(t *testing.T) {
	s, env := realScanner(t, Config{})
	res, err := s.Scan(context.Background(), filters.BytesBody(gtube()))
	if err != nil {
		t.Fatal(err)
	}
	r := res.Spam
	if r == nil || r.Action != "reject" || r.Score < r.Required || r.Skipped || !slices.Contains(symbolNames(r), "GTUBE") {
		t.Fatalf("GTUBE: %+v", r)
	}
	if res.Backend != "http://"+env.Addr || res.Took <= 0 {
		t.Errorf("result %+v", res)
	}
	if v := s.Version(); !strings.HasPrefix(v, "rspamd/") {
		t.Errorf("Version after a scan = %q", v)
	}
}

func TestRealHam(t *testing.T) {
	s, _ := realScanner(t, Config{})
	env := &filters.Envelope{SessionID: "s-" + token(), User: "alice", Client: netip.MustParseAddrPort("127.0.0.1:40000")}
	res, err := s.ScanEnvelope(context.Background(), env, filters.BytesBody(ham(0)))
	if err != nil {
		t.Fatal(err)
	}
	r := res.Spam
	if r.Action != "no action" || r.Score >= r.Required || r.Skipped || len(r.Symbols) == 0 {
		t.Fatalf("ham: %+v", r)
	}
	t.Logf("ham: score %.2f of %.2f, symbols %v", r.Score, r.Required, symbolNames(r))
	// The test rspamd's milter_headers adds Authentication-Results and
	// removes upstream ones; its value is folded there, unfolded here.
	var ar string
	for _, h := range r.AddHeaders {
		if h.Name == "Authentication-Results" {
			ar = h.Value
		}
	}
	if ar == "" || strings.ContainsAny(ar, "\r\n\t") || !strings.Contains(ar, "dkim=none") {
		t.Errorf("add_headers %q: want an unfolded Authentication-Results with dkim=none", r.AddHeaders)
	}
	if !slices.Contains(r.RemoveHeaders, "Authentication-Results") || !slices.Contains(r.RemoveHeaders, "X-Spam") {
		t.Errorf("remove_headers %q", r.RemoveHeaders)
	}
}

// The login goes as Deliver-To, not User: rspamd must check the message
// as mail received, not as mail an authenticated user sends (for which it
// skips Authentication-Results, hfilter, DMARC and more).
func TestRealEnvelopeIsNotASender(t *testing.T) {
	s, _ := realScanner(t, Config{})
	msg := ham(0)
	bare, err := s.Scan(context.Background(), filters.BytesBody(msg))
	if err != nil {
		t.Fatal(err)
	}
	env := &filters.Envelope{SessionID: "s-" + token(), User: "alice", Client: netip.MustParseAddrPort("127.0.0.1:40000")}
	withEnv, err := s.ScanEnvelope(context.Background(), env, filters.BytesBody(msg))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := symbolNames(bare.Spam), symbolNames(withEnv.Spam); !slices.Equal(a, b) || len(withEnv.Spam.AddHeaders) == 0 {
		t.Fatalf("symbols without the envelope %v, with it %v (add_headers %q): the envelope changed how rspamd sees the message", a, b, withEnv.Spam.AddHeaders)
	}
}

func TestRealCheckAndVersion(t *testing.T) {
	s, _ := realScanner(t, Config{HealthInterval: time.Hour})
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v := s.Version(); !strings.HasPrefix(v, "rspamd/3") {
		t.Errorf("Version after Check = %q", v)
	}
	if b := s.Backends(); len(b) != 1 || !b[0].Up {
		t.Errorf("Backends %+v", b)
	}
}

func TestRealLearn(t *testing.T) {
	env := testenv.Rspamd(t)
	c, err := NewController("http://"+env.Controller, env.Password, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	msg := filters.BytesBody(ham(3))
	if err := c.Learn(ctx, msg, false, "alice"); err != nil {
		t.Fatalf("learnham: %v", err)
	}
	err = c.Learn(ctx, msg, false, "alice")
	if !errors.Is(err, ErrAlreadyLearned) || !NotLearned(err) || !strings.Contains(err.Error(), "already learned as ham") {
		t.Fatalf("learnham again: %v, want ErrAlreadyLearned with rspamd's words", err)
	}
	// Learning it as the other class is news: rspamd moves it.
	if err := c.Learn(ctx, msg, true, ""); err != nil {
		t.Fatalf("learnspam of a message learned as ham: %v", err)
	}
	if err := c.Learn(ctx, filters.BytesBody(gtube()), true, ""); err != nil && !NotLearned(err) {
		t.Fatalf("learnspam GTUBE: %v", err)
	}
	short := filters.BytesBody([]byte("Subject: hi\r\nMessage-ID: <" + token() + "@example.org>\r\n\r\nhi\r\n"))
	err = c.Learn(ctx, short, true, "")
	if !errors.Is(err, ErrTooFewTokens) || !strings.Contains(err.Error(), "less tokens") {
		t.Fatalf("learnspam of two words: %v, want ErrTooFewTokens with rspamd's words", err)
	}

	wrong, _ := NewController(env.Controller, "not-the-password", 0, 0)
	err = wrong.Learn(ctx, filters.BytesBody(ham(3)), false, "")
	if err == nil || NotLearned(err) || !strings.Contains(err.Error(), "refused the password") {
		t.Fatalf("a wrong password: %v", err)
	}
	small, _ := NewController(env.Controller, env.Password, 0, 100)
	if err := small.Learn(ctx, msg, false, ""); !errors.Is(err, ErrOversize) {
		t.Fatalf("over max_size: %v", err)
	}
}
