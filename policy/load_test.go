package policy

import (
	"github.com/popgate/popgate/filters"
	"net/netip"

	"bytes"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// goldenCases lists the cases in testdata: each X.hcl file or X directory
// (not "files" or "fuzz"). Names start with "ok_" (must load) or "err_"
// (must fail).
func goldenCases(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	var cases []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.IsDir() && name != "files" && name != "fuzz":
			cases = append(cases, name)
		case !e.IsDir() && strings.HasSuffix(name, ".hcl"):
			cases = append(cases, name)
		}
	}
	return cases
}

// render is what WriteDiagnostics prints, with the test certificate
// directory shown as $CERTDIR so that golden files are stable.
func render(diags hcl.Diagnostics, files map[string]*hcl.File) string {
	var buf bytes.Buffer
	WriteDiagnostics(&buf, diags, files)
	return strings.ReplaceAll(buf.String(), certDir, "$CERTDIR")
}

// TestGolden loads each case and compares the printed diagnostics with
// testdata/CASE.golden (empty when there are none). `go test ./policy
// -update` rewrites the golden files.
func TestGolden(t *testing.T) {
	cases := goldenCases(t)
	seen := map[string]bool{}
	for _, c := range cases {
		name := strings.TrimSuffix(c, ".hcl")
		seen[name+".golden"] = true
		t.Run(name, func(t *testing.T) {
			cfg, diags := Load(filepath.Join("testdata", c))
			if cfg == nil {
				t.Fatal("Load returned a nil Config")
			}
			checkSubjects(t, diags)
			got := render(diags, cfg.Files)
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./policy -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("diagnostics differ from %s (go test ./policy -update rewrites it)\n--- got:\n%s--- want:\n%s", golden, got, want)
			}

			switch {
			case strings.HasPrefix(name, "ok_"):
				if diags.HasErrors() {
					t.Fatalf("unexpected errors:\n%s", got)
				}
				check, ok := configChecks[name]
				if !ok {
					t.Fatalf("no entry in configChecks for %s", name)
				}
				check(t, cfg)
			case strings.HasPrefix(name, "err_"):
				if !diags.HasErrors() {
					t.Fatal("expected errors, got none")
				}
				if cfg.Listeners != nil || cfg.Upstreams != nil || cfg.Metrics != nil {
					t.Error("a failed load returned more than Files")
				}
				if len(cfg.Files) == 0 && name != "err_dir_missing" {
					t.Error("a failed load returned no Files")
				}
			default:
				t.Fatalf("case %s: name must start with ok_ or err_", name)
			}
		})
	}
	goldens, _ := filepath.Glob("testdata/*.golden")
	for _, g := range goldens {
		if !seen[filepath.Base(g)] {
			t.Errorf("%s has no case", g)
		}
	}
}

// checkSubjects asserts that every error has a subject in a named file, so
// that WriteDiagnostics can print file:line:col for it.
func checkSubjects(t *testing.T, diags hcl.Diagnostics) {
	t.Helper()
	for _, d := range diags {
		if d.Severity == hcl.DiagError && (d.Subject == nil || d.Subject.Filename == "") {
			t.Errorf("error without a subject: %s: %s", d.Summary, d.Detail)
		}
	}
}

