// Package archive lists what is inside the containers an attachment can be
// — zip, tar, compressed streams, 7z, rar, cab, disk images, cpio, TNEF
// (winmail.dat), files embedded in text (uuencode, BinHex) — and inside the
// containers in those, across kinds, to one depth and within one set of
// limits. It never writes a member anywhere but the spool, never trusts a
// declared count or size, and reports a container it cannot read as
// unreadable rather than as empty.
//
// Each kind is a Format registered by its own file; List identifies the
// format of what it is given, walks its members, and recurses into members
// that are containers themselves.
package archive

import (
	"context"
	"errors"
	"io"
)

// HeadLen is how many leading bytes of a candidate Sniff is shown (fewer
// when the content is shorter).
const HeadLen = 4096

// Member is one entry of a container as its Format reports it.
type Member struct {
	// Name is the member's name as stored, decoded to UTF-8.
	Name string
	// Size and CompressedSize are as declared by the container; -1 when it
	// declares none (a stream). List checks declared sizes before it reads
	// a byte and counts the bytes actually read as well.
	Size, CompressedSize int64
	// Encrypted is set for a member whose content (or name) needs a key.
	Encrypted bool
	Dir       bool
	// Open returns the member's content, or is nil when the format can
	// name the member but not extract it (a compression method it does not
	// implement): List then records the member as skipped for nesting.
	Open func() (io.ReadCloser, error)
}

// Format is one kind of container.
type Format struct {
	// Name is the kind ("zip", "tar", "gzip", "7z", "iso9660", …), as it
	// appears in listings, logs and explanations.
	Name string
	// Sniff reports whether content starting with head (of total size
	// bytes, named name when the container has a name: "" otherwise) may
	// be of this format. It is cheap and may say yes to what Walk then
	// refuses with ErrNotFormat; it must not say no to a container of its
	// format whose name and head are innocent (a zip named invoice.pdf).
	// When it needs more than head (a disk image's descriptors, a zip's
	// end record) it may read r.
	Sniff func(head []byte, r io.ReaderAt, size int64, name string) bool
	// Walk calls fn for each member, in container order, until fn returns
	// an error (which Walk returns as it is). It returns ErrNotFormat when
	// the content is not of this format after all, an error wrapping
	// ErrCorrupt for malformed content, ErrUnsupported for a variant it
	// cannot read and ErrEncrypted when the member list itself is
	// encrypted. name is the container's own name ("" when unknown): a
	// compressed stream names its one member after it ("a.tar.gz" →
	// "a.tar").
	Walk func(ctx context.Context, r io.ReaderAt, size int64, name string, fn func(*Member) error) error
	// Transparent formats (a compressed stream around one member) do not
	// count a level of depth: a .tar.gz is one level, as a .tar is.
	Transparent bool
	// Attachments formats (TNEF, uuencode, BinHex) hold what a mail client
	// shows as attachments: the strip filter applies its name and type
	// rules to their first-level members as it does to MIME parts.
	Attachments bool
}

var formats []*Format

// Register adds a format. Formats are tried in registration order; it is
// called from init functions only.
func Register(f *Format) { formats = append(formats, f) }

// Formats returns the registered formats in order.
func Formats() []*Format { return formats }

// Errors a Format's Walk returns (wrapped, with detail).
var (
	ErrNotFormat   = errors.New("not of this format")
	ErrCorrupt     = errors.New("corrupt container")
	ErrUnsupported = errors.New("unsupported container variant")
	ErrEncrypted   = errors.New("encrypted container")
)
