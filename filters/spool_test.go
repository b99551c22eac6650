package filters

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// pattern returns n deterministic bytes, different for different seeds.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte((i+int(seed))%26)
	}
	return b
}

func readBody(t *testing.T, b Body) []byte {
	t.Helper()
	r, err := b.Open()
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return data
}

// dirNames lists dir's entries.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s): %v", dir, err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func assertDirEmpty(t *testing.T, dir string) {
	t.Helper()
	if names := dirNames(t, dir); len(names) != 0 {
		t.Fatalf("%s not empty: %v", dir, names)
	}
}

// writeChunks writes data to w in pieces of chunk bytes (all at once when
// chunk <= 0).
func writeChunks(t *testing.T, w io.Writer, data []byte, chunk int) {
	t.Helper()
	if chunk <= 0 {
		chunk = len(data) + 1
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		m, err := w.Write(data[:n])
		if err != nil || m != n {
			t.Fatalf("Write(%d bytes) = %d, %v", n, m, err)
		}
		data = data[n:]
	}
}

func TestSpoolThreshold(t *testing.T) {
	tests := []struct {
		name     string
		limit    int64
		size     int
		chunk    int
		wantFile bool
	}{
		{"empty", 16, 0, 0, false},
		{"below limit", 16, 15, 0, false},
		{"at limit", 16, 16, 0, false},
		{"at limit byte by byte", 16, 16, 1, false},
		{"one above limit", 16, 17, 0, true},
		{"above limit in chunks", 16, 100, 7, true},
		{"crossing in the first write", 16, 1000, 0, true},
		{"negative limit: always a file", -1, 1, 0, true},
		{"negative limit, empty body: no file", -1, 0, 0, false},
		{"zero limit means the default", 0, 4096, 100, false},
		{"default limit crossed", 0, DefaultMemoryLimit + 1, 4096, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sp := &Spool{Dir: dir, MemoryLimit: tt.limit}
			want := pattern(tt.size, 3)
			w := sp.NewWriter()
			writeChunks(t, w, want, tt.chunk)
			if tt.wantFile && w.mem.chunks != nil {
				t.Errorf("writer keeps %d chunks in memory after moving to a file", len(w.mem.chunks))
			}
			b, err := w.Finish()
			if err != nil {
				t.Fatalf("Finish: %v", err)
			}
			names := dirNames(t, dir)
			if tt.wantFile {
				if len(names) != 1 || !strings.HasPrefix(names[0], "popgate-spool-") {
					t.Fatalf("want one spool file in Dir, have %v", names)
				}
				fi, err := os.Stat(filepath.Join(dir, names[0]))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("spool file mode %v, want 0600", fi.Mode().Perm())
				}
				if fi.Size() != int64(tt.size) {
					t.Errorf("spool file has %d bytes, want %d", fi.Size(), tt.size)
				}
			} else if len(names) != 0 {
				t.Fatalf("body within the limit made files: %v", names)
			}
			if b.Size() != int64(tt.size) {
				t.Errorf("Size() = %d, want %d", b.Size(), tt.size)
			}
			if got := readBody(t, b); !bytes.Equal(got, want) {
				t.Errorf("content differs: got %d bytes, want %d", len(got), len(want))
			}
			if err := b.Remove(); err != nil {
				t.Fatalf("Remove: %v", err)
			}
			assertDirEmpty(t, dir)
			if err := b.Remove(); err != nil {
				t.Errorf("second Remove: %v", err)
			}
			if r, err := b.Open(); err == nil {
				r.Close()
				t.Errorf("Open after Remove succeeded")
			}
			// The writer is done: more writes and a second Finish fail.
			if _, err := w.Write([]byte("x")); err == nil {
				t.Errorf("Write after Finish succeeded")
			}
			if _, err := w.Finish(); err == nil {
				t.Errorf("second Finish succeeded")
			}
			w.Abort() // no-op after Finish
		})
	}
}

