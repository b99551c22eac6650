// Package quarantine is a durable directory store of original messages: the
// chain puts a message here before it delivers a lossy change of it or a
// notice in its place (docs/ARCHITECTURE.md §4, invariant 4), and
// `popgate quarantine list | show ID | export ID` browses it.
//
// Layout of the directory (created 0700, files 0600):
//
//	tmp/             files being written; never read
//	msg/ID.eml       the original, byte for byte as the upstream sent it
//	meta/ID.json     its metadata record (Meta)
//	release/ID.json  its release state (ReleaseState), once a release began
//
// Store writes both files to tmp/, renames the message into msg/, fsyncs
// both files and msg/ at once, then renames the record into meta/ and
// fsyncs that. A record is only ever visible once its message is durable,
// and Store returns the id only once both are; on any failure it removes
// what it wrote and returns an error, so that the chain applies on_error.
// Delete and Purge remove in the opposite order: the record first, then
// the message.
package quarantine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/iobuf"
	"github.com/popgate/popgate/internal/mailtext"
)

// Subdirectories of a store.
const (
	tmpDir     = "tmp"
	msgDir     = "msg"
	metaDir    = "meta"
	releaseDir = "release"
)

// staleAfter is the age after which Open removes leftovers in tmp/ (from a
// crash: a Store in progress never takes that long).
const staleAfter = time.Hour

// metaVersion is the format version written into every record.
const metaVersion = 1

// ErrReadOnly is returned by Store on a store opened with OpenReadOnly.
var ErrReadOnly = errors.New("quarantine: store opened read-only")

// Store is a quarantine directory. It is safe for concurrent use, also by
// several processes sharing the directory.
type Store struct {
	dir      string
	log      zerolog.Logger
	readOnly bool
	now      func() time.Time
	ops      fsOps
	stored   func(Meta) // OnStored
	// Concurrent Stores share the fsyncs of msg/ and meta/.
	msgSync, metaSync dirSync
}

// dirSync coalesces the fsyncs of one directory. A caller needs a sync
// that starts after its own change to the directory; callers arriving
// while one runs share the next, so n concurrent Stores wait for about
// two directory syncs, not n.
type dirSync struct {
	mu      sync.Mutex
	started uint64        // syncs started
	done    uint64        // syncs ended
	failed  uint64        // the last sync that failed, 0 for none
	err     error         // its error
	running chan struct{} // closed when the running sync ends; nil if none
}

// sync returns once a run of fsync that started after the call has ended;
// its error, or a later one's, is the caller's.
func (d *dirSync) sync(fsync func() error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	need := d.started + 1 // a running sync may have begun before our change
	for d.done < need {
		if ch := d.running; ch != nil {
			d.mu.Unlock()
			<-ch
			d.mu.Lock()
			continue
		}
		d.started++
		n, ch := d.started, make(chan struct{})
		d.running = ch
		d.mu.Unlock()
		err := fsync()
		d.mu.Lock()
		d.done, d.running = n, nil
		if err != nil {
			d.failed, d.err = n, err
		}
		close(ch)
	}
	if d.failed >= need {
		return d.err
	}
	return nil
}

var _ filters.Quarantine = (*Store)(nil)

// OnStored makes f see the record of every original Store writes, once it
// is durable (the notifier's digest). Call it before the store is in use.
func (s *Store) OnStored(f func(Meta)) { s.stored = f }

// tempFile is what Store writes to; *os.File implements it. Tests wrap it to
// inject failures.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

// fsOps are the filesystem operations Store uses, replaceable by tests to
// record their order and inject failures.
type fsOps struct {
	createTemp func(dir, pattern string) (tempFile, error)
	syncFile   func(f tempFile) error
	rename     func(from, to string) error // replaces to
	placeNew   func(from, to string) error // fails with fs.ErrExist if to exists
	syncDir    func(dir string) error
	remove     func(name string) error
	link       func(from, to string) error
}

func osOps() fsOps {
	return fsOps{
		createTemp: func(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) },
		syncFile:   func(f tempFile) error { return f.Sync() },
		rename:     os.Rename,
		placeNew:   renameNoReplace,
		syncDir:    syncDir,
		remove:     os.Remove,
		link:       os.Link,
	}
}

