package release

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
)

// sender records deliveries; err, when set, is what the next Send returns.
type sender struct {
	mu   sync.Mutex
	sent [][]byte
	to   []string
	err  error
}

func (s *sender) Send(_ context.Context, _ string, to []string, msg io.Reader) error {
	b, err := io.ReadAll(msg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.sent = append(s.sent, b)
	s.to = append(s.to, to...)
	return nil
}

var errUncertain = errors.New("no answer after the final dot")

const heldMsg = "Subject: invoice\r\n\r\nthe attachment\r\n"

func newService(t *testing.T, snd *sender, perm Permission) (*Service, *quarantine.Store, string, *[]string) {
	t.Helper()
	store, err := quarantine.Open(t.TempDir(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	res := &filters.Result{Outcome: filters.Refuse, Reason: "virus", Steps: []filters.Step{{Filter: "av", Action: filters.Reject}}}
	id, err := store.Store(context.Background(), &filters.Envelope{User: "alice", Upstream: "mail"}, filters.BytesBody([]byte(heldMsg)), res)
	if err != nil {
		t.Fatal(err)
	}
	var learned []string
	svc := New(Options{
		Store: store, Keys: testKeys(t),
		Routes:     map[string]Route{"mail": {Sender: snd, Recipient: func(l string) string { return l + "@example.com" }}},
		Permission: func(quarantine.Meta) Permission { return perm },
		Uncertain:  func(err error) bool { return errors.Is(err, errUncertain) },
		Delivered: func(_ context.Context, m quarantine.Meta) error {
			learned = append(learned, m.ID)
			return nil
		},
	})
	return svc, store, id, &learned
}

func TestReleaseDeliversOnce(t *testing.T) {
	snd := &sender{}
	svc, store, id, learned := newService(t, snd, Admin)
	ctx := context.Background()
	res, err := svc.Release(ctx, id, Request{Actor: "cli"})
	if err != nil || res.Already || res.Recipient != "alice@example.com" {
		t.Fatalf("Release = %+v, %v", res, err)
	}
	if len(snd.sent) != 1 {
		t.Fatalf("%d deliveries", len(snd.sent))
	}
	mark, original, ok := bytes.Cut(snd.sent[0], []byte("\r\n"))
	if !ok || string(original) != heldMsg || !bytes.HasPrefix(mark, []byte(MarkField+": id="+id+"; filters=av; mac=")) {
		t.Fatalf("delivered:\n%s", snd.sent[0])
	}
	if r, _ := testKeys(t).Recognize(ctx, filters.BytesBody(snd.sent[0]), "alice"); r == nil || r.ID != id {
		t.Fatalf("the delivered copy is not recognised: %+v", r)
	}
	again, err := svc.Release(ctx, id, Request{Actor: "api"})
	if err != nil || !again.Already || len(snd.sent) != 1 {
		t.Fatalf("a second release: %+v, %v, %d deliveries", again, err, len(snd.sent))
	}
	if st, _ := store.ReleaseStateOf(id); st == nil || st.State != quarantine.Released || st.Actor != "cli" {
		t.Fatalf("release state: %+v", st)
	}
	if len(*learned) != 1 {
		t.Fatalf("Delivered called %d times, want once", len(*learned))
	}
}

func TestReleaseRefusals(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		perm Permission
		req  Request
		want error
	}{
		{"a user link for an administrator's message", Admin, Request{ByUser: true, Actor: "link"}, ErrNotPermitted},
		{"never", Never, Request{Actor: "cli"}, ErrNotPermitted},
		{"a user link elsewhere", User, Request{ByUser: true, To: "eve@example.com"}, ErrNotPermitted},
		{"an address with a line break", Admin, Request{To: "a@b\r\nRCPT TO:<x@y>"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snd := &sender{}
			svc, store, id, _ := newService(t, snd, tc.perm)
			_, err := svc.Release(ctx, id, tc.req)
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Release: %v, want %v", err, tc.want)
			}
			if len(snd.sent) != 0 {
				t.Fatal("delivered anyway")
			}
			if st, _ := store.ReleaseStateOf(id); st != nil {
				t.Fatalf("a refused release left a state: %+v", st)
			}
		})
	}
	svc, _, _, _ := newService(t, &sender{}, Admin)
	if _, err := svc.Release(ctx, "20261205T060000.000000Z-abcdefghij", Request{}); !errors.Is(err, quarantine.ErrNotFound) {
		t.Fatalf("an unknown id: %v", err)
	}
}

func TestReleaseDeliveryFailures(t *testing.T) {
	ctx := context.Background()
	snd := &sender{err: errors.New("connection refused")}
	svc, store, id, learned := newService(t, snd, Admin)
	if _, err := svc.Release(ctx, id, Request{}); !errors.Is(err, ErrDelivery) {
		t.Fatalf("a failed delivery: %v", err)
	}
	if st, _ := store.ReleaseStateOf(id); st != nil {
		t.Fatalf("a failed delivery kept its claim: %+v", st)
	}
	snd.err = errUncertain
	if _, err := svc.Release(ctx, id, Request{}); !errors.Is(err, ErrUncertain) {
		t.Fatalf("an uncertain delivery: %v", err)
	}
	snd.err = nil
	if _, err := svc.Release(ctx, id, Request{}); !errors.Is(err, ErrInProgress) || !strings.Contains(err.Error(), "uncertain") {
		t.Fatalf("a retry after an uncertain delivery: %v", err)
	}
	if _, err := svc.Release(ctx, id, Request{ByUser: true, Force: true}); err == nil {
		t.Fatal("a link forced a second delivery")
	}
	if res, err := svc.Release(ctx, id, Request{Force: true}); err != nil || res.Already || len(snd.sent) != 1 {
		t.Fatalf("--force: %+v, %v, %d deliveries", res, err, len(snd.sent))
	}
	if len(*learned) != 1 {
		t.Fatalf("Delivered called %d times", len(*learned))
	}
}
