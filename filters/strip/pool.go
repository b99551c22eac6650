package strip

import (
	"io"
	"sync"
)

// Buffers reused across messages: every part of every message needs a
// copy buffer and a tail window. Without reuse, many concurrent sessions
// churn hundreds of KiB per message and the heap (and RSS) grows with the
// garbage.
var (
	copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	tailBufs = sync.Pool{New: func() any { b := make([]byte, 0, 2*tailKeep); return &b }}
)

// tailKeep is how much of a part's end the size pass keeps: enough for a
// zip's end-of-central-directory record (22 bytes) and its longest comment.
const tailKeep = 65535 + 22

// copyPooled is io.Copy with a pooled buffer.
func copyPooled(w io.Writer, r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	return io.CopyBuffer(w, r, *bp)
}