// TestSpoolMemoryNeverExceedsLimit checks the memory the buffer holds,
// which is what the limit bounds (in whole chunks).
func TestSpoolMemoryNeverExceedsLimit(t *testing.T) {
	const limit = 3*memChunkSize + 1000
	w := (&Spool{Dir: t.TempDir(), MemoryLimit: limit}).NewWriter()
	defer w.Abort()
	held := func() int {
		n := 0
		for _, c := range w.mem.chunks {
			n += cap(c)
		}
		return n
	}
	for i := 0; i < limit; i += 1001 {
		n := min(1001, limit-i)
		if _, err := w.Write(pattern(n, byte(i))); err != nil {
			t.Fatal(err)
		}
		if h := held(); h > (i+n+memChunkSize-1)/memChunkSize*memChunkSize {
			t.Fatalf("after %d bytes the buffer holds %d bytes, more than the chunks they need", i+n, h)
		}
	}
	if w.f != nil || w.size != limit || held() != 4*memChunkSize {
		t.Fatalf("want %d bytes in 4 chunks and no file, have %d bytes in %d, file %v", limit, w.size, held(), w.f != nil)
	}
}

func TestNilAndZeroSpool(t *testing.T) {
	for _, sp := range []*Spool{nil, {}} {
		w := sp.NewWriter()
		if w.limit != DefaultMemoryLimit || w.dir != "" {
			t.Errorf("%v: limit %d dir %q, want the defaults", sp, w.limit, w.dir)
		}
		writeChunks(t, w, []byte("hello"), 0)
		b, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		if got := readBody(t, b); string(got) != "hello" {
			t.Errorf("content %q", got)
		}
		b.Remove()
	}
}

