//go:build linux

package e2e

// The transparent gateway, end to end, across three network namespaces:
//
//	client ns                gateway ns                          server ns
//	10.99.1.2  ──veth──  10.99.1.1 | 10.99.2.1  ──veth──  10.99.2.2 (Dovecot :110)
//	10.99.1.3                popgate :10110 (REDIRECT), :10111 (TPROXY)
//	curl pop3://10.99.2.2/N
//
// The client knows nothing of popgate: it connects to the mail server's
// address. The gateway routes between the two sides, and its rules send
// POP3 to popgate, as in docs/DEPLOYMENT.md:
//
//	nat PREROUTING    -i <client side> -s 10.99.1.2 --dport 110   REDIRECT :10110  (forwarded traffic)
//	nat OUTPUT        -d 10.99.2.3 --dport 110                    REDIRECT :10110  (a careless rule: catches popgate too)
//	nat OUTPUT        --dport 110 ! --uid-owner <popgate's uid>   REDIRECT :10110  (the gateway's own programs)
//	mangle PREROUTING -i <client side> -s 10.99.1.3 --dport 110   TPROXY :10111, mark 1 (+ policy routing)
//
// popgate runs as nobody, so the third rule exempts its own upstream
// connections; the careless rule shows that popgate refuses, rather than
// loops on, a rule that catches them. For TPROXY popgate keeps
// CAP_NET_ADMIN as an ambient capability, as the systemd unit would give it. Dovecot is a second instance of the
// test environment's Dovecot (same users and Maildirs, its own config
// derived from the test environment's), listening on 10.99.2.2 in the server
// namespace; clamd is the test environment's, through its unix socket (a
// path, not an address: reachable from any network namespace).

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

const (
	tgClientIP   = "10.99.1.2"
	tgTProxyIP   = "10.99.1.3" // the client's second address: its traffic goes through TPROXY
	tgGatewayIn  = "10.99.1.1" // the gateway on the client side
	tgGatewayOut = "10.99.2.1" // the gateway on the server side: popgate's source address
	tgServerIP   = "10.99.2.2" // the "remote" mail server
	tgLoopIP     = "10.99.2.3" // only the careless OUTPUT rule knows it
	tgPort       = "10110"     // popgate's transparent listener on the gateway
	tgTProxyPort = "10111"     // popgate's TPROXY listener
	tgUID        = 65534       // popgate runs as nobody on the gateway
)

