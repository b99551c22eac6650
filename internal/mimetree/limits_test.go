package mimetree

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// checkExceeds compares Exceeds on the tree of a default Parse with what
// Parse with lim itself returns: the same error, or none.
func checkExceeds(t *testing.T, msg []byte, lim Limits) {
	t.Helper()
	size := int64(len(msg))
	_, want := Parse(bytes.NewReader(msg), size, lim, nil)
	root, err := Parse(bytes.NewReader(msg), size, Limits{}, nil)
	if err != nil {
		return // beyond the defaults: Exceeds is not asked then
	}
	got := root.Exceeds(lim, bytes.NewReader(msg), size)
	var we, ge *LimitError
	if errors.As(want, &we) != errors.As(got, &ge) || (we != nil && *we != *ge) || (we == nil && got != nil) {
		t.Fatalf("limits %+v: Parse says %v, Exceeds says %v\n%q", lim, want, got, msg)
	}
}

// exceedsCases are messages near every cap: deep nesting, many parts,
// large headers ended by an empty line, by a delimiter and by the end of
// the input, with CRLF and LF line breaks and long lines.
func exceedsCases() [][]byte {
	var out [][]byte
	for _, nl := range []string{"\r\n", "\n"} {
		for _, hdr := range []int{0, 10, 1021, 1022, 1023, 1024, 1025, 1026, 3000, 70000} {
			pad := "X-Pad: " + strings.Repeat("a", max(hdr-9, 0)) + nl
			long := "X-Long: " + strings.Repeat("b", hdr) + nl + " folded" + nl
			out = append(out,
				[]byte(pad+"Subject: s"+nl+nl+"body"+nl),
				[]byte(pad+"Subject: s"),
				[]byte(pad+"Subject: s"+nl),
				[]byte("Content-Type: multipart/mixed; boundary=b"+nl+nl+"--b"+nl+pad+nl+"x"+nl+"--b"+nl+pad+"--b--"+nl),
				[]byte("Content-Type: multipart/mixed; boundary=b"+nl+nl+"--b"+nl+pad+"--b"+nl+long+nl+"--b--"+nl),
				[]byte("Content-Type: message/rfc822"+nl+nl+pad+long),
			)
		}
		var deep, many strings.Builder
		deep.WriteString("Subject: deep" + nl)
		for i := range 12 {
			fmt.Fprintf(&deep, "Content-Type: multipart/mixed; boundary=d%d%s%s--d%d%s", i, nl, nl, i, nl)
			if i%3 == 2 {
				deep.WriteString("Content-Type: message/rfc822" + nl + nl)
			}
		}
		many.WriteString("Content-Type: multipart/mixed; boundary=m" + nl + nl)
		for range 40 {
			many.WriteString("--m" + nl + "Content-Type: text/plain" + nl + nl + "p" + nl)
		}
		many.WriteString("--m--" + nl)
		out = append(out, []byte(deep.String()), []byte(many.String()))
	}
	if names, _ := filepath.Glob(filepath.Join("..", "..", "filters", "strip", "testdata", "corpus", "*.eml")); len(names) > 0 {
		for _, n := range names {
			if b, err := os.ReadFile(n); err == nil {
				out = append(out, b)
			}
		}
	}
	return out
}

func TestExceedsMatchesParse(t *testing.T) {
	for _, msg := range exceedsCases() {
		for _, depth := range []int{1, 3, 9, 50} {
			for _, parts := range []int{1, 2, 7, 39, 41, 10000} {
				for _, hdr := range []int{1, 2, 60, 1024, 1026, 4096, 65536, DefaultMaxHeaderBytes} {
					checkExceeds(t, msg, Limits{MaxDepth: depth, MaxParts: parts, MaxHeaderBytes: hdr})
				}
			}
		}
	}
}

func FuzzExceeds(f *testing.F) {
	for _, msg := range exceedsCases() {
		f.Add(msg, uint8(3), uint16(5), uint16(1024))
	}
	f.Fuzz(func(t *testing.T, msg []byte, depth uint8, parts, hdr uint16) {
		checkExceeds(t, msg, Limits{MaxDepth: int(depth%60) + 1, MaxParts: int(parts) + 1, MaxHeaderBytes: int(hdr) + 1})
	})
}
