package mimetree

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func parseString(t *testing.T, s string) (*Part, []byte) {
	t.Helper()
	b := []byte(s)
	root, err := Parse(bytes.NewReader(b), int64(len(b)), Limits{}, nil)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return root, b
}

func rng(b []byte, from, to int64) string { return string(b[from:to]) }

func TestParseRanges(t *testing.T) {
	msg := "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\n\r\ntwo\r\n\r\n--b--\r\nepilogue\r\n"
	root, b := parseString(t, msg)
	if root.Kind != Multipart || root.Boundary != "b" || len(root.Children) != 2 || root.Unterminated {
		t.Fatalf("root %+v", root)
	}
	if got := rng(b, root.HeaderStart, root.HeaderEnd); got != "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n" {
		t.Errorf("root header %q", got)
	}
	if root.BodyEnd != int64(len(b)) {
		t.Errorf("root body end %d", root.BodyEnd)
	}
	c0, c1 := root.Children[0], root.Children[1]
	if got := rng(b, c0.HeaderStart, c0.BodyEnd); got != "Content-Type: text/plain\r\n\r\none" {
		t.Errorf("part 0 %q", got)
	}
	if got := rng(b, c0.BodyStart, c0.BodyEnd); got != "one" {
		t.Errorf("part 0 body %q", got)
	}
	// Part 1 has an empty header; its body keeps its own trailing empty
	// line, not the line break before the delimiter.
	if c1.HeaderStart != c1.HeaderEnd || rng(b, c1.BodyStart, c1.BodyEnd) != "two\r\n" || c1.ContentType != "text/plain" {
		t.Errorf("part 1 %+v %q", c1, rng(b, c1.BodyStart, c1.BodyEnd))
	}
	if c0.Index != 1 || c1.Index != 2 || c0.Depth != 1 || c0.Parent != root {
		t.Errorf("index/depth %d %d %d", c0.Index, c1.Index, c0.Depth)
	}
}

