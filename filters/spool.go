package filters

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/popgate/popgate/internal/iobuf"
)

// DefaultMemoryLimit is the MemoryLimit used when a Spool's MemoryLimit is
// 0, and the default of the configuration's spool.memory_limit ("1MB" in
// docs/CONFIG.md: 1,000,000 bytes, decimal like every "MB" of popgate's
// sizes). It is the one definition: policy uses it.
const DefaultMemoryLimit = 1000 * 1000

// spoolBufferSize is the write buffer used once a body has moved to a file.
const spoolBufferSize = 32 << 10

// spoolPattern is the os.CreateTemp pattern of spool files.
const spoolPattern = "popgate-spool-*"

// Spool creates Bodies from streamed bytes: a body stays in memory while it
// fits in MemoryLimit bytes and moves to a temporary file in Dir as soon as it
// does not. The zero value (and a nil *Spool) is ready to use with the
// defaults. A Spool is safe for concurrent use; its fields must not change
// once writers exist.
type Spool struct {
	// Dir is the directory for temporary files; "" means os.TempDir().
	Dir string
	// MemoryLimit is the number of bytes a writer keeps in memory before it
	// switches to a temporary file. A body of exactly MemoryLimit bytes stays
	// in memory. 0 means DefaultMemoryLimit; a negative value puts every
	// non-empty body in a file.
	MemoryLimit int64

	// wrap, when set (tests only), wraps the temporary file for writing, so
	// that a test can inject write errors.
	wrap func(io.Writer) io.Writer
}

// NewWriter starts a new body. The caller must call Finish or Abort.
func (s *Spool) NewWriter() *SpoolWriter {
	w := &SpoolWriter{limit: DefaultMemoryLimit}
	if s != nil {
		w.dir = s.Dir
		w.wrap = s.wrap
		if s.MemoryLimit != 0 {
			w.limit = s.MemoryLimit
		}
	}
	return w
}

var errWriterDone = errors.New("spool: writer already finished or aborted")

// SpoolWriter is an io.Writer that collects one body. At most MemoryLimit
// bytes are held in memory; once the body grows beyond that, the memory part
// is moved to a temporary file and released, and further writes go to the
// file through a small fixed buffer. A SpoolWriter is not safe for concurrent
// use.
//
// After a write error the writer is broken: it has already discarded
// everything (including its temporary file), every later Write and Finish
// returns the error, and Abort is a no-op.
type SpoolWriter struct {
	dir   string
	limit int64
	wrap  func(io.Writer) io.Writer

	mem  chunkList     // the body while it is in memory
	f    *os.File      // the temporary file, once the body has moved there
	path string        // f's name
	bw   *bufio.Writer // buffers writes to f

	size int64
	err  error // sticky write error
	done bool  // Finish or Abort was called

	follow *follow // set once Follow was called
	body   Body    // what Finish returned, when followed
}

// Write appends p to the body.
func (w *SpoolWriter) Write(p []byte) (int, error) {
	if w.done {
		return 0, errWriterDone
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if w.f == nil {
		if w.limit >= 0 && w.size+int64(len(p)) <= w.limit {
			w.mem.appendBytes(p)
			w.size += int64(len(p))
			w.notify()
			return len(p), nil
		}
		if err := w.toFile(); err != nil {
			return 0, err
		}
	}
	n, err := w.bw.Write(p)
	w.size += int64(n)
	if err != nil {
		w.fail(fmt.Errorf("spool %s: %w", w.path, err))
		return n, w.err
	}
	w.notify()
	return n, nil
}

// dropMem lets go of the memory part: back to the pool, unless a follower
// may still be reading it.
func (w *SpoolWriter) dropMem() {
	if w.follow == nil {
		w.mem.recycle()
	}
	w.mem = chunkList{}
}

// toFile creates the temporary file and moves the memory part into it.
func (w *SpoolWriter) toFile() error {
	f, err := os.CreateTemp(w.dir, spoolPattern)
	if err != nil {
		w.fail(fmt.Errorf("spool: create temporary file: %w", err))
		return w.err
	}
	w.f, w.path = f, f.Name()
	var out io.Writer = f
	if w.wrap != nil {
		out = w.wrap(f)
	}
	w.bw = bufio.NewWriterSize(out, spoolBufferSize)
	if err := w.mem.writeTo(w.bw); err != nil {
		w.fail(fmt.Errorf("spool %s: %w", w.path, err))
		return w.err
	}
	w.dropMem() // never keep both
	return nil
}

// fail records err and discards everything written so far.
func (w *SpoolWriter) fail(err error) {
	w.err = err
	w.end(err, nil)
	w.discard()
}

// discard drops the memory part and closes and removes the temporary file.
// It returns the error of removing the file, if any.
func (w *SpoolWriter) discard() error {
	w.dropMem()
	w.bw = nil
	if w.f == nil {
		return nil
	}
	f, path := w.f, w.path
	w.f = nil
	f.Close()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool %s: %w", path, err)
	}
	return nil
}

