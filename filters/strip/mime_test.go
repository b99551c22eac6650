package strip

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func parseString(t *testing.T, s string) (*mimePart, []byte) {
	t.Helper()
	b := []byte(s)
	return mustParse(t, b), b
}

func rng(b []byte, from, to int64) string { return string(b[from:to]) }

func TestParseRanges(t *testing.T) {
	msg := "Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\n\r\ntwo\r\n\r\n--b--\r\nepilogue\r\n"
	root, b := parseString(t, msg)
	if root.Kind != kindMultipart || root.Boundary != "b" || len(root.Children) != 2 || root.Unterminated {
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
		if c.ContentType != "message/rfc822" || c.Kind != kindMessage || len(c.Children) != 1 {
			t.Errorf("%+v", c)
		}
	})
	t.Run("encoded message is a leaf", func(t *testing.T) {
		root, _ := parseString(t, "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogeA0KDQp4DQo=\r\n")
		if root.Kind != kindLeaf {
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

func TestParseWalkOrder(t *testing.T) {
	root := mustParse(t, readCorpus(t, "02_mixed_double_ext.eml"))
	var idx []int
	root.Walk(func(p *mimePart) bool { idx = append(idx, p.Index); return true })
	if !slices.IsSorted(idx) || len(idx) != 6 {
		t.Errorf("walk order %v", idx)
	}
}

func TestParseReadError(t *testing.T) {
	msg := []byte("Subject: x\r\n\r\nbody")
	_, err := parseMIME(bytes.NewReader(msg), int64(len(msg))+10, Limits{})
	if err != nil {
		t.Logf("short reader: %v", err)
	}
	_, err = parseMIME(errReaderAt{}, 100, Limits{})
	if !errors.Is(err, errBoom) {
		t.Errorf("err %v", err)
	}
}

var errBoom = errors.New("boom")

type errReaderAt struct{}

func (errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, errBoom }

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

func TestNormalizeName(t *testing.T) {
	for _, tc := range []struct {
		in, norm string
		sus      bool
	}{
		{"Invoice.PDF.exe", "invoice.pdf.exe", false},
		{"invoice\u202Efdp.exe", "invoicefdp.exe", true},
		{"photo\u200b.jpg\u2066.scr", "photo.jpg.scr", true},
		{"report.exe. . ", "report.exe", false},
		{"report.exe\u00a0", "report.exe", false},
		{"C:\\Users\\x\\evil.exe", "evil.exe", false},
		{"../../etc/evil.js", "evil.js", false},
		{"a\x00b\r\n.exe", "ab.exe", false},
		{"\xff\xfe.exe", "\ufffd\ufffd.exe", false},
		{"ÜBER.EXE", "über.exe", false},
		{"invoice.pdf\u2028.exe", "invoice.pdf.exe", true},
		{"a\u3164.exe", "a.exe", true},
		{"=?utf-8?q?x?=\u0085.exe", "=?utf-8?q?x?=.exe", false},
	} {
		n, s := normalizeName(tc.in)
		if n != tc.norm || s != tc.sus {
			t.Errorf("%q: %q %v, want %q %v", tc.in, n, s, tc.norm, tc.sus)
		}
	}
	if got := displayName("invoice\u202Efdp.exe\r\n"); got != "invoice<U+202E>fdp.exe<U+000D><U+000A>" {
		t.Errorf("displayName %q", got)
	}
	if got := displayName(strings.Repeat("\u202e", 100)); len(got) > 200 || !strings.HasSuffix(got, ">…") {
		t.Errorf("displayName of 100 overrides: %d bytes %q", len(got), got)
	}
}

func TestDecoders(t *testing.T) {
	for _, tc := range []struct{ enc, in, want string }{
		{"base64", "SGVs\r\nbG8g\r\nd29y bGQ=\r\n", "Hello world"},
		{"base64", "SGVsbG8", "Hello"},          // no padding
		{"base64", "SG!Vs*bG8=", "Hello"},       // junk skipped
		{"base64", "SGk=SGk=", "HiHi"},          // padding mid-stream
		{"base64", "SGVsbG8_LT4-", "Hello?->>"}, // URL-safe alphabet
		{"quoted-printable", "caf=C3=A9 =\r\nok=\nx", "café okx"},
		{"quoted-printable", "a=ZZb=4", "a=ZZb=4"}, // malformed passes through
		{"quoted-printable", "soft=  \r\nbreak", "softbreak"},
		{"quoted-printable", strings.Repeat("q", 20000) + "=41", strings.Repeat("q", 20000) + "A"},
		{"7bit", "as is=41", "as is=41"},
	} {
		p := &mimePart{BodyStart: 0, BodyEnd: int64(len(tc.in)), Encoding: tc.enc}
		got, err := readAllSmall(contentReader(strings.NewReader(tc.in), p))
		if err != nil || got != tc.want {
			t.Errorf("%s %q: %q %v, want %q", tc.enc, tc.in, got, err, tc.want)
		}
	}
	// Byte-at-a-time readers exercise the decoders' carry-over.
	for _, tc := range []struct{ enc, in, want string }{
		{"quoted-printable", "a=\r\nb=3D=\nc=", "ab=c"},
		{"base64", "SGVsbG8gd29ybGQ=", "Hello world"},
	} {
		var d interface{ Read([]byte) (int, error) }
		if tc.enc == "base64" {
			d = &b64Reader{r: oneByte{strings.NewReader(tc.in)}}
		} else {
			d = &qpReader{r: oneByte{strings.NewReader(tc.in)}}
		}
		if got, err := readAllSmall(d); err != nil || got != tc.want {
			t.Errorf("one byte %s: %q %v", tc.enc, got, err)
		}
	}
}

type oneByte struct{ r *strings.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

func readAllSmall(r interface{ Read([]byte) (int, error) }) (string, error) {
	var b bytes.Buffer
	buf := make([]byte, 7)
	for {
		n, err := r.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			if err.Error() == "EOF" {
				return b.String(), nil
			}
			return b.String(), err
		}
	}
}

// The bulk path of the base64 decoder gives exactly what the lenient
// byte-by-byte path gives, on clean and messy input, whatever the reads.
func TestB64FastPathMatchesSlow(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	junk := []string{"\r\n", "\n", " ", "=", "==", "-", "_", "!", "\t", "\r"}
	for i := range 300 {
		raw := make([]byte, rng.IntN(20000))
		for k := range raw {
			raw[k] = byte(rng.Uint32())
		}
		enc := base64.StdEncoding.EncodeToString(raw)
		var b strings.Builder
		for len(enc) > 0 {
			n := min(len(enc), 1+rng.IntN(100))
			b.WriteString(enc[:n])
			enc = enc[n:]
			if i%3 != 0 && rng.IntN(4) == 0 { // messy input for two thirds
				b.WriteString(junk[rng.IntN(len(junk))])
			} else {
				b.WriteString("\r\n")
			}
		}
		in := b.String()
		decode := func(slow bool) []byte {
			d := &b64Reader{r: iotest.HalfReader(strings.NewReader(in)), slowOnly: slow}
			out, err := io.ReadAll(d)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		fast, slow := decode(false), decode(true)
		if !bytes.Equal(fast, slow) {
			t.Fatalf("case %d: the bulk path gives %d bytes, the lenient path %d", i, len(fast), len(slow))
		}
		if i%3 == 0 && !bytes.Equal(fast, raw) {
			t.Fatalf("case %d: clean base64 did not decode to its input", i)
		}
	}
}
