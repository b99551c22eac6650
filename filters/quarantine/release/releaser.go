package release

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/internal/mailtext"
)

// Sender hands one message to an SMTP or LMTP server (internal/mailer).
type Sender interface {
	Send(ctx context.Context, from string, to []string, msg io.Reader) error
}

// Route is how released originals get back into one upstream's mailboxes.
type Route struct {
	Sender Sender
	// Recipient maps a login name to the envelope recipient.
	Recipient func(login string) string
	// From is the envelope sender; "" is the null sender, so that nothing
	// about a release bounces to the original's (perhaps hostile) sender.
	From string
}

// Options configure a Service.
type Options struct {
	Store *quarantine.Store
	Keys  Keys
	// Routes are by upstream name (quarantine.Meta.Upstream).
	Routes map[string]Route
	// Permission says who may release a record.
	Permission func(quarantine.Meta) Permission
	// Uncertain tells a delivery failure that may have delivered (the
	// server took the message but did not answer) from one that did not.
	Uncertain func(error) bool
	// Delivered, when set, is told of each message delivered by a
	// release (not of an earlier one found again): a spam scanner learns
	// from it that the message was ham. Its error is logged; the release
	// stands.
	Delivered func(ctx context.Context, m quarantine.Meta) error
	// OnRelease, when set, sees each release's actor and result
	// ("released", "already", "refused", "failed", "uncertain"): metrics.
	OnRelease func(actor, result string)
	Log       zerolog.Logger
	Now       func() time.Time
}

// Service releases quarantined originals. It is safe for concurrent use,
// also by several processes sharing the quarantine directory: the release
// state there (quarantine.Store.ClaimRelease) lets only one of them deliver.
type Service struct {
	o        Options
	instance string
}

var _ Releaser = (*Service)(nil)

// New returns a Service.
func New(o Options) *Service {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Uncertain == nil {
		o.Uncertain = func(error) bool { return false }
	}
	host, _ := os.Hostname()
	return &Service{o: o, instance: fmt.Sprintf("%s:%d", host, os.Getpid())}
}

// Permission returns who may release m.
func (s *Service) Permission(m quarantine.Meta) Permission {
	if s.o.Permission == nil {
		return Admin
	}
	return s.o.Permission(m)
}

// Release delivers quarantined message id to the mailbox it was taken from
// (or req.To), with the release mark on top. A message released before is
// not delivered again (Result.Already).
func (s *Service) Release(ctx context.Context, id string, req Request) (Result, error) {
	res, err := s.release(ctx, id, req)
	if s.o.OnRelease != nil {
		result := "released"
		switch {
		case errors.Is(err, ErrUncertain):
			result = "uncertain"
		case errors.Is(err, ErrDelivery):
			result = "failed"
		case err != nil:
			result = "refused"
		case res.Already:
			result = "already"
		}
		s.o.OnRelease(req.Actor, result)
	}
	return res, err
}

func (s *Service) release(ctx context.Context, id string, req Request) (Result, error) {
	meta, err := s.o.Store.Get(id)
	if err != nil {
		return Result{}, err
	}
	switch p := s.Permission(meta); {
	case p == Never, req.ByUser && p != User:
		return Result{}, ErrNotPermitted
	}
	route, ok := s.o.Routes[meta.Upstream]
	if !ok || route.Sender == nil {
		return Result{}, fmt.Errorf("%w (upstream %q has no release block)", ErrNoRoute, meta.Upstream)
	}
	if req.ByUser && req.To != "" {
		return Result{}, ErrNotPermitted
	}
	rcpt, login := req.To, req.Login
	if rcpt == "" {
		rcpt = route.Recipient(meta.User)
	}
	if login == "" {
		login = meta.User
	}
	if _, err := mail.ParseAddress("<" + rcpt + ">"); err != nil {
		return Result{}, fmt.Errorf("release %s: recipient %q is not an address: %w", id, rcpt, err)
	}
	sum, err := hex.DecodeString(meta.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return Result{}, fmt.Errorf("release %s: the record has no valid checksum", id)
	}
	if err := s.o.Store.Verify(id); err != nil {
		return Result{}, err
	}

	now := s.o.Now().UTC()
	state := quarantine.ReleaseState{ID: id, State: "pending", Actor: req.Actor, Recipient: rcpt, Instance: s.instance, Time: now}
	prev, err := s.o.Store.ClaimRelease(id, state)
	if errors.Is(err, quarantine.ErrReleaseClaimed) && prev != nil {
		switch {
		case prev.State == "released" && !req.Force:
			return Result{ID: id, Recipient: prev.Recipient, Already: true, At: prev.Time}, nil
		case !req.Force || req.ByUser:
			return Result{}, fmt.Errorf("%w (%s since %s by %s)", ErrInProgress, prev.State, prev.Time.Format(time.RFC3339), prev.Instance)
		}
		// An administrator's --force after an uncertain or interrupted
		// release (or to deliver a second copy on purpose).
		err = s.o.Store.SetReleaseState(id, state)
	}
	if err != nil {
		return Result{}, err
	}

	var digest [sha256.Size]byte
	copy(digest[:], sum)
	log := s.o.Log.With().Str("quarantine_id", id).Str("actor", req.Actor).Logger()
	if err := s.deliver(ctx, route.Sender, route.From, rcpt, s.o.Keys.Mark(id, meta.Held, login, digest), id); err != nil {
		if s.o.Uncertain(err) {
			state.State, state.Error, state.Time = "uncertain", err.Error(), s.o.Now().UTC()
			if serr := s.o.Store.SetReleaseState(id, state); serr != nil {
				log.Error().Err(serr).Msg("release: cannot record an uncertain delivery")
			}
			log.Warn().Err(err).Msg("release: the delivery may have happened")
			return Result{}, fmt.Errorf("%w: %v", ErrUncertain, err)
		}
		if derr := s.o.Store.DropRelease(id); derr != nil {
			log.Error().Err(derr).Msg("release: cannot drop the claim of a failed delivery")
		}
		log.Warn().Err(err).Msg("release: delivery failed")
		return Result{}, fmt.Errorf("%w: %v", ErrDelivery, err)
	}
	state.State, state.Time = "released", s.o.Now().UTC()
	if err := s.o.Store.SetReleaseState(id, state); err != nil {
		// Delivered, but not marked: a second release would deliver again.
		log.Error().Err(err).Msg("release: delivered, but the released mark could not be written")
	}
	log.Info().Str("upstream", meta.Upstream).Msg("released from quarantine")
	if s.o.Delivered != nil {
		if err := s.o.Delivered(ctx, meta); err != nil {
			log.Warn().Err(err).Msg("release: after the delivery")
		}
	}
	return Result{ID: id, Recipient: rcpt, At: state.Time}, nil
}

func (s *Service) deliver(ctx context.Context, snd Sender, from, rcpt, mark, id string) error {
	r, err := s.o.Store.Open(id)
	if err != nil {
		return err
	}
	defer r.Close()
	return snd.Send(ctx, from, []string{rcpt}, io.MultiReader(strings.NewReader(mark), mailtext.NewReader(ctx, r)))
}