// TestGoldenCoverage asserts that the golden files together show every kind
// of diagnostic that policy emits.
func TestGoldenCoverage(t *testing.T) {
	goldens, err := filepath.Glob("testdata/*.golden")
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(b)
	}
	for _, s := range []string{
		// Values.
		"error: Invalid size:",
		"error: Invalid duration:",
		"error: Invalid value:",
		"error: Incorrect attribute value type:",
		"error: Invalid address:",
		"error: Number out of range:",
		// Names and references.
		"error: Duplicate listener:",
		"error: Duplicate upstream:",
		"error: Duplicate listener address:",
		"error: Invalid upstream name:",
		"error: Unknown upstream:",
		"error: Missing upstream:",
		"error: No listener:",
		// Structure (gohcl and hclsyntax).
		"error: Missing required argument:",
		"error: Unsupported argument:",
		"error: Unsupported block type:",
		"error: Duplicate log block:",
		"error: Duplicate quarantine block:",
		"error: Duplicate tls block:",
		"error: Missing name for listener:",
		"error: Missing name for filter:",
		"error: Invalid multi-line string:",
		// Files.
		"error: File not found:",
		"error: Cannot read file:",
		"error: Not a directory:",
		"error: Invalid PEM file:",
		"error: Invalid certificate or key:",
		// Functions.
		"error: Error in function call:",
		"error: Invalid function argument:",
		"error: Call to unknown function:",
		"error: Variables not allowed:",
		// Warnings.
		"warning: Idle timeout below the RFC 1939 minimum:",
		"warning: TLS certificate verification is off:",
		"warning: TLS setting without TLS:",
		// Scanners, filters, policies.
		"error: Invalid glob:",
		"error: Invalid client address:",
		"error: Unknown listener:",
		"error: Empty match:",
		"error: Second default policy:",
		"error: Unknown scanner type:",
		"error: Unknown filter type:",
		"error: Duplicate filter:",
		"error: Duplicate policy:",
		"error: Unknown filter:",
		"error: Duplicate chain entry:",
		"error: Invalid chain entry:",
		"warning: Policy without quarantine:",
		"warning: Unused filter:",
		"error: Invalid destination:",
		"error: Route matches nothing:",
		"error: Invalid trusted address:",
		"error: No trusted address:",
		"error: TPROXY without transparent:",
		// Logins.
		"warning: Login requires TLS without TLS:",
		"warning: Plaintext login exemption without the requirement:",
		"warning: Login throttle without limits:",
		"error: Invalid plaintext login address:",
		"error: Invalid allowed address:",
		"error: Duplicate login_throttle block:",
	} {
		if !strings.Contains(all.String(), s) {
			t.Errorf("no golden file shows %q", s)
		}
	}
}

