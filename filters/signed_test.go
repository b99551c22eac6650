package filters

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/popgate/popgate/internal/dkimtest"
	"github.com/popgate/popgate/internal/mailsig"
	"github.com/popgate/popgate/internal/mimetree"
)

// signedMsg is a multipart message with a text part and an .exe, the
// payload of the signed-mail tests.
const signedMsg = "From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: hello\r\n" +
	"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n" +
	"--b\r\nContent-Type: text/plain\r\n\r\nthe invoice\r\n" +
	"--b\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n" +
	"--b--\r\n"

// exePart is the attachment a strip-like edit replaces.
const exePart = "Content-Type: application/octet-stream; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA"

// Edits of the three kinds that matter for a signature, found by content
// so that they fit any message that has the bytes.
func prependEdit(field string) func(Body) []Piece {
	return func(b Body) []Piece { return []Piece{lit(field), run(0, b.Size())} }
}

func replaceEdit(old, new string) func(Body) []Piece {
	return func(b Body) []Piece {
		s, _ := bodyString(b)
		i := int64(strings.Index(s, old))
		if i < 0 {
			panic(fmt.Sprintf("%q not in the message", old))
		}
		return []Piece{run(0, i), lit(new), rest(i+int64(len(old)), b.Size())}
	}
}

var (
	harmless  = prependEdit("X-Scanned: yes\r\n")
	subjectTo = replaceEdit("Subject: hello", "Subject: [SPAM] hello")
	stripExe  = replaceEdit(exePart, "Content-Type: text/plain\r\n\r\na.exe was removed")
)

// contentEdit is editFilter with the edit found by content; keeps marks
// the change lossless (KeepsOriginal).
func contentEdit(name string, edit func(Body) []Piece, noEdits, keeps bool) Filter {
	return &funcFilter{name: name, fn: func(_ context.Context, _ *Envelope, body Body) (Verdict, error) {
		ps := edit(body)
		data, err := bodyString(SplicedBody(body, ps))
		if err != nil {
			return Verdict{}, err
		}
		v := Verdict{Action: Replace, Body: BytesBody([]byte(data)), KeepsOriginal: keeps, Reason: "edited"}
		if !noEdits {
			v.Edits = ps
		}
		return v, nil
	}}
}