func TestTransparentGateway(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testenv.Require(t, "root (to build network namespaces with veth pairs and iptables rules)")
		return
	}
	for _, tool := range []string{"ip", "iptables", "setpriv", "dovecot", "curl"} {
		testenv.LookPath(t, tool)
	}
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	if d.Conf == "" {
		testenv.Require(t, "POPGATE_TEST_DOVECOT_CONF is not set: the server namespace's Dovecot is derived from it")
		return
	}

	// A directory nobody (popgate) can read: config, binary, quarantine.
	dir, err := os.MkdirTemp("", "popgate-transparent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	must(t, os.Chmod(dir, 0o755))

	ns := buildGateway(t)
	dovecotLog := startRemoteDovecot(t, d, ns.server, filepath.Join(dir, "dovecot"))

	// popgate with a clamd + tag chain, as nobody, on the gateway.
	bin := filepath.Join(dir, "popgate")
	if err := os.Link(popgateBin, bin); err != nil { // another file system: copy
		data, err := os.ReadFile(popgateBin)
		if err != nil {
			t.Fatal(err)
		}
		must(t, os.WriteFile(bin, data, 0o755))
	}
	qdir := filepath.Join(dir, "quarantine")
	must(t, os.Mkdir(qdir, 0o700))
	must(t, os.Chown(qdir, tgUID, tgUID))
	cfg := fmt.Sprintf(`listener "intercept" {
  address     = "0.0.0.0:%s"
  transparent = true
  upstream    = "remote"
}
listener "tproxy" {
  address     = "0.0.0.0:%s"
  transparent = true
  tproxy      = true
  upstream    = "remote"
}
upstream "remote" {
  address = "%s:110" # not dialled: the original destination is
  tls     = "none"
}
log {
  level  = "debug"
  format = "json"
}
shutdown_timeout = "3s"
`, tgPort, tgTProxyPort, tgServerIP) + scanTagConfig(clamd.Unix, "transparent-gateway", qdir)
	cfgPath := filepath.Join(dir, "popgate.hcl")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))
	cmd := exec.Command("ip", "netns", "exec", ns.gateway,
		"setpriv", fmt.Sprintf("--reuid=%d", tgUID), fmt.Sprintf("--regid=%d", tgUID), "--clear-groups",
		"--inh-caps=+net_admin", "--ambient-caps=+net_admin", // IP_TRANSPARENT for the TPROXY listener
		bin, "run", "-c", cfgPath)
	p := launchPopgate(t, cmd, dir, "", false, "intercept", "tproxy")

	clean := cleanMsg("transparent")
	virus := []byte("From: x@example.com\r\nTo: u@example.com\r\nSubject: eicar\r\nMessage-ID: <eicar.transparent@example.com>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--b\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64Lines([]byte(testenv.EICAR)) + "--b--\r\n")
	u, _ := newMailbox(t, d, [][]byte{clean, virus})
	rc := filepath.Join(dir, "curlrc") // root's: curl runs as root in both namespaces
	must(t, os.WriteFile(rc, []byte(fmt.Sprintf("user = %q\n", u.Name+":"+u.Password)), 0o600))
	curlIn := func(netns, host string, n int, args ...string) ([]byte, []byte, error) {
		return runClientErr(t, 40*time.Second, nil, "ip", append([]string{"netns", "exec", netns,
			"curl", "-v", "-sS", "--max-time", "30", "-K", rc, fmt.Sprintf("pop3://%s:110/%d", host, n)}, args...)...)
	}
	retr := func(netns string, n int, args ...string) []byte {
		t.Helper()
		out, errOut, err := curlIn(netns, tgServerIP, n, args...)
		if err != nil {
			t.Fatalf("curl in %s, RETR %d from %s:110: %v\n%s\npopgate:\n%s", netns, n, tgServerIP, err, errOut, p.output())
		}
		return out
	}

	// 1. From the client namespace: the clean message arrives tagged, byte
	// for byte otherwise; the infected one is replaced by a notice.
	want := append([]byte("X-Popgate-Scanned: transparent-gateway\r\n"), crlf(clean)...)
	if got := retr(ns.client, 1); !bytes.Equal(got, want) {
		t.Fatalf("the client got message 1 as %d bytes starting %q, want the tagged original (%d bytes)", len(got), firstLine(got), len(want))
	}
	checkNotice(t, retr(ns.client, 2), virus)

	// popgate saw the real client address and connected to the original
	// destination; Dovecot saw popgate, from the gateway's address, for
	// this user, and never the client itself.
	evs := p.waitEvents("two logins from the client namespace", func(evs []logEvent) bool { return len(logins(evs)) >= 2 })
	for _, e := range logins(evs) {
		if host, _, _ := net.SplitHostPort(e.str("client")); host != tgClientIP {
			t.Errorf("popgate logged the login with client %q, want %s:PORT: %s", e.str("client"), tgClientIP, e)
		}
	}
	if !hasEvent(evs, func(e logEvent) bool {
		return e.str("message") == "upstream connected" && e.str("address") == tgServerIP+":110"
	}) {
		t.Errorf("popgate did not log an upstream connection to the original destination %s:110:\n%s", tgServerIP, p.output())
	}
	for _, l := range waitDovecotLogins(t, dovecotLog, u.Name, 2) {
		if !strings.Contains(l, "rip="+tgGatewayOut+",") || !strings.Contains(l, "lip="+tgServerIP+",") {
			t.Errorf("Dovecot logged a login of %s that did not come from popgate on the gateway (%s): %s", u.Name, tgGatewayOut, l)
		}
	}
	if b, _ := os.ReadFile(dovecotLog); bytes.Contains(b, []byte("rip="+tgClientIP)) {
		t.Errorf("the client reached Dovecot directly, past popgate:\n%s", b)
	}

	// 2. A program on the gateway itself (root, so the OUTPUT rule catches
	// it) is intercepted too, while popgate's own connection (uid nobody)
	// is not: the message arrives tagged.
	if got := retr(ns.gateway, 1); !bytes.Equal(got, want) {
		t.Fatalf("curl on the gateway got message 1 as %d bytes starting %q, want the tagged original", len(got), firstLine(got))
	}
	waitDovecotLogins(t, dovecotLog, u.Name, 3)
	p.waitEvents("the gateway's own session", func(evs []logEvent) bool {
		for _, e := range logins(evs) {
			if host, _, _ := net.SplitHostPort(e.str("client")); host != tgClientIP {
				return true
			}
		}
		return false
	})

	// 3. The client's other address goes through TPROXY (no NAT): the
	// listener with IP_TRANSPARENT gets the connection to 10.99.2.2:110
	// itself, and popgate, as nobody with CAP_NET_ADMIN, connects there.
	if got := retr(ns.client, 1, "--interface", tgTProxyIP); !bytes.Equal(got, want) {
		t.Fatalf("the client got message 1 through TPROXY as %d bytes starting %q, want the tagged original", len(got), firstLine(got))
	}
	p.waitEvents("the TPROXY session's login", func(evs []logEvent) bool {
		return hasEvent(logins(evs), func(e logEvent) bool {
			host, _, _ := net.SplitHostPort(e.str("client"))
			return e.str("listener") == "tproxy" && host == tgTProxyIP
		})
	})
	waitDovecotLogins(t, dovecotLog, u.Name, 4)

	// 4. A rule that also catches popgate's own upstream connection: popgate
	// recognises its own connection and refuses it instead of looping; the
	// client gets a temporary error.
	out, errOut, err := curlIn(ns.client, tgLoopIP, 1)
	if err == nil || len(out) > 0 {
		t.Fatalf("through the looping rule curl got %q (err %v), want a failure", firstLine(out), err)
	}
	if !regexp.MustCompile(`(?m)^< -ERR \[SYS/TEMP\]`).Match(errOut) {
		t.Errorf("through the looping rule the client did not get -ERR [SYS/TEMP]:\n%s", errOut)
	}
	p.waitEvents("the refused loop", func(evs []logEvent) bool {
		return hasEvent(evs, func(e logEvent) bool { return strings.Contains(e.String(), "popgate's own upstream connection") })
	})
	if n := len(waitDovecotLogins(t, dovecotLog, u.Name, 4)); n != 4 {
		t.Errorf("Dovecot logged %d logins of %s, want 4 (the looping session must not reach it)", n, u.Name)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func hasEvent(evs []logEvent, f func(logEvent) bool) bool {
	for _, e := range evs {
		if f(e) {
			return true
		}
	}
	return false
}

type gatewayNS struct{ client, gateway, server string }

// buildGateway creates the three namespaces, the veth pairs, the routes and
// the gateway's nat rules; all of it goes when the test ends.
func buildGateway(t *testing.T) gatewayNS {
	t.Helper()
	// Interface names are global until moved and at most 15 bytes.
	pfx := fmt.Sprintf("pgt%d", os.Getpid()%1000000)
	ns := gatewayNS{client: pfx + "-cli", gateway: pfx + "-gw", server: pfx + "-srv"}
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, n := range []string{ns.client, ns.gateway, ns.server} {
		sh("ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
		sh("ip", "-n", n, "link", "set", "lo", "up")
	}
	cIf, gcIf, gsIf, sIf := pfx+"c", pfx+"gc", pfx+"gs", pfx+"s"
	sh("ip", "link", "add", cIf, "netns", ns.client, "type", "veth", "peer", "name", gcIf, "netns", ns.gateway)
	sh("ip", "link", "add", gsIf, "netns", ns.gateway, "type", "veth", "peer", "name", sIf, "netns", ns.server)
	for _, a := range [][3]string{
		{ns.client, cIf, tgClientIP + "/24"},
		{ns.client, cIf, tgTProxyIP + "/24"},
		{ns.gateway, gcIf, tgGatewayIn + "/24"},
		{ns.gateway, gsIf, tgGatewayOut + "/24"},
		{ns.server, sIf, tgServerIP + "/24"},
	} {
		sh("ip", "-n", a[0], "addr", "add", a[2], "dev", a[1])
		sh("ip", "-n", a[0], "link", "set", a[1], "up")
	}
	sh("ip", "-n", ns.client, "route", "add", "default", "via", tgGatewayIn)
	sh("ip", "-n", ns.server, "route", "add", "default", "via", tgGatewayOut)
	sh("ip", "netns", "exec", ns.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	ipt := func(rule string) {
		t.Helper()
		sh(append([]string{"ip", "netns", "exec", ns.gateway, "iptables", "-t", "nat"}, strings.Fields(rule)...)...)
	}
	ipt("-A PREROUTING -i " + gcIf + " -s " + tgClientIP + " -p tcp --dport 110 -j REDIRECT --to-ports " + tgPort)
	ipt("-A OUTPUT -p tcp -d " + tgLoopIP + " --dport 110 -j REDIRECT --to-ports " + tgPort)
	ipt("-A OUTPUT -p tcp --dport 110 -m owner ! --uid-owner " + strconv.Itoa(tgUID) + " -j REDIRECT --to-ports " + tgPort)
	sh("ip", "netns", "exec", ns.gateway, "iptables", "-t", "mangle", "-A", "PREROUTING", "-i", gcIf, "-s", tgTProxyIP,
		"-p", "tcp", "--dport", "110", "-j", "TPROXY", "--on-port", tgTProxyPort, "--tproxy-mark", "0x1/0x1")
	sh("ip", "-n", ns.gateway, "rule", "add", "fwmark", "0x1/0x1", "lookup", "100")
	sh("ip", "-n", ns.gateway, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
	return ns
}

// startRemoteDovecot runs a second Dovecot in the server namespace with the
// test environment's configuration, moved to tgServerIP:110 (and :995) and
// to its own base_dir, state_dir and log. It serves the same users and
// Maildirs. It returns the log path.
func startRemoteDovecot(t *testing.T, d *testenv.DovecotEnv, netns, dir string) string {
	t.Helper()
	src, err := os.ReadFile(d.Conf)
	if err != nil {
		t.Fatal(err)
	}
	_, pop3Port, _ := net.SplitHostPort(d.Addr)
	_, pop3sPort, _ := net.SplitHostPort(d.TLSAddr)
	logPath := filepath.Join(dir, "dovecot.log")
	conf := string(src)
	for _, r := range []struct{ re, repl string }{
		{`(?m)^base_dir = .*$`, "base_dir = " + filepath.Join(dir, "run")},
		{`(?m)^state_dir = .*$`, "state_dir = " + filepath.Join(dir, "state")},
		{`(?m)^log_path = .*$`, "log_path = " + logPath},
		{`(?m)^instance_name = .*$`, "instance_name = popgate-transparent-test"},
		{`(?m)^listen = 127\.0\.0\.1$`, "listen = " + tgServerIP},
		{`(?m)^(\s+)address = 127\.0\.0\.1$`, "${1}address = " + tgServerIP},
		{`(?m)^(\s+)port = ` + pop3Port + `$`, "${1}port = 110"},
		{`(?m)^(\s+)port = ` + pop3sPort + `$`, "${1}port = 995"},
	} {
		re := regexp.MustCompile(r.re)
		if !re.MatchString(conf) {
			t.Fatalf("the test environment's %s has no line matching %s: scripts/testenv.sh changed, adapt this test", d.Conf, r.re)
		}
		conf = re.ReplaceAllString(conf, r.repl)
	}
	for _, sub := range []string{"run", "state"} {
		must(t, os.MkdirAll(filepath.Join(dir, sub), 0o755))
	}
	confPath := filepath.Join(dir, "dovecot.conf")
	must(t, os.WriteFile(confPath, []byte(conf), 0o644))

	out, exited := startDaemon(t, "the server namespace's Dovecot",
		exec.Command("ip", "netns", "exec", netns, "dovecot", "-F", "-c", confPath))
	// Ready when it greets on 10.99.2.2:110, asked from its own namespace
	// (the gateway's OUTPUT rule would send the probe to popgate).
	probe := fmt.Sprintf(`exec 3<>/dev/tcp/%s/110 && IFS= read -r -t 2 l <&3 && [ "${l:0:3}" = "+OK" ]`, tgServerIP)
	deadline := time.Now().Add(15 * time.Second)
	for exec.Command("ip", "netns", "exec", netns, "bash", "-c", probe).Run() != nil {
		select {
		case <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("Dovecot in the server namespace exited:\n%s\n%s", out.String(), b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("Dovecot in the server namespace does not greet on %s:110 within 15s:\n%s\n%s", tgServerIP, out.String(), b)
		}
	}
	return logPath
}

// startDaemon starts a foreground daemon with its output in out; when the
// test ends it gets SIGINT and 10 s to exit. exited is closed when it has.
func startDaemon(t *testing.T, what string, cmd *exec.Cmd) (out *syncBuffer, exited chan struct{}) {
	t.Helper()
	out = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", what, err)
	}
	exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("%s ignored SIGINT for 10 s; killed it", what)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out.String())
		}
	})
	return out, exited
}

// waitDovecotLogins waits until Dovecot's log has at least n successful
// POP3 logins of user and returns those log lines.
func waitDovecotLogins(t *testing.T, logPath, user string, n int) []string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		var got []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "pop3-login: Info: Login: user=<"+user+">") {
				got = append(got, l)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot logged %d logins of %s within 15s, want %d:\n%s", len(got), user, n, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
