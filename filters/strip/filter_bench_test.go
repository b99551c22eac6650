package strip

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/base64"
	"math/rand/v2"
	"testing"

	"github.com/popgate/popgate/filters"
)

// benchMessage is an attachment-heavy message of about 100 KB that no rule
// below matches: the common case.
func benchMessage() []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	rb := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var zb bytes.Buffer
	zw := zip.NewWriter(&zb)
	for _, n := range []string{"a.docx", "b.txt", "c.pdf"} {
		w, _ := zw.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Store})
		w.Write(rb(5000))
	}
	zw.Close()
	var m bytes.Buffer
	m.WriteString("From: a@example.com\r\nSubject: docs\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n")
	part := func(name, ct string, data []byte) {
		m.WriteString("--b\r\nContent-Type: " + ct + "; name=\"" + name + "\"\r\nContent-Disposition: attachment; filename=\"" + name + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		enc := base64.StdEncoding.EncodeToString(data)
		for k := 0; k < len(enc); k += 76 {
			m.WriteString(enc[k:min(k+76, len(enc))] + "\r\n")
		}
	}
	part("docs.zip", "application/zip", zb.Bytes())
	part("img.png", "image/png", append([]byte("\x89PNG\r\n\x1a\n"), rb(20000)...))
	part("doc.pdf", "application/pdf", append([]byte("%PDF-1.4\n"), rb(40000)...))
	m.WriteString("--b--\r\n")
	return m.Bytes()
}

// BenchmarkFilterAttachments measures the strip filter on the common case
// (nothing stripped), zip listing included.
func BenchmarkFilterAttachments(b *testing.B) {
	f, err := New("d", Config{Rules: []Rule{{Name: "d", Extensions: []string{"exe", "scr", "js"}, ArchiveFilenames: []string{"*.exe"}, Action: ActionStrip}}}, &filters.Spool{})
	if err != nil {
		b.Fatal(err)
	}
	msg := benchMessage()
	body := filters.BytesBody(msg)
	ctx := context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		v, err := f.Filter(ctx, &filters.Envelope{}, body)
		if err != nil || v.Action != filters.Pass {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkStripAttachment measures the strip filter when it strips (one
// attachment of the benchmark message replaced by a notice, the rest
// kept by reference): the rewrite and its Edits.
func BenchmarkStripAttachment(b *testing.B) {
	f, err := New("d", Config{Rules: []Rule{{Name: "d", Extensions: []string{"pdf"}, Action: ActionStrip}}}, &filters.Spool{})
	if err != nil {
		b.Fatal(err)
	}
	msg := benchMessage()
	body := filters.BytesBody(msg)
	ctx := context.Background()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		v, err := f.Filter(ctx, &filters.Envelope{}, body)
		if err != nil || v.Action != filters.Replace {
			b.Fatal(v, err)
		}
		v.Body.Remove()
	}
}
