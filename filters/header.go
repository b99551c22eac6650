package filters

import (
	"bytes"
	"strings"
)

// PrependHeader returns a Body whose content is field followed by the content
// of body. field is one or more header field lines given without the final
// line break; PrependHeader ends every line with CRLF (the POP3 wire form),
// whatever line breaks field uses (CRLF, LF or CR). Empty lines are dropped,
// since an empty line would end the message's header section; when nothing
// remains, the content is body's unchanged. field is not otherwise checked:
// a caller that puts untrusted text in it must clean it first.
//
// It is SplicedBody(body, HeaderPieces(body, field)); a filter that returns
// it in a Replace can give those pieces as the Verdict's Edits.
//
// Ownership: the returned Body wraps body and does not own it. Its Remove
// only marks the wrapper removed (Open then fails); it never removes body.
// Whoever owns body must keep it until the wrapper is no longer used, and
// remove it afterwards as usual. body must not be nil.
func PrependHeader(body Body, field string) Body {
	return SplicedBody(body, HeaderPieces(body, field))
}

// HeaderPieces states the content of PrependHeader(body, field) as pieces
// of body: the normalised field lines (when there are any), then all of
// body.
func HeaderPieces(body Body, field string) []Piece {
	var ps []Piece
	if h := headerLines(field); len(h) > 0 {
		ps = append(ps, Piece{Data: h})
	}
	return AppendPiece(ps, Piece{Off: 0, Len: body.Size()})
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

// DefaultErrorHeader is the header field the chain adds to a message it
// delivers unfiltered under PassWithTag, when Chain.ErrorHeader is "".
const DefaultErrorHeader = "X-Popgate-Warning"
