package pop3

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// lineResult is one ReadLine outcome; after ErrLineTooLong the test calls
// DiscardLine.
type lineResult struct {
	line string
	err  error
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 300)
	tests := []struct {
		name  string
		in    string
		limit int
		want  []lineResult
	}{
		{"empty input", "", 10, []lineResult{{"", io.EOF}}},
		{"crlf", "USER bob\r\nPASS a b\r\n", 255, []lineResult{{"USER bob", nil}, {"PASS a b", nil}, {"", io.EOF}}},
		{"bare lf", "a\nb\r\n", 10, []lineResult{{"a", nil}, {"b", nil}, {"", io.EOF}}},
		{"empty lines", "\r\n\n", 10, []lineResult{{"", nil}, {"", nil}, {"", io.EOF}}},
		{"inner cr kept", "a\rb\r\n", 10, []lineResult{{"a\rb", nil}, {"", io.EOF}}},
		{"one cr stripped", "a\r\r\n", 10, []lineResult{{"a\r", nil}}},
		{"nul kept", "a\x00b\r\n", 10, []lineResult{{"a\x00b", nil}}},
		{"partial", "abc", 10, []lineResult{{"", io.ErrUnexpectedEOF}}},
		{"partial after line", "a\r\nbc", 10, []lineResult{{"a", nil}, {"", io.ErrUnexpectedEOF}}},
		{"exact limit crlf", "abc\r\n", 5, []lineResult{{"abc", nil}}},
		{"exact limit lf", "abcd\n", 5, []lineResult{{"abcd", nil}}},
		{"limit+1", "abcd\r\nok\r\n", 5, []lineResult{{"", ErrLineTooLong}, {"ok", nil}, {"", io.EOF}}},
		{"long then ok", long + "\r\nNOOP\r\n", 255, []lineResult{{"", ErrLineTooLong}, {"NOOP", nil}}},
		{"long partial", long, 255, []lineResult{{"", ErrLineTooLong}}},
		{"short partial under limit", "abcd", 5, []lineResult{{"", io.ErrUnexpectedEOF}}},
		{"partial at limit", "abcde", 5, []lineResult{{"", ErrLineTooLong}}},
		{"limit 1", "\nx\n", 1, []lineResult{{"", nil}, {"", ErrLineTooLong}, {"", io.EOF}}},
		{"limit 0", "\n", 0, []lineResult{{"", ErrLineTooLong}}},
	}
	for _, tt := range tests {
		for vname, mk := range readerVariants([]byte(tt.in)) {
			for _, size := range []int{16, 4096} {
				br := bufio.NewReaderSize(mk(), size)
				for i, want := range tt.want {
					line, err := ReadLine(br, tt.limit)
					if !errors.Is(err, want.err) || string(line) != want.line {
						t.Fatalf("%s/%s/size %d: line %d = %q, %v; want %q, %v", tt.name, vname, size, i, line, err, want.line, want.err)
					}
					if err == ErrLineTooLong {
						if _, err := DiscardLine(br); err != nil && err != io.ErrUnexpectedEOF {
							t.Fatalf("%s/%s: DiscardLine: %v", tt.name, vname, err)
						}
					}
				}
			}
		}
	}
}

func TestReadLineTooLongConsumesNothing(t *testing.T) {
	br := bufio.NewReader(strings.NewReader(strings.Repeat("a", 300) + "\r\nNEXT\r\n"))
	if _, err := ReadLine(br, MaxCommandLine); err != ErrLineTooLong {
		t.Fatalf("err = %v", err)
	}
	rest, _ := io.ReadAll(br)
	if want := strings.Repeat("a", 300) + "\r\nNEXT\r\n"; string(rest) != want {
		t.Fatalf("ReadLine consumed input: rest %d bytes", len(rest))
	}
}

