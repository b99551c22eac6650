package archive

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// UDF (ECMA-167, OSTA UDF 1.02-2.01) disk images, what Windows tools write
// to .iso and .img files, alone or as a "bridge" beside an ISO 9660 tree.
// The path to the files: the Volume Recognition Sequence (NSR02/NSR03) from
// byte 32768, the Anchor Volume Descriptor Pointer at sector 256, the main
// Volume Descriptor Sequence it points to (the partition's start, the
// logical volume's block size and File Set Descriptor), the root
// directory's File Entry, and then File Entries (or Extended File Entries)
// whose content — short or long allocation descriptors, or data embedded in
// the entry — is a list of File Identifier Descriptors (OSTA compressed
// Unicode names, each with the address of its File Entry).
//
// Only physical (type 1) partition maps are read: virtual, sparable and
// metadata partitions (UDF 2.50 and later, and rewritable media) are
// unsupported. Every descriptor's tag (identifier, checksum, CRC) is
// verified; directory entries are read once each (a second visit is a
// loop), directory bytes in all cannot exceed the image's size, the depth,
// descriptor sequences and allocation descriptor chains are bounded, and no
// extent may reach beyond the image.

const (
	udfAVDPSector   = 256
	udfMaxVDS       = 64       // descriptors read of the volume descriptor sequence
	udfMaxDepth     = 64       // directory nesting
	udfMaxExtents   = 4096     // allocation descriptors of one file
	udfMaxADChain   = 64       // allocation extent descriptors followed for one file
	udfMaxDir       = 32 << 20 // bytes of one directory (read whole: ~500,000 entries)
	udfTagLen       = 16
	udfVRSStart     = 32768
	udfVRSMaxStruct = 32

	udfTagAVDP  = 2
	udfTagPD    = 5
	udfTagLVD   = 6
	udfTagTD    = 8
	udfTagFSD   = 256
	udfTagFID   = 257
	udfTagAED   = 258
	udfTagFE    = 261
	udfTagEFE   = 266
	udfFileDir  = 4
	udfFIDDir   = 0x02
	udfFIDDel   = 0x04
	udfFIDParnt = 0x08
)

func init() {
	Register(&Format{
		Name: "udf",
		Sniff: func(_ []byte, r io.ReaderAt, size int64, _ string) bool {
			return udfHasNSR(r, size)
		},
		Walk: walkUDF,
	})
}

func udfCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: udf: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// udfHasNSR looks for an NSR descriptor in the Volume Recognition Sequence:
// 2048-byte structures from byte 32768 on, up to the terminating one.
func udfHasNSR(r io.ReaderAt, size int64) bool {
	var id [6]byte
	for i := int64(0); i < udfVRSMaxStruct; i++ {
		off := udfVRSStart + i*2048
		if off+2048 > size || readFull(r, id[:], off) != nil {
			return false
		}
		switch string(id[1:6]) {
		case "NSR02", "NSR03":
			return true
		case "BEA01", "CD001", "CDW02", "BOOT2":
		default:
			return false
		}
	}
	return false
}

// udfVolume is what the volume descriptors say.
type udfVolume struct {
	r         io.ReaderAt
	size      int64
	bs        int64 // the sector and logical block size
	partStart int64 // in sectors
	partLen   int64
}

// block returns the image offset of logical block lbn of the partition,
// checking that n bytes from there lie in the partition and the image.
func (v *udfVolume) block(lbn uint32, n int64) (int64, error) {
	if int64(lbn)*v.bs+n > v.partLen*v.bs {
		return 0, udfCorrupt("block %d (%d bytes) beyond the partition", lbn, n)
	}
	off := (v.partStart + int64(lbn)) * v.bs
	if off+n > v.size {
		return 0, udfCorrupt("block %d (%d bytes) beyond the image's %d bytes", lbn, n, v.size)
	}
	return off, nil
}

