package quarantine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestReleaseStateLifecycle(t *testing.T) {
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)

	if st, err := s.ReleaseStateOf(id); st != nil || err != nil {
		t.Fatalf("ReleaseStateOf before a claim = %v, %v", st, err)
	}
	pending := ReleaseState{State: ReleasePending, Actor: "link", Recipient: "alice@example.org", Instance: "mx1:42"}
	st, err := s.ClaimRelease(id, pending)
	if err != nil || st.ID != id || st.State != ReleasePending || st.Time.IsZero() {
		t.Fatalf("ClaimRelease = %+v, %v", st, err)
	}
	if f := files(t, s, tmpDir); len(f) > 0 {
		t.Errorf("tmp/ holds %v after a claim", f)
	}
	if fi, err := os.Stat(filepath.Join(s.dir, releaseDir, id+".json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("release state file: %v, %v", fi, err)
	}

	// A second claim loses and learns who holds it.
	got, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending, Actor: "cli", Instance: "mx2:7"})
	if !errors.Is(err, ErrReleaseClaimed) || got == nil || got.Instance != "mx1:42" || got.Actor != "link" {
		t.Fatalf("second ClaimRelease = %+v, %v", got, err)
	}

	done := ReleaseState{State: Released, Actor: "link", Recipient: "alice@example.org", Instance: "mx1:42", Time: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
	if err := s.SetReleaseState(id, done); err != nil {
		t.Fatal(err)
	}
	got, err = s.ReleaseStateOf(id)
	if done.ID = id; err != nil || *got != done {
		t.Fatalf("ReleaseStateOf = %+v, %v, want %+v", got, err, done)
	}
	m, err := s.Get(id)
	if err != nil || m.Release == nil || *m.Release != done {
		t.Fatalf("Get: Release %+v, %v", m.Release, err)
	}
	if list, _ := s.List(ListOptions{}); len(list) != 1 || list[0].Release == nil || list[0].Release.State != Released {
		t.Fatalf("List: %+v", list)
	}
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ro.ReleaseStateOf(id); err != nil || got.State != Released {
		t.Errorf("read-only ReleaseStateOf = %+v, %v", got, err)
	}

	// A delivery that failed for certain drops the claim: a retry may claim.
	if err := s.DropRelease(id); err != nil {
		t.Fatal(err)
	}
	if err := s.DropRelease(id); err != nil {
		t.Errorf("DropRelease of no state: %v", err)
	}
	if st, err := s.ReleaseStateOf(id); st != nil || err != nil {
		t.Fatalf("ReleaseStateOf after DropRelease = %v, %v", st, err)
	}
	if _, err := s.ClaimRelease(id, pending); err != nil {
		t.Fatalf("claim after a drop: %v", err)
	}
	if m, _ := s.Get(id); m.Release == nil || m.Release.State != ReleasePending {
		t.Errorf("Get after the new claim: %+v", m.Release)
	}

	// The record file cannot carry a release state of its own.
	os.Remove(filepath.Join(s.dir, releaseDir, id+".json"))
	rec, _ := os.ReadFile(filepath.Join(s.dir, metaDir, id+".json"))
	rec = bytes.Replace(rec, []byte(`"v": 1,`), []byte(`"v": 1, "release": {"id": "`+id+`", "state": "released"},`), 1)
	os.WriteFile(filepath.Join(s.dir, metaDir, id+".json"), rec, 0o600)
	if m, err := s.Get(id); err != nil || m.Release != nil {
		t.Errorf("Get of a record naming a release: %+v, %v", m.Release, err)
	}
}

