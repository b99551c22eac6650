package generation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/metrics"
	"github.com/popgate/popgate/internal/tlsfiles"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
)

// Service is a running popgate: the proxy, the generation new sessions get,
// and the metrics listener of the metrics block. Start it, Serve, Reload on
// SIGHUP, Shutdown on SIGTERM.
type Service struct {
	srv     *proxy.Server
	log     zerolog.Logger
	opts    Options
	path    string
	bound   *policy.Config // the configuration listeners were bound with
	metrics *metrics.Metrics
	http    *http.Server
	ln      net.Listener
	// tls keeps the certificates and CA bundles of the listeners and
	// upstreams current; stopTLS ends its polling.
	tls     *tlsfiles.Watcher
	stopTLS context.CancelFunc

	mu      sync.Mutex // guards current
	current *Generation
}

// Start builds the first generation of cfg and binds its listeners and its
// metrics listener. path is where Reload reads the configuration again (""
// turns reloading off). The caller Serves next.
func Start(cfg *policy.Config, path string, o Options) (_ *Service, err error) {
	s := &Service{log: o.Log, opts: o, path: path, bound: cfg}
	s.opts.Background = true
	if s.opts.Memory, err = OpenMemory(cfg.Memory, o.Log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && s.opts.Memory != nil {
			_ = s.opts.Memory.Close()
		}
	}()
	if cfg.Metrics != nil {
		if s.ln, err = net.Listen("tcp", cfg.Metrics.Address); err != nil {
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
		s.metrics = metrics.New()
		s.opts.OnScan = s.metrics.Scanned
		s.opts.OnRelease = s.metrics.Released
	}
	g, err := Build(cfg, s.opts)
	if err != nil {
		s.closeMetrics()
		return nil, err
	}
	var hooks tlsfiles.Hooks
	if s.metrics != nil {
		hooks = tlsfiles.Hooks{Reloaded: s.metrics.TLSReloaded, Certificate: s.metrics.TLSCertificate}
	}
	s.tls = tlsfiles.New(o.Log, hooks)
	opts, err := g.ProxyOptions(s.tls)
	if err == nil {
		opts.Logger = o.Log
		opts.Retire = func() { _ = g.Close() }
		opts.Throttle = loginThrottle(cfg.Memory, s.opts.Memory, o.Log)
		if s.metrics != nil {
			opts.Observer = s.metrics
		}
		if s.srv, err = proxy.New(opts); err == nil {
			err = s.srv.Listen()
		}
	}
	if err != nil {
		_ = g.Close()
		s.closeMetrics()
		return nil, err
	}
	s.use(g, s.srv.Generation())
	ctx, cancel := context.WithCancel(context.Background())
	s.stopTLS = cancel
	go s.tls.Run(ctx)
	if s.metrics != nil {
		s.http = &http.Server{Handler: s.metrics.Handler(s.ready, http.HandlerFunc(s.serveQuarantine)), ReadHeaderTimeout: 10 * time.Second}
		s.log.Info().Str("address", s.ln.Addr().String()).Msg("metrics listening")
		go func() {
			if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error().Err(err).Msg("metrics listener failed")
			}
		}()
	}
	return s, nil
}

// Logger is the service's logger, for the caller's own lifecycle logs.
func (s *Service) Logger() zerolog.Logger { return s.log }

// Addrs returns the proxy's listening addresses, in configuration order.
func (s *Service) Addrs() []net.Addr { return s.srv.Addrs() }

// MetricsAddr returns the metrics listener's address, nil without one.
func (s *Service) MetricsAddr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Sessions returns the number of sessions running now.
func (s *Service) Sessions() int { return s.srv.Sessions() }

// Current returns the generation new sessions get.
func (s *Service) Current() *Generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// ShutdownTimeout is how long Shutdown should let sessions drain: the
// shutdown_timeout of the generation in force (a reload applies it).
func (s *Service) ShutdownTimeout() time.Duration { return s.Current().Config.ShutdownTimeout }

// Serve accepts sessions until Shutdown; it returns nil after a Shutdown.
func (s *Service) Serve() error { return s.srv.Serve() }

