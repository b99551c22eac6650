package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
)

// proxyOptions turns a validated configuration into proxy options: it loads
// certificates and CA bundles, which the config loader has only checked.
func proxyOptions(cfg *policy.Config, log zerolog.Logger) (proxy.Options, error) {
	store, err := openQuarantine(cfg, log)
	if err != nil {
		return proxy.Options{}, err
	}
	ups := map[string]*proxy.Upstream{}
	for name, u := range cfg.Upstreams {
		pu, err := proxyUpstream(u)
		if err != nil {
			return proxy.Options{}, err
		}
		ups[name] = pu
	}
	opts := proxy.Options{Logger: log, PolicyFor: sessionPolicies(cfg, store)}
	for _, l := range cfg.Listeners {
		pl := proxy.Listener{
			Name:                l.Name,
			Address:             l.Address,
			Transparent:         l.Transparent,
			TProxy:              l.TProxy,
			MaxConnections:      l.MaxConnections,
			MaxConnectionsPerIP: l.MaxConnectionsPerIP,
			LoginTimeout:        l.LoginTimeout,
			IdleTimeout:         l.IdleTimeout,
			MaxCommandLine:      l.MaxCommandLine,
		}
		if pp := l.ProxyProtocol; pp != nil {
			pl.ProxyProtocol = &proxy.ProxyProtocol{Trusted: pp.Trusted, Timeout: pp.Timeout}
		}
		if l.Upstream != "" {
			pl.Upstream = ups[l.Upstream]
		}
		if cfg.RoutesByLogin(l) {
			pl.Router = func(login string) (*proxy.Upstream, string, error) {
				name, user, err := cfg.RouteLogin(l, login)
				if err != nil {
					return nil, "", err
				}
				return ups[name], user, nil
			}
		}
		if l.Transparent {
			pl.DestRouter = func(dst netip.Addr) *proxy.Upstream { return ups[cfg.RouteDestination(l, dst)] }
		}
		if l.TLS != nil {
			cert, err := tls.LoadX509KeyPair(l.TLS.CertFile, l.TLS.KeyFile)
			if err != nil {
				return proxy.Options{}, fmt.Errorf("listener %s: %w", l.Name, err)
			}
			pl.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			pl.Implicit = l.TLS.Implicit
		}
		opts.Listeners = append(opts.Listeners, pl)
	}
	return opts, nil
}

func proxyUpstream(u *policy.Upstream) (*proxy.Upstream, error) {
	pu := &proxy.Upstream{
		Name:           u.Name,
		Address:        u.Address,
		ConnectTimeout: u.ConnectTimeout,
		Timeout:        u.Timeout,
		MaxStatusLine:  u.MaxStatusLine,
	}
	switch u.ProxyProtocol {
	case policy.ProxyProtocolV1:
		pu.ProxyProtocol = 1
	case policy.ProxyProtocolV2:
		pu.ProxyProtocol = 2
	}
	switch u.TLS {
	case policy.UpstreamTLSStartTLS:
		pu.TLSMode = proxy.TLSStartTLS
	case policy.UpstreamTLSImplicit:
		pu.TLSMode = proxy.TLSImplicit
	}
	if pu.TLSMode == proxy.TLSNone {
		return pu, nil
	}
	tc := &tls.Config{ServerName: u.ServerName, InsecureSkipVerify: u.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", u.Name, err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream %s: no certificates in %s", u.Name, u.CAFile)
		}
	}
	pu.TLS = tc
	return pu, nil
}

// newLogger builds the zerolog logger the log block asks for. The returned
// closer closes a log file, if one was opened.
func newLogger(l policy.Log, stderr io.Writer) (zerolog.Logger, io.Closer, error) {
	var out io.Writer = stderr
	var closer io.Closer = io.NopCloser(nil)
	if l.File != "" {
		f, err := os.OpenFile(l.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return zerolog.Logger{}, nil, fmt.Errorf("log file: %w", err)
		}
		out, closer = f, f
	}
	if l.Format == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: time.TimeOnly, NoColor: !isTerminal(out)}
	}
	level, err := zerolog.ParseLevel(l.Level)
	if err != nil || l.Level == "" {
		level = zerolog.InfoLevel
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), closer, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// sessionPolicies builds the filter chains of cfg's policies and returns
// the proxy's PolicyFor: the policy Config.Select picks for the login. A
// configuration without policy blocks relays every session unfiltered;
// with policies, a login none of them applies to is refused.
func sessionPolicies(cfg *policy.Config, store *quarantine.Store) func(proxy.SessionInfo) (*proxy.SessionPolicy, error) {
	built := buildPolicies(cfg, store)
	return func(si proxy.SessionInfo) (*proxy.SessionPolicy, error) {
		if len(cfg.Policies) == 0 {
			return nil, nil
		}
		p := cfg.Select(policy.Who{User: si.User, Client: si.Client.Addr(), Listener: si.Listener, Upstream: si.Upstream})
		if p == nil {
			return nil, errNoPolicy
		}
		return built[p], nil
	}
}

var errNoPolicy = errors.New("no policy matches this login and there is no default policy")

// buildPolicies turns each policy into what a session runs: its chain with
// the spool, the quarantine and the notice.
func buildPolicies(cfg *policy.Config, store *quarantine.Store) map[*policy.Policy]*proxy.SessionPolicy {
	spool := &filters.Spool{Dir: cfg.Spool.Dir, MemoryLimit: cfg.Spool.MemoryLimit}
	built := map[*policy.Policy]*proxy.SessionPolicy{}
	for _, p := range cfg.Policies {
		chain := &filters.Chain{Filters: p.Filters, OnError: p.OnError, Spool: spool, MaxSize: p.MaxSize}
		if store != nil {
			chain.Quarantine = store
			if p.NoticeOnReject {
				nc := &quarantine.NoticeConfig{From: cfg.Quarantine.NoticeFrom}
				chain.Notice = nc.ChainNotice()
			}
		}
		built[p] = &proxy.SessionPolicy{Name: p.Name, Chain: chain, FilterTOP: p.FilterTOP, KeepAlive: p.KeepAlive}
	}
	return built
}

// openQuarantine opens the configured quarantine store, if any.
func openQuarantine(cfg *policy.Config, log zerolog.Logger) (*quarantine.Store, error) {
	if cfg.Quarantine == nil {
		return nil, nil
	}
	return quarantine.Open(cfg.Quarantine.Dir, log)
}