func TestParseMessy(t *testing.T) {
	t.Run("lf-only", func(t *testing.T) {
		root, b := parseString(t, "Content-Type: multipart/mixed; boundary=\"x y\"\n\n--x y\nContent-Type: text/html\n\n<p>\n--x y--\n")
		if len(root.Children) != 1 || !root.LF || !root.Children[0].LF {
			t.Fatalf("%+v", root)
		}
		c := root.Children[0]
		if rng(b, c.BodyStart, c.BodyEnd) != "<p>" || c.ContentType != "text/html" {
			t.Errorf("%q %s", rng(b, c.BodyStart, c.BodyEnd), c.ContentType)
		}
	})
	t.Run("missing close delimiter", func(t *testing.T) {
		root, b := parseString(t, "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n\r\na\r\n--m\r\nContent-Type: application/pdf\r\n\r\nlast")
		if !root.Unterminated || len(root.Children) != 2 {
			t.Fatalf("%+v", root)
		}
		c := root.Children[1]
		if rng(b, c.BodyStart, c.BodyEnd) != "last" || c.BodyEnd != int64(len(b)) {
			t.Errorf("%q", rng(b, c.BodyStart, c.BodyEnd))
		}
	})
	t.Run("outer delimiter closes inner", func(t *testing.T) {
		root, b := parseString(t, "Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n--i\r\n\r\ninner\r\n--o\r\n\r\nsecond\r\n--o--\r\n")
		if len(root.Children) != 2 {
			t.Fatalf("%d children", len(root.Children))
		}
		in := root.Children[0]
		if !in.Unterminated || len(in.Children) != 1 || rng(b, in.Children[0].BodyStart, in.Children[0].BodyEnd) != "inner" {
			t.Errorf("inner %+v", in)
		}
		if rng(b, root.Children[1].BodyStart, root.Children[1].BodyEnd) != "second" {
			t.Errorf("second %q", rng(b, root.Children[1].BodyStart, root.Children[1].BodyEnd))
		}
	})
	t.Run("header cut by a delimiter", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: multipart/mixed; boundary=h\r\n\r\n--h\r\nContent-Type: application/x-msdownload; name=a.exe\r\n--h--\r\n")
		c := root.Children[0]
		if c.ContentType != "application/x-msdownload" || c.Filename != "a.exe" || c.BodyStart != c.BodyEnd {
			t.Errorf("%+v", c)
		}
	})
	t.Run("delimiter with trailing white space", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: multipart/mixed; boundary=w\r\n\r\n--w \t\r\n\r\na\r\n--w--  \r\n")
		if len(root.Children) != 1 || root.Unterminated {
			t.Errorf("%+v", root)
		}
	})
	t.Run("delimiter padded beyond the line buffer", func(t *testing.T) {
		pad := strings.Repeat(" ", 3*lineBufSize)
		root, _ := parseString(t, "Content-Type: multipart/mixed; boundary=p\r\n\r\n--p"+pad+"\r\n\r\na\r\n--p--"+pad+"\r\n")
		if len(root.Children) != 1 || root.Unterminated {
			t.Errorf("%+v", root)
		}
		root, _ = parseString(t, "Content-Type: multipart/mixed; boundary=p\r\n\r\n--p\r\n\r\n--p"+pad+"x\r\n")
		if len(root.Children) != 1 || !root.Unterminated {
			t.Errorf("padded non-delimiter: %+v", root)
		}
	})
	t.Run("boundary lines that are not", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: multipart/mixed; boundary=abc\r\n\r\n--abcd\r\n--ab\r\n--abc\r\n\r\n--abc--x\r\n---abc\r\n--abc--\r\n--abc\r\n")
		if len(root.Children) != 1 || root.Unterminated {
			t.Errorf("%d children, unterminated %v", len(root.Children), root.Unterminated)
		}
	})
	t.Run("boundary ending in dashes", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: multipart/mixed; boundary=\"d--\"\r\n\r\n--d--\r\n\r\na\r\n--d----\r\n")
		if len(root.Children) != 1 || root.Unterminated {
			t.Errorf("%d children, unterminated %v", len(root.Children), root.Unterminated)
		}
	})
	t.Run("digest default type", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: in\r\n\r\nx\r\n--d--\r\n")
		c := root.Children[0]
		if c.ContentType != "message/rfc822" || c.Kind != Message || len(c.Children) != 1 {
			t.Errorf("%+v", c)
		}
	})
	t.Run("encoded message is a leaf", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA0KDQp4DQo=\r\n")
		if root.Kind != Leaf {
			t.Errorf("%v", root.Kind)
		}
	})
	t.Run("no header end", func(t *testing.T) {
		root, b := parseString(t, "Subject: only a header\r\nContent-Type: text/plain")
		if root.HeaderEnd != int64(len(b)) || root.BodyStart != root.BodyEnd {
			t.Errorf("%+v", root)
		}
	})
	t.Run("empty", func(t *testing.T) {
		root, _ := parseString(t, "")
		if root.ContentType != "text/plain" || root.BodyEnd != 0 {
			t.Errorf("%+v", root)
		}
	})
	t.Run("duplicate fields", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: text/plain; name=a.txt\r\nContent-Type: application/octet-stream; name=b.exe\r\nContent-Disposition: inline\r\nContent-Disposition: attachment; filename=c.scr\r\n\r\nx")
		if root.ContentType != "text/plain" || root.ContentTypeFields != 2 || root.DispositionFields != 2 {
			t.Errorf("%+v", root)
		}
		if root.Filename != "c.scr" || !slices.Equal(root.Names, []string{"c.scr", "a.txt", "b.exe"}) {
			t.Errorf("names %q %q", root.Filename, root.Names)
		}
	})
	t.Run("folded and commented fields", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: (comment) Multipart/Mixed\r\n\t(more); BOUNDARY=\"q\"\r\nContent-Transfer-Encoding: 7BIT (plain)\r\n\r\n--q\r\n\r\nx\r\n--q--\r\n")
		if root.ContentType != "multipart/mixed" || root.Boundary != "q" || root.Encoding != "7bit" || len(root.Children) != 1 {
			t.Errorf("%+v", root)
		}
	})
	t.Run("CR split from LF at the line buffer edge", func(t *testing.T) {
		long := strings.Repeat("z", lineBufSize-1) + "\r" // the chunk ends with \r
		root, b := parseString(t, "Content-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\n\r\n"+long+"\n--c--\r\n")
		c := root.Children[0]
		if got := rng(b, c.BodyStart, c.BodyEnd); got != long[:len(long)-1] {
			t.Errorf("body of %d bytes, want %d", len(got), len(long)-1)
		}
	})
}

