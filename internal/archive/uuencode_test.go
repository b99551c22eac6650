package archive

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

// uuencodeTool runs sharutils' uuencode on content, skipping the test
// when it is not installed.
func uuencodeTool(t testing.TB, name string, content []byte) string {
	t.Helper()
	archivetest.NeedTool(t, "uuencode")
	cmd := exec.Command("uuencode", name)
	cmd.Stdin = bytes.NewReader(content)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("uuencode: %v", err)
	}
	return string(out)
}

func TestUUEncode(t *testing.T) {
	f := formatNamed(t, "uuencode")
	exe := bytes.Repeat([]byte("MZ\x90\x00\xff binary \x00"), 50)
	block := uuencodeTool(t, "invoice.exe", exe)
	prose := strings.Repeat("Dear customer, please find the invoice below.\n", 30000) // ~1.4 MB before the block
	other := uuencodeTool(t, "notes.txt", []byte("hello\n"))
	cases := []struct {
		name, in string
		want     []walked
		err      error
	}{
		{"after long prose", prose + block + "Regards\n", []walked{{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"two blocks, CRLF", strings.ReplaceAll("Hi\n"+block+"\n"+other, "\n", "\r\n"), []walked{
			{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)},
			{Name: "notes.txt", Size: 6, Content: "hello\n"}}, nil},
		{"no end line", strings.TrimSuffix(block, "`\nend\n") + "-- \nsignature\n", []walked{{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)}}, nil},
		{"back to back without end", strings.TrimSuffix(block, "`\nend\n") + other, []walked{
			{Name: "invoice.exe", Size: int64(len(exe)), Content: string(exe)},
			{Name: "notes.txt", Size: 6, Content: "hello\n"}}, nil},
		{"last group cut short", "begin 644 a.bin\n$86)C9`\n`\nend\n", []walked{{Name: "a.bin", Size: 4, Content: "abcd"}}, nil},
		{"begin in prose", "Let us begin 644 things now.\nbegin 644 and nothing after\nthe end\n", nil, ErrNotFormat},
		{"plain text", "Hello\nworld\n", nil, ErrNotFormat},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := []byte(c.in)
			sniffed := f.Sniff(b[:min(len(b), HeadLen)], bytes.NewReader(b), int64(len(b)), "")
			if sniffed != (c.err == nil) {
				t.Fatalf("sniff %v", sniffed)
			}
			got, err := walkAll(t, f, b, "")
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v, want %v", err, c.err)
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

func TestUUEncodeClamAV(t *testing.T) {
	b := archivetest.ClamFile(t, "clam.exe.mbox.uu")
	exe := archivetest.ClamFile(t, "clam.exe")
	f := formatNamed(t, "uuencode")
	if !f.Sniff(b, bytes.NewReader(b), int64(len(b)), "") || !f.Attachments {
		t.Fatal("not sniffed")
	}
	got, err := walkAll(t, f, b, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "clam.exe" || got[0].Content != string(exe) {
		t.Fatalf("members %+v", got)
	}
}

func TestUUEncodeBinaryNotSniffed(t *testing.T) {
	b := append([]byte("\x00\x01binary"), []byte("\nbegin 644 a.exe\nM86%A\n`\nend\n")...)
	if formatNamed(t, "uuencode").Sniff(b, bytes.NewReader(b), int64(len(b)), "") {
		t.Fatal("binary content sniffed as text")
	}
}

func FuzzUUEncode(f *testing.F) {
	if b, err := os.ReadFile("/usr/share/clamav-testfiles/clam.exe.mbox.uu"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("text\nbegin 644 a b.exe\n#86)C\nM86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A86%A\n`\nend\n"))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzWalk(t, formatNamed(t, "uuencode"), b) })
}
