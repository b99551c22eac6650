package strip

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/archive"
	"github.com/popgate/popgate/internal/mimetree"
)

// TestDesignShortForm: the strip block of examples/minimal.hcl (the smallest
// configuration, docs/ARCHITECTURE.md §2) works as it says.
func TestDesignShortForm(t *testing.T) {
	f := mustFilter(t, `filter "strip" "dangerous" {
  extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"]
}`)
	if f.Name() != "dangerous" || len(f.rules) != 1 || f.rules[0].name != "dangerous" || f.rules[0].action != ActionStrip {
		t.Fatalf("%+v", f.rules)
	}
	if f.onLimit != ActionReject || f.onArchive != ActionReject || f.lim.MaxDepth != 50 || f.lim.MaxParts != 10000 || f.lim.MaxHeaderBytes != 256<<10 || f.alim.MaxDepth != 3 {
		t.Errorf("defaults %+v %+v %v %v", f.lim, f.alim, f.onLimit, f.onArchive)
	}
	v, _ := run(t, f, readCorpus(t, "02_mixed_double_ext.eml"))
	if v.Action != filters.Replace || v.Reason != "stripped: invoice.pdf.exe (rule dangerous: extension exe)" {
		t.Errorf("%v %q", v.Action, v.Reason)
	}
}

func TestFullForm(t *testing.T) {
	f := mustFilter(t, `filter "strip" "policy" {
  rule "names" {
    filenames  = ["invoice*.pdf.*", "*.LNK"]
    extensions = [".ps1", "*.tar.gz"]
  }
  rule "types" {
    content_types  = ["application/x-msdownload", "application/java-*"]
    detected_types = ["application/vnd.microsoft.portable-executable"]
    action         = "reject"
  }
  rule "big" {
    min_size = "2KB"
    max_size = "10MB"
    action   = "quarantine"
  }
  rule "archives" {
    archive_filenames  = ["*.exe", "bin/*"]
    encrypted_archives = true
    suspicious_names   = true
  }
  on_limit            = "tempfail"
  max_depth           = 20
  max_parts           = 500
  max_header_size     = "64KiB"
  on_archive_limit    = "strip"
  archive_depth       = 2
  archive_max_entries = 100
  archive_max_size    = "100MB"
  archive_max_ratio   = 50
}`)
	if len(f.rules) != 4 || f.onLimit != ActionTempfail || f.lim != (mimetree.Limits{MaxDepth: 20, MaxParts: 500, MaxHeaderBytes: 64 << 10}) ||
		f.onArchive != ActionStrip || f.alim != (archive.Limits{MaxDepth: 2, MaxEntries: 100, MaxSize: 100_000_000, MaxRatio: 50}) {
		t.Fatalf("%+v %+v %+v", f.rules, f.lim, f.alim)
	}
	r := f.rules[2]
	if r.minSize != 2000 || r.maxSize != 10_000_000 || r.action != ActionQuarantine {
		t.Errorf("%+v", r)
	}
	msg := func(ctype, name, body string) []byte {
		return []byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: " + ctype + "; name=\"" + name + "\"\r\n\r\n" + body + "\r\n--b--\r\n")
	}
	for _, tc := range []struct {
		msg    []byte
		want   filters.Action
		reason string
	}{
		{msg("application/pdf", "Invoice-42.pdf.zip", "x"), filters.Replace, "Invoice-42.pdf.zip (rule names: file name matches invoice*.pdf.*)"},
		{msg("application/octet-stream", "link.lnk", "x"), filters.Replace, "rule names: file name matches *.lnk"},
		{msg("text/plain", "run.PS1", "x"), filters.Replace, "rule names: extension ps1"},
		{msg("application/gzip", "src.tar.gz", "x"), filters.Replace, "rule names: extension tar.gz"},
		{msg("application/x-msdownload", "a.bin", "x"), filters.Reject, "rejected: a.bin (rule types: content type application/x-msdownload)"},
		{msg("application/java-archive", "a.jar", "x"), filters.Reject, "rule types: content type application/java-archive"},
		{msg("image/png", "a.png", "MZ\x90\x00"), filters.Reject, "rule types: detected type application/vnd.microsoft.portable-executable"},
		{msg("image/png", "a.png", strings.Repeat("a", 3000)), filters.Reject, "quarantined: a.png (rule big: size 3000 bytes)"},
		{msg("image/png", "a.png", strings.Repeat("a", 1000)), filters.Pass, ""},
		{msg("application/pdf", "cv\u202Efdp.zip", "x"), filters.Replace, "rule archives: bidi or invisible characters in the file name"},
	} {
		v, _ := run(t, f, tc.msg)
		if v.Action != tc.want || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%q: %v %q, want %v %q", tc.msg, v.Action, v.Reason, tc.want, tc.reason)
		}
	}
}

