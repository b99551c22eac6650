package e2e

// End-to-end tests of signed and encrypted mail (issue 13, "Signed mail"):
// the real popgate binary in front of the real Dovecot, with the real clamd
// scanning, and messages DKIM-signed in the test with a generated key
// (go-msgauth, internal/dkimtest). Whether a delivered message's signature
// still holds is what go-msgauth's verifier says with that key; no DNS is
// asked.

import (
	"bytes"
	"fmt"
	"io"
	"mime/quotedprintable"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/dkimtest"
	"github.com/popgate/popgate/internal/testenv"
)

// signedConfig chains clamav, a strip filter and tag filters under five
// policies, one per user: the default one and "subject" (signed left at
// "change"), and one each where the strip filter withholds or keeps a
// signed message or the subject tag keeps it.
func signedConfig(t *testing.T, d *testenv.DovecotEnv, qdir string, users map[string]*testenv.User) string {
	var b strings.Builder
	b.WriteString(dovecotConfig(d, configOpts{upstreamTLS: "none"}))
	fmt.Fprintf(&b, "scanner \"clamav\" \"clamd\" {\n  addresses = [%s]\n  timeout   = \"10s\"\n}\n", hclString(testenv.Clamd(t).TCP))
	b.WriteString(`filter "clamav" "av" { scanner = "clamd" }
filter "strip" "dangerous" { extensions = ["exe"] }
filter "strip" "dangerous-withhold" {
  extensions = ["exe"]
  signed     = "withhold"
}
filter "strip" "dangerous-keep" {
  extensions = ["exe"]
  signed     = "keep"
}
filter "tag" "spamtag" { subject_prefix = "[SPAM]" }
filter "tag" "spamtag-keep" {
  subject_prefix = "[SPAM]"
  signed         = "keep"
}
filter "tag" "stamp" { headers = { "X-Popgate-Scanned" = "yes" } }
`)
	fmt.Fprintf(&b, "quarantine {\n  dir = %s\n}\n", hclString(qdir))
	b.WriteString("policy \"default\" {\n  chain = [\"av\", \"dangerous\", \"stamp\"]\n}\n")
	for _, p := range []struct{ name, chain, extra string }{
		{"subject", `"av", "spamtag", "stamp"`, ""},
		{"withhold", `"av", "dangerous-withhold", "stamp"`, ""},
		{"keep", `"av", "dangerous-keep", "stamp"`, `encrypted = "tempfail"`},
		{"subject-keep", `"av", "spamtag-keep", "stamp"`, ""},
	} {
		fmt.Fprintf(&b, "policy %q {\n  chain = [%s]\n  %s\n  match { users = [%s] }\n}\n", p.name, p.chain, p.extra, hclString(users[p.name].Name))
	}
	return b.String()
}

// verifies reports whether msg's DKIM signatures verify with the test key.
func verifies(msg []byte, s *dkimtest.Signer) bool { return dkimtest.Verify(msg, s) == nil }

