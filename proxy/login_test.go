package proxy

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/throttle"
)

var b64 = base64.StdEncoding.EncodeToString

// authUpstream is a fake server for the login path: CAPA with USER and SASL
// PLAIN LOGIN CRAM-MD5, and USER/PASS, APOP and AUTH PLAIN, LOGIN and
// CRAM-MD5 where the password (or digest) "right" logs in and anything
// else fails. It records every line it gets.
func authUpstream(t *testing.T) (*fakeUpstream, string) {
	t.Helper()
	var mu sync.Mutex
	pending := map[net.Conn]string{} // connection → "PLAIN", "LOGIN", "LOGIN-PASS", "CRAM-MD5"
	return startFakeUpstream(t, "+OK ready <1.2@test>\r\n", func(conn net.Conn, l string) bool {
		reply := func(s string) bool { _, err := io.WriteString(conn, s+"\r\n"); return err == nil }
		verdict := func(ok bool) bool {
			if ok {
				return reply("+OK logged in")
			}
			return reply("-ERR [AUTH] authentication failed")
		}
		mu.Lock()
		mech := pending[conn]
		delete(pending, conn)
		mu.Unlock()
		set := func(m string) {
			mu.Lock()
			pending[conn] = m
			mu.Unlock()
		}
		dec := func(s string) string { b, _ := base64.StdEncoding.DecodeString(s); return string(b) }
		if mech != "" {
			switch {
			case l == "*":
				return reply("-ERR authentication aborted")
			case mech == "PLAIN":
				return verdict(strings.HasSuffix(dec(l), "\x00right"))
			case mech == "LOGIN":
				set("LOGIN-PASS")
				return reply("+ UGFzc3dvcmQ6")
			case mech == "LOGIN-PASS":
				return verdict(dec(l) == "right")
			case mech == "CRAM-MD5":
				return verdict(strings.HasSuffix(dec(l), " right"))
			}
		}
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "CAPA":
			return reply("+OK\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5\r\nRESP-CODES\r\n.")
		case "USER":
			return reply("+OK")
		case "PASS":
			return verdict(l == "PASS right")
		case "APOP":
			return verdict(len(f) == 3 && f[2] == "right")
		case "AUTH":
			m := strings.ToUpper(f[1])
			if len(f) == 3 && m == "PLAIN" {
				return verdict(strings.HasSuffix(dec(f[2]), "\x00right"))
			}
			if len(f) == 3 && m == "LOGIN" { // the name as initial response
				set("LOGIN-PASS")
				return reply("+ UGFzc3dvcmQ6")
			}
			set(m)
			if m == "CRAM-MD5" {
				return reply("+ PDEyMzRAdGVzdD4=")
			}
			if m == "LOGIN" {
				return reply("+ VXNlcm5hbWU6")
			}
			return reply("+ ")
		case "QUIT":
			reply("+OK bye")
			return false
		}
		return reply("-ERR unknown command")
	})
}

// credentialLines are the lines of got other than CAPA: the tests that use
// it send nothing else that a server should see.
func credentialLines(got []string) []string {
	return slices.DeleteFunc(got, func(l string) bool { return l == "CAPA" })
}

// capa sends CAPA and returns its lines.
func (c *client) capa() []string {
	c.t.Helper()
	c.expectOK("CAPA")
	return strings.Split(strings.TrimSuffix(c.body(), "\r\n"), "\r\n")
}

// startTLS sends STLS and returns a client over the TLS connection.
func (c *client) startTLS() *client {
	c.t.Helper()
	c.expectOK("STLS")
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	return &client{t: c.t, conn: tc, r: bufio.NewReader(tc)}
}

const plaintextRefusal = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."

