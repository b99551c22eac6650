package strip

import (
	"archive/zip"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

// bitWriter writes a DEFLATE bit stream (least significant bit first).
type bitWriter struct {
	buf []byte
	acc uint64
	n   uint
}

func (w *bitWriter) bits(v uint64, n uint) {
	w.acc |= v << w.n
	w.n += n
	for w.n >= 8 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc >>= 8
		w.n -= 8
	}
}

// code writes a Huffman code, which DEFLATE stores most significant bit
// first.
func (w *bitWriter) code(c uint64, n uint) {
	var r uint64
	for i := range n {
		r |= (c >> i & 1) << (n - 1 - i)
	}
	w.bits(r, n)
}

func (w *bitWriter) flush() []byte {
	if w.n > 0 {
		w.buf = append(w.buf, byte(w.acc))
		w.acc, w.n = 0, 0
	}
	return w.buf
}

// bombDeflate returns a raw DEFLATE stream that inflates to 1+258*k zero
// bytes: one dynamic Huffman block in which "copy 258 bytes from distance 1"
// costs two bits, the best ratio DEFLATE allows (about 1032:1). It takes
// milliseconds to build, where compressing a gigabyte would take seconds.
func bombDeflate(k int) []byte {
	w := &bitWriter{}
	w.bits(1, 1)  // BFINAL
	w.bits(2, 2)  // dynamic Huffman
	w.bits(29, 5) // HLIT: 286 literal/length codes
	w.bits(1, 5)  // HDIST: 2 distance codes
	w.bits(14, 4) // HCLEN: 18 code length codes
	// Code length code lengths, in the RFC 1951 order 16 17 18 0 8 7 9 6 10
	// 5 11 4 12 3 13 2 14 1: symbol 18 has length 1, symbols 1 and 2 length 2.
	for _, l := range []uint64{0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2} {
		w.bits(l, 3)
	}
	// Canonical codes: 18 → 0, 1 → 10, 2 → 11.
	sym18 := func(zeros int) { w.code(0, 1); w.bits(uint64(zeros-11), 7) }
	sym1 := func() { w.code(2, 2) }
	sym2 := func() { w.code(3, 2) }
	// Literal/length lengths: 0 → 2, 1…255 → 0, 256 → 2, 257…284 → 0, 285 → 1.
	sym2()
	sym18(138)
	sym18(117)
	sym2()
	sym18(28)
	sym1()
	// Distance lengths: 0 → 1, 1 → 1.
	sym1()
	sym1()
	// Data: literal 0 (code 10), k × (length 258: code 0, distance 1: code
	// 0), end of block (code 11).
	w.code(2, 2)
	for range k {
		w.bits(0, 2)
	}
	w.code(3, 2)
	return w.flush()
}

var bombOnce struct {
	sync.Once
	zip []byte
}

const bombK = (1<<30 - 1) / 258 // inflates to 1,073,741,821 bytes

// bombZip is a real zip bomb: one member, bomb.bin, of about 1 GB of zeros
// in about 1 MB.
func bombZip(t testing.TB) []byte {
	bombOnce.Do(func() {
		data := bombDeflate(bombK)
		size := uint64(1 + 258*bombK)
		zero := make([]byte, 1<<20)
		var crc uint32
		for left := size; left > 0; {
			n := min(left, uint64(len(zero)))
			crc = crc32.Update(crc, crc32.IEEETable, zero[:n])
			left -= n
		}
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		w, err := zw.CreateRaw(&zip.FileHeader{Name: "bomb.bin", Method: zip.Deflate, CRC32: crc,
			CompressedSize64: uint64(len(data)), UncompressedSize64: size})
		if err != nil {
			panic(err)
		}
		w.Write(data)
		zw.Close()
		bombOnce.zip = buf.Bytes()
	})
	return bombOnce.zip
}

