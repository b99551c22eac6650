package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/internal/mailtext"
)

// Bounds of the user digest.
const (
	maxScan    = 50_000 // records one digest looks at, newest first
	keepClaims = 10     // periods of claim files kept; only the newest matters
)

// userStep sends the user digest of the last period that has ended, unless
// it was handled, and returns when the next one is due. A period is due a
// settling time after its end (a tenth of it, at most 10s), so that a
// record stored at its very end, by this or another instance, is in the
// directory.
func (n *Notifier) userStep(ctx context.Context, now time.Time) time.Time {
	p := n.o.UserDigest
	settle := min(p/10, 10*time.Second)
	secs := int64(p / time.Second)
	end := time.Unix(now.Add(-settle).Unix()/secs*secs, 0)
	if end.After(n.userDone) {
		n.userDigest(ctx, end)
		n.userDone = end
	}
	return end.Add(p + settle)
}

// claimRecord is what a claim file holds: what the digest covers, and who
// sent it.
type claimRecord struct {
	From    time.Time `json:"from"`
	Until   time.Time `json:"until"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Claimed time.Time `json:"claimed"`
}

// claim decides whether this instance sends the digest of the period
// ending at end, and what it covers. Instances sharing the quarantine
// directory each try; the one that creates <dir>/notify/digest-<period
// start, Unix seconds> sends it: the file is written under a temporary name
// and link(2)ed into place, which fails for all but one (also over NFS).
// The digest covers the records since the end of the newest digest claimed
// before, so that a period no instance claimed (all were down) is folded
// into the next digest instead of being skipped, and a restart finds its
// place from the files. A period claimed by an instance that died before
// sending is not sent again: a digest is sent at most once. Claims are not
// fsynced: a claim lost in a crash can at worst make a digest twice.
func (n *Notifier) claim(end time.Time) (from time.Time, ok bool) {
	start := end.Add(-n.o.UserDigest)
	s, secs := start.Unix(), int64(n.o.UserDigest/time.Second)
	ents, err := os.ReadDir(n.claims)
	if err != nil {
		n.o.Log.Error().Err(err).Msg("notify: user digest not sent: cannot read the claims")
		return time.Time{}, false
	}
	newest, old := int64(-1), []string(nil)
	for _, e := range ents {
		num, isClaim := strings.CutPrefix(e.Name(), "digest-")
		v, err := strconv.ParseInt(num, 10, 64)
		switch {
		case !isClaim || err != nil:
		case v >= s:
			return time.Time{}, false // claimed, or covered by a later digest
		default:
			newest = max(newest, v)
			if v < s-keepClaims*secs {
				old = append(old, e.Name())
			}
		}
	}
	from = start
	var prev claimRecord
	if data, err := os.ReadFile(filepath.Join(n.claims, fmt.Sprintf("digest-%d", newest))); err == nil &&
		json.Unmarshal(data, &prev) == nil && prev.Until.Before(start) {
		from = prev.Until
	}
	host, _ := os.Hostname()
	data, _ := json.Marshal(claimRecord{From: from, Until: end, Host: host, PID: os.Getpid(), Claimed: n.o.Now()})
	f, err := os.CreateTemp(n.claims, ".claim-*")
	if err != nil {
		n.o.Log.Error().Err(err).Msg("notify: user digest not sent: cannot claim it")
		return time.Time{}, false
	}
	defer os.Remove(f.Name())
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	final := filepath.Join(n.claims, fmt.Sprintf("digest-%d", s))
	if err == nil {
		// NFS may report a failure for a link that was made (the reply to
		// a retried call is lost): then the file is ours.
		if err = os.Link(f.Name(), final); err != nil && sameFile(f.Name(), final) {
			err = nil
		}
	}
	if errors.Is(err, os.ErrExist) {
		return time.Time{}, false // another instance sends it
	}
	if err != nil {
		n.o.Log.Error().Err(err).Msg("notify: user digest not sent: cannot claim it")
		return time.Time{}, false
	}
	for _, name := range old { // now that this claim is the newest
		_ = os.Remove(filepath.Join(n.claims, name))
	}
	return from, true
}

func sameFile(a, b string) bool {
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// userDigest sends the user digests of the period ending at end, if this
// instance claims it: one mail per recipient. A failed mail is retried.
func (n *Notifier) userDigest(ctx context.Context, end time.Time) {
	from, ok := n.claim(end)
	if !ok {
		return
	}
	groups := map[string][]quarantine.Meta{}
	names := map[string]*mail.Address{}
	for _, m := range n.heldBetween(from, end) {
		addr, ok := n.o.UserRecipient(m)
		if !ok {
			continue
		}
		a, err := mail.ParseAddress(addr)
		if err != nil {
			n.o.Log.Warn().Err(err).Str("id", m.ID).Msg("notify: no user digest for a record: its recipient is not an address")
			continue
		}
		groups[a.Address] = append(groups[a.Address], m)
		if names[a.Address] == nil {
			names[a.Address] = a
		}
	}
	now := n.o.Now()
	for _, addr := range slices.Sorted(maps.Keys(groups)) {
		ms := groups[addr]
		d := Data{Total: len(ms), Since: from.In(n.loc), Until: end.In(n.loc), User: mailtext.Text(ms[0].User, 200), Address: addr}
		for _, m := range ms[:min(len(ms), maxItems)] {
			it := item(m, n.loc)
			if s, err := n.o.Store.Headline(m.ID); err == nil {
				it.From, it.Subject = mailtext.Text(s.From, 200), s.Subject
			}
			it.Link = mailtext.Text(n.o.Link(m), 1000)
			d.Items = append(d.Items, it)
		}
		d.More = len(ms) - len(d.Items)
		to := []*mail.Address{names[addr]}
		msg, err := n.compose(n.userMail, to, d, now)
		if err != nil {
			n.o.Log.Error().Err(err).Str("to", addr).Msg("notify: user digest not made")
			continue
		}
		n.deliver(ctx, outMail{to: to, msg: msg}, now)
	}
	n.o.Log.Info().Int("recipients", len(groups)).Time("from", from).Time("until", end).Msg("notify: user digests made")
}

// heldBetween returns the records of messages held in [from, until),
// oldest first, looking at the newest maxScan records at most. The store
// lists newest first, so it asks for twice as many until it reaches from.
func (n *Notifier) heldBetween(from, until time.Time) []quarantine.Meta {
	for limit := 1024; ; limit = min(2*limit, maxScan) {
		ms, err := n.o.Store.List(quarantine.ListOptions{Limit: limit})
		if err != nil {
			n.o.Log.Error().Err(err).Msg("notify: user digest: cannot list the quarantine")
			return nil
		}
		reached := len(ms) < limit || ms[len(ms)-1].Time.Before(from)
		if !reached && limit < maxScan {
			continue
		}
		if !reached {
			n.o.Log.Warn().Int("records", maxScan).Msg("notify: user digest lists only the newest records of the period")
		}
		var out []quarantine.Meta
		for _, m := range slices.Backward(ms) {
			if !m.Time.Before(from) && m.Time.Before(until) {
				out = append(out, m)
			}
		}
		return out
	}
}
