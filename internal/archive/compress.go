package archive

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compressed streams: gzip, bzip2, xz and zstd, each one member (what was
// compressed), named by the gzip header or after the stream's own name.
// They are Transparent: a .tar.gz is one level, as a .tar is. Their member
// declares no size, so List unpacks it to the end (within its caps) to
// measure it; decoders are bounded in memory (maxWindow).
func init() {
	Register(&Format{Name: "gzip", Transparent: true, Sniff: magic("\x1f\x8b\x08"), Walk: walkGzip})
	Register(&Format{Name: "bzip2", Transparent: true, Sniff: sniffBzip2, Walk: stream(bzip2Suffixes, openBzip2)})
	Register(&Format{Name: "xz", Transparent: true, Sniff: magic("\xfd7zXZ\x00"), Walk: stream(xzSuffixes, openXz)})
	Register(&Format{Name: "zstd", Transparent: true, Sniff: magic("\x28\xb5\x2f\xfd"), Walk: stream(zstdSuffixes, openZstd)})
}

// maxWindow caps the window (dictionary) a stream may declare: its
// decoder holds that much memory. 64 MiB takes xz -9 and zstd up to
// level 21; a stream that wants more is unreadable.
const maxWindow = 64 << 20

func magic(m string) func([]byte, io.ReaderAt, int64, string) bool {
	return func(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
		return bytes.HasPrefix(head, []byte(m))
	}
}

// Suffixes of compressed file names and what is left when they are cut:
// "a.tgz" holds "a.tar", "a.txt.gz" "a.txt".
var (
	gzipSuffixes  = [][2]string{{".tgz", ".tar"}, {".taz", ".tar"}, {".gz", ""}, {".z", ""}}
	bzip2Suffixes = [][2]string{{".tbz2", ".tar"}, {".tbz", ".tar"}, {".bz2", ""}}
	xzSuffixes    = [][2]string{{".txz", ".tar"}, {".xz", ""}}
	zstdSuffixes  = [][2]string{{".tzst", ".tar"}, {".zst", ""}}
)

// memberName names the one member of a compressed stream named name.
func memberName(name string, suffixes [][2]string) string {
	if i := strings.LastIndexAny(name, "/\\"); i >= 0 {
		name = name[i+1:]
	}
	lower := strings.ToLower(name)
	for _, s := range suffixes {
		if strings.HasSuffix(lower, s[0]) && len(name) > len(s[0]) {
			return name[:len(name)-len(s[0])] + s[1]
		}
	}
	if name == "" {
		return "(content)"
	}
	return name
}

func walkGzip(_ context.Context, r io.ReaderAt, size int64, name string, fn func(*Member) error) error {
	z, err := gzip.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return fmt.Errorf("%w: gzip: %v", ErrCorrupt, err)
	}
	// The header's name (at most 512 bytes: compress/gzip's cap) is what
	// gunzip -N and most archivers restore.
	mname := z.Name
	if mname == "" {
		mname = memberName(name, gzipSuffixes)
	}
	return fn(&Member{Name: mname, Size: -1, CompressedSize: size, Open: func() (io.ReadCloser, error) { return z, nil }})
}

// stream is the Walk of a compressed stream whose decoder open makes.
func stream(suffixes [][2]string, open func(context.Context, io.ReaderAt, int64) (io.ReadCloser, error)) func(context.Context, io.ReaderAt, int64, string, func(*Member) error) error {
	return func(ctx context.Context, r io.ReaderAt, size int64, name string, fn func(*Member) error) error {
		return fn(&Member{Name: memberName(name, suffixes), Size: -1, CompressedSize: size, Open: func() (io.ReadCloser, error) {
			rc, err := open(ctx, r, size)
			if errors.Is(err, ErrUnsupported) {
				return nil, err
			}
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
			}
			return rc, nil
		}})
	}
}

// sniffBzip2: "BZh", the block size, and the magic of a first block or of
// the end of an empty stream.
func sniffBzip2(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	if len(head) < 10 || !bytes.HasPrefix(head, []byte("BZh")) || head[3] < '1' || head[3] > '9' {
		return false
	}
	b := string(head[4:10])
	return b == "1AY&SY" || b == "\x17\x72\x45\x38\x50\x90"
}

func openBzip2(_ context.Context, r io.ReaderAt, size int64) (io.ReadCloser, error) {
	return io.NopCloser(bzip2.NewReader(io.NewSectionReader(r, 0, size))), nil
}

func openXz(ctx context.Context, r io.ReaderAt, size int64) (io.ReadCloser, error) {
	// The xz decoder allocates whatever dictionary a block declares, up to
	// 4 GiB, however little the stream holds: check every block header
	// first, and charge the largest to the listing's decoder budget.
	dict, err := checkXzDicts(r, size, maxWindow)
	if err != nil {
		return nil, err
	}
	if err := chargeDecoder(ctx, dict); err != nil {
		return nil, err
	}
	zr, err := xz.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, err
	}
	return io.NopCloser(zr), nil
}

func openZstd(_ context.Context, r io.ReaderAt, size int64) (io.ReadCloser, error) {
	d, err := zstd.NewReader(io.NewSectionReader(r, 0, size), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderMaxMemory(maxWindow))
	if err != nil {
		return nil, err
	}
	return d.IOReadCloser(), nil
}

