package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
)

// uuencode blocks in text: a "begin MODE NAME" line, lines of which the
// first character gives the number of bytes the line encodes and the rest
// are those bytes in 6-bit groups (each group plus 32, with "`" for 0), an
// empty data line ("`" or a space) and "end". Mail clients show such blocks
// as attachments, so they are looked for in the whole text, however much
// prose comes before them.
//
// Decoding is lenient, as the clients' is: a line whose last group of four
// characters is cut short is padded with zeros, and a block without its
// "end" line ends at the first line that is not uuencoded. A line with
// fewer characters than its count needs (one that lost trailing spaces in
// transit, or prose such as "-- ") ends the block.

func init() {
	Register(&Format{
		Name: "uuencode",
		Sniff: func(head []byte, r io.ReaderAt, size int64, _ string) bool {
			if !looksText(head) || !mentions(head, r, size, uuMarker) {
				return false
			}
			s := newLineScanner(r, 0, size)
			defer s.close()
			for s.next() {
				if _, ok := uuBegin(s.line); ok && !s.long && s.next() {
					if _, ok := uuLine(s.line); ok {
						return true
					}
				}
			}
			return false
		},
		Walk:        walkUU,
		Attachments: true,
	})
}

// uuBegin parses a "begin 644 name" line.
func uuBegin(line []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(line, uuMarker)
	if !ok {
		return "", false
	}
	mode, name, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(mode) < 3 || len(mode) > 4 {
		return "", false
	}
	for _, c := range mode {
		if c < '0' || c > '7' {
			return "", false
		}
	}
	n := strings.TrimSpace(string(name))
	return n, n != ""
}

// uuLine reports the number of bytes a data line encodes, and whether it is
// one: every character in the alphabet, at least as many of them as the
// count needs and no more than its groups of four hold (plus the checksum
// character some encoders add).
func uuLine(line []byte) (int, bool) {
	if len(line) == 0 {
		return 0, false
	}
	for _, c := range line {
		if c < 0x20 || c > 0x60 {
			return 0, false
		}
	}
	n := int((line[0] - 0x20) & 0x3F)
	k := len(line) - 1
	return n, k >= (n*4+2)/3 && k <= (n+2)/3*4+1
}

// uuMarker starts every block's first line.
var uuMarker = []byte("begin ")

func walkUU(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	if !mentions(nil, r, size, uuMarker) {
		return ErrNotFormat
	}
	s := newLineScanner(r, 0, size)
	defer s.close()
	found := false
	// more: s holds a line not looked at yet (the one that ended a block
	// may begin the next).
	more := s.next()
	for i := 0; more; i++ {
		if i%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		name, ok := uuBegin(s.line)
		if !ok || s.long {
			more = s.next()
			continue
		}
		start, end := s.off, s.off
		var n int64
		more = false
		for s.next() {
			k, ok := uuLine(s.line)
			if !ok || s.long || k == 0 {
				more = true
				break
			}
			n += int64(k)
			end = s.off
		}
		if end == start {
			continue // a "begin" line in prose
		}
		found = true
		m := &Member{Name: name, Size: n, CompressedSize: end - start}
		m.Open = func() (io.ReadCloser, error) {
			return &uuReader{s: newLineScanner(r, start, end)}, nil
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	if s.err != nil {
		return fmt.Errorf("uuencode: %w", s.err)
	}
	if !found {
		return ErrNotFormat
	}
	return nil
}

// uuReader decodes the data lines of one block.
type uuReader struct {
	s   *lineScanner
	buf []byte // decoded, not yet read
}

func (u *uuReader) Close() error {
	u.s.close()
	return nil
}

func (u *uuReader) Read(p []byte) (int, error) {
	for len(u.buf) == 0 {
		if u.s.br == nil || !u.s.next() {
			if u.s.err != nil {
				return 0, fmt.Errorf("uuencode: %w", u.s.err)
			}
			return 0, io.EOF
		}
		n, _ := uuLine(u.s.line)
		u.buf = uuDecodeLine(u.buf[:0], u.s.line[1:], n)
	}
	k := copy(p, u.buf)
	u.buf = u.buf[k:]
	return k, nil
}

// uuDecodeLine appends the n bytes enc encodes; missing characters count
// as zeros.
func uuDecodeLine(dst, enc []byte, n int) []byte {
	var g [4]byte
	for i := 0; n > 0; i += 4 {
		for j := range g {
			g[j] = 0
			if i+j < len(enc) {
				g[j] = (enc[i+j] - 0x20) & 0x3F
			}
		}
		b := [3]byte{g[0]<<2 | g[1]>>4, g[1]<<4 | g[2]>>2, g[2]<<6 | g[3]}
		k := min(n, 3)
		dst = append(dst, b[:k]...)
		n -= k
	}
	return dst
}
