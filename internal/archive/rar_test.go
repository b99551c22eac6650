package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

// No RAR creator is free software, so the tests build their archives by
// hand, with stored (uncompressed) members, after RARLAB's technotes:
// "RAR 5.0 archive format" (rarlab.com/technote.htm) for v5, and the
// technote.txt of RAR 3.x/4.x (shipped with unrar's sources) for v4.

// rar5Vint is RAR5's variable-length integer: 7 bits a byte, low first,
// the high bit set on all but the last byte.
func rar5Vint(v uint64) []byte { return binary.AppendUvarint(nil, v) }

// rar5Block is a RAR5 header block: CRC32 of what follows it up to the data,
// header size (vint, from the type to the end of the extra area), type,
// flags (0x1 extra area present, 0x2 data area present, 0x10 data continues
// in the next volume), extra size, data size, the type's fields, the extra
// area; then the data.
func rar5Block(typ, flags uint64, fields, extra, data []byte) []byte {
	if len(extra) > 0 {
		flags |= 0x1
	}
	if len(data) > 0 {
		flags |= 0x2
	}
	body := cat(rar5Vint(typ), rar5Vint(flags))
	if len(extra) > 0 {
		body = append(body, rar5Vint(uint64(len(extra)))...)
	}
	if len(data) > 0 {
		body = append(body, rar5Vint(uint64(len(data)))...)
	}
	body = cat(body, fields, extra)
	hdr := cat(rar5Vint(uint64(len(body))), body)
	return cat(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(hdr)), hdr, data)
}

type rarFile struct {
	name      string
	content   string
	dir       bool
	encrypted bool // (v5) a file encryption record, (v4) flag 0x04
	solid     bool
	split     bool // continued in the next volume
}

// size is the member's unpacked size: more than this volume holds of it
// when it is split.
func (f rarFile) size() int {
	if f.split {
		return len(f.content) + 1000
	}
	return len(f.content)
}

// rar5 builds a RAR5 archive: signature, main header (type 1, archive
// flags: 0x1 volume, 0x4 solid), file headers (type 2), end (type 5, flag
// 0x1: not the last volume).
func rar5(arcFlags uint64, files ...rarFile) []byte {
	out := cat([]byte("Rar!\x1a\x07\x01\x00"), rar5Block(1, 0, rar5Vint(arcFlags), nil, nil))
	for _, f := range files {
		var fileFlags, hdrFlags, comp uint64
		if f.dir {
			fileFlags |= 0x1
		}
		fileFlags |= 0x4 // CRC32 present
		if f.solid {
			comp |= 0x40
		}
		if f.split {
			hdrFlags |= 0x10
		}
		fields := cat(rar5Vint(fileFlags), rar5Vint(uint64(f.size())), rar5Vint(0x20),
			binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE([]byte(f.content))),
			rar5Vint(comp), rar5Vint(0), rar5Vint(uint64(len(f.name))), []byte(f.name))
		var extra []byte
		if f.encrypted {
			// File encryption record (type 0x01): version 0, flags 0,
			// KDF count, 16-byte salt, 16-byte IV.
			rec := cat(rar5Vint(1), rar5Vint(0), rar5Vint(0), []byte{15}, make([]byte, 32))
			extra = cat(rar5Vint(uint64(len(rec))), rec)
		}
		out = append(out, rar5Block(2, hdrFlags, fields, extra, []byte(f.content))...)
	}
	var end uint64
	if arcFlags&0x1 != 0 {
		end = 0x1
	}
	return append(out, rar5Block(5, 0, rar5Vint(end), nil, nil)...)
}

// rar4Block is a v4 block: HEAD_CRC (the low 16 bits of the CRC32 of the
// rest of the header), HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE, the fields; then
// the data.
func rar4Block(typ byte, flags uint16, fields, data []byte) []byte {
	hdr := cat([]byte{typ}, binary.LittleEndian.AppendUint16(nil, flags),
		binary.LittleEndian.AppendUint16(nil, uint16(7+len(fields))), fields)
	return cat(binary.LittleEndian.AppendUint16(nil, uint16(crc32.ChecksumIEEE(hdr))), hdr, data)
}

