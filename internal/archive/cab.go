package archive

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"golang.org/x/text/encoding/charmap"
)

// Microsoft Cabinet files, read by this package's own parser (no Go library
// for them is maintained). The layout is Microsoft's [MS-CAB] "Cabinet File
// Format": a CFHEADER, its CFFOLDER entries (each a compressed stream of
// CFDATA blocks), then the CFFILE entries naming byte ranges of a folder's
// uncompressed stream. MSZIP folders are inflated per the spec (each block a
// deflate stream whose window is the previous 32 KiB of output); stored
// folders are copied; LZX and Quantum folders are named but not opened.

func init() {
	Register(&Format{Name: "cab", Sniff: sniffCab, Walk: walkCab})
}

const (
	cabHeaderLen = 36
	cabFolderLen = 8
	cabFileLen   = 16
	cabDataLen   = 8
	// cabBlockMax is the most a CFDATA block unpacks to.
	cabBlockMax = 32 << 10

	cabPrevCabinet    = 0x0001
	cabNextCabinet    = 0x0002
	cabReservePresent = 0x0004

	cabNone    = 0
	cabMSZIP   = 1
	cabNameUTF = 0x80
	// iFolder values of a file continued from or into another cabinet of
	// a set: its data is not all here.
	cabContinuedFrom = 0xfffd
	cabContinuedTo   = 0xfffe
)

var cabMagic = []byte("MSCF\x00\x00\x00\x00")

func sniffCab(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	return bytes.HasPrefix(head, cabMagic)
}

