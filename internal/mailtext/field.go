package mailtext

import "strings"

// ValidFieldName reports whether s is a header field name: one or more
// characters of RFC 5322 ftext, printable US-ASCII except ':'.
func ValidFieldName[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// FoldAt is the line length header fields popgate writes are folded at,
// where their words allow it (RFC 5322 §2.1.1's 78 characters).
const FoldAt = 78

// Field formats the header field "name: value" ending in eol ("\r\n", or
// "\n" to match a message that uses bare LF), folded before spaces so that
// lines stay within FoldAt bytes where the words allow it. CR and LF in
// value become spaces, as a last line of defence: a value must be clean
// already ([HeaderText], or [EncodeWords] of [Text]), and name valid.
func Field(name, value, eol string) string {
	value = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, value)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte(':')
	if value == "" {
		b.WriteString(eol)
		return b.String()
	}
	lineLen := b.Len()
	for i, w := range strings.Split(value, " ") {
		if i > 0 && w != "" && lineLen+1+len(w) > FoldAt && lineLen > len(name)+1 {
			b.WriteString(eol)
			lineLen = 0
		}
		b.WriteByte(' ')
		b.WriteString(w)
		lineLen += 1 + len(w)
	}
	b.WriteString(eol)
	return b.String()
}
