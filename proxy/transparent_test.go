package proxy

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/proxy/testenv"
)

// The transparent test runs in a private network namespace (unshare -n),
// where it may set iptables REDIRECT rules without touching the machine:
//
//	client 127.0.0.9 → 127.0.0.5:110   redirected to popgate, which dials 127.0.0.5:110 itself
//	client fd00::9  → [fd00::5]:110    the same over IPv6
//	anyone → 127.0.0.6:110             a rule so broad it catches popgate's own dial: a loop
const transparentPort = "10110"

var transparentSetup = `set -e
ip link set lo up
ip -6 addr add fd00::5/128 dev lo nodad
ip -6 addr add fd00::9/128 dev lo nodad
iptables -t nat -A OUTPUT -p tcp -s 127.0.0.9 -d 127.0.0.5 --dport 110 -j REDIRECT --to-ports ` + transparentPort + `
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.6 --dport 110 -j REDIRECT --to-ports ` + transparentPort + `
ip6tables -t nat -A OUTPUT -p tcp -s fd00::9 -d fd00::5 --dport 110 -j REDIRECT --to-ports ` + transparentPort + `
exec "$0" -test.run '^TestTransparentInNamespace$' -test.v -test.count=1
`

func TestTransparentRedirect(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Require(t, "root (for a network namespace with iptables rules)")
	}
	for _, tool := range []string{"unshare", "ip", "iptables", "ip6tables"} {
		testenv.LookPath(t, tool)
	}
	cmd := exec.Command("unshare", "--net", "--", "sh", "-c", transparentSetup, os.Args[0])
	cmd.Env = append(os.Environ(), "POPGATE_TRANSPARENT_INNER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestTransparentInNamespace") {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
}

// TestTransparentInNamespace is the part of TestTransparentRedirect that
// runs inside the namespace; on its own it does nothing.
func TestTransparentInNamespace(t *testing.T) {
	if os.Getenv("POPGATE_TRANSPARENT_INNER") != "1" {
		t.Skip("runs inside TestTransparentRedirect's network namespace")
	}
	mail, _ := startMailServer(t, mailConfig())
	for _, addr := range []string{"127.0.0.5:110", "[fd00::5]:110"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		go mail.Serve(ln)
	}
	_, _, logs := startProxy(t, "", func(l *Listener, _ *Options) {
		l.Address = ":" + transparentPort
		l.Transparent = true
		l.Upstream = nil
	})

	dialFrom := func(src, dst string) *client {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
		conn, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
	}

	for _, tc := range []struct{ src, dst, upstream string }{
		{"127.0.0.9", "127.0.0.5:110", `"upstream":"127.0.0.5:110"`},
		{"fd00::9", "[fd00::5]:110", `"upstream":"[fd00::5]:110"`},
	} {
		c := dialFrom(tc.src, tc.dst)
		c.line()
		c.login(testUser, testPass)
		c.expectOK("RETR 1")
		if got := c.body(); got != stuff(testMessages()[0].Data) {
			t.Fatalf("%s: RETR through the redirect: %q", tc.dst, got)
		}
		c.expectOK("QUIT")
		waitFor(t, func() bool { return strings.Contains(logs.String(), tc.upstream) })
	}

	// A rule that also redirects popgate's own connection: refused, not looped.
	c := dialFrom("127.0.0.9", "127.0.0.6:110")
	if got := c.readAll(); !strings.Contains(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("looping redirect: %q", got)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "popgate's own upstream connection") })

	// Straight to the transparent listener, no redirect: refused.
	c = dialFrom("127.0.0.1", "127.0.0.1:"+transparentPort)
	if got := c.readAll(); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("unredirected connection: %q", got)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "is popgate's own listener") })
}
