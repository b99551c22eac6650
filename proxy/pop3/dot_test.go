package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

type dotCase struct {
	name    string
	in      string // the stream after the status line
	decoded string
	raw     string // NewRawDotReader's output: the terminator line too, when found
	err     error  // nil: terminator found
	rest    string // what stays in br (only checked when err == nil)
}

var dotCases = []dotCase{
	{"empty response", ".\r\n", "", ".\r\n", nil, ""},
	{"one line", "a\r\n.\r\n", "a\r\n", "a\r\n.\r\n", nil, ""},
	{"pipelined next", "a\r\n.\r\n+OK next\r\n", "a\r\n", "a\r\n.\r\n", nil, "+OK next\r\n"},
	{"two terminators", ".\r\n.\r\n", "", ".\r\n", nil, ".\r\n"},
	{"stuffed terminator", "..\r\n.\r\n", ".\r\n", "..\r\n.\r\n", nil, ""},
	{"triple dot", "...\r\n.\r\n", "..\r\n", "...\r\n.\r\n", nil, ""},
	{"dot text", ".abc\r\n..def\r\n.\r\n", "abc\r\n.def\r\n", ".abc\r\n..def\r\n.\r\n", nil, ""},
	{"dot bare lf", ".\n.\r\n", "\n", ".\n.\r\n", nil, ""},
	{"dot space", ". \r\n.\r\n", " \r\n", ". \r\n.\r\n", nil, ""},
	{"bare lf lines", "a\nb\n.\r\n", "a\nb\n", "a\nb\n.\r\n", nil, ""},
	{"terminator after bare lf", "a\n.\r\nX", "a\n", "a\n.\r\n", nil, "X"},
	{"dot after bare lf", "a\n..x\n.\r\n", "a\n.x\n", "a\n..x\n.\r\n", nil, ""},
	{"nul", "\x00\r\n\x00.\r\n.\r\n", "\x00\r\n\x00.\r\n", "\x00\r\n\x00.\r\n.\r\n", nil, ""},
	{"empty lines", "\r\n\r\n.\r\n", "\r\n\r\n", "\r\n\r\n.\r\n", nil, ""},
	{"dot cr cr lf", ".\r\r\n.\r\n", "\r\r\n", ".\r\r\n.\r\n", nil, ""},
	{"dot cr x", ".\rx\r\n.\r\n", "\rx\r\n", ".\rx\r\n.\r\n", nil, ""},
	{"dot cr dot", ".\r.\r\n.\r\n", "\r.\r\n", ".\r.\r\n.\r\n", nil, ""},
	{"cr is not a line end", "a\r.\r\n.\r\n", "a\r.\r\n", "a\r.\r\n.\r\n", nil, ""},
	{"lf cr", "a\n\r.\r\n.\r\n", "a\n\r.\r\n", "a\n\r.\r\n.\r\n", nil, ""},
	{"mid-line terminator bytes", "x.\r\n.\r\n", "x.\r\n", "x.\r\n.\r\n", nil, ""},
	{"no terminator", "abc\r\n", "abc\r\n", "abc\r\n", io.ErrUnexpectedEOF, ""},
	{"partial line", "abc", "abc", "abc", io.ErrUnexpectedEOF, ""},
	{"empty stream", "", "", "", io.ErrUnexpectedEOF, ""},
	{"lone dot", ".", "", "", io.ErrUnexpectedEOF, ""},
	{"dot cr", ".\r", "", "", io.ErrUnexpectedEOF, ""},
	{"after line dot cr", "a\r\n.\r", "a\r\n", "a\r\n", io.ErrUnexpectedEOF, ""},
	{"dot lf only", "a\r\n.\n", "a\r\n\n", "a\r\n.\n", io.ErrUnexpectedEOF, ""},
	{"cr only", "\r\r\r", "\r\r\r", "\r\r\r", io.ErrUnexpectedEOF, ""},
}

