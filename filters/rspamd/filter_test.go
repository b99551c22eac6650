package rspamd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/tag"
	"github.com/popgate/popgate/internal/mailtext"
)

// reportScanner is a filters.Scanner that answers every scan with one
// report, or an error; wait makes it block until the context ends.
type reportScanner struct {
	rep  *filters.SpamReport
	err  error
	wait bool
}

func (s *reportScanner) Scan(ctx context.Context, body filters.Body) (filters.ScanResult, error) {
	if s.wait {
		<-ctx.Done()
		return filters.ScanResult{}, ctx.Err()
	}
	return filters.ScanResult{Backend: "test", Took: time.Millisecond, Spam: s.rep}, s.err
}
func (s *reportScanner) Backends() []filters.Backend {
	return []filters.Backend{{Address: "test", Up: true}}
}
func (s *reportScanner) Check(context.Context) error { return nil }
func (s *reportScanner) Version() string             { return "" }
func (s *reportScanner) Close() error                { return nil }

func scores(rep *filters.SpamReport) *reportScanner { return &reportScanner{rep: rep} }

func thresholds(fs FilterSettings) FilterSettings {
	fs.Thresholds = defaultThresholds
	return fs
}

func byAction(fs FilterSettings) FilterSettings {
	fs.UseScannerAction = true
	return fs
}

// withSettings is the default settings with the default thresholds,
// changed by f.
func withSettings(f func(*FilterSettings)) FilterSettings {
	fs := thresholds(DefaultFilterSettings())
	fs.Scanner = "rs"
	f(&fs)
	return fs
}

var defaultThresholds = []Threshold{{LevelTag, 5}, {LevelSubject, 8}, {LevelQuarantine, 15}}

const hamText = "Received: from mx.example.com\r\nFrom: a@example.com\r\nTo: b@example.com\r\nSubject: Hello there\r\n\r\nHi.\r\n"

func newFilter(t *testing.T, fs FilterSettings, s filters.Scanner) *Filter {
	t.Helper()
	if fs.Scanner == "" {
		fs.Scanner = "rs"
	}
	f, err := NewFilter("spam", s, fs)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// run filters msg; for a Replace it checks the Edits and returns the
// delivered message.
func run(t *testing.T, f *Filter, msg string) (filters.Verdict, string, error) {
	t.Helper()
	in := filters.BytesBody([]byte(msg))
	v, err := f.Filter(context.Background(), &filters.Envelope{}, in)
	if err != nil || v.Action != filters.Replace {
		if v.Body != nil {
			t.Fatalf("%v verdict with a Body", v.Action)
		}
		return v, "", err
	}
	t.Cleanup(func() { v.Body.Remove() })
	out := read(t, v.Body)
	if v.Edits == nil {
		t.Fatal("Replace without Edits")
	}
	if got := read(t, filters.SplicedBody(in, v.Edits)); got != out {
		t.Fatalf("Edits read\n%q\nthe body is\n%q", got, out)
	}
	return v, out, nil
}

func read(t *testing.T, b filters.Body) string {
	t.Helper()
	r, err := b.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(out)) != b.Size() {
		t.Fatalf("Size() = %d, read %d bytes", b.Size(), len(out))
	}
	return string(out)
}

// added returns what out has in front of msg (out must end with it).
func added(t *testing.T, out, msg string) string {
	t.Helper()
	if !strings.HasSuffix(out, msg) {
		t.Fatalf("the message is not delivered whole after the added fields:\n%q", out)
	}
	return strings.TrimSuffix(out, msg)
}

