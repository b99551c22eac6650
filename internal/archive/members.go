package archive

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// packedShare is the compressed size to report for a member of size bytes
// packed together with others (a solid 7z folder, a cab folder) into packed
// bytes that unpack to total: its share, so that its ratio is the whole
// block's.
func packedShare(packed, size, total uint64) int64 {
	hi, lo := bits.Mul64(packed, size)
	if total == 0 || hi >= total {
		return int64(min(packed, 1<<62))
	}
	c, _ := bits.Div64(hi, lo, total)
	return int64(c)
}

// guardedReader wraps a library's member reader: its decode errors wrap
// ErrCorrupt and its panics (a decoder indexing out of a hostile stream)
// become such errors too.
type guardedReader struct {
	rc   io.ReadCloser
	what string
}

func (g *guardedReader) Read(p []byte) (n int, err error) {
	defer func() {
		if v := recover(); v != nil {
			n, err = 0, fmt.Errorf("%w: %s: %v", ErrCorrupt, g.what, v)
		}
	}()
	n, err = g.rc.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
		err = fmt.Errorf("%w: %s: %v", ErrCorrupt, g.what, err)
	}
	return n, err
}

func (g *guardedReader) Close() error { return g.rc.Close() }
