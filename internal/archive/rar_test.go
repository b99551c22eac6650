package archive

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// The archives are built by hand (archivetest.Rar5, archivetest.Rar4):
// no RAR creator is free software.

var rarMembers = []archivetest.RarFile{
	{Name: "docs", Dir: true},
	{Name: "docs/evil.exe", Content: "MZ" + strings.Repeat("payload ", 100)},
	{Name: "invoice.pdf", Content: "%PDF-1.4\n"},
}

func TestRarWalk(t *testing.T) {
	solid := []archivetest.RarFile{rarMembers[1], {Name: "b.txt", Content: "second", Solid: true}}
	split := []archivetest.RarFile{rarMembers[2], {Name: "big.exe", Content: "MZ first part", Split: true}}
	enc := []archivetest.RarFile{rarMembers[2], {Name: "secret.exe", Content: "garbage!", Encrypted: true}}
	for _, tc := range []struct {
		name       string
		data       []byte
		files      []archivetest.RarFile
		unreadable string // a member whose content fails as unsupported
	}{
		{"v5", archivetest.Rar5(0, rarMembers...), rarMembers, ""},
		{"v4", archivetest.Rar4(0, rarMembers...), rarMembers, ""},
		{"v5 solid", archivetest.Rar5(0x4, solid...), solid, ""},
		{"v4 solid", archivetest.Rar4(0x8, solid...), solid, ""},
		{"v5 first volume", archivetest.Rar5(0x1, split...), split, "big.exe"},
		{"v4 first volume", archivetest.Rar4(0x101, split...), split, "big.exe"},
		{"v5 encrypted member", archivetest.Rar5(0, enc...), enc, ""},
		{"v4 encrypted member", archivetest.Rar4(0, enc...), enc, ""},
		{"v5 self-extractor", cat([]byte("MZ"), make([]byte, 70000), archivetest.Rar5(0, rarMembers...)), rarMembers, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !sniffRar(tc.data[:min(len(tc.data), HeadLen)], bytes.NewReader(tc.data), int64(len(tc.data)), "report.doc") {
				t.Fatal("sniff: not recognised")
			}
			var got []Member
			contents := map[string]string{}
			err := walkRar(t.Context(), bytes.NewReader(tc.data), int64(len(tc.data)), "", func(m *Member) error {
				got = append(got, *m)
				if m.Open == nil {
					return nil
				}
				rc, err := m.Open()
				if err != nil {
					return err
				}
				b, err := readAllString(rc)
				if m.Name == tc.unreadable {
					if !errors.Is(err, ErrUnsupported) {
						t.Errorf("%s: read error %v, want ErrUnsupported", m.Name, err)
					}
					return nil
				}
				contents[m.Name] = b
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.files) {
				t.Fatalf("members %+v", got)
			}
			for i, f := range tc.files {
				m := got[i]
				if m.Name != f.Name || m.Dir != f.Dir || m.Encrypted != f.Encrypted || (!f.Dir && m.Size != int64(f.Size())) {
					t.Errorf("member %d: %+v, want %+v", i, m, f)
				}
				if m.Encrypted && m.Open != nil {
					t.Errorf("%s: encrypted, yet opened", m.Name)
				}
				if !f.Dir && !f.Encrypted && f.Name != tc.unreadable && contents[f.Name] != f.Content {
					t.Errorf("%s: content %.20q", f.Name, contents[f.Name])
				}
			}
		})
	}
}

func readAllString(rc interface{ Read([]byte) (int, error) }) (string, error) {
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := rc.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if err.Error() == "EOF" {
				return b.String(), nil
			}
			return b.String(), err
		}
	}
}

func TestRarEncryptedHeaders(t *testing.T) {
	// v5: an archive encryption header (type 4: version 0, flags 0, KDF
	// count, salt) before everything else.
	v5 := cat([]byte("Rar!\x1a\x07\x01\x00"), archivetest.Rar5Block(4, 0, cat(archivetest.Rar5Vint(0), archivetest.Rar5Vint(0), []byte{15}, make([]byte, 16)), nil, nil), make([]byte, 64))
	v4 := archivetest.Rar4(0x0080, rarMembers...)
	for name, data := range map[string][]byte{"v5": v5, "v4": v4} {
		t.Run(name, func(t *testing.T) {
			w, err := walkPacked(t, walkRar, data, "")
			if !errors.Is(err, ErrEncrypted) || len(w.members) != 0 {
				t.Fatalf("err %v, members %+v", err, w.members)
			}
		})
	}
}

func TestRarCorrupt(t *testing.T) {
	v5 := archivetest.Rar5(0, rarMembers...)
	v4 := archivetest.Rar4(0, rarMembers...)
	flip := func(b []byte, i int) []byte { b = bytes.Clone(b); b[i] ^= 0x40; return b }
	content := flip(v5, bytes.Index(v5, []byte("payload")))
	for name, in := range map[string][]byte{
		"v5 truncated":       v5[:len(v5)-300],
		"v4 truncated":       v4[:len(v4)-300],
		"v5 header checksum": flip(v5, 12),
		"v4 header checksum": flip(v4, 25),
		"v5 content":         content,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := walkPacked(t, walkRar, in, ""); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err %v, want ErrCorrupt", err)
			}
		})
	}
	if _, err := walkPacked(t, walkRar, []byte("MZ just a program"), ""); !errors.Is(err, ErrNotFormat) {
		t.Fatalf("exe: err %v", err)
	}
}

func FuzzRar(f *testing.F) {
	f.Add(archivetest.Rar5(0, rarMembers...))
	f.Add(archivetest.Rar4(0, rarMembers...))
	f.Add(archivetest.Rar5(0x5, archivetest.RarFile{Name: "a", Content: "x", Split: true, Encrypted: true}))
	f.Add(archivetest.Rar4(0x109, archivetest.RarFile{Name: "a", Content: "x", Split: true, Encrypted: true, Solid: true}))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := walkPacked(t, walkRar, data, "")
		if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
