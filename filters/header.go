package filters

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// PrependHeader returns a Body whose content is field followed by the content
// of body. field is one or more header field lines given without the final
// line break; PrependHeader ends every line with CRLF (the POP3 wire form),
// whatever line breaks field uses (CRLF, LF or CR). Empty lines are dropped,
// since an empty line would end the message's header section; when nothing
// remains, the content is body's unchanged. field is not otherwise checked:
// a caller that puts untrusted text in it must clean it first.
//
// Ownership: the returned Body wraps body and does not own it. Its Remove
// only marks the wrapper removed (Open then fails); it never removes body.
// Whoever owns body must keep it until the wrapper is no longer used, and
// remove it afterwards as usual. body must not be nil.
func PrependHeader(body Body, field string) Body {
	return &prefixBody{prefix: headerLines(field), body: body}
}

// headerLines normalises field to CRLF-terminated, non-empty lines.
func headerLines(field string) []byte {
	field = strings.ReplaceAll(field, "\r\n", "\n")
	field = strings.ReplaceAll(field, "\r", "\n")
	var b bytes.Buffer
	for line := range strings.SplitSeq(field, "\n") {
		if line == "" {
			continue
		}
		b.WriteString(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// prefixBody is the Body of PrependHeader.
type prefixBody struct {
	prefix []byte
	body   Body

	mu      sync.Mutex
	removed bool
}

func (p *prefixBody) Open() (io.ReadCloser, error) {
	p.mu.Lock()
	removed := p.removed
	p.mu.Unlock()
	if removed {
		return nil, fmt.Errorf("header wrapper: %w", errRemoved)
	}
	r, err := p.body.Open()
	if err != nil {
		return nil, err
	}
	return &prefixReader{Reader: io.MultiReader(bytes.NewReader(p.prefix), r), c: r}, nil
}

func (p *prefixBody) Size() int64 { return int64(len(p.prefix)) + p.body.Size() }

// Remove marks the wrapper removed; the wrapped Body is left alone.
func (p *prefixBody) Remove() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = true
	return nil
}

type prefixReader struct {
	io.Reader
	c io.Closer
}

func (r *prefixReader) Close() error { return r.c.Close() }

// DefaultErrorHeader is the header field the chain adds to a message it
// delivers unfiltered under PassWithTag, when Chain.ErrorHeader is "".
const DefaultErrorHeader = "X-Popgate-Warning"
