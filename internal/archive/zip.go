package archive

import (
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"unicode/utf8"

	"golang.org/x/text/encoding/charmap"
)

// Zip archives (and the documents that are zips: docx, odt, jar, …). The
// central directory is read as a stream, never trusting its counts;
// self-extracting and junk-prefixed archives are found by their end
// record. Stored and deflated members are unpacked; others are listed.
func init() {
	Register(&Format{Name: "zip", Sniff: sniffZip, Walk: walkZip})
}

const (
	sigEOCD      = 0x06054b50
	sigEOCD64    = 0x06064b50
	sigLocator64 = 0x07064b50
	sigCentral   = 0x02014b50
	sigLocal     = 0x04034b50
	eocdLen      = 22
	centralLen   = 46
	localLen     = 30
	// eocdSearch is how far from the end the end record may start: its
	// comment is at most 65535 bytes.
	eocdSearch = 65535 + eocdLen
)

var zipMagics = [][]byte{[]byte("PK\x03\x04"), []byte("PK\x05\x06"), []byte("PK\x07\x08")}

func zipMagic(head []byte) bool {
	for _, m := range zipMagics {
		if bytes.HasPrefix(head, m) {
			return true
		}
	}
	return false
}

// sniffZip: a zip signature at the start, or (a self-extractor, junk in
// front) an end record near the end.
func sniffZip(head []byte, r io.ReaderAt, size int64, _ string) bool {
	if zipMagic(head) {
		return true
	}
	_, err := findEnd(r, size)
	return err == nil
}