func TestChainSigned(t *testing.T) {
	signer := dkimtest.New(t, "example.com", "sel")
	signed := signer.Sign(t, []byte(signedMsg), []string{"from", "to", "subject", "date"}, true)
	const broken = "X-Popgate-Signature: broken by the gateway (dkim d=example.com)\r\n"
	for _, tc := range []struct {
		name    string
		edit    func(Body) []Piece
		lossy   bool
		mode    Signed
		outcome Outcome
		// top is what the delivered message has above the change ("" and
		// verifies: the change kept the signature).
		top      string
		original bool // the delivered message is the original (plus top)
		verifies bool
		step     string
	}{
		{name: "harmless field", edit: harmless, mode: SignedWithhold, outcome: Deliver, verifies: true, step: "replace edited"},
		{name: "subject, change", edit: subjectTo, mode: SignedChange, outcome: Deliver, top: broken, step: "replace edited (broke signed (dkim d=example.com))"},
		{name: "subject, keep", edit: subjectTo, mode: SignedKeep, outcome: Deliver, original: true, verifies: true,
			top: "X-Popgate-Warning: not changed: f1: signed (dkim d=example.com)\r\n", step: "pass not changed, signed (dkim d=example.com): edited"},
		{name: "subject, withhold", edit: subjectTo, mode: SignedWithhold, outcome: Deliver, step: "reject withheld, signed (dkim d=example.com): edited"},
		{name: "strip, change", edit: stripExe, lossy: true, mode: SignedChange, outcome: Deliver, top: broken, step: "replace edited (broke signed (dkim d=example.com))"},
		{name: "strip, keep", edit: stripExe, lossy: true, mode: SignedKeep, outcome: Deliver, original: true, verifies: true,
			top: "X-Popgate-Warning: not changed: f1: signed (dkim d=example.com)\r\n", step: "pass not changed, signed (dkim d=example.com): edited"},
		{name: "strip, withhold", edit: stripExe, lossy: true, mode: SignedWithhold, outcome: Deliver, step: "reject withheld, signed (dkim d=example.com): edited"},
	} {
		for _, noEdits := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, no edits %v", tc.name, noEdits), func(t *testing.T) {
				q := &memQuarantine{}
				in := &tbody{data: signed}
				c := &Chain{
					Filters:    []Filter{contentEdit("f1", tc.edit, noEdits, !tc.lossy)},
					Signed:     map[string]Signed{"f1": tc.mode},
					Quarantine: q,
					Notice:     notice,
				}
				res := c.Run(context.Background(), nil, in)
				defer res.Release()
				if res.Outcome != tc.outcome {
					t.Fatalf("outcome %v (%s), want %v", res.Outcome, res.Reason, tc.outcome)
				}
				if got := res.Steps[0].Action.String() + " " + res.Steps[0].Reason; got != tc.step {
					t.Errorf("step %q, want %q", got, tc.step)
				}
				got, err := bodyString(res.Body)
				if err != nil {
					t.Fatal(err)
				}
				if tc.mode == SignedWithhold && tc.step[:6] == "reject" {
					if !res.Withheld || len(q.stored) != 1 || q.stored[0] != string(signed) {
						t.Errorf("withheld %v, stored %d", res.Withheld, len(q.stored))
					}
					return
				}
				if !strings.HasPrefix(got, tc.top) {
					t.Errorf("delivered message starts\n%.200q\nwant\n%q", got, tc.top)
				}
				rest := strings.TrimPrefix(got, tc.top)
				if tc.original != (rest == string(signed)) {
					t.Errorf("delivered the original: %v, want %v", rest == string(signed), tc.original)
				}
				if err := dkimtest.Verify([]byte(got), signer); (err == nil) != tc.verifies {
					t.Errorf("verifies: %v, want %v", err, tc.verifies)
				}
				if wantQ := tc.lossy && !tc.original; (len(q.stored) == 1) != wantQ {
					t.Errorf("original in quarantine: %d, want %v", len(q.stored), wantQ)
				}
				checkResultPieces(t, in, res)
				if want := !noEdits || tc.original; res.Reproducible != want {
					t.Errorf("reproducible %v, want %v", res.Reproducible, want)
				}
			})
		}
	}
}

// Each change is judged against the signatures it would break that are
// still intact: a second change that breaks only what the first one broke
// goes through, one that would break another is held to its own setting,
// and the header names every signature broken once.
func TestChainSignedTwoSignatures(t *testing.T) {
	smime := "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=\"s\"\r\n\r\n" +
		"--s\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nMIAG\r\n--s--"
	msg := strings.Replace(signedMsg, "Content-Type: text/plain\r\n\r\nthe invoice", smime, 1)
	signer := dkimtest.New(t, "example.com", "sel")
	signed := signer.Sign(t, []byte(msg), []string{"from", "subject"}, false)

	c := &Chain{
		Filters: []Filter{
			contentEdit("strip", stripExe, false, false),
			contentEdit("spam", subjectTo, false, true),
			contentEdit("smime", replaceEdit("signed text", "changed text"), false, false),
		},
		Signed:     map[string]Signed{"spam": SignedKeep, "smime": SignedKeep},
		Quarantine: &memQuarantine{},
	}
	in := &tbody{data: signed}
	res := c.Run(context.Background(), nil, in)
	defer res.Release()
	got, _ := bodyString(res.Body)
	want := "X-Popgate-Warning: not changed: smime: signed (s/mime)\r\n" +
		"X-Popgate-Signature: broken by the gateway (dkim d=example.com)\r\n"
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "Subject: [SPAM] hello") || !strings.Contains(got, "signed text") {
		t.Errorf("delivered\n%s", got)
	}
	var steps []string
	for _, st := range res.Steps {
		steps = append(steps, st.Filter+" "+st.Action.String()+" "+st.Reason)
	}
	want = "strip replace edited (broke signed (dkim d=example.com)); spam replace edited; " +
		"smime pass not changed, signed (s/mime): edited; quarantine pass q1"
	if got := strings.Join(steps, "; "); got != want {
		t.Errorf("steps\n%s\nwant\n%s", got, want)
	}
	checkResultPieces(t, in, res)
}

