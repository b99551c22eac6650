package policy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func rng(file string, sl, sc, sb, el, ec, eb int) *hcl.Range {
	return &hcl.Range{
		Filename: file,
		Start:    hcl.Pos{Line: sl, Column: sc, Byte: sb},
		End:      hcl.Pos{Line: el, Column: ec, Byte: eb},
	}
}

func TestWriteDiagnostics(t *testing.T) {
	src := "a = 1\n\tb = \"héllo\"\r\nc = [\n  1,\n]\n"
	files := map[string]*hcl.File{"x.hcl": {Bytes: []byte(src)}}
	diags := hcl.Diagnostics{
		// A range after a tab and a multi-byte character.
		{Severity: hcl.DiagError, Summary: "Bad", Detail: "Detail.", Subject: rng("x.hcl", 2, 7, 12, 2, 10, 16)},
		// A zero-width range gets one caret.
		{Severity: hcl.DiagWarning, Summary: "Warn", Subject: rng("x.hcl", 1, 5, 4, 1, 5, 4)},
		// A range over several lines is underlined to the end of its first.
		{Severity: hcl.DiagError, Summary: "Multi", Detail: "Lines.", Subject: rng("x.hcl", 3, 5, 25, 5, 2, 33)},
		// A file that is not in the map: no snippet.
		{Severity: hcl.DiagError, Summary: "Elsewhere", Subject: rng("y.hcl", 7, 3, 50, 7, 4, 51)},
		// No subject at all.
		{Severity: hcl.DiagError, Summary: "Nowhere", Detail: "At all."},
		// A subject beyond the end of the source: no snippet.
		{Severity: hcl.DiagWarning, Summary: "Beyond", Subject: rng("x.hcl", 99, 1, 999, 99, 2, 1000)},
	}
	var buf bytes.Buffer
	WriteDiagnostics(&buf, diags, files)
	want := strings.Join([]string{
		"x.hcl:2:7: error: Bad: Detail.",
		"    2 | \tb = \"héllo\"",
		"      | \t     ^^^",
		"x.hcl:1:5: warning: Warn",
		"    1 | a = 1",
		"      |     ^",
		"x.hcl:3:5: error: Multi: Lines.",
		"    3 | c = [",
		"      |     ^",
		"y.hcl:7:3: error: Elsewhere",
		"error: Nowhere: At all.",
		"x.hcl:99:1: warning: Beyond",
		"4 errors, 2 warnings",
		"",
	}, "\n")
	if got := buf.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteDiagnosticsEmpty(t *testing.T) {
	var buf bytes.Buffer
	WriteDiagnostics(&buf, nil, nil)
	if buf.Len() != 0 {
		t.Errorf("wrote %q for no diagnostics", buf.String())
	}
}

func TestWriteDiagnosticsControlCharacters(t *testing.T) {
	src := "x = \"\x1b[31mred\"\n"
	files := map[string]*hcl.File{"x.hcl": {Bytes: []byte(src)}}
	var buf bytes.Buffer
	WriteDiagnostics(&buf, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "S", Subject: rng("x.hcl", 1, 5, 4, 1, 15, 14)}}, files)
	if strings.Contains(buf.String(), "\x1b") {
		t.Errorf("escape character copied to the output: %q", buf.String())
	}
}

func TestCountLine(t *testing.T) {
	for _, tc := range []struct {
		e, w int
		want string
	}{{0, 1, "0 errors, 1 warning"}, {1, 0, "1 error, 0 warnings"}, {2, 3, "2 errors, 3 warnings"}} {
		if got := countLine(tc.e, tc.w); got != tc.want {
			t.Errorf("countLine(%d, %d) = %q, want %q", tc.e, tc.w, got, tc.want)
		}
	}
}
