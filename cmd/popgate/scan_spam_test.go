package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/rspamd"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// gtube is SpamAssassin's test string; rspamd gives it the reject action.
const gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

// fixedSpamScanner reports as rspamd 3.4 does for GTUBE and for a small
// normal message (the reports are fixed here; the end-to-end test of scan
// against a real rspamd is in internal/e2e).
type fixedSpamScanner struct{}

func (fixedSpamScanner) Scan(_ context.Context, body filters.Body) (filters.ScanResult, error) {
	rc, err := body.Open()
	if err != nil {
		return filters.ScanResult{}, err
	}
	defer rc.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(rc); err != nil {
		return filters.ScanResult{}, err
	}
	if strings.Contains(b.String(), gtube) {
		return filters.ScanResult{Spam: &filters.SpamReport{Score: 0, Required: 15, Action: "reject", Symbols: []filters.SpamSymbol{
			{Name: "GTUBE", Options: []string{"gtube"}}, {Name: "MISSING_MID", Score: 2.5}, {Name: "MISSING_DATE", Score: 1},
			{Name: "ARC_NA"}, {Name: "FROM_EQ_ENVFROM"}, {Name: "RCVD_COUNT_ZERO"}, {Name: "TO_DN_NONE"}, {Name: "MIME_GOOD", Score: -0.1, Options: []string{"text/plain"}},
			{Name: "RCPT_COUNT_ONE"}, {Name: "FROM_NO_DN"}, {Name: "TO_MATCH_ENVRCPT_ALL"}, {Name: "MID_RHS_NOT_FQDN\u202e", Score: 0.5},
		}}}, nil
	}
	return filters.ScanResult{Spam: &filters.SpamReport{Score: 1.4, Required: 15, Action: "no action", Symbols: []filters.SpamSymbol{
		{Name: "MISSING_MID", Score: 2.5}, {Name: "MIME_GOOD", Score: -0.1}, {Name: "R_DKIM_NA"}, {Name: "ARC_NA"}, {Name: "MID_RHS_NOT_FQDN", Score: 0.5},
	}}}, nil
}

func (fixedSpamScanner) Backends() []filters.Backend { return nil }
func (fixedSpamScanner) Check(context.Context) error { return nil }
func (fixedSpamScanner) Version() string             { return "" }
func (fixedSpamScanner) Close() error                { return nil }

// `popgate scan` shows the spam report of a spam filter's step: the score,
// rspamd's required score and action, the symbols strongest first.
func TestScanSpamGolden(t *testing.T) {
	dir := t.TempDir()
	spool := &filters.Spool{Dir: dir}
	fs := rspamd.DefaultFilterSettings()
	fs.Scanner, fs.UseScannerAction = "rs", true
	f, err := rspamd.NewFilter("junk", fixedSpamScanner{}, fs)
	if err != nil {
		t.Fatal(err)
	}
	chain := &filters.Chain{Filters: []filters.Filter{f}, Spool: spool}
	msgs := map[string]string{
		"spam": "From: a@example.com\nTo: b@example.com\nSubject: test\n\n" + gtube + "\n",
		"ham":  "From: a@example.com\nTo: b@example.com\nSubject: lunch\n\nAt noon?\n",
	}
	durations := regexp.MustCompile(`(\d+\.\d{3})ms`)
	for name, msg := range msgs {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dir, name+".eml")
			if err := os.WriteFile(file, []byte(msg), 0o600); err != nil {
				t.Fatal(err)
			}
			r := &ScanResult{File: name + ".eml", User: "bob", Listener: "plain", Upstream: "mail", Policy: "default", Steps: []ScanStep{}}
			if err := scanOne(context.Background(), chain, spool, &filters.Envelope{Command: "RETR"}, file, "", map[string]string{"junk": "spam"}, r); err != nil {
				t.Fatal(err)
			}
			r.DurationMS = 0
			for i := range r.Steps {
				r.Steps[i].DurationMS = 0
			}
			var got bytes.Buffer
			writeScanText(&got, r)
			got.WriteString("--- json\n")
			js, err := json.MarshalIndent(r, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got.Write(js)
			got.WriteString("\n")
			out := durations.ReplaceAll(got.Bytes(), []byte("0.000ms"))

			golden := filepath.Join("testdata", "scan_"+name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test ./cmd/popgate -run TestScanSpamGolden -update writes it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("scan output differs from %s (-update rewrites it)\n--- got:\n%s--- want:\n%s", golden, out, want)
			}
		})
	}
}
