package examples_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/popgate/popgate/examples"
	_ "github.com/popgate/popgate/filters/builtin"
	"github.com/popgate/popgate/policy"
)

// TestDemo checks that the embedded demo configuration is demo.hcl and loads
// without any diagnostic, with the addresses `popgate demo` relies on.
func TestDemo(t *testing.T) {
	onDisk, err := os.ReadFile("demo.hcl")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(examples.Demo, onDisk) {
		t.Fatal("examples.Demo differs from demo.hcl")
	}
	cfg, diags := policy.LoadBytes("demo.hcl", examples.Demo)
	if len(diags) > 0 {
		var buf bytes.Buffer
		policy.WriteDiagnostics(&buf, diags, cfg.Files)
		t.Fatalf("demo.hcl has diagnostics:\n%s", buf.String())
	}
	if len(cfg.Listeners) != 1 {
		t.Fatalf("%d listeners", len(cfg.Listeners))
	}
	l := cfg.Listeners[0]
	if l.Name != "pop3" || l.Address != "127.0.0.1:1110" || l.Upstream != "demo" || l.TLS != nil {
		t.Errorf("listener = %+v", *l)
	}
	u := cfg.Upstreams["demo"]
	if u == nil || u.Address != "127.0.0.1:1111" || u.TLS != policy.UpstreamTLSNone {
		t.Errorf("upstream = %+v", u)
	}
	if cfg.Log.Level != "info" || cfg.Log.Format != "console" || cfg.Log.File != "" {
		t.Errorf("log = %+v", cfg.Log)
	}
}
