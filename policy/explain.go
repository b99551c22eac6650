package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Explanation is what `check --explain` reports (and its JSON form).
type Explanation struct {
	User     string `json:"user"`
	Client   string `json:"client"`
	Listener string `json:"listener"`
	// Upstream is the listener's upstream block ("" for a transparent
	// listener: the original destination).
	Upstream        string `json:"upstream"`
	UpstreamAddress string `json:"upstream_address"`
	// Route says how the upstream was chosen.
	Route string `json:"route"`
	// Decision is "policy" (a policy matched), "default" (the policy
	// without a match block), "refused" (no policy applies: the login gets
	// -ERR [SYS/PERM]) or "unfiltered" (no policy blocks at all).
	Decision string `json:"decision"`
	Why      string `json:"why"`
	// Policy is nil for "refused" and "unfiltered".
	Policy *PolicyExplanation `json:"policy"`
	// Quarantine is the quarantine directory, "" when there is none.
	Quarantine string `json:"quarantine"`
	// Memory says where the message memory lives ("" when it is off or the
	// policy does not use it) and Rescan when the policy scans a
	// remembered message again.
	Memory string `json:"memory"`
	Rescan string `json:"rescan"`
}

// PolicyExplanation describes the chosen
type PolicyExplanation struct {
	Name      string              `json:"name"`
	At        string              `json:"at"`
	Match     map[string][]string `json:"match"`
	Chain     []ChainEntry        `json:"chain"`
	OnError   string              `json:"on_error"`
	TOP       string              `json:"top"`
	KeepAlive string              `json:"keepalive"`
	Rejected  string              `json:"rejected"`
	// Encrypted is the policy's encrypted setting, "ignore" when no filter
	// of the chain reads content.
	Encrypted  string `json:"encrypted"`
	Quarantine bool   `json:"quarantine"`
}

// ChainEntry is one filter of a chain.
type ChainEntry struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Scanners are the scanner blocks the filter uses.
	Scanners []ScannerEntry `json:"scanners"`
	// Signed is the filter's signed setting.
	Signed string `json:"signed"`
}

// ScannerEntry names a scanner block and its type.
type ScannerEntry struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Explain says which policy, upstream and chain a login by who on the
// listener named listener ("": the first) gets, and why: what `popgate
// check --explain` prints. A login no policy applies to is explained as
// refused, not as an error.
func (cfg *Config) Explain(who Who, listener string) (*Explanation, error) {
	var l *Listener
	for _, c := range cfg.Listeners {
		if listener == "" || c.Name == listener {
			l = c
			break
		}
	}
	if l == nil {
		if listener == "" {
			return nil, errors.New("the configuration has no listener")
		}
		return nil, fmt.Errorf("there is no listener %q", listener)
	}
	ex := &Explanation{User: who.User, Listener: l.Name, Upstream: l.Upstream, Route: "the listener's upstream"}
	if cfg.RoutesByLogin(l) {
		up, user, err := cfg.RouteLogin(l, who.User)
		if err != nil {
			ex.Route = "refused: " + err.Error()
			ex.Upstream, ex.Decision = "", "refused"
			ex.Why = "login routing refuses it: " + err.Error()
			return ex, nil
		} else if up != l.Upstream || user != who.User {
			ex.Route = fmt.Sprintf("routed by login (upstream sees the login %q)", user)
		}
		ex.Upstream, who.User = up, user
	}
	who.Listener, who.Upstream = l.Name, ex.Upstream
	if who.Client.IsValid() {
		ex.Client = who.Client.String()
	}
	if u := cfg.Upstreams[ex.Upstream]; u != nil {
		ex.UpstreamAddress = u.Address
	}
	if cfg.Quarantine != nil {
		ex.Quarantine = cfg.Quarantine.Dir
	}
	if len(cfg.Policies) == 0 {
		ex.Decision = "unfiltered"
		ex.Why = "the configuration has no policy blocks: every session is relayed unfiltered"
		return ex, nil
	}
	p := cfg.Select(who)
	switch {
	case p == nil:
		ex.Decision = "refused"
		ex.Why = "no policy applies: no match block matched and there is no default policy; the session would be refused with -ERR [SYS/PERM]"
		return ex, nil
	case p.Match == nil:
		ex.Decision = "default"
		ex.Why = "default policy: no match block matched"
	default:
		ex.Decision = "policy"
		ex.Why = "match block matched: " + matchText(p.Match)
	}
	ex.Policy = explainPolicy(cfg, p)
	ex.Memory, ex.Rescan = explainMemory(cfg, p)
	return ex, nil
}

