package rspamd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/tag"
	"github.com/popgate/popgate/internal/mailtext"
)

// Level is what the "spam" filter does with a message. The levels are
// ordered: each does what the ones below it do, and more.
type Level int

const (
	// LevelPass delivers the message with its score (X-Spam-Score,
	// X-Spam-Status: No): a scanned message always says so.
	LevelPass Level = iota
	// LevelTag marks it as spam: X-Spam-Status: Yes and X-Spam-Flag: YES.
	LevelTag
	// LevelSubject also puts the subject prefix in front of its Subject.
	LevelSubject
	// LevelQuarantine withholds it (filters.Reject): the chain keeps the
	// original in quarantine and delivers a notice in its place, or
	// -ERR [SYS/PERM], as the policy's `rejected` says.
	LevelQuarantine
)

var levelNames = [...]string{"pass", "tag", "subject", "quarantine"}

// ParseLevel parses a level's name: "pass", "tag", "subject" or
// "quarantine".
func ParseLevel(s string) (Level, error) {
	if i := slices.Index(levelNames[:], s); i >= 0 {
		return Level(i), nil
	}
	return LevelPass, fmt.Errorf("invalid spam action %q: want %s", s, quoteNames(levelNames[:]))
}

func (l Level) String() string {
	if l >= 0 && int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// Threshold gives Level to a message whose score is at least Score (rspamd
// and SpamAssassin count a score equal to a threshold as reaching it).
type Threshold struct {
	Level Level
	Score float64
}

// The actions rspamd recommends (its /checkv2 "action").
const (
	ActionNone           = "no action"
	ActionGreylist       = "greylist"
	ActionAddHeader      = "add header"
	ActionRewriteSubject = "rewrite subject"
	ActionSoftReject     = "soft reject"
	ActionReject         = "reject"
)

// ScannerActions are rspamd's actions in the order of their strength.
var ScannerActions = []string{ActionNone, ActionGreylist, ActionAddHeader, ActionRewriteSubject, ActionSoftReject, ActionReject}

// DefaultScannerActions maps rspamd's actions to levels under
// use_scanner_action. Greylisting means nothing once a message is in the
// mailbox (it is a delay at SMTP time for mail that looks doubtful), so
// such mail is tagged; a (soft) reject that rspamd would have given at SMTP
// time becomes a withheld message.
var DefaultScannerActions = map[string]Level{
	ActionNone:           LevelPass,
	ActionGreylist:       LevelTag,
	ActionAddHeader:      LevelTag,
	ActionRewriteSubject: LevelSubject,
	ActionSoftReject:     LevelQuarantine,
	ActionReject:         LevelQuarantine,
}

// The header fields the filter writes.
const (
	ScoreHeader   = "X-Spam-Score"
	StatusHeader  = "X-Spam-Status"
	FlagHeader    = "X-Spam-Flag"
	SymbolsHeader = "X-Spam-Symbols"
)

// DefaultOversize delivers a message too large for the scanner with a
// warning: unlike a virus scanner's, a spam scanner's limit is far above
// what spam looks like, and withholding every large message until the
// limit changes would hold the mail people wait for.
const DefaultOversize = filters.OversizePassWithTag

// DefaultSubjectPrefix is the subject prefix when the settings name none.
const DefaultSubjectPrefix = "[SPAM]"

// Bounds on what the filter writes from a scanner's report.
const (
	maxSymbolsValue  = 1000     // X-Spam-Symbols' value
	maxSymbolName    = 64       // one symbol's name in it
	maxScannerFields = 32       // fields added from the milter block
	maxScannerValue  = 2000     // one such field's value (before encoding)
	maxScannerBytes  = 16 << 10 // all of them, encoded and folded
	maxScannerWord   = 900      // one word of a value, so that a folded line stays within RFC 5322's 998 bytes
	maxFieldName     = 76
	headerBufferSize = 32 << 10
)

// FilterSettings is a decoded `filter "spam" "NAME"` block.
type FilterSettings struct {
	// Scanner names the scanner "rspamd" block.
	Scanner string
	// Thresholds, in ascending order of Score and Level, decide by score;
	// UseScannerAction decides by rspamd's own action instead, through
	// ScannerActions (rspamd's action → level; nil means
	// DefaultScannerActions). One of the two is set.
	Thresholds       []Threshold
	UseScannerAction bool
	ScannerActions   map[string]Level
	// SubjectPrefix goes in front of the Subject at LevelSubject ("" means
	// DefaultSubjectPrefix). The original Subject is kept in
	// X-Popgate-Original-Subject (the change is lossless, as tag's) unless
	// DropOriginalSubject.
	SubjectPrefix       string
	DropOriginalSubject bool
	// SymbolsHeader adds X-Spam-Symbols with the symbols that matched.
	SymbolsHeader bool
	// ScannerHeaders applies the header changes of rspamd's milter block
	// (additions always, removals when RemoveHeaders is set too).
	ScannerHeaders bool
	// Oversize is what becomes of a message larger than the scanner's
	// max_size, which is not sent to it.
	Oversize filters.Oversize
	// RemoveHeaders lets the filter remove header fields from the message:
	// the X-Spam-Score, X-Spam-Status, X-Spam-Flag and X-Spam-Symbols it
	// already has (whoever wrote them, popgate's are the verdict), and
	// those rspamd's milter block names. A removal is a lossy change: the
	// chain keeps the original in quarantine first. Off by default: most
	// mail has an Authentication-Results field rspamd asks to remove, and
	// nearly every message would be copied into the quarantine.
	RemoveHeaders bool
}

// DefaultFilterSettings are the settings a block starts from.
func DefaultFilterSettings() FilterSettings {
	return FilterSettings{SubjectPrefix: DefaultSubjectPrefix, ScannerHeaders: true, Oversize: DefaultOversize}
}

// Filter is the "spam" filter: it asks a spam scanner (rspamd) for a
// report on each message and, by its score or by rspamd's action,
// delivers it with the score in its header, tags it as spam, prefixes its
// subject, or withholds it. It is immutable and safe for concurrent use.
//
// What it writes and removes is documented in docs/CONFIG.md (filter
// "spam"). Added fields go in front of the message, with its line break;
// the subject prefix is tag's (filters/tag: lossless, undone by
// tag.Restore). A report it cannot use (the scanner failed, timed out,
// skipped the message, or reported a score that is not a number or an
// action it does not know) is an error, so that the chain applies the
// policy's on_error: never a silent "not spam".
type Filter struct {
	name     string
	scanner  filters.Scanner
	fs       FilterSettings
	actions  map[string]Level
	prefixer *tag.Filter // the subject prefix; nil when no level reaches LevelSubject
}

var _ filters.Filter = (*Filter)(nil)

// NewFilter returns the spam filter called name, which asks s. The
// messages it changes are pieces over the message it was given (header
// fields in front, some removed, a prefixed Subject), never copies. It
// checks fs as the decode step does.
func NewFilter(name string, s filters.Scanner, fs FilterSettings) (*Filter, error) {
	if s == nil {
		return nil, errors.New("no scanner")
	}
	if err := fs.check(); err != nil {
		return nil, err
	}
	f := &Filter{name: name, scanner: s, fs: fs, actions: fs.ScannerActions}
	if f.actions == nil {
		f.actions = DefaultScannerActions
	}
	if fs.reaches(LevelSubject) {
		prefix := fs.SubjectPrefix
		if prefix == "" {
			prefix = DefaultSubjectPrefix
		}
		p, err := tag.New(name, tag.Config{SubjectPrefix: prefix, DropOriginalSubject: fs.DropOriginalSubject}, "")
		if err != nil {
			return nil, err
		}
		f.prefixer = p
	}
	return f, nil
}

// check is what decode checks too, for settings made in code.
func (fs FilterSettings) check() error {
	switch {
	case fs.UseScannerAction && len(fs.Thresholds) > 0:
		return errors.New("thresholds and use_scanner_action exclude each other")
	case !fs.UseScannerAction && len(fs.Thresholds) == 0:
		return errors.New("no thresholds and no use_scanner_action: the filter would decide nothing")
	case !fs.UseScannerAction && fs.ScannerActions != nil:
		return errors.New("scanner_actions without use_scanner_action")
	case fs.Oversize < filters.OversizeTempFail || fs.Oversize > filters.OversizeQuarantine:
		return fmt.Errorf("invalid oversize %v", fs.Oversize)
	}
	for i, t := range fs.Thresholds {
		switch {
		case t.Level <= LevelPass || t.Level > LevelQuarantine:
			return fmt.Errorf("a threshold for %v", t.Level)
		case math.IsNaN(t.Score) || math.IsInf(t.Score, 0):
			return fmt.Errorf("%s threshold %v is not a number", t.Level, t.Score)
		case i > 0 && (t.Level <= fs.Thresholds[i-1].Level || t.Score <= fs.Thresholds[i-1].Score):
			return fmt.Errorf("thresholds are not ascending: %s %v after %s %v", t.Level, t.Score, fs.Thresholds[i-1].Level, fs.Thresholds[i-1].Score)
		}
	}
	for a, l := range fs.ScannerActions {
		if !slices.Contains(ScannerActions, a) {
			return fmt.Errorf("unknown rspamd action %q", a)
		}
		if l < LevelPass || l > LevelQuarantine {
			return fmt.Errorf("rspamd action %q: invalid level %v", a, l)
		}
	}
	return nil
}

// reaches reports whether some message can get level l.
func (fs FilterSettings) reaches(l Level) bool {
	if !fs.UseScannerAction {
		return slices.ContainsFunc(fs.Thresholds, func(t Threshold) bool { return t.Level == l })
	}
	actions := fs.ScannerActions
	if actions == nil {
		actions = DefaultScannerActions
	}
	for _, al := range actions {
		if al == l {
			return true
		}
	}
	return false
}

// envelopeScanner is a scanner that can be told about the session the
// message is delivered in (rspamd: the login is the mailbox, the key of its
// per-user settings and Bayes).
type envelopeScanner interface {
	ScanEnvelope(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.ScanResult, error)
}

// sizeLimited is a scanner that does not take messages larger than
// MaxSize bytes.
type sizeLimited interface {
	MaxSize() int64
}

// tooLarge is the verdict on a message larger than the scanner's max
// bytes, which is not scanned at all.
func (f *Filter) tooLarge(ctx context.Context, body filters.Body, max int64) (filters.Verdict, error) {
	size := body.Size()
	switch f.fs.Oversize {
	case filters.OversizePassWithTag:
		hs, err := scanHeader(ctx, body, nil)
		if err != nil {
			return filters.Verdict{}, fmt.Errorf("reading the header: %w", err)
		}
		warning := mailtext.Field(filters.DefaultErrorHeader, fmt.Sprintf("not scanned for spam: too large (%d bytes > max_size %d)", size, max), hs.eol)
		pieces := filters.AppendPiece([]filters.Piece{{Data: []byte(warning)}}, filters.Piece{Off: 0, Len: size})
		return filters.Verdict{Action: filters.Replace, Body: filters.SplicedBody(body, pieces), Reason: "too large to scan for spam, passed with a warning", KeepsOriginal: true, Edits: pieces}, nil
	case filters.OversizeReject, filters.OversizeQuarantine:
		return filters.Verdict{Action: filters.Reject, Reason: fmt.Sprintf("too large to scan for spam (%d bytes > max_size %d)", size, max)}, nil
	}
	return filters.Verdict{Action: filters.Retry, Reason: "too large to scan for spam"}, nil
}

// Name is the filter's block name.
func (f *Filter) Name() string { return f.name }

// Filter asks the scanner about body and acts on its report.
func (f *Filter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	if sl, ok := f.scanner.(sizeLimited); ok && sl.MaxSize() > 0 && body.Size() > sl.MaxSize() {
		return f.tooLarge(ctx, body, sl.MaxSize())
	}
	var res filters.ScanResult
	var err error
	if es, ok := f.scanner.(envelopeScanner); ok {
		res, err = es.ScanEnvelope(ctx, env, body)
	} else {
		res, err = f.scanner.Scan(ctx, body)
	}
	if err != nil {
		return filters.Verdict{}, fmt.Errorf("scanner %s: %w", f.fs.Scanner, err)
	}
	rep := res.Spam
	switch {
	case rep == nil:
		return filters.Verdict{}, fmt.Errorf("scanner %s gave no spam report", f.fs.Scanner)
	case rep.Skipped:
		return filters.Verdict{}, fmt.Errorf("scanner %s skipped the message (its own limits or settings): no verdict", f.fs.Scanner)
	case math.IsNaN(rep.Score) || math.IsInf(rep.Score, 0):
		return filters.Verdict{}, fmt.Errorf("scanner %s reported the score %v", f.fs.Scanner, rep.Score)
	}
	level, why, err := f.decide(rep)
	if err != nil {
		return filters.Verdict{}, err
	}
	if level == LevelQuarantine {
		return filters.Verdict{Action: filters.Reject, Reason: "spam: " + why, Scan: &res}, nil
	}
	v, err := f.edit(ctx, env, body, rep, level)
	if err != nil {
		return filters.Verdict{}, err
	}
	v.Scan = &res
	if level == LevelPass {
		v.Reason = "not spam: " + why + v.Reason
	} else {
		v.Reason = "spam: " + why + v.Reason
	}
	return v, nil
}

// decide returns the level of a message rep reports on, and why.
func (f *Filter) decide(rep *filters.SpamReport) (Level, string, error) {
	score := formatScore(rep.Score)
	if f.fs.UseScannerAction {
		action := strings.ToLower(strings.TrimSpace(rep.Action))
		l, ok := f.actions[action]
		if !ok {
			return 0, "", fmt.Errorf("scanner %s recommends the unknown action %q (score %s)", f.fs.Scanner, mailtext.Visible(rep.Action, 64), score)
		}
		return l, fmt.Sprintf("score %s, rspamd action %q", score, action), nil
	}
	for i := len(f.fs.Thresholds) - 1; i >= 0; i-- {
		if t := f.fs.Thresholds[i]; rep.Score >= t.Score {
			return t.Level, fmt.Sprintf("score %s >= %s (%s_above)", score, formatThreshold(t.Score), t.Level), nil
		}
	}
	return LevelPass, fmt.Sprintf("score %s < %s", score, formatThreshold(f.fs.Thresholds[0].Score)), nil
}

// required is the score from which the filter calls a message spam, for
// X-Spam-Status: the lowest threshold, or rspamd's own required score.
func (f *Filter) required(rep *filters.SpamReport) float64 {
	if f.fs.UseScannerAction {
		return rep.Required
	}
	return f.fs.Thresholds[0].Score
}

// edit returns the Replace that adds the filter's fields to body (and
// removes and prefixes what the settings say). Its Reason holds the notes
// to append to the decision.
func (f *Filter) edit(ctx context.Context, env *filters.Envelope, body filters.Body, rep *filters.SpamReport, level Level) (filters.Verdict, error) {
	remove := f.removals(rep)
	hs, err := scanHeader(ctx, body, remove)
	if err != nil {
		return filters.Verdict{}, fmt.Errorf("reading the header: %w", err)
	}
	top := f.fields(rep, level, hs.eol)
	pieces := filters.AppendPiece(nil, filters.Piece{Data: top})
	var pos, removed int64
	for _, d := range hs.drop {
		pieces = filters.AppendPiece(pieces, filters.Piece{Off: pos, Len: d.Off - pos})
		pos = d.Off + d.Len
		removed += d.Len
	}
	pieces = filters.AppendPiece(pieces, filters.Piece{Off: pos, Len: body.Size() - pos})

	var notes []string
	if level >= LevelTag {
		notes = append(notes, "tagged")
	}
	if n := len(hs.drop); n > 0 {
		notes = append(notes, fmt.Sprintf("%d header field(s) removed", n))
	}
	// The changed message is pieces over body, not a copy of it.
	v := filters.Verdict{Action: filters.Replace, KeepsOriginal: removed == 0, Edits: pieces}
	spliced := filters.SplicedBody(body, pieces)
	if level >= LevelSubject && f.prefixer != nil {
		tv, err := f.prefixer.Filter(ctx, env, spliced)
		if err != nil {
			_ = spliced.Remove()
			return filters.Verdict{}, err
		}
		if tv.Action == filters.Replace {
			v.KeepsOriginal = v.KeepsOriginal && tv.KeepsOriginal
			notes = append(notes, strings.TrimPrefix(tv.Reason, "tagged: "))
			edits, err := filters.ComposePieces(pieces, tv.Edits)
			_ = spliced.Remove()
			_ = tv.Body.Remove()
			if err != nil {
				return filters.Verdict{}, fmt.Errorf("subject prefix: %w", err)
			}
			spliced, v.Edits = filters.SplicedBody(body, edits), edits
		}
	}
	v.Body = spliced
	if len(notes) > 0 {
		v.Reason = ": " + strings.Join(notes, ", ")
	}
	return v, nil
}

// fields returns the header fields to put in front of the message, each
// ending in eol.
func (f *Filter) fields(rep *filters.SpamReport, level Level, eol string) []byte {
	var b strings.Builder
	score := formatScore(rep.Score)
	b.WriteString(mailtext.Field(ScoreHeader, score, eol))
	status := "No"
	if level >= LevelTag {
		status = "Yes"
	}
	b.WriteString(mailtext.Field(StatusHeader, fmt.Sprintf("%s, score=%s required=%s", status, score, formatScore(f.required(rep))), eol))
	if level >= LevelTag {
		b.WriteString(mailtext.Field(FlagHeader, "YES", eol))
	}
	if f.fs.SymbolsHeader {
		b.WriteString(mailtext.Field(SymbolsHeader, symbolsValue(rep), eol))
	}
	if f.fs.ScannerHeaders {
		written, n := 0, 0
		for _, h := range rep.AddHeaders {
			if n == maxScannerFields {
				break
			}
			if !addable(h.Name) {
				continue
			}
			v := scannerValue(h.Value)
			if v == "" || slices.ContainsFunc(strings.Split(v, " "), func(w string) bool { return len(w) > maxScannerWord }) {
				continue // nothing, or a word no line of 998 bytes can hold
			}
			field := mailtext.Field(h.Name, mailtext.EncodeWords(v), eol)
			if written+len(field) > maxScannerBytes {
				break
			}
			b.WriteString(field)
			written += len(field)
			n++
		}
	}
	return []byte(b.String())
}

// scannerValue cleans a value of a scanner's milter block: its encoded
// words decoded, then cleaned as any text from a message, at most
// maxScannerValue bytes. ASCII stays ASCII (a cut is marked "..."), so that
// a structured field such as Authentication-Results is written as it is;
// other text is then encoded by the caller.
func scannerValue(raw string) string {
	v := mailtext.DecodeWords(raw)
	if strings.ContainsFunc(v, func(r rune) bool { return r >= utf8.RuneSelf }) {
		return mailtext.Text(v, maxScannerValue)
	}
	return mailtext.HeaderText(v, maxScannerValue)
}

// symbolsValue is X-Spam-Symbols' value: "NAME(score), …", the strongest
// first, at most maxSymbolsValue bytes ("..." ends a cut list).
func symbolsValue(rep *filters.SpamReport) string {
	const more = ", ..."
	var b strings.Builder
	for _, s := range rep.StrongestSymbols() {
		item := symbolName(s.Name) + "(" + formatScore(s.Score) + ")"
		sep := ", "
		if b.Len() == 0 {
			sep = ""
		}
		if b.Len()+len(sep)+len(item)+len(more) > maxSymbolsValue {
			b.WriteString(more[2-len(sep):]) // "..." alone when nothing fits
			break
		}
		b.WriteString(sep)
		b.WriteString(item)
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// symbolName makes a symbol's name (rspamd: capitals, digits and '_')
// safe and unambiguous in X-Spam-Symbols: printable ASCII without the
// list's own punctuation or spaces, at most maxSymbolName bytes.
func symbolName(s string) string {
	s = mailtext.HeaderText(s, maxSymbolName)
	s = strings.Map(func(r rune) rune {
		switch r {
		case ' ', ',', '(', ')', ';', '=':
			return '_'
		}
		return r
	}, s)
	if s == "" {
		return "?"
	}
	return s
}

// formatScore writes a score as SpamAssassin and rspamd do ("7.30"), and
// one too large for that in short exponent form.
func formatScore(x float64) string {
	if math.Abs(x) < 1e9 {
		return strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strconv.FormatFloat(x, 'g', 3, 64)
}

// formatThreshold writes a configured threshold as it was written ("15").
func formatThreshold(x float64) string { return strconv.FormatFloat(x, 'f', -1, 64) }

// ownFields are the fields the filter writes; a scanner's milter block
// cannot add them (the filter's own say what it decided).
var ownFields = []string{"x-spam-score", "x-spam-status", "x-spam-flag", "x-spam-symbols"}

// kept are fields that carry a message's structure, identity, trace or
// signatures (and popgate's own marks): a scanner's milter block can
// neither add nor remove them, whatever it asks. A filter changes a
// message's verdict headers, never what the message is.
var kept = []string{
	"subject", "from", "sender", "reply-to", "to", "cc", "bcc", "date", "message-id",
	"in-reply-to", "references", "mime-version", "received", "return-path", "dkim-signature",
}

// keptPrefixes extend kept to whole families of fields.
var keptPrefixes = []string{"content-", "resent-", "arc-", "x-popgate-"}

func isKept(lower string) bool {
	return slices.Contains(kept, lower) || slices.ContainsFunc(keptPrefixes, func(p string) bool { return strings.HasPrefix(lower, p) })
}

// addable reports whether a field of a scanner's milter block may be
// added.
func addable(name string) bool {
	if !mailtext.ValidFieldName(name) || len(name) > maxFieldName {
		return false
	}
	l := strings.ToLower(name)
	return !slices.Contains(ownFields, l) && !isKept(l)
}

// removals returns the lower-case names of the fields to remove from the
// message (nil when none may be).
func (f *Filter) removals(rep *filters.SpamReport) []string {
	if !f.fs.RemoveHeaders {
		return nil
	}
	names := slices.Clone(ownFields)
	if f.fs.ScannerHeaders {
		for _, n := range rep.RemoveHeaders {
			l := strings.ToLower(n)
			if mailtext.ValidFieldName(n) && !isKept(l) && !slices.Contains(names, l) {
				names = append(names, l)
			}
		}
	}
	return names
}

// headerScan is what one pass over a message's header finds.
type headerScan struct {
	eol  string          // the line break of the first line ("\r\n" when it has none)
	drop []filters.Piece // the fields to remove, as runs, in order
}

// scanHeader reads the header of body, and only the header: the line
// break of its first line, and where the fields named in remove (lower
// case) are, continuation lines included. The header ends at the first
// empty line, or at the first line that is neither a field nor a
// continuation. Without names to remove, only the first line is read.
func scanHeader(ctx context.Context, body filters.Body, remove []string) (headerScan, error) {
	hs := headerScan{eol: "\r\n"}
	rc, err := body.Open()
	if err != nil {
		return hs, err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(mailtext.NewReader(ctx, rc), headerBufferSize)
	var off int64
	dropFrom := int64(-1) // where the field being removed starts
	endDrop := func(at int64) {
		if dropFrom >= 0 {
			hs.drop = append(hs.drop, filters.Piece{Off: dropFrom, Len: at - dropFrom})
			dropFrom = -1
		}
	}
	for first := true; ; first = false {
		start := off
		chunk, err := br.ReadSlice('\n')
		if len(chunk) == 0 {
			endDrop(off)
			if err == io.EOF {
				err = nil
			}
			return hs, err
		}
		// Classify the line by its first chunk, which holds any field
		// name (a name is far shorter than the buffer).
		cont := chunk[0] == ' ' || chunk[0] == '\t'
		name, isField := "", false
		if i := bytes.IndexByte(chunk, ':'); !cont && i > 0 {
			n := bytes.TrimRight(chunk[:i], " \t")
			name, isField = strings.ToLower(string(n)), mailtext.ValidFieldName(n)
		}
		prev, last := byte(0), chunk[len(chunk)-1]
		if len(chunk) > 1 {
			prev = chunk[len(chunk)-2]
		}
		off += int64(len(chunk))
		for errors.Is(err, bufio.ErrBufferFull) {
			chunk, err = br.ReadSlice('\n')
			off += int64(len(chunk))
			switch {
			case len(chunk) > 1:
				prev, last = chunk[len(chunk)-2], chunk[len(chunk)-1]
			case len(chunk) == 1:
				prev, last = last, chunk[0]
			}
		}
		if err != nil && err != io.EOF {
			return hs, err
		}
		if first && last == '\n' {
			hs.eol = "\n"
			if prev == '\r' {
				hs.eol = "\r\n"
			}
		}
		switch {
		case cont:
			// The field before goes on (or, at the very start, nothing).
		case !isField:
			endDrop(start) // an empty line, or the body: the header ends
			return hs, nil
		default:
			endDrop(start)
			if slices.Contains(remove, name) {
				dropFrom = start
			}
		}
		if err == io.EOF || len(remove) == 0 {
			endDrop(off)
			return hs, nil
		}
	}
}

func quoteNames(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = strconv.Quote(x)
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
