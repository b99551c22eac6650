package archive

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"

	"github.com/popgate/popgate/internal/iobuf"
)

// Name decoding shared by the formats whose names are not UTF-8: UTF-16
// (Joliet, UDF, TNEF's Unicode properties) and Windows code pages (TNEF's
// 8-bit strings).

// utf16Name decodes UTF-16 (or UCS-2) code units of b, big-endian when be
// is set, up to the first NUL; an odd trailing byte is dropped.
func utf16Name(b []byte, be bool) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := uint16(b[i])<<8 | uint16(b[i+1])
		if !be {
			c = uint16(b[i+1])<<8 | uint16(b[i])
		}
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// codePages maps the Windows code pages TNEF names are written in to their
// decoders; 1252 is the fallback for any other.
var codePages = map[uint32]encoding.Encoding{
	437: charmap.CodePage437, 850: charmap.CodePage850, 852: charmap.CodePage852,
	866: charmap.CodePage866, 874: charmap.Windows874,
	932: japanese.ShiftJIS, 936: simplifiedchinese.GBK, 949: korean.EUCKR, 950: traditionalchinese.Big5,
	1250: charmap.Windows1250, 1251: charmap.Windows1251, 1252: charmap.Windows1252,
	1253: charmap.Windows1253, 1254: charmap.Windows1254, 1255: charmap.Windows1255,
	1256: charmap.Windows1256, 1257: charmap.Windows1257, 1258: charmap.Windows1258,
	20127: charmap.Windows1252, 28591: charmap.ISO8859_1, 28592: charmap.ISO8859_2,
	28595: charmap.ISO8859_5, 28597: charmap.ISO8859_7, 28605: charmap.ISO8859_15,
}

// codePageName decodes an 8-bit string of code page cp up to the first NUL.
// Pure ASCII and code page 65001 (UTF-8) are taken as they are.
func codePageName(b []byte, cp uint32) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii || (cp == 65001 && utf8.Valid(b)) {
		return string(b)
	}
	enc, ok := codePages[cp]
	if !ok {
		enc = charmap.Windows1252
	}
	s, err := enc.NewDecoder().Bytes(b)
	if err != nil {
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return string(s)
}

// legacyName is a member name stored as bytes: UTF-8 when it is valid
// UTF-8, else in the code page cp of the system that made the container.
func legacyName(raw []byte, cp *charmap.Charmap) string {
	if !utf8.Valid(raw) {
		if dec, err := cp.NewDecoder().Bytes(raw); err == nil {
			return string(dec)
		}
	}
	return string(raw)
}

// lineScanner reads the lines of a text in r from off to end, for the
// formats embedded in text (uuencode, BinHex). A line longer than the
// buffer is returned cut (long is set) and the rest of it skipped, so
// memory stays bounded whatever the input.
type lineScanner struct {
	br      *bufio.Reader
	off     int64  // of the next line
	line    []byte // the current line without its line break, valid until next
	lineOff int64  // of the current line
	long    bool   // the current line was cut
	cut     []byte // the start of a cut line
	pooled  bool   // br is lineBufs'
	err     error
}

// lineMax is the longest line a lineScanner returns whole: far beyond the
// 61 or 65 characters of uuencoded and BinHex lines.
const lineMax = 4096

// lineBufs recycles the scanners' buffers: a text part is scanned by each
// text format, and a message may have many. A text shorter than the buffer
// gets a buffer of its size instead.
var lineBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, lineMax) }}

func newLineScanner(r io.ReaderAt, off, end int64) *lineScanner {
	sr := io.NewSectionReader(r, off, end-off)
	if end-off < lineMax {
		return &lineScanner{br: bufio.NewReaderSize(sr, int(end-off)+1), off: off}
	}
	br := lineBufs.Get().(*bufio.Reader)
	br.Reset(sr)
	return &lineScanner{br: br, off: off, pooled: true}
}

// mentions reports whether marker occurs anywhere in the size bytes of r:
// a block of a text format needs its marker line, and one vectorized
// search over a text that has none spares it a scan line by line.
// head, when it holds all size bytes, is searched instead of r.
func mentions(head []byte, r io.ReaderAt, size int64, marker []byte) bool {
	if int64(len(head)) >= size {
		return bytes.Contains(head[:size], marker)
	}
	bp := iobuf.Get()
	defer iobuf.Put(bp)
	keep := int64(len(marker) - 1)
	for off := int64(0); off < size; off += int64(len(bp)) - keep {
		n, err := r.ReadAt(bp[:min(int64(len(bp)), size-off)], off)
		if bytes.Contains(bp[:n], marker) {
			return true
		}
		if err != nil || off+int64(n) >= size {
			return err != nil && err != io.EOF // unreadable: let the scan say so
		}
	}
	return false
}

// close gives the buffer back (once); the scanner is not used after it.
func (s *lineScanner) close() {
	if s.pooled {
		s.br.Reset(nil)
		lineBufs.Put(s.br)
	}
	s.br, s.pooled = nil, false
}

// next moves to the next line; it returns false at the end of the input or
// on a read error (s.err).
func (s *lineScanner) next() bool {
	s.lineOff, s.long = s.off, false
	line, err := s.br.ReadSlice('\n')
	s.off += int64(len(line))
	if err == bufio.ErrBufferFull {
		// The buffer is reused by the reads that skip the rest.
		s.cut = append(s.cut[:0], line...)
		line = s.cut
	}
	for err == bufio.ErrBufferFull {
		s.long = true
		var more []byte
		more, err = s.br.ReadSlice('\n')
		s.off += int64(len(more))
	}
	if err != nil && err != io.EOF {
		s.err = err
		return false
	}
	if len(line) == 0 && err == io.EOF {
		return false
	}
	s.line = bytes.TrimRight(line, "\r\n")
	return true
}

// looksText reports whether head may start a text (no NUL bytes): the
// formats embedded in text do not scan binary content for their markers.
func looksText(head []byte) bool { return bytes.IndexByte(head, 0) < 0 }
