package filters

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tbody is a Body that counts Remove calls and open readers.
type tbody struct {
	data []byte

	mu      sync.Mutex
	removes int
	readers int
}

func (b *tbody) Open() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removes > 0 {
		return nil, errors.New("tbody: removed")
	}
	b.readers++
	return &tbodyReader{Reader: bytes.NewReader(b.data), b: b}, nil
}

func (b *tbody) Size() int64 { return int64(len(b.data)) }

func (b *tbody) Remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.removes++
	return nil
}

func (b *tbody) Removes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.removes
}

func (b *tbody) OpenReaders() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.readers
}

type tbodyReader struct {
	*bytes.Reader
	b    *tbody
	once sync.Once
}

func (r *tbodyReader) Close() error {
	r.once.Do(func() {
		r.b.mu.Lock()
		r.b.readers--
		r.b.mu.Unlock()
	})
	return nil
}

// funcFilter is a Filter made of a function.
type funcFilter struct {
	name string
	fn   func(ctx context.Context, env *Envelope, body Body) (Verdict, error)
}

func (f *funcFilter) Name() string { return f.name }
func (f *funcFilter) Filter(ctx context.Context, env *Envelope, body Body) (Verdict, error) {
	return f.fn(ctx, env, body)
}

func bodyString(b Body) (string, error) {
	r, err := b.Open()
	if err != nil {
		return "", err
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	return string(data), err
}

// act is one scripted filter's behaviour.
type act struct {
	action  Action
	replace string // create a new body with this content for Verdict.Body
	given   bool   // put the body the filter was given in Verdict.Body
	input   bool   // put the chain's input in Verdict.Body
	reason  string
	err     error
	panic   any
}

// scripted builds filters f1, f2, … from acts. It records what each called
// filter was given, every body the filters created, and whether, at each
// call, a body created earlier was still alive without being the one handed
// over (a replacement that should have been removed at once).
type scripted struct {
	in      *tbody
	created []*tbody
	seen    []string
	filters []Filter
}

func newScripted(acts []act) *scripted {
	s := &scripted{in: &tbody{data: []byte("original")}}
	for i, a := range acts {
		name := fmt.Sprintf("f%d", i+1)
		s.filters = append(s.filters, &funcFilter{name: name, fn: func(ctx context.Context, env *Envelope, body Body) (Verdict, error) {
			content, err := bodyString(body)
			if err != nil {
				content = "ERROR: " + err.Error()
			}
			s.seen = append(s.seen, content)
			if a.panic != nil {
				panic(a.panic)
			}
			v := Verdict{Action: a.action, Reason: a.reason, KeepsOriginal: true}
			switch {
			case a.replace != "":
				nb := &tbody{data: []byte(a.replace)}
				s.created = append(s.created, nb)
				v.Body = nb
			case a.given:
				v.Body = body
			case a.input:
				v.Body = s.in
			}
			return v, a.err
		}})
	}
	return s
}

// checkReleased releases res and checks that every created body was removed
// exactly once and the input never.
func (s *scripted) checkReleased(t *testing.T, res *Result) {
	t.Helper()
	if err := res.Release(); err != nil {
		t.Errorf("Release: %v", err)
	}
	if err := res.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if n := s.in.Removes(); n != 0 {
		t.Errorf("the input body was removed %d times", n)
	}
	for _, c := range s.created {
		if n := c.Removes(); n != 1 {
			t.Errorf("body %q removed %d times, want 1", c.data, n)
		}
	}
}

func stepActions(steps []Step) []string {
	var out []string
	for _, s := range steps {
		a := s.Filter + ":" + s.Action.String()
		if s.Err != nil {
			a = s.Filter + ":error"
		}
		out = append(out, a)
	}
	return out
}

func TestChainVerdicts(t *testing.T) {
	tests := []struct {
		name        string
		acts        []act
		outcome     Outcome
		content     string // delivered content, for Deliver
		sameAsInput bool   // Result.Body is the input itself
		reason      string
		steps       []string
		seen        []string
	}{
		{
			name:    "all pass delivers the input itself",
			acts:    []act{{action: Pass}, {action: Pass}},
			outcome: Deliver, content: "original", sameAsInput: true,
			steps: []string{"f1:pass", "f2:pass"},
			seen:  []string{"original", "original"},
		},
		{
			name:    "replace then pass",
			acts:    []act{{action: Replace, replace: "r1"}, {action: Pass}},
			outcome: Deliver, content: "r1",
			steps: []string{"f1:replace", "f2:pass"},
			seen:  []string{"original", "r1"},
		},
		{
			name:    "replacements supersede each other",
			acts:    []act{{action: Replace, replace: "r1"}, {action: Replace, replace: "r2"}, {action: Pass}, {action: Replace, replace: "r3"}},
			outcome: Deliver, content: "r3",
			steps: []string{"f1:replace", "f2:replace", "f3:pass", "f4:replace"},
			seen:  []string{"original", "r1", "r2", "r2"},
		},
		{
			name:    "reject stops the chain",
			acts:    []act{{action: Pass}, {action: Reject, reason: "virus Eicar-Test-Signature"}, {action: Pass}},
			outcome: Refuse, reason: "virus Eicar-Test-Signature",
			steps: []string{"f1:pass", "f2:reject"},
			seen:  []string{"original", "original"},
		},
		{
			name:    "reject after replace releases the replacement",
			acts:    []act{{action: Replace, replace: "r1"}, {action: Reject, reason: "no"}},
			outcome: Refuse, reason: "no",
			steps: []string{"f1:replace", "f2:reject"},
			seen:  []string{"original", "r1"},
		},
		{
			name:    "reject without a reason names the filter",
			acts:    []act{{action: Reject}},
			outcome: Refuse, reason: "rejected by filter f1",
			steps: []string{"f1:reject"},
		},
		{
			name:    "replace with the given body is a pass",
			acts:    []act{{action: Replace, given: true}, {action: Pass}},
			outcome: Deliver, content: "original", sameAsInput: true,
			steps: []string{"f1:pass", "f2:pass"},
		},
		{
			name:    "replace with the given replacement keeps it",
			acts:    []act{{action: Replace, replace: "r1"}, {action: Replace, given: true}},
			outcome: Deliver, content: "r1",
			steps: []string{"f1:replace", "f2:pass"},
		},
		{
			name:    "replace back to the input",
			acts:    []act{{action: Replace, replace: "r1"}, {action: Replace, input: true}, {action: Pass}},
			outcome: Deliver, content: "original", sameAsInput: true,
			steps: []string{"f1:replace", "f2:replace", "f3:pass"},
			seen:  []string{"original", "r1", "original"},
		},
		{
			name:    "a stray body on Pass is removed",
			acts:    []act{{action: Pass, replace: "stray"}},
			outcome: Deliver, content: "original", sameAsInput: true,
			steps: []string{"f1:pass"},
		},
		{
			name:    "a stray body on Reject is removed",
			acts:    []act{{action: Reject, replace: "stray", reason: "bad"}},
			outcome: Refuse, reason: "bad",
			steps: []string{"f1:reject"},
		},
		{
			name:    "replace without a body is an error",
			acts:    []act{{action: Replace}, {action: Pass}},
			outcome: Defer, reason: "f1: invalid verdict: Replace without a Body",
			steps: []string{"f1:error"},
		},
		{
			name:    "unknown action is an error",
			acts:    []act{{action: Action(42)}},
			outcome: Defer, reason: "f1: invalid verdict: unknown action 42",
			steps: []string{"f1:error"},
		},
		{
			name:    "an error with a replacement body: the body is removed",
			acts:    []act{{action: Replace, replace: "half", err: errors.New("disk full")}},
			outcome: Defer, reason: "f1: disk full",
			steps: []string{"f1:error"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScripted(tt.acts)
			c := &Chain{Filters: s.filters}
			res := c.Run(context.Background(), &Envelope{Command: "RETR", MsgNum: 1}, s.in)
			if res.Outcome != tt.outcome {
				t.Fatalf("Outcome = %v (reason %q), want %v", res.Outcome, res.Reason, tt.outcome)
			}
			if tt.outcome == Deliver {
				got, err := bodyString(res.Body)
				if err != nil || got != tt.content {
					t.Errorf("delivered %q, %v; want %q", got, err, tt.content)
				}
				if same := res.Body == Body(s.in); same != tt.sameAsInput {
					t.Errorf("Body is the input: %v, want %v", same, tt.sameAsInput)
				}
			} else if res.Body != nil {
				t.Errorf("Body = %v for %v", res.Body, res.Outcome)
			}
			// These filters give no Edits: only an unchanged message has a
			// known form.
			if want := tt.outcome == Deliver && tt.sameAsInput; res.Reproducible != want {
				t.Errorf("Reproducible = %v, want %v", res.Reproducible, want)
			}
			checkResultPieces(t, s.in, res)
			if res.Reason != tt.reason {
				t.Errorf("Reason = %q, want %q", res.Reason, tt.reason)
			}
			if res.FailedOpen {
				t.Errorf("FailedOpen set")
			}
			if got := stepActions(res.Steps); !slices.Equal(got, tt.steps) {
				t.Errorf("steps %v, want %v", got, tt.steps)
			}
			if tt.seen != nil && !slices.Equal(s.seen, tt.seen) {
				t.Errorf("filters were given %q, want %q", s.seen, tt.seen)
			}
			s.checkReleased(t, res)
		})
	}
}

func TestChainEmpty(t *testing.T) {
	in := &tbody{data: []byte("m")}
	for _, c := range []*Chain{nil, {}, {Filters: []Filter{}}} {
		if !c.Empty() {
			t.Errorf("%v: not Empty", c)
		}
		res := c.Run(context.Background(), nil, in)
		if res.Outcome != Deliver || res.Body != Body(in) || len(res.Steps) != 0 {
			t.Errorf("empty chain result %+v", res)
		}
		if err := res.Release(); err != nil || in.Removes() != 0 {
			t.Errorf("Release: %v, input removed %d times", err, in.Removes())
		}
	}
	if (&Chain{Filters: []Filter{&funcFilter{}}}).Empty() {
		t.Errorf("a chain with a filter is Empty")
	}
}

// failure is a way a filter can fail to decide.
type failure struct {
	name string
	// setup returns the filter and the context to run with; release (may
	// be nil) lets a blocked filter go.
	setup func() (f Filter, ctx context.Context, cancel func(), release func())
	// errIs: what Step.Err must match; headerReason: the reason in the
	// warning header.
	errIs        error
	errText      string
	headerReason string
}

// lateCall is closed by a filter that must never be called; tests check it
// a little while after Run, since an abandoned filter runs on its own.
var lateCall = make(chan struct{})

func failures() []failure {
	errClamd := errors.New("clamd: dial tcp 127.0.0.1:3310: connection refused")
	return []failure{
		{
			name: "error",
			setup: func() (Filter, context.Context, func(), func()) {
				return &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					return Verdict{}, errClamd
				}}, context.Background(), func() {}, nil
			},
			errIs: errClamd, headerReason: "error",
		},
		{
			name: "panic",
			setup: func() (Filter, context.Context, func(), func()) {
				return &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					var m map[string]int
					m["boom"]++ // a real runtime panic
					return Verdict{}, nil
				}}, context.Background(), func() {}, nil
			},
			errText: "filter av panicked: assignment to entry in nil map", headerReason: "internal error",
		},
		{
			name: "context canceled before the filter",
			setup: func() (Filter, context.Context, func(), func()) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					close(lateCall) // must not be called: a second call panics
					return Verdict{}, nil
				}}, ctx, cancel, nil
			},
			errIs: context.Canceled, headerReason: "canceled",
		},
		{
			name: "deadline honoured by the filter",
			setup: func() (Filter, context.Context, func(), func()) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				return &funcFilter{name: "av", fn: func(ctx context.Context, _ *Envelope, _ Body) (Verdict, error) {
					<-ctx.Done()
					return Verdict{}, fmt.Errorf("scan: %w", ctx.Err())
				}}, ctx, cancel, nil
			},
			errIs: context.DeadlineExceeded, headerReason: "timeout",
		},
		{
			name: "deadline ignored by the filter",
			setup: func() (Filter, context.Context, func(), func()) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
				gate := make(chan struct{})
				return &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					<-gate
					return Verdict{Action: Pass}, nil
				}}, ctx, cancel, func() { close(gate) }
			},
			errIs: context.DeadlineExceeded, errText: "abandoned", headerReason: "timeout",
		},
		{
			name: "replace without a body",
			setup: func() (Filter, context.Context, func(), func()) {
				return &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					return Verdict{Action: Replace}, nil
				}}, context.Background(), func() {}, nil
			},
			errIs: errReplaceWithoutBody, headerReason: "error",
		},
	}
}