// countingBody counts how often the chain's input is opened.
type countingBody struct {
	Body
	mu    sync.Mutex
	opens int
}

func (b *countingBody) Open() (io.ReadCloser, error) {
	b.mu.Lock()
	b.opens++
	b.mu.Unlock()
	return b.Body.Open()
}

// The chain and its filters share one reading of the input's structure.
func TestEnvelopeSignaturesReadOnce(t *testing.T) {
	var infos []*mailsig.Info
	var mu sync.Mutex
	asker := func(name string) Filter {
		return &funcFilter{name: name, fn: func(ctx context.Context, env *Envelope, _ Body) (Verdict, error) {
			info, err := env.Signatures(ctx)
			mu.Lock()
			infos = append(infos, info)
			mu.Unlock()
			return Verdict{Action: Pass}, err
		}}
	}
	in := &countingBody{Body: BytesBody([]byte(signedMsg))}
	c := &Chain{Filters: []Filter{asker("a"), contentEdit("t", harmless, false, true), asker("b")}, Encrypted: EncryptedPassWithTag}
	res := c.Run(context.Background(), nil, in)
	defer res.Release()
	if res.Outcome != Deliver || len(infos) != 2 || infos[0] != infos[1] || infos[0] == nil {
		t.Fatalf("outcome %v, infos %v", res.Outcome, infos)
	}
	if in.opens != 2 { // the structure once, and filter t's reading for its edit
		t.Errorf("input opened %d times", in.opens)
	}
	if _, err := (&Envelope{}).Signatures(context.Background()); err == nil {
		t.Error("Signatures outside a run")
	}
	var nilEnv *Envelope
	if _, err := nilEnv.Signatures(context.Background()); err == nil {
		t.Error("Signatures of a nil envelope")
	}
}

