package strip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/popgate/popgate/internal/archive"
	"github.com/popgate/popgate/internal/mimetree"
)

// Files a part carries inside itself that a mail client shows as
// attachments: the attachments of a winmail.dat (TNEF) and files
// uuencoded or BinHex-encoded in a text part. The rules' names, extensions,
// detected types, disguised names and sizes apply to each such file as to a
// MIME attachment; when one matches, the action applies to the part that
// holds it (the text part or the winmail.dat is what is stripped). Their
// formats are the archive package's Attachments formats; archive_filenames
// sees the same files as archive members.

// embeddedLabel names an Attachments format's files in explanations.
var embeddedLabel = map[string]string{
	"tnef":     "TNEF (winmail.dat) attachment",
	"uuencode": "uuencoded file",
	"binhex":   "BinHex file",
}

// gateBufs hold the head of a part that decides whether it is looked into
// at all: every leaf part of every message has one.
var gateBufs = sync.Pool{New: func() any { b := make([]byte, 512); return &b }}

// errWorst stops a walk at a match no other can outdo (reject).
var errWorst = errors.New("most severe match found")

// embeddable reports whether a rule says anything about an embedded file:
// declared content types and archive members it cannot have.
func (rl *rule) embeddable() bool {
	return len(rl.globs)+len(rl.exts)+len(rl.dtypes) > 0 || rl.suspicious || (!rl.hasSelector && !rl.needsArchive)
}

// mayEmbed reports whether a part starting with head may be text, which
// can hold uuencoded or BinHex files after any amount of prose: no NUL in
// its head.
func mayEmbed(head []byte) bool { return bytes.IndexByte(head, 0) < 0 }

// embedded applies the rules to the files embedded in a leaf part and
// returns the most severe match among them (nil when none matches).
func (ev *evaluator) embedded(pi *partInfo) (*match, error) {
	var rules []*rule
	detect := false
	for _, rl := range ev.f.rules {
		if rl.embeddable() {
			rules = append(rules, rl)
			detect = detect || rl.needsDetected
		}
	}
	p := pi.p
	if len(rules) == 0 || p.Kind != mimetree.Leaf || strings.HasPrefix(p.ContentType, "message/") {
		return nil, nil // an encoded message is looked into as a message
	}
	// Only text (no NUL in its head) can hold uuencoded or BinHex files
	// after any amount of prose; a TNEF stream shows in its head. Other
	// parts are not decoded a second time.
	head, whole := pi.head, pi.headDone && len(pi.head) < ev.f.headLen
	if !pi.headDone {
		bp := gateBufs.Get().(*[]byte)
		defer gateBufs.Put(bp)
		n, _ := io.ReadFull(p.Content(pi.r), *bp)
		head, whole = (*bp)[:n], n < len(*bp)
	}
	// A part that is all in its head (most are short) is sniffed exactly
	// on it; a longer text part may hold a block after its head.
	candidate := !whole && mayEmbed(head)
	for _, f := range archive.Formats() {
		if !candidate && f.Attachments {
			candidate = f.Sniff(head, bytes.NewReader(head), int64(len(head)), p.Filename)
		}
	}
	if !candidate {
		return nil, nil
	}
	r, size, done, err := ev.decodedAt(pi)
	if err != nil {
		return nil, err
	}
	defer done()
	var worst *match
	files := 0
	for _, f := range archive.Formats() {
		if !f.Attachments {
			continue
		}
		// Walk without Sniff: for the text formats both are a scan of the
		// whole part, and Walk says ErrNotFormat when there is no block.
		err := f.Walk(ev.ctx, r, size, p.Filename, func(m *archive.Member) error {
			if m.Dir {
				return nil
			}
			if files++; files > ev.f.alim.MaxEntries {
				return &archive.LimitError{Limit: "entries", Max: int64(ev.f.alim.MaxEntries), Path: m.Name}
			}
			em, err := ev.embeddedFile(rules, detect, p, f, m)
			if err != nil {
				return err
			}
			if em != nil && (worst == nil || severity(em.Action) > severity(worst.Action)) {
				worst = em
				if severity(em.Action) == severity(ActionReject) {
					return errWorst
				}
			}
			return nil
		})
		var ae *archive.LimitError
		switch {
		case errors.As(err, &ae):
			if ev.f.onArchive == ActionPass {
				return worst, nil
			}
			return &match{Part: p, Name: p.Filename, Action: ev.f.onArchive, Why: ae.Error()}, nil
		case err == errWorst:
			return worst, nil
		case err != nil && ev.ctx.Err() != nil:
			return nil, err
		}
		// A corrupt or unsupported block: the files before it still
		// counted; the rest is for on_unreadable_archive, as for any
		// container.
	}
	return worst, nil
}

// embeddedFile applies rules to one embedded file m of format f in part p.
func (ev *evaluator) embeddedFile(rules []*rule, detect bool, p *mimetree.Part, f *archive.Format, m *archive.Member) (*match, error) {
	norm, sus := normalizeName(m.Name)
	// The file as a part of its own: no declared type, no archive listing
	// here (the archive lister sees it as a member), its content's head
	// and size known up front.
	fi := &partInfo{p: &mimetree.Part{}, names: []nameInfo{{raw: m.Name, norm: norm, suspicious: sus}},
		headDone: true, sizeDone: true, size: m.Size, archDone: true}
	if detect && m.Open != nil {
		rc, err := m.Open()
		if err == nil {
			buf := make([]byte, sniffLen)
			n, _ := io.ReadFull(rc, buf)
			rc.Close()
			fi.head = buf[:n]
		}
	}
	for _, rl := range rules {
		why, _, ok, err := ev.match(rl, fi)
		if err != nil {
			return nil, err
		}
		if ok {
			return &match{Part: p, Name: p.Filename, Rule: rl.name, Action: rl.action,
				Why: fmt.Sprintf("%s %s: %s", embeddedLabel[f.Name], displayName(m.Name), why)}, nil
		}
	}
	return nil, nil
}

// decodedAt gives the decoded content of the part as an io.ReaderAt: the
// body itself when it is not transfer-encoded, else a spooled copy (going
// on from the head's decoding pass when that is unread); done releases it.
func (ev *evaluator) decodedAt(pi *partInfo) (io.ReaderAt, int64, func(), error) {
	if p := pi.p; mimetree.IdentityEncoding(p.Encoding) {
		n := p.BodyEnd - p.BodyStart
		return io.NewSectionReader(pi.r, p.BodyStart, n), n, func() {}, nil
	}
	w := ev.f.spool.NewWriter()
	if _, err := ev.content(w, pi); err != nil {
		w.Abort()
		return nil, 0, nil, err
	}
	b, err := w.Finish()
	if err != nil {
		return nil, 0, nil, err
	}
	rc, err := b.Open()
	if err != nil {
		b.Remove()
		return nil, 0, nil, err
	}
	ra, ok := rc.(io.ReaderAt)
	if !ok {
		rc.Close()
		b.Remove()
		return nil, 0, nil, errors.New("strip: spool body without io.ReaderAt")
	}
	return ra, b.Size(), func() { rc.Close(); b.Remove() }, nil
}
