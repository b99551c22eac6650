package filters

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/popgate/popgate/internal/mailsig"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// Signed is what the chain does when a filter's change would break a
// signature of the message (DKIM, S/MIME, PGP): a filter block's `signed`
// attribute.
type Signed int

const (
	// SignedChange keeps the change and says so on the message:
	// X-Popgate-Signature: broken by the gateway (dkim d=example.com). It is
	// the default: what a filter removes or marks (an .exe, a spam tag)
	// matters more than a signature the gateway has read, and the field
	// tells the user why the client finds it broken.
	SignedChange Signed = iota
	// SignedWithhold refuses the message instead of changing it: its
	// original goes to quarantine and the user gets a notice, as for a
	// Reject of the filter.
	SignedWithhold
	// SignedKeep drops the change: the message goes on as the filter got
	// it, with a warning header field (Chain.ErrorHeader) naming the
	// filter whose change was left out.
	SignedKeep
)

// ParseSigned parses a filter's signed value: "change", "withhold" or
// "keep".
func ParseSigned(s string) (Signed, error) {
	for m := SignedChange; m <= SignedKeep; m++ {
		if m.String() == s {
			return m, nil
		}
	}
	return SignedChange, fmt.Errorf("invalid signed %q: want \"change\", \"withhold\" or \"keep\"", s)
}

func (m Signed) String() string {
	switch m {
	case SignedChange:
		return "change"
	case SignedWithhold:
		return "withhold"
	case SignedKeep:
		return "keep"
	}
	return fmt.Sprintf("Signed(%d)", int(m))
}

// Encrypted is what a chain whose filters read message content does with
// a message that has encrypted parts, which none of them can read: a
// policy's `encrypted` attribute.
type Encrypted int

const (
	// EncryptedIgnore: the chain does not look (its filters read headers
	// only, or it was built without the setting).
	EncryptedIgnore Encrypted = iota
	// EncryptedPassWithTag runs the filters on what they can read and
	// delivers the message with a warning header field (Chain.ErrorHeader)
	// saying it was not scanned. It is the policy default.
	EncryptedPassWithTag
	// EncryptedTempFail withholds the message for now (-ERR [SYS/TEMP]);
	// it stays on the server.
	EncryptedTempFail
	// EncryptedReject refuses it: quarantine and a notice, as a Reject.
	EncryptedReject
)

// ParseEncrypted parses a policy's encrypted value: "pass-with-tag",
// "tempfail" or "reject".
func ParseEncrypted(s string) (Encrypted, error) {
	for m := EncryptedPassWithTag; m <= EncryptedReject; m++ {
		if m.String() == s {
			return m, nil
		}
	}
	return EncryptedIgnore, fmt.Errorf("invalid encrypted %q: want \"pass-with-tag\", \"tempfail\" or \"reject\"", s)
}

func (m Encrypted) String() string {
	switch m {
	case EncryptedIgnore:
		return "ignore"
	case EncryptedPassWithTag:
		return "pass-with-tag"
	case EncryptedTempFail:
		return "tempfail"
	case EncryptedReject:
		return "reject"
	}
	return fmt.Sprintf("Encrypted(%d)", int(m))
}

// SignatureHeader is the header field on a message whose signature a
// change broke under SignedChange.
const SignatureHeader = "X-Popgate-Signature"

// EncryptedStep is the name of the chain's step for the encrypted setting
// (in Result.Steps, quarantine records and a released copy's mark).
const EncryptedStep = "encrypted"

// errNoInput is Envelope.Signatures outside a chain run.
var errNoInput = errors.New("the message's signatures are known only within a chain run")

// Signatures returns what the message the chain was given holds in
// signatures and encrypted parts (internal/mailsig). It is read once per
// run, on first use, whoever asks first: the chain (when a filter changes
// the message, and for the encrypted setting) or a filter. It describes
// the chain's input, not the body a filter gets (an earlier filter may
// have changed that), and a filter must not modify it.
//
// The Envelope is where it lives because it is about the run, as Steps
// are: a Body is a container that filters wrap and replace, and a cache on
// it would be lost with every replacement or would have to follow it.
func (e *Envelope) Signatures(ctx context.Context) (*mailsig.Info, error) {
	if e == nil || e.input == nil {
		return nil, errNoInput
	}
	return e.input.signatures(ctx)
}

