package tag

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxRestoreField bounds the X-Popgate-Original-Subject field Restore reads.
const maxRestoreField = 1 << 20

// ErrNoSubject is returned by Restore when a message starts with an
// X-Popgate-Original-Subject field but has no Subject field after it.
var ErrNoSubject = errors.New("tag: X-Popgate-Original-Subject without a Subject field after it")

// Restore undoes a subject rewrite. When src starts with an
// X-Popgate-Original-Subject field, as the filter writes it, Restore drops
// that field and puts its value, byte for byte, back as the value of the
// first Subject field; everything else is copied unchanged. The result is
// the original message with only the other fields the filter added in front
// of it. A message that does not start with the field is copied unchanged
// and restored is false. On error, dst may hold part of the message.
//
// Only the very first field counts: the filter's own is always first in
// what it returns, while a field of that name further down may come from the
// sender. So for every message the filter tags with KeepsOriginal,
// Restore(output) is the added fields followed by the input. Fields that
// later filters put in front (the chain's X-Popgate-Warning, a second tag
// filter) must be removed first.
func Restore(dst io.Writer, src io.Reader) (restored bool, err error) {
	lr := newLineReader(src)
	defer lr.release()
	name, _, ok := fieldName(lr.peekLine())
	if !ok || !strings.EqualFold(string(name), originalSubjectHeader) {
		_, err := io.Copy(dst, lr.br)
		return false, err
	}
	field := &boundedBuffer{max: maxRestoreField}
	if _, err := lr.next(field); err != nil {
		return false, err
	}
	if err := lr.skipField(field); err != nil {
		return false, err
	}
	if field.over {
		return false, fmt.Errorf("tag: %s field longer than %d bytes", originalSubjectHeader, maxRestoreField)
	}
	original := field.buf[bytes.IndexByte(field.buf, ':')+1:]
	for {
		if lr.continues() {
			if _, err := lr.next(dst); err != nil {
				return false, err
			}
			continue
		}
		name, colon, ok := fieldName(lr.peekLine())
		if !ok {
			return false, ErrNoSubject // a blank line, the end, or not a header line
		}
		if strings.EqualFold(string(name), "Subject") {
			if _, err := dst.Write(lr.peekLine()[:colon+1]); err != nil {
				return false, err
			}
			if _, err := lr.next(nil); err != nil {
				return false, err
			}
			if err := lr.skipField(nil); err != nil {
				return false, err
			}
			if _, err := dst.Write(original); err != nil {
				return false, err
			}
			_, err := io.Copy(dst, lr.br)
			return err == nil, err
		}
		if _, err := lr.next(dst); err != nil {
			return false, err
		}
	}
}
