package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"golang.org/x/text/encoding/charmap"
)

// ARJ archives, named by this package's own parser: no maintained Go
// decompressor exists, so only stored members are opened. The layout is
// Robert Jung's technote.txt of ARJ 2.x (kept by the open-source ARJ at
// arj.sourceforge.net): a main header, then per member a local header and
// its data, each header "60 EA", a basic header size (0 ends the archive),
// the basic header with a CRC-32, and extended headers (size 0 ends them).

func init() {
	Register(&Format{Name: "arj", Sniff: sniffArj, Walk: walkArj})
}

const (
	arjMaxBasic = 2600 // the spec's largest basic header
	arjFixed    = 30   // the fixed part of a local basic header

	arjGarbled   = 0x01
	arjVolume    = 0x04 // continued in the next volume
	arjExtFile   = 0x08 // continued from the previous volume
	arjStored    = 0
	arjBinary    = 0
	arjText      = 1
	arjDirectory = 3
)

var arjMagic = []byte{0x60, 0xea}

func sniffArj(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	// The magic is short: the main header's own fields must be sane too.
	return len(head) > 10 && bytes.HasPrefix(head, arjMagic) &&
		binary.LittleEndian.Uint16(head[2:]) <= arjMaxBasic && head[10] == 2
}

func corruptArj(format string, args ...any) error {
	return fmt.Errorf("%w: arj: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// arjHeader reads the header at off: its basic header (nil at the end of
// the archive) and the offset after its extended headers.
func arjHeader(r io.ReaderAt, size, off int64) ([]byte, int64, error) {
	var h [4]byte
	if _, err := r.ReadAt(h[:], off); err != nil {
		return nil, 0, corruptArj("truncated at %d", off)
	}
	if !bytes.Equal(h[:2], arjMagic) {
		return nil, 0, corruptArj("no header at %d", off)
	}
	n := int64(binary.LittleEndian.Uint16(h[2:]))
	if n == 0 {
		return nil, off + 4, nil
	}
	if n > arjMaxBasic || off+4+n+4 > size {
		return nil, 0, corruptArj("header of %d bytes at %d", n, off)
	}
	b := make([]byte, n+4)
	if _, err := r.ReadAt(b, off+4); err != nil {
		return nil, 0, corruptArj("truncated header at %d", off)
	}
	basic := b[:n]
	if crc32.ChecksumIEEE(basic) != binary.LittleEndian.Uint32(b[n:]) {
		return nil, 0, corruptArj("header checksum at %d", off)
	}
	off += 4 + n + 4
	for { // extended headers: skipped, each its size and data and CRC
		var e [2]byte
		if _, err := r.ReadAt(e[:], off); err != nil {
			return nil, 0, corruptArj("truncated extended header at %d", off)
		}
		en := int64(binary.LittleEndian.Uint16(e[:]))
		off += 2
		if en == 0 {
			return basic, off, nil
		}
		if off += en + 4; off > size {
			return nil, 0, corruptArj("extended header beyond the end")
		}
	}
}

func walkArj(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	var head [11]byte
	if n, _ := r.ReadAt(head[:], 0); !sniffArj(head[:n], r, size, "") {
		return ErrNotFormat
	}
	main, off, err := arjHeader(r, size, 0)
	if err != nil {
		return err
	}
	if main == nil || len(main) < arjFixed {
		return corruptArj("short main header")
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		basic, data, err := arjHeader(r, size, off)
		if err != nil {
			return err
		}
		if basic == nil {
			return nil
		}
		m, next, err := arjMember(r, size, basic, data)
		if err != nil {
			return err
		}
		off = next
		if m == nil {
			continue // a volume or chapter label
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// arjMember reads a local basic header whose data starts at data; it
// returns the member (nil for labels) and the offset of the next header.
func arjMember(r io.ReaderAt, size int64, b []byte, data int64) (*Member, int64, error) {
	le := binary.LittleEndian
	first := int(b[0])
	if len(b) < arjFixed || first < arjFixed || first > len(b) {
		return nil, 0, corruptArj("short local header at %d", data)
	}
	flags, method, typ := b[4], b[5], b[6]
	packed, orig, crc := int64(le.Uint32(b[12:])), int64(le.Uint32(b[16:])), le.Uint32(b[20:])
	if packed > size-data {
		return nil, 0, corruptArj("member data of %d bytes beyond the end: truncated", packed)
	}
	next := data + packed
	rest := b[first:]
	i := bytes.IndexByte(rest, 0)
	if i < 0 {
		return nil, 0, corruptArj("unterminated name at %d", data)
	}
	raw := rest[:i]
	if typ != arjBinary && typ != arjText && typ != arjDirectory {
		return nil, next, nil
	}
	// DOS names, in the OEM code page.
	m := &Member{Name: legacyName(raw, charmap.CodePage437), Size: orig, CompressedSize: packed,
		Encrypted: flags&arjGarbled != 0, Dir: typ == arjDirectory}
	if !m.Dir && !m.Encrypted && method == arjStored && flags&(arjVolume|arjExtFile) == 0 {
		if packed != orig {
			return nil, 0, corruptArj("stored member %q of %d bytes declares %d", m.Name, packed, orig)
		}
		m.Open = func() (io.ReadCloser, error) {
			return &crcReader{r: io.NewSectionReader(r, data, packed), h: crc32.NewIEEE(), want: crc, what: "arj member " + m.Name}, nil
		}
	}
	return m, next, nil
}

// crcReader checks, at the end of a member's content, the CRC-32 its header
// declares.
type crcReader struct {
	r    io.Reader
	h    hash.Hash32
	want uint32
	what string
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	if err == io.EOF && c.h.Sum32() != c.want {
		return n, fmt.Errorf("%w: %s: checksum mismatch", ErrCorrupt, c.what)
	}
	return n, err
}

func (c *crcReader) Close() error { return nil }
