package filters

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// memQuarantine records what it stores, and when, relative to deliveries.
type memQuarantine struct {
	mu     sync.Mutex
	stored []string
	err    error
}

func (q *memQuarantine) Store(_ context.Context, _ *Envelope, original Body, _ *Result) (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return "", q.err
	}
	s, err := bodyString(original)
	if err != nil {
		return "", err
	}
	q.stored = append(q.stored, s)
	return "q1", nil
}

func verdictFilter(name string, v func() Verdict) Filter {
	return &funcFilter{name: name, fn: func(context.Context, *Envelope, Body) (Verdict, error) { return v(), nil }}
}

func notice(_ context.Context, _ *Envelope, _ Body, res *Result) (Body, error) {
	return BytesBody([]byte("withheld, see " + res.QuarantineID)), nil
}

func TestChainSettle(t *testing.T) {
	strip := verdictFilter("strip", func() Verdict {
		return Verdict{Action: Replace, Body: BytesBody([]byte("stripped"))}
	})
	tag := verdictFilter("tag", func() Verdict {
		return Verdict{Action: Replace, Body: BytesBody([]byte("X: y\r\noriginal")), Edits: []Piece{{Data: []byte("X: y\r\n")}, {Off: 0, Len: 8}}, KeepsOriginal: true}
	})
	virus := verdictFilter("av", func() Verdict { return Verdict{Action: Reject, Reason: "virus: Eicar"} })
	tooBig := verdictFilter("av", func() Verdict { return Verdict{Action: Retry, Reason: "too large to scan"} })
	broken := &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		return Verdict{}, errors.New("clamd down")
	}}
	full := errors.New("disk full")

	for _, tc := range []struct {
		name       string
		filters    []Filter
		quarantine *memQuarantine // nil: none configured
		notice     bool
		onError    OnError
		outcome    Outcome
		body       string // delivered body
		stored     bool   // the original is in quarantine
		withheld   bool
	}{
		{"lossless change needs no quarantine", []Filter{tag}, nil, false, TempFail, Deliver, "X: y\r\noriginal", false, false},
		{"lossy change is quarantined first", []Filter{strip}, &memQuarantine{}, false, TempFail, Deliver, "stripped", true, false},
		{"lossy change without quarantine defers", []Filter{strip}, nil, false, TempFail, Defer, "", false, false},
		{"lossy change without quarantine, pass: the original with a warning", []Filter{strip}, nil, false, PassWithTag, Deliver,
			"X-Popgate-Warning: not filtered: quarantine: error\r\noriginal", false, false},
		{"quarantine failure defers the change", []Filter{strip, tag}, &memQuarantine{err: full}, false, TempFail, Defer, "", false, false},
		{"reject gets a notice once quarantined", []Filter{tag, virus}, &memQuarantine{}, true, TempFail, Deliver, "withheld, see q1", true, true},
		{"reject without notice template", []Filter{virus}, &memQuarantine{}, false, TempFail, Refuse, "", true, false},
		{"reject without quarantine stays on the server", []Filter{virus}, nil, true, TempFail, Refuse, "", false, false},
		{"reject, quarantine fails: deferred, never delivered", []Filter{virus}, &memQuarantine{err: full}, true, PassWithTag, Defer, "", false, false},
		{"reject, quarantine fails, on_error reject: refused", []Filter{virus}, &memQuarantine{err: full}, true, RejectMessage, Refuse, "", false, false},
		{"retry defers, nothing quarantined", []Filter{strip, tooBig}, &memQuarantine{}, true, PassWithTag, Defer, "", false, false},
		{"failure after a lossy change, pass: quarantined first", []Filter{strip, broken}, &memQuarantine{}, false, PassWithTag, Deliver,
			"X-Popgate-Warning: not filtered: av: error\r\nstripped", true, false},
		{"pass fails open for the failing filter only: strip still runs", []Filter{broken, strip}, &memQuarantine{}, false, PassWithTag, Deliver,
			"X-Popgate-Warning: not filtered: av: error\r\nstripped", true, false},
		{"failure with on_error reject gets a notice", []Filter{broken}, &memQuarantine{}, true, RejectMessage, Deliver, "withheld, see q1", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Chain{Filters: tc.filters, OnError: tc.onError}
			if tc.quarantine != nil {
				c.Quarantine = tc.quarantine
			}
			if tc.notice {
				c.Notice = notice
			}
			in := BytesBody([]byte("original"))
			res := c.Run(context.Background(), &Envelope{}, in)
			defer res.Release()
			if res.Outcome != tc.outcome {
				t.Fatalf("outcome %v (%s), want %v", res.Outcome, res.Reason, tc.outcome)
			}
			checkResultPieces(t, in, res)
			if tc.outcome == Deliver {
				got, err := bodyString(res.Body)
				if err != nil || got != tc.body {
					t.Fatalf("delivered %q (%v), want %q", got, err, tc.body)
				}
			}
			stored := tc.quarantine != nil && len(tc.quarantine.stored) == 1 && tc.quarantine.stored[0] == "original"
			if stored != tc.stored || (res.QuarantineID != "") != tc.stored || res.Withheld != tc.withheld {
				t.Fatalf("stored=%v id=%q withheld=%v, want stored=%v withheld=%v", stored, res.QuarantineID, res.Withheld, tc.stored, tc.withheld)
			}
			if tc.stored && !strings.Contains(stepNames(res.Steps), "quarantine") {
				t.Fatalf("no quarantine step in %v", stepNames(res.Steps))
			}
		})
	}
}