// TestChainOnError runs every failure under every OnError mode. The failing
// filter comes after one that replaced the message, so PassWithTag must
// deliver the replacement, tagged, and Release must remove it.
func TestChainOnError(t *testing.T) {
	modes := []struct {
		mode    OnError
		outcome Outcome
	}{
		{TempFail, Defer},
		{PassWithTag, Deliver},
		{RejectMessage, Refuse},
		{OnError(99), Defer}, // unknown: never call the message clean
	}
	for _, m := range modes {
		for _, fl := range failures() {
			t.Run(m.mode.String()+"/"+fl.name, func(t *testing.T) {
				f, ctx, cancel, release := fl.setup()
				defer cancel()
				if release != nil {
					defer release()
				}
				in := &tbody{data: []byte("Subject: x\r\n\r\noriginal\r\n")}
				repl := &tbody{data: []byte("Subject: x\r\n\r\nstripped\r\n")}
				var afterCalled atomic.Bool
				first := &funcFilter{name: "strip", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					edits := []Piece{{Off: 0, Len: 14}, {Data: []byte("stripped")}, {Off: 22, Len: 2}}
					return Verdict{Action: Replace, Body: repl, Edits: edits, Reason: "stripped", KeepsOriginal: true}, nil
				}}
				after := &funcFilter{name: "stamp", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
					afterCalled.Store(true)
					return Verdict{Action: Pass}, nil
				}}
				c := &Chain{Filters: []Filter{first, f, after}, OnError: m.mode}
				if fl.name == "context canceled before the filter" {
					c.Filters = []Filter{f, after}
					repl.Remove() // not used; keeps the removal count at 1
				}
				start := time.Now()
				res := c.Run(ctx, nil, in)
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("Run took %v", d)
				}
				if res.Outcome != m.outcome {
					t.Fatalf("Outcome = %v, want %v (reason %q)", res.Outcome, m.outcome, res.Reason)
				}
				// PassWithTag fails open for the failing filter only: the
				// rest of the chain runs, unless the context has ended.
				ctxEnded := fl.errIs == context.Canceled || fl.errIs == context.DeadlineExceeded
				if wantAfter := m.mode == PassWithTag && !ctxEnded; afterCalled.Load() != wantAfter {
					t.Errorf("later filter ran: %v, want %v", afterCalled.Load(), wantAfter)
				}
				select {
				case <-lateCall:
					t.Fatalf("a filter ran although the context had ended")
				case <-time.After(20 * time.Millisecond):
				}
				var last Step
				for _, st := range res.Steps {
					if st.Filter == "av" {
						last = st
					}
				}
				if last.Err == nil {
					t.Fatalf("steps %+v, want av's failure", res.Steps)
				}
				if fl.errIs != nil && !errors.Is(last.Err, fl.errIs) {
					t.Errorf("Step.Err = %v, want %v", last.Err, fl.errIs)
				}
				if !strings.Contains(last.Err.Error(), fl.errText) {
					t.Errorf("Step.Err = %q, want it to contain %q", last.Err, fl.errText)
				}
				if !strings.HasPrefix(res.Reason, "av: ") {
					t.Errorf("Reason = %q", res.Reason)
				}
				if m.mode == PassWithTag {
					if !res.FailedOpen {
						t.Errorf("FailedOpen not set")
					}
					base := "Subject: x\r\n\r\nstripped\r\n"
					if fl.name == "context canceled before the filter" {
						base = string(in.data)
					}
					reason := "av: " + fl.headerReason
					if ctxEnded && fl.name != "context canceled before the filter" {
						reason += "; stamp: " + fl.headerReason // the context ended while av ran
					}
					want := "X-Popgate-Warning: not filtered: " + reason + "\r\n" + base
					if got, err := bodyString(res.Body); got != want || err != nil {
						t.Errorf("delivered %q, %v\nwant %q", got, err, want)
					}
					if !res.Reproducible {
						t.Errorf("the warning header over known edits is not Reproducible")
					}
					checkResultPieces(t, in, res)
				} else {
					if res.FailedOpen || res.Body != nil {
						t.Errorf("FailedOpen %v, Body %v for %v", res.FailedOpen, res.Body, res.Outcome)
					}
					if res.Reproducible || res.Pieces != nil {
						t.Errorf("Reproducible %v, Pieces %v for %v", res.Reproducible, res.Pieces, res.Outcome)
					}
				}
				if err := res.Release(); err != nil {
					t.Errorf("Release: %v", err)
				}
				if in.Removes() != 0 {
					t.Errorf("input removed")
				}
				if n := repl.Removes(); n != 1 {
					t.Errorf("replacement removed %d times, want 1", n)
				}
			})
		}
	}
}

