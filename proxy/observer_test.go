package proxy

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/pop3server"
)

// downloadRecorder keeps the DownloadTimes its sessions report.
type downloadRecorder struct {
	nopObserver
	mu    sync.Mutex
	times []DownloadTimes
}

func (r *downloadRecorder) Session(string) SessionObserver { return r }
func (r *downloadRecorder) Download(_ string, t DownloadTimes) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.times = append(r.times, t)
}

func (r *downloadRecorder) got() []DownloadTimes {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]DownloadTimes(nil), r.times...)
}

// TestDownloadTimes checks that a filtered download's time is put on the
// phase that took it: a server slow to answer, a slow chain, and a client
// slow to read each show in their own phase and no other.
func TestDownloadTimes(t *testing.T) {
	const pause = 150 * time.Millisecond
	big := append([]byte("Subject: big\r\n\r\n"), bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 8<<20/78)...)
	_, up := startMailServer(t, pop3server.Config{
		Users: map[string]string{"u": "p"},
		Mailboxes: map[string][]pop3server.Message{"u": {
			{UIDL: "slow-server", Data: []byte("Subject: 1\r\n\r\none\r\n")},
			{UIDL: "slow-chain", Data: []byte("Subject: 2\r\n\r\ntwo\r\n")},
			{UIDL: "slow-client", Data: big},
		}},
		CutResponse: func(cmd string, msg int) int {
			if cmd == "RETR" && msg == 1 {
				time.Sleep(pause)
			}
			return -1
		},
	})
	slowChain := funcFilter(func(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
		if env.MsgNum == 2 {
			time.Sleep(pause)
		}
		return filters.Verdict{Action: filters.Pass}, nil
	})
	rec := &downloadRecorder{}
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.Observer = rec
		o.PolicyFor = chainPolicy(&filters.Chain{Filters: []filters.Filter{slowChain}})
	})
	c := dialClient(t, addr)
	c.login("u", "p")
	for _, n := range []string{"1", "2"} {
		c.expectOK("RETR " + n)
		c.body()
	}
	// The client reads the big message's status line (popgate has its
	// result), then pauses before the body, through a small receive
	// buffer: popgate's writes wait for it.
	if err := c.conn.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	c.send("RETR 3\r\n")
	if l := c.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("RETR 3: %q", l)
	}
	time.Sleep(pause)
	c.body()
	c.expectOK("QUIT")

	waitFor(t, func() bool { return len(rec.got()) == 3 })
	got := rec.got()
	phase := func(d DownloadTimes, k int) time.Duration {
		return [...]time.Duration{d.UpstreamWait, d.UpstreamRead, d.Filtering, d.Delivery}[k]
	}
	names := [...]string{"upstream wait", "upstream read", "filtering", "delivery"}
	slow := []int{0, 2, 3} // the phase each download was made slow in
	for i, d := range got {
		for k := range names {
			v := phase(d, k)
			switch {
			case v < 0:
				t.Errorf("download %d: %s %v is negative", i+1, names[k], v)
			case k == slow[i] && v < pause:
				t.Errorf("download %d: %s %v, want at least %v (%+v)", i+1, names[k], v, pause, d)
			case k != slow[i] && i != 2 && v >= pause:
				t.Errorf("download %d: %s %v, want less than %v: the pause was elsewhere (%+v)", i+1, names[k], v, pause, d)
			}
		}
	}
}
