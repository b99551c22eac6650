package filters

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// readerOnly hides every method of a reader but Read and Close.
type readerOnly struct{ rc io.ReadCloser }

func (r readerOnly) Read(p []byte) (int, error) { return r.rc.Read(p) }
func (r readerOnly) Close() error               { return r.rc.Close() }

// seekerOnly hides io.ReaderAt.
type seekerOnly struct{ rc io.ReadSeekCloser }

func (r seekerOnly) Read(p []byte) (int, error)                { return r.rc.Read(p) }
func (r seekerOnly) Seek(off int64, whence int) (int64, error) { return r.rc.Seek(off, whence) }
func (r seekerOnly) Close() error                              { return r.rc.Close() }

// accessBody serves in's readers with only some of their methods.
type accessBody struct {
	*tbody
	mode string // "readerat" (all of them), "seeker" or "sequential"
}

func (b *accessBody) Open() (io.ReadCloser, error) {
	rc, err := b.tbody.Open()
	if err != nil {
		return nil, err
	}
	switch b.mode {
	case "seeker":
		return seekerOnly{rc.(io.ReadSeekCloser)}, nil
	case "sequential":
		return readerOnly{rc}, nil
	}
	return rc, nil
}

// splice is what pieces say, computed directly against orig.
func splice(orig []byte, pieces []Piece) []byte {
	var out []byte
	for _, p := range pieces {
		if p.Data != nil {
			out = append(out, p.Data...)
		} else {
			out = append(out, orig[p.Off:p.Off+p.Len]...)
		}
	}
	return out
}

// readAllSmall reads r with buffers of n bytes, so that reads end inside
// pieces and cross them.
func readAllSmall(r io.Reader, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for {
		k, err := r.Read(buf)
		out = append(out, buf[:k]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

var accessModes = []string{"readerat", "seeker", "sequential"}

func TestSplicedBody(t *testing.T) {
	const orig = "Subject: hi\r\n\r\nbody text\r\n"
	lit := func(s string) Piece { return Piece{Data: []byte(s)} }
	run := func(off, n int64) Piece { return Piece{Off: off, Len: n} }
	tests := []struct {
		name   string
		pieces []Piece
		want   string
	}{
		{"nothing", nil, ""},
		{"all of it", []Piece{run(0, int64(len(orig)))}, orig},
		{"header in front", []Piece{lit("X-A: 1\r\n"), run(0, int64(len(orig)))}, "X-A: 1\r\n" + orig},
		{"subject rewritten", []Piece{run(0, 9), lit("[S] hi"), run(11, int64(len(orig))-11)}, "Subject: [S] hi" + orig[11:]},
		{"runs skip bytes", []Piece{run(0, 4), run(15, 4), lit("!"), run(int64(len(orig))-2, 2)}, "Subjbody!\r\n"},
		{"empty pieces", []Piece{run(3, 0), {Data: []byte{}}, run(0, 2), run(26, 0)}, "Su"},
		{"literals only", []Piece{lit("a"), lit("bc")}, "abc"},
		{"a run to the very end", []Piece{run(int64(len(orig)), 0), run(20, int64(len(orig))-20)}, orig[20:]},
	}
	for _, tt := range tests {
		for _, mode := range accessModes {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				in := &tbody{data: []byte(orig)}
				b := SplicedBody(&accessBody{in, mode}, tt.pieces)
				if b.Size() != int64(len(tt.want)) {
					t.Errorf("Size = %d, want %d", b.Size(), len(tt.want))
				}
				for _, n := range []int{1, 3, 64} {
					r, err := b.Open()
					if err != nil {
						t.Fatal(err)
					}
					got, err := readAllSmall(r, n)
					r.Close()
					if err != nil || string(got) != tt.want {
						t.Errorf("reads of %d: %q, %v; want %q", n, got, err, tt.want)
					}
				}
				checkReadAt(t, b, mode, tt.want)
				if in.OpenReaders() != 0 {
					t.Errorf("%d readers of the wrapped body left open", in.OpenReaders())
				}
				b.Remove()
				if _, err := b.Open(); err == nil {
					t.Errorf("Open after Remove succeeded")
				}
				if in.Removes() != 0 {
					t.Errorf("Remove removed the wrapped body")
				}
			})
		}
	}
}

// checkReadAt reads b at every offset and length: its readers have
// io.ReaderAt exactly when the wrapped body's have, and it reads as the
// pieces say, with io.EOF at the end.
func checkReadAt(t *testing.T, b Body, mode, want string) {
	t.Helper()
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ra, ok := r.(io.ReaderAt)
	if ok != (mode == "readerat") {
		t.Fatalf("%s: io.ReaderAt %v", mode, ok)
	}
	if !ok {
		return
	}
	for off := 0; off <= len(want)+1; off++ {
		for n := 0; n <= len(want)+1-off; n++ {
			buf := make([]byte, n)
			got, err := ra.ReadAt(buf, int64(off))
			w := want[min(off, len(want)):min(off+n, len(want))]
			if string(buf[:got]) != w || (got < n) != (err == io.EOF) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(%d bytes, %d) = %q, %v; want %q", n, off, buf[:got], err, w)
			}
		}
	}
}

