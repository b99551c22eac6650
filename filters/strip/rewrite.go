package strip

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/quotedprintable"
	"strings"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// rewrite splices the message: every byte outside the parts of strips is
// copied as it is; each of those parts is replaced by a notice. strips are
// in document order and do not overlap (decide never matches inside a part
// it matched).
func (f *Filter) rewrite(ctx context.Context, r io.ReaderAt, size int64, strips []match) (filters.Body, error) {
	w := f.spool.NewWriter()
	ok := false
	defer func() {
		if !ok {
			w.Abort()
		}
	}()
	buf := make([]byte, 32<<10)
	copyRange := func(from, to int64) error {
		if to <= from {
			return nil
		}
		_, err := io.CopyBuffer(w, mailtext.NewReader(ctx, io.NewSectionReader(r, from, to-from)), buf)
		return err
	}
	pos := int64(0)
	for i := range strips {
		m := &strips[i]
		p := m.Part
		if p.HeaderStart < pos {
			return nil, fmt.Errorf("strip: internal error: overlapping parts at byte %d", p.HeaderStart)
		}
		if err := copyRange(pos, p.HeaderStart); err != nil {
			return nil, err
		}
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
				if _, err := io.WriteString(w, nl); err != nil {
					return nil, err
				}
			}
		}
		if p.IsEntity() {
			// A message root: keep its header fields but the Content-*
			// ones, which describe what is gone.
			hdr := make([]byte, p.HeaderEnd-p.HeaderStart)
			if _, err := r.ReadAt(hdr, p.HeaderStart); err != nil && err != io.EOF {
				return nil, err
			}
			kept := keepNonContentFields(hdr)
			if len(kept) > 0 && kept[len(kept)-1] != '\n' {
				kept = append(kept, nl...)
			}
			if _, err := w.Write(kept); err != nil {
				return nil, err
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
		if _, err := w.Write(notice(m, nl, needBreak)); err != nil {
			return nil, err
		}
		pos = p.BodyEnd
	}
	if err := copyRange(pos, size); err != nil {
		return nil, err
	}
	b, err := w.Finish()
	if err != nil {
		return nil, err
	}
	ok = true
	return b, nil
}

// keepNonContentFields returns the header section hdr without its Content-*
// fields (continuation lines included); the rest stays byte for byte.
func keepNonContentFields(hdr []byte) []byte {
	out := make([]byte, 0, len(hdr))
	drop := false
	for len(hdr) > 0 {
		i := bytes.IndexByte(hdr, '\n')
		var ln []byte
		if i < 0 {
			ln, hdr = hdr, nil
		} else {
			ln, hdr = hdr[:i+1], hdr[i+1:]
		}
		if ln[0] != ' ' && ln[0] != '\t' {
			drop = len(ln) >= 8 && asciiEqualFold(ln[:8], "content-")
		}
		if !drop {
			out = append(out, ln...)
		}
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
