package pop3

import (
	"reflect"
	"testing"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string
		want Command
		err  error
	}{
		{"QUIT", Command{Name: "QUIT"}, nil},
		{"quit", Command{Name: "QUIT"}, nil},
		{"QUIT\r\n", Command{Name: "QUIT"}, nil},
		{"LIST 1", Command{Name: "LIST", Args: []string{"1"}, Rest: "1"}, nil},
		{"top 1 10", Command{Name: "TOP", Args: []string{"1", "10"}, Rest: "1 10"}, nil},
		{"PASS my secret  pw", Command{Name: "PASS", Args: []string{"my", "secret", "", "pw"}, Rest: "my secret  pw"}, nil},
		{"PASS ", Command{Name: "PASS"}, nil},
		{"PASS  x", Command{Name: "PASS", Args: []string{"", "x"}, Rest: " x"}, nil},
		{"PASS pä\tss", Command{Name: "PASS", Args: []string{"pä\tss"}, Rest: "pä\tss"}, nil},
		{"AUTH PLAIN AGJvYgBwdw==", Command{Name: "AUTH", Args: []string{"PLAIN", "AGJvYgBwdw=="}, Rest: "PLAIN AGJvYgBwdw=="}, nil},
		{"XTENDEDCOMMAND1 a", Command{Name: "XTENDEDCOMMAND1", Args: []string{"a"}, Rest: "a"}, nil},
		{"X", Command{Name: "X"}, nil},
		{"", Command{}, ErrEmptyCommand},
		{"\r\n", Command{}, ErrEmptyCommand},
		{" QUIT", Command{}, ErrBadCommand},
		{" ", Command{}, ErrBadCommand},
		{"XTENDEDCOMMAND12", Command{}, ErrBadCommand},
		{"US-ER bob", Command{}, ErrBadCommand},
		{"USER\tbob", Command{}, ErrBadCommand},
		{"ÜSER bob", Command{}, ErrBadCommand},
		{"USER bob\x00", Command{}, ErrGarbage},
		{"\x00", Command{}, ErrGarbage},
		{"USER b\rob", Command{}, ErrGarbage},
		{"USER b\x7f", Command{}, ErrGarbage},
		{"\x16\x03\x01\x02\x00", Command{}, ErrGarbage}, // a TLS ClientHello
		{"USER bob\r", Command{}, ErrGarbage},
	}
	for _, tt := range tests {
		got, err := ParseCommand([]byte(tt.in))
		if !reflect.DeepEqual(got, tt.want) || err != tt.err {
			t.Errorf("ParseCommand(%q) = %#v, %v; want %#v, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
}

func TestParseCommandAllocs(t *testing.T) {
	line := []byte("noop")
	if a := testing.AllocsPerRun(100, func() { _, _ = ParseCommand(line) }); a != 0 {
		t.Fatalf("allocs = %v", a)
	}
}

func TestRedacted(t *testing.T) {
	tests := []struct{ in, want string }{
		{"PASS secret", "PASS ***"},
		{"pass", "PASS ***"},
		{"AUTH PLAIN AGJvYgBwdw==", "AUTH PLAIN ***"},
		{"AUTH PLAIN", "AUTH PLAIN"},
		{"APOP bob c4c9334bac560ecc979e58001b3e22fb", "APOP bob ***"},
		{"USER bob", "USER bob"},
		{"RETR 1", "RETR 1"},
		{"STAT", "STAT"},
	}
	for _, tt := range tests {
		c, err := ParseCommand([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Redacted(); got != tt.want {
			t.Errorf("%q: Redacted = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// The command list is one: every command parses to itself without
// allocating, IsCommand knows exactly those, and Commands hands out a copy.
func TestCommands(t *testing.T) {
	cmds := Commands()
	if len(cmds) != 17 {
		t.Errorf("%d commands: %v", len(cmds), cmds)
	}
	for _, c := range cmds {
		got, err := ParseCommand([]byte(c + "\r\n"))
		if err != nil || got.Name != c || !IsCommand(c) {
			t.Errorf("%s: parsed %+v, %v; IsCommand %v", c, got, err, IsCommand(c))
		}
	}
	for _, c := range []string{"", "user", "XTND", "OTHER", "USERX"} {
		if IsCommand(c) {
			t.Errorf("IsCommand(%q)", c)
		}
	}
	cmds[0] = "CHANGED"
	if Commands()[0] == "CHANGED" || IsCommand("CHANGED") {
		t.Error("changing the slice Commands returned changed the list")
	}
}