// MIME returns the MIME structure of body (with mimetree's default limits:
// a filter checks its own tighter ones on the tree). For the chain's input
// it is the tree read once per run together with the signatures, shared
// by every filter that asks; for another body (a replacement an earlier
// filter made) it is parsed on each call. A structure beyond the limits
// gives mimetree's *LimitError.
func (e *Envelope) MIME(ctx context.Context, body Body) (*mimetree.Part, error) {
	if e != nil && e.input != nil && e.input.body == body {
		info, err := e.input.signatures(ctx)
		if err != nil {
			return nil, err
		}
		if info.Partial != nil {
			return nil, info.Partial
		}
		return info.Root, nil
	}
	r, err := body.Open()
	if err != nil {
		return nil, fmt.Errorf("mime: %w", err)
	}
	defer r.Close()
	return mimetree.Parse(mailtext.NewReader(ctx, r), body.Size(), mimetree.Limits{}, nil)
}

// input is what a chain run reads of its input at most once, shared by the
// envelope copies of the run.
type input struct {
	body Body

	once sync.Once
	info *mailsig.Info
	err  error

	sumOnce sync.Once
	sum     [sha256.Size]byte // of the body, past the header
	sumErr  error
}

func (in *input) signatures(ctx context.Context) (*mailsig.Info, error) {
	in.once.Do(func() {
		r, err := in.body.Open()
		if err != nil {
			in.err = fmt.Errorf("signatures: %w", err)
			return
		}
		defer r.Close()
		if in.info, err = mailsig.Detect(ctx, r, in.body.Size()); err != nil {
			in.err = fmt.Errorf("signatures: %w", err)
		}
	})
	return in.info, in.err
}

// bodySum is the SHA-256 of the input's body (from bodyStart).
func (in *input) bodySum(ctx context.Context, bodyStart int64) ([sha256.Size]byte, error) {
	in.sumOnce.Do(func() { in.sum, in.sumErr = bodySum(ctx, in.body, bodyStart) })
	return in.sum, in.sumErr
}