func corruptCab(format string, args ...any) error {
	return fmt.Errorf("%w: cab: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

type cabFolder struct {
	method   uint16
	blocks   []cabBlock
	packed   uint64
	unpacked uint64
}

// cabBlock is a CFDATA block: where its data is, and its sizes.
type cabBlock struct {
	off      int64 // of its data
	csum     uint32
	head     [4]byte // cbData and cbUncomp, which the checksum covers
	packed   int
	unpacked int
}

type cabinet struct {
	r          io.ReaderAt
	size       int64
	folders    []cabFolder
	dataRes    int64 // per-CFDATA reserved bytes
	cur        *cabStream
	curFolder  int
	firstFiles int64
	blocks     int64
	// budget is how many more bytes the walk's members may decode.
	budget int64
}

func walkCab(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	var h [cabHeaderLen]byte
	if n, _ := r.ReadAt(h[:], 0); n < len(cabMagic) || !bytes.Equal(h[:len(cabMagic)], cabMagic) {
		return ErrNotFormat
	} else if n < cabHeaderLen {
		return corruptCab("truncated header")
	}
	le := binary.LittleEndian
	if h[25] != 1 {
		return fmt.Errorf("%w: cab version %d.%d", ErrUnsupported, h[25], h[24])
	}
	cab := &cabinet{r: r, size: size, curFolder: -1}
	nFolders, nFiles, flags := int64(le.Uint16(h[26:])), int64(le.Uint16(h[28:])), le.Uint16(h[30:])
	cab.firstFiles = int64(le.Uint32(h[16:]))
	off := int64(cabHeaderLen)
	var folderRes int64
	if flags&cabReservePresent != 0 {
		var res [4]byte
		if _, err := r.ReadAt(res[:], off); err != nil {
			return corruptCab("truncated header")
		}
		off += 4 + int64(le.Uint16(res[:]))
		folderRes, cab.dataRes = int64(res[2]), int64(res[3])
	}
	for _, f := range []uint16{cabPrevCabinet, cabNextCabinet} {
		if flags&f == 0 {
			continue
		}
		for range 2 { // the cabinet's and the disk's name
			var err error
			if _, off, err = cab.cstring(off); err != nil {
				return err
			}
		}
	}
	// Every folder and file entry takes bytes of the file: counts that
	// the file cannot hold are refused before anything is allocated.
	if off+nFolders*(cabFolderLen+folderRes) > size || cab.firstFiles+nFiles*(cabFileLen+1) > size || cab.firstFiles < off {
		return corruptCab("%d folders and %d files do not fit in %d bytes", nFolders, nFiles, size)
	}
	for i := range nFolders {
		var fh [cabFolderLen]byte
		if _, err := r.ReadAt(fh[:], off+i*(cabFolderLen+folderRes)); err != nil {
			return corruptCab("folder %d: %v", i, err)
		}
		f, err := cab.readBlocks(int64(le.Uint32(fh[:])), int64(le.Uint16(fh[4:])), le.Uint16(fh[6:]))
		if err != nil {
			return fmt.Errorf("folder %d: %w", i, err)
		}
		cab.folders = append(cab.folders, f)
	}
	files, err := cab.readFiles(nFiles)
	if err != nil {
		return err
	}
	defer cab.closeStream()
	for i := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(cab.member(&files[i])); err != nil {
			return err
		}
	}
	return nil
}

// cabFile is a CFFILE entry.
type cabFile struct {
	name          string
	size, start   uint64
	folder, attrs uint16
}

// readFiles reads the file entries, and checks that they cover their
// folders without gaps: a member is read by decoding its folder from the
// start (or from the previous member), and that work must be bounded by
// the sizes the members declare, which the engine checks. It sets the
// cabinet's decoding budget accordingly.
func (cab *cabinet) readFiles(n int64) ([]cabFile, error) {
	le := binary.LittleEndian
	files := make([]cabFile, 0, n)
	declared := make([]uint64, len(cab.folders))
	end := make([]uint64, len(cab.folders))
	off := cab.firstFiles
	for range n {
		var fh [cabFileLen]byte
		if _, err := cab.r.ReadAt(fh[:], off); err != nil {
			return nil, corruptCab("truncated file entry")
		}
		raw, next, err := cab.cstring(off + cabFileLen)
		if err != nil {
			return nil, err
		}
		off = next
		f := cabFile{
			name:   string(raw),
			size:   uint64(le.Uint32(fh[:])),
			start:  uint64(le.Uint32(fh[4:])),
			folder: le.Uint16(fh[8:]),
			attrs:  le.Uint16(fh[14:]),
		}
		if f.attrs&cabNameUTF == 0 {
			// Not flagged UTF-8: in the code page of the system that
			// made it, commonly Windows-1252.
			f.name = legacyName(raw, charmap.Windows1252)
		}
		// A file continued from the previous cabinet of a set is at the
		// start of the first folder, one continued into the next at the
		// end of the last.
		fo := int(f.folder)
		switch {
		case f.folder == cabContinuedTo:
			fo = len(cab.folders) - 1
		case f.folder >= cabContinuedFrom:
			fo = 0
		case fo >= len(cab.folders):
			return nil, corruptCab("file %q in folder %d of %d", f.name, fo, len(cab.folders))
		}
		if fo >= 0 && fo < len(cab.folders) {
			declared[fo] += f.size
			end[fo] = max(end[fo], f.start+f.size)
		}
		cab.budget += 2 * int64(f.size)
		files = append(files, f)
	}
	for i := range cab.folders {
		if end[i] > declared[i] {
			return nil, corruptCab("folder %d: members reach %d bytes but declare %d", i, end[i], declared[i])
		}
	}
	cab.budget += 2 * cabBlockMax
	return files, nil
}

// cstring reads the NUL-terminated string (of at most 256 bytes, as the
// spec has them) at off, and returns it and the offset after it.
func (cab *cabinet) cstring(off int64) ([]byte, int64, error) {
	var b [257]byte
	n, _ := cab.r.ReadAt(b[:], off)
	i := bytes.IndexByte(b[:n], 0)
	if i < 0 {
		return nil, 0, corruptCab("unterminated name at %d", off)
	}
	return b[:i], off + int64(i) + 1, nil
}

func (cab *cabinet) readBlocks(off, n int64, method uint16) (cabFolder, error) {
	f := cabFolder{method: method}
	if off < 0 || off+n*cabDataLen > cab.size {
		return f, corruptCab("%d data blocks at %d beyond the end", n, off)
	}
	// Blocks of different folders cannot overlap: all of them together
	// fit in the file.
	cab.blocks += n
	if cab.blocks*cabDataLen > cab.size {
		return f, corruptCab("%d data blocks do not fit in %d bytes", cab.blocks, cab.size)
	}
	f.blocks = make([]cabBlock, 0, n)
	for range n {
		var d [cabDataLen]byte
		if _, err := cab.r.ReadAt(d[:], off); err != nil {
			return f, corruptCab("truncated data block")
		}
		b := cabBlock{
			off:      off + cabDataLen + cab.dataRes,
			csum:     binary.LittleEndian.Uint32(d[:]),
			packed:   int(binary.LittleEndian.Uint16(d[4:])),
			unpacked: int(binary.LittleEndian.Uint16(d[6:])),
		}
		copy(b.head[:], d[4:])
		if b.off+int64(b.packed) > cab.size {
			return f, corruptCab("data block beyond the end: truncated")
		}
		if b.unpacked > cabBlockMax {
			return f, corruptCab("data block of %d bytes", b.unpacked)
		}
		f.blocks = append(f.blocks, b)
		f.packed += uint64(b.packed)
		f.unpacked += uint64(b.unpacked)
		off = b.off + int64(b.packed)
	}
	return f, nil
}

func (cab *cabinet) member(f *cabFile) *Member {
	m := &Member{Name: f.name, Size: int64(f.size)}
	if f.folder >= cabContinuedFrom {
		return m // its data begins in an earlier cabinet of the set
	}
	fo := &cab.folders[f.folder]
	m.CompressedSize = packedShare(fo.packed, f.size, fo.unpacked)
	if f.start+f.size > fo.unpacked {
		// Continued into the next cabinet of a set, or a lie: either way
		// its content is not all here.
		return m
	}
	if fo.method&0x0f != cabNone && fo.method&0x0f != cabMSZIP {
		return m // Quantum, LZX
	}
	folder, start, size := int(f.folder), int64(f.start), int64(f.size)
	m.Open = func() (io.ReadCloser, error) { return cab.open(folder, start, size) }
	return m
}

// open returns the content of a file: the stream of its folder, from its
// start. Files are opened in order, so the stream of the last one opened is
// kept and read on: a folder is inflated once, not once per file.
func (cab *cabinet) open(folder int, start, size int64) (io.ReadCloser, error) {
	if cab.curFolder != folder || cab.cur == nil || cab.cur.pos > start {
		s := &cabStream{cab: cab, f: &cab.folders[folder]}
		if cab.cur != nil { // its buffers and inflater serve again
			s.window, s.packed, s.inflater = cab.cur.window[:0], cab.cur.packed, cab.cur.inflater
		}
		cab.cur, cab.curFolder = s, folder
	}
	if _, err := io.CopyN(io.Discard, cab.cur, start-cab.cur.pos); err != nil {
		return nil, err
	}
	return io.NopCloser(io.LimitReader(cab.cur, size)), nil
}

func (cab *cabinet) closeStream() {
	if cab.cur != nil && cab.cur.inflater != nil {
		cab.cur.inflater.Close()
	}
}

// cabStream is the uncompressed stream of a folder.
type cabStream struct {
	cab      *cabinet
	f        *cabFolder
	next     int // block
	pos      int64
	out      []byte // unread output of the current block
	window   []byte // the last 32 KiB of output, MSZIP's dictionary
	packed   []byte
	inflater io.ReadCloser
}

func (s *cabStream) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		if s.next == len(s.f.blocks) {
			return 0, io.EOF
		}
		if err := s.block(&s.f.blocks[s.next]); err != nil {
			return 0, err
		}
		s.next++
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	s.pos += int64(n)
	if s.cab.budget -= int64(n); s.cab.budget < 0 {
		return n, corruptCab("members out of order: decoding more than twice their size")
	}
	return n, nil
}

