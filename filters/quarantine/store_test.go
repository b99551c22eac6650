package quarantine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
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

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "q"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testEnv = &filters.Envelope{
	SessionID: "s1", User: "alice@example.org", Client: netip.MustParseAddrPort("192.0.2.7:50000"),
	Listener: "pop3", Upstream: "mail", Command: "RETR", MsgNum: 3,
}

func testResult() *filters.Result {
	return &filters.Result{
		Outcome: filters.Refuse,
		Reason:  "Eicar-Signature FOUND",
		Steps: []filters.Step{
			{Filter: "stamp", Action: filters.Replace, Reason: "tagged", Duration: time.Millisecond},
			{Filter: "strip", Action: filters.Replace, Lossy: true, Reason: "removed invoice.exe"},
			{Filter: "av", Action: filters.Reject, Reason: "Eicar-Signature FOUND", Duration: 20 * time.Millisecond},
			{Filter: "broken", Err: errors.New("clamd: timeout")},
		},
	}
}

const testMsg = "From: a@example.org\r\nSubject: hi\r\n\r\nX5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR\r\n.\r\n"

// files lists the regular files under dir/sub.
func files(t *testing.T, s *Store, sub string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func assertEmpty(t *testing.T, s *Store) {
	t.Helper()
	for _, sub := range []string{tmpDir, msgDir, metaDir} {
		if f := files(t, s, sub); len(f) > 0 {
			t.Errorf("%s/ holds %v after a failed Store", sub, f)
		}
	}
}

// storeAt stores msg with s's clock at at and returns its id.
func storeAt(t *testing.T, s *Store, at time.Time, msg string) string {
	t.Helper()
	s.now = func() time.Time { return at }
	defer func() { s.now = time.Now }()
	id, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(msg)), testResult())
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// exists reports which of id's files are in the store: "meta", "msg",
// "release", joined by "+", or "none".
func exists(s *Store, id string) string {
	var have []string
	for _, f := range [...]struct{ sub, ext string }{{metaDir, ".json"}, {msgDir, ".eml"}, {releaseDir, ".json"}} {
		if _, err := os.Lstat(filepath.Join(s.dir, f.sub, id+f.ext)); err == nil {
			have = append(have, f.sub)
		}
	}
	if len(have) == 0 {
		return "none"
	}
	return strings.Join(have, "+")
}

