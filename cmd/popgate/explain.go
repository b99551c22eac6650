package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"path"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/policy"
)

// cmdCheckExplain is `popgate check`:
//
//	popgate check -c FILE|DIR [--explain USER [--client IP] [--listener NAME] [--json]]
//
// Without --explain it is cmdCheck: every diagnostic, exit 0 or 1. With
// --explain it also prints which policy a login by USER would get, why, the
// upstream, the chain and the policy's settings. A login no policy applies
// to is reported as refused; the exit status is still 0, since the
// configuration is valid (exit 1 only for an invalid configuration, 2 for
// bad arguments).
func cmdCheckExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", defaultConfig, "configuration file or directory")
	user := fs.String("explain", "", "explain which policy a login by this user name gets")
	client := fs.String("client", "", "with --explain: the client's IP address (default: none, so client-restricted match blocks do not match)")
	listener := fs.String("listener", "", "with --explain: the listener the client connects to (default: the first listener)")
	asJSON := fs.Bool("json", false, "with --explain: print the explanation as one JSON object")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "popgate check: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	explain := false
	fs.Visit(func(f *flag.Flag) { explain = explain || f.Name == "explain" })
	if !explain {
		if *client != "" || *listener != "" || *asJSON {
			fmt.Fprintln(stderr, "popgate check: --client, --listener and --json need --explain USER")
			return 2
		}
		return cmdCheck(args, stdout, stderr)
	}
	who, err := parseWhoFlags(*user, *client)
	if err != nil {
		fmt.Fprintf(stderr, "popgate check: %v\n", err)
		return 2
	}
	cfg := load(*cfgPath, stderr)
	if cfg == nil {
		return 1
	}
	defer cfg.Close()
	ex, err := explainLogin(cfg, who, *listener)
	if err != nil {
		fmt.Fprintf(stderr, "popgate check: %v\n", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ex); err != nil {
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "%s: OK (%d listeners, %d upstreams)\n", *cfgPath, len(cfg.Listeners), len(cfg.Upstreams))
	writeExplanation(stdout, ex)
	return 0
}

func parseWhoFlags(user, client string) (policy.Who, error) {
	w := policy.Who{User: user}
	if client != "" {
		a, err := netip.ParseAddr(client)
		if err != nil {
			return w, fmt.Errorf("--client %q is not an IP address", client)
		}
		w.Client = a.Unmap()
	}
	return w, nil
}

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
}

// PolicyExplanation describes the chosen policy.
type PolicyExplanation struct {
	Name       string              `json:"name"`
	At         string              `json:"at"`
	Match      map[string][]string `json:"match"`
	Chain      []ChainEntry        `json:"chain"`
	OnError    string              `json:"on_error"`
	TOP        string              `json:"top"`
	KeepAlive  string              `json:"keepalive"`
	Rejected   string              `json:"rejected"`
	Quarantine bool                `json:"quarantine"`
}

// ChainEntry is one filter of a chain.
type ChainEntry struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

func explainLogin(cfg *policy.Config, who policy.Who, listener string) (*Explanation, error) {
	var l *policy.Listener
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
	return ex, nil
}

func explainPolicy(cfg *policy.Config, p *policy.Policy) *PolicyExplanation {
	types := filterTypes(cfg)
	pe := &PolicyExplanation{
		Name:       p.Name,
		At:         fmt.Sprintf("%s:%d:%d", p.Range.Filename, p.Range.Start.Line, p.Range.Start.Column),
		Match:      matchMap(p.Match),
		Chain:      []ChainEntry{},
		OnError:    p.OnError.String(),
		TOP:        "pass",
		KeepAlive:  "off",
		Rejected:   "error",
		Quarantine: cfg.Quarantine != nil,
	}
	for i, name := range p.Chain {
		t := types[name]
		if t == "" && i < len(p.Filters) {
			t = filterTypeOf(p.Filters[i])
		}
		pe.Chain = append(pe.Chain, ChainEntry{Name: name, Type: t})
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

func matchMap(m *policy.Match) map[string][]string {
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

func matchText(m *policy.Match) string {
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

// filterTypes maps filter block names to their type label, read from the
// parsed configuration files (the built filters do not carry it).
func filterTypes(cfg *policy.Config) map[string]string {
	types := map[string]string{}
	for _, f := range cfg.Files {
		body, ok := f.Body.(*hclsyntax.Body)
		if !ok {
			continue
		}
		for _, b := range body.Blocks {
			if b.Type == "filter" && len(b.Labels) == 2 {
				if _, dup := types[b.Labels[1]]; !dup {
					types[b.Labels[1]] = b.Labels[0]
				}
			}
		}
	}
	return types
}

// filterTypeOf guesses a filter's type from its Go package.
func filterTypeOf(f filters.Filter) string {
	t := strings.TrimPrefix(fmt.Sprintf("%T", f), "*")
	if i := strings.IndexByte(t, '.'); i >= 0 {
		t = t[:i]
	}
	return path.Base(t)
}

func writeExplanation(w io.Writer, ex *Explanation) {
	client := ex.Client
	if client == "" {
		client = "(none given)"
	}
	fmt.Fprintf(w, "login:      user %q, client %s, listener %q\n", ex.User, client, ex.Listener)
	up := "original destination (transparent listener)"
	if strings.HasPrefix(ex.Route, "refused") {
		up = "none"
	} else if ex.Upstream != "" {
		up = fmt.Sprintf("%s (%s)", ex.Upstream, ex.UpstreamAddress)
	}
	fmt.Fprintf(w, "upstream:   %s; %s\n", up, ex.Route)
	switch ex.Decision {
	case "refused":
		fmt.Fprintf(w, "policy:     NONE: the session would be refused with -ERR [SYS/PERM]\n")
		fmt.Fprintf(w, "why:        %s\n", ex.Why)
		return
	case "unfiltered":
		fmt.Fprintf(w, "policy:     none (unfiltered)\n")
		fmt.Fprintf(w, "why:        %s\n", ex.Why)
		return
	}
	p := ex.Policy
	fmt.Fprintf(w, "policy:     %s (%s)\n", p.Name, p.At)
	fmt.Fprintf(w, "why:        %s\n", ex.Why)
	chain := "(empty: messages are relayed unfiltered)"
	if len(p.Chain) > 0 {
		var parts []string
		for _, c := range p.Chain {
			parts = append(parts, fmt.Sprintf("%s (%s)", c.Name, c.Type))
		}
		chain = strings.Join(parts, " -> ")
	}
	fmt.Fprintf(w, "chain:      %s\n", chain)
	fmt.Fprintf(w, "on_error:   %s\n", p.OnError)
	fmt.Fprintf(w, "top:        %s\n", p.TOP)
	fmt.Fprintf(w, "keepalive:  %s\n", p.KeepAlive)
	fmt.Fprintf(w, "rejected:   %s\n", p.Rejected)
	q := "none (a refused message gets -ERR [SYS/PERM]; a change that needs the original kept is deferred)"
	if ex.Quarantine != "" {
		q = ex.Quarantine
	}
	fmt.Fprintf(w, "quarantine: %s\n", q)
}
