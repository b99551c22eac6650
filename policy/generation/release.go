package generation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/notify"
	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/filters/quarantine/web"
	"github.com/popgate/popgate/filters/rspamd"
	"github.com/popgate/popgate/internal/mailer"
	"github.com/popgate/popgate/internal/profiling"
	"github.com/popgate/popgate/policy"
)

// Mailers builds a mailer per delivery block (no connection is made).
func Mailers(cfg *policy.Config) (map[string]*mailer.Mailer, error) {
	out := map[string]*mailer.Mailer{}
	for name, d := range cfg.Deliveries {
		o := mailer.Options{
			Address: d.Address, LMTP: d.Protocol == policy.DeliveryLMTP, TLS: d.TLS,
			Username: d.Username, Password: d.Password, Helo: d.Helo, Timeout: d.Timeout,
		}
		if d.TLS != policy.DeliveryTLSNone {
			host, _, _ := net.SplitHostPort(d.Address)
			o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
			if d.ServerName != "" {
				o.TLSConfig.ServerName = d.ServerName
			}
			if d.CAFile != "" {
				pem, err := os.ReadFile(d.CAFile)
				if err != nil {
					return nil, fmt.Errorf("delivery %q: %w", name, err)
				}
				o.TLSConfig.RootCAs = x509.NewCertPool()
				if !o.TLSConfig.RootCAs.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("delivery %q: no certificates in %s", name, d.CAFile)
				}
			}
		}
		m, err := mailer.New(o)
		if err != nil {
			return nil, fmt.Errorf("delivery %q: %w", name, err)
		}
		out[name] = m
	}
	return out, nil
}

// ReleaseKeyFile is where the release key of cfg lives; dir, when set,
// replaces the quarantine directory of the default place (as
// Options.QuarantineDir does).
func ReleaseKeyFile(cfg *policy.Config, dir string) string {
	q := cfg.Quarantine
	if dir != "" && q.Release.KeyFile == filepath.Join(q.Dir, policy.DefaultReleaseKeyFile) {
		return filepath.Join(dir, policy.DefaultReleaseKeyFile)
	}
	return q.Release.KeyFile
}

// Permission returns who may release a message the named filters held
// under cfg: the strictest of the filters' release settings; a record
// without held filters (made by an older version), or held by a filter the
// configuration no longer has, is the administrator's.
func Permission(cfg *policy.Config, held []string) release.Permission {
	if len(held) == 0 {
		return release.Admin
	}
	rank := map[release.Permission]int{release.User: 0, release.Admin: 1, release.Never: 2}
	p := release.User
	for _, name := range held {
		q, ok := cfg.Release[name]
		if !ok {
			q = release.Admin
		}
		if rank[q] > rank[p] {
			p = q
		}
	}
	return p
}

// NewReleaser builds the release service of cfg over an opened quarantine.
func NewReleaser(cfg *policy.Config, store *quarantine.Store, keys release.Keys, mailers map[string]*mailer.Mailer, log zerolog.Logger, onRelease func(actor, result string)) *release.Service {
	routes := map[string]release.Route{}
	for name, u := range cfg.Upstreams {
		if u.Release == nil {
			continue
		}
		r := u.Release
		routes[name] = release.Route{Sender: mailers[r.Via], Recipient: r.RecipientFor, From: r.From}
	}
	return release.New(release.Options{
		Store: store, Keys: keys, Routes: routes, Log: log, OnRelease: onRelease, Delivered: learnHam(cfg, store),
		Permission: func(m quarantine.Meta) release.Permission { return Permission(cfg, m.Held) },
		Uncertain: func(err error) bool {
			var me *mailer.Error
			return errors.As(err, &me) && me.Uncertain
		},
	})
}

// learnHam tells the rspamd controllers of the spam filters that held a
// released message that it was ham: an administrator or the user said so.
func learnHam(cfg *policy.Config, store *quarantine.Store) func(context.Context, quarantine.Meta) error {
	return func(ctx context.Context, m quarantine.Meta) error {
		ctls := rspamd.ControllersFor(m.Held, cfg.Filters, cfg.Scanners)
		if len(ctls) == 0 {
			return nil
		}
		body, _, err := store.Original(m.ID)
		if err != nil {
			return err
		}
		var errs []error
		for _, c := range ctls {
			if err := c.Learn(ctx, body, false, m.User); err != nil && !rspamd.NotLearned(err) {
				errs = append(errs, fmt.Errorf("learn ham: %w", err))
			}
		}
		return errors.Join(errs...)
	}
}