func TestConfigDiagnostics(t *testing.T) {
	for _, tc := range []struct {
		src      string
		summary  string
		line     int // of the diagnostic's subject
		col      int
		warnOnly bool
	}{
		{`filter "strip" "x" {
  filenames = ["ok", "[bad"]
}`, "Invalid file name pattern", 2, 22, false},
		{`filter "strip" "x" {
  rule "r" {
    action = "delete"
    extensions = ["exe"]
  }
}`, "Invalid action", 3, 14, false},
		{`filter "strip" "x" {
  extensions = ["exe"]
  min_size = "1.5MB"
}`, "Invalid size", 3, 14, false},
		{`filter "strip" "x" {
  extensions = ["exe"]
  max_size = "10 parsecs"
}`, "Invalid size", 3, 14, false},
		{`filter "strip" "x" {
  extensions = ["*.e?e"]
}`, "Invalid extension", 2, 17, false},
		{`filter "strip" "x" {
  content_types = ["exe"]
}`, "Invalid content type", 2, 20, false},
		{`filter "strip" "x" {
  rule "r" {
    min_size = "10MB"
    max_size = "1MB"
  }
}`, "Invalid size range", 3, 16, false},
		{`filter "strip" "x" {
  rule "r" {
    action = "reject"
  }
}`, "Rule selects nothing", 2, 3, false},
		{`filter "strip" "x" {
  rule "r" { extensions = ["exe"] }
  rule "r" { extensions = ["scr"] }
}`, "Duplicate rule name", 3, 8, false},
		{`filter "strip" "x" {
  extensions = ["exe"]
  rule "x" { extensions = ["scr"] }
}`, "Duplicate rule name", 3, 8, false},
		{`filter "strip" "x" {
  action = "reject"
}`, "Action without selectors", 2, 3, false},
		{`filter "strip" "x" {
  extensions = ["exe"]
  on_limit = "quarantine"
}`, "Invalid action", 3, 14, false},
		{`filter "strip" "x" {
  extensions = ["exe"]
  max_depth = 0
}`, "Invalid value", 3, 15, false},
		{`filter "strip" "x" {
  extensions = "exe"
}`, "Invalid value", 2, 16, false},
		{`filter "strip" "x" {
  extention = ["exe"]
}`, "Unsupported argument", 2, 3, false},
		{`filter "strip" "x" {
  detected_types = ["application/x-not-a-real-type"]
}`, "Type never detected", 2, 21, true},
		{`filter "strip" "x" {
}`, "No rules", 1, 20, true},
	} {
		f, diags := buildFilter(t, tc.src)
		var found *hcl.Diagnostic
		for _, d := range diags {
			if d.Summary == tc.summary {
				found = d
			}
		}
		if found == nil {
			t.Errorf("%s: no %q diagnostic in %v", tc.src, tc.summary, diags)
			continue
		}
		if found.Subject == nil || found.Subject.Start.Line != tc.line || found.Subject.Start.Column != tc.col {
			t.Errorf("%s: %q at %v, want %d:%d", tc.src, tc.summary, found.Subject, tc.line, tc.col)
		}
		if tc.warnOnly {
			if diags.HasErrors() || f == nil {
				t.Errorf("%s: errors %v", tc.src, diags)
			}
		} else if !diags.HasErrors() || f != nil {
			t.Errorf("%s: want an error and no filter", tc.src)
		}
	}
	// Every problem is reported, not just the first.
	_, diags := buildFilter(t, `filter "strip" "x" {
  extensions = ["a/b", "*"]
  rule "r" { filenames = ["[", "]["] }
}`)
	if n := len(diags.Errs()); n != 4 {
		t.Errorf("%d errors, want 4: %v", n, diags)
	}
}

func TestConfigFunctions(t *testing.T) {
	// Values go through the build context's evaluation context.
	t.Setenv("POPGATE_TEST_EXT", "exe")
	_, diags := buildFilter(t, `filter "strip" "x" {
  extensions = [upper("exe")]
}`)
	// No functions in the test's context: an error with a range, no panic.
	if !diags.HasErrors() || diags[0].Subject == nil {
		t.Errorf("%v", diags)
	}
}