// bodySum is the SHA-256 of b from offset start.
func bodySum(ctx context.Context, b Body, start int64) ([sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	r, err := b.Open()
	if err != nil {
		return sum, err
	}
	defer r.Close()
	cr := mailtext.NewReader(ctx, r)
	if _, err := io.CopyN(io.Discard, cr, start); err != nil {
		return sum, fmt.Errorf("reading the body: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, cr); err != nil {
		return sum, fmt.Errorf("reading the body: %w", err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// signatures is what one run knows of the signatures of its input (which
// are still intact) and the header lines it has for the delivered message.
type signatures struct {
	intact []bool   // by index in the input's mailsig.Info.Signatures; nil until read
	broken []string // the signatures changes broke (SignedChange), named
	notes  []string // header lines for the message whatever is delivered
}

// signed applies filter name's signed setting to its Replace v of cur
// (which has form cf against in): when the change would break a signature
// of the input that is still intact, v becomes a Pass (keep) or a Reject
// (withhold), or stays and the broken signatures are noted (change). The
// Body of a verdict that is no longer a Replace is the chain's to remove,
// as a Body on a Pass or Reject always is.
func (c *Chain) signed(ctx context.Context, env *Envelope, name string, v Verdict, cur Body, cf form, st *signatures) (Verdict, error) {
	info, err := env.Signatures(ctx)
	if err != nil {
		return v, err
	}
	if len(info.Signatures) == 0 {
		return v, nil
	}
	if st.intact == nil {
		st.intact = make([]bool, len(info.Signatures))
		for i := range st.intact {
			st.intact[i] = true
		}
	}
	broken, err := breaks(ctx, env.input, info, st.intact, v.Body, cf.apply(v, cur))
	if err != nil || len(broken) == 0 {
		return v, err
	}
	var names []string
	for _, i := range broken {
		if n := info.Signatures[i].String(); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	what := "signed (" + strings.Join(names, ", ") + ")"
	switch c.Signed[name] {
	case SignedKeep:
		st.notes = append(st.notes, c.errorHeader()+": not changed: "+mailtext.HeaderText(name, 64)+": "+what)
		return Verdict{Action: Pass, Body: v.Body, Reason: "not changed, " + what + ": " + v.Reason}, nil
	case SignedWithhold:
		return Verdict{Action: Reject, Body: v.Body, Reason: "withheld, " + what + ": " + v.Reason}, nil
	}
	for _, i := range broken {
		st.intact[i] = false
	}
	for _, n := range names {
		if !slices.Contains(st.broken, n) {
			st.broken = append(st.broken, n)
		}
	}
	v.Reason += " (broke " + what + ")"
	return v, nil
}

// breaks returns the signatures among those still intact that the
// changed message out (of form f against the input) no longer keeps: its
// header must keep the fields each one signs, and its body the bytes each
// one covers. The form says where those bytes are; without one, the body
// is compared with the input's by hash, and a signed part inside counts
// as kept only when the whole body is.
func breaks(ctx context.Context, in *input, info *mailsig.Info, intact []bool, out Body, f form) ([]int, error) {
	r, err := out.Open()
	if err != nil {
		return nil, fmt.Errorf("signatures: %w", err)
	}
	fields, bodyStart, err := mailsig.ReadHeader(mailtext.NewReader(ctx, r))
	r.Close()
	if err != nil && !errors.Is(err, mailsig.ErrHeaderTooLarge) {
		return nil, fmt.Errorf("signatures: reading the changed header: %w", err)
	}
	headerOK := err == nil // a header too large to read keeps nothing
	var sameBody *bool     // without a form: whether the bodies are equal
	var broken []int
	for i := range info.Signatures {
		if !intact[i] {
			continue
		}
		s := &info.Signatures[i]
		kept := headerOK && info.HeaderIntact(s, fields)
		switch {
		case !kept:
		case f.known && f.pieces != nil:
			kept = keeps(f.pieces, s, bodyStart)
		default:
			if sameBody == nil {
				eq, err := equalBodies(ctx, in, info.BodyStart, out, bodyStart)
				if err != nil {
					return nil, fmt.Errorf("signatures: %w", err)
				}
				sameBody = &eq
			}
			kept = *sameBody
		}
		if !kept {
			broken = append(broken, i)
		}
	}
	return broken, nil
}

// keeps reports whether the message pieces state (against the input) holds
// the bytes signature s covers: for a signature of the body, a body (from
// bodyStart) that is exactly those bytes of the input; for a signed part,
// those bytes in one run, wherever it is.
func keeps(pieces []Piece, s *mailsig.Signature, bodyStart int64) bool {
	if s.Body {
		var pos int64 // where the current piece starts in the message
		var tail []Piece
		for _, p := range pieces {
			switch end := pos + p.size(); {
			case end <= bodyStart:
			case pos >= bodyStart:
				tail = append(tail, p)
			case p.Data != nil:
				tail = append(tail, Piece{Data: p.Data[bodyStart-pos:]})
			default:
				tail = append(tail, Piece{Off: p.Off + bodyStart - pos, Len: end - bodyStart})
			}
			pos += p.size()
		}
		if s.Len == 0 {
			return PiecesSize(tail) == 0
		}
		return len(tail) == 1 && tail[0].Data == nil && tail[0].Off == s.Off && tail[0].Len == s.Len
	}
	for _, p := range pieces {
		if p.Data == nil && p.Off <= s.Off && s.Off+s.Len <= p.Off+p.Len {
			return true
		}
	}
	return false
}

// equalBodies reports whether out's body (from outStart) is the input's
// (from inStart), by SHA-256.
func equalBodies(ctx context.Context, in *input, inStart int64, out Body, outStart int64) (bool, error) {
	if in.body.Size()-inStart != out.Size()-outStart {
		return false, nil
	}
	a, err := in.bodySum(ctx, inStart)
	if err != nil {
		return false, err
	}
	b, err := bodySum(ctx, out, outStart)
	if err != nil {
		return false, err
	}
	return a == b, nil
}

// encrypted applies c.Encrypted to the input: a non-nil result ends the
// run (a deferral, a refusal, or a failure to read the message); else the
// filters run, and a message with encrypted parts gets a note under
// EncryptedPassWithTag.
func (c *Chain) encrypted(ctx context.Context, env *Envelope, in Body, res *Result) *Result {
	info, err := env.Signatures(ctx)
	if err != nil {
		res.Steps = append(res.Steps, Step{Filter: EncryptedStep, Err: err})
		return c.settle(ctx, env, in, c.fail(res, EncryptedStep, err, in, in, inputForm), false)
	}
	if len(info.Encrypted) == 0 {
		return nil
	}
	var kinds []string
	for _, k := range info.Encrypted {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	what := "encrypted (" + strings.Join(kinds, ", ") + ")"
	step := Step{Filter: EncryptedStep, Action: Pass, Reason: "not scanned: " + what}
	switch c.Encrypted {
	case EncryptedTempFail:
		step.Action = Retry
		res.Steps = append(res.Steps, step)
		res.Outcome, res.Body, res.Reason = Defer, nil, "deferred: "+what+" cannot be scanned"
		return res
	case EncryptedReject:
		step.Action = Reject
		res.Steps = append(res.Steps, step)
		res.Outcome, res.Body, res.Reason = Refuse, nil, "rejected: "+what+" cannot be scanned"
		return c.settle(ctx, env, in, res, false)
	}
	res.Steps = append(res.Steps, step)
	res.sig.notes = append(res.sig.notes, c.errorHeader()+": not scanned: "+what)
	return nil
}