// decodeAll reads r to its end with Read calls of size bufSize (0: WriteTo).
func decodeAll(d *DotReader, bufSize int) ([]byte, error) {
	var out bytes.Buffer
	if bufSize == 0 {
		_, err := d.WriteTo(&out)
		return out.Bytes(), err
	}
	p := make([]byte, bufSize)
	for {
		n, err := d.Read(p)
		if n < 0 || n > len(p) {
			return nil, fmt.Errorf("bad n %d", n)
		}
		out.Write(p[:n])
		if err == io.EOF {
			return out.Bytes(), nil
		}
		if err != nil {
			return out.Bytes(), err
		}
	}
}

func TestDotReaderCases(t *testing.T) {
	for _, tc := range dotCases {
		for vname, mk := range readerVariants([]byte(tc.in)) {
			for _, size := range []int{16, 4096} {
				for _, bufSize := range []int{0, 1, 2, 3, 7, 4096} {
					for _, raw := range []bool{false, true} {
						br := bufio.NewReaderSize(mk(), size)
						d := NewDotReader(br)
						want := tc.decoded
						if raw {
							d = NewRawDotReader(br)
							want = tc.raw
						}
						got, err := decodeAll(d, bufSize)
						desc := fmt.Sprintf("%s/%s/size=%d/buf=%d/raw=%v", tc.name, vname, size, bufSize, raw)
						if err != tc.err {
							t.Fatalf("%s: err = %v, want %v", desc, err, tc.err)
						}
						if tc.err == nil && string(got) != want {
							t.Fatalf("%s: got %q, want %q", desc, got, want)
						}
						if tc.err != nil && !strings.HasPrefix(want, string(got)) {
							t.Fatalf("%s: got %q, want a prefix of %q", desc, got, want)
						}
						// Sticky end.
						if n, err2 := d.Read(make([]byte, 10)); n != 0 || (err2 != io.EOF && tc.err == nil) || (tc.err != nil && err2 != tc.err) {
							t.Fatalf("%s: read after end = %d, %v", desc, n, err2)
						}
						if tc.err == nil {
							rest, _ := io.ReadAll(br)
							if string(rest) != tc.rest {
								t.Fatalf("%s: rest %q, want %q", desc, rest, tc.rest)
							}
						}
					}
				}
			}
		}
	}
}

// Every way of splitting a response into two or three reads.
func TestDotReaderEverySplit(t *testing.T) {
	inputs := []dotCase{
		{in: "hello\r\nworld\r\n.\r\n+OK", decoded: "hello\r\nworld\r\n", rest: "+OK"},
		{in: "..\r\n.x\r\n\r\n.\r\n-ERR", decoded: ".\r\nx\r\n\r\n", rest: "-ERR"},
		{in: "a\n.\n.\r\n.\r\n", decoded: "a\n\n", rest: ".\r\n"},
		{in: ".\r\n", decoded: ""},
	}
	for _, tc := range inputs {
		in := []byte(tc.in)
		check := func(segs [][]byte) {
			for _, raw := range []bool{false, true} {
				for _, bufSize := range []int{0, 1, 5, 100} {
					cp := make([][]byte, len(segs))
					copy(cp, segs)
					br := bufio.NewReaderSize(&segReader{segs: cp}, 16)
					d, want := NewDotReader(br), tc.decoded
					if raw {
						d, want = NewRawDotReader(br), strings.TrimSuffix(tc.in, tc.rest)
					}
					got, err := decodeAll(d, bufSize)
					rest, _ := io.ReadAll(br)
					if err != nil || string(got) != want || string(rest) != tc.rest {
						t.Fatalf("%q split %q raw=%v buf=%d: got %q, %v, rest %q", tc.in, segs, raw, bufSize, got, err, rest)
					}
				}
			}
		}
		for i := 0; i <= len(in); i++ {
			check([][]byte{in[:i], in[i:]})
			for j := i; j <= len(in); j++ {
				check([][]byte{in[:i], in[i:j], in[j:]})
			}
		}
	}
}

