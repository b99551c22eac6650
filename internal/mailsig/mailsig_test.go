package mailsig

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/popgate/popgate/internal/dkimtest"
)

const plainHeader = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"

func detect(t *testing.T, msg []byte) *Info {
	t.Helper()
	info, err := Detect(context.Background(), bytes.NewReader(msg), int64(len(msg)))
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	return info
}

// sigs describes the signatures as "kind off len body" for comparison.
func sigs(msg []byte, info *Info) []string {
	var out []string
	for _, s := range info.Signatures {
		d := s.String()
		if s.Kind == DKIM {
			d += fmt.Sprintf(" s=%s h=%s c=%s l=%v", s.Selector, strings.Join(s.Headers, ":"), s.Canonicalization, s.BodyLength)
		}
		region := string(msg[s.Off : s.Off+s.Len])
		if s.Body {
			d += " body"
			if s.Off != info.BodyStart || s.Off+s.Len != int64(len(msg)) {
				d += fmt.Sprintf(" WRONG [%d,+%d)", s.Off, s.Len)
			}
		} else {
			first, _, _ := strings.Cut(region, "\r\n")
			d += " part " + first
		}
		out = append(out, d)
	}
	return out
}

func multipart(ctype, boundary string, parts ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Content-Type: %s; boundary=%q\r\n\r\npreamble\r\n", ctype, boundary)
	for _, p := range parts {
		b.WriteString("--" + boundary + "\r\n" + p + "\r\n")
	}
	b.WriteString("--" + boundary + "--\r\n")
	return b.String()
}

const (
	textPart  = "Content-Type: text/plain\r\n\r\nhello\r\n"
	smimeSig  = "Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n"
	pgpSig    = "Content-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\niQEz\r\n-----END PGP SIGNATURE-----\r\n"
	exePart   = "Content-Type: application/octet-stream; name=a.exe\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n"
	clearSign = "-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\nhello\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\niQEz\r\n-----END PGP SIGNATURE-----\r\n"
	pgpMsg    = "-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n"
)

func b64(s string) string {
	enc := base64.StdEncoding.EncodeToString([]byte(s))
	var b strings.Builder
	for len(enc) > 0 {
		n := min(len(enc), 76)
		b.WriteString(enc[:n] + "\r\n")
		enc = enc[n:]
	}
	return b.String()
}