// checkXzDicts walks the structure of the xz streams of size bytes in r —
// stream headers, block headers, LZMA2 chunk headers (each says how long
// its data is), indexes, footers, padding — without decoding anything, and
// fails when a block's LZMA2 filter declares a dictionary over maxDict: the
// blocks are found exactly where the decoder will look for them.
func checkXzDicts(r io.ReaderAt, size int64, maxDict int64) (largest int64, err error) {
	br := bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 4096)
	var pos int64
	bad := func(what string) error { return fmt.Errorf("xz: %s at offset %d", what, pos) }
	readByte := func() (byte, error) {
		b, err := br.ReadByte()
		if err != nil {
			return 0, bad("truncated stream")
		}
		pos++
		return b, nil
	}
	skip := func(n int64) error {
		for n > 0 {
			k, err := br.Discard(int(min(n, 1<<30)))
			pos += int64(k)
			n -= int64(k)
			if err != nil {
				return bad("truncated stream")
			}
		}
		return nil
	}
	varint := func() (uint64, error) {
		var v uint64
		for i := 0; i < 9; i++ {
			b, err := readByte()
			if err != nil {
				return 0, err
			}
			v |= uint64(b&0x7f) << (7 * i)
			if b&0x80 == 0 {
				return v, nil
			}
		}
		return 0, bad("bad number")
	}
	for streams := 0; pos < size; streams++ {
		if streams > 0 {
			// Stream padding: zero bytes, a multiple of four.
			b, err := br.Peek(1)
			if err == nil && b[0] == 0 {
				if err := skip(4); err != nil {
					return 0, err
				}
				continue
			}
		}
		var hdr [12]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return 0, bad("truncated stream header")
		}
		pos += 12
		if string(hdr[:6]) != "\xfd7zXZ\x00" || hdr[6] != 0 || hdr[7] > 15 {
			return 0, bad("bad stream header")
		}
		checkSize := int64(0)
		if c := hdr[7]; c > 0 {
			checkSize = 4 << ((c - 1) / 3)
		}
		start := pos - 12
		for {
			hs, err := readByte()
			if err != nil {
				return 0, err
			}
			if hs == 0 { // the index
				n, err := varint()
				if err != nil {
					return 0, err
				}
				for range 2 * min(n, uint64(size)) {
					if _, err := varint(); err != nil {
						return 0, err
					}
				}
				if err := skip((4-(pos-start)%4)%4 + 4 + 12); err != nil { // padding, CRC32, footer
					return 0, err
				}
				break
			}
			blockStart := pos - 1
			h := make([]byte, (int(hs)+1)*4-1) // the size byte is part of it
			if _, err := io.ReadFull(br, h); err != nil {
				return 0, bad("truncated block header")
			}
			pos += int64(len(h))
			dict, err := checkXzBlockHeader(h, maxDict)
			if err != nil {
				return 0, bad(err.Error())
			}
			largest = max(largest, dict)
			// LZMA2 chunks, up to the end marker.
			for {
				c, err := readByte()
				if err != nil {
					return 0, err
				}
				if c == 0 {
					break
				}
				var sz [4]byte
				switch {
				case c == 1 || c == 2:
					if _, err := io.ReadFull(br, sz[:2]); err != nil {
						return 0, bad("truncated chunk")
					}
					pos += 2
					err = skip(int64(sz[0])<<8 | int64(sz[1]) + 1)
				case c >= 0x80:
					if _, err := io.ReadFull(br, sz[:4]); err != nil {
						return 0, bad("truncated chunk")
					}
					pos += 4
					n := int64(sz[2])<<8 | int64(sz[3]) + 1
					if c >= 0xc0 {
						n++ // properties
					}
					err = skip(n)
				default:
					return 0, bad("bad LZMA2 chunk")
				}
				if err != nil {
					return 0, err
				}
			}
			if err := skip((4-(pos-blockStart)%4)%4 + checkSize); err != nil {
				return 0, err
			}
		}
	}
	return largest, nil
}

// checkXzBlockHeader checks the filters of a block header (h, its size
// byte excluded): the last must be LZMA2, with a dictionary of at most
// maxDict bytes.
func checkXzBlockHeader(h []byte, maxDict int64) (dict int64, err error) {
	if len(h) < 2 {
		return 0, errors.New("bad block header")
	}
	flags := h[0]
	p := 1
	varint := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && p < len(h); i++ {
			b := h[p]
			p++
			v |= uint64(b&0x7f) << (7 * i)
			if b&0x80 == 0 {
				return v, true
			}
		}
		return 0, false
	}
	for _, bit := range []byte{0x40, 0x80} { // compressed, uncompressed size
		if flags&bit != 0 {
			if _, ok := varint(); !ok {
				return 0, errors.New("bad block header")
			}
		}
	}
	var id uint64
	for range int(flags&3) + 1 {
		var ok bool
		if id, ok = varint(); !ok {
			return 0, errors.New("bad filter")
		}
		n, ok := varint()
		if !ok || n > uint64(len(h)-p) {
			return 0, errors.New("bad filter")
		}
		if id == 0x21 {
			if n != 1 || h[p] > 40 {
				return 0, errors.New("bad LZMA2 properties")
			}
			code := int64(h[p])
			dict = int64(1<<32 - 1)
			if code < 40 {
				dict = (2 | code&1) << (code/2 + 11)
			}
			if dict > maxDict {
				return 0, fmt.Errorf("dictionary of %s, over the %s popgate allows", humanSize(dict), humanSize(maxDict))
			}
		}
		p += int(n)
	}
	if id != 0x21 {
		return 0, errors.New("last filter is not LZMA2")
	}
	return dict, nil
}