// releaseLink returns the notice's release-link function of cfg, nil when
// links are off.
func releaseLink(cfg *policy.Config, keys release.Keys) func(*filters.Envelope, *filters.Result, string) string {
	link := metaLink(cfg, keys)
	if link == nil {
		return nil
	}
	return func(_ *filters.Envelope, res *filters.Result, id string) string {
		if res == nil {
			return ""
		}
		return link(quarantine.Meta{ID: id, Held: quarantine.HeldBy(res)})
	}
}

// buildRelease builds what gives quarantined mail back and tells about it:
// the release key, the releaser, the HTTP handler of release links and the
// admin API and, for a running service, the notifier and the retention
// purge. It runs once the quarantine is open.
func (g *Generation) buildRelease(o Options) error {
	cfg := g.Config
	keys, err := release.LoadOrCreateKeys(ReleaseKeyFile(cfg, o.QuarantineDir))
	if err != nil {
		return err
	}
	mailers, err := Mailers(cfg)
	if err != nil {
		return err
	}
	g.keys = keys
	g.releaser = NewReleaser(cfg, g.quarantine, keys, mailers, o.Log, o.OnRelease)
	permission := func(m quarantine.Meta) release.Permission { return Permission(cfg, m.Held) }
	wo := web.Options{
		Store: g.quarantine, Delete: g.quarantine.Delete, Releaser: g.releaser, Keys: keys, Permission: permission,
		Released: func(id string) (time.Time, bool) {
			st, err := g.quarantine.ReleaseStateOf(id)
			if err != nil || st == nil || st.State != quarantine.Released {
				return time.Time{}, false
			}
			return st.Time, true
		},
		Log: o.Log,
	}
	if cfg.Metrics != nil {
		wo.AdminToken = cfg.Metrics.AdminToken
		wo.Profiles = profiling.Handler()
	}
	g.web = web.New(wo)
	if !o.Background {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stopBackground = cancel
	g.background.Add(1)
	go func() {
		defer g.background.Done()
		g.quarantine.RunRetention(ctx, cfg.Quarantine.Retention, policy.DefaultPurgeInterval)
	}()
	if cfg.Notify == nil {
		return nil
	}
	if g.notifier, err = newNotifier(cfg, g.quarantine, keys, mailers, o.Log); err != nil {
		return err
	}
	g.quarantine.OnStored(g.notifier.Held)
	g.background.Add(1)
	go func() {
		defer g.background.Done()
		g.notifier.Run(ctx)
	}()
	return nil
}

// newNotifier builds the notify block's notifier.
func newNotifier(cfg *policy.Config, store *quarantine.Store, keys release.Keys, mailers map[string]*mailer.Mailer, log zerolog.Logger) (*notify.Notifier, error) {
	n := cfg.Notify
	o := notify.Options{
		Send: mailers[n.Via].Send, From: n.From, Admin: n.Admin,
		AdminInterval: n.AdminInterval, AdminDelay: max(n.AdminDelay, time.Nanosecond), AdminSubject: n.AdminSubject,
		UserDigest: n.UserDigest, UserSubject: n.UserSubject, Store: store, Log: log,
		UserRecipient: func(m quarantine.Meta) (string, bool) {
			u := cfg.Upstreams[m.Upstream]
			if u == nil || u.Release == nil {
				return "", false
			}
			return u.Release.RecipientFor(m.User), true
		},
		Link: metaLink(cfg, keys),
	}
	var err error
	if n.AdminTemplate != "" {
		if o.AdminTemplate, err = notify.ParseTemplate("admin_template", n.AdminTemplate); err != nil {
			return nil, err
		}
	}
	if n.UserTemplate != "" {
		if o.UserTemplate, err = notify.ParseTemplate("user_template", n.UserTemplate); err != nil {
			return nil, err
		}
	}
	return notify.New(o)
}

// metaLink returns the release link of a record where the user may release
// it (nil when links are off).
func metaLink(cfg *policy.Config, keys release.Keys) func(quarantine.Meta) string {
	q := cfg.Quarantine
	if q.Release.LinkURL == "" {
		return nil
	}
	return func(m quarantine.Meta) string {
		if Permission(cfg, m.Held) != release.User {
			return ""
		}
		return q.Release.LinkURL + "/release/" + keys.Link(m.ID, time.Now().Add(q.Release.LinkTTL))
	}
}
