package filters

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
)

// Piece is one run of a message that a filter or a chain delivers, stated
// against the message it was given: Len bytes of that message from Off, or,
// when Data is not nil, Data itself. A delivered message that is the given
// one with a few runs changed (header fields added, a Subject rewritten, an
// attachment replaced by a notice) is a short list of pieces; popgate's
// message memory keeps the list, not the message, and rebuilds the same
// bytes from the upstream's copy.
//
// In every list popgate produces, the runs of the given message (the pieces
// without Data) are in increasing, non-overlapping Off order; SplicedBody
// and the chain require it. Literals (Data) are small: header fields,
// notices, a rewritten Subject; they are shared, never modified.
type Piece struct {
	Off, Len int64
	Data     []byte
}

// size is the number of bytes p stands for.
func (p Piece) size() int64 {
	if p.Data != nil {
		return int64(len(p.Data))
	}
	return p.Len
}

// PiecesSize is the size of the message pieces describe.
func PiecesSize(pieces []Piece) int64 {
	var n int64
	for _, p := range pieces {
		n += p.size()
	}
	return n
}

// AppendPiece appends p to pieces, leaving out an empty piece and joining a
// run of the given message to the run before it when the two are
// contiguous. Literals are never joined (that would mean copying them).
func AppendPiece(pieces []Piece, p Piece) []Piece {
	if p.size() == 0 {
		return pieces
	}
	if n := len(pieces); n > 0 && p.Data == nil {
		if last := &pieces[n-1]; last.Data == nil && last.Off+last.Len == p.Off {
			last.Len += p.Len
			return pieces
		}
	}
	return append(pieces, p)
}

var errPieces = errors.New("invalid pieces")

// checkPieces reports whether pieces can be read against a message of size
// bytes: every run within it, the runs in increasing, non-overlapping order
// (an empty run, which reads nothing, may be anywhere within it).
func checkPieces(pieces []Piece, size int64) error {
	var end int64
	for i, p := range pieces {
		if p.Data != nil {
			continue
		}
		switch {
		case p.Off < 0 || p.Len < 0 || p.Off > size || p.Len > size-p.Off:
			return fmt.Errorf("%w: piece %d (%d bytes from %d) is outside the %d-byte message", errPieces, i, p.Len, p.Off, size)
		case p.Len == 0:
			continue // an empty run reads nothing, wherever it is
		case p.Off < end:
			return fmt.Errorf("%w: piece %d (from %d) goes back before the end of an earlier run (%d)", errPieces, i, p.Off, end)
		}
		end = p.Off + p.Len
	}
	return nil
}

// ComposePieces composes two edits: a states a message Y as pieces of X,
// b states Z as pieces of Y; the result states Z as pieces of X. A run of b
// that covers a literal of a keeps the sub-slice of it that it covers
// (shared, not copied). Empty pieces are left out and contiguous runs
// joined (AppendPiece). The result is never nil (an empty Z is an empty,
// non-nil list); its runs are in increasing order whenever those of a and
// b are. A run of b beyond the end of Y is an error.
func ComposePieces(a, b []Piece) ([]Piece, error) {
	ends := make([]int64, len(a)) // ends[i]: where a[i] ends in Y
	var ysize int64
	for i, p := range a {
		ysize += p.size()
		ends[i] = ysize
	}
	out := make([]Piece, 0, len(b)+len(a))
	for j, p := range b {
		if p.Data != nil {
			out = AppendPiece(out, p)
			continue
		}
		if p.Off < 0 || p.Len < 0 || p.Off > ysize || p.Len > ysize-p.Off {
			return nil, fmt.Errorf("%w: piece %d (%d bytes from %d) is outside the %d-byte message it edits", errPieces, j, p.Len, p.Off, ysize)
		}
		lo, hi := p.Off, p.Off+p.Len
		for i := sort.Search(len(a), func(i int) bool { return ends[i] > lo }); lo < hi; i++ {
			q, start := a[i], ends[i]-a[i].size()
			s, e := lo-start, min(hi, ends[i])-start
			if q.Data != nil {
				out = AppendPiece(out, Piece{Data: q.Data[s:e:e]})
			} else {
				out = AppendPiece(out, Piece{Off: q.Off + s, Len: e - s})
			}
			lo = start + e
		}
	}
	return out, nil
}

// SplicedBody returns a Body that reads as pieces stated against in. Each
// reader opens in once and reads its runs with io.ReaderAt or io.Seeker
// when in's reader has them, else by reading on (and skipping) in order.
// The runs must lie within in and be in increasing, non-overlapping order;
// Open returns an error otherwise. Size is PiecesSize(pieces). The list is
// copied; the literals are not and must not change while the Body is used.
//
// Ownership is PrependHeader's: the returned Body wraps in and does not own
// it. Its Remove only marks the wrapper removed (Open then fails); it never
// removes in, which its owner keeps until the wrapper is no longer used.
// The Body is safe for concurrent use and its readers are independent;
// they implement io.ReaderAt when in's readers do (so that a filter that
// needs random access reads a spliced body in place, not a copy of it),
// never io.Seeker.
func SplicedBody(in Body, pieces []Piece) Body {
	ps := slices.Clone(pieces)
	starts := make([]int64, len(ps))
	var pos int64
	for i, p := range ps {
		starts[i] = pos
		pos += p.size()
	}
	return &splicedBody{in: in, pieces: ps, starts: starts, size: pos, err: checkPieces(ps, in.Size())}
}

