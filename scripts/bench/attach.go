package main

import (
	"archive/zip"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
)

// tagPrefix is what the bench's tag filter puts in front of every message
// (filter "tag" "stamp" { headers = { "X-Popgate-Scanned" = "yes" } }).
var tagPrefix = []byte("X-Popgate-Scanned: yes\r\n")

// stripExtensions are the strip filter's rules in the bench (those of
// examples/demo.hcl); archive_filenames makes it list every zip.
var stripExtensions = []string{"exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "docm", "xlsm"}

// b64Part writes raw as base64 in 76-character CRLF lines.
func b64Part(b *bytes.Buffer, raw []byte) {
	enc := base64.StdEncoding.EncodeToString(raw)
	for k := 0; k < len(enc); k += 76 {
		b.WriteString(enc[k:min(k+76, len(enc))])
		b.WriteString("\r\n")
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for k := range b {
		b[k] = byte(rng.Uint32())
	}
	return b
}

// makeAttachMessage builds an attachment-heavy message of exactly size
// bytes, CRLF line ends, deterministic in i: a text part, a zip holding
// three documents (stored, so the strip filter lists real entries), an
// image (PNG magic + data) and, last, a PDF (magic + data) that takes the
// rest of the size. None matches the strip rules. With exe, the image is
// replaced by a Windows executable ("MZ", setup-N.exe) of the same size,
// which the strip rules remove.
func makeAttachMessage(i, size int, exe bool) ([]byte, error) {
	rng := rand.New(rand.NewPCG(uint64(i), 0x6174746163680a)) // "attach"
	boundary := fmt.Sprintf("=_att_%08x", rng.Uint32())
	var head bytes.Buffer
	fmt.Fprintf(&head, "Return-Path: <sender%d@example.com>\r\n", i%7)
	fmt.Fprintf(&head, "Received: from mx%d.example.com (mx%d.example.com [192.0.2.%d])\r\n\tby mail.example.net with ESMTPS id %016x\r\n\tfor <bench@example.net>; Mon, 2 Feb 2026 11:%02d:%02d +0000\r\n",
		i%3, i%3, 10+i%200, rng.Uint64(), (i/60)%60, i%60)
	fmt.Fprintf(&head, "From: Sender %d <sender%d@example.com>\r\n", i%7, i%7)
	head.WriteString("To: Bench User <bench@example.net>\r\n")
	fmt.Fprintf(&head, "Subject: Documents for project %d\r\n", i)
	fmt.Fprintf(&head, "Date: Mon, 2 Feb 2026 11:%02d:%02d +0000\r\n", (i/60)%60, i%60)
	fmt.Fprintf(&head, "Message-ID: <att.%d.%016x@example.com>\r\n", i, rng.Uint64())
	head.WriteString("MIME-Version: 1.0\r\n")
	fmt.Fprintf(&head, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", boundary)
	head.WriteString("This is a multi-part message in MIME format.\r\n\r\n")
	fmt.Fprintf(&head, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)
	for l := 0; l < 25; l++ {
		line := ""
		if l%11 == 4 {
			line = "."
		}
		for len(line) < 60 {
			if line != "" && line != "." {
				line += " "
			}
			line += words[rng.IntN(len(words))]
		}
		head.WriteString(line + "\r\n")
	}

	// The zip: three documents, stored (random data does not compress).
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	for k, name := range []string{"contract.docx", "budget.xlsx", "minutes.odt"} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: fmt.Sprintf("project-%d/%s", i, name), Method: zip.Store})
		if err != nil {
			return nil, err
		}
		_, _ = w.Write(randBytes(rng, 5000+k*1500))
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	var mid bytes.Buffer
	fmt.Fprintf(&mid, "--%s\r\nContent-Type: application/zip; name=\"documents-%d.zip\"\r\nContent-Disposition: attachment; filename=\"documents-%d.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
	b64Part(&mid, zbuf.Bytes())
	img := randBytes(rng, 14000)
	if exe {
		copy(img, "MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff")
		fmt.Fprintf(&mid, "--%s\r\nContent-Type: application/octet-stream; name=\"setup-%d.exe\"\r\nContent-Disposition: attachment; filename=\"setup-%d.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
	} else {
		copy(img, "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
		fmt.Fprintf(&mid, "--%s\r\nContent-Type: image/png; name=\"photo-%d.png\"\r\nContent-Disposition: attachment; filename=\"photo-%d.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
	}
	b64Part(&mid, img)
	pdfHead := fmt.Sprintf("--%s\r\nContent-Type: application/pdf; name=\"report-%d.pdf\"\r\nContent-Disposition: attachment; filename=\"report-%d.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
	tail := fmt.Sprintf("--%s--\r\n", boundary)

	// The PDF is whole 76-character lines; the remainder goes into a filler
	// line at the end of the text part (at least CRLF).
	fixed := head.Len() + mid.Len() + len(pdfHead) + len(tail)
	rest := size - fixed - 2
	if rest < 78 {
		return nil, fmt.Errorf("-size %d is too small for an attachment-heavy message (at least %d bytes)", size, fixed+80)
	}
	lines := rest / 78
	filler := rest - lines*78
	pdf := randBytes(rng, 57*lines)
	copy(pdf, "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")

	var m bytes.Buffer
	m.Grow(size)
	m.Write(head.Bytes())
	for k := 0; k < filler; k++ {
		m.WriteByte('a' + byte(k%26))
	}
	m.WriteString("\r\n")
	m.Write(mid.Bytes())
	m.WriteString(pdfHead)
	b64Part(&m, pdf)
	m.WriteString(tail)
	if m.Len() != size {
		return nil, fmt.Errorf("internal error: attachment message %d is %d bytes, want %d", i, m.Len(), size)
	}
	return m.Bytes(), nil
}

// checkStripped checks a message popgate delivered for one with an .exe:
// the tag in front, it parses as MIME, it has as many parts as the
// original, no part is named *.exe any more, and the other attachments are
// still there.
func checkStripped(body []byte, parts int) error {
	if !bytes.HasPrefix(body, tagPrefix) {
		return errors.New("stripped message without the tag header")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("stripped message does not parse: %w", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || !strings.HasPrefix(mt, "multipart/") {
		return fmt.Errorf("stripped message: Content-Type %q (%v)", msg.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	n, kept := 0, 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("stripped message, part %d: %w", n+1, err)
		}
		n++
		name := strings.ToLower(p.FileName())
		if strings.HasSuffix(name, ".exe") || strings.Contains(strings.ToLower(p.Header.Get("Content-Type")), ".exe") {
			return fmt.Errorf("stripped message still has %q", p.FileName())
		}
		if strings.HasSuffix(name, ".zip") || strings.HasSuffix(name, ".pdf") {
			kept++
		}
		if _, err := io.Copy(io.Discard, p); err != nil {
			return fmt.Errorf("stripped message, part %d: %w", n, err)
		}
	}
	if n != parts || kept != 2 {
		return fmt.Errorf("stripped message has %d parts (%d of zip and pdf), want %d (2)", n, kept, parts)
	}
	return nil
}
