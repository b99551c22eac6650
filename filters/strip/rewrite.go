package strip

import (
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// rewrite splices the message: every byte outside the parts of strips is
// kept as it is; each of those parts is replaced by a notice. strips are
// in document order and do not overlap (decide never matches inside a part
// it matched). It returns the new message, a filters.SplicedBody over body
// (the message, of size bytes, which r reads), and its pieces (the
// Verdict's Edits): nothing is copied.
func rewrite(body filters.Body, r io.ReaderAt, size int64, strips []match) (filters.Body, []filters.Piece, error) {
	pieces, err := splice(r, size, strips)
	if err != nil {
		return nil, nil, err
	}
	return filters.SplicedBody(body, pieces), pieces, nil
}

// splice states the stripped message as pieces of the original: the bytes
// outside the parts of strips as runs; each of those parts replaced by its
// notice (a literal), after the header fields of a message root but its
// Content-* ones (runs).
func splice(r io.ReaderAt, size int64, strips []match) ([]filters.Piece, error) {
	var pieces []filters.Piece
	var lit []byte // the literal being gathered
	keep := func(from, to int64) {
		if to <= from {
			return
		}
		if len(lit) > 0 {
			pieces, lit = append(pieces, filters.Piece{Data: lit}), nil
		}
		pieces = filters.AppendPiece(pieces, filters.Piece{Off: from, Len: to - from})
	}
	pos := int64(0)
	for i := range strips {
		m := &strips[i]
		p := m.Part
		if p.HeaderStart < pos {
			return nil, fmt.Errorf("strip: internal error: overlapping parts at byte %d", p.HeaderStart)
		}
		keep(pos, p.HeaderStart)
		nl := "\r\n"
		if p.LF {
			nl = "\n"
		}
		// A part that starts at the end of a delimiter line without a
		// line break (at the very end of the message) needs one first.
		if p.HeaderStart > 0 {
			var prev [1]byte
			if _, err := r.ReadAt(prev[:], p.HeaderStart-1); err != nil {
				return nil, err
			}
			if prev[0] != '\n' {
				lit = append(lit, nl...)
			}
		}
		if p.IsEntity() {
			// A message root: keep its header fields but the Content-*
			// ones, which describe what is gone.
			hdr := make([]byte, p.HeaderEnd-p.HeaderStart)
			if _, err := r.ReadAt(hdr, p.HeaderStart); err != nil && err != io.EOF {
				return nil, err
			}
			kept := keptFields(hdr)
			for _, k := range kept {
				keep(p.HeaderStart+int64(k[0]), p.HeaderStart+int64(k[1]))
			}
			if n := len(kept); n > 0 && hdr[kept[n-1][1]-1] != '\n' {
				lit = append(lit, nl...)
			}
		}
		// The notice ends with a line break at the end of the message, and
		// wherever the part did not end with one of its own: an empty part
		// ends right at the next delimiter line, which must stay a line.
		var next [1]byte
		needBreak := p.BodyEnd >= size
		if !needBreak {
			if _, err := r.ReadAt(next[:], p.BodyEnd); err != nil {
				return nil, err
			}
			needBreak = next[0] != '\r' && next[0] != '\n'
		}
		lit = append(lit, notice(m, nl, needBreak)...)
		pos = p.BodyEnd
	}
	keep(pos, size)
	if len(lit) > 0 {
		pieces = append(pieces, filters.Piece{Data: lit})
	}
	return pieces, nil
}

// keptFields returns the ranges of the header section hdr without its
// Content-* fields (continuation lines included), in order, contiguous
// ones joined; what they cover stays byte for byte.
func keptFields(hdr []byte) [][2]int {
	var out [][2]int
	drop := false
	for i := 0; i < len(hdr); {
		end := len(hdr)
		if j := bytes.IndexByte(hdr[i:], '\n'); j >= 0 {
			end = i + j + 1
		}
		if hdr[i] != ' ' && hdr[i] != '\t' {
			drop = end-i >= 8 && bytes.EqualFold(hdr[i:i+8], []byte("content-"))
		}
		if !drop {
			if n := len(out); n > 0 && out[n-1][1] == i {
				out[n-1][1] = end
			} else {
				out = append(out, [2]int{i, end})
			}
		}
		i = end
	}
	return out
}

// notice is the entity that replaces a stripped part: header fields, an
// empty line, a short text naming the file and the reason. Its body ends
// with a line break only when brk is set (elsewhere the line break before
// the next boundary follows).
func notice(m *match, nl string, brk bool) []byte {
	name := displayName(m.Name)
	if name == "" {
		name = "(no name)"
	}
	reason := m.Why
	if m.Rule != "" {
		reason = "rule " + m.Rule + ": " + m.Why
	}
	lines := []string{
		"popgate removed an attachment from this message.",
		"",
		"File: " + name,
		"Type: " + displayName(m.Part.ContentType),
		"Reason: " + mailtext.Visible(reason, 900),
	}
	text := strings.Join(lines, "\n")
	cte := "7bit"
	var body []byte
	if isASCII([]byte(text)) {
		body = []byte(strings.ReplaceAll(text, "\n", nl))
	} else {
		cte = "quoted-printable"
		var b bytes.Buffer
		qw := quotedprintable.NewWriter(&b)
		_, _ = qw.Write([]byte(text)) // a bytes.Buffer does not fail
		_ = qw.Close()
		body = b.Bytes()
		// No line may look like a boundary delimiter ("--…"), whatever the
		// name holds and wherever the encoder wraps it.
		body = bytes.ReplaceAll(body, []byte("\r\n-"), []byte("\r\n=2D"))
		if nl == "\n" {
			body = bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
		}
	}
	var out bytes.Buffer
	out.WriteString("Content-Type: text/plain; charset=utf-8" + nl)
	out.WriteString("Content-Disposition: inline" + nl)
	out.WriteString("Content-Transfer-Encoding: " + cte + nl)
	out.WriteString(nl)
	out.Write(body)
	if brk {
		out.WriteString(nl)
	}
	return out.Bytes()
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
