package archive

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/archive/archivetest"
)

func TestBombDeflateInflates(t *testing.T) {
	for _, k := range []int{0, 1, 1000} {
		got, err := io.ReadAll(flate.NewReader(bytes.NewReader(archivetest.Deflate(k))))
		if err != nil || len(got) != 1+258*k || bytes.ContainsFunc(got, func(r rune) bool { return r != 0 }) {
			t.Errorf("k=%d: %d bytes, %v", k, len(got), err)
		}
	}
}

func mkzip(t testing.TB, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for i := 0; i < len(files); i += 2 {
		w, err := zw.Create(files[i])
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(files[i+1]))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readZip(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "zip", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func list(t testing.TB, data []byte, lim Limits) (*Listing, error) {
	t.Helper()
	return List(context.Background(), bytes.NewReader(data), int64(len(data)), "", lim, nil)
}

func paths(a *Listing) []string {
	var p []string
	for _, e := range a.Entries {
		p = append(p, e.Path)
	}
	return p
}

func TestListZip(t *testing.T) {
	a, err := list(t, readZip(t, "exe.zip"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(a); !slices.Equal(got, []string{"readme.txt", "bin/", "bin/evil.exe"}) {
		t.Errorf("entries %q", got)
	}
	if !a.Entries[1].Dir || a.Entries[2].Dir || a.Entries[2].Size != 64 || a.Encrypted {
		t.Errorf("entries %+v", a.Entries)
	}

	a, err = list(t, readZip(t, "nested.zip"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(a); !slices.Equal(got, []string{"docs/notes.txt", "docs/more.zip", "docs/more.zip/payload.js"}) {
		t.Errorf("nested entries %q", got)
	}
	if a.Entries[2].Depth != 1 {
		t.Errorf("depth %d", a.Entries[2].Depth)
	}
	// archive_depth 1: the archive itself only; the inner zip is skipped.
	a, err = list(t, readZip(t, "nested.zip"), Limits{MaxDepth: 1})
	if err != nil || len(a.Entries) != 2 || !slices.Equal(a.Deep, []string{"docs/more.zip"}) {
		t.Errorf("depth 1: %q too deep %q, %v", paths(a), a.Deep, err)
	}

	a, err = list(t, readZip(t, "encrypted.zip"), Limits{})
	if err != nil || !a.Encrypted || len(a.Entries) != 1 || !a.Entries[0].Encrypted || a.Entries[0].Name != "doc.txt" {
		t.Errorf("encrypted: %+v, %v", a, err)
	}
}

func TestListZipNested4(t *testing.T) {
	z := mkzip(t, "evil.exe", "MZ")
	for i := range 4 {
		z = mkzip(t, "level"+string(rune('1'+i))+".zip", string(z))
	}
	a, err := list(t, z, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// Default depth 3: level4.zip, level3.zip, level2.zip are listed; the
	// zip inside level2.zip is not.
	want := []string{"level4.zip", "level4.zip/level3.zip", "level4.zip/level3.zip/level2.zip"}
	if got := paths(a); !slices.Equal(got, want) || !slices.Equal(a.Deep, []string{"level4.zip/level3.zip/level2.zip"}) {
		t.Errorf("entries %q too deep %q", got, a.Deep)
	}
	a, _ = list(t, z, Limits{MaxDepth: 5})
	if got := paths(a); len(got) != 5 || got[4] != "level4.zip/level3.zip/level2.zip/level1.zip/evil.exe" {
		t.Errorf("depth 5: %q", got)
	}
}

func TestListZipOddities(t *testing.T) {
	plain := mkzip(t, "a.txt", "a", "b.exe", "MZ")

	// Data in front (self-extractors, junk): offsets are relative.
	sfx := append([]byte("MZ this is a stub\x00\x00"), plain...)
	if a, err := list(t, sfx, Limits{}); err != nil || !slices.Equal(paths(a), []string{"a.txt", "b.exe"}) {
		t.Errorf("prefixed: %q %v", paths(a), err)
	}
	// Nested self-extractor-shaped zips are still opened when they start
	// with a zip signature; here the outer one is prefixed.
	outer := append([]byte("junk"), mkzip(t, "in.zip", string(plain))...)
	if a, err := list(t, outer, Limits{}); err != nil || len(a.Entries) != 3 {
		t.Errorf("prefixed outer: %q %v", paths(a), err)
	}

	// An end record that under-declares its entries hides nothing.
	hidden := slices.Clone(plain)
	eocd := bytes.LastIndex(hidden, []byte("PK\x05\x06"))
	binary.LittleEndian.PutUint16(hidden[eocd+8:], 1)
	binary.LittleEndian.PutUint16(hidden[eocd+10:], 1)
	if a, err := list(t, hidden, Limits{}); err != nil || len(a.Entries) != 2 {
		t.Errorf("under-declared: %q %v", paths(a), err)
	}

	// Not zips, and broken ones.
	for name, data := range map[string][]byte{
		"empty": nil, "text": []byte("hello world, this is not a zip archive at all"),
	} {
		if _, err := list(t, data, Limits{}); !errors.Is(err, ErrNotFormat) {
			t.Errorf("%s: %v, want ErrNotFormat", name, err)
		}
	}
	cut := slices.Clone(plain)
	cd := bytes.Index(cut, []byte("PK\x01\x02"))
	cut[cd] = 'X'
	if a, err := list(t, cut, Limits{}); err != nil || len(a.Unreadable) != 1 || a.Unreadable[0].Format != "zip" || a.Unreadable[0].Path != "" {
		t.Errorf("broken directory: %+v, %v, want it unreadable", a, err)
	}
	// A local header without an end record (cut short) is a broken zip,
	// not something else.
	if a, err := list(t, plain[:len(plain)-30], Limits{}); err != nil || len(a.Unreadable) != 1 {
		t.Errorf("truncated: %+v, %v, want it unreadable", a, err)
	}
	// An empty archive is fine.
	if a, err := list(t, mkzip(t), Limits{}); err != nil || len(a.Entries) != 0 {
		t.Errorf("empty zip: %v %v", a, err)
	}

	// Code page 437 names (no UTF-8 flag) are decoded.
	cp := mkzip(t, "x.txt", "x")
	i := bytes.Index(cp, []byte("PK\x01\x02"))
	copy(cp[i+46:], []byte{0x81}) // "x" → "ü" in CP437
	binary.LittleEndian.PutUint16(cp[i+8:], 0)
	if a, err := list(t, cp, Limits{}); err != nil || a.Entries[0].Name != "ü.txt" {
		t.Errorf("cp437: %q %v", paths(a), err)
	}
}

func TestListZipLimits(t *testing.T) {
	var files []string
	for i := range 20 {
		files = append(files, strings.Repeat("f", i+1), "x")
	}
	var ae *LimitError
	if _, err := list(t, mkzip(t, files...), Limits{MaxEntries: 10}); !errors.As(err, &ae) || ae.Limit != "entries" || ae.Bomb() {
		t.Errorf("entries: %v", err)
	}

	bomb := archivetest.Zip()
	start := time.Now()
	_, err := list(t, bomb, Limits{})
	if !errors.As(err, &ae) || ae.Limit != "size" || !ae.Bomb() || ae.Path != "bomb.bin" {
		t.Errorf("bomb: %v", err)
	}
	t.Logf("bomb (%d bytes, 1 GB declared): %v in %v", len(bomb), err, time.Since(start))
	if _, err := list(t, bomb, Limits{MaxSize: 4 << 30}); !errors.As(err, &ae) || ae.Limit != "ratio" {
		t.Errorf("bomb, ratio: %v", err)
	}

	// A bomb inside a zip: the inner zip (1 MB) is inflated, its directory
	// declares the gigabyte.
	nested := mkzip(t, "readme.txt", "hi", "inner.zip", string(bomb))
	start = time.Now()
	if _, err := list(t, nested, Limits{}); !errors.As(err, &ae) || ae.Path != "inner.zip/bomb.bin" {
		t.Errorf("nested bomb: %v", err)
	}
	t.Logf("nested bomb: %v", time.Since(start))

	// A member that lies about its size: it declares 100 bytes, starts like
	// a zip, and inflates to 20 MB. Inflating stops at the size cap.
	var body bytes.Buffer
	fw, _ := flate.NewWriter(&body, flate.BestSpeed)
	fw.Write([]byte("PK\x03\x04"))
	fw.Write(make([]byte, 20<<20))
	fw.Close()
	var liar bytes.Buffer
	zw := zip.NewWriter(&liar)
	w, _ := zw.CreateRaw(&zip.FileHeader{Name: "liar.zip", Method: zip.Deflate, CompressedSize64: uint64(body.Len()), UncompressedSize64: 100})
	w.Write(body.Bytes())
	zw.Close()
	start = time.Now()
	_, err = list(t, liar.Bytes(), Limits{MaxSize: 8 << 20})
	if !errors.As(err, &ae) || !ae.Bomb() || ae.Path != "liar.zip" {
		t.Errorf("liar: %v", err)
	}
	t.Logf("lying member: %v in %v", err, time.Since(start))
	// Without a tight size cap, the ratio stops it, long before 20 MB.
	start = time.Now()
	_, err = list(t, liar.Bytes(), Limits{MaxRatio: 10})
	if !errors.As(err, &ae) || ae.Limit != "ratio" || ae.Path != "liar.zip" {
		t.Errorf("liar, ratio: %v", err)
	}
	t.Logf("lying member: %v in %v", err, time.Since(start))
}

func TestListZipCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	z := readZip(t, "nested.zip")
	if _, err := List(ctx, bytes.NewReader(z), int64(len(z)), "", Limits{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v", err)
	}
}

// checkListing checks what every listing must hold, whatever the input:
// the limits kept, and entries a reader could have produced.
func checkListing(t *testing.T, a *Listing, err error, lim Limits) {
	t.Helper()
	if a == nil {
		t.Fatal("nil Listing")
	}
	var ae *LimitError
	switch {
	case err == nil, errors.Is(err, ErrNotFormat), errors.As(err, &ae):
	default:
		t.Fatalf("unexpected error %v", err)
	}
	if len(a.Entries) > lim.MaxEntries {
		t.Fatalf("%d entries listed", len(a.Entries))
	}
	for _, e := range a.Entries {
		if e.Depth >= lim.MaxDepth || !strings.HasSuffix(e.Path, e.Name) || len(e.Name) > maxName {
			t.Fatalf("entry %+v", e)
		}
	}
}

// fuzzLimits keep every input cheap while still reaching the caps.
var fuzzLimits = Limits{MaxDepth: 3, MaxEntries: 64, MaxSize: 1 << 20, MaxRatio: 100}

// FuzzListZip: the lister never panics on a zip, stays within its limits,
// and lists only what a valid reader could (names of a bounded number).
func FuzzListZip(f *testing.F) {
	for _, name := range []string{"exe.zip", "nested.zip", "encrypted.zip"} {
		f.Add(readZip(f, name))
	}
	f.Add(mkzip(f, "a", "b", "in.zip", string(mkzip(f, "x.exe", "MZ"))))
	f.Add([]byte("PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := List(context.Background(), bytes.NewReader(data), int64(len(data)), "", fuzzLimits, nil)
		checkListing(t, a, err, fuzzLimits)
	})
}

// The end record is found wherever a comment puts it, and a fake record
// inside the comment (one whose own comment would run past the end) is not
// taken for it.
func TestZipEndRecord(t *testing.T) {
	plain := mkzip(t, "a.txt", "a", "b.exe", "MZ")
	withComment := func(comment []byte) []byte {
		z := slices.Clone(plain)
		binary.LittleEndian.PutUint16(z[len(z)-2:], uint16(len(comment)))
		return append(z, comment...)
	}
	fake := func(n int) []byte { // a record at the comment's start claiming a comment too long
		c := make([]byte, n)
		copy(c, "PK\x05\x06")
		binary.LittleEndian.PutUint16(c[20:], 0xffff)
		return c
	}
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"no comment", plain},
		{"short comment", withComment([]byte("hello"))},
		{"comment across the first KiB", withComment(bytes.Repeat([]byte("c"), 1100))},
		{"longest comment", withComment(bytes.Repeat([]byte("c"), 65535))},
		{"fake record in a short comment", withComment(fake(100))},
		{"fake record in a long comment", withComment(fake(40000))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if a, err := list(t, tc.data, Limits{}); err != nil || !slices.Equal(paths(a), []string{"a.txt", "b.exe"}) {
				t.Errorf("%q %v", paths(a), err)
			}
		})
	}
}
