package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// tnefBuilder writes TNEF streams for the tests. The layout ([MS-OXTNEF]):
//
//	signature 0x223E9F78 (LE uint32), legacy key (uint16)
//	attributes: level (1 message, 2 attachment), attribute (LE uint32: id
//	in the low word, type in the high word), length (LE uint32), data,
//	checksum (LE uint16, the sum of the data bytes)
//
// An attachment is attAttachRendData followed by attAttachTitle,
// attAttachData and attAttachment (a MAPI property list: count, then per
// property its tag, for strings and binaries a value count, and each value
// as length and data padded to 4 bytes).
type tnefBuilder struct{ bytes.Buffer }

func newTNEF() *tnefBuilder {
	b := &tnefBuilder{}
	binary.Write(b, binary.LittleEndian, uint32(tnefSignature))
	binary.Write(b, binary.LittleEndian, uint16(0x0101))
	// attTnefVersion, as Outlook writes it first.
	b.attr(1, 0x00089006, []byte{0, 0, 1, 0})
	return b
}

func (b *tnefBuilder) attr(level byte, id uint32, data []byte) *tnefBuilder {
	b.WriteByte(level)
	binary.Write(b, binary.LittleEndian, id)
	binary.Write(b, binary.LittleEndian, uint32(len(data)))
	b.Write(data)
	var sum uint16
	for _, c := range data {
		sum += uint16(c)
	}
	binary.Write(b, binary.LittleEndian, sum)
	return b
}

// mapiProp is one property of an attAttachment list.
type mapiProp struct {
	tag   uint32 // id << 16 | type
	value []byte // for variable types: the one value; for fixed: the padded value
}

func mapiProps(props ...mapiProp) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(len(props)))
	for _, p := range props {
		binary.Write(&b, binary.LittleEndian, p.tag)
		switch uint16(p.tag) {
		case ptString8, ptUnicode, ptBinary, ptObject:
			binary.Write(&b, binary.LittleEndian, uint32(1))
			binary.Write(&b, binary.LittleEndian, uint32(len(p.value)))
			b.Write(p.value)
			b.Write(make([]byte, (4-len(p.value)%4)%4))
		default:
			b.Write(p.value)
		}
	}
	return b.Bytes()
}

func utf16le(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s + "\x00")) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

// attach adds an attachment with an 8.3 title, content and the given
// properties.
func (b *tnefBuilder) attach(title string, content []byte, props ...mapiProp) *tnefBuilder {
	b.attr(2, 0x00069002, make([]byte, 14))
	if title != "" {
		b.attr(2, 0x00018010, append([]byte(title), 0))
	}
	if content != nil {
		b.attr(2, 0x0006800F, content)
	}
	if props != nil {
		b.attr(2, 0x00069005, mapiProps(props...))
	}
	return b
}

func TestTNEFClamAV(t *testing.T) {
	b := archivetest.ClamFile(t, "clam.tnef")
	exe := archivetest.ClamFile(t, "clam.exe")
	f := formatNamed(t, "tnef")
	if !f.Sniff(b[:64], bytes.NewReader(b), int64(len(b)), "") || !f.Attachments {
		t.Fatal("clam.tnef not sniffed as an attachments format")
	}
	got, err := walkAll(t, f, b, "winmail.dat")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "clam.exe" || got[0].Content != string(exe) || got[0].Size != int64(len(exe)) {
		t.Fatalf("members %+v", got)
	}
}

