package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// Routes and login routing through the real binary: each login reaches the
// upstream its route names (two upstream blocks for the one Dovecot, told
// apart in popgate's log), "#alt" picks an allowed upstream, and a host
// outside the allowlist is refused.
func TestRoutes(t *testing.T) {
	d := testenv.Dovecot(t)
	msg := crlf([]byte("Subject: routed\n\nhello\n"))
	u1, _ := newMailbox(t, d, [][]byte{msg})
	u2, _ := newMailbox(t, d, [][]byte{msg})
	cfg := dovecotConfig(d, configOpts{}) + fmt.Sprintf(`
upstream "alt" {
  address = %s
  tls     = "none"
}
route {
  users    = [%s]
  upstream = "alt"
}
`, hclString(d.Addr), hclString(u2.Name))
	// The plain listener also allows "#alt" logins.
	cfg = strings.Replace(cfg, "listener \"plain\" {\n", "listener \"plain\" {\n  login_routing = [\"alt\"]\n", 1)
	p := startPopgate(t, cfg, "", "plain", "pop3s")
	for _, tc := range []struct {
		user, pass, login, upstream string
	}{
		{u1.Name, u1.Password, u1.Name, "dovecot"},
		{u2.Name, u2.Password, u2.Name, "alt"},
		{u1.Name, u1.Password, u1.Name + "#alt", "alt"},
	} {
		c := dialPOP(t, p.addr("plain"))
		c.ok("USER " + tc.login)
		c.ok("PASS " + tc.pass)
		c.ok("RETR 1")
		if got := c.multi(); got != string(msg) {
			t.Fatalf("%s: RETR %q", tc.login, got)
		}
		c.ok("QUIT")
		p.waitEvents("the login of "+tc.login, func(evs []logEvent) bool {
			for _, e := range logins(evs) {
				if e.str("user") == tc.user && e.str("upstream") == tc.upstream {
					return true
				}
			}
			return false
		})
	}
	// check --explain tells the same story.
	path := p.cmd.Args[len(p.cmd.Args)-1]
	for login, want := range map[string]string{
		u2.Name:          "upstream:   alt (",
		u1.Name + "#alt": "upstream:   alt (" + d.Addr + "); routed by login (upstream sees the login \"" + u1.Name + "\")",
		u1.Name:          "upstream:   dovecot (",
	} {
		out := runClient(t, 30*time.Second, nil, popgateBin, "check", "-c", path, "--explain", login, "--listener", "plain")
		if !strings.Contains(string(out), want) {
			t.Errorf("explain %s: want %q in\n%s", login, want, out)
		}
	}
	c := dialPOP(t, p.addr("plain"))
	if _, err := fmt.Fprintf(c.c, "USER %s#127.0.0.1:110\r\n", u1.Name); err != nil {
		t.Fatal(err)
	}
	if got := c.line(); got != "-ERR [AUTH] this login cannot be routed" {
		t.Fatalf("a host outside the allowlist: %q", got)
	}
}