func explainPolicy(cfg *Config, p *Policy) *PolicyExplanation {
	pe := &PolicyExplanation{
		Name:       p.Name,
		At:         fmt.Sprintf("%s:%d:%d", p.Range.Filename, p.Range.Start.Line, p.Range.Start.Column),
		Match:      matchMap(p.Match),
		Chain:      []ChainEntry{},
		OnError:    p.OnError.String(),
		TOP:        "pass",
		KeepAlive:  "off",
		Rejected:   "error",
		Encrypted:  p.Encrypted.String(),
		Quarantine: cfg.Quarantine != nil,
	}
	for _, f := range p.Filters {
		e := ChainEntry{Name: f.Name, Type: f.Type, Scanners: []ScannerEntry{}, Signed: cfg.Signed[f.Name].String()}
		for _, name := range f.Uses {
			for _, s := range cfg.Scanners {
				if s.Name == name {
					e.Scanners = append(e.Scanners, ScannerEntry{Name: s.Name, Type: s.Type})
				}
			}
		}
		pe.Chain = append(pe.Chain, e)
	}
	if p.FilterTOP {
		pe.TOP = "filter"
	}
	if p.KeepAlive > 0 {
		pe.KeepAlive = p.KeepAlive.String()
	}
	if p.NoticeOnReject {
		pe.Rejected = "notice"
	}
	return pe
}

func matchMap(m *Match) map[string][]string {
	if m == nil {
		return nil
	}
	out := map[string][]string{}
	add := func(k string, v []string) {
		if len(v) > 0 {
			out[k] = v
		}
	}
	add("users", m.Users)
	add("domains", m.Domains)
	var clients []string
	for _, c := range m.Clients {
		clients = append(clients, c.String())
	}
	add("clients", clients)
	add("listeners", m.Listeners)
	add("upstreams", m.Upstreams)
	return out
}

func matchText(m *Match) string {
	mm := matchMap(m)
	keys := make([]string, 0, len(mm))
	for k := range mm {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		q := make([]string, len(mm[k]))
		for i, v := range mm[k] {
			q[i] = fmt.Sprintf("%q", v)
		}
		parts = append(parts, k+" = ["+strings.Join(q, ", ")+"]")
	}
	return "match { " + strings.Join(parts, ", ") + " }"
}

func explainMemory(cfg *Config, p *Policy) (where, rescan string) {
	m := cfg.Memory
	switch {
	case m == nil:
		return "", "every download is scanned (the memory is off)"
	case p.Rescan.Off:
		return "", "every download is scanned (rescan = \"always\")"
	case len(p.Filters) == 0:
		return "", ""
	case m.Store == MemoryRedis:
		where = fmt.Sprintf("redis %s db %d", m.Redis.Address, m.Redis.DB)
	default:
		where = "embedded " + m.Path
	}
	where += fmt.Sprintf(" (records kept %s after their last use)", m.Retention)
	var when []string
	if p.Rescan.OnSignatureChange {
		when = append(when, "when the scanners' signatures change")
	}
	if p.Rescan.After > 0 {
		when = append(when, fmt.Sprintf("when the scan is older than %s", p.Rescan.After))
	}
	if len(when) == 0 {
		return where, "never: a remembered verdict stands until the record expires"
	}
	return where, "a message remembered as deliverable is scanned again " + strings.Join(when, " or ")
}
