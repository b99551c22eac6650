package strip

import (
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/mimetree"
)

func TestParseWalkOrder(t *testing.T) {
	root := mustParse(t, readCorpus(t, "02_mixed_double_ext.eml"))
	var idx []int
	root.Walk(func(p *mimetree.Part) bool { idx = append(idx, p.Index); return true })
	if !slices.IsSorted(idx) || len(idx) != 6 {
		t.Errorf("walk order %v", idx)
	}
}

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct {
		in, norm string
		sus      bool
	}{
		{"Invoice.PDF.exe", "invoice.pdf.exe", false},
		{"invoice\u202Efdp.exe", "invoicefdp.exe", true},
		{"photo\u200b.jpg\u2066.scr", "photo.jpg.scr", true},
		{"report.exe. . ", "report.exe", false},
		{"report.exe\u00a0", "report.exe", false},
		{"C:\\Users\\x\\evil.exe", "evil.exe", false},
		{"../../etc/evil.js", "evil.js", false},
		{"a\x00b\r\n.exe", "ab.exe", false},
		{"\xff\xfe.exe", "\ufffd\ufffd.exe", false},
		{"ÜBER.EXE", "über.exe", false},
		{"invoice.pdf\u2028.exe", "invoice.pdf.exe", true},
		{"a\u3164.exe", "a.exe", true},
		{"=?utf-8?q?x?=\u0085.exe", "=?utf-8?q?x?=.exe", false},
	} {
		n, s := normalizeName(tc.in)
		if n != tc.norm || s != tc.sus {
			t.Errorf("%q: %q %v, want %q %v", tc.in, n, s, tc.norm, tc.sus)
		}
	}
	if got := displayName("invoice\u202Efdp.exe\r\n"); got != "invoice<U+202E>fdp.exe<U+000D><U+000A>" {
		t.Errorf("displayName %q", got)
	}
	if got := displayName(strings.Repeat("\u202e", 100)); len(got) > 200 || !strings.HasSuffix(got, ">…") {
		t.Errorf("displayName of 100 overrides: %d bytes %q", len(got), got)
	}
}
