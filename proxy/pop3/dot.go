package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

var (
	_ io.Reader      = (*DotReader)(nil)
	_ io.WriterTo    = (*DotReader)(nil)
	_ io.WriteCloser = (*DotWriter)(nil)
)

// ErrDotWriterClosed is returned by [DotWriter.Write] after Close.
var ErrDotWriterClosed = errors.New("pop3: write to closed DotWriter")

// DotReader reads the body of a multi-line response, up to and including its
// terminating ".\r\n" line, following the rules in the package
// documentation. It is an io.Reader and an io.WriterTo.
//
// Read and WriteTo return io.EOF (WriteTo: a nil error) once the terminator
// has been consumed, and io.ErrUnexpectedEOF if the stream ends before it;
// other read errors of the underlying reader are returned as they are. The
// DotReader never consumes a byte of br beyond the terminator: whatever
// follows (a pipelined response) stays in br. Errors are sticky.
//
// A DotReader works on br's buffer directly (Peek/Discard): it holds no
// buffer of its own and does not need a whole line in memory.
type DotReader struct {
	br        *bufio.Reader
	raw       bool
	lineStart bool  // the next byte of br starts a line
	err       error // sticky; io.EOF after the terminator
}

// NewDotReader returns a DotReader that decodes the response: a line
// starting with "." loses that "." and the terminator line is not returned.
// Every other byte, line ends included, is returned unchanged.
//
// br must be positioned just after the response's status line.
func NewDotReader(br *bufio.Reader) *DotReader {
	return &DotReader{br: br, lineStart: true}
}

// NewRawDotReader returns a DotReader with the same framing as
// [NewDotReader] that returns the bytes exactly as received (still
// dot-stuffed), excluding the terminator line. Because the data before a
// terminator always ends with LF (or is empty), a relay re-creates the
// response by writing the data and then ".\r\n" itself.
func NewRawDotReader(br *bufio.Reader) *DotReader {
	return &DotReader{br: br, lineStart: true, raw: true}
}

// Read implements io.Reader. It returns as soon as it has produced some
// bytes and more would need to wait for input.
func (d *DotReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && d.err == nil {
		if d.br.Buffered() == 0 {
			if n > 0 {
				break
			}
			if _, err := d.br.Peek(1); err != nil {
				d.fail(err)
				break
			}
		}
		b, _ := d.br.Peek(d.br.Buffered())
		if d.lineStart && b[0] == '.' {
			if n > 0 && len(b) < 3 {
				break // deciding might block
			}
			d.dotLine()
			continue
		}
		if rem := len(p) - n; len(b) > rem {
			b = b[:rem]
		}
		k := d.span(b)
		copy(p[n:], b[:k])
		_, _ = d.br.Discard(k)
		n += k
	}
	if n > 0 {
		return n, nil
	}
	return 0, d.err
}

// WriteTo implements io.WriterTo: it writes the (decoded or raw) data to w
// in chunks taken straight from br's buffer, until the terminator. It
// returns nil once the terminator has been consumed. After a write error
// the DotReader is unusable (it returns that error).
func (d *DotReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for d.err == nil {
		if d.br.Buffered() == 0 {
			if _, err := d.br.Peek(1); err != nil {
				d.fail(err)
				break
			}
		}
		b, _ := d.br.Peek(d.br.Buffered())
		if d.lineStart && b[0] == '.' {
			d.dotLine()
			continue
		}
		k := d.span(b)
		m, err := w.Write(b[:k])
		if m > k || m < 0 {
			m, err = 0, errors.New("pop3: invalid write result")
		}
		total += int64(m)
		_, _ = d.br.Discard(m)
		if err == nil && m < k {
			err = io.ErrShortWrite
		}
		if err != nil {
			d.err = err
			return total, err
		}
	}
	if d.err == io.EOF {
		return total, nil
	}
	return total, d.err
}