func TestParseReadError(t *testing.T) {
	msg := []byte("Subject: x\r\n\r\nbody")
	if _, err := Parse(bytes.NewReader(msg), int64(len(msg))+10, Limits{}, nil); err != nil {
		t.Logf("short reader: %v", err)
	}
	_, err := Parse(errReader{}, 100, Limits{}, nil)
	if !errors.Is(err, errBoom) {
		t.Errorf("err %v", err)
	}
}

var errBoom = errors.New("boom")

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errBoom }

func TestParams(t *testing.T) {
	for _, tc := range []struct {
		in, value string
		want      map[string]string
	}{
		{`text/plain; charset="utf-8"; format=flowed`, "text/plain", map[string]string{"charset": "utf-8", "format": "flowed"}},
		{`attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf`, "attachment", map[string]string{"filename": "€ rates.pdf"}},
		{`attachment; filename*=iso-8859-1'de'M%E4rz.exe`, "attachment", map[string]string{"filename": "März.exe"}},
		{`attachment; filename*0*=utf-8''a%20; filename*1=b; filename*2*=%2Eexe`, "attachment", map[string]string{"filename": "a b.exe"}},
		{`attachment; filename*1="b.exe"; filename*0="a"`, "attachment", map[string]string{"filename": "ab.exe"}},
		{`attachment; filename="=?utf-8?q?caf=C3=A9.exe?="`, "attachment", map[string]string{"filename": "café.exe"}},
		{`attachment; filename="=?windows-1252?B?RmFjdHVyZYAuZXhl?="`, "attachment", map[string]string{"filename": "Facture€.exe"}},
		{`attachment; filename=my file.exe`, "attachment", map[string]string{"filename": "my file.exe"}},
		{`attachment; filename="unterminated.exe`, "attachment", map[string]string{"filename": "unterminated.exe"}},
		{`attachment; filename="a\"b.exe"`, "attachment", map[string]string{"filename": `a"b.exe`}},
		{`attachment;;; FILENAME = "x.exe" ;`, "attachment", map[string]string{"filename": "x.exe"}},
		{`attachment; filename="a.txt"; filename*=utf-8''b.exe`, "attachment", map[string]string{"filename": "b.exe"}},
		{`attachment; filename*=shift_jis''%90%BF%8B%81%8F%91.exe`, "attachment", map[string]string{"filename": "請求書.exe"}},
		{`attachment; filename*=x-unknown''%FF.exe`, "attachment", map[string]string{"filename": "\xff.exe"}},
		{`inline`, "inline", nil},
		{``, "", nil},
	} {
		v, ps := parseParams(tc.in)
		if v != tc.value {
			t.Errorf("%s: value %q", tc.in, v)
		}
		for k, want := range tc.want {
			if got := ps.values[k]; got != want {
				t.Errorf("%s: %s = %q, want %q", tc.in, k, got, want)
			}
		}
	}
	// Every candidate name is kept.
	_, ps := parseParams(`attachment; filename="a.txt"; filename*=utf-8''b.exe; filename="c.scr"`)
	if got := ps.names("filename"); !slices.Equal(got, []string{"b.exe", "a.txt", "c.scr"}) {
		t.Errorf("names %q", got)
	}
}

// The hooks see every header section and the body lines of leaves only:
// not preambles, epilogues, delimiters or the empty line ending a header.
func TestHooks(t *testing.T) {
	msg := "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\ntwo\r\n--b\r\n\r\nthree\n--b--\r\nepi\r\n"
	var headers []string
	var lines []string
	hooks := &Hooks{
		Header: func(p *Part, raw []byte) {
			headers = append(headers, fmt.Sprintf("%d:%s:%q", p.Index, p.ContentType, raw))
		},
		Line: func(p *Part, line []byte) { lines = append(lines, fmt.Sprintf("%d:%s", p.Index, line)) },
	}
	if _, err := Parse(strings.NewReader(msg), int64(len(msg)), Limits{}, hooks); err != nil {
		t.Fatal(err)
	}
	wantH := []string{
		`0:multipart/mixed:"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"`,
		`1:text/plain:"Content-Type: text/plain\r\n\r\n"`,
		`2:text/plain:"\r\n"`,
	}
	if !slices.Equal(headers, wantH) {
		t.Errorf("headers\n%q\nwant\n%q", headers, wantH)
	}
	if want := []string{"1:one", "1:two", "2:three"}; !slices.Equal(lines, want) {
		t.Errorf("lines %q, want %q", lines, want)
	}
}

