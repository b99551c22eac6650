package strip

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/tag"
)

// keepAll is a quarantine that keeps nothing: the benchmarks measure the
// chain, not the disk.
type keepAll struct{}

func (keepAll) Store(context.Context, *filters.Envelope, filters.Body, *filters.Result) (string, error) {
	return "q", nil
}

// benchChain is the chain of make bench's strip+tag rows: strip with
// examples/demo.hcl's rules, then tag, with the policy's default
// encrypted setting (which reads the signatures and the MIME tree once).
func benchChain(b *testing.B) *filters.Chain {
	spool := &filters.Spool{MemoryLimit: 1000 * 1000}
	s, err := New("dangerous", Config{Rules: []Rule{{
		Name:             "dangerous",
		Extensions:       []string{"exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"},
		ArchiveFilenames: []string{"*.exe", "*.scr", "*.js"},
	}}}, spool)
	if err != nil {
		b.Fatal(err)
	}
	t, err := tag.New("stamp", tag.Config{Headers: []tag.Field{{Name: "X-Popgate-Scanned", Value: "yes"}}}, "")
	if err != nil {
		b.Fatal(err)
	}
	return &filters.Chain{Filters: []filters.Filter{s, t}, Spool: spool, Quarantine: keepAll{}, Encrypted: filters.EncryptedPassWithTag}
}

func runChain(b *testing.B, c *filters.Chain, msgs [][]byte) {
	ctx := context.Background()
	var total int64
	for _, m := range msgs {
		total += int64(len(m))
	}
	b.SetBytes(total)
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range msgs {
			in := filters.BytesBody(m)
			res := c.Run(ctx, &filters.Envelope{}, in)
			if res.Outcome != filters.Deliver {
				b.Fatal(res.Outcome, res.Reason)
			}
			if err := res.Release(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(msgs))/1000, "µs/msg")
}

// BenchmarkChainAttachments runs the strip+tag chain over the
// attachment-heavy message (nothing stripped).
func BenchmarkChainAttachments(b *testing.B) {
	runChain(b, benchChain(b), [][]byte{benchMessage()})
}

// BenchmarkChainCorpus runs the strip+tag chain over the real-world-shaped
// messages of the corpus (most are stripped).
func BenchmarkChainCorpus(b *testing.B) {
	names, err := filepath.Glob(filepath.Join("testdata", "corpus", "*.eml"))
	if err != nil || len(names) == 0 {
		b.Fatal("no corpus", err)
	}
	var msgs [][]byte
	for _, n := range names {
		m, err := os.ReadFile(n)
		if err != nil {
			b.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	runChain(b, benchChain(b), msgs)
}