func TestTNEFBuilt(t *testing.T) {
	exe := []byte("MZ\x90\x00 pretend executable")
	inner := newTNEF().attach("INNER~1.EXE", exe).Bytes()
	cp1251 := newTNEF().attr(1, 0x00069007, []byte{0xE3, 0x04, 0, 0, 0, 0, 0, 0}).
		attach("\xF1\xF7\xE5\xF2.exe", []byte("x")).Bytes() // "счет.exe" in windows-1251
	cases := []struct {
		name string
		in   []byte
		want []walked
		err  error
	}{
		{"long name over title", newTNEF().attach("INVOIC~1.EXE", exe,
			mapiProp{prAttachLongFilename<<16 | ptUnicode, utf16le("invoice 2024.pdf.exe")},
			mapiProp{0x3705<<16 | 3, []byte{1, 0, 0, 0}},
		).Bytes(), []walked{{Name: "invoice 2024.pdf.exe", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"two attachments", newTNEF().attach("A.TXT", []byte("a")).attach("B.EXE", []byte("bb")).Bytes(),
			[]walked{{Name: "A.TXT", Size: 1, Content: "a"}, {Name: "B.EXE", Size: 2, Content: "bb"}}, nil},
		{"data in PR_ATTACH_DATA_OBJ", newTNEF().attach("", nil,
			mapiProp{prAttachFilename<<16 | ptString8, []byte("EVIL.SCR\x00")},
			mapiProp{prAttachDataObj<<16 | ptBinary, exe},
		).Bytes(), []walked{{Name: "EVIL.SCR", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"attached message as nested TNEF", newTNEF().attach("", nil,
			mapiProp{prDisplayName<<16 | ptUnicode, utf16le("Fwd: invoice")},
			mapiProp{prAttachDataObj<<16 | ptObject, append(append([]byte{}, iidForTest...), inner...)},
		).Bytes(), []walked{{Name: "Fwd: invoice", Size: int64(len(inner)), Content: string(inner)}}, nil},
		{"named property skipped", newTNEF().attach("X.BIN", []byte("x"),
			mapiProp{0x8001<<16 | 3, append(append(make([]byte, 16), 0, 0, 0, 0, 7, 0, 0, 0), 1, 0, 0, 0)},
			mapiProp{prAttachLongFilename<<16 | ptString8, []byte("long.bin\x00")},
		).Bytes(), []walked{{Name: "long.bin", Size: 1, Content: "x"}}, nil},
		{"code page name", cp1251, []walked{{Name: "счет.exe", Size: 1, Content: "x"}}, nil},
		{"no attachments", newTNEF().Bytes(), nil, nil},
		{"not tnef", []byte("PK\x03\x04 not at all"), nil, ErrNotFormat},
		{"truncated attribute", newTNEF().attach("A.EXE", exe).Bytes()[:60], nil, ErrCorrupt},
		{"attachment attribute first", newTNEF().attr(2, 0x0006800F, []byte("x")).Bytes(), nil, ErrCorrupt},
	}
	// A property list claiming a million properties in a few bytes.
	bomb := newTNEF()
	bomb.attr(2, 0x00069002, nil)
	bomb.attr(2, 0x00069005, []byte{0x40, 0x42, 0x0F, 0, 1, 2, 3, 4})
	cases = append(cases, struct {
		name string
		in   []byte
		want []walked
		err  error
	}{"property count bomb", bomb.Bytes(), nil, ErrCorrupt})
	f := formatNamed(t, "tnef")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := walkAll(t, f, c.in, "winmail.dat")
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("error %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("members %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Fatalf("member %d: %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

// iidForTest is IID_IMessage, as Outlook writes it before an attached
// message's nested TNEF stream.
var iidForTest = []byte{0x07, 0x03, 0x02, 0x00, 0, 0, 0, 0, 0xC0, 0, 0, 0, 0, 0, 0, 0x46}

// TestTNEFAgainstTool cross-checks the names with Debian's tnef(1).
func TestTNEFAgainstTool(t *testing.T) {
	archivetest.NeedTool(t, "tnef")
	in := newTNEF().attach("A.TXT", []byte("a"), mapiProp{prAttachLongFilename<<16 | ptUnicode, utf16le("long name.txt")}).
		attach("B.EXE", []byte("bb")).Bytes()
	p := filepath.Join(t.TempDir(), "winmail.dat")
	if err := os.WriteFile(p, in, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("tnef", "-t", p).CombinedOutput()
	if err != nil {
		t.Fatalf("tnef -t: %v\n%s", err, out)
	}
	got, err := walkAll(t, formatNamed(t, "tnef"), in, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range got {
		if !strings.Contains(string(out), m.Name) {
			t.Errorf("tnef -t does not list %q:\n%s", m.Name, out)
		}
	}
}

func FuzzTNEF(f *testing.F) {
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.tnef"); err == nil {
		f.Add(b)
	}
	f.Add(newTNEF().attach("A.EXE", []byte("MZ"), mapiProp{prAttachLongFilename<<16 | ptUnicode, utf16le("a.exe")}).Bytes())
	f.Add(newTNEF().attach("", nil, mapiProp{prAttachDataObj<<16 | ptObject, append(append([]byte{}, iidForTest...), newTNEF().attach("I", []byte("i")).Bytes()...)}).Bytes())
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "tnef"), b) })
}
