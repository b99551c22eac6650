package policy

import (
	"net/netip"
	"path"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Match is the `match` block of a policy: who the policy applies to. Each
// attribute lists alternatives (any may match); the attributes that are set
// must all match. An attribute that is not set matches everyone.
type Match struct {
	// Users are globs (*, ?, [..]) matched case-insensitively against the
	// login name as the client gave it ("bob", "bob@example.com").
	Users []string
	// Domains are globs matched case-insensitively against the login's
	// domain: what follows its last "@" ("" when there is none).
	Domains []string
	// Clients are the client address prefixes ("10.0.0.0/8", "192.0.2.7").
	Clients []netip.Prefix
	// Listeners and Upstreams name listener and upstream blocks.
	Listeners []string
	Upstreams []string
}

// Who describes a session when its policy is chosen.
type Who struct {
	User     string
	Client   netip.Addr
	Listener string
	Upstream string
}

type matchSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Users     *hcl.Attribute `hcl:"users,optional"`
	Domains   *hcl.Attribute `hcl:"domains,optional"`
	Clients   *hcl.Attribute `hcl:"clients,optional"`
	Listeners *hcl.Attribute `hcl:"listeners,optional"`
	Upstreams *hcl.Attribute `hcl:"upstreams,optional"`
}

func (s *matchSchema) defRange() hcl.Range { return s.DefRange }

// Matches reports whether the policy applies to w.
func (p *Policy) Matches(w Who) bool {
	m := p.Match
	if m == nil {
		return true
	}
	user, domain := splitLogin(w.User)
	return anyGlob(m.Users, user) && anyGlob(m.Domains, domain) && anyPrefix(m.Clients, w.Client) &&
		anyEqual(m.Listeners, w.Listener) && anyEqual(m.Upstreams, w.Upstream)
}

// Select returns the policy for w: the first policy with a match block that
// matches, in file order; else the policy without a match block (the
// default); else nil, and the session is refused.
func (c *Config) Select(w Who) *Policy {
	if c.policyIndex == nil {
		return c.selectScan(w)
	}
	user, domain := splitLogin(w.User)
	var found *Policy
	c.policyIndex.candidates(user, domain, func(i int) bool {
		if p := c.Policies[i]; p.Match != nil && p.Matches(w) {
			found = p
		}
		return found != nil
	})
	if found != nil {
		return found
	}
	return c.defaultPolicy
}

// selectScan is Select without the index, for configurations built by hand.
func (c *Config) selectScan(w Who) *Policy {
	var fallback *Policy
	for _, p := range c.Policies {
		switch {
		case p.Match == nil:
			fallback = p
		case p.Matches(w):
			return p
		}
	}
	return fallback
}

// indexPolicies builds the lookup index of Select once the policies are
// final.
func (c *Config) indexPolicies() {
	users := func(i int) []string {
		return matchField(c.Policies[i].Match, func(m *Match) []string { return m.Users })
	}
	domains := func(i int) []string {
		return matchField(c.Policies[i].Match, func(m *Match) []string { return m.Domains })
	}
	c.policyIndex = newIndex(len(c.Policies), users, domains)
	for _, p := range c.Policies {
		if p.Match == nil {
			c.defaultPolicy = p
		}
	}
}

func matchField(m *Match, f func(*Match) []string) []string {
	if m == nil {
		return nil
	}
	return f(m)
}

func anyGlob(globs []string, s string) bool {
	if len(globs) == 0 {
		return true
	}
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

func anyPrefix(prefixes []netip.Prefix, a netip.Addr) bool {
	if len(prefixes) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func anyEqual(names []string, s string) bool {
	if len(names) == 0 {
		return true
	}
	for _, n := range names {
		if n == s {
			return true
		}
	}
	return false
}

// match decodes a policy's match block; every problem is reported at the
// list element it concerns.
func (d *decoder) match(s *matchSchema, listeners map[string]bool, upstreams map[string]*Upstream) *Match {
	m := &Match{}
	for _, g := range d.stringList(s.Users) {
		if _, err := path.Match(g.value, ""); err != nil {
			d.errorf(g.rng, "Invalid glob", "users: %q is not a valid pattern: %v.", g.value, err)
			continue
		}
		m.Users = append(m.Users, strings.ToLower(g.value))
	}
	for _, g := range d.stringList(s.Domains) {
		if _, err := path.Match(g.value, ""); err != nil {
			d.errorf(g.rng, "Invalid glob", "domains: %q is not a valid pattern: %v.", g.value, err)
			continue
		}
		m.Domains = append(m.Domains, strings.ToLower(strings.TrimPrefix(g.value, "@")))
	}
	for _, c := range d.stringList(s.Clients) {
		p, err := parsePrefix(c.value)
		if err != nil {
			d.errorf(c.rng, "Invalid client address", "clients: %q is neither an address nor a prefix such as \"10.0.0.0/8\".", c.value)
			continue
		}
		m.Clients = append(m.Clients, p)
	}
	for _, l := range d.stringList(s.Listeners) {
		if !listeners[l.value] {
			d.errorf(l.rng, "Unknown listener", "listeners: there is no listener block named %q.", l.value)
			continue
		}
		m.Listeners = append(m.Listeners, l.value)
	}
	for _, u := range d.stringList(s.Upstreams) {
		if upstreams[u.value] == nil {
			d.errorf(u.rng, "Unknown upstream", "upstreams: there is no upstream block named %q.", u.value)
			continue
		}
		m.Upstreams = append(m.Upstreams, u.value)
	}
	if s.Users == nil && s.Domains == nil && s.Clients == nil && s.Listeners == nil && s.Upstreams == nil {
		d.errorf(s.DefRange, "Empty match", "A match block needs at least one of users, domains, clients, listeners or upstreams; leave the block out for the default policy.")
	}
	return m
}

type rangedString struct {
	value string
	rng   hcl.Range
}

// stringList evaluates a list-of-strings attribute element by element, so
// that each problem points at its element.
func (d *decoder) stringList(attr *hcl.Attribute) []rangedString {
	if attr == nil {
		return nil
	}
	exprs, diags := hcl.ExprList(attr.Expr)
	d.diags = append(d.diags, diags...)
	var out []rangedString
	for _, e := range exprs {
		v, diags := e.Value(d.ctx)
		d.diags = append(d.diags, diags...)
		if diags.HasErrors() {
			continue
		}
		if v.IsNull() || !v.IsWhollyKnown() || v.Type() != cty.String || v.AsString() == "" {
			d.errorf(e.Range(), "Invalid value", "%s: each entry is a non-empty string.", attr.Name)
			continue
		}
		out = append(out, rangedString{v.AsString(), e.Range()})
	}
	return out
}
