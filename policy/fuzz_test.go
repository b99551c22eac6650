package policy

import (
	"io"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

// FuzzLoadBytes checks that no input makes LoadBytes or WriteDiagnostics
// panic, that every error can be printed as file:line:col, and that a
// configuration without errors is complete. Seeds are in
// testdata/fuzz/FuzzLoadBytes.
func FuzzLoadBytes(f *testing.F) {
	f.Add([]byte(okConfig))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, diags := LoadBytes("fuzz.hcl", src)
		if cfg == nil {
			t.Fatal("nil Config")
		}
		for _, d := range diags {
			if d.Severity == hcl.DiagError && (d.Subject == nil || d.Subject.Filename == "") {
				t.Fatalf("error without a subject: %s: %s", d.Summary, d.Detail)
			}
		}
		WriteDiagnostics(io.Discard, diags, cfg.Files)
		if diags.HasErrors() {
			return
		}
		if len(cfg.Listeners) == 0 {
			t.Fatal("loaded without a listener")
		}
		for _, l := range cfg.Listeners {
			if _, ok := cfg.Upstreams[l.Upstream]; !ok && !l.Transparent {
				t.Fatalf("listener %q: unknown upstream %q", l.Name, l.Upstream)
			}
			if l.Address == "" {
				t.Fatalf("listener %q without an address", l.Name)
			}
			if l.MaxCommandLine < minLineLimit || l.LoginTimeout <= 0 || l.IdleTimeout <= 0 {
				t.Fatalf("listener %q out of bounds: %+v", l.Name, *l)
			}
		}
		for name, u := range cfg.Upstreams {
			if u.Address == "" || u.Name != name {
				t.Fatalf("upstream %q: %+v", name, *u)
			}
		}
	})
}
