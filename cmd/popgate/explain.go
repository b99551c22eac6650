package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

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
	ex, err := cfg.Explain(who, *listener)
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

func writeExplanation(w io.Writer, ex *policy.Explanation) {
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
	var scanners []string
	for _, c := range p.Chain {
		for _, sc := range c.Scanners {
			if s := fmt.Sprintf("%s (%s)", sc.Name, sc.Type); !slices.Contains(scanners, s) {
				scanners = append(scanners, s)
			}
		}
	}
	if len(scanners) > 0 {
		fmt.Fprintf(w, "scanners:   %s\n", strings.Join(scanners, ", "))
	}
	fmt.Fprintf(w, "on_error:   %s\n", p.OnError)
	fmt.Fprintf(w, "top:        %s\n", p.TOP)
	fmt.Fprintf(w, "keepalive:  %s\n", p.KeepAlive)
	fmt.Fprintf(w, "rejected:   %s\n", p.Rejected)
	if len(p.Chain) > 0 {
		var signed []string
		for _, c := range p.Chain {
			signed = append(signed, c.Name+"="+c.Signed)
		}
		fmt.Fprintf(w, "signed:     %s\n", strings.Join(signed, ", "))
		fmt.Fprintf(w, "encrypted:  %s\n", p.Encrypted)
	}
	q := "none (a refused message gets -ERR [SYS/PERM]; a change that needs the original kept is deferred)"
	if ex.Quarantine != "" {
		q = ex.Quarantine
	}
	fmt.Fprintf(w, "quarantine: %s\n", q)
	if ex.Memory != "" {
		fmt.Fprintf(w, "memory:     %s\n", ex.Memory)
	}
	if ex.Rescan != "" {
		fmt.Fprintf(w, "rescan:     %s\n", ex.Rescan)
	}
}
