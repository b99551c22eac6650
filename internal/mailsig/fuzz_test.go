package mailsig

import (
	"bytes"
	"context"
	"slices"
	"testing"
)

// FuzzDetect: any input is read without a panic, within bounds, and what
// ReadHeader finds in a message is what Detect found.
func FuzzDetect(f *testing.F) {
	for _, s := range []string{
		plainHeader + "\r\nhello\r\n",
		"DKIM-Signature: v=1; d=example.com; s=sel; c=relaxed; l=5; h=from:from:subject\r\n" + plainHeader + "\r\nhi\r\n",
		plainHeader + multipart(`multipart/signed; protocol="application/pkcs7-signature"`, "s1", textPart, smimeSig),
		plainHeader + multipart("multipart/mixed", "m", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(pgpMsg), "Content-Type: message/rfc822\r\n\r\n"+plainHeader+"\r\n"+clearSign),
		plainHeader + "Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIAG\r\n",
		"DKIM-Signature: h=\r\n \r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		size := int64(len(msg))
		info, err := Detect(context.Background(), bytes.NewReader(msg), size)
		if err != nil {
			t.Fatalf("Detect failed on a readable message: %v", err)
		}
		if info.BodyStart < 0 || info.BodyStart > size {
			t.Fatalf("body at %d of %d", info.BodyStart, size)
		}
		for _, s := range info.Signatures {
			if s.Off < 0 || s.Len < 0 || s.Off+s.Len > size {
				t.Fatalf("%s covers [%d,+%d) of %d bytes", s.String(), s.Off, s.Len, size)
			}
			if s.Body && s.Off+s.Len != size {
				t.Fatalf("%s: a body that does not reach the end", s.String())
			}
			fs, _, err := ReadHeader(bytes.NewReader(msg))
			if err == nil && info.Partial == nil && !info.HeaderIntact(&s, fs) {
				t.Fatalf("%s: the unchanged header does not keep it", s.String())
			}
		}
		if info.Partial != nil {
			return
		}
		fs, start, err := ReadHeader(bytes.NewReader(msg))
		if err != nil || start != info.BodyStart || !slices.Equal(fs, info.Fields) {
			t.Fatalf("ReadHeader: %d fields, body at %d, %v; Detect: %d fields, body at %d", len(fs), start, err, len(info.Fields), info.BodyStart)
		}
	})
}
