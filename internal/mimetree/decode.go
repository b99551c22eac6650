package mimetree

import (
	"bytes"
	"io"
	"sync"

	// Its AVX2 decoder is ten times the standard library's on this
	// machine: base64 was half of the strip chain's time on attachments.
	"github.com/segmentio/asm/base64"
)

// Content returns the decoded body of p, read from r (the message p was
// parsed from): base64 and quoted-printable are decoded; any other encoding
// is returned as it is. Decoding is lenient like a mail client's: base64
// ignores characters outside its alphabet and missing padding,
// quoted-printable passes malformed escapes through.
//
// A decoder's buffers are reused for the next part once it has returned
// an error (io.EOF included): a reader read to its end costs no garbage.
func (p *Part) Content(r io.ReaderAt) io.Reader {
	raw := io.NewSectionReader(r, p.BodyStart, p.BodyEnd-p.BodyStart)
	switch p.Encoding {
	case "base64":
		return &b64Reader{r: raw, b: b64Pool.Get().(*b64Bufs)}
	case "quoted-printable":
		return &qpReader{r: raw, b: qpPool.Get().(*qpBufs)}
	}
	return raw
}

// The decoders' buffers, by kind: every part a rule looks into is decoded,
// and tens of KiB per part would be most of a filter's garbage.
var (
	b64Pool = sync.Pool{New: func() any { return new(b64Bufs) }}
	qpPool  = sync.Pool{New: func() any { return new(qpBufs) }}
)

// qpReader decodes quoted-printable leniently: "=XX" is a byte, "=" before
// optional white space and a line break (or the end) is a soft line break,
// any other "=" is itself; everything else passes through. Lines may be of
// any length.
type qpReader struct {
	r    io.Reader
	b    *qpBufs // nil once the reader is done
	pend int
	out  []byte
	err  error
}

type qpBufs struct {
	in  [8192 + qpLookahead]byte
	buf [8192 + qpLookahead]byte
}

const qpLookahead = 80

func (q *qpReader) Read(p []byte) (int, error) {
	for len(q.out) == 0 {
		if q.err != nil {
			if q.b != nil {
				qpPool.Put(q.b)
				q.b = nil
			}
			return 0, q.err
		}
		n, err := q.r.Read(q.b.in[q.pend : q.pend+8192])
		data := q.b.in[:q.pend+n]
		q.pend = 0
		eof := err != nil
		o := q.b.buf[:0]
		// Runs without '=' are copied whole: most of a part is plain text.
		for i := 0; i < len(data); {
			k := bytes.IndexByte(data[i:], '=')
			if k < 0 {
				o = append(o, data[i:]...)
				break
			}
			o = append(o, data[i:i+k]...)
			i += k // at '='
			rest := data[i+1:]
			if len(rest) >= 2 {
				if h, ok := unhex(rest[0]); ok {
					if l, ok := unhex(rest[1]); ok {
						o = append(o, h<<4|l)
						i += 3
						continue
					}
				}
			}
			// A soft line break?
			j := 0
			for j < len(rest) && (rest[j] == ' ' || rest[j] == '\t') && j < qpLookahead-2 {
				j++
			}
			switch {
			case j < len(rest) && rest[j] == '\n':
				i += 1 + j + 1
				continue
			case j+1 < len(rest) && rest[j] == '\r' && rest[j+1] == '\n':
				i += 1 + j + 2
				continue
			case j == len(rest) && eof:
				i += 1 + j
				continue
			case (j == len(rest) || (j+1 == len(rest) && rest[j] == '\r') || len(rest) < 2) && !eof:
				// Undecided until more input comes: at most "=", the
				// longest white space and "\r", qpLookahead bytes.
				q.pend = copy(q.b.in[:], data[i:])
				i = len(data)
				continue
			}
			o = append(o, '=')
			i++
		}
		if err != nil {
			q.err = err
		}
		q.out = o
	}
	n := copy(p, q.out)
	q.out = q.out[n:]
	return n, nil
}

var b64Index = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = int8(i)
	}
	// The URL-safe alphabet too: some senders use it.
	t['-'] = 62
	t['_'] = 63
	return t
}()

// b64Reader decodes base64 the way mail clients do: characters outside the
// alphabet are skipped, '=' ends the current quantum (decoding resumes after
// it), and a truncated last quantum yields the bytes it holds.
type b64Reader struct {
	r    io.Reader
	b    *b64Bufs // nil once the reader is done
	out  []byte
	acc  uint32
	nacc int
	err  error
	// slowOnly turns the fast path off (tests compare the two).
	slowOnly bool
}

type b64Bufs struct {
	in   [8192]byte
	text [8192]byte // in without its line breaks
	buf  [6144 + 8]byte
}

func (d *b64Reader) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		if d.err != nil {
			if d.b != nil {
				b64Pool.Put(d.b)
				d.b = nil
			}
			return 0, d.err
		}
		n, err := d.r.Read(d.b.in[:])
		o := d.decode(d.b.buf[:0], d.b.in[:n])
		if err != nil {
			o = d.flush(o)
			d.err = err
		}
		d.out = o
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// decode appends the bytes encoded in in to o. Runs of clean base64 (the
// common case: 76-character lines) are decoded in bulk (a vectorized
// decoder that, as encoding/base64, refuses anything but clean base64);
// anything else, and the ends of runs, byte by byte.
func (d *b64Reader) decode(o, in []byte) []byte {
	if d.slowOnly {
		return d.slow(o, in)
	}
	text := d.b.text[:0]
	for len(in) > 0 { // a call per line: keep it lean
		line := in
		if i := bytes.IndexByte(in, '\n'); i >= 0 {
			line, in = in[:i], in[i+1:]
		} else {
			in = nil
		}
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		text = append(text, line...)
	}
	k := 0
	for d.nacc != 0 && k < len(text) { // finish a quantum begun earlier
		o = d.slow(o, text[k:k+1])
		k++
	}
	if m := (len(text) - k) / 4 * 4; m > 0 && d.nacc == 0 {
		if n, err := base64.StdEncoding.Decode(o[len(o):cap(o)], text[k:k+m]); err == nil {
			o, k = o[:len(o)+n], k+m
		}
	}
	return d.slow(o, text[k:])
}

// slow decodes in byte by byte, leniently.
func (d *b64Reader) slow(o, in []byte) []byte {
	for _, c := range in {
		v := b64Index[c]
		if v < 0 {
			if c == '=' {
				o = d.flush(o)
			}
			continue
		}
		d.acc = d.acc<<6 | uint32(v)
		d.nacc++
		if d.nacc == 4 {
			o = append(o, byte(d.acc>>16), byte(d.acc>>8), byte(d.acc))
			d.acc, d.nacc = 0, 0
		}
	}
	return o
}

// flush emits the bytes of a partial quantum.
func (d *b64Reader) flush(o []byte) []byte {
	switch d.nacc {
	case 2:
		o = append(o, byte(d.acc>>4))
	case 3:
		o = append(o, byte(d.acc>>10), byte(d.acc>>2))
	}
	d.acc, d.nacc = 0, 0
	return o
}

// unhex is the value of the hexadecimal digit c.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