// renameNoReplace renames from to to unless to exists, in one step
// (renameat2 RENAME_NOREPLACE): no lookup before it and no window between
// the two. A file system without that flag gets a lookup, then a rename.
func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
		if _, err := os.Lstat(to); err == nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
		}
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// syncDir fsyncs a directory, making the entries created or renamed in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Open opens the store in dir for writing and reading, creating dir and its
// subdirectories (mode 0700) when missing. It checks that a file can be
// written, synced and removed there, and removes leftovers of interrupted
// writes older than an hour.
func Open(dir string, log zerolog.Logger) (*Store, error) {
	if dir == "" {
		return nil, errors.New("quarantine: no directory")
	}
	s := &Store{dir: dir, log: log, now: time.Now, ops: osOps()}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if st, err := os.Stat(dir); err == nil && st.Mode().Perm()&0o077 != 0 {
		log.Warn().Str("dir", dir).Str("mode", st.Mode().Perm().String()).
			Msg("quarantine directory is accessible to other users; it holds mail (0700 is advised)")
	}
	for _, sub := range []string{tmpDir, msgDir, metaDir, releaseDir} {
		p := filepath.Join(dir, sub)
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("quarantine: %w", err)
		}
		if st, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("quarantine: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("quarantine: %s is not a directory", p)
		}
	}
	if err := s.checkWritable(); err != nil {
		return nil, err
	}
	s.removeStale()
	return s, nil
}

