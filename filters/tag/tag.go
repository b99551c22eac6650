// Package tag is the "tag" filter: it adds header fields to every message and
// optionally prefixes its Subject.
//
//	filter "tag" "stamp" {
//	  headers        = { "X-Popgate-Scanned" = "yes" }
//	  subject_prefix = "[SCANNED]"
//	  # keep_original_subject = true   (the default; see below)
//	}
//
// Added fields go in front of the message's header, so every byte of the
// message stays as it was; the line break of the added lines follows the
// message (CRLF, or LF for an LF-only message). The subject prefix changes
// only the bytes of the first Subject field's value; a message without a
// Subject gets one (in front, like the added fields), and a subject that
// already starts with the prefix is left alone.
//
// # Losslessness
//
// A Replace that is not lossless makes the chain put the original in
// quarantine before delivering (docs/ARCHITECTURE.md §4, invariant 4).
// Prefixing every subject must not mean quarantining every message, so by
// default the rewrite keeps the original: the original Subject value, byte for byte
// (folding, encoded words and line breaks included), goes into an
// X-Popgate-Original-Subject field placed first in the message, and Restore
// undoes the rewrite exactly. The verdict is then KeepsOriginal. With
// keep_original_subject = false no such field is written and a rewritten
// subject is a lossy change (the chain quarantines the original first).
// A subject that cannot be kept exactly (longer than 16 KiB, or a Subject
// field at the very end of a message without a final line break) is left
// unprefixed or, in the second case, rewritten as a lossy change.
package tag

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// originalSubjectHeader is the field that keeps the original Subject value
// when the filter rewrites it (see Restore).
const originalSubjectHeader = "X-Popgate-Original-Subject"

// Limits on the configuration.
const (
	maxNameLen   = 76
	maxValueLen  = 900
	maxPrefixLen = 200
)

// maxSubjectBytes bounds the Subject field the filter rewrites; a longer
// subject is left as it is.
const maxSubjectBytes = 16 << 10

// Field is a header field to add.
type Field struct {
	Name  string
	Value string
}

// Config is the tag filter's configuration.
type Config struct {
	// Headers are added in this order, in front of the message's header.
	Headers []Field
	// SubjectPrefix, when not empty, is put in front of the Subject.
	SubjectPrefix string
	// DropOriginalSubject turns off X-Popgate-Original-Subject: a rewritten
	// subject is then a lossy change (the chain quarantines the original).
	DropOriginalSubject bool
	// Verdicts adds X-Popgate-Verdict with the verdicts of the filters that
	// ran before this one ("av=pass (clean); dangerous=pass").
	Verdicts bool
	// Version adds X-Popgate-Version: popgate VERSION.
	Version bool
}

// Header fields the tag filter writes itself.
const (
	verdictHeader = "X-Popgate-Verdict"
	versionHeader = "X-Popgate-Version"
)

// Filter is the tag filter. It is immutable and safe for concurrent use.
type Filter struct {
	name   string
	fields []Field
	prefix string // trimmed; "" means no subject rewrite
	// encPrefix is the prefix as it goes into a header (an encoded word
	// when it is not plain ASCII); encPrefixSp is prefix+" " encoded, for
	// use in front of an encoded word (the space must be inside our word:
	// white space between two encoded words is not displayed).
	encPrefix, encPrefixSp string
	keepOriginal           bool
	blockCRLF, blockLF     []byte // the added fields, per line break
	verdicts, version      bool
	versionText            string // popgate's version, for X-Popgate-Version
}

var _ filters.Inline = (*Filter)(nil)

// Inline: tag reads and writes no more than the header, from the spool.
func (t *Filter) Inline() {}

func init() {
	filters.RegisterFilter("tag", filters.FilterKind[Config]{Decode: decode, Build: build, HeaderOnly: true})
}

// build is the tag kind's build step.
func build(name string, cfg Config, bc *filters.BuildContext) (filters.Filter, error) {
	return New(name, cfg, bc.Version)
}