// block decodes b into s.out.
func (s *cabStream) block(b *cabBlock) error {
	if cap(s.packed) < b.packed {
		s.packed = make([]byte, max(b.packed, cabBlockMax))
	}
	s.packed = s.packed[:b.packed]
	if _, err := s.cab.r.ReadAt(s.packed, b.off); err != nil {
		return corruptCab("reading data block: %v", err)
	}
	if b.csum != 0 && cabChecksum(b.head[:], cabChecksum(s.packed, 0)) != b.csum {
		return corruptCab("data block checksum")
	}
	if s.f.method&0x0f == cabNone {
		if b.packed != b.unpacked {
			return corruptCab("stored block of %d bytes unpacks to %d", b.packed, b.unpacked)
		}
		s.out = s.packed
		return nil
	}
	if len(s.packed) < 2 || s.packed[0] != 'C' || s.packed[1] != 'K' {
		return corruptCab("MSZIP block without its signature")
	}
	src := bytes.NewReader(s.packed[2:])
	if s.inflater == nil {
		s.inflater = flate.NewReaderDict(src, s.window)
	} else if err := s.inflater.(flate.Resetter).Reset(src, s.window); err != nil {
		return corruptCab("MSZIP: %v", err)
	}
	// The output is appended to the window; the window keeps its last
	// 32 KiB for the next block.
	w := len(s.window)
	s.window = append(s.window, make([]byte, b.unpacked)...)
	if _, err := io.ReadFull(s.inflater, s.window[w:]); err != nil {
		return corruptCab("MSZIP block: %v", err)
	}
	out := s.window[w:]
	if len(s.window) > cabBlockMax {
		kept := s.window[len(s.window)-cabBlockMax:]
		s.out = append(s.packed[:0], out...) // the output outlives the window's move
		s.window = append(s.window[:0], kept...)
		return nil
	}
	s.out = out
	return nil
}

// cabChecksum is [MS-CAB]'s CFDATA checksum: the XOR of the data's
// little-endian 32-bit words, its last 1-3 bytes taken most significant
// first, seeded with the checksum of what it continues.
func cabChecksum(b []byte, seed uint32) uint32 {
	cs := seed
	for len(b) >= 4 {
		cs ^= binary.LittleEndian.Uint32(b)
		b = b[4:]
	}
	var ul uint32
	for _, c := range b {
		ul = ul<<8 | uint32(c)
	}
	return cs ^ ul
}