func TestDetect(t *testing.T) {
	smimeSigned := multipart(`multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256`, "s1", textPart, smimeSig)
	pgpSigned := multipart(`multipart/signed; protocol="application/pgp-signature"; micalg=pgp-sha256`, "p1", textPart, pgpSig)
	for _, tc := range []struct {
		name      string
		msg       string
		signed    []string
		encrypted []string
		partial   bool
	}{
		{name: "plain", msg: plainHeader + "\r\nhello\r\n"},
		{
			name:   "dkim",
			msg:    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=Example.COM; s=sel;\r\n\th=From : To:\r\n  Subject:from; bh=abc; b=def\r\n" + plainHeader + "\r\nhello\r\n",
			signed: []string{"dkim d=example.com s=sel h=from:to:subject:from c=relaxed/relaxed l=false body"},
		},
		{
			name:   "dkim defaults, l=, and one without h=",
			msg:    "DKIM-Signature: v=1; d=a.example; s=x; h=from; l=10; bh=a; b=b\r\nDKIM-Signature: v=1; d=b.example; s=y; bh=a; b=b\r\nDkim-Signature: v=1; d=c.example; s=z; c=relaxed; h=subject; bh=a; b=b\r\n" + plainHeader + "\r\nhello\r\n",
			signed: []string{"dkim d=a.example s=x h=from c=simple/simple l=true body", "dkim d=c.example s=z h=subject c=relaxed/simple l=false body"},
		},
		{
			name:   "s/mime multipart/signed",
			msg:    plainHeader + "MIME-Version: 1.0\r\n" + smimeSigned,
			signed: []string{"s/mime body"},
		},
		{
			name:   "x-pkcs7-signature, pgp/mime nested in mixed",
			msg:    plainHeader + multipart("multipart/mixed", "m", "Content-Type: text/plain\r\n\r\nintro", strings.Replace(pgpSigned, "pgp-signature", "pgp-signature", 1)),
			signed: []string{"pgp/mime part Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=\"p1\""},
		},
		{
			name:   "unknown protocol",
			msg:    plainHeader + multipart(`multipart/signed; protocol="application/x-other"`, "o", textPart, textPart),
			signed: []string{"multipart/signed body"},
		},
		{
			name:      "pkcs7 enveloped, signed-data, no smime-type, compressed",
			msg:       plainHeader + multipart("multipart/mixed", "m", "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\nMIAG", "Content-Type: application/x-pkcs7-mime; smime-type=signed-data\r\n\r\nMIAG", "Content-Type: application/pkcs7-mime\r\n\r\nMIAG", "Content-Type: application/pkcs7-mime; smime-type=compressed-data\r\n\r\nMIAG"),
			signed:    []string{"s/mime part Content-Type: application/x-pkcs7-mime; smime-type=signed-data"},
			encrypted: []string{"s/mime", "s/mime"},
		},
		{
			name:      "s/mime enveloped message",
			msg:       plainHeader + "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHA6CAMIACAQAx\r\n",
			encrypted: []string{"s/mime"},
		},
		{
			name:      "pgp/mime encrypted",
			msg:       plainHeader + multipart(`multipart/encrypted; protocol="application/pgp-encrypted"`, "e", "Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1", "Content-Type: application/octet-stream\r\n\r\n"+pgpMsg),
			encrypted: []string{"pgp/mime"},
		},
		{
			name:   "pgp inline signed message",
			msg:    plainHeader + "\r\n" + clearSign,
			signed: []string{"pgp inline body"},
		},
		{
			name:      "pgp inline: base64 parts, after some text, and a quoted one",
			msg:       plainHeader + multipart("multipart/mixed", "m", "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64("see below:\n\n"+strings.ReplaceAll(pgpMsg, "\r\n", "\n")), "Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHi,\r\n\r\n"+clearSign, "Content-Type: text/plain\r\n\r\n> -----BEGIN PGP MESSAGE-----\r\n"),
			signed:    []string{"pgp inline part Content-Type: text/plain"},
			encrypted: []string{"pgp inline"},
		},
		{
			name: "armour in a part that is not text",
			msg:  plainHeader + multipart("multipart/mixed", "m", "Content-Type: application/octet-stream\r\n\r\n"+pgpMsg),
		},
		{
			name: "armour in base64 that does not decode",
			msg:  plainHeader + "Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n" + b64(pgpMsg),
		},
		{
			name:      "forwarded: signed and encrypted inside message/rfc822",
			msg:       plainHeader + multipart("multipart/mixed", "m", textPart, "Content-Type: message/rfc822\r\n\r\n"+plainHeader+smimeSigned, "Content-Type: message/rfc822\r\n\r\n"+plainHeader+"\r\n"+pgpMsg),
			signed:    []string{"s/mime part From: Alice <alice@example.com>"},
			encrypted: []string{"pgp inline"},
		},
		{
			name:   "multipart/signed without a boundary",
			msg:    plainHeader + "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"\r\n\r\njunk\r\n",
			signed: []string{"s/mime body"},
		},
		{
			name:    "beyond the depth limit: the open signed part runs to the end",
			msg:     plainHeader + multipart(`multipart/signed; protocol="application/pgp-signature"`, "d0", strings.Repeat("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n", 60)),
			signed:  []string{"pgp/mime body"},
			partial: true,
		},
		{
			name: "no header end, LF only, empty",
			msg:  "Subject: x\nDKIM-Signature: d=x; h=from",
			signed: []string{
				"dkim d=x s= h=from c=simple/simple l=false body",
			},
		},
		{name: "empty", msg: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(tc.msg)
			info := detect(t, msg)
			if got := sigs(msg, info); !slices.Equal(got, tc.signed) {
				t.Errorf("signatures\n%q\nwant\n%q", got, tc.signed)
			}
			if !slices.Equal(info.Encrypted, tc.encrypted) {
				t.Errorf("encrypted %q, want %q", info.Encrypted, tc.encrypted)
			}
			if (info.Partial != nil) != tc.partial {
				t.Errorf("partial: %v", info.Partial)
			}
		})
	}
}