func claim(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, err := s.ClaimRelease(id, ReleaseState{State: Released, Actor: "cli"}); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	s := openStore(t)
	big := testMsg + strings.Repeat("line of the body\r\n", 50000)
	id, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(big)), testResult())
	if err != nil {
		t.Fatal(err)
	}
	if !validID(id) {
		t.Fatalf("Store returned an invalid id %q", id)
	}
	if f := files(t, s, tmpDir); len(f) > 0 {
		t.Errorf("tmp/ not empty: %v", f)
	}
	for _, p := range []string{filepath.Join(s.dir, msgDir, id+".eml"), filepath.Join(s.dir, metaDir, id+".json")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
		}
	}

	r, err := s.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if string(got) != big {
		t.Fatal("exported message differs from the original")
	}
	if err := s.Verify(id); err != nil {
		t.Fatal(err)
	}

	m, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(big))
	want := Meta{
		Version: 1, ID: id, Time: m.Time, User: "alice@example.org", SessionID: "s1", Client: "192.0.2.7:50000",
		Listener: "pop3", Upstream: "mail", MsgNum: 3, Command: "RETR", Size: int64(len(big)), SHA256: hex.EncodeToString(sum[:]),
		Verdicts: []Verdict{
			{Filter: "stamp", Action: "replace", Reason: "tagged", Duration: time.Millisecond},
			{Filter: "strip", Action: "replace", Reason: "removed invoice.exe"},
			{Filter: "av", Action: "reject", Reason: "Eicar-Signature FOUND", Duration: 20 * time.Millisecond},
			{Filter: "broken", Error: "clamd: timeout"},
		},
		Held:    []string{"strip", "av"},
		Outcome: "refuse", Reason: "Eicar-Signature FOUND",
	}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("Get:\n%+v\nwant\n%+v", m, want)
	}
	if time.Since(m.Time) > time.Minute || !strings.HasPrefix(id, m.Time.Format("20060102T150405")) {
		t.Errorf("record time %v does not match id %s", m.Time, id)
	}
	list, err := s.List(ListOptions{})
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("List = %v, %v", list, err)
	}

	// A read-only view sees the same and cannot write.
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if m2, err := ro.Get(id); err != nil || m2.SHA256 != m.SHA256 {
		t.Errorf("read-only Get = %v, %v", m2, err)
	}
	if _, err := ro.Store(context.Background(), nil, filters.BytesBody(nil), nil); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Store: %v", err)
	}

	// Verify notices a changed message.
	if err := os.WriteFile(filepath.Join(s.dir, msgDir, id+".eml"), []byte("tampered"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(id); err == nil {
		t.Error("Verify accepted a changed message")
	}
}

func TestNilEnvelopeAndResult(t *testing.T) {
	s := openStore(t)
	id, err := s.Store(context.Background(), nil, filters.BytesBody(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Get(id)
	if err != nil || m.Size != 0 || m.User != "" {
		t.Fatalf("Get = %+v, %v", m, err)
	}
}

func TestListOrderUserLimit(t *testing.T) {
	s := openStore(t)
	base := time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC)
	var ids []string
	for i := range 6 {
		tick := base.Add(time.Duration(i) * time.Microsecond) // same second
		s.now = func() time.Time { return tick }
		user := "alice"
		if i%2 == 1 {
			user = "bob"
		}
		id, err := s.Store(context.Background(), &filters.Envelope{User: user}, filters.BytesBody([]byte(fmt.Sprint(i))), nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	// A stray file and a corrupt record do not break the listing.
	os.WriteFile(filepath.Join(s.dir, metaDir, "notes.txt"), []byte("x"), 0o600)
	bad := "20261125T103000.000000Z-aaaaaaaaaa"
	os.WriteFile(filepath.Join(s.dir, metaDir, bad+".json"), []byte("{"), 0o600)

	list, err := s.List(ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range list {
		got = append(got, m.ID)
	}
	want := slices.Clone(ids)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Fatalf("List order\n%v\nwant newest first\n%v", got, want)
	}
	list, _ = s.List(ListOptions{User: "bob", Limit: 2})
	if len(list) != 2 || list[0].ID != ids[5] || list[1].ID != ids[3] {
		t.Fatalf("List(bob, 2) = %v", list)
	}
}

func TestInvalidIDs(t *testing.T) {
	s := openStore(t)
	id, err := s.Store(context.Background(), nil, filters.BytesBody([]byte("x")), nil)
	if err != nil {
		t.Fatal(err)
	}
	// A file outside the store that a traversal would reach.
	os.WriteFile(filepath.Join(filepath.Dir(s.dir), "secret.json"), []byte(`{"id":"x"}`), 0o600)
	for _, bad := range []string{
		"", ".", "..", "../secret", "../../etc/passwd", "/etc/passwd", id + "/..", "../" + id,
		id[:len(id)-1], id + "a", strings.ToUpper(id), strings.Replace(id, "-", "/", 1),
		id[:len(id)-2] + "./", id[:len(id)-1] + "\x00", id[:len(id)-1] + "1", id[:len(id)-1] + "A",
		"20261325T103000.000000Z-aaaaaaaaaa", // month 13
		"20261125T103000.000000Z-aaaaaaaaa/", "20261125T103000.000000Z\\aaaaaaaaaa",
		"2026112aT103000.000000Z-aaaaaaaaaa",
	} {
		if _, err := s.Get(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Get(%q): %v", bad, err)
		}
		if _, err := s.Open(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Open(%q): %v", bad, err)
		}
	}
	missing := "20261125T103000.000000Z-aaaaaaaaaa"
	if _, err := s.Get(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing): %v", err)
	}
	if _, err := s.Open(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open(missing): %v", err)
	}
}

func TestConcurrentStores(t *testing.T) {
	s := openStore(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id, err := s.Store(context.Background(), nil, filters.BytesBody([]byte(fmt.Sprint(i))), nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if seen[id] {
				t.Errorf("id %s given twice", id)
			}
			seen[id] = true
		}()
	}
	wg.Wait()
	if list, _ := s.List(ListOptions{}); len(list) != 16 {
		t.Errorf("List has %d records, want 16", len(list))
	}
}

// recorder wraps the store's filesystem operations and logs them in the
// order they start, and when each ends (concurrent ones overlap). It fails
// the first operation named fail (none when empty) with failErr, makes the
// ones named slow take a while (so that whatever runs at the same time
// ends first), and calls probe, when set, before each.
type recorder struct {
	mu      sync.Mutex
	ops     []string       // in the order they started
	ended   map[string]int // op: how many ops had started when it last ended
	fail    string
	failErr error
	slow    string
	probe   func(op string)
}

// run logs op and runs f, or fails it.
func (r *recorder) run(op string, f func() error) error {
	if r.probe != nil {
		r.probe(op)
	}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	failing := op == r.fail
	if failing {
		r.fail = ""
	}
	r.mu.Unlock()
	err := r.failErr
	if !failing {
		if op == r.slow {
			time.Sleep(20 * time.Millisecond)
		}
		err = f()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended == nil {
		r.ended = map[string]int{}
	}
	r.ended[op] = len(r.ops)
	return err
}

// before reports whether op a ended before op b started.
func (r *recorder) before(a, b string) bool {
	end, ok := r.ended[a]
	start := slices.Index(r.ops, b)
	return ok && start >= 0 && end <= start
}

type recFile struct {
	*os.File
	r *recorder
}

func (f *recFile) Write(p []byte) (n int, err error) {
	err = f.r.run("write "+base(f.Name()), func() error {
		n, err = f.File.Write(p)
		return err
	})
	return n, err
}

func (f *recFile) Close() error {
	err := f.r.run("close "+base(f.Name()), func() error { return nil })
	if cerr := f.File.Close(); err == nil { // also when failing: no descriptor leaks
		err = cerr
	}
	return err
}

// base names a file by its directory and extension: tmp/.eml, msg/.json.
func base(p string) string {
	name := filepath.Base(p)
	ext := ".eml"
	if strings.Contains(name, ".json") {
		ext = ".json"
	}
	return filepath.Base(filepath.Dir(p)) + "/" + ext
}

func (r *recorder) install(s *Store) {
	real := osOps()
	s.ops = fsOps{
		createTemp: func(dir, pattern string) (tempFile, error) {
			var f *os.File
			err := r.run("create "+base(filepath.Join(dir, pattern)), func() (err error) {
				f, err = os.CreateTemp(dir, pattern)
				return err
			})
			if err != nil {
				return nil, err
			}
			return &recFile{File: f, r: r}, nil
		},
		syncFile: func(f tempFile) error {
			return r.run("fsync "+base(f.Name()), func() error { return real.syncFile(f) })
		},
		rename: func(from, to string) error {
			return r.run("rename "+base(from)+" "+base(to), func() error { return real.rename(from, to) })
		},
		placeNew: func(from, to string) error {
			return r.run("rename "+base(from)+" "+base(to), func() error { return real.placeNew(from, to) })
		},
		syncDir: func(dir string) error {
			return r.run("fsyncdir "+filepath.Base(dir), func() error { return real.syncDir(dir) })
		},
		remove: func(name string) error {
			return r.run("remove "+base(name), func() error { return real.remove(name) })
		},
		link: func(from, to string) error {
			return r.run("link "+base(from)+" "+base(to), func() error { return real.link(from, to) })
		},
	}
}

// storeOps are the operations of a Store of a small message, each once.
var storeOps = []string{
	"create tmp/.eml", "write tmp/.eml", "create tmp/.json", "write tmp/.json",
	"fsync tmp/.eml", "close tmp/.eml", "fsync tmp/.json", "close tmp/.json",
	"rename tmp/.eml msg/.eml", "fsyncdir msg", "rename tmp/.json meta/.json", "fsyncdir meta",
}

// storeOrder are the pairs of storeOps of which the first must end before
// the second starts.
var storeOrder = [][2]string{
	// A file is complete before its rename, and synced before the rename
	// that makes its record visible (the message's is synced after its own,
	// together with msg/: a message without a record is not stored yet).
	{"write tmp/.eml", "fsync tmp/.eml"}, {"write tmp/.eml", "rename tmp/.eml msg/.eml"},
	{"write tmp/.json", "fsync tmp/.json"}, {"fsync tmp/.json", "rename tmp/.json meta/.json"},
	// A directory is synced after the rename into it.
	{"rename tmp/.eml msg/.eml", "fsyncdir msg"}, {"rename tmp/.json meta/.json", "fsyncdir meta"},
	// The record appears only once its message is durable, data and name:
	// also after a crash, a record has its message.
	{"fsync tmp/.eml", "rename tmp/.json meta/.json"}, {"fsyncdir msg", "rename tmp/.json meta/.json"},
}

// recordsHaveMessages is a recorder's probe: it fails t when a record in
// s is visible without its message.
func recordsHaveMessages(t *testing.T, s *Store) func(op string) {
	return func(op string) {
		for _, name := range files(t, s, metaDir) {
			id := strings.TrimSuffix(name, ".json")
			if _, err := os.Lstat(filepath.Join(s.dir, msgDir, id+".eml")); err != nil {
				t.Errorf("before %s: record %s visible without its message: %v", op, id, err)
			}
		}
	}
}

// Store's operations happen in storeOrder however long each takes: each
// is made slow in turn, so that what may run at the same time as it
// overtakes it.
func TestDurabilitySequence(t *testing.T) {
	for _, slow := range append([]string{"none"}, storeOps...) {
		t.Run("slow "+slow, func(t *testing.T) {
			s := openStore(t)
			rec := &recorder{slow: slow, probe: recordsHaveMessages(t, s)}
			rec.install(s)
			if _, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(testMsg)), testResult()); err != nil {
				t.Fatal(err)
			}
			got, want := slices.Sorted(slices.Values(rec.ops)), slices.Sorted(slices.Values(storeOps))
			if !slices.Equal(got, want) {
				t.Fatalf("operations\n%s\nwant (in any order)\n%s", strings.Join(rec.ops, "\n"), strings.Join(storeOps, "\n"))
			}
			for _, p := range storeOrder {
				if !rec.before(p[0], p[1]) {
					t.Errorf("%s did not end before %s started", p[0], p[1])
				}
			}
			if last := rec.ops[len(rec.ops)-1]; last != "fsyncdir meta" {
				t.Errorf("the last operation is %s, want fsyncdir meta", last)
			}
			for _, op := range rec.ops {
				if _, ok := rec.ended[op]; !ok {
					t.Errorf("%s had not ended when Store returned", op)
				}
			}
			if t.Failed() {
				t.Logf("operations:\n%s", strings.Join(rec.ops, "\n"))
			}
		})
	}
}

// syncAll runs its functions at once: here each waits for all to start.
func TestSyncAllAtOnce(t *testing.T) {
	const n = 3
	var started sync.WaitGroup
	started.Add(n)
	all := make(chan struct{})
	go func() {
		started.Wait()
		close(all)
	}()
	f := func(i int) func() error {
		return func() error {
			started.Done()
			select {
			case <-all:
				return fmt.Errorf("f%d", i)
			case <-time.After(5 * time.Second):
				return fmt.Errorf("f%d waited for the others in vain", i)
			}
		}
	}
	errs := syncAll(f(0), f(1), f(2))
	for i, err := range errs {
		if want := fmt.Sprintf("f%d", i); err == nil || err.Error() != want {
			t.Errorf("error %d = %v, want %s", i, err, want)
		}
	}
}

// Every step of the sequence can fail (disk full on a write, an fsync that
// reports an I/O error, a failed rename, a directory that cannot be
// synced): Store then returns an error and no file is left anywhere, and a
// record is never visible without its message, also while Store cleans up.
func TestEveryFailureLeavesNothing(t *testing.T) {
	for _, op := range storeOps {
		t.Run(op, func(t *testing.T) {
			s := openStore(t)
			rec := &recorder{fail: op, failErr: syscall.ENOSPC, probe: recordsHaveMessages(t, s)}
			rec.install(s)
			id, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(testMsg)), testResult())
			if err == nil {
				t.Fatalf("Store succeeded (id %s) despite a failing %s", id, op)
			}
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("error %v does not wrap the cause", err)
			}
			if id != "" {
				t.Errorf("id %q returned with an error", id)
			}
			assertEmpty(t, s)
			if list, _ := s.List(ListOptions{}); len(list) != 0 {
				t.Errorf("List shows %d records", len(list))
			}
		})
	}
}

