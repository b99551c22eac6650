package policy

import (
	"slices"

	"github.com/popgate/popgate/filters"

	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExamples loads every file in ../examples. Nothing is skipped or
// relaxed: tls.hcl takes its certificate, key and CA paths from
// POPGATE_TLS_CERT, POPGATE_TLS_KEY and POPGATE_CA_FILE (with /etc/popgate
// defaults), and the test points them at the throwaway certificates that
// TestMain generates, so the example is checked exactly as popgate check
// would check it on a machine that has its files.
func TestExamples(t *testing.T) {
	t.Setenv("POPGATE_TLS_CERT", filepath.Join(certDir, "cert.pem"))
	t.Setenv("POPGATE_TLS_KEY", filepath.Join(certDir, "key.pem"))
	t.Setenv("POPGATE_CA_FILE", filepath.Join(certDir, "ca.pem"))

	paths, err := filepath.Glob(filepath.Join("..", "examples", "*.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range paths {
		name := filepath.Base(p)
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			cfg, diags := Load(p)
			checkSubjects(t, diags)
			if diags.HasErrors() {
				t.Fatalf("errors:\n%s", render(diags, cfg.Files))
			}
			if len(diags) > 0 {
				t.Errorf("unexpected warnings:\n%s", render(diags, cfg.Files))
			}
			if len(cfg.Listeners) == 0 {
				t.Error("no listener")
			}
		})
	}
	for _, want := range []string{"demo.hcl", "minimal.hcl", "tls.hcl", "gateway.hcl", "isp.hcl", "fail-open.hcl"} {
		if !seen[want] {
			t.Errorf("examples/%s is missing", want)
		}
	}
}

// TestExampleMinimal checks that examples/minimal.hcl is still the minimal
// configuration of docs/ARCHITECTURE.md §2: every block it names is there.
func TestExampleMinimal(t *testing.T) {
	cfg, diags := Load(filepath.Join("..", "examples", "minimal.hcl"))
	if diags.HasErrors() {
		t.Fatal(render(diags, cfg.Files))
	}
	if l := cfg.Listeners[0]; l.Name != "pop3" || l.Address != "127.0.0.1:1110" || l.Upstream != "mail" {
		t.Errorf("listener = %+v", *l)
	}
	if u := cfg.Upstreams["mail"]; u == nil || u.Address != "127.0.0.1:110" || u.TLS != "none" {
		t.Errorf("upstreams = %v", cfg.Upstreams)
	}
	var names []string
	for n := range cfg.Filters {
		names = append(names, n)
	}
	slices.Sort(names)
	if strings.Join(names, ",") != "av,dangerous,stamp" || cfg.Quarantine == nil || len(cfg.Policies) != 1 {
		t.Errorf("filters %v, quarantine %v, policies %d", names, cfg.Quarantine, len(cfg.Policies))
	}
	if p := cfg.Policies[0]; p.Name != "default" || strings.Join(p.Chain, ",") != "av,dangerous,stamp" || p.OnError != filters.TempFail {
		t.Errorf("policy %+v", *p)
	}
}

// TestExampleTLS checks the TLS settings of examples/tls.hcl.
func TestExampleTLS(t *testing.T) {
	t.Setenv("POPGATE_TLS_CERT", filepath.Join(certDir, "cert.pem"))
	t.Setenv("POPGATE_TLS_KEY", filepath.Join(certDir, "key.pem"))
	t.Setenv("POPGATE_CA_FILE", filepath.Join(certDir, "ca.pem"))
	cfg, diags := Load(filepath.Join("..", "examples", "tls.hcl"))
	if diags.HasErrors() {
		t.Fatal(render(diags, cfg.Files))
	}
	byName := map[string]*Listener{}
	for _, l := range cfg.Listeners {
		byName[l.Name] = l
	}
	if l := byName["pop3s"]; l == nil || l.TLS == nil || !l.TLS.Implicit || l.TLS.Certificates[0].CertFile != os.Getenv("POPGATE_TLS_CERT") {
		t.Errorf("pop3s = %+v", l)
	}
	if l := byName["pop3"]; l == nil || l.TLS == nil || l.TLS.Implicit {
		t.Errorf("pop3 = %+v", l)
	}
	if u := cfg.Upstreams["mailstore"]; u == nil || u.TLS != "implicit" || u.CAFile != os.Getenv("POPGATE_CA_FILE") || u.ServerName == "" {
		t.Errorf("mailstore = %+v", u)
	}
	if u := cfg.Upstreams["legacy"]; u == nil || u.TLS != "starttls" || u.CAFile != "" || u.InsecureSkipVerify {
		t.Errorf("legacy = %+v", u)
	}
}
