package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// TestCompressed lists streams made by the real tools: each is one
// member, named by the gzip header or after the stream, and a tar in a
// stream is listed at the same depth as a tar.
func TestCompressed(t *testing.T) {
	inner := map[string][]byte{"evil.exe": []byte("MZ" + strings.Repeat("x", 5000))}
	tarball := mktar(t, tar.FormatPAX, "bin/evil.exe", "MZ", "readme.txt", "hi")
	for _, tc := range []struct {
		tool, script, out, name string
		files                   map[string][]byte
		want                    []string
		format                  string
	}{
		{"gzip", "gzip -N evil.exe && mv evil.exe.gz invoice.pdf", "invoice.pdf", "invoice.pdf", inner, []string{"evil.exe"}, "gzip"},
		{"gzip", "gzip -n evil.exe", "evil.exe.gz", "evil.exe.gz", inner, []string{"evil.exe"}, "gzip"},
		{"gzip", "gzip -n a.tar && mv a.tar.gz a.tgz", "a.tgz", "a.tgz", map[string][]byte{"a.tar": tarball}, []string{"a.tar", "a.tar/bin/evil.exe"}, "gzip"},
		{"bzip2", "bzip2 evil.exe", "evil.exe.bz2", "evil.exe.bz2", inner, []string{"evil.exe"}, "bzip2"},
		{"bzip2", "bzip2 a.tar && mv a.tar.bz2 a.tbz2", "a.tbz2", "a.tbz2", map[string][]byte{"a.tar": tarball}, []string{"a.tar/bin/evil.exe"}, "bzip2"},
		{"xz", "xz evil.exe", "evil.exe.xz", "evil.exe.xz", inner, []string{"evil.exe"}, "xz"},
		{"xz", "xz -9e -T2 a.tar", "a.tar.xz", "a.tar.xz", map[string][]byte{"a.tar": tarball}, []string{"a.tar/bin/evil.exe"}, "xz"},
		{"zstd", "zstd -q --rm evil.exe", "evil.exe.zst", "evil.exe.zst", inner, []string{"evil.exe"}, "zstd"},
		{"zstd", "zstd -q -19 a.tar -o a.tzst", "a.tzst", "", map[string][]byte{"a.tar": tarball}, []string{"(content)/bin/evil.exe"}, "zstd"},
	} {
		t.Run(tc.out, func(t *testing.T) {
			archivetest.NeedTool(t, tc.tool)
			data := archivetest.Shell(t, tc.files, tc.script, tc.out)
			a, err := listNamed(t, data, tc.name, Limits{MaxDepth: 1})
			if err != nil || len(a.Unreadable) != 0 || a.Entries[0].Format != tc.format {
				t.Fatalf("%+v, %v", a, err)
			}
			for _, w := range tc.want {
				if !hasPath(a, w) {
					t.Errorf("%s missing: %+v", w, a.Entries)
				}
			}
			for _, e := range a.Entries {
				if e.Depth != 0 || e.Size < 0 {
					t.Errorf("entry %+v: a stream is no level, its member's size is measured", e)
				}
			}
			// Cut short: unreadable, not empty.
			a, err = listNamed(t, data[:len(data)*2/3], tc.name, Limits{})
			if err != nil || len(a.Unreadable) == 0 || a.Unreadable[0].Format != tc.format {
				t.Errorf("truncated: %+v, %v", a, err)
			}
		})
	}
}

// TestClamavTestfiles: each of ClamAV's test containers, listed through List,
// names the test file inside it.
func TestClamavTestfiles(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"clam.tar.gz", "clam.tar/clam.exe"},
		{"clam.exe.bz2", "clam.exe"},
		{"clam.zip", "clam.exe"},
		{"clam.newc.cpio", "clam.exe"},
		{"clam.odc.cpio", "clam.exe"},
		{"clam.bin-le.cpio", "clam.exe"},
		{"clam.bin-be.cpio", "clam.exe"},
		{"clam.7z", "clam.exe"},
		{"clam.cab", "clam.exe"},
		{"clam.arj", "clam.exe"},
		{"clam.tnef", "clam.exe"},
		{"clam.exe.binhex", "clam.exe"},
		{"clam.exe.mbox.uu", "clam.exe"},
	} {
		a, err := listNamed(t, archivetest.ClamFile(t, tc.file), tc.file, Limits{})
		if err != nil || !hasPath(a, tc.want) || len(a.Unreadable) != 0 {
			t.Errorf("%s: %+v, %v", tc.file, a, err)
		}
	}
}