func TestSplicedBodyInvalidPieces(t *testing.T) {
	in := &tbody{data: []byte("0123456789")}
	for _, tt := range []struct {
		name   string
		pieces []Piece
	}{
		{"beyond the end", []Piece{{Off: 5, Len: 6}}},
		{"starts beyond the end", []Piece{{Off: 11, Len: 0}}},
		{"negative offset", []Piece{{Off: -1, Len: 2}}},
		{"negative length", []Piece{{Off: 2, Len: -1}}},
		{"overlapping", []Piece{{Off: 0, Len: 5}, {Data: []byte("x")}, {Off: 4, Len: 2}}},
		{"out of order", []Piece{{Off: 6, Len: 2}, {Off: 0, Len: 2}}},
		{"huge length", []Piece{{Off: 1, Len: 1<<63 - 1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := SplicedBody(in, tt.pieces)
			r, err := b.Open()
			if err == nil {
				r.Close()
				t.Fatalf("Open succeeded")
			}
			if !errors.Is(err, errPieces) {
				t.Errorf("error %v", err)
			}
			if in.OpenReaders() != 0 {
				t.Errorf("the wrapped body was left open")
			}
		})
	}
}

// shortBody claims more bytes than it has.
type shortBody struct{ *accessBody }

func (b shortBody) Size() int64 { return b.accessBody.Size() + 5 }

func TestSplicedBodyShortInput(t *testing.T) {
	for _, mode := range accessModes {
		in := shortBody{&accessBody{&tbody{data: []byte("0123456789")}, mode}}
		for _, pieces := range [][]Piece{{{Off: 8, Len: 4}}, {{Off: 12, Len: 2}}} {
			r, err := SplicedBody(in, pieces).Open()
			if err != nil {
				t.Fatal(err)
			}
			if ra, ok := r.(io.ReaderAt); ok {
				if n, err := ra.ReadAt(make([]byte, 4), 0); !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("%s %v: ReadAt %d, %v; want io.ErrUnexpectedEOF", mode, pieces, n, err)
				}
			}
			got, err := io.ReadAll(r)
			r.Close()
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s %v: read %q, %v; want io.ErrUnexpectedEOF", mode, pieces, got, err)
			}
		}
	}
}

func TestSplicedBodyReaderClose(t *testing.T) {
	in := &tbody{data: []byte("body")}
	b := SplicedBody(in, []Piece{{Data: []byte("x")}, {Off: 0, Len: 4}})
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	if in.OpenReaders() != 1 {
		t.Fatalf("open readers %d", in.OpenReaders())
	}
	r.Close()
	r.Close()
	if in.OpenReaders() != 0 {
		t.Errorf("Close left the wrapped reader open")
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Errorf("Read after Close succeeded")
	}
	in.Remove()
	if _, err := b.Open(); err == nil {
		t.Errorf("Open over a removed body succeeded")
	}
}