func TestBombDeflateInflates(t *testing.T) {
	for _, k := range []int{0, 1, 1000} {
		got, err := io.ReadAll(flate.NewReader(bytes.NewReader(bombDeflate(k))))
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

func list(t testing.TB, data []byte, lim ArchiveLimits) (*zipListing, error) {
	t.Helper()
	return listZip(context.Background(), bytes.NewReader(data), int64(len(data)), lim, nil)
}

func paths(a *zipListing) []string {
	var p []string
	for _, e := range a.Entries {
		p = append(p, e.Path)
	}
	return p
}

func TestListZip(t *testing.T) {
	a, err := list(t, readZip(t, "exe.zip"), ArchiveLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(a); !slices.Equal(got, []string{"readme.txt", "bin/", "bin/evil.exe"}) {
		t.Errorf("entries %q", got)
	}
	if !a.Entries[1].Dir || a.Entries[2].Dir || a.Entries[2].Size != 64 || a.Encrypted {
		t.Errorf("entries %+v", a.Entries)
	}

	a, err = list(t, readZip(t, "nested.zip"), ArchiveLimits{})
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
	a, err = list(t, readZip(t, "nested.zip"), ArchiveLimits{MaxDepth: 1})
	if err != nil || len(a.Entries) != 2 || !slices.Equal(a.Skipped, []string{"docs/more.zip"}) {
		t.Errorf("depth 1: %q skipped %q, %v", paths(a), a.Skipped, err)
	}

	a, err = list(t, readZip(t, "encrypted.zip"), ArchiveLimits{})
	if err != nil || !a.Encrypted || len(a.Entries) != 1 || !a.Entries[0].Encrypted || a.Entries[0].Name != "doc.txt" {
		t.Errorf("encrypted: %+v, %v", a, err)
	}
}

func TestListZipNested4(t *testing.T) {
	z := mkzip(t, "evil.exe", "MZ")
	for i := range 4 {
		z = mkzip(t, "level"+string(rune('1'+i))+".zip", string(z))
	}
	a, err := list(t, z, ArchiveLimits{})
	if err != nil {
		t.Fatal(err)
	}
	// Default depth 3: level4.zip, level3.zip, level2.zip are listed; the
	// zip inside level2.zip is not.
	want := []string{"level4.zip", "level4.zip/level3.zip", "level4.zip/level3.zip/level2.zip"}
	if got := paths(a); !slices.Equal(got, want) || !slices.Equal(a.Skipped, []string{"level4.zip/level3.zip/level2.zip"}) {
		t.Errorf("entries %q skipped %q", got, a.Skipped)
	}
	a, _ = list(t, z, ArchiveLimits{MaxDepth: 5})
	if got := paths(a); len(got) != 5 || got[4] != "level4.zip/level3.zip/level2.zip/level1.zip/evil.exe" {
		t.Errorf("depth 5: %q", got)
	}
}

func TestListZipOddities(t *testing.T) {
	plain := mkzip(t, "a.txt", "a", "b.exe", "MZ")

	// Data in front (self-extractors, junk): offsets are relative.
	sfx := append([]byte("MZ this is a stub\x00\x00"), plain...)
	if a, err := list(t, sfx, ArchiveLimits{}); err != nil || !slices.Equal(paths(a), []string{"a.txt", "b.exe"}) {
		t.Errorf("prefixed: %q %v", paths(a), err)
	}
	// Nested self-extractor-shaped zips are still opened when they start
	// with a zip signature; here the outer one is prefixed.
	outer := append([]byte("junk"), mkzip(t, "in.zip", string(plain))...)
	if a, err := list(t, outer, ArchiveLimits{}); err != nil || len(a.Entries) != 3 {
		t.Errorf("prefixed outer: %q %v", paths(a), err)
	}

	// An end record that under-declares its entries hides nothing.
	hidden := slices.Clone(plain)
	eocd := bytes.LastIndex(hidden, []byte("PK\x05\x06"))
	binary.LittleEndian.PutUint16(hidden[eocd+8:], 1)
	binary.LittleEndian.PutUint16(hidden[eocd+10:], 1)
	if a, err := list(t, hidden, ArchiveLimits{}); err != nil || len(a.Entries) != 2 {
		t.Errorf("under-declared: %q %v", paths(a), err)
	}

	// Not zips, and broken ones.
	for name, data := range map[string][]byte{
		"empty": nil, "text": []byte("hello world, this is not a zip archive at all"),
	} {
		if _, err := list(t, data, ArchiveLimits{}); !errors.Is(err, errNotZip) {
			t.Errorf("%s: %v, want ErrNotZip", name, err)
		}
	}
	cut := slices.Clone(plain)
	cd := bytes.Index(cut, []byte("PK\x01\x02"))
	cut[cd] = 'X'
	if _, err := list(t, cut, ArchiveLimits{}); !errors.Is(err, errCorruptZip) {
		t.Errorf("broken directory: %v, want ErrCorruptZip", err)
	}
	// An empty archive is fine.
	if a, err := list(t, mkzip(t), ArchiveLimits{}); err != nil || len(a.Entries) != 0 {
		t.Errorf("empty zip: %v %v", a, err)
	}

	// Code page 437 names (no UTF-8 flag) are decoded.
	cp := mkzip(t, "x.txt", "x")
	i := bytes.Index(cp, []byte("PK\x01\x02"))
	copy(cp[i+46:], []byte{0x81}) // "x" → "ü" in CP437
	binary.LittleEndian.PutUint16(cp[i+8:], 0)
	if a, err := list(t, cp, ArchiveLimits{}); err != nil || a.Entries[0].Name != "ü.txt" {
		t.Errorf("cp437: %q %v", paths(a), err)
	}
}

func TestListZipLimits(t *testing.T) {
	var files []string
	for i := range 20 {
		files = append(files, strings.Repeat("f", i+1), "x")
	}
	var ae *archiveLimitError
	if _, err := list(t, mkzip(t, files...), ArchiveLimits{MaxEntries: 10}); !errors.As(err, &ae) || ae.Limit != "entries" || ae.Bomb() {
		t.Errorf("entries: %v", err)
	}

	bomb := bombZip(t)
	start := time.Now()
	_, err := list(t, bomb, ArchiveLimits{})
	if !errors.As(err, &ae) || ae.Limit != "size" || !ae.Bomb() || ae.Path != "bomb.bin" {
		t.Errorf("bomb: %v", err)
	}
	t.Logf("bomb (%d bytes, 1 GB declared): %v in %v", len(bomb), err, time.Since(start))
	if _, err := list(t, bomb, ArchiveLimits{MaxSize: 4 << 30}); !errors.As(err, &ae) || ae.Limit != "ratio" {
		t.Errorf("bomb, ratio: %v", err)
	}

	// A bomb inside a zip: the inner zip (1 MB) is inflated, its directory
	// declares the gigabyte.
	nested := mkzip(t, "readme.txt", "hi", "inner.zip", string(bomb))
	start = time.Now()
	if _, err := list(t, nested, ArchiveLimits{}); !errors.As(err, &ae) || ae.Path != "inner.zip/bomb.bin" {
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
	_, err = list(t, liar.Bytes(), ArchiveLimits{MaxSize: 8 << 20})
	if !errors.As(err, &ae) || !ae.Bomb() || ae.Path != "liar.zip" {
		t.Errorf("liar: %v", err)
	}
	t.Logf("lying member: %v in %v", err, time.Since(start))
	// Without a tight size cap, the ratio stops it, long before 20 MB.
	start = time.Now()
	_, err = list(t, liar.Bytes(), ArchiveLimits{MaxRatio: 10})
	if !errors.As(err, &ae) || ae.Limit != "ratio" || ae.Path != "liar.zip" {
		t.Errorf("liar, ratio: %v", err)
	}
	t.Logf("lying member: %v in %v", err, time.Since(start))
}

func TestListZipCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	z := readZip(t, "nested.zip")
	if _, err := listZip(ctx, bytes.NewReader(z), int64(len(z)), ArchiveLimits{}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v", err)
	}
}

// bombMessage attaches the zip bomb as base64.
func bombMessage(t testing.TB) []byte {
	return []byte("From: a@example.org\r\nSubject: bomb\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"zb\"\r\n\r\n" +
		"--zb\r\nContent-Type: text/plain\r\n\r\nopen it\r\n" +
		"--zb\r\nContent-Type: application/zip; name=\"report.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64(bombZip(t)) + "\r\n--zb--\r\n")
}

func TestZipBombVerdict(t *testing.T) {
	msg := bombMessage(t)
	for _, tc := range []struct {
		on     string
		want   filters.Action
		reason string
	}{
		{"", filters.Reject, "rejected: report.zip (zip bomb: more than 512 MiB uncompressed (at bomb.bin))"},
		{"quarantine", filters.Reject, "quarantined: report.zip (zip bomb"},
		{"strip", filters.Replace, "stripped: report.zip (zip bomb"},
		{"tempfail", filters.Retry, "deferred: report.zip (zip bomb"},
		{"pass", filters.Pass, ""},
	} {
		src := `filter "strip" "z" {
  archive_filenames = ["*.exe"]
`
		if tc.on != "" {
			src += `  on_archive_limit = "` + tc.on + `"` + "\n"
		}
		f := mustFilter(t, src+"}")
		start := time.Now()
		v, out := run(t, f, msg)
		d := time.Since(start)
		t.Logf("on_archive_limit %q: %v %q in %v", tc.on, v.Action, v.Reason, d)
		if v.Action != tc.want || !strings.HasPrefix(v.Reason, tc.reason) {
			t.Errorf("on_archive_limit %q: %v %q", tc.on, v.Action, v.Reason)
		}
		if d > hostileBudget {
			t.Errorf("took %v", d)
		}
		if tc.want == filters.Replace {
			d, _ := f.decide(context.Background(), bytes.NewReader(msg), int64(len(msg)))
			checkSplice(t, msg, out, d.Matches)
		}
	}
}
