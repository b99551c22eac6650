package archivetest

import (
	"bytes"
	"encoding/binary"
	"unicode/utf16"
)

// TNEF writes TNEF streams (winmail.dat) for the tests; Debian has a TNEF
// reader (tnef(1)) but no writer. The layout ([MS-OXTNEF]):
//
//	signature 0x223E9F78 (LE uint32), legacy key (uint16)
//	attributes: level (1 message, 2 attachment), attribute (LE uint32: id
//	in the low word, type in the high word), length (LE uint32), data,
//	checksum (LE uint16, the sum of the data bytes)
//
// An attachment is attAttachRendData followed by attAttachTitle,
// attAttachData and attAttachment (a MAPI property list: count, then per
// property its tag, for strings and binaries a value count, and each value
// as length and data padded to 4 bytes).
type TNEF struct{ bytes.Buffer }

// MAPI property types whose values are counted and padded.
const (
	ptString8 = 0x001E
	ptUnicode = 0x001F
	ptBinary  = 0x0102
	ptObject  = 0x000D
)

// NewTNEF starts a stream with its signature and attTnefVersion, as
// Outlook writes it first.
func NewTNEF() *TNEF {
	b := &TNEF{}
	binary.Write(b, binary.LittleEndian, uint32(0x223E9F78))
	binary.Write(b, binary.LittleEndian, uint16(0x0101))
	b.Attr(1, 0x00089006, []byte{0, 0, 1, 0})
	return b
}

// Attr appends one attribute of level with id and data, and its checksum.
func (b *TNEF) Attr(level byte, id uint32, data []byte) *TNEF {
	b.WriteByte(level)
	binary.Write(b, binary.LittleEndian, id)
	binary.Write(b, binary.LittleEndian, uint32(len(data)))
	b.Write(data)
	var sum uint16
	for _, c := range data {
		sum += uint16(c)
	}
	binary.Write(b, binary.LittleEndian, sum)
	return b
}

// MAPIProp is one property of an attAttachment list.
type MAPIProp struct {
	Tag   uint32 // id << 16 | type
	Value []byte // for variable types: the one value; for fixed: the padded value
}

// MAPIProps encodes a property list.
func MAPIProps(props ...MAPIProp) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(len(props)))
	for _, p := range props {
		binary.Write(&b, binary.LittleEndian, p.Tag)
		switch uint16(p.Tag) {
		case ptString8, ptUnicode, ptBinary, ptObject:
			binary.Write(&b, binary.LittleEndian, uint32(1))
			binary.Write(&b, binary.LittleEndian, uint32(len(p.Value)))
			b.Write(p.Value)
			b.Write(make([]byte, (4-len(p.Value)%4)%4))
		default:
			b.Write(p.Value)
		}
	}
	return b.Bytes()
}

// UTF16LE is s as a NUL-terminated UTF-16LE string (a PT_UNICODE value).
func UTF16LE(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

// Attach adds an attachment with an 8.3 title ("": none), content (nil:
// none) and the given properties.
func (b *TNEF) Attach(title string, content []byte, props ...MAPIProp) *TNEF {
	b.Attr(2, 0x00069002, make([]byte, 14))
	if title != "" {
		b.Attr(2, 0x00018010, append([]byte(title), 0))
	}
	if content != nil {
		b.Attr(2, 0x0006800F, content)
	}
	if props != nil {
		b.Attr(2, 0x00069005, MAPIProps(props...))
	}
	return b
}
