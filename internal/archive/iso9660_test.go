package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// diskTree writes the files the disk image tests put on their images.
func diskTree(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{
		"readme.txt":                        "hello\n",
		"docs/deep/er/Invoice 2024.pdf.exe": "MZ evil",
	} {
		p := filepath.Join(dir, "src", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// genisoimage makes an image of diskTree's files with the given options.
func genisoimage(t testing.TB, opts ...string) []byte {
	t.Helper()
	archivetest.NeedTool(t, "genisoimage")
	dir := diskTree(t)
	out := filepath.Join(dir, "x.iso")
	args := append(append([]string{"-quiet"}, opts...), "-o", out, filepath.Join(dir, "src"))
	if msg, err := exec.Command("genisoimage", args...).CombinedOutput(); err != nil {
		t.Fatalf("genisoimage %v: %v\n%s", opts, err, msg)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestISO9660Tools(t *testing.T) {
	f := formatNamed(t, "iso9660")
	cases := []struct {
		opts []string
		exe  string
	}{
		{nil, "DOCS/DEEP/ER/INVOICE_.EXE"},
		{[]string{"-R"}, "docs/deep/er/Invoice 2024.pdf.exe"},
		{[]string{"-J", "-R"}, "docs/deep/er/Invoice 2024.pdf.exe"},
		{[]string{"-udf"}, "DOCS/DEEP/ER/INVOICE_.EXE"}, // a UDF bridge: its ISO tree
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.opts), func(t *testing.T) {
			b := genisoimage(t, c.opts...)
			// An image's head is its system area: zeros.
			if !f.Sniff(make([]byte, HeadLen), bytes.NewReader(b), int64(len(b)), "innocent.pdf") {
				t.Fatal("not sniffed")
			}
			got, err := walkAll(t, f, b, "")
			if err != nil {
				t.Fatal(err)
			}
			files := map[string]string{}
			for _, m := range got {
				if !m.Dir {
					files[m.Name] = m.Content
				}
			}
			if files[c.exe] != "MZ evil" || len(files) != 2 {
				t.Fatalf("files %q, want %s", files, c.exe)
			}
		})
	}
}

// isoRec is an ECMA-119 directory record.
func isoRec(name string, extent, size uint32, flags byte) []byte {
	id := []byte(name)
	n := 33 + len(id) + (1 - len(id)%2)
	r := make([]byte, n)
	r[0] = byte(n)
	binary.LittleEndian.PutUint32(r[2:], extent)
	binary.BigEndian.PutUint32(r[6:], extent)
	binary.LittleEndian.PutUint32(r[10:], size)
	binary.BigEndian.PutUint32(r[14:], size)
	r[25] = flags
	r[32] = byte(len(id))
	copy(r[33:], id)
	return r
}

// isoBuild makes a minimal image: the primary descriptor at sector 16, the
// terminator at 17, the root directory (its records after "." and "..") at
// 18, then the given sectors from 19 on.
func isoBuild(root [][]byte, sectors ...[]byte) []byte {
	img := make([]byte, (19+len(sectors))*isoSector)
	pvd := img[16*isoSector:]
	pvd[0] = 1
	copy(pvd[1:], "CD001\x01")
	copy(pvd[156:], isoRec("\x00", 18, isoSector, isoFlagDir))
	copy(img[17*isoSector:], "\xffCD001\x01")
	rd := img[18*isoSector : 19*isoSector]
	off := copy(rd, isoRec("\x00", 18, isoSector, isoFlagDir))
	off += copy(rd[off:], isoRec("\x01", 18, isoSector, isoFlagDir))
	for _, r := range root {
		off += copy(rd[off:], r)
	}
	for i, s := range sectors {
		copy(img[(19+i)*isoSector:], s)
	}
	return img
}

func TestISO9660Hostile(t *testing.T) {
	f := formatNamed(t, "iso9660")
	var overlapping [][]byte
	for i := range 40 {
		overlapping = append(overlapping, isoRec(fmt.Sprintf("D%d", i), uint32(i%20), uint32(21-i%20)*isoSector, isoFlagDir))
	}
	var multi [][]byte
	multi = append(multi, isoRec("BIG.EXE;1", 19, 3, isoFlagMulti), isoRec("BIG.EXE;1", 20, 2, 0))
	cases := []struct {
		name string
		img  []byte
		want []walked
		err  error
	}{
		{"file", isoBuild([][]byte{isoRec("A.EXE;1", 19, 2, 0)}, []byte("MZ")), []walked{{Name: "A.EXE", Size: 2, Content: "MZ"}}, nil},
		{"multi-extent file", isoBuild(multi, []byte("abc"), []byte("de")), []walked{{Name: "BIG.EXE", Size: 5, Content: "abcde"}}, nil},
		{"directory loop", isoBuild([][]byte{isoRec("LOOP", 18, isoSector, isoFlagDir)}), []walked{{Name: "LOOP", Dir: true}}, ErrCorrupt},
		{"overlapping directories", isoBuild(overlapping, make([]byte, isoSector)), nil, ErrCorrupt},
		{"extent beyond the image", isoBuild([][]byte{isoRec("A.EXE;1", 1000, 2, 0)}), nil, ErrCorrupt},
		{"size beyond the image", isoBuild([][]byte{isoRec("A.EXE;1", 19, 1<<30, 0)}, []byte("MZ")), nil, ErrCorrupt},
		{"short record", isoBuild([][]byte{{20, 0, 0, 0}}), nil, ErrCorrupt},
		{"multi-extent without its end", isoBuild([][]byte{isoRec("A;1", 19, 1, isoFlagMulti)}, []byte("x")), nil, ErrCorrupt},
		{"truncated", isoBuild([][]byte{isoRec("A.EXE;1", 19, 2, 0)}, []byte("MZ"))[:18*isoSector+100], nil, ErrCorrupt},
		{"no descriptor", make([]byte, 20*isoSector), nil, ErrNotFormat},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := walkAll(t, f, c.img, "")
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if c.err == nil && len(got) != len(c.want) {
				t.Fatalf("members %+v, want %+v", got, c.want)
			}
			for i := range c.want {
				if i < len(got) && got[i] != c.want[i] {
					t.Fatalf("member %d: %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestISO9660Deep(t *testing.T) {
	// A chain of directories, each in the next sector, deeper than the
	// bound.
	var sectors [][]byte
	for i := range isoMaxDepth + 2 {
		sectors = append(sectors, isoRec("D", uint32(20+i), isoSector, isoFlagDir))
	}
	img := isoBuild([][]byte{isoRec("D", 19, isoSector, isoFlagDir)}, sectors...)
	if _, err := walkAll(t, formatNamed(t, "iso9660"), img, ""); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("error %v, want ErrCorrupt", err)
	}
}

func FuzzISO9660(f *testing.F) {
	f.Add(isoBuild([][]byte{isoRec("A.EXE;1", 19, 2, 0), isoRec("D", 20, isoSector, isoFlagDir)}, []byte("MZ"), isoRec("B.TXT;1", 19, 1, 0)))
	f.Add(isoBuild([][]byte{isoRec("BIG.EXE;1", 19, 3, isoFlagMulti), isoRec("BIG.EXE;1", 20, 2, 0)}, []byte("abc"), []byte("de")))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "iso9660"), b) })
}