// descriptor reads the descriptor of n bytes at off and verifies its tag:
// identifier, checksum and (for what was read) CRC.
func (v *udfVolume) descriptor(off int64, n int, want ...uint16) ([]byte, uint16, error) {
	b := make([]byte, n)
	if err := readFull(v.r, b, off); err != nil {
		return nil, 0, udfCorrupt("descriptor at %d: %v", off, err)
	}
	var sum byte
	for i := range udfTagLen {
		if i != 4 {
			sum += b[i]
		}
	}
	id := binary.LittleEndian.Uint16(b)
	if sum != b[4] {
		return nil, 0, udfCorrupt("descriptor at %d: tag checksum", off)
	}
	if crcLen := int(binary.LittleEndian.Uint16(b[10:])); udfTagLen+crcLen <= n {
		var crc uint16
		for _, c := range b[udfTagLen : udfTagLen+crcLen] {
			crc = crc16xmodem(crc, c)
		}
		if crc != binary.LittleEndian.Uint16(b[8:]) {
			return nil, 0, udfCorrupt("descriptor at %d: CRC", off)
		}
	}
	for _, w := range want {
		if id == w {
			return b, id, nil
		}
	}
	if len(want) == 0 {
		return b, id, nil
	}
	return nil, 0, udfCorrupt("descriptor at %d is a %d, want %v", off, id, want)
}

func walkUDF(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	if !udfHasNSR(r, size) {
		return ErrNotFormat
	}
	v := &udfVolume{r: r, size: size}
	fsd, err := v.volume()
	if err != nil {
		return err
	}
	root, _, err := v.descriptor(fsd, int(v.bs), udfTagFSD)
	if err != nil {
		return err
	}
	w := &udfWalker{ctx: ctx, v: v, fn: fn, budget: size, seen: map[uint32]bool{}}
	return w.walk(binary.LittleEndian.Uint32(root[404:]))
}

// volume reads the anchor and the main volume descriptor sequence; it
// returns the offset of the File Set Descriptor.
func (v *udfVolume) volume() (int64, error) {
	var avdp []byte
	for _, bs := range []int64{2048, 512, 4096} {
		if (udfAVDPSector+1)*bs > v.size {
			continue
		}
		if b, _, err := v.descriptor(udfAVDPSector*bs, udfTagLen+16, udfTagAVDP); err == nil {
			v.bs, avdp = bs, b
			break
		}
	}
	if avdp == nil {
		return 0, udfCorrupt("no anchor volume descriptor pointer at sector %d", udfAVDPSector)
	}
	vdsLen, vdsLoc := int64(binary.LittleEndian.Uint32(avdp[16:])), int64(binary.LittleEndian.Uint32(avdp[20:]))
	var fsdLBN uint32
	var partNum uint16
	var lvd, pd bool
	for i := int64(0); i < min(vdsLen/v.bs, udfMaxVDS); i++ {
		off := (vdsLoc + i) * v.bs
		if off+v.bs > v.size {
			return 0, udfCorrupt("volume descriptor sequence beyond the image")
		}
		d, id, err := v.descriptor(off, int(v.bs))
		if err != nil {
			return 0, err
		}
		switch id {
		case udfTagPD:
			// The partition the logical volume's map names; with several
			// descriptors, the first.
			if !pd {
				partNum = binary.LittleEndian.Uint16(d[22:])
				v.partStart = int64(binary.LittleEndian.Uint32(d[188:]))
				v.partLen = int64(binary.LittleEndian.Uint32(d[192:]))
				pd = true
			}
		case udfTagLVD:
			if lvd {
				continue
			}
			lvd = true
			if bs := int64(binary.LittleEndian.Uint32(d[212:])); bs != v.bs {
				return 0, fmt.Errorf("%w: udf: logical blocks of %d bytes in %d-byte sectors", ErrUnsupported, bs, v.bs)
			}
			fsdLBN = binary.LittleEndian.Uint32(d[252:])
			if binary.LittleEndian.Uint16(d[256:]) != 0 {
				return 0, fmt.Errorf("%w: udf: file set in partition %d", ErrUnsupported, binary.LittleEndian.Uint16(d[256:]))
			}
			// The first partition map: type 1 (physical) only.
			if maps := binary.LittleEndian.Uint32(d[268:]); maps < 1 || d[440] != 1 || d[441] != 6 {
				return 0, fmt.Errorf("%w: udf: partition maps other than one physical partition", ErrUnsupported)
			}
			if pm := binary.LittleEndian.Uint16(d[444:]); pd && pm != partNum {
				return 0, fmt.Errorf("%w: udf: partition %d mapped, %d described", ErrUnsupported, pm, partNum)
			}
		case udfTagTD:
			i = udfMaxVDS
		}
	}
	if !lvd || !pd {
		return 0, udfCorrupt("no logical volume or partition descriptor")
	}
	return v.block(fsdLBN, v.bs)
}

