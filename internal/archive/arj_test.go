package archive

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

var arjFiles = map[string]string{
	"evil.exe":    "MZ" + string(bytes.Repeat([]byte("payload "), 300)),
	"sub/b.txt":   "hello\n",
	"invoice.pdf": "%PDF-1.4\n",
}

func makeArj(t testing.TB, args ...string) []byte {
	t.Helper()
	dir := fixtureDir(t, arjFiles)
	tool(t, dir, "arj", append(append([]string{"a", "-y"}, args...), "out.arj", "evil.exe", "sub/b.txt", "invoice.pdf")...)
	return readFile(t, filepath.Join(dir, "out.arj"))
}

func TestArjWalk(t *testing.T) {
	for _, tc := range []struct {
		name            string
		args            []string
		opened, garbled bool
	}{
		{"stored", []string{"-m0"}, true, false},
		{"compressed", []string{"-m1"}, false, false},
		{"garbled", []string{"-m0", "-gsecret"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := makeArj(t, tc.args...)
			if !sniffArj(data[:min(len(data), HeadLen)], bytes.NewReader(data), int64(len(data)), "notes.txt") {
				t.Fatal("sniff: not recognised")
			}
			w, err := walkPacked(t, walkArj, data, "a.arj")
			if err != nil {
				t.Fatal(err)
			}
			if len(w.members) != len(arjFiles) {
				t.Fatalf("members %+v", w.members)
			}
			for name, want := range arjFiles {
				m := w.member(name)
				if m == nil {
					t.Fatalf("no %s in %+v", name, w.members)
				}
				// arj stores what does not compress (the small files) even
				// when told to compress.
				if m.Size != int64(len(want)) || m.Encrypted != tc.garbled || (m.Open != nil) != tc.opened && name == "evil.exe" {
					t.Errorf("%s: %+v", name, *m)
				}
				if m.Open != nil && w.contents[name] != want {
					t.Errorf("%s: content %.20q", name, w.contents[name])
				}
			}
		})
	}
}

func TestArjClamAV(t *testing.T) {
	data := readFile(t, "/usr/share/clamav-testfiles/clam.arj")
	w, err := walkPacked(t, walkArj, data, "clam.arj")
	if err != nil {
		t.Fatal(err)
	}
	if m := w.member("clam.exe"); m == nil || m.Size != 544 {
		t.Fatalf("members %+v", w.members)
	}
}

func TestArjCorrupt(t *testing.T) {
	data := makeArj(t, "-m0")
	hdr := bytes.Clone(data)
	hdr[50] ^= 0x20 // in the first local header
	content := bytes.Clone(data)
	i := bytes.Index(content, []byte("payload"))
	content[i] ^= 0x20 // in evil.exe's stored content
	for name, in := range map[string][]byte{
		"truncated":        data[:len(data)-30],
		"truncated header": data[:40],
		"header checksum":  hdr,
		"content checksum": content,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := walkPacked(t, walkArj, in, ""); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := walkPacked(t, walkArj, []byte("MSCF\x00\x00\x00\x00 not arj"), ""); !errors.Is(err, ErrNotFormat) {
		t.Fatalf("cab: err %v", err)
	}
}

func FuzzArj(f *testing.F) {
	f.Add(makeArj(f, "-m0"))
	f.Add(makeArj(f, "-m1", "-gx"))
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.arj"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := walkPacked(t, walkArj, data, "")
		if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
