package archive

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// TNEF ([MS-OXTNEF], "winmail.dat", application/ms-tnef) is how Outlook
// wraps a message's attachments for recipients it believes to be Outlook
// too. The stream is a signature, a legacy key and a list of attributes
// (level, id, length, data, checksum); an attachment begins with its
// attAttachRendData attribute and is described by attAttachTitle (its 8.3
// name), attAttachData (its content) and attAttachment (a MAPI property
// list with the long file name, and for an attached Outlook message the
// message itself as a nested TNEF stream).
//
// Checksums are not verified: Outlook does not refuse a stream over them and
// neither does ClamAV (its own TNEF test file carries wrong ones), so a
// wrong checksum must not hide the attachments from the rules.

const (
	tnefSignature = 0x223E9F78
	tnefHeaderLen = 6  // signature, legacy key
	tnefAttrLen   = 11 // level, id, length before the data; checksum after it: 9 + 2

	tnefLevelMessage = 1

	// Attribute ids (the low word of the 32-bit attribute; the high word is
	// its type).
	attAttachData     = 0x800F
	attAttachTitle    = 0x8010
	attAttachRendData = 0x9002
	attAttachment     = 0x9005
	attOemCodepage    = 0x9007

	// MAPI property ids and types in attAttachment.
	prDisplayName        = 0x3001
	prAttachDataObj      = 0x3701
	prAttachFilename     = 0x3704
	prAttachLongFilename = 0x3707
	ptString8            = 0x001E
	ptUnicode            = 0x001F
	ptBinary             = 0x0102
	ptObject             = 0x000D
	ptMultiple           = 0x1000

	// tnefMaxName bounds the bytes of a name read from the stream: longer
	// names are truncated (nothing a file system would store is longer).
	tnefMaxName = 1024
)

func init() {
	Register(&Format{
		Name: "tnef",
		Sniff: func(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
			return len(head) >= 4 && binary.LittleEndian.Uint32(head) == tnefSignature
		},
		Walk:        walkTNEF,
		Attachments: true,
	})
}

func tnefCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: tnef: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// tnefAttach is what the attributes of one attachment said.
type tnefAttach struct {
	title, long, short, display string // names, in order of preference: long, title, short, display
	off, n                      int64  // the content in the stream
	hasData                     bool
}

func (a *tnefAttach) name() string {
	for _, n := range []string{a.long, a.title, a.short, a.display} {
		if n != "" {
			return n
		}
	}
	return ""
}

func walkTNEF(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	var hdr [tnefHeaderLen]byte
	if size < tnefHeaderLen {
		return ErrNotFormat
	}
	if _, err := r.ReadAt(hdr[:], 0); err != nil {
		return fmt.Errorf("tnef: %w", err)
	}
	if binary.LittleEndian.Uint32(hdr[:]) != tnefSignature {
		return ErrNotFormat
	}
	codePage := uint32(1252)
	var cur *tnefAttach
	flush := func() error {
		if cur == nil {
			return nil
		}
		a := cur
		cur = nil
		m := &Member{Name: a.name(), Size: a.n, CompressedSize: a.n}
		off, n := a.off, a.n
		m.Open = func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(r, off, n)), nil
		}
		return fn(m)
	}
	var ah [9]byte
	for off, i := int64(tnefHeaderLen), 0; size-off >= tnefAttrLen; i++ {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if _, err := r.ReadAt(ah[:], off); err != nil {
			return fmt.Errorf("tnef: %w", err)
		}
		level := ah[0]
		id := binary.LittleEndian.Uint32(ah[1:]) & 0xFFFF
		n := int64(binary.LittleEndian.Uint32(ah[5:]))
		data := off + 9
		if n > size-data-2 {
			return tnefCorrupt("attribute %#x at %d: %d bytes beyond the end", id, off, n)
		}
		off = data + n + 2
		switch {
		case level == tnefLevelMessage && id == attOemCodepage && n >= 4:
			b, err := readAtMost(r, data, 4)
			if err != nil {
				return err
			}
			codePage = binary.LittleEndian.Uint32(b)
		case level == tnefLevelMessage:
		case id == attAttachRendData:
			if err := flush(); err != nil {
				return err
			}
			cur = &tnefAttach{}
		case cur == nil:
			// An attachment attribute before any attAttachRendData.
			return tnefCorrupt("attachment attribute %#x at %d outside an attachment", id, data-9)
		case id == attAttachTitle:
			b, err := readAtMost(r, data, min(n, tnefMaxName))
			if err != nil {
				return err
			}
			cur.title = codePageName(b, codePage)
		case id == attAttachData:
			cur.off, cur.n, cur.hasData = data, n, true
		case id == attAttachment:
			if err := tnefProps(&tnefCursor{r: r, off: data, end: data + n}, cur, codePage); err != nil {
				return err
			}
		}
	}
	return flush()
}