func stepNames(steps []Step) string {
	var names []string
	for _, s := range steps {
		names = append(names, s.Filter)
	}
	return strings.Join(names, ",")
}

// A message over the chain's MaxSize reaches no filter; OnError decides.
func TestChainMaxSize(t *testing.T) {
	var ran bool
	f := &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		ran = true
		return Verdict{Action: Pass}, nil
	}}
	for _, tc := range []struct {
		mode    OnError
		size    int
		outcome Outcome
		body    string
	}{
		{TempFail, 9, Defer, ""},
		{RejectMessage, 9, Refuse, ""},
		{PassWithTag, 9, Deliver, "X-Popgate-Warning: not filtered: max_size: too large\r\n123456789"},
		{TempFail, 8, Deliver, "12345678"}, // at the limit: filtered
	} {
		ran = false
		c := &Chain{Filters: []Filter{f}, OnError: tc.mode, MaxSize: 8}
		in := BytesBody([]byte("123456789"[:tc.size]))
		res := c.Run(context.Background(), &Envelope{}, in)
		if res.Outcome != tc.outcome || ran != (tc.size <= 8) {
			t.Fatalf("%v, %d bytes: outcome %v, filter ran %v", tc.mode, tc.size, res.Outcome, ran)
		}
		if res.Reproducible != (tc.outcome == Deliver) {
			t.Fatalf("%v, %d bytes: Reproducible %v", tc.mode, tc.size, res.Reproducible)
		}
		checkResultPieces(t, in, res)
		if tc.body != "" {
			if got, _ := bodyString(res.Body); got != tc.body {
				t.Fatalf("delivered %q", got)
			}
		}
		res.Release()
	}
}

// Step.Lossy marks the Replaces that dropped bytes: what the quarantine
// record names as having held the message. A lossless Replace, a Replace
// that returns its own input (recorded as Pass) and a Reject are not lossy.
func TestStepLossy(t *testing.T) {
	strip := verdictFilter("strip", func() Verdict {
		return Verdict{Action: Replace, Body: BytesBody([]byte("stripped"))}
	})
	tag := verdictFilter("tag", func() Verdict {
		return Verdict{Action: Replace, Body: BytesBody([]byte("X: y\r\noriginal")), KeepsOriginal: true}
	})
	same := &funcFilter{name: "same", fn: func(_ context.Context, _ *Envelope, b Body) (Verdict, error) {
		return Verdict{Action: Replace, Body: b}, nil
	}}
	virus := verdictFilter("av", func() Verdict { return Verdict{Action: Reject, Reason: "virus"} })
	c := &Chain{Filters: []Filter{tag, same, strip, virus}, Quarantine: &memQuarantine{}}
	res := c.Run(context.Background(), &Envelope{}, BytesBody([]byte("original")))
	defer res.Release()
	var got []string
	for _, s := range res.Steps {
		got = append(got, s.Filter+"="+s.Action.String()+map[bool]string{true: "/lossy"}[s.Lossy])
	}
	want := "tag=replace,same=pass,strip=replace/lossy,av=reject,quarantine=pass"
	if strings.Join(got, ",") != want {
		t.Errorf("steps %s, want %s", strings.Join(got, ","), want)
	}
}
