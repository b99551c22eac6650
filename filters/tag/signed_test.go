package tag

import (
	"context"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/dkimtest"
)

type storeAll struct{ n int }

func (q *storeAll) Store(context.Context, *filters.Envelope, filters.Body, *filters.Result) (string, error) {
	q.n++
	return "q1", nil
}

// A DKIM-signed message through the real tag filter and the chain, checked
// with go-msgauth's verifier and a test key: header fields the signature
// does not sign leave it valid, and a subject prefix where Subject is
// signed follows the filter's signed setting.
func TestTagKeepsDKIM(t *testing.T) {
	signer := dkimtest.New(t, "example.com", "sel")
	msg := []byte("From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: invoice\r\n" +
		"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nplease pay\r\n")
	const brokenField = "X-Popgate-Signature: broken by the gateway (dkim d=example.com)\r\n"
	for _, tc := range []struct {
		name     string
		headers  []string // h=
		cfg      Config
		mode     filters.Signed
		verifies bool
		top      string // starts the delivered message
		withheld bool
	}{
		{name: "fields and verdicts, subject signed", headers: []string{"from", "to", "subject", "date", "message-id"},
			cfg: Config{Headers: []Field{{"X-Popgate-Scanned", "yes"}}, Verdicts: true, Version: true}, verifies: true, top: "X-Popgate-Scanned: yes\r\nX-Popgate-Verdict: none\r\n"},
		{name: "prefix, subject not signed", headers: []string{"from", "to", "date"},
			cfg: Config{SubjectPrefix: "[SPAM]"}, verifies: true, top: "X-Popgate-Original-Subject: invoice\r\n"},
		{name: "prefix, subject signed, change", headers: []string{"from", "subject"},
			cfg: Config{SubjectPrefix: "[SPAM]"}, top: brokenField + "X-Popgate-Original-Subject: invoice\r\n"},
		{name: "prefix, subject signed, keep", headers: []string{"from", "subject"}, mode: filters.SignedKeep,
			cfg: Config{SubjectPrefix: "[SPAM]"}, verifies: true, top: "X-Popgate-Warning: not changed: stamp: signed (dkim d=example.com)\r\nDKIM-Signature:"},
		{name: "prefix, subject signed, withhold", headers: []string{"from", "subject"}, mode: filters.SignedWithhold,
			cfg: Config{SubjectPrefix: "[SPAM]"}, withheld: true},
		{name: "a field the signer oversigned", headers: []string{"from", "x-popgate-scanned"},
			cfg: Config{Headers: []Field{{"X-Popgate-Scanned", "yes"}}}, top: brokenField + "X-Popgate-Scanned: yes\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signed := signer.Sign(t, msg, tc.headers, false)
			if err := dkimtest.Verify(signed, signer); err != nil {
				t.Fatal(err)
			}
			tag, err := New("stamp", tc.cfg, "1.0")
			if err != nil {
				t.Fatal(err)
			}
			q := &storeAll{}
			chain := &filters.Chain{Filters: []filters.Filter{tag}, Signed: map[string]filters.Signed{"stamp": tc.mode}, Quarantine: q}
			res := chain.Run(context.Background(), &filters.Envelope{}, filters.BytesBody(signed))
			defer res.Release()
			if tc.withheld {
				if res.Outcome != filters.Refuse || q.n != 1 || !strings.HasPrefix(res.Reason, "withheld, signed (dkim d=example.com)") {
					t.Fatalf("outcome %v, %d stored, reason %q", res.Outcome, q.n, res.Reason)
				}
				return
			}
			if res.Outcome != filters.Deliver {
				t.Fatalf("outcome %v: %s", res.Outcome, res.Reason)
			}
			out := read(t, res.Body)
			if !strings.HasPrefix(out, tc.top) {
				t.Errorf("delivered\n%s\nwant it to start with\n%s", out, tc.top)
			}
			if err := dkimtest.Verify([]byte(out), signer); (err == nil) != tc.verifies {
				t.Errorf("verifies: %v, want %v\n%s", err, tc.verifies, out)
			}
			if q.n != 0 {
				t.Errorf("a lossless tag put %d originals in quarantine", q.n)
			}
		})
	}
}
