package proxy

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/popgate/popgate/filters"
)

// funcFilter adapts a function to the Filter contract.
type funcFilter func(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error)

func (f funcFilter) Name() string { return "test" }
func (f funcFilter) Filter(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.Verdict, error) {
	return f(ctx, env, body)
}

var _ filters.Filter = funcFilter(nil)

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
				if got := readBody(t, b); got != string(msg.Data) || env.User != testUser || env.MsgNum != 1 || env.Command != "RETR" {
					return filters.Verdict{}, errors.New("filter saw the wrong message or envelope")
				}
				return filters.Verdict{Action: filters.Pass}, nil
			},
			status: "+OK", body: stuff(msg.Data),
		},
		{
			name: "replace",
			filter: func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				return filters.Verdict{Action: filters.Replace, Body: filters.BytesBody([]byte("Subject: x\r\n\r\n.hidden\r\n"))}, nil
			},
			status: "+OK 23 octets", body: "Subject: x\r\n\r\n..hidden\r\n",
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
			status:  "+OK", body: "X-Popgate-Warning: not filtered: test: scanner down\r\n" + stuff(msg.Data),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, up := startMailServer(t, mailConfig())
			_, addr, _ := startProxy(t, up, func(_ *Listener, o *Options) {
				o.ChainFor = func(SessionInfo) *filters.Chain {
					return &filters.Chain{Filters: []filters.Filter{tc.filter}, OnError: tc.onError, Spool: &filters.Spool{Dir: t.TempDir(), MemoryLimit: 16}}
				}
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
		o.ChainFor = func(SessionInfo) *filters.Chain {
			return &filters.Chain{Filters: []filters.Filter{funcFilter(func(context.Context, *filters.Envelope, filters.Body) (filters.Verdict, error) {
				called.Store(true)
				return filters.Verdict{}, nil
			})}}
		}
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
