package mailtext

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// IsControl reports the control characters (Unicode Cc): C0 (U+0000 to
// U+001F: NUL, TAB, LF, CR, ESC…), DEL (U+007F) and C1 (U+0080 to U+009F,
// CSI among them). Any of them can break a header or a log line, or drive a
// terminal.
func IsControl(r rune) bool { return unicode.IsControl(r) }

// IsInvisible reports the characters that change how text around them
// looks without being seen themselves: every format character (Unicode
// Cf: the bidi embeddings and overrides U+202A to U+202E, the isolates
// U+2066 to U+2069, the marks U+200E, U+200F and U+061C, the zero-width
// characters, U+FEFF, the soft hyphen…), the line and paragraph separators
// U+2028 and U+2029, and the invisible fillers that are letters in Unicode
// (U+115F, U+1160, U+3164, U+FFA0) or were once format characters
// (U+180E). "invoice\u202Efdp.exe" shows as "invoiceexe.pdf".
func IsInvisible(r rune) bool {
	switch r {
	case '\u2028', '\u2029', '\u115F', '\u1160', '\u3164', '\uFFA0', '\u180E':
		return true
	}
	return unicode.Is(unicode.Cf, r)
}

// unsafe is the one rule for characters that never reach a reader as they
// are.
func unsafe(r rune) bool { return IsControl(r) || IsInvisible(r) }

// Text makes untrusted text safe for what a recipient reads: a notice, or
// a header value (then encoded with [EncodeWords]). It returns one line of
// valid UTF-8 (invalid bytes become U+FFFD) in which every control and
// invisible character, and every run of white space, has become a single
// space, without leading or trailing spaces, at most max bytes long ("…"
// marks a cut). A hidden character becomes a space, not a mark: the reader
// is not to be misled, and need not see how.
func Text(s string, max int) string { return clean(s, max, false, "…") }

// HeaderText is [Text] for header fields that are written without
// encoding: every non-ASCII character also becomes '?', so the result is
// printable ASCII (at most max bytes, "..." marking a cut), safe in any
// unstructured header value as it is.
func HeaderText(s string, max int) string { return clean(s, max, true, "...") }

// Visible makes untrusted text safe for what an administrator reads (a log
// field, a terminal), and for a reason that names what was found in a
// message (strip's notices name the file they replace). It returns valid UTF-8 (invalid
// bytes become U+FFFD) in which every control and invisible character is
// written as <U+XXXX>, at most max bytes long ("…" marks a cut). Unlike
// [Text] it keeps the disguise in view: "invoice\u202Efdp.exe" reads
// "invoice<U+202E>fdp.exe", so whoever reads the log sees why a name was
// suspicious, and CR or LF cannot forge a line.
func Visible(s string, max int) string {
	mark := "…"
	room := max - len(mark) // for the characters before a cut's mark
	if room <= 0 {
		mark, room = "", max // no room for the mark: none
	}
	var b strings.Builder
	fit := 0 // the longest prefix, at a boundary, of at most room bytes
	for i := 0; i < len(s) && b.Len() <= max; {
		if b.Len() <= room {
			fit = b.Len()
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if unsafe(r) {
			hex := strings.ToUpper(strconv.FormatInt(int64(r), 16))
			b.WriteString("<U+")
			b.WriteString("0000"[min(4, len(hex)):])
			b.WriteString(hex)
			b.WriteByte('>')
			continue
		}
		b.WriteRune(r) // utf8.RuneError for an invalid byte: U+FFFD
	}
	if b.Len() <= max {
		return b.String()
	}
	return strings.TrimRight(b.String()[:fit], " ") + mark
}

// clean is Text and HeaderText.
func clean(s string, max int, ascii bool, mark string) string {
	var b strings.Builder
	space := false // a space is due before the next character
	for i := 0; i < len(s) && b.Len() <= max; {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		switch {
		case unsafe(r) || unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case ascii && r >= utf8.RuneSelf:
			r = '?'
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r) // utf8.RuneError for an invalid byte: U+FFFD
	}
	return cut(b.String(), max, mark)
}

// cut shortens s to at most max bytes at a rune boundary, ending it in mark
// when it was cut (no mark when max leaves no room for it), without spaces
// before the mark.
func cut(s string, max int, mark string) string {
	if len(s) <= max {
		return s
	}
	if max <= len(mark) {
		mark = ""
	}
	n := max - len(mark)
	if n <= 0 {
		return ""
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.TrimRight(s[:n], " ") + mark
}
