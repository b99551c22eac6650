package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

// funcFilter adapts a function to the Filter contract.
type funcFilter func(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error)

func (f funcFilter) Name() string { return "test" }
func (f funcFilter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	return f(ctx, env, body)
}

var _ filters.Filter = funcFilter(nil)

func chainPolicy(c *filters.Chain) func(SessionInfo) (*SessionPolicy, error) {
	return func(SessionInfo) (*SessionPolicy, error) { return &SessionPolicy{Name: "test", Chain: c}, nil }
}

func readBody(t testing.TB, b filters.Body) string {
	rc, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestInterception(t *testing.T) {
	msg := testMessages()[0]
	for _, tc := range []struct {
		name    string
		filter  funcFilter
		onError filters.OnError
		status  string // prefix of the RETR status the client gets
		body    string // the delivered message, dot-stuffed ("" when refused)
	}{
		{
			name: "pass sees the decoded message and delivers it byte-identical",
			filter: func(_ context.Context, env *filters.Envelope, b filters.Body) (filters.Verdict, error) {
				if got := readBody(t, b); got != string(msg.Data) || env.User != testUser || env.MsgNum != 1 || env.Command != "RETR" || env.UIDL != "u1" {
					return filters.Verdict{}, errors.New("filter saw the wrong message or envelope")
				}
				return filters.Verdict{Action: filters.Pass}, nil
			},
			status: "+OK", body: stuff(msg.Data),
		},
		{
			name: "replace",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{Action: filters.Replace, Body: filters.BytesBody([]byte("Subject: x\r\n\r\n.hidden\r\n")), KeepsOriginal: true}, nil
			},
			status: "+OK 23 octets", body: "Subject: x\r\n\r\n..hidden\r\n",
		},
		{
			name: "lossy replace without a quarantine is deferred",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{Action: filters.Replace, Body: filters.BytesBody([]byte("Subject: x\r\n\r\n"))}, nil
			},
			status: "-ERR [SYS/TEMP]",
		},
		{
			name: "reject",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{Action: filters.Reject, Reason: "virus"}, nil
			},
			status: "-ERR [SYS/PERM]",
		},
		{
			name: "error defaults to tempfail",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{}, errors.New("scanner down")
			},
			status: "-ERR [SYS/TEMP]",
		},
		{
			name: "error with pass-with-tag",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{}, errors.New("scanner down")
			},
			onError: filters.PassWithTag,
			status:  "+OK", body: "X-Popgate-Warning: not filtered: test: error\r\n" + stuff(msg.Data),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, up := startMailServer(t, mailConfig())
			_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
				o.PolicyFor = chainPolicy(&filters.Chain{Filters: []filters.Filter{tc.filter}, OnError: tc.onError, Spool: &filters.Spool{Dir: t.TempDir(), MemoryLimit: 16}})
			})
			c := dialClient(t, addr)
			c.line()
			c.login(testUser, testPass)
			got := c.cmd("RETR 1")
			if !strings.HasPrefix(got, tc.status) {
				t.Fatalf("RETR status %q, want prefix %q", got, tc.status)
			}
			if tc.body != "" {
				if b := c.body(); b != tc.body {
					t.Fatalf("body %q, want %q", b, tc.body)
				}
			}
			// The session goes on after any outcome.
			c.expectOK("NOOP")
			c.expectOK("QUIT")
		})
	}
}

// With filters, a message the upstream cuts short is never delivered and
// the filters never see it.
func TestInterceptionUpstreamCut(t *testing.T) {
	cfg := mailConfig()
	cfg.CutResponse = func(cmd string, _ int) int { return 100 }
	_, up := startMailServer(t, cfg)
	var called atomic.Bool
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor = chainPolicy(&filters.Chain{Filters: []filters.Filter{funcFilter(func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
			called.Store(true)
			return filters.Verdict{}, nil
		})}})
	})
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	c.send("RETR 2\r\n")
	if got := c.readAll(); got != "-ERR [SYS/TEMP] mail server connection lost, try again later\r\n" {
		t.Fatalf("got %q", got)
	}
	if called.Load() {
		t.Fatal("filter ran on a cut message")
	}
}