// splicedBody is the Body of SplicedBody (and of PrependHeader).
type splicedBody struct {
	in     Body
	pieces []Piece
	starts []int64 // where each piece starts in the spliced body
	size   int64
	err    error // the pieces do not fit in

	mu      sync.Mutex
	removed bool
}

func (b *splicedBody) Open() (io.ReadCloser, error) {
	b.mu.Lock()
	removed := b.removed
	b.mu.Unlock()
	if removed {
		return nil, fmt.Errorf("spliced body: %w", errRemoved)
	}
	if b.err != nil {
		return nil, fmt.Errorf("spliced body: %w", b.err)
	}
	rc, err := b.in.Open()
	if err != nil {
		return nil, err
	}
	r := &splicedReader{rc: rc, pieces: b.pieces}
	r.ra, _ = rc.(io.ReaderAt)
	r.sk, _ = rc.(io.Seeker)
	if r.ra != nil {
		return &splicedReaderAt{splicedReader: r, starts: b.starts, size: b.size}, nil
	}
	return r, nil
}

func (b *splicedBody) Size() int64 { return b.size }

// Remove marks the wrapper removed; the wrapped Body is left alone.
func (b *splicedBody) Remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removed = true
	return nil
}

var errSplicedClosed = errors.New("spliced body: read on closed reader")

// splicedReader reads a splicedBody's pieces in order.
type splicedReader struct {
	rc     io.ReadCloser
	ra     io.ReaderAt // rc's, when it has it
	sk     io.Seeker   // rc's, when it has it (and no ReaderAt)
	pos    int64       // where rc's sequential reading is
	pieces []Piece
	i      int   // the current piece
	done   int64 // bytes of it already read
	closed atomic.Bool
}

func (r *splicedReader) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, errSplicedClosed
	}
	n := 0
	for n < len(p) && r.i < len(r.pieces) {
		pc := &r.pieces[r.i]
		if rest := pc.size() - r.done; rest == 0 {
			r.i, r.done = r.i+1, 0
			continue
		} else if pc.Data != nil {
			c := copy(p[n:], pc.Data[r.done:])
			n += c
			r.done += int64(c)
			continue
		} else {
			want := p[n:]
			if int64(len(want)) > rest {
				want = want[:rest]
			}
			c, err := r.readRun(want, pc.Off+r.done)
			n += c
			r.done += int64(c)
			if err != nil || c < len(want) {
				return n, err
			}
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// readRun reads into buf from offset off of the wrapped message; a short
// read is fine, the end of the message before buf is filled is not.
func (r *splicedReader) readRun(buf []byte, off int64) (int, error) {
	if r.ra != nil {
		c, err := r.ra.ReadAt(buf, off)
		switch {
		case c == len(buf):
			return c, nil
		case err == nil || err == io.EOF:
			return c, io.ErrUnexpectedEOF
		}
		return c, err
	}
	if r.pos != off {
		if r.sk != nil {
			if _, err := r.sk.Seek(off, io.SeekStart); err != nil {
				return 0, err
			}
			r.pos = off
		} else {
			if off < r.pos {
				return 0, fmt.Errorf("%w: a run goes back to %d after %d", errPieces, off, r.pos)
			}
			k, err := io.CopyN(io.Discard, r.rc, off-r.pos)
			r.pos += k
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return 0, err
			}
		}
	}
	c, err := r.rc.Read(buf)
	r.pos += int64(c)
	if err == io.EOF {
		if c > 0 {
			return c, nil
		}
		return 0, io.ErrUnexpectedEOF
	}
	return c, err
}

func (r *splicedReader) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	return r.rc.Close()
}

// splicedReaderAt is a splicedReader over a reader with io.ReaderAt: it
// reads at any offset too, without moving the sequential position.
type splicedReaderAt struct {
	*splicedReader
	starts []int64
	size   int64
}

// ReadAt reads len(p) bytes from off, as io.ReaderAt: fewer only at the
// end of the body (with io.EOF) or on an error.
func (r *splicedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if r.closed.Load() {
		return 0, errSplicedClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("spliced body: negative offset %d", off)
	}
	n := 0
	// The last piece that starts at or before off.
	i := sort.Search(len(r.starts), func(i int) bool { return r.starts[i] > off }) - 1
	for ; n < len(p) && i >= 0 && i < len(r.pieces); i++ {
		pc := &r.pieces[i]
		from := off + int64(n) - r.starts[i] // within the piece
		rest := pc.size() - from
		if rest <= 0 {
			continue
		}
		want := p[n:]
		if int64(len(want)) > rest {
			want = want[:rest]
		}
		if pc.Data != nil {
			n += copy(want, pc.Data[from:])
			continue
		}
		c, err := r.ra.ReadAt(want, pc.Off+from)
		n += c
		if c < len(want) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF // the message is shorter than its pieces
			}
			return n, err
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