// The pieces are copied: changing the caller's list later changes nothing.
func TestSplicedBodyCopiesPieces(t *testing.T) {
	in := &tbody{data: []byte("abcdef")}
	ps := []Piece{{Off: 0, Len: 3}}
	b := SplicedBody(in, ps)
	ps[0].Len = 6
	if got, _ := bodyString(b); got != "abc" || b.Size() != 3 {
		t.Errorf("read %q, Size %d", got, b.Size())
	}
}

func TestAppendPiece(t *testing.T) {
	var ps []Piece
	for _, p := range []Piece{{Off: 0, Len: 3}, {Off: 3, Len: 2}, {Off: 9, Len: 0}, {Data: []byte{}}, {Off: 5, Len: 1}, {Data: []byte("x")}, {Data: []byte("y")}, {Off: 6, Len: 1}, {Off: 8, Len: 1}} {
		ps = AppendPiece(ps, p)
	}
	want := []Piece{{Off: 0, Len: 6}, {Data: []byte("x")}, {Data: []byte("y")}, {Off: 6, Len: 1}, {Off: 8, Len: 1}}
	if !piecesEqual(ps, want) {
		t.Errorf("got %v, want %v", ps, want)
	}
}

func piecesEqual(a, b []Piece) bool {
	return slices.EqualFunc(a, b, func(p, q Piece) bool {
		return (p.Data == nil) == (q.Data == nil) && bytes.Equal(p.Data, q.Data) && p.Off == q.Off && p.Len == q.Len
	})
}

func TestComposePieces(t *testing.T) {
	lit := func(s string) Piece { return Piece{Data: []byte(s)} }
	run := func(off, n int64) Piece { return Piece{Off: off, Len: n} }
	// X = "0123456789"
	tests := []struct {
		name string
		a, b []Piece
		want []Piece
	}{
		{"identity after an edit", []Piece{lit("H:"), run(0, 10)}, []Piece{run(0, 12)}, []Piece{lit("H:"), run(0, 10)}},
		{"header on top of a header", []Piece{lit("A\n"), run(0, 10)}, []Piece{lit("B\n"), run(0, 12)}, []Piece{lit("B\n"), lit("A\n"), run(0, 10)}},
		{"cut into an earlier literal", []Piece{run(0, 2), lit("abcdef"), run(5, 5)}, []Piece{run(1, 3), lit("Z"), run(6, 4)},
			[]Piece{run(1, 1), lit("ab"), lit("Z"), lit("ef"), run(5, 2)}},
		{"runs that rejoin", []Piece{run(0, 4), run(4, 6)}, []Piece{run(2, 2), run(4, 2)}, []Piece{run(2, 4)}},
		{"a run across three pieces", []Piece{run(0, 3), lit("xy"), run(7, 3)}, []Piece{run(1, 6)}, []Piece{run(1, 2), lit("xy"), run(7, 2)}},
		{"everything deleted", []Piece{lit("h"), run(0, 10)}, []Piece{}, []Piece{}},
		{"only literals left", []Piece{lit("h"), run(0, 10)}, []Piece{lit("new")}, []Piece{lit("new")}},
		{"an empty piece of a", []Piece{run(0, 0), run(3, 2), lit(""), run(8, 2)}, []Piece{run(0, 4)}, []Piece{run(3, 2), run(8, 2)}},
	}
	orig := []byte("0123456789")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ComposePieces(tt.a, tt.b)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !piecesEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
			if y, z := splice(orig, tt.a), splice(orig, got); !bytes.Equal(splice(y, tt.b), z) {
				t.Errorf("composed pieces read %q, applying them in turn %q", z, splice(y, tt.b))
			}
		})
	}
	if _, err := ComposePieces([]Piece{run(0, 3)}, []Piece{run(2, 2)}); !errors.Is(err, errPieces) {
		t.Errorf("a run beyond the edited message: %v", err)
	}
	// A literal cut by a later edit is shared, and capped: appending to the
	// piece cannot write into the earlier filter's literal.
	a := []Piece{{Data: []byte("abcdef")}}
	got, _ := ComposePieces(a, []Piece{run(1, 2)})
	_ = append(got[0].Data, 'X')
	if string(a[0].Data) != "abcdef" {
		t.Errorf("earlier literal changed to %q", a[0].Data)
	}
}

