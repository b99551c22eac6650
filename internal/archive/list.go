package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// Defaults of Limits.
const (
	DefaultMaxDepth   = 3
	DefaultMaxEntries = 10000
	DefaultMaxSize    = 512 << 20
	DefaultMaxRatio   = 250
	// ratioFloor is the uncompressed size above which a member's
	// compression ratio is checked: small files may compress as well as
	// they like.
	ratioFloor = 1 << 20
	// maxName caps a member's name as listed: names come from the
	// container and may be as long as it likes (a pax header).
	maxName = 4096
	// sniffMax is how much of a nested member Sniff may read: enough for a
	// disk image's volume descriptors (at 32 KiB) and a small zip's end
	// record, without unpacking every member to decide whether it is a
	// container.
	sniffMax = 64 << 10
)

// Limits caps List. A zero or negative field means its default.
type Limits struct {
	// MaxDepth is how many levels of containers are listed: 1 is the
	// container itself only, 3 (the default) also containers inside it and
	// containers inside those, of any kind. A compressed stream
	// (Transparent) is no level of its own: a .tar.gz is one level.
	MaxDepth int
	// MaxEntries caps the members of all listed containers together.
	MaxEntries int
	// MaxSize caps the uncompressed bytes of all listed containers
	// together, twice: the sizes they declare, and the bytes actually
	// unpacked to look into members (and to measure streams that declare
	// no size).
	MaxSize int64
	// MaxRatio caps the compression ratio (uncompressed / compressed) of a
	// member larger than 1 MiB, declared and actual.
	MaxRatio int
}

// WithDefaults returns l with each unset field at its default.
func (l Limits) WithDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxSize <= 0 {
		l.MaxSize = DefaultMaxSize
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = DefaultMaxRatio
	}
	return l
}

// Entry is one member of a listed container (or of a container in it).
type Entry struct {
	// Name is the member's name as stored, decoded to UTF-8 (at most 4 KiB
	// of it).
	Name string
	// Path is Name prefixed with the names of the nested containers it is
	// in, joined by "/": "inner.zip/evil.exe", "a.tar/bin/evil.exe" for a
	// member of the tar in a.tar.gz.
	Path string
	// Depth is 0 for members of the container itself, 1 for members of a
	// container inside it, and so on (compressed streams add none).
	Depth int
	// Format is the kind of the container the member is in ("zip", "tar").
	Format string
	// Size and CompressedSize are as declared (-1: none). The Size of a
	// stream's member is the number of bytes it unpacked to.
	Size, CompressedSize int64
	Encrypted            bool
	Dir                  bool
}

// Problem is a container (or a member) List could not read.
type Problem struct {
	// Path is the container's path in the listing ("" for the container
	// List was given).
	Path string
	// Format is the kind it was taken for.
	Format string
	// Reason says what is wrong with it.
	Reason string
}

// String is "unreadable rar archive docs/a.rar: corrupt container: …".
func (p Problem) String() string {
	where := ""
	if p.Path != "" {
		where = " " + p.Path
	}
	return fmt.Sprintf("unreadable %s archive%s: %s", p.Format, where, p.Reason)
}

// Listing is what List found.
type Listing struct {
	Entries []Entry
	// Encrypted is set when any listed member is encrypted, or the member
	// list of a container is.
	Encrypted bool
	// Unreadable are the containers (and members) that could not be read:
	// corrupt, of an unsupported variant or compression method, or named
	// like a container of no kind List reads. Their members are unknown,
	// which is not the same as having none.
	Unreadable []Problem
	// Skipped are the paths of members whose content their format cannot
	// extract (a compression method it does not implement): whether they
	// are containers is unknown.
	Skipped []string
	// Deep are the paths of containers not looked into because they lie
	// beyond MaxDepth (or end a chain of compressed streams twice as
	// long): their members are unknown, which is a limit reached, not "no
	// members".
	Deep []string
}

// LimitError is returned when a container exceeds Limits.
type LimitError struct {
	Limit string // "entries", "size", "ratio" or "depth"
	Max   int64
	Path  string // the member (or nested container) where the cap was hit
	Value int64  // the offending value (entries, bytes, ratio)
}

