package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters/clamav"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/metrics"
)

// monitor serves the metrics block: Prometheus metrics, /healthz and
// /readyz. It follows reloads: the scanners it reports and checks are those
// of the configuration generation new sessions get.
type monitor struct {
	m      *metrics.Metrics
	srv    *proxy.Server
	http   *http.Server
	ln     net.Listener
	needed atomic.Pointer[[]namedScanner] // scanners some policy's chain uses
}

type namedScanner struct {
	name string
	s    *clamav.Scanner
}

// newMonitor binds the metrics listener of cfg; nil when cfg has no metrics
// block.
func newMonitor(cfg *policy.Config) (*monitor, error) {
	if cfg.Metrics == nil {
		return nil, nil
	}
	ln, err := net.Listen("tcp", cfg.Metrics.Address)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	return &monitor{m: metrics.New(), ln: ln}, nil
}

// observer is the proxy's Observer: nil without a metrics block.
func (mo *monitor) observer() proxy.Observer {
	if mo == nil {
		return nil
	}
	return mo.m
}

// serve starts answering HTTP for srv.
func (mo *monitor) serve(srv *proxy.Server, log zerolog.Logger) {
	if mo == nil {
		return
	}
	mo.srv = srv
	mo.http = &http.Server{Handler: mo.m.Handler(mo.ready), ReadHeaderTimeout: 10 * time.Second}
	log.Info().Str("address", mo.ln.Addr().String()).Msg("metrics listening")
	go func() {
		if err := mo.http.Serve(mo.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics listener failed")
		}
	}()
}

// use makes cfg, as generation gen, the configuration reported on.
func (mo *monitor) use(cfg *policy.Config, gen int64) {
	if mo == nil {
		return
	}
	used := map[*clamav.Scanner]bool{}
	for _, p := range cfg.Policies {
		for _, f := range p.Filters {
			if av, ok := f.(*clamav.Filter); ok {
				used[av.Scanner()] = true
			}
		}
	}
	all := map[string]*clamav.Scanner{}
	var needed []namedScanner
	for name, s := range cfg.Scanners() {
		if cs, ok := s.(*clamav.Scanner); ok {
			all[name] = cs
			if used[cs] {
				needed = append(needed, namedScanner{name, cs})
			}
		}
	}
	sort.Slice(needed, func(i, j int) bool { return needed[i].name < needed[j].name })
	mo.m.SetScanners(all)
	mo.needed.Store(&needed)
	mo.m.SetGeneration(gen)
}

// reloaded counts a reload attempt.
func (mo *monitor) reloaded(ok bool) {
	if mo != nil {
		mo.m.Reloaded(ok)
	}
}

// ready is /readyz: every listener accepts, and every scanner a policy
// needs has a clamd backend that answers.
func (mo *monitor) ready() error {
	if err := mo.srv.Ready(); err != nil {
		return err
	}
	for _, ns := range *mo.needed.Load() {
		if ns.s.Healthy() == 0 {
			return fmt.Errorf("scanner %q: no clamd backend answers", ns.name)
		}
	}
	return nil
}

// shutdown stops the HTTP listener (after the proxy has drained, so load
// balancers see /readyz fail while it drains).
func (mo *monitor) shutdown() {
	if mo == nil || mo.http == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = mo.http.Shutdown(ctx)
}