// A body whose reader fails (or is shorter than its Size) is not stored.
type shortBody struct{ filters.Body }

func (shortBody) Size() int64 { return 1 << 20 }

type brokenBody struct{ filters.Body }

func (brokenBody) Open() (io.ReadCloser, error) { return nil, errors.New("spool gone") }

func TestBadBodies(t *testing.T) {
	s := openStore(t)
	for _, b := range []filters.Body{shortBody{filters.BytesBody([]byte("x"))}, brokenBody{filters.BytesBody(nil)}, nil} {
		if _, err := s.Store(context.Background(), nil, b, nil); err == nil {
			t.Errorf("Store(%T) succeeded", b)
		}
		assertEmpty(t, s)
	}
}

func TestCanceledContext(t *testing.T) {
	s := openStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Store(ctx, nil, filters.BytesBody([]byte("x")), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Store: %v", err)
	}
	assertEmpty(t, s)
}

func TestOpenFailures(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := Open(file, zerolog.Nop()); err == nil {
		t.Error("Open on a file succeeded")
	}
	if _, err := Open(filepath.Join(file, "sub"), zerolog.Nop()); err == nil {
		t.Error("Open below a file succeeded")
	}
	// A file where a subdirectory belongs.
	q := filepath.Join(dir, "q")
	os.MkdirAll(q, 0o700)
	os.WriteFile(filepath.Join(q, msgDir), []byte("x"), 0o600)
	if _, err := Open(q, zerolog.Nop()); err == nil {
		t.Error("Open with a file as msg/ succeeded")
	}
	if _, err := OpenReadOnly(filepath.Join(dir, "missing"), zerolog.Nop()); err == nil {
		t.Error("OpenReadOnly of a missing store succeeded")
	}
	if _, err := Open("", zerolog.Nop()); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

// A read-only directory: meaningful only when not root (root ignores the
// permission bits; the injected failures above cover that case).
func TestReadOnlyDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("running as root: permission bits are not enforced; TestEveryFailureLeavesNothing covers the failures")
	}
	s := openStore(t)
	os.Chmod(filepath.Join(s.dir, tmpDir), 0o500)
	defer os.Chmod(filepath.Join(s.dir, tmpDir), 0o700)
	if _, err := s.Store(context.Background(), nil, filters.BytesBody([]byte("x")), nil); err == nil {
		t.Error("Store into a read-only tmp/ succeeded")
	}
	assertEmpty(t, s)
	if _, err := Open(s.dir, zerolog.Nop()); err == nil {
		t.Error("Open of a read-only store succeeded")
	}
}