// Scores around each threshold: the verdict, the fields, the reason.
func TestThresholds(t *testing.T) {
	f := func(score float64) *Filter {
		return newFilter(t, withSettings(func(*FilterSettings) {}), scores(&filters.SpamReport{Score: score, Required: 15, Action: "reject"}))
	}
	tests := []struct {
		score  float64
		action filters.Action
		top    string // the fields in front, for a Replace
		reason string
	}{
		{-3.5, filters.Replace, "X-Spam-Score: -3.50\r\nX-Spam-Status: No, score=-3.50 required=5.00\r\n", "not spam: score -3.50 < 5"},
		{0, filters.Replace, "X-Spam-Score: 0.00\r\nX-Spam-Status: No, score=0.00 required=5.00\r\n", "not spam: score 0.00 < 5"},
		{4.99, filters.Replace, "X-Spam-Score: 4.99\r\nX-Spam-Status: No, score=4.99 required=5.00\r\n", "not spam: score 4.99 < 5"},
		{5, filters.Replace, "X-Spam-Score: 5.00\r\nX-Spam-Status: Yes, score=5.00 required=5.00\r\nX-Spam-Flag: YES\r\n",
			"spam: score 5.00 >= 5 (tag_above): tagged"},
		{7.3, filters.Replace, "X-Spam-Score: 7.30\r\nX-Spam-Status: Yes, score=7.30 required=5.00\r\nX-Spam-Flag: YES\r\n",
			"spam: score 7.30 >= 5 (tag_above): tagged"},
		{8, filters.Replace, "X-Popgate-Original-Subject: Hello there\r\nX-Spam-Score: 8.00\r\nX-Spam-Status: Yes, score=8.00 required=5.00\r\nX-Spam-Flag: YES\r\n",
			"spam: score 8.00 >= 8 (subject_above): tagged, subject prefixed"},
		{14.99, filters.Replace, "X-Popgate-Original-Subject: Hello there\r\nX-Spam-Score: 14.99\r\nX-Spam-Status: Yes, score=14.99 required=5.00\r\nX-Spam-Flag: YES\r\n",
			"spam: score 14.99 >= 8 (subject_above): tagged, subject prefixed"},
		{15, filters.Reject, "", "spam: score 15.00 >= 15 (quarantine_above)"},
		{1e12, filters.Reject, "", "spam: score 1e+12 >= 15 (quarantine_above)"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.score), func(t *testing.T) {
			v, out, err := run(t, f(tt.score), hamText)
			if err != nil {
				t.Fatal(err)
			}
			if v.Action != tt.action || v.Reason != tt.reason {
				t.Errorf("%v %q, want %v %q", v.Action, v.Reason, tt.action, tt.reason)
			}
			if v.Scan == nil || v.Scan.Spam == nil || v.Scan.Spam.Score != tt.score {
				t.Errorf("the verdict does not carry the report: %+v", v.Scan)
			}
			if tt.action != filters.Replace {
				return
			}
			if !v.KeepsOriginal {
				t.Error("an addition (and a kept subject) is not lossless")
			}
			msg := hamText
			if tt.score >= 8 {
				msg = strings.Replace(hamText, "Subject: Hello there", "Subject: [SPAM] Hello there", 1)
			}
			if got := added(t, out, msg); got != tt.top {
				t.Errorf("added\n%s\nwant\n%s", got, tt.top)
			}
		})
	}
}

// Under use_scanner_action, rspamd's action decides, whatever the score.
func TestScannerActions(t *testing.T) {
	tests := []struct {
		action    string
		overrides map[string]Level
		want      Level
	}{
		{"no action", nil, LevelPass},
		{"greylist", nil, LevelTag},
		{"add header", nil, LevelTag},
		{"Add Header", nil, LevelTag},
		{"rewrite subject", nil, LevelSubject},
		{"soft reject", nil, LevelQuarantine},
		{"reject", nil, LevelQuarantine},
		{"greylist", map[string]Level{"greylist": LevelPass}, LevelPass},
		{"reject", map[string]Level{"reject": LevelSubject}, LevelSubject},
	}
	for _, tt := range tests {
		t.Run(tt.action, func(t *testing.T) {
			fs := byAction(DefaultFilterSettings())
			if tt.overrides != nil {
				fs.ScannerActions = map[string]Level{}
				for k, v := range DefaultScannerActions {
					fs.ScannerActions[k] = v
				}
				for k, v := range tt.overrides {
					fs.ScannerActions[k] = v
				}
			}
			f := newFilter(t, fs, scores(&filters.SpamReport{Score: 3, Required: 15, Action: tt.action}))
			v, out, err := run(t, f, hamText)
			if err != nil {
				t.Fatal(err)
			}
			wantReason := fmt.Sprintf("score 3.00, rspamd action %q", strings.ToLower(tt.action))
			if !strings.Contains(v.Reason, wantReason) {
				t.Errorf("reason %q does not say %q", v.Reason, wantReason)
			}
			switch tt.want {
			case LevelQuarantine:
				if v.Action != filters.Reject || !strings.HasPrefix(v.Reason, "spam: ") {
					t.Errorf("%v %q, want a spam Reject", v.Action, v.Reason)
				}
				return
			case LevelPass:
				if !strings.Contains(out, "X-Spam-Status: No, score=3.00 required=15.00\r\n") || strings.Contains(out, "X-Spam-Flag") {
					t.Errorf("not spam, but:\n%s", out)
				}
			default:
				if !strings.Contains(out, "X-Spam-Status: Yes, score=3.00 required=15.00\r\nX-Spam-Flag: YES\r\n") {
					t.Errorf("spam, but:\n%s", out)
				}
			}
			if prefixed := strings.Contains(out, "Subject: [SPAM] Hello"); prefixed != (tt.want == LevelSubject) {
				t.Errorf("subject prefixed %v at %v:\n%s", prefixed, tt.want, out)
			}
		})
	}
}

