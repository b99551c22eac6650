package strip

import (
	"bufio"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding/charmap"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// Defaults of ArchiveLimits.
const (
	DefaultArchiveDepth      = 3
	DefaultArchiveMaxEntries = 10000
	DefaultArchiveMaxSize    = 512 << 20
	DefaultArchiveMaxRatio   = 250
	// ratioFloor is the uncompressed size above which an entry's compression
	// ratio is checked: small files may compress as well as they like.
	ratioFloor = 1 << 20
)

// ArchiveLimits caps listZip. A zero or negative field means its default.
type ArchiveLimits struct {
	// MaxDepth is how many levels of archives are listed: 1 is the archive
	// itself only, 3 (the default) also zips inside it and zips inside those.
	MaxDepth int
	// MaxEntries caps the entries of all listed archives together.
	MaxEntries int
	// MaxSize caps the uncompressed bytes of all listed archives together:
	// both the sizes their directories declare and the bytes actually
	// inflated to look into nested archives.
	MaxSize int64
	// MaxRatio caps the compression ratio (uncompressed / compressed) of an
	// entry larger than 1 MiB.
	MaxRatio int
}

func (l ArchiveLimits) withDefaults() ArchiveLimits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultArchiveDepth
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultArchiveMaxEntries
	}
	if l.MaxSize <= 0 {
		l.MaxSize = DefaultArchiveMaxSize
	}
	if l.MaxRatio <= 0 {
		l.MaxRatio = DefaultArchiveMaxRatio
	}
	return l
}

// archiveEntry is one member of a zip archive (or of a zip inside it).
type archiveEntry struct {
	// Name is the member's name as stored, decoded to UTF-8 (the Info-ZIP
	// Unicode path when present, else UTF-8 or code page 437).
	Name string
	// Path is Name prefixed with the names of the nested archives it is in,
	// joined by "/": "inner.zip/evil.exe".
	Path string
	// Depth is 0 for members of the archive itself, 1 for members of a zip
	// inside it, and so on.
	Depth                int
	Size, CompressedSize uint64 // as declared by the central directory
	Method               uint16
	Encrypted            bool
	Dir                  bool
}

// zipListing is what listZip found.
type zipListing struct {
	Entries []archiveEntry
	// Encrypted is set when any listed member is encrypted (or the central
	// directory itself is).
	Encrypted bool
	// Unreadable lists the paths of nested archives that looked like zips
	// but could not be read; Skipped those beyond MaxDepth or stored with a
	// compression method listZip does not inflate.
	Unreadable, Skipped []string
}

// errNotZip means the input has no zip end of central directory record.
var errNotZip = errors.New("not a zip archive")

// errCorruptZip is wrapped by the errors about malformed archives.
var errCorruptZip = errors.New("corrupt zip archive")

// archiveLimitError is returned when an archive exceeds ArchiveLimits. A zip
// bomb is one whose Limit is "size" or "ratio".
type archiveLimitError struct {
	Limit string // "entries", "size" or "ratio"
	Max   int64
	Path  string // the member (or nested archive) where the cap was hit
	Value uint64 // the offending value (entries, bytes, ratio)
}

// Bomb reports whether the error is about a zip bomb (size or ratio).
func (e *archiveLimitError) Bomb() bool { return e.Limit == "size" || e.Limit == "ratio" }

func (e *archiveLimitError) Error() string {
	switch e.Limit {
	case "entries":
		return fmt.Sprintf("archive has more than %d entries", e.Max)
	case "size":
		return fmt.Sprintf("zip bomb: more than %s uncompressed (at %s)", humanSize(uint64(e.Max)), e.Path)
	case "ratio":
		return fmt.Sprintf("zip bomb: %s compressed %d:1, over the %d:1 limit", e.Path, e.Value, e.Max)
	}
	return fmt.Sprintf("archive %s limit %d exceeded at %s", e.Limit, e.Max, e.Path)
}

