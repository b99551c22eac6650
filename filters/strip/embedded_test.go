package strip

import (
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/archive/archivetest"
)

// uuBlock is "MZ pretend executable" uuencoded as name.
func uuBlock(name string) string {
	return "begin 644 " + name + "\n535H@<')E=&5N9\"!E>&5C=71A8FQE\n`\nend\n"
}

// twoParts is a multipart message of a text part (with its
// Content-Transfer-Encoding) and a harmless attachment.
func twoParts(ctype, cte, text string) []byte {
	return []byte("From: a@example.com\r\nSubject: t\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" +
		"Content-Type: " + ctype + "\r\nContent-Transfer-Encoding: " + cte + "\r\n\r\n" + text +
		"\r\n--b\r\nContent-Type: text/plain; name=notes.txt\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nnotes\r\n--b--\r\n")
}

func TestEmbeddedUUEncode(t *testing.T) {
	prose := strings.Repeat("Please find the invoice below, as discussed on the phone.\n", 2000)
	cases := []struct {
		name, rules, ctype, cte, text string
		action                        filters.Action
		why                           string
	}{
		{"extension, after prose", `extensions = ["exe"]`, "text/plain", "7bit", prose + uuBlock("invoice.exe") + "Regards\n",
			filters.Replace, "uuencoded file invoice.exe: extension exe"},
		{"glob, base64 text", `filenames = ["invoice*"]`, "text/plain", "base64", b64([]byte("Hi\n" + uuBlock("invoice.pdf.exe"))),
			filters.Replace, "uuencoded file invoice.pdf.exe: file name matches invoice*"},
		{"no match", `extensions = ["scr"]`, "text/plain", "7bit", uuBlock("invoice.exe"), filters.Pass, ""},
		{"declared types do not apply", `content_types = ["application/*"]`, "text/plain", "7bit", uuBlock("invoice.exe"), filters.Pass, ""},
		{"begin in prose", `extensions = ["exe"]`, "text/plain", "7bit", "We begin 644 tasks.exe today.\n", filters.Pass, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := mustFilter(t, "filter \"strip\" \"s\" {\n"+c.rules+"\n}")
			v, out := run(t, f, twoParts(c.ctype, c.cte, c.text))
			if v.Action != c.action {
				t.Fatalf("action %v (%s), want %v", v.Action, v.Reason, c.action)
			}
			if !strings.Contains(v.Reason, c.why) {
				t.Fatalf("reason %q, want it to say %q", v.Reason, c.why)
			}
			if c.action == filters.Replace && (strings.Contains(string(out), "begin 644") || !strings.Contains(string(out), "notes\r\n")) {
				t.Fatalf("the text part was not the one replaced:\n%s", out)
			}
		})
	}
}

func TestEmbeddedClamAV(t *testing.T) {
	read := func(name string) []byte { return archivetest.ClamFile(t, name) }
	cases := []struct {
		name string
		msg  []byte
		why  string
	}{
		{"winmail.dat", twoParts("application/ms-tnef; name=winmail.dat", "base64", b64(read("clam.tnef"))),
			"TNEF (winmail.dat) attachment clam.exe: extension exe"},
		{"BinHex in text", twoParts("text/plain", "7bit", "See attached.\r\n\r\n"+string(read("clam.exe.binhex"))),
			"BinHex file clam.exe: extension exe"},
	}
	// clam.exe uuencoded under an innocent name: found by its content.
	uu := strings.Replace(string(read("clam.exe.mbox.uu")), "begin 644 clam.exe", "begin 644 readme.txt", 1)
	cases = append(cases, struct {
		name string
		msg  []byte
		why  string
	}{"uuencoded, renamed", twoParts("text/plain", "8bit", uu[strings.Index(uu, "begin"):]),
		"uuencoded file readme.txt: detected type application/vnd.microsoft.portable-executable"})
	f := mustFilter(t, "filter \"strip\" \"s\" {\nrule \"exe\" {\n extensions = [\"exe\"]\n detected_types = [\"application/x-dosexec\"]\n action = \"quarantine\"\n}\n}")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, _ := run(t, f, c.msg)
			if v.Action != filters.Reject || !strings.Contains(v.Reason, c.why) || !strings.HasPrefix(v.Reason, "quarantined") {
				t.Fatalf("verdict %v %q, want quarantined for %q", v.Action, v.Reason, c.why)
			}
		})
	}
}

func TestEmbeddedEntriesLimit(t *testing.T) {
	text := strings.Repeat(uuBlock("a.txt"), 20)
	f := mustFilter(t, "filter \"strip\" \"s\" {\nextensions = [\"exe\"]\narchive_max_entries = 10\non_archive_limit = \"strip\"\n}")
	v, _ := run(t, f, twoParts("text/plain", "7bit", text))
	if v.Action != filters.Replace || !strings.Contains(v.Reason, "more than 10 entries") {
		t.Fatalf("verdict %v %q", v.Action, v.Reason)
	}
}