// Read must hand over what it has instead of waiting for more input, and
// must wait (not fail) at a line start until it can tell a terminator.
func TestDotReaderDoesNotBlockOnAvailableData(t *testing.T) {
	for _, raw := range []bool{false, true} {
		pr, pw := io.Pipe()
		br := bufio.NewReader(pr)
		d := NewDotReader(br)
		if raw {
			d = NewRawDotReader(br)
		}
		type res struct {
			s   string
			err error
		}
		ch := make(chan res, 1)
		read := func() {
			p := make([]byte, 100)
			n, err := d.Read(p)
			ch <- res{string(p[:n]), err}
		}
		expect := func(want string, wantErr error) {
			select {
			case r := <-ch:
				if r.s != want || r.err != wantErr {
					t.Fatalf("raw=%v: got %q %v, want %q %v", raw, r.s, r.err, want, wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("raw=%v: Read blocked waiting for %q", raw, want)
			}
		}
		go read()
		_, _ = pw.Write([]byte("abc\r\n"))
		expect("abc\r\n", nil)
		go read()
		_, _ = pw.Write([]byte(".")) // cannot decide yet: must wait
		_, _ = pw.Write([]byte(".x\r\n"))
		if raw {
			expect("..x\r\n", nil)
		} else {
			expect(".x\r\n", nil)
		}
		go read()
		_, _ = pw.Write([]byte(".\r"))
		_, _ = pw.Write([]byte("\n"))
		if raw {
			expect(".\r\n", nil)
			go read()
		}
		expect("", io.EOF)
		pw.Close()
	}
}

// A 1 MB line without LF goes through in buffer-sized pieces.
func TestDotReaderLongLine(t *testing.T) {
	for _, raw := range []bool{false, true} {
		src := &countReader{r: repeatReader('x', 1<<20, "\r\n.\r\nNEXT")}
		br := bufio.NewReaderSize(src, 4096)
		d := NewDotReader(br)
		if raw {
			d = NewRawDotReader(br)
		}
		mw := &maxWriter{}
		n, err := d.WriteTo(mw)
		want := int64(1<<20 + 2)
		if raw {
			want += 3 // the terminator
		}
		if err != nil || n != want || mw.n != n {
			t.Fatalf("raw=%v: WriteTo = %d, %v", raw, n, err)
		}
		if mw.max > 4096 {
			t.Fatalf("largest write %d > buffer", mw.max)
		}
		rest, _ := io.ReadAll(br)
		if string(rest) != "NEXT" {
			t.Fatalf("rest %q", rest)
		}
		// Read with a small buffer too.
		br = bufio.NewReaderSize(repeatReader('y', 1<<20, "\r\n.\r\n"), 4096)
		got, err := io.Copy(io.Discard, struct{ io.Reader }{NewDotReader(br)})
		if err != nil || got != 1<<20+2 {
			t.Fatalf("Read: %d, %v", got, err)
		}
	}
}

// A relay writes each read's worth in one piece: stuffed lines do not split
// it, and the terminator goes with the data before it.
func TestRawDotReaderWholePieces(t *testing.T) {
	in := "a\r\n..b\r\n.c\r\nd\r\n..\r\n.\r\n+OK next\r\n"
	br := bufio.NewReaderSize(strings.NewReader(in), 4096)
	var w pieceWriter
	if _, err := NewRawDotReader(br).WriteTo(&w); err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSuffix(in, "+OK next\r\n")
	if len(w.pieces) != 1 || w.pieces[0] != want {
		t.Fatalf("pieces %q, want one: %q", w.pieces, want)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "+OK next\r\n" {
		t.Fatalf("rest %q", rest)
	}
}

type pieceWriter struct{ pieces []string }

func (w *pieceWriter) Write(p []byte) (int, error) {
	w.pieces = append(w.pieces, string(p))
	return len(p), nil
}

type maxWriter struct{ n, max int64 }

func (m *maxWriter) Write(p []byte) (int, error) {
	m.n += int64(len(p))
	m.max = max(m.max, int64(len(p)))
	return len(p), nil
}

type failWriter struct {
	after int
	err   error
}

func (f *failWriter) Write(p []byte) (int, error) {
	if len(p) <= f.after {
		f.after -= len(p)
		return len(p), nil
	}
	n := f.after
	f.after = 0
	return n, f.err
}

func TestDotReaderWriteError(t *testing.T) {
	boom := errors.New("boom")
	br := bufio.NewReader(strings.NewReader("hello\r\nworld\r\n.\r\n"))
	d := NewRawDotReader(br)
	n, err := d.WriteTo(&failWriter{after: 3, err: boom})
	if err != boom || n != 3 {
		t.Fatalf("WriteTo = %d, %v", n, err)
	}
	if _, err := d.Read(make([]byte, 10)); err != boom {
		t.Fatalf("sticky err = %v", err)
	}
}

func TestDotReaderReadError(t *testing.T) {
	boom := errors.New("boom")
	br := bufio.NewReader(io.MultiReader(strings.NewReader("a\r\n"), errReader{boom}))
	got, err := decodeAll(NewDotReader(br), 0)
	if err != boom || string(got) != "a\r\n" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestDotWriter(t *testing.T) {
	tests := []struct{ in, out string }{
		{"", ".\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{".", "..\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"..\r\n", "...\r\n.\r\n"},
		{"a\n.b", "a\n..b\r\n.\r\n"},
		{".a\r\n.b\r\n", "..a\r\n..b\r\n.\r\n"},
		{"x.\r\n", "x.\r\n.\r\n"},
		{"a\r.b\r\n", "a\r.b\r\n.\r\n"},
		{"\x00\n", "\x00\n.\r\n"},
		{"a\r", "a\r\r\n.\r\n"},
		{"\n.\n.", "\n..\n..\r\n.\r\n"},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 2, 3, 1000} {
			var out bytes.Buffer
			w := NewDotWriter(&out)
			in := []byte(tt.in)
			for len(in) > 0 {
				k := min(chunk, len(in))
				n, err := w.Write(in[:k])
				if n != k || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
				in = in[k:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal("second Close:", err)
			}
			if out.String() != tt.out {
				t.Errorf("encode(%q) chunk %d = %q, want %q", tt.in, chunk, out.String(), tt.out)
			}
			if _, err := w.Write([]byte("x")); err != ErrDotWriterClosed {
				t.Errorf("Write after Close: %v", err)
			}
		}
	}
}

func TestDotWriterError(t *testing.T) {
	boom := errors.New("boom")
	w := NewDotWriter(&failWriter{after: 4, err: boom})
	n, err := w.Write([]byte("ab\r\n.cd\r\n"))
	if err != boom || n != 4 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if _, err := w.Write([]byte("x")); err != boom {
		t.Fatalf("sticky: %v", err)
	}
	if err := w.Close(); err != boom {
		t.Fatalf("Close: %v", err)
	}
}

// encode returns the dot-stuffed form of x written in random pieces.
func encode(t testing.TB, x []byte, rng *rand.Rand) []byte {
	var out bytes.Buffer
	w := NewDotWriter(&out)
	for len(x) > 0 {
		k := min(1+rng.IntN(20), len(x))
		if _, err := w.Write(x[:k]); err != nil {
			t.Fatal(err)
		}
		x = x[k:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func wantRoundTrip(x []byte) []byte {
	if len(x) == 0 || x[len(x)-1] == '\n' {
		return x
	}
	return append(bytes.Clone(x), '\r', '\n')
}

func TestDotRoundTripRandom(t *testing.T) {
	alphabet := []byte(".\r\n.a\x00\n.")
	for seed := range uint64(2000) {
		rng := rand.New(rand.NewPCG(seed, 1))
		x := make([]byte, rng.IntN(64))
		for i := range x {
			x[i] = alphabet[rng.IntN(len(alphabet))]
		}
		enc := encode(t, x, rng)
		for _, raw := range []bool{false, true} {
			stream := append(bytes.Clone(enc), "+OK"...)
			br := bufio.NewReaderSize(newChunkReader(stream, seed, 1+int(seed%9)), 16)
			d := NewDotReader(br)
			if raw {
				d = NewRawDotReader(br)
			}
			got, err := decodeAll(d, int(seed%5))
			want := wantRoundTrip(x)
			if raw {
				want = enc
			}
			rest, _ := io.ReadAll(br)
			if err != nil || !bytes.Equal(got, want) || string(rest) != "+OK" {
				t.Fatalf("seed %d raw=%v x=%q enc=%q: got %q, %v, rest %q", seed, raw, x, enc, got, err, rest)
			}
		}
	}
}

// A message as a real server would send it: headers, text with dot lines,
// a base64 attachment.
// With text set, the body is all prose (many dots, a dot-stuffed line every
// 11 lines): the slow case for the dot scanner.
func sampleMessage(size int, text ...bool) []byte {
	var b bytes.Buffer
	b.WriteString("Return-Path: <alice@example.com>\r\nReceived: from mx.example.com by pop.example.net; Tue, 25 Nov 2025 10:00:00 +0000\r\n")
	b.WriteString("From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: quarterly report\r\nMessage-ID: <1234@example.com>\r\n")
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n")
	for i := 0; i < 40; i++ {
		b.WriteString("The quick brown fox jumps over the lazy dog. Numbers: 3.14159, 2.71828.\r\n")
		if i%10 == 0 {
			b.WriteString(".. a line that was dot-stuffed\r\n")
		}
	}
	for len(text) > 0 && text[0] && b.Len() < size-20 {
		b.WriteString("Dear Bob, see the figures in sec. 3.2 (p. 14) at https://example.com/r.pdf.\r\n")
		if b.Len()%11 == 0 {
			b.WriteString("..and a dot-stuffed line.\r\n")
		}
	}
	b.WriteString("--b1\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	rng := rand.New(rand.NewPCG(1, 2))
	const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	line := make([]byte, 76)
	for b.Len() < size-20 {
		for i := range line {
			line[i] = b64[rng.IntN(64)]
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	b.WriteString("--b1--\r\n.\r\n")
	return b.Bytes()
}

func benchDot(b *testing.B, raw bool, bufSize int, useRead bool, text ...bool) {
	msg := sampleMessage(100<<10, text...)
	r := bytes.NewReader(msg)
	br := bufio.NewReaderSize(r, bufSize)
	p := make([]byte, 32<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(msg)
		br.Reset(r)
		d := DotReader{br: br, lineStart: true, raw: raw}
		var err error
		if useRead {
			for err == nil {
				_, err = d.Read(p)
			}
			if err == io.EOF {
				err = nil
			}
		} else {
			_, err = d.WriteTo(io.Discard)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRawDotReaderWriteTo(b *testing.B) {
	for _, size := range []int{4 << 10, 32 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("buf=%dK", size>>10), func(b *testing.B) { benchDot(b, true, size, false) })
	}
	b.Run("text/buf=4K", func(b *testing.B) { benchDot(b, true, 4<<10, false, true) })
}

func BenchmarkDotReader(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("WriteTo/buf=%dK", size>>10), func(b *testing.B) { benchDot(b, false, size, false) })
		b.Run(fmt.Sprintf("Read/buf=%dK", size>>10), func(b *testing.B) { benchDot(b, false, size, true) })
	}
	b.Run("text/WriteTo/buf=4K", func(b *testing.B) { benchDot(b, false, 4<<10, false, true) })
}

func BenchmarkDotWriter(b *testing.B) {
	msg := sampleMessage(100 << 10)
	msg = msg[:len(msg)-3]
	bw := bufio.NewWriterSize(io.Discard, 32<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		w := DotWriter{w: bw, lineStart: true}
		_, _ = w.Write(msg)
		_ = w.Close()
		_ = bw.Flush()
	}
}

// For comparison: what a plain copy through bufio costs.
func BenchmarkBaselineCopy(b *testing.B) {
	msg := sampleMessage(100 << 10)
	r := bytes.NewReader(msg)
	br := bufio.NewReaderSize(r, 32<<10)
	p := make([]byte, 32<<10)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		r.Reset(msg)
		br.Reset(r)
		_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{br}, p)
	}
}
