package policy

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/popgate/popgate/filters/quarantine/release"
)

func init() { configChecks["ok_release"] = checkReleaseSettings }

// checkReleaseSettings: what testdata/ok_release.hcl decodes to, the values
// a mail admin set and the defaults they did not.
func checkReleaseSettings(t *testing.T, cfg *Config) {
	q := cfg.Quarantine
	if q.Retention != 14*24*time.Hour || q.Release.LinkURL != "https://mailgw.example.com:9443" || q.Release.LinkTTL != 72*time.Hour ||
		q.Release.KeyFile != filepath.Join(q.Dir, DefaultReleaseKeyFile) {
		t.Errorf("quarantine: %+v", q)
	}
	if got := cfg.Release; got["av"] != release.Admin || got["attachments"] != release.Admin {
		t.Errorf("permissions: %v (the strip filter sets admin over its type's default user)", got)
	}
	up := cfg.Upstreams["mail"].Release
	if up == nil || up.Via != "lmtp" || up.RecipientFor("alice@corp.example") != "alice@example.com" || up.From != "" {
		t.Errorf("upstream release: %+v", up)
	}
	if d := cfg.Deliveries["lmtp"]; d.Protocol != DeliveryLMTP || d.TLS != DeliveryTLSNone || d.Timeout != DefaultDeliveryTimeout {
		t.Errorf("delivery lmtp: %+v", d)
	}
	if d := cfg.Deliveries["relay"]; d.Protocol != DeliverySMTP || d.TLS != DeliveryTLSStartTLS || d.Timeout != 30*time.Second || d.Username != "popgate" {
		t.Errorf("delivery relay: %+v", d)
	}
	n := cfg.Notify
	if n == nil || n.Via != "relay" || n.From != DefaultNoticeFrom || len(n.Admin) != 1 || n.AdminInterval != time.Hour ||
		n.AdminDelay != DefaultAdminDelay || n.UserDigest != 24*time.Hour {
		t.Errorf("notify: %+v", n)
	}
}

func TestReleaseDefaults(t *testing.T) {
	cfg, diags := LoadBytes("defaults.hcl", []byte(`
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}
upstream "mail" { address = "127.0.0.1:110" }
filter "strip" "s" { extensions = ["exe"] }
policy "default" { chain = ["s"] }
quarantine { dir = "/var/lib/popgate/q" }
`))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if q := cfg.Quarantine; q.Retention != DefaultQuarantineRetention || q.Release.LinkURL != "" || q.Release.KeyFile != "/var/lib/popgate/q/release.key" {
		t.Errorf("quarantine defaults: %+v", q)
	}
	if cfg.Release["s"] != release.User {
		t.Errorf("a strip filter's messages are the user's to release by default: %v", cfg.Release)
	}
	if cfg.Upstreams["mail"].Release != nil || cfg.Notify != nil {
		t.Error("no release route and no notifications unless configured")
	}
}

func TestExpandLogin(t *testing.T) {
	for _, tc := range []struct{ pattern, login, want string }{
		{"%u", "alice", "alice"},
		{"%u", "alice@corp.example", "alice@corp.example"},
		{"%n@example.com", "alice@corp.example", "alice@example.com"},
		{"%n+quarantine@%d", "alice@corp.example", "alice+quarantine@corp.example"},
		{"100%%-%n", "bob", "100%-bob"},
		{"trailing%", "bob", "trailing%"},
	} {
		if got := ExpandLogin(tc.pattern, tc.login); got != tc.want {
			t.Errorf("ExpandLogin(%q, %q) = %q, want %q", tc.pattern, tc.login, got, tc.want)
		}
	}
}
