package filters

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/popgate/popgate/internal/mailtext"
)

// OnError is what the chain does with a message when a filter cannot decide
// (it returns an error, panics, returns an invalid verdict, or the context
// ends first).
type OnError int

const (
	// TempFail withholds the message with a temporary error
	// (-ERR [SYS/TEMP]): the client keeps it on the server and retries.
	// It is the default.
	TempFail OnError = iota
	// PassWithTag fails open for the failing filter only: the rest of the
	// chain still runs, and the message is delivered with a warning header
	// field (Chain.ErrorHeader) naming what was not filtered. When the
	// context has ended, the remaining filters are skipped too.
	PassWithTag
	// RejectMessage withholds the message as if a filter had rejected it.
	RejectMessage
)

// ParseOnError parses a policy's on_error value: "tempfail", "pass" (or
// "pass-with-tag") or "reject". Anything else, "" included, is an error.
func ParseOnError(s string) (OnError, error) {
	switch s {
	case "tempfail":
		return TempFail, nil
	case "pass", "pass-with-tag":
		return PassWithTag, nil
	case "reject":
		return RejectMessage, nil
	}
	return TempFail, fmt.Errorf("invalid on_error %q: want \"tempfail\", \"pass\" or \"reject\"", s)
}

// String returns the policy spelling of o ("tempfail", "pass-with-tag",
// "reject"); ParseOnError accepts it.
func (o OnError) String() string {
	switch o {
	case TempFail:
		return "tempfail"
	case PassWithTag:
		return "pass-with-tag"
	case RejectMessage:
		return "reject"
	}
	return fmt.Sprintf("OnError(%d)", int(o))
}

// Outcome is what the proxy does with a message after the chain ran.
type Outcome int

const (
	// Deliver sends Result.Body to the client.
	Deliver Outcome = iota
	// Refuse withholds the message permanently: -ERR [SYS/PERM] or a notice.
	Refuse
	// Defer withholds the message temporarily (-ERR [SYS/TEMP]): the client
	// keeps it on the server and retries later.
	Defer
)

