package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"mime"
	"mime/quotedprintable"
	"strings"
)

// The spam filter's messages are small and of the shapes a mailbox holds
// (spam is scanned on every message, and most mail is small): short notes,
// replies with a quoted thread, newsletters (text and HTML alternatives,
// quoted-printable), an HTML-only offer, a note in another script (base64
// UTF-8, encoded-word subject), and one in ten with a small PDF. None
// carries X-Spam-* or Authentication-Results fields, so the spam filter's
// removals have nothing to remove and every change is lossless.

// spamMixKinds names the shape of message i (1-based) by i mod 10: three
// notes, two replies, two newsletters, an attachment, an HTML offer, a
// non-ASCII note.
var spamMixKinds = [10]string{"note", "note", "reply", "newsletter", "note", "reply", "html", "newsletter", "attachment", "utf8"}

// makeSpamMixMessage builds message i (1-based) of the mix, CRLF line ends,
// deterministic in i.
func makeSpamMixMessage(i int) []byte {
	rng := rand.New(rand.NewPCG(uint64(i), 0x7370616d6d6978)) // "spammix"
	kind := spamMixKinds[i%len(spamMixKinds)]
	var h bytes.Buffer
	sender := fmt.Sprintf("%s@%s", []string{"anna", "ben", "chen", "dora", "emil", "fatima", "georg"}[i%7],
		[]string{"example.com", "example.org", "example.net"}[i%3])
	fmt.Fprintf(&h, "Return-Path: <%s>\r\n", sender)
	fmt.Fprintf(&h, "Received: from mx%d.example.com (mx%d.example.com [192.0.2.%d])\r\n\tby mail.example.net with ESMTPS id %016x\r\n\tfor <bench@example.net>; Mon, 2 Feb 2026 12:%02d:%02d +0000\r\n",
		i%3, i%3, 10+i%200, rng.Uint64(), (i/60)%60, i%60)
	fmt.Fprintf(&h, "Date: Mon, 2 Feb 2026 12:%02d:%02d +0000\r\n", (i/60)%60, i%60)
	fmt.Fprintf(&h, "Message-ID: <mix.%d.%016x@%s>\r\n", i, rng.Uint64(), sender[strings.IndexByte(sender, '@')+1:])
	h.WriteString("To: Bench User <bench@example.net>\r\n")

	text := func(lines int) string {
		var b strings.Builder
		for l := 0; l < lines; l++ {
			line := ""
			if l%13 == 7 {
				line = "." // dot-stuffing on the wire
			}
			for len(line) < 50+rng.IntN(22) {
				if line != "" && line != "." {
					line += " "
				}
				line += words[rng.IntN(len(words))]
			}
			b.WriteString(line + "\r\n")
		}
		return b.String()
	}
	qp := func(s string) string {
		var b bytes.Buffer
		w := quotedprintable.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		_ = w.Close()
		return strings.ReplaceAll(strings.ReplaceAll(b.String(), "\r\n", "\n"), "\n", "\r\n")
	}
	html := func(paras int) string {
		var b strings.Builder
		b.WriteString("<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><title>News</title></head>\r\n<body style=\"font-family: Arial, sans-serif; color: #333333;\">\r\n")
		b.WriteString("<table width=\"600\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" align=\"center\">\r\n")
		for p := 0; p < paras; p++ {
			fmt.Fprintf(&b, "<tr><td style=\"padding: 12px 24px; font-size: 14px; line-height: 20px;\"><h2 style=\"margin: 0 0 8px 0;\">%s</h2>\r\n<p>%s</p>\r\n",
				strings.TrimSpace(text(1)), strings.ReplaceAll(strings.TrimSpace(text(4+rng.IntN(4))), "\r\n", " "))
			fmt.Fprintf(&b, "<p><a href=\"https://www.example.org/news/%d/%d?utm_source=newsletter&amp;utm_medium=email\">Read more</a></p></td></tr>\r\n", i, p)
		}
		b.WriteString("<tr><td style=\"font-size: 11px; color: #888888;\">You receive this because you subscribed. <a href=\"https://www.example.org/unsubscribe\">Unsubscribe</a></td></tr>\r\n</table>\r\n</body></html>\r\n")
		return b.String()
	}
	boundary := fmt.Sprintf("=_mix_%08x", rng.Uint32())
	var body bytes.Buffer
	switch kind {
	case "note":
		fmt.Fprintf(&h, "From: %s <%s>\r\n", strings.ToUpper(sender[:1])+sender[1:strings.IndexByte(sender, '@')], sender)
		fmt.Fprintf(&h, "Subject: %s\r\n", strings.TrimSpace(text(1))[:30])
		h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n")
		body.WriteString(text(8 + rng.IntN(30)))
		body.WriteString("\r\n-- \r\n" + sender + "\r\n")
	case "reply":
		fmt.Fprintf(&h, "From: %s\r\n", sender)
		fmt.Fprintf(&h, "Subject: Re: Re: meeting schedule for week %d\r\n", 5+i%40)
		fmt.Fprintf(&h, "In-Reply-To: <thread.%d.2@example.net>\r\nReferences: <thread.%d.1@example.com> <thread.%d.2@example.net>\r\n", i, i, i)
		h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n")
		body.WriteString(text(4 + rng.IntN(8)))
		fmt.Fprintf(&body, "\r\nOn Sun, 1 Feb 2026 at 18:%02d, Bench User wrote:\r\n", i%60)
		for _, l := range strings.SplitAfter(text(20+rng.IntN(40)), "\r\n") {
			if l != "" {
				body.WriteString("> " + l)
			}
		}
		for _, l := range strings.SplitAfter(text(15+rng.IntN(30)), "\r\n") {
			if l != "" {
				body.WriteString(">> " + l)
			}
		}
	case "newsletter":
		fmt.Fprintf(&h, "From: Example News <news@example.org>\r\nSubject: Your weekly digest, issue %d\r\n", 100+i)
		h.WriteString("List-Unsubscribe: <https://www.example.org/unsubscribe>, <mailto:unsubscribe@example.org>\r\nList-Id: <weekly.example.org>\r\n")
		fmt.Fprintf(&h, "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"%s\"\r\n", boundary)
		fmt.Fprintf(&body, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", boundary)
		body.WriteString(qp(text(30 + rng.IntN(40))))
		fmt.Fprintf(&body, "\r\n--%s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n", boundary)
		body.WriteString(qp(html(6 + rng.IntN(10))))
		fmt.Fprintf(&body, "\r\n--%s--\r\n", boundary)
	case "html":
		fmt.Fprintf(&h, "From: Example Shop <offers@example.org>\r\nSubject: Spring offers for you, %d%% off\r\n", 10+i%40)
		h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n")
		body.WriteString(qp(html(4 + rng.IntN(6))))
	case "attachment":
		fmt.Fprintf(&h, "From: %s\r\nSubject: Invoice %d for January\r\n", sender, 20260000+i)
		fmt.Fprintf(&h, "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"%s\"\r\n", boundary)
		fmt.Fprintf(&body, "This is a multi-part message in MIME format.\r\n\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n", boundary)
		body.WriteString(text(6 + rng.IntN(6)))
		fmt.Fprintf(&body, "\r\n--%s\r\nContent-Type: application/pdf; name=\"invoice-%d.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice-%d.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n", boundary, i, i)
		pdf := randBytes(rng, 15000+rng.IntN(30000))
		copy(pdf, "%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
		b64Part(&body, pdf)
		fmt.Fprintf(&body, "--%s--\r\n", boundary)
	case "utf8":
		fmt.Fprintf(&h, "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <%s>\r\n", sender)
		fmt.Fprintf(&h, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", fmt.Sprintf("Grüße aus Köln, Besprechung Nr. %d — Ergebnisse", i)))
		h.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n")
		var t strings.Builder
		for l := 0; l < 10+rng.IntN(20); l++ {
			t.WriteString([]string{"Vielen Dank für die schnelle Rückmeldung zu den Änderungen.", "Die Übersicht der Kosten liegt im gemeinsamen Ordner.",
				"Können wir das Treffen auf Donnerstag verschieben?", "Grüße an das ganze Team in Düsseldorf und München."}[rng.IntN(4)] + "\r\n")
		}
		b64Part(&body, []byte(t.String()))
	}
	h.WriteString("\r\n")
	h.Write(body.Bytes())
	return h.Bytes()
}
