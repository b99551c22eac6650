package e2e

// The clamav filter's scan modes (scan = "message" | "parts" | "both")
// through the real binary, against real clamds of the test's own (the
// shared one is never reconfigured), with ClamAV's own test files (Debian
// clamav-testfiles) and the EICAR cases as attachments.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/testenv"
)

// clamTestFiles is where Debian's clamav-testfiles puts ClamAV's test
// files: clam.exe, and clam.exe in every container and packer clamd opens.
const clamTestFiles = "/usr/share/clamav-testfiles"

// mailMarker is found by an .ndb signature of target type 4 (mail files
// only), as many of the official database's are: clamd matches it in a
// message, not in a text part sent on its own.
const mailMarker = "popgate mail target marker"

// modeCase is one message of the test and what each listener made of it.
type modeCase struct {
	name string
	msg  []byte
}

// scanOutcome is what a client got for a message: "found" (a notice in
// its place), "missed" (the message as stored), "unscannable" (delivered
// with the not-scanned warning: oversize = "pass-with-tag") or "error"
// (-ERR: no verdict).
func scanOutcome(t *testing.T, p *rawPOP, n int, msg []byte) string {
	t.Helper()
	if _, err := fmt.Fprintf(p.c, "RETR %d\r\n", n); err != nil {
		t.Fatal(err)
	}
	if l := p.line(); !strings.HasPrefix(l, "+OK") {
		return "error: " + l
	}
	data := p.multi()
	switch {
	case data == string(crlf(msg)):
		return "missed"
	case strings.HasPrefix(data, "X-Popgate-Warning: not scanned: "):
		return "unscannable"
	case strings.Contains(data, string(crlf(msg))):
		return "changed: " + firstLine([]byte(data))
	}
	return "found"
}

