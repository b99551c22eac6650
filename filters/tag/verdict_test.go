package tag

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

type reasonFilter struct{ name, reason string }

func (f reasonFilter) Name() string { return f.name }
func (f reasonFilter) Filter(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
	return filters.Verdict{Action: filters.Pass, Reason: f.reason}, nil
}

// The verdict and version headers report what ran before the tag filter,
// and a hostile reason cannot add a header field of its own.
func TestVerdictAndVersionHeaders(t *testing.T) {
	tag, err := New("stamp", Config{Verdicts: true, Version: true}, "1.2.3-test")
	if err != nil {
		t.Fatal(err)
	}
	chain := &filters.Chain{Filters: []filters.Filter{
		reasonFilter{"av", "clean"},
		reasonFilter{"evil", "x\r\nBcc: victim@example.com"},
		tag,
	}}
	in := filters.BytesBody([]byte("Subject: hi\r\n\r\nbody\r\n"))
	res := chain.Run(context.Background(), &filters.Envelope{}, in)
	defer res.Release()
	if res.Outcome != filters.Deliver {
		t.Fatalf("outcome %v: %s", res.Outcome, res.Reason)
	}
	rc, _ := res.Body.Open()
	out, _ := io.ReadAll(rc)
	rc.Close()
	// The chain knows the delivered form: the tag's pieces of the input.
	if !res.Reproducible {
		t.Fatal("not Reproducible")
	}
	if spliced := read(t, filters.SplicedBody(in, res.Pieces)); spliced != string(out) {
		t.Fatalf("Result.Pieces read %q, the body %q", spliced, out)
	}
	want := "X-Popgate-Verdict: av=pass (clean); evil=pass (x Bcc: victim@example.com)\r\n" +
		"X-Popgate-Version: popgate 1.2.3-test\r\n" +
		"Subject: hi\r\n\r\nbody\r\n"
	if string(out) != want {
		t.Fatalf("got\n%q\nwant\n%q", out, want)
	}
	if strings.Contains(string(out), "\r\nBcc:") {
		t.Fatal("a reason injected a header field")
	}
}

// A reason that holds encoded words of its own does not reach the reader
// as such (they would decode to CR LF): popgate encodes the header, which decodes
// to the reason's clean text.
func TestVerdictHeaderEncodedWordsInReason(t *testing.T) {
	tag, err := New("stamp", Config{Verdicts: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	chain := &filters.Chain{Filters: []filters.Filter{
		reasonFilter{"strip", "removed =?utf-8?q?evil=0D=0A?= file"},
		tag,
	}}
	res := chain.Run(context.Background(), &filters.Envelope{}, filters.BytesBody([]byte("Subject: hi\r\n\r\nbody\r\n")))
	defer res.Release()
	rc, _ := res.Body.Open()
	out, _ := io.ReadAll(rc)
	rc.Close()
	field, _, _ := strings.Cut(string(out), "\r\nSubject:")
	value := strings.ReplaceAll(strings.TrimPrefix(field, verdictHeader+": "), "\r\n ", " ")
	if strings.Contains(value, "=?utf-8?q?evil") {
		t.Fatalf("the reason's own encoded word is in the header as it is: %q", field)
	}
	if got, want := mailtext.DecodeWords(value), "strip=pass (removed =?utf-8?q?evil=0D=0A?= file)"; got != want {
		t.Fatalf("decoded verdict header %q, want %q", got, want)
	}
}