// listZip lists the members of the zip archive of size bytes in r, and of the
// zip archives inside it down to lim.MaxDepth. It reads the central
// directory, never trusting its counts: it stops at lim.MaxEntries, checks
// declared sizes and ratios before it inflates anything, and inflates a
// nested archive only within what is left of lim.MaxSize, into a body of
// spool. It returns errNotZip for input that is not a zip,
// an error wrapping errCorruptZip for a malformed one, and an
// *archiveLimitError (with what was listed so far) when a cap is exceeded.
func listZip(ctx context.Context, r io.ReaderAt, size int64, lim ArchiveLimits, spool *filters.Spool) (*zipListing, error) {
	zl := &zipLister{ctx: ctx, lim: lim.withDefaults(), spool: spool, arch: &zipListing{}}
	err := zl.list(r, size, 0, "")
	return zl.arch, err
}

type zipLister struct {
	ctx      context.Context
	lim      ArchiveLimits
	spool    *filters.Spool
	arch     *zipListing
	entries  int
	declared uint64
	inflated uint64
}

const (
	sigEOCD      = 0x06054b50
	sigEOCD64    = 0x06064b50
	sigLocator64 = 0x07064b50
	sigCentral   = 0x02014b50
	sigLocal     = 0x04034b50
	eocdLen      = 22
	centralLen   = 46
	localLen     = 30
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errCorruptZip, fmt.Sprintf(format, args...))
}

type dirEnd struct {
	entries         uint64
	cdSize, cdStart uint64
	offset          int64 // of the EOCD record
}

func (zl *zipLister) findEnd(r io.ReaderAt, size int64) (dirEnd, error) {
	var d dirEnd
	if size < eocdLen {
		return d, errNotZip
	}
	n := min(size, 65535+eocdLen)
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, size-n); err != nil && err != io.EOF {
		return d, err
	}
	i := -1
	for k := len(buf) - eocdLen; k >= 0; k-- {
		if binary.LittleEndian.Uint32(buf[k:]) == sigEOCD {
			if clen := int(binary.LittleEndian.Uint16(buf[k+20:])); k+eocdLen+clen <= len(buf) {
				i = k
				break
			}
		}
	}
	if i < 0 {
		return d, errNotZip
	}
	b := buf[i:]
	d.offset = size - n + int64(i)
	d.entries = uint64(binary.LittleEndian.Uint16(b[10:]))
	d.cdSize = uint64(binary.LittleEndian.Uint32(b[12:]))
	d.cdStart = uint64(binary.LittleEndian.Uint32(b[16:]))
	if d.entries == 0xffff || d.cdSize == 0xffffffff || d.cdStart == 0xffffffff {
		if e64, ok := zl.findEnd64(r, d.offset); ok {
			d.entries, d.cdSize, d.cdStart = e64.entries, e64.cdSize, e64.cdStart
		}
	}
	return d, nil
}

func (zl *zipLister) findEnd64(r io.ReaderAt, eocd int64) (dirEnd, bool) {
	var d dirEnd
	if eocd < 20 {
		return d, false
	}
	var loc [20]byte
	if _, err := r.ReadAt(loc[:], eocd-20); err != nil || binary.LittleEndian.Uint32(loc[:]) != sigLocator64 {
		return d, false
	}
	var rec [56]byte
	for _, off := range []int64{int64(binary.LittleEndian.Uint64(loc[8:])), eocd - 20 - 56} {
		if off < 0 || off > eocd-20-56 {
			continue
		}
		if _, err := r.ReadAt(rec[:], off); err != nil || binary.LittleEndian.Uint32(rec[:]) != sigEOCD64 {
			continue
		}
		d.entries = binary.LittleEndian.Uint64(rec[32:])
		d.cdSize = binary.LittleEndian.Uint64(rec[40:])
		d.cdStart = binary.LittleEndian.Uint64(rec[48:])
		d.offset = off
		return d, true
	}
	return d, false
}

