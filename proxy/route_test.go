package proxy

import (
	"encoding/base64"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/popgate/popgate/internal/pop3server"
)

// routedPair runs two mail servers, "north" holding bob and "south"
// holding carol, behind a login-routed listener: "@south.example" and a
// "#south" suffix go south, "#evil" is refused, the rest goes north.
func routedPair(t *testing.T) (north, south *pop3server.Server, addr string, dials *atomic.Int32) {
	northCfg, southCfg := mailConfig(), mailConfig()
	southCfg.Users = map[string]string{"carol@south.example": "carol-pw", "dave": "dave-pw"}
	southCfg.Mailboxes = map[string][]pop3server.Message{
		"carol@south.example": {{UIDL: "s1", Data: []byte("Subject: south\r\n\r\nfrom the south\r\n")}},
		"dave":                {{UIDL: "s2", Data: []byte("Subject: dave\r\n\r\nhi dave\r\n")}},
	}
	north, northAddr := startMailServer(t, northCfg)
	south, southAddr := startMailServer(t, southCfg)
	dials = &atomic.Int32{}
	_, addr, _ = startProxy(t, northAddr, func(l *Listener, _ *Options) {
		l.Router = func(login string) (*Upstream, string, error) {
			dials.Add(1)
			switch {
			case strings.HasSuffix(login, "#evil"):
				return nil, "", errors.New("host not allowed")
			case strings.HasSuffix(login, "#south"):
				return &Upstream{Name: "south", Address: southAddr}, strings.TrimSuffix(login, "#south"), nil
			case strings.HasSuffix(login, "@south.example"):
				return &Upstream{Name: "south", Address: southAddr}, login, nil
			}
			return &Upstream{Name: "north", Address: northAddr}, login, nil
		}
	})
	return north, south, addr, dials
}

func TestLoginRouting(t *testing.T) {
	_, _, addr, _ := routedPair(t)
	plain := func(user, pass string) string {
		return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	}
	for _, tc := range []struct {
		name  string
		login func(t *testing.T, c *client)
		want  string // first line of message 1's body
	}{
		{"USER to the default upstream", func(t *testing.T, c *client) { c.login(testUser, testPass) }, "Subject: one"},
		{"USER by domain", func(t *testing.T, c *client) { c.login("carol@south.example", "carol-pw") }, "Subject: south"},
		{"USER with a #host suffix", func(t *testing.T, c *client) { c.login("dave#south", "dave-pw") }, "Subject: dave"},
		{"a failed USER, then another server", func(t *testing.T, c *client) {
			c.expectOK("USER nobody@south.example")
			if got := c.cmd("PASS x"); !strings.HasPrefix(got, "-ERR") {
				t.Fatalf("bad login: %q", got)
			}
			c.login(testUser, testPass)
		}, "Subject: one"},
		{"AUTH PLAIN with an initial response", func(t *testing.T, c *client) {
			c.expectOK("AUTH PLAIN " + plain("carol@south.example", "carol-pw"))
		}, "Subject: south"},
		{"AUTH PLAIN continued, login rewritten", func(t *testing.T, c *client) {
			if got := c.cmd("AUTH PLAIN"); got != "+ " {
				t.Fatalf("AUTH PLAIN: %q", got)
			}
			c.expectOK(plain("dave#south", "dave-pw"))
		}, "Subject: dave"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, addr)
			if g := c.line(); g != "+OK popgate ready" {
				t.Fatalf("greeting %q", g)
			}
			tc.login(t, c)
			c.expectOK("RETR 1")
			if got := c.body(); !strings.HasPrefix(got, tc.want+"\r\n") {
				t.Fatalf("RETR 1 from the wrong server: %q", got)
			}
			c.expectOK("QUIT")
		})
	}
}

// AUTH LOGIN: popgate asks for the user name itself, then replays the
// exchange to the chosen server; a server without LOGIN says so.
func TestLoginRoutingAuthLogin(t *testing.T) {
	_, _, addr, _ := routedPair(t)
	c := dialClient(t, addr)
	c.line()
	if got := c.cmd("AUTH LOGIN"); got != "+ VXNlcm5hbWU6" {
		t.Fatalf("AUTH LOGIN: %q", got)
	}
	if got := c.cmd(base64.StdEncoding.EncodeToString([]byte("dave#south"))); got != "-ERR unsupported SASL mechanism" {
		t.Fatalf("the server's refusal of LOGIN, relayed: %q", got)
	}
	c.login("dave#south", "dave-pw") // the session goes on
	c.expectOK("QUIT")
}

// Before a server is chosen popgate answers itself; what cannot be routed
// is refused without dialling anything.
func TestLoginRoutingRefusals(t *testing.T) {
	north, south, addr, dials := routedPair(t)
	c := dialClient(t, addr)
	c.line()
	c.expectOK("CAPA")
	if got := c.body(); got != "USER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n" {
		t.Fatalf("CAPA before login: %q", got)
	}
	for _, cmd := range []string{"APOP bob 0123456789abcdef0123456789abcdef", "AUTH CRAM-MD5", "STAT", "RETR 1"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR") {
			t.Fatalf("%s before routing: %q", cmd, got)
		}
	}
	if got := c.cmd("USER bob#evil"); got != "-ERR [AUTH] this login cannot be routed" {
		t.Fatalf("USER to a host not allowed: %q", got)
	}
	if got := c.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00x#evil\x00pw"))); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("AUTH PLAIN to a host not allowed: %q", got)
	}
	c.expectOK("QUIT")
	if north.Sessions()+south.Sessions() != 0 || dials.Load() != 2 {
		t.Fatalf("sessions north %d south %d, router asked %d times", north.Sessions(), south.Sessions(), dials.Load())
	}
}
