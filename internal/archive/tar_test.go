package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// mktar builds a tar with Go's writer: name, content pairs.
func mktar(t testing.TB, format tar.Format, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i < len(files); i += 2 {
		h := &tar.Header{Name: files[i], Mode: 0o644, Size: int64(len(files[i+1])), Typeflag: tar.TypeReg, Format: format}
		if strings.HasSuffix(files[i], "/") {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(files[i+1]))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestTar(t *testing.T) {
	archivetest.NeedTool(t, "tar")
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("e", 120) + ".exe"
	files := map[string][]byte{"bin/evil.exe": []byte("MZ"), "readme.txt": []byte("hi"), long: []byte("MZ")}
	for _, format := range []string{"ustar", "pax", "gnu", "v7", "oldgnu"} {
		t.Run(format, func(t *testing.T) {
			names := "bin/evil.exe readme.txt"
			if format != "ustar" && format != "v7" {
				names += " " + long
			}
			data := archivetest.Shell(t, files, "tar --format="+format+" -cf out.tar "+names, "out.tar")
			a, err := listNamed(t, data, "x.tar", Limits{})
			if err != nil || !hasPath(a, "bin/evil.exe") || len(a.Unreadable) != 0 || a.Entries[0].Format != "tar" {
				t.Fatalf("%+v, %v", a, err)
			}
			if format != "ustar" && format != "v7" && !hasPath(a, long) {
				t.Errorf("long name missing: %+v", a.Entries)
			}
		})
	}
	// A tar of a zip of an exe, under an innocent name.
	a, err := listNamed(t, mktar(t, tar.FormatPAX, "docs/", "", "docs/report.pdf", string(mkzip(t, "evil.exe", "MZ"))), "", Limits{})
	if err != nil || !hasPath(a, "docs/report.pdf/evil.exe") || !a.Entries[0].Dir {
		t.Errorf("tar of zip: %+v, %v", a, err)
	}
	// Cut short: the members read are listed, and it is unreadable.
	data := mktar(t, tar.FormatUSTAR, "a.txt", "a", "b.exe", strings.Repeat("x", 2000))
	a, err = listNamed(t, data[:1600], "", Limits{})
	if err != nil || !hasPath(a, "b.exe") || len(a.Unreadable) == 0 || a.Unreadable[0].Format != "tar" {
		t.Errorf("truncated: %+v, %v", a, err)
	}
	// Not a tar.
	if _, err := listNamed(t, bytes.Repeat([]byte("text "), 200), "", Limits{}); !errors.Is(err, ErrNotFormat) {
		t.Errorf("text: %v", err)
	}
}

// TestTarManyMembers: a tar of 100,000 empty members stops at the entries
// cap, quickly and in bounded memory.
func TestTarManyMembers(t *testing.T) {
	// One header, repeated: building it with tar.Writer takes longer
	// than listing it.
	hdr := mktar(t, tar.FormatUSTAR, "empty", "")[:tarBlock]
	data := append(bytes.Repeat(hdr, 100000), make([]byte, 2*tarBlock)...)
	var err error
	archivetest.Bounded(t, 20*time.Second, 64<<20, func() { _, err = listNamed(t, data, "many.tar", Limits{}) })
	var le *LimitError
	if !errors.As(err, &le) || le.Limit != "entries" || le.Bomb() {
		t.Errorf("err %v, want the entries limit", err)
	}
}

func FuzzListTar(f *testing.F) {
	f.Add(mktar(f, tar.FormatUSTAR, "a.txt", "a", "dir/", ""))
	f.Add(mktar(f, tar.FormatPAX, strings.Repeat("n", 200), "x", "in.zip", string(mkzip(f, "x.exe", "MZ"))))
	f.Add(mktar(f, tar.FormatGNU, "in.tar", string(mktar(f, tar.FormatUSTAR, "deep.exe", "MZ"))))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := List(context.Background(), bytes.NewReader(data), int64(len(data)), "f.tar", fuzzLimits, nil)
		checkListing(t, a, err, fuzzLimits)
	})
}
