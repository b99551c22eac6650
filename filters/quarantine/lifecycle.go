package quarantine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Delete removes id from the store: its record, then its message, then its
// release state, each removal made durable (the directory fsynced) before
// the next, so that no crash leaves a record without its message. A
// message without a record (a crash between the two) is deleted as well.
// An id with neither is ErrNotFound.
func (s *Store) Delete(id string) error {
	if err := s.writable(id); err != nil {
		return err
	}
	found := false
	for _, f := range [...]struct{ sub, ext string }{{metaDir, ".json"}, {msgDir, ".eml"}, {releaseDir, ".json"}} {
		removed, err := s.removeSynced(f.sub, id+f.ext)
		if err != nil {
			return fmt.Errorf("quarantine: delete %s: %w", id, err)
		}
		found = found || removed && f.sub != releaseDir
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// PurgeResult counts what Purge removed.
type PurgeResult struct {
	Records  int // records, each with its message
	Orphans  int // messages whose record was gone (a crash between the two)
	Releases int // release states
}

func (r PurgeResult) String() string {
	return fmt.Sprintf("%d records, %d orphaned messages, %d release states", r.Records, r.Orphans, r.Releases)
}

// purgeBatch is how many directory entries Purge reads and removes at a
// time: it bounds memory, and each batch costs one fsync per directory.
const purgeBatch = 1024

// Purge removes every message whose id is from before before: records,
// messages and release states. It removes records before messages (each
// batch's record removals durable before any of their messages goes), as
// Delete does. A message without a record is removed only once its file is
// older than an hour, since Store writes the message first and may still
// be on its way to the record. Purge never touches newer ids or tmp/
// (Open cleans that), and tolerates other processes deleting and purging
// the same directory at the same time. On an error it goes on with the
// rest and returns what it removed and the first error; a failed directory
// sync stops it.
func (s *Store) Purge(before time.Time) (PurgeResult, error) {
	var res PurgeResult
	if s.readOnly {
		return res, ErrReadOnly
	}
	var first error
	note := func(err error) {
		if first == nil && err != nil && !errors.Is(err, os.ErrNotExist) {
			first = err
		}
	}
	metaPath := func(id string) string { return filepath.Join(s.dir, metaDir, id+".json") }
	hasRecord := func(id string) bool {
		_, err := os.Lstat(metaPath(id))
		note(err)
		return err == nil
	}

	// Records, and the messages of those this Purge removed.
	err := s.eachOld(metaDir, ".json", before, func(ids []string) error {
		gone, err := s.removeIDs(metaDir, ".json", ids, note)
		res.Records += len(gone)
		if err != nil {
			return err // the records may come back: keep their messages
		}
		_, err = s.removeIDs(msgDir, ".eml", gone, note)
		return err
	})
	if err == nil {
		// Messages a crash left without their record.
		err = s.eachOld(msgDir, ".eml", before, func(ids []string) error {
			var orphans []string
			for _, id := range ids {
				st, err := os.Lstat(filepath.Join(s.dir, msgDir, id+".eml"))
				note(err)
				if err == nil && s.now().Sub(st.ModTime()) >= staleAfter && !hasRecord(id) {
					orphans = append(orphans, id)
				}
			}
			gone, err := s.removeIDs(msgDir, ".eml", orphans, note)
			res.Orphans += len(gone)
			return err
		})
	}
	if err == nil {
		// Release states: those of the records removed above, and any
		// whose record went while a release was claiming it.
		err = s.eachOld(releaseDir, ".json", before, func(ids []string) error {
			var orphans []string
			for _, id := range ids {
				if !hasRecord(id) {
					orphans = append(orphans, id)
				}
			}
			gone, err := s.removeIDs(releaseDir, ".json", orphans, note)
			res.Releases += len(gone)
			return err
		})
	}
	if err != nil {
		return res, fmt.Errorf("quarantine: purge: %w", err)
	}
	if first != nil {
		return res, fmt.Errorf("quarantine: purge: %w", first)
	}
	return res, nil
}

// eachOld calls fn with the ids of the files ID+ext in sub/ whose id time
// is before before, a batch at a time.
func (s *Store) eachOld(sub, ext string, before time.Time, fn func(ids []string) error) error {
	d, err := os.Open(filepath.Join(s.dir, sub))
	if errors.Is(err, os.ErrNotExist) && sub == releaseDir {
		return nil // a store that never released anything, made by an older popgate
	}
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		entries, err := d.ReadDir(purgeBatch)
		var ids []string
		for _, e := range entries {
			id, ok := strings.CutSuffix(e.Name(), ext)
			if ok && e.Type().IsRegular() && validID(id) && idTime(id).Before(before) {
				ids = append(ids, id)
			}
		}
		if len(ids) > 0 {
			if err := fn(ids); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// removeIDs removes sub/ID+ext for each of ids, then fsyncs sub/ if it
// removed any, and returns the ids it removed. A file it cannot remove is
// passed to note and skipped (ENOENT: another process removed it); a failed
// fsync is returned.
func (s *Store) removeIDs(sub, ext string, ids []string, note func(error)) ([]string, error) {
	var gone []string
	for _, id := range ids {
		if err := s.ops.remove(filepath.Join(s.dir, sub, id+ext)); err != nil {
			note(err)
			continue
		}
		gone = append(gone, id)
	}
	if len(gone) == 0 {
		return nil, nil
	}
	if err := s.ops.syncDir(filepath.Join(s.dir, sub)); err != nil {
		return gone, fmt.Errorf("fsync %s: %w", sub, err)
	}
	return gone, nil
}

// RunRetention keeps the store's messages for retention: it purges what
// is older at once, then every every (an hour when not positive, or the
// retention when that is shorter), until ctx ends. A retention of zero or
// less keeps everything: it returns at once. Several instances sharing the
// directory may each run it.
func (s *Store) RunRetention(ctx context.Context, retention, every time.Duration) {
	if retention <= 0 || ctx.Err() != nil {
		return
	}
	if every <= 0 {
		every = min(time.Hour, retention)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		before := s.now().Add(-retention)
		res, err := s.Purge(before)
		ev := s.log.Debug()
		switch {
		case err != nil:
			ev = s.log.Error().Err(err)
		case res != PurgeResult{}:
			ev = s.log.Info()
		}
		ev.Str("dir", s.dir).Time("before", before).Int("records", res.Records).Int("orphans", res.Orphans).
			Int("release_states", res.Releases).Msg("quarantine: retention purge")
		if errors.Is(err, ErrReadOnly) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// idTime is the time an id was made, from its first part; id is valid.
func idTime(id string) time.Time {
	t, _ := time.Parse(idTimeLayout, id[:len(idTimeLayout)])
	return t
}