func (o Outcome) String() string {
	switch o {
	case Deliver:
		return "deliver"
	case Refuse:
		return "refuse"
	case Defer:
		return "defer"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Chain runs filters in order over one message and applies OnError when one
// of them cannot decide. A Chain is immutable once in use and safe for
// concurrent Runs.
type Chain struct {
	Filters []Filter
	// OnError applies when a filter fails; the zero value is TempFail.
	OnError OnError
	// Spool holds the message the proxy reads from the upstream for the
	// chain; nil means a Spool with the defaults. (Filters get the spool for
	// their replacement bodies when they are built: BuildContext.Spool.)
	Spool *Spool
	// ErrorHeader is the header field name of the PassWithTag warning;
	// "" or an invalid field name means DefaultErrorHeader.
	ErrorHeader string
	// Quarantine keeps the original of every message the chain refuses or
	// changes with a lossy Replace, before anything else is delivered
	// (docs/ARCHITECTURE.md §4, invariant 4). Nil means no quarantine: a refused
	// message then gets -ERR [SYS/PERM] and stays on the server, and a
	// lossy change counts as a failure (OnError), since delivering it would
	// let the client delete the only copy of the original.
	Quarantine Quarantine
	// MaxSize, when positive, is the largest message the filters get; a
	// larger one is not filtered at all and OnError applies to it (a
	// policy's max_size).
	MaxSize int64
	// Notice renders the message delivered in place of a refused one once
	// its original is in quarantine (Result.QuarantineID is set). Nil means
	// refused messages get -ERR [SYS/PERM].
	Notice func(ctx context.Context, env *Envelope, original Body, res *Result) (Body, error)
	// Released, when set, recognises a released copy of a quarantined
	// message: the filters it names held the original and are skipped
	// (their step is a Pass saying so); the others run as usual.
	Released Recognizer
	// Signed says, by filter name, what becomes of a change of that
	// filter that would break a signature of the message (see Signed); a
	// filter it does not name gets SignedChange.
	Signed map[string]Signed
	// Encrypted is what happens to a message with encrypted parts before
	// the filters run (see Encrypted); its step is EncryptedStep.
	Encrypted Encrypted
}

// Recognizer vouches for released copies (filters/quarantine/release).
// An error or an empty list means the message is filtered as any other.
type Recognizer interface {
	Released(ctx context.Context, env *Envelope, in Body) (id string, filters []string, err error)
}

// Quarantine is a durable store of originals.
type Quarantine interface {
	// Store returns only once original is durable (written and synced),
	// with the id it is stored under; an error means it is not stored.
	Store(ctx context.Context, env *Envelope, original Body, res *Result) (id string, err error)
}

// ErrTooLarge is the failure of a message over the chain's MaxSize.
var ErrTooLarge = errors.New("message too large to filter")

var errNoQuarantine = errors.New("the message would be changed, but the policy has no quarantine to keep its original")

// Empty reports whether the chain has nothing to do (nil or no filters): the
// proxy then streams messages without spooling them.
func (c *Chain) Empty() bool { return c == nil || len(c.Filters) == 0 }

// Step records what one filter did.
type Step struct {
	Filter string
	// Action is the filter's verdict; meaningful only when Err is nil.
	// A Replace whose Body is the body the filter was given is recorded as
	// Pass.
	Action Action
	Reason string
	// Lossy marks a Replace that drops bytes of the message it was given
	// (Verdict.KeepsOriginal false): it is why the original went to
	// quarantine, and, like a Reject, it held the message back (the
	// quarantine record names such filters; a released copy passes them).
	Lossy bool
	// Err is why the filter could not decide: its own error, a *PanicError,
	// an invalid verdict, or the context's error.
	Err      error
	Duration time.Duration
	// Scan is the scanner's result the filter reported with its verdict
	// (Verdict.Scan), nil when it reported none.
	Scan *ScanResult
}

// Result is the outcome of Chain.Run. The caller must call Release once the
// Body has been delivered (or at once for Refuse and Defer).
type Result struct {
	Outcome Outcome
	// Body is what to deliver when Outcome is Deliver, else nil. It is the
	// input Body itself (the same value) when no filter changed the message.
	Body Body
	// Reason says why the message was refused or deferred, or why it was
	// delivered unfiltered (FailedOpen). It comes from filters and errors
	// as is: clean it before sending it anywhere but a log.
	Reason string
	// Steps has one entry per filter that ran or was due to run, in order.
	Steps []Step
	// FailedOpen is set when a filter failed and the message is delivered
	// anyway (PassWithTag), with a warning header.
	FailedOpen bool
	// QuarantineID is where the original was stored, if it was.
	QuarantineID string
	// Withheld is set when Body is a notice delivered in place of a refused
	// message.
	Withheld bool
	// Pieces states the delivered Body as pieces of the chain's input (see
	// Piece) when Reproducible is set: nil when Body is the input itself,
	// else the composition of the Edits of every Replace of the run, in
	// order (a later filter's pieces refer to an earlier one's output;
	// these refer to the input), with the PassWithTag warning header on
	// top when there is one. It is nil whenever Reproducible is not set.
	Pieces []Piece
	// Reproducible is set when the delivered form is known: Outcome is
	// Deliver, Body is not a notice (Withheld; the caller reads a notice
	// itself), and either no filter changed the message or every Replace
	// that did gave valid Verdict.Edits. SplicedBody(input, Pieces) then
	// reads byte for byte as Body.
	Reproducible bool

	owned []Body // bodies the chain created and Release removes
	errs  []error
	sig   signatures
}

// Release removes every Body the chain created or took over (replacements,
// the PassWithTag wrapper), never the input Body, which stays its owner's.
// It reports any error from removing them, including errors from replaced
// bodies removed during Run. Release is idempotent; a nil Result is fine.
func (r *Result) Release() error {
	if r == nil {
		return nil
	}
	for i := len(r.owned) - 1; i >= 0; i-- {
		if err := r.owned[i].Remove(); err != nil {
			r.errs = append(r.errs, err)
		}
	}
	r.owned = nil
	err := errors.Join(r.errs...)
	r.errs = nil
	return err
}

// PanicError is the error a panicking filter is turned into.
type PanicError struct {
	Filter string
	Value  any    // the value passed to panic
	Stack  []byte // the goroutine's stack at the panic, for the log
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("filter %s panicked: %v", e.Filter, e.Value)
}

var (
	errReplaceWithoutBody = errors.New("invalid verdict: Replace without a Body")
	errUnknownAction      = errors.New("invalid verdict: unknown action")
)

// Run passes in through the filters in order. Each filter gets the current
// body: in, or the latest replacement. Replace makes Verdict.Body the current
// body (the chain owns it from then on, and removes a superseded replacement
// with the result: a later replacement may read it); Reject stops the chain with Outcome Refuse. When a filter cannot
// decide (error, panic, Replace without a Body, unknown action) or ctx ends,
// c.OnError applies (see OnError). A filter that does not return once
// ctx has ended is abandoned: Run returns, and any replacement Body the filter
// returns later is removed.
//
// Run never removes in; the caller does, after Result.Release.
func (c *Chain) Run(ctx context.Context, env *Envelope, in Body) *Result {
	res := c.run(ctx, env, in)
	if res.Outcome != Deliver || res.Withheld {
		res.Pieces, res.Reproducible = nil, false
	}
	return res
}

func (c *Chain) run(ctx context.Context, env *Envelope, in Body) *Result {
	res := &Result{Outcome: Deliver, Body: in, Reproducible: true}
	if c.Empty() {
		return res
	}
	if c.MaxSize > 0 && in.Size() > c.MaxSize {
		err := fmt.Errorf("%w: %d bytes, max_size %d", ErrTooLarge, in.Size(), c.MaxSize)
		res.Steps = append(res.Steps, Step{Filter: "max_size", Err: err})
		return c.settle(ctx, env, in, c.fail(res, "max_size", err, in, in, inputForm), false)
	}
	cur := in
	cf := inputForm      // cur as pieces of in
	lossy := false       // a Replace dropped bytes of the original
	var skipped []string // filters that failed under PassWithTag
	env = withInput(env, in)
	passes, releasedID := c.released(ctx, env, in)
	if c.Encrypted != EncryptedIgnore && !passes[EncryptedStep] {
		if r := c.encrypted(ctx, env, in, res); r != nil {
			return r
		}
	}
	// dispose removes b when it is a body the chain does not otherwise
	// know: not the input and not the current body.
	dispose := func(b Body) {
		if b == nil || sameBody(b, in) || sameBody(b, cur) {
			return
		}
		if err := b.Remove(); err != nil {
			res.errs = append(res.errs, err)
		}
	}
	for i, f := range c.Filters {
		name := filterName(f, i)
		if err := ctx.Err(); err != nil {
			res.Steps = append(res.Steps, Step{Filter: name, Err: err})
			if c.OnError == PassWithTag {
				// Out of time: the rest cannot run either.
				skipped = append(skipped, mailtext.HeaderText(name, 64)+": "+shortReason(err))
				res.Reason = strings.TrimPrefix(res.Reason+"; "+name+": "+err.Error(), "; ")
				break
			}
			return c.settle(ctx, env, in, c.fail(res, name, err, in, cur, cf), lossy)
		}
		if passes[name] {
			res.Steps = append(res.Steps, Step{Filter: name, Action: Pass, Reason: "released from quarantine " + releasedID})
			continue
		}
		start := time.Now()
		v, err := callFilter(ctx, f, name, withSteps(env, res.Steps), in, cur)
		step := Step{Filter: name, Action: v.Action, Reason: v.Reason, Err: err, Duration: time.Since(start), Scan: v.Scan}
		if err == nil {
			switch {
			case v.Action == Replace && v.Body == nil:
				err = errReplaceWithoutBody
			case v.Action < Pass || v.Action > Retry:
				err = fmt.Errorf("%w %d", errUnknownAction, int(v.Action))
			case v.Action == Replace && !sameBody(v.Body, cur):
				v, err = c.signed(ctx, env, name, v, cur, cf, &res.sig)
				step.Action, step.Reason = v.Action, v.Reason
			}
			step.Err = err
		}
		if err != nil {
			dispose(v.Body)
			res.Steps = append(res.Steps, step)
			if c.OnError == PassWithTag {
				// Fail open for this filter only: the rest of the chain
				// still runs (a dead scanner must not let an .exe through).
				skipped = append(skipped, mailtext.HeaderText(name, 64)+": "+shortReason(err))
				res.Reason = strings.TrimPrefix(res.Reason+"; "+name+": "+err.Error(), "; ")
				continue
			}
			return c.settle(ctx, env, in, c.fail(res, name, err, in, cur, cf), lossy)
		}
		switch v.Action {
		case Pass:
			dispose(v.Body) // a Body on Pass is a filter bug; do not leak it
		case Reject, Retry:
			// The message is withheld: for good (quarantine, notice) or
			// for now (the client retries; nothing to keep).
			dispose(v.Body)
			res.Steps = append(res.Steps, step)
			res.Outcome, res.Body, res.Reason = Refuse, nil, v.Reason
			verb := "rejected"
			if v.Action == Retry {
				res.Outcome, verb = Defer, "deferred"
			}
			if res.Reason == "" {
				res.Reason = verb + " by filter " + name
			}
			res.own(in, cur)
			if res.Outcome == Defer {
				return res
			}
			return c.settle(ctx, env, in, res, lossy)
		case Replace:
			if sameBody(v.Body, cur) {
				step.Action = Pass
				break
			}
			cf = cf.apply(v, cur)
			old := cur
			cur = v.Body
			step.Lossy = !v.KeepsOriginal
			lossy = lossy || step.Lossy
			// A superseded replacement is removed with the result, not
			// now: the new body may read it (filters.SplicedBody over the
			// body a filter was given, as a clamav oversize warning is).
			res.own(in, old)
		}
		res.Steps = append(res.Steps, step)
	}
	res.own(in, cur)
	failed := ""
	if len(skipped) > 0 {
		failed = "not filtered: " + strings.Join(skipped, "; ")
	}
	c.deliver(res, in, cur, cf, failed)
	return c.settle(ctx, env, in, res, lossy)
}

// released asks c.Released whether in is a released copy, and returns the
// filters it passes.
func (c *Chain) released(ctx context.Context, env *Envelope, in Body) (map[string]bool, string) {
	if c.Released == nil {
		return nil, ""
	}
	id, names, err := c.Released.Released(ctx, env, in)
	if err != nil || len(names) == 0 {
		return nil, ""
	}
	passes := make(map[string]bool, len(names))
	for _, n := range names {
		passes[n] = true
	}
	return passes, id
}

func (c *Chain) errorHeader() string {
	if mailtext.ValidFieldName(c.ErrorHeader) {
		return c.ErrorHeader
	}
	return DefaultErrorHeader
}

// settle puts the original in quarantine where the outcome needs it there
// (a refusal, or delivery of a lossy change) and turns a refusal into a
// notice when the chain has one. Nothing but the original is delivered
// unless the original is durable first.
func (c *Chain) settle(ctx context.Context, env *Envelope, in Body, res *Result, lossy bool) *Result {
	if res.Outcome != Refuse && !(res.Outcome == Deliver && lossy) {
		return res
	}
	if c.Quarantine == nil {
		if res.Outcome == Refuse {
			return res // -ERR [SYS/PERM]: the original stays on the server
		}
		return c.quarantineFailed(res, errNoQuarantine, in)
	}
	start := time.Now()
	id, err := c.Quarantine.Store(ctx, env, in, res)
	res.Steps = append(res.Steps, Step{Filter: "quarantine", Action: Pass, Reason: id, Err: err, Duration: time.Since(start)})
	if err != nil {
		return c.quarantineFailed(res, err, in)
	}
	res.QuarantineID = id
	if res.Outcome != Refuse || c.Notice == nil {
		return res
	}
	notice, err := c.Notice(ctx, env, in, res)
	if err != nil {
		// The original is safe in quarantine and on the server; the
		// client gets -ERR [SYS/PERM] instead of the notice.
		res.errs = append(res.errs, fmt.Errorf("notice: %w", err))
		return res
	}
	res.owned = append(res.owned, notice)
	res.Outcome, res.Body, res.Withheld = Deliver, notice, true
	return res
}

// quarantineFailed applies OnError when the original could not be stored.
// A refused message is never delivered: it is deferred, or refused without
// a notice. A change is dropped and OnError applies to the original.
func (c *Chain) quarantineFailed(res *Result, err error, in Body) *Result {
	if res.Outcome == Refuse {
		res.Reason += "; quarantine: " + err.Error()
		if c.OnError != RejectMessage {
			res.Outcome = Defer
		}
		return res
	}
	return c.fail(res, "quarantine", err, in, in, inputForm)
}

// own makes the result own cur unless it is the input.
func (r *Result) own(in, cur Body) {
	if !sameBody(cur, in) {
		r.owned = append(r.owned, cur)
	}
}

// fail applies c.OnError after filter name failed with err; cur is the body
// the filter was given, cf its form.
func (c *Chain) fail(res *Result, name string, err error, in, cur Body, cf form) *Result {
	res.own(in, cur)
	res.Reason = name + ": " + err.Error()
	switch c.OnError {
	case PassWithTag:
		res.Outcome = Deliver
		c.deliver(res, in, cur, cf, "not filtered: "+mailtext.HeaderText(name, 64)+": "+shortReason(err))
	case RejectMessage:
		res.Outcome, res.Body = Refuse, nil
	default: // TempFail, and any unknown value: never call the message clean
		res.Outcome, res.Body = Defer, nil
	}
	return res
}

// deliver makes the result deliver cur, of form cf, with the header
// fields the run has for it on top: the PassWithTag warning when failed is
// not "" (FailedOpen), the run's notes (encrypted parts, changes left out
// for a signature), and, when cur is a change of the input, the signatures
// it broke.
func (c *Chain) deliver(res *Result, in, cur Body, cf form, failed string) {
	var lines []string
	if failed != "" {
		lines = append(lines, c.errorHeader()+": "+failed)
	}
	lines = append(lines, res.sig.notes...)
	if len(res.sig.broken) > 0 && !sameBody(cur, in) {
		lines = append(lines, SignatureHeader+": broken by the gateway ("+strings.Join(res.sig.broken, ", ")+")")
	}
	if len(lines) == 0 {
		res.Body = cur
		res.setForm(in, cf)
		return
	}
	hp := HeaderPieces(cur, strings.Join(lines, "\n"))
	w := SplicedBody(cur, hp)
	res.owned = append(res.owned, w)
	res.Body, res.FailedOpen = w, failed != ""
	res.setForm(in, cf.then(hp, cur.Size()))
}

// form is what the chain knows of a body as pieces of its input.
type form struct {
	pieces []Piece // nil: the input itself
	known  bool
}

var inputForm = form{known: true}

// apply returns the form of v.Body, the replacement of cur (of form f):
// unknown unless v has Edits that fit both bodies.
func (f form) apply(v Verdict, cur Body) form {
	if v.Edits == nil || PiecesSize(v.Edits) != v.Body.Size() || checkPieces(v.Edits, cur.Size()) != nil {
		return form{}
	}
	return f.then(v.Edits, cur.Size())
}

// then returns the form of the body that edits states against a body of
// form f and size bytes.
func (f form) then(edits []Piece, size int64) form {
	if !f.known {
		return form{}
	}
	base := f.pieces
	if base == nil {
		base = []Piece{{Off: 0, Len: size}}
	}
	ps, err := ComposePieces(base, edits)
	if err != nil {
		return form{}
	}
	return form{pieces: ps, known: true}
}

// setForm records the form of the result's Body.
func (r *Result) setForm(in Body, f form) {
	switch {
	case sameBody(r.Body, in):
		r.Pieces, r.Reproducible = nil, true
	case f.known && f.pieces != nil:
		r.Pieces, r.Reproducible = f.pieces, true
	default:
		r.Pieces, r.Reproducible = nil, false
	}
}

// shortReason is the reason shown in the PassWithTag header, which every
// recipient can read: a word, never internals such as scanner addresses or
// panic values (the log has the whole error).
func shortReason(err error) string {
	var pe *PanicError
	switch {
	case errors.As(err, &pe):
		return "internal error"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrTooLarge):
		return "too large"
	}
	return "error"
}

type callResult struct {
	v   Verdict
	err error
}

// callFilter runs f, turning a panic into a *PanicError: an Inline
// filter in this goroutine, another in its own, and gives up waiting for
// that one when ctx ends. An abandoned filter's late replacement Body is
// removed unless it is in or cur.
func callFilter(ctx context.Context, f Filter, name string, env *Envelope, in, cur Body) (Verdict, error) {
	call := func() (r callResult) {
		defer func() {
			if p := recover(); p != nil {
				r = callResult{err: &PanicError{Filter: name, Value: p, Stack: debug.Stack()}}
			}
		}()
		r.v, r.err = f.Filter(ctx, env, cur)
		return r
	}
	if _, ok := f.(Inline); ok {
		r := call()
		return r.v, r.err
	}
	ch := make(chan callResult, 1)
	go func() { ch <- call() }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
	}
	select {
	case r := <-ch: // it did return in time after all
		return r.v, r.err
	default:
	}
	go func() {
		r := <-ch
		if b := r.v.Body; b != nil && !sameBody(b, in) && !sameBody(b, cur) {
			_ = b.Remove() // nobody is left to report to
		}
	}()
	return Verdict{}, fmt.Errorf("abandoned: no verdict after the context ended: %w", ctx.Err())
}

// filterName is f.Name(), made safe against nil filters, panics and "".
func filterName(f Filter, i int) (name string) {
	defer func() {
		if recover() != nil || name == "" {
			name = fmt.Sprintf("#%d", i+1)
		}
	}()
	return f.Name()
}

// sameBody reports whether a and b are the same Body value, without
// panicking on Body implementations that are not comparable.
func sameBody(a, b Body) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// withInput returns a copy of env for one run over in: its copies share
// what the run reads of in once (Envelope.Signatures).
func withInput(env *Envelope, in Body) *Envelope {
	e := Envelope{}
	if env != nil {
		e = *env
	}
	e.input = &input{body: in}
	return &e
}

// withSteps returns a copy of env that carries the steps so far: each
// filter gets its own, since an abandoned filter may still be reading it.
func withSteps(env *Envelope, steps []Step) *Envelope {
	if env == nil {
		return &Envelope{Steps: slices.Clone(steps)}
	}
	e := *env
	e.Steps = slices.Clone(steps)
	return &e
}