func TestReleaseStateErrors(t *testing.T) {
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	missing := "20261125T103000.000000Z-aaaaaaaaaa"
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ok := ReleaseState{State: ReleasePending}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"claim without a record", func() error { _, err := s.ClaimRelease(missing, ok); return err }, ErrNotFound},
		{"claim of an invalid id", func() error { _, err := s.ClaimRelease("../meta/"+id, ok); return err }, ErrInvalidID},
		{"set of an invalid id", func() error { return s.SetReleaseState(id+"/", ok) }, ErrInvalidID},
		{"drop of an invalid id", func() error { return s.DropRelease("..") }, ErrInvalidID},
		{"state of an invalid id", func() error { _, err := s.ReleaseStateOf(""); return err }, ErrInvalidID},
		{"claim read-only", func() error { _, err := ro.ClaimRelease(id, ok); return err }, ErrReadOnly},
		{"set read-only", func() error { return ro.SetReleaseState(id, ok) }, ErrReadOnly},
		{"drop read-only", func() error { return ro.DropRelease(id) }, ErrReadOnly},
		{"unknown state", func() error { _, err := s.ClaimRelease(id, ReleaseState{State: "done"}); return err }, nil},
		{"another id's state", func() error { return s.SetReleaseState(id, ReleaseState{ID: missing, State: Released}) }, nil},
	} {
		err := tc.call()
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if st, _ := s.ReleaseStateOf(id); st != nil {
		t.Errorf("a failed call left a state: %+v", st)
	}

	// A state file that is too large, corrupt or names another id.
	p := filepath.Join(s.dir, releaseDir, id+".json")
	for _, bad := range []string{"{", strings.Repeat(" ", maxMetaSize+1), `{"id":"` + missing + `","state":"released"}`} {
		os.WriteFile(p, []byte(bad), 0o600)
		if st, err := s.ReleaseStateOf(id); err == nil {
			t.Errorf("ReleaseStateOf(%.20q) = %+v", bad, st)
		}
		// Shown as uncertain: it may say the message was delivered.
		if m, err := s.Get(id); err != nil || m.Release == nil || m.Release.State != ReleaseUncertain || m.Release.Error == "" {
			t.Errorf("Get with a bad state: %+v, %v", m.Release, err)
		}
		if _, err := s.ClaimRelease(id, ok); err == nil {
			t.Errorf("ClaimRelease over a bad state succeeded")
		}
	}
}

// A store made by an older popgate has no release/: read-only browsing
// works, and Open adds it.
func TestReleaseDirMissing(t *testing.T) {
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	os.Remove(filepath.Join(s.dir, releaseDir))
	ro, err := OpenReadOnly(s.dir, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if m, err := ro.Get(id); err != nil || m.Release != nil {
		t.Fatalf("Get = %+v, %v", m.Release, err)
	}
	if _, err := os.Stat(filepath.Join(s.dir, releaseDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("OpenReadOnly created release/")
	}
	if _, err := Open(s.dir, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(s.dir, releaseDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("release/ after Open: %v, %v", fi, err)
	}
	if _, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending}); err != nil {
		t.Fatal(err)
	}
}

var claimSequence = []string{
	"create tmp/.json", "write tmp/.json", "fsync tmp/.json", "close tmp/.json",
	"link tmp/.json release/.json", "fsyncdir release", "remove tmp/.json",
}

// A claim is durable before it counts; when any step fails, the claim is
// not made (no state, nothing in tmp/), so that nobody delivers on it.
func TestClaimFaults(t *testing.T) {
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	rec := &recorder{}
	rec.install(s)
	if _, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rec.ops, claimSequence) {
		t.Fatalf("operations\n%s\nwant\n%s", strings.Join(rec.ops, "\n"), strings.Join(claimSequence, "\n"))
	}
	for _, op := range claimSequence[:len(claimSequence)-1] { // the last: the claim is made; tmp/ is cleaned by Open
		t.Run(op, func(t *testing.T) {
			s := openStore(t)
			id := storeAt(t, s, time.Now(), testMsg)
			rec := &recorder{fail: op, failErr: syscall.EIO}
			rec.install(s)
			st, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending})
			if !errors.Is(err, syscall.EIO) || errors.Is(err, ErrReleaseClaimed) {
				t.Fatalf("ClaimRelease = %+v, %v", st, err)
			}
			if got := exists(s, id); got != "meta+msg" {
				t.Errorf("left %s", got)
			}
			if f := files(t, s, tmpDir); len(f) > 0 {
				t.Errorf("tmp/ holds %v", f)
			}
			s.ops = osOps()
			if _, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending}); err != nil {
				t.Errorf("a retry: %v", err)
			}
		})
	}

	// NFS: the reply to a link is lost, the client retries, and the server
	// says EEXIST for the link it just made. The claim is ours.
	t.Run("link made but reported as existing", func(t *testing.T) {
		s := openStore(t)
		id := storeAt(t, s, time.Now(), testMsg)
		s.ops.link = func(from, to string) error {
			if err := os.Link(from, to); err != nil {
				return err
			}
			return &os.LinkError{Op: "link", Old: from, New: to, Err: syscall.EEXIST}
		}
		if st, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending, Instance: "a"}); err != nil || st.Instance != "a" {
			t.Fatalf("ClaimRelease = %+v, %v", st, err)
		}
		if _, err := s.ClaimRelease(id, ReleaseState{State: ReleasePending, Instance: "b"}); !errors.Is(err, ErrReleaseClaimed) {
			t.Fatalf("second ClaimRelease: %v", err)
		}
	})
}

