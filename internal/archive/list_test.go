package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// TestNestingAcrossKinds: zip in tar.gz in zip in tar: one depth counter
// over all kinds, compressed streams adding none; beyond it, Deep.
func TestNestingAcrossKinds(t *testing.T) {
	archivetest.NeedTool(t, "gzip")
	z1 := mkzip(t, "evil.exe", "MZ")
	tgz := gzipOf(t, mktar(t, tar.FormatUSTAR, "z1.zip", string(z1)))
	z2 := mkzip(t, "b.tgz", string(tgz))
	top := mktar(t, tar.FormatUSTAR, "z2.zip", string(z2))
	a, err := listNamed(t, top, "top.tar", Limits{MaxDepth: 4})
	want := "z2.zip/b.tgz/b.tar/z1.zip/evil.exe"
	if err != nil || !hasPath(a, want) {
		t.Fatalf("%+v, %v", a, err)
	}
	for _, e := range a.Entries {
		if e.Path == want && e.Depth != 3 {
			t.Errorf("%s at depth %d, want 3 (tar, zip, tar.gz, zip)", e.Path, e.Depth)
		}
	}
	a, err = listNamed(t, top, "top.tar", Limits{MaxDepth: 3})
	if err != nil || hasPath(a, want) || !slices.Equal(a.Deep, []string{"z2.zip/b.tgz/b.tar/z1.zip"}) {
		t.Errorf("depth 3: %q too deep %q, %v", paths(a), a.Deep, err)
	}
}

// TestStreamChain: gzip in gzip in gzip …: streams add no level, but the
// chain ends at twice the depth.
func TestStreamChain(t *testing.T) {
	data := []byte("MZ")
	for range 10 {
		data = gzipOf(t, data)
	}
	a, err := listNamed(t, data, "a.gz", Limits{MaxDepth: 2})
	if err != nil || len(a.Deep) != 1 || len(a.Entries) != 4 {
		t.Errorf("%q too deep %q, %v", paths(a), a.Deep, err)
	}
}

func TestListOddities(t *testing.T) {
	// A name claiming a container no format reads: unreadable, not empty.
	a, err := listNamed(t, []byte("this is not a zip archive at all"), "invoice.zip", Limits{})
	if err != nil || len(a.Unreadable) != 1 || !strings.HasPrefix(a.Unreadable[0].String(), "unreadable zip archive: not a zip") {
		t.Errorf("claimed zip: %+v, %v", a, err)
	}
	// Inside a container too.
	a, err = listNamed(t, mkzip(t, "in.rar", "Rar!garbage"), "", Limits{})
	if err != nil || len(a.Unreadable) != 1 || a.Unreadable[0].Path != "in.rar" {
		t.Errorf("claimed rar inside: %+v, %v", a, err)
	}
	// Names are capped.
	a, err = listNamed(t, mktar(t, tar.FormatPAX, strings.Repeat("é", 5000), "x"), "", Limits{})
	if err != nil || len(a.Entries) != 1 || len(a.Entries[0].Name) > maxName {
		t.Errorf("long name: %d bytes, %v", len(a.Entries[0].Name), err)
	}
	// An encrypted member.
	a, err = listNamed(t, readZip(t, "encrypted.zip"), "", Limits{})
	if err != nil || !a.Encrypted {
		t.Errorf("encrypted: %+v, %v", a, err)
	}
	// The context ends.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := mktar(t, tar.FormatUSTAR, "a", "b")
	if _, err := List(ctx, bytes.NewReader(data), int64(len(data)), "", Limits{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestNameKind(t *testing.T) {
	for name, want := range map[string]string{
		"a.tar.gz": "gzip", "A.TGZ": "gzip", "x.zip.": "zip", "dir/winmail.dat": "tnef", "disk.img": "iso9660",
		"report.docx": "", "a.exe": "", "": "", "tar": "",
	} {
		if got := NameKind(name); got != want {
			t.Errorf("NameKind(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestNestingPackedAndDiskKinds: an executable in a disk image in a 7z in a
// cab in a tar.gz, made by the real tools, is found at its depth; with one
// level less it is skipped, not missed silently.
func TestNestingPackedAndDiskKinds(t *testing.T) {
	for _, tool := range []string{"genisoimage", "7z", "gcab", "tar", "gzip"} {
		archivetest.NeedTool(t, tool)
	}
	out := archivetest.Shell(t, map[string][]byte{"d/setup.exe": []byte("MZ not really")},
		`genisoimage -quiet -J -o disk.img d
		7z a -bd -bso0 inner.7z disk.img
		gcab -c -z pack.cab inner.7z
		tar czf out.tgz pack.cab`, "out.tgz")
	want := "out.tar/pack.cab/inner.7z/disk.img/setup.exe"
	a, err := listNamed(t, out, "out.tgz", Limits{MaxDepth: 4})
	if err != nil || !hasPath(a, want) || len(a.Unreadable) != 0 {
		t.Fatalf("%q unreadable %v, %v", paths(a), a.Unreadable, err)
	}
	a, err = listNamed(t, out, "out.tgz", Limits{MaxDepth: 3})
	if err != nil || hasPath(a, want) || !slices.Equal(a.Deep, []string{"out.tar/pack.cab/inner.7z/disk.img"}) {
		t.Errorf("depth 3: %q too deep %q, %v", paths(a), a.Deep, err)
	}
}
