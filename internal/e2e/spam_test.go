package e2e

// The spam filter end to end (issue 13, "Prove"): the real popgate binary
// asks the real rspamd of scripts/testenv.sh (its network checks failing
// fast, so verdicts are deterministic: GTUBE gives "reject" at the
// required score) about messages the real Dovecot serves, downloaded with
// curl; and `popgate scan` shows the same verdicts.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters/tag"
	"github.com/popgate/popgate/internal/testenv"
)

// gtubeMsg is a complete message holding GTUBE.
func gtubeMsg(tag string) []byte {
	return crlf([]byte("From: Spammer <spam@example.net>\nTo: User <user@example.com>\nSubject: cheap pills\n" +
		"Date: Tue, 24 Nov 2026 09:00:00 +0000\nMessage-ID: <gtube." + tag + "@example.net>\nMIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=us-ascii\n\nBuy now.\n" + testenv.GTUBE + "\n"))
}

// hamMsg is a complete ordinary message, which the test rspamd gives "no
// action".
func hamMsg(tag string) []byte {
	return crlf([]byte("From: Alice Example <alice@example.com>\nTo: User Example <user@example.com>\nSubject: lunch on Friday\n" +
		"Date: Tue, 24 Nov 2026 09:00:00 +0000\nMessage-ID: <ham." + tag + "@example.com>\nMIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=us-ascii\n\nShall we meet at noon?\n.\n..two dots\n\nAlice\n"))
}

// spamConfig has two spam filters on the test rspamd and a policy for
// each of two users: strict (thresholds; GTUBE is withheld) for strict,
// lenient (rspamd's own action, a reject only tagged and prefixed, the
// symbols shown) for lenient.
func spamConfig(t *testing.T, d *testenv.DovecotEnv, rspamdAddr, qdir, strict, lenient string) string {
	return dovecotConfig(d, configOpts{upstreamTLS: "none"}) + fmt.Sprintf(`scanner "rspamd" "rspamd" {
  addresses = [%s]
  timeout   = "10s"
}
filter "spam" "hold" {
  scanner          = "rspamd"
  tag_above        = 5
  quarantine_above = 15
  remove_headers   = true
}
filter "spam" "mark" {
  scanner            = "rspamd"
  use_scanner_action = true
  scanner_actions    = { "reject" = "subject", "soft reject" = "subject" }
  symbols_header     = true
}
quarantine {
  dir = %s
}
policy "strict" {
  chain = ["hold"]
  match {
    users = [%s]
  }
}
policy "lenient" {
  chain = ["mark"]
  match {
    users = [%s]
  }
}
`, hclString("http://"+rspamdAddr), hclString(qdir), hclString(strict), hclString(lenient))
}

// addedFields returns the fields popgate put in front of orig in got, and
// fails unless got ends with orig byte for byte.
func addedFields(t *testing.T, got, orig []byte) string {
	t.Helper()
	if !bytes.HasSuffix(got, orig) {
		t.Fatalf("the message is not delivered whole under the added fields:\n%s", got)
	}
	return string(got[:len(got)-len(orig)])
}

