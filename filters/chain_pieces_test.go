package filters

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// checkResultPieces checks the promise of Result.Pieces: when the result is
// Reproducible, SplicedBody(in, Pieces) reads byte for byte as Body, and
// Pieces is nil exactly when Body is the input; when it is not, Pieces is
// nil.
func checkResultPieces(t *testing.T, in Body, res *Result) {
	t.Helper()
	if !res.Reproducible {
		if res.Pieces != nil {
			t.Errorf("Pieces %v on a result that is not Reproducible", res.Pieces)
		}
		return
	}
	if res.Outcome != Deliver || res.Withheld {
		t.Fatalf("Reproducible on %v (withheld %v)", res.Outcome, res.Withheld)
	}
	if (res.Pieces == nil) != (res.Body == in) {
		t.Fatalf("Pieces %v, Body is the input: %v", res.Pieces, res.Body == in)
	}
	if res.Pieces == nil {
		return
	}
	want, err := bodyString(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bodyString(SplicedBody(in, res.Pieces))
	if err != nil || got != want {
		t.Fatalf("SplicedBody(input, Pieces) reads %q, %v\nBody reads %q\npieces %v", got, err, want, res.Pieces)
	}
}

// editFilter replaces its message with the one edit states against it,
// written out as a body of its own, and gives the edit as Verdict.Edits
// (or not, with noEdits).
func editFilter(name string, edit func(size int64) []Piece, noEdits bool) Filter {
	return &funcFilter{name: name, fn: func(_ context.Context, _ *Envelope, body Body) (Verdict, error) {
		ps := edit(body.Size())
		r, err := SplicedBody(body, ps).Open()
		if err != nil {
			return Verdict{}, err
		}
		defer r.Close()
		data, err := io.ReadAll(r)
		if err != nil {
			return Verdict{}, err
		}
		v := Verdict{Action: Replace, Body: BytesBody(data), KeepsOriginal: true}
		if !noEdits {
			v.Edits = ps
		}
		return v, nil
	}}
}

func lit(s string) Piece         { return Piece{Data: []byte(s)} }
func run(off, n int64) Piece     { return Piece{Off: off, Len: n} }
func rest(off, size int64) Piece { return Piece{Off: off, Len: size - off} }

// Edits of the kinds the real filters make, over "Subject: hi\r\n\r\nbody\r\n".
var (
	addHeader = func(size int64) []Piece { return []Piece{lit("X-A: 1\r\n"), run(0, size)} }
	// cutLiteral, after addHeader, cuts into its literal: "[T] " after "X-A: ", a field after the first line.
	cutLiteral = func(size int64) []Piece {
		return []Piece{run(0, 5), lit("[T] "), run(5, 3), lit("X-B: 2\r\n"), rest(8, size)}
	}
	subject   = func(size int64) []Piece { return []Piece{run(0, 8), lit(" [S]"), rest(8, size)} }
	dropBody  = func(size int64) []Piece { return []Piece{run(0, size-6), lit("(removed)\r\n")} }
	toNothing = func(int64) []Piece { return []Piece{} }
	badSize   = func(size int64) []Piece { return []Piece{run(0, size)} } // with a body of another size, below
)

func TestChainPieces(t *testing.T) {
	const orig = "Subject: hi\r\n\r\nbody\r\n"
	pass := &funcFilter{name: "pass", fn: func(context.Context, *Envelope, Body) (Verdict, error) { return Verdict{Action: Pass}, nil }}
	fail := &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) { return Verdict{}, errors.New("down") }}
	lying := &funcFilter{name: "lying", fn: func(_ context.Context, _ *Envelope, body Body) (Verdict, error) {
		return Verdict{Action: Replace, Body: BytesBody([]byte("short")), Edits: badSize(body.Size()), KeepsOriginal: true}, nil
	}}
	outOfOrder := &funcFilter{name: "backwards", fn: func(_ context.Context, _ *Envelope, body Body) (Verdict, error) {
		return Verdict{Action: Replace, Body: BytesBody([]byte("SubjSubj")), Edits: []Piece{run(0, 4), run(0, 4)}, KeepsOriginal: true}, nil
	}}
	back := &funcFilter{name: "back", fn: func(context.Context, *Envelope, Body) (Verdict, error) { return Verdict{}, nil }} // set below
	reject := &funcFilter{name: "virus", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		return Verdict{Action: Reject, Reason: "virus"}, nil
	}}
	retry := &funcFilter{name: "later", fn: func(context.Context, *Envelope, Body) (Verdict, error) { return Verdict{Action: Retry}, nil }}

	tests := []struct {
		name         string
		filters      []Filter
		onError      OnError
		notice       bool
		maxSize      int64
		outcome      Outcome
		body         string
		reproducible bool
		pieces       []Piece // when not nil, the exact pieces
	}{
		{name: "unchanged", filters: []Filter{pass, pass}, body: orig, reproducible: true},
		{name: "one edit", filters: []Filter{editFilter("tag", addHeader, false)},
			body: "X-A: 1\r\n" + orig, reproducible: true, pieces: []Piece{lit("X-A: 1\r\n"), run(0, 21)}},
		{name: "two edits, the second cuts into the first's literal",
			filters: []Filter{editFilter("tag", addHeader, false), pass, editFilter("tag2", cutLiteral, false)},
			body:    "X-A: [T] 1\r\nX-B: 2\r\n" + orig, reproducible: true,
			pieces: []Piece{lit("X-A: "), lit("[T] "), lit("1\r\n"), lit("X-B: 2\r\n"), run(0, 21)}},
		{name: "three edits",
			filters: []Filter{editFilter("tag", addHeader, false), editFilter("subject", subject, false), editFilter("strip", dropBody, false)},
			body:    "X-A: 1\r\n [S]Subject: hi\r\n\r\n(removed)\r\n", reproducible: true,
			pieces: []Piece{lit("X-A: 1\r\n"), lit(" [S]"), run(0, 15), lit("(removed)\r\n")}},
		{name: "an edit to nothing", filters: []Filter{editFilter("tag", addHeader, false), editFilter("empty", toNothing, false)},
			body: "", reproducible: true, pieces: []Piece{}},
		{name: "a replace without edits", filters: []Filter{editFilter("tag", addHeader, true)}, body: "X-A: 1\r\n" + orig},
		{name: "edits after a replace without them",
			filters: []Filter{editFilter("tag", addHeader, true), editFilter("subject", subject, false)}, body: "X-A: 1\r\n [S]" + orig},
		{name: "edits before a replace without them",
			filters: []Filter{editFilter("tag", addHeader, false), editFilter("subject", subject, true)}, body: "X-A: 1\r\n [S]" + orig},
		{name: "edits of the wrong size count as none", filters: []Filter{lying}, body: "short"},
		{name: "edits out of order count as none", filters: []Filter{outOfOrder}, body: "SubjSubj"},
		{name: "pass-with-tag on top of edits",
			filters: []Filter{editFilter("tag", addHeader, false), fail, editFilter("subject", subject, false)}, onError: PassWithTag,
			body:         "X-Popgate-Warning: not filtered: av: error\r\nX-A: 1\r\n [S]" + orig,
			reproducible: true,
			pieces:       []Piece{lit("X-Popgate-Warning: not filtered: av: error\r\n"), lit("X-A: 1\r\n"), lit(" [S]"), run(0, 21)}},
		{name: "pass-with-tag on a replace without edits",
			filters: []Filter{editFilter("tag", addHeader, true), fail}, onError: PassWithTag,
			body: "X-Popgate-Warning: not filtered: av: error\r\nX-A: 1\r\n" + orig},
		{name: "pass-with-tag on the input", filters: []Filter{fail, pass}, onError: PassWithTag,
			body: "X-Popgate-Warning: not filtered: av: error\r\n" + orig, reproducible: true,
			pieces: []Piece{lit("X-Popgate-Warning: not filtered: av: error\r\n"), run(0, 21)}},
		{name: "max_size, pass-with-tag", filters: []Filter{editFilter("tag", addHeader, false)}, onError: PassWithTag, maxSize: 5,
			body: "X-Popgate-Warning: not filtered: max_size: too large\r\n" + orig, reproducible: true},
		{name: "back to the input", filters: []Filter{editFilter("tag", addHeader, false), back}, body: orig, reproducible: true},
		{name: "rejected with a notice", filters: []Filter{editFilter("tag", addHeader, false), reject}, notice: true,
			body: "withheld, see q1"},
		{name: "rejected", filters: []Filter{editFilter("tag", addHeader, false), reject}, outcome: Refuse},
		{name: "deferred", filters: []Filter{editFilter("tag", addHeader, false), retry}, outcome: Defer},
		{name: "failed, tempfail", filters: []Filter{editFilter("tag", addHeader, false), fail}, outcome: Defer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := BytesBody([]byte(orig))
			back.fn = func(context.Context, *Envelope, Body) (Verdict, error) {
				return Verdict{Action: Replace, Body: in, Edits: []Piece{run(8, 21)}, KeepsOriginal: true}, nil
			}
			c := &Chain{Filters: tt.filters, OnError: tt.onError, MaxSize: tt.maxSize, Quarantine: &memQuarantine{}}
			if tt.notice {
				c.Notice = notice
			}
			res := c.Run(context.Background(), &Envelope{}, in)
			defer res.Release()
			if res.Outcome != tt.outcome {
				t.Fatalf("outcome %v (%s), want %v", res.Outcome, res.Reason, tt.outcome)
			}
			if tt.outcome == Deliver {
				if got, err := bodyString(res.Body); err != nil || got != tt.body {
					t.Fatalf("delivered %q, %v; want %q", got, err, tt.body)
				}
			}
			if res.Reproducible != tt.reproducible {
				t.Errorf("Reproducible %v, want %v (pieces %v)", res.Reproducible, tt.reproducible, res.Pieces)
			}
			if tt.pieces != nil && !piecesEqual(res.Pieces, tt.pieces) {
				t.Errorf("pieces\n%v\nwant\n%v", res.Pieces, tt.pieces)
			}
			checkResultPieces(t, in, res)
		})
	}
}

// The pieces are offsets into the input and small literals: a large
// message edited at the top costs a few pieces, whatever its size.
func TestChainPiecesStaySmall(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	in := BytesBody(msg)
	c := &Chain{Filters: []Filter{editFilter("tag", addHeader, false), editFilter("subject", subject, false)}}
	res := c.Run(context.Background(), &Envelope{}, in)
	defer res.Release()
	if !res.Reproducible || len(res.Pieces) != 3 {
		t.Fatalf("Reproducible %v, pieces %v", res.Reproducible, res.Pieces)
	}
	var lits int
	for _, p := range res.Pieces {
		lits += len(p.Data)
	}
	if lits > 64 {
		t.Errorf("%d bytes of literals", lits)
	}
	checkResultPieces(t, in, res)
}
