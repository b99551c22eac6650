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
	m := &Match{
		Users:     d.globs(s.Users),
		Domains:   d.globs(s.Domains),
		Clients:   d.prefixes(s.Clients, "Invalid client address", "10.0.0.0/8"),
		Listeners: d.names(s.Listeners, "listener", func(n string) bool { return listeners[n] }),
		Upstreams: d.names(s.Upstreams, "upstream", func(n string) bool { return upstreams[n] != nil }),
	}
	if s.Users == nil && s.Domains == nil && s.Clients == nil && s.Listeners == nil && s.Upstreams == nil {
		d.errorf(s.DefRange, "Empty match", "A match block needs at least one of users, domains, clients, listeners or upstreams; leave the block out for the default policy.")
	}
	return m
}

// globs decodes a list of user or domain globs, lower-cased; a domain may
// be written with a leading "@".
func (d *decoder) globs(attr *hcl.Attribute) []string {
	var out []string
	for _, g := range d.stringList(attr) {
		if _, err := path.Match(g.value, ""); err != nil {
			d.errorf(g.rng, "Invalid glob", "%s: %q is not a valid pattern: %v.", attr.Name, g.value, err)
			continue
		}
		v := strings.ToLower(g.value)
		if attr.Name == "domains" {
			v = strings.TrimPrefix(v, "@")
		}
		out = append(out, v)
	}
	return out
}

// prefixes decodes a list of addresses and prefixes.
func (d *decoder) prefixes(attr *hcl.Attribute, summary, example string) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range d.stringList(attr) {
		p, err := parsePrefix(c.value)
		if err != nil {
			d.errorf(c.rng, summary, "%s: %q is neither an address nor a prefix such as %q.", attr.Name, c.value, example)
			continue
		}
		out = append(out, p)
	}
	return out
}

// names decodes a list of block names of one kind, each checked to exist.
func (d *decoder) names(attr *hcl.Attribute, kind string, known func(string) bool) []string {
	var out []string
	for _, n := range d.stringList(attr) {
		if !known(n.value) {
			d.errorf(n.rng, "Unknown "+kind, "%s: there is no %s block named %q.", attr.Name, kind, n.value)
			continue
		}
		out = append(out, n.value)
	}
	return out
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
