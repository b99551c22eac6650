package proxy

import (
	"bufio"
	"io"
	"sync"
)

// The two big buffers of a session — the client writer's and the upstream
// reader's — are needed only while a response moves. A session waiting for
// its client's next command gives them back to these pools, so ten thousand
// idle sessions do not hold hundreds of megabytes of empty buffers (issue 5:
// at most 40 KiB per idle session).
var (
	writerPool = sync.Pool{New: func() any { b := make([]byte, 0, writeBufSize); return &b }}
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, upstreamBufSize) }}
)

// clientWriter is the buffered writer towards the client. Small writes
// (status lines, listings, the pieces a DotWriter makes) gather in a buffer
// taken from writerPool on the first write and given back by release. A
// write that does not fit goes out at once, with what is buffered before
// it, in one system call (writev on a TCP connection): a relayed response
// moves from the upstream reader's buffer to the socket without a copy, a
// read's worth at a time. Errors are sticky, as bufio.Writer's.
type clientWriter struct {
	dst io.Writer
	buf *[]byte // pending bytes; nil while idle
	err error
}

func newClientWriter(dst io.Writer) *clientWriter { return &clientWriter{dst: dst} }

func (w *clientWriter) pending() *[]byte {
	if w.buf == nil {
		w.buf = writerPool.Get().(*[]byte)
	}
	return w.buf
}

func (w *clientWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	b := w.pending()
	if len(*b)+len(p) <= cap(*b) {
		*b = append(*b, p...)
		return len(p), nil
	}
	held := len(*b)
	n, err := w.writeBuffers(*b, p)
	if err != nil {
		w.err = err
		return max(0, n-held), err
	}
	*b = (*b)[:0]
	return len(p), nil
}

func (w *clientWriter) WriteString(s string) (int, error) {
	if w.err == nil {
		if b := w.pending(); len(*b)+len(s) <= cap(*b) {
			*b = append(*b, s...)
			return len(s), nil
		}
	}
	return w.Write([]byte(s))
}

// writeBuffers writes a, then b, in one writev(2) where the connection is
// plain TCP (idleConn); over TLS, one after the other.
func (w *clientWriter) writeBuffers(a, b []byte) (int, error) {
	if c, ok := w.dst.(*idleConn); ok {
		return c.writeBuffers(a, b)
	}
	n, err := w.dst.Write(a)
	if err != nil {
		return n, err
	}
	m, err := w.dst.Write(b)
	return n + m, err
}

// Flush writes what is buffered.
func (w *clientWriter) Flush() error {
	if w.err != nil || w.buf == nil || len(*w.buf) == 0 {
		return w.err
	}
	n, err := w.dst.Write(*w.buf)
	if err == nil && n < len(*w.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = err
		return err
	}
	*w.buf = (*w.buf)[:0]
	return nil
}

// release gives the buffer back once everything in it was written. A writer
// holding unwritten bytes (a failed flush) keeps its buffer until discard.
func (w *clientWriter) release() {
	if w.buf != nil && len(*w.buf) == 0 {
		w.discard()
	}
}

// discard gives the buffer back whatever it holds: the session is over.
func (w *clientWriter) discard() {
	if w.buf != nil {
		*w.buf = (*w.buf)[:0]
		writerPool.Put(w.buf)
		w.buf = nil
	}
}

// newPooledReader returns a reader of src with a buffer from readerPool.
func newPooledReader(src io.Reader) *bufio.Reader {
	r := readerPool.Get().(*bufio.Reader)
	r.Reset(src)
	return r
}

// putReader gives r's buffer back; r must not be used afterwards.
func putReader(r *bufio.Reader) {
	r.Reset(nil)
	readerPool.Put(r)
}
