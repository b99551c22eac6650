package strip

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
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
		{"", filters.Reject, "rejected: report.zip (decompression bomb: more than 512 MiB uncompressed (at bomb.bin))"},
		{"quarantine", filters.Reject, "quarantined: report.zip (decompression bomb"},
		{"strip", filters.Replace, "stripped: report.zip (decompression bomb"},
		{"tempfail", filters.Retry, "deferred: report.zip (decompression bomb"},
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

// attachMessage attaches data, base64, as name.
func attachMessage(name string, data []byte) []byte {
	return []byte("From: a@example.org\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zb\"\r\n\r\n" +
		"--zb\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--zb\r\nContent-Type: application/octet-stream; name=\"" + name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(data) + "\r\n--zb--\r\n")
}

func tarOf(t testing.TB, name string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
	tw.Write(data)
	tw.Close()
	return buf.Bytes()
}

func gzipOf(data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(data)
	zw.Close()
	return buf.Bytes()
}

// TestArchiveKinds: archive_filenames sees into every kind the lister
// reads, under innocent names, nested across kinds.
func TestArchiveKinds(t *testing.T) {
	f := mustFilter(t, `filter "strip" "a" {
  archive_filenames = ["*.exe"]
}`)
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	w, _ := zw.Create("docs/in.tgz")
	w.Write(gzipOf(tarOf(t, "bin/evil.exe", []byte("MZ"))))
	zw.Close()
	for _, tc := range []struct {
		name string
		data []byte
		why  string
	}{
		{"invoice.pdf", gzipOf(tarOf(t, "evil.exe", []byte("MZ"))), "archive member invoice.pdf/evil.exe matches *.exe"},
		{"evil.exe.gz", gzipOf([]byte("MZ")), "archive member evil.exe matches *.exe"},
		{"files.tar", tarOf(t, "a/evil.exe", []byte("MZ")), "archive member a/evil.exe matches *.exe"},
		{"scan.pdf", zbuf.Bytes(), "archive member docs/in.tgz/in.tar/bin/evil.exe matches *.exe"},
	} {
		v, _ := run(t, f, attachMessage(tc.name, tc.data))
		if v.Action != filters.Replace || !strings.Contains(v.Reason, tc.why) {
			t.Errorf("%s: %v %q, want %q", tc.name, v.Action, v.Reason, tc.why)
		}
	}
}

// TestUnreadableArchive: a container the lister cannot read is
// on_unreadable_archive's, quarantine by default, when a rule needs its
// members; never "no members".
func TestUnreadableArchive(t *testing.T) {
	msg := attachMessage("files.zip", []byte("PK\x03\x04 a local header, and nothing after it"))
	for _, tc := range []struct {
		on     string
		want   filters.Action
		reason string
	}{
		{"", filters.Reject, "quarantined: files.zip (unreadable zip archive: corrupt container: zip: end of central directory not found)"},
		{"reject", filters.Reject, "rejected: files.zip (unreadable zip archive"},
		{"strip", filters.Replace, "stripped: files.zip (unreadable zip archive"},
		{"tempfail", filters.Retry, "deferred: files.zip (unreadable zip archive"},
		{"pass", filters.Pass, ""},
	} {
		src := "filter \"strip\" \"u\" {\n  encrypted_archives = true\n"
		if tc.on != "" {
			src += `  on_unreadable_archive = "` + tc.on + `"` + "\n"
		}
		v, _ := run(t, mustFilter(t, src+"}"), msg)
		if v.Action != tc.want || !strings.HasPrefix(v.Reason, tc.reason) {
			t.Errorf("on_unreadable_archive %q: %v %q", tc.on, v.Action, v.Reason)
		}
	}
	// No rule needs archive members: nothing is listed.
	if v, _ := run(t, mustFilter(t, `filter "strip" "e" { extensions = ["exe"] }`), msg); v.Action != filters.Pass {
		t.Errorf("without archive rules: %v %q", v.Action, v.Reason)
	}
	// A member that matches decides, though the rest is unreadable.
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	w, _ := zw.Create("evil.exe")
	w.Write([]byte("MZ"))
	w, _ = zw.Create("inner.rar")
	w.Write([]byte("not really"))
	zw.Close()
	v, _ := run(t, mustFilter(t, `filter "strip" "a" { archive_filenames = ["*.exe"] }`), attachMessage("a.zip", zbuf.Bytes()))
	if v.Action != filters.Replace || !strings.Contains(v.Reason, "evil.exe matches") {
		t.Errorf("matching member: %v %q", v.Action, v.Reason)
	}
	if _, diags := buildFilter(t, `filter "strip" "x" {
  encrypted_archives = true
  on_unreadable_archive = "ignore"
}`); !diags.HasErrors() {
		t.Error("on_unreadable_archive = \"ignore\" accepted")
	}
}
