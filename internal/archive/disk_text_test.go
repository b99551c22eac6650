package archive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// Helpers shared by the tests of the formats of this file's neighbours
// (iso9660, udf, tnef, uuencode, binhex).

// walked is a member as a test sees it: its name and content.
type walked struct {
	Name    string
	Size    int64
	Dir     bool
	Content string
	OpenErr error
}

// walkAll walks b with format f and reads every member.
func walkAll(t testing.TB, f *Format, b []byte, name string) ([]walked, error) {
	t.Helper()
	var out []walked
	err := f.Walk(context.Background(), bytes.NewReader(b), int64(len(b)), name, func(m *Member) error {
		w := walked{Name: m.Name, Size: m.Size, Dir: m.Dir}
		if m.Open != nil && !m.Dir {
			rc, err := m.Open()
			if err == nil {
				var c []byte
				c, err = io.ReadAll(io.LimitReader(rc, 64<<20))
				rc.Close()
				w.Content = string(c)
			}
			w.OpenErr = err
		}
		out = append(out, w)
		return nil
	})
	return out, err
}

func formatNamed(t testing.TB, name string) *Format {
	t.Helper()
	for _, f := range Formats() {
		if f.Name == name {
			return f
		}
	}
	t.Fatalf("format %s not registered", name)
	return nil
}

// fuzzWalk is the body of the formats' fuzz targets: sniffing and walking
// arbitrary input, and reading every member, must end without a panic and
// with either success or one of the package's errors.
func fuzzWalk(t *testing.T, f *Format, b []byte) {
	head := b[:min(len(b), HeadLen)]
	f.Sniff(head, bytes.NewReader(b), int64(len(b)), "")
	var read int64
	err := f.Walk(context.Background(), bytes.NewReader(b), int64(len(b)), "", func(m *Member) error {
		if m.Open == nil || m.Dir {
			return nil
		}
		rc, err := m.Open()
		if err != nil {
			return nil
		}
		defer rc.Close()
		// Bounded as List bounds it: a member may claim gigabytes.
		n, err := io.Copy(io.Discard, io.LimitReader(rc, 16<<20))
		read += n
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
			t.Fatalf("reading %q: unexpected error %v", m.Name, err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFormat) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrEncrypted) {
		t.Fatalf("walk: unexpected error %v", err)
	}
}
