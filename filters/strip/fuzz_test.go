package strip

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mimetree"
)

// addCorpusSeeds adds the messages of testdata/corpus to f (the files of
// testdata/fuzz/<Name> are added by the fuzzing engine itself).
func addCorpusSeeds(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "corpus", "*.eml"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(deepMessage(60))
	f.Add(wideMessage(50))
}

// fuzzLimits keep every input cheap while still reaching the caps.
const fuzzLimits = `
  max_depth       = 12
  max_parts       = 200
  max_header_size = "4KiB"
`

// FuzzStripNoop: a policy that matches nothing never changes a message: it
// returns Pass with no body for any input (or, beyond a MIME cap, the
// on_limit verdict), and never panics.
func FuzzStripNoop(f *testing.F) {
	addCorpusSeeds(f)
	noop := mustFilter(f, `filter "strip" "noop" {
  extensions        = ["no-such-extension"]
  filenames         = ["*.no-such-extension"]
  content_types     = ["x-none/x-none"]
  detected_types    = ["image/x-no-such-type"]
  archive_filenames = ["*.no-such-extension"]
  min_size          = "1TB"
`+fuzzLimits+`}`)
	pass := mustFilter(f, `filter "strip" "noop-pass" {
  extensions = ["no-such-extension"]
  on_limit   = "pass"
`+fuzzLimits+`}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := noop.Filter(context.Background(), nil, filters.BytesBody(data))
		if err != nil {
			t.Fatalf("Filter: %v", err)
		}
		if v.Body != nil {
			t.Fatalf("%v with a body", v.Action)
		}
		_, perr := parseMIME(bytes.NewReader(data), int64(len(data)), noop.lim)
		var le *mimetree.LimitError
		switch {
		case perr == nil:
			// An archive beyond the archive limits (a zip bomb by its
			// declared sizes) gets on_archive_limit, reject by default,
			// and one the lister cannot read on_unreadable_archive,
			// quarantine by default, because archive_filenames needs
			// their members.
			bomb := strings.Contains(v.Reason, "decompression bomb") || strings.Contains(v.Reason, "archive has more than") ||
				strings.HasPrefix(v.Reason, "quarantined: ") && strings.Contains(v.Reason, "(unreadable ")
			if v.Action != filters.Pass && !(v.Action == filters.Reject && bomb) {
				t.Fatalf("%v %q, want pass", v.Action, v.Reason)
			}
		case errors.As(perr, &le):
			if v.Action != filters.Reject || !strings.HasPrefix(v.Reason, "rejected: ") {
				t.Fatalf("beyond a cap: %v %q", v.Action, v.Reason)
			}
		default:
			t.Fatalf("Parse: %v", perr)
		}
		v, err = pass.Filter(context.Background(), nil, filters.BytesBody(data))
		if err != nil || v.Action != filters.Pass || v.Body != nil {
			t.Fatalf("on_limit pass: %v %v", v, err)
		}
	})
}

// FuzzStrip: with a rule that strips every part, and with a realistic
// policy, any input gives a clear verdict; a stripped result re-parses, its
// kept parts are byte-identical, each notice names its file, and the
// verdict's Edits read as its body.
func FuzzStrip(f *testing.F) {
	addCorpusSeeds(f)
	// Files embedded in parts (embedded.go).
	f.Add(twoParts("text/plain", "7bit", "Hi\n"+uuBlock("a.exe")))
	for name, ctype := range map[string]string{"clam.tnef": "application/ms-tnef", "clam.exe.binhex": "text/plain"} {
		if b, err := os.ReadFile("/usr/share/clamav-testfiles/" + name); err == nil {
			f.Add(twoParts(ctype, "base64", b64(b)))
		}
	}
	all := mustFilter(f, `filter "strip" "all" {
  content_types = ["*/*"]
`+fuzzLimits+`}`)
	real := mustFilter(f, `filter "strip" "real" {
  extensions = ["exe", "scr", "js"]
  rule "arch" {
    archive_filenames = ["*.exe"]
  }
  rule "enc" {
    encrypted_archives = true
    action = "quarantine"
  }
  rule "sniff" {
    detected_types = ["application/x-msdownload", "application/zip"]
    min_size       = "10"
  }
  archive_max_entries = 50
  archive_max_size    = "1MB"
`+fuzzLimits+`}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		start := time.Now()
		defer func() {
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("slow input (%v, %d bytes)", d, len(data))
			}
		}()
		for _, flt := range []*Filter{all, real} {
			d, err := flt.decide(context.Background(), bytes.NewReader(data), int64(len(data)))
			if err != nil {
				t.Fatalf("%s: Decide: %v", flt.Name(), err)
			}
			v, err := flt.Filter(context.Background(), nil, filters.BytesBody(data))
			if err != nil {
				t.Fatalf("%s: Filter: %v", flt.Name(), err)
			}
			if v.Action != d.Action || v.Reason != d.Reason {
				t.Fatalf("%s: Filter %v %q, Decide %v %q", flt.Name(), v.Action, v.Reason, d.Action, d.Reason)
			}
			switch v.Action {
			case filters.Replace:
				rc, err := v.Body.Open()
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				out.ReadFrom(rc)
				rc.Close()
				v.Body.Remove()
				if _, err := parseMIME(bytes.NewReader(out.Bytes()), int64(out.Len()), flt.lim); err != nil {
					t.Fatalf("%s: result does not re-parse: %v", flt.Name(), err)
				}
				checkSplice(t, data, out.Bytes(), d.Matches)
				checkEdits(t, data, v, out.Bytes())
			case filters.Pass:
				if v.Body != nil {
					t.Fatalf("%s: pass with a body", flt.Name())
				}
				if flt == all && d.Limit == nil {
					leaves := 0
					d.Root.Walk(func(p *mimetree.Part) bool {
						if p.Kind != mimetree.Multipart {
							leaves++
						}
						return true
					})
					if leaves > 0 {
						t.Fatalf("strip-all passed a message with %d parts to strip", leaves)
					}
				}
			default:
				if v.Body != nil || v.Reason == "" {
					t.Fatalf("%s: %v %q", flt.Name(), v.Action, v.Reason)
				}
			}
		}
	})
}