// Every report the filter cannot act on is an error: the chain applies
// on_error, and a message is never called "not spam" by default.
func TestNoVerdictIsAnError(t *testing.T) {
	nan := 0.0
	nan = nan / nan
	tests := []struct {
		name    string
		fs      FilterSettings
		scanner *reportScanner
		want    string
	}{
		{"scanner error", thresholds(DefaultFilterSettings()), &reportScanner{err: errors.New("connection refused")}, "connection refused"},
		{"no report", thresholds(DefaultFilterSettings()), &reportScanner{}, "no spam report"},
		{"skipped", thresholds(DefaultFilterSettings()), scores(&filters.SpamReport{Skipped: true, Action: "no action"}), "skipped"},
		{"NaN score", thresholds(DefaultFilterSettings()), scores(&filters.SpamReport{Score: nan}), "score NaN"},
		{"unknown action", byAction(DefaultFilterSettings()), scores(&filters.SpamReport{Score: 1, Action: "discard\r\nX: y"}), `unknown action "discard<U+000D><U+000A>X: y"`},
		{"empty action", byAction(DefaultFilterSettings()), scores(&filters.SpamReport{Score: 1}), `unknown action ""`},
		{"timeout", thresholds(DefaultFilterSettings()), &reportScanner{wait: true}, "deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFilter(t, tt.fs, tt.scanner)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			v, err := f.Filter(ctx, &filters.Envelope{}, filters.BytesBody([]byte(hamText)))
			cancel()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("verdict %v %q, error %v; want an error saying %q", v.Action, v.Reason, err, tt.want)
			}
			if v.Body != nil {
				t.Error("an error with a Body")
			}
			// Through a chain: each on_error as the policy says.
			for _, c := range []struct {
				onError filters.OnError
				outcome filters.Outcome
			}{{filters.TempFail, filters.Defer}, {filters.RejectMessage, filters.Refuse}, {filters.PassWithTag, filters.Deliver}} {
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				res := (&filters.Chain{Filters: []filters.Filter{f}, OnError: c.onError}).Run(ctx, &filters.Envelope{}, filters.BytesBody([]byte(hamText)))
				cancel()
				if res.Outcome != c.outcome {
					t.Errorf("on_error %v: outcome %v, want %v", c.onError, res.Outcome, c.outcome)
				}
				if c.outcome == filters.Deliver {
					if got := read(t, res.Body); !strings.HasPrefix(got, "X-Popgate-Warning: not filtered: spam: ") || strings.Contains(got, "X-Spam-Status") {
						t.Errorf("on_error pass delivered\n%s", got)
					}
				}
				res.Release()
			}
		})
	}
}

