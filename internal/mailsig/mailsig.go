// Package mailsig finds what a gateway's change to a message would break,
// and what of it no filter can read: its DKIM signatures (which header
// fields each signs), its S/MIME and PGP signatures (multipart/signed,
// application/pkcs7-mime signed-data, PGP cleartext armour) and its
// encrypted parts (multipart/encrypted, pkcs7-mime enveloped-data, PGP
// message armour).
//
// It reads the structure only: the header and the MIME tree
// (internal/mimetree), in one bounded, streaming pass. It verifies nothing:
// whether a signature is valid is for the client to find out; whether a
// change would break it follows from what the signature covers, which is
// written in the message. A change keeps a signature when the bytes it
// covers are unchanged: the header fields it signs (selected as a DKIM
// verifier selects them, from the bottom) and the body, or the signed part.
// That is stricter than a verifier's relaxed canonicalization, never
// looser.
package mailsig

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"strings"

	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// MaxDKIM bounds the DKIM signatures looked at: a message with more is
// broken or hostile, and a verifier gives up sooner (go-msgauth's
// MaxVerifications is of that order). The rest are not reported.
const MaxDKIM = 32

// MaxHeaderBytes bounds the header section read, as mimetree does.
const MaxHeaderBytes = mimetree.DefaultMaxHeaderBytes

// Kind is the kind of a signature.
type Kind int

const (
	// DKIM is a DKIM-Signature header field (RFC 6376).
	DKIM Kind = iota + 1
	// SMIME is a multipart/signed part with an S/MIME (PKCS #7) signature,
	// or an application/pkcs7-mime part of smime-type signed-data.
	SMIME
	// PGPMIME is a multipart/signed part with a PGP signature (RFC 3156).
	PGPMIME
	// PGPInline is a text part holding PGP cleartext-signed armour.
	PGPInline
	// OtherSigned is a multipart/signed part of another protocol.
	OtherSigned
)