func TestNewErrors(t *testing.T) {
	for _, cfg := range []Config{
		{Rules: []Rule{{Name: "r"}}},
		{Rules: []Rule{{Name: "r", Extensions: []string{"exe"}, Action: ActionTempfail}}},
		{Rules: []Rule{{Name: "r", Filenames: []string{"["}}}},
		{Rules: []Rule{{Name: "r", MinSize: 10, MaxSize: 5}}},
		{OnLimit: ActionStrip},
		{OnArchiveLimit: Action(99)},
	} {
		if _, err := New("x", cfg, nil); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
	f, err := New("x", Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := readCorpus(t, "02_mixed_double_ext.eml")
	if v, _ := run(t, f, msg); v.Action != filters.Pass {
		t.Errorf("no rules: %v", v.Action)
	}
	if _, err := ParseAction("strip"); err != nil {
		t.Error(err)
	}
	if _, err := ParseAction("nope"); err == nil {
		t.Error("ParseAction accepted nope")
	}
}

// TestChain runs the filter in a filters.Chain as the proxy does.
func TestChain(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	ch := &filters.Chain{Filters: []filters.Filter{f}}
	msg := readCorpus(t, "15_zip_with_exe.eml")
	in := filters.BytesBody(msg)
	res := ch.Run(context.Background(), &filters.Envelope{Command: "RETR"}, in)
	defer res.Release()
	if len(res.Steps) != 1 || res.Steps[0].Err != nil || res.Steps[0].Action != filters.Replace {
		t.Fatalf("steps %+v (%s)", res.Steps, res.Reason)
	}
	// Without a quarantine the chain may refuse the lossy change; either
	// way the original is never delivered as it was.
	if res.Outcome == filters.Deliver && res.Body == in {
		t.Errorf("original delivered")
	}

	clean := filters.BytesBody(readCorpus(t, "01_alternative.eml"))
	res2 := ch.Run(context.Background(), &filters.Envelope{}, clean)
	defer res2.Release()
	if res2.Outcome != filters.Deliver || res2.Body != clean {
		t.Errorf("clean message: %v, same body %v", res2.Outcome, res2.Body == clean)
	}
}

// TestBodyWithoutReaderAt: a Body whose reader has no ReadAt (the header
// wrapper) is spooled first.
func TestBodyWithoutReaderAt(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	msg := readCorpus(t, "02_mixed_double_ext.eml")
	body := filters.PrependHeader(filters.BytesBody(msg), "X-Test: 1")
	v, err := f.Filter(context.Background(), nil, body)
	if err != nil || v.Action != filters.Replace || v.Body == nil {
		t.Fatalf("%v %v", v, err)
	}
	defer v.Body.Remove()
	rc, _ := v.Body.Open()
	defer rc.Close()
	head := make([]byte, 9)
	rc.Read(head)
	if string(head) != "X-Test: 1" {
		t.Errorf("result starts %q", head)
	}
	// The Edits refer to the body given (the wrapper), not to the copy
	// spooled for random access.
	given, err := io.ReadAll(mustOpen(t, body))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(mustOpen(t, v.Body))
	if err != nil {
		t.Fatal(err)
	}
	checkEdits(t, given, v, out)
}

func mustOpen(t *testing.T, b filters.Body) io.Reader {
	t.Helper()
	rc, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	return rc
}

func TestConfigEmptySelectors(t *testing.T) {
	for _, src := range []string{
		`filter "strip" "x" {
  rule "r" { encrypted_archives = false }
}`,
		`filter "strip" "x" {
  extensions = []
}`,
	} {
		f, diags := buildFilter(t, src)
		if f != nil || !diags.HasErrors() || diags.Errs()[0].Error() == "" || !strings.Contains(diags.Error(), "Rule selects nothing") {
			t.Errorf("%s: %v", src, diags)
		}
	}
}

// TestDocExample: the configuration shown in the package documentation
// loads.
func TestDocExample(t *testing.T) {
	src, err := os.ReadFile("strip.go")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	in := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "//\tfilter \"strip\"") {
			in = true
		}
		if in {
			b.WriteString(strings.TrimPrefix(line, "//\t") + "\n")
			if line == "//\t}" {
				break
			}
		}
	}
	f := mustFilter(t, strings.Replace(b.String(), `"NAME"`, `"doc"`, 1))
	if len(f.rules) != 2 || f.rules[1].name != "RULE" {
		t.Errorf("rules %+v", f.rules)
	}
}