// inlineFilter is a funcFilter the chain runs in its own goroutine.
type inlineFilter struct{ funcFilter }

func (*inlineFilter) Inline() {}

func TestChainPanicError(t *testing.T) {
	oops := func(context.Context, *Envelope, Body) (Verdict, error) { panic("oops") }
	for _, f := range []Filter{&funcFilter{name: "buggy", fn: oops}, &inlineFilter{funcFilter{name: "buggy", fn: oops}}} {
		t.Run(fmt.Sprintf("%T", f), func(t *testing.T) {
			res := (&Chain{Filters: []Filter{f}}).Run(context.Background(), nil, BytesBody(nil))
			var pe *PanicError
			if !errors.As(res.Steps[0].Err, &pe) {
				t.Fatalf("Step.Err = %v, want a *PanicError", res.Steps[0].Err)
			}
			if pe.Filter != "buggy" || pe.Value != "oops" || !bytes.Contains(pe.Stack, []byte("chain_test.go")) {
				t.Errorf("PanicError = %q %v, stack mentions the filter: %v", pe.Filter, pe.Value, bytes.Contains(pe.Stack, []byte("chain_test.go")))
			}
			if res.Outcome != Defer {
				t.Errorf("Outcome = %v", res.Outcome)
			}
		})
	}
}

