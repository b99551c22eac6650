package archive

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// hqxEncode writes the 6-bit layer of BinHex for raw (already run-length
// encoded), 64 characters a line, between colons.
func hqxEncode(raw []byte) string {
	var b strings.Builder
	b.WriteString("(This file must be converted with BinHex 4.0)\n:")
	var acc uint32
	var n uint
	col := 1
	put := func(v uint32) {
		if col == 64 {
			b.WriteByte('\n')
			col = 0
		}
		b.WriteByte(binhexAlphabet[v&63])
		col++
	}
	for _, c := range raw {
		acc = acc<<8 | uint32(c)
		n += 8
		for n >= 6 {
			n -= 6
			put(acc >> n)
		}
	}
	if n > 0 {
		put(acc << (6 - n))
	}
	b.WriteString(":\n")
	return b.String()
}

// hqxFile is the run-length layer of a file named name with a data fork
// (a literal 0x90 escaped as that layer wants it); rle, when given, is the
// data fork's encoding instead (for runs).
func hqxFile(name string, data []byte, rle []byte) []byte {
	crc := func(b []byte) []byte {
		var c uint16
		for _, x := range b {
			c = crc16xmodem(c, x)
		}
		return binary.BigEndian.AppendUint16(nil, c)
	}
	h := []byte{byte(len(name))}
	h = append(h, name...)
	h = append(h, 0, 'A', 'P', 'P', 'L', 'm', 'a', 'c', 'u', 0, 0)
	h = binary.BigEndian.AppendUint32(h, uint32(len(data)))
	h = binary.BigEndian.AppendUint32(h, 0)
	h = append(h, crc(h)...)
	esc := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte{0x90}, []byte{0x90, 0}) }
	if rle == nil {
		rle = esc(data)
	}
	out := append(esc(h), rle...)
	out = append(out, esc(crc(data))...)
	return append(out, 0, 0) // the empty resource fork's CRC
}

func TestBinHex(t *testing.T) {
	f := formatNamed(t, "binhex")
	exe := []byte("MZ\x90\x00 runs \x90\x90\x90 and more")
	good := hqxEncode(hqxFile("invoice.exe", exe, nil))
	// A run: 'x' then 0x90 0x05 is "xxxxx".
	runs := hqxFile("runs.bin", []byte("axxxxxb"), []byte("ax\x90\x05b"))
	var bad []byte
	bad = append(bad, hqxFile("a.exe", exe, nil)...)
	bad[len(bad)-4] ^= 1 // the data fork's CRC
	// A fork declared at 16 MiB, a few hundred bytes of runs long.
	bomb := hqxFile("bomb.exe", nil, bytes.Repeat([]byte{'x', 0x90, 0xFF}, 100))
	binary.BigEndian.PutUint32(bomb[1+8+1+4+4+2:], 16<<20)
	binary.BigEndian.PutUint16(bomb[1+8+1+4+4+2+8:], func() uint16 {
		var c uint16
		for _, x := range bomb[:1+8+1+4+4+2+8] {
			c = crc16xmodem(c, x)
		}
		return c
	}())
	cases := []struct {
		name, in string
		want     []walked
		err      error
		readErr  bool
	}{
		{"after prose", "Hello,\nthe file:\n\n" + good + "\nbye\n", []walked{{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)}}, nil, false},
		{"two blocks", good + "and another\n" + hqxEncode(runs), []walked{
			{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)},
			{Name: "runs.bin", Size: 7, Content: "axxxxxb"}}, nil, false},
		{"data CRC wrong", hqxEncode(bad), []walked{{Name: "a.exe", Size: int64(len(exe))}}, nil, true},
		{"run bomb", hqxEncode(bomb), []walked{{Name: "bomb.exe", Size: 16 << 20}}, nil, true},
		{"no closing colon", strings.TrimSuffix(good, ":\n"), nil, ErrCorrupt, false},
		{"character outside the alphabet", strings.Replace(good, ":", ":~", 1), nil, ErrCorrupt, false},
		{"header CRC wrong", hqxEncode(append([]byte{5}, []byte("a.exe\x00APPLmacu\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\xde\xad")...)), nil, ErrCorrupt, false},
		{"no block", "(This file must be converted with BinHex 4.0)\n", nil, ErrCorrupt, false},
		{"plain text", "hello\n", nil, ErrNotFormat, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := []byte(c.in)
			got, err := walkAll(t, f, b, "")
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("members %+v, want %+v", got, c.want)
			}
			for i := range got {
				if c.readErr {
					if !errors.Is(got[i].OpenErr, ErrCorrupt) {
						t.Fatalf("member %d: read error %v, want ErrCorrupt", i, got[i].OpenErr)
					}
					got[i].OpenErr, got[i].Content = nil, ""
				}
				if got[i] != c.want[i] {
					t.Fatalf("member %d: %+v, want %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}

func TestBinHexClamAV(t *testing.T) {
	b := archivetest.ClamFile(t, "clam.exe.binhex")
	exe := archivetest.ClamFile(t, "clam.exe")
	f := formatNamed(t, "binhex")
	if !f.Sniff(b, bytes.NewReader(b), int64(len(b)), "") {
		t.Fatal("not sniffed")
	}
	got, err := walkAll(t, f, b, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "clam.exe" || got[0].Content != string(exe) || got[0].OpenErr != nil {
		t.Fatalf("members %+v", got)
	}
}

// TestBinHexTool decodes what macutils' binhex writes (its own marker
// line, its run-length encoding).
func TestBinHexTool(t *testing.T) {
	archivetest.NeedTool(t, "binhex")
	content := append(append([]byte("MZ"), make([]byte, 600)...), bytes.Repeat([]byte{0x90}, 10)...)
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/runs.exe", content, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("binhex", "-d", "runs.exe")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("binhex: %v", err)
	}
	got, err := walkAll(t, formatNamed(t, "binhex"), out, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "runs.exe" || got[0].Content != string(content) || got[0].OpenErr != nil {
		t.Fatalf("members %+v", got)
	}
}

func FuzzBinHex(f *testing.F) {
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.exe.binhex"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(hqxEncode(hqxFile("a.exe", []byte("MZ\x90x"), nil))))
	f.Add([]byte(hqxEncode(hqxFile("r.bin", nil, []byte{'x', 0x90, 0xFF, 0x90, 0, 0x90, 3}))))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "binhex"), b) })
}