type central struct {
	entry       archiveEntry
	flags       uint16
	localOffset uint64
}

// list lists one archive at nesting depth depth, whose members get the path
// prefix prefix.
func (zl *zipLister) list(r io.ReaderAt, size int64, depth int, prefix string) error {
	d, err := zl.findEnd(r, size)
	if err != nil {
		return err
	}
	// Where does the central directory really start? As declared, or (data
	// prepended to the archive: self-extractors, junk) right before the end
	// record.
	end := d.offset
	start := int64(-1)
	base := int64(0)
	if d.cdStart < uint64(end) && zl.sigAt(r, int64(d.cdStart), sigCentral) {
		start = int64(d.cdStart)
	} else if d.cdSize <= uint64(end) {
		if s := end - int64(d.cdSize); zl.sigAt(r, s, sigCentral) {
			start = s
			base = s - int64(d.cdStart)
		}
	}
	if start < 0 {
		if d.entries == 0 {
			return nil
		}
		return corrupt("central directory not found")
	}
	br := bufio.NewReaderSize(io.NewSectionReader(r, start, end-start), 16<<10)
	var members []central
	var hdr [centralLen]byte
	for {
		if err := zl.ctx.Err(); err != nil {
			return err
		}
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			break
		}
		if binary.LittleEndian.Uint32(hdr[:]) != sigCentral {
			break
		}
		zl.entries++
		if zl.entries > zl.lim.MaxEntries {
			return &archiveLimitError{Limit: "entries", Max: int64(zl.lim.MaxEntries), Path: strings.TrimSuffix(prefix, "/"), Value: uint64(zl.entries)}
		}
		flags := binary.LittleEndian.Uint16(hdr[8:])
		c := central{flags: flags}
		e := &c.entry
		e.Method = binary.LittleEndian.Uint16(hdr[10:])
		e.CompressedSize = uint64(binary.LittleEndian.Uint32(hdr[20:]))
		e.Size = uint64(binary.LittleEndian.Uint32(hdr[24:]))
		nameLen := int(binary.LittleEndian.Uint16(hdr[28:]))
		extraLen := int(binary.LittleEndian.Uint16(hdr[30:]))
		commentLen := int(binary.LittleEndian.Uint16(hdr[32:]))
		c.localOffset = uint64(binary.LittleEndian.Uint32(hdr[42:]))
		vb := make([]byte, nameLen+extraLen)
		if _, err := io.ReadFull(br, vb); err != nil {
			return corrupt("truncated central directory")
		}
		if _, err := br.Discard(commentLen); err != nil {
			return corrupt("truncated central directory")
		}
		rawName, extra := vb[:nameLen], vb[nameLen:]
		unicodeName := zl.parseExtra(extra, e, &c.localOffset)
		switch {
		case unicodeName != "":
			e.Name = unicodeName
		case flags&0x800 != 0 || utf8.Valid(rawName):
			e.Name = string(rawName)
		default:
			dec, err := charmap.CodePage437.NewDecoder().Bytes(rawName)
			if err != nil {
				dec = rawName
			}
			e.Name = string(dec)
		}
		e.Path = prefix + e.Name
		e.Depth = depth
		e.Encrypted = flags&0x1 != 0 || flags&0x2000 != 0
		e.Dir = strings.HasSuffix(e.Name, "/") || strings.HasSuffix(e.Name, "\\")
		if e.Encrypted {
			zl.arch.Encrypted = true
		}
		zl.declared += e.Size
		if zl.declared > uint64(zl.lim.MaxSize) {
			zl.arch.Entries = append(zl.arch.Entries, *e)
			return &archiveLimitError{Limit: "size", Max: zl.lim.MaxSize, Path: e.Path, Value: zl.declared}
		}
		if e.Size > ratioFloor && e.Size/max(e.CompressedSize, 1) > uint64(zl.lim.MaxRatio) {
			zl.arch.Entries = append(zl.arch.Entries, *e)
			return &archiveLimitError{Limit: "ratio", Max: int64(zl.lim.MaxRatio), Path: e.Path, Value: e.Size / max(e.CompressedSize, 1)}
		}
		zl.arch.Entries = append(zl.arch.Entries, *e)
		members = append(members, c)
	}
	if len(members) == 0 && d.entries > 0 {
		return corrupt("no central directory entries")
	}
	// Look into members that are zips themselves.
	for i := range members {
		c := &members[i]
		e := &c.entry
		if e.Dir || e.Encrypted || e.Size < eocdLen {
			continue
		}
		if err := zl.nested(r, size, base, c, depth, prefix); err != nil {
			return err
		}
	}
	return nil
}