// spoolBodies returns the same content as a memory body and a file body.
func spoolBodies(t *testing.T, dir string, data []byte) map[string]Body {
	t.Helper()
	out := map[string]Body{}
	for name, limit := range map[string]int64{"memory": int64(len(data)), "file": -1} {
		w := (&Spool{Dir: dir, MemoryLimit: limit}).NewWriter()
		writeChunks(t, w, data, 1000)
		b, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	if _, ok := out["file"].(*fileBody); !ok {
		t.Fatalf("file body is %T", out["file"])
	}
	if _, ok := out["memory"].(*memBody); !ok {
		t.Fatalf("memory body is %T", out["memory"])
	}
	return out
}

func TestSpoolManyOpensAreIndependent(t *testing.T) {
	dir := t.TempDir()
	data := pattern(10000, 7)
	for name, b := range spoolBodies(t, dir, data) {
		t.Run(name, func(t *testing.T) {
			defer b.Remove()
			const n = 10
			var rs []io.ReadCloser
			got := make([]bytes.Buffer, n)
			for range n {
				r, err := b.Open()
				if err != nil {
					t.Fatal(err)
				}
				rs = append(rs, r)
			}
			// Interleave reads of different sizes: each reader has its own
			// position.
			buf := make([]byte, 97)
			for active := n; active > 0; {
				active = 0
				for i, r := range rs {
					m, err := r.Read(buf[:1+i*9])
					got[i].Write(buf[:m])
					if err == nil {
						active++
					} else if err != io.EOF {
						t.Fatalf("reader %d: %v", i, err)
					}
				}
			}
			for i := range got {
				if !bytes.Equal(got[i].Bytes(), data) {
					t.Errorf("reader %d read %d bytes that differ from the body", i, got[i].Len())
				}
			}
			// Closing one reader does not disturb another.
			rs[0].Close()
			if _, err := rs[0].Read(buf); err == nil {
				t.Errorf("Read on a closed reader succeeded")
			}
			r, err := b.Open()
			if err != nil {
				t.Fatal(err)
			}
			if ra, ok := r.(io.ReaderAt); !ok {
				t.Errorf("reader is not an io.ReaderAt")
			} else {
				p := make([]byte, 10)
				if _, err := ra.ReadAt(p, 5000); err != nil || !bytes.Equal(p, data[5000:5010]) {
					t.Errorf("ReadAt(5000) = %q, %v", p, err)
				}
			}
			r.Close()
		})
	}
	assertDirEmpty(t, dir)
}

func TestSpoolConcurrentOpens(t *testing.T) {
	dir := t.TempDir()
	data := pattern(200000, 11)
	want := sha256.Sum256(data)
	for name, b := range spoolBodies(t, dir, data) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			errs := make(chan error, 32)
			for range 32 {
				wg.Go(func() {
					r, err := b.Open()
					if err != nil {
						errs <- err
						return
					}
					defer r.Close()
					h := sha256.New()
					if _, err := io.Copy(h, r); err != nil {
						errs <- err
						return
					}
					if [32]byte(h.Sum(nil)) != want {
						errs <- errors.New("concurrent reader got different content")
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if err := b.Remove(); err != nil {
				t.Fatal(err)
			}
		})
	}
	assertDirEmpty(t, dir)
}

// TestSpoolRemoveWhileReading: readers racing a Remove either read the whole
// body or fail; they never see wrong bytes, and the file is gone afterwards.
func TestSpoolRemoveWhileReading(t *testing.T) {
	dir := t.TempDir()
	data := pattern(300000, 5)
	for name, b := range spoolBodies(t, dir, data) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			start := make(chan struct{})
			bad := make(chan string, 16)
			for range 16 {
				wg.Go(func() {
					<-start
					r, err := b.Open()
					if err != nil {
						return // removed before we opened: fine
					}
					defer r.Close()
					got, err := io.ReadAll(r)
					if err == nil && !bytes.Equal(got, data) {
						bad <- fmt.Sprintf("reader got %d wrong bytes without an error", len(got))
					}
					if err != nil && !bytes.Equal(got, data[:len(got)]) {
						bad <- "reader got wrong bytes before its error"
					}
				})
			}
			close(start)
			if err := b.Remove(); err != nil {
				t.Error(err)
			}
			wg.Wait()
			close(bad)
			for s := range bad {
				t.Error(s)
			}
		})
	}
	assertDirEmpty(t, dir)
}

func TestSpoolAbort(t *testing.T) {
	tests := []struct {
		name    string
		limit   int64
		written int
		// wantFile: the writer had a temp file before Abort.
		wantFile bool
	}{
		{"nothing written", 10, 0, false},
		{"partial, in memory", 100, 50, false},
		{"partial, in a file", 10, 5000, true},
		{"partial, file, buffered bytes unflushed", 10, 11, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			w := (&Spool{Dir: dir, MemoryLimit: tt.limit}).NewWriter()
			writeChunks(t, w, pattern(tt.written, 1), 333)
			if got := len(dirNames(t, dir)); got != map[bool]int{true: 1}[tt.wantFile] {
				t.Fatalf("before Abort: %d files in Dir, wantFile %v", got, tt.wantFile)
			}
			w.Abort()
			assertDirEmpty(t, dir)
			w.Abort() // twice is fine
			if _, err := w.Write([]byte("x")); err == nil {
				t.Errorf("Write after Abort succeeded")
			}
			if b, err := w.Finish(); err == nil {
				b.Remove()
				t.Errorf("Finish after Abort succeeded")
			}
			assertDirEmpty(t, dir)
		})
	}
}

func TestSpoolAbortAfterFinishKeepsBody(t *testing.T) {
	dir := t.TempDir()
	w := (&Spool{Dir: dir, MemoryLimit: 1}).NewWriter()
	writeChunks(t, w, []byte("some body"), 0)
	b, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	w.Abort()
	w.Abort()
	if got := readBody(t, b); string(got) != "some body" {
		t.Fatalf("after Abort the finished body reads %q", got)
	}
	if len(dirNames(t, dir)) != 1 {
		t.Fatalf("Abort after Finish removed the body's file")
	}
	b.Remove()
	assertDirEmpty(t, dir)
}

