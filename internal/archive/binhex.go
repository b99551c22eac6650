package archive

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/text/encoding/charmap"
)

// BinHex 4.0 (RFC 1741 appendix, Peter Lewis's definition of 1991): a Mac
// file in text, after the line "(This file must be converted with BinHex
// 4.0)", between two colons. Three layers: 6-bit characters of a
// 64-character alphabet (whitespace ignored), a run-length encoding (0x90
// then a count repeats the byte before it; 0x90 0x00 is a literal 0x90),
// and the file: a header (name, type, creator, flags, fork lengths, CRC),
// the data fork and its CRC, the resource fork and its CRC. The data fork
// is what a Windows or Unix client saves, so it is the member's content;
// the CRCs (CRC-16/XMODEM) are verified.

// binhexMarker begins the line before a BinHex block: "(This file must be
// converted with BinHex 4.0)" as BinHex writes it, "(This file must be
// converted; you knew that already.)" as macutils' binhex does.
var binhexMarker = []byte("(This file must be converted")

const binhexAlphabet = "!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"

// binhexValue maps a character to its 6-bit value, -1 for one outside the
// alphabet.
var binhexValue = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for i := range len(binhexAlphabet) {
		t[binhexAlphabet[i]] = int8(i)
	}
	return t
}()

func init() {
	Register(&Format{
		Name: "binhex",
		Sniff: func(head []byte, r io.ReaderAt, size int64, _ string) bool {
			if !looksText(head) || !mentions(head, r, size, binhexMarker) {
				return false
			}
			s := newLineScanner(r, 0, size)
			defer s.close()
			for s.next() {
				if binhexStart(s.line) {
					return true
				}
			}
			return false
		},
		Walk:        walkBinHex,
		Attachments: true,
	})
}

func binhexStart(line []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(line, " \t"), binhexMarker)
}

func binhexCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: binhex: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// binhexHeader is the decoded header of one block.
type binhexHeader struct {
	name    string
	dataLen uint32
}

func walkBinHex(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	if !mentions(nil, r, size, binhexMarker) {
		return ErrNotFormat
	}
	s := newLineScanner(r, 0, size)
	defer func() { s.close() }()
	found := false
	for i := 0; s.next(); i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if !binhexStart(s.line) {
			continue
		}
		// The block: from the first colon after the marker line to the
		// colon that closes it.
		start, end, err := binhexSpan(r, s.off, size)
		if err != nil {
			return err
		}
		found = true
		h, err := readBinHexHeader(newBinHexReader(r, start, end))
		if err != nil {
			return err
		}
		m := &Member{Name: h.name, Size: int64(h.dataLen), CompressedSize: end - start}
		m.Open = func() (io.ReadCloser, error) {
			d := newBinHexReader(r, start, end)
			if _, err := readBinHexHeader(d); err != nil {
				return nil, err
			}
			return io.NopCloser(&binhexFork{d: d, left: int64(h.dataLen)}), nil
		}
		if err := fn(m); err != nil {
			return err
		}
		s.close()
		s = newLineScanner(r, end, size)
	}
	if s.err != nil {
		return fmt.Errorf("binhex: %w", s.err)
	}
	if !found {
		return ErrNotFormat
	}
	return nil
}

// binhexSpan finds the encoded characters of the block after off: it
// starts after the first colon and ends before the next one.
func binhexSpan(r io.ReaderAt, off, size int64) (start, end int64, err error) {
	br := bufio.NewReader(io.NewSectionReader(r, off, size-off))
	pos := off
	start = -1
	for {
		c, err := br.ReadByte()
		if err == io.EOF {
			return 0, 0, binhexCorrupt("block at %d without its closing colon", off)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("binhex: %w", err)
		}
		pos++
		if c != ':' {
			continue
		}
		if start >= 0 {
			return start, pos - 1, nil
		}
		start = pos
	}
}

