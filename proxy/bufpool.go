package proxy

import (
	"bufio"
	"io"
	"sync"
)

// The two big buffers of a session — the client writer and the upstream
// reader, ioBufSize each — are needed only while a response moves. A session
// waiting for its client's next command gives them back to these pools, so
// ten thousand idle sessions do not hold 640 MB of empty buffers (issue 5:
// at most 40 KiB per idle session).
var (
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, ioBufSize) }}
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ioBufSize) }}
)

// clientWriter is the buffered writer towards the client, with its buffer
// taken from writerPool on the first write and given back by release.
type clientWriter struct {
	dst io.Writer
	bw  *bufio.Writer
}

func newClientWriter(dst io.Writer) *clientWriter { return &clientWriter{dst: dst} }

func (w *clientWriter) buf() *bufio.Writer {
	if w.bw == nil {
		w.bw = writerPool.Get().(*bufio.Writer)
		w.bw.Reset(w.dst)
	}
	return w.bw
}

func (w *clientWriter) Write(p []byte) (int, error)       { return w.buf().Write(p) }
func (w *clientWriter) WriteString(s string) (int, error) { return w.buf().WriteString(s) }
func (w *clientWriter) ReadFrom(r io.Reader) (int64, error) {
	return w.buf().ReadFrom(r)
}

// Flush writes what is buffered; without a buffer there is nothing to do.
func (w *clientWriter) Flush() error {
	if w.bw == nil {
		return nil
	}
	return w.bw.Flush()
}

// release gives the buffer back once everything in it was written. A writer
// holding unwritten bytes (a failed flush) keeps its buffer until discard.
func (w *clientWriter) release() {
	if w.bw != nil && w.bw.Buffered() == 0 {
		w.discard()
	}
}

// discard gives the buffer back whatever it holds: the session is over.
func (w *clientWriter) discard() {
	if w.bw != nil {
		w.bw.Reset(nil)
		writerPool.Put(w.bw)
		w.bw = nil
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