var errInjected = errors.New("injected write error")

// failAfter lets n bytes through to w, then fails.
type failAfter struct {
	w io.Writer
	n int
}

func (f *failAfter) Write(p []byte) (int, error) {
	if len(p) > f.n {
		m, _ := f.w.Write(p[:f.n])
		f.n = 0
		return m, errInjected
	}
	f.n -= len(p)
	return f.w.Write(p)
}

func TestSpoolWriteErrorsLeaveNothing(t *testing.T) {
	tests := []struct {
		name  string
		limit int64
		size  int
		chunk int
		pass  int // bytes the file accepts before failing
		// failAt: "write" when a Write must fail, "finish" when only Finish
		// can see the error (the bytes were still buffered).
		failAt string
	}{
		{"fails while writing", 1000, 1 << 20, 4096, 100000, "write"},
		{"fails at once on a big write", 10, 1 << 20, 0, 0, "write"},
		{"fails on the final flush", 10, 5000, 100, 0, "finish"},
		{"fails on the final flush after partial success", 10, 40000, 1000, 35000, "finish"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			sp := &Spool{Dir: dir, MemoryLimit: tt.limit}
			sp.wrap = func(w io.Writer) io.Writer { return &failAfter{w: w, n: tt.pass} }
			w := sp.NewWriter()
			data := pattern(tt.size, 9)
			chunk := tt.chunk
			if chunk == 0 {
				chunk = len(data)
			}
			var werr error
			for off := 0; off < len(data) && werr == nil; off += chunk {
				_, werr = w.Write(data[off:min(off+chunk, len(data))])
			}
			switch tt.failAt {
			case "write":
				if werr == nil {
					t.Fatalf("no Write failed")
				}
				checkSpoolErr(t, werr)
				// The writer already cleaned up, before any Abort.
				assertDirEmpty(t, dir)
				if _, err := w.Write([]byte("x")); !errors.Is(err, errInjected) {
					t.Errorf("Write after the error = %v, want the same error", err)
				}
				if b, err := w.Finish(); b != nil || !errors.Is(err, errInjected) {
					t.Errorf("Finish after the error = %v, %v", b, err)
				}
			case "finish":
				if werr != nil {
					t.Fatalf("Write failed early: %v", werr)
				}
				b, err := w.Finish()
				if b != nil || err == nil {
					t.Fatalf("Finish = %v, %v; want an error", b, err)
				}
				checkSpoolErr(t, err)
			}
			w.Abort()
			assertDirEmpty(t, dir)
		})
	}
}

func checkSpoolErr(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, errInjected) {
		t.Errorf("error %v does not wrap the write error", err)
	}
	if !strings.HasPrefix(err.Error(), "spool ") || !strings.Contains(err.Error(), "popgate-spool-") {
		t.Errorf("error %q lacks the spool file context", err)
	}
}

// TestSpoolDirRemoved: the spool directory disappears while a body is being
// written.
func TestSpoolDirRemoved(t *testing.T) {
	t.Run("before the switch to a file", func(t *testing.T) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "spool")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		w := (&Spool{Dir: dir, MemoryLimit: 100}).NewWriter()
		writeChunks(t, w, pattern(60, 0), 0)
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		_, err := w.Write(pattern(60, 0))
		if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "spool: create temporary file") {
			t.Fatalf("Write = %v, want a spool create error", err)
		}
		if w.mem.chunks != nil {
			t.Errorf("failed writer still holds %d chunks", len(w.mem.chunks))
		}
		if _, err := w.Finish(); err == nil {
			t.Errorf("Finish after a failed Write succeeded")
		}
		w.Abort()
		assertDirEmpty(t, parent)
	})
	t.Run("after the file was created", func(t *testing.T) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "spool")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		w := (&Spool{Dir: dir, MemoryLimit: 10}).NewWriter()
		writeChunks(t, w, pattern(100, 0), 0)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		// The open file lives on; the body is whole and Remove copes with
		// the file being gone already.
		writeChunks(t, w, pattern(100, 1), 0)
		b, err := w.Finish()
		if err != nil {
			t.Fatalf("Finish: %v", err)
		}
		if got := readBody(t, b); !bytes.Equal(got, append(pattern(100, 0), pattern(100, 1)...)) {
			t.Errorf("content differs")
		}
		if err := b.Remove(); err != nil {
			t.Errorf("Remove: %v", err)
		}
		assertDirEmpty(t, parent)
	})
}