// TestStreamBombs: a gigabyte of zeros in a megabyte of gzip is stopped
// at the size cap by counting what is unpacked, not by a declared size
// (it declares none), without unpacking it all; so is a tar.gz inside a
// gzip, and a stream bomb in a zip.
func TestStreamBombs(t *testing.T) {
	gz := archivetest.Gzip(archivetest.GigK, "zeros.bin")
	var le *LimitError
	for _, tc := range []struct {
		name  string
		data  []byte
		lim   Limits
		limit string
	}{
		{"gzip size", gz, Limits{MaxSize: 64 << 20, MaxRatio: 100000}, "size"},
		{"gzip ratio", gz, Limits{}, "ratio"},
		{"tar.gz in gzip", gzipOf(t, gzipOf(t, mktar(t, tar.FormatUSTAR, "big.tar", string(mktar(t, tar.FormatUSTAR, "x", strings.Repeat("\x00", 8<<20)))))), Limits{MaxSize: 4 << 20, MaxRatio: 100000}, "size"},
		{"gzip in zip", mkzip(t, "report.gz", string(gz)), Limits{MaxSize: 32 << 20, MaxRatio: 100000}, "size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			archivetest.Bounded(t, 30*time.Second, 8<<20+uint64(len(tc.data)), func() { _, err = listNamed(t, tc.data, "", tc.lim) })
			if !errors.As(err, &le) || le.Limit != tc.limit || !le.Bomb() {
				t.Errorf("err %v, want the %s limit", err, tc.limit)
			}
		})
	}
}

func gzipOf(t testing.TB, data []byte) []byte {
	t.Helper()
	return archivetest.Shell(t, map[string][]byte{"in": data}, "gzip -9 -n -c in > out", "out")
}

// TestStreamWindows: a stream that declares a window (dictionary) over
// maxWindow is unreadable before its decoder allocates it.
func TestStreamWindows(t *testing.T) {
	archivetest.NeedTool(t, "xz")
	archivetest.NeedTool(t, "zstd")
	small := map[string][]byte{"a": []byte("hello")}
	// A one-byte payload with a 1.5 GiB dictionary: xz writes what it is
	// told (the dictionary of the header is not shrunk for raw filters).
	xzBig := archivetest.Shell(t, small, "xz --lzma2=dict=1536MiB -c a > out", "out")
	zstdBig := archivetest.Shell(t, small, "cat a | zstd -q --long=30 -c > out", "out")
	for name, data := range map[string][]byte{"xz": xzBig, "zstd": zstdBig} {
		var a *Listing
		var err error
		archivetest.Bounded(t, 20*time.Second, 32<<20, func() { a, err = listNamed(t, data, "a."+name, Limits{}) })
		if err != nil || len(a.Unreadable) == 0 || a.Unreadable[0].Format != name {
			t.Errorf("%s: %+v, %v", name, a, err)
		}
		t.Logf("%s: %v", name, a.Unreadable)
	}
}

// FuzzListCompressed: streams of every kind, nested.
func FuzzListCompressed(f *testing.F) {
	tarball := mktar(f, tar.FormatUSTAR, "a.exe", "MZ")
	for _, script := range []string{"gzip -c in", "bzip2 -c in", "xz -c in", "zstd -q -c in", "xz -c in | gzip -c"} {
		if _, err := exec.LookPath(strings.Fields(script)[0]); err != nil {
			continue
		}
		f.Add(archivetest.Shell(f, map[string][]byte{"in": tarball}, script+" > out", "out"))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := List(context.Background(), bytes.NewReader(data), int64(len(data)), "f.tar.gz", fuzzLimits, nil)
		checkListing(t, a, err, fuzzLimits)
	})
}