// New builds a tag filter from cfg, checking it as decode does. It stamps
// version in X-Popgate-Version when cfg asks for it.
func New(name string, cfg Config, version string) (*Filter, error) {
	var errs []error
	seen := map[string]bool{}
	for _, f := range cfg.Headers {
		if err := checkName(f.Name); err != nil {
			errs = append(errs, fmt.Errorf("header %q: %w", f.Name, err))
			continue
		}
		if seen[strings.ToLower(f.Name)] {
			errs = append(errs, fmt.Errorf("header %q: listed twice", f.Name))
		}
		seen[strings.ToLower(f.Name)] = true
		if err := checkValue(f.Value, maxValueLen); err != nil {
			errs = append(errs, fmt.Errorf("header %q: %w", f.Name, err))
		}
	}
	prefix := strings.TrimSpace(cfg.SubjectPrefix)
	if cfg.SubjectPrefix != "" {
		if err := checkPrefix(cfg.SubjectPrefix); err != nil {
			errs = append(errs, fmt.Errorf("subject_prefix: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	t := &Filter{
		name:         name,
		fields:       append([]Field(nil), cfg.Headers...),
		prefix:       prefix,
		keepOriginal: !cfg.DropOriginalSubject,
		verdicts:     cfg.Verdicts,
		version:      cfg.Version,
		versionText:  version,
	}
	if prefix != "" {
		t.encPrefix = mailtext.EncodeWords(prefix)
		t.encPrefixSp = t.encPrefix
		if t.encPrefix != prefix {
			t.encPrefixSp = mailtext.EncodeWords(prefix + " ")
		}
	}
	t.blockCRLF = t.block("\r\n")
	t.blockLF = t.block("\n")
	return t, nil
}

func (t *Filter) block(eol string) []byte {
	var b bytes.Buffer
	for _, f := range t.fields {
		b.WriteString(mailtext.Field(f.Name, mailtext.EncodeWords(f.Value), eol))
	}
	return b.Bytes()
}

// Name returns the filter's name (the second label of its block).
func (t *Filter) Name() string { return t.name }

// headerInfo is what the first pass over a message finds out.
type headerInfo struct {
	eol      string // line break of the first line ("\r\n" when unknown)
	found    bool   // there is a Subject field
	valueOff int64  // offset of the first byte after the Subject's colon
	valueLen int64  // bytes from there through the field's last line break
	nameLen  int    // bytes of the field's first line through the colon
	raw      []byte // those bytes; nil when tooLong
	tooLong  bool
}

// subjectEOL is the line break the Subject value uses (that of its first
// line), or the message's.
func (h *headerInfo) subjectEOL() string {
	if i := bytes.IndexByte(h.raw, '\n'); i > 0 && h.raw[i-1] == '\r' {
		return "\r\n"
	} else if i >= 0 {
		return "\n"
	}
	return h.eol
}

// scan reads the message's header (only the header) and, when subject is
// set, finds the first Subject field. Holding at most maxSubjectBytes.
func scan(ctx context.Context, body filters.Body, subject bool) (headerInfo, error) {
	info := headerInfo{eol: "\r\n"}
	r, err := body.Open()
	if err != nil {
		return info, err
	}
	defer r.Close()
	lr := newLineReader(mailtext.NewReader(ctx, r))
	defer lr.release()
	for first := true; ; first = false {
		if lr.continues() {
			// A continuation line of a field that is not looked at (or
			// of nothing, at the very start).
			if _, err := lr.next(nil); err != nil {
				return info, err
			}
			continue
		}
		name, colon, isField := fieldName(lr.peekLine())
		var capture *boundedBuffer
		if subject && isField && strings.EqualFold(string(name), "Subject") {
			capture = &boundedBuffer{max: maxSubjectBytes + colon + 1}
		}
		var sink io.Writer
		if capture != nil {
			sink = capture
		}
		ln, err := lr.next(sink)
		if err == io.EOF {
			return info, nil
		}
		if err != nil {
			return info, err
		}
		if first && ln.eol != "" {
			info.eol = ln.eol
		}
		if !subject || !isField {
			return info, nil // only the first line was wanted, or the header ends here
		}
		if capture == nil {
			continue
		}
		info.found = true
		info.valueOff = ln.start + int64(colon) + 1
		info.nameLen = colon + 1
		if err := lr.skipField(sink); err != nil {
			return info, err
		}
		info.valueLen = lr.off - info.valueOff
		if capture.over {
			info.tooLong = true
		} else {
			info.raw = capture.buf[colon+1:]
		}
		return info, nil
	}
}

// Filter adds the configured fields and the subject prefix. It returns Pass
// when there is nothing to change, else Replace with the tagged message
// (a filters.SplicedBody over body).
func (t *Filter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	if len(t.fields) == 0 && t.prefix == "" && !t.verdicts && !t.version {
		return filters.Verdict{Action: filters.Pass}, nil
	}
	info, err := scan(ctx, body, t.prefix != "")
	if err != nil {
		return filters.Verdict{}, fmt.Errorf("tag: read header: %w", err)
	}
	lossless := true
	var top bytes.Buffer // lines in front of the message
	var newValue []byte  // the Subject's new value, when it changes
	addSubject := false
	var notes []string
	if t.prefix != "" {
		switch {
		case !info.found:
			addSubject = true
			notes = append(notes, "subject added")
		case info.tooLong:
			notes = append(notes, "subject too long to prefix")
		case t.prefixed(info.raw):
			// already tagged: leave it
		default:
			newValue = t.rewrite(info.raw, info.nameLen, info.subjectEOL())
			notes = append(notes, "subject prefixed")
			if t.keepOriginal && bytes.HasSuffix(info.raw, []byte("\n")) {
				top.WriteString(originalSubjectHeader + ":")
				top.Write(info.raw)
			} else {
				lossless = false
			}
		}
	}
	if info.eol == "\n" {
		top.Write(t.blockLF)
	} else {
		top.Write(t.blockCRLF)
	}
	if t.verdicts {
		var steps []filters.Step
		if env != nil {
			steps = env.Steps
		}
		top.WriteString(mailtext.Field(verdictHeader, mailtext.EncodeWords(verdictText(steps)), info.eol))
	}
	if t.version {
		top.WriteString(mailtext.Field(versionHeader, mailtext.EncodeWords("popgate "+mailtext.Text(t.versionText, 64)), info.eol))
	}
	if addSubject {
		top.WriteString(mailtext.Field("Subject", t.encPrefix, info.eol))
	}
	if top.Len() == 0 && newValue == nil {
		return filters.Verdict{Action: filters.Pass}, nil
	}
	if len(t.fields) > 0 {
		notes = append([]string{fmt.Sprintf("%d header field(s) added", len(t.fields))}, notes...)
	}

	ed := edits(top.Bytes(), info, newValue, body.Size())
	return filters.Verdict{
		Action:        filters.Replace,
		Body:          filters.SplicedBody(body, ed),
		Reason:        "tagged: " + strings.Join(notes, ", "),
		KeepsOriginal: lossless,
		Edits:         ed,
	}, nil
}

// edits states the tagged message as pieces of the message of size bytes:
// top, then the message, its Subject value replaced by newValue when that
// is not nil. The tagged Body is those pieces over the message, not a copy:
// the lines in front and a new Subject are all the filter writes.
func edits(top []byte, info headerInfo, newValue []byte, size int64) []filters.Piece {
	ps := filters.AppendPiece(nil, filters.Piece{Data: top})
	if newValue == nil {
		return filters.AppendPiece(ps, filters.Piece{Off: 0, Len: size})
	}
	end := info.valueOff + info.valueLen
	ps = filters.AppendPiece(ps, filters.Piece{Off: 0, Len: info.valueOff})
	ps = filters.AppendPiece(ps, filters.Piece{Data: newValue})
	return filters.AppendPiece(ps, filters.Piece{Off: end, Len: size - end})
}

// unfold removes the line breaks of a folded value (and its final one).
func unfold(raw []byte) string {
	s := strings.ReplaceAll(string(raw), "\r\n", "")
	return strings.ReplaceAll(s, "\n", "")
}

// prefixed reports whether the Subject value raw (decoded) already starts
// with the prefix.
func (t *Filter) prefixed(raw []byte) bool {
	s := mailtext.DecodeWords(unfold(raw))
	return strings.HasPrefix(strings.TrimLeft(s, " \t"), t.prefix)
}

// rewrite returns the Subject's new value: the prefix in front of the old
// value, whose bytes (folding included) follow unchanged. nameLen is the
// length of the field's first line up to and including the colon, for
// folding; eol is the line break a fold uses.
func (t *Filter) rewrite(raw []byte, nameLen int, eol string) []byte {
	// lead is the white space (possibly folded) before the first word.
	i := 0
	for i < len(raw) {
		switch {
		case raw[i] == ' ' || raw[i] == '\t':
			i++
			continue
		case raw[i] == '\r' && i+2 < len(raw) && raw[i+1] == '\n' && (raw[i+2] == ' ' || raw[i+2] == '\t'):
			i += 3
			continue
		case raw[i] == '\n' && i+1 < len(raw) && (raw[i+1] == ' ' || raw[i+1] == '\t'):
			i += 2
			continue
		}
		break
	}
	lead, rest := raw[:i], raw[i:]
	if len(lead) == 0 {
		lead = []byte(" ")
	}
	var b bytes.Buffer
	b.Write(lead)
	if len(bytes.TrimRight(rest, "\r\n")) == 0 {
		// An empty subject: the prefix is all of it.
		b.WriteString(t.encPrefix)
		b.Write(rest)
		return b.Bytes()
	}
	word := t.encPrefix
	if startsWithEncodedWord(rest) {
		word = t.encPrefixSp
	}
	b.WriteString(word)
	// Fold after the prefix when the line would grow too long.
	firstLine := rest
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		firstLine = bytes.TrimRight(rest[:j], "\r")
	}
	before := nameLen + len(lead) // what precedes the prefix on its line
	if j := bytes.LastIndexByte(lead, '\n'); j >= 0 {
		before = len(lead) - j - 1
	}
	if before+len(word)+1+len(firstLine) > mailtext.FoldAt {
		b.WriteString(eol)
	}
	b.WriteByte(' ')
	b.Write(rest)
	return b.Bytes()
}

// startsWithEncodedWord reports whether s begins with an RFC 2047 encoded
// word followed by white space or the end.
func startsWithEncodedWord(s []byte) bool {
	if !bytes.HasPrefix(s, []byte("=?")) {
		return false
	}
	end := len(s)
	if j := bytes.IndexAny(s, " \t\r\n"); j >= 0 {
		end = j
	}
	w := string(s[:end])
	if !strings.HasSuffix(w, "?=") || len(w) < 8 {
		return false
	}
	parts := strings.Split(w[2:len(w)-2], "?")
	return len(parts) == 3 && parts[0] != "" && (strings.EqualFold(parts[1], "q") || strings.EqualFold(parts[1], "b"))
}

// reserved are the fields headers may not add, with the reason.
var reserved = map[string]string{
	"subject":                    "use subject_prefix to change the subject",
	"from":                       "a message may have only one; adding one would make two",
	"sender":                     "a message may have only one; adding one would make two",
	"reply-to":                   "a message may have only one; adding one would make two",
	"to":                         "a message may have only one; adding one would make two",
	"cc":                         "a message may have only one; adding one would make two",
	"bcc":                        "a message may have only one; adding one would make two",
	"date":                       "a message may have only one; adding one would make two",
	"message-id":                 "a message may have only one; adding one would make two",
	"in-reply-to":                "a message may have only one; adding one would make two",
	"references":                 "a message may have only one; adding one would make two",
	"mime-version":               "it belongs to the message's MIME structure",
	"x-popgate-original-subject": "popgate writes it itself when it rewrites a subject",
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("a header field name cannot be empty")
	case !mailtext.ValidFieldName(name):
		return errors.New("a header field name is printable ASCII without spaces or ':' (RFC 5322 ftext)")
	case len(name) > maxNameLen:
		return fmt.Errorf("a header field name may have at most %d characters", maxNameLen)
	}
	l := strings.ToLower(name)
	if why, ok := reserved[l]; ok {
		return fmt.Errorf("%s cannot be added: %s", name, why)
	}
	if strings.HasPrefix(l, "content-") {
		return fmt.Errorf("%s cannot be added: it belongs to the message's MIME structure", name)
	}
	return nil
}

// checkValue accepts valid UTF-8 without control characters (tab aside)
// or invisible ones (bidi controls and the like, mailtext.IsInvisible), not
// looking like an encoded word, and at most max bytes.
func checkValue(v string, max int) error {
	if !utf8.ValidString(v) {
		return errors.New("the value is not valid UTF-8")
	}
	for _, r := range v {
		if r == '\r' || r == '\n' {
			return errors.New("the value cannot contain a line break")
		}
		if r != '\t' && mailtext.IsControl(r) {
			return fmt.Errorf("the value cannot contain the control character %U", r)
		}
		if mailtext.IsInvisible(r) {
			return fmt.Errorf("the value cannot contain the invisible character %U (a bidi control, zero-width or format character)", r)
		}
	}
	if strings.Contains(v, "=?") {
		return errors.New(`the value cannot contain "=?": it would read as an RFC 2047 encoded word (write the text itself; popgate encodes it when needed)`)
	}
	if len(v) > max {
		return fmt.Errorf("the value may have at most %d bytes", max)
	}
	return nil
}

func checkPrefix(p string) error {
	if strings.TrimSpace(p) == "" {
		return errors.New("the prefix is empty; leave subject_prefix out to keep subjects as they are")
	}
	return checkValue(p, maxPrefixLen)
}

// verdictText summarises the steps as "name=action (reason); …", one line
// of clean text (mailtext.Text) of bounded length.
func verdictText(steps []filters.Step) string {
	if len(steps) == 0 {
		return "none"
	}
	var parts []string
	for _, st := range steps {
		p := st.Filter + "=" + st.Action.String()
		switch {
		case st.Err != nil:
			p = st.Filter + "=error"
		case st.Reason != "":
			p += " (" + mailtext.Text(st.Reason, 120) + ")"
		}
		parts = append(parts, p)
	}
	return mailtext.Text(strings.Join(parts, "; "), 800)
}