func TestChainEncrypted(t *testing.T) {
	enc := strings.Replace(signedMsg, "Content-Type: application/octet-stream; name=\"a.exe\"",
		"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"", 1)
	for _, tc := range []struct {
		mode     Encrypted
		msg      string
		outcome  Outcome
		withheld bool
		top      string
		ran      bool
	}{
		{mode: EncryptedPassWithTag, msg: enc, outcome: Deliver, top: "X-Popgate-Warning: not scanned: encrypted (s/mime)\r\n", ran: true},
		{mode: EncryptedTempFail, msg: enc, outcome: Defer},
		{mode: EncryptedReject, msg: enc, outcome: Deliver, withheld: true},
		{mode: EncryptedIgnore, msg: enc, outcome: Deliver, ran: true},
		{mode: EncryptedReject, msg: signedMsg, outcome: Deliver, ran: true},
	} {
		t.Run(fmt.Sprintf("%v %v", tc.mode, tc.msg == enc), func(t *testing.T) {
			ran := false
			scan := &funcFilter{name: "av", fn: func(context.Context, *Envelope, Body) (Verdict, error) {
				ran = true
				return Verdict{Action: Pass}, nil
			}}
			q := &memQuarantine{}
			c := &Chain{Filters: []Filter{scan}, Encrypted: tc.mode, Quarantine: q, Notice: notice}
			in := &tbody{data: []byte(tc.msg)}
			res := c.Run(context.Background(), nil, in)
			defer res.Release()
			if res.Outcome != tc.outcome || res.Withheld != tc.withheld || ran != tc.ran {
				t.Fatalf("outcome %v withheld %v ran %v (%s)", res.Outcome, res.Withheld, ran, res.Reason)
			}
			if res.Outcome == Deliver && !tc.withheld {
				got, _ := bodyString(res.Body)
				if got != tc.top+tc.msg {
					t.Errorf("delivered\n%.120q\nwant on top %q", got, tc.top)
				}
				checkResultPieces(t, in, res)
				if res.FailedOpen {
					t.Error("an encrypted message counts as a failure")
				}
			}
			if tc.withheld && (len(q.stored) != 1 || res.Steps[0].Filter != EncryptedStep || res.Steps[0].Action != Reject) {
				t.Errorf("stored %d, steps %v", len(q.stored), stepActions(res.Steps))
			}
		})
	}
	// A released copy passes the encrypted step that held its original.
	c := &Chain{Filters: []Filter{verdictFilter("av", func() Verdict { return Verdict{Action: Pass} })}, Encrypted: EncryptedReject,
		Released: recognizer{id: "q1", names: []string{EncryptedStep}}}
	res := c.Run(context.Background(), nil, &tbody{data: []byte(enc)})
	defer res.Release()
	if res.Outcome != Deliver || res.Withheld {
		t.Errorf("released copy: %v withheld %v", res.Outcome, res.Withheld)
	}
}

// A message whose structure cannot be read follows on_error, before any
// filter runs.
func TestChainEncryptedReadError(t *testing.T) {
	in := &failingBody{data: []byte(signedMsg)}
	c := &Chain{Filters: []Filter{verdictFilter("av", func() Verdict { return Verdict{Action: Pass} })}, Encrypted: EncryptedPassWithTag}
	res := c.Run(context.Background(), nil, in)
	defer res.Release()
	if res.Outcome != Defer || len(res.Steps) != 1 || res.Steps[0].Filter != EncryptedStep || res.Steps[0].Err == nil {
		t.Errorf("outcome %v, steps %v", res.Outcome, stepActions(res.Steps))
	}
}

// failingBody's readers fail after the first bytes.
type failingBody struct{ data []byte }

func (b *failingBody) Open() (io.ReadCloser, error) {
	return io.NopCloser(io.MultiReader(bytes.NewReader(b.data[:10]), errReader{})), nil
}
func (b *failingBody) Size() int64   { return int64(len(b.data)) }
func (b *failingBody) Remove() error { return nil }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk gone") }

func TestParseSignedAndEncrypted(t *testing.T) {
	for _, s := range []string{"change", "withhold", "keep"} {
		if m, err := ParseSigned(s); err != nil || m.String() != s {
			t.Errorf("%s: %v %v", s, m, err)
		}
	}
	for _, s := range []string{"pass-with-tag", "tempfail", "reject"} {
		if m, err := ParseEncrypted(s); err != nil || m.String() != s {
			t.Errorf("%s: %v %v", s, m, err)
		}
	}
	for _, s := range []string{"", "Change", "ignore", "pass"} {
		if _, err := ParseSigned(s); err == nil {
			t.Errorf("signed %q accepted", s)
		}
		if _, err := ParseEncrypted(s); err == nil {
			t.Errorf("encrypted %q accepted", s)
		}
	}
}

// Filters asking for the input's MIME structure share one parse, the one
// the signatures came from; a replacement body is parsed on its own.
func TestEnvelopeMIMESharedForInput(t *testing.T) {
	var roots []*mimetree.Part
	var mu sync.Mutex
	asker := func(name string) Filter {
		return &funcFilter{name: name, fn: func(ctx context.Context, env *Envelope, b Body) (Verdict, error) {
			root, err := env.MIME(ctx, b)
			mu.Lock()
			roots = append(roots, root)
			mu.Unlock()
			return Verdict{Action: Pass}, err
		}}
	}
	in := &countingBody{Body: BytesBody([]byte(signedMsg))}
	c := &Chain{Filters: []Filter{asker("a"), asker("b")}, Encrypted: EncryptedPassWithTag}
	res := c.Run(context.Background(), nil, in)
	defer res.Release()
	if res.Outcome != Deliver || len(roots) != 2 || roots[0] == nil || roots[0] != roots[1] {
		t.Fatalf("outcome %v, roots %v", res.Outcome, roots)
	}
	if in.opens != 1 {
		t.Errorf("input opened %d times for two filters", in.opens)
	}
	other, err := (&Envelope{}).MIME(context.Background(), BytesBody([]byte(signedMsg)))
	if err != nil || other == nil || other == roots[0] || other.ContentType != roots[0].ContentType {
		t.Errorf("another body: %v %v", other, err)
	}
}
