package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// tool runs an archiver of the test environment in dir (see needTool).
func tool(t testing.TB, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(archivetest.NeedTool(t, name), args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// fixtureDir returns a temporary directory holding the files named in
// files, with the given contents.
func fixtureDir(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("fixture: %v", err)
	}
	return b
}

// packedWalk is what a Walk reported: the members, with the content of those
// that can be opened.
type packedWalk struct {
	members  []Member
	contents map[string]string
}

func walkPacked(t testing.TB, f func(context.Context, io.ReaderAt, int64, string, func(*Member) error) error, data []byte, name string) (packedWalk, error) {
	t.Helper()
	w := packedWalk{contents: map[string]string{}}
	err := f(context.Background(), bytes.NewReader(data), int64(len(data)), name, func(m *Member) error {
		w.members = append(w.members, *m)
		if m.Open != nil && !m.Dir {
			rc, err := m.Open()
			if err != nil {
				return err
			}
			defer rc.Close()
			b, err := io.ReadAll(io.LimitReader(rc, 1<<20))
			if err != nil {
				return err
			}
			w.contents[m.Name] = string(b)
		}
		return nil
	})
	return w, err
}

func (w packedWalk) member(name string) *Member {
	for i := range w.members {
		if w.members[i].Name == name {
			return &w.members[i]
		}
	}
	return nil
}

var sevenZipFiles = map[string]string{
	"invoice.pdf":    "%PDF-1.4 not really\n",
	"docs/evil.exe":  "MZ" + string(bytes.Repeat([]byte("payload "), 500)),
	"docs/notes.txt": "hello\n",
}

func make7z(t testing.TB, args ...string) []byte {
	t.Helper()
	dir := fixtureDir(t, sevenZipFiles)
	tool(t, dir, "7z", append(append([]string{"a", "-bd", "out.7z"}, args...), "invoice.pdf", "docs")...)
	return readFile(t, filepath.Join(dir, "out.7z"))
}

func TestSevenZipWalk(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		encrypted bool
	}{
		{"compressed header", nil, false},
		{"plain header", []string{"-mhc=off"}, false},
		{"not solid, stored", []string{"-ms=off", "-mx=0"}, false},
		{"solid lzma", []string{"-ms=on", "-m0=lzma"}, false},
		{"bzip2", []string{"-m0=bzip2"}, false},
		{"encrypted members", []string{"-pSECRET"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := make7z(t, tc.args...)
			if !sniff7z(data[:min(len(data), HeadLen)], bytes.NewReader(data), int64(len(data)), "holiday.jpg") {
				t.Fatal("sniff: not recognised")
			}
			w, err := walkPacked(t, walk7z, data, "a.7z")
			if err != nil {
				t.Fatal(err)
			}
			exe := w.member("docs/evil.exe")
			if exe == nil || w.member("invoice.pdf") == nil || w.member("docs/notes.txt") == nil {
				t.Fatalf("members %+v", w.members)
			}
			if d := w.member("docs/"); d == nil || !d.Dir {
				t.Errorf("directory member: %+v", d)
			}
			if exe.Size != int64(len(sevenZipFiles["docs/evil.exe"])) || exe.CompressedSize <= 0 || exe.CompressedSize > exe.Size+64 {
				t.Errorf("evil.exe sizes %d/%d", exe.Size, exe.CompressedSize)
			}
			if exe.Encrypted != tc.encrypted {
				t.Errorf("encrypted = %v", exe.Encrypted)
			}
			if tc.encrypted {
				if exe.Open != nil {
					t.Error("an encrypted member can be opened")
				}
				return
			}
			for name, want := range sevenZipFiles {
				if got := w.contents[name]; got != want {
					t.Errorf("%s: content %.20q", name, got)
				}
			}
		})
	}
}

func TestSevenZipEncryptedHeader(t *testing.T) {
	data := make7z(t, "-pSECRET", "-mhe=on")
	w, err := walkPacked(t, walk7z, data, "")
	if !errors.Is(err, ErrEncrypted) || len(w.members) != 0 {
		t.Fatalf("err %v, members %v", err, w.members)
	}
}

func TestSevenZipClamAV(t *testing.T) {
	data := readFile(t, "/usr/share/clamav-testfiles/clam.7z")
	w, err := walkPacked(t, walk7z, data, "clam.7z")
	if err != nil {
		t.Fatal(err)
	}
	m := w.member("clam.exe")
	if m == nil || !bytes.HasPrefix([]byte(w.contents["clam.exe"]), []byte("MZ")) {
		t.Fatalf("members %+v", w.members)
	}
}