// The header fields the message already has under popgate's names, and
// those rspamd's milter block names, are removed: the verdict then says
// the change is lossy, and its Edits still state the delivered message.
func TestRemovals(t *testing.T) {
	forged := "X-Spam-Flag: NO\r\nFrom: a@example.com\r\nX-Spam-Status: No,\r\n  score=-100\r\nX-Spam: forged\r\nx-spam-score: -9\r\nSubject: hi\r\nAuthentication-Results: mx.example.com;\r\n\tdkim=pass\r\nContent-Type: text/plain\r\n\r\nX-Spam-Flag: NO (in the body)\r\n"
	rep := &filters.SpamReport{
		Score: 6, Action: "add header",
		AddHeaders:    []filters.HeaderField{{Name: "X-Spam", Value: "Yes"}, {Name: "Authentication-Results", Value: "popgate.test; dkim=none"}},
		RemoveHeaders: []string{"X-Spam", "authentication-results", "Content-Type", "From", "Bad Name", "DKIM-Signature"},
	}
	kept := "From: a@example.com\r\nSubject: hi\r\nContent-Type: text/plain\r\n\r\nX-Spam-Flag: NO (in the body)\r\n"
	top := "X-Spam-Score: 6.00\r\nX-Spam-Status: Yes, score=6.00 required=5.00\r\nX-Spam-Flag: YES\r\nX-Spam: Yes\r\nAuthentication-Results: popgate.test; dkim=none\r\n"
	tests := []struct {
		name string
		fs   FilterSettings
		want string
		lost bool
	}{
		{"removals", withSettings(func(fs *FilterSettings) { fs.RemoveHeaders = true }), top + kept, true},
		{"removals without scanner headers", withSettings(func(fs *FilterSettings) { fs.ScannerHeaders, fs.RemoveHeaders = false, true }),
			"X-Spam-Score: 6.00\r\nX-Spam-Status: Yes, score=6.00 required=5.00\r\nX-Spam-Flag: YES\r\n" +
				"From: a@example.com\r\nX-Spam: forged\r\nSubject: hi\r\nAuthentication-Results: mx.example.com;\r\n\tdkim=pass\r\nContent-Type: text/plain\r\n\r\nX-Spam-Flag: NO (in the body)\r\n", true},
		{"no removals (the default)", withSettings(func(*FilterSettings) {}), top + forged, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, out, err := run(t, newFilter(t, tt.fs, scores(rep)), forged)
			if err != nil {
				t.Fatal(err)
			}
			if out != tt.want {
				t.Errorf("delivered\n%s\nwant\n%s", out, tt.want)
			}
			if v.KeepsOriginal == tt.lost {
				t.Errorf("KeepsOriginal %v for a change that loses bytes: %v", v.KeepsOriginal, tt.lost)
			}
			if tt.lost != strings.Contains(v.Reason, "header field(s) removed") {
				t.Errorf("reason %q", v.Reason)
			}
		})
	}

	// LF line breaks, a field at the very end without one, and a message
	// that is all header.
	for _, msg := range []string{
		"X-Spam-Flag: NO\nSubject: lf\n\nbody\n",
		"Subject: x\r\nX-Spam-Flag: NO",
		"Subject: x\r\nX-Spam-Flag: NO\r\n  folded",
		"X-Spam-Flag: NO\r\n",
		"",
	} {
		v, out, err := run(t, newFilter(t, withSettings(func(fs *FilterSettings) { fs.RemoveHeaders = true }), scores(&filters.SpamReport{Score: 1})), msg)
		if err != nil {
			t.Fatal(err)
		}
		eol := "\r\n"
		if strings.Contains(msg, "lf\n") {
			eol = "\n"
		}
		want := "X-Spam-Score: 1.00" + eol + "X-Spam-Status: No, score=1.00 required=5.00" + eol +
			strings.NewReplacer("X-Spam-Flag: NO\r\n  folded", "", "X-Spam-Flag: NO\r\n", "", "X-Spam-Flag: NO\n", "", "X-Spam-Flag: NO", "").Replace(msg)
		if out != want {
			t.Errorf("%q: delivered %q, want %q", msg, out, want)
		}
		if v.KeepsOriginal != !strings.Contains(msg, "X-Spam-Flag") {
			t.Errorf("%q: KeepsOriginal %v", msg, v.KeepsOriginal)
		}
	}
}

