package proxy

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
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
	inNamespace(t, transparentSetup, "TestTransparentInNamespace", "unshare", "ip", "iptables", "ip6tables")
}

// inNamespace runs setup in a private network namespace as root; setup ends
// by running the test binary ($0) on the test inner, which must pass.
func inNamespace(t *testing.T, setup, inner string, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Require(t, "root (for network namespaces with iptables rules)")
	}
	for _, tool := range tools {
		testenv.LookPath(t, tool)
	}
	cmd := exec.Command("unshare", "--net", "--", "sh", "-c", setup, os.Args[0])
	cmd.Env = append(os.Environ(), "POPGATE_TRANSPARENT_INNER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+inner) {
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

// The TPROXY test builds a small network in a private namespace: a client
// namespace behind a veth pair, routed through the test's namespace (the
// gateway), which holds the "remote" mail server at 10.99.2.2:110 and
// intercepts the client's POP3 traffic with an iptables TPROXY rule.
// popgate sees the original destination as the connection's local address
// and dials it; its own connection is local traffic, which PREROUTING rules
// never see.
const tproxyPort = "10111"

var tproxySetup = `set -e
ns=pgtp$$
trap 'ip netns del $ns 2>/dev/null || true' EXIT
ip link set lo up
ip netns add $ns
ip link add pgtp0 type veth peer name pgtp1
ip link set pgtp1 netns $ns
ip addr add 10.99.1.1/24 dev pgtp0
ip link set pgtp0 up
ip -n $ns link set lo up
ip -n $ns addr add 10.99.1.2/24 dev pgtp1
ip -n $ns link set pgtp1 up
ip -n $ns route add default via 10.99.1.1
ip addr add 10.99.2.2/32 dev lo
iptables -t mangle -A PREROUTING -i pgtp0 -p tcp -d 10.99.2.2 --dport 110 -j TPROXY --on-port ` + tproxyPort + ` --tproxy-mark 0x1/0x1
ip rule add fwmark 0x1/0x1 lookup 100
ip route add local 0.0.0.0/0 dev lo table 100
POPGATE_TPROXY_CLIENT_NS=$ns "$0" -test.run '^TestTProxyInNamespace$' -test.v -test.count=1
`

func TestTransparentTProxy(t *testing.T) {
	inNamespace(t, tproxySetup, "TestTProxyInNamespace", "unshare", "ip", "iptables", "curl")
}

// TestTProxyInNamespace is the part of TestTransparentTProxy that runs in
// the gateway namespace; on its own it does nothing.
func TestTProxyInNamespace(t *testing.T) {
	clientNS := os.Getenv("POPGATE_TPROXY_CLIENT_NS")
	if clientNS == "" {
		t.Skip("runs inside TestTransparentTProxy's network namespace")
	}
	mail, _ := startMailServer(t, mailConfig())
	ln, err := net.Listen("tcp", "10.99.2.2:110")
	if err != nil {
		t.Fatal(err)
	}
	go mail.Serve(ln)
	_, _, logs := startProxy(t, "", func(l *Listener, _ *Options) {
		l.Address = "0.0.0.0:" + tproxyPort
		l.Transparent, l.TProxy = true, true
		l.Upstream = nil
	})
	curl := func(url string) (string, error) {
		out, err := exec.Command("ip", "netns", "exec", clientNS, "curl", "-sS", "--max-time", "10",
			"-u", testUser+":"+testPass, url).CombinedOutput()
		return string(out), err
	}
	// A client that knows nothing of popgate asks the remote server.
	got, err := curl("pop3://10.99.2.2/2")
	if err != nil || got != string(testMessages()[1].Data) {
		t.Fatalf("RETR through TPROXY: %v\n%.200q", err, got)
	}
	waitFor(t, func() bool {
		return strings.Contains(logs.String(), `"upstream":"10.99.2.2:110"`) && strings.Contains(logs.String(), `"client":"10.99.1.2:`)
	})
	// The listener itself, asked directly, is not an original destination.
	if got, _ := curl("pop3://10.99.1.1:" + tproxyPort + "/1"); strings.Contains(got, "hello") {
		t.Fatalf("a connection straight to the TPROXY listener was relayed: %q", got)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "is popgate's own listener") })
}
