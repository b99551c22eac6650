package pop3

import (
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	tests := []struct {
		in   string
		want Status
		err  error
	}{
		{"+OK", Status{OK: true}, nil},
		{"+OK\r\n", Status{OK: true}, nil},
		{"+OK ", Status{OK: true}, nil},
		{"+OK 2 320", Status{OK: true, Text: "2 320"}, nil},
		{"+ok hello", Status{OK: true, Text: "hello"}, nil},
		{"+Ok  two spaces", Status{OK: true, Text: " two spaces"}, nil},
		{"-ERR", Status{}, nil},
		{"-err no such message", Status{Text: "no such message"}, nil},
		{"-ERR [SYS/TEMP] try later", Status{Code: "SYS/TEMP", Text: "try later"}, nil},
		{"-ERR [sys/perm] gone", Status{Code: "SYS/PERM", Text: "gone"}, nil},
		{"-ERR [IN-USE] locked", Status{Code: "IN-USE", Text: "locked"}, nil},
		{"-ERR [LOGIN-DELAY] wait", Status{Code: "LOGIN-DELAY", Text: "wait"}, nil},
		{"-ERR [AUTH] bad password", Status{Code: "AUTH", Text: "bad password"}, nil},
		{"-ERR [AUTH]", Status{Code: "AUTH"}, nil},
		{"-ERR [AUTH]x", Status{Code: "AUTH", Text: "x"}, nil},
		{"-ERR [AUTH]  x", Status{Code: "AUTH", Text: " x"}, nil},
		{"+OK [X-FOO/BAR-1] hi", Status{OK: true, Code: "X-FOO/BAR-1", Text: "hi"}, nil},
		{"-ERR [] empty", Status{Text: "[] empty"}, nil},
		{"-ERR [SYS/] bad", Status{Text: "[SYS/] bad"}, nil},
		{"-ERR [/X] bad", Status{Text: "[/X] bad"}, nil},
		{"-ERR [A B] bad", Status{Text: "[A B] bad"}, nil},
		{"-ERR [unclosed", Status{Text: "[unclosed"}, nil},
		{"-ERR  [AUTH] not a code", Status{Text: " [AUTH] not a code"}, nil},
		{"+OK\tx", Status{}, ErrBadStatus},
		{"+OKAY", Status{}, ErrBadStatus},
		{"-ERROR", Status{}, ErrBadStatus},
		{"+ ", Status{}, ErrBadStatus},
		{"+", Status{}, ErrBadStatus},
		{"", Status{}, ErrBadStatus},
		{"OK", Status{}, ErrBadStatus},
		{" +OK", Status{}, ErrBadStatus},
		{"* OK imap", Status{}, ErrBadStatus},
	}
	for _, tt := range tests {
		got, err := ParseStatus([]byte(tt.in))
		if got != tt.want || err != tt.err {
			t.Errorf("ParseStatus(%q) = %+v, %v; want %+v, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestIsContinuation(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"+ ", true},
		{"+", true},
		{"+\r\n", true},
		{"+ PDEyMzQ+", true},
		{"+OK", false},
		{"+OK ", false},
		{"-ERR", false},
		{"", false},
		{"+x", false},
	}
	for _, tt := range tests {
		if got := IsContinuation([]byte(tt.in)); got != tt.want {
			t.Errorf("IsContinuation(%q) = %v", tt.in, got)
		}
	}
}

func TestStatusLine(t *testing.T) {
	tests := []struct {
		s    Status
		want string
	}{
		{Status{OK: true}, "+OK"},
		{Status{OK: true, Text: "2 messages"}, "+OK 2 messages"},
		{Status{}, "-ERR"},
		{Status{Code: "SYS/TEMP", Text: "scanner down"}, "-ERR [SYS/TEMP] scanner down"},
		{Status{Code: "AUTH"}, "-ERR [AUTH]"},
		{Status{Text: "a\r\nb\x00c\td"}, "-ERR a  b c\td"},
		{Status{Code: "SYS/TEMP]\r\n+OK", Text: "x"}, "-ERR [SYS/TEMPOK] x"},
		{Status{Code: "\r\n", Text: "x"}, "-ERR x"},
	}
	for _, tt := range tests {
		if got := tt.s.Line(); got != tt.want {
			t.Errorf("%+v.Line() = %q, want %q", tt.s, got, tt.want)
		}
	}
}

func TestStatusLineTruncated(t *testing.T) {
	long := strings.Repeat("é", 400) // 800 bytes
	line := Status{Code: "SYS/TEMP", Text: long}.Line()
	if len(line)+2 > MaxStatusLine {
		t.Fatalf("len %d", len(line))
	}
	if !strings.HasPrefix(line, "-ERR [SYS/TEMP] éé") || strings.ContainsRune(line, '\uFFFD') || !strings.HasSuffix(line, "é") {
		t.Fatalf("bad truncation: %q", line[len(line)-10:])
	}
	for n := 500; n < 520; n++ {
		l := ErrLine("", strings.Repeat("x", n))
		if len(l) > MaxStatusLine || !strings.HasSuffix(l, "x\r\n") {
			t.Fatalf("n=%d: len %d", n, len(l))
		}
	}
}

func TestErrOKLine(t *testing.T) {
	tests := []struct{ got, want string }{
		{ErrLine("SYS/TEMP", "try again"), "-ERR [SYS/TEMP] try again\r\n"},
		{ErrLine("", "unknown command"), "-ERR unknown command\r\n"},
		{ErrLine("", ""), "-ERR\r\n"},
		{ErrLine("AUTH", "bad\r\n+OK injected"), "-ERR [AUTH] bad  +OK injected\r\n"},
		{OKLine("bye"), "+OK bye\r\n"},
		{OKLine(""), "+OK\r\n"},
		{OKLine("a\nb"), "+OK a b\r\n"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// A response code too long for a status line is dropped rather than
// overflowing MaxStatusLine (or, with text, cutting the text at a negative
// offset). Found by FuzzParseStatus.
func TestStatusLineLongCode(t *testing.T) {
	for _, n := range []int{490, 500, 505, 506, 507, 508, 510, 600, 5000} {
		for _, text := range []string{"", "x", strings.Repeat("y", 600)} {
			l := Status{Code: strings.Repeat("A", n), Text: text}.Line()
			if len(l)+2 > MaxStatusLine || !strings.HasPrefix(l, "-ERR") {
				t.Errorf("code of %d, text of %d: line of %d bytes: %.40q", n, len(text), len(l), l)
			}
		}
	}
}