// randomEdit returns pieces over a message of size bytes as a filter might
// make them: runs in increasing order, with bytes skipped, literals put in,
// empty pieces here and there.
func randomEdit(rng *rand.Rand, size int64) []Piece {
	var ps []Piece
	pos := int64(0)
	for pos < size || rng.IntN(3) == 0 {
		switch rng.IntN(6) {
		case 0: // insert
			lit := make([]byte, rng.IntN(6))
			for i := range lit {
				lit[i] = 'a' + byte(rng.IntN(26))
			}
			ps = append(ps, Piece{Data: lit})
		case 1: // delete
			pos += min(size-pos, rng.Int64N(5))
		case 2: // an empty run
			ps = append(ps, Piece{Off: pos, Len: 0})
		default: // keep
			n := min(size-pos, rng.Int64N(8))
			ps = append(ps, Piece{Off: pos, Len: n})
			pos += n
		}
		if pos >= size && rng.IntN(2) == 0 {
			break
		}
	}
	return ps
}

// FuzzCompose: edits applied one after another read the same as their
// composition applied to the original, through SplicedBody and in every
// access mode; the composition keeps the runs in order.
func FuzzCompose(f *testing.F) {
	f.Add([]byte("Subject: hi\r\n\r\nbody\r\n"), uint64(1), uint8(3))
	f.Add([]byte(""), uint64(2), uint8(2))
	f.Add([]byte(strings.Repeat("x", 100)), uint64(3), uint8(5))
	f.Fuzz(func(t *testing.T, msg []byte, seed uint64, n uint8) {
		rng := rand.New(rand.NewPCG(seed, uint64(len(msg))))
		cur := msg
		var composed []Piece
		for i := range int(n%6) + 1 {
			e := randomEdit(rng, int64(len(cur)))
			if err := checkPieces(e, int64(len(cur))); err != nil {
				t.Fatalf("generator: %v", err)
			}
			next := splice(cur, e)
			if i == 0 {
				composed = e
			} else {
				c, err := ComposePieces(composed, e)
				if err != nil {
					t.Fatalf("edit %d: %v", i, err)
				}
				composed = c
			}
			if err := checkPieces(composed, int64(len(msg))); err != nil {
				t.Fatalf("edit %d: composition %v: %v", i, composed, err)
			}
			if PiecesSize(composed) != int64(len(next)) {
				t.Fatalf("edit %d: PiecesSize %d, message %d", i, PiecesSize(composed), len(next))
			}
			if got := splice(msg, composed); !bytes.Equal(got, next) {
				t.Fatalf("edit %d: composition reads\n%q\nin turn\n%q", i, got, next)
			}
			cur = next
		}
		mode := accessModes[seed%3]
		b := SplicedBody(&accessBody{&tbody{data: msg}, mode}, composed)
		r, err := b.Open()
		if err != nil {
			t.Fatal(err)
		}
		got, err := readAllSmall(r, 1+int(seed%7))
		r.Close()
		if err != nil || !bytes.Equal(got, cur) {
			t.Fatalf("SplicedBody (%s) read %q, %v; want %q", mode, got, err, cur)
		}
	})
}
