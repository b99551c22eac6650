package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"

	"github.com/bodgit/sevenzip"
	"github.com/ulikunitz/xz/lzma"
)

// 7z archives are read by github.com/bodgit/sevenzip. The library builds its
// tables from the counts the archive header declares (make([]T, count) with
// counts up to 2^32), so before it sees an archive walk7z reads the header
// itself (format: 7-Zip's DOC/7zFormat.txt) and refuses counts that the
// header's own length cannot back, methods whose dictionary is larger than
// what they unpack, and indexes the library would follow out of range. An
// encoded (compressed) header is decoded here first, within szMaxHeader, so
// that its counts are checked too; an encrypted one is reported as
// ErrEncrypted without a key being tried.

func init() {
	Register(&Format{Name: "7z", Sniff: sniff7z, Walk: walk7z})
}

var sevenZipMagic = []byte{'7', 'z', 0xbc, 0xaf, 0x27, 0x1c}

const (
	szSignatureLen = 32
	// szMaxHeader caps a header's (decoded) length: 7-Zip needs tens of
	// bytes per member, so this is millions of members.
	szMaxHeader = 64 << 20
	// szMaxMembers caps the members of one archive, far above the
	// engine's default MaxEntries: the library allocates per declared
	// member before any is listed.
	szMaxMembers = 1 << 18
	// szMaxCoders caps coders and their streams per folder (7-Zip writes
	// at most 4 coders: BCJ2 and its three LZMA streams).
	szMaxCoders = 32
	// szMaxDict is the largest dictionary (or PPMd model) accepted for a
	// folder that unpacks to less than it: a compressor never needs a
	// dictionary larger than its data, and the library allocates it whole.
	szMaxDict = 64 << 20
)

// Property ids of the 7z header.
const (
	szEnd = iota
	szHeader
	szArchiveProperties
	szAdditionalStreamsInfo
	szMainStreamsInfo
	szFilesInfo
	szPackInfo
	szUnpackInfo
	szSubStreamsInfo
	szSize
	szCRC
	szFolderID
	szCodersUnpackSize
	szNumUnpackStream
	szEmptyStream
	szEncodedHeader = 0x17
)

// Coder ids (7-Zip's DOC/Methods.txt).
const (
	szCopy  = "\x00"
	szLZMA  = "\x03\x01\x01"
	szLZMA2 = "\x21"
	szPPMd  = "\x03\x04\x01"
	szAES   = "\x06\xf1\x07\x01"
)

// szKnownMethods are the coders github.com/bodgit/sevenzip registers: a
// folder using another one can be listed but not opened.
var szKnownMethods = map[string]bool{
	szCopy: true, "\x03": true, szLZMA: true, "\x03\x03\x01\x03": true,
	"\x03\x03\x01\x1b": true, "\x03\x03\x02\x05": true, "\x03\x03\x05\x01": true,
	"\x03\x03\x08\x05": true, "\x04\x01\x08": true, "\x04\x02\x02": true,
	"\x04\xf7\x11\x01": true, "\x04\xf7\x11\x02": true, "\x04\xf7\x11\x04": true,
	szAES: true, "\x0a": true, szLZMA2: true, szPPMd: true,
}

func sniff7z(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	return bytes.HasPrefix(head, sevenZipMagic)
}

