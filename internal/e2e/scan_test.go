package e2e

// `popgate check --explain` and `popgate scan`, through the real binary.

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/testenv"
)

// explainConfig has three policies in file order: vip (users boss@* from
// 10.0.0.0/8), office (domain example.com on listener "other") and, when
// withDefault, a default one. Without the default, a login that matches
// neither is refused.
func explainConfig(t *testing.T, withDefault bool) string {
	t.Helper()
	dir := t.TempDir()
	cfg := `listener "plain" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
listener "other" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
upstream "mail" {
  address = "127.0.0.1:110"
}
filter "strip" "dangerous" {
  extensions = ["exe"]
}
filter "tag" "stamp" {
  headers = { "X-Popgate-Scanned" = "yes" }
}
quarantine {
  dir = ` + hclString(filepath.Join(dir, "q")) + `
}
policy "vip" {
  chain = ["stamp"]
  top   = "pass"
  match {
    users   = ["boss@*"]
    clients = ["10.0.0.0/8"]
  }
}
policy "office" {
  chain     = ["dangerous", "stamp"]
  on_error  = "reject"
  keepalive = "5s"
  rejected  = "error"
  match {
    domains   = ["example.com"]
    listeners = ["other"]
  }
}
`
	if withDefault {
		cfg += "policy \"default\" {\n  chain = [\"dangerous\"]\n}\n"
	}
	path := filepath.Join(dir, "explain.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheckExplain(t *testing.T) {
	t.Parallel()
	withDefault, noDefault := explainConfig(t, true), explainConfig(t, false)
	cases := []struct {
		name     string
		cfg      string
		args     []string
		decision string
		policy   string
		chain    string // text form
		why      string
	}{
		{"vip", withDefault, []string{"--explain", "boss@example.com", "--client", "10.1.2.3"}, "policy", "vip",
			"stamp (tag)", `match { clients = ["10.0.0.0/8"], users = ["boss@*"] }`},
		{"vip-wrong-client", withDefault, []string{"--explain", "boss@example.com", "--client", "192.0.2.1"}, "default", "default",
			"dangerous (strip)", "default policy: no match block matched"},
		{"vip-no-client", withDefault, []string{"--explain", "boss@example.com"}, "default", "default",
			"dangerous (strip)", "default policy: no match block matched"},
		{"office", withDefault, []string{"--explain", "Ann@Example.COM", "--listener", "other"}, "policy", "office",
			"dangerous (strip) -> stamp (tag)", `match { domains = ["example.com"], listeners = ["other"] }`},
		{"office-first-listener", withDefault, []string{"--explain", "ann@example.com"}, "default", "default",
			"dangerous (strip)", "default policy"},
		{"refused", noDefault, []string{"--explain", "eve@example.org", "--client", "192.0.2.9"}, "refused", "",
			"", "no policy applies"},
		{"vip-without-default", noDefault, []string{"--explain", "boss@x.test", "--client", "10.9.9.9", "--listener", "other"}, "policy", "vip",
			"stamp (tag)", "match block matched"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"check", "-c", c.cfg}, c.args...)
			out, errOut, code := runPopgate(t, args...)
			if code != 0 {
				t.Fatalf("exit %d, want 0 (a valid configuration):\n%s%s", code, out, errOut)
			}
			if !strings.Contains(out, ": OK (2 listeners, 1 upstreams)\n") {
				t.Errorf("no OK line:\n%s", out)
			}
			if !strings.Contains(out, "why:        ") || !strings.Contains(out, c.why) {
				t.Errorf("why does not say %q:\n%s", c.why, out)
			}
			if !strings.Contains(out, "upstream:   mail (127.0.0.1:110); the listener's upstream") {
				t.Errorf("no upstream line:\n%s", out)
			}
			switch c.decision {
			case "refused":
				if !strings.Contains(out, "policy:     NONE: the session would be refused with -ERR [SYS/PERM]") {
					t.Errorf("refusal not reported:\n%s", out)
				}
			default:
				if !regexp.MustCompile(`(?m)^policy:     ` + c.policy + ` \(.*explain\.hcl:\d+:1\)$`).MatchString(out) {
					t.Errorf("policy line does not name %s:\n%s", c.policy, out)
				}
				if !strings.Contains(out, "chain:      "+c.chain+"\n") {
					t.Errorf("chain is not %q:\n%s", c.chain, out)
				}
			}

			out, errOut, code = runPopgate(t, append(args, "--json")...)
			if code != 0 {
				t.Fatalf("--json: exit %d:\n%s%s", code, out, errOut)
			}
			var ex struct {
				Decision string `json:"decision"`
				Why      string `json:"why"`
				Listener string `json:"listener"`
				Upstream string `json:"upstream"`
				Policy   *struct {
					Name      string              `json:"name"`
					Match     map[string][]string `json:"match"`
					Chain     []struct{ Name, Type string }
					OnError   string `json:"on_error"`
					TOP       string `json:"top"`
					KeepAlive string `json:"keepalive"`
					Rejected  string `json:"rejected"`
				} `json:"policy"`
				Quarantine string `json:"quarantine"`
			}
			if err := json.Unmarshal([]byte(out), &ex); err != nil {
				t.Fatalf("--json: %v:\n%s", err, out)
			}
			if ex.Decision != c.decision || ex.Upstream != "mail" || ex.Quarantine == "" {
				t.Errorf("--json: %+v, want decision %s", ex, c.decision)
			}
			if c.decision == "refused" {
				if ex.Policy != nil {
					t.Errorf("--json: refused login has a policy: %+v", ex.Policy)
				}
				return
			}
			if ex.Policy == nil || ex.Policy.Name != c.policy {
				t.Fatalf("--json: policy %+v, want %s", ex.Policy, c.policy)
			}
			if c.policy == "office" {
				p := ex.Policy
				if p.OnError != "reject" || p.TOP != "filter" || p.KeepAlive != "5s" || p.Rejected != "error" ||
					len(p.Chain) != 2 || p.Chain[0].Type != "strip" || p.Chain[1].Type != "tag" || p.Match["domains"][0] != "example.com" {
					t.Errorf("--json office: %+v", p)
				}
			}
			if c.policy == "vip" && (ex.Policy.TOP != "pass" || ex.Policy.OnError != "tempfail" || ex.Policy.Rejected != "notice") {
				t.Errorf("--json vip: %+v", ex.Policy)
			}
		})
	}

	// Bad arguments and an unknown listener.
	if _, _, code := runPopgate(t, "check", "-c", withDefault, "--json"); code != 2 {
		t.Errorf("--json without --explain: exit %d, want 2", code)
	}
	if _, errOut, code := runPopgate(t, "check", "-c", withDefault, "--explain", "bob", "--listener", "nope"); code != 1 || !strings.Contains(errOut, `no listener "nope"`) {
		t.Errorf("unknown listener: exit %d, %s", code, errOut)
	}
	// An invalid configuration still exits 1 with its diagnostics.
	if _, errOut, code := runPopgate(t, "check", "-c", "testdata/check_two_errors.hcl", "--explain", "bob"); code != 1 || !strings.Contains(errOut, ":5:18: error:") {
		t.Errorf("bad file with --explain: exit %d, %s", code, errOut)
	}
}