// SetReleaseState replaces atomically; when the directory sync fails the
// new state stays (removing it would drop the claim and let a retry
// deliver a second time).
func TestSetReleaseStateFaults(t *testing.T) {
	s := openStore(t)
	id := storeAt(t, s, time.Now(), testMsg)
	claim(t, s, id)
	real := osOps()
	s.ops.syncDir = func(dir string) error {
		if filepath.Base(dir) == releaseDir {
			return syscall.EIO
		}
		return real.syncDir(dir)
	}
	if err := s.SetReleaseState(id, ReleaseState{State: ReleaseUncertain}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("SetReleaseState: %v", err)
	}
	if st, err := s.ReleaseStateOf(id); err != nil || st.State != ReleaseUncertain {
		t.Errorf("state after a failed sync: %+v, %v", st, err)
	}
	s.ops.rename = func(string, string) error { return syscall.ENOSPC }
	if err := s.SetReleaseState(id, ReleaseState{State: Released}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("SetReleaseState: %v", err)
	}
	if st, err := s.ReleaseStateOf(id); err != nil || st.State != ReleaseUncertain {
		t.Errorf("state after a failed rename: %+v, %v", st, err)
	}
	if f := files(t, s, tmpDir); len(f) > 0 {
		t.Errorf("tmp/ holds %v", f)
	}
}

// Releases racing for one message, from several Store values on one
// directory (as several instances would): exactly one claim wins, and
// every loser is told the winner's state.
func TestClaimReleaseRace(t *testing.T) {
	s := openStore(t)
	const racers = 16
	stores := []*Store{s}
	for range 3 {
		o, err := Open(s.dir, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, o)
	}
	for round := range 20 {
		id := storeAt(t, s, time.Now(), fmt.Sprint(round))
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []string
			seen    []string
		)
		start := make(chan struct{})
		for r := range racers {
			wg.Go(func() {
				me := fmt.Sprint("racer ", r)
				<-start
				st, err := stores[r%len(stores)].ClaimRelease(id, ReleaseState{State: ReleasePending, Instance: me})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					winners = append(winners, me)
				case errors.Is(err, ErrReleaseClaimed) && st != nil:
					seen = append(seen, st.Instance)
				default:
					t.Errorf("%s: %+v, %v", me, st, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners %v", round, len(winners), winners)
		}
		for _, who := range seen {
			if who != winners[0] {
				t.Errorf("round %d: a loser was told %q won, not %q", round, who, winners[0])
			}
		}
		if st, _ := s.ReleaseStateOf(id); st == nil || st.Instance != winners[0] {
			t.Errorf("round %d: state %+v, winner %s", round, st, winners[0])
		}
	}
	if f := files(t, s, tmpDir); len(f) > 0 {
		t.Errorf("tmp/ holds %v", f)
	}
}