// The subject prefix is tag's: lossless, and tag.Restore gives back the
// message with only the filter's fields in front.
func TestSubjectIsRestorable(t *testing.T) {
	msg := "From: a@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n  aus Berlin\r\nX-Spam-Flag: NO\r\n\r\nbody\r\n"
	f := newFilter(t, withSettings(func(fs *FilterSettings) { fs.RemoveHeaders = false }), scores(&filters.SpamReport{Score: 9}))
	v, out, err := run(t, f, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !v.KeepsOriginal || !strings.Contains(out, "\r\nSubject: [SPAM] =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n  aus Berlin\r\n") {
		t.Fatalf("KeepsOriginal %v:\n%s", v.KeepsOriginal, out)
	}
	var restored bytes.Buffer
	if ok, err := tag.Restore(&restored, strings.NewReader(out)); !ok || err != nil {
		t.Fatalf("Restore: %v %v", ok, err)
	}
	want := "X-Spam-Score: 9.00\r\nX-Spam-Status: Yes, score=9.00 required=5.00\r\nX-Spam-Flag: YES\r\n" + msg
	if restored.String() != want {
		t.Errorf("restored\n%q\nwant\n%q", restored.String(), want)
	}

	// With removals too, and without keeping the original subject: lossy.
	for _, fs := range []FilterSettings{
		withSettings(func(fs *FilterSettings) { fs.RemoveHeaders = true }),
		withSettings(func(fs *FilterSettings) { fs.DropOriginalSubject = true }),
	} {
		v, out, err := run(t, newFilter(t, fs, scores(&filters.SpamReport{Score: 9})), msg)
		if err != nil {
			t.Fatal(err)
		}
		if v.KeepsOriginal || !strings.Contains(out, "Subject: [SPAM] ") {
			t.Errorf("%+v: KeepsOriginal %v\n%s", fs, v.KeepsOriginal, out)
		}
	}

	// A message already prefixed keeps its subject; one without gets one.
	const fields = "X-Spam-Score: 9.00\r\nX-Spam-Status: Yes, score=9.00 required=5.00\r\nX-Spam-Flag: YES\r\n"
	for msg, want := range map[string]string{
		"Subject: [SPAM] again\r\n\r\n": fields + "Subject: [SPAM] again\r\n\r\n",
		"From: a@b\r\n\r\n":             "Subject: [SPAM]\r\n" + fields + "From: a@b\r\n\r\n",
	} {
		f := newFilter(t, withSettings(func(fs *FilterSettings) { fs.SubjectPrefix = "[SPAM]" }), scores(&filters.SpamReport{Score: 9}))
		if v, out, err := run(t, f, msg); err != nil || out != want || !v.KeepsOriginal {
			t.Errorf("%q: delivered %q (%v, KeepsOriginal %v), want %q", msg, out, err, v.KeepsOriginal, want)
		}
	}
}

// X-Spam-Symbols: the strongest first, bounded, names made harmless.
func TestSymbolsHeader(t *testing.T) {
	rep := &filters.SpamReport{Score: 7.3, Symbols: []filters.SpamSymbol{
		{Name: "B_RULE", Score: 2.5}, {Name: "A_RULE", Score: 1}, {Name: "NEG", Score: -0.5}, {Name: "ZERO"}, {Name: "A2", Score: 1},
	}}
	f := newFilter(t, withSettings(func(fs *FilterSettings) { fs.SymbolsHeader = true }), scores(rep))
	_, out, err := run(t, f, hamText)
	if err != nil {
		t.Fatal(err)
	}
	if want := "X-Spam-Symbols: B_RULE(2.50), A2(1.00), A_RULE(1.00), ZERO(0.00), NEG(-0.50)\r\n"; !strings.Contains(out, "\r\nX-Spam-Flag: YES\r\n"+want) {
		t.Errorf("no %q in\n%s", want, out)
	}

	if got := symbolsValue(&filters.SpamReport{}); got != "none" {
		t.Errorf("no symbols: %q", got)
	}
	var many []filters.SpamSymbol
	for i := range 200 {
		many = append(many, filters.SpamSymbol{Name: fmt.Sprintf("SYMBOL_%03d", i), Score: float64(i)})
	}
	v := symbolsValue(&filters.SpamReport{Symbols: many})
	if len(v) > maxSymbolsValue || !strings.HasPrefix(v, "SYMBOL_199(199.00), SYMBOL_198(198.00)") || !strings.HasSuffix(v, ", ...") {
		t.Errorf("200 symbols: %d bytes: %q", len(v), v)
	}
	if v := symbolsValue(&filters.SpamReport{Symbols: []filters.SpamSymbol{{Name: strings.Repeat("X", 5000), Score: 1}}}); len(v) > maxSymbolsValue {
		t.Errorf("a long name: %d bytes", len(v))
	}
	for in, want := range map[string]string{
		"A(9.00), FAKE":    "A_9.00___FAKE",
		"X\r\nBcc: e@vil":  "X_Bcc:_e@vil",
		"\u202eREVERSED":   "REVERSED",
		"caf\u00e9":        "caf?",
		"":                 "?",
		"=?utf-8?q?x?=":    "_?utf-8?q?x?_",
		"SEMI;COLON=EQUAL": "SEMI_COLON_EQUAL",
	} {
		if got := symbolName(in); got != want {
			t.Errorf("symbolName(%q) = %q, want %q", in, got, want)
		}
	}
}

// What rspamd's milter block adds is untrusted text: it cannot break the
// header, add fields of its own through a value, or add the fields that
// carry the message's identity, structure or popgate's verdict.
func TestScannerHeadersInjection(t *testing.T) {
	rep := &filters.SpamReport{Score: 1, AddHeaders: []filters.HeaderField{
		{Name: "X-Ok", Value: "a\r\nBcc: evil@example.com"},
		{Name: "X-Lf", Value: "a\nX-Injected: 1\r\n\r\nbody"},
		{Name: "X-Bidi", Value: "invoice\u202efdp.exe"},
		{Name: "X-Encoded", Value: "=?utf-8?b?QmNjOiBldmlsCg==?= =?utf-8?q?=0D=0AX-Evil:_1?="},
		{Name: "X-Utf8", Value: "Grüße"},
		{Name: "Bad Name", Value: "x"},
		{Name: "Bad:Name", Value: "x"},
		{Name: "Bad\r\nName", Value: "x"},
		{Name: "", Value: "x"},
		{Name: "Subject", Value: "replaced"},
		{Name: "Content-Type", Value: "text/html"},
		{Name: "X-Spam-Status", Value: "No, forged"},
		{Name: "x-popgate-released", Value: "id=1"},
		{Name: "X-Empty", Value: " \r\n "},
		{Name: "X-Long-Word", Value: strings.Repeat("w", 1000)},
		{Name: "X-Long", Value: strings.Repeat("word ", 1000)},
	}}
	f := newFilter(t, withSettings(func(*FilterSettings) {}), scores(rep))
	_, out, err := run(t, f, hamText)
	if err != nil {
		t.Fatal(err)
	}
	top := added(t, out, hamText)
	checkHeaderBlock(t, top, "\r\n")
	var names []string
	for _, line := range strings.SplitAfter(top, "\r\n") {
		if line != "" && line[0] != ' ' {
			names = append(names, line[:strings.IndexByte(line, ':')])
		}
	}
	if got := strings.Join(names, " "); got != "X-Spam-Score X-Spam-Status X-Ok X-Lf X-Bidi X-Encoded X-Utf8 X-Long" {
		t.Errorf("fields added: %s\n%s", got, top)
	}
	for _, want := range []string{
		"X-Ok: a Bcc: evil@example.com\r\n",
		"X-Lf: a X-Injected: 1 body\r\n",
		"X-Bidi: invoice fdp.exe\r\n",
	} {
		if !strings.Contains(top, want) {
			t.Errorf("no %q in\n%s", want, top)
		}
	}
	utf := top[strings.Index(top, "X-Utf8: ")+8:]
	if utf = utf[:strings.Index(utf, "\r\n")]; utf == "Grüße" || mailtext.DecodeWords(utf) != "Grüße" {
		t.Errorf("X-Utf8: %q, want Grüße in encoded words", utf)
	}
	// The encoded words are decoded, cleaned and encoded again: what a
	// reader decodes has no line break.
	enc := top[strings.Index(top, "X-Encoded:"):]
	enc = enc[:strings.Index(enc, "\r\nX-Utf8")]
	if dec := mailtext.DecodeWords(strings.ReplaceAll(enc, "\r\n", "")); strings.ContainsAny(dec, "\r\n") || !strings.Contains(dec, "Bcc: evil X-Evil: 1") {
		t.Errorf("X-Encoded decodes to %q", dec)
	}
	if long := top[strings.Index(top, "X-Long:"):]; len(long) > maxScannerValue+200 {
		t.Errorf("X-Long is %d bytes", len(long))
	}

	// At most maxScannerFields fields and maxScannerBytes bytes.
	var lots []filters.HeaderField
	for i := range 100 {
		lots = append(lots, filters.HeaderField{Name: fmt.Sprintf("X-F%d", i), Value: strings.Repeat("v ", 900)})
	}
	_, out, err = run(t, newFilter(t, withSettings(func(*FilterSettings) {}), scores(&filters.SpamReport{AddHeaders: lots})), hamText)
	if err != nil {
		t.Fatal(err)
	}
	if top := added(t, out, hamText); len(top) > maxScannerBytes+200 || strings.Count(top, "X-F") > maxScannerFields {
		t.Errorf("%d bytes, %d fields added", len(top), strings.Count(top, "X-F"))
	}
}

// checkHeaderBlock checks that top is header fields that cannot be read
// any other way: lines ending in eol of at most 998 bytes, of printable
// ASCII, each a field with a valid name or a continuation of one, none
// empty.
func checkHeaderBlock(t testing.TB, top, eol string) {
	t.Helper()
	if top == "" {
		return
	}
	if !strings.HasSuffix(top, eol) {
		t.Fatalf("the added fields do not end in a line break: %q", top)
	}
	for i, line := range strings.Split(strings.TrimSuffix(top, eol), eol) {
		switch {
		case len(line) > 998:
			t.Fatalf("line %d is %d bytes long", i, len(line))
		case strings.TrimSpace(line) == "":
			t.Fatalf("line %d is empty: %q", i, top)
		case strings.ContainsFunc(line, func(r rune) bool { return r != '\t' && (r < ' ' || r > '~') }):
			t.Fatalf("line %d has a byte that is not printable ASCII: %q", i, line)
		case line[0] == ' ' || line[0] == '\t':
			if i == 0 {
				t.Fatalf("the first line is a continuation: %q", line)
			}
		default:
			c := strings.IndexByte(line, ':')
			if c <= 0 || !mailtext.ValidFieldName(line[:c]) {
				t.Fatalf("line %d is not a field: %q", i, line)
			}
		}
	}
}

// envScanner is a reportScanner that is told about the session.
type envScanner struct {
	reportScanner
	got *filters.Envelope
}

func (s *envScanner) ScanEnvelope(ctx context.Context, env *filters.Envelope, body filters.Body) (filters.ScanResult, error) {
	s.got = env
	return s.Scan(ctx, body)
}

// A scanner that can be told who downloads the message is told.
func TestScannerGetsTheEnvelope(t *testing.T) {
	s := &envScanner{reportScanner: reportScanner{rep: &filters.SpamReport{Score: 1}}}
	f := newFilter(t, withSettings(func(*FilterSettings) {}), s)
	env := &filters.Envelope{User: "alice", SessionID: "s1"}
	if _, err := f.Filter(context.Background(), env, filters.BytesBody([]byte(hamText))); err != nil {
		t.Fatal(err)
	}
	if s.got != env {
		t.Errorf("the scanner was told %+v", s.got)
	}
}

// limitedScanner is a reportScanner with a size limit that counts scans.
type limitedScanner struct {
	reportScanner
	max   int64
	scans int
}

func (s *limitedScanner) MaxSize() int64 { return s.max }
func (s *limitedScanner) Scan(ctx context.Context, body filters.Body) (filters.ScanResult, error) {
	s.scans++
	return s.reportScanner.Scan(ctx, body)
}

// A message over the scanner's max_size is not scanned: the oversize
// setting decides, pass-with-tag by default.
func TestOversize(t *testing.T) {
	crlfMsg, lfMsg := hamText, strings.ReplaceAll(hamText, "\r\n", "\n")
	for _, c := range []struct {
		o      filters.Oversize
		msg    string
		action filters.Action
		reason string
		top    string
	}{
		{DefaultOversize, crlfMsg, filters.Replace, "too large to scan for spam, passed with a warning",
			"X-Popgate-Warning: not scanned for spam: too large (100 bytes > max_size 50)\r\n"},
		{filters.OversizePassWithTag, lfMsg, filters.Replace, "too large to scan for spam, passed with a warning",
			"X-Popgate-Warning: not scanned for spam: too large (94 bytes > max_size 50)\n"},
		{filters.OversizeTempFail, crlfMsg, filters.Retry, "too large to scan for spam", ""},
		{filters.OversizeReject, crlfMsg, filters.Reject, "too large to scan for spam (100 bytes > max_size 50)", ""},
		{filters.OversizeQuarantine, crlfMsg, filters.Reject, "too large to scan for spam (100 bytes > max_size 50)", ""},
	} {
		s := &limitedScanner{reportScanner: reportScanner{rep: &filters.SpamReport{Score: 20}}, max: 50}
		v, out, err := run(t, newFilter(t, withSettings(func(fs *FilterSettings) { fs.Oversize = c.o }), s), c.msg)
		if err != nil || v.Action != c.action || v.Reason != c.reason {
			t.Errorf("%v: %v %q %v", c.o, v.Action, v.Reason, err)
		}
		if s.scans != 0 {
			t.Errorf("%v: a message over max_size was scanned", c.o)
		}
		if c.action == filters.Replace && (out != c.top+c.msg || !v.KeepsOriginal) {
			t.Errorf("%v: delivered %q (KeepsOriginal %v)", c.o, out, v.KeepsOriginal)
		}
	}
	// Up to max_size, the message is scanned.
	s := &limitedScanner{reportScanner: reportScanner{rep: &filters.SpamReport{Score: 20}}, max: int64(len(hamText))}
	if v, _, err := run(t, newFilter(t, withSettings(func(*FilterSettings) {}), s), hamText); err != nil || v.Action != filters.Reject || s.scans != 1 {
		t.Errorf("at max_size: %v %q %v, %d scans", v.Action, v.Reason, err, s.scans)
	}
}

func TestFilterCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := newFilter(t, withSettings(func(*FilterSettings) {}), scores(&filters.SpamReport{Score: 1}))
	if v, err := f.Filter(ctx, &filters.Envelope{}, filters.BytesBody([]byte(hamText))); err == nil {
		t.Errorf("a canceled filter returned %v", v.Action)
	}
}