// countingFilter tags every message it sees and counts the runs.
type countingFilter struct{ runs atomic.Int32 }

func (f *countingFilter) Name() string { return "count" }
func (f *countingFilter) Filter(_ context.Context, _ *filters.Envelope, b filters.Body) (filters.Verdict, error) {
	f.runs.Add(1)
	return filters.Verdict{Action: filters.Replace, Body: filters.PrependHeader(b, "X-Seen: yes"), KeepsOriginal: true}, nil
}

// With top = "filter", TOP shows the start of the filtered message (tags
// included, as RETR has them), and TOP then RETR runs the chain once.
func TestTOPFiltered(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	f := &countingFilter{}
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor = func(SessionInfo) (*SessionPolicy, error) {
			return &SessionPolicy{Chain: &filters.Chain{Filters: []filters.Filter{f}}, FilterTOP: true}, nil
		}
	})
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	c.expectOK("TOP 1 1")
	if got := c.body(); got != "X-Seen: yes\r\nSubject: one\r\n\r\nhello\r\n" {
		t.Fatalf("TOP 1 1: %q", got)
	}
	c.expectOK("TOP 1 0")
	if got := c.body(); got != "X-Seen: yes\r\nSubject: one\r\n\r\n" {
		t.Fatalf("TOP 1 0: %q", got)
	}
	c.expectOK("TOP 1 100") // more lines than the body: the whole message
	whole := "X-Seen: yes\r\n" + stuff(testMessages()[0].Data)
	if got := c.body(); got != whole {
		t.Fatalf("TOP 1 100: %q", got)
	}
	c.expectOK("RETR 1")
	if got := c.body(); got != whole {
		t.Fatalf("RETR after TOP: %q", got)
	}
	if n := f.runs.Load(); n != 1 {
		t.Fatalf("chain ran %d times for one message", n)
	}
	// Only TOP fills the cache (and a quarantined message, see
	// TestFilterEicar), and RETR empties it: a session that downloads
	// hundreds of clean messages holds none of them afterwards.
	c.expectOK("RETR 2")
	c.body()
	c.expectOK("TOP 1 0")
	c.body()
	if n := f.runs.Load(); n != 3 {
		t.Fatalf("chain ran %d times, want 3: RETR 2 and TOP 1 after RETR 1 are filtered afresh", n)
	}
	// A deleted message is not served from the cache.
	c.expectOK("DELE 1")
	if got := c.cmd("TOP 1 0"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("TOP of a deleted message: %q", got)
	}
	if got := c.cmd("TOP 1"); !strings.HasPrefix(got, "-ERR") {
		t.Fatalf("TOP without a line count: %q", got)
	}
}

type memQuarantine struct{ stored atomic.Int32 }

func (q *memQuarantine) Store(context.Context, *filters.Envelope, filters.Body, *filters.Result) (string, error) {
	q.stored.Add(1)
	return "Q-1", nil
}

// A rejected message is replaced by a notice once its original is in
// quarantine, so the client's download loop goes on.
func TestRejectedMessageGetsNotice(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	q := &memQuarantine{}
	virus := funcFilter(func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
		return filters.Verdict{Action: filters.Reject, Reason: "virus: Test"}, nil
	})
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor = chainPolicy(&filters.Chain{Filters: []filters.Filter{virus}, Quarantine: q,
			Notice: func(_ context.Context, _ *filters.Envelope, _ filters.Body, res *filters.Result) (filters.Body, error) {
				return filters.BytesBody([]byte("Subject: withheld\r\n\r\nsee " + res.QuarantineID + "\r\n")), nil
			}})
	})
	c := dialClient(t, addr)
	c.line()
	c.login(testUser, testPass)
	c.expectOK("RETR 1")
	if got := c.body(); got != "Subject: withheld\r\n\r\nsee Q-1\r\n" || q.stored.Load() != 1 {
		t.Fatalf("notice %q, %d stored", got, q.stored.Load())
	}
}