// Shutdown stops accepting, lets running sessions finish until ctx ends,
// then closes the metrics listener (load balancers see /readyz fail while
// the proxy drains) and the generation in force.
func (s *Service) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.stopTLS()
	s.closeMetrics()
	if cerr := s.Current().Close(); err == nil {
		err = cerr
	}
	if s.opts.Memory != nil {
		if cerr := s.opts.Memory.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Reload reads the configuration again and makes it the next generation:
// sessions that start from now on get its policies, filters, scanners and
// quarantine; running sessions keep theirs, and the previous generation is
// closed once its last session ends. A configuration with errors, or whose
// parts cannot be built, is refused and the running one stays. Settings
// bound at start (listeners, upstreams, routes, metrics, log, memory) are
// logged as needing a restart. The certificate and CA files the listeners
// and upstreams were started with are read again in any case (as when the
// watcher sees them change), each kept or refused on its own.
func (s *Service) Reload() error {
	s.tls.Reload()
	err := s.reload()
	if s.metrics != nil {
		s.metrics.Reloaded(err == nil)
	}
	return err
}

func (s *Service) reload() error {
	if s.path == "" {
		return errors.New("this service has no configuration file to reload")
	}
	gen := s.srv.Generation()
	next, diags := policy.Load(s.path)
	LogDiagnostics(s.log, diags)
	if diags.HasErrors() {
		s.log.Error().Int64("config_generation", gen).Int("errors", len(diags.Errs())).
			Msg("reload refused: the configuration has errors; the running one stays in force")
		return errors.New("the configuration has errors")
	}
	g, err := Build(next, s.opts)
	if err != nil {
		s.log.Error().Err(err).Int64("config_generation", gen).Msg("reload refused: the running configuration stays in force")
		return err
	}
	if changed := boundChanges(s.bound, next); changed != "" {
		s.log.Warn().Str("changed", changed).Msg("reload: these settings take effect only after a restart")
	}
	gen++
	// Metrics and /readyz move to the new generation before the proxy
	// retires the old one.
	s.use(g, gen)
	s.srv.SetPolicy(gen, g.PolicyFor, func() { _ = g.Close() })
	s.log.Info().Int64("config_generation", gen).Int("policies", len(next.Policies)).Msg("configuration reloaded")
	return nil
}

// use makes g, as generation gen, the one new sessions get and the one
// metrics and /readyz report on. The proxy retires the previous one when
// its last session ends.
func (s *Service) use(g *Generation, gen int64) {
	s.mu.Lock()
	s.current = g
	s.mu.Unlock()
	if s.metrics == nil {
		return
	}
	var ms []metrics.Scanner
	for _, sc := range g.Scanners() {
		ms = append(ms, metrics.Scanner{Name: sc.Name, Kind: sc.Kind, Scanner: sc.Scanner})
	}
	s.metrics.SetScanners(ms)
	s.metrics.SetGeneration(gen)
}

// serveQuarantine serves release links and the admin API with the
// generation in force (404 without a quarantine).
func (s *Service) serveQuarantine(w http.ResponseWriter, r *http.Request) {
	h := s.Current().Web()
	if h == nil {
		http.NotFound(w, r)
		return
	}
	h.ServeHTTP(w, r)
}

// ready is /readyz: every listener accepts, and every scanner a policy of
// the generation in force needs has a backend that answers.
func (s *Service) ready() error {
	if err := s.srv.Ready(); err != nil {
		return err
	}
	return s.Current().Ready()
}

func (s *Service) closeMetrics() {
	switch {
	case s.http != nil:
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.http.Shutdown(ctx)
	case s.ln != nil:
		_ = s.ln.Close()
	}
}

// boundChanges names the settings that differ between the configuration
// the service started with and a reloaded one but that only a restart
// applies: listeners (routes included: listeners route with the
// configuration they started with), upstreams, the metrics listener and the
// log block.
func boundChanges(a, b *policy.Config) string {
	var changed []string
	if len(a.Listeners) != len(b.Listeners) {
		changed = append(changed, "listeners")
	} else {
		for i, l := range a.Listeners {
			x, y := *l, *b.Listeners[i]
			x.Range, y.Range = hcl.Range{}, hcl.Range{}
			if !reflect.DeepEqual(x, y) {
				changed = append(changed, "listener "+l.Name)
			}
		}
	}
	strip := func(rs []*policy.Route) []policy.Route {
		var out []policy.Route
		for _, r := range rs {
			c := *r
			c.Range = hcl.Range{}
			out = append(out, c)
		}
		return out
	}
	if !reflect.DeepEqual(strip(a.Routes), strip(b.Routes)) {
		changed = append(changed, "routes")
	}
	if (a.Metrics == nil) != (b.Metrics == nil) || a.Metrics != nil && a.Metrics.Address != b.Metrics.Address {
		changed = append(changed, "metrics")
	}
	if a.Log != b.Log {
		changed = append(changed, "log")
	}
	if !reflect.DeepEqual(a.Memory, b.Memory) {
		changed = append(changed, "memory")
	}
	for name, u := range a.Upstreams {
		v := b.Upstreams[name]
		if v == nil {
			changed = append(changed, "upstream "+name)
			continue
		}
		// The release block is the generation's (its releaser and
		// notifier are rebuilt on reload).
		x, y := *u, *v
		x.Range, y.Range = hcl.Range{}, hcl.Range{}
		x.Release, y.Release = nil, nil
		if !reflect.DeepEqual(x, y) {
			changed = append(changed, "upstream "+name)
		}
	}
	for name := range b.Upstreams {
		if a.Upstreams[name] == nil {
			changed = append(changed, "upstream "+name)
		}
	}
	return strings.Join(changed, ", ")
}