// A hostile header with many signatures costs a bounded amount.
func TestDetectManyDKIM(t *testing.T) {
	msg := []byte(strings.Repeat("DKIM-Signature: d=x.example; s=s; h=from:to:subject:subject:subject\r\n", 3000) + plainHeader + "\r\nhi\r\n")
	info := detect(t, msg)
	if len(info.Signatures) != MaxDKIM || len(info.Fields) != 3005 {
		t.Errorf("%d signatures, %d fields", len(info.Signatures), len(info.Fields))
	}
	big := []byte(strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\r\n", 300) + "\r\n")
	info = detect(t, big)
	if info.Partial == nil {
		t.Error("a 300 KB header is not partial")
	}
	if _, _, err := ReadHeader(bytes.NewReader(big)); !errors.Is(err, ErrHeaderTooLarge) {
		t.Errorf("ReadHeader of a 300 KB header: %v", err)
	}
}

func TestDetectReadError(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msg := []byte(plainHeader + "\r\nhi\r\n")
	if _, err := Detect(ctx, bytes.NewReader(msg), int64(len(msg))); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
}

func TestReadHeader(t *testing.T) {
	for _, msg := range []string{
		plainHeader + "\r\nbody\r\n",
		"A: 1\nB: 2\n folded\n\nbody",
		"A: 1\r\nB: " + strings.Repeat("x", 10000) + "\r\n\r\n",
		"Only: header",
		"",
		"\r\nbody",
	} {
		fs, start, err := ReadHeader(strings.NewReader(msg))
		info := detect(t, []byte(msg))
		if err != nil || start != info.BodyStart || !slices.Equal(fs, info.Fields) {
			t.Errorf("%.30q: ReadHeader %d fields, body at %d, %v; Detect %d fields, body at %d", msg, len(fs), start, err, len(info.Fields), info.BodyStart)
		}
	}
}

// prepend adds field lines on top of msg, as the tag filter and the chain
// do.
func prepend(msg []byte, lines string) []byte { return append([]byte(lines), msg...) }

func replace(msg []byte, old, new string) []byte {
	return bytes.Replace(msg, []byte(old), []byte(new), 1)
}

// HeaderIntact says what a real DKIM verifier says: for each signed set of
// header fields and each header-only change, the signature verifies after
// the change exactly when HeaderIntact reports it intact.
func TestHeaderIntactAgreesWithVerifier(t *testing.T) {
	signer := dkimtest.New(t, "example.com", "sel")
	base := []byte(plainHeader + "X-List: one\r\n\r\nhello\r\n")
	changes := []struct {
		name string
		fn   func([]byte) []byte
	}{
		{"a new field", func(m []byte) []byte { return prepend(m, "X-Popgate-Scanned: yes\r\n") }},
		{"another X-List on top", func(m []byte) []byte { return prepend(m, "X-List: two\r\n") }},
		{"a Reply-To on top", func(m []byte) []byte { return prepend(m, "Reply-To: x@example.org\r\n") }},
		{"subject prefixed", func(m []byte) []byte { return replace(m, "Subject: hello", "Subject: [SPAM] hello") }},
		{"subject kept, a field below it", func(m []byte) []byte { return replace(m, "\r\n\r\nhello", "\r\nX-List: three\r\n\r\nhello") }},
		{"the signature's own field changed", func(m []byte) []byte { return replace(m, "DKIM-Signature: v=1", "DKIM-Signature: v=1 ") }},
	}
	for _, h := range [][]string{
		{"from", "to", "subject", "date"},
		{"from", "to"},
		{"from", "x-list"},
		{"from", "x-list", "x-list"},                // oversigned once
		{"from", "subject", "reply-to", "reply-to"}, // oversigned: none there
		{"from", "subject", "x-popgate-scanned"},
	} {
		for _, relaxed := range []bool{false, true} {
			signed := signer.Sign(t, base, h, relaxed)
			if err := dkimtest.Verify(signed, signer); err != nil {
				t.Fatalf("h=%v: fresh signature: %v", h, err)
			}
			info := detect(t, signed)
			if len(info.Signatures) != 1 || !slices.Equal(info.Signatures[0].Headers, h) {
				t.Fatalf("h=%v: detected %+v", h, info.Signatures)
			}
			for _, c := range changes {
				changed := c.fn(signed)
				fs, _, err := ReadHeader(bytes.NewReader(changed))
				if err != nil {
					t.Fatal(err)
				}
				intact := info.HeaderIntact(&info.Signatures[0], fs)
				verr := dkimtest.Verify(changed, signer)
				if intact != (verr == nil) {
					t.Errorf("h=%v relaxed=%v, %s: HeaderIntact %v, verifier: %v", h, relaxed, c.name, intact, verr)
				}
			}
		}
	}
}

func TestHeaderIntactMIME(t *testing.T) {
	msg := []byte(plainHeader + "MIME-Version: 1.0\r\n" + multipart(`multipart/signed; protocol="application/pkcs7-signature"`, "s1", textPart, smimeSig))
	info := detect(t, msg)
	sig := &info.Signatures[0]
	for _, tc := range []struct {
		name   string
		msg    []byte
		intact bool
	}{
		{"unchanged", msg, true},
		{"a field on top", prepend(msg, "X-Popgate-Scanned: yes\r\n"), true},
		{"subject prefixed", replace(msg, "Subject: hello", "Subject: [SPAM] hello"), true},
		{"content-type changed", replace(msg, "boundary=\"s1\"", "boundary=\"s2\""), false},
		{"a content-type on top", prepend(msg, "Content-Type: text/plain\r\n"), false},
	} {
		fs, _, err := ReadHeader(bytes.NewReader(tc.msg))
		if err != nil {
			t.Fatal(err)
		}
		if got := info.HeaderIntact(sig, fs); got != tc.intact {
			t.Errorf("%s: intact %v", tc.name, got)
		}
	}
	// A signed part inside has nothing in the message header.
	inner := "Content-Type: " + strings.TrimPrefix(multipart(`multipart/signed; protocol="application/pkcs7-signature"`, "s1", textPart, smimeSig), "Content-Type: ")
	info = detect(t, []byte(plainHeader+multipart("multipart/mixed", "m", inner)))
	if len(info.Signatures) != 1 || info.Signatures[0].Body || !info.HeaderIntact(&info.Signatures[0], nil) {
		t.Errorf("nested: %+v", info.Signatures)
	}
}
