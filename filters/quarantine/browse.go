package quarantine

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

// maxMetaSize bounds the metadata records and release states read.
const maxMetaSize = 4 << 20

// ListOptions selects what List returns.
type ListOptions struct {
	// User, when not empty, keeps only the records of this user.
	User string
	// Limit, when positive, is the most records returned.
	Limit int
}

// List returns the records in the store, newest first. Records that cannot
// be read are skipped with a warning in the log.
func (s *Store) List(opts ListOptions) ([]Meta, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, metaDir))
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && validID(id) && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	var out []Meta
	for _, id := range ids {
		if opts.Limit > 0 && len(out) >= opts.Limit {
			break
		}
		m, err := s.Get(id)
		if err != nil {
			s.log.Warn().Err(err).Str("id", id).Msg("quarantine: skipping an unreadable record")
			continue
		}
		if opts.User != "" && m.User != opts.User {
			continue
		}
		out = append(out, m)
	}
	return out, nil
}

// Get returns the record of id, with its release state (Meta.Release).
func (s *Store) Get(id string) (Meta, error) {
	if err := checkID(id); err != nil {
		return Meta{}, err
	}
	var m Meta
	found, err := readJSON(filepath.Join(s.dir, metaDir, id+".json"), "record "+id, &m)
	if err != nil {
		return Meta{}, err
	}
	if !found {
		return Meta{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if m.ID != id {
		return Meta{}, fmt.Errorf("quarantine: record %s names id %s", id, trimID(m.ID))
	}
	m.Release, err = s.ReleaseStateOf(id)
	if err != nil {
		// A state that cannot be read may say it was delivered: show the
		// record (release refuses it, ClaimRelease fails on it) as such.
		m.Release = &ReleaseState{ID: id, State: ReleaseUncertain, Error: err.Error()}
	}
	return m, nil
}

// readJSON decodes the JSON file at path, of at most maxMetaSize bytes,
// into v; what names it in errors. A missing file is (false, nil).
func readJSON(path, what string, v any) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("quarantine: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return false, fmt.Errorf("quarantine: %w", err)
	}
	if len(data) > maxMetaSize {
		return false, fmt.Errorf("quarantine: %s is larger than %d bytes", what, maxMetaSize)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("quarantine: %s: %w", what, err)
	}
	return true, nil
}

// Open returns the original message of id, byte for byte (for export).
// The caller closes it.
func (s *Store) Open(id string) (io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	p := filepath.Join(s.dir, msgDir, id+".eml")
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("quarantine: %s is not a regular file", p)
	}
	return f, nil
}

// Original returns the original of id as a filters.Body (Remove leaves it
// in the store), after checking it against its record, and the record.
func (s *Store) Original(id string) (filters.Body, Meta, error) {
	if err := s.Verify(id); err != nil {
		return nil, Meta{}, err
	}
	m, err := s.Get(id)
	if err != nil {
		return nil, Meta{}, err
	}
	return storedBody{s: s, id: id, size: m.Size}, m, nil
}

// storedBody is an original in the store as a filters.Body.
type storedBody struct {
	s    *Store
	id   string
	size int64
}

func (b storedBody) Open() (io.ReadCloser, error) { return b.s.Open(b.id) }
func (b storedBody) Size() int64                  { return b.size }
func (b storedBody) Remove() error                { return nil }

// Verify checks that the message of id has the size and SHA-256 its record
// gives.
func (s *Store) Verify(id string) error {
	m, err := s.Get(id)
	if err != nil {
		return err
	}
	r, err := s.Open(id)
	if err != nil {
		return err
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("quarantine: %s: %w", id, err)
	}
	if n != m.Size || hex.EncodeToString(h.Sum(nil)) != m.SHA256 {
		return fmt.Errorf("quarantine: %s: the message does not match its record (%d bytes, record says %d)", id, n, m.Size)
	}
	return nil
}

// FormatList writes metas as a table for a terminal: id, time, user,
// size, outcome, release state and reason. Text from the records is made
// visible as by mailtext.Visible: control characters (terminal escapes,
// tabs, line breaks) and bidi controls are shown as <U+XXXX> instead of
// acting.
func FormatList(w io.Writer, metas []Meta) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tUSER\tSIZE\tOUTCOME\tRELEASE\tREASON")
	for _, m := range metas {
		release := ""
		if m.Release != nil {
			release = m.Release.State
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			mailtext.Visible(m.ID, 40), m.Time.UTC().Format(time.DateTime), orDash(mailtext.Visible(m.User, 40)),
			m.Size, orDash(mailtext.Visible(m.Outcome, 16)), orDash(mailtext.Visible(release, 16)), orDash(mailtext.Visible(m.Reason, 60)))
	}
	return tw.Flush()
}

// FormatMeta writes one record in full for a terminal, made visible like
// FormatList's.
func FormatMeta(w io.Writer, m Meta) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, mailtext.Visible(v, 1000))
		}
	}
	line("ID", m.ID)
	line("Time", m.Time.UTC().Format(time.RFC3339Nano))
	line("User", m.User)
	line("Session", m.SessionID)
	line("Client", m.Client)
	line("Listener", m.Listener)
	line("Upstream", m.Upstream)
	if m.MsgNum != 0 || m.Command != "" {
		line("Message", strings.TrimSpace(fmt.Sprintf("%s %d", m.Command, m.MsgNum)))
	}
	line("Size", fmt.Sprintf("%d bytes", m.Size))
	line("SHA-256", m.SHA256)
	line("Outcome", m.Outcome)
	line("Reason", m.Reason)
	line("Held by", strings.Join(m.Held, ", "))
	if m.FailedOpen {
		line("Failed open", "yes")
	}
	if r := m.Release; r != nil {
		line("Release", strings.TrimSpace(r.State+" "+r.Time.UTC().Format(time.RFC3339)))
		line("Released by", strings.TrimSpace(r.Actor+" "+r.Instance))
		line("Released to", r.Recipient)
		line("Release error", r.Error)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(m.Verdicts) > 0 {
		fmt.Fprintln(w, "Verdicts:")
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, v := range m.Verdicts {
			what := v.Action
			if v.Error != "" {
				what = "error: " + v.Error
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", mailtext.Visible(v.Filter, 40), orDash(mailtext.Visible(what, 200)),
				v.Duration.Round(time.Microsecond), mailtext.Visible(v.Reason, 200))
		}
		return tw.Flush()
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
