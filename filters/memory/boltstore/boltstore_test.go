package boltstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/memorytest"
)

// Every test ends with no goroutine of a Store left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a log sink for a Store's goroutines and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func open(t testing.TB, path string, o Options) (*Store, *syncBuffer) {
	t.Helper()
	var logs syncBuffer
	s, err := Open(path, o, zerolog.New(&logs))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s, &logs
}

func TestConformance(t *testing.T) {
	s, _ := open(t, filepath.Join(t.TempDir(), "memory.db"), Options{})
	defer s.Close()
	memorytest.Conformance(t, s, "")
}

func TestReopenKeepsRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "memory.db")
	s, _ := open(t, path, Options{})
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		if err := s.Put(ctx, memorytest.Key("", i), memorytest.Tagged(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Get(ctx, memorytest.Key("", 1)); err == nil {
		t.Fatal("Get after Close: no error")
	}
	if err := s.Put(ctx, memorytest.Key("", 1), memorytest.Clean(1)); err == nil {
		t.Fatal("Put after Close: no error")
	}
	s, logs := open(t, path, Options{})
	defer s.Close()
	for i := 0; i < 20; i++ {
		if got, err := s.Get(ctx, memorytest.Key("", i)); err != nil || !memorytest.Equal(got, memorytest.Tagged(i)) {
			t.Fatalf("after reopen, Get %d = %+v, %v", i, got, err)
		}
	}
	if strings.Contains(logs.String(), "corrupt") {
		t.Fatalf("a good file was reported corrupt: %s", logs)
	}
}

// TestCorruptFileMovedAside: a store file that is truncated, garbage, or
// has garbage pages behind good meta pages is moved aside with a warning,
// and a fresh store works.
func TestCorruptFileMovedAside(t *testing.T) {
	// good writes a store file holding records.
	good := func(t *testing.T, path string) {
		s, _ := open(t, path, Options{})
		ctx := context.Background()
		var wg sync.WaitGroup
		for i := 0; i < 2000; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Put(ctx, memorytest.Key("", i), memorytest.Tagged(i)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	garbage := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	for name, damage := range map[string]func(t *testing.T, path string){
		"garbage": func(t *testing.T, path string) {
			if err := os.WriteFile(path, garbage(64<<10), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"short garbage": func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("not a bolt file\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"truncated": func(t *testing.T, path string) {
			good(t, path)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, fi.Size()/3); err != nil {
				t.Fatal(err)
			}
		},
		"truncated to one page": func(t *testing.T, path string) {
			good(t, path)
			if err := os.Truncate(path, int64(os.Getpagesize())); err != nil {
				t.Fatal(err)
			}
		},
		"garbage pages": func(t *testing.T, path string) {
			good(t, path)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			ps := os.Getpagesize()
			// Meta pages 0 and 1 stay; the tree and freelist become noise.
			copy(b[2*ps:], garbage(len(b)-2*ps))
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "memory.db")
			damage(t, path)
			s, logs := open(t, path, Options{})
			defer s.Close()
			if !strings.Contains(logs.String(), `"level":"warn"`) || !strings.Contains(logs.String(), "moved it aside") {
				t.Fatalf("no warning about the corrupt file; log: %s", logs)
			}
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("moved-aside files: %v", aside)
			}
			if !strings.Contains(logs.String(), aside[0]) {
				t.Fatalf("the log does not name %s: %s", aside[0], logs)
			}
			t.Logf("log: %s", strings.TrimSpace(logs.String()))
			ctx := context.Background()
			if got, err := s.Get(ctx, memorytest.Key("", 1)); got != nil || err != nil {
				t.Fatalf("fresh store Get = %v, %v", got, err)
			}
			if err := s.Put(ctx, memorytest.Key("", 1), memorytest.Clean(1)); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, memorytest.Key("", 1)); err != nil || !memorytest.Equal(got, memorytest.Clean(1)) {
				t.Fatalf("fresh store Get = %+v, %v", got, err)
			}
		})
	}
}

// TestOpenErrors: a path no store can be opened at is an error, and nothing
// is moved aside.
func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "no", "such", "dir", "memory.db"), Options{}, zerolog.Nop()); err == nil {
		t.Fatal("Open in a missing directory: no error")
	}
	// A directory where the file should be is not "corrupt".
	if err := os.Mkdir(filepath.Join(dir, "isdir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(dir, "isdir"), Options{}, zerolog.Nop()); err == nil {
		t.Fatal("Open of a directory: no error")
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.corrupt-*")); len(m) != 0 {
		t.Fatalf("moved aside: %v", m)
	}
}

