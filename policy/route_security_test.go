package policy

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// routeCfg loads testdata/ok_routes.hcl: listener "pop3" routes by login
// with login_routing = ["mail2", "mail3"]; mail1 is its upstream.
func routeCfg(t testing.TB) (*Config, *Listener) {
	t.Helper()
	cfg, diags := Load(filepath.Join("testdata", "ok_routes.hcl"))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return cfg, cfg.Listeners[0]
}

// Login routing can only ever pick an upstream block of the configuration:
// a login that names anything else either is refused ("#HOST") or is just
// a login name sent to the listener's own upstream ("user@domain"), never
// an address popgate dials.
func TestRouteLoginAllowlist(t *testing.T) {
	cfg, l := routeCfg(t)
	long := strings.Repeat("a", 70000)
	for _, tc := range []struct {
		login    string
		upstream string // "" = refused
		user     string
	}{
		{"bob#mail2", "mail2", "bob"},
		{"bob@MAIL3", "mail3", "bob"},
		{"bob#evil.example", "", ""},
		{"bob#127.0.0.1:25", "", ""},
		{"bob#127.0.0.1", "", ""},
		{"bob#[::1]:110", "", ""},
		{"bob#::1", "", ""},
		{"bob#mail2:25", "", ""}, // an allowed name with a port is not that name
		{"bob#mail2 ", "", ""},
		{"bob#mail2\t", "", ""},
		{"bob#mail1", "", ""}, // the listener's upstream is not in login_routing
		{"bob#", "", ""},
		{"bob#" + long, "", ""},
		{"bob#mail2#evil.example", "", ""}, // the last suffix decides
		{"bob#evil.example@mail2", "mail2", "bob#evil.example"},
		{"bob@evil.example", "mail1", "bob@evil.example"},
		{"bob@127.0.0.1:25", "mail1", "bob@127.0.0.1:25"},
		{"bob@[::1]:110", "mail1", "bob@[::1]:110"},
		{"bob%evil.example@mail9", "mail1", "bob%evil.example@mail9"},
		{"bob%mail2", "mail1", "bob%mail2"}, // "%" routing is not a thing here
		{"bob!evil.example", "mail1", "bob!evil.example"},
		{"bob@" + long, "mail1", "bob@" + long},
		{"", "mail1", ""},
		{"#mail2", "mail2", ""},
	} {
		up, user, err := cfg.RouteLogin(l, tc.login)
		name := tc.login
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		if tc.upstream == "" {
			if err == nil || !errors.Is(err, ErrLoginHost) || up != "" {
				t.Errorf("%q: got upstream %q, %v; want a refusal", name, up, err)
			}
			continue
		}
		if err != nil || up != tc.upstream || user != tc.user {
			t.Errorf("%q: got %q, %.40q, %v; want %q, %.40q", name, up, user, err, tc.upstream, tc.user)
		}
	}
}

// FuzzRouteLogin: whatever the login, RouteLogin picks a configured
// upstream block (never a name taken from the login) or refuses, and the
// user it returns is the login or the part of it before the routing suffix.
func FuzzRouteLogin(f *testing.F) {
	for _, s := range []string{"bob", "bob#mail2", "bob@mail3", "bob#evil", "bob@x.example.com", "vip@x", "#", "@", "a#b@c", "bob#MAIL2"} {
		f.Add(s)
	}
	cfg, l := routeCfg(f)
	f.Fuzz(func(t *testing.T, login string) {
		up, user, err := cfg.RouteLogin(l, login)
		if err != nil {
			if up != "" || user != "" || !errors.Is(err, ErrLoginHost) {
				t.Fatalf("%q: refused with %q, %q, %v", login, up, user, err)
			}
			return
		}
		if cfg.Upstreams[up] == nil {
			t.Fatalf("%q: routed to %q, which is no upstream block", login, up)
		}
		if up != l.Upstream && up != "mail2" && up != "mail3" {
			t.Fatalf("%q: routed to %q", login, up)
		}
		if !strings.HasPrefix(login, user) {
			t.Fatalf("%q: user %q is not the login or a prefix of it", login, user)
		}
		if user != login {
			if suffix := login[len(user):]; !strings.EqualFold(suffix[1:], up) || (suffix[0] != '#' && suffix[0] != '@') {
				t.Fatalf("%q: user %q, but the rest %q does not name %q", login, user, suffix, up)
			}
		}
	})
}
