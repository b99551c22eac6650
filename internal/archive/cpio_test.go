package archive

import (
	"bytes"
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// TestCpio lists archives GNU cpio writes in each of its formats.
func TestCpio(t *testing.T) {
	archivetest.NeedTool(t, "cpio")
	files := map[string][]byte{"bin/evil.exe": []byte("MZ" + strings.Repeat("x", 3001)), "inner.zip": mkzip(t, "deep.js", "x")}
	for _, format := range []string{"newc", "crc", "odc", "bin"} {
		t.Run(format, func(t *testing.T) {
			data := archivetest.Shell(t, files, "printf 'bin\\nbin/evil.exe\\ninner.zip\\n' | cpio --quiet -o -H "+format+" > out.cpio", "out.cpio")
			a, err := listNamed(t, data, "", Limits{})
			if err != nil || len(a.Unreadable) != 0 || !hasPath(a, "bin/evil.exe") || !hasPath(a, "inner.zip/deep.js") || !a.Entries[0].Dir {
				t.Fatalf("%+v, %v", a, err)
			}
			if e := a.Entries[1]; e.Format != "cpio" || e.Size != 3003 {
				t.Errorf("entry %+v", e)
			}
			a, err = listNamed(t, data[:len(data)/2], "", Limits{})
			if err != nil || len(a.Unreadable) == 0 || a.Unreadable[0].Format != "cpio" {
				t.Errorf("truncated: %+v, %v", a, err)
			}
		})
	}
	// A header declaring a 4 GiB name is corrupt, and allocates nothing.
	bad := []byte("070701" + strings.Repeat("0", 88) + "FFFFFFFF" + strings.Repeat("0", 8))
	if a, err := listNamed(t, bad, "", Limits{}); err != nil || len(a.Unreadable) != 1 {
		t.Errorf("huge name: %+v, %v", a, err)
	}
}

func FuzzListCpio(f *testing.F) {
	if _, err := exec.LookPath("cpio"); err == nil {
		for _, format := range []string{"newc", "odc", "bin"} {
			f.Add(archivetest.Shell(f, map[string][]byte{"a.exe": []byte("MZ"), "in.cpio": []byte("070707")}, "printf 'a.exe\\nin.cpio\\n' | cpio --quiet -o -H "+format+" > out", "out"))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := List(context.Background(), bytes.NewReader(data), int64(len(data)), "", fuzzLimits, nil)
		checkListing(t, a, err, fuzzLimits)
	})
}
