package mimetree

import (
	"bytes"
	"fmt"
	"io"
)

// Exceeds tells what Parse with the limits lim would have returned for the
// message root was parsed from, when root came from a Parse with limits at
// least as wide (the defaults, say): the same *LimitError, Offset included,
// or nil when the message is within lim. So one parse serves every caller,
// each with its own tighter limits. r is the message of size bytes; it is
// read only around a header section larger than lim allows. Any other error
// is a failure to read r.
//
// Parse stops at the first cap it meets in reading order: a part beyond
// the depth or parts cap at the start of its header, a header section past
// its cap at the start of the line that goes beyond it. Parts in document
// order start in reading order, so the first part found wanting is that
// one.
func (root *Part) Exceeds(lim Limits, r io.ReaderAt, size int64) error {
	lim = lim.WithDefaults()
	var err error
	root.Walk(func(p *Part) bool {
		if err != nil {
			return false
		}
		if p.Parent != nil {
			switch {
			case p.Depth > lim.MaxDepth:
				err = &LimitError{Limit: "depth", Max: lim.MaxDepth, Offset: p.HeaderStart}
				return false
			case p.Index >= lim.MaxParts:
				err = &LimitError{Limit: "parts", Max: lim.MaxParts, Offset: p.HeaderStart}
				return false
			}
		}
		err = headerWithin(p, lim.MaxHeaderBytes, r, size)
		return err == nil
	})
	return err
}

// headerWithin checks p's header section against the cap limit as Parse
// collects it: every line read before the empty line that ends it (or
// before the delimiter line or the end of input that cuts it short, whose
// preceding line break, the last one of the header, is not in
// [HeaderStart, HeaderEnd)).
func headerWithin(p *Part, limit int, r io.ReaderAt, size int64) error {
	n := p.HeaderEnd - p.HeaderStart
	if n <= int64(limit)-2 {
		return nil
	}
	if p.BodyStart == p.HeaderEnd && p.HeaderEnd < size && n <= int64(limit) {
		// Cut short: its last line break counts.
		var brk [2]byte
		k, err := r.ReadAt(brk[:], p.HeaderEnd)
		if err != nil && err != io.EOF {
			return fmt.Errorf("mime: %w", err)
		}
		switch {
		case k >= 1 && brk[0] == '\n':
			n++
		case k == 2 && brk[0] == '\r' && brk[1] == '\n':
			n += 2
		}
	}
	if n <= int64(limit) {
		return nil
	}
	// The line that holds the byte past the cap: it starts after the last
	// line break before that byte.
	end := p.HeaderStart + int64(limit)
	buf := make([]byte, 4096)
	for end > p.HeaderStart {
		from := max(p.HeaderStart, end-int64(len(buf)))
		chunk := buf[:end-from]
		if _, err := r.ReadAt(chunk, from); err != nil && err != io.EOF {
			return fmt.Errorf("mime: %w", err)
		}
		if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
			return &LimitError{Limit: "header", Max: limit, Offset: from + int64(i) + 1}
		}
		end = from
	}
	return &LimitError{Limit: "header", Max: limit, Offset: p.HeaderStart}
}