// readAtMost reads n bytes at off (n bounded by the caller).
func readAtMost(r io.ReaderAt, off, n int64) ([]byte, error) {
	b := make([]byte, n)
	if _, err := r.ReadAt(b, off); err != nil && !(err == io.EOF && n == 0) {
		return nil, fmt.Errorf("tnef: %w", err)
	}
	return b, nil
}

// tnefCursor reads a MAPI property list within [off, end) of r.
type tnefCursor struct {
	r        io.ReaderAt
	off, end int64
}

func (c *tnefCursor) u32() (uint32, error) {
	if c.end-c.off < 4 {
		return 0, tnefCorrupt("property list truncated at %d", c.off)
	}
	var b [4]byte
	if _, err := c.r.ReadAt(b[:], c.off); err != nil {
		return 0, fmt.Errorf("tnef: %w", err)
	}
	c.off += 4
	return binary.LittleEndian.Uint32(b[:]), nil
}

// skip advances over n bytes and the padding to a multiple of 4.
func (c *tnefCursor) skip(n int64) error {
	n = (n + 3) &^ 3
	if n > c.end-c.off {
		return tnefCorrupt("property value of %d bytes beyond the list at %d", n, c.off)
	}
	c.off += n
	return nil
}

// tnefFixedSize is the stream size of the fixed-size property types.
var tnefFixedSize = map[uint16]int64{
	0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
	0x000A: 4, 0x000B: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16,
}

// tnefProps reads an attAttachment property list into a. Counts are checked
// against the bytes left before anything is read: a count cannot make it
// loop longer than the list is long.
func tnefProps(c *tnefCursor, a *tnefAttach, codePage uint32) error {
	count, err := c.u32()
	if err != nil {
		return err
	}
	if int64(count) > (c.end-c.off)/8 {
		return tnefCorrupt("%d properties in a list of %d bytes", count, c.end-c.off)
	}
	for range count {
		tag, err := c.u32()
		if err != nil {
			return err
		}
		typ, id := uint16(tag), uint16(tag>>16)
		if id >= 0x8000 { // a named property: its GUID and name or number
			if err := c.skip(16); err != nil {
				return err
			}
			kind, err := c.u32()
			if err != nil {
				return err
			}
			n := int64(4)
			if kind != 0 {
				l, err := c.u32()
				if err != nil {
					return err
				}
				n = int64(l)
			}
			if err := c.skip(n); err != nil {
				return err
			}
		}
		base := typ &^ ptMultiple
		variable := base == ptString8 || base == ptUnicode || base == ptBinary || base == ptObject
		fixed, known := tnefFixedSize[base]
		if !variable && !known {
			return fmt.Errorf("%w: tnef: property type %#x", ErrUnsupported, typ)
		}
		values := uint32(1)
		if variable || typ&ptMultiple != 0 {
			if values, err = c.u32(); err != nil {
				return err
			}
			if int64(values) > (c.end-c.off)/4 {
				return tnefCorrupt("%d values in a list of %d bytes", values, c.end-c.off)
			}
		}
		for v := range values {
			if !variable {
				if err := c.skip(fixed); err != nil {
					return err
				}
				continue
			}
			l, err := c.u32()
			if err != nil {
				return err
			}
			start, n := c.off, int64(l)
			if err := c.skip(n); err != nil {
				return err
			}
			if v > 0 || typ&ptMultiple != 0 {
				continue
			}
			switch id {
			case prAttachLongFilename, prAttachFilename, prDisplayName:
				b, err := readAtMost(c.r, start, min(n, tnefMaxName))
				if err != nil {
					return err
				}
				s := codePageName(b, codePage)
				if base == ptUnicode {
					s = utf16Name(b, false)
				}
				s = strings.TrimRight(s, "\x00")
				switch id {
				case prAttachLongFilename:
					a.long = s
				case prAttachFilename:
					a.short = s
				default:
					a.display = s
				}
			case prAttachDataObj:
				if a.hasData {
					continue // attAttachData said it already
				}
				if base == ptObject && n >= 16 {
					// The object after its interface id: a nested TNEF
					// stream for an attached message (IID_IMessage), a
					// compound file for an OLE object; the lister
					// recognizes either by its content.
					start, n = start+16, n-16
				}
				a.off, a.n, a.hasData = start, n, true
			}
		}
	}
	return nil
}