// The store directory replaced by a file after Open (the case root cannot
// escape): Store fails cleanly.
func TestDirectoryGone(t *testing.T) {
	s := openStore(t)
	os.RemoveAll(filepath.Join(s.dir, tmpDir))
	os.WriteFile(filepath.Join(s.dir, tmpDir), []byte("x"), 0o600)
	if _, err := s.Store(context.Background(), nil, filters.BytesBody([]byte("x")), nil); err == nil {
		t.Fatal("Store succeeded without a tmp/ directory")
	}
	if f := files(t, s, msgDir); len(f) > 0 {
		t.Errorf("msg/ holds %v", f)
	}
}

func TestStaleTempFilesRemoved(t *testing.T) {
	s := openStore(t)
	old := filepath.Join(s.dir, tmpDir, "x.eml.123")
	fresh := filepath.Join(s.dir, tmpDir, "y.eml.456")
	os.WriteFile(old, []byte("x"), 0o600)
	os.WriteFile(fresh, []byte("y"), 0o600)
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, long, long)
	if _, err := Open(s.dir, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Error("stale temporary file kept")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Error("fresh temporary file (a write in progress elsewhere) removed")
	}
}

func TestFormat(t *testing.T) {
	m := Meta{
		ID: "20261125T103000.000000Z-aaaaaaaaaa", Time: time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC),
		User: "eve\x1b]0;pwned\x07", Size: 42, Outcome: "refuse", Reason: "bad\r\nthing \u202egnp.exe",
		Verdicts: []Verdict{{Filter: "av", Action: "reject", Reason: "Eicar", Duration: time.Millisecond}, {Filter: "x", Error: "boom"}},
		Held:     []string{"av"},
		Release: &ReleaseState{State: Released, Actor: "link", Instance: "mx1:42", Recipient: "eve@example.org",
			Time: time.Date(2026, 11, 26, 8, 0, 0, 0, time.UTC)},
	}
	var b bytes.Buffer
	if err := FormatList(&b, []Meta{m}); err != nil {
		t.Fatal(err)
	}
	if err := FormatMeta(&b, m); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"ID", m.ID, "2026-11-25 10:30:00", "refuse", "Eicar", "error: boom", "42 bytes", "Held by:",
		"RELEASE", " released ", "2026-11-26T08:00:00Z", "link mx1:42", "eve@example.org"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, bad := range []string{"\x1b", "\x07", "\r", "\u202e"} {
		if strings.Contains(out, bad) {
			t.Errorf("output contains %q:\n%q", bad, out)
		}
	}
}