// DepthError is the limit reached when containers lay beyond lim.MaxDepth
// (nil when none did). List records them in Deep and goes on listing, so
// that a member that matches a rule still decides; the caller then treats
// the containers it could not look into as a limit reached.
func (a *Listing) DepthError(lim Limits) *LimitError {
	if len(a.Deep) == 0 {
		return nil
	}
	return &LimitError{Limit: "depth", Max: int64(lim.WithDefaults().MaxDepth), Path: a.Deep[0], Value: int64(len(a.Deep))}
}

// Bomb reports whether the error is about a decompression bomb (size or
// ratio).
func (e *LimitError) Bomb() bool { return e.Limit == "size" || e.Limit == "ratio" }

func (e *LimitError) Error() string {
	switch e.Limit {
	case "entries":
		return fmt.Sprintf("archive has more than %d entries", e.Max)
	case "size":
		return fmt.Sprintf("decompression bomb: more than %s uncompressed (at %s)", humanSize(e.Max), e.Path)
	case "ratio":
		return fmt.Sprintf("decompression bomb: %s compressed %d:1, over the %d:1 limit", e.Path, e.Value, e.Max)
	case "depth":
		return fmt.Sprintf("archive nested more than %d levels deep (at %s)", e.Max, e.Path)
	}
	return fmt.Sprintf("archive %s limit %d exceeded at %s", e.Limit, e.Max, e.Path)
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// nameKinds maps the extensions (and names) that claim a container to its
// kind: content so named that no format reads is unreadable, not "no
// members". Documents that are zips inside (docx, odt, jar, …) claim
// nothing: they are found by their content, and an encrypted Office
// document (an OLE file named .docx) is no broken zip.
var nameKinds = map[string]string{
	"zip": "zip", "zipx": "zip",
	"tar": "tar",
	"gz":  "gzip", "tgz": "gzip", "taz": "gzip",
	"bz2": "bzip2", "tbz": "bzip2", "tbz2": "bzip2",
	"xz": "xz", "txz": "xz",
	"zst": "zstd", "tzst": "zstd",
	"cpio": "cpio",
	"7z":   "7z",
	"rar":  "rar",
	"cab":  "cab",
	"arj":  "arj",
	"iso":  "iso9660", "img": "iso9660", "udf": "udf",
	"tnef": "tnef", "winmail.dat": "tnef",
	"hqx": "binhex", "uue": "uuencode",
}

// NameKind returns the container kind a file name claims ("gzip" for
// "a.tar.gz"), or "" when it claims none.
func NameKind(name string) string {
	n := strings.ToLower(strings.TrimRight(name, ". \t"))
	if i := strings.LastIndexAny(n, "/\\"); i >= 0 {
		n = n[i+1:]
	}
	i := strings.LastIndexByte(n, '.')
	if i < 0 {
		return "" // "tar" alone claims nothing
	}
	if k, ok := nameKinds[n]; ok {
		return k // winmail.dat
	}
	return nameKinds[n[i+1:]]
}

// Sniffed reports whether content starting with head (all that is known
// of it) may be a container of a registered kind, or its name claims one.
// Formats that need more than head to tell say no.
func Sniffed(head []byte, name string) bool {
	return NameKind(name) != "" || sniffAny(head, bytes.NewReader(head), int64(len(head)), name)
}

// DiskIDOffset is where a disk image (ISO 9660, UDF) has the identifier
// of its first volume structure, whatever its system area, the 32 KiB
// before it, holds: zeros, the boot record of a hybrid image, anything.
const DiskIDOffset = 16*2048 + 1

// DiskID reports whether id, the 5 bytes at DiskIDOffset, may be a disk
// image's: ISO 9660's CD001, or the start of UDF's Volume Recognition
// Sequence.
func DiskID(id []byte) bool {
	switch string(id) {
	case "CD001", "BEA01", "NSR02", "NSR03":
		return true
	}
	return false
}

func sniffAny(head []byte, r io.ReaderAt, size int64, name string) bool {
	for _, f := range formats {
		if f.Sniff(head, r, size, name) {
			return true
		}
	}
	return false
}

// List lists the members of the container of size bytes in r (named name,
// "" when it has none), and of the containers inside it, of any registered
// kind, down to lim.MaxDepth. The first format (in registration order)
// whose Sniff accepts the first HeadLen bytes and whose Walk does not
// refuse them with ErrNotFormat reads it.
//
// It never trusts a declared count or size: it stops at lim.MaxEntries
// members over all levels, checks declared sizes and ratios before it
// reads a member, and unpacks a member (to look into it when it is a
// container, or to measure a stream) only within what is left of
// lim.MaxSize and within lim.MaxRatio of its compressed size, counting the
// bytes it actually gets; nested containers are unpacked into bodies of
// spool. It returns an *LimitError (with what was listed so far) when a cap
// is exceeded, the context's error when ctx ends, ErrNotFormat when the
// content is of no registered kind and its name claims none, and an error
// of spool's. A container that is corrupt, of an unsupported variant or
// encrypted is no error: it is in Listing.Unreadable (or sets
// Listing.Encrypted); nor is a container beyond lim.MaxDepth: it is in
// Listing.Deep, and the rest is listed.
func List(ctx context.Context, r io.ReaderAt, size int64, name string, lim Limits, spool *filters.Spool) (*Listing, error) {
	ctx = context.WithValue(ctx, decoderBudgetKey{}, &decoderBudget{left: maxWindow})
	l := &lister{ctx: ctx, lim: lim.WithDefaults(), spool: spool, out: &Listing{}}
	defer l.releaseBufs()
	found, err := l.container(r, size, name, "", 0, 0)
	if err == nil && !found {
		err = ErrNotFormat
	}
	return l.out, err
}

type lister struct {
	ctx      context.Context
	lim      Limits
	spool    *filters.Spool
	out      *Listing
	entries  int
	declared int64     // sizes declared by all members so far
	read     int64     // bytes unpacked from members so far
	bufs     []*[]byte // a prefix buffer per nesting level, from prefixBufs
}

// prefixBufs recycles the prefix buffers (up to sniffMax each) across
// listings: every attachment that may be a container gets one.
var prefixBufs = sync.Pool{New: func() any { return new([]byte) }}

func (l *lister) releaseBufs() {
	for _, b := range l.bufs {
		*b = (*b)[:0]
		prefixBufs.Put(b)
	}
	l.bufs = nil
}

// abort carries an error of List's own (a limit, the context, the spool)
// out through a format's Walk, so that it is told from the format's.
type abort struct{ err error }

func (a *abort) Error() string { return a.err.Error() }

// container lists the container of size bytes in r, named name, whose
// path in the listing is path; its members are at depth level; nest counts
// the containers it is in, compressed streams included. It reports whether
// some format (or the name) took it for a container.
func (l *lister) container(r io.ReaderAt, size int64, name, path string, level, nest int) (bool, error) {
	head := make([]byte, min(size, HeadLen))
	if n, err := r.ReadAt(head, 0); err != nil && !(err == io.EOF && n == len(head)) {
		return false, err
	}
	prefix := ""
	if path != "" {
		prefix = path + "/"
	}
	for _, f := range formats {
		if !f.Sniff(head, r, size, name) {
			continue
		}
		err := f.Walk(l.ctx, r, size, name, func(m *Member) error {
			if err := l.member(f, m, prefix, level, nest); err != nil {
				return &abort{err}
			}
			return nil
		})
		var ab *abort
		switch {
		case err == nil:
		case errors.As(err, &ab):
			return true, ab.err
		case l.ctx.Err() != nil:
			return true, l.ctx.Err()
		case errors.Is(err, ErrNotFormat):
			continue
		case errors.Is(err, ErrEncrypted):
			l.out.Encrypted = true
		default:
			l.unreadable(path, f.Name, err)
		}
		return true, nil
	}
	if k := NameKind(name); k != "" {
		l.out.Unreadable = append(l.out.Unreadable, Problem{Path: path, Format: k, Reason: "not a " + k + " archive of a kind popgate reads"})
		return true, nil
	}
	return false, nil
}

func (l *lister) unreadable(path, format string, err error) {
	l.out.Unreadable = append(l.out.Unreadable, Problem{Path: path, Format: format, Reason: err.Error()})
}

// capName cuts a name to maxName bytes, on a character boundary.
func capName(s string) string {
	if len(s) <= maxName {
		return s
	}
	cut := maxName
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// member lists one member of a container of format f.
func (l *lister) member(f *Format, m *Member, prefix string, level, nest int) error {
	if err := l.ctx.Err(); err != nil {
		return err
	}
	l.entries++
	if l.entries > l.lim.MaxEntries {
		return &LimitError{Limit: "entries", Max: int64(l.lim.MaxEntries), Path: strings.TrimSuffix(prefix, "/"), Value: int64(l.entries)}
	}
	e := Entry{Name: capName(m.Name), Depth: level, Format: f.Name, Size: m.Size, CompressedSize: m.CompressedSize, Encrypted: m.Encrypted, Dir: m.Dir}
	e.Path = prefix + e.Name
	l.out.Entries = append(l.out.Entries, e)
	if m.Encrypted {
		l.out.Encrypted = true
	}
	if m.Size > 0 {
		l.declared += m.Size
		if l.declared > l.lim.MaxSize || l.declared < 0 {
			return &LimitError{Limit: "size", Max: l.lim.MaxSize, Path: e.Path, Value: l.declared}
		}
		if r := m.Size / max(m.CompressedSize, 1); m.Size > ratioFloor && m.CompressedSize >= 0 && r > int64(l.lim.MaxRatio) {
			return &LimitError{Limit: "ratio", Max: int64(l.lim.MaxRatio), Path: e.Path, Value: r}
		}
	}
	if m.Dir || m.Encrypted {
		return nil
	}
	if m.Open == nil {
		if m.Size == 0 {
			return nil // a link, a device: nothing to look into
		}
		if k := NameKind(e.Name); k != "" {
			l.out.Unreadable = append(l.out.Unreadable, Problem{Path: e.Path, Format: k, Reason: "stored with a compression method popgate does not unpack"})
		} else {
			l.out.Skipped = append(l.out.Skipped, e.Path)
		}
		return nil
	}
	return l.look(f, m, strings.TrimSuffix(prefix, "/"), len(l.out.Entries)-1, level, nest)
}

// look reads member m (listed as entry i) of the container at cpath far
// enough to tell whether it is a container, and lists it when it is; a
// stream's member is read to its end to learn its size.
func (l *lister) look(f *Format, m *Member, cpath string, i, level, nest int) error {
	path := l.out.Entries[i].Path
	name := l.out.Entries[i].Name
	// A member that cannot be read makes its container unreadable.
	unreadable := func(err error) {
		l.unreadable(cpath, f.Name, fmt.Errorf("member %s: %w", name, err))
	}
	rc, err := m.Open()
	if err != nil {
		if l.ctx.Err() != nil {
			return l.ctx.Err()
		}
		unreadable(err)
		return nil
	}
	defer rc.Close()
	// What may be read: what is left of MaxSize, and MaxRatio times the
	// compressed size. One byte more tells that a cap is exceeded.
	limit := l.lim.MaxSize - l.read
	ratioCap := int64(-1)
	if m.CompressedSize >= 0 && m.CompressedSize <= math.MaxInt64/int64(l.lim.MaxRatio) {
		ratioCap = max(ratioFloor, int64(l.lim.MaxRatio)*max(m.CompressedSize, 1))
		limit = min(limit, ratioCap)
	}
	cr := &countReader{r: io.LimitReader(mailtext.NewReader(l.ctx, rc), limit+1)}
	check := func() error {
		if err := l.ctx.Err(); err != nil {
			return err
		}
		got := cr.n
		l.read += got
		cr.n = 0
		if ratioCap >= 0 && got > ratioCap {
			return &LimitError{Limit: "ratio", Max: int64(l.lim.MaxRatio), Path: path, Value: got / max(m.CompressedSize, 1)}
		}
		if l.read > l.lim.MaxSize {
			return &LimitError{Limit: "size", Max: l.lim.MaxSize, Path: path, Value: l.read}
		}
		return nil
	}
	start := l.read

	// One prefix buffer per nesting level, reused member after member.
	for len(l.bufs) <= nest {
		l.bufs = append(l.bufs, prefixBufs.Get().(*[]byte))
	}
	pr := &prefixReader{src: cr, max: sniffMax, buf: (*l.bufs[nest])[:0]}
	defer func() { *l.bufs[nest] = pr.buf }()
	pr.fill(HeadLen)
	if pr.err != nil {
		if err := check(); err != nil {
			return err
		}
		unreadable(pr.err)
		return nil
	}
	size := m.Size
	switch {
	case pr.eof:
		size = int64(len(pr.buf))
	case size < 0:
		size = sniffMax // an unknown length: Sniff sees what it may read
	}
	head := pr.buf[:min(len(pr.buf), HeadLen)]
	candidate := NameKind(name) != "" || sniffAny(head, pr, size, name)
	if pr.err != nil {
		if err := check(); err != nil {
			return err
		}
		unreadable(pr.err)
		return nil
	}
	childLevel, childNest := level+1, nest+1
	if f.Transparent {
		childLevel = level
	}
	if candidate && (childLevel >= l.lim.MaxDepth || childNest >= 2*l.lim.MaxDepth) {
		// A chain of compressed streams adds no level, but no more than
		// the levels themselves could: a gzip quine must end somewhere.
		l.out.Deep = append(l.out.Deep, path)
		candidate = false
	}
	if !candidate {
		if m.Size >= 0 {
			return check()
		}
		// A stream declares no size: measure it, within the caps.
		_, err := io.Copy(io.Discard, pr.rest())
		if err := check(); err != nil {
			return err
		}
		l.out.Entries[i].Size = l.read - start
		if err != nil {
			unreadable(err)
		}
		return nil
	}
	w := l.spool.NewWriter()
	defer w.Abort()
	ew := &errWriter{w: w}
	_, err = io.Copy(ew, pr.rest())
	if err := check(); err != nil {
		return err
	}
	if ew.err != nil {
		return ew.err // the spool failed: ours, not the container's
	}
	if err != nil {
		unreadable(err)
		return nil
	}
	if m.Size < 0 {
		l.out.Entries[i].Size = l.read - start
	}
	body, err := w.Finish()
	if err != nil {
		return err
	}
	defer body.Remove()
	brc, err := body.Open()
	if err != nil {
		return err
	}
	defer brc.Close()
	ra, ok := brc.(io.ReaderAt)
	if !ok {
		return errors.New("archive: spool body without io.ReaderAt")
	}
	_, err = l.container(ra, body.Size(), name, path, childLevel, childNest)
	return err
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// prefixReader reads the start of a member on demand, up to max bytes, so
// that Sniff can look at it as an io.ReaderAt; rest then reads the member
// from its start.
type prefixReader struct {
	src io.Reader
	max int
	buf []byte
	eof bool  // src ended within buf
	err error // src failed
}

func (p *prefixReader) fill(n int) {
	n = min(n, p.max)
	for len(p.buf) < n && !p.eof && p.err == nil {
		if cap(p.buf) < n {
			p.buf = append(make([]byte, 0, max(n, 2*cap(p.buf))), p.buf...)
		}
		k, err := p.src.Read(p.buf[len(p.buf):n])
		p.buf = p.buf[:len(p.buf)+k]
		switch {
		case err == io.EOF:
			p.eof = true
		case err != nil:
			p.err = err
		}
	}
}

func (p *prefixReader) ReadAt(b []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("archive: negative offset")
	}
	if end := off + int64(len(b)); end > int64(len(p.buf)) && end <= int64(p.max) {
		p.fill(int(end))
	}
	if off >= int64(len(p.buf)) {
		return 0, io.EOF
	}
	n := copy(b, p.buf[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// rest reads the whole member: what was read already, then the rest.
func (p *prefixReader) rest() io.Reader {
	return io.MultiReader(bytes.NewReader(p.buf), p.src)
}

// errWriter records the error of its writer, so that a copy's write errors
// can be told from its read errors.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// decoderBudget is what the stream decoders of one List call may allocate
// together (maxWindow): an xz decoder allocates the dictionary its stream
// declares however little the stream holds, so a chain of nested xz -9
// streams, a few KB each, would otherwise cost 64 MiB a level.
type decoderBudget struct {
	mu   sync.Mutex
	left int64
}

type decoderBudgetKey struct{}

// chargeDecoder takes n bytes from the decoder budget of the List call ctx
// belongs to; a decoder beyond it is an unsupported variant (unreadable).
func chargeDecoder(ctx context.Context, n int64) error {
	b, _ := ctx.Value(decoderBudgetKey{}).(*decoderBudget)
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.left {
		return fmt.Errorf("%w: a decoder of %s beyond the %s the streams of one attachment may hold together", ErrUnsupported, humanSize(n), humanSize(maxWindow))
	}
	b.left -= n
	return nil
}