func corrupt7z(format string, args ...any) error {
	return fmt.Errorf("%w: 7z: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

func walk7z(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	info, err := check7z(r, size)
	if err != nil || info.empty {
		return err
	}
	zr, err := open7z(r, size)
	if err != nil {
		return err
	}
	for _, f := range zr.File {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := member7z(f, info)
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// open7z runs the library's own parse, turning its errors (and, as a last
// guard, its panics) into ours.
func open7z(r io.ReaderAt, size int64) (zr *sevenzip.Reader, err error) {
	defer func() {
		if p := recover(); p != nil {
			zr, err = nil, corrupt7z("%v", p)
		}
	}()
	zr, err = sevenzip.NewReader(r, size)
	var re *sevenzip.ReadError
	switch {
	case err == nil:
		return zr, nil
	case errors.As(err, &re) && re.Encrypted:
		return nil, fmt.Errorf("%w: 7z header", ErrEncrypted)
	}
	return nil, corrupt7z("%v", err)
}

func member7z(f *sevenzip.File, info *szArchive) (*Member, error) {
	m := &Member{Name: f.Name, Dir: f.FileInfo().IsDir()}
	if f.UncompressedSize > 1<<62 {
		return nil, corrupt7z("member %q: size %d", f.Name, f.UncompressedSize)
	}
	m.Size = int64(f.UncompressedSize)
	if m.Dir {
		return m, nil
	}
	if m.Size == 0 {
		m.Open = f.Open // an empty member: no folder behind it
		return m, nil
	}
	if f.Stream < 0 || f.Stream >= len(info.folders) {
		return nil, corrupt7z("member %q: folder %d of %d", f.Name, f.Stream, len(info.folders))
	}
	fo := &info.folders[f.Stream]
	m.CompressedSize = packedShare(fo.packed, f.UncompressedSize, fo.unpack)
	m.Encrypted = fo.encrypted
	if !fo.encrypted && fo.known {
		m.Open = func() (io.ReadCloser, error) {
			rc, err := f.Open()
			if err != nil {
				return nil, corrupt7z("member %q: %v", f.Name, err)
			}
			return &guardedReader{rc: rc, what: "7z member " + f.Name}, nil
		}
	}
	return m, nil
}

// szArchive is what check7z learned from the header.
type szArchive struct {
	empty   bool
	folders []szFolderInfo
}

type szFolderInfo struct {
	packed, unpack   uint64
	encrypted, known bool
}

// check7z reads the signature header and the header it points to, and
// checks them as the package comment says.
func check7z(r io.ReaderAt, size int64) (*szArchive, error) {
	var sh [szSignatureLen]byte
	if n, _ := r.ReadAt(sh[:], 0); n < len(sevenZipMagic) || !bytes.Equal(sh[:len(sevenZipMagic)], sevenZipMagic) {
		return nil, ErrNotFormat
	} else if n < szSignatureLen {
		return nil, corrupt7z("truncated signature header")
	}
	if crc32.ChecksumIEEE(sh[12:]) != binary.LittleEndian.Uint32(sh[8:]) {
		return nil, corrupt7z("bad start header checksum")
	}
	off := binary.LittleEndian.Uint64(sh[12:])
	n := binary.LittleEndian.Uint64(sh[20:])
	avail := uint64(size - szSignatureLen)
	if off > avail || n > avail-off {
		return nil, corrupt7z("header at %d+%d beyond the end (%d bytes): truncated", off, n, size)
	}
	if n == 0 {
		return &szArchive{empty: true}, nil
	}
	if n > szMaxHeader {
		return nil, fmt.Errorf("%w: 7z header of %d bytes", ErrUnsupported, n)
	}
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, int64(szSignatureLen+off)); err != nil {
		return nil, corrupt7z("reading header: %v", err)
	}
	if crc32.ChecksumIEEE(hdr) != binary.LittleEndian.Uint32(sh[28:]) {
		return nil, corrupt7z("bad header checksum")
	}
	c := &szCursor{b: hdr}
	if c.byte() == szEncodedHeader {
		dec, err := decode7zHeader(r, size, c)
		if err != nil {
			return nil, err
		}
		c = &szCursor{b: dec}
		if c.byte() != szHeader {
			return nil, corrupt7z("encoded header is no header")
		}
	} else if c.err == nil && hdr[0] != szHeader {
		return nil, corrupt7z("unknown header type %#x", hdr[0])
	}
	a, err := c.header(size)
	if err == nil {
		err = c.err
	}
	return a, err
}

// decode7zHeader decodes an encoded header (its streams info is at c) with
// the one coder 7-Zip and other writers use for it.
func decode7zHeader(r io.ReaderAt, size int64, c *szCursor) ([]byte, error) {
	si := c.streams(size)
	if c.err != nil {
		return nil, c.err
	}
	if len(si.folders) != 1 || len(si.packSizes) < 1 {
		return nil, corrupt7z("encoded header in %d folders", len(si.folders))
	}
	f := &si.folders[0]
	for _, cd := range f.coders {
		if string(cd.id) == szAES {
			return nil, fmt.Errorf("%w: 7z header", ErrEncrypted)
		}
	}
	unpack := f.mainSize()
	if unpack > szMaxHeader {
		return nil, fmt.Errorf("%w: 7z header of %d bytes", ErrUnsupported, unpack)
	}
	if len(f.coders) != 1 || f.packed != 1 {
		return nil, fmt.Errorf("%w: 7z header coded in %d steps", ErrUnsupported, len(f.coders))
	}
	cd := f.coders[0]
	dict, _ := szDict(cd)
	if dict > szMaxDict && dict > unpack {
		return nil, fmt.Errorf("%w: 7z header needs a %d-byte dictionary for %d bytes", ErrUnsupported, dict, unpack)
	}
	packed := io.NewSectionReader(r, int64(szSignatureLen+si.packPos), int64(si.packSizes[0]))
	var dr io.Reader
	var err error
	switch string(cd.id) {
	case szCopy:
		dr = packed
	case szLZMA:
		if len(cd.props) != 5 {
			return nil, corrupt7z("LZMA properties")
		}
		lh := binary.LittleEndian.AppendUint64(bytes.Clone(cd.props), unpack)
		dr, err = lzma.ReaderConfig{DictCap: szMaxDict}.NewReader(io.MultiReader(bytes.NewReader(lh), packed))
	case szLZMA2:
		dr, err = lzma.Reader2Config{DictCap: int(max(min(dict, unpack), lzma.MinDictCap))}.NewReader2(packed)
	default:
		return nil, fmt.Errorf("%w: 7z header coded with method %x", ErrUnsupported, cd.id)
	}
	if err != nil {
		return nil, corrupt7z("header: %v", err)
	}
	dec := make([]byte, unpack)
	if _, err := io.ReadFull(dr, dec); err != nil {
		return nil, corrupt7z("decoding header: %v", err)
	}
	if f.crcDefined && crc32.ChecksumIEEE(dec) != f.crc {
		return nil, corrupt7z("bad encoded header checksum")
	}
	return dec, nil
}

// szCursor reads the header's numbers; the first problem sticks in err and
// makes every later read return zero.
type szCursor struct {
	b   []byte
	err error
}

func (c *szCursor) fail(format string, args ...any) {
	if c.err == nil {
		c.err = corrupt7z(format, args...)
	}
	c.b = nil
}

func (c *szCursor) byte() byte {
	if len(c.b) == 0 {
		c.fail("header truncated")
		return 0
	}
	v := c.b[0]
	c.b = c.b[1:]
	return v
}

func (c *szCursor) bytes(n uint64) []byte {
	if n > uint64(len(c.b)) {
		c.fail("header truncated")
		return nil
	}
	v := c.b[:n]
	c.b = c.b[n:]
	return v
}

// num reads a 7z NUMBER: the first byte's leading one bits count the
// bytes that follow, its remaining bits are the value's high bits.
func (c *szCursor) num() uint64 {
	first := c.byte()
	extra := bits.LeadingZeros8(^first)
	var v uint64
	if extra < 7 {
		v = uint64(first&(0xff>>(extra+1))) << (8 * extra)
	}
	for i, b := range c.bytes(uint64(extra)) {
		v |= uint64(b) << (8 * i)
	}
	return v
}

// count reads a number of items each of which takes at least one more
// byte of the header (plus slack, for items some of which may take none):
// a count the header cannot back is a lie to allocate on.
func (c *szCursor) count(slack, limit uint64) uint64 {
	n := c.num()
	if n > uint64(len(c.b))+slack || n > limit {
		c.fail("declares %d items in %d bytes of header", n, len(c.b))
		return 0
	}
	return n
}

func (c *szCursor) expect(id byte, what string) {
	if got := c.byte(); got != id && c.err == nil {
		c.fail("%s: property %#x, want %#x", what, got, id)
	}
}

// digests reads a vector of n optional CRCs and returns how many are
// defined, and the first (a one-folder header's checksum).
func (c *szCursor) digests(n uint64) (defined uint64, first uint32, firstDefined bool) {
	all := c.byte() != 0
	var vec []byte
	if !all {
		vec = c.bytes((n + 7) / 8)
	}
	for i := uint64(0); i < n && c.err == nil; i++ {
		if all || vec[i/8]&(0x80>>(i%8)) != 0 {
			v := binary.LittleEndian.Uint32(c.bytes(4))
			if c.err == nil && i == 0 {
				first, firstDefined = v, true
			}
			defined++
		}
	}
	return defined, first, firstDefined
}

type szCoder struct {
	id, props []byte
	in, out   uint64
}

type szFolderDesc struct {
	coders     []szCoder
	bindOut    map[uint64]bool
	packed     uint64 // number of packed streams
	sizes      []uint64
	crc        uint32
	crcDefined bool
	streams    uint64 // unpack streams (members) in it
}

// mainSize is the size of the folder's unbound output, its content.
func (f *szFolderDesc) mainSize() uint64 {
	for i := len(f.sizes) - 1; i >= 0; i-- {
		if !f.bindOut[uint64(i)] {
			return f.sizes[i]
		}
	}
	return 0
}

type szStreams struct {
	packPos   uint64
	packSizes []uint64
	folders   []szFolderDesc
}

func (c *szCursor) streams(size int64) *szStreams {
	si := &szStreams{}
	id := c.byte()
	if id == szPackInfo {
		si.packPos = c.num()
		n := c.count(0, szMaxMembers)
		id = c.byte()
		if id == szSize {
			end := si.packPos
			for range n {
				s := c.num()
				si.packSizes = append(si.packSizes, s)
				end += s
				if s > uint64(size) || end > uint64(size) {
					c.fail("packed streams beyond the end (%d bytes): truncated", size)
				}
			}
			if end+szSignatureLen > uint64(size) {
				c.fail("packed streams beyond the end (%d bytes): truncated", size)
			}
			id = c.byte()
		}
		if id == szCRC {
			c.digests(n)
			id = c.byte()
		}
		if id != szEnd {
			c.fail("pack info: property %#x", id)
		}
		id = c.byte()
	}
	if id == szUnpackInfo {
		c.expect(szFolderID, "unpack info")
		nf := c.count(0, szMaxMembers)
		if c.byte() != 0 {
			c.fail("external folders")
		}
		for range nf {
			si.folders = append(si.folders, c.folder())
		}
		c.expect(szCodersUnpackSize, "unpack info")
		var packedUsed uint64
		for i := range si.folders {
			f := &si.folders[i]
			for j := range f.sizes {
				f.sizes[j] = c.num()
			}
			packedUsed += f.packed
		}
		if packedUsed > uint64(len(si.packSizes)) {
			c.fail("folders use %d packed streams of %d", packedUsed, len(si.packSizes))
		}
		id = c.byte()
		if id == szCRC {
			all := c.byte() != 0
			var vec []byte
			if !all {
				vec = c.bytes((nf + 7) / 8)
			}
			for i := range si.folders {
				if c.err == nil && (all || vec[i/8]&(0x80>>(i%8)) != 0) {
					si.folders[i].crc = binary.LittleEndian.Uint32(c.bytes(4))
					si.folders[i].crcDefined = true
				}
			}
			id = c.byte()
		}
		if id != szEnd {
			c.fail("unpack info: property %#x", id)
		}
		id = c.byte()
	}
	for i := range si.folders {
		si.folders[i].streams = 1
	}
	if id == szSubStreamsInfo {
		if len(si.folders) == 0 {
			c.fail("substreams without folders")
		}
		id = c.byte()
		if id == szNumUnpackStream {
			var total uint64
			for i := range si.folders {
				n := c.count(uint64(len(si.folders)), szMaxMembers)
				si.folders[i].streams = n
				total += n
				if total > szMaxMembers {
					c.fail("declares more than %d members", szMaxMembers)
				}
			}
			id = c.byte()
		}
		if id == szSize {
			for i := range si.folders {
				f := &si.folders[i]
				var sum uint64
				for j := uint64(1); j < f.streams && c.err == nil; j++ {
					s := c.num()
					sum += s
					if s > f.mainSize() || sum > f.mainSize() {
						c.fail("members larger than their folder")
					}
				}
			}
			id = c.byte()
		}
		if id == szCRC {
			var n uint64
			for _, f := range si.folders {
				if f.streams != 1 || !f.crcDefined {
					n += f.streams
				}
			}
			c.digests(n)
			id = c.byte()
		}
		if id != szEnd {
			c.fail("substreams info: property %#x", id)
		}
		id = c.byte()
	}
	if id != szEnd {
		c.fail("streams info: property %#x", id)
	}
	return si
}

func (c *szCursor) folder() szFolderDesc {
	var f szFolderDesc
	nc := c.count(0, szMaxCoders)
	if nc == 0 {
		c.fail("folder without coders")
	}
	var in, out uint64
	for range nc {
		flags := c.byte()
		cd := szCoder{id: c.bytes(uint64(flags & 0x0f)), in: 1, out: 1}
		if flags&0x10 != 0 {
			cd.in = c.count(0, szMaxCoders)
			cd.out = c.count(0, szMaxCoders)
		}
		if flags&0x20 != 0 {
			cd.props = c.bytes(c.num())
		}
		if flags&0x80 != 0 {
			c.fail("alternative coder methods")
		}
		in += cd.in
		out += cd.out
		f.coders = append(f.coders, cd)
	}
	if c.err != nil {
		return f
	}
	if out == 0 || in < out-1 || in > szMaxCoders || out > szMaxCoders {
		c.fail("folder of %d inputs and %d outputs", in, out)
		return f
	}
	f.bindOut = map[uint64]bool{}
	boundIn := map[uint64]bool{}
	for range out - 1 {
		bi, bo := c.num(), c.num()
		if bi >= in || bo >= out || boundIn[bi] || f.bindOut[bo] {
			c.fail("bad bind pair %d→%d", bo, bi)
			return f
		}
		boundIn[bi], f.bindOut[bo] = true, true
	}
	f.packed = in - (out - 1)
	if f.packed > 1 {
		for range f.packed {
			if p := c.num(); p >= in || boundIn[p] {
				c.fail("bad packed stream %d", p)
			}
		}
	}
	f.sizes = make([]uint64, out)
	return f
}

// szDict is the dictionary (or model) size a coder allocates, for the
// coders whose properties declare one.
func szDict(cd szCoder) (uint64, bool) {
	switch string(cd.id) {
	case szLZMA, szPPMd:
		if len(cd.props) == 5 {
			return uint64(binary.LittleEndian.Uint32(cd.props[1:])), true
		}
	case szLZMA2:
		if len(cd.props) == 1 && cd.props[0] <= 40 {
			p := uint64(cd.props[0])
			return (2 | p&1) << (p/2 + 11), true
		}
		if len(cd.props) == 1 {
			return 1 << 40, true // out of LZMA2's range: refused below
		}
	}
	return 0, false
}

// header reads a (decoded) header and sums up its folders.
func (c *szCursor) header(size int64) (*szArchive, error) {
	var si szStreams
	id := c.byte()
	if id == szMainStreamsInfo {
		si = *c.streams(size)
		id = c.byte()
	}
	var files, empty uint64
	if id == szFilesInfo {
		files = c.count(0, szMaxMembers)
		for c.err == nil {
			t := c.byte()
			if t == szEnd {
				break
			}
			p := c.bytes(c.num())
			if t == szEmptyStream {
				for i := uint64(0); i < files && i/8 < uint64(len(p)); i++ {
					if p[i/8]&(0x80>>(i%8)) != 0 {
						empty++
					}
				}
			}
		}
		id = c.byte()
	}
	if id != szEnd {
		c.fail("header: property %#x", id)
	}
	if c.err != nil {
		return nil, c.err
	}
	var streams uint64
	for _, f := range si.folders {
		streams += f.streams
	}
	if files-empty != streams {
		return nil, corrupt7z("%d members with content in %d streams", files-empty, streams)
	}
	a := &szArchive{}
	next := 0
	for i := range si.folders {
		f := &si.folders[i]
		fi := szFolderInfo{unpack: f.mainSize(), known: true}
		for _, p := range si.packSizes[next : next+int(f.packed)] {
			fi.packed += p
		}
		next += int(f.packed)
		for _, cd := range f.coders {
			fi.encrypted = fi.encrypted || string(cd.id) == szAES
			fi.known = fi.known && szKnownMethods[string(cd.id)]
			if d, ok := szDict(cd); ok && d > szMaxDict && d > fi.unpack {
				return nil, fmt.Errorf("%w: 7z folder %d needs a %d-byte dictionary for %d bytes", ErrUnsupported, i, d, fi.unpack)
			}
		}
		a.folders = append(a.folders, fi)
	}
	return a, nil
}
