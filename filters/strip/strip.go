// Package strip is popgate's attachment policy: it finds the parts of a
// message by file name (globs, extensions, with the usual disguises undone),
// by declared and by detected content type, by size and by the names inside
// containers (zip, tar, compressed streams and the other kinds
// internal/archive lists, nested across kinds), and strips them (each is
// replaced by a short text notice) or rejects the whole message.
//
// Rewriting splices byte ranges: every byte outside a stripped part stays as
// it was, and a message that no rule matches is passed as it is (Pass, no
// new body). Containers are listed by internal/archive, within one set of
// limits over all levels and kinds; the MIME structure comes from
// internal/mimetree, which the chain's signature detection shares. Its API
// is the configuration (Config, Rule, Limits, archive.Limits, Action), New
// and Factory.
//
// # Configuration
//
//	filter "strip" "NAME" {
//	  # Short form: these attributes directly in the block make one rule
//	  # named like the filter, tried before the rule blocks (action strip
//	  # unless action says otherwise).
//	  extensions = ["exe", "scr"]
//
//	  rule "RULE" {                       # any number, tried in order
//	    filenames          = ["*.exe", "invoice*.pdf.*"]  # globs, case-insensitive
//	    extensions         = ["exe", "tar.gz"]            # last extension (or suffix)
//	    content_types      = ["application/x-msdownload", "application/*"]  # declared
//	    detected_types     = ["application/vnd.microsoft.portable-executable"] # sniffed
//	    archive_filenames  = ["*.exe", "bin/*"]           # members of containers
//	    encrypted_archives = true                         # containers with an encrypted member
//	    suspicious_names   = true                         # bidi/invisible characters in names
//	    min_size           = "10MB"                       # decoded size, inclusive
//	    max_size           = "100MB"
//	    action             = "strip"                      # strip | reject | quarantine
//	  }
//
//	  on_limit         = "reject"   # beyond a MIME cap: reject | tempfail | pass
//	  max_depth        = 50         # MIME nesting
//	  max_parts        = 10000
//	  max_header_size  = "256KiB"   # per part
//	  on_archive_limit = "reject"   # zip bomb / too many members: reject | quarantine | strip | tempfail | pass
//	  on_unreadable_archive = "quarantine" # corrupt/unsupported container: reject | quarantine | strip | tempfail | pass
//	  archive_depth       = 3       # containers in containers: levels listed
//	  archive_max_entries = 10000
//	  archive_max_size    = "512MiB" # uncompressed, all levels together
//	  archive_max_ratio   = 250      # per member over 1 MiB
//	}
//
// A part matches a rule when it matches any of the rule's selectors (or the
// rule has none but sizes) and its decoded size is within min_size and
// max_size. The first matching rule decides for a part; the message gets
// the most severe action of its parts (reject/quarantine, then tempfail,
// then strip). Multiparts are never matched themselves; message/rfc822
// parts are matched as a whole first and looked into when they do not
// match (base64 or quoted-printable encoded ones too).
package strip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/archive"
	"github.com/popgate/popgate/internal/iobuf"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// Action is what happens to a part a rule matches, or to a message that
// exceeds a limit.
type Action int

const (
	// ActionDefault selects the setting's default.
	ActionDefault Action = iota
	// ActionStrip replaces the part by a text notice.
	ActionStrip
	// ActionReject withholds the whole message (filters.Reject).
	ActionReject
	// ActionQuarantine withholds the whole message like ActionReject (the
	// chain keeps the original in quarantine either way); the reason says
	// "quarantined".
	ActionQuarantine
	// ActionTempfail defers the message (filters.Retry): the client keeps
	// it on the server and tries again later.
	ActionTempfail
	// ActionPass lets the message (or the archive) through unexamined.
	ActionPass
)

var actionNames = map[Action]string{
	ActionStrip: "strip", ActionReject: "reject", ActionQuarantine: "quarantine",
	ActionTempfail: "tempfail", ActionPass: "pass",
}

