package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/nwaples/rardecode/v2"
)

// RAR archives (v1.5-4.x and v5), read by github.com/nwaples/rardecode/v2 as
// a stream: a member's Open is valid while fn runs for it (as for tar), and
// reading it decodes it; in a solid archive, listing decodes the members
// before it, within the sizes they declare. Of a multi-volume set only the
// volume given is read: it names the members it holds, and a member
// continued in a missing volume fails to read as ErrUnsupported.

func init() {
	Register(&Format{Name: "rar", Sniff: sniffRar, Walk: walkRar})
}

const (
	// rarMaxDict caps the dictionary a member may make the decoder
	// allocate, at once and before it decodes a byte: RAR's default, 32
	// MiB for v5 (v4's largest is 4 MiB). The decoder clamps it to the
	// declared size of a non-solid member; a member declaring more is
	// refused, and its archive unreadable.
	rarMaxDict = 32 << 20
	// rarSFXSearch is how far into a self-extractor the signature is
	// looked for, as unrar and the library do.
	rarSFXSearch = 1 << 20
)

// rarMagic is the start of both signatures: "Rar!\x1a\x07\x00" (v1.5-4.x)
// and "Rar!\x1a\x07\x01\x00" (v5).
var rarMagic = []byte("Rar!\x1a\x07")

// sfxBufs recycles the search buffer: every executable is searched.
var sfxBufs = sync.Pool{New: func() any { return new([64 << 10]byte) }}

func sniffRar(head []byte, r io.ReaderAt, size int64, _ string) bool {
	if bytes.HasPrefix(head, rarMagic) {
		return true
	}
	// A self-extracting archive is an executable with the archive
	// appended: only those are searched further.
	if !bytes.HasPrefix(head, []byte("MZ")) {
		return false
	}
	bp := sfxBufs.Get().(*[64 << 10]byte)
	defer sfxBufs.Put(bp)
	buf := bp[:]
	for off := int64(0); off < min(size, rarSFXSearch); off += int64(len(buf) - len(rarMagic)) {
		n, _ := r.ReadAt(buf, off)
		if bytes.Contains(buf[:n], rarMagic) {
			return true
		}
		if n < len(buf) {
			return false
		}
	}
	return false
}

func rarError(err error) error {
	switch {
	case errors.Is(err, rardecode.ErrArchiveEncrypted):
		return fmt.Errorf("%w: rar headers", ErrEncrypted)
	case errors.Is(err, rardecode.ErrMultiVolume):
		return fmt.Errorf("%w: rar: continued in the next volume", ErrUnsupported)
	case errors.Is(err, rardecode.ErrUnknownVersion), errors.Is(err, rardecode.ErrDictionaryTooLarge),
		errors.Is(err, rardecode.ErrUnknownDecoder), errors.Is(err, rardecode.ErrPlatformIntSize):
		return fmt.Errorf("%w: rar: %v", ErrUnsupported, err)
	}
	return fmt.Errorf("%w: rar: %v", ErrCorrupt, err)
}

func walkRar(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	var head [8]byte
	n, _ := r.ReadAt(head[:], 0)
	if !sniffRar(head[:n], r, size, "") {
		return ErrNotFormat
	}
	rr, err := openRar(r, size)
	if err != nil {
		return err
	}
	cur := &rarReader{rr: rr}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := nextRar(rr)
		switch {
		case err == io.EOF, errors.Is(err, rardecode.ErrMultiVolume), err != nil && cur.volumeEnd:
			// The end of the archive, or of this volume (the reader
			// cannot go on after a member continued beyond it).
			return nil
		case err != nil:
			return rarError(err)
		}
		m := &Member{Name: h.Name, Size: h.UnPackedSize, CompressedSize: h.PackedSize,
			Encrypted: h.Encrypted || h.HeaderEncrypted, Dir: h.IsDir}
		if h.UnKnownSize {
			m.Size = -1
		}
		if !m.Encrypted && !m.Dir {
			m.Open = func() (io.ReadCloser, error) {
				return &guardedReader{rc: io.NopCloser(cur), what: "rar member " + h.Name}, nil
			}
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}

// openRar and nextRar turn the library's panics on hostile input into
// corrupt-archive errors.
func openRar(r io.ReaderAt, size int64) (rr *rardecode.Reader, err error) {
	defer func() {
		if p := recover(); p != nil {
			rr, err = nil, fmt.Errorf("%w: rar: %v", ErrCorrupt, p)
		}
	}()
	rr, err = rardecode.NewReader(io.NewSectionReader(r, 0, size), rardecode.MaxDictionarySize(rarMaxDict))
	if err != nil {
		return nil, rarError(err)
	}
	return rr, nil
}

func nextRar(rr *rardecode.Reader) (h *rardecode.FileHeader, err error) {
	defer func() {
		if p := recover(); p != nil {
			h, err = nil, fmt.Errorf("%w: rar: %v", ErrCorrupt, p)
		}
	}()
	return rr.Next()
}

// rarReader reads the current member, its errors mapped to ours. It notes
// when a member is continued in the next volume: this volume ends there.
type rarReader struct {
	rr        *rardecode.Reader
	volumeEnd bool
}

func (r *rarReader) Read(p []byte) (int, error) {
	n, err := r.rr.Read(p)
	if err != nil && err != io.EOF {
		r.volumeEnd = r.volumeEnd || errors.Is(err, rardecode.ErrMultiVolume)
		err = rarError(err)
	}
	return n, err
}