// TestCorruptValue: a stored value that does not decode is an error for
// Get and a miss for GetMany, never a panic.
func TestCorruptValue(t *testing.T) {
	s, logs := open(t, filepath.Join(t.TempDir(), "memory.db"), Options{})
	defer s.Close()
	ctx := context.Background()
	k := memorytest.Key("", 1)
	h := k.Hash()
	for _, v := range [][]byte{{1, 2}, {0, 0, 0, 0, 1, 2, 3}} {
		if err := s.update(ctx, func(b *bolt.Bucket) error { return b.Put(h[:], v) }); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Get(ctx, k); got != nil || err == nil {
			t.Fatalf("Get of a bad value %x = %v, %v", v, got, err)
		}
		if rs, err := s.GetMany(ctx, []memory.Key{k}); err != nil || rs[0] != nil {
			t.Fatalf("GetMany of a bad value = %v, %v", rs, err)
		}
	}
	if !strings.Contains(logs.String(), "does not decode") {
		t.Fatalf("log: %s", logs)
	}
}

// clock is a settable clock for the retention tests.
type clock struct{ now atomic.Int64 }

func (c *clock) Now() time.Time      { return time.Unix(c.now.Load(), 0) }
func (c *clock) Set(t time.Time)     { c.now.Store(t.Unix()) }
func (c *clock) Add(d time.Duration) { c.now.Add(int64(d / time.Second)) }
func useTime(t *testing.T, s *Store, k memory.Key) (uint32, bool) {
	t.Helper()
	var used uint32
	var found bool
	h := k.Hash()
	if err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketRecords).Get(h[:]); v != nil {
			used, found = binary.BigEndian.Uint32(v), true
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return used, found
}

