package pop3

import (
	"errors"
	"slices"
	"strings"
)

// MaxKeyword is the longest command keyword [ParseCommand] accepts. RFC 1939
// keywords are 3 or 4 characters; extensions may be longer.
const MaxKeyword = 15

// Errors returned by [ParseCommand]. Their texts are fit to be sent to the
// client after "-ERR ".
var (
	ErrEmptyCommand = errors.New("pop3: empty command line")
	ErrBadCommand   = errors.New("pop3: malformed command keyword")
	ErrGarbage      = errors.New("pop3: garbage (control characters) in command line")
)

// Command is a parsed command line.
type Command struct {
	Name string   // the keyword, upper-cased
	Args []string // Rest split on single spaces (empty strings kept); nil when Rest is empty
	Rest string   // everything after the keyword and one space, verbatim (PASS passwords may contain spaces)
}

// ParseCommand parses a command line, normally as returned by [ReadLine]
// (a trailing LF or CRLF, if present, is ignored).
//
// The keyword is 1 to [MaxKeyword] ASCII letters or digits and ends at the
// first space or at the end of the line. An empty line returns
// [ErrEmptyCommand]; a control character other than TAB anywhere in the
// line (NUL, CR, DEL…) returns [ErrGarbage]; a bad keyword (empty, too
// long, or with any other character, e.g. a leading space) returns
// [ErrBadCommand]. Arguments may hold any other byte, non-ASCII included.
func ParseCommand(line []byte) (Command, error) {
	line = trimEOL(line)
	if len(line) == 0 {
		return Command{}, ErrEmptyCommand
	}
	kw := -1 // end of the keyword
	for i, c := range line {
		if c < ' ' && c != '\t' || c == 0x7f {
			return Command{}, ErrGarbage
		}
		if c == ' ' && kw < 0 {
			kw = i
		}
	}
	if kw < 0 {
		kw = len(line)
	}
	if kw == 0 || kw > MaxKeyword {
		return Command{}, ErrBadCommand
	}
	for _, c := range line[:kw] {
		if !isAlnum(c) {
			return Command{}, ErrBadCommand
		}
	}
	cmd := Command{Name: upperASCII(line[:kw])}
	if kw < len(line) {
		cmd.Rest = string(line[kw+1:])
		if cmd.Rest != "" {
			cmd.Args = strings.Split(cmd.Rest, " ")
		}
	}
	return cmd, nil
}

// upperASCII upper-cases an ASCII keyword, returning a constant string for
// the known commands so that parsing them does not allocate.
func upperASCII(b []byte) string {
	var buf [MaxKeyword]byte
	n := copy(buf[:], b)
	for i := range n {
		if c := buf[i]; 'a' <= c && c <= 'z' {
			buf[i] = c - ('a' - 'A')
		}
	}
	u := buf[:n]
	for _, k := range commands {
		if string(u) == k {
			return k
		}
	}
	return string(u)
}

// commands are the POP3 commands popgate knows: RFC 1939's, CAPA (RFC
// 2449), STLS (RFC 2595), AUTH (RFC 5034), UTF8 and LANG (RFC 6856). This
// is the one list: [ParseCommand] returns them as constant strings, and
// the proxy counts them under their own name (see [Commands]).
var commands = [...]string{
	"USER", "PASS", "APOP", "AUTH", "STLS", "CAPA", "QUIT",
	"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "UTF8", "LANG",
}

// Commands returns the POP3 commands popgate knows, upper-case, in a new
// slice the caller may keep or change.
func Commands() []string { return slices.Clone(commands[:]) }

// IsCommand reports whether name, upper-case as in [Command].Name, is one
// of [Commands].
func IsCommand(name string) bool { return slices.Contains(commands[:], name) }

// Redacted returns the command for logging, without secrets: PASS and the
// AUTH initial response are replaced by "***", the APOP digest too.
func (c Command) Redacted() string {
	switch c.Name {
	case "PASS":
		return "PASS ***"
	case "AUTH":
		if len(c.Args) > 1 {
			return "AUTH " + c.Args[0] + " ***"
		}
	case "APOP":
		if len(c.Args) > 0 {
			return "APOP " + c.Args[0] + " ***"
		}
	}
	if c.Rest == "" {
		return c.Name
	}
	return c.Name + " " + c.Rest
}