// tarGz is a tar.gz holding one file.
func tarGz(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	gw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gw)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Every ClamAV test file as an attachment is found with scan = "parts"
// and "both"; so is every EICAR case. clamd given the whole message finds
// all but clam_cache_emax.tgz with its default limits; with MaxRecursion 3
// its budget goes to the MIME and base64 layers: clam.tar.gz comes back
// "OK" (clean!) without AlertExceedsMax and Heuristics.Limits.Exceeded
// with it (unscannable), while "parts" finds it. A mail-only signature
// (target type 4) is found in "message" and "both" mode only: why
// "message" stays the default and "both" is what a gateway should use
// when it can afford two scans.
func TestClamavScanModes(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	entries, err := os.ReadDir(clamTestFiles)
	if err != nil || len(entries) == 0 {
		testenv.Require(t, "ClamAV's test files are not installed ("+clamTestFiles+", Debian clamav-testfiles; scripts/testenv.sh installs it)")
		return
	}
	sigs := map[string]string{"popgate-mail-target.ndb": "Popgate-Mail-Target:4:*:" + hex.EncodeToString([]byte(mailMarker)) + "\n"}
	clamds := map[string]*secondClamd{
		"plain": newOwnClamd(t, clamd, "", sigs),
		"tight": newOwnClamd(t, clamd, "MaxRecursion 3", sigs),
		"alert": newOwnClamd(t, clamd, "MaxRecursion 3\nAlertExceedsMax yes", sigs),
	}
	for _, sc := range clamds {
		sc.start()
	}

	var all, nested []modeCase
	var zipInTgz modeCase
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(clamTestFiles, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		c := modeCase{"testfile/" + e.Name(), multipartMsg("tf-"+e.Name(), "the file "+e.Name(),
			textPart("the file is attached\n"), attachment("application/octet-stream", e.Name(), data))}
		all = append(all, c)
		if slices.Contains([]string{"clam.exe", "clam.zip", "clam.tar.gz", "clam.7z"}, e.Name()) {
			nested = append(nested, c)
		}
		if e.Name() == "clam.zip" {
			zipInTgz = modeCase{"nested/clam.zip-in-tar.gz", multipartMsg("nested-zip-tgz", "nested",
				textPart("nested archives\n"), attachment("application/gzip", "bundle.tar.gz", tarGz(t, "clam.zip", data)))}
		}
	}
	if zipInTgz.msg == nil {
		t.Fatalf("%s has no clam.zip", clamTestFiles)
	}
	all, nested = append(all, zipInTgz), append(nested, zipInTgz)
	for _, c := range eicarCases(t, "modes") {
		all = append(all, modeCase{"eicar/" + c.name, c.msg})
	}
	mailTarget := modeCase{"mail-target", multipartMsg("mail-target", "marker",
		textPart("hello "+mailMarker+"\n"), attachment("application/octet-stream", "a.bin", []byte("nothing")))}
	all = append(all, mailTarget)

	type listener struct {
		name, clamd, mode string
		cases             []modeCase
	}
	listeners := []listener{
		{"plain-message", "plain", "message", all},
		{"plain-parts", "plain", "parts", all},
		{"plain-both", "plain", "both", all},
		{"tight-message", "tight", "message", nested},
		{"tight-parts", "tight", "parts", nested},
		{"alert-message", "alert", "message", nested},
		{"alert-parts", "alert", "parts", nested},
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "upstream \"mail\" {\n  address = %s\n  tls = \"none\"\n}\n", hclString(d.Addr))
	for name, sc := range clamds {
		fmt.Fprintf(&cfg, "scanner \"clamav\" %q {\n  addresses = [%s]\n  timeout = \"60s\"\n}\n", name, hclString("tcp://"+sc.addr))
	}
	var names []string
	for _, l := range listeners {
		names = append(names, l.name)
		fmt.Fprintf(&cfg, "listener %q {\n  address = \"127.0.0.1:0\"\n  upstream = \"mail\"\n}\n", l.name)
		fmt.Fprintf(&cfg, "filter \"clamav\" %q {\n  scanner = %q\n  scan = %q\n  oversize = \"pass-with-tag\"\n}\n", l.name, l.clamd, l.mode)
		fmt.Fprintf(&cfg, "policy %q {\n  match {\n    listeners = [%q]\n  }\n  chain = [%q]\n}\n", l.name, l.name, l.name)
	}
	fmt.Fprintf(&cfg, "quarantine {\n  dir = %s\n}\nlog {\n  level = \"debug\"\n  format = \"json\"\n}\n", hclString(filepath.Join(t.TempDir(), "quarantine")))
	p := startPopgate(t, cfg.String(), "", names...)

	got := map[string]map[string]string{} // listener → case → outcome
	for _, l := range listeners {
		var msgs [][]byte
		for _, c := range l.cases {
			msgs = append(msgs, c.msg)
		}
		u, _ := newMailbox(t, d, msgs)
		pc := dialPOP(t, p.addr(l.name))
		pc.ok("USER " + u.Name)
		pc.ok("PASS " + u.Password)
		got[l.name] = map[string]string{}
		for i, c := range l.cases {
			got[l.name][c.name] = scanOutcome(t, pc, i+1, c.msg)
		}
		pc.ok("QUIT")
	}

	// The table, for docs/CLAMAV.md.
	var table strings.Builder
	fmt.Fprintf(&table, "%-40s %-12s %-12s %-12s\n", "message", "message", "parts", "both")
	for _, c := range all {
		fmt.Fprintf(&table, "%-40s %-12s %-12s %-12s\n", c.name, got["plain-message"][c.name], got["plain-parts"][c.name], got["plain-both"][c.name])
	}
	fmt.Fprintf(&table, "\nMaxRecursion 3:\n%-40s %-12s %-12s %-12s %-12s\n", "message", "message", "parts", "alert/message", "alert/parts")
	for _, c := range nested {
		fmt.Fprintf(&table, "%-40s %-12s %-12s %-12s %-12s\n", c.name, got["tight-message"][c.name], got["tight-parts"][c.name], got["alert-message"][c.name], got["alert-parts"][c.name])
	}
	t.Logf("outcomes by scan mode:\n%s", table.String())

	for _, c := range all {
		want := map[string]string{"plain-parts": "found", "plain-both": "found"}
		if c.name == mailTarget.name {
			want = map[string]string{"plain-message": "found", "plain-parts": "missed", "plain-both": "found"}
		}
		for l, w := range want {
			if got[l][c.name] != w {
				t.Errorf("%s with %s: %s, want %s", c.name, l, got[l][c.name], w)
			}
		}
		if got["plain-message"][c.name] == "found" && got["plain-parts"][c.name] != "found" && c.name != mailTarget.name {
			t.Errorf("%s: found in the whole message, not by parts", c.name)
		}
	}
	for _, c := range nested {
		want := map[string]string{"tight-parts": "found", "alert-parts": "found"}
		if c.name == zipInTgz.name {
			// gzip, tar, zip, clam.exe: four levels on its own, deeper
			// than MaxRecursion 3 whatever popgate sends. Without
			// AlertExceedsMax clamd calls that clean; with it, it is
			// unscannable, in every mode.
			want = map[string]string{"tight-message": "missed", "tight-parts": "missed", "alert-message": "unscannable", "alert-parts": "unscannable"}
		}
		for l, w := range want {
			if got[l][c.name] != w {
				t.Errorf("%s with %s: %s, want %s", c.name, l, got[l][c.name], w)
			}
		}
	}
	// The demonstration: the budget spent on MIME.
	for l, w := range map[string]string{"tight-message": "missed", "alert-message": "unscannable"} {
		if o := got[l]["testfile/clam.tar.gz"]; o != w {
			t.Errorf("clam.tar.gz with %s: %s, want %s (clamd's recursion budget spent on MIME and base64)", l, o, w)
		}
	}
}
