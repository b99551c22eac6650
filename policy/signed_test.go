package policy

import (
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine/release"
)

func init() { configChecks["ok_signed"] = checkSignedSettings }

// checkSignedSettings: what testdata/ok_signed.hcl decodes to. signed is
// split off every filter block beside release; encrypted applies to a
// chain that reads content and defaults to pass-with-tag there.
func checkSignedSettings(t *testing.T, cfg *Config) {
	want := map[string]filters.Signed{"attachments": filters.SignedWithhold, "spamtag": filters.SignedKeep, "stamp": filters.SignedChange}
	for name, m := range want {
		if cfg.Signed[name] != m {
			t.Errorf("signed of %s: %v, want %v", name, cfg.Signed[name], m)
		}
	}
	if cfg.Release["spamtag"] != release.User {
		t.Errorf("release beside signed: %v", cfg.Release["spamtag"])
	}
	enc := map[string]filters.Encrypted{}
	for _, p := range cfg.Policies {
		enc[p.Name] = p.Encrypted
	}
	if enc["default"] != filters.EncryptedPassWithTag || enc["strict"] != filters.EncryptedReject || enc["headers"] != filters.EncryptedIgnore {
		t.Errorf("encrypted: %v", enc)
	}
	ex, err := cfg.Explain(Who{User: "ann@lab.example.com"}, "")
	if err != nil || ex.Policy.Encrypted != "ignore" || len(ex.Policy.Chain) != 1 || ex.Policy.Chain[0].Signed != "change" {
		t.Errorf("explain: %+v %v", ex.Policy, err)
	}
	ex, err = cfg.Explain(Who{User: "ann@example.com"}, "")
	if err != nil || ex.Policy.Encrypted != "pass-with-tag" || ex.Policy.Chain[0].Signed != "withhold" || ex.Policy.Chain[1].Signed != "keep" {
		t.Errorf("explain: %+v %v", ex.Policy, err)
	}
}
