// Package iobuf copies streams through pooled buffers: popgate copies
// every message several times (into the spool, through decoders, out to the
// client), and io.Copy's fresh 32 KiB buffer per call was a large share of
// the garbage a busy proxy made.
package iobuf

import (
	"io"
	"sync"
)

// Size is the length of the pooled buffers.
const Size = 32 << 10

var bufs = sync.Pool{New: func() any { return new([Size]byte) }}

// Get returns a pooled buffer; give it back with Put once nothing refers
// to it.
func Get() *[Size]byte { return bufs.Get().(*[Size]byte) }

// Put returns b to the pool.
func Put(b *[Size]byte) { bufs.Put(b) }

// Copy is io.Copy with a pooled buffer (io.Copy still prefers r's WriterTo
// or w's ReaderFrom).
func Copy(w io.Writer, r io.Reader) (int64, error) {
	b := Get()
	defer Put(b)
	return io.CopyBuffer(w, r, b[:])
}
