package quarantine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
)

func TestDelete(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, s *Store, id string) // from a stored id
		err   error
	}{
		{"record and message", func(*testing.T, *Store, string) {}, nil},
		{"with a release state", func(t *testing.T, s *Store, id string) { claim(t, s, id) }, nil},
		{"orphan message (the record went in a crash)", func(t *testing.T, s *Store, id string) {
			os.Remove(filepath.Join(s.dir, metaDir, id+".json"))
		}, nil},
		{"record without its message", func(t *testing.T, s *Store, id string) {
			os.Remove(filepath.Join(s.dir, msgDir, id+".eml"))
		}, nil},
		{"gone already", func(t *testing.T, s *Store, id string) {
			if err := s.Delete(id); err != nil {
				t.Fatal(err)
			}
		}, ErrNotFound},
		{"only a stale release state: removed, but no such message", func(t *testing.T, s *Store, id string) {
			claim(t, s, id)
			os.Remove(filepath.Join(s.dir, metaDir, id+".json"))
			os.Remove(filepath.Join(s.dir, msgDir, id+".eml"))
		}, ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			other := storeAt(t, s, time.Now(), "other")
			id := storeAt(t, s, time.Now(), testMsg)
			tc.setup(t, s, id)
			if err := s.Delete(id); !errors.Is(err, tc.err) || (err == nil) != (tc.err == nil) {
				t.Fatalf("Delete: %v, want %v", err, tc.err)
			}
			if got := exists(s, id); got != "none" {
				t.Errorf("left %s", got)
			}
			if _, err := s.Get(id); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after Delete: %v", err)
			}
			if err := s.Verify(other); err != nil {
				t.Errorf("the other message: %v", err)
			}
		})
	}

	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	for _, bad := range []string{"", "../meta/" + id, id + "x"} {
		if err := s.Delete(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Delete(%q): %v", bad, err)
		}
	}
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.Delete(id); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Delete: %v", err)
	}
	if _, err := ro.Purge(time.Now()); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Purge: %v", err)
	}
	if exists(s, id) != "meta+msg" {
		t.Errorf("read-only calls changed the store: %s", exists(s, id))
	}
}

// Delete removes the record first and makes each removal durable before
// the next; when a step fails, what is left is never a record without its
// message, and deleting again finishes the job.
func TestDeleteSequenceAndFaults(t *testing.T) {
	sequence := []string{
		"remove meta/.json", "fsyncdir meta",
		"remove msg/.eml", "fsyncdir msg",
		"remove release/.json", "fsyncdir release",
	}
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	claim(t, s, id)
	rec := &recorder{}
	rec.install(s)
	if err := s.Delete(id); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec.ops, sequence) {
		t.Fatalf("operations\n%s\nwant\n%s", strings.Join(rec.ops, "\n"), strings.Join(sequence, "\n"))
	}

	left := []string{"meta+msg+release", "msg+release", "msg+release", "release", "release", "none"}
	for i, op := range sequence {
		t.Run(op, func(t *testing.T) {
			s := openStore(t)
			id := storeAt(t, s, time.Now(), testMsg)
			claim(t, s, id)
			rec := &recorder{fail: op, failErr: syscall.EIO}
			rec.install(s)
			if err := s.Delete(id); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Delete: %v", err)
			}
			if got := exists(s, id); got != left[i] {
				t.Errorf("left %s, want %s", got, left[i])
			}
			s.ops = osOps()
			if err := s.Delete(id); err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatalf("second Delete: %v", err)
			}
			if got := exists(s, id); got != "none" {
				t.Errorf("after a second Delete: %s", got)
			}
		})
	}
}