// An Inline filter runs in the goroutine that runs the chain; another in
// one of its own.
func TestChainInlineFilterRunsInPlace(t *testing.T) {
	goid := func() string { // "goroutine N [" from the stack header
		b := make([]byte, 64)
		b = b[:runtime.Stack(b, false)]
		return string(b[:bytes.IndexByte(b, '[')])
	}
	var seen []string
	rec := func(context.Context, *Envelope, Body) (Verdict, error) {
		seen = append(seen, goid())
		return Verdict{Action: Pass}, nil
	}
	c := &Chain{Filters: []Filter{&inlineFilter{funcFilter{name: "in", fn: rec}}, &funcFilter{name: "out", fn: rec}}}
	if res := c.Run(context.Background(), nil, BytesBody([]byte("m"))); res.Outcome != Deliver {
		t.Fatalf("outcome %v", res.Outcome)
	}
	if here := goid(); len(seen) != 2 || seen[0] != here || seen[1] == here {
		t.Errorf("filters ran in %q, the chain in %q: want the inline one there, the other elsewhere", seen, here)
	}
}

func TestChainNilAndNamelessFilters(t *testing.T) {
	in := BytesBody([]byte("m"))
	c := &Chain{Filters: []Filter{&funcFilter{name: "", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		return Verdict{}, nil
	}}, nil}}
	res := c.Run(context.Background(), nil, in)
	if got := []string{res.Steps[0].Filter, res.Steps[1].Filter}; !slices.Equal(got, []string{"#1", "#2"}) {
		t.Errorf("step names %v", got)
	}
	var pe *PanicError
	if res.Outcome != Defer || !errors.As(res.Steps[1].Err, &pe) {
		t.Errorf("nil filter: outcome %v, err %v", res.Outcome, res.Steps[1].Err)
	}
}