func corruptZip(format string, args ...any) error {
	return fmt.Errorf("%w: zip: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

type dirEnd struct {
	entries         uint64
	cdSize, cdStart uint64
	offset          int64 // of the EOCD record
}

func findEnd(r io.ReaderAt, size int64) (dirEnd, error) {
	var d dirEnd
	if size < eocdLen {
		return d, ErrNotFormat
	}
	// Most zips end with the record itself (no comment): the last KiB is
	// read first, the whole window only when the record is not there.
	window := endBufs.Get().(*[eocdSearch]byte)
	defer endBufs.Put(window)
	buf := window[:min(size, 1<<10)]
	i, err := lastEnd(r, size, buf)
	if i < 0 && err == nil && size > int64(len(buf)) {
		buf = window[:min(size, eocdSearch)]
		i, err = lastEnd(r, size, buf)
	}
	if i < 0 || err != nil {
		return d, ErrNotFormat
	}
	b := buf[i:]
	d.offset = size - int64(len(buf)) + int64(i)
	d.entries = uint64(binary.LittleEndian.Uint16(b[10:]))
	d.cdSize = uint64(binary.LittleEndian.Uint32(b[12:]))
	d.cdStart = uint64(binary.LittleEndian.Uint32(b[16:]))
	if d.entries == 0xffff || d.cdSize == 0xffffffff || d.cdStart == 0xffffffff {
		if e64, ok := findEnd64(r, d.offset); ok {
			d.entries, d.cdSize, d.cdStart = e64.entries, e64.cdSize, e64.cdStart
		}
	}
	return d, nil
}

// Buffers and decompressors reused across zips: every docx, xlsx and zip
// attachment is listed.
var (
	endBufs    = sync.Pool{New: func() any { return new([eocdSearch]byte) }}
	dirReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	inflaters  sync.Pool // of flate readers, Reset for each member
)

// inflater is a pooled flate reader: Close gives it back, and it reads
// nothing after that.
type inflater struct {
	fr     io.ReadCloser
	closed bool
}

func newInflater(src io.Reader) *inflater {
	if fr, ok := inflaters.Get().(io.ReadCloser); ok {
		if err := fr.(flate.Resetter).Reset(src, nil); err == nil {
			return &inflater{fr: fr}
		}
	}
	return &inflater{fr: flate.NewReader(src)}
}

func (f *inflater) Read(p []byte) (int, error) {
	if f.closed {
		return 0, errors.New("zip: read after close")
	}
	return f.fr.Read(p)
}

func (f *inflater) Close() error {
	if !f.closed {
		f.closed = true
		inflaters.Put(f.fr)
	}
	return nil
}

var eocdSig = binary.LittleEndian.AppendUint32(nil, sigEOCD)

// lastEnd reads the last len(buf) bytes of r into buf and returns the
// offset in buf of the last end record whose comment fits before the end
// (-1 when there is none).
func lastEnd(r io.ReaderAt, size int64, buf []byte) (int, error) {
	if _, err := r.ReadAt(buf, size-int64(len(buf))); err != nil && err != io.EOF {
		return -1, err
	}
	// Forward with bytes.Index (vectorized; LastIndex is not), keeping
	// the last record that fits.
	last := -1
	for k := 0; k+eocdLen <= len(buf); k++ {
		i := bytes.Index(buf[k:len(buf)-eocdLen+4], eocdSig)
		if i < 0 {
			break
		}
		k += i
		if k+eocdLen+int(binary.LittleEndian.Uint16(buf[k+20:])) <= len(buf) {
			last = k
		}
	}
	return last, nil
}

func findEnd64(r io.ReaderAt, eocd int64) (dirEnd, bool) {
	var d dirEnd
	if eocd < 20 {
		return d, false
	}
	var loc [20]byte
	if _, err := r.ReadAt(loc[:], eocd-20); err != nil || binary.LittleEndian.Uint32(loc[:]) != sigLocator64 {
		return d, false
	}
	var rec [56]byte
	for _, off := range []int64{int64(binary.LittleEndian.Uint64(loc[8:])), eocd - 20 - 56} {
		if off < 0 || off > eocd-20-56 {
			continue
		}
		if _, err := r.ReadAt(rec[:], off); err != nil || binary.LittleEndian.Uint32(rec[:]) != sigEOCD64 {
			continue
		}
		d.entries = binary.LittleEndian.Uint64(rec[32:])
		d.cdSize = binary.LittleEndian.Uint64(rec[40:])
		d.cdStart = binary.LittleEndian.Uint64(rec[48:])
		d.offset = off
		return d, true
	}
	return d, false
}

// zipMember is what the central directory says of a member.
type zipMember struct {
	name                 string
	size, compressedSize uint64
	method, flags        uint16
	localOffset          uint64
}

func walkZip(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	d, err := findEnd(r, size)
	if err != nil {
		// A local header but no end record: a truncated or doctored
		// archive that other readers may still recover.
		var head [4]byte
		if n, _ := r.ReadAt(head[:], 0); zipMagic(head[:n]) {
			return corruptZip("end of central directory not found")
		}
		return err
	}
	// Where does the central directory really start? As declared, or (data
	// prepended to the archive: self-extractors, junk) right before the end
	// record.
	end := d.offset
	start := int64(-1)
	base := int64(0)
	if d.cdStart < uint64(end) && sigAt(r, int64(d.cdStart), sigCentral) {
		start = int64(d.cdStart)
	} else if d.cdSize <= uint64(end) {
		if s := end - int64(d.cdSize); sigAt(r, s, sigCentral) {
			start = s
			base = s - int64(d.cdStart)
		}
	}
	if start < 0 {
		if d.entries == 0 {
			return nil
		}
		return corruptZip("central directory not found")
	}
	br := dirReaders.Get().(*bufio.Reader)
	defer dirReaders.Put(br)
	br.Reset(io.NewSectionReader(r, start, end-start))
	var hdr [centralLen]byte
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil || binary.LittleEndian.Uint32(hdr[:]) != sigCentral {
			break
		}
		n++
		c := zipMember{
			flags:          binary.LittleEndian.Uint16(hdr[8:]),
			method:         binary.LittleEndian.Uint16(hdr[10:]),
			compressedSize: uint64(binary.LittleEndian.Uint32(hdr[20:])),
			size:           uint64(binary.LittleEndian.Uint32(hdr[24:])),
			localOffset:    uint64(binary.LittleEndian.Uint32(hdr[42:])),
		}
		nameLen := int(binary.LittleEndian.Uint16(hdr[28:]))
		extraLen := int(binary.LittleEndian.Uint16(hdr[30:]))
		commentLen := int(binary.LittleEndian.Uint16(hdr[32:]))
		vb := make([]byte, nameLen+extraLen)
		if _, err := io.ReadFull(br, vb); err != nil {
			return corruptZip("truncated central directory")
		}
		if _, err := br.Discard(commentLen); err != nil {
			return corruptZip("truncated central directory")
		}
		rawName, extra := vb[:nameLen], vb[nameLen:]
		unicodeName := c.parseExtra(extra)
		switch {
		case unicodeName != "":
			c.name = unicodeName
		case c.flags&0x800 != 0:
			c.name = string(rawName)
		default:
			c.name = legacyName(rawName, charmap.CodePage437)
		}
		m := &Member{
			Name:           c.name,
			Size:           clampSize(c.size),
			CompressedSize: clampSize(c.compressedSize),
			Encrypted:      c.flags&0x1 != 0 || c.flags&0x2000 != 0,
			Dir:            strings.HasSuffix(c.name, "/") || strings.HasSuffix(c.name, "\\"),
		}
		if c.method == 0 || c.method == 8 {
			m.Open = func() (io.ReadCloser, error) { return c.open(r, size, base) }
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	if n == 0 && d.entries > 0 {
		return corruptZip("no central directory entries")
	}
	return nil
}

func clampSize(n uint64) int64 { return int64(min(n, math.MaxInt64)) }

// parseExtra reads the zip64 and Info-ZIP Unicode path extra fields; it
// returns the Unicode path, if any.
func (c *zipMember) parseExtra(extra []byte) string {
	name := ""
	for len(extra) >= 4 {
		id := binary.LittleEndian.Uint16(extra)
		n := int(binary.LittleEndian.Uint16(extra[2:]))
		extra = extra[4:]
		if n > len(extra) {
			break
		}
		f := extra[:n]
		extra = extra[n:]
		switch id {
		case 0x0001: // zip64
			if c.size == 0xffffffff && len(f) >= 8 {
				c.size = binary.LittleEndian.Uint64(f)
				f = f[8:]
			}
			if c.compressedSize == 0xffffffff && len(f) >= 8 {
				c.compressedSize = binary.LittleEndian.Uint64(f)
				f = f[8:]
			}
			if c.localOffset == 0xffffffff && len(f) >= 8 {
				c.localOffset = binary.LittleEndian.Uint64(f)
			}
		case 0x7075: // Info-ZIP Unicode path
			if len(f) > 5 && f[0] == 1 && utf8.Valid(f[5:]) {
				name = string(f[5:])
			}
		}
	}
	return name
}

func sigAt(r io.ReaderAt, off int64, sig uint32) bool {
	var b [4]byte
	if off < 0 {
		return false
	}
	if _, err := r.ReadAt(b[:], off); err != nil {
		return false
	}
	return binary.LittleEndian.Uint32(b[:]) == sig
}

// open returns the content of a stored or deflated member, found through
// its local header (base: the bytes prepended to the archive).
func (c *zipMember) open(r io.ReaderAt, size, base int64) (io.ReadCloser, error) {
	off := base + int64(c.localOffset)
	if c.localOffset > uint64(size) || off < 0 || off+localLen > size {
		return nil, corruptZip("member %s: bad local header offset", c.name)
	}
	var lh [localLen]byte
	if _, err := r.ReadAt(lh[:], off); err != nil {
		return nil, corruptZip("member %s: %v", c.name, err)
	}
	if binary.LittleEndian.Uint32(lh[:]) != sigLocal {
		return nil, corruptZip("member %s: bad local header", c.name)
	}
	data := off + localLen + int64(binary.LittleEndian.Uint16(lh[26:])) + int64(binary.LittleEndian.Uint16(lh[28:]))
	if c.compressedSize > uint64(size) || data+int64(c.compressedSize) > size {
		return nil, corruptZip("member %s: data beyond the end", c.name)
	}
	sr := io.NewSectionReader(r, data, int64(c.compressedSize))
	if c.method == 0 {
		return io.NopCloser(sr), nil
	}
	return newInflater(sr), nil
}