// A slow chain with keep-alive: +OK and header lines flow while it runs;
// a message withheld after that closes the connection without terminator.
func TestKeepAliveDuringSlowFilter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		action filters.Action
	}{{"delivered", filters.Pass}, {"withheld", filters.Retry}} {
		t.Run(tc.name, func(t *testing.T) {
			_, up := startMailServer(t, mailConfig())
			slow := funcFilter(func(ctx context.Context, _ *filters.Envelope, _ filters.Body) (filters.Verdict, error) {
				select {
				case <-time.After(350 * time.Millisecond):
				case <-ctx.Done():
				}
				return filters.Verdict{Action: tc.action, Reason: "slow"}, nil
			})
			_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
				o.PolicyFor = func(SessionInfo) (*SessionPolicy, error) {
					return &SessionPolicy{Chain: &filters.Chain{Filters: []filters.Filter{slow}}, KeepAlive: 100 * time.Millisecond}, nil
				}
			})
			c := dialClient(t, addr)
			c.line()
			c.login(testUser, testPass)
			c.send("RETR 1\r\n")
			if got := c.line(); got != "+OK message follows" {
				t.Fatalf("status %q", got)
			}
			if got := c.line(); !strings.HasPrefix(got, "X-Popgate-Keepalive: filtering") {
				t.Fatalf("keep-alive line %q", got)
			}
			if tc.action == filters.Pass {
				if got := c.body(); !strings.HasSuffix(got, "\r\n"+stuff(testMessages()[0].Data)) {
					t.Fatalf("delivered after keep-alive: %q", got)
				}
				c.expectOK("QUIT")
				return
			}
			if rest := c.readAll(); strings.HasSuffix(rest, ".\r\n") {
				t.Fatalf("withheld message got a terminator: %q", rest)
			}
		})
	}
}

// A login no policy applies to is refused before the client sees +OK, and
// the upstream session ends without QUIT.
func TestLoginRefusedWithoutPolicy(t *testing.T) {
	mail, up := startMailServer(t, mailConfig())
	var asked atomic.Value
	_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor = func(si SessionInfo) (*SessionPolicy, error) {
			asked.Store(si.User)
			return nil, errors.New("no policy")
		}
	})
	c := dialClient(t, addr)
	c.line()
	c.expectOK("USER " + testUser)
	if got := c.cmd("PASS " + testPass); got != "-ERR [SYS/PERM] no mail policy applies to this account" {
		t.Fatalf("PASS: %q", got)
	}
	if rest := c.readAll(); rest != "" {
		t.Fatalf("after the refusal: %q", rest)
	}
	waitFor(t, func() bool { return mail.Sessions() == 0 })
	if mail.QuitCount() != 0 || asked.Load() != testUser {
		t.Fatalf("QUITs %d, policy asked for %v", mail.QuitCount(), asked.Load())
	}
}

// genPolicy tags every message with its configuration generation.
func genPolicy(gen string) func(SessionInfo) (*SessionPolicy, error) {
	tag := funcFilter(func(_ context.Context, _ *filters.Envelope, b filters.Body) (filters.Verdict, error) {
		return filters.Verdict{Action: filters.Replace, Body: filters.PrependHeader(b, "X-Gen: "+gen), KeepsOriginal: true}, nil
	})
	return chainPolicy(&filters.Chain{Filters: []filters.Filter{tag}})
}

// A reload changes the policy of new sessions only; a superseded
// generation is retired once its last session ends, not before.
func TestSetPolicyKeepsRunningSessions(t *testing.T) {
	_, up := startMailServer(t, mailConfig())
	var retired1, retired2, retired3 atomic.Int32
	srv, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
		o.PolicyFor, o.Retire = genPolicy("1"), func() { retired1.Add(1) }
	})
	login := func() *client {
		c := dialClient(t, addr)
		c.line()
		c.login(testUser, testPass)
		return c
	}
	gen1 := login()
	srv.SetPolicy(2, genPolicy("2"), func() { retired2.Add(1) })
	gen2 := login()
	srv.SetPolicy(3, genPolicy("3"), func() { retired3.Add(1) })
	gen3 := login()
	if srv.Generation() != 3 || retired2.Load() != 0 {
		t.Fatalf("generation %d; generation 2 retired %d times while a session uses it", srv.Generation(), retired2.Load())
	}
	for _, tc := range []struct {
		c   *client
		gen string
	}{{gen1, "1"}, {gen2, "2"}, {gen3, "3"}} {
		tc.c.expectOK("RETR 1")
		if got := tc.c.body(); !strings.HasPrefix(got, "X-Gen: "+tc.gen+"\r\n") {
			t.Fatalf("session of generation %s got %q", tc.gen, got)
		}
		tc.c.expectOK("QUIT")
	}
	waitFor(t, func() bool { return srv.Sessions() == 0 })
	if retired1.Load() != 1 || retired2.Load() != 1 || retired3.Load() != 0 {
		t.Fatalf("retired: generation 1 %d and 2 %d times (want 1), the current generation %d times (want 0)", retired1.Load(), retired2.Load(), retired3.Load())
	}
}

