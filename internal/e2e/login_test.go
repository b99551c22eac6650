package e2e

// Issue 15: the login throttle and TLS before credentials, end to end with
// the real binary in front of the real Dovecot.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/popgate/popgate/internal/testenv"
)

// dialPOPFrom is dialPOP from the local address src: the loopback /8 gives
// a test several client addresses.
func dialPOPFrom(t *testing.T, addr, src string) *rawPOP {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return greeted(t, c, addr)
}

// cmd sends a command and returns the status line, whatever it is.
func (p *rawPOP) cmd(cmd string) string {
	p.t.Helper()
	if _, err := io.WriteString(p.c, cmd+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
	return p.line()
}

// dovecotPasswordMismatches counts the failed password checks of user in
// Dovecot's log (auth_verbose): what the server saw of a guesser.
func dovecotPasswordMismatches(t *testing.T, d *testenv.DovecotEnv, user string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(d.Conf), "dovecot.log"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "passwd-file("+user+",") && strings.Contains(l, "Password mismatch") {
			n++
		}
	}
	return n
}

// wrongPassword is a registered secret: no output of popgate may hold it.
func wrongPassword(t *testing.T) string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	w := "Gu3ss-" + hex.EncodeToString(rnd[:])
	addSecret("a guessed password", w)
	return w
}

// throttleListener is the login_throttle of the tests: small, so that
// Dovecot's ~1 s per failed login keeps the tests short.
const throttleListener = `  login_throttle {
    address_failures = 4
    name_failures    = 6
    window           = "2m"
    lockout          = "1m"
    delay            = "100ms"
    max_delay        = "200ms"
  }
`

// guess sends n wrong passwords for victim from src, spread round robin
// over the popgates' plain listeners, one session each, and returns how
// many Dovecot answered (the others popgate refused itself).
func guess(t *testing.T, ps []*popgateProc, src, victim, wrong string, n int) (answered int) {
	t.Helper()
	for i := range n {
		c := dialPOPFrom(t, ps[i%len(ps)].addr("plain"), src)
		c.ok("USER " + victim)
		switch got := c.cmd("PASS " + wrong); {
		case strings.HasPrefix(got, "-ERR [AUTH]"):
			answered++ // Dovecot's own "Authentication failed."
		case got != "-ERR [SYS/TEMP] too many failed logins from your address, try again later":
			t.Fatalf("guess %d: %q", i+1, got)
		}
		c.cmd("QUIT")
	}
	return answered
}

// loginFast logs u in through p from src and checks that popgate did not
// slow it down: no throttle delay for its session. (Its time is logged,
// not bounded: Dovecot's own answer takes seconds on a busy test machine.)
func loginFast(t *testing.T, p *popgateProc, src string, u *testenv.User) {
	t.Helper()
	c := dialPOPFrom(t, p.addr("plain"), src)
	start := time.Now()
	c.ok("USER " + u.Name)
	c.ok("PASS " + u.Password)
	t.Logf("%s logged in from %s in %v", u.Name, src, time.Since(start).Round(time.Millisecond))
	c.ok("STAT")
	c.cmd("QUIT")
	client := c.c.LocalAddr().String()
	for _, e := range p.events() {
		if e.str("client") == client && e.str("message") == "login delayed after failed logins" {
			t.Errorf("the login of %s from %s was delayed by the throttle: %v", u.Name, src, e)
		}
	}
}

// checkThrottled: after the guessing, the guesser's address is refused
// (for any user, before Dovecot), while another address logs another user
// in without delay, and the victim too (refused neither: its name has not
// reached name_failures).
func checkThrottled(t *testing.T, ps []*popgateProc, d *testenv.DovecotEnv, victim, other *testenv.User, attempts int) {
	t.Helper()
	if got := dovecotPasswordMismatches(t, d, victim.Name); got != attempts {
		t.Errorf("Dovecot saw %d failed passwords of %s, want %d (address_failures)", got, victim.Name, attempts)
	}
	for _, p := range ps {
		c := dialPOPFrom(t, p.addr("plain"), "127.0.0.1")
		c.ok("USER " + other.Name)
		if got := c.cmd("PASS " + other.Password); !strings.HasPrefix(got, "-ERR [SYS/TEMP] too many failed logins from your address") {
			t.Errorf("another user from the locked address: %q", got)
		}
		loginFast(t, p, "127.0.0.2", other)
		v := dialPOPFrom(t, p.addr("plain"), "127.0.0.2")
		v.ok("USER " + victim.Name)
		v.ok("PASS " + victim.Password)
		v.cmd("QUIT")
	}
}