// scanReport is the --json object of `popgate scan`.
type scanReport struct {
	File          string `json:"file"`
	Size          int64  `json:"size"`
	Policy        string `json:"policy"`
	Outcome       string `json:"outcome"`
	Verdict       string `json:"verdict"`
	Changed       bool   `json:"changed"`
	Notice        bool   `json:"notice"`
	Reason        string `json:"reason"`
	QuarantineID  string `json:"quarantine_id"`
	DryRun        bool   `json:"quarantine_dry_run"`
	DeliveredSize int64  `json:"delivered_size"`
	Output        string `json:"output"`
	Error         string `json:"error"`
	Steps         []struct {
		Filter, Type, Action, Reason, Error, Found, Where string
		DurationMS                                        float64 `json:"duration_ms"`
	} `json:"steps"`
}

func parseScanJSON(t *testing.T, out string) []scanReport {
	t.Helper()
	var rs []scanReport
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var r scanReport
		if err := dec.Decode(&r); err == io.EOF {
			return rs
		} else if err != nil {
			t.Fatalf("scan --json: %v:\n%s", err, out)
		}
		rs = append(rs, r)
	}
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func dirEntries(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// `popgate scan` runs the chain a session runs: real clamd, strip and tag,
// with the verdicts and exit codes documented, and -o holds the bytes a
// client downloading the same message through `popgate run` gets.
func TestScan(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	testenv.Clamd(t)
	testenv.LookPath(t, "curl")
	dir := t.TempDir()
	qdir := filepath.Join(dir, "quarantine")
	cfgText := avConfig(t, d, avOpts{quarantine: qdir, maxSize: "64KB"})
	cfg := writeFile(t, filepath.Join(dir, "scan.hcl"), []byte(cfgText))

	clean := cleanMsg("scan")
	exe := multipartMsg("scanexe", "the tool", textPart("Please find the tool attached.\n.\n..dots\n"),
		attachment("application/octet-stream", "setup.exe", []byte(fakeEXE)))
	eicar := eicarCases(t, "scan")[0].msg // base64 attachment: the .hdb checksum finds it
	big := crlf([]byte("From: a@example.com\nTo: user@example.com\nSubject: big\n\n" + strings.Repeat("0123456789abcdef\n", 8000)))
	// Stored mail may have bare LF line ends: scan sees it as a session
	// would, with CRLF.
	msgs := dir + "/msgs"
	if err := os.Mkdir(msgs, 0o700); err != nil {
		t.Fatal(err)
	}
	files := []string{
		writeFile(t, msgs+"/clean.eml", lf(clean)),
		writeFile(t, msgs+"/exe.eml", exe),
		writeFile(t, msgs+"/eicar.eml", eicar),
		writeFile(t, msgs+"/big.eml", big),
	}

	// One message at a time: verdict, exit status, text output.
	type want struct {
		code    int
		outcome string
		verdict string
		text    string
	}
	wants := []want{
		{0, "deliver", "changed", "outcome    deliver (changed)"},
		{0, "deliver", "changed", "step       dangerous (strip)"},
		{3, "deliver", "notice", "would be quarantined (dry run; id "},
		{3, "defer", "deferred", "outcome    defer (-ERR [SYS/TEMP]"},
	}
	for i, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, errOut, code := runPopgate(t, "scan", "-c", cfg, "--user", "bob", "--client", "192.0.2.7", f)
			w := wants[i]
			if code != w.code || !strings.Contains(out, w.text) || !strings.Contains(out, "  policy     default (user \"bob\", client 192.0.2.7, listener plain, upstream dovecot)") {
				t.Errorf("exit %d (want %d); output lacks %q:\n%s%s", code, w.code, w.text, out, errOut)
			}
			if !regexp.MustCompile(`(?m)^  step       av \(clamav\) +\w+ +[0-9.]+ms`).MatchString(out) || !strings.Contains(out, "  total      ") {
				t.Errorf("no timed av step or total:\n%s", out)
			}
		})
	}

	// All at once, as JSON, with -o a directory.
	outDir := filepath.Join(dir, "out")
	out, errOut, code := runPopgate(t, append([]string{"scan", "-c", cfg, "--user", "bob", "--json", "-o", outDir}, files...)...)
	if code != 3 {
		t.Errorf("scan of all: exit %d, want 3:\n%s", code, errOut)
	}
	rs := parseScanJSON(t, out)
	if len(rs) != len(files) {
		t.Fatalf("%d JSON objects for %d messages:\n%s", len(rs), len(files), out)
	}
	for i, r := range rs {
		w := wants[i]
		if r.File != files[i] || r.Policy != "default" || r.Outcome != w.outcome || r.Verdict != w.verdict || r.Error != "" {
			t.Errorf("%s: %+v, want outcome %s verdict %s", files[i], r, w.outcome, w.verdict)
		}
		if r.Outcome == "deliver" && (r.Output != filepath.Join(outDir, filepath.Base(files[i])) || r.DeliveredSize == 0) {
			t.Errorf("%s: output %q, %d bytes", files[i], r.Output, r.DeliveredSize)
		}
		if r.Outcome == "defer" && r.Output != "" {
			t.Errorf("%s: deferred message written to %q", files[i], r.Output)
		}
	}
	if rs[0].Size != int64(len(clean)) {
		t.Errorf("clean.eml (LF) scanned as %d bytes, want its CRLF form's %d", rs[0].Size, len(clean))
	}
	if e := rs[2]; !e.Notice || e.QuarantineID == "" || !e.DryRun || !strings.Contains(e.Reason, "Eicar-Test-Signature") {
		t.Errorf("eicar: %+v", e)
	}
	if s := rs[2].Steps; len(s) == 0 || s[0].Filter != "av" || !strings.Contains(s[0].Found, "Eicar-Test-Signature") || s[0].Where != "" {
		t.Errorf("eicar's av step (the whole message scanned): %+v", s)
	}
	// Scanned by parts, the report names the part the signature was in.
	partsCfg := writeFile(t, filepath.Join(dir, "parts.hcl"), []byte(avConfig(t, d, avOpts{quarantine: qdir, scanMode: "parts"})))
	out, errOut, code = runPopgate(t, "scan", "-c", partsCfg, "--user", "bob", "--json", files[2])
	if prs := parseScanJSON(t, out); code != 3 || len(prs) != 1 || len(prs[0].Steps) == 0 ||
		!strings.Contains(prs[0].Steps[0].Found, "Eicar-Test-Signature") || !strings.Contains(prs[0].Steps[0].Where, "part") {
		t.Errorf("eicar scanned by parts: exit %d, %+v\n%s", code, prs, errOut)
	}
	if out, _, _ := runPopgate(t, "scan", "-c", partsCfg, "--user", "bob", files[2]); !regexp.MustCompile(`(?m)^             found      \S*Eicar-Test-Signature\S* in part`).MatchString(out) {
		t.Errorf("the text report does not say where the signature was:\n%s", out)
	}
	if s := rs[1].Steps; len(s) < 4 || s[1].Filter != "dangerous" || s[1].Type != "strip" || s[1].Action != "replace" || s[3].Filter != "quarantine" {
		t.Errorf("exe steps: %+v", s)
	}
	if _, err := os.Stat(qdir); !os.IsNotExist(err) {
		t.Errorf("a dry run touched the real quarantine %s (%v)", qdir, err)
	}
	if _, err := os.Stat(filepath.Join(outDir, "big.eml")); !os.IsNotExist(err) {
		t.Errorf("deferred big.eml was written to -o (%v)", err)
	}

	// The same messages through a real session (curl via popgate run, the
	// same configuration but its own quarantine) give the same bytes.
	sessCfg := strings.Replace(cfgText, hclString(qdir), hclString(filepath.Join(dir, "session-quarantine")), 1)
	p := startPopgate(t, sessCfg, "", "plain")
	u, _ := newMailbox(t, d, [][]byte{clean, exe})
	c := newCurl(t, p, u)
	for i, name := range []string{"clean.eml", "exe.eml"} {
		scanned, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.retr(i + 1); !bytes.Equal(got, scanned) {
			t.Errorf("%s: the session delivered %d bytes, scan -o wrote %d; they differ:\nsession: %q\nscan:    %q", name, len(got), len(scanned), got, scanned)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(outDir, "clean.eml")); !bytes.Equal(got, append([]byte(stampHeader), clean...)) {
		t.Errorf("clean.eml: scan -o wrote %q, want the CRLF message with the tag on top", got)
	}

	// -o a single file.
	one := filepath.Join(dir, "one.eml")
	if _, errOut, code := runPopgate(t, "scan", "-c", cfg, "-o", one, files[0]); code != 0 {
		t.Errorf("scan -o FILE: exit %d: %s", code, errOut)
	} else if got, _ := os.ReadFile(one); !bytes.Equal(got, append([]byte(stampHeader), clean...)) {
		t.Errorf("scan -o FILE wrote %q", got)
	}

	// --quarantine stores the original in the configured quarantine, and
	// quarantine export gives it back.
	out, errOut, code = runPopgate(t, "scan", "-c", cfg, "--json", "--quarantine", files[2])
	rs = parseScanJSON(t, out)
	if code != 3 || len(rs) != 1 || rs[0].QuarantineID == "" || rs[0].DryRun {
		t.Fatalf("scan --quarantine: exit %d, %+v\n%s", code, rs, errOut)
	}
	if n := dirEntries(t, qdir); n == 0 {
		t.Errorf("scan --quarantine wrote nothing into %s", qdir)
	}
	if got := quarantineExport(t, qdir, rs[0].QuarantineID, false); !bytes.Equal(got, eicar) {
		t.Errorf("quarantine export of the scanned message: %d bytes, want the %d-byte original", len(got), len(eicar))
	}
	if out, _, _ := runPopgate(t, "scan", "-c", cfg, files[2]); !strings.Contains(out, "would be quarantined") {
		t.Errorf("dry run after --quarantine does not say so:\n%s", out)
	}
	if l := quarantineList(t, qdir); len(l) != 1 {
		t.Errorf("after one --quarantine scan and one dry run the quarantine lists %d originals, want 1: %v", len(l), l)
	}

	// Errors: an unreadable file exits 1 (and the others are still
	// scanned); a bad configuration exits 1.
	out, _, code = runPopgate(t, "scan", "-c", cfg, "--json", filepath.Join(dir, "missing.eml"), files[0])
	if rs := parseScanJSON(t, out); code != 1 || len(rs) != 2 || rs[0].Error == "" || rs[1].Verdict != "changed" {
		t.Errorf("missing file: exit %d, %s", code, out)
	}
	if _, errOut, code := runPopgate(t, "scan", "-c", "testdata/check_two_errors.hcl", files[0]); code != 1 || !strings.Contains(errOut, ":5:18: error:") {
		t.Errorf("bad config: exit %d, %s", code, errOut)
	}
}

// A login no policy applies to is refused: scan exits 3 and says so.
func TestScanRefusedLogin(t *testing.T) {
	t.Parallel()
	cfg := explainConfig(t, false)
	msg := writeFile(t, filepath.Join(t.TempDir(), "m.eml"), cleanMsg("refused"))
	_, errOut, code := runPopgate(t, "scan", "-c", cfg, "--user", "eve@example.org", msg)
	if code != 3 || !strings.Contains(errOut, "would be refused at login with -ERR [SYS/PERM]") {
		t.Errorf("exit %d, %s", code, errOut)
	}
	// The vip policy from 10/8: the tag only, quarantine untouched.
	out, errOut, code := runPopgate(t, "scan", "-c", cfg, "--user", "boss@example.com", "--client", "10.0.0.1", "--json", msg)
	rs := parseScanJSON(t, out)
	if code != 0 || len(rs) != 1 || rs[0].Policy != "vip" || rs[0].Verdict != "changed" || len(rs[0].Steps) != 1 {
		t.Errorf("vip: exit %d, %+v %s", code, rs, errOut)
	}
}
