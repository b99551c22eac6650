package filters

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
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

	mem  []byte        // the body while it is in memory
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
			w.appendMem(p)
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

// Grow makes room for a body of n bytes in all, when such a body stays in
// memory (n within MemoryLimit): the memory part is then allocated at that
// size at once, instead of doubling from 512 bytes as the body arrives
// (for 100 KB, eight allocations of 255 KB in all, 127 KB of it copied
// again, and a garbage collection every few messages). n is a hint, such as
// the size a server announces: a longer body grows as before, and an n
// beyond the limit, or a call once the body is in a file, changes nothing.
func (w *SpoolWriter) Grow(n int64) {
	if w.done || w.err != nil || w.f != nil || w.limit < 0 || n > w.limit || n <= int64(cap(w.mem)) {
		return
	}
	grown := make([]byte, len(w.mem), n)
	copy(grown, w.mem)
	w.mem = grown // a follower may still read the old array: its bytes do not change
}

// appendMem appends p to the memory part without ever giving it a capacity
// beyond the limit (the caller checked that the result fits).
func (w *SpoolWriter) appendMem(p []byte) {
	need := len(w.mem) + len(p)
	if need > cap(w.mem) {
		c := max(2*cap(w.mem), need, 512)
		c = int(min(int64(c), w.limit))
		grown := make([]byte, len(w.mem), c)
		copy(grown, w.mem)
		w.mem = grown
	}
	w.mem = append(w.mem, p...)
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
	if len(w.mem) > 0 {
		if _, err := w.bw.Write(w.mem); err != nil {
			w.fail(fmt.Errorf("spool %s: %w", w.path, err))
			return w.err
		}
	}
	w.mem = nil // never keep both
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
	w.mem = nil
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
		b := &memBody{b: w.mem, size: int64(len(w.mem))}
		w.end(io.EOF, b)
		w.mem = nil
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
	mem   []byte   // the memory part as last written (its bytes never change)
	f     *os.File // the file, once the body moved there
	avail int64    // bytes the follower can read: of mem, or flushed to f
	end   error    // io.EOF once the body is whole; why it is not
}

// notify tells a follower what is readable now.
func (w *SpoolWriter) notify() {
	fw := w.follow
	if fw == nil {
		return
	}
	fw.mu.Lock()
	if w.f == nil {
		fw.mem, fw.avail = w.mem, int64(len(w.mem))
	} else {
		fw.mem, fw.f, fw.avail = nil, w.f, w.size-int64(w.bw.Buffered())
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
		n = copy(p, mem[r.off:])
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

// BytesBody returns a Body over b. b is not copied and must not be modified
// while the Body is in use. Remove only forgets b; Open then fails.
func BytesBody(b []byte) Body {
	return &memBody{b: b, size: int64(len(b))}
}

var errRemoved = errors.New("body already removed")

// memBody is a Body held in memory.
type memBody struct {
	mu      sync.Mutex
	b       []byte
	size    int64
	removed bool
}

func (m *memBody) Open() (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.removed {
		return nil, fmt.Errorf("spool: memory body: %w", errRemoved)
	}
	r := newBodyReader(bytes.NewReader(m.b), m.size)
	r.mem = m.b[:m.size]
	return r, nil
}

func (m *memBody) Size() int64 { return m.size }

// Remove forgets the bytes; readers that are still open keep working on
// their own reference.
func (m *memBody) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removed = true
	m.b = nil
	return nil
}

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
	sr     *io.SectionReader
	mem    []byte // the body, when it is in memory (WriteTo)
	closed atomic.Bool
}

func newBodyReader(r io.ReaderAt, size int64) *bodyReader {
	return &bodyReader{sr: io.NewSectionReader(r, 0, size)}
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

// copyBufs are WriteTo's buffers for bodies in files.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// WriteTo writes the rest of the body to w (io.WriterTo, which io.Copy
// prefers): a body in memory in one Write, straight from memory; one in a
// file through a pooled buffer (or w's ReadFrom). Without it io.Copy
// allocated a 32 KiB buffer per copy (the proxy sends every filtered
// message so) and handed w a body in memory 32 KiB at a time: four writes
// to the client's socket for 100 KB instead of one.
func (r *bodyReader) WriteTo(w io.Writer) (int64, error) {
	if r.closed.Load() {
		return 0, errReaderClosed
	}
	off, err := r.sr.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	if r.mem == nil {
		bufp := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(bufp)
		return io.CopyBuffer(w, struct{ io.Reader }{r}, *bufp) // the struct hides WriteTo
	}
	if off >= int64(len(r.mem)) {
		return 0, nil
	}
	rest := r.mem[off:]
	n, err := w.Write(rest)
	if n < 0 || n > len(rest) {
		n, err = 0, errors.New("spool: invalid write count")
	} else if err == nil && n < len(rest) {
		err = io.ErrShortWrite
	}
	if _, serr := r.sr.Seek(off+int64(n), io.SeekStart); err == nil {
		err = serr
	}
	return int64(n), err
}

func (r *bodyReader) Close() error {
	r.closed.Store(true)
	return nil
}
