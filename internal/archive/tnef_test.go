package archive

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// The streams are built with archivetest.TNEF.

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
	inner := archivetest.NewTNEF().Attach("INNER~1.EXE", exe).Bytes()
	cp1251 := archivetest.NewTNEF().Attr(1, 0x00069007, []byte{0xE3, 0x04, 0, 0, 0, 0, 0, 0}).
		Attach("\xF1\xF7\xE5\xF2.exe", []byte("x")).Bytes() // "счет.exe" in windows-1251
	cases := []struct {
		name string
		in   []byte
		want []walked
		err  error
	}{
		{"long name over title", archivetest.NewTNEF().Attach("INVOIC~1.EXE", exe,
			archivetest.MAPIProp{Tag: prAttachLongFilename<<16 | ptUnicode, Value: archivetest.UTF16LE("invoice 2024.pdf.exe")},
			archivetest.MAPIProp{Tag: 0x3705<<16 | 3, Value: []byte{1, 0, 0, 0}},
		).Bytes(), []walked{{Name: "invoice 2024.pdf.exe", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"two attachments", archivetest.NewTNEF().Attach("A.TXT", []byte("a")).Attach("B.EXE", []byte("bb")).Bytes(),
			[]walked{{Name: "A.TXT", Size: 1, Content: "a"}, {Name: "B.EXE", Size: 2, Content: "bb"}}, nil},
		{"data in PR_ATTACH_DATA_OBJ", archivetest.NewTNEF().Attach("", nil,
			archivetest.MAPIProp{Tag: prAttachFilename<<16 | ptString8, Value: []byte("EVIL.SCR\x00")},
			archivetest.MAPIProp{Tag: prAttachDataObj<<16 | ptBinary, Value: exe},
		).Bytes(), []walked{{Name: "EVIL.SCR", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"attached message as nested TNEF", archivetest.NewTNEF().Attach("", nil,
			archivetest.MAPIProp{Tag: prDisplayName<<16 | ptUnicode, Value: archivetest.UTF16LE("Fwd: invoice")},
			archivetest.MAPIProp{Tag: prAttachDataObj<<16 | ptObject, Value: append(append([]byte{}, iidForTest...), inner...)},
		).Bytes(), []walked{{Name: "Fwd: invoice", Size: int64(len(inner)), Content: string(inner)}}, nil},
		{"named property skipped", archivetest.NewTNEF().Attach("X.BIN", []byte("x"),
			archivetest.MAPIProp{Tag: 0x8001<<16 | 3, Value: append(append(make([]byte, 16), 0, 0, 0, 0, 7, 0, 0, 0), 1, 0, 0, 0)},
			archivetest.MAPIProp{Tag: prAttachLongFilename<<16 | ptString8, Value: []byte("long.bin\x00")},
		).Bytes(), []walked{{Name: "long.bin", Size: 1, Content: "x"}}, nil},
		{"code page name", cp1251, []walked{{Name: "счет.exe", Size: 1, Content: "x"}}, nil},
		{"no attachments", archivetest.NewTNEF().Bytes(), nil, nil},
		{"not tnef", []byte("PK\x03\x04 not at all"), nil, ErrNotFormat},
		{"truncated attribute", archivetest.NewTNEF().Attach("A.EXE", exe).Bytes()[:60], nil, ErrCorrupt},
		{"attachment attribute first", archivetest.NewTNEF().Attr(2, 0x0006800F, []byte("x")).Bytes(), nil, ErrCorrupt},
	}
	// A property list claiming a million properties in a few bytes.
	bomb := archivetest.NewTNEF()
	bomb.Attr(2, 0x00069002, nil)
	bomb.Attr(2, 0x00069005, []byte{0x40, 0x42, 0x0F, 0, 1, 2, 3, 4})
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
	in := archivetest.NewTNEF().Attach("A.TXT", []byte("a"), archivetest.MAPIProp{Tag: prAttachLongFilename<<16 | ptUnicode, Value: archivetest.UTF16LE("long name.txt")}).
		Attach("B.EXE", []byte("bb")).Bytes()
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
	f.Add(archivetest.NewTNEF().Attach("A.EXE", []byte("MZ"), archivetest.MAPIProp{Tag: prAttachLongFilename<<16 | ptUnicode, Value: archivetest.UTF16LE("a.exe")}).Bytes())
	f.Add(archivetest.NewTNEF().Attach("", nil, archivetest.MAPIProp{Tag: prAttachDataObj<<16 | ptObject, Value: append(append([]byte{}, iidForTest...), archivetest.NewTNEF().Attach("I", []byte("i")).Bytes()...)}).Bytes())
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "tnef"), b) })
}