// parseExtra reads the zip64 and Info-ZIP Unicode path extra fields; it
// returns the Unicode path, if any.
func (zl *zipLister) parseExtra(extra []byte, e *archiveEntry, localOffset *uint64) string {
	name := ""
	for len(extra) >= 4 {
		id := binary.LittleEndian.Uint16(extra)
		n := int(binary.LittleEndian.Uint16(extra[2:]))
		extra = extra[4:]
		if n > len(extra) {
			break
		}
		f := extra[:n]
		extra = extra[n:]
		switch id {
		case 0x0001: // zip64
			if e.Size == 0xffffffff && len(f) >= 8 {
				e.Size = binary.LittleEndian.Uint64(f)
				f = f[8:]
			}
			if e.CompressedSize == 0xffffffff && len(f) >= 8 {
				e.CompressedSize = binary.LittleEndian.Uint64(f)
				f = f[8:]
			}
			if *localOffset == 0xffffffff && len(f) >= 8 {
				*localOffset = binary.LittleEndian.Uint64(f)
			}
		case 0x7075: // Info-ZIP Unicode path
			if len(f) > 5 && f[0] == 1 && utf8.Valid(f[5:]) {
				name = string(f[5:])
			}
		}
	}
	return name
}

func (zl *zipLister) sigAt(r io.ReaderAt, off int64, sig uint32) bool {
	var b [4]byte
	if off < 0 {
		return false
	}
	if _, err := r.ReadAt(b[:], off); err != nil {
		return false
	}
	return binary.LittleEndian.Uint32(b[:]) == sig
}

// memberReader returns the stored bytes of a member, and a reader of its
// content (nil for compression methods it cannot inflate).
func (zl *zipLister) memberReader(r io.ReaderAt, size, base int64, c *central) (io.Reader, error) {
	off := base + int64(c.localOffset)
	if c.localOffset > uint64(size) || off < 0 || off+localLen > size {
		return nil, corrupt("member %s: bad local header offset", c.entry.Name)
	}
	var lh [localLen]byte
	if _, err := r.ReadAt(lh[:], off); err != nil {
		return nil, corrupt("member %s: %v", c.entry.Name, err)
	}
	if binary.LittleEndian.Uint32(lh[:]) != sigLocal {
		return nil, corrupt("member %s: bad local header", c.entry.Name)
	}
	data := off + localLen + int64(binary.LittleEndian.Uint16(lh[26:])) + int64(binary.LittleEndian.Uint16(lh[28:]))
	if c.entry.CompressedSize > uint64(size) || data+int64(c.entry.CompressedSize) > size {
		return nil, corrupt("member %s: data beyond the end", c.entry.Name)
	}
	sr := io.NewSectionReader(r, data, int64(c.entry.CompressedSize))
	switch c.entry.Method {
	case 0:
		return sr, nil
	case 8:
		return flate.NewReader(sr), nil
	}
	return nil, nil
}

var zipMagics = []string{"PK\x03\x04", "PK\x05\x06", "PK\x07\x08"}