func TestSevenZipCorrupt(t *testing.T) {
	data := make7z(t, "-mhc=off")
	flipped := bytes.Clone(data)
	flipped[len(flipped)-10] ^= 0xff // in the header: its CRC fails
	content := bytes.Clone(data)
	content[40] ^= 0xff // in the packed data: the member fails to decode
	for name, in := range map[string][]byte{
		"truncated":           data[:len(data)-20],
		"truncated signature": data[:20],
		"header checksum":     flipped,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := walkPacked(t, walk7z, in, ""); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err %v, want ErrCorrupt", err)
			}
		})
	}
	t.Run("member data", func(t *testing.T) {
		_, err := walkPacked(t, walk7z, content, "")
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("err %v, want ErrCorrupt", err)
		}
	})
	if _, err := walkPacked(t, walk7z, []byte("PK\x03\x04 not a 7z"), ""); !errors.Is(err, ErrNotFormat) {
		t.Fatalf("zip: err %v", err)
	}
}

// sz7zNum encodes a 7z NUMBER in its long form.
func sz7zNum(v uint64) []byte { return binary.LittleEndian.AppendUint64([]byte{0xff}, v) }

// build7z wraps a hand-made header (after packed data) in a signature
// header with the right checksums.
func build7z(packed, hdr []byte) []byte {
	out := append([]byte{}, sevenZipMagic...)
	out = append(out, 0, 4, 0, 0, 0, 0)
	out = binary.LittleEndian.AppendUint64(out, uint64(len(packed)))
	out = binary.LittleEndian.AppendUint64(out, uint64(len(hdr)))
	out = binary.LittleEndian.AppendUint32(out, crc32.ChecksumIEEE(hdr))
	binary.LittleEndian.PutUint32(out[8:], crc32.ChecksumIEEE(out[12:32]))
	return append(append(out, packed...), hdr...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestSevenZipHostileHeader checks that counts and sizes the library would
// allocate on are refused before it sees them.
func TestSevenZipHostileHeader(t *testing.T) {
	b := func(v ...byte) []byte { return v }
	// One LZMA2 folder of 10 bytes, its dictionary property p.
	lzma2Folder := func(p byte, filesInfo []byte) []byte {
		return cat(b(szHeader, szMainStreamsInfo, szPackInfo), sz7zNum(0), sz7zNum(1), b(szSize), sz7zNum(1), b(szEnd),
			b(szUnpackInfo, szFolderID), sz7zNum(1), b(0, 1, 0x21, 0x21, 1, p), b(szCodersUnpackSize), sz7zNum(10), b(szEnd),
			b(szEnd), filesInfo, b(szEnd))
	}
	oneFile := cat(b(szFilesInfo), sz7zNum(1), b(szEnd))
	for _, tc := range []struct {
		name   string
		packed []byte
		hdr    []byte
		want   error
	}{
		{"2^32 members", nil, cat(b(szHeader, szFilesInfo), sz7zNum(1<<32-1), b(szEnd, szEnd)), ErrCorrupt},
		{"2^31 pack streams", nil, cat(b(szHeader, szMainStreamsInfo, szPackInfo), sz7zNum(0), sz7zNum(1<<31), b(szCRC, 1, szEnd, szEnd, szEnd)), ErrCorrupt},
		{"2^28 folders", nil, cat(b(szHeader, szMainStreamsInfo, szUnpackInfo, szFolderID), sz7zNum(1<<28), b(0, szEnd)), ErrCorrupt},
		{"4 GiB dictionary for 10 bytes", []byte{0}, lzma2Folder(40, oneFile), ErrUnsupported},
		{"files without streams", []byte{0}, lzma2Folder(16, cat(b(szFilesInfo), sz7zNum(3), b(szEnd))), ErrCorrupt},
		{"packed data beyond the end", nil, lzma2Folder(16, oneFile), ErrCorrupt},
		{"coder properties beyond the header", nil, cat(b(szHeader, szMainStreamsInfo, szUnpackInfo, szFolderID), sz7zNum(1), b(0, 0x21, 0x21), sz7zNum(1<<32), b(0)), ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := walkPacked(t, walk7z, build7z(tc.packed, tc.hdr), "")
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func FuzzSevenZip(f *testing.F) {
	for _, args := range [][]string{{"-mhc=off"}, {"-mx=0", "-mhc=off"}, nil, {"-pX"}} {
		f.Add(make7z(f, args...))
	}
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.7z"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := walkPacked(t, walk7z, data, "")
		if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