// span returns how many bytes at the start of b (not empty, and not a line
// start with ".") can be passed on unchanged: up to the end of b or up to
// the next line that starts with ".". It updates lineStart for the end of
// that span.
//
// It searches for "." rather than for LF: base64 bodies, the bulk of mail,
// hold no "." at all, so one vectorised IndexByte usually covers the whole
// buffer.
func (d *DotReader) span(b []byte) int {
	if i := nextDotLine(b); i > 0 {
		d.lineStart = true
		return i
	}
	d.lineStart = b[len(b)-1] == '\n'
	return len(b)
}

// nextDotLine returns the index of the first "." in b[1:] that follows an
// LF, or -1. A "." found inside a line makes it skip to that line's end, so
// text full of dots costs at most two IndexByte calls a line.
func nextDotLine(b []byte) int {
	i := 1
	for i < len(b) {
		j := bytes.IndexByte(b[i:], '.')
		if j < 0 {
			return -1
		}
		i += j
		if b[i-1] == '\n' {
			return i
		}
		j = bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '.' {
			return i
		}
	}
	return -1
}

// dotLine handles a line that starts with "." (the first buffered byte):
// the terminator sets err to io.EOF; any other line loses its "." (unless
// raw) and continues as ordinary data. It may block for up to two more
// bytes.
func (d *DotReader) dotLine() {
	b, err := d.br.Peek(2)
	if len(b) < 2 {
		d.fail(err)
		return
	}
	if b[1] == '\r' {
		b, err = d.br.Peek(3)
		if len(b) < 3 {
			d.fail(err)
			return
		}
		if b[2] == '\n' {
			_, _ = d.br.Discard(3)
			d.err = io.EOF
			return
		}
	}
	if !d.raw {
		_, _ = d.br.Discard(1)
	}
	d.lineStart = false
}

func (d *DotReader) fail(err error) {
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	d.err = err
}

// DotWriter dot-stuffs the data written to it for a multi-line response:
// every line that starts with "." gets one more "."; lines start after any
// LF, as in the decoder. Close ends the response.
type DotWriter struct {
	w         io.Writer
	lineStart bool
	closed    bool
	err       error
}

// NewDotWriter returns a DotWriter writing to w. It does not buffer: use a
// bufio.Writer for w when writing small pieces.
func NewDotWriter(w io.Writer) *DotWriter {
	return &DotWriter{w: w, lineStart: true}
}

var stuffDot = []byte{'.'}

// Write implements io.Writer. It returns the number of bytes of p consumed
// (added dots are not counted). Errors of w are sticky.
func (d *DotWriter) Write(p []byte) (int, error) {
	if d.closed {
		return 0, ErrDotWriterClosed
	}
	if d.err != nil {
		return 0, d.err
	}
	n := 0
	for n < len(p) {
		b := p[n:]
		if d.lineStart && b[0] == '.' {
			if _, err := d.w.Write(stuffDot); err != nil {
				d.err = err
				return n, err
			}
		}
		i := nextDotLine(b)
		if i < 0 {
			i = len(b)
		}
		m, err := d.w.Write(b[:i])
		if err == nil && m != i {
			err = io.ErrShortWrite
		}
		if err != nil {
			d.err = err
			return n + max(0, min(m, i)), err
		}
		n += i
		d.lineStart = b[i-1] == '\n'
	}
	return n, nil
}

// Close ends the response: it writes CRLF if the data did not end with LF
// (and was not empty), then ".\r\n". It does not close or flush the
// underlying writer. Calling Close again does nothing.
func (d *DotWriter) Close() error {
	if d.closed {
		return d.err
	}
	d.closed = true
	if d.err != nil {
		return d.err
	}
	end := "\r\n.\r\n"
	if d.lineStart {
		end = ".\r\n"
	}
	if _, err := io.WriteString(d.w, end); err != nil {
		d.err = err
	}
	return d.err
}