// OpenReadOnly opens an existing store for browsing only (List, Get, Open,
// Verify, ReleaseStateOf); it creates and writes nothing, and every method
// that would write fails with ErrReadOnly. A store without release/ (made
// by an older popgate) is fine: nothing in it has a release state.
func OpenReadOnly(dir string, log zerolog.Logger) (*Store, error) {
	for _, sub := range []string{msgDir, metaDir} {
		p := filepath.Join(dir, sub)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("quarantine: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("quarantine: %s is not a directory", p)
		}
	}
	return &Store{dir: dir, log: log, readOnly: true, now: time.Now, ops: osOps()}, nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) checkWritable() error {
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "check-*")
	if err != nil {
		return fmt.Errorf("quarantine: directory not writable: %w", err)
	}
	name := f.Name()
	_, err = f.Write([]byte("popgate\n"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	if err == nil {
		// Also makes the subdirectories Open may just have created durable.
		for _, d := range []string{filepath.Join(s.dir, msgDir), filepath.Join(s.dir, metaDir), filepath.Join(s.dir, releaseDir), s.dir} {
			if err = syncDir(d); err != nil {
				break
			}
		}
		_ = syncDir(filepath.Dir(s.dir)) // best effort: it may not be readable
	}
	if err != nil {
		return fmt.Errorf("quarantine: directory not writable: %w", err)
	}
	return nil
}

// removeStale removes files in tmp/ older than staleAfter.
func (s *Store) removeStale() {
	dir := filepath.Join(s.dir, tmpDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || s.now().Sub(info.ModTime()) < staleAfter {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err == nil {
			s.log.Info().Str("file", p).Msg("quarantine: removed the leftover of an interrupted write")
		}
	}
}

// Store writes original and its metadata record durably and returns the id
// they are stored under. env and res may be nil; they fill the record.
func (s *Store) Store(ctx context.Context, env *filters.Envelope, original filters.Body, res *filters.Result) (string, error) {
	if s.readOnly {
		return "", ErrReadOnly
	}
	if original == nil {
		return "", errors.New("quarantine: no message to store")
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("quarantine: %w", err)
	}
	now := s.now().UTC()
	id, err := newID(now)
	if err != nil {
		return "", err
	}
	var size int64
	h := sha256.New()
	msg, err := s.fillTemp(id+".eml", func(w io.Writer) error {
		r, err := original.Open()
		if err != nil {
			return err
		}
		defer r.Close()
		size, err = iobuf.Copy(io.MultiWriter(w, h), mailtext.NewReader(ctx, r))
		if err != nil {
			return err
		}
		if want := original.Size(); size != want {
			return fmt.Errorf("read %d bytes of a %d-byte message", size, want)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	m := newMeta(id, now, env, res, size, hex.EncodeToString(h.Sum(nil)))
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		s.closeRemove(msg)
		return "", fmt.Errorf("quarantine: %w", err)
	}
	meta, err := s.fillTemp(id+".json", writeBytes(append(data, '\n')))
	if err != nil {
		s.closeRemove(msg)
		return "", err
	}
	if err := s.place(ctx, id, msg, meta); err != nil {
		return "", err
	}
	if s.stored != nil {
		s.stored(m)
	}
	return id, nil
}

// place makes msg and meta, the filled temporary files of id's message and
// record, durable under their final names, the record last; on failure it
// removes what it made, the record first (as Delete does).
//
// The message is renamed into msg/ before it is synced, so that its data,
// its name and the record's data are synced at once: fsyncs issued
// together share the disk's cache flush (and a journal's commit), so that
// a Store waits for the disk twice, not four times. The record is renamed
// only once all three fsyncs have returned, and meta/ is synced before
// Store returns: without relying on any order the file system may keep
// between unsynced changes, whatever a crash keeps, a record has its
// message, whole. A crash before the record's rename can leave the message
// without its record, whole or not, as a crash between the two renames
// always could: the id was never returned, nothing refers to it, and Purge
// removes such messages.
func (s *Store) place(ctx context.Context, id string, msg, meta tempFile) error {
	msgName, metaName := id+".eml", id+".json"
	msgPath := filepath.Join(s.dir, msgDir, msgName)
	metaPath := filepath.Join(s.dir, metaDir, metaName)
	placed := 0 // how many of msg and meta are renamed into place
	fail := func(name, what string, err error) error {
		if placed == 2 {
			s.removeLogged(metaPath)
		} else {
			s.removeLogged(meta.Name())
		}
		if placed == 0 {
			s.removeLogged(msg.Name())
		} else {
			// The message alone is of no use and must not linger visibly.
			s.removeLogged(msgPath)
			_ = s.ops.syncDir(filepath.Join(s.dir, msgDir))
		}
		return fmt.Errorf("quarantine: write %s: %s%w", name, what, err)
	}

	if err := ctx.Err(); err != nil {
		return fail(msgName, "", err)
	}
	// Never over an existing id's files (50 random bits: it does not happen).
	if err := s.ops.placeNew(msg.Name(), msgPath); err != nil {
		return fail(msgName, "rename: ", err)
	}
	placed = 1
	errs := syncAll(
		func() error { return s.syncClose(msg) },
		func() error { return s.syncClose(meta) },
		func() error {
			if err := s.msgSync.sync(func() error { return s.ops.syncDir(filepath.Join(s.dir, msgDir)) }); err != nil {
				return fmt.Errorf("fsync directory: %w", err)
			}
			return nil
		})
	for i, name := range []string{msgName, metaName, msgName} {
		if errs[i] != nil {
			return fail(name, "", errs[i])
		}
	}
	if err := ctx.Err(); err != nil {
		return fail(metaName, "", err)
	}
	if err := s.ops.placeNew(meta.Name(), metaPath); err != nil {
		return fail(metaName, "rename: ", err)
	}
	placed = 2
	if err := s.metaSync.sync(func() error { return s.ops.syncDir(filepath.Join(s.dir, metaDir)) }); err != nil {
		return fail(metaName, "fsync directory: ", err)
	}
	return nil
}

// syncAll runs fs at once and returns their errors.
func syncAll(fs ...func() error) []error {
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs[1:] {
		wg.Go(func() { errs[i+1] = f() })
	}
	errs[0] = fs[0]()
	wg.Wait()
	return errs
}

// fillTemp creates a file in tmp/ for name and fills it; the caller syncs
// and closes it. On failure it removes the file. Errors name the file name
// is written for.
func (s *Store) fillTemp(name string, fill func(io.Writer) error) (tempFile, error) {
	f, err := s.ops.createTemp(filepath.Join(s.dir, tmpDir), name+".*")
	if err != nil {
		return nil, fmt.Errorf("quarantine: create %s: %w", name, err)
	}
	if err := fill(f); err != nil {
		s.closeRemove(f)
		return nil, fmt.Errorf("quarantine: write %s: %w", name, err)
	}
	return f, nil
}

// syncClose fsyncs and closes f, a file fillTemp made.
func (s *Store) syncClose(f tempFile) error {
	if err := s.ops.syncFile(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

// closeRemove closes and removes f, a file fillTemp made that is not
// wanted.
func (s *Store) closeRemove(f tempFile) {
	_ = f.Close()
	s.removeLogged(f.Name())
}

// writeFile writes a file in tmp/ (create, fill, fsync, close) and hands
// its name to put, which moves it into place and removes whatever it leaves
// unfinished when it fails. A failure before put removes the temporary
// file. Errors name the file name is written for.
func (s *Store) writeFile(name string, fill func(io.Writer) error, put func(tmp string) error) error {
	f, err := s.fillTemp(name, fill)
	if err != nil {
		return err
	}
	if err := s.syncClose(f); err != nil {
		s.removeLogged(f.Name())
		return fmt.Errorf("quarantine: write %s: %w", name, err)
	}
	if err := put(f.Name()); err != nil {
		return fmt.Errorf("quarantine: write %s: %w", name, err)
	}
	return nil
}

// removeLogged removes a file the store wrote and no longer wants, logging
// (not returning) a failure: the caller reports its own error.
func (s *Store) removeLogged(name string) {
	if err := s.ops.remove(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Error().Err(err).Str("file", name).Msg("quarantine: cannot remove a failed write")
	}
}

// removeSynced removes sub/name and fsyncs sub/. A file that does not exist
// is (false, nil).
func (s *Store) removeSynced(sub, name string) (bool, error) {
	err := s.ops.remove(filepath.Join(s.dir, sub, name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err == nil {
		err = s.ops.syncDir(filepath.Join(s.dir, sub))
	}
	return err == nil, err
}

// Meta is the metadata record of a quarantined message.
type Meta struct {
	Version   int       `json:"v"`
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	User      string    `json:"user,omitempty"`
	SessionID string    `json:"session_id,omitempty"`
	Client    string    `json:"client,omitempty"`
	Listener  string    `json:"listener,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	MsgNum    int       `json:"msg_num,omitempty"`
	UIDL      string    `json:"uidl,omitempty"`
	Command   string    `json:"command,omitempty"`
	Size      int64     `json:"size"`
	SHA256    string    `json:"sha256"`
	// Verdicts are the chain's steps up to the decision that needed the
	// quarantine.
	Verdicts []Verdict `json:"verdicts,omitempty"`
	// Held names the filters that held the message back: those whose step
	// was a Reject or a lossy Replace (filters.Step.Lossy), in chain order.
	// A released copy passes these filters and no others.
	Held []string `json:"held,omitempty"`
	// Outcome is the chain's outcome when the original was stored:
	// "refuse" (withheld; a notice may stand in for it) or "deliver" (a
	// changed form was delivered).
	Outcome    string `json:"outcome,omitempty"`
	Reason     string `json:"reason,omitempty"`
	FailedOpen bool   `json:"failed_open,omitempty"`
	// Release is the message's release state, nil when no release began.
	// It is not part of the record file: Get and List fill it from
	// release/ID.json (see ClaimRelease).
	Release *ReleaseState `json:"release,omitempty"`
}

// Verdict is one filter's step in a Meta.
type Verdict struct {
	Filter   string        `json:"filter"`
	Action   string        `json:"action,omitempty"`
	Reason   string        `json:"reason,omitempty"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

func newMeta(id string, now time.Time, env *filters.Envelope, res *filters.Result, size int64, sum string) Meta {
	m := Meta{Version: metaVersion, ID: id, Time: now, Size: size, SHA256: sum}
	if env != nil {
		m.User, m.SessionID, m.Listener, m.Upstream = env.User, env.SessionID, env.Listener, env.Upstream
		m.MsgNum, m.UIDL, m.Command = env.MsgNum, env.UIDL, env.Command
		if env.Client.IsValid() {
			m.Client = env.Client.String()
		}
	}
	if res != nil {
		m.Outcome, m.Reason, m.FailedOpen = res.Outcome.String(), res.Reason, res.FailedOpen
		for _, st := range res.Steps {
			v := Verdict{Filter: st.Filter, Reason: st.Reason, Duration: st.Duration}
			if st.Err != nil {
				v.Error = st.Err.Error()
			} else {
				v.Action = st.Action.String()
			}
			m.Verdicts = append(m.Verdicts, v)
		}
		m.Held = HeldBy(res)
		if m.Reason == "" {
			// A lossy change is delivered without a reason of the
			// chain's; the filters that made it say what they did.
			var reasons []string
			for _, st := range res.Steps {
				if st.Err == nil && st.Lossy && st.Reason != "" {
					reasons = append(reasons, st.Filter+": "+st.Reason)
				}
			}
			m.Reason = strings.Join(reasons, "; ")
		}
	}
	return m
}

// HeldBy names the filters that held a message back in res: those whose
// step was a Reject or a lossy Replace, in chain order.
func HeldBy(res *filters.Result) []string {
	var held []string
	for _, st := range res.Steps {
		if st.Err == nil && (st.Action == filters.Reject || st.Action == filters.Replace && st.Lossy) {
			held = append(held, st.Filter)
		}
	}
	return held
}

// trimID is used in error messages about invalid ids: short and printable.
func trimID(id string) string {
	if len(id) > 64 {
		id = id[:64] + "..."
	}
	return strings.ToValidUTF8(fmt.Sprintf("%q", id), "?")
}