// TestSignedMail: a DKIM-signed message with an .exe is stripped (and says
// the signature was broken) under the default signed = "change", withheld
// whole under "withhold", and delivered untouched under "keep"; a
// header-only tag of fields the signature does not cover leaves it
// verifying; a subject prefix where Subject is signed follows the tag's
// setting; an S/MIME-encrypted message follows the policy's encrypted.
func TestSignedMail(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	testenv.Clamd(t)
	qdir := filepath.Join(t.TempDir(), "quarantine")
	signer := dkimtest.New(t, "example.net", "e2e")

	// Everything but Subject, which the spam tag prefixes; exeSigned signs
	// it too.
	h := []string{"from", "to", "date", "message-id", "mime-version", "content-type"}
	exeMsg := multipartMsg("signed-exe", "the tool", textPart("Please find the signed tool attached.\n"),
		attachment("application/octet-stream", "setup.exe", []byte(fakeEXE)))
	exeSigned := signer.Sign(t, exeMsg, append(h, "subject"), true)
	plain := crlf([]byte("From: Sender <sender@example.net>\nTo: user@example.com\nSubject: newsletter\n" +
		"Date: Tue, 24 Nov 2026 10:00:00 +0000\nMessage-ID: <news@example.net>\n\nthis week's news, signed\n"))
	plainSigned := signer.Sign(t, plain, h, false)
	subjSigned := signer.Sign(t, plain, append(h, "subject"), false)
	encrypted := crlf([]byte("From: Sender <sender@example.net>\nTo: user@example.com\nSubject: contract\n" +
		"Date: Tue, 24 Nov 2026 10:00:00 +0000\nMessage-ID: <enc@example.net>\nMIME-Version: 1.0\n" +
		"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\n" +
		"Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"smime.p7m\"\n\n" +
		"MIAGCSqGSIb3DQEHA6CAMIACAQAxggFAMIIBPAIBADAkMBcxFTATBgNVBAMMDGNhcm9s\n"))
	for _, m := range [][]byte{exeSigned, plainSigned, subjSigned} {
		if !verifies(m, signer) {
			t.Fatal("a freshly signed message does not verify")
		}
	}

	users := map[string]*testenv.User{}
	var paths = map[string][]string{}
	mailboxes := map[string][][]byte{
		"default":      {exeSigned, plainSigned, encrypted},
		"subject":      {subjSigned, plainSigned},
		"withhold":     {exeSigned},
		"keep":         {exeSigned, encrypted},
		"subject-keep": {subjSigned, plainSigned},
	}
	for name, msgs := range mailboxes {
		users[name], paths[name] = newMailbox(t, d, msgs)
	}
	p := startPopgate(t, signedConfig(t, d, qdir, users), "", "plain")
	get := func(name string, n int) []byte { return newCurl(t, p, users[name]).retr(n) }
	const stamp = "X-Popgate-Scanned: yes\r\n"
	const broken = "X-Popgate-Signature: broken by the gateway (dkim d=example.net)\r\n"

	t.Run("change", func(t *testing.T) {
		got := get("default", 1)
		if !bytes.HasPrefix(got, []byte(broken+stamp)) || !bytes.Contains(got, []byte("setup.exe")) ||
			bytes.Contains(got, []byte(b64Lines([]byte(fakeEXE))[:40])) {
			t.Errorf("the .exe is not stripped, or the message does not say the signature was broken:\n%s", got)
		}
		if verifies(got, signer) {
			t.Error("a stripped message still verifies?")
		}
	})
	t.Run("withhold", func(t *testing.T) {
		got := get("withhold", 1)
		id := checkNotice(t, got, exeSigned)
		if orig := quarantineExport(t, qdir, id, false); !bytes.Equal(orig, exeSigned) {
			t.Errorf("quarantine holds %d bytes, not the signed original", len(orig))
		}
		text, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(got)))
		if err != nil || !bytes.Contains(text, []byte("Reason: withheld, signed (dkim d=example.net): stripped: setup.exe")) {
			t.Errorf("the notice does not say why (%v):\n%s", err, text)
		}
	})
	t.Run("keep", func(t *testing.T) {
		got := get("keep", 1)
		want := "X-Popgate-Warning: not changed: dangerous-keep: signed (dkim d=example.net)\r\n" + stamp + string(exeSigned)
		if string(got) != want {
			t.Errorf("got\n%.400s\nwant the signed original, untouched below\n%.400s", got, want)
		}
		if !verifies(got, signer) {
			t.Error("the kept message does not verify")
		}
	})
	t.Run("header-only tag", func(t *testing.T) {
		// The stamp is not signed: the message verifies, and nothing says
		// the signature was broken.
		got := get("default", 2)
		if string(got) != stamp+string(plainSigned) || !verifies(got, signer) {
			t.Errorf("got\n%s\nwant the stamp on the signed message", got)
		}
		// Nor is Subject: its prefix keeps the signature too.
		got = get("subject", 2)
		if !bytes.HasPrefix(got, []byte(stamp+"X-Popgate-Original-Subject: newsletter\r\n")) || !bytes.Contains(got, []byte("Subject: [SPAM] newsletter")) {
			t.Errorf("not tagged:\n%s", got)
		}
		if !verifies(got, signer) || bytes.Contains(got, []byte("X-Popgate-Signature")) {
			t.Errorf("the tagged message does not verify:\n%s", got)
		}
		got = get("subject-keep", 2)
		if !verifies(got, signer) || !bytes.Contains(got, []byte("Subject: [SPAM] newsletter")) {
			t.Errorf("under spamtag-keep, an unsigned Subject is prefixed and the message verifies:\n%s", got)
		}
	})
	t.Run("signed subject", func(t *testing.T) {
		got := get("subject", 1) // change
		if !bytes.HasPrefix(got, []byte(broken)) || !bytes.Contains(got, []byte("Subject: [SPAM] newsletter")) || verifies(got, signer) {
			t.Errorf("under change, a signed Subject is prefixed and the message says so:\n%s", got)
		}
		got = get("subject-keep", 1) // keep
		want := "X-Popgate-Warning: not changed: spamtag-keep: signed (dkim d=example.net)\r\n" + stamp + string(subjSigned)
		if string(got) != want || !verifies(got, signer) {
			t.Errorf("under keep: got\n%s\nwant\n%s", got, want)
		}
	})
	t.Run("encrypted", func(t *testing.T) {
		got := get("default", 3) // pass-with-tag, the default
		if want := "X-Popgate-Warning: not scanned: encrypted (s/mime)\r\n" + stamp + string(encrypted); string(got) != want {
			t.Errorf("got\n%s\nwant\n%s", got, want)
		}
		if e := newCurl(t, p, users["keep"]).retrErr(2); !strings.HasPrefix(e, tempFailPrefix) {
			t.Errorf("encrypted = tempfail: %q", e)
		}
	})
	for name, msgs := range mailboxes {
		checkMailbox(t, users[name], paths[name], msgs)
	}
}
