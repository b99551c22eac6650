// Package generation builds the running parts of popgate from a decoded
// configuration (a policy.Config): the scanners, connected; the filters and
// each policy's chain; the quarantine, opened; the proxy's PolicyFor. One
// such set is a Generation. A SIGHUP reload builds the next one while
// running sessions finish with theirs, and a generation is closed once its
// last session has ended.
//
// It is the one place where configuration turns into running parts:
// `popgate run`, `scan` and `demo`, reloads and the tests all build through
// it. Filter and scanner kinds plug in by registering their decode and build
// steps with package filters; nothing here names a kind but one: a release
// of a message a spam filter held teaches rspamd (learnHam).
package generation

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/notify"
	"github.com/popgate/popgate/filters/quarantine/release"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
)

// Options are what a generation gets from the process besides its
// configuration.
type Options struct {
	// Log is the process's logger.
	Log zerolog.Logger
	// Version is popgate's version, stamped by filters that ask for it.
	Version string
	// OnScan, when set, sees every scan of every scanner (metrics).
	OnScan func(scanner, kind string, took time.Duration, err error)
	// QuarantineDir, when set, replaces the configured quarantine
	// directory (`popgate scan` runs against a throwaway one).
	QuarantineDir string
	// Memory is the message memory's store (OpenMemory), shared by the
	// generations of a service; nil: no memory.
	Memory memory.Store
	// OnRelease, when set, sees every quarantine release (metrics).
	OnRelease func(actor, result string)
	// Background runs the quarantine's retention purge and the
	// notifications while the generation lives (a running service; not
	// `popgate scan`).
	Background bool
}

// Scanner is a running scanner with the block it was built from.
type Scanner struct {
	Name, Kind string
	// Needed tells whether a policy's chain uses the scanner: readiness
	// depends on the needed ones only.
	Needed  bool
	Scanner filters.Scanner
}

// Generation is one configuration's running parts. It is immutable once
// built and safe for concurrent use.
type Generation struct {
	// Config is the configuration the generation was built from.
	Config *policy.Config

	scanners   []Scanner
	quarantine *quarantine.Store
	spool      *filters.Spool
	policies   map[*policy.Policy]*proxy.SessionPolicy

	keys     release.Keys
	releaser *release.Service
	web      http.Handler
	notifier *notify.Notifier
	// stopBackground ends the retention purge and the notifier, which
	// background waits for.
	stopBackground context.CancelFunc
	background     sync.WaitGroup
}

// ErrNoPolicy is PolicyFor's answer for a login no policy applies to.
var ErrNoPolicy = errors.New("no policy matches this login and there is no default policy")

