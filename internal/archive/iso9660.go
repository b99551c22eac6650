package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// ISO 9660 (ECMA-119) disk images, .iso and .img: volume descriptors from
// sector 16 on, each naming the root directory; a directory is a list of
// records (name, extent, size, flags) packed into 2048-byte sectors. Names
// come from the Joliet tree (UCS-2) when the image has one, else from the
// primary tree, with Rock Ridge's NM entries where present (the long names
// a Unix tool wrote).
//
// A hostile image can make directories point at themselves or an ancestor,
// or many directories share the same sectors: a directory extent is read
// once only (a second visit is a loop: corrupt), the directory bytes read
// in all cannot exceed the image's size, the depth is bounded, and no
// extent may reach beyond the image.

const (
	isoSector         = 2048
	isoFirstVD        = 16 // the volume descriptors start here
	isoMaxDescriptors = 64
	isoMaxDepth       = 64
	isoRecordMin      = 33

	isoFlagDir        = 0x02
	isoFlagAssociated = 0x04 // a Mac resource fork or similar: not a file of its own
	isoFlagMulti      = 0x80 // the file continues in the next record
)

func init() {
	Register(&Format{
		Name: "iso9660",
		Sniff: func(_ []byte, r io.ReaderAt, size int64, _ string) bool {
			// The head of an image is its system area, zeros: the
			// descriptors are further in.
			var id [5]byte
			return size >= (isoFirstVD+1)*isoSector && readFull(r, id[:], isoFirstVD*isoSector+1) == nil && string(id[:]) == "CD001"
		},
		Walk: walkISO,
	})
}

func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

func isoCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: iso9660: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// isoDir is a directory waiting to be read.
type isoDir struct {
	extent, size uint32
	path         string
	depth        int
}

func walkISO(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	root, joliet, err := isoRoot(r, size)
	if err != nil {
		return err
	}
	w := &isoWalker{ctx: ctx, r: r, size: size, joliet: joliet, fn: fn, budget: size, seen: map[uint32]bool{}}
	queue := []isoDir{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		subs, err := w.dir(d)
		if err != nil {
			return err
		}
		queue = append(queue, subs...)
	}
	return nil
}

// isoRoot reads the volume descriptors: the root of the Joliet tree when
// there is one, else of the primary tree.
func isoRoot(r io.ReaderAt, size int64) (isoDir, bool, error) {
	var vd [isoSector]byte
	var primary, joliet []byte
	found := false
	for i := int64(0); i < isoMaxDescriptors; i++ {
		off := (isoFirstVD + i) * isoSector
		if off+isoSector > size {
			break
		}
		if err := readFull(r, vd[:], off); err != nil {
			return isoDir{}, false, fmt.Errorf("iso9660: %w", err)
		}
		if string(vd[1:6]) != "CD001" {
			break
		}
		found = true
		switch vd[0] {
		case 1:
			if primary == nil {
				primary = bytes.Clone(vd[156 : 156+34])
			}
		case 2:
			// A supplementary descriptor with a UCS-2 escape sequence is
			// Joliet's.
			if esc := vd[88:91]; joliet == nil && esc[0] == '%' && esc[1] == '/' && (esc[2] == '@' || esc[2] == 'C' || esc[2] == 'E') {
				joliet = bytes.Clone(vd[156 : 156+34])
			}
		}
		if vd[0] == 255 {
			break
		}
	}
	rec := primary
	if joliet != nil {
		rec = joliet
	}
	switch {
	case !found:
		return isoDir{}, false, ErrNotFormat
	case rec == nil:
		return isoDir{}, false, isoCorrupt("no primary volume descriptor")
	}
	return isoDir{extent: binary.LittleEndian.Uint32(rec[2:]), size: binary.LittleEndian.Uint32(rec[10:])}, joliet != nil, nil
}

type isoWalker struct {
	ctx    context.Context
	r      io.ReaderAt
	size   int64
	joliet bool
	fn     func(*Member) error
	budget int64 // directory bytes that may still be read
	seen   map[uint32]bool
	buf    [isoSector]byte
	// pending is a multi-extent file whose last record is still to come.
	pending *isoFile
}

// isoFile is a file as its records describe it (more than one extent for
// a file of 4 GiB or more).
type isoFile struct {
	name    string
	extents [][2]int64 // offset, length
	size    int64
}

// extent checks that n bytes at sector lba lie within the image.
func (w *isoWalker) extent(lba, n uint32) (int64, error) {
	off := int64(lba) * isoSector
	if off+int64(n) > w.size {
		return 0, isoCorrupt("extent at sector %d of %d bytes beyond the image's %d bytes", lba, n, w.size)
	}
	return off, nil
}

