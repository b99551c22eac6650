package pop3

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// decodeBytes decodes stream with the decoded or raw reader, fed in chunks
// of size 1..chunk, returning the output, the error and what stays in br.
func decodeBytes(stream []byte, raw bool, chunk byte, useRead bool) (out []byte, err error, rest []byte) {
	br := bufio.NewReaderSize(newChunkReader(stream, uint64(chunk), 1+int(chunk%32)), 16)
	d := NewDotReader(br)
	if raw {
		d = NewRawDotReader(br)
	}
	bufSize := 0
	if useRead {
		bufSize = 1 + int(chunk%7)
	}
	out, err = decodeAll(d, bufSize)
	rest, _ = io.ReadAll(br)
	return out, err, rest
}

func encodeBytes(t *testing.T, x []byte, chunk byte) []byte {
	var out bytes.Buffer
	w := NewDotWriter(&out)
	step := 1 + int(chunk%17)
	for len(x) > 0 {
		k := min(step, len(x))
		if n, err := w.Write(x[:k]); n != k || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		x = x[k:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// terminatorLines returns the offsets of the lines that are exactly ".\r\n".
func terminatorLines(b []byte) []int {
	var offs []int
	for i := 0; i < len(b); {
		if bytes.HasPrefix(b[i:], []byte(".\r\n")) {
			offs = append(offs, i)
		}
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		i += j + 1
	}
	return offs
}

func FuzzDotRoundTrip(f *testing.F) {
	for _, s := range []string{"", "a\r\n", ".\r\n", "..\r\n", "a\n.\n", ".", "x\r", "\r\n.\r\n.\r\n", "\x00.\n.a"} {
		f.Add([]byte(s), byte(0))
	}
	f.Fuzz(func(t *testing.T, x []byte, chunk byte) {
		enc := encodeBytes(t, x, chunk)
		if offs := terminatorLines(enc); len(offs) != 1 || offs[0] != len(enc)-3 {
			t.Fatalf("encode(%q) = %q: terminator lines at %v", x, enc, offs)
		}
		want := wantRoundTrip(x)
		for _, useRead := range []bool{false, true} {
			got, err, rest := decodeBytes(append(bytes.Clone(enc), "+OK"...), false, chunk, useRead)
			if err != nil || !bytes.Equal(got, want) || string(rest) != "+OK" {
				t.Fatalf("decode(encode(%q)) = %q, %v, rest %q; want %q", x, got, err, rest, want)
			}
			raw, err, _ := decodeBytes(enc, true, chunk, useRead)
			if err != nil || !bytes.Equal(raw, enc) {
				t.Fatalf("raw(encode(%q)) = %q, %v", x, raw, err)
			}
		}
	})
}

func FuzzDotDecode(f *testing.F) {
	for _, s := range []string{".\r\n", "a\r\n.\r\nrest", ".\n.\r\n", "..\r\n.\r\n", ".x\r\n", ".\r", "a\rb\r.\r\n", "\n.\r\n", ""} {
		f.Add([]byte(s), byte(3))
	}
	f.Fuzz(func(t *testing.T, stream []byte, chunk byte) {
		dec, errD, restD := decodeBytes(stream, false, chunk, chunk&0x80 != 0)
		raw, errR, restR := decodeBytes(stream, true, chunk, chunk&0x40 != 0)
		if errD != errR {
			t.Fatalf("decoded err %v, raw err %v", errD, errR)
		}
		switch errD {
		case nil:
			// raw (terminator included) + rest is exactly the stream.
			if got := append(bytes.Clone(raw), restR...); !bytes.Equal(got, stream) {
				t.Fatalf("raw %q + rest %q != stream %q", raw, restR, stream)
			}
			if !bytes.Equal(restD, restR) {
				t.Fatalf("rest differs: %q vs %q", restD, restR)
			}
			if offs := terminatorLines(raw); len(offs) != 1 || offs[0] != len(raw)-3 {
				t.Fatalf("raw output does not end with its terminator line: %q", raw)
			}
			// The relayed response decodes identically.
			again, err, rest := decodeBytes(raw, false, chunk+1, false)
			if err != nil || !bytes.Equal(again, dec) || len(rest) != 0 {
				t.Fatalf("re-decode of raw = %q, %v; want %q", again, err, dec)
			}
			// Re-encoding the decoded data is accepted with the same result
			// (dec ends with LF or is empty, so it comes back unchanged).
			enc := encodeBytes(t, dec, chunk)
			again, err, _ = decodeBytes(enc, false, chunk+2, true)
			if err != nil || !bytes.Equal(again, dec) {
				t.Fatalf("decode(encode(%q)) = %q, %v", dec, again, err)
			}
		case io.ErrUnexpectedEOF:
			if !bytes.HasPrefix(stream, raw) {
				t.Fatalf("raw output %q is not a prefix of the stream", raw)
			}
			if offs := terminatorLines(raw); len(offs) != 0 {
				t.Fatalf("raw output %q holds a terminator", raw)
			}
			enc := encodeBytes(t, dec, chunk)
			again, err, _ := decodeBytes(enc, false, chunk, false)
			if err != nil || !bytes.Equal(again, wantRoundTrip(dec)) {
				t.Fatalf("decode(encode(%q)) = %q, %v", dec, again, err)
			}
		default:
			t.Fatalf("unexpected error %v", errD)
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"USER bob", "PASS a b", "top 1 2", "", " ", "X\x00", "AUTH PLAIN =", "ÄÖ", "QUIT\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := ParseCommand(line)
		if err != nil {
			if c.Name != "" || c.Args != nil || c.Rest != "" {
				t.Fatalf("error %v with non-zero command %#v", err, c)
			}
			return
		}
		if len(c.Name) < 1 || len(c.Name) > MaxKeyword {
			t.Fatalf("name %q", c.Name)
		}
		for i := 0; i < len(c.Name); i++ {
			if ch := c.Name[i]; !('A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9') {
				t.Fatalf("name %q", c.Name)
			}
		}
		l := string(trimEOL(line))
		if !strings.EqualFold(l[:len(c.Name)], c.Name) {
			t.Fatalf("name %q from %q", c.Name, l)
		}
		if len(l) > len(c.Name) && l[len(c.Name):] != " "+c.Rest {
			t.Fatalf("rest %q from %q", c.Rest, l)
		}
		if strings.Join(c.Args, " ") != c.Rest || (c.Rest == "") != (c.Args == nil) {
			t.Fatalf("args %q rest %q", c.Args, c.Rest)
		}
		for i := 0; i < len(l); i++ {
			if ch := l[i]; ch < ' ' && ch != '\t' || ch == 0x7f {
				t.Fatalf("control char accepted in %q", l)
			}
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range []string{"+OK", "-ERR [SYS/TEMP] x", "+ok 1 2", "-ERR [", "+ abc", "-ERR [A/B/C]", "+OK\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		s, err := ParseStatus(line)
		if err != nil {
			return
		}
		if IsContinuation(line) {
			t.Fatalf("%q is both a status and a continuation", line)
		}
		l := s.Line()
		if strings.ContainsAny(l, "\r\n") || len(l)+2 > MaxStatusLine {
			t.Fatalf("Line() = %q", l)
		}
		clean := true
		for i := 0; i < len(s.Text); i++ {
			if c := s.Text[i]; c < ' ' && c != '\t' || c == 0x7f {
				clean = false
			}
		}
		if clean && len(line) < 400 {
			s2, err := ParseStatus([]byte(l))
			if err != nil || s2 != s {
				t.Fatalf("ParseStatus(%q) = %+v; reparse of %q = %+v, %v", line, s, l, s2, err)
			}
		}
	})
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("USER bob\r\nPASS x\r\n"), byte(10), false)
	f.Add([]byte("a\nbb\ncccccccccccccccccccccccc\n"), byte(5), true)
	f.Add([]byte("abc"), byte(2), false)
	f.Fuzz(func(t *testing.T, data []byte, lim byte, small bool) {
		limit := int(lim)%300 + 1
		size := 4096
		if small {
			size = 16
		}
		br := bufio.NewReaderSize(newChunkReader(data, uint64(lim), 1+int(lim%13)), size)
		rest := data
		for range len(data) + 2 {
			line, err := ReadLine(br, limit)
			// Reference result.
			var want []byte
			var wantErr error
			i := bytes.IndexByte(rest, '\n')
			switch {
			case i >= 0 && i+1 <= limit:
				want = trimEOL(rest[:i+1])
			case i >= 0 || len(rest) >= limit:
				wantErr = ErrLineTooLong
			case len(rest) > 0:
				wantErr = io.ErrUnexpectedEOF
			default:
				wantErr = io.EOF
			}
			if err != wantErr || !bytes.Equal(line, want) {
				t.Fatalf("limit %d rest %q: got %q, %v; want %q, %v", limit, rest, line, err, want, wantErr)
			}
			switch err {
			case nil:
				rest = rest[i+1:]
			case ErrLineTooLong:
				n, derr := DiscardLine(br)
				if i >= 0 {
					if derr != nil {
						t.Fatalf("DiscardLine: %v", derr)
					}
					rest = rest[i+1:]
				} else if derr != io.ErrUnexpectedEOF {
					t.Fatalf("DiscardLine at end: %d, %v", n, derr)
				}
				if i < 0 {
					return
				}
			default:
				return
			}
		}
	})
}