// rar4 builds a v4 archive: marker, archive header (0x73; flags 0x0001
// volume, 0x0008 solid, 0x0080 headers encrypted, 0x0100 first volume),
// file headers (0x74; flags 0x0002 continued in the next volume, 0x0004
// encrypted, 0x0010 solid, 0x0400 salt present, 0x8000 data follows, 0x00e0
// directory; method 0x30 stored), end (0x7b).
func rar4(arcFlags uint16, files ...rarFile) []byte {
	out := cat([]byte("Rar!\x1a\x07\x00"), rar4Block(0x73, arcFlags, make([]byte, 6), nil))
	le := binary.LittleEndian
	for _, f := range files {
		flags := uint16(0x8000)
		if f.dir {
			flags |= 0xe0
		}
		if f.split {
			flags |= 0x0002
		}
		if f.solid {
			flags |= 0x0010
		}
		fields := le.AppendUint32(nil, uint32(len(f.content)))                  // PACK_SIZE
		fields = le.AppendUint32(fields, uint32(f.size()))                      // UNP_SIZE
		fields = append(fields, 2)                                              // HOST_OS: Windows
		fields = le.AppendUint32(fields, crc32.ChecksumIEEE([]byte(f.content))) // FILE_CRC
		fields = le.AppendUint32(fields, 0x5a8e3b21)                            // FTIME
		fields = append(fields, 29, 0x30)                                       // UNP_VER, METHOD
		fields = le.AppendUint16(fields, uint16(len(f.name)))
		fields = le.AppendUint32(fields, 0x20) // ATTR
		fields = append(fields, f.name...)
		if f.encrypted {
			flags |= 0x0004 | 0x0400
			fields = append(fields, make([]byte, 8)...) // SALT
		}
		out = append(out, rar4Block(0x74, flags, fields, []byte(f.content))...)
	}
	end := uint16(0x4000)
	if arcFlags&0x1 != 0 {
		end |= 0x0001 // not the last volume
	}
	return append(out, rar4Block(0x7b, end, nil, nil)...)
}

var rarMembers = []rarFile{
	{name: "docs", dir: true},
	{name: "docs/evil.exe", content: "MZ" + strings.Repeat("payload ", 100)},
	{name: "invoice.pdf", content: "%PDF-1.4\n"},
}

func TestRarWalk(t *testing.T) {
	solid := []rarFile{rarMembers[1], {name: "b.txt", content: "second", solid: true}}
	split := []rarFile{rarMembers[2], {name: "big.exe", content: "MZ first part", split: true}}
	enc := []rarFile{rarMembers[2], {name: "secret.exe", content: "garbage!", encrypted: true}}
	for _, tc := range []struct {
		name       string
		data       []byte
		files      []rarFile
		unreadable string // a member whose content fails as unsupported
	}{
		{"v5", rar5(0, rarMembers...), rarMembers, ""},
		{"v4", rar4(0, rarMembers...), rarMembers, ""},
		{"v5 solid", rar5(0x4, solid...), solid, ""},
		{"v4 solid", rar4(0x8, solid...), solid, ""},
		{"v5 first volume", rar5(0x1, split...), split, "big.exe"},
		{"v4 first volume", rar4(0x101, split...), split, "big.exe"},
		{"v5 encrypted member", rar5(0, enc...), enc, ""},
		{"v4 encrypted member", rar4(0, enc...), enc, ""},
		{"v5 self-extractor", cat([]byte("MZ"), make([]byte, 70000), rar5(0, rarMembers...)), rarMembers, ""},
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
				if m.Name != f.name || m.Dir != f.dir || m.Encrypted != f.encrypted || (!f.dir && m.Size != int64(f.size())) {
					t.Errorf("member %d: %+v, want %+v", i, m, f)
				}
				if m.Encrypted && m.Open != nil {
					t.Errorf("%s: encrypted, yet opened", m.Name)
				}
				if !f.dir && !f.encrypted && f.name != tc.unreadable && contents[f.name] != f.content {
					t.Errorf("%s: content %.20q", f.name, contents[f.name])
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
	v5 := cat([]byte("Rar!\x1a\x07\x01\x00"), rar5Block(4, 0, cat(rar5Vint(0), rar5Vint(0), []byte{15}, make([]byte, 16)), nil, nil), make([]byte, 64))
	v4 := rar4(0x0080, rarMembers...)
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
	v5 := rar5(0, rarMembers...)
	v4 := rar4(0, rarMembers...)
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
	f.Add(rar5(0, rarMembers...))
	f.Add(rar4(0, rarMembers...))
	f.Add(rar5(0x5, rarFile{name: "a", content: "x", split: true, encrypted: true}))
	f.Add(rar4(0x109, rarFile{name: "a", content: "x", split: true, encrypted: true, solid: true}))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := walkPacked(t, walkRar, data, "")
		if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
			t.Fatalf("unexpected error %v", err)
		}
	})
}
