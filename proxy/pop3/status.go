package pop3

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// Extended response codes popgate knows by name (RFC 2449 §8, RFC 3206).
const (
	CodeInUse      = "IN-USE"
	CodeLoginDelay = "LOGIN-DELAY"
	CodeSysTemp    = "SYS/TEMP"
	CodeSysPerm    = "SYS/PERM"
	CodeAuth       = "AUTH"
)

// ErrBadStatus is returned by [ParseStatus] for a line that is not a
// "+OK" or "-ERR" status line.
var ErrBadStatus = errors.New("pop3: malformed status line")

// Status is a parsed response status line.
type Status struct {
	OK   bool   // "+OK" rather than "-ERR"
	Code string // extended response code without brackets, upper-cased, e.g. "SYS/TEMP"; "" if none
	Text string // the text after the indicator and code, with one leading space removed
}

// ParseStatus parses a status line ("+OK…" or "-ERR…"). A trailing LF or
// CRLF, if present, is ignored. The indicator is matched case-insensitively
// and must be followed by the end of the line or a space. An extended
// response code (RFC 2449 §8: "[" level *("/" level) "]", a level being
// letters, digits and "-") directly after that space is returned in Code,
// upper-cased, for "+OK" and "-ERR" alike; text that starts with "[" but is
// not a well-formed code stays in Text. Anything else, including a SASL
// continuation ("+ …", see [IsContinuation]), returns [ErrBadStatus].
func ParseStatus(line []byte) (Status, error) {
	line = trimEOL(line)
	var s Status
	var rest []byte
	switch {
	case hasPrefixFold(line, "+OK"):
		s.OK = true
		rest = line[3:]
	case hasPrefixFold(line, "-ERR"):
		rest = line[4:]
	default:
		return Status{}, ErrBadStatus
	}
	if len(rest) > 0 {
		if rest[0] != ' ' {
			return Status{}, ErrBadStatus
		}
		rest = rest[1:]
	}
	if n := respCodeLen(rest); n > 0 {
		s.Code = strings.ToUpper(string(rest[1 : n-1]))
		rest = rest[n:]
		if len(rest) > 0 && rest[0] == ' ' {
			rest = rest[1:]
		}
	}
	s.Text = string(rest)
	return s, nil
}

// respCodeLen returns the length of the response code in brackets at the
// start of b, or 0 if b does not start with a well-formed one.
func respCodeLen(b []byte) int {
	if len(b) < 3 || b[0] != '[' {
		return 0
	}
	level := 0 // length of the current level
	for i := 1; i < len(b); i++ {
		c := b[i]
		switch {
		case isAlnum(c) || c == '-':
			level++
		case c == '/' && level > 0:
			level = 0
		case c == ']' && level > 0:
			return i + 1
		default:
			return 0
		}
	}
	return 0
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(string(b[:len(prefix)]), prefix)
}

// IsContinuation reports whether line (without or with its CRLF) is a SASL
// continuation request: "+" alone or "+ " followed by anything
// (RFC 5034 §4).
func IsContinuation(line []byte) bool {
	line = trimEOL(line)
	return len(line) == 1 && line[0] == '+' || len(line) >= 2 && line[0] == '+' && line[1] == ' '
}

// Line formats s as a status line without CRLF: "+OK text" or
// "-ERR [CODE] text" (no brackets when Code is empty, no space when Text is
// empty). It is meant for popgate's own responses: control characters in
// Text (CR, LF, NUL…; TAB is kept) become spaces, characters that cannot be
// part of a response code are dropped from Code (a Code too long to fit is
// left out), and Text is shortened (at a UTF-8 boundary) so that the line
// with its CRLF fits [MaxStatusLine].
func (s Status) Line() string {
	var b strings.Builder
	if s.OK {
		b.WriteString("+OK")
	} else {
		b.WriteString("-ERR")
	}
	// A code that leaves no room for the space before the text is dropped:
	// the line must fit, and the text's cut below must not go negative.
	if code := cleanCode(s.Code); code != "" && b.Len()+len(" [")+len(code)+len("] ")+2 <= MaxStatusLine {
		b.WriteString(" [")
		b.WriteString(code)
		b.WriteByte(']')
	}
	if s.Text != "" {
		b.WriteByte(' ')
		text := s.Text
		if cut := MaxStatusLine - 2 - b.Len(); len(text) > cut {
			// Do not cut a UTF-8 sequence in the middle.
			for i := 1; i < utf8.UTFMax && cut > 0 && !utf8.RuneStart(text[cut]); i++ {
				cut--
			}
			text = text[:cut]
		}
		for i := 0; i < len(text); i++ {
			c := text[i]
			if c < ' ' && c != '\t' || c == 0x7f {
				c = ' '
			}
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cleanCode keeps the characters of a response code that RFC 2449 allows.
func cleanCode(code string) string {
	for i := 0; i < len(code); i++ {
		if c := code[i]; !isAlnum(c) && c != '-' && c != '/' {
			return strings.Map(func(r rune) rune {
				if r < 0x80 && (isAlnum(byte(r)) || r == '-' || r == '/') {
					return r
				}
				return -1
			}, code)
		}
	}
	return code
}

// ErrLine returns "-ERR [code] text\r\n" ("-ERR text\r\n" when code is
// empty), sanitised and bounded as by [Status.Line].
func ErrLine(code, text string) string {
	return Status{Code: code, Text: text}.Line() + "\r\n"
}

// OKLine returns "+OK text\r\n" ("+OK\r\n" when text is empty), sanitised
// and bounded as by [Status.Line].
func OKLine(text string) string {
	return Status{OK: true, Text: text}.Line() + "\r\n"
}
