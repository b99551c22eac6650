package mailsig

import (
	"bytes"
	"context"
	"crypto/rand"
	"strings"
	"testing"
)

// BenchmarkDetect reads a 10 MB message: a text part (base64, searched for
// armour) and a binary attachment.
func BenchmarkDetect(b *testing.B) {
	bin := make([]byte, 7<<20)
	_, _ = rand.Read(bin)
	text := strings.Repeat("a line of text in a long letter, nothing signed here.\n", 20000)
	msg := []byte("DKIM-Signature: v=1; d=example.com; s=sel; h=from:to:subject\r\n" + plainHeader +
		multipart("multipart/mixed", "m", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(text),
			"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(string(bin))))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		info, err := Detect(context.Background(), bytes.NewReader(msg), int64(len(msg)))
		if err != nil || len(info.Signatures) != 1 {
			b.Fatal(err)
		}
	}
}
