package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

const (
	// MaxCommandLine is the longest command line a client may send,
	// including CRLF (RFC 2449 §4).
	MaxCommandLine = 255
	// MaxStatusLine is the longest response status line a server may send,
	// including CRLF (RFC 2449 §4).
	MaxStatusLine = 512
)

// ErrLineTooLong is returned by [ReadLine] for a line longer than its limit.
var ErrLineTooLong = errors.New("pop3: line too long")

// ReadLine reads one line ending in LF and returns it without its LF and
// without one CR before that LF. A bare CR inside the line is kept.
//
// The returned slice may alias br's buffer: it is only valid until the next
// read from br. Copy it to keep it.
//
// limit is the longest accepted line counting its terminator (CRLF or LF),
// e.g. [MaxCommandLine]. A longer line returns [ErrLineTooLong] and ReadLine
// never holds more than limit bytes of it: when limit <= br.Size() (the
// normal case: bufio's default size is 4096) nothing at all is consumed;
// when limit > br.Size() up to limit bytes of the line may have been
// consumed. In both cases the line's LF has not been consumed, so the caller
// can call [DiscardLine] to skip the rest of the line, or close.
//
// At end of input ReadLine returns io.EOF when no byte of a new line was
// read, and io.ErrUnexpectedEOF for a partial line without LF (which is left
// unconsumed when limit <= br.Size()). Other read errors are returned as is.
func ReadLine(br *bufio.Reader, limit int) ([]byte, error) {
	if limit < 1 {
		return nil, ErrLineTooLong
	}
	if limit > br.Size() {
		return readLineLong(br, limit)
	}
	scanned := 0 // bytes at the start of br's buffer known to hold no LF
	for {
		// Blocks only when everything buffered has been scanned.
		b, err := br.Peek(scanned + 1)
		if len(b) <= scanned {
			return nil, eofErr(err, scanned)
		}
		b, _ = br.Peek(br.Buffered()) // no I/O: returns what is buffered
		end := min(len(b), limit)
		if i := bytes.IndexByte(b[scanned:end], '\n'); i >= 0 {
			// The LF is buffered, so ReadSlice does no I/O and returns
			// exactly the line; its result is documented to stay valid
			// until the next read.
			line, err := br.ReadSlice('\n')
			if err != nil { // cannot happen
				return nil, err
			}
			return trimEOL(line), nil
		}
		if len(b) >= limit {
			return nil, ErrLineTooLong
		}
		scanned = len(b)
	}
}

// readLineLong is ReadLine for limit > br.Size(): the line may not fit in
// br's buffer, so it is gathered in a buffer of at most limit bytes.
func readLineLong(br *bufio.Reader, limit int) ([]byte, error) {
	var acc []byte
	for {
		if br.Buffered() == 0 {
			if _, err := br.Peek(1); err != nil {
				return nil, eofErr(err, len(acc))
			}
		}
		b, _ := br.Peek(br.Buffered())
		rem := limit - len(acc)
		if len(b) > rem {
			b = b[:rem]
		}
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			acc = append(acc, b[:i+1]...)
			_, _ = br.Discard(i + 1)
			return trimEOL(acc), nil
		}
		if len(b) == rem {
			return nil, ErrLineTooLong
		}
		acc = append(acc, b...)
		_, _ = br.Discard(len(b))
	}
}

// eofErr maps a read error after n bytes of a line to ReadLine's error.
func eofErr(err error, n int) error {
	if err == nil {
		err = io.ErrNoProgress
	}
	if err == io.EOF && n > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}

// trimEOL removes a trailing LF and then one CR before it.
func trimEOL(line []byte) []byte {
	if n := len(line); n > 0 && line[n-1] == '\n' {
		line = line[:n-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
	}
	return line
}

// DiscardLine consumes input up to and including the next LF without
// storing it, and returns the number of bytes skipped (LF included). At end
// of input it returns io.EOF if it skipped nothing and io.ErrUnexpectedEOF
// if it skipped a partial line.
func DiscardLine(br *bufio.Reader) (int64, error) {
	var n int64
	for {
		b, err := br.ReadSlice('\n')
		n += int64(len(b))
		switch err {
		case nil:
			return n, nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			if n > 0 {
				return n, io.ErrUnexpectedEOF
			}
		}
		return n, err
	}
}