type udfWalker struct {
	ctx    context.Context
	v      *udfVolume
	fn     func(*Member) error
	budget int64
	seen   map[uint32]bool
}

// udfEntry is a file as its File Entry describes it: its size and where its
// bytes are (extents of the image; a zero offset of -1 for unrecorded,
// zero-filled extents).
type udfEntry struct {
	dir     bool
	size    int64
	extents [][2]int64
}

// udfDirRef is a directory to read.
type udfDirRef struct {
	lbn   uint32
	path  string
	depth int
}

func (w *udfWalker) walk(rootLBN uint32) error {
	queue := []udfDirRef{{lbn: rootLBN}}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if w.seen[d.lbn] {
			return udfCorrupt("directory %q loops back to block %d", d.path, d.lbn)
		}
		w.seen[d.lbn] = true
		if d.depth > udfMaxDepth {
			return udfCorrupt("directories nested deeper than %d at %q", udfMaxDepth, d.path)
		}
		e, err := w.entry(d.lbn)
		if err != nil {
			return err
		}
		if !e.dir {
			return udfCorrupt("directory %q is not a directory", d.path)
		}
		if e.size > udfMaxDir {
			return udfCorrupt("directory %q of %d bytes", d.path, e.size)
		}
		if w.budget -= e.size; w.budget < 0 {
			return udfCorrupt("directories overlap: more directory bytes than the image holds")
		}
		data, err := io.ReadAll(w.open(e))
		if err != nil {
			return udfCorrupt("directory %q: %v", d.path, err)
		}
		subs, err := w.dir(data, d)
		if err != nil {
			return err
		}
		queue = append(queue, subs...)
	}
	return nil
}

// dir reports the entries of a directory's content and returns its
// subdirectories.
func (w *udfWalker) dir(data []byte, d udfDirRef) ([]udfDirRef, error) {
	var subs []udfDirRef
	for len(data) > 0 {
		if len(data) < 38 {
			return nil, udfCorrupt("file identifier truncated in %q", d.path)
		}
		var sum byte
		for i := range udfTagLen {
			if i != 4 {
				sum += data[i]
			}
		}
		if binary.LittleEndian.Uint16(data) != udfTagFID || sum != data[4] {
			return nil, udfCorrupt("file identifier tag in %q", d.path)
		}
		chars, lfi, liu := data[18], int(data[19]), int(binary.LittleEndian.Uint16(data[36:]))
		n := (38 + liu + lfi + 3) &^ 3
		if 38+liu+lfi > len(data) {
			return nil, udfCorrupt("file identifier beyond the directory %q", d.path)
		}
		lbn := binary.LittleEndian.Uint32(data[24:])
		if ref := binary.LittleEndian.Uint16(data[28:]); ref != 0 && chars&(udfFIDDel|udfFIDParnt) == 0 {
			return nil, fmt.Errorf("%w: udf: file in partition %d", ErrUnsupported, ref)
		}
		name := udfName(data[38+liu : 38+liu+lfi])
		data = data[min(n, len(data)):]
		if chars&(udfFIDDel|udfFIDParnt) != 0 {
			continue
		}
		full := name
		if d.path != "" {
			full = d.path + "/" + name
		}
		if chars&udfFIDDir != 0 {
			if err := w.fn(&Member{Name: full, Dir: true}); err != nil {
				return nil, err
			}
			subs = append(subs, udfDirRef{lbn: lbn, path: full, depth: d.depth + 1})
			continue
		}
		e, err := w.entry(lbn)
		if err != nil {
			return nil, err
		}
		m := &Member{Name: full, Size: e.size, CompressedSize: e.size}
		m.Open = func() (io.ReadCloser, error) { return io.NopCloser(w.open(e)), nil }
		if err := w.fn(m); err != nil {
			return nil, err
		}
	}
	return subs, nil
}

// udfName decodes an OSTA compressed Unicode name: a compression id (8:
// one byte a character, 16: UTF-16BE), then the characters.
func udfName(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	switch b[0] {
	case 8:
		r := make([]rune, len(b)-1)
		for i, c := range b[1:] {
			r[i] = rune(c)
		}
		return string(r)
	case 16:
		return utf16Name(b[1:], true)
	}
	return strings.ToValidUTF8(string(b[1:]), "\uFFFD")
}