func TestChainAbandonedFilterLateReplacementIsRemoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	gate := make(chan struct{})
	late := &tbody{data: []byte("late")}
	returned := make(chan struct{})
	c := &Chain{Filters: []Filter{&funcFilter{name: "slow", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		defer close(returned)
		<-gate
		return Verdict{Action: Replace, Body: late}, nil
	}}}}
	in := &tbody{data: []byte("m")}
	res := c.Run(ctx, nil, in)
	if res.Outcome != Defer || !errors.Is(res.Steps[0].Err, context.DeadlineExceeded) {
		t.Fatalf("outcome %v, err %v", res.Outcome, res.Steps[0].Err)
	}
	res.Release()
	close(gate)
	<-returned
	deadline := time.Now().Add(5 * time.Second)
	for late.Removes() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if late.Removes() != 1 || in.Removes() != 0 {
		t.Errorf("late replacement removed %d times, input %d times", late.Removes(), in.Removes())
	}
}

func TestChainFilterCancelsMidChain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bCalled := make(chan struct{})
	c := &Chain{Filters: []Filter{
		&funcFilter{name: "a", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
			cancel() // e.g. the client went away
			return Verdict{Action: Pass}, nil
		}},
		&funcFilter{name: "b", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
			close(bCalled)
			return Verdict{Action: Pass}, nil
		}},
	}}
	res := c.Run(ctx, nil, BytesBody([]byte("m")))
	select {
	case <-bCalled:
		t.Errorf("filter b ran after the context ended")
	case <-time.After(50 * time.Millisecond):
	}
	if got := stepActions(res.Steps); !slices.Equal(got, []string{"a:pass", "b:error"}) || !errors.Is(res.Steps[1].Err, context.Canceled) {
		t.Errorf("steps %v, last err %v", got, res.Steps[1].Err)
	}
	if res.Outcome != Defer {
		t.Errorf("Outcome = %v", res.Outcome)
	}
}

