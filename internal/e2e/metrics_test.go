package e2e

import (
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testenv"
)

// metricsAddr is the address the metrics listener logged.
func (p *popgateProc) metricsAddr() string {
	p.t.Helper()
	var addr string
	p.waitEvents("metrics listening", func(evs []logEvent) bool {
		for _, e := range evs {
			if e.str("message") == "metrics listening" {
				addr = e.str("address")
				return true
			}
		}
		return false
	})
	return addr
}

// httpGet returns the status and body of an HTTP GET.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metricValue finds one series (name and labels exactly as exposed) in a
// Prometheus text page; -1 when absent.
func metricValue(page, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(page)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMetricsEndToEnd: the real binary in front of the real Dovecot and
// clamd serves metrics that follow what its sessions did, /readyz follows
// clamd's health across a reload, and no password shows on the page.
func TestMetricsEndToEnd(t *testing.T) {
	d := testenv.Dovecot(t)
	clamd := testenv.Clamd(t)
	eicar := eicarCases(t, "metrics")[0].msg
	u, _ := newMailbox(t, d, [][]byte{cleanMsg("metrics"), eicar})
	qdir := t.TempDir()
	cfg := avConfig(t, d, avOpts{quarantine: qdir}) + "metrics {\n  address = \"127.0.0.1:0\"\n}\n"
	p := startPopgate(t, cfg, "", "plain")
	base := "http://" + p.metricsAddr()

	waitUntil(t, "readyz 200", func() bool { code, _ := httpGet(t, base+"/readyz"); return code == 200 })
	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}

	c := dialPOP(t, p.addr("plain"))
	c.ok("USER " + u.Name)
	c.ok("PASS " + u.Password)
	c.ok("RETR 1")
	c.multi()
	c.ok("RETR 2") // the EICAR message: a notice in its place
	c.multi()
	c.ok("QUIT")
	c.c.Close()

	var page string
	waitUntil(t, "the session counted", func() bool {
		_, page = httpGet(t, base+"/metrics")
		return metricValue(page, `popgate_sessions_total{listener="plain",result="quit"}`) >= 1
	})
	for series, want := range map[string]float64{
		`popgate_messages_total{outcome="withheld",policy="default"}`:                           1,
		`popgate_messages_total{outcome="changed",policy="default"}`:                            1, // the clean one, stamped
		`popgate_filter_verdicts_total{filter="av",verdict="reject"}`:                           1,
		`popgate_filter_verdicts_total{filter="av",verdict="pass"}`:                             1,
		`popgate_quarantine_writes_total{result="ok"}`:                                          1,
		`popgate_scan_duration_seconds_count{kind="clamav",scanner="clamd"}`:                    2,
		`popgate_scanner_backend_up{address="` + clamd.TCP + `",kind="clamav",scanner="clamd"}`: 1,
		`popgate_commands_total{command="RETR"}`:                                                2,
		`popgate_sessions_active{listener="plain"}`:                                             0,
		`popgate_config_generation`:                                                             1,
	} {
		if got := metricValue(page, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	if got := metricValue(page, `popgate_bytes_total{direction="client_out",listener="plain"}`); got < float64(len(eicar)/2) {
		t.Errorf("client_out bytes = %v, want at least the messages' size", got)
	}
	if strings.Contains(page, u.Password) || strings.Contains(page, u.Name) {
		t.Error("/metrics names the user or shows the password")
	}

	// Reload onto a scanner nobody answers at: the reload is counted, the
	// generation moves, and /readyz fails once the health check has run,
	// so a load balancer stops sending sessions here.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := "tcp://" + dead.Addr().String()
	dead.Close()
	path := p.cmd.Args[len(p.cmd.Args)-1]
	if err := os.WriteFile(path, []byte(strings.Replace(cfg, clamd.TCP, deadAddr, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	waitUntil(t, "readyz 503 with clamd unreachable", func() bool {
		code, body := httpGet(t, base+"/readyz")
		return code == 503 && strings.Contains(body, `scanner "clamd" (clamav): no backend answers`)
	})
	_, page = httpGet(t, base+"/metrics")
	if metricValue(page, `popgate_config_reloads_total{result="ok"}`) != 1 || metricValue(page, `popgate_config_generation`) != 2 {
		t.Errorf("after a reload: reloads ok %v, generation %v", metricValue(page, `popgate_config_reloads_total{result="ok"}`), metricValue(page, `popgate_config_generation`))
	}
	if metricValue(page, `popgate_scanner_backend_up{address="`+deadAddr+`",kind="clamav",scanner="clamd"}`) != 0 {
		t.Errorf("the dead backend is not reported down:\n%s", grepLines(page, "backend_up"))
	}
	// A broken file is refused and counted as such.
	if err := os.WriteFile(path, []byte(cfg+"\nbroken {"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	waitUntil(t, "a failed reload counted", func() bool {
		_, page = httpGet(t, base+"/metrics")
		return metricValue(page, `popgate_config_reloads_total{result="failed"}`) == 1
	})
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
