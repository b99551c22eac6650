package strip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"sync"

	"github.com/gabriel-vasile/mimetype"

	"github.com/popgate/popgate/internal/archive"
	"github.com/popgate/popgate/internal/iobuf"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// rule is a compiled Rule.
type rule struct {
	name          string
	action        Action
	globs         []string
	exts          []string
	ctypes        []string
	dtypes        []string
	archiveGlobs  []string
	encrypted     bool
	suspicious    bool
	minSize       int64
	maxSize       int64
	hasSelector   bool
	needsArchive  bool
	needsDetected bool
}

// typeAliases maps names in common use to the type mimetype detects.
var typeAliases = map[string]string{
	"application/x-msdownload":        "application/vnd.microsoft.portable-executable",
	"application/x-dosexec":           "application/vnd.microsoft.portable-executable",
	"application/x-msdos-program":     "application/vnd.microsoft.portable-executable",
	"application/x-ms-dos-executable": "application/vnd.microsoft.portable-executable",
	"application/x-exe":               "application/vnd.microsoft.portable-executable",
	"application/exe":                 "application/vnd.microsoft.portable-executable",
	"application/x-winexe":            "application/vnd.microsoft.portable-executable",
}

func compileRule(r *Rule) (*rule, error) {
	c := &rule{name: r.Name, action: r.Action, encrypted: r.EncryptedArchives, suspicious: r.SuspiciousNames, minSize: r.MinSize, maxSize: r.MaxSize}
	var errs []error
	fail := func(what string, err error) {
		errs = append(errs, fmt.Errorf("rule %s: %s: %w", r.Name, what, err))
	}
	switch c.action {
	case ActionDefault:
		c.action = ActionStrip
	case ActionStrip, ActionReject, ActionQuarantine:
	default:
		fail("action", fmt.Errorf("%v is not one of strip, reject, quarantine", c.action))
	}
	for _, g := range r.Filenames {
		n, err := normalizeGlob(g)
		if err != nil {
			fail("filenames", err)
		}
		c.globs = append(c.globs, n)
	}
	for _, e := range r.Extensions {
		n, err := normalizeExtension(e)
		if err != nil {
			fail("extensions", err)
		}
		c.exts = append(c.exts, n)
	}
	for _, t := range r.ContentTypes {
		n, err := normalizeTypePattern(t)
		if err != nil {
			fail("content_types", err)
		}
		c.ctypes = append(c.ctypes, n)
	}
	for _, t := range r.DetectedTypes {
		n, err := normalizeTypePattern(t)
		if err != nil {
			fail("detected_types", err)
		}
		if a, ok := typeAliases[n]; ok {
			n = a
		}
		c.dtypes = append(c.dtypes, n)
	}
	for _, g := range r.ArchiveFilenames {
		n, err := normalizeGlob(g)
		if err != nil {
			fail("archive_filenames", err)
		}
		c.archiveGlobs = append(c.archiveGlobs, n)
	}
	if r.MinSize < 0 || r.MaxSize < 0 {
		fail("size", errors.New("sizes cannot be negative"))
	}
	if r.MaxSize > 0 && r.MinSize > r.MaxSize {
		fail("size", fmt.Errorf("min_size %d is larger than max_size %d", r.MinSize, r.MaxSize))
	}
	c.hasSelector = len(c.globs)+len(c.exts)+len(c.ctypes)+len(c.dtypes)+len(c.archiveGlobs) > 0 || c.encrypted || c.suspicious
	if !c.hasSelector && c.minSize == 0 && c.maxSize == 0 {
		fail("selectors", errors.New("the rule selects nothing: give filenames, extensions, content_types, detected_types, archive_filenames, encrypted_archives, suspicious_names or a size"))
	}
	c.needsArchive = len(c.archiveGlobs) > 0 || c.encrypted
	c.needsDetected = len(c.dtypes) > 0
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// evaluator applies the rules to one message.
type evaluator struct {
	f         *Filter
	ctx       context.Context
	partsLeft int
	head      []byte // the head of the part being evaluated (headLen bytes)
}

// partInfo caches what the rules need of one part.
type partInfo struct {
	p     *mimetree.Part
	r     io.ReaderAt
	names []nameInfo

	headDone bool
	head     []byte
	// dec is the decoding pass the head was read from, while the rest of
	// the content is still unread in it: the size pass or the copy of an
	// archive goes on with it instead of decoding the head again.
	dec io.Reader

	sizeDone bool
	size     int64
	eocd     bool // the decoded content ends like a zip
	disk     bool // it has a disk image's identifier at 32 KiB

	archDone bool
	arch     *archive.Listing
	archErr  error
}

type nameInfo struct {
	raw, norm  string
	suspicious bool
}

// sniffLen is how much decoded content type detection looks at: the most
// mimetype reads by default (its ReadLimit), since some of its detectors
// (office documents in a zip, tar) look past the first bytes.
const sniffLen = 3072

// headLen is how much of a part's decoded content the rules look at
// first: what type detection needs when a rule detects types, what a
// container format's Sniff is shown when a rule lists archives, else
// nothing.
func headLen(rules []*rule) int {
	n := 0
	for _, rl := range rules {
		if rl.needsDetected {
			n = max(n, sniffLen)
		}
		if rl.needsArchive {
			n = max(n, archive.HeadLen)
		}
	}
	return n
}

// tree evaluates the parts of the message rooted at root (read from r),
// depth being the nesting of root in the outermost message.
func (ev *evaluator) tree(r io.ReaderAt, root *mimetree.Part, depth int) ([]match, error) {
	var matches []match
	var err error
	n := 0
	root.Walk(func(p *mimetree.Part) bool {
		if err != nil {
			return false
		}
		if n++; n%256 == 0 {
			if err = ev.ctx.Err(); err != nil {
				return false
			}
		}
		if p.Kind == mimetree.Multipart {
			return true
		}
		var m *match
		m, err = ev.part(r, p, depth)
		if err != nil {
			return false
		}
		if m != nil {
			matches = append(matches, *m)
			return false
		}
		return p.Kind == mimetree.Message
	})
	return matches, err
}

// part evaluates one part that is not a multipart.
func (ev *evaluator) part(r io.ReaderAt, p *mimetree.Part, depth int) (*match, error) {
	pi := &partInfo{p: p, r: r}
	for _, n := range p.Names {
		norm, sus := normalizeName(n)
		pi.names = append(pi.names, nameInfo{raw: n, norm: norm, suspicious: sus})
	}
	for _, rl := range ev.f.rules {
		why, name, ok, err := ev.match(rl, pi)
		if err != nil {
			var ae *archive.LimitError
			var ue *unreadableError
			switch {
			case errors.As(err, &ae):
				return &match{Part: p, Name: p.Filename, Action: ev.f.onArchive, Why: ae.Error()}, nil
			case errors.As(err, &ue):
				return &match{Part: p, Name: p.Filename, Action: ev.f.onUnreadable, Why: ue.Error()}, nil
			}
			return nil, err
		}
		if ok {
			return &match{Part: p, Name: name, Rule: rl.name, Action: rl.action, Why: why}, nil
		}
	}
	if m, err := ev.embedded(pi); m != nil || err != nil {
		return m, err
	}
	if p.Kind == mimetree.Leaf && (p.ContentType == "message/rfc822" || p.ContentType == "message/global") && !mimetree.IdentityEncoding(p.Encoding) {
		return ev.encodedMessage(r, p, depth)
	}
	return nil, nil
}

// encodedMessage looks into a message/rfc822 part that was sent base64 or
// quoted-printable encoded (not allowed, but clients open it): when anything
// in it matches, the whole part gets the most severe action found.
func (ev *evaluator) encodedMessage(r io.ReaderAt, p *mimetree.Part, depth int) (*match, error) {
	lim := ev.f.lim
	lim.MaxDepth -= depth + p.Depth + 1
	if lim.MaxDepth < 1 {
		return nil, &mimetree.LimitError{Limit: "depth", Max: ev.f.lim.MaxDepth, Offset: p.BodyStart}
	}
	lim.MaxParts = ev.partsLeft
	if lim.MaxParts < 1 {
		return nil, &mimetree.LimitError{Limit: "parts", Max: ev.f.lim.MaxParts, Offset: p.BodyStart}
	}
	w := ev.f.spool.NewWriter()
	defer w.Abort()
	if _, err := iobuf.Copy(w, mailtext.NewReader(ev.ctx, p.Content(r))); err != nil {
		return nil, err
	}
	b, err := w.Finish()
	if err != nil {
		return nil, err
	}
	defer b.Remove()
	rc, err := b.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	ra, ok := rc.(io.ReaderAt)
	if !ok {
		return nil, errors.New("strip: spool body without io.ReaderAt")
	}
	sub, err := parseMIME(ra, b.Size(), lim)
	var le *mimetree.LimitError
	if errors.As(err, &le) {
		// Report the limit in the outer terms.
		le = &mimetree.LimitError{Limit: le.Limit, Offset: p.BodyStart}
		switch le.Limit {
		case "depth":
			le.Max = ev.f.lim.MaxDepth
		case "parts":
			le.Max = ev.f.lim.MaxParts
		default:
			le.Max = ev.f.lim.MaxHeaderBytes
		}
		return nil, le
	}
	if err != nil {
		return nil, err
	}
	ev.partsLeft -= countParts(sub)
	ms, err := ev.tree(ra, sub, depth+p.Depth+1)
	if err != nil || len(ms) == 0 {
		return nil, err
	}
	worst := ms[0]
	for _, m := range ms[1:] {
		if severity(m.Action) > severity(worst.Action) {
			worst = m
		}
	}
	inner := worst.inner
	if inner == "" {
		name := displayName(worst.Name)
		if name == "" {
			name = fmt.Sprintf("a %s part", worst.Part.ContentType)
		}
		inner = fmt.Sprintf("%s (%s)", name, worst.Why)
	}
	return &match{Part: p, Name: p.Filename, Rule: worst.Rule, Action: worst.Action,
		Why: "attached message holds " + inner, inner: inner}, nil
}

func severity(a Action) int {
	switch a {
	case ActionReject, ActionQuarantine:
		return 3
	case ActionTempfail:
		return 2
	case ActionStrip:
		return 1
	}
	return 0
}

// match applies one rule to a part.
func (ev *evaluator) match(rl *rule, pi *partInfo) (string, string, bool, error) {
	why, name, ok := rl.cheap(pi)
	if !ok && rl.needsDetected {
		why, ok = rl.detected(ev.headOf(pi))
	}
	if !ok && rl.needsArchive {
		var err error
		why, ok, err = ev.archive(rl, pi)
		if err != nil {
			return "", "", false, err
		}
	}
	if !rl.hasSelector {
		ok = true
	}
	if !ok {
		return "", "", false, nil
	}
	if rl.minSize > 0 || rl.maxSize > 0 {
		size, err := ev.sizeOf(pi)
		if err != nil {
			return "", "", false, err
		}
		if size < rl.minSize || (rl.maxSize > 0 && size > rl.maxSize) {
			return "", "", false, nil
		}
		if !rl.hasSelector {
			why = fmt.Sprintf("size %d bytes", size)
		}
	}
	return why, name, true, nil
}

// cheap applies the selectors that need no content.
func (rl *rule) cheap(pi *partInfo) (why, name string, ok bool) {
	for _, n := range pi.names {
		if rl.suspicious && n.suspicious {
			return "bidi or invisible characters in the file name", n.raw, true
		}
		ext := extensionOf(n.norm)
		for _, e := range rl.exts {
			if ext == e || (strings.Contains(e, ".") && hasExtension(n.norm, e)) {
				return "extension " + e, n.raw, true
			}
		}
		for _, g := range rl.globs {
			if globMatch(g, n.norm, n.norm) {
				return "file name matches " + g, n.raw, true
			}
		}
	}
	for _, t := range rl.ctypes {
		if ok, _ := path.Match(t, pi.p.ContentType); ok {
			return "content type " + displayName(pi.p.ContentType), pi.p.Filename, true
		}
	}
	return "", pi.p.Filename, false
}

// detected applies detected_types to the sniffed type of head.
func (rl *rule) detected(head []byte) (string, bool) {
	mt := mimetype.Detect(head)
	top := mt
	for m := mt; m != nil; m = m.Parent() {
		s := m.String()
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		if m != top && (m.Parent() == nil || s == "text/plain") {
			break // the catch-alls do not count as more general types
		}
		for _, t := range rl.dtypes {
			if ok, _ := path.Match(t, s); ok || m.Is(t) {
				return "detected type " + strings.SplitN(top.String(), ";", 2)[0], true
			}
		}
	}
	return "", false
}

// unreadableError is a container the lister could not read, in a part a
// rule needs the members of: on_unreadable_archive decides.
type unreadableError struct{ p archive.Problem }

func (e *unreadableError) Error() string { return e.p.String() }

// archive applies archive_filenames and encrypted_archives (to the
// members listed, when some container could not be read or lay beyond
// archive_depth: a member that matches decides; else on_archive_limit does
// for the containers too deep, then on_unreadable_archive for those that
// could not be read).
func (ev *evaluator) archive(rl *rule, pi *partInfo) (string, bool, error) {
	a, err := ev.archiveOf(pi)
	var ae *archive.LimitError
	if errors.As(err, &ae) {
		if ev.f.onArchive == ActionPass {
			return "", false, nil
		}
		return "", false, err
	}
	if err != nil || a == nil {
		return "", false, err
	}
	if rl.encrypted && a.Encrypted {
		return "encrypted archive", true, nil
	}
	for _, e := range a.Entries {
		if e.Dir {
			continue
		}
		full := strings.ToLower(e.Path)
		base, _ := normalizeName(e.Name)
		for _, g := range rl.archiveGlobs {
			if globMatch(g, full, base) {
				return fmt.Sprintf("archive member %s matches %s", displayName(e.Path), g), true, nil
			}
		}
	}
	if de := a.DepthError(ev.f.alim); de != nil && ev.f.onArchive != ActionPass {
		return "", false, de
	}
	if len(a.Unreadable) > 0 && ev.f.onUnreadable != ActionPass {
		return "", false, &unreadableError{a.Unreadable[0]}
	}
	return "", false, nil
}

// headMax is the longest head any rule needs.
const headMax = max(sniffLen, archive.HeadLen)

// headBufs recycles the evaluators' head buffers: every message needs one.
var headBufs = sync.Pool{New: func() any { return new([headMax]byte) }}

// release gives the head buffer back once the message is decided.
func (ev *evaluator) release() {
	if ev.head != nil {
		headBufs.Put((*[headMax]byte)(ev.head[:headMax]))
		ev.head = nil
	}
}

func (ev *evaluator) headOf(pi *partInfo) []byte {
	if pi.headDone {
		return pi.head
	}
	pi.headDone = true
	if ev.head == nil {
		ev.head = headBufs.Get().(*[headMax]byte)[:ev.f.headLen]
	}
	pi.dec = mailtext.NewReader(ev.ctx, pi.p.Content(pi.r))
	n, _ := io.ReadFull(pi.dec, ev.head)
	pi.head = ev.head[:n]
	return pi.head
}

// content writes the part's decoded content to w: the head and the rest
// of its decoding pass when that is still unread, else a pass of its own.
func (ev *evaluator) content(w io.Writer, pi *partInfo) (int64, error) {
	if pi.dec == nil {
		return iobuf.Copy(w, mailtext.NewReader(ev.ctx, pi.p.Content(pi.r)))
	}
	dec := pi.dec
	pi.dec = nil
	n, err := w.Write(pi.head)
	if err != nil {
		return int64(n), err
	}
	m, err := iobuf.Copy(w, dec)
	return int64(n) + m, err
}

// sizeOf decodes the part once to learn its size, whether it ends like a
// zip archive and whether it has a disk image's volume identifier.
func (ev *evaluator) sizeOf(pi *partInfo) (int64, error) {
	if pi.sizeDone {
		return pi.size, nil
	}
	p := pi.p
	if mimetree.IdentityEncoding(p.Encoding) {
		pi.size = p.BodyEnd - p.BodyStart
		n := min(pi.size, tailKeep)
		tail := make([]byte, n)
		if _, err := pi.r.ReadAt(tail, p.BodyEnd-n); err != nil && err != io.EOF {
			return 0, err
		}
		pi.eocd = bytes.Contains(tail, []byte("PK\x05\x06"))
		var id [5]byte
		if pi.size >= archive.DiskIDOffset+int64(len(id)) {
			if _, err := pi.r.ReadAt(id[:], p.BodyStart+archive.DiskIDOffset); err != nil && err != io.EOF {
				return 0, err
			}
			pi.disk = archive.DiskID(id[:])
		}
		pi.sizeDone = true
		return pi.size, nil
	}
	bp := tailBufs.Get().(*[]byte)
	tw := &tailWriter{keep: tailKeep, buf: (*bp)[:0]}
	defer func() { *bp = tw.buf[:0]; tailBufs.Put(bp) }()
	n, err := ev.content(tw, pi)
	if err != nil {
		return 0, err
	}
	pi.size, pi.sizeDone = n, true
	pi.eocd = bytes.Contains(tw.tail(), []byte("PK\x05\x06"))
	pi.disk = tw.idLen == len(tw.id) && archive.DiskID(tw.id[:])
	return pi.size, nil
}

// archiveOf lists the part as a container (of any kind internal/archive
// reads) when it may be one; it returns nil for parts that are not.
func (ev *evaluator) archiveOf(pi *partInfo) (*archive.Listing, error) {
	if pi.archDone {
		return pi.arch, pi.archErr
	}
	pi.archDone = true
	head := ev.headOf(pi)
	// Text may hold uuencoded or BinHex files after any amount of prose,
	// beyond the head: List's sniffing reads all of it.
	candidate := archive.Sniffed(head, pi.p.Filename) || mayEmbed(head)
	for _, n := range pi.names {
		if archive.NameKind(n.norm) != "" {
			candidate = true
		}
	}
	if !candidate {
		// Self-extracting or junk-prefixed zips end like one; a disk
		// image has its volume identifier at 32 KiB, whatever its head.
		if _, err := ev.sizeOf(pi); err != nil {
			pi.archErr = err
			return nil, err
		}
		candidate = pi.eocd || pi.disk
	}
	if !candidate {
		return nil, nil
	}
	ra, size, done, err := ev.decodedAt(pi)
	if err != nil {
		pi.archErr = err
		return nil, err
	}
	defer done()
	a, err := archive.List(ev.ctx, ra, size, pi.p.Filename, ev.f.alim, ev.f.spool)
	var ae *archive.LimitError
	switch {
	case err == nil:
		pi.arch = a
	case errors.As(err, &ae):
		pi.arch, pi.archErr = a, err
	case errors.Is(err, archive.ErrNotFormat):
		// Not a container after all (a name claiming one is not this).
	default:
		pi.archErr = err
	}
	return pi.arch, pi.archErr
}

// tailWriter keeps the last keep bytes of what is written, and the bytes
// at archive.DiskIDOffset.
type tailWriter struct {
	keep  int
	buf   []byte
	off   int64 // bytes written so far
	id    [5]byte
	idLen int // bytes of id written
}

func (t *tailWriter) Write(p []byte) (int, error) {
	n := len(p)
	if at := archive.DiskIDOffset + int64(t.idLen); t.idLen < len(t.id) && at < t.off+int64(n) {
		t.idLen += copy(t.id[t.idLen:], p[at-t.off:])
	}
	t.off += int64(n)
	if len(p) >= t.keep {
		t.buf = append(t.buf[:0], p[len(p)-t.keep:]...)
		return n, nil
	}
	if len(t.buf)+len(p) > 2*t.keep {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-(t.keep-len(p)):]...)
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailWriter) tail() []byte {
	if len(t.buf) > t.keep {
		return t.buf[len(t.buf)-t.keep:]
	}
	return t.buf
}