func TestChainWarningHeaderCannotBeInjected(t *testing.T) {
	tests := []struct {
		name, filter, header string
		err                  error
		wantLine             string
	}{
		{
			name: "CRLF in the error", filter: "av", err: errors.New("bad\r\nX-Evil: yes\r\n\r\nfake body"),
			wantLine: "X-Popgate-Warning: not filtered: av: error",
		},
		{
			name: "CRLF in the filter name", filter: "av\r\nX-Evil: yes", err: errors.New("down"),
			wantLine: "X-Popgate-Warning: not filtered: av X-Evil: yes: error",
		},
		{
			name: "bare LF and non-ASCII in the name", filter: "caf\u00e9\nX-Evil: 1", err: errors.New("down"),
			wantLine: "X-Popgate-Warning: not filtered: caf? X-Evil: 1: error",
		},
		{
			name: "internals stay out", filter: "av", err: errors.New("clamav: tcp://10.0.0.7:3310: connection refused"),
			wantLine: "X-Popgate-Warning: not filtered: av: error",
		},
		{
			name: "empty error", filter: "av", err: errors.New("\r\n"),
			wantLine: "X-Popgate-Warning: not filtered: av: error",
		},
		{
			name: "custom header name", filter: "av", header: "X-Scan-Status", err: errors.New("down"),
			wantLine: "X-Scan-Status: not filtered: av: error",
		},
		{
			name: "invalid header name falls back", filter: "av", header: "X-Evil: 1\r\nX", err: errors.New("down"),
			wantLine: "X-Popgate-Warning: not filtered: av: error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const orig = "Subject: x\r\n\r\nhi\r\n"
			c := &Chain{OnError: PassWithTag, ErrorHeader: tt.header, Filters: []Filter{&funcFilter{name: tt.filter, fn: func(context.Context, *Envelope, Body) (Verdict, error) {
				return Verdict{}, tt.err
			}}}}
			res := c.Run(context.Background(), nil, BytesBody([]byte(orig)))
			defer res.Release()
			got, err := bodyString(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			if want := tt.wantLine + "\r\n" + orig; got != want {
				t.Errorf("delivered\n%q\nwant\n%q", got, want)
			}
			if n := strings.Count(got, "\r\n"); n != 4 {
				t.Errorf("delivered message has %d lines, want 4", n)
			}
			if len(tt.wantLine) > 998 {
				t.Errorf("header line too long")
			}
		})
	}
}

