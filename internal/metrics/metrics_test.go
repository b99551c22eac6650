package metrics_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/metrics"
	"github.com/popgate/popgate/internal/pop3server"
	"github.com/popgate/popgate/proxy"
)

// verdictByMsg passes message 1, rejects message 2 and fails on message 3.
type verdictByMsg struct{}

func (verdictByMsg) Name() string { return "judge" }

func (verdictByMsg) Filter(_ context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	switch env.MsgNum {
	case 2:
		return filters.Verdict{Action: filters.Reject, Reason: "test"}, nil
	case 3:
		return filters.Verdict{}, errors.New("scanner down")
	}
	return filters.Verdict{Action: filters.Pass}, nil
}

type memQuarantine struct{}

func (memQuarantine) Store(context.Context, *filters.Envelope, filters.Body, *filters.Result) (string, error) {
	return "q1", nil
}

// TestMetricsFollowSessions: the counters an admin graphs move as real
// sessions run, and the names carry no user or address.
func TestMetricsFollowSessions(t *testing.T) {
	const user, pass = "carol", "pw-not-in-metrics"
	mail := pop3server.New(pop3server.Config{
		Users: map[string]string{user: pass},
		Mailboxes: map[string][]pop3server.Message{user: {
			{UIDL: "a", Data: []byte("Subject: a\r\n\r\nclean\r\n")},
			{UIDL: "b", Data: []byte("Subject: b\r\n\r\nbad\r\n")},
			{UIDL: "c", Data: []byte("Subject: c\r\n\r\nunscannable\r\n")},
		}},
	})
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = mail.Serve(mln) }()
	defer mail.Close()

	m := metrics.New()
	chain := &filters.Chain{Filters: []filters.Filter{verdictByMsg{}}, Quarantine: memQuarantine{}}
	srv, err := proxy.New(proxy.Options{
		Listeners: []proxy.Listener{{Name: "front", Address: "127.0.0.1:0", MaxConnectionsPerIP: 1,
			Upstream: &proxy.Upstream{Name: "store", Address: mln.Addr().String()}}},
		Logger:   zerolog.Nop(),
		Observer: m,
		PolicyFor: func(proxy.SessionInfo) (*proxy.SessionPolicy, error) {
			return &proxy.SessionPolicy{Name: "std", Chain: chain}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	defer srv.Shutdown(context.Background())
	addr := srv.Addrs()[0].String()
	ready := func() error { return srv.Ready() }
	h := m.Handler(ready, nil)
	waitFor(t, func() bool { return srv.Ready() == nil })

	c, r := dial(t, addr)
	second, _ := dial(t, addr) // over max_connections_per_ip = 1
	expect(t, c, r, "USER "+user, "+OK")
	expect(t, c, r, "PASS "+pass, "+OK")
	expect(t, c, r, "RETR 1", "+OK")
	readBody(t, r)
	expect(t, c, r, "RETR 2", "-ERR [SYS/PERM]") // refused: no notice configured
	expect(t, c, r, "RETR 3", "-ERR [SYS/TEMP]")
	expect(t, c, r, "XYZZY", "-ERR")
	expect(t, c, r, "QUIT", "+OK")
	second.Close()
	c.Close()
	waitFor(t, func() bool { return srv.Sessions() == 0 })

	page := scrape(t, h, "/metrics")
	for _, want := range []struct {
		series string
		min    float64
	}{
		{`popgate_sessions_total{listener="front",result="quit"}`, 1},
		{`popgate_sessions_active{listener="front"}`, 0},
		{`popgate_commands_total{command="RETR"}`, 3},
		{`popgate_commands_total{command="USER"}`, 1},
		{`popgate_bytes_total{direction="client_out",listener="front"}`, 20},
		{`popgate_bytes_total{direction="upstream_in",listener="front"}`, 20},
		{`popgate_bytes_total{direction="client_in",listener="front"}`, 10},
		{`popgate_bytes_total{direction="upstream_out",listener="front"}`, 10},
		{`popgate_messages_total{outcome="delivered",policy="std"}`, 1},
		{`popgate_messages_total{outcome="refused",policy="std"}`, 1},
		{`popgate_messages_total{outcome="deferred",policy="std"}`, 1},
		{`popgate_filter_verdicts_total{filter="judge",verdict="pass"}`, 1},
		{`popgate_filter_verdicts_total{filter="judge",verdict="reject"}`, 1},
		{`popgate_filter_verdicts_total{filter="judge",verdict="error"}`, 1},
		{`popgate_filter_duration_seconds_count{filter="judge"}`, 3},
		{`popgate_quarantine_writes_total{result="ok"}`, 1},
		{`popgate_download_phase_seconds_count{phase="upstream_wait",policy="std"}`, 3},
		{`popgate_download_phase_seconds_count{phase="delivery",policy="std"}`, 3},
		{`popgate_limit_rejections_total{limit="per_ip",listener="front"}`, 1},
		{`popgate_upstream_connect_seconds_count{upstream="store"}`, 1},
	} {
		got, ok := value(page, want.series)
		if !ok {
			t.Errorf("%s missing from /metrics", want.series)
			continue
		}
		if got < want.min || (want.min == 0 && got != 0) {
			t.Errorf("%s = %v, want %v", want.series, got, want.min)
		}
	}
	if v, _ := value(page, `popgate_commands_total{command="other"}`); v != 1 {
		t.Errorf("unknown commands counted as %v under other, want 1", v)
	}
	for _, secret := range []string{user, pass, "127.0.0.1"} {
		if strings.Contains(page, secret) {
			t.Errorf("/metrics contains %q", secret)
		}
	}
	if got := scrape(t, h, "/healthz"); got != "ok\n" {
		t.Errorf("/healthz = %q", got)
	}
	if got := scrape(t, h, "/readyz"); got != "ready\n" {
		t.Errorf("/readyz = %q", got)
	}
	_ = srv.Shutdown(context.Background())
	if got := scrape(t, h, "/readyz"); !strings.HasPrefix(got, "not ready: shutting down") {
		t.Errorf("/readyz while shutting down = %q", got)
	}
}

func TestReloadsAndGeneration(t *testing.T) {
	m := metrics.New()
	m.SetGeneration(1)
	m.Reloaded(false)
	m.Reloaded(true)
	m.SetGeneration(2)
	page := scrape(t, m.Handler(func() error { return nil }, nil), "/metrics")
	for series, want := range map[string]float64{
		`popgate_config_generation`:                     2,
		`popgate_config_reloads_total{result="ok"}`:     1,
		`popgate_config_reloads_total{result="failed"}`: 1,
	} {
		if got, ok := value(page, series); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
}

func scrape(t *testing.T, h http.Handler, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec.Body.String()
}

// value finds one series in a text-format page.
func value(page, series string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(page)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if g, _ := r.ReadString('\n'); !strings.HasPrefix(g, "+OK") && !strings.HasPrefix(g, "-ERR") {
		t.Fatalf("greeting %q", g)
	}
	return c, r
}

func expect(t *testing.T, c net.Conn, r *bufio.Reader, cmd, prefix string) {
	t.Helper()
	fmt.Fprintf(c, "%s\r\n", cmd)
	l, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(l, prefix) {
		t.Fatalf("%s: %q %v, want %s", strings.Fields(cmd)[0], l, err, prefix)
	}
}

func readBody(t *testing.T, r *bufio.Reader) {
	t.Helper()
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if l == ".\r\n" {
			return
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
