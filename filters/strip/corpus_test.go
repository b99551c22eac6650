package strip

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mimetree"
)

// corpusPolicy is the policy the corpus is judged by.
const corpusPolicy = `
filter "strip" "dangerous" {
  extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"]
  rule "archives" {
    archive_filenames = ["*.exe", "*.js", "*.vbs", "*.scr"]
  }
  rule "encrypted" {
    encrypted_archives = true
    action             = "quarantine"
  }
  rule "disguised" {
    detected_types = ["application/x-msdownload"]
  }
  rule "scripts" {
    extensions = ["hta"]
    action     = "reject"
  }
}
`

type corpusCase struct {
	file   string
	action filters.Action
	names  []string // the names of the parts matched, in order
	reason string   // a substring of the verdict's reason
}

var corpus = []corpusCase{
	{"01_alternative.eml", filters.Pass, nil, ""},
	{"02_mixed_double_ext.eml", filters.Replace, []string{"invoice.pdf.exe"}, "stripped: invoice.pdf.exe (rule dangerous: extension exe)"},
	{"03_forward_rfc822.eml", filters.Replace, []string{"setup.scr"}, "setup.scr (rule dangerous: extension scr)"},
	{"04_signed.eml", filters.Replace, []string{"TOOL.EXE"}, "TOOL.EXE (rule dangerous: extension exe)"},
	{"05_signed_clean.eml", filters.Pass, nil, ""},
	{"06_latin1.eml", filters.Replace, []string{"Rechnung März.pdf.exe"}, "Rechnung März.pdf.exe"},
	{"07_shift_jis.eml", filters.Replace, []string{"請求書.exe"}, "請求書.exe (rule dangerous: extension exe)"},
	{"08_missing_final_boundary.eml", filters.Replace, []string{"payload.exe"}, "payload.exe"},
	{"09_lf_only.eml", filters.Replace, []string{"run.js"}, "run.js (rule dangerous: extension js)"},
	{"10_8bit.eml", filters.Replace, []string{"screensaver.scr"}, "screensaver.scr"},
	{"11_rfc2231_continuations.eml", filters.Replace, []string{"Überweisung 2024 Q1.pdf.exe"}, "Überweisung 2024 Q1.pdf.exe"},
	{"12_rfc2047_name.eml", filters.Replace, []string{"die Rechnung.exe"}, "die Rechnung.exe"},
	{"13_rtl_override.eml", filters.Replace, []string{"invoice\u202efdp.exe"}, "invoice<U+202E>fdp.exe (rule dangerous: extension exe)"},
	{"14_trailing_dots_case.eml", filters.Replace, []string{"SETUP.EXE", "report.pdf.exe. . "}, "SETUP.EXE"},
	{"15_zip_with_exe.eml", filters.Replace, []string{"files.zip"}, "files.zip (rule archives: archive member bin/evil.exe matches *.exe)"},
	{"16_nested_zip.eml", filters.Replace, []string{"bundle.dat"}, "archive member docs/more.zip/payload.js matches *.js"},
	{"17_encrypted_zip.eml", filters.Reject, []string{"secret.zip"}, "quarantined: secret.zip (rule encrypted: encrypted archive)"},
	{"18_txt_is_exe.eml", filters.Replace, []string{"readme.txt"}, "readme.txt (rule disguised: detected type application/vnd.microsoft.portable-executable)"},
	{"19_preamble_epilogue.eml", filters.Pass, nil, ""},
	{"20_plain_text.eml", filters.Pass, nil, ""},
	{"21_single_part_exe.eml", filters.Replace, []string{"update.exe"}, "update.exe"},
	{"22_encoded_rfc822.eml", filters.Replace, []string{"fwd.eml"}, "fwd.eml (rule dangerous: attached message holds setup.scr (extension scr))"},
	{"23_reject_hta.eml", filters.Reject, []string{"open.hta"}, "rejected: open.hta (rule scripts: extension hta)"},
	{"24_duplicate_disposition.eml", filters.Replace, []string{"evil.bat"}, "evil.bat"},
	{"25_digest.eml", filters.Replace, []string{"item.cmd"}, "item.cmd"},
	{"26_clean_attachments.eml", filters.Pass, nil, ""},
}