func TestChainRecordsTiming(t *testing.T) {
	const nap = 30 * time.Millisecond
	c := &Chain{Filters: []Filter{
		&funcFilter{name: "quick", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
			return Verdict{}, nil
		}},
		&funcFilter{name: "slow", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
			time.Sleep(nap)
			return Verdict{}, nil
		}},
	}}
	res := c.Run(context.Background(), nil, BytesBody(nil))
	quick, slow := res.Steps[0].Duration, res.Steps[1].Duration
	if slow < nap {
		t.Errorf("slow filter took %v, recorded less than its %v nap", slow, nap)
	}
	if quick <= 0 || quick >= slow {
		t.Errorf("quick filter recorded %v (slow %v)", quick, slow)
	}
}

// A filter's scanner result reaches its step, whatever the verdict, and
// only its own step.
func TestChainStepsCarryScans(t *testing.T) {
	spam := &ScanResult{Backend: "b", Spam: &SpamReport{Score: 9, Action: "add header"}}
	for _, action := range []Action{Pass, Reject} {
		c := &Chain{Filters: []Filter{
			&funcFilter{name: "plain", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
				return Verdict{}, nil
			}},
			&funcFilter{name: "scanned", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
				return Verdict{Action: action, Scan: spam}, nil
			}},
		}}
		res := c.Run(context.Background(), nil, BytesBody([]byte("m")))
		if len(res.Steps) != 2 || res.Steps[0].Scan != nil || res.Steps[1].Scan != spam {
			t.Errorf("%v: steps %+v, want the scan on the second only", action, res.Steps)
		}
		res.Release()
	}
}

