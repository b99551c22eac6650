package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// cabFiles hold a member larger than an MSZIP block whose repeats reach
// back across block boundaries, so that the carried window is exercised.
func cabFiles() map[string]string {
	rnd := rand.New(rand.NewPCG(1, 2))
	chunk := make([]byte, 20000)
	for i := range chunk {
		chunk[i] = byte('a' + rnd.IntN(26))
	}
	return map[string]string{
		"evil.exe":    "MZ" + strings.Repeat(string(chunk), 6),
		"readme.txt":  "hello\n",
		"invoice.pdf": "%PDF-1.4\n",
	}
}

func makeCab(t testing.TB, args ...string) ([]byte, string) {
	t.Helper()
	dir := fixtureDir(t, cabFiles())
	tool(t, dir, "gcab", append(append([]string{"-c"}, args...), "out.cab", "evil.exe", "readme.txt", "invoice.pdf")...)
	return readFile(t, filepath.Join(dir, "out.cab")), filepath.Join(dir, "out.cab")
}

// cabextractNames lists a cabinet's member names with cabextract.
func cabextractNames(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("cabextract", "-l", path).Output()
	if err != nil {
		t.Skipf("cabextract: %v", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.SplitN(l, " | ", 3); len(f) == 3 && !strings.HasPrefix(f[2], "Name") {
			names = append(names, strings.TrimSpace(f[2]))
		}
	}
	slices.Sort(names)
	return names
}

func TestCabWalk(t *testing.T) {
	files := cabFiles()
	for _, tc := range []struct {
		name string
		args []string
	}{{"stored", nil}, {"mszip", []string{"-z"}}} {
		t.Run(tc.name, func(t *testing.T) {
			data, path := makeCab(t, tc.args...)
			if !sniffCab(data[:min(len(data), HeadLen)], bytes.NewReader(data), int64(len(data)), "photo.jpg") {
				t.Fatal("sniff: not recognised")
			}
			w, err := walkPacked(t, walkCab, data, "a.cab")
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range w.members {
				names = append(names, m.Name)
				if m.Size != int64(len(files[m.Name])) || m.CompressedSize <= 0 {
					t.Errorf("%s: sizes %d/%d", m.Name, m.Size, m.CompressedSize)
				}
				if got := w.contents[m.Name]; got != files[m.Name] {
					t.Errorf("%s: content %d bytes, %.20q", m.Name, len(got), got)
				}
			}
			slices.Sort(names)
			if want := cabextractNames(t, path); !slices.Equal(names, want) {
				t.Errorf("names %q, cabextract says %q", names, want)
			}
		})
	}
}

func TestCabClamAV(t *testing.T) {
	data := readFile(t, "/usr/share/clamav-testfiles/clam.cab")
	w, err := walkPacked(t, walkCab, data, "clam.cab")
	if err != nil {
		t.Fatal(err)
	}
	if m := w.member("clam.exe"); m == nil || !strings.HasPrefix(w.contents["clam.exe"], "MZ") {
		t.Fatalf("members %+v", w.members)
	}
}

// cabFileEntry returns the offset of the CFFILE entry named name.
func cabFileEntry(t *testing.T, data []byte, name string) int {
	t.Helper()
	i := bytes.Index(data, append([]byte(name), 0))
	if i < cabFileLen {
		t.Fatalf("no entry %s", name)
	}
	return i - cabFileLen
}

func TestCabVariants(t *testing.T) {
	stored, _ := makeCab(t)
	// An LZX folder: named, not opened.
	lzx := bytes.Clone(stored)
	binary.LittleEndian.PutUint16(lzx[cabHeaderLen+6:], 0x1503)
	w, err := walkPacked(t, walkCab, lzx, "")
	if err != nil || len(w.members) != 3 || w.members[0].Open != nil {
		t.Fatalf("LZX: err %v, members %+v", err, w.members)
	}
	// A name in Windows-1252, not flagged UTF-8.
	cp := bytes.Clone(stored)
	e := cabFileEntry(t, cp, "readme.txt")
	cp[e+cabFileLen+1] = 0xe9 // "r\xe9adme.txt"
	w, err = walkPacked(t, walkCab, cp, "")
	if err != nil || w.member("réadme.txt") == nil {
		t.Fatalf("code page name: err %v, members %+v", err, w.members)
	}
	// Flagged UTF-8.
	utf := bytes.Clone(stored)
	e = cabFileEntry(t, utf, "readme.txt")
	binary.LittleEndian.PutUint16(utf[e+14:], cabNameUTF)
	if w, err = walkPacked(t, walkCab, utf, ""); err != nil || w.member("readme.txt") == nil {
		t.Fatalf("utf-8 name: err %v, members %+v", err, w.members)
	}
	// Continued from a previous cabinet: named, not opened.
	cont := bytes.Clone(stored)
	e = cabFileEntry(t, cont, "evil.exe")
	binary.LittleEndian.PutUint16(cont[e+8:], cabContinuedFrom)
	if w, err = walkPacked(t, walkCab, cont, ""); err != nil || w.member("evil.exe") == nil || w.member("evil.exe").Open != nil {
		t.Fatalf("continued: err %v, members %+v", err, w.members)
	}
}

func TestCabCorrupt(t *testing.T) {
	stored, _ := makeCab(t)
	zipped, _ := makeCab(t, "-z")
	set := func(b []byte, off int, v uint32, width int) []byte {
		b = bytes.Clone(b)
		if width == 2 {
			binary.LittleEndian.PutUint16(b[off:], uint16(v))
		} else {
			binary.LittleEndian.PutUint32(b[off:], v)
		}
		return b
	}
	data := bytes.Clone(zipped)
	data[len(data)-100] ^= 0x55
	gap := bytes.Clone(stored)
	e := cabFileEntry(t, gap, "invoice.pdf")
	binary.LittleEndian.PutUint32(gap[e+4:], 1<<30)
	for name, in := range map[string][]byte{
		"truncated":              stored[:len(stored)-50],
		"truncated header":       stored[:20],
		"65535 files":            set(stored, 28, 0xffff, 2),
		"65535 folders":          set(stored, 26, 0xffff, 2),
		"65535 data blocks":      set(stored, cabHeaderLen+4, 0xffff, 2),
		"file in missing folder": set(stored, cabFileEntry(t, stored, "readme.txt")+8, 7, 2),
		"member beyond a gap":    gap,
		"data checksum":          data,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := walkPacked(t, walkCab, in, ""); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := walkPacked(t, walkCab, []byte("7z\xbc\xaf\x27\x1c"), ""); !errors.Is(err, ErrNotFormat) {
		t.Fatalf("7z: err %v", err)
	}
}

func FuzzCab(f *testing.F) {
	stored, _ := makeCab(f)
	zipped, _ := makeCab(f, "-z")
	f.Add(stored)
	f.Add(zipped)
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.cab"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := walkPacked(t, walkCab, data, "")
		if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
