package mimetree

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

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
		p := &Part{BodyStart: 0, BodyEnd: int64(len(tc.in)), Encoding: tc.enc}
		got, err := readAllSmall(p.Content(strings.NewReader(tc.in)))
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
			d = &b64Reader{r: oneByte{strings.NewReader(tc.in)}, b: new(b64Bufs)}
		} else {
			d = &qpReader{r: oneByte{strings.NewReader(tc.in)}, b: new(qpBufs)}
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
			d := &b64Reader{r: iotest.HalfReader(strings.NewReader(in)), b: new(b64Bufs), slowOnly: slow}
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

// A decoder read to its end gives its buffers back and keeps answering
// with its error, without touching them.
func TestDecoderDone(t *testing.T) {
	msg := []byte("Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9\r\n--b--\r\n")
	root, err := Parse(bytes.NewReader(msg), int64(len(msg)), Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"hello", "h\xc3\xa9"} {
		r := root.Children[i].Content(bytes.NewReader(msg))
		got, err := io.ReadAll(r)
		if err != nil || string(got) != want {
			t.Fatalf("part %d: %q, %v", i, got, err)
		}
		if n, err := r.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Fatalf("part %d: read after the end: %d, %v", i, n, err)
		}
		switch d := r.(type) {
		case *b64Reader:
			if d.b != nil {
				t.Errorf("part %d: buffers kept", i)
			}
		case *qpReader:
			if d.b != nil {
				t.Errorf("part %d: buffers kept", i)
			}
		}
	}
}

// qpToken is what quoted-printable gives meaning to: "=XX", or a soft
// line break ("=", at most 78 blanks, then a line break or the end).
var qpToken = regexp.MustCompile(`=(?:([0-9A-Fa-f]{2})|[ \t]{0,78}(?:\r\n|\n|$))`)

// qpWhole decodes all of data at once, by qpToken: the reference the
// streaming decoder must match however its input is cut.
func qpWhole(data []byte) []byte {
	return qpToken.ReplaceAllFunc(data, func(m []byte) []byte {
		if sub := qpToken.FindSubmatch(m); len(sub[1]) == 2 {
			v, _ := strconv.ParseUint(string(sub[1]), 16, 8)
			return []byte{byte(v)}
		}
		return nil
	})
}

// cutReader returns its data in pieces of pseudo-random sizes.
type cutReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), 1+c.rng.IntN(c.max))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func FuzzQuotedPrintable(f *testing.F) {
	for _, s := range []string{
		"caf=C3=A9 =\r\nok=\nx", "a=ZZb=4", "soft=  \r\nbreak", "=", "==41", "=\r", "a= \t \r\nb",
		"x=" + strings.Repeat(" ", 100) + "\r\ny", strings.Repeat("plain text line\r\n", 700) + "=3D=\r\n",
	} {
		f.Add([]byte(s), uint64(1), uint16(1))
		f.Add([]byte(s), uint64(7), uint16(9000))
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, maxCut uint16) {
		want := qpWhole(data)
		r := &qpReader{r: &cutReader{data: data, rng: rand.New(rand.NewPCG(seed, 1)), max: 1 + int(maxCut)}, b: new(qpBufs)}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%q in pieces of up to %d: %q %v, want %q", data, 1+int(maxCut), got, err, want)
		}
	})
}

// The bulk path (the vectorized decoder) gives what the lenient byte-by-
// byte path gives, on any input, however it is cut.
func FuzzBase64(f *testing.F) {
	clean := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("popgate \x00\xff"), 40))
	for _, s := range []string{
		"SGVsbG8gd29ybGQ=", "SGk=SGk=", "SG!Vs*bG8=", clean, clean[:100] + "\r\n" + clean[100:],
		clean[:37] + "=" + clean[37:], clean[:64] + "-_" + clean[64:],
	} {
		f.Add([]byte(s), uint64(1), uint16(9000))
		f.Add([]byte(s), uint64(3), uint16(5))
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, maxCut uint16) {
		decode := func(slow bool) []byte {
			d := &b64Reader{r: &cutReader{data: data, rng: rand.New(rand.NewPCG(seed, 2)), max: 1 + int(maxCut)}, b: new(b64Bufs), slowOnly: slow}
			out, err := io.ReadAll(d)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		if fast, slow := decode(false), decode(true); !bytes.Equal(fast, slow) {
			t.Fatalf("%q: the bulk path gives %q, the lenient path %q", data, fast, slow)
		}
	})
}