func TestNewFilterChecks(t *testing.T) {
	s := scores(&filters.SpamReport{})
	for name, fs := range map[string]FilterSettings{
		"nothing":         DefaultFilterSettings(),
		"both":            byAction(thresholds(DefaultFilterSettings())),
		"descending":      withSettings(func(fs *FilterSettings) { fs.Thresholds = []Threshold{{LevelTag, 8}, {LevelSubject, 5}} }),
		"equal":           withSettings(func(fs *FilterSettings) { fs.Thresholds = []Threshold{{LevelTag, 5}, {LevelSubject, 5}} }),
		"levels reversed": withSettings(func(fs *FilterSettings) { fs.Thresholds = []Threshold{{LevelSubject, 5}, {LevelTag, 8}} }),
		"pass threshold":  withSettings(func(fs *FilterSettings) { fs.Thresholds = []Threshold{{LevelPass, 5}} }),
		"actions alone":   withSettings(func(fs *FilterSettings) { fs.ScannerActions = map[string]Level{} }),
		"unknown action": byAction(withSettings(func(fs *FilterSettings) {
			fs.Thresholds, fs.ScannerActions = nil, map[string]Level{"discard": LevelTag}
		})),
		"bad prefix":   withSettings(func(fs *FilterSettings) { fs.SubjectPrefix = "a\r\nb" }),
		"bad oversize": withSettings(func(fs *FilterSettings) { fs.Oversize = 7 }),
	} {
		if _, err := NewFilter("spam", s, fs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := NewFilter("spam", nil, thresholds(DefaultFilterSettings())); err == nil {
		t.Error("no scanner: no error")
	}
}

// FuzzReport: whatever a scanner reports and whatever the message, the
// filter does not panic, the fields it adds are well-formed header
// fields, and its Edits state its Body.
func FuzzReport(f *testing.F) {
	f.Add(7.3, 15.0, "add header", "SYM", 2.5, "X-Spam", "Yes", "X-Spam", true, true, []byte(hamText))
	f.Add(9.0, 15.0, "rewrite subject", "A(1), B", -1.0, "Authentication-Results", "a;\r\n\tb", "From", false, true, []byte("Subject: x\nX-Spam-Flag: NO\n\nbody"))
	f.Add(1e300, -1e300, "REJECT", "\x00", 0.0, "X:Y", "=?utf-8?b?DQo=?=", "x-spam-status", true, false, []byte("\r\n\r\n"))
	f.Add(-0.0, 0.0, "no action", "\u202e", 1e10, "x", "\xff\xfe", "", false, false, []byte(" folded\r\nX-Spam-Score: 1\r\n"))
	f.Fuzz(func(t *testing.T, score, required float64, action, sym string, symScore float64, addName, addValue, remove string, byAct, symbols bool, msg []byte) {
		rep := &filters.SpamReport{
			Score: score, Required: required, Action: action,
			Symbols:       []filters.SpamSymbol{{Name: sym, Score: symScore}, {Name: addValue, Score: score}},
			AddHeaders:    []filters.HeaderField{{Name: addName, Value: addValue}, {Name: "X-Spam", Value: sym}},
			RemoveHeaders: []string{remove, addName},
		}
		fs := DefaultFilterSettings()
		fs.Scanner, fs.SymbolsHeader = "rs", symbols
		if byAct {
			fs.UseScannerAction = true
		} else {
			fs.Thresholds = defaultThresholds
		}
		flt, err := NewFilter("spam", scores(rep), fs)
		if err != nil {
			t.Fatal(err)
		}
		in := filters.BytesBody(msg)
		v, err := flt.Filter(context.Background(), &filters.Envelope{}, in)
		if err != nil || v.Action != filters.Replace {
			if v.Body != nil {
				t.Fatalf("%v verdict (error %v) with a Body", v.Action, err)
			}
			return
		}
		defer v.Body.Remove()
		out := read(t, v.Body)
		if got := read(t, filters.SplicedBody(in, v.Edits)); got != out {
			t.Fatalf("Edits read\n%q\nthe body is\n%q", got, out)
		}
		// What the filter writes in front, at every level it delivers.
		for l := LevelPass; l < LevelQuarantine; l++ {
			checkHeaderBlock(t, string(flt.fields(rep, l, "\r\n")), "\r\n")
		}
	})
}