func readCorpus(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "corpus", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCorpus(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	files, _ := filepath.Glob(filepath.Join("testdata", "corpus", "*.eml"))
	if len(files) != len(corpus) {
		t.Errorf("%d corpus files, %d cases", len(files), len(corpus))
	}
	for _, tc := range corpus {
		t.Run(tc.file, func(t *testing.T) {
			msg := readCorpus(t, tc.file)
			d, err := f.decide(context.Background(), bytes.NewReader(msg), int64(len(msg)))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range d.Matches {
				names = append(names, m.Name)
			}
			if d.Action != tc.action || !slices.Equal(names, tc.names) {
				t.Fatalf("decision %v %q (%s), want %v %q", d.Action, names, d.Reason, tc.action, tc.names)
			}
			v, out := run(t, f, msg)
			if v.Action != tc.action {
				t.Fatalf("verdict %v, want %v", v.Action, tc.action)
			}
			if !strings.Contains(v.Reason, tc.reason) {
				t.Errorf("reason %q lacks %q", v.Reason, tc.reason)
			}
			if v.KeepsOriginal {
				t.Errorf("KeepsOriginal set")
			}
			switch tc.action {
			case filters.Pass:
				if out != nil {
					t.Errorf("Pass with a body")
				}
			case filters.Replace:
				checkSplice(t, msg, out, d.Matches)
				// Stripping again finds nothing: the notices match no rule.
				if v2, out2 := run(t, f, out); v2.Action != filters.Pass || out2 != nil {
					t.Errorf("second pass: %v %q", v2.Action, v2.Reason)
				}
			default:
				if out != nil {
					t.Errorf("%v with a body", v.Action)
				}
			}
		})
	}
}

// TestCorpusNoop: a policy that matches nothing passes every message of the
// corpus as it is (no new body).
func TestCorpusNoop(t *testing.T) {
	f := mustFilter(t, `filter "strip" "noop" {
  extensions        = ["no-such-extension"]
  archive_filenames = ["*.no-such-extension"]
  detected_types    = ["image/x-no-such-type"]
}`)
	files, _ := filepath.Glob(filepath.Join("testdata", "corpus", "*.eml"))
	for _, file := range files {
		msg, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		v, out := run(t, f, msg)
		if v.Action != filters.Pass || out != nil || v.Body != nil {
			t.Errorf("%s: %v %q", file, v.Action, v.Reason)
		}
	}
}

// TestCorpusStripAll strips every leaf of every corpus message: the result
// always re-parses, and what is not stripped is byte-identical.
func TestCorpusStripAll(t *testing.T) {
	f := mustFilter(t, `filter "strip" "all" {
  content_types = ["*/*"]
}`)
	files, _ := filepath.Glob(filepath.Join("testdata", "corpus", "*.eml"))
	for _, file := range files {
		msg, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		d, err := f.decide(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		if err != nil {
			t.Fatal(err)
		}
		v, out := run(t, f, msg)
		if v.Action != filters.Replace {
			t.Errorf("%s: %v %q", file, v.Action, v.Reason)
			continue
		}
		checkSplice(t, msg, out, d.Matches)
	}
}

// TestLineEndings: a notice follows the line endings of the message.
func TestLineEndings(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	_, out := run(t, f, readCorpus(t, "09_lf_only.eml"))
	if bytes.Contains(out, []byte("\r")) || !bytes.Contains(out, []byte("\n\npopgate removed an attachment")) {
		t.Errorf("LF-only message got CR or no notice:\n%s", out)
	}
	_, out = run(t, f, readCorpus(t, "02_mixed_double_ext.eml"))
	if bytes.Count(out, []byte("\n")) != bytes.Count(out, []byte("\r\n")) {
		t.Errorf("CRLF message got bare LFs")
	}
}

// countingReaderAt counts the bytes read through it.
type countingReaderAt struct {
	r *bytes.Reader
	n int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.n += int64(n)
	return n, err
}

// TestReadsOnce: name and type rules read the message once, and the text
// parts twice more (uuencode and BinHex each look for files embedded in
// them, after the head that tells text from binary); content rules add the
// parts they look at (the sniffed head, or one decoding pass).
func TestReadsOnce(t *testing.T) {
	msg := readCorpus(t, "02_mixed_double_ext.eml")
	var embedded int64
	mustParse(t, msg).Walk(func(p *mimetree.Part) bool {
		if p.Kind == mimetree.Leaf {
			head := make([]byte, 512)
			n, _ := io.ReadFull(p.Content(bytes.NewReader(msg)), head)
			embedded += 2 * 512 // the head, encoded
			if bytes.IndexByte(head[:n], 0) < 0 {
				embedded += 2 * (p.BodyEnd - p.BodyStart)
			}
		}
		return true
	})
	for _, tc := range []struct {
		policy string
		max    int64
	}{
		{`filter "strip" "x" { extensions = ["none"] }`, int64(len(msg)) + embedded},
		{`filter "strip" "x" { detected_types = ["image/gif"] }`, int64(len(msg)) + 4*sniffLen + embedded},
		{`filter "strip" "x" { min_size = "1GB" }`, 2*int64(len(msg)) + embedded},
	} {
		f := mustFilter(t, tc.policy)
		cr := &countingReaderAt{r: bytes.NewReader(msg)}
		d, err := f.decide(context.Background(), cr, int64(len(msg)))
		if err != nil || d.Action != filters.Pass {
			t.Fatalf("%s: %v %v", tc.policy, d, err)
		}
		if cr.n > tc.max {
			t.Errorf("%s: read %d bytes of a %d-byte message, want at most %d", tc.policy, cr.n, len(msg), tc.max)
		}
	}
}

// TestConcurrent: one Filter serves many messages at once.
func TestConcurrent(t *testing.T) {
	f := mustFilter(t, corpusPolicy)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for _, tc := range corpus[i%3*8 : i%3*8+8] {
				msg := readCorpus(t, tc.file)
				v, err := f.Filter(context.Background(), nil, filters.BytesBody(msg))
				if err != nil || v.Action != tc.action {
					t.Errorf("%s: %v %v", tc.file, v.Action, err)
				}
				if v.Body != nil {
					v.Body.Remove()
				}
			}
		})
	}
	wg.Wait()
}
