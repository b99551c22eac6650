package generation

import (
	"crypto/tls"
	"net/netip"

	"github.com/popgate/popgate/internal/tlsfiles"
	"github.com/popgate/popgate/policy"
	"github.com/popgate/popgate/proxy"
	"github.com/popgate/popgate/proxy/throttle"
)

// ProxyOptions turns the configuration's listeners and upstreams into the
// proxy's options, with the generation's PolicyFor. It loads certificates
// and CA bundles, which decoding has only checked, into files, which keeps
// them current. Listeners and upstreams are bound when the proxy starts: a
// reload does not change them (their certificate files are reloaded).
func (g *Generation) ProxyOptions(files *tlsfiles.Watcher) (proxy.Options, error) {
	cfg := g.Config
	ups := map[string]*proxy.Upstream{}
	for name, u := range cfg.Upstreams {
		pu, err := proxyUpstream(u, files)
		if err != nil {
			return proxy.Options{}, err
		}
		ups[name] = pu
	}
	opts := proxy.Options{PolicyFor: g.PolicyFor}
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
			LoginRequiresTLS:    l.LoginRequiresTLS,
			PlaintextLoginFrom:  l.PlaintextLoginFrom,
		}
		if t := l.LoginThrottle; t != nil {
			pl.LoginThrottle = &throttle.Limits{
				AddressFailures: t.AddressFailures, NameFailures: t.NameFailures,
				Window: t.Window, Lockout: t.Lockout, Delay: t.Delay, MaxDelay: t.MaxDelay, Allow: t.Allow,
			}
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
			pairs := make([]tlsfiles.Pair, len(l.TLS.Certificates))
			for i, c := range l.TLS.Certificates {
				pairs[i] = tlsfiles.Pair(c)
			}
			certs, err := files.ServerCertificates("listener "+l.Name, pairs)
			if err != nil {
				return proxy.Options{}, err
			}
			pl.TLS = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
			pl.Implicit = l.TLS.Implicit
		}
		opts.Listeners = append(opts.Listeners, pl)
	}
	return opts, nil
}

func proxyUpstream(u *policy.Upstream, files *tlsfiles.Watcher) (*proxy.Upstream, error) {
	pu := &proxy.Upstream{
		Name:             u.Name,
		Address:          u.Address,
		ConnectTimeout:   u.ConnectTimeout,
		Timeout:          u.Timeout,
		MaxStatusLine:    u.MaxStatusLine,
		LoginRequiresTLS: u.LoginRequiresTLS,
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
		roots, err := files.Roots("upstream "+u.Name+" ca_file", u.CAFile)
		if err != nil {
			return nil, err
		}
		pu.RootCAs = roots.Pool
	}
	if cc := u.ClientCertificate; cc != nil {
		cert, err := files.ClientCertificate("upstream "+u.Name+" client certificate", tlsfiles.Pair(*cc))
		if err != nil {
			return nil, err
		}
		tc.GetClientCertificate = cert.GetClientCertificate
	}
	pu.TLS = tc
	return pu, nil
}