// GTUBE is withheld under one user's policy and tagged under another's; a
// normal message gets its score header and nothing else changes.
func TestSpamPerUser(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	rs := testenv.Rspamd(t)
	testenv.LookPath(t, "curl")
	qdir := filepath.Join(t.TempDir(), "quarantine")
	spam, ham := gtubeMsg("peruser"), hamMsg("peruser")
	// A sender's own verdict fields, which the filter removes (a lossy
	// change: the original is kept in quarantine first).
	forged := bytes.Replace(ham, []byte("\r\nSubject:"), []byte("\r\nX-Spam-Status: No, score=-50.00\r\nX-Spam-Flag: NO\r\nSubject:"), 1)
	strict, _ := newMailbox(t, d, [][]byte{spam, ham, forged})
	lenient, _ := newMailbox(t, d, [][]byte{spam, ham})
	p := startPopgate(t, spamConfig(t, d, rs.Addr, qdir, strict.Name, lenient.Name), "", "plain")

	// strict: GTUBE reaches quarantine_above (its score is rspamd's
	// required score, 15): a notice, the original in quarantine.
	cs := newCurl(t, p, strict)
	got := cs.retr(1)
	id, ok := isNotice(got)
	if !ok || bytes.Contains(got, []byte(testenv.GTUBE)) {
		t.Fatalf("strict: GTUBE delivered, not withheld:\n%s", got)
	}
	if orig := quarantineExport(t, qdir, id, false); !bytes.Equal(orig, spam) {
		t.Errorf("strict: quarantine holds %d bytes, want the %d-byte original", len(orig), len(spam))
	}
	if l := quarantineList(t, qdir)[id]; !strings.Contains(l, "spam: score 15.00 >= 15 (quarantine_above)") {
		t.Errorf("strict: quarantine list does not give the reason: %q", l)
	}

	// lenient: rspamd's reject is mapped to "subject": tagged, prefixed,
	// lossless (the original subject kept), the symbols shown.
	cl := newCurl(t, p, lenient)
	got = cl.retr(1)
	var restored bytes.Buffer
	if ok, err := tag.Restore(&restored, bytes.NewReader(got)); !ok || err != nil {
		t.Fatalf("lenient: no restorable subject prefix (%v, %v):\n%s", ok, err, got)
	}
	top := addedFields(t, restored.Bytes(), spam)
	if !regexp.MustCompile(`^X-Spam-Score: 15\.00\r\nX-Spam-Status: Yes, score=15\.00 required=15\.00\r\nX-Spam-Flag: YES\r\nX-Spam-Symbols: [^\r\n]*GTUBE\(`).MatchString(top) {
		t.Errorf("lenient: fields added to GTUBE:\n%s", top)
	}
	if !bytes.Contains(got, []byte("\r\nSubject: [SPAM] cheap pills\r\n")) {
		t.Errorf("lenient: subject not prefixed:\n%s", got)
	}

	// A normal message: the score header (and, for lenient, the symbols)
	// in front, then what rspamd's milter block adds (the test rspamd:
	// Authentication-Results), then every byte of the message as Dovecot
	// has it.
	score := `X-Spam-Score: (-?\d+\.\d\d)\r\nX-Spam-Status: No, score=(-?\d+\.\d\d) required=`
	folded := `[^\r\n]*(\r\n [^\r\n]*)*\r\n`
	milter := `(Authentication-Results: ` + folded + `)?$`
	for _, c := range []struct {
		name string
		cl   *curlClient
		want string
	}{
		{"strict", cs, `^` + score + `5\.00\r\n` + milter},
		{"lenient", cl, `^` + score + `15\.00\r\nX-Spam-Symbols: ` + folded + milter},
	} {
		top := addedFields(t, c.cl.retr(2), ham)
		m := regexp.MustCompile(c.want).FindStringSubmatch(top)
		if m == nil || m[1] != m[2] {
			t.Errorf("%s: fields added to a normal message:\n%s", c.name, top)
		}
	}
	if n := len(quarantineList(t, qdir)); n != 1 {
		t.Errorf("%d originals in quarantine, want GTUBE's only (additions are lossless)", n)
	}

	// The forged fields are gone, the rest is the message as it was, and
	// the original is in quarantine.
	top = addedFields(t, cs.retr(3), ham)
	if !regexp.MustCompile(`^` + score + `5\.00\r\n` + milter).MatchString(top) {
		t.Errorf("strict: fields added to a message with forged ones:\n%s", top)
	}
	l := quarantineList(t, qdir)
	if len(l) != 2 {
		t.Fatalf("%d originals in quarantine after a removal, want 2", len(l))
	}
	for qid := range l {
		if qid != id && !bytes.Equal(quarantineExport(t, qdir, qid, false), forged) {
			t.Errorf("quarantine %s does not hold the message with the forged fields", qid)
		}
	}

	// popgate scan: the same verdicts, with rspamd's report.
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "spam.hcl"), []byte(spamConfig(t, d, rs.Addr, qdir, strict.Name, lenient.Name)))
	spamFile := writeFile(t, filepath.Join(dir, "gtube.eml"), lf(spam))
	hamFile := writeFile(t, filepath.Join(dir, "ham.eml"), lf(ham))
	out, errOut, code := runPopgate(t, "scan", "-c", cfg, "--user", strict.Name, spamFile)
	if code != 3 || !strings.Contains(out, `  step       hold (spam)`) ||
		!strings.Contains(out, `               spam       score 15.00, required 15.00, action "reject"`+"\n") ||
		!regexp.MustCompile(`(?m)^               symbols    .*GTUBE\(`).MatchString(out) ||
		!strings.Contains(out, "reason     spam: score 15.00 >= 15 (quarantine_above)") {
		t.Errorf("scan GTUBE: exit %d:\n%s%s", code, out, errOut)
	}
	out, errOut, code = runPopgate(t, "scan", "-c", cfg, "--user", lenient.Name, "--json", spamFile, hamFile)
	reps := parseScanJSON(t, out)
	if code != 0 || len(reps) != 2 {
		t.Fatalf("scan --json: exit %d, %d reports:\n%s%s", code, len(reps), out, errOut)
	}
	for i, want := range []string{"reject", "no action"} {
		var r struct {
			Steps []struct {
				Spam *struct {
					Required float64
					Action   string
					Symbols  []struct{ Name string }
				}
			}
		}
		line := strings.Split(strings.TrimSpace(out), "\n")[i]
		if err := json.Unmarshal([]byte(line), &r); err != nil || len(r.Steps) != 1 || r.Steps[0].Spam == nil ||
			r.Steps[0].Spam.Action != want || r.Steps[0].Spam.Required != 15 || len(r.Steps[0].Spam.Symbols) == 0 {
			t.Errorf("scan --json %d: %v %s", i, err, line)
		}
	}
	if reps[0].Verdict != "changed" || reps[1].Verdict != "changed" {
		t.Errorf("lenient scan: verdicts %s, %s; want both changed (tagged, scored)", reps[0].Verdict, reps[1].Verdict)
	}
}

// rspamd unreachable: the policy's on_error (tempfail by default) applies,
// never a message passed as "not spam".
func TestSpamScannerDown(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	testenv.LookPath(t, "curl")
	u, _ := newMailbox(t, d, [][]byte{hamMsg("down")})
	p := startPopgate(t, spamConfig(t, d, freeAddr(t), filepath.Join(t.TempDir(), "q"), u.Name, "nobody"), "", "plain")
	if got := newCurl(t, p, u).retrErr(1); !strings.HasPrefix(got, tempFailPrefix) {
		t.Errorf("rspamd down: %q, want %s", got, tempFailPrefix)
	}
}