// describe renders a tree: every field Parse sets, children in order.
func describe(p *Part) string {
	var b strings.Builder
	var walk func(p *Part)
	walk = func(p *Part) {
		fmt.Fprintf(&b, "(%d %q %v %d-%d-%d-%d %q %q %v %v", p.Kind, p.ContentType, p.Names, p.HeaderStart, p.HeaderEnd, p.BodyStart, p.BodyEnd, p.Encoding, p.Boundary, p.Unterminated, p.LF)
		for _, c := range p.Children {
			walk(c)
		}
		b.WriteString(")")
	}
	walk(p)
	return b.String()
}

// Skipping the lines nobody wants (Hooks.Lines) gives the tree a parse
// line by line gives, whatever the input.
func checkSkipSame(t *testing.T, msg []byte) {
	parse := func(h *Hooks) string {
		root, err := Parse(bytes.NewReader(msg), int64(len(msg)), Limits{}, h)
		if err != nil {
			return "error: " + err.Error()
		}
		return describe(root)
	}
	every := parse(&Hooks{Line: func(*Part, []byte) {}})
	if skipped := parse(nil); skipped != every {
		t.Fatalf("skipping lines changes the tree:\n%s\nline by line:\n%s", skipped, every)
	}
}

func skipCases() [][]byte {
	out := exceedsCases()
	for _, nl := range []string{"\r\n", "\n"} {
		body := strings.Repeat("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVph"+nl, 3000) // beyond the line buffer
		for _, tail := range []string{"", "-", "--", "--b", "--b--", "- not a boundary" + nl, "--bb" + nl} {
			out = append(out, []byte("Content-Type: multipart/mixed; boundary=b"+nl+nl+"--b"+nl+"Content-Type: application/pdf"+nl+nl+
				body+"-dash"+nl+body+tail+nl+"--b"+nl+nl+"x"+nl+"--b--"+nl))
		}
		out = append(out, []byte("Subject: one part"+nl+nl+body+strings.Repeat("z", 70000)+nl+"--b"+nl))
	}
	return out
}

func TestParseSkipsLinesFaithfully(t *testing.T) {
	for i, msg := range skipCases() {
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkSkipSame(t, msg) })
	}
}

func FuzzParseSkip(f *testing.F) {
	for _, msg := range skipCases() {
		f.Add(msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) { checkSkipSame(t, msg) })
}

// The shortcuts of parseParams (a value with nothing to compact,
// parameters without RFC 2231 forms) give what the general paths give.
func FuzzParams(f *testing.F) {
	for _, s := range []string{
		`text/plain; charset="utf-8"; format=flowed`, `Application/PDF (a comment); name="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="`,
		`attachment; filename="a.txt"; filename*=utf-8''b.exe; filename="c.scr"`, `attachment; filename=a.exe; filename=a.exe; name=b`,
		"multipart/mixed;\r\n\tboundary=\"=_b\"", `inline; name*0="x"; name*1=".exe"`, " text / html ", "te\u00a0xt/plain",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		value, ps := parseParams(s)
		rawValue, raw := splitParams(s)
		if want := strings.ToLower(strings.Join(strings.Fields(stripComments(rawValue)), "")); value != want {
			t.Errorf("%q: value %q, want %q", s, value, want)
		}
		want := paramSet{}
		if len(raw) > 0 {
			want = extendedParams(raw)
		}
		if !reflect.DeepEqual(ps, want) {
			t.Errorf("%q: parameters %v, want %v", s, ps, want)
		}
	})
}

func FuzzIndexLineDash(f *testing.F) {
	for _, s := range []string{"", "-", "\n-", "a-b\n-c", "--\n\n-", "x\r\n--b\r\n", "abc\n", "-\n-"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, buf []byte) {
		if got, want := indexLineDash(buf), bytes.Index(buf, []byte("\n-")); got != want {
			t.Fatalf("%q: %d, want %d", buf, got, want)
		}
	})
}
