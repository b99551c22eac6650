package quarantine

import (
	"context"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
)

type rejecter struct{}

func (rejecter) Name() string { return "av" }
func (rejecter) Filter(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
	return filters.Verdict{Action: filters.Reject, Reason: "Eicar-Signature FOUND"}, nil
}

// The store and the notice plug into the chain: a rejected message is
// stored byte for byte, and the client gets a notice naming its id.
func TestWithChain(t *testing.T) {
	s := openStore(t)
	c := &filters.Chain{
		Filters:    []filters.Filter{rejecter{}},
		Quarantine: s,
		Notice:     (&NoticeConfig{}).ChainNotice(),
		Spool:      &filters.Spool{Dir: t.TempDir()},
	}
	in := filters.BytesBody([]byte(testMsg))
	res := c.Run(context.Background(), testEnv, in)
	defer res.Release()
	if res.Outcome != filters.Deliver || !res.Withheld || !validID(res.QuarantineID) {
		t.Fatalf("outcome %v withheld %v id %q reason %q", res.Outcome, res.Withheld, res.QuarantineID, res.Reason)
	}
	_, text := parseNotice(t, readBody(t, res.Body))
	if !strings.Contains(text, res.QuarantineID) || !strings.Contains(text, "Eicar-Signature FOUND") {
		t.Errorf("notice text:\n%s", text)
	}
	r, err := s.Open(res.QuarantineID)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, _ := io.ReadAll(r); string(got) != testMsg {
		t.Errorf("stored %q", got)
	}
	m, err := s.Get(res.QuarantineID)
	if err != nil || m.Outcome != "refuse" || len(m.Verdicts) != 1 || m.Verdicts[0].Action != "reject" || !slices.Equal(m.Held, []string{"av"}) {
		t.Errorf("record %+v, %v", m, err)
	}
}