// TestLoginRequiresTLS: on a listener that requires TLS for logins, a plain
// connection gets no USER or SASL PLAIN/LOGIN in CAPA and its cleartext
// logins are refused without reaching the server; APOP and CRAM-MD5 go on;
// after STLS everything is as usual; exempt networks and implicit TLS are
// not affected.
func TestLoginRequiresTLS(t *testing.T) {
	cert, _ := testCert(t)
	up, upAddr := authUpstream(t)
	_, addr, logs := startProxy(t, upAddr, func(l *Listener, o *Options) {
		l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		l.LoginRequiresTLS = true
	})

	c := dialClient(t, addr)
	c.line()
	if got, want := c.capa(), []string{"SASL CRAM-MD5", "RESP-CODES", "STLS"}; !slices.Equal(got, want) {
		t.Errorf("CAPA before STLS = %q, want %q", got, want)
	}
	for _, cmd := range []string{"USER alice", "PASS right", "AUTH PLAIN " + b64([]byte("\x00alice\x00right")), "AUTH PLAIN", "AUTH LOGIN", "AUTH login", "AUTH XOAUTH2 dG9rZW4="} {
		if got := c.cmd(cmd); got != plaintextRefusal {
			t.Errorf("%s before STLS: %q, want %q", strings.Fields(cmd)[0], got, plaintextRefusal)
		}
	}
	if got := credentialLines(up.received()); len(got) != 0 {
		t.Errorf("the server got cleartext credentials: %q", got)
	}
	if !strings.Contains(logs.String(), "login refused: plaintext login before STLS") {
		t.Error("no log line says why the login was refused")
	}
	// Hashed logins work without TLS.
	if got := c.cmd("APOP alice wrong"); !strings.HasPrefix(got, "-ERR [AUTH] authentication failed") {
		t.Errorf("APOP before STLS: %q, want the server's answer", got)
	}
	if got := c.cmd("AUTH CRAM-MD5"); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("AUTH CRAM-MD5 before STLS: %q, want a challenge", got)
	}
	c.expectOK(b64([]byte("alice right")))
	c.cmd("QUIT")

	// After STLS the usual list and logins.
	c = dialClient(t, addr)
	c.line()
	tc := c.startTLS()
	if got, want := tc.capa(), []string{"USER", "SASL PLAIN LOGIN CRAM-MD5", "RESP-CODES"}; !slices.Equal(got, want) {
		t.Errorf("CAPA after STLS = %q, want %q", got, want)
	}
	tc.login("alice", "right")
	tc.cmd("QUIT")

	// An exempt network, and an implicit-TLS listener.
	for name, mod := range map[string]func(*Listener, *Options){
		"exempt": func(l *Listener, o *Options) {
			l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			l.LoginRequiresTLS = true
			l.PlaintextLoginFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		},
		"implicit": func(l *Listener, o *Options) {
			l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
			l.Implicit = true
			l.LoginRequiresTLS = true
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, addr, _ := startProxy(t, upAddr, mod)
			c := dialClient(t, addr)
			if name == "implicit" {
				tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
				c = &client{t: t, conn: tc, r: bufio.NewReader(tc)}
			}
			c.line()
			if got := c.capa(); !slices.Contains(got, "USER") || !slices.Contains(got, "SASL PLAIN LOGIN CRAM-MD5") {
				t.Errorf("CAPA = %q, want USER and every mechanism", got)
			}
			c.login("alice", "right")
		})
	}
}

// TestLoginRequiresTLSRouted: a login-routed listener's own CAPA follows
// the requirement too, and its USER and AUTH are refused before routing.
func TestLoginRequiresTLSRouted(t *testing.T) {
	cert, _ := testCert(t)
	up, upAddr := authUpstream(t)
	_, addr, _ := startProxy(t, upAddr, func(l *Listener, o *Options) {
		l.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		l.LoginRequiresTLS = true
		target := &Upstream{Name: "up", Address: upAddr}
		l.Router = func(login string) (*Upstream, string, error) { return target, login, nil }
	})
	c := dialClient(t, addr)
	c.line()
	if got, want := c.capa(), []string{"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS"}; !slices.Equal(got, want) {
		t.Errorf("routed CAPA before STLS = %q, want %q", got, want)
	}
	for _, cmd := range []string{"USER alice", "AUTH PLAIN " + b64([]byte("\x00alice\x00right"))} {
		if got := c.cmd(cmd); got != plaintextRefusal {
			t.Errorf("%s: %q", cmd, got)
		}
	}
	if got := up.received(); len(got) != 0 {
		t.Errorf("the server got %q", got)
	}
	tc := c.startTLS()
	tc.login("alice", "right")
}