// TestLoginThrottleDovecot: 40 wrong passwords from one address reach
// Dovecot 4 times (address_failures); the address is refused for the
// lockout; a second address logs the victim and a second user in at normal
// speed meanwhile; the metrics and the lockout's log line say so.
func TestLoginThrottleDovecot(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	victim, _ := newMailbox(t, d, nil)
	other, _ := newMailbox(t, d, nil)
	wrong := wrongPassword(t)
	cfg := dovecotConfig(d, configOpts{listenerExtra: throttleListener}) + "metrics {\n  address = \"127.0.0.1:0\"\n}\n"
	p := startPopgate(t, cfg, "", "plain")

	start := time.Now()
	if n := guess(t, []*popgateProc{p}, "127.0.0.1", victim.Name, wrong, 40); n != 4 {
		t.Errorf("Dovecot answered %d of 40 guesses, want 4", n)
	}
	t.Logf("40 guesses in %v", time.Since(start).Round(time.Millisecond))
	checkThrottled(t, []*popgateProc{p}, d, victim, other, 4)

	_, page := httpGet(t, "http://"+p.metricsAddr()+"/metrics")
	for series, want := range map[string]float64{
		`popgate_logins_total{listener="plain",result="failed"}`:          4,
		`popgate_logins_total{listener="plain",result="throttled"}`:       37, // 36 guesses, the other user
		`popgate_logins_total{listener="plain",result="ok"}`:              2,
		`popgate_login_throttled_total{listener="plain",scope="address"}`: 37,
		`popgate_login_lockouts_total{listener="plain",scope="address"}`:  1,
	} {
		if got := metricValue(page, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if strings.Contains(page, victim.Name) || strings.Contains(page, "127.0.0.1\"") {
		t.Error("/metrics names the guessed user or the address")
	}
	lockouts := 0
	for _, e := range p.events() {
		if e.str("message") == "login throttle: locked after too many failed logins" {
			lockouts++
			if e.str("scope") != "address" || !strings.HasPrefix(e.str("client"), "127.0.0.1:") || e.str("session") == "" {
				t.Errorf("lockout line %v", e)
			}
		}
	}
	if lockouts != 1 {
		t.Errorf("%d lockout log lines, want 1", lockouts)
	}
}

// TestLoginThrottleTwoInstances: two popgates sharing the message memory's
// redis share the counts: guesses spread over both reach Dovecot 4 times
// in all, and both refuse the address afterwards.
func TestLoginThrottleTwoInstances(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	raddr := testenv.Redis(t)
	victim, _ := newMailbox(t, d, nil)
	other, _ := newMailbox(t, d, nil)
	wrong := wrongPassword(t)
	// A database of its own: the counts of 127.0.0.1 must not meet other
	// tests' popgates on the shared redis.
	const db = 11
	rc := redis.NewClient(&redis.Options{Addr: raddr, DB: db})
	t.Cleanup(func() {
		ctx := context.Background()
		keys, _ := rc.Keys(ctx, "popgate:login:v1:*").Result()
		if len(keys) > 0 {
			rc.Del(ctx, keys...)
		}
		rc.Close()
	})
	memory := fmt.Sprintf("memory {\n  store = \"redis\"\n  redis {\n    address = %s\n    db = %s\n  }\n}\n", hclString(raddr), strconv.Itoa(db))
	cfg := dovecotConfig(d, configOpts{listenerExtra: throttleListener}) + memory
	ps := []*popgateProc{startPopgate(t, cfg, "", "plain"), startPopgate(t, cfg, "", "plain")}

	if n := guess(t, ps, "127.0.0.1", victim.Name, wrong, 40); n != 4 {
		t.Errorf("Dovecot answered %d of 40 guesses over two instances, want 4", n)
	}
	checkThrottled(t, ps, d, victim, other, 4)
	if n, _ := rc.Exists(context.Background(), "popgate:login:v1:a:127.0.0.1").Result(); n != 1 {
		t.Errorf("no count of the address in redis")
	}
}

// pythonTLSLogin is a poplib client: CAPA, then (POP_MODE=stls) STLS and
// CAPA again, then USER/PASS and STAT; it prints what it saw as JSON, the
// server's refusal included.
const pythonTLSLogin = `
import json, os, poplib, ssl
env = os.environ
p = poplib.POP3(env["POP_HOST"], int(env["POP_PORT"]), timeout=30)
out = {"capa": sorted(p.capa())}
if env["POP_MODE"] == "stls":
    p.stls(ssl.create_default_context(cafile=env["POP_CA"]))
    out["capa_tls"] = sorted(p.capa())
try:
    p.user(env["POP_USER"])
    p.pass_(env["POP_PASS"])
    out["stat"] = list(p.stat())
except poplib.error_proto as e:
    out["error"] = e.args[0].decode()
p.quit()
print(json.dumps(out))
`

const plaintextRefusal = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."

// TestLoginRequiresTLSClients: on a listener with login_requires_tls, a
// plain USER/PASS is refused before it reaches Dovecot and works after
// STLS, with a raw client, curl, poplib and fetchmail; CRAM-MD5 (which curl
// picks) stays usable without TLS; and an upstream with login_requires_tls
// reached without TLS never gets USER/PASS.
func TestLoginRequiresTLSClients(t *testing.T) {
	t.Parallel()
	d := testenv.Dovecot(t)
	msgs := corpus("tls-login")
	u, _ := newMailbox(t, d, msgs)
	p := startPopgate(t, dovecotConfig(d, configOpts{listenerExtra: "  login_requires_tls = true\n"}), "", "plain", "pop3s")
	host, port, _ := net.SplitHostPort(p.addr("plain"))
	refusals := func() int {
		n := 0
		for _, e := range p.events() {
			if e.str("message") == "login refused: plaintext login before STLS" {
				n++
			}
		}
		return n
	}

	t.Run("raw", func(t *testing.T) {
		c := dialPOP(t, p.addr("plain"))
		c.ok("CAPA")
		capa := c.multi()
		if strings.Contains(capa, "USER\r\n") || strings.Contains(capa, "PLAIN") || strings.Contains(capa, "LOGIN") || !strings.Contains(capa, "STLS\r\n") || !strings.Contains(capa, "SASL CRAM-MD5") {
			t.Errorf("CAPA before STLS:\n%s", capa)
		}
		for _, cmd := range []string{"USER " + u.Name, "PASS " + u.Password, "AUTH PLAIN", "AUTH LOGIN"} {
			if got := c.cmd(cmd); got != plaintextRefusal {
				t.Errorf("%s: %q", strings.Fields(cmd)[0], got)
			}
		}
		c.cmd("QUIT")
	})
	t.Run("curl", func(t *testing.T) {
		curl := testenv.LookPath(t, "curl")
		curlDo := curlRunner(t, curl, u, nil)
		if got := curlDo("--ssl-reqd", "--cacert", d.CAFile, "pop3://"+p.addr("plain")+"/1"); string(got) != string(crlf(msgs[0])) {
			t.Errorf("curl --ssl-reqd: RETR 1 = %q", firstLine(got))
		}
		// Without TLS curl picks CRAM-MD5 (the only mechanism listed).
		if got := curlDo("pop3://" + p.addr("plain") + "/1"); string(got) != string(crlf(msgs[0])) {
			t.Errorf("curl plain (CRAM-MD5): RETR 1 = %q", firstLine(got))
		}
		// Asked for AUTH LOGIN without TLS, curl finds it not offered.
		cfg := filepath.Join(t.TempDir(), "curlrc")
		if err := os.WriteFile(cfg, []byte(fmt.Sprintf("user = %q\n", u.Name+":"+u.Password)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, errOut, err := runClientErr(t, 30*time.Second, nil, curl, "-sS", "--max-time", "25", "-K", cfg,
			"--login-options", "AUTH=LOGIN", "pop3://"+p.addr("plain")+"/1"); err == nil {
			t.Errorf("curl with AUTH=LOGIN and no TLS logged in; stderr %s", errOut)
		}
	})
	t.Run("poplib", func(t *testing.T) {
		python := testenv.LookPath(t, "python3")
		for _, mode := range []string{"plain", "stls"} {
			out := runClient(t, 60*time.Second, []string{"POP_MODE=" + mode, "POP_HOST=" + host, "POP_PORT=" + port,
				"POP_USER=" + u.Name, "POP_PASS=" + u.Password, "POP_CA=" + d.CAFile}, python, "-c", pythonTLSLogin)
			s := string(out)
			switch mode {
			case "plain":
				if !strings.Contains(s, `"error": "`+strings.TrimSuffix(plaintextRefusal, ".")) || strings.Contains(s, `"USER"`) || !strings.Contains(s, `"STLS"`) {
					t.Errorf("poplib without TLS: %s", s)
				}
			case "stls":
				if !strings.Contains(s, fmt.Sprintf(`"stat": [%d,`, len(msgs))) || !strings.Contains(s, `"capa_tls": [`) {
					t.Errorf("poplib after STLS: %s", s)
				}
			}
		}
	})
	t.Run("fetchmail", func(t *testing.T) {
		fetchmail := testenv.LookPath(t, "fetchmail")
		home, outDir := t.TempDir(), t.TempDir()
		// USER/PASS without TLS: refused, fetchmail reports an
		// authentication failure and delivers nothing.
		rc := writeFetchmailRC(t, home, host, port, u, "auth password", "keep fetchall", "sslproto ''", outDir)
		// Exit status 3 is fetchmail's PS_AUTHFAIL.
		if _, errOut, err := runClientErr(t, 60*time.Second, []string{"FETCHMAILHOME=" + home}, fetchmail, "-f", rc, "--nodetach"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("fetchmail with USER/PASS without TLS: %v, want exit status 3 (authentication failed); stderr %s", err, errOut)
		}
		if got := readDir(t, outDir); len(got) != 0 {
			t.Errorf("fetchmail delivered %d messages without logging in", len(got))
		}
		opts := fmt.Sprintf("sslproto 'tls1.2+' sslcertck sslcertfile %s sslcommonname localhost", strconv.Quote(d.CAFile))
		rc = writeFetchmailRC(t, home, host, port, u, "auth password", "keep fetchall", opts, outDir)
		runClient(t, 60*time.Second, []string{"FETCHMAILHOME=" + home}, fetchmail, "-f", rc, "--nodetach")
		if got := readDir(t, outDir); len(got) != len(msgs) {
			t.Errorf("fetchmail after STLS delivered %d messages, want %d", len(got), len(msgs))
		}
	})
	if refusals() == 0 {
		t.Error("no plaintext refusal logged")
	}
	if got := dovecotPasswordMismatches(t, d, u.Name); got != 0 {
		t.Errorf("Dovecot saw %d failed passwords of %s", got, u.Name)
	}

	t.Run("upstream requires TLS", func(t *testing.T) {
		p := startPopgate(t, dovecotConfig(d, configOpts{upstreamTLS: "none", upstreamExtra: "  login_requires_tls = true\n"}), "", "plain")
		c := dialPOP(t, p.addr("plain"))
		for _, cmd := range []string{"USER " + u.Name, "AUTH PLAIN"} {
			if got := c.cmd(cmd); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
				t.Errorf("%s to an upstream without TLS: %q", strings.Fields(cmd)[0], got)
			}
		}
		c.cmd("QUIT")
		p.waitEvents("the refusal's reason", func(evs []logEvent) bool {
			for _, e := range evs {
				if strings.Contains(e.str("message"), "the upstream requires TLS for logins") {
					return true
				}
			}
			return false
		})
	})
}
