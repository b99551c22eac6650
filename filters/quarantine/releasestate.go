package quarantine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// The states of a release (ReleaseState.State).
const (
	// ReleasePending: a release claimed the message and is delivering it.
	ReleasePending = "pending"
	// Released: the message was delivered.
	Released = "released"
	// ReleaseUncertain: the delivery may or may not have happened (a
	// timeout after the data was sent); releasing again could deliver it
	// twice, so only an administrator who checked the mailbox should drop
	// the state.
	ReleaseUncertain = "uncertain"
)

// ReleaseState is what release/ID.json says of a message's release. The
// file lives in the quarantine directory because that is what all
// instances, and the command line while the daemon runs, share.
type ReleaseState struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`               // ReleasePending, Released or ReleaseUncertain
	Actor     string    `json:"actor,omitempty"`     // who released it: "cli", "api", "link"
	Recipient string    `json:"recipient,omitempty"` // the envelope recipient it went to
	Instance  string    `json:"instance,omitempty"`  // hostname:pid of the releasing process
	Time      time.Time `json:"time"`
	Error     string    `json:"error,omitempty"`
}

// ErrReleaseClaimed is returned by ClaimRelease when the message already
// has a release state: another release is under way or done.
var ErrReleaseClaimed = errors.New("quarantine: a release of this message was already claimed")

// maxClaimTries bounds ClaimRelease's retries when the state it lost to is
// dropped before it can read it.
const maxClaimTries = 3

// ClaimRelease creates the release state of id, st, unless it has one: of
// several processes claiming the same id (also on different hosts sharing
// the directory over NFS), exactly one succeeds. The others get the state
// that exists and ErrReleaseClaimed. An id without a record is ErrNotFound.
// st.ID may be empty; a zero st.Time is now.
//
// The state is written to tmp/ and synced, then hard-linked to its final
// name: link(2) fails when the name exists, atomically, on NFS too (unlike
// O_EXCL on old NFS versions, and unlike rename, which replaces).
func (s *Store) ClaimRelease(id string, st ReleaseState) (*ReleaseState, error) {
	data, err := s.releaseData(id, &st)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(filepath.Join(s.dir, metaDir, id+".json")); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	} else if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	final := filepath.Join(s.dir, releaseDir, id+".json")
	var existing *ReleaseState
	err = s.writeFile(id+".json", writeBytes(data), func(tmp string) error {
		defer s.removeLogged(tmp) // the final name, once linked, holds the file
		for range maxClaimTries {
			err := s.link(tmp, final)
			if err == nil {
				if err := s.ops.syncDir(filepath.Join(s.dir, releaseDir)); err != nil {
					// Not durable: give the claim up rather than deliver on it.
					s.removeLogged(final)
					return fmt.Errorf("fsync directory: %w", err)
				}
				return nil
			}
			if !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("link: %w", err)
			}
			if existing, err = s.ReleaseStateOf(id); err != nil || existing != nil {
				return err
			}
			// Dropped in between: claim again.
		}
		return errors.New("the release state keeps appearing and vanishing")
	})
	switch {
	case err != nil:
		return existing, err
	case existing != nil:
		return existing, fmt.Errorf("%w: %s is %s", ErrReleaseClaimed, id, existing.State)
	}
	return &st, nil
}

// link hard-links from to to. On NFS a link whose reply was lost is
// retried by the client and then fails with EEXIST although it was made;
// the two names being one file tells that apart.
func (s *Store) link(from, to string) error {
	err := s.ops.link(from, to)
	if err != nil && errors.Is(err, os.ErrExist) {
		a, aerr := os.Stat(from)
		b, berr := os.Stat(to)
		if aerr == nil && berr == nil && os.SameFile(a, b) {
			return nil
		}
	}
	return err
}

// SetReleaseState replaces the release state of id with st (a claim's
// ReleasePending by Released or ReleaseUncertain), atomically: readers see
// the old state or the new one. st.ID may be empty; a zero st.Time is now.
func (s *Store) SetReleaseState(id string, st ReleaseState) error {
	data, err := s.releaseData(id, &st)
	if err != nil {
		return err
	}
	final := filepath.Join(s.dir, releaseDir, id+".json")
	return s.writeFile(id+".json", writeBytes(data), func(tmp string) error {
		if err := s.ops.rename(tmp, final); err != nil {
			s.removeLogged(tmp)
			return fmt.Errorf("rename: %w", err)
		}
		// On failure the new state stays: removing it would drop the claim
		// and let a retry deliver again.
		if err := s.ops.syncDir(filepath.Join(s.dir, releaseDir)); err != nil {
			return fmt.Errorf("fsync directory: %w", err)
		}
		return nil
	})
}

// DropRelease removes the release state of id, if any: the delivery failed
// for certain, and a later release may deliver.
func (s *Store) DropRelease(id string) error {
	if err := s.writable(id); err != nil {
		return err
	}
	_, err := s.removeSynced(releaseDir, id+".json")
	return err
}

// ReleaseStateOf returns the release state of id, nil when it has none.
func (s *Store) ReleaseStateOf(id string) (*ReleaseState, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	var st ReleaseState
	found, err := readJSON(filepath.Join(s.dir, releaseDir, id+".json"), "release state "+id, &st)
	if err != nil || !found {
		return nil, err
	}
	if st.ID != id {
		return nil, fmt.Errorf("quarantine: release state %s names id %s", id, trimID(st.ID))
	}
	return &st, nil
}

// releaseData checks id and st for writing (filling st.ID and st.Time)
// and returns st as the file's content.
func (s *Store) releaseData(id string, st *ReleaseState) ([]byte, error) {
	if err := s.writable(id); err != nil {
		return nil, err
	}
	switch {
	case st.ID == "":
		st.ID = id
	case st.ID != id:
		return nil, fmt.Errorf("quarantine: release state for %s names id %s", id, trimID(st.ID))
	}
	switch st.State {
	case ReleasePending, Released, ReleaseUncertain:
	default:
		return nil, fmt.Errorf("quarantine: invalid release state %q", st.State)
	}
	if st.Time.IsZero() {
		st.Time = s.now().UTC()
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	return append(data, '\n'), nil
}

// writable checks that id is valid and the store open for writing.
func (s *Store) writable(id string) error {
	if s.readOnly {
		return ErrReadOnly
	}
	return checkID(id)
}

func writeBytes(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}
}
