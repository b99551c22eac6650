package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
)

// Tar archives: ustar, pax and GNU (long names, sparse files), and the
// old v7 format, all told by a valid header checksum; archive/tar reads
// them, with its own caps on pax and long-name records.
func init() {
	Register(&Format{Name: "tar", Sniff: sniffTar, Walk: walkTar})
}

const tarBlock = 512

// sniffTar: the first header's checksum is right (every tar variant has
// one), or it says ustar.
func sniffTar(head []byte, _ io.ReaderAt, _ int64, _ string) bool {
	if len(head) < tarBlock {
		return false
	}
	if bytes.HasPrefix(head[257:], []byte("ustar")) {
		return true
	}
	sum, ok := parseOctal(bytes.Trim(head[148:156], " \x00"))
	if !ok {
		return false
	}
	var unsigned uint64
	for i, b := range head[:tarBlock] {
		if i >= 148 && i < 156 {
			b = ' '
		}
		unsigned += uint64(b)
	}
	return unsigned == sum && unsigned != 8*' '
}

// parseOctal reads a tar header's octal number; most attachments are
// not tar, and strconv's error for them would be garbage per part.
func parseOctal(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '7' {
			return 0, false
		}
		n = n<<3 | uint64(c-'0')
	}
	return n, true
}

func walkTar(ctx context.Context, r io.ReaderAt, size int64, _ string, fn func(*Member) error) error {
	tr := tar.NewReader(io.NewSectionReader(r, 0, size))
	for n := 0; ; n++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, tar.ErrHeader) && n == 0:
			return ErrNotFormat
		case err != nil:
			return fmt.Errorf("%w: tar: %v", ErrCorrupt, err)
		}
		m := &Member{Name: h.Name, Size: h.Size, CompressedSize: h.Size, Dir: h.Typeflag == tar.TypeDir}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
			m.Open = func() (io.ReadCloser, error) { return io.NopCloser(tr), nil }
		default:
			m.Size, m.CompressedSize = 0, 0 // links, devices, fifos: no content
		}
		if err := fn(m); err != nil {
			return err
		}
	}
}