// Build connects cfg's scanners, builds its filters and chains and opens
// its quarantine. On error everything started so far is closed again.
func Build(cfg *policy.Config, o Options) (_ *Generation, err error) {
	g := &Generation{
		Config:   cfg,
		spool:    &filters.Spool{Dir: cfg.Spool.Dir, MemoryLimit: cfg.Spool.MemoryLimit},
		policies: map[*policy.Policy]*proxy.SessionPolicy{},
	}
	defer func() {
		if err != nil {
			_ = g.Close()
		}
	}()

	kinds := map[string]string{}
	bc := &filters.BuildContext{Log: o.Log, Spool: g.spool, Version: o.Version, Scanners: map[string]filters.Scanner{}}
	if o.OnScan != nil {
		bc.OnScan = func(scanner string, took time.Duration, err error) { o.OnScan(scanner, kinds[scanner], took, err) }
	}
	needed := map[string]bool{}
	for _, p := range cfg.Policies {
		for _, f := range p.Filters {
			for _, s := range f.Uses {
				needed[s] = true
			}
		}
	}
	for _, spec := range cfg.Scanners {
		s, err := spec.Build(bc)
		if err != nil {
			return nil, err
		}
		kinds[spec.Name] = spec.Type
		bc.Scanners[spec.Name] = s
		g.scanners = append(g.scanners, Scanner{Name: spec.Name, Kind: spec.Type, Needed: needed[spec.Name], Scanner: s})
	}

	if q := cfg.Quarantine; q != nil {
		dir := q.Dir
		if o.QuarantineDir != "" {
			dir = o.QuarantineDir
		}
		if g.quarantine, err = quarantine.Open(dir, o.Log); err != nil {
			return nil, fmt.Errorf("quarantine: %w", err)
		}
		if err := g.buildRelease(o); err != nil {
			return nil, fmt.Errorf("quarantine: %w", err)
		}
	}

	built := map[*filters.FilterSpec]filters.Filter{}
	for _, p := range cfg.Policies {
		chain := &filters.Chain{OnError: p.OnError, Spool: g.spool, MaxSize: p.MaxSize,
			Signed: map[string]filters.Signed{}, Encrypted: p.Encrypted}
		for _, spec := range p.Filters {
			chain.Signed[spec.Name] = cfg.Signed[spec.Name]
			f := built[spec]
			if f == nil {
				if f, err = spec.Build(bc); err != nil {
					return nil, err
				}
				built[spec] = f
			}
			chain.Filters = append(chain.Filters, f)
		}
		if g.quarantine != nil {
			chain.Quarantine = g.quarantine
			chain.Released = g.keys
			if p.NoticeOnReject {
				nc := &quarantine.NoticeConfig{From: cfg.Quarantine.NoticeFrom, Spool: g.spool, ReleaseLink: releaseLink(cfg, g.keys)}
				chain.Notice = nc.ChainNotice()
			}
		}
		g.policies[p] = &proxy.SessionPolicy{Name: p.Name, Chain: chain, FilterTOP: p.FilterTOP, KeepAlive: p.KeepAlive,
			Memory: g.policyMemory(p, o.Memory)}
	}
	return g, nil
}

// PolicyFor is the proxy's PolicyFor: the policy Config.Select picks for the
// login, built. A configuration without policy blocks relays every session
// unfiltered; with policies, a login none of them applies to is refused
// (ErrNoPolicy).
func (g *Generation) PolicyFor(si proxy.SessionInfo) (*proxy.SessionPolicy, error) {
	if len(g.Config.Policies) == 0 {
		return nil, nil
	}
	p := g.Config.Select(policy.Who{User: si.User, Client: si.Client.Addr(), Listener: si.Listener, Upstream: si.Upstream})
	if p == nil {
		return nil, ErrNoPolicy
	}
	return g.policies[p], nil
}

// SessionPolicy returns what a session under p runs (nil for a policy of
// another configuration).
func (g *Generation) SessionPolicy(p *policy.Policy) *proxy.SessionPolicy { return g.policies[p] }

// Scanners lists the running scanners in configuration order.
func (g *Generation) Scanners() []Scanner { return append([]Scanner(nil), g.scanners...) }

// Spool is where the generation's chains hold messages.
func (g *Generation) Spool() *filters.Spool { return g.spool }

// Quarantine is the opened quarantine store, nil without a quarantine block.
func (g *Generation) Quarantine() *quarantine.Store { return g.quarantine }

// Releaser gives quarantined originals back; nil without a quarantine.
func (g *Generation) Releaser() *release.Service { return g.releaser }

// Web is the HTTP handler of release links and the admin API (paths under
// /release/ and /api/); nil without a quarantine.
func (g *Generation) Web() http.Handler { return g.web }

// Ready reports nil when every scanner a policy needs has a backend that
// answers, else which one has none.
func (g *Generation) Ready() error {
	for _, s := range g.scanners {
		if s.Needed && filters.Healthy(s.Scanner) == 0 {
			return fmt.Errorf("scanner %q (%s): no backend answers", s.Name, s.Kind)
		}
	}
	return nil
}

// Close stops what Build started (scanner health checks) once the message
// memory's writes of its sessions are done. A generation is closed once no
// session uses it any more; the memory's store is not its to close.
func (g *Generation) Close() error {
	if g.stopBackground != nil {
		g.stopBackground()
		g.background.Wait()
	}
	for _, sp := range g.policies {
		if sp.Memory != nil {
			sp.Memory.Wait()
		}
	}
	var errs []error
	// g.scanners stays as it is: /readyz may still be reading a retired
	// generation, and a closed scanner only reports its last state.
	for _, s := range g.scanners {
		errs = append(errs, s.Scanner.Close())
	}
	return errors.Join(errs...)
}