// A stored file is never put over another: the rename into place fails
// when the name is taken, and both files stay as they were.
func TestRenameNoReplace(t *testing.T) {
	dir := t.TempDir()
	from, taken, free := filepath.Join(dir, "from"), filepath.Join(dir, "taken"), filepath.Join(dir, "free")
	for _, f := range []struct{ name, data string }{{from, "new"}, {taken, "old"}} {
		if err := os.WriteFile(f.name, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := renameNoReplace(from, taken); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("rename over an existing file: %v, want ErrExist", err)
	}
	for name, want := range map[string]string{from: "new", taken: "old"} {
		if got, err := os.ReadFile(name); err != nil || string(got) != want {
			t.Errorf("%s after the refused rename: %q, %v", filepath.Base(name), got, err)
		}
	}
	if err := renameNoReplace(from, free); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(free); err != nil || string(got) != "new" {
		t.Errorf("renamed file: %q, %v", got, err)
	}
	if _, err := os.Lstat(from); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the renamed file is still at its old name: %v", err)
	}
}

// Concurrent Stores share directory fsyncs, and each still returns only
// after an fsync of msg/ and of meta/ that began after its own rename
// into that directory had ended.
func TestConcurrentStoresShareDirectorySyncs(t *testing.T) {
	s := openStore(t)
	real := s.ops
	type span struct{ start, end time.Time }
	var mu sync.Mutex
	renamed := map[string]time.Time{} // file name in msg/ or meta/ → rename end
	syncs := map[string][]span{}      // directory → its fsyncs
	s.ops.placeNew = func(from, to string) error {
		err := real.placeNew(from, to)
		mu.Lock()
		renamed[filepath.Base(to)] = time.Now()
		mu.Unlock()
		return err
	}
	s.ops.syncDir = func(dir string) error {
		start := time.Now()
		time.Sleep(20 * time.Millisecond) // a slow disk: Stores pile up
		err := real.syncDir(dir)
		mu.Lock()
		syncs[filepath.Base(dir)] = append(syncs[filepath.Base(dir)], span{start, time.Now()})
		mu.Unlock()
		return err
	}
	const n = 16
	ids := make([]string, n)
	returned := make([]time.Time, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id, err := s.Store(context.Background(), testEnv, filters.BytesBody([]byte(testMsg)), testResult())
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], returned[i] = id, time.Now()
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for i, id := range ids {
		for dir, name := range map[string]string{"msg": id + ".eml", "meta": id + ".json"} {
			covered := false
			for _, sp := range syncs[dir] {
				covered = covered || sp.start.After(renamed[name]) && !sp.end.After(returned[i])
			}
			if !covered {
				t.Errorf("Store %s returned with no fsync of %s/ begun after its rename and ended before", id, dir)
			}
		}
	}
	for _, dir := range []string{"msg", "meta"} {
		if got := len(syncs[dir]); got >= n {
			t.Errorf("%d concurrent Stores made %d fsyncs of %s/: none shared", n, got, dir)
		}
	}
	t.Logf("%d Stores: %d fsyncs of msg/, %d of meta/", n, len(syncs["msg"]), len(syncs["meta"]))
}

// Callers whose sync failed get its error; a sync that began before a
// caller's change neither covers nor fails it.
func TestDirSyncSharedFailure(t *testing.T) {
	var d dirSync
	started := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	fsync := func() error {
		if calls.Add(1) == 1 {
			close(started)
			<-release
			return nil // the first sync succeeds
		}
		return syscall.EIO // every later one fails
	}
	first := make(chan error, 1)
	go func() { first <- d.sync(fsync) }()
	<-started
	late := make(chan error, 2)
	for range 2 {
		go func() { late <- d.sync(fsync) }()
	}
	time.Sleep(10 * time.Millisecond) // usually both queue behind the first
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first caller: %v", err)
	}
	for range 2 {
		if err := <-late; !errors.Is(err, syscall.EIO) {
			t.Errorf("a caller that arrived during the first sync got %v, want the next one's EIO", err)
		}
	}
	t.Logf("%d fsyncs for 3 callers", calls.Load())
}