var configChecks = map[string]func(*testing.T, *Config){
	"ok_defaults": func(t *testing.T, cfg *Config) {
		wantListener := &Listener{
			Name: "pop3", Address: "127.0.0.1:1110", Upstream: "mail",
			MaxConnections: 1000, MaxConnectionsPerIP: 50,
			LoginTimeout: 60 * time.Second, IdleTimeout: 10 * time.Minute,
			MaxCommandLine: 255,
			LoginThrottle: &LoginThrottle{AddressFailures: 10, NameFailures: 5, Window: 10 * time.Minute,
				Lockout: 15 * time.Minute, Delay: time.Second, MaxDelay: 8 * time.Second},
		}
		wantUpstream := &Upstream{
			Name: "mail", Address: "127.0.0.1:110", TLS: "none",
			ConnectTimeout: 10 * time.Second, Timeout: 60 * time.Second,
			MaxStatusLine: 512, ProxyProtocol: "none",
		}
		if len(cfg.Listeners) != 1 || len(cfg.Upstreams) != 1 {
			t.Fatalf("got %d listeners and %d upstreams", len(cfg.Listeners), len(cfg.Upstreams))
		}
		l, u := *cfg.Listeners[0], *cfg.Upstreams["mail"]
		if l.Range.Filename != "testdata/ok_defaults.hcl" || l.Range.Start.Line != 2 {
			t.Errorf("listener range = %v", l.Range)
		}
		if u.Range.Start.Line != 7 {
			t.Errorf("upstream range = %v", u.Range)
		}
		l.Range, u.Range = hcl.Range{}, hcl.Range{}
		if !reflect.DeepEqual(&l, wantListener) {
			t.Errorf("listener = %+v, want %+v", l, *wantListener)
		}
		if !reflect.DeepEqual(&u, wantUpstream) {
			t.Errorf("upstream = %+v, want %+v", u, *wantUpstream)
		}
		if cfg.Log != (Log{Level: "info", Format: "json"}) {
			t.Errorf("log = %+v", cfg.Log)
		}
		if cfg.Spool != (Spool{Dir: os.TempDir(), MemoryLimit: 1000000}) {
			t.Errorf("spool = %+v", cfg.Spool)
		}
		if cfg.ShutdownTimeout != 30*time.Second {
			t.Errorf("shutdown timeout = %v", cfg.ShutdownTimeout)
		}
		if cfg.Metrics != nil {
			t.Errorf("metrics = %v", cfg.Metrics)
		}
		if _, ok := cfg.Files["testdata/ok_defaults.hcl"]; !ok || len(cfg.Files) != 1 {
			t.Errorf("files = %v", cfg.Files)
		}
	},

	"ok_full": func(t *testing.T, cfg *Config) {
		if cfg.ShutdownTimeout != 90*time.Second {
			t.Errorf("shutdown timeout = %v", cfg.ShutdownTimeout)
		}
		if len(cfg.Listeners) != 3 {
			t.Fatalf("got %d listeners", len(cfg.Listeners))
		}
		l := cfg.Listeners[0]
		want := Listener{
			Name: "pop3s", Address: "[::1]:995", Upstream: "store",
			TLS: &ListenerTLS{
				Certificates: []KeyPair{{CertFile: filepath.Join(certDir, "cert.pem"), KeyFile: filepath.Join(certDir, "key.pem")}},
				Implicit:     true,
			},
			MaxConnections: 200, MaxConnectionsPerIP: 5,
			LoginTimeout: 20 * time.Second, IdleTimeout: time.Hour,
			MaxCommandLine: 1024, Range: l.Range,
			ProxyProtocol: &ProxyProtocol{
				Trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::7/128")},
				Timeout: 2 * time.Second,
			},
			LoginThrottle: &LoginThrottle{AddressFailures: 20, NameFailures: 0, Window: time.Hour,
				Lockout: 30 * time.Minute, Delay: 500 * time.Millisecond, MaxDelay: 4 * time.Second,
				Allow: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}},
		}
		if !reflect.DeepEqual(*l, want) {
			t.Errorf("listener pop3s = %+v\nwant %+v", *l, want)
		}
		if g := cfg.Listeners[1]; g.Name != "gateway" || !g.Transparent || !g.TProxy || g.Upstream != "" || g.TLS != nil || g.Address != ":0" || g.LoginThrottle != nil {
			t.Errorf("listener gateway = %+v", *g)
		}
		if s := cfg.Listeners[2]; s.Name != "stls" || s.TLS == nil || s.TLS.Implicit || !s.LoginRequiresTLS ||
			!reflect.DeepEqual(s.PlaintextLoginFrom, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}) {
			t.Errorf("listener stls = %+v", *s)
		}
		u := cfg.Upstreams["store"]
		wantU := Upstream{
			Name: "store", Address: "store.example.com:995", TLS: "implicit",
			CAFile: filepath.Join(certDir, "ca.pem"), ServerName: "pop.example.com",
			ConnectTimeout: 3 * time.Second, Timeout: 2 * time.Minute,
			MaxStatusLine: 4096, ProxyProtocol: "v2", LoginRequiresTLS: true, Range: u.Range,
		}
		if !reflect.DeepEqual(*u, wantU) {
			t.Errorf("upstream store = %+v\nwant %+v", *u, wantU)
		}
		if u := cfg.Upstreams["legacy"]; u.TLS != "starttls" || u.Address != "[2001:db8::1]:110" || u.InsecureSkipVerify {
			t.Errorf("upstream legacy = %+v", *u)
		}
		if cfg.Log != (Log{Level: "debug", Format: "console", File: "/var/log/popgate.log"}) {
			t.Errorf("log = %+v", cfg.Log)
		}
		// A relative directory is relative to the configuration file.
		if cfg.Spool != (Spool{Dir: filepath.Join("testdata", "files"), MemoryLimit: 512 * 1024}) {
			t.Errorf("spool = %+v", cfg.Spool)
		}
	},

	"ok_tls": func(t *testing.T, cfg *Config) {
		pair := func(cert, key string) KeyPair {
			return KeyPair{CertFile: filepath.Join(certDir, cert), KeyFile: filepath.Join(certDir, key)}
		}
		for _, c := range []struct {
			listener string
			want     ListenerTLS
		}{
			// certificate blocks only: the first is the default.
			{"hosting", ListenerTLS{Implicit: true, Certificates: []KeyPair{pair("cert.pem", "key.pem"), pair("sni-cert.pem", "sni-key.pem")}}},
			// cert_file and key_file come first, then the blocks.
			{"mixed", ListenerTLS{Certificates: []KeyPair{pair("noname-cert.pem", "noname-key.pem"), pair("sni-cert.pem", "sni-key.pem")}}},
		} {
			var got *ListenerTLS
			for _, l := range cfg.Listeners {
				if l.Name == c.listener {
					got = l.TLS
				}
			}
			if got == nil || !reflect.DeepEqual(*got, c.want) {
				t.Errorf("listener %s: tls = %+v, want %+v", c.listener, got, c.want)
			}
		}
		want := pair("cert.pem", "key.pem")
		if u := cfg.Upstreams["mtls"]; u.ClientCertificate == nil || *u.ClientCertificate != want {
			t.Errorf("upstream mtls: client certificate = %+v, want %+v", u.ClientCertificate, want)
		}
	},

	"ok_funcs": func(t *testing.T, cfg *Config) {
		if a := cfg.Listeners[0].Address; a != "127.0.0.1:2110" {
			t.Errorf("env(): address = %q", a)
		}
		if a := cfg.Listeners[1].Address; a != "127.0.0.1:2111" {
			t.Errorf("env() default: address = %q", a)
		}
		u := cfg.Upstreams["mail"]
		if u.Address != "127.0.0.1:3110" {
			t.Errorf("file(): address = %q", u.Address)
		}
		if u.ServerName != "s3cret-token.example.com" {
			t.Errorf("file() in a template: server_name = %q", u.ServerName)
		}
		if cfg.Log.File != "" {
			t.Errorf("env() of an empty variable: log file = %q", cfg.Log.File)
		}
	},

	"ok_filters": func(t *testing.T, cfg *Config) {
		if cfg.Metrics == nil || cfg.Metrics.Address != "127.0.0.1:9100" {
			t.Fatalf("metrics = %+v", cfg.Metrics)
		}
		if len(cfg.Policies) != 1 || len(cfg.Filters) != 2 || cfg.Quarantine == nil || cfg.Quarantine.Dir != "/var/lib/popgate/quarantine" {
			t.Fatalf("policies %v, filters %v, quarantine %v", cfg.Policies, cfg.Filters, cfg.Quarantine)
		}
		p := cfg.Policies[0]
		if strings.Join(p.Chain, ",") != "av,dangerous" || len(p.Filters) != 2 || p.Filters[0].Name != "av" || p.Filters[0].Type != "clamav" ||
			p.OnError != filters.PassWithTag || p.FilterTOP || p.KeepAlive != 15*time.Second || p.NoticeOnReject || p.MaxSize != 50_000_000 {
			t.Errorf("policy = %+v", *p)
		}
		if cfg.Listeners[0].IdleTimeout != 5*time.Minute {
			t.Errorf("idle timeout = %v", cfg.Listeners[0].IdleTimeout)
		}
	},

	"ok_policies": func(t *testing.T, cfg *Config) {
		for _, tc := range []struct {
			who  Who
			want string
		}{
			{Who{User: "bob@example.com", Listener: "office"}, "default"},
			{Who{User: "CEO@Example.com", Listener: "public"}, "executives"},
			{Who{User: "cfo@other.org"}, "executives"},
			{Who{User: "alice@lab.example.com", Client: netip.MustParseAddr("10.1.2.3"), Listener: "office"}, "lab"},
			{Who{User: "alice@x.test", Client: netip.MustParseAddr("::ffff:192.0.2.7"), Listener: "office"}, "lab"},
			{Who{User: "alice@x.test", Client: netip.MustParseAddr("2001:db8::1"), Listener: "office"}, "lab"},
			{Who{User: "alice@lab.example.com", Client: netip.MustParseAddr("10.1.2.3"), Listener: "public"}, "default"},
			{Who{User: "alice@lab.example.com", Client: netip.MustParseAddr("192.0.2.8"), Listener: "office"}, "default"},
			{Who{User: "alice", Client: netip.MustParseAddr("10.1.2.3"), Listener: "office"}, "default"},
		} {
			if got := cfg.Select(tc.who); got == nil || got.Name != tc.want {
				t.Errorf("Select(%+v) = %v, want %s", tc.who, got, tc.want)
			}
		}
		noDefault := &Config{Policies: cfg.Policies[1:]}
		if p := noDefault.Select(Who{User: "bob"}); p != nil {
			t.Errorf("without a default, an unmatched login got %q", p.Name)
		}
	},

	"ok_routes": func(t *testing.T, cfg *Config) {
		pop3, edge := cfg.Listeners[0], cfg.Listeners[1]
		for _, tc := range []struct {
			l              *Listener
			login          string
			upstream, user string
			err            bool
		}{
			{pop3, "bob@example.com", "mail1", "bob@example.com", false},
			{pop3, "Carol@Sales.Example.COM", "mail2", "Carol@Sales.Example.COM", false},
			{pop3, "vip@other.org", "mail3", "vip@other.org", false},
			{pop3, "dave@other.org", "mail1", "dave@other.org", false},
			{pop3, "dave@other.org#mail3", "mail3", "dave@other.org", false},
			{pop3, "dave#MAIL2", "mail2", "dave", false},
			{pop3, "dave@mail2", "mail2", "dave", false},
			{pop3, "dave#evil.example.net:110", "", "", true},
			{pop3, "dave@evil.example.net", "mail1", "dave@evil.example.net", false}, // just a domain
			{edge, "dave#mail2", "mail1", "dave#mail2", false},                       // login routing is off there
		} {
			up, user, err := cfg.RouteLogin(tc.l, tc.login)
			if up != tc.upstream || user != tc.user || (err != nil) != tc.err {
				t.Errorf("RouteLogin(%s, %q) = %q, %q, %v", tc.l.Name, tc.login, up, user, err)
			}
		}
		if !cfg.RoutesByLogin(pop3) || cfg.RoutesByLogin(edge) {
			t.Errorf("RoutesByLogin: pop3 %v, edge %v", cfg.RoutesByLogin(pop3), cfg.RoutesByLogin(edge))
		}
		for _, tc := range []struct {
			dst, want string
		}{{"192.0.2.10", "mail2"}, {"198.51.100.77", "mail2"}, {"203.0.113.1", "mail3"}, {"192.0.2.11", "mail1"}} {
			if got := cfg.RouteDestination(edge, netip.MustParseAddr(tc.dst)); got != tc.want {
				t.Errorf("RouteDestination(%s) = %q, want %q", tc.dst, got, tc.want)
			}
		}
	},

	"ok_dir": func(t *testing.T, cfg *Config) {
		if len(cfg.Listeners) != 1 || cfg.Upstreams["mail"] == nil || cfg.ShutdownTimeout != 5*time.Second {
			t.Errorf("merged config = %+v", cfg)
		}
		if cfg.Upstreams["mail"].Range.Filename != filepath.Join("testdata", "ok_dir", "b.hcl") {
			t.Errorf("upstream range = %v", cfg.Upstreams["mail"].Range)
		}
		if len(cfg.Files) != 2 {
			t.Errorf("files = %v", cfg.Files)
		}
	},
}