func TestRetention(t *testing.T) {
	var c clock
	c.Set(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "memory.db")
	s, logs := open(t, path, Options{Retention: 10 * 24 * time.Hour, PurgeInterval: 20 * time.Millisecond, now: c.Now})
	defer s.Close()
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := s.Put(ctx, memorytest.Key("", i), memorytest.Clean(i)); err != nil {
			t.Fatal(err)
		}
	}
	start := c.Now()
	// Day 5: record 0 is read. Its use time is older than a day: the Get
	// notes it and the next flush writes it, once.
	c.Add(5 * 24 * time.Hour)
	if r, err := s.Get(ctx, memorytest.Key("", 0)); err != nil || r == nil {
		t.Fatal(r, err)
	}
	waitFor(t, "use time of record 0 updated", func() bool {
		u, _ := useTime(t, s, memorytest.Key("", 0))
		return int64(u) == c.Now().Unix()
	})
	// A Get within a day of the last use writes nothing.
	c.Add(time.Hour)
	if _, err := s.GetMany(ctx, []memory.Key{memorytest.Key("", 0)}); err != nil {
		t.Fatal(err)
	}
	s.tmu.Lock()
	pending := len(s.touches)
	s.tmu.Unlock()
	if pending != 0 {
		t.Fatalf("%d use-time updates pending after a fresh Get", pending)
	}
	// Day 9: record 1 is put again.
	c.Set(start.Add(9 * 24 * time.Hour))
	if err := s.Put(ctx, memorytest.Key("", 1), memorytest.Clean(1)); err != nil {
		t.Fatal(err)
	}
	// Day 10 and a bit: record 2 was unused for longer than the retention.
	c.Set(start.Add(10*24*time.Hour + time.Minute))
	waitFor(t, "record 2 purged", func() bool {
		_, found := useTime(t, s, memorytest.Key("", 2))
		return !found
	})
	// (Looked at without a Get, which would count as a use.)
	for i := 0; i < 2; i++ {
		if _, found := useTime(t, s, memorytest.Key("", i)); !found {
			t.Fatalf("record %d purged too early", i)
		}
	}
	// Day 15 and a bit: record 0 (used on day 5) goes, record 1 (day 9) stays.
	c.Set(start.Add(15*24*time.Hour + time.Minute))
	waitFor(t, "record 0 purged", func() bool {
		_, found := useTime(t, s, memorytest.Key("", 0))
		return !found
	})
	if _, found := useTime(t, s, memorytest.Key("", 1)); !found {
		t.Fatal("record 1 purged too early")
	}
	if !strings.Contains(logs.String(), "purged") {
		t.Fatalf("no purge in the log: %s", logs)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCloseWritesPendingUseTimes: Close writes the use times Gets noted.
func TestCloseWritesPendingUseTimes(t *testing.T) {
	var c clock
	c.Set(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	path := filepath.Join(t.TempDir(), "memory.db")
	s, _ := open(t, path, Options{now: c.Now})
	ctx := context.Background()
	if err := s.Put(ctx, memorytest.Key("", 0), memorytest.Clean(0)); err != nil {
		t.Fatal(err)
	}
	c.Add(48 * time.Hour)
	if _, err := s.Get(ctx, memorytest.Key("", 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, _ = open(t, path, Options{now: c.Now})
	defer s.Close()
	if u, _ := useTime(t, s, memorytest.Key("", 0)); int64(u) != c.Now().Unix() {
		t.Fatalf("use time %d, want %d", u, c.Now().Unix())
	}
}

// TestPutCoalesces: concurrent Puts share commits (and fsyncs).
func TestPutCoalesces(t *testing.T) {
	s, _ := open(t, filepath.Join(t.TempDir(), "memory.db"), Options{})
	defer s.Close()
	before := txWrites(s)
	const n = 400
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Put(context.Background(), memorytest.Key("", i), memorytest.Clean(i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	commits := txWrites(s) - before
	t.Logf("%d concurrent Puts in %d commits", n, commits)
	if commits >= n/4 {
		t.Fatalf("%d concurrent Puts took %d commits", n, commits)
	}
}

// TestOnDiskSize reports bytes per message for 10,000 clean and 10,000
// tagged records: the file as written (with bbolt's preallocation and free
// pages) and after compaction (bolt.Compact into a new file).
func TestOnDiskSize(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, shape := range []struct {
		name string
		rec  func(int) *memory.Record
	}{{"clean", memorytest.Clean}, {"tagged", memorytest.Tagged}} {
		dir := t.TempDir()
		path := filepath.Join(dir, "memory.db")
		s, _ := open(t, path, Options{})
		const n = 10000
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := 0; i < n; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				k := memory.Key{Upstream: "mail.example.org:995", Mailbox: "alice@example.org", UIDL: memorytest.Key("", i).UIDL}
				if err := s.Put(context.Background(), k, shape.rec(i)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		var st bolt.BucketStats
		if err := s.db.View(func(tx *bolt.Tx) error {
			st = tx.Bucket(bucketRecords).Stats()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		src, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		dst, err := bolt.Open(filepath.Join(dir, "compact.db"), 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := bolt.Compact(dst, src, 64<<20); err != nil {
			t.Fatal(err)
		}
		_ = src.Close()
		_ = dst.Close()
		ci, err := os.Stat(filepath.Join(dir, "compact.db"))
		if err != nil {
			t.Fatal(err)
		}
		rec := len(memory.Encode(shape.rec(1)))
		alloc := st.BranchAlloc + st.LeafAlloc
		inuse := st.BranchInuse + st.LeafInuse
		t.Logf("%s: %d records (record %d bytes, value %d): pages of the tree %d bytes (%.0f bytes/message; %.0f in use), "+
			"file as written %d bytes (%.0f bytes/message), compacted file %d bytes (%.0f bytes/message)",
			shape.name, n, rec, rec+useLen, alloc, float64(alloc)/n, float64(inuse)/n,
			fi.Size(), float64(fi.Size())/n, ci.Size(), float64(ci.Size())/n)
	}
}

func txWrites(s *Store) int64 {
	st := s.db.Stats()
	return st.TxStats.GetWrite()
}

// TestCorruptWhileOpen: pages that go bad under a running store (garbage
// written over them, the file truncated: a memory fault on the mmap) make
// its operations fail with ErrCorrupt, logged once, and never crash.
func TestCorruptWhileOpen(t *testing.T) {
	for _, how := range []string{"garbage", "truncate"} {
		t.Run(how, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "memory.db")
			s, logs := open(t, path, Options{})
			defer s.Close()
			ctx := context.Background()
			var ks []memory.Key
			for i := 0; i < 3000; i++ {
				ks = append(ks, memorytest.Key("", i))
			}
			if err := s.update(ctx, func(b *bolt.Bucket) error {
				for i, k := range ks {
					h := k.Hash()
					v := append(make([]byte, useLen), memory.Encode(memorytest.Tagged(i))...)
					if err := b.Put(h[:], v); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			ps := int64(os.Getpagesize())
			switch how {
			case "garbage":
				f, err := os.OpenFile(path, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				fi, _ := f.Stat()
				noise := make([]byte, fi.Size()-2*ps)
				_, _ = rand.Read(noise)
				if _, err := f.WriteAt(noise, 2*ps); err != nil {
					t.Fatal(err)
				}
				_ = f.Close()
			case "truncate":
				if err := os.Truncate(path, 2*ps); err != nil {
					t.Fatal(err)
				}
			}
			_, err := s.GetMany(ctx, ks)
			if err == nil {
				t.Fatal("GetMany over corrupt pages: no error")
			}
			t.Logf("GetMany: %v", err)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("GetMany error %v does not wrap ErrCorrupt", err)
			}
			if _, err := s.Get(ctx, ks[1]); err == nil {
				t.Fatal("Get over corrupt pages: no error")
			}
			if err := s.Put(ctx, ks[2], memorytest.Clean(2)); err == nil {
				t.Log("Put over corrupt pages succeeded")
			} else {
				t.Logf("Put: %v", err)
			}
			if n := strings.Count(logs.String(), "store file is corrupt"); n != 1 {
				t.Fatalf("%d log lines about the corrupt file, want 1: %s", n, logs)
			}
		})
	}
}