// nested lists member c when it is a zip archive itself.
func (zl *zipLister) nested(r io.ReaderAt, size, base int64, c *central, depth int, prefix string) error {
	e := &c.entry
	mr, err := zl.memberReader(r, size, base, c)
	if err != nil {
		if looksLikeArchiveName(e.Name) {
			zl.arch.Unreadable = append(zl.arch.Unreadable, e.Path)
		}
		return nil
	}
	if mr == nil {
		if looksLikeArchiveName(e.Name) {
			zl.arch.Skipped = append(zl.arch.Skipped, e.Path)
		}
		return nil
	}
	if rc, ok := mr.(io.Closer); ok {
		defer rc.Close()
	}
	var head [4]byte
	n, _ := io.ReadFull(mr, head[:])
	isZip := false
	for _, m := range zipMagics {
		if n == 4 && string(head[:]) == m {
			isZip = true
		}
	}
	if !isZip {
		return nil
	}
	if depth+1 >= zl.lim.MaxDepth {
		zl.arch.Skipped = append(zl.arch.Skipped, e.Path)
		return nil
	}
	// Inflate it into a spooled body, within what is left of MaxSize and
	// within MaxRatio of its compressed size (its declared size may lie).
	left := uint64(zl.lim.MaxSize) - min(uint64(zl.lim.MaxSize), zl.inflated)
	ratioCap := max(uint64(ratioFloor), uint64(zl.lim.MaxRatio)*max(e.CompressedSize, 1))
	w := zl.spool.NewWriter()
	defer w.Abort()
	if _, err := w.Write(head[:n]); err != nil {
		return err
	}
	ew := &errWriter{w: w}
	limit := min(left, ratioCap)
	got, err := io.Copy(ew, io.LimitReader(mailtext.NewReader(zl.ctx, mr), int64(limit)-int64(n)+1))
	got += int64(n)
	zl.inflated += uint64(got)
	if ctxErr := zl.ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if ew.err != nil {
		return ew.err // the spool failed: ours, not the archive's
	}
	if err != nil {
		if !isDecodeError(err) {
			return err
		}
		zl.arch.Unreadable = append(zl.arch.Unreadable, e.Path)
		return nil
	}
	switch {
	case uint64(got) > ratioCap:
		return &archiveLimitError{Limit: "ratio", Max: int64(zl.lim.MaxRatio), Path: e.Path, Value: uint64(got) / max(e.CompressedSize, 1)}
	case zl.inflated > uint64(zl.lim.MaxSize):
		return &archiveLimitError{Limit: "size", Max: zl.lim.MaxSize, Path: e.Path, Value: zl.inflated}
	}
	body, err := w.Finish()
	if err != nil {
		return err
	}
	defer body.Remove()
	rc, err := body.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	ra, ok := rc.(io.ReaderAt)
	if !ok {
		return errors.New("strip: spool body without ReaderAt")
	}
	err = zl.list(ra, body.Size(), depth+1, e.Path+"/")
	switch {
	case err == nil:
	case errors.Is(err, errNotZip), errors.Is(err, errCorruptZip):
		zl.arch.Unreadable = append(zl.arch.Unreadable, e.Path)
	default:
		return err
	}
	return nil
}

// isDecodeError tells inflate errors (a broken member) from others.
func isDecodeError(err error) bool {
	var ce flate.CorruptInputError
	var ie flate.InternalError
	return errors.As(err, &ce) || errors.As(err, &ie) || errors.Is(err, io.ErrUnexpectedEOF)
}

var archiveExts = []string{"zip", "jar", "docx", "docm", "xlsx", "xlsm", "pptx", "pptm", "odt", "ods", "odp", "epub", "apk", "zipx"}

func looksLikeArchiveName(name string) bool {
	n, _ := normalizeName(name)
	ext := extensionOf(n)
	for _, a := range archiveExts {
		if ext == a {
			return true
		}
	}
	return false
}

func humanSize(n uint64) string {
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