// The UIDLs filtered downloads carry come from one listing per session: the
// client's own UIDL listing when it asked for one, else popgate's. A
// listing taken after a DELE is not trusted past RSET, which restores the
// message.
func TestUIDLListingPerSession(t *testing.T) {
	for _, tc := range []struct {
		name     string
		commands []string // each answered +OK
		want     []string // the UIDL the filter saw, per RETR in order
		listings int      // whole UIDL listings the server made
	}{
		{"client's listing is used", []string{"UIDL", "RETR 2", "RETR 1"}, []string{"u2", "u1"}, 1},
		{"no client listing: fetched once", []string{"RETR 2", "RETR 1", "RETR 3"}, []string{"u2", "u1", "u3"}, 1},
		{"client's listing after popgate's", []string{"RETR 1", "UIDL", "RETR 2"}, []string{"u1", "u2"}, 2},
		{"one message's UIDL is not a listing", []string{"UIDL 1", "RETR 1"}, []string{"u1"}, 1},
		{"RSET after DELE: listed again", []string{"DELE 1", "UIDL", "RETR 2", "RSET", "RETR 1"}, []string{"u2", "u1"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mailConfig()
			var mu sync.Mutex
			listings := 0
			cfg.Logf = func(format string, args ...any) {
				if strings.HasSuffix(fmt.Sprintf(format, args...), ": UIDL") {
					mu.Lock()
					listings++
					mu.Unlock()
				}
			}
			_, up := startMailServer(t, cfg)
			var seen []string
			_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
				o.PolicyFor = chainPolicy(&filters.Chain{Filters: []filters.Filter{funcFilter(func(_ context.Context, env *filters.Envelope, _ filters.Body) (filters.Verdict, error) {
					seen = append(seen, env.UIDL)
					return filters.Verdict{Action: filters.Pass}, nil
				})}})
			})
			c := dialClient(t, addr)
			c.line()
			c.login(testUser, testPass)
			for _, cmd := range tc.commands {
				c.expectOK(cmd)
				if cmd == "UIDL" || strings.HasPrefix(cmd, "RETR") {
					c.body()
				}
			}
			c.expectOK("QUIT")
			if !slices.Equal(seen, tc.want) {
				t.Errorf("the filter saw UIDLs %q, want %q", seen, tc.want)
			}
			mu.Lock()
			defer mu.Unlock()
			if listings != tc.listings {
				t.Errorf("the server made %d UIDL listings, want %d", listings, tc.listings)
			}
		})
	}
}

// A relayed listing over the limit is passed on whole but not kept.
func TestKeepingWriterLimit(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		kept   string
		over   bool
	}{
		{[]string{"1 a\r\n", "2 b\r\n", ".\r\n"}, "1 a\r\n2 b\r\n.\r\n", false},
		{[]string{"1 a\r\n", "2 b\r\n", "3 c\r\n.\r\n"}, "", true},
		{[]string{"1 a\r\n2 b\r\n3 c\r\n", ".\r\n"}, "", true},
	} {
		var out strings.Builder
		k := &keepingWriter{w: &out, max: 13}
		for _, w := range tc.writes {
			if _, err := k.Write([]byte(w)); err != nil {
				t.Fatal(err)
			}
		}
		if string(k.kept) != tc.kept || k.over != tc.over || out.String() != strings.Join(tc.writes, "") {
			t.Errorf("writes %q: kept %q over %v relayed %q", tc.writes, k.kept, k.over, out.String())
		}
	}
}
