package generation

import (
	"fmt"
	"maps"
	"testing"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	_ "github.com/popgate/popgate/filters/builtin"
	"github.com/popgate/popgate/policy"
)

// Each chain gets the signed settings of its filters and its policy's
// encrypted setting, and both count in the memory's fingerprint.
func TestChainSignedSettings(t *testing.T) {
	load := func(signed, encrypted string) (*policy.Config, *Generation) {
		src := fmt.Sprintf(`
listener "pop3" {
  address  = "127.0.0.1:0"
  upstream = "mail"
}
upstream "mail" { address = "127.0.0.1:110" }
filter "strip" "attachments" {
  extensions = ["exe"]
  signed     = %q
}
filter "tag" "stamp" { headers = { "X-Scanned" = "yes" } }
quarantine { dir = %q }
policy "default" {
  chain     = ["attachments", "stamp"]
  encrypted = %q
}
policy "headers" {
  chain = ["stamp"]
  match { domains = ["lab.example.com"] }
}
`, signed, t.TempDir(), encrypted)
		cfg, diags := policy.LoadBytes("signed.hcl", []byte(src))
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		g, err := Build(cfg, Options{Log: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = g.Close() })
		return cfg, g
	}
	cfg, g := load("keep", "reject")
	def, headers := g.SessionPolicy(cfg.Policies[0]).Chain, g.SessionPolicy(cfg.Policies[1]).Chain
	if want := map[string]filters.Signed{"attachments": filters.SignedKeep, "stamp": filters.SignedChange}; !maps.Equal(def.Signed, want) {
		t.Errorf("default chain: signed %v", def.Signed)
	}
	if def.Encrypted != filters.EncryptedReject || headers.Encrypted != filters.EncryptedIgnore {
		t.Errorf("encrypted: default %v, headers-only %v", def.Encrypted, headers.Encrypted)
	}
	fp := fingerprint(cfg, cfg.Policies[0])
	for _, other := range [][2]string{{"withhold", "reject"}, {"keep", "tempfail"}} {
		c2, _ := load(other[0], other[1])
		if fingerprint(c2, c2.Policies[0]) == fp {
			t.Errorf("signed %s, encrypted %s: same fingerprint as keep, reject", other[0], other[1])
		}
	}
}
