package tag

import (
	"context"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/popgate/popgate/filters"
)

func decodeAndBuild(t *testing.T, src string) (filters.Filter, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "tag.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	dc := &filters.DecodeContext{Eval: &hcl.EvalContext{Variables: map[string]cty.Value{
		"site": cty.StringVal("gw1"),
	}}}
	spec, diags, ok := filters.DecodeFilter("tag", "stamp", hcl.Range{}, f.Body, dc)
	if !ok {
		t.Fatal(`"tag" is not registered`)
	}
	if spec == nil {
		return nil, diags
	}
	flt, err := spec.Build(&filters.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	return flt, diags
}

func TestBuild(t *testing.T) {
	flt, diags := decodeAndBuild(t, `
headers = {
  "X-Popgate-Scanned" = "yes"
  X-Popgate-Site      = "gw-${site}"
  "X-Popgate-A"       = "first"
}
subject_prefix = "[SCANNED]"
`)
	if len(diags) > 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	if flt.Name() != "stamp" {
		t.Errorf("Name() = %q", flt.Name())
	}
	v, err := flt.Filter(context.Background(), nil, filters.BytesBody([]byte("Subject: Hi\r\n\r\nx\r\n")))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Body.Remove()
	got := read(t, v.Body)
	want := "X-Popgate-Original-Subject: Hi\r\nX-Popgate-Scanned: yes\r\nX-Popgate-Site: gw-gw1\r\nX-Popgate-A: first\r\nSubject: [SCANNED] Hi\r\n\r\nx\r\n"
	if got != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if !v.KeepsOriginal {
		t.Error("lossless rewrite not marked KeepsOriginal")
	}

	flt, diags = decodeAndBuild(t, `
subject_prefix = "[S]"
keep_original_subject = false
`)
	if len(diags) > 0 {
		t.Fatalf("diagnostics: %v", diags)
	}
	if v, _ := flt.Filter(context.Background(), nil, filters.BytesBody([]byte("Subject: Hi\r\n\r\n"))); v.KeepsOriginal {
		t.Error("keep_original_subject = false still KeepsOriginal")
	} else {
		v.Body.Remove()
	}
}

func TestBuildDiagnostics(t *testing.T) {
	tests := []struct {
		name, src string
		summary   string // of the first diagnostic
		line, col int    // where its subject starts
		warning   bool
	}{
		{"bad name", "headers = {\n  \"X Bad\" = \"v\"\n}", "Invalid header field name", 2, 3, false},
		{"reserved name", "headers = {\n  \"X-A\" = \"1\"\n  \"Subject\" = \"v\"\n}", "Invalid header field name", 3, 3, false},
		{"MIME name", "headers = { \"Content-Type\" = \"text/html\" }", "Invalid header field name", 1, 13, false},
		{"duplicate", "headers = {\n  \"X-A\" = \"1\"\n  \"x-a\" = \"2\"\n}", "Duplicate header field", 3, 3, false},
		{"line break in value", "headers = {\n  \"X-A\" = \"a\\r\\nBcc: x@example.org\"\n}", "Invalid header field value", 2, 11, false},
		{"encoded word in value", "headers = { \"X-A\" = \"=?utf-8?q?x?=\" }", "Invalid header field value", 1, 21, false},
		{"value not a string", "headers = {\n  \"X-A\" = [\"a\"]\n}", "Unsuitable value type", 2, 11, false},
		{"headers not a map", "headers = \"X-A: 1\"", "Unsuitable value type", 1, 12, false},
		{"unknown variable", "headers = { \"X-A\" = nope }", "Unknown variable", 1, 21, false},
		{"unknown attribute", "header = { \"X-A\" = \"1\" }", "Unsupported argument", 1, 1, false},
		{"empty prefix", "subject_prefix = \"\"", "Invalid subject prefix", 1, 18, false},
		{"prefix with newline", "subject_prefix = \"[A]\\n\"", "Invalid subject prefix", 1, 18, false},
		{"prefix not a string", "subject_prefix = [1]", "Unsuitable value type", 1, 18, false},
		{"keep not a bool", "subject_prefix = \"[A]\"\nkeep_original_subject = \"maybe\"", "Unsuitable value type", 2, 26, false},
		{"nothing to do", "", "Tag filter does nothing", 1, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			flt, diags := decodeAndBuild(t, tc.src)
			if len(diags) == 0 {
				t.Fatal("no diagnostics")
			}
			d := diags[0]
			if !strings.Contains(d.Summary, tc.summary) {
				t.Errorf("summary %q, want %q (%v)", d.Summary, tc.summary, diags)
			}
			if d.Subject == nil {
				t.Fatalf("diagnostic without a range: %v", d)
			}
			if d.Subject.Filename != "tag.hcl" || d.Subject.Start.Line != tc.line || d.Subject.Start.Column != tc.col {
				t.Errorf("range %s, want tag.hcl:%d:%d (%s: %s)", d.Subject, tc.line, tc.col, d.Summary, d.Detail)
			}
			if tc.warning {
				if diags.HasErrors() || flt == nil {
					t.Errorf("want only a warning and a filter: %v", diags)
				}
			} else if !diags.HasErrors() || flt != nil {
				t.Errorf("want an error and no filter: %v, %v", diags, flt)
			}
		})
	}
}
