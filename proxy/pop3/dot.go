package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math"
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
	lineStart bool // the next byte of br starts a line
	// end, when > 0, is how many bytes of br are left to return before the
	// response is over (raw: the terminator has been seen, and is returned).
	end int
	err error // sticky; io.EOF after the terminator
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
// [NewDotReader] that returns the response exactly as received: still
// dot-stuffed, and with its terminator line, which it returns only once all
// of it was read. A relay passes everything on as it comes: a response cut
// short never gets a terminator, and a whole one needs no further write.
// WriteTo hands w the bytes of each read as one piece, terminator included,
// not a piece per stuffed line.
func NewRawDotReader(br *bufio.Reader) *DotReader {
	return &DotReader{br: br, lineStart: true, raw: true}
}

// Read implements io.Reader. It returns as soon as it has produced some
// bytes and more would need to wait for input.
func (d *DotReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		b := d.piece(len(p)-n, n == 0)
		if len(b) == 0 {
			break
		}
		copy(p[n:], b)
		d.consume(len(b))
		n += len(b)
	}
	if n > 0 {
		return n, nil
	}
	return 0, d.err
}

// WriteTo implements io.WriterTo: it writes the (decoded or raw) data to w
// in pieces taken straight from br's buffer, until the terminator. It
// returns nil once the terminator has been consumed. After a write error
// the DotReader is unusable (it returns that error).
func (d *DotReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		b := d.piece(math.MaxInt, true)
		if len(b) == 0 {
			break
		}
		m, err := w.Write(b)
		if m > len(b) || m < 0 {
			m, err = 0, errors.New("pop3: invalid write result")
		}
		total += int64(m)
		if err == nil && m < len(b) {
			err = io.ErrShortWrite
		}
		if err != nil {
			_, _ = d.br.Discard(m)
			d.err = err
			return total, err
		}
		d.consume(m)
	}
	if d.err == io.EOF {
		return total, nil
	}
	return total, d.err
}

// piece returns the next bytes to pass on, at most limit (> 0) of them,
// aliasing br's buffer; the caller passes them on and then calls consume.
// It returns nothing once d.err is set, and, unless wait, where going on
// might wait for input.
func (d *DotReader) piece(limit int, wait bool) []byte {
	for d.err == nil {
		if d.br.Buffered() == 0 {
			if !wait {
				return nil
			}
			if _, err := d.br.Peek(1); err != nil {
				d.fail(err)
				return nil
			}
		}
		b, _ := d.br.Peek(d.br.Buffered())
		if d.end > 0 {
			return b[:min(d.end, len(b), limit)]
		}
		// A line starting with "." is decided here when the span cannot
		// decide it: always when decoding (the "." goes), in raw mode
		// when fewer than three bytes are at hand.
		if d.lineStart && b[0] == '.' && (!d.raw || len(b) < 3 || limit < 3) {
			if !wait && len(b) < 3 {
				return nil // deciding might block
			}
			d.dotLine()
			continue
		}
		b = b[:min(len(b), limit)]
		return b[:d.span(b)]
	}
	return nil
}

// consume discards the k bytes of the last piece, which were passed on.
func (d *DotReader) consume(k int) {
	_, _ = d.br.Discard(k)
	if d.end > 0 {
		d.end -= k
		if d.end == 0 {
			d.err = io.EOF
		}
	}
}

// span returns how many bytes at the start of b (not empty) can be passed
// on as they are, and updates lineStart for the end of that span. Decoding,
// that is up to the next line that starts with "."; raw, up to and
// including the terminator (setting end), or up to a line starting with "."
// whose first three bytes are not all in b yet.
//
// It searches for "." rather than for LF: base64 bodies, the bulk of mail,
// hold no "." at all, so one vectorised IndexByte usually covers the whole
// buffer.
func (d *DotReader) span(b []byte) int {
	i := nextDotLine(b)
	if d.raw {
		if d.lineStart && b[0] == '.' {
			i = 0 // piece made sure three bytes are here
		}
		for i >= 0 {
			if len(b)-i < 3 {
				d.lineStart = true
				return i
			}
			if b[i+1] == '\r' && b[i+2] == '\n' {
				d.end = i + 3
				return d.end
			}
			j := nextDotLine(b[i:])
			if j < 0 {
				break
			}
			i += j
		}
	} else if i > 0 {
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
// the terminator ends the response (decoding: consumed, err set to io.EOF;
// raw: end set, so that it is returned); any other line loses its "."
// (unless raw) and continues as ordinary data. It may block for up to two
// more bytes.
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
			if d.raw {
				d.end = 3
				return
			}
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
