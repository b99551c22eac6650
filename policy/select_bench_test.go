package policy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// bigConfig is an ISP-sized configuration: n policies matching a domain
// each (every tenth one a glob), a default policy, and r routes by domain.
func bigConfig(tb testing.TB, n, r int) *Config {
	var b strings.Builder
	b.WriteString("listener \"pop3\" {\n  address = \"127.0.0.1:1110\"\n  upstream = \"m0\"\n}\n")
	for i := range 4 {
		fmt.Fprintf(&b, "upstream \"m%d\" {\n  address = \"127.0.0.1:%d\"\n}\n", i, 2110+i)
	}
	b.WriteString("filter \"tag\" \"stamp\" {\n  headers = { \"X-Scanned\" = \"yes\" }\n}\n")
	for i := range n {
		dom := fmt.Sprintf("\"d%d.example\"", i)
		if i%10 == 9 {
			dom = fmt.Sprintf("\"*.d%d.example\"", i)
		}
		fmt.Fprintf(&b, "policy \"p%d\" {\n  chain = [\"stamp\"]\n  match {\n    domains = [%s]\n    clients = [\"10.%d.0.0/16\"]\n  }\n}\n", i, dom, i%256)
	}
	b.WriteString("policy \"default\" {\n  chain = [\"stamp\"]\n}\n")
	for i := range r {
		fmt.Fprintf(&b, "route {\n  domains = [\"r%d.example\"]\n  upstream = \"m%d\"\n}\n", i, 1+i%3)
	}
	cfg, diags := LoadBytes("big.hcl", []byte(b.String()))
	if diags.HasErrors() {
		tb.Fatal(diags)
	}
	return cfg
}

func TestBigConfigSelection(t *testing.T) {
	cfg := bigConfig(t, 1000, 10000)
	for _, tc := range []struct {
		user, client, policy string
	}{
		{"a@d500.example", "10.244.1.1", "p500"},
		{"a@d500.example", "10.1.1.1", "default"}, // domain matches, client does not
		{"a@x.d999.example", "10.231.0.9", "p999"},
		{"A@X.Y.D999.example", "10.231.0.9", "p999"},
		{"a@d999.example", "10.231.0.9", "default"}, // "*.d999.example" needs a subdomain
		{"a@nowhere.example", "10.0.0.1", "default"},
	} {
		if got := cfg.Select(Who{User: tc.user, Client: netip.MustParseAddr(tc.client)}); got.Name != tc.policy {
			t.Errorf("Select(%s, %s) = %s, want %s", tc.user, tc.client, got.Name, tc.policy)
		}
		if got := cfg.selectScan(Who{User: tc.user, Client: netip.MustParseAddr(tc.client)}); got.Name != tc.policy {
			t.Errorf("selectScan disagrees for %s: %s", tc.user, got.Name)
		}
	}
	if up, _, _ := cfg.RouteLogin(cfg.Listeners[0], "bob@r9999.example"); up != "m1" {
		t.Errorf("RouteLogin = %s", up)
	}
}

// BenchmarkSessionPolicy is what each login costs at 1,000 policies and
// 10,000 routes: the route and the policy (chains are built once, at load).
func BenchmarkSessionPolicy(b *testing.B) {
	cfg := bigConfig(b, 1000, 10000)
	l := cfg.Listeners[0]
	client := netip.MustParseAddr("10.7.1.1")
	b.ReportAllocs()
	for b.Loop() {
		if up, _, _ := cfg.RouteLogin(l, "bob@r7777.example"); up == "" {
			b.Fatal("no route")
		}
		if p := cfg.Select(Who{User: "bob@d999.example", Client: client, Listener: "pop3"}); p == nil {
			b.Fatal("no policy")
		}
	}
}