// TestUpstreamLoginRequiresTLS: an upstream reached without TLS that
// requires TLS for logins never gets USER, PASS or AUTH PLAIN/LOGIN: the
// client gets -ERR [SYS/TEMP] and the log says why; APOP and CRAM-MD5 go.
func TestUpstreamLoginRequiresTLS(t *testing.T) {
	up, upAddr := authUpstream(t)
	_, addr, logs := startProxy(t, upAddr, func(l *Listener, o *Options) {
		l.Upstream.LoginRequiresTLS = true
	})
	c := dialClient(t, addr)
	c.line()
	if got := c.capa(); slices.Contains(got, "USER") || !slices.Contains(got, "SASL CRAM-MD5") {
		t.Errorf("CAPA = %q, want no USER and only CRAM-MD5", got)
	}
	for _, cmd := range []string{"USER alice", "PASS right", "AUTH PLAIN " + b64([]byte("\x00alice\x00right")), "AUTH LOGIN"} {
		if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR [SYS/TEMP] ") {
			t.Errorf("%s: %q, want -ERR [SYS/TEMP]", strings.Fields(cmd)[0], got)
		}
	}
	if got := credentialLines(up.received()); len(got) != 0 {
		t.Errorf("the server got cleartext credentials: %q", got)
	}
	if !strings.Contains(logs.String(), "the upstream requires TLS for logins and the connection to it is not TLS") {
		t.Errorf("no log line says why:\n%s", logs)
	}
	c.expectOK("APOP alice right")
}

// throttled starts a proxy whose listener throttles logins with lim, in
// front of authUpstream.
func throttled(t *testing.T, lim *throttle.Limits) (*fakeUpstream, string, *syncBuffer) {
	t.Helper()
	up, upAddr := authUpstream(t)
	_, addr, logs := startProxy(t, upAddr, func(l *Listener, o *Options) {
		l.LoginThrottle = lim
		o.Throttle = throttle.New(throttle.Options{})
	})
	return up, addr, logs
}

// passLines counts the PASS commands the server got.
func passLines(up *fakeUpstream) int {
	n := 0
	for _, l := range up.received() {
		if strings.HasPrefix(l, "PASS ") {
			n++
		}
	}
	return n
}

// TestLoginThrottle: failed logins lock the name and then the address; a
// locked attempt is answered [SYS/TEMP] and never reaches the server;
// other names and the other scope go on; a lockout is logged with the
// name's hash, never the name.
func TestLoginThrottle(t *testing.T) {
	lim := &throttle.Limits{AddressFailures: 4, NameFailures: 2, Window: time.Minute, Lockout: time.Minute}
	up, addr, logs := throttled(t, lim)
	c := dialClient(t, addr)
	c.line()
	for i := range 2 {
		c.expectOK("USER mallory-target")
		if got := c.cmd("PASS guess"); !strings.HasPrefix(got, "-ERR [AUTH]") {
			t.Fatalf("guess %d: %q", i, got)
		}
	}
	c.expectOK("USER mallory-target")
	if got, want := c.cmd("PASS right"), "-ERR [SYS/TEMP] too many failed logins for this account, try again later"; got != want {
		t.Fatalf("name locked: %q, want %q", got, want)
	}
	if n := passLines(up); n != 2 {
		t.Errorf("the server got %d PASS, want 2", n)
	}
	// Other names from the address: two more failures lock the address.
	for _, name := range []string{"u1", "u2"} {
		c.expectOK("USER " + name)
		c.cmd("PASS guess")
	}
	c.expectOK("USER bob")
	if got, want := c.cmd("PASS right"), "-ERR [SYS/TEMP] too many failed logins from your address, try again later"; got != want {
		t.Fatalf("address locked: %q, want %q", got, want)
	}
	if got := c.cmd("APOP bob right"); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many failed logins from your address") {
		t.Errorf("APOP from a locked address: %q", got)
	}
	if got := c.cmd("AUTH PLAIN " + b64([]byte("\x00bob\x00right"))); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Errorf("AUTH PLAIN from a locked address: %q", got)
	}
	if n := passLines(up); n != 4 {
		t.Errorf("the server got %d PASS, want 4", n)
	}
	out := logs.String()
	if strings.Count(out, "login throttle: locked after too many failed logins") != 2 {
		t.Errorf("want two lockout lines:\n%s", out)
	}
	if !strings.Contains(out, `"name_hash":"`+throttle.NameHash("up", "mallory-target")+`"`) || strings.Contains(out, "mallory-target") {
		t.Errorf("the lockout must name the hash of the name and never the name:\n%s", out)
	}
}

