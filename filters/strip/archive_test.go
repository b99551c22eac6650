package strip

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/archive/archivetest"
)

// bombMessage attaches the zip bomb as base64.
func bombMessage(t testing.TB) []byte {
	return []byte("From: a@example.org\r\nSubject: bomb\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zb\"\r\n\r\n" +
		"--zb\r\nContent-Type: text/plain\r\n\r\nopen it\r\n" +
		"--zb\r\nContent-Type: application/zip; name=\"report.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(archivetest.Zip()) + "\r\n--zb--\r\n")
}

func TestZipBombVerdict(t *testing.T) {
	msg := bombMessage(t)
	for _, tc := range []struct {
		on     string
		want   filters.Action
		reason string
	}{
		{"", filters.Reject, "rejected: report.zip (zip bomb: more than 512 MiB uncompressed (at bomb.bin))"},
		{"quarantine", filters.Reject, "quarantined: report.zip (zip bomb"},
		{"strip", filters.Replace, "stripped: report.zip (zip bomb"},
		{"tempfail", filters.Retry, "deferred: report.zip (zip bomb"},
		{"pass", filters.Pass, ""},
	} {
		src := `filter "strip" "z" {
  archive_filenames = ["*.exe"]
`
		if tc.on != "" {
			src += `  on_archive_limit = "` + tc.on + `"` + "\n"
		}
		f := mustFilter(t, src+"}")
		start := time.Now()
		v, out := run(t, f, msg)
		d := time.Since(start)
		t.Logf("on_archive_limit %q: %v %q in %v", tc.on, v.Action, v.Reason, d)
		if v.Action != tc.want || !strings.HasPrefix(v.Reason, tc.reason) {
			t.Errorf("on_archive_limit %q: %v %q", tc.on, v.Action, v.Reason)
		}
		if d > hostileBudget {
			t.Errorf("took %v", d)
		}
		if tc.want == filters.Replace {
			d, _ := f.decide(context.Background(), bytes.NewReader(msg), int64(len(msg)))
			checkSplice(t, msg, out, d.Matches)
		}
	}
}