func readBinHexHeader(d *binhexReader) (binhexHeader, error) {
	var h binhexHeader
	var n [1]byte
	if _, err := io.ReadFull(d, n[:]); err != nil {
		return h, binhexCorrupt("header: %v", err)
	}
	if n[0] < 1 || n[0] > 63 {
		return h, binhexCorrupt("file name of %d bytes", n[0])
	}
	// name, version, type, creator, flags, data length, resource length
	// (the resource fork is not a member: see above)
	rest := make([]byte, int(n[0])+1+4+4+2+4+4)
	if _, err := io.ReadFull(d, rest); err != nil {
		return h, binhexCorrupt("header: %v", err)
	}
	if err := d.checkCRC(); err != nil {
		return h, fmt.Errorf("header: %w", err)
	}
	name, _ := charmap.Macintosh.NewDecoder().Bytes(rest[:n[0]])
	f := rest[n[0]+1+4+4+2:]
	h.name = string(name)
	h.dataLen = binary.BigEndian.Uint32(f)
	return h, nil
}

// binhexFork reads one fork of left bytes and checks its CRC after it.
type binhexFork struct {
	d    *binhexReader
	left int64
}

func (f *binhexFork) Read(p []byte) (int, error) {
	if f.left == 0 {
		if f.d != nil {
			err := f.d.checkCRC()
			f.d = nil
			if err != nil {
				return 0, fmt.Errorf("data fork: %w", err)
			}
		}
		return 0, io.EOF
	}
	n, err := f.d.Read(p[:min(int64(len(p)), f.left)])
	f.left -= int64(n)
	if err == io.EOF {
		return n, binhexCorrupt("data fork ends %d bytes early", f.left)
	}
	return n, err
}

// binhexReader decodes the characters of a block (6-bit groups, then the
// run-length encoding) and keeps the CRC of what it returned.
type binhexReader struct {
	br   *bufio.Reader
	acc  uint32 // bits not yet returned
	nacc uint
	done bool // the closing colon (or the end of the span) was reached
	last byte // the byte a run repeats
	run  int  // repeats of last still to return
	crc  uint16
}

func newBinHexReader(r io.ReaderAt, start, end int64) *binhexReader {
	return &binhexReader{br: bufio.NewReader(io.NewSectionReader(r, start, end-start))}
}

// raw returns the next byte of the 6-bit layer.
func (d *binhexReader) raw() (byte, error) {
	for d.nacc < 8 {
		if d.done {
			return 0, io.EOF
		}
		c, err := d.br.ReadByte()
		if err == io.EOF {
			d.done = true
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("binhex: %w", err)
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		v := binhexValue[c]
		if v < 0 {
			return 0, binhexCorrupt("character %q outside the alphabet", c)
		}
		d.acc = d.acc<<6 | uint32(v)
		d.nacc += 6
	}
	d.nacc -= 8
	return byte(d.acc >> d.nacc), nil
}

// next returns the next byte of the file (after the run-length layer).
func (d *binhexReader) next() (byte, error) {
	for d.run == 0 {
		c, err := d.raw()
		if err != nil {
			return 0, err
		}
		if c != 0x90 {
			d.last = c
			return c, nil
		}
		n, err := d.raw()
		if err == io.EOF {
			return 0, binhexCorrupt("run marker at the end")
		}
		if err != nil {
			return 0, err
		}
		if n == 0 { // a literal 0x90
			d.last = 0x90
			return 0x90, nil
		}
		// n counts the byte already returned: n-1 more (none for n = 1).
		d.run = int(n) - 1
	}
	d.run--
	return d.last, nil
}

func (d *binhexReader) Read(p []byte) (int, error) {
	for i := range p {
		c, err := d.next()
		if err != nil {
			if i > 0 && err == io.EOF {
				return i, nil
			}
			return i, err
		}
		p[i] = c
		d.crc = crc16xmodem(d.crc, c)
	}
	return len(p), nil
}

// checkCRC reads the two CRC bytes that follow a section and compares them
// with the CRC of the section; it starts the CRC of the next one.
func (d *binhexReader) checkCRC() error {
	want := d.crc
	var b [2]byte
	for i := range b {
		c, err := d.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return binhexCorrupt("CRC missing")
			}
			return err
		}
		b[i] = c
	}
	d.crc = 0
	if got := binary.BigEndian.Uint16(b[:]); got != want {
		return binhexCorrupt("CRC %#04x, computed %#04x", got, want)
	}
	return nil
}

// crc16xmodem adds c to the CRC-16/XMODEM crc (polynomial 0x1021).
func crc16xmodem(crc uint16, c byte) uint16 {
	crc ^= uint16(c) << 8
	for range 8 {
		if crc&0x8000 != 0 {
			crc = crc<<1 ^ 0x1021
		} else {
			crc <<= 1
		}
	}
	return crc
}