func TestPurge(t *testing.T) {
	day := 24 * time.Hour
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	cutoff := now.Add(-30 * day)
	s := openStore(t)
	type msg struct {
		id, what string
		purged   bool
	}
	var msgs []msg
	add := func(at time.Time, what string, purged bool, setup func(id string)) {
		id := storeAt(t, s, at, what)
		if setup != nil {
			setup(id)
		}
		msgs = append(msgs, msg{id, what, purged})
	}
	old := func(p string) { os.Chtimes(p, now.Add(-31*day), now.Add(-31*day)) }
	unrecord := func(id string) { os.Remove(filepath.Join(s.dir, metaDir, id+".json")) }
	add(now.Add(-400*day), "a year old", true, nil)
	add(cutoff.Add(-time.Microsecond), "just before the cutoff", true, nil)
	add(cutoff.Add(-day), "released", true, func(id string) { claim(t, s, id) })
	add(cutoff.Add(-day), "orphan message (a crash)", true, func(id string) {
		unrecord(id)
		old(filepath.Join(s.dir, msgDir, id+".eml"))
	})
	add(cutoff.Add(-day), "orphan message written within the hour (a Store on its way)", false, func(id string) {
		unrecord(id)
		os.Chtimes(filepath.Join(s.dir, msgDir, id+".eml"), now.Add(-time.Minute), now.Add(-time.Minute))
	})
	add(cutoff.Add(-day), "orphan release state", true, func(id string) {
		claim(t, s, id)
		os.Remove(filepath.Join(s.dir, msgDir, id+".eml"))
		unrecord(id)
	})
	add(cutoff, "at the cutoff", false, nil)
	add(cutoff.Add(time.Microsecond), "just after the cutoff", false, func(id string) { claim(t, s, id) })
	add(now, "new", false, nil)
	// Not the store's: left alone.
	for _, p := range []string{filepath.Join(tmpDir, "x.eml.1"), filepath.Join(metaDir, "notes.txt"), filepath.Join(msgDir, "20200101T000000.000000Z-zz")} {
		os.WriteFile(filepath.Join(s.dir, p), []byte("x"), 0o600)
		old(filepath.Join(s.dir, p))
	}

	s.now = func() time.Time { return now }
	res, err := s.Purge(cutoff)
	if err != nil {
		t.Fatal(err)
	}
	if want := (PurgeResult{Records: 3, Orphans: 1, Releases: 2}); res != want {
		t.Errorf("Purge = %v, want %v", res, want)
	}
	for _, m := range msgs {
		got := exists(s, m.id)
		if m.purged != (got == "none") {
			t.Errorf("%s: %s left (purged: %v)", m.what, got, m.purged)
		}
		if !m.purged && strings.HasPrefix(got, "meta") {
			if err := s.Verify(m.id); err != nil {
				t.Errorf("%s: %v", m.what, err)
			}
		}
	}
	for _, p := range []string{filepath.Join(tmpDir, "x.eml.1"), filepath.Join(metaDir, "notes.txt"), filepath.Join(msgDir, "20200101T000000.000000Z-zz")} {
		if _, err := os.Stat(filepath.Join(s.dir, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if res, err := s.Purge(cutoff); err != nil || res != (PurgeResult{}) {
		t.Errorf("second Purge = %v, %v", res, err)
	}
	// A store made before release states existed.
	os.Remove(filepath.Join(s.dir, releaseDir, msgs[7].id+".json"))
	os.Remove(filepath.Join(s.dir, releaseDir))
	if res, err := s.Purge(now.Add(time.Hour)); err != nil || res.Records != 3 {
		t.Errorf("Purge without release/ = %v, %v", res, err)
	}
}

// Purge removes a record durably before its message: a failing directory
// sync stops it with the messages still there; a file it cannot remove
// is reported and the rest purged.
func TestPurgeFaults(t *testing.T) {
	setup := func(t *testing.T) (*Store, []string) {
		s := openStore(t)
		var ids []string
		for i := range 3 {
			ids = append(ids, storeAt(t, s, time.Date(2020, 1, 1, 0, 0, i, 0, time.UTC), fmt.Sprint(i)))
		}
		return s, ids
	}
	t.Run("fsync of meta/ fails", func(t *testing.T) {
		s, ids := setup(t)
		real := osOps()
		s.ops.syncDir = func(dir string) error {
			if filepath.Base(dir) == metaDir {
				return syscall.EIO
			}
			return real.syncDir(dir)
		}
		if _, err := s.Purge(time.Now()); !errors.Is(err, syscall.EIO) {
			t.Fatalf("Purge: %v", err)
		}
		for _, id := range ids {
			if got := exists(s, id); got != "msg" {
				t.Errorf("%s: %s left, want the message", id, got)
			}
		}
	})
	t.Run("a message cannot be removed", func(t *testing.T) {
		s, ids := setup(t)
		real := osOps()
		s.ops.remove = func(name string) error {
			if strings.HasPrefix(filepath.Base(name), ids[1]) && filepath.Base(filepath.Dir(name)) == msgDir {
				return syscall.EACCES
			}
			return real.remove(name)
		}
		res, err := s.Purge(time.Now())
		if !errors.Is(err, syscall.EACCES) || res.Records != 3 {
			t.Fatalf("Purge = %v, %v", res, err)
		}
		for i, id := range ids {
			if got, want := exists(s, id), map[bool]string{true: "msg", false: "none"}[i == 1]; got != want {
				t.Errorf("%s: %s left, want %s", id, got, want)
			}
		}
	})
}

// Stores (of several Store values on one directory, as of several
// instances), Deletes and Purges run at once with a cutoff between old and
// new ids: every id a Store returned that is newer than the cutoff is
// intact at every moment, every older one is gone after the last Purge, and
// no record is ever left without its message.
func TestPurgeConcurrentWithStores(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "q")
	open := func(clock func() time.Time) *Store {
		s, err := Open(dir, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		s.now = clock
		return s
	}
	cutoff := time.Now().Add(-time.Hour)
	var tick atomic.Int64
	oldClock := func() time.Time { return cutoff.Add(-24*time.Hour + time.Duration(tick.Add(1))*time.Microsecond) }
	oldStore, newStore, purger := open(oldClock), open(time.Now), open(time.Now)

	var oldIDs []string
	for i := range 200 {
		id, err := oldStore.Store(context.Background(), testEnv, filters.BytesBody([]byte(fmt.Sprint("old ", i))), testResult())
		if err != nil {
			t.Fatal(err)
		}
		oldIDs = append(oldIDs, id)
		if i%3 == 0 {
			claim(t, oldStore, id)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		newIDs []string
	)
	for w := range 8 {
		wg.Go(func() {
			s := newStore
			if w%2 == 1 {
				s = oldStore // old ids appear while purges run
			}
			for i := 0; ctx.Err() == nil; i++ {
				id, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(fmt.Sprint(w, " ", i, " ", testMsg))), testResult())
				if err != nil {
					t.Error(err)
					return
				}
				if s == newStore {
					if err := s.Verify(id); err != nil {
						t.Errorf("a new message just stored: %v", err)
					}
					mu.Lock()
					newIDs = append(newIDs, id)
					mu.Unlock()
				}
			}
		})
	}
	for range 3 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := purger.Purge(cutoff); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() { // an administrator deleting old ones meanwhile
		for _, id := range oldIDs {
			if err := purger.Delete(id); err != nil && !errors.Is(err, ErrNotFound) {
				t.Error(err)
			}
		}
	})
	wg.Go(func() { // a reader: what it lists and is new verifies
		for ctx.Err() == nil {
			list, err := purger.List(ListOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			for _, m := range list {
				if ctx.Err() != nil {
					return
				}
				if !m.Time.Before(cutoff) {
					if err := purger.Verify(m.ID); err != nil {
						t.Errorf("a listed new message: %v", err)
					}
				}
			}
		}
	})
	wg.Wait()
	if t.Failed() {
		return
	}
	if _, err := purger.Purge(cutoff); err != nil {
		t.Fatal(err)
	}

	for _, id := range newIDs {
		if err := newStore.Verify(id); err != nil {
			t.Errorf("new message %s: %v", id, err)
		}
	}
	left := map[string]bool{}
	for _, sub := range []string{metaDir, msgDir, releaseDir} {
		for _, name := range files(t, newStore, sub) {
			id, _, _ := strings.Cut(name, ".json")
			id = strings.TrimSuffix(id, ".eml")
			if !validID(id) {
				t.Errorf("stray file %s/%s", sub, name)
				continue
			}
			if idTime(id).Before(cutoff) {
				t.Errorf("%s/%s older than the cutoff is left", sub, name)
			}
			if sub == metaDir {
				left[id] = true
			}
		}
	}
	if len(left) != len(newIDs) {
		t.Errorf("%d records left, want the %d new ones", len(left), len(newIDs))
	}
	if f := files(t, newStore, tmpDir); len(f) > 0 {
		t.Errorf("tmp/ holds %v", f)
	}
	t.Logf("%d new messages stored while purging", len(newIDs))
}

func TestRunRetention(t *testing.T) {
	s := openStore(t)
	w, err := Open(s.dir, zerolog.Nop()) // another instance writes: storeAt sets its clock
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	oldID := storeAt(t, w, now.Add(-48*time.Hour), "old")
	newID := storeAt(t, w, now, "new")

	// Zero keeps everything, and returns at once.
	done := make(chan struct{})
	go func() { s.RunRetention(context.Background(), 0, time.Millisecond); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunRetention(0) did not return")
	}
	if exists(s, oldID) != "meta+msg" {
		t.Fatal("retention 0 purged")
	}

	var logBuf bytes.Buffer
	s.log = zerolog.New(&logBuf)
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() { s.RunRetention(ctx, 24*time.Hour, 10*time.Millisecond); close(done) }()
	waitFor(t, func() bool { return exists(s, oldID) == "none" })
	// One that ages past the retention later goes on a later round.
	laterID := storeAt(t, w, now.Add(-25*time.Hour), "later")
	waitFor(t, func() bool { return exists(s, laterID) == "none" })
	cancel()
	<-done
	if err := s.Verify(newID); err != nil {
		t.Error(err)
	}
	if n := strings.Count(logBuf.String(), `"level":"info","dir":"`+s.dir+`"`); n != 2 || !strings.Contains(logBuf.String(), `"records":1`) {
		t.Errorf("%d info lines (want one per round that purged):\n%s", n, logBuf.String())
	}

	// A read-only store: it says so once and returns.
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ro.RunRetention(context.Background(), time.Hour, time.Millisecond)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