// TestLoginThrottleSASL: mechanisms that name the login in an answer are
// judged there: a locked name's AUTH LOGIN and CRAM-MD5 are cancelled with
// "*" before the password or digest reaches the server.
func TestLoginThrottleSASL(t *testing.T) {
	lim := &throttle.Limits{AddressFailures: 100, NameFailures: 1, Window: time.Minute, Lockout: time.Minute}
	up, addr, _ := throttled(t, lim)
	c := dialClient(t, addr)
	c.line()
	c.expectOK("USER carol")
	c.cmd("PASS guess") // locks carol
	if got := c.cmd("AUTH LOGIN"); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("AUTH LOGIN: %q", got)
	}
	if got := c.cmd(b64([]byte("carol"))); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many failed logins for this account") {
		t.Fatalf("AUTH LOGIN of a locked name: %q", got)
	}
	if got := c.cmd("AUTH CRAM-MD5"); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("AUTH CRAM-MD5: %q", got)
	}
	if got := c.cmd(b64([]byte("Carol right"))); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many failed logins for this account") {
		t.Fatalf("CRAM-MD5 of a locked name: %q", got)
	}
	// The session is in step with the server: another user logs in.
	c.expectOK("AUTH PLAIN " + b64([]byte("\x00dave\x00right")))
	got := up.received()
	if slices.Contains(got, b64([]byte("Carol right"))) || slices.Contains(got, b64([]byte("carol"))) {
		t.Errorf("the server got a locked name's answer: %q", got)
	}
	if n := len(slices.DeleteFunc(got, func(l string) bool { return l != "*" })); n != 2 {
		t.Errorf("the server got %d cancels (*), want 2", n)
	}
}

// TestLoginThrottleDelay: after two failures the next attempt waits
// Delay; a success resets the count, so the attempt after it does not.
func TestLoginThrottleDelay(t *testing.T) {
	lim := &throttle.Limits{AddressFailures: 100, NameFailures: 100, Window: time.Minute, Lockout: time.Minute,
		Delay: 300 * time.Millisecond, MaxDelay: time.Second}
	_, addr, _ := throttled(t, lim)
	attempt := func(pass string) time.Duration {
		c := dialClient(t, addr)
		c.line()
		c.expectOK("USER erin")
		start := time.Now()
		c.cmd("PASS " + pass)
		return time.Since(start)
	}
	for i, want := range []time.Duration{0, 0, 300 * time.Millisecond, 600 * time.Millisecond} {
		took := attempt("guess")
		if took < want || took > want+250*time.Millisecond {
			t.Errorf("failure %d answered after %v, want about %v", i+1, took, want)
		}
	}
	if took := attempt("right"); took < time.Second || took > time.Second+250*time.Millisecond {
		t.Errorf("the 5th attempt (a success) answered after %v, want about 1s (max delay)", took)
	}
	if took := attempt("right"); took > 250*time.Millisecond {
		t.Errorf("an attempt after a success waited %v", took)
	}
}

// TestAuthLoginInitialResponse: with the name as AUTH LOGIN's initial
// response, the first answer is the password: the session's login name is
// the initial response's, and the password is never taken for a name.
func TestAuthLoginInitialResponse(t *testing.T) {
	_, addr, logs := throttled(t, &throttle.Limits{AddressFailures: 10, NameFailures: 5, Window: time.Minute, Lockout: time.Minute})
	c := dialClient(t, addr)
	c.line()
	if got := c.cmd("AUTH LOGIN " + b64([]byte("alice"))); !strings.HasPrefix(got, "+ ") {
		t.Fatalf("AUTH LOGIN with a name: %q", got)
	}
	c.expectOK(b64([]byte("right")))
	c.cmd("QUIT")
	if out := logs.String(); !strings.Contains(out, `"user":"alice"`) || strings.Contains(out, `"user":"right"`) {
		t.Errorf("login name logged wrongly:\n%s", out)
	}
}