func (a Action) String() string {
	if s, ok := actionNames[a]; ok {
		return s
	}
	if a == ActionDefault {
		return "default"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// ParseAction parses the policy spelling of an action.
func ParseAction(s string) (Action, error) {
	for a, n := range actionNames {
		if n == s {
			return a, nil
		}
	}
	return ActionDefault, fmt.Errorf("unknown action %q", s)
}

// Rule selects parts. A part matches when it matches any of the selectors
// (file name globs, extensions, declared or detected types, archive member
// names, encrypted archives, disguised names) — or when the rule has no
// selector — and its decoded size is within MinSize and MaxSize.
type Rule struct {
	Name string
	// Filenames are globs (path.Match syntax, case-insensitive) matched
	// against the normalized names of a part (see normalizeName).
	Filenames []string
	// Extensions match the last extension of a name ("exe" matches
	// "invoice.pdf.exe"); an entry with a dot ("tar.gz") matches that suffix.
	Extensions []string
	// ContentTypes are media types or patterns ("application/*") matched
	// against the declared Content-Type.
	ContentTypes []string
	// DetectedTypes are media types or patterns matched against the type
	// sniffed from the decoded content (github.com/gabriel-vasile/mimetype),
	// including its more general types (a .docx also is application/zip),
	// except the catch-alls application/octet-stream and text/plain.
	DetectedTypes []string
	// ArchiveFilenames are globs matched against the members of
	// containers of every kind internal/archive lists, nested up to the
	// filter's archive depth. A glob with a "/" is matched against the
	// whole member path, others against its last element.
	ArchiveFilenames []string
	// EncryptedArchives matches containers (of any kind) with an encrypted
	// member or an encrypted member list.
	EncryptedArchives bool
	// SuspiciousNames matches parts whose name holds bidi controls or
	// invisible characters (a right-to-left override, say).
	SuspiciousNames bool
	// MinSize and MaxSize bound the decoded size of the part, inclusive; 0
	// means no bound.
	MinSize, MaxSize int64
	// Action is ActionStrip (the default), ActionReject or
	// ActionQuarantine.
	Action Action
}

// Config is a strip filter's settings.
type Config struct {
	Rules   []Rule
	Limits  mimetree.Limits
	Archive archive.Limits
	// OnLimit is what happens to a message beyond Limits: ActionReject (the
	// default), ActionTempfail or ActionPass.
	OnLimit Action
	// OnArchiveLimit is what happens to a part whose archive is beyond
	// Archive limits (a zip bomb, too many members), when a rule needs its
	// members: ActionReject (the default), ActionQuarantine, ActionStrip,
	// ActionTempfail or ActionPass (the archive's members are then not
	// examined).
	OnArchiveLimit Action
	// OnUnreadableArchive is what happens to a part holding a container
	// the lister cannot read (corrupt, an unsupported variant or method,
	// or named like a container of no kind it reads), when a rule needs
	// its members: ActionQuarantine (the default: an admin must not find
	// such a container passed silently), ActionReject, ActionStrip,
	// ActionTempfail or ActionPass (it is matched as if it had no members
	// but those listed).
	OnUnreadableArchive Action
}

// Filter is a configured strip filter; it implements filters.Filter and is
// safe for concurrent use.
type Filter struct {
	name         string
	rules        []*rule
	lim          mimetree.Limits
	alim         archive.Limits
	onLimit      Action
	onArchive    Action
	onUnreadable Action
	spool        *filters.Spool // for replacement bodies and unpacked members
	headLen      int            // of a part's content, what the rules look at first
}

// New builds a strip filter from cfg; it writes the bodies it makes to
// spool (nil: a Spool with the defaults).
func New(name string, cfg Config, spool *filters.Spool) (*Filter, error) {
	f := &Filter{
		name:         name,
		spool:        spool,
		lim:          cfg.Limits.WithDefaults(),
		alim:         cfg.Archive.WithDefaults(),
		onLimit:      cfg.OnLimit,
		onArchive:    cfg.OnArchiveLimit,
		onUnreadable: cfg.OnUnreadableArchive,
	}
	switch f.onLimit {
	case ActionDefault:
		f.onLimit = ActionReject
	case ActionReject, ActionTempfail, ActionPass:
	default:
		return nil, fmt.Errorf("on_limit: %v is not one of reject, tempfail, pass", f.onLimit)
	}
	switch f.onArchive {
	case ActionDefault:
		f.onArchive = ActionReject
	case ActionReject, ActionQuarantine, ActionStrip, ActionTempfail, ActionPass:
	default:
		return nil, fmt.Errorf("on_archive_limit: %v is not one of reject, quarantine, strip, tempfail, pass", f.onArchive)
	}
	switch f.onUnreadable {
	case ActionDefault:
		f.onUnreadable = ActionQuarantine
	case ActionReject, ActionQuarantine, ActionStrip, ActionTempfail, ActionPass:
	default:
		return nil, fmt.Errorf("on_unreadable_archive: %v is not one of reject, quarantine, strip, tempfail, pass", f.onUnreadable)
	}
	var errs []error
	for i := range cfg.Rules {
		r, err := compileRule(&cfg.Rules[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.rules = append(f.rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	f.headLen = headLen(f.rules)
	return f, nil
}

// Name returns the filter's name.
func (f *Filter) Name() string { return f.name }

var _ filters.Inline = (*Filter)(nil)

// Inline: strip works on the spool, within its limits, and its reads check
// ctx.
func (f *Filter) Inline() {}

// Filter applies the rules to body. Nothing matched: Pass, no Body. Parts
// stripped: Replace with the spliced message. A reject or quarantine rule
// matched: Reject. The message beyond a limit: the configured action.
func (f *Filter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	rc, err := body.Open()
	if err != nil {
		return filters.Verdict{}, err
	}
	defer rc.Close()
	if ra, ok := rc.(io.ReaderAt); ok {
		root, err := f.structure(ctx, env, body, ra, body.Size())
		return f.filter(ctx, body, ra, body.Size(), root, err)
	}
	// Not random access (a header-prepending wrapper, say): spool it.
	w := f.spool.NewWriter()
	if _, err := iobuf.Copy(w, mailtext.NewReader(ctx, rc)); err != nil {
		w.Abort()
		return filters.Verdict{}, fmt.Errorf("strip: spooling the message: %w", err)
	}
	b, err := w.Finish()
	if err != nil {
		return filters.Verdict{}, err
	}
	defer b.Remove()
	brc, err := b.Open()
	if err != nil {
		return filters.Verdict{}, err
	}
	defer brc.Close()
	ra, ok := brc.(io.ReaderAt)
	if !ok {
		return filters.Verdict{}, errors.New("strip: spooled body without io.ReaderAt")
	}
	size := b.Size()
	root, err := parseMIME(mailtext.NewReaderAt(ctx, ra), size, f.lim)
	return f.filter(ctx, body, ra, size, root, err)
}

// structure is the MIME tree of the message, with the error of its parse
// under the filter's limits: the chain's one parse of its input
// (Envelope.MIME) checked against them, so that strip does not parse the
// message a second time. Beyond mimetree's defaults, which the filter's
// limits may exceed, that parse has no tree: the filter then parses with
// its own limits.
func (f *Filter) structure(ctx context.Context, env *filters.Envelope, body filters.Body, r io.ReaderAt, size int64) (*mimetree.Part, error) {
	r = mailtext.NewReaderAt(ctx, r)
	root, err := env.MIME(ctx, body)
	var le *mimetree.LimitError
	if errors.As(err, &le) {
		return parseMIME(r, size, f.lim)
	}
	if err != nil {
		return nil, err
	}
	if err := root.Exceeds(f.lim, r, size); err != nil {
		return nil, err
	}
	return root, nil
}

// filter decides on body, the message of size bytes that ra reads, whose
// tree (or the error of parsing it) is root (err), and makes the verdict.
func (f *Filter) filter(ctx context.Context, body filters.Body, ra io.ReaderAt, size int64, root *mimetree.Part, err error) (filters.Verdict, error) {
	d, err := f.decideOn(ctx, ra, size, root, err)
	if err != nil {
		return filters.Verdict{}, err
	}
	switch d.Action {
	case filters.Pass:
		return filters.Verdict{Action: filters.Pass, Reason: d.Reason}, nil
	case filters.Replace:
		b, edits, err := rewrite(body, ra, size, d.Matches)
		if err != nil {
			return filters.Verdict{}, err
		}
		return filters.Verdict{Action: filters.Replace, Body: b, Reason: d.Reason, Edits: edits}, nil
	}
	return filters.Verdict{Action: d.Action, Reason: d.Reason}, nil
}

// match is one part a rule (or an archive limit) matched.
type match struct {
	Part *mimetree.Part
	// Name is the part's file name as sent ("" for a part without one).
	Name   string
	Rule   string // the rule's name; "" for an archive limit
	Action Action // ActionStrip, ActionReject, ActionQuarantine or ActionTempfail
	// Why says what matched: "extension exe", "detected type …", …
	Why string

	inner string // for a match inside an encoded message: what matched there
}

// Describe is "invoice.pdf.exe (rule dangerous: extension exe)".
func (m *match) Describe() string {
	name := displayName(m.Name)
	if name == "" {
		name = fmt.Sprintf("part %d (%s)", m.Part.Index, m.Part.ContentType)
	}
	if m.Rule == "" {
		return fmt.Sprintf("%s (%s)", name, m.Why)
	}
	return fmt.Sprintf("%s (rule %s: %s)", name, m.Rule, m.Why)
}

// decision is what the filter decided for one message, before any rewrite.
type decision struct {
	// Action is filters.Pass, Replace (strip Matches), Reject or Retry.
	Action filters.Action
	Reason string
	// Root is the parsed message (nil when parsing hit a limit).
	Root *mimetree.Part
	// Matches are the parts matched, in document order. For Replace they
	// are exactly the parts to strip.
	Matches []match
	// Limit is set when the message exceeded a MIME limit.
	Limit *mimetree.LimitError
}

// parseMIME reads the part tree of the size bytes of r.
func parseMIME(r io.ReaderAt, size int64, lim mimetree.Limits) (*mimetree.Part, error) {
	return mimetree.Parse(io.NewSectionReader(r, 0, size), size, lim, nil)
}

// decide parses the message of size bytes in r and applies the rules,
// without rewriting anything. It is what Filter does, for tools (popgate
// scan) and tests.
func (f *Filter) decide(ctx context.Context, r io.ReaderAt, size int64) (*decision, error) {
	root, err := parseMIME(mailtext.NewReaderAt(ctx, r), size, f.lim)
	return f.decideOn(ctx, r, size, root, err)
}

// decideOn applies the rules to the message of size bytes in r, whose tree
// under the filter's limits is root, or the error of parsing it.
func (f *Filter) decideOn(ctx context.Context, r io.ReaderAt, size int64, root *mimetree.Part, err error) (*decision, error) {
	d := &decision{Action: filters.Pass}
	r = mailtext.NewReaderAt(ctx, r)
	var le *mimetree.LimitError
	if errors.As(err, &le) {
		return f.limitDecision(d, le), nil
	}
	if err != nil {
		return nil, fmt.Errorf("strip: reading the message: %w", err)
	}
	d.Root = root
	ev := &evaluator{f: f, ctx: ctx, partsLeft: f.lim.MaxParts - countParts(root)}
	matches, err := ev.tree(r, root, 0)
	ev.release()
	if errors.As(err, &le) {
		return f.limitDecision(d, le), nil
	}
	if err != nil {
		return nil, err
	}
	d.Matches = matches
	if len(matches) == 0 {
		return d, nil
	}
	// The most severe action wins: reject/quarantine, then tempfail, then
	// strip.
	var rejects, temps, strips []match
	for _, m := range matches {
		switch m.Action {
		case ActionReject, ActionQuarantine:
			rejects = append(rejects, m)
		case ActionTempfail:
			temps = append(temps, m)
		default:
			strips = append(strips, m)
		}
	}
	switch {
	case len(rejects) > 0:
		d.Action = filters.Reject
		verb := "rejected"
		if rejects[0].Action == ActionQuarantine {
			verb = "quarantined"
		}
		d.Reason = reasonList(verb, rejects)
		d.Matches = rejects
	case len(temps) > 0:
		d.Action = filters.Retry
		d.Reason = reasonList("deferred", temps)
		d.Matches = temps
	default:
		d.Action = filters.Replace
		d.Reason = reasonList("stripped", strips)
		d.Matches = strips
	}
	return d, nil
}

func (f *Filter) limitDecision(d *decision, le *mimetree.LimitError) *decision {
	d.Limit = le
	d.Root = nil
	switch f.onLimit {
	case ActionPass:
		d.Action = filters.Pass
		d.Reason = "not examined: " + le.Error()
	case ActionTempfail:
		d.Action = filters.Retry
		d.Reason = "deferred: " + le.Error()
	default:
		d.Action = filters.Reject
		d.Reason = "rejected: " + le.Error()
	}
	return d
}

// maxReason bounds the length of a verdict's reason.
const maxReason = 400

func reasonList(verb string, ms []match) string {
	var b strings.Builder
	b.WriteString(verb)
	b.WriteString(": ")
	for i, m := range ms {
		s := m.Describe()
		if i > 0 {
			if b.Len()+len(s)+2 > maxReason {
				fmt.Fprintf(&b, " and %d more", len(ms)-i)
				break
			}
			b.WriteString(", ")
		}
		b.WriteString(s)
	}
	return b.String()
}

func countParts(root *mimetree.Part) int {
	n := 0
	root.Walk(func(*mimetree.Part) bool { n++; return true })
	return n
}
