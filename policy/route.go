package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// Route is a `route` block: which upstream a session goes to. Each
// attribute lists alternatives; the attributes a route sets must all match.
type Route struct {
	Users        []string       // globs on the login name, lower case
	Domains      []string       // globs on the login's domain, lower case
	Destinations []netip.Prefix // original destinations (transparent listeners)
	Listeners    []string       // only on these listeners ("" = all)
	Upstream     string
	Range        hcl.Range
}

type routeSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Users        *hcl.Attribute `hcl:"users,optional"`
	Domains      *hcl.Attribute `hcl:"domains,optional"`
	Destinations *hcl.Attribute `hcl:"destinations,optional"`
	Listeners    *hcl.Attribute `hcl:"listeners,optional"`
	Upstream     *hcl.Attribute `hcl:"upstream,optional"`
}

// ErrLoginHost refuses a login that names a host its listener's
// login_routing does not allow.
var ErrLoginHost = errors.New("login names a host that is not allowed")

// RoutesByLogin reports whether sessions on listener l are routed by their
// login name: then popgate greets clients itself and connects upstream once
// the client says who it is.
//
// Transparent listeners are never routed by login: the original destination
// is the server the client meant.
func (c *Config) RoutesByLogin(l *Listener) bool {
	if l.Transparent {
		return false
	}
	if len(l.LoginRouting) > 0 {
		return true
	}
	for _, r := range c.Routes {
		if (len(r.Users) > 0 || len(r.Domains) > 0) && anyEqual(r.Listeners, l.Name) {
			return true
		}
	}
	return false
}

// RouteLogin returns the upstream (block name) a login on listener l goes
// to, and the login name to send it. A login ending in "#HOST" (or "@HOST")
// where HOST is in l.LoginRouting goes to that upstream without the suffix;
// a "#HOST" not in the list is refused, never dialled. Otherwise the first
// route that applies decides, else the listener's upstream.
func (c *Config) RouteLogin(l *Listener, login string) (upstream, user string, err error) {
	if i := strings.LastIndexAny(login, "#@"); i >= 0 && len(l.LoginRouting) > 0 {
		host := login[i+1:]
		if anyEqualFold(l.LoginRouting, host) {
			return canonical(l.LoginRouting, host), login[:i], nil
		}
		if login[i] == '#' {
			return "", "", fmt.Errorf("%w: %q", ErrLoginHost, host)
		}
	}
	lower, domain := splitLogin(login)
	try := func(r *Route) bool {
		return (len(r.Users) > 0 || len(r.Domains) > 0) && anyEqual(r.Listeners, l.Name) &&
			anyGlob(r.Users, lower) && anyGlob(r.Domains, domain)
	}
	if c.routeIndex == nil {
		for _, r := range c.Routes {
			if try(r) {
				return r.Upstream, login, nil
			}
		}
		return l.Upstream, login, nil
	}
	upstream = l.Upstream
	c.routeIndex.candidates(lower, domain, func(i int) bool {
		if try(c.Routes[i]) {
			upstream = c.Routes[i].Upstream
			return true
		}
		return false
	})
	return upstream, login, nil
}

// indexRoutes builds the lookup index of RouteLogin once the routes are
// final. Destination-only routes never match a login: they stay out.
func (c *Config) indexRoutes() {
	x := newIndex(len(c.Routes), func(i int) []string { return c.Routes[i].Users }, func(i int) []string { return c.Routes[i].Domains })
	x.rest = slices.DeleteFunc(x.rest, func(i int) bool { return len(c.Routes[i].Users) == 0 && len(c.Routes[i].Domains) == 0 })
	c.routeIndex = x
}

// RouteDestination returns the upstream block whose settings apply to an
// original destination on transparent listener l ("" if no route names
// it: the listener's upstream settings, if any, apply).
func (c *Config) RouteDestination(l *Listener, dst netip.Addr) string {
	for _, r := range c.Routes {
		if len(r.Destinations) > 0 && anyEqual(r.Listeners, l.Name) && anyPrefix(r.Destinations, dst) {
			return r.Upstream
		}
	}
	return l.Upstream
}

func anyEqualFold(names []string, s string) bool {
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return true
		}
	}
	return false
}

func canonical(names []string, s string) string {
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return n
		}
	}
	return s
}

func (d *decoder) routes(schemas []*routeSchema, cfg *Config) {
	listeners := map[string]bool{}
	for _, l := range cfg.Listeners {
		listeners[l.Name] = true
	}
	for _, s := range schemas {
		r := &Route{
			Range:        s.DefRange,
			Users:        d.globs(s.Users),
			Domains:      d.globs(s.Domains),
			Destinations: d.prefixes(s.Destinations, "Invalid destination", "192.0.2.0/24"),
			Listeners:    d.names(s.Listeners, "listener", func(n string) bool { return listeners[n] }),
		}
		if d.requireAttr(s.Upstream, s.DefRange, "route", "upstream", `upstream = "mail2"`) {
			r.Upstream = d.str(s.Upstream, "")
			if r.Upstream != "" && cfg.Upstreams[r.Upstream] == nil {
				d.errorf(s.Upstream.Expr.Range(), "Unknown upstream", "Route refers to upstream %q, but there is no upstream block with that name.", r.Upstream)
			}
		}
		if s.Users == nil && s.Domains == nil && s.Destinations == nil {
			d.errorf(s.DefRange, "Route matches nothing", "A route needs users, domains or destinations to say whose sessions it routes.")
		}
		cfg.Routes = append(cfg.Routes, r)
	}
}

// parsePrefix accepts "192.0.2.0/24" and a bare address.
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