func (k Kind) String() string {
	switch k {
	case DKIM:
		return "dkim"
	case SMIME:
		return "s/mime"
	case PGPMIME:
		return "pgp/mime"
	case PGPInline:
		return "pgp inline"
	case OtherSigned:
		return "multipart/signed"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Signature is one signature of a message and what it covers.
type Signature struct {
	Kind Kind
	// Domain (d=) and Selector (s=) of a DKIM signature, lower-cased.
	Domain, Selector string
	// Headers are the header fields a DKIM signature signs (its h= tag),
	// lower-cased, in order. A name appears once per instance signed, and
	// more often than the message has it when the signer "oversigned" it
	// so that no such field can be added.
	Headers []string
	// Canonicalization is a DKIM signature's c= tag, header/body
	// ("simple/simple" when absent).
	Canonicalization string
	// BodyLength is set when a DKIM signature has an l= tag: it signs
	// only the start of the body. A change of the body still counts as
	// breaking it wherever it is (finding where the signed length ends
	// would take canonicalizing the body).
	BodyLength bool
	// Off and Len are the bytes of the message the signature covers
	// besides header fields: for DKIM, and for a signed message (a
	// multipart/signed or pkcs7 message, or a PGP-signed text message),
	// the body; for a signed part inside a message, that part, its own
	// header included.
	Off, Len int64
	// Body is set when [Off, Off+Len) is the body of the message: a
	// changed message keeps the signature only if its body is exactly
	// that, and, for a signed message, its MIME header fields (Content-*)
	// are unchanged too.
	Body bool

	field int // DKIM: the index in Info.Fields of the DKIM-Signature field itself
}

// String names the signature for a header field or a log: "dkim
// d=example.com", "s/mime", "pgp/mime", "pgp inline".
func (s *Signature) String() string {
	if s.Kind == DKIM {
		return "dkim d=" + mailtext.HeaderText(s.Domain, 64)
	}
	return s.Kind.String()
}

// Field is a header field as the comparison of two headers needs it: its
// lower-cased name and a hash of its bytes (name, value, folding and line
// breaks).
type Field struct {
	Name string
	Hash uint64
}

// seed keys the field hashes: they are compared within one process only.
var seed = maphash.MakeSeed()

// Info is what Detect found in a message.
type Info struct {
	Size int64
	// BodyStart is where the message's body begins (past the empty line
	// that ends the header; Size when there is none).
	BodyStart int64
	// Fields are the message's header fields, in order.
	Fields []Field
	// Root is the message's MIME structure, read in the same pass; nil
	// when it goes beyond mimetree's default limits (see Partial).
	Root *mimetree.Part
	// Signatures are the message's signatures: DKIM ones in header order,
	// then the others in document order.
	Signatures []Signature
	// Encrypted names each encrypted part ("s/mime", "pgp/mime", "pgp
	// inline", "multipart/encrypted"), in document order.
	Encrypted []string
	// Partial is set when the message's MIME structure goes beyond the
	// limits of mimetree (depth, parts, header size): what lies beyond is
	// not known, and a signed part that was open at that point is taken
	// to run to the end of the message.
	Partial error
}

// ErrHeaderTooLarge is ReadHeader's error for a header section larger than
// MaxHeaderBytes.
var ErrHeaderTooLarge = fmt.Errorf("header section larger than %d bytes", MaxHeaderBytes)

// Detect reads the size bytes of r once and returns what they hold. It
// fails only when reading fails (ctx ending included); a structure beyond
// the limits gives a partial result (Info.Partial).
func Detect(ctx context.Context, r io.Reader, size int64) (*Info, error) {
	d := &detector{info: &Info{Size: size, BodyStart: size}}
	root, err := mimetree.Parse(mailtext.NewReader(ctx, r), size, mimetree.Limits{}, &mimetree.Hooks{
		Header: d.header,
		Line:   d.line,
		// Armour lines start with '-', which Line sees in any part; only
		// base64 text must be decoded line by line to find them.
		Lines: func(p *mimetree.Part) bool {
			return p.Encoding == "base64" && strings.HasPrefix(p.ContentType, "text/")
		},
	})
	var le *mimetree.LimitError
	switch {
	case errors.As(err, &le):
		d.info.Partial = err
	case err != nil:
		return nil, fmt.Errorf("reading the message structure: %w", err)
	default:
		d.info.BodyStart = root.BodyStart
		d.info.Root = root
	}
	d.endArmour()
	for i := range d.info.Signatures { // DKIM: the body
		s := &d.info.Signatures[i]
		s.Off, s.Len = d.info.BodyStart, size-d.info.BodyStart
	}
	for _, sp := range d.signed {
		d.info.Signatures = append(d.info.Signatures, sp.signature(size))
	}
	return d.info, nil
}

// detector is Detect's state while mimetree reads the message.
type detector struct {
	info   *Info
	signed []signedPart
	arm    armour
}

// signedPart is a signed part found in the structure; its extent is known
// only at the end.
type signedPart struct {
	kind Kind
	part *mimetree.Part
}

func (sp signedPart) signature(size int64) Signature {
	p := sp.part
	s := Signature{Kind: sp.kind, field: -1}
	start, end := p.HeaderStart, p.BodyEnd
	if p.Parent == nil {
		start, s.Body = p.BodyStart, true
	}
	if end < p.BodyStart || end > size {
		end = size // still open when a limit stopped the parse
	}
	s.Off, s.Len = start, max(end-start, 0)
	return s
}

// header classifies each part as mimetree reads its header.
func (d *detector) header(p *mimetree.Part, raw []byte) {
	if p.Parent == nil {
		d.info.BodyStart = min(p.HeaderStart+int64(len(raw)), d.info.Size)
		d.topFields(raw)
	}
	switch p.ContentType {
	case "multipart/signed":
		kind := OtherSigned
		switch strings.ToLower(p.Params["protocol"]) {
		case "application/pkcs7-signature", "application/x-pkcs7-signature":
			kind = SMIME
		case "application/pgp-signature":
			kind = PGPMIME
		}
		d.signed = append(d.signed, signedPart{kind, p})
	case "multipart/encrypted":
		what := "multipart/encrypted"
		if strings.ToLower(p.Params["protocol"]) == "application/pgp-encrypted" {
			what = "pgp/mime"
		}
		d.info.Encrypted = append(d.info.Encrypted, what)
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		switch strings.ToLower(p.Params["smime-type"]) {
		case "signed-data":
			d.signed = append(d.signed, signedPart{SMIME, p})
		case "compressed-data", "certs-only":
			// Neither signed nor encrypted.
		default:
			// enveloped-data, authEnveloped-data, or no smime-type:
			// which one cannot be told without decoding it, and no
			// filter can read it either way.
			d.info.Encrypted = append(d.info.Encrypted, "s/mime")
		}
	}
}

// topFields records the message's header fields and its DKIM signatures.
func (d *detector) topFields(raw []byte) {
	n := 0
	for name, field := range fields(raw) {
		d.info.Fields = append(d.info.Fields, Field{Name: name, Hash: maphash.Bytes(seed, field)})
		if name != "dkim-signature" || n == MaxDKIM {
			continue
		}
		_, value, _ := bytes.Cut(field, []byte(":"))
		if s, ok := parseDKIM(value); ok {
			s.field = len(d.info.Fields) - 1
			d.info.Signatures = append(d.info.Signatures, s)
			n++
		}
	}
}

// fields yields the header fields of raw (a header section, the empty line
// that ends it included or not): each field's lower-cased name and its
// bytes, continuation lines and line breaks included. A line that is
// neither a field nor a continuation counts as a field of its own, as a
// DKIM verifier reads it.
func fields(raw []byte) func(yield func(string, []byte) bool) {
	return func(yield func(string, []byte) bool) {
		start := -1 // where the current field starts
		emit := func(end int) bool {
			if start < 0 {
				return true
			}
			f := raw[start:end]
			name, _, _ := bytes.Cut(f, []byte(":"))
			n := strings.ToLower(string(bytes.TrimRight(name, " \t\r\n")))
			start = -1
			return yield(n, f)
		}
		for i := 0; i < len(raw); {
			end := len(raw)
			if j := bytes.IndexByte(raw[i:], '\n'); j >= 0 {
				end = i + j + 1
			}
			line := raw[i:end]
			switch {
			case emptyLine(line):
				emit(i)
				return // the empty line ends the header
			case line[0] == ' ' || line[0] == '\t':
				if start < 0 {
					start = i // a continuation of nothing: a field of its own
				}
			default:
				if !emit(i) {
					return
				}
				start = i
			}
			i = end
		}
		emit(len(raw))
	}
}

// parseDKIM reads the tags of a DKIM-Signature value; ok is false when
// it lacks d= or h= (such a signature cannot verify, so no change can
// break it).
func parseDKIM(value []byte) (Signature, bool) {
	s := Signature{Kind: DKIM, Canonicalization: "simple/simple", Body: true}
	var haveH bool
	for tag := range strings.SplitSeq(string(value), ";") {
		k, v, ok := strings.Cut(tag, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), stripFWS(v)
		switch k {
		case "d":
			s.Domain = strings.ToLower(v)
		case "s":
			s.Selector = strings.ToLower(v)
		case "h":
			haveH = true
			for n := range strings.SplitSeq(v, ":") {
				if n != "" {
					s.Headers = append(s.Headers, strings.ToLower(n))
				}
			}
		case "c":
			hc, bc, _ := strings.Cut(strings.ToLower(v), "/")
			s.Canonicalization = hc + "/" + cmp.Or(bc, "simple")
		case "l":
			s.BodyLength = true
		}
	}
	return s, s.Domain != "" && haveH && len(s.Headers) > 0
}

// stripFWS removes the white space and line breaks DKIM allows in a tag
// value.
func stripFWS(v string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, v)
}

// ReadHeader reads the header section at the start of r (at most
// MaxHeaderBytes) and returns its fields and where the body begins: what
// Detect records of a message, for a changed copy of it.
func ReadHeader(r io.Reader) ([]Field, int64, error) {
	br := bufio.NewReader(io.LimitReader(r, MaxHeaderBytes+1))
	var raw []byte
	atStart := true // the chunk read next starts a line
	for {
		chunk, err := br.ReadSlice('\n')
		raw = append(raw, chunk...)
		if len(raw) > MaxHeaderBytes {
			return nil, 0, ErrHeaderTooLarge
		}
		if err == io.EOF {
			break // a message without a body
		}
		if err != nil && err != bufio.ErrBufferFull {
			return nil, 0, err
		}
		if err == nil && atStart && emptyLine(chunk) {
			break
		}
		atStart = err == nil
	}
	var fs []Field
	for name, field := range fields(raw) {
		fs = append(fs, Field{Name: name, Hash: maphash.Bytes(seed, field)})
	}
	return fs, int64(len(raw)), nil
}

// emptyLine reports whether line (with its line break) is the empty line
// that ends a header section, as mimetree tells it.
func emptyLine(line []byte) bool {
	return string(line) == "\r\n" || string(line) == "\n"
}

// HeaderIntact reports whether a message with the header fields fields
// keeps what signature s of the message Detect read signs in the header:
// for DKIM, the DKIM-Signature field itself and every field h= selects
// (from the bottom, as a verifier selects them, so that adding a field of
// a name that is signed as often as it occurs changes nothing, and adding
// one that is oversigned does); for a signed message, its MIME header
// fields (Content-*). A signed part inside the message has nothing in the
// message header.
func (info *Info) HeaderIntact(s *Signature, fields []Field) bool {
	switch {
	case s.Kind == DKIM:
		self := info.Fields[s.field]
		found := false
		for _, f := range fields {
			if f == self {
				found = true
				break
			}
		}
		return found && equalSelections(pick(info.Fields, s.Headers), pick(fields, s.Headers))
	case s.Body:
		return equalSelections(mimeFields(info.Fields), mimeFields(fields))
	}
	return true
}

// selection is a field h= selects: its hash, or none (ok false) when the
// message has no instance left of that name.
type selection struct {
	hash uint64
	ok   bool
}

// pick selects the fields names sign in fs, as RFC 6376 §5.4.2 has a
// verifier select them: for each name in turn, the last instance not yet
// selected.
func pick(fs []Field, names []string) []selection {
	used := map[string]int{}
	out := make([]selection, len(names))
	for k, n := range names {
		skip := used[n]
		for i := len(fs) - 1; i >= 0; i-- {
			if fs[i].Name != n {
				continue
			}
			if skip == 0 {
				out[k] = selection{fs[i].Hash, true}
				break
			}
			skip--
		}
		used[n]++
	}
	return out
}

// mimeFields selects the Content-* fields of fs, in order.
func mimeFields(fs []Field) []selection {
	var out []selection
	for _, f := range fs {
		if strings.HasPrefix(f.Name, "content-") {
			out = append(out, selection{f.Hash, true})
		}
	}
	return out
}

func equalSelections(a, b []selection) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// PGP armour header lines (RFC 4880 §6.2) that matter here.
var (
	armourSigned    = []byte("-----BEGIN PGP SIGNED MESSAGE-----")
	armourEncrypted = []byte("-----BEGIN PGP MESSAGE-----")
)

// armour looks for PGP armour at the start of the lines of one text part,
// decoding base64 as it goes (quoted-printable leaves the armour lines as
// they are).
type armour struct {
	part   *mimetree.Part
	b64    bool
	carry  []byte // base64 characters not decoded yet (fewer than 4)
	line   []byte // the start of the current decoded line
	dec    []byte
	broken bool // base64 that does not decode: the rest of the part is not read
	signed bool
	enc    bool
}

// line feeds one body line of a leaf part to the armour search.
func (d *detector) line(p *mimetree.Part, ln []byte) {
	a := &d.arm
	if a.part != p {
		d.endArmour()
		*a = armour{part: p, b64: p.Encoding == "base64", carry: a.carry[:0], line: a.line[:0], dec: a.dec}
	}
	if !strings.HasPrefix(p.ContentType, "text/") || a.broken || (a.signed && a.enc) {
		return
	}
	if !a.b64 {
		a.check(ln)
		return
	}
	for _, c := range ln {
		if c != ' ' && c != '\t' && c != '\r' {
			a.carry = append(a.carry, c)
		}
	}
	n := len(a.carry) / 4 * 4
	if n == 0 {
		return
	}
	a.dec = a.dec[:cap(a.dec)]
	if len(a.dec) < n/4*3 {
		a.dec = make([]byte, n/4*3)
	}
	m, err := base64.StdEncoding.Decode(a.dec, a.carry[:n])
	if err != nil {
		a.broken = true
		return
	}
	a.carry = append(a.carry[:0], a.carry[n:]...)
	for dec := a.dec[:m]; len(dec) > 0; {
		i := bytes.IndexByte(dec, '\n')
		if i < 0 {
			a.keep(dec)
			return
		}
		a.keep(dec[:i])
		a.check(a.line)
		a.line, dec = a.line[:0], dec[i+1:]
	}
}

// keep adds decoded bytes of the current line to its start, as far as an
// armour line needs.
func (a *armour) keep(b []byte) {
	if room := len(armourSigned) - len(a.line); room > 0 {
		a.line = append(a.line, b[:min(room, len(b))]...)
	}
}

// check looks at the start of one line of content.
func (a *armour) check(line []byte) {
	switch {
	case bytes.HasPrefix(line, armourSigned):
		a.signed = true
	case bytes.HasPrefix(line, armourEncrypted):
		a.enc = true
	}
}

// endArmour records what the armour search found in the part it was
// reading.
func (d *detector) endArmour() {
	a := &d.arm
	if a.part == nil {
		return
	}
	if a.b64 && !a.broken {
		a.check(a.line)
	}
	if a.signed {
		d.signed = append(d.signed, signedPart{PGPInline, a.part})
	}
	if a.enc {
		d.info.Encrypted = append(d.info.Encrypted, "pgp inline")
	}
	a.part = nil
}
