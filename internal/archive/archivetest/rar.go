package archivetest

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// No RAR creator is free software, so the tests build their archives by
// hand, with stored (uncompressed) members, after RARLAB's technotes:
// "RAR 5.0 archive format" (rarlab.com/technote.htm) for v5, and the
// technote.txt of RAR 3.x/4.x (shipped with unrar's sources) for v4.

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// Rar5Vint is RAR5's variable-length integer: 7 bits a byte, low first,
// the high bit set on all but the last byte.
func Rar5Vint(v uint64) []byte { return binary.AppendUvarint(nil, v) }

// Rar5Block is a RAR5 header block: CRC32 of what follows it up to the
// data, header size (vint, from the type to the end of the extra area),
// type, flags (0x1 extra area present, 0x2 data area present, 0x10 data
// continues in the next volume), extra size, data size, the type's fields,
// the extra area; then the data.
func Rar5Block(typ, flags uint64, fields, extra, data []byte) []byte {
	if len(extra) > 0 {
		flags |= 0x1
	}
	if len(data) > 0 {
		flags |= 0x2
	}
	body := cat(Rar5Vint(typ), Rar5Vint(flags))
	if len(extra) > 0 {
		body = append(body, Rar5Vint(uint64(len(extra)))...)
	}
	if len(data) > 0 {
		body = append(body, Rar5Vint(uint64(len(data)))...)
	}
	body = cat(body, fields, extra)
	hdr := cat(Rar5Vint(uint64(len(body))), body)
	return cat(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(hdr)), hdr, data)
}

// RarFile is one member of a hand-built RAR archive, stored.
type RarFile struct {
	Name      string
	Content   string
	Dir       bool
	Encrypted bool // (v5) a file encryption record, (v4) flag 0x04
	Solid     bool
	Split     bool // continued in the next volume
	// Declared, when set, is the unpacked size the header claims instead
	// of the content's: a liar, or a bomb's claim.
	Declared int64
}

// Size is the member's unpacked size: more than this volume holds of it
// when it is split.
func (f RarFile) Size() int {
	if f.Declared > 0 {
		return int(f.Declared)
	}
	if f.Split {
		return len(f.Content) + 1000
	}
	return len(f.Content)
}

// Rar5 builds a RAR5 archive: signature, main header (type 1, archive
// flags: 0x1 volume, 0x4 solid), file headers (type 2), end (type 5, flag
// 0x1: not the last volume).
func Rar5(arcFlags uint64, files ...RarFile) []byte {
	out := cat([]byte("Rar!\x1a\x07\x01\x00"), Rar5Block(1, 0, Rar5Vint(arcFlags), nil, nil))
	for _, f := range files {
		var fileFlags, hdrFlags, comp uint64
		if f.Dir {
			fileFlags |= 0x1
		}
		fileFlags |= 0x4 // CRC32 present
		if f.Solid {
			comp |= 0x40
		}
		if f.Split {
			hdrFlags |= 0x10
		}
		fields := cat(Rar5Vint(fileFlags), Rar5Vint(uint64(f.Size())), Rar5Vint(0x20),
			binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE([]byte(f.Content))),
			Rar5Vint(comp), Rar5Vint(0), Rar5Vint(uint64(len(f.Name))), []byte(f.Name))
		var extra []byte
		if f.Encrypted {
			// File encryption record (type 0x01): version 0, flags 0,
			// KDF count, 16-byte salt, 16-byte IV.
			rec := cat(Rar5Vint(1), Rar5Vint(0), Rar5Vint(0), []byte{15}, make([]byte, 32))
			extra = cat(Rar5Vint(uint64(len(rec))), rec)
		}
		out = append(out, Rar5Block(2, hdrFlags, fields, extra, []byte(f.Content))...)
	}
	var end uint64
	if arcFlags&0x1 != 0 {
		end = 0x1
	}
	return append(out, Rar5Block(5, 0, Rar5Vint(end), nil, nil)...)
}

// rar4Block is a v4 block: HEAD_CRC (the low 16 bits of the CRC32 of the
// rest of the header), HEAD_TYPE, HEAD_FLAGS, HEAD_SIZE, the fields; then
// the data.
func rar4Block(typ byte, flags uint16, fields, data []byte) []byte {
	hdr := cat([]byte{typ}, binary.LittleEndian.AppendUint16(nil, flags),
		binary.LittleEndian.AppendUint16(nil, uint16(7+len(fields))), fields)
	return cat(binary.LittleEndian.AppendUint16(nil, uint16(crc32.ChecksumIEEE(hdr))), hdr, data)
}

// Rar4 builds a v4 archive: marker, archive header (0x73; flags 0x0001
// volume, 0x0008 solid, 0x0080 headers encrypted, 0x0100 first volume),
// file headers (0x74; flags 0x0002 continued in the next volume, 0x0004
// encrypted, 0x0010 solid, 0x0400 salt present, 0x8000 data follows, 0x00e0
// directory; method 0x30 stored), end (0x7b).
func Rar4(arcFlags uint16, files ...RarFile) []byte {
	out := cat([]byte("Rar!\x1a\x07\x00"), rar4Block(0x73, arcFlags, make([]byte, 6), nil))
	le := binary.LittleEndian
	for _, f := range files {
		flags := uint16(0x8000)
		if f.Dir {
			flags |= 0xe0
		}
		if f.Split {
			flags |= 0x0002
		}
		if f.Solid {
			flags |= 0x0010
		}
		fields := le.AppendUint32(nil, uint32(len(f.Content)))                  // PACK_SIZE
		fields = le.AppendUint32(fields, uint32(f.Size()))                      // UNP_SIZE
		fields = append(fields, 2)                                              // HOST_OS: Windows
		fields = le.AppendUint32(fields, crc32.ChecksumIEEE([]byte(f.Content))) // FILE_CRC
		fields = le.AppendUint32(fields, 0x5a8e3b21)                            // FTIME
		fields = append(fields, 29, 0x30)                                       // UNP_VER, METHOD
		fields = le.AppendUint16(fields, uint16(len(f.Name)))
		fields = le.AppendUint32(fields, 0x20) // ATTR
		fields = append(fields, f.Name...)
		if f.Encrypted {
			flags |= 0x0004 | 0x0400
			fields = append(fields, make([]byte, 8)...) // SALT
		}
		out = append(out, rar4Block(0x74, flags, fields, []byte(f.Content))...)
	}
	end := uint16(0x4000)
	if arcFlags&0x1 != 0 {
		end |= 0x0001 // not the last volume
	}
	return append(out, rar4Block(0x7b, end, nil, nil)...)
}
