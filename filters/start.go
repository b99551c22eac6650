package filters

import (
	"context"
	"io"
)

// Starter is a filter that can begin on the chain's input while the proxy
// still receives it, so that its verdict is ready soon after the last
// byte: clamav streams the message to clamd as it arrives.
type Starter interface {
	Filter
	// Start begins on the message r yields as it arrives. r ends with
	// io.EOF once the message is whole and with an error when it is cut
	// short or dropped: the work must then give no verdict. What Start
	// returns is the filter's to pick up in its Filter call on that message
	// (Envelope.Started); the filter decides there whether it can use it.
	// nil means it began nothing (its settings do not scan the message as
	// one stream).
	Start(ctx context.Context, r io.Reader) any
}

// Started is a Starter's work on a message that was still arriving (Chain.Start).
type Started struct {
	filter Filter
	w      *SpoolWriter // the body it was begun on is what w finished
	work   any
}

// Start begins the work of the chain's first filter on the message w is
// receiving, when that filter is a Starter: only the first filter surely
// gets the chain's input as it arrived. The proxy sets the result as the
// Envelope's Started for the run over the body w finishes. It returns nil
// when there is nothing to start. A message the chain then does not filter
// (a deferral, an abort, a message served otherwise) only wastes the work;
// w's Abort ends it.
func (c *Chain) Start(ctx context.Context, w *SpoolWriter) *Started {
	if c.Empty() {
		return nil
	}
	f := c.Filters[0]
	st, ok := f.(Starter)
	if !ok {
		return nil
	}
	work := st.Start(ctx, w.Follow())
	if work == nil {
		return nil
	}
	return &Started{filter: f, w: w, work: work}
}

// Started returns the work filter f began (Chain.Start) on the message
// body is, when body is the chain's input: the body the SpoolWriter the
// work followed finished; else nil.
func (e *Envelope) Started(f Filter, body Body) any {
	if e == nil || e.started == nil || e.input == nil || !sameBody(e.input.body, body) ||
		e.started.w.body == nil || !sameBody(e.started.w.body, body) || !sameFilter(e.started.filter, f) {
		return nil
	}
	return e.started.work
}

// WithStarted returns a copy of env that carries st (Chain.Start) to the
// chain run over the message st was begun on.
func WithStarted(env *Envelope, st *Started) *Envelope {
	e := Envelope{}
	if env != nil {
		e = *env
	}
	e.started = st
	return &e
}

// sameFilter reports whether a and b are the same filter, without
// panicking on filters that are not comparable.
func sameFilter(a, b Filter) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
