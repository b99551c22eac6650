package filters

import (
	"fmt"
	"io"
	"sync"
)

// memChunkSize is the unit in which a spool holds a body in memory. A body
// grows by whole chunks instead of by doubling and copying, and the chunks
// go back to a pool when the body is removed, so a busy proxy reuses the
// same memory for message after message instead of making the collector
// and the kernel reclaim ~250 KB of garbage per 100 KB message.
const memChunkSize = 16 << 10

var memChunks = sync.Pool{New: func() any { return new([memChunkSize]byte) }}

// chunkList is a body held in memory: size bytes in chunks of csize
// bytes (the last one filled only in part). Only bytes at and beyond size
// are ever written, and chunk slices are never changed once appended, so
// a copy of the list (a follower's) reads its first size bytes without a
// lock while the writer goes on.
type chunkList struct {
	chunks [][]byte
	csize  int64
	size   int64
}

// appendBytes appends p, taking new chunks from the pool as needed.
func (c *chunkList) appendBytes(p []byte) {
	c.csize = memChunkSize
	for len(p) > 0 {
		i, at := c.size/c.csize, c.size%c.csize
		if i == int64(len(c.chunks)) {
			c.chunks = append(c.chunks, memChunks.Get().(*[memChunkSize]byte)[:])
		}
		k := copy(c.chunks[i][at:], p)
		c.size += int64(k)
		p = p[k:]
	}
}

// span is the bytes from off (0 <= off < size) to the end of their chunk.
func (c chunkList) span(off int64) []byte {
	i, at := off/c.csize, off%c.csize
	return c.chunks[i][at:min(c.csize, at+c.size-off)]
}

// readAt copies the bytes at off into p and returns how many: fewer than
// len(p) only at the end.
func (c chunkList) readAt(p []byte, off int64) int {
	n := 0
	for n < len(p) && off >= 0 && off < c.size {
		k := copy(p[n:], c.span(off))
		n += k
		off += int64(k)
	}
	return n
}

// writeTo writes the bytes in order.
func (c chunkList) writeTo(w io.Writer) error {
	for off := int64(0); off < c.size; off += c.csize {
		if _, err := w.Write(c.span(off)); err != nil {
			return err
		}
	}
	return nil
}

// recycle gives the chunks back to the pool; c must not be used again.
func (c *chunkList) recycle() {
	for _, ch := range c.chunks {
		memChunks.Put((*[memChunkSize]byte)(ch))
	}
	c.chunks = nil
}

// memBody is a Body held in memory. Its chunks return to the pool once it
// is removed and the last of its readers is closed: a reader never sees
// memory that another body reuses. A reader that is never closed keeps the
// chunks from the pool (the collector frees them), which is safe.
type memBody struct {
	mu      sync.Mutex
	data    chunkList
	size    int64
	pooled  bool // the chunks came from the pool and nobody else holds them
	readers int
	removed bool
}

// BytesBody returns a Body over b. b is not copied and must not be modified
// while the Body is in use. Remove only forgets b; Open then fails.
func BytesBody(b []byte) Body {
	m := &memBody{size: int64(len(b))}
	if len(b) > 0 {
		m.data = chunkList{chunks: [][]byte{b}, csize: int64(len(b)), size: int64(len(b))}
	}
	return m
}

func (m *memBody) Open() (io.ReadCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.removed {
		return nil, fmt.Errorf("spool: memory body: %w", errRemoved)
	}
	m.readers++
	r := newBodyReader(m.data, m.size)
	r.release = m.closeReader
	return r, nil
}

func (m *memBody) Size() int64 { return m.size }

// Remove forgets the bytes; readers that are still open keep working until
// they are closed.
func (m *memBody) Remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.removed || m.readers > 0 {
		m.removed = true
		m.free()
	}
	return nil
}

func (m *memBody) closeReader() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.readers--
	m.free()
}

// free drops the chunks once nothing can read them any more.
func (m *memBody) free() {
	if !m.removed || m.readers > 0 {
		return
	}
	if m.pooled {
		m.data.recycle()
	}
	m.data = chunkList{}
}

var _ io.ReaderAt = chunkList{}

// ReadAt makes a chunkList the io.ReaderAt of a bodyReader.
func (c chunkList) ReadAt(p []byte, off int64) (int, error) {
	n := c.readAt(p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
