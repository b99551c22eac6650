package mailtext

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValidFieldName(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"Subject", true},
		{"X-Popgate-Warning", true},
		{"!#$%&'*+-.^_`|~", true},
		{"", false},
		{"X Spam", false},
		{"X:Spam", false},
		{"X-Spam\r\n", false},
		{"X-\x00", false},
		{"X-\x7f", false},
		{"Grüße", false},
	} {
		if got := ValidFieldName(tt.in); got != tt.want {
			t.Errorf("ValidFieldName(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if got := ValidFieldName([]byte(tt.in)); got != tt.want {
			t.Errorf("ValidFieldName([]byte(%q)) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestRules(t *testing.T) {
	control := []rune{0, '\t', '\n', '\r', 0x1b, 0x1f, 0x7f, 0x80, 0x85, 0x9b, 0x9f}
	invisible := []rune{0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069,
		0x200e, 0x200f, 0x061c, 0x200b, 0x200c, 0x200d, 0x2060, 0xfeff, 0x00ad, 0x2028, 0x2029,
		0x115f, 0x1160, 0x3164, 0xffa0, 0x180e, 0xe0041}
	visible := []rune{' ', 'a', '~', 0xa0, 0xe9, 0x05d0, 0x0627, 0x4e2d, 0xfffd, 0x1f600}
	for _, r := range control {
		if !IsControl(r) || IsInvisible(r) {
			t.Errorf("%U: IsControl %v, IsInvisible %v; want a control", r, IsControl(r), IsInvisible(r))
		}
	}
	for _, r := range invisible {
		if IsControl(r) || !IsInvisible(r) {
			t.Errorf("%U: IsControl %v, IsInvisible %v; want invisible", r, IsControl(r), IsInvisible(r))
		}
	}
	for _, r := range visible {
		if IsControl(r) || IsInvisible(r) {
			t.Errorf("%U: IsControl %v, IsInvisible %v; want neither", r, IsControl(r), IsInvisible(r))
		}
	}
}

// sanitizeCases are the inputs of the sanitiser tables, with what Text,
// HeaderText and Visible make of them (at max 40).
var sanitizeCases = []struct {
	name, in              string
	text, header, visible string
}{
	{"plain", "plain reason", "plain reason", "plain reason", "plain reason"},
	{"CRLF injection", "a\r\nX-Evil: 1\r\n\r\nbody", "a X-Evil: 1 body", "a X-Evil: 1 body",
		"a<U+000D><U+000A>X-Evil: 1<U+000D>…"},
	{"bare LF and CR", "a\nb\rc", "a b c", "a b c", "a<U+000A>b<U+000D>c"},
	{"C0 and DEL", "tab\tand\x00nul\x7fdel", "tab and nul del", "tab and nul del", "tab<U+0009>and<U+0000>nul<U+007F>del"},
	{"escape sequence", "\x1b[2Jcleared", "[2Jcleared", "[2Jcleared", "<U+001B>[2Jcleared"},
	{"C1 CSI", "a\u009b31mred", "a 31mred", "a 31mred", "a<U+009B>31mred"},
	{"NEL", "a\u0085b", "a b", "a b", "a<U+0085>b"},
	{"RLO", "invoice\u202Efdp.exe", "invoice fdp.exe", "invoice fdp.exe", "invoice<U+202E>fdp.exe"},
	{"isolates", "\u2066a\u2067b\u2068c\u2069", "a b c", "a b c", "<U+2066>a<U+2067>b<U+2068>c<U+2069>"},
	{"marks and zero width", "a\u200eb\u200fc\u061cd\u200be\ufefff", "a b c d e f", "a b c d e f",
		"a<U+200E>b<U+200F>c<U+061C>d<U+200B>e…"},
	{"marks, short", "a\u200eb\ufeffc", "a b c", "a b c", "a<U+200E>b<U+FEFF>c"},
	{"line separator", "a\u2028b\u2029c", "a b c", "a b c", "a<U+2028>b<U+2029>c"},
	{"invisible filler", "a\u3164b", "a b", "a b", "a<U+3164>b"},
	{"invalid UTF-8", "a\xffb\xc3", "a\ufffdb\ufffd", "a?b?", "a\ufffdb\ufffd"},
	{"overlong encoding of LF", "a\xc0\x8ab", "a\ufffd\ufffdb", "a??b", "a\ufffd\ufffdb"},
	{"non-ASCII", "Grüße, 中文", "Grüße, 中文", "Gr??e, ??", "Grüße, 中文"},
	{"white space runs", "  a \t\t b\u00a0\u3000c  \n", "a b c", "a b c", "  a <U+0009><U+0009> b\u00a0\u3000c  <U+000A>"},
	{"only controls", "\r\n\x00\u202e", "", "", "<U+000D><U+000A><U+0000><U+202E>"},
	{"long", strings.Repeat("x", 50), strings.Repeat("x", 37) + "…", strings.Repeat("x", 37) + "...", strings.Repeat("x", 37) + "…"},
	{"long with space at the cut", strings.Repeat("x", 36) + " yyyyyyyyyyyy", strings.Repeat("x", 36) + "…",
		strings.Repeat("x", 36) + "...", strings.Repeat("x", 36) + "…"},
	{"long non-ASCII", strings.Repeat("é", 30), strings.Repeat("é", 18) + "…", strings.Repeat("?", 30), strings.Repeat("é", 18) + "…"},
}

func TestSanitize(t *testing.T) {
	const max = 40
	for _, tt := range sanitizeCases {
		t.Run(tt.name, func(t *testing.T) {
			for _, f := range []struct {
				name string
				fn   func(string, int) string
				want string
			}{{"Text", Text, tt.text}, {"HeaderText", HeaderText, tt.header}, {"Visible", Visible, tt.visible}} {
				got := f.fn(tt.in, max)
				if got != f.want {
					t.Errorf("%s(%q, %d) = %q, want %q", f.name, tt.in, max, got, f.want)
				}
				checkSafe(t, f.name, tt.in, got, max)
			}
		})
	}
}

func TestSanitizeSmallMax(t *testing.T) {
	for _, max := range []int{-1, 0, 1, 2, 3, 4, 5} {
		for _, fn := range []func(string, int) string{Text, HeaderText, Visible} {
			got := fn("ééééé\u202e", max)
			checkSafe(t, "small", "ééééé", got, max)
		}
	}
	if got := Text("abcdef", 3); got != "abc" {
		t.Errorf("Text cut to 3 = %q, want %q (no room for the mark)", got, "abc")
	}
	if got := HeaderText("abcdef", 5); got != "ab..." {
		t.Errorf("HeaderText cut to 5 = %q, want %q", got, "ab...")
	}
}

// checkSafe is the oracle of the sanitisers: valid UTF-8, no control or
// invisible character, at most max bytes; Text and HeaderText give one
// line without leading, trailing or doubled spaces, HeaderText printable
// ASCII; and each is idempotent.
func checkSafe(t *testing.T, name, in, got string, max int) {
	t.Helper()
	if !utf8.ValidString(got) {
		t.Errorf("%s(%q) = %q: not valid UTF-8", name, in, got)
	}
	if len(got) > max && !(max < 0 && got == "") {
		t.Errorf("%s(%q, %d) = %q: %d bytes", name, in, max, got, len(got))
	}
	for _, r := range got {
		if IsControl(r) || IsInvisible(r) {
			t.Errorf("%s(%q) = %q holds %U", name, in, got, r)
		}
	}
	switch name {
	case "Text", "HeaderText":
		if strings.HasPrefix(got, " ") || strings.HasSuffix(got, " ") || strings.Contains(got, "  ") {
			t.Errorf("%s(%q) = %q: stray spaces", name, in, got)
		}
	}
	if name == "HeaderText" {
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < ' ' || c > '~' {
				t.Errorf("HeaderText(%q) = %q: byte %#x is not printable ASCII", in, got, c)
			}
		}
	}
}

func TestDecodeWords(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"plain subject", "plain subject"},
		{"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Grüße"},
		{"=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"},
		{"=?windows-1252?q?=80uro?=", "€uro"},
		{"=?koi8-r?b?8NLJ18XU?=", "Привет"},
		{"=?utf-8?b?aW52b2ljZeKArmZkcC5leGU=?=", "invoice\u202efdp.exe"},
		{"=?utf-8?q?a=0D=0AX-Evil:_1?=", "a\r\nX-Evil: 1"},
		{"=?utf-8?q?nul=00esc=1B?=", "nul\x00esc\x1b"},
		{"=?utf-8?q?bad=FF?=", "bad\xff"},
		{"=?x-no-such-charset?q?abc?=", "=?x-no-such-charset?q?abc?="},
		{"=?utf-8?x?abc?=", "=?utf-8?x?abc?="},
		{"=?utf-8?q?broken", "=?utf-8?q?broken"},
	} {
		if got := DecodeWords(tt.in); got != tt.want {
			t.Errorf("DecodeWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// Encoded words that decode to controls and bidi characters come out
	// clean through Text and Visible.
	d := DecodeWords("=?utf-8?q?a=0D=0AX-Evil:_1=E2=80=AE=1B[2J?=")
	if got := Text(d, 100); got != "a X-Evil: 1 [2J" {
		t.Errorf("Text(decoded) = %q", got)
	}
	if got := Visible(d, 100); got != "a<U+000D><U+000A>X-Evil: 1<U+202E><U+001B>[2J" {
		t.Errorf("Visible(decoded) = %q", got)
	}
}

func TestParseAddressList(t *testing.T) {
	list, err := ParseAddressList(`=?utf-8?q?J=C3=BCrgen?= <j@example.org>, b@example.org`)
	if err != nil || len(list) != 2 || list[0].Name != "Jürgen" || list[0].Address != "j@example.org" || list[1].Address != "b@example.org" {
		t.Fatalf("ParseAddressList = %v, %v", list, err)
	}
}

func TestToUTF8(t *testing.T) {
	for _, tt := range []struct {
		cs, in, want string
	}{
		{"", "caf\xe9", "caf\xe9"},
		{"utf-8", "café", "café"},
		{"iso-8859-1", "caf\xe9", "café"},
		{"x-unknown", "caf\xe9", "caf\xe9"},
		{"utf-16", "plain", "plain"}, // ASCII is left as it is
	} {
		if got := ToUTF8(tt.cs, []byte(tt.in)); got != tt.want {
			t.Errorf("ToUTF8(%q, %q) = %q, want %q", tt.cs, tt.in, got, tt.want)
		}
	}
}

func TestEncodeWords(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"plain text", "plain text"},
		{"tab\tok", "tab\tok"},
		{"", ""},
		{"Grüße", "=?utf-8?b?R3LDvMOfZQ==?="},
		{"Café au lait", "=?utf-8?q?Caf=C3=A9_au_lait?="},
		{"a =?utf-8?q?x?= b", "=?utf-8?b?YSA9P3V0Zi04P3E/eD89IGI=?="},
	} {
		got := EncodeWords(tt.in)
		if got != tt.want {
			t.Errorf("EncodeWords(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if back := DecodeWords(got); back != tt.in {
			t.Errorf("DecodeWords(EncodeWords(%q)) = %q", tt.in, back)
		}
	}
	long := strings.Repeat("=?", 60)
	for w := range strings.FieldsSeq(EncodeWords(long)) {
		if len(w) > 75 {
			t.Errorf("encoded word of %d bytes: %q", len(w), w)
		}
	}
	if back := DecodeWords(EncodeWords(long)); back != long {
		t.Errorf("round trip of %q: %q", long, back)
	}
}

func TestReader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := NewReader(ctx, strings.NewReader("abcdef"))
	p := make([]byte, 3)
	if n, err := r.Read(p); n != 3 || err != nil {
		t.Fatalf("Read = %d, %v", n, err)
	}
	ra := NewReaderAt(ctx, strings.NewReader("abcdef"))
	if n, err := ra.ReadAt(p, 3); n != 3 || err != nil || string(p) != "def" {
		t.Fatalf("ReadAt = %d, %v, %q", n, err, p)
	}
	cancel()
	if _, err := r.Read(p); !errors.Is(err, context.Canceled) {
		t.Errorf("Read after cancel: %v", err)
	}
	if _, err := ra.ReadAt(p, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAt after cancel: %v", err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, context.Canceled) {
		t.Errorf("ReadAll after cancel: %v", err)
	}
}

// FuzzSanitize checks the sanitisers' oracle on any input, plain and
// through DecodeWords: valid UTF-8, no control or invisible characters,
// bounded length, one clean line, idempotence.
func FuzzSanitize(f *testing.F) {
	for _, tt := range sanitizeCases {
		f.Add(tt.in, 40)
	}
	f.Add("=?utf-8?q?a=0D=0AX-Evil:_1=E2=80=AE=1B[2J?=", 20)
	f.Add("=?utf-8?b?4oCu?= =?koi8-r?b?8NLJ18XU?=", 5)
	f.Fuzz(func(t *testing.T, s string, max int) {
		max %= 1000
		for _, in := range []string{s, DecodeWords(s)} {
			for _, fn := range []struct {
				name string
				fn   func(string, int) string
			}{{"Text", Text}, {"HeaderText", HeaderText}, {"Visible", Visible}} {
				got := fn.fn(in, max)
				checkSafe(t, fn.name, in, got, max)
				if again := fn.fn(got, max); again != got {
					t.Errorf("%s is not idempotent: %q -> %q -> %q", fn.name, in, got, again)
				}
			}
			if max > 0 {
				enc := EncodeWords(Text(in, max))
				if strings.ContainsAny(enc, "\r\n") {
					t.Errorf("EncodeWords(Text(%q)) = %q has a line break", in, enc)
				}
				if back := DecodeWords(enc); back != Text(in, max) {
					t.Errorf("EncodeWords(Text(%q)) = %q does not decode back: %q", in, enc, back)
				}
			}
		}
	})
}

func TestField(t *testing.T) {
	long := strings.Repeat("word ", 30)
	for _, tt := range []struct{ name, value, eol, want string }{
		{"X-A", "b", "\r\n", "X-A: b\r\n"},
		{"X-A", "", "\n", "X-A:\n"},
		{"X-A", "a\r\nBcc: x", "\r\n", "X-A: a  Bcc: x\r\n"},
		{"X-A", strings.Repeat("x", 100), "\r\n", "X-A: " + strings.Repeat("x", 100) + "\r\n"},
	} {
		if got := Field(tt.name, tt.value, tt.eol); got != tt.want {
			t.Errorf("Field(%q, %q) = %q, want %q", tt.name, tt.value, got, tt.want)
		}
	}
	got := Field("Subject", long, "\r\n")
	for line := range strings.SplitSeq(strings.TrimSuffix(got, "\r\n"), "\r\n") {
		if len(line) > FoldAt {
			t.Errorf("line of %d bytes: %q", len(line), line)
		}
	}
	if unfolded := strings.ReplaceAll(got, "\r\n", ""); unfolded != "Subject: "+long {
		t.Errorf("folding changed the value: %q", unfolded)
	}
}