// dir reads one directory, reports its files and returns its
// subdirectories.
func (w *isoWalker) dir(d isoDir) ([]isoDir, error) {
	if err := w.ctx.Err(); err != nil {
		return nil, err
	}
	if w.seen[d.extent] {
		return nil, isoCorrupt("directory %q loops back to sector %d", d.path, d.extent)
	}
	w.seen[d.extent] = true
	if d.depth > isoMaxDepth {
		return nil, isoCorrupt("directories nested deeper than %d at %q", isoMaxDepth, d.path)
	}
	if w.budget -= int64(d.size); w.budget < 0 {
		return nil, isoCorrupt("directories overlap: more directory bytes than the image holds")
	}
	base, err := w.extent(d.extent, d.size)
	if err != nil {
		return nil, err
	}
	var subs []isoDir
	for s := int64(0); s < int64(d.size); s += isoSector {
		sec := w.buf[:min(isoSector, int64(d.size)-s)]
		if err := readFull(w.r, sec, base+s); err != nil {
			return nil, fmt.Errorf("iso9660: %w", err)
		}
		for i := 0; i < len(sec) && sec[i] != 0; {
			n := int(sec[i])
			if n < isoRecordMin || i+n > len(sec) || isoRecordMin+int(sec[i+32]) > n {
				return nil, isoCorrupt("directory record at %d of %q", base+s+int64(i), d.path)
			}
			sub, err := w.record(sec[i:i+n], d)
			if err != nil {
				return nil, err
			}
			if sub != nil {
				subs = append(subs, *sub)
			}
			i += n
		}
	}
	if w.pending != nil {
		return nil, isoCorrupt("multi-extent file %q without its last record", w.pending.name)
	}
	return subs, nil
}

// record handles one directory record of directory d.
func (w *isoWalker) record(rec []byte, d isoDir) (*isoDir, error) {
	flags := rec[25]
	id := rec[33 : 33+int(rec[32])]
	if len(id) == 1 && id[0] <= 1 {
		return nil, nil // "." and ".."
	}
	if flags&isoFlagAssociated != 0 {
		return nil, nil
	}
	extent, n := binary.LittleEndian.Uint32(rec[2:]), binary.LittleEndian.Uint32(rec[10:])
	off, err := w.extent(extent, n)
	if err != nil {
		return nil, err
	}
	name := w.name(rec, id, flags&isoFlagDir != 0)
	full := name
	if d.path != "" {
		full = d.path + "/" + name
	}
	if flags&isoFlagDir != 0 {
		if err := w.fn(&Member{Name: full, Dir: true}); err != nil {
			return nil, err
		}
		return &isoDir{extent: extent, size: n, path: full, depth: d.depth + 1}, nil
	}
	f := w.pending
	if f == nil {
		f = &isoFile{name: full}
	}
	f.extents = append(f.extents, [2]int64{off, int64(n)})
	f.size += int64(n)
	if flags&isoFlagMulti != 0 {
		w.pending = f
		return nil, nil
	}
	w.pending = nil
	m := &Member{Name: f.name, Size: f.size, CompressedSize: f.size}
	m.Open = func() (io.ReadCloser, error) {
		rs := make([]io.Reader, len(f.extents))
		for i, e := range f.extents {
			rs[i] = io.NewSectionReader(w.r, e[0], e[1])
		}
		return io.NopCloser(io.MultiReader(rs...)), nil
	}
	return nil, w.fn(m)
}

// name decodes a record's name: Joliet's UCS-2, else Rock Ridge's NM when
// the record has one, else the ISO name without its version (";1") and,
// for a file without an extension, its trailing dot.
func (w *isoWalker) name(rec, id []byte, dir bool) string {
	var s string
	switch {
	case w.joliet:
		s = utf16Name(id, true)
	default:
		// The system use area follows the name and a pad byte after a
		// name of even length.
		if nm, ok := rockRidgeName(rec[min(isoRecordMin+len(id)+(1-len(id)%2), len(rec)):]); ok {
			return nm
		}
		s = strings.ToValidUTF8(string(id), "\uFFFD")
	}
	if !dir {
		if i := strings.LastIndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSuffix(s, ".")
	}
	return s
}

// rockRidgeName reads the NM entries of a record's system use area (SUSP
// entries: signature, length, version, data). Continuation areas (CE) are
// not followed: a name that long falls back to the ISO name.
func rockRidgeName(su []byte) (string, bool) {
	var name []byte
	found := false
	for len(su) >= 4 {
		n := int(su[2])
		if n < 4 || n > len(su) {
			break
		}
		if string(su[:2]) == "NM" && n >= 5 {
			if su[4]&0x06 == 0 { // not "." or ".."
				name = append(name, su[5:n]...)
				found = true
			}
		}
		su = su[n:]
	}
	if !found || len(name) == 0 {
		return "", false
	}
	return strings.ToValidUTF8(string(name), "\uFFFD"), true
}