// Finish ends the body and returns it; the writer is done. The caller owns
// the Body and must Remove it. On error nothing is left behind (no Body, no
// temporary file).
func (w *SpoolWriter) Finish() (Body, error) {
	if w.done {
		return nil, errWriterDone
	}
	w.done = true
	if w.err != nil {
		return nil, w.err
	}
	if w.f == nil {
		// A followed body's chunks may be read by the follower after the
		// body is removed: they are left to the collector.
		b := &memBody{data: w.mem, size: w.size, pooled: w.follow == nil}
		w.end(io.EOF, b)
		w.mem = chunkList{}
		return b, nil
	}
	if err := w.bw.Flush(); err != nil {
		w.fail(fmt.Errorf("spool %s: %w", w.path, err))
		return nil, w.err
	}
	b := &fileBody{f: w.f, path: w.path, size: w.size}
	w.end(io.EOF, b)
	w.f, w.bw = nil, nil
	return b, nil
}

// Abort discards everything written and removes any temporary file. It is a
// no-op after Finish and when called again.
func (w *SpoolWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.end(errFollowAborted, nil)
	// The only possible error is failing to remove the file; the writer has
	// nowhere to report it and the file is closed either way.
	_ = w.discard()
}

var errFollowAborted = errors.New("spool: the body was aborted before it was whole")

// Follow returns a reader of the body as it is written, for work that
// starts before the body is whole (a scanner streaming it on): it yields
// the bytes written so far and waits for more; it ends with io.EOF only
// once Finish succeeded, after the last byte, and with an error when the
// body is aborted or fails, or its file is removed. Its readers do not
// slow the writer down: they read what is already in memory or flushed to
// the file. Follow may be called once, before the first Write; the reader
// is safe for use by another goroutine than the writer's.
func (w *SpoolWriter) Follow() io.Reader {
	w.follow = &follow{}
	w.follow.cond.L = &w.follow.mu
	return &followReader{fw: w.follow}
}

// follow is what a SpoolWriter shares with its follower.
type follow struct {
	mu    sync.Mutex
	cond  sync.Cond
	mem   chunkList // the memory part as last written (its bytes never change)
	f     *os.File  // the file, once the body moved there
	avail int64     // bytes the follower can read: of mem, or flushed to f
	end   error     // io.EOF once the body is whole; why it is not
}

// notify tells a follower what is readable now.
func (w *SpoolWriter) notify() {
	fw := w.follow
	if fw == nil {
		return
	}
	fw.mu.Lock()
	if w.f == nil {
		fw.mem, fw.avail = w.mem, w.size
	} else {
		fw.mem, fw.f, fw.avail = chunkList{}, w.f, w.size-int64(w.bw.Buffered())
	}
	fw.mu.Unlock()
	fw.cond.Broadcast()
}

// end tells a follower that the body is whole (io.EOF: it is b) or will
// not be.
func (w *SpoolWriter) end(err error, b Body) {
	fw := w.follow
	if fw == nil {
		return
	}
	if err == io.EOF {
		w.body = b
		w.notify()
	}
	fw.mu.Lock()
	if fw.end == nil {
		fw.end = err
	}
	fw.mu.Unlock()
	fw.cond.Broadcast()
}