func TestReadLineAliasValidUntilNextRead(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("first\r\nsecond\r\n"))
	l1, _ := ReadLine(br, 10)
	if string(l1) != "first" {
		t.Fatalf("got %q", l1)
	}
	saved := string(l1)
	l2, _ := ReadLine(br, 10)
	if saved != "first" || string(l2) != "second" {
		t.Fatalf("got %q %q", saved, l2)
	}
}

// A 1 MB line without newline: ReadLine must fail having read only about a
// buffer's worth, not the whole line.
func TestReadLineBoundedMemory(t *testing.T) {
	for _, tc := range []struct{ size, limit int }{{4096, MaxCommandLine}, {16, MaxStatusLine}, {4096, 10000}} {
		cr := &countReader{r: repeatReader('a', 1<<20, "\r\nNEXT\r\n")}
		br := bufio.NewReaderSize(cr, tc.size)
		if _, err := ReadLine(br, tc.limit); err != ErrLineTooLong {
			t.Fatalf("%+v: err = %v", tc, err)
		}
		if max := int64(tc.limit + br.Size()); cr.n > max {
			t.Fatalf("%+v: ReadLine read %d bytes from the source, want <= %d", tc, cr.n, max)
		}
		n, err := DiscardLine(br)
		if err != nil {
			t.Fatal(err)
		}
		consumed := int64(0)
		if tc.limit > tc.size {
			consumed = int64(tc.limit) // documented: up to limit bytes may be consumed
		}
		if n+consumed < 1<<20+2 || n > 1<<20+2 {
			t.Fatalf("%+v: DiscardLine skipped %d", tc, n)
		}
		line, err := ReadLine(br, tc.limit)
		if err != nil || string(line) != "NEXT" {
			t.Fatalf("%+v: after discard: %q %v", tc, line, err)
		}
	}
	// Memory: ReadLine on over-long lines allocates nothing.
	data := strings.Repeat("b", 5000) + "\n"
	allocs := testing.AllocsPerRun(100, func() {
		br := bufio.NewReaderSize(strings.NewReader(data), 4096)
		_, _ = ReadLine(br, MaxCommandLine)
	})
	if allocs > 3 { // reader construction only
		t.Fatalf("allocs = %v", allocs)
	}
}

func TestReadLineNoAllocs(t *testing.T) {
	data := []byte(strings.Repeat("RETR 1\r\n", 100))
	r := bytes.NewReader(data)
	br := bufio.NewReader(r)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(data)
		br.Reset(r)
		for {
			if _, err := ReadLine(br, MaxCommandLine); err != nil {
				break
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("allocs per 100 lines = %v", allocs)
	}
}

func TestDiscardLine(t *testing.T) {
	tests := []struct {
		in   string
		n    int64
		err  error
		rest string
	}{
		{"", 0, io.EOF, ""},
		{"abc\r\nrest", 5, nil, "rest"},
		{"\n", 1, nil, ""},
		{"abc", 3, io.ErrUnexpectedEOF, ""},
		{strings.Repeat("z", 10000) + "\nX", 10001, nil, "X"},
	}
	for _, tt := range tests {
		for vname, mk := range readerVariants([]byte(tt.in)) {
			br := bufio.NewReaderSize(mk(), 16)
			n, err := DiscardLine(br)
			rest, _ := io.ReadAll(br)
			if n != tt.n || err != tt.err || string(rest) != tt.rest {
				t.Errorf("%q/%s: got %d, %v, rest %q; want %d, %v, %q", tt.in, vname, n, err, rest, tt.n, tt.err, tt.rest)
			}
		}
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestReadLineReadError(t *testing.T) {
	boom := errors.New("boom")
	br := bufio.NewReader(io.MultiReader(strings.NewReader("ab"), errReader{boom}))
	if _, err := ReadLine(br, 10); err != boom {
		t.Fatalf("err = %v", err)
	}
	br = bufio.NewReaderSize(io.MultiReader(strings.NewReader("ab"), errReader{boom}), 16)
	if _, err := ReadLine(br, 100); err != boom {
		t.Fatalf("long path err = %v", err)
	}
}
