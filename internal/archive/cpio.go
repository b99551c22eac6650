package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
)

// cpio archives in the four formats GNU cpio writes: newc (and its crc
// variant), odc (portable ASCII) and the old binary format in either byte
// order. github.com/cavaliergopher/cpio reads newc only, so this is a small
// reader of its own: headers at known offsets, no state beyond the
// current one.
func init() {
	Register(&Format{Name: "cpio", Sniff: sniffCpio, Walk: walkCpio})
}

// maxCpioName caps a member name; the header may declare up to 4 GiB.
const maxCpioName = 64 << 10

func sniffCpio(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	return bytes.HasPrefix(head, []byte("07070")) && len(head) > 5 && bytes.IndexByte([]byte("127"), head[5]) >= 0 ||
		bytes.HasPrefix(head, []byte{0xc7, 0x71}) || bytes.HasPrefix(head, []byte{0x71, 0xc7})
}

// cpioHeader is what a member's header says.
type cpioHeader struct {
	mode, nameSize, fileSize int64
	hdrLen                   int64
	align                    int64 // header+name and data are padded to this
}

func corruptCpio(format string, args ...any) error {
	return fmt.Errorf("%w: cpio: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// readCpioHeader reads the header at off.
func readCpioHeader(r io.ReaderAt, off int64) (cpioHeader, error) {
	var b [110]byte
	n, _ := r.ReadAt(b[:], off)
	buf := b[:n]
	num := func(s []byte, base int) (int64, bool) {
		v, err := strconv.ParseInt(string(s), base, 64)
		return v, err == nil && v >= 0
	}
	var h cpioHeader
	ok := true
	switch {
	case bytes.HasPrefix(buf, []byte("070701")) || bytes.HasPrefix(buf, []byte("070702")):
		if n < 110 {
			return h, corruptCpio("truncated header at %d", off)
		}
		var ok1, ok2, ok3 bool
		h.mode, ok1 = num(buf[14:22], 16)
		h.fileSize, ok2 = num(buf[54:62], 16)
		h.nameSize, ok3 = num(buf[94:102], 16)
		ok = ok1 && ok2 && ok3
		h.hdrLen, h.align = 110, 4
	case bytes.HasPrefix(buf, []byte("070707")):
		if n < 76 {
			return h, corruptCpio("truncated header at %d", off)
		}
		var ok1, ok2, ok3 bool
		h.mode, ok1 = num(buf[18:24], 8)
		h.nameSize, ok2 = num(buf[59:65], 8)
		h.fileSize, ok3 = num(buf[65:76], 8)
		ok = ok1 && ok2 && ok3
		h.hdrLen, h.align = 76, 1
	case n >= 2 && (buf[0] == 0xc7 && buf[1] == 0x71 || buf[0] == 0x71 && buf[1] == 0xc7):
		if n < 26 {
			return h, corruptCpio("truncated header at %d", off)
		}
		var bo binary.ByteOrder = binary.LittleEndian
		if buf[0] == 0x71 {
			bo = binary.BigEndian
		}
		h.mode = int64(bo.Uint16(buf[6:]))
		h.nameSize = int64(bo.Uint16(buf[20:]))
		h.fileSize = int64(bo.Uint16(buf[22:]))<<16 | int64(bo.Uint16(buf[24:]))
		h.hdrLen, h.align = 26, 2
	default:
		return h, corruptCpio("no header at %d", off)
	}
	if !ok {
		return h, corruptCpio("bad header at %d", off)
	}
	return h, nil
}

func pad(n, align int64) int64 { return (align - n%align) % align }

func walkCpio(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	for off, n := int64(0), 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := readCpioHeader(r, off)
		if err != nil {
			if n == 0 {
				return ErrNotFormat
			}
			return err
		}
		if h.nameSize < 1 || h.nameSize > maxCpioName {
			return corruptCpio("name of %d bytes at %d", h.nameSize, off)
		}
		name := make([]byte, h.nameSize)
		if _, err := r.ReadAt(name, off+h.hdrLen); err != nil {
			return corruptCpio("truncated name at %d", off)
		}
		name = bytes.TrimRight(name, "\x00")
		data := off + h.hdrLen + h.nameSize
		data += pad(data-off, h.align)
		if string(name) == "TRAILER!!!" {
			return nil
		}
		if h.fileSize > size-data {
			return corruptCpio("member %s: data beyond the end", name)
		}
		m := &Member{Name: string(name), Size: h.fileSize, CompressedSize: h.fileSize, Dir: h.mode&0o170000 == 0o040000}
		if h.mode&0o170000 == 0o100000 && h.fileSize > 0 {
			sr := io.NewSectionReader(r, data, h.fileSize)
			m.Open = func() (io.ReadCloser, error) { return io.NopCloser(sr), nil }
		} else {
			m.Size, m.CompressedSize = 0, 0 // a symlink's target, a device: no content
		}
		if err := fn(m); err != nil {
			return err
		}
		off = data + h.fileSize
		off += pad(off, h.align)
	}
}