// TestSpoolHugeBodyBoundedHeap writes 50 MB and checks that the writer
// allocated only about its memory limit, not the body.
func TestSpoolHugeBodyBoundedHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 50 MB")
	}
	const (
		total = 50 << 20
		chunk = 64 << 10
		limit = 1 << 20
		bound = 8 << 20 // generous: the limit, the file buffer, slack
	)
	dir := t.TempDir()
	buf := make([]byte, chunk)
	h := sha256.New()

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	w := (&Spool{Dir: dir, MemoryLimit: limit}).NewWriter()
	for i := range total / chunk {
		for j := range buf {
			buf[j] = byte(i + j)
		}
		h.Write(buf)
		if _, err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	b, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	t.Logf("writing %d MB allocated %d bytes", total>>20, after.TotalAlloc-before.TotalAlloc)
	if got := after.TotalAlloc - before.TotalAlloc; got > bound {
		t.Errorf("writing %d MB allocated %d bytes, want at most %d", total>>20, got, bound)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc > before.HeapAlloc && after.HeapAlloc-before.HeapAlloc > bound {
		t.Errorf("heap grew by %d bytes while holding a %d MB body", after.HeapAlloc-before.HeapAlloc, total>>20)
	}

	if b.Size() != total {
		t.Errorf("Size = %d", b.Size())
	}
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	h2 := sha256.New()
	if _, err := io.Copy(h2, r); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		t.Errorf("read-back content differs")
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	assertDirEmpty(t, dir)
}

func TestBytesBody(t *testing.T) {
	data := []byte("From: a\r\n\r\nhi\r\n")
	b := BytesBody(data)
	if b.Size() != int64(len(data)) {
		t.Errorf("Size = %d", b.Size())
	}
	r1, _ := b.Open()
	r2, _ := b.Open()
	p := make([]byte, 4)
	io.ReadFull(r1, p)
	if got, _ := io.ReadAll(r2); !bytes.Equal(got, data) {
		t.Errorf("second reader read %q", got)
	}
	if rest, _ := io.ReadAll(r1); string(p)+string(rest) != string(data) {
		t.Errorf("first reader read %q%q", p, rest)
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if _, err := b.Open(); err == nil {
		t.Errorf("Open after Remove succeeded")
	}
	if b.Size() != int64(len(data)) {
		t.Errorf("Size after Remove = %d", b.Size())
	}
}

// A follower reads the body as it is written, in memory and once it moved
// to a file, and ends with io.EOF only after Finish; an aborted body ends
// it with an error.
func TestSpoolFollow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		abort bool
	}{
		{"memory", 1 << 20, false},
		{"file", 1000, false},
		{"file from the start", -1, false},
		{"aborted in memory", 1 << 20, true},
		{"aborted in a file", 1000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Spool{Dir: t.TempDir(), MemoryLimit: tc.limit}
			w := s.NewWriter()
			r := w.Follow()
			want := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\r\n"), 5000)
			type result struct {
				b   []byte
				err error
			}
			got := make(chan result, 1)
			go func() {
				var b []byte
				buf := make([]byte, 777)
				for {
					n, err := r.Read(buf)
					b = append(b, buf[:n]...)
					if err != nil {
						got <- result{b, err}
						return
					}
				}
			}()
			for off := 0; off < len(want); off += 3001 {
				if _, err := w.Write(want[off:min(off+3001, len(want))]); err != nil {
					t.Fatal(err)
				}
			}
			if tc.abort {
				w.Abort()
				res := <-got
				if res.err == nil || res.err == io.EOF {
					t.Fatalf("follower of an aborted body: %d bytes, %v", len(res.b), res.err)
				}
				return
			}
			b, err := w.Finish()
			if err != nil {
				t.Fatal(err)
			}
			res := <-got
			if res.err != io.EOF || !bytes.Equal(res.b, want) {
				t.Fatalf("follower read %d bytes (want %d), %v", len(res.b), len(want), res.err)
			}
			if err := b.Remove(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A memory body's chunks go back to the pool only when the body is removed
// and its last reader closed: a reader open across Remove, and a follower,
// read the original bytes while new bodies take chunks from the pool.
func TestSpoolChunksOutliveReaders(t *testing.T) {
	sp := &Spool{Dir: t.TempDir()}
	write := func(data []byte, follow bool) (Body, io.Reader) {
		w := sp.NewWriter()
		var f io.Reader
		if follow {
			f = w.Follow()
		}
		writeChunks(t, w, data, 5000)
		b, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return b, f
	}
	want := pattern(5*memChunkSize+17, 1)
	a, follower := write(want, true)
	b, _ := write(want, false)
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	a.Remove()
	b.Remove()
	for i := range 50 { // reuse whatever went back to the pool
		other, _ := write(pattern(5*memChunkSize, byte(i+2)), false)
		other.Remove()
	}
	for name, rd := range map[string]io.Reader{"reader open across Remove": r, "follower": follower} {
		if got, err := io.ReadAll(rd); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (equal: %v), %v", name, len(got), bytes.Equal(got, want), err)
		}
	}
	r.Close()
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Error("a closed reader still reads")
	}
}

// countingWriter records the sizes of the writes it gets.
type countingWriter struct {
	bytes.Buffer
	writes []int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, len(p))
	return w.Buffer.Write(p)
}

// io.Copy from a body reader (WriteTo) gives the writer a body in memory
// straight from its chunks, one write each, from where the reader stands;
// a body in a file whole.
func TestSpoolBodyWriteTo(t *testing.T) {
	data := pattern(200_000, 3)
	for _, tc := range []struct {
		name  string
		limit int64
		file  bool
	}{{"memory", 1 << 20, false}, {"file", 1000, true}} {
		s := &Spool{Dir: t.TempDir(), MemoryLimit: tc.limit}
		w := s.NewWriter()
		writeChunks(t, w, data, 30_000)
		b, err := w.Finish()
		if err != nil {
			t.Fatal(err)
		}
		r, err := b.Open()
		if err != nil {
			t.Fatal(err)
		}
		head := make([]byte, 1000)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatal(err)
		}
		var cw countingWriter
		n, err := io.Copy(&cw, r)
		if err != nil || n != int64(len(data)-1000) || !bytes.Equal(cw.Bytes(), data[1000:]) {
			t.Errorf("%s: copied %d bytes (%v), want the %d after the first 1000", tc.name, n, err, len(data)-1000)
		}
		if chunks := (len(data) + memChunkSize - 1) / memChunkSize; !tc.file && len(cw.writes) != chunks {
			t.Errorf("%s: %d writes (%v), want one per chunk (%d)", tc.name, len(cw.writes), cw.writes, chunks)
		}
		if m, err := r.Read(head); m != 0 || err != io.EOF {
			t.Errorf("%s: after the copy, Read = %d, %v; want EOF", tc.name, m, err)
		}
		r.Close()
		if _, err := io.Copy(&cw, r); err == nil {
			t.Errorf("%s: copy from a closed reader: no error", tc.name)
		}
		b.Remove()
	}
}
