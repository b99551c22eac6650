package tag

import (
	"bufio"
	"bytes"
	"io"
	"sync"

	"github.com/popgate/popgate/internal/mailtext"
)

// readBufferSize is the buffer of the header scanners. Field names must fit
// in it (they always do: a name is a few dozen bytes).
const readBufferSize = 32 << 10

// headSize is how much of each line lineReader keeps for classifying it
// (blank line, continuation, field name).
const headSize = 512

// lineReader reads a message line by line without ever holding more than its
// buffer, whatever the length of a line.
type lineReader struct {
	br   *bufio.Reader
	off  int64 // offset of the next unread byte
	head []byte
}

// lineReaders are reused across messages: the filter reads the header of
// every message, and a buffer per message would be most of its garbage.
var lineReaders = sync.Pool{New: func() any {
	return &lineReader{br: bufio.NewReaderSize(nil, readBufferSize), head: make([]byte, 0, headSize)}
}}

// newLineReader returns a lineReader over r; release gives it back.
func newLineReader(r io.Reader) *lineReader {
	lr := lineReaders.Get().(*lineReader)
	lr.br.Reset(r)
	lr.off = 0
	return lr
}

// release returns r to the pool; it must not be used afterwards.
func (r *lineReader) release() {
	r.br.Reset(nil)
	lineReaders.Put(r)
}

// line is what lineReader.next reports about one line.
type line struct {
	start int64  // offset of the first byte
	n     int64  // length, line break included
	head  []byte // the first headSize bytes at most; valid until the next call
	eol   string // "\r\n", "\n", or "" at the end of the input
}

func (l *line) blank() bool { return l.n == int64(len(l.eol)) && l.eol != "" }

// next reads the next line, copying all of it to sink when sink is not nil.
// It returns io.EOF only when there is no byte left at all.
func (r *lineReader) next(sink io.Writer) (line, error) {
	ln := line{start: r.off}
	r.head = r.head[:0]
	var last byte // the byte before the current chunk
	for {
		chunk, err := r.br.ReadSlice('\n')
		if len(chunk) > 0 {
			if room := headSize - len(r.head); room > 0 {
				r.head = append(r.head, chunk[:min(room, len(chunk))]...)
			}
			if sink != nil {
				if _, werr := sink.Write(chunk); werr != nil {
					return ln, werr
				}
			}
			ln.n += int64(len(chunk))
			r.off += int64(len(chunk))
			if chunk[len(chunk)-1] == '\n' {
				prev := last
				if len(chunk) > 1 {
					prev = chunk[len(chunk)-2]
				}
				if prev == '\r' {
					ln.eol = "\r\n"
				} else {
					ln.eol = "\n"
				}
			}
			last = chunk[len(chunk)-1]
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if ln.n == 0 {
				return ln, io.EOF
			}
			ln.head = r.head
			return ln, nil
		case err != nil:
			return ln, err
		}
		ln.head = r.head
		return ln, nil
	}
}

// peekLine returns the start of the next line (at most headSize bytes,
// line break included when it is within them) without consuming it. It is
// valid until the next read.
func (r *lineReader) peekLine() []byte {
	b, _ := r.br.Peek(headSize)
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	}
	return b
}

// continues reports whether the next line continues the current field
// (starts with a space or a tab).
func (r *lineReader) continues() bool {
	b, err := r.br.Peek(1)
	return err == nil && (b[0] == ' ' || b[0] == '\t')
}

// skipField reads the continuation lines of the current field, copying them
// to sink when it is not nil.
func (r *lineReader) skipField(sink io.Writer) error {
	for r.continues() {
		if _, err := r.next(sink); err != nil {
			return err
		}
	}
	return nil
}

// fieldName returns the name of the header field that starts with head and
// the index of its colon. ok is false when head does not start a field: no
// colon, an empty name, or a byte outside RFC 5322 ftext in the name.
// Whitespace between the name and the colon (RFC 5322 obsolete syntax) is
// tolerated.
func fieldName(head []byte) (name []byte, colon int, ok bool) {
	colon = bytes.IndexByte(head, ':')
	if colon <= 0 {
		return nil, 0, false
	}
	name = bytes.TrimRight(head[:colon], " \t")
	if !mailtext.ValidFieldName(name) {
		return nil, 0, false
	}
	return name, colon, true
}

// boundedBuffer collects up to max bytes and records whether more came.
type boundedBuffer struct {
	buf  []byte
	max  int
	over bool
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > b.max {
		b.over = true
		return len(p), nil
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}