// entry reads the (Extended) File Entry at block lbn.
func (w *udfWalker) entry(lbn uint32) (*udfEntry, error) {
	v := w.v
	off, err := v.block(lbn, v.bs)
	if err != nil {
		return nil, err
	}
	b, id, err := v.descriptor(off, int(v.bs), udfTagFE, udfTagEFE)
	if err != nil {
		return nil, err
	}
	e := &udfEntry{dir: b[27] == udfFileDir, size: int64(binary.LittleEndian.Uint64(b[56:]))}
	if e.size < 0 || e.size > v.size*udfMaxSizeRatio {
		return nil, udfCorrupt("file entry at block %d: size %d", lbn, e.size)
	}
	eaAt := 168
	if id == udfTagEFE {
		eaAt = 208
	}
	lea, lad := int64(binary.LittleEndian.Uint32(b[eaAt:])), int64(binary.LittleEndian.Uint32(b[eaAt+4:]))
	start := int64(eaAt+8) + lea
	if lea < 0 || lad < 0 || start+lad > v.bs {
		return nil, udfCorrupt("file entry at block %d: extended attributes and descriptors beyond it", lbn)
	}
	ads := b[start : start+lad]
	switch flags := binary.LittleEndian.Uint16(b[34:]) & 7; flags {
	case 3: // the content is in the entry
		if e.size > lad {
			return nil, udfCorrupt("file entry at block %d: %d embedded bytes, %d declared", lbn, lad, e.size)
		}
		e.extents = [][2]int64{{off + start, e.size}}
		return e, nil
	case 0, 1:
		return e, w.extents(e, ads, flags == 1)
	default:
		return nil, fmt.Errorf("%w: udf: allocation descriptors of type %d", ErrUnsupported, flags)
	}
}

// udfMaxSizeRatio bounds a file's declared size by the image's: unrecorded
// extents read as zeros, so a file may be larger than the image, but not
// without bound.
const udfMaxSizeRatio = 1 << 10

// extents reads short (8-byte) or long (16-byte) allocation descriptors,
// following continuations, until the file's size is covered.
func (w *udfWalker) extents(e *udfEntry, ads []byte, long bool) error {
	v := w.v
	adLen := 8
	if long {
		adLen = 16
	}
	var covered int64
	for hops := 0; ; {
		next := false
		for len(ads) >= adLen && covered < e.size {
			n := int64(binary.LittleEndian.Uint32(ads) & 0x3FFFFFFF)
			typ := binary.LittleEndian.Uint32(ads) >> 30
			lbn := binary.LittleEndian.Uint32(ads[4:])
			if long && binary.LittleEndian.Uint16(ads[8:]) != 0 {
				return fmt.Errorf("%w: udf: extent in another partition", ErrUnsupported)
			}
			ads = ads[adLen:]
			if n == 0 {
				break
			}
			if typ == 3 { // the descriptors continue in an Allocation Extent Descriptor
				if hops++; hops > udfMaxADChain {
					return udfCorrupt("allocation descriptor chain longer than %d", udfMaxADChain)
				}
				off, err := v.block(lbn, v.bs)
				if err != nil {
					return err
				}
				b, _, err := v.descriptor(off, int(v.bs), udfTagAED)
				if err != nil {
					return err
				}
				l := int64(binary.LittleEndian.Uint32(b[20:]))
				if 24+l > v.bs {
					return udfCorrupt("allocation extent descriptor at block %d", lbn)
				}
				ads, next = b[24:24+l], true
				break
			}
			if len(e.extents) >= udfMaxExtents {
				return udfCorrupt("file of more than %d extents", udfMaxExtents)
			}
			n = min(n, e.size-covered)
			off := int64(-1)
			if typ == 0 {
				var err error
				if off, err = v.block(lbn, n); err != nil {
					return err
				}
			}
			e.extents = append(e.extents, [2]int64{off, n})
			covered += n
		}
		if !next {
			break
		}
	}
	if covered < e.size {
		return udfCorrupt("file of %d bytes with %d allocated", e.size, covered)
	}
	return nil
}

// open reads an entry's content.
func (w *udfWalker) open(e *udfEntry) io.Reader {
	rs := make([]io.Reader, len(e.extents))
	for i, x := range e.extents {
		if x[0] < 0 {
			rs[i] = io.LimitReader(zeros{}, x[1])
		} else {
			rs[i] = io.NewSectionReader(w.v.r, x[0], x[1])
		}
	}
	return io.MultiReader(rs...)
}

// zeros reads as endless zero bytes (an unrecorded extent).
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