// TestChainReplacementsAndSteps: each filter sees on its envelope the steps
// of the filters before it (and the caller's envelope stays as it was), and
// the chain removes the replacement files the filters write to their spool.
func TestChainReplacementsAndSteps(t *testing.T) {
	dir := t.TempDir()
	sp := &Spool{Dir: dir, MemoryLimit: -1}
	rewrite := func(tag string, before int) Filter {
		return &funcFilter{name: tag, fn: func(ctx context.Context, env *Envelope, body Body) (Verdict, error) {
			if len(env.Steps) != before || (before > 0 && env.Steps[before-1].Action != Replace) {
				return Verdict{}, fmt.Errorf("filter %s sees steps %+v", tag, env.Steps)
			}
			w := sp.NewWriter()
			io.WriteString(w, tag+";")
			r, err := body.Open()
			if err != nil {
				w.Abort()
				return Verdict{}, err
			}
			defer r.Close()
			if _, err := io.Copy(w, r); err != nil {
				w.Abort()
				return Verdict{}, err
			}
			nb, err := w.Finish()
			return Verdict{Action: Replace, Body: nb, KeepsOriginal: true}, err
		}}
	}
	c := &Chain{Filters: []Filter{rewrite("a", 0), rewrite("b", 1), rewrite("c", 2)}}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			in := BytesBody([]byte(fmt.Sprint("m", i)))
			env := &Envelope{User: "u"}
			res := c.Run(context.Background(), env, in)
			if res.Outcome != Deliver {
				t.Errorf("outcome %v: %s", res.Outcome, res.Reason)
				return
			}
			if env.Steps != nil {
				t.Errorf("the caller's envelope was changed: %+v", env.Steps)
			}
			if got, _ := bodyString(res.Body); got != fmt.Sprint("c;b;a;m", i) {
				t.Errorf("delivered %q", got)
			}
			if err := res.Release(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	assertDirEmpty(t, dir)
}

func TestParseOnError(t *testing.T) {
	tests := []struct {
		in      string
		want    OnError
		wantErr bool
	}{
		{"tempfail", TempFail, false},
		{"pass", PassWithTag, false},
		{"pass-with-tag", PassWithTag, false},
		{"reject", RejectMessage, false},
		{"", 0, true},
		{"Reject", 0, true},
		{"drop", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseOnError(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("ParseOnError(%q) = %v, %v", tt.in, got, err)
		}
		if !tt.wantErr {
			back, err := ParseOnError(got.String())
			if err != nil || back != got {
				t.Errorf("%v does not round-trip through String: %v, %v", got, back, err)
			}
		}
	}
	if s := OnError(7).String(); s != "OnError(7)" {
		t.Errorf("OnError(7).String() = %q", s)
	}
	for o, want := range map[Outcome]string{Deliver: "deliver", Refuse: "refuse", Defer: "defer", Outcome(9): "Outcome(9)"} {
		if o.String() != want {
			t.Errorf("%d.String() = %q", int(o), o.String())
		}
	}
}

type recognizer struct {
	id    string
	names []string
	err   error
}

func (r recognizer) Released(context.Context, *Envelope, Body) (string, []string, error) {
	return r.id, r.names, r.err
}

// A released copy passes the filters that held its original and no others.
func TestChainReleasedCopy(t *testing.T) {
	var ran []string
	filter := func(name string, a Action) Filter {
		return &funcFilter{name: name, fn: func(context.Context, *Envelope, Body) (Verdict, error) {
			ran = append(ran, name)
			return Verdict{Action: a, Reason: name}, nil
		}}
	}
	for _, tc := range []struct {
		name    string
		rec     Recognizer
		ran     string
		outcome Outcome
	}{
		{"released", recognizer{id: "q1", names: []string{"av"}}, "strip", Deliver},
		{"not a released copy", recognizer{}, "av", Refuse},
		{"recognizer failed", recognizer{id: "q1", names: []string{"av"}, err: errors.New("read")}, "av", Refuse},
		{"no recognizer", nil, "av", Refuse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran = nil
			c := &Chain{Filters: []Filter{filter("av", Reject), filter("strip", Pass)}, Released: tc.rec}
			res := c.Run(context.Background(), &Envelope{}, BytesBody([]byte("Subject: x\r\n\r\nbody\r\n")))
			defer res.Release()
			if strings.Join(ran, ",") != tc.ran || res.Outcome != tc.outcome {
				t.Fatalf("ran %v, outcome %v; want %s, %v", ran, res.Outcome, tc.ran, tc.outcome)
			}
			if tc.outcome == Deliver && (res.Steps[0].Action != Pass || !strings.Contains(res.Steps[0].Reason, "released from quarantine q1")) {
				t.Fatalf("the skipped filter's step: %+v", res.Steps[0])
			}
		})
	}
}

// A replacement may read the body its filter was given (SplicedBody over
// it, as clamav's oversize warning is): that body is an earlier
// replacement, and it must stay readable until the result is released.
func TestChainReplacementReadsSupersededBody(t *testing.T) {
	removed := &tbody{data: []byte("Subject: replaced\r\n\r\nbody\r\n")}
	first := &funcFilter{name: "first", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		return Verdict{Action: Replace, Body: removed, KeepsOriginal: true}, nil
	}}
	wrap := &funcFilter{name: "wrap", fn: func(_ context.Context, _ *Envelope, body Body) (Verdict, error) {
		edits := HeaderPieces(body, "X-Warning: yes")
		return Verdict{Action: Replace, Body: SplicedBody(body, edits), Edits: edits, KeepsOriginal: true}, nil
	}}
	c := &Chain{Filters: []Filter{first, wrap}}
	res := c.Run(context.Background(), &Envelope{}, BytesBody([]byte("Subject: x\r\n\r\nbody\r\n")))
	got, err := bodyString(res.Body)
	if err != nil || got != "X-Warning: yes\r\nSubject: replaced\r\n\r\nbody\r\n" {
		t.Fatalf("delivered %q, %v", got, err)
	}
	if err := res.Release(); err != nil {
		t.Fatal(err)
	}
	if n := removed.Removes(); n != 1 {
		t.Fatalf("the superseded replacement was removed %d times, want once, at Release", n)
	}
}