// followReader is the reader of Follow.
type followReader struct {
	fw  *follow
	off int64
}

func (r *followReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	fw := r.fw
	fw.mu.Lock()
	for fw.avail <= r.off && fw.end == nil {
		fw.cond.Wait()
	}
	mem, f, avail, end := fw.mem, fw.f, fw.avail, fw.end
	fw.mu.Unlock()
	if end != nil && end != io.EOF {
		return 0, end
	}
	if avail <= r.off {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), avail-r.off)]
	var n int
	if f == nil {
		n = mem.readAt(p, r.off)
	} else {
		var err error
		if n, err = f.ReadAt(p, r.off); n < len(p) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("spool: following the body: %w", err)
		}
	}
	r.off += int64(n)
	return n, nil
}

var errRemoved = errors.New("body already removed")

// fileBody is a Body in a temporary file. All readers share the open file
// through io.SectionReader (ReadAt is safe for concurrent use).
type fileBody struct {
	mu      sync.Mutex
	f       *os.File
	path    string
	size    int64
	removed bool
}

func (b *fileBody) Open() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removed {
		return nil, fmt.Errorf("spool %s: %w", b.path, errRemoved)
	}
	return newBodyReader(b.f, b.size), nil
}

func (b *fileBody) Size() int64 { return b.size }

// Remove closes and deletes the file. Readers still open fail from then on.
func (b *fileBody) Remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removed {
		return nil
	}
	b.removed = true
	cerr := b.f.Close()
	rerr := os.Remove(b.path)
	if rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		return fmt.Errorf("spool %s: %w", b.path, rerr)
	}
	if cerr != nil {
		return fmt.Errorf("spool %s: %w", b.path, cerr)
	}
	return nil
}

// bodyReader is what the spool's Bodies return from Open: an independent
// reader starting at the first byte. Besides io.ReadCloser it implements
// io.ReaderAt and io.Seeker (filters that need random access, e.g. for
// archives, may type-assert for them) and Size.
type bodyReader struct {
	sr      *io.SectionReader
	src     io.ReaderAt // what sr reads
	closed  atomic.Bool
	release func() // called once, on the first Close
}

func newBodyReader(r io.ReaderAt, size int64) *bodyReader {
	return &bodyReader{sr: io.NewSectionReader(r, 0, size), src: r}
}

// WriteTo writes the rest of the body to w (io.WriterTo, which io.Copy
// prefers): a body in memory straight from its chunks, one in a file
// through a pooled buffer. Without it io.Copy copied every filtered
// message through a fresh 32 KiB buffer on its way to the client.
func (r *bodyReader) WriteTo(w io.Writer) (int64, error) {
	if r.closed.Load() {
		return 0, errReaderClosed
	}
	c, ok := r.src.(chunkList)
	if !ok {
		return iobuf.Copy(w, struct{ io.Reader }{r}) // the struct hides WriteTo
	}
	off, err := r.sr.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	start := off
	for off < c.size && err == nil {
		b := c.span(off)
		var n int
		n, err = w.Write(b)
		if n < 0 || n > len(b) {
			n, err = 0, errors.New("spool: invalid write count")
		} else if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		off += int64(n)
	}
	if _, serr := r.sr.Seek(off, io.SeekStart); err == nil {
		err = serr
	}
	return off - start, err
}

var errReaderClosed = errors.New("spool: read on closed body reader")

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, errReaderClosed
	}
	return r.sr.Read(p)
}

func (r *bodyReader) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, errReaderClosed
	}
	return r.sr.ReadAt(p, off)
}

func (r *bodyReader) Seek(offset int64, whence int) (int64, error) {
	if r.closed.Load() {
		return 0, errReaderClosed
	}
	return r.sr.Seek(offset, whence)
}

func (r *bodyReader) Size() int64 { return r.sr.Size() }

func (r *bodyReader) Close() error {
	if !r.closed.Swap(true) && r.release != nil {
		r.release()
	}
	return nil
}
