package tag

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
	"testing"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
)

func mustNew(t *testing.T, cfg Config) *Filter {
	t.Helper()
	f, err := New("stamp", cfg, "test")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func run(t *testing.T, f *Filter, msg string) (filters.Verdict, string) {
	t.Helper()
	in := filters.BytesBody([]byte(msg))
	v, err := f.Filter(context.Background(), &filters.Envelope{}, in)
	if err != nil {
		t.Fatalf("Filter: %v", err)
	}
	if v.Action == filters.Pass {
		if v.Body != nil {
			t.Fatal("Pass with a Body")
		}
		return v, msg
	}
	if v.Action != filters.Replace || v.Body == nil {
		t.Fatalf("verdict %v with body %v", v.Action, v.Body)
	}
	t.Cleanup(func() { v.Body.Remove() })
	out := read(t, v.Body)
	checkEdits(t, in, v, out)
	return v, out
}

// checkEdits checks that a Replace states its Body as Edits of the message
// it was given, and that they read byte for byte as the Body (out).
func checkEdits(t *testing.T, in filters.Body, v filters.Verdict, out string) {
	t.Helper()
	if v.Edits == nil {
		t.Fatalf("Replace without Edits")
	}
	if got := filters.PiecesSize(v.Edits); got != int64(len(out)) {
		t.Fatalf("Edits of %d bytes for a body of %d", got, len(out))
	}
	spliced := read(t, filters.SplicedBody(in, v.Edits))
	if spliced != out {
		t.Fatalf("Edits %v read\n%q\nthe body is\n%q", v.Edits, spliced, out)
	}
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

const body = "\r\nHello,\r\nSubject: not a header\r\n.\r\nbye\r\n"

func TestFilter(t *testing.T) {
	stamp := []Field{{"X-Popgate-Scanned", "yes"}}
	tests := []struct {
		name     string
		cfg      Config
		in       string
		want     string // "" means Pass
		lossy    bool
		subject  string // the decoded Subject of the result, when not ""
		restored string // what Restore gives back, when it restores
	}{
		{
			name: "headers only",
			cfg:  Config{Headers: []Field{{"X-Popgate-Scanned", "yes"}, {"X-Popgate-Filter", "stamp v1"}}},
			in:   "From: a@example.org\r\nSubject: Hi\r\n" + body,
			want: "X-Popgate-Scanned: yes\r\nX-Popgate-Filter: stamp v1\r\nFrom: a@example.org\r\nSubject: Hi\r\n" + body,
		},
		{
			name: "non-ASCII header value is encoded",
			cfg:  Config{Headers: []Field{{"X-Popgate-Note", "geprüft"}}},
			in:   "Subject: Hi\r\n" + body,
			want: "X-Popgate-Note: =?utf-8?q?gepr=C3=BCft?=\r\nSubject: Hi\r\n" + body,
		},
		{
			name: "long header value is folded",
			cfg:  Config{Headers: []Field{{"X-Popgate-Note", strings.Repeat("word ", 20) + "end"}}},
			in:   "Subject: Hi\r\n" + body,
			want: "X-Popgate-Note: word word word word word word word word word word word word\r\n word word word word word word word word end\r\nSubject: Hi\r\n" + body,
		},
		{
			name:     "ASCII prefix",
			cfg:      Config{Headers: stamp, SubjectPrefix: "[SCANNED]"},
			in:       "From: a@example.org\r\nSubject: Hello there\r\nTo: b@example.org\r\n" + body,
			want:     "X-Popgate-Original-Subject: Hello there\r\nX-Popgate-Scanned: yes\r\nFrom: a@example.org\r\nSubject: [SCANNED] Hello there\r\nTo: b@example.org\r\n" + body,
			subject:  "[SCANNED] Hello there",
			restored: "X-Popgate-Scanned: yes\r\nFrom: a@example.org\r\nSubject: Hello there\r\nTo: b@example.org\r\n" + body,
		},
		{
			name:    "prefix given with spaces",
			cfg:     Config{SubjectPrefix: " [SCANNED] "},
			in:      "Subject: Hello\r\n" + body,
			want:    "X-Popgate-Original-Subject: Hello\r\nSubject: [SCANNED] Hello\r\n" + body,
			subject: "[SCANNED] Hello",
		},
		{
			name:    "UTF-8 prefix before plain subject",
			cfg:     Config{SubjectPrefix: "[GEPRÜFT]"},
			in:      "Subject: Hello\r\n" + body,
			want:    "X-Popgate-Original-Subject: Hello\r\nSubject: =?utf-8?q?[GEPR=C3=9CFT]?= Hello\r\n" + body,
			subject: "[GEPRÜFT] Hello",
		},
		{
			name:    "UTF-8 prefix before encoded subject keeps the space",
			cfg:     Config{SubjectPrefix: "[GEPRÜFT]"},
			in:      "Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\n" + body,
			want:    "X-Popgate-Original-Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nSubject: =?utf-8?q?[GEPR=C3=9CFT]_?= =?iso-8859-1?q?Gr=FC=DFe?=\r\n" + body,
			subject: "[GEPRÜFT] Grüße",
		},
		{
			name:    "ASCII prefix before encoded subject",
			cfg:     Config{SubjectPrefix: "[SCANNED]"},
			in:      "Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n" + body,
			want:    "X-Popgate-Original-Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\nSubject: [SCANNED] =?utf-8?b?R3LDvMOfZQ==?=\r\n" + body,
			subject: "[SCANNED] Grüße",
		},
		{
			name:     "folded subject keeps its folding",
			cfg:      Config{SubjectPrefix: "[SCANNED]"},
			in:       "Subject: a subject that\r\n\tgoes on\r\n and on\r\nX-Other: 1\r\n" + body,
			want:     "X-Popgate-Original-Subject: a subject that\r\n\tgoes on\r\n and on\r\nSubject: [SCANNED] a subject that\r\n\tgoes on\r\n and on\r\nX-Other: 1\r\n" + body,
			subject:  "[SCANNED] a subject that goes on and on",
			restored: "Subject: a subject that\r\n\tgoes on\r\n and on\r\nX-Other: 1\r\n" + body,
		},
		{
			name:    "subject folded right after the colon",
			cfg:     Config{SubjectPrefix: "[SCANNED]"},
			in:      "Subject:\r\n =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" + body,
			want:    "X-Popgate-Original-Subject:\r\n =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nSubject:\r\n [SCANNED] =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" + body,
			subject: "[SCANNED] Grüße",
		},
		{
			name:    "long first line is folded after the prefix",
			cfg:     Config{SubjectPrefix: "[SCANNED]"},
			in:      "Subject: " + strings.Repeat("x", 70) + "\r\n" + body,
			want:    "X-Popgate-Original-Subject: " + strings.Repeat("x", 70) + "\r\nSubject: [SCANNED]\r\n " + strings.Repeat("x", 70) + "\r\n" + body,
			subject: "[SCANNED] " + strings.Repeat("x", 70),
		},
		{
			name:    "lower-case name and obsolete space before the colon",
			cfg:     Config{SubjectPrefix: "[SCANNED]"},
			in:      "subject : Hi\r\n" + body,
			want:    "X-Popgate-Original-Subject: Hi\r\nsubject : [SCANNED] Hi\r\n" + body,
			subject: "",
		},
		{
			name:    "empty subject",
			cfg:     Config{SubjectPrefix: "[SCANNED]"},
			in:      "Subject:\r\nFrom: a@example.org\r\n" + body,
			want:    "X-Popgate-Original-Subject:\r\nSubject: [SCANNED]\r\nFrom: a@example.org\r\n" + body,
			subject: "[SCANNED]",
		},
		{
			name:     "missing subject gets one in front",
			cfg:      Config{Headers: stamp, SubjectPrefix: "[SCANNED]"},
			in:       "From: a@example.org\r\n" + body,
			want:     "X-Popgate-Scanned: yes\r\nSubject: [SCANNED]\r\nFrom: a@example.org\r\n" + body,
			subject:  "[SCANNED]",
			restored: "X-Popgate-Scanned: yes\r\nSubject: [SCANNED]\r\nFrom: a@example.org\r\n" + body,
		},
		{
			name:    "missing UTF-8 subject is encoded",
			cfg:     Config{SubjectPrefix: "[GEPRÜFT]"},
			in:      "From: a@example.org\r\n" + body,
			want:    "Subject: =?utf-8?q?[GEPR=C3=9CFT]?=\r\nFrom: a@example.org\r\n" + body,
			subject: "[GEPRÜFT]",
		},
		{
			name: "already prefixed, no headers: Pass",
			cfg:  Config{SubjectPrefix: "[SCANNED]"},
			in:   "Subject: [SCANNED] Hi\r\n" + body,
		},
		{
			name: "already prefixed in an encoded word",
			cfg:  Config{Headers: stamp, SubjectPrefix: "[GEPRÜFT]"},
			in:   "Subject: =?utf-8?q?[GEPR=C3=9CFT]_Hi?=\r\n" + body,
			want: "X-Popgate-Scanned: yes\r\nSubject: =?utf-8?q?[GEPR=C3=9CFT]_Hi?=\r\n" + body,
		},
		{
			name: "only the first Subject field changes",
			cfg:  Config{SubjectPrefix: "[S]"},
			in:   "Subject: one\r\nSubject: two\r\n" + body,
			want: "X-Popgate-Original-Subject: one\r\nSubject: [S] one\r\nSubject: two\r\n" + body,
		},
		{
			name:     "LF-only message",
			cfg:      Config{Headers: stamp, SubjectPrefix: "[SCANNED]"},
			in:       "From: a@example.org\nSubject: Hi\n there\n\nbody\n",
			want:     "X-Popgate-Original-Subject: Hi\n there\nX-Popgate-Scanned: yes\nFrom: a@example.org\nSubject: [SCANNED] Hi\n there\n\nbody\n",
			subject:  "[SCANNED] Hi there",
			restored: "X-Popgate-Scanned: yes\nFrom: a@example.org\nSubject: Hi\n there\n\nbody\n",
		},
		{
			name: "LF-only message without subject",
			cfg:  Config{Headers: stamp, SubjectPrefix: "[SCANNED]"},
			in:   "From: a@example.org\n\nbody\n",
			want: "X-Popgate-Scanned: yes\nSubject: [SCANNED]\nFrom: a@example.org\n\nbody\n",
		},
		{
			name: "Subject in the body is not a header",
			cfg:  Config{SubjectPrefix: "[SCANNED]"},
			in:   "From: a@example.org\r\n\r\nSubject: no\r\n",
			want: "Subject: [SCANNED]\r\nFrom: a@example.org\r\n\r\nSubject: no\r\n",
		},
		{
			name: "malformed line ends the header",
			cfg:  Config{SubjectPrefix: "[SCANNED]"},
			in:   "From: a@example.org\r\nnot a header\r\nSubject: no\r\n",
			want: "Subject: [SCANNED]\r\nFrom: a@example.org\r\nnot a header\r\nSubject: no\r\n",
		},
		{
			name: "empty message",
			cfg:  Config{Headers: stamp},
			in:   "",
			want: "X-Popgate-Scanned: yes\r\n",
		},
		{
			name:  "subject at the end without a line break is lossy",
			cfg:   Config{SubjectPrefix: "[SCANNED]"},
			in:    "From: a@example.org\r\nSubject: Hi",
			want:  "From: a@example.org\r\nSubject: [SCANNED] Hi",
			lossy: true,
		},
		{
			name:  "keep_original_subject = false is lossy",
			cfg:   Config{SubjectPrefix: "[SCANNED]", DropOriginalSubject: true},
			in:    "Subject: Hi\r\n" + body,
			want:  "Subject: [SCANNED] Hi\r\n" + body,
			lossy: true,
		},
		{
			name: "huge subject is left alone",
			cfg:  Config{Headers: stamp, SubjectPrefix: "[SCANNED]"},
			in:   "Subject: " + strings.Repeat("y ", 10000) + "\r\n" + body,
			want: "X-Popgate-Scanned: yes\r\nSubject: " + strings.Repeat("y ", 10000) + "\r\n" + body,
		},
		{
			name:    "subject line longer than the scan window",
			cfg:     Config{SubjectPrefix: "[S]", DropOriginalSubject: true},
			in:      "Subject: " + strings.Repeat("z", 900) + "\r\n" + body,
			want:    "Subject: [S]\r\n " + strings.Repeat("z", 900) + "\r\n" + body,
			lossy:   true,
			subject: "[S] " + strings.Repeat("z", 900),
		},
		{
			name: "nothing configured",
			cfg:  Config{},
			in:   "Subject: Hi\r\n" + body,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := mustNew(t, tc.cfg)
			v, got := run(t, f, tc.in)
			if tc.want == "" {
				if v.Action != filters.Pass {
					t.Fatalf("got %v, want Pass:\n%q", v.Action, got)
				}
				return
			}
			if got != tc.want {
				t.Fatalf("got\n%q\nwant\n%q", got, tc.want)
			}
			if v.KeepsOriginal == tc.lossy {
				t.Errorf("KeepsOriginal = %v, want %v", v.KeepsOriginal, !tc.lossy)
			}
			if tc.subject != "" {
				m, err := mail.ReadMessage(strings.NewReader(got))
				if err != nil {
					t.Fatalf("result does not parse: %v", err)
				}
				if subj := mailtext.DecodeWords(m.Header.Get("Subject")); subj != tc.subject {
					t.Errorf("decoded Subject = %q, want %q", subj, tc.subject)
				}
			}
			// Restore gives back the original behind the added fields,
			// byte for byte, whenever the verdict claims to keep it.
			if v.KeepsOriginal {
				var out bytes.Buffer
				if _, err := Restore(&out, strings.NewReader(got)); err != nil {
					t.Fatalf("Restore: %v", err)
				}
				if !strings.HasSuffix(out.String(), tc.in) {
					t.Errorf("Restore gave\n%q\nwhich does not end with the original\n%q", out.String(), tc.in)
				}
				if tc.restored != "" && out.String() != tc.restored {
					t.Errorf("Restore gave\n%q\nwant\n%q", out.String(), tc.restored)
				}
			}
		})
	}
}

// A rewrite changes nothing but the Subject value: the bytes before and
// after it are the original's.
func TestOnlySubjectBytesChange(t *testing.T) {
	f := mustNew(t, Config{SubjectPrefix: "[SCANNED]", DropOriginalSubject: true})
	head := "Received: from x\r\n\tby y; Mon, 1 Jan 2024 00:00:00 +0000\r\nDKIM-Signature: v=1;\r\n b=abc\r\nSubject:"
	tail := "\r\nContent-Type: text/plain\r\n\r\n" + strings.Repeat("line\r\n", 1000)
	_, got := run(t, f, head+" x"+tail)
	if got != head+" [SCANNED] x"+tail {
		t.Fatalf("got %q", got)
	}
}

func TestEncodedPrefixDecodes(t *testing.T) {
	for _, prefix := range []string{"[ПРОВЕРЕНО]", "【検査済み】", "[" + strings.Repeat("ü", 60) + "]"} {
		f := mustNew(t, Config{SubjectPrefix: prefix})
		for _, subj := range []string{"plain", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", ""} {
			_, got := run(t, f, "Subject: "+subj+"\r\n\r\nx\r\n")
			m, err := mail.ReadMessage(strings.NewReader(got))
			if err != nil {
				t.Fatal(err)
			}
			dec := mailtext.DecodeWords(m.Header.Get("Subject"))
			want := prefix
			if d, _ := new(mime.WordDecoder).DecodeHeader(subj); d != "" {
				want += " " + d
			}
			if dec != want {
				t.Errorf("prefix %q, subject %q: decoded %q, want %q", prefix, subj, dec, want)
			}
			for _, l := range strings.Split(got, "\r\n") {
				if len(l) > 998 {
					t.Errorf("line of %d bytes", len(l))
				}
			}
			// Tagging the result again changes nothing.
			v, _ := run(t, f, got)
			if v.Action != filters.Pass {
				t.Errorf("prefix %q, subject %q: tagged twice", prefix, subj)
			}
		}
	}
}

// A large message is tagged without a copy of it: the tagged Body reads
// the original through its pieces, exactly.
func TestLargeMessageThroughFile(t *testing.T) {
	f, err := New("stamp", Config{Headers: []Field{{"X-A", "1"}}, SubjectPrefix: "[S]"}, "")
	if err != nil {
		t.Fatal(err)
	}
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 200000)
	ctx := context.Background()
	in := filters.BytesBody([]byte(big))
	v, err := f.Filter(ctx, nil, in)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Body.Remove()
	got := read(t, v.Body)
	want := "X-Popgate-Original-Subject: big\r\nX-A: 1\r\nSubject: [S] big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 200000)
	if got != want {
		t.Fatalf("large message differs (len %d, want %d)", len(got), len(want))
	}
	checkEdits(t, in, v, got)
	if len(v.Edits) != 4 {
		t.Errorf("edits %d pieces, want 4 (top, message to the Subject value, new value, the rest)", len(v.Edits))
	}
}

func TestCanceled(t *testing.T) {
	f, err := New("stamp", Config{Headers: []Field{{"X-A", "1"}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = f.Filter(ctx, nil, filters.BytesBody([]byte("Subject: x\r\n\r\nbody\r\n")))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

type failingBody struct{ filters.Body }

func (failingBody) Open() (io.ReadCloser, error) { return nil, errors.New("boom") }

func TestOpenError(t *testing.T) {
	f := mustNew(t, Config{Headers: []Field{{"X-A", "1"}}})
	if _, err := f.Filter(context.Background(), nil, failingBody{filters.BytesBody(nil)}); err == nil {
		t.Fatal("no error from a body that cannot be read")
	}
}

func TestRestoreLeavesOtherMessagesAlone(t *testing.T) {
	for _, msg := range []string{
		"Subject: x\r\n\r\nbody",
		"",
		"Subject: x\r\nX-Popgate-Original-Subject: after the subject: ignored\r\n\r\n",
		"From: a\r\n\r\nX-Popgate-Original-Subject: body\r\nSubject: body\r\n",
		"X-Popgate-Scanned: yes\r\nX-Popgate-Original-Subject: forged\r\nSubject: x\r\n\r\n",
	} {
		var out bytes.Buffer
		ok, err := Restore(&out, strings.NewReader(msg))
		if err != nil || ok || out.String() != msg {
			t.Errorf("Restore(%q) = %v, %v, %q", msg, ok, err, out.String())
		}
	}
	var out bytes.Buffer
	if _, err := Restore(&out, strings.NewReader("X-Popgate-Original-Subject: x\r\nFrom: a\r\n\r\nSubject: body\r\n")); !errors.Is(err, ErrNoSubject) {
		t.Errorf("Restore without a Subject: %v", err)
	}
	// Only the first field counts: one further down may be the sender's.
	out.Reset()
	forged := "X-A: 1\r\nX-Popgate-Original-Subject: q\r\nSubject: [S] x\r\n\r\n"
	if ok, err := Restore(&out, strings.NewReader(forged)); ok || err != nil || out.String() != forged {
		t.Errorf("Restore of a forged field = %v, %v, %q", ok, err, out.String())
	}
}

func TestNewRejects(t *testing.T) {
	for _, cfg := range []Config{
		{Headers: []Field{{"X Bad", "v"}}},
		{Headers: []Field{{"", "v"}}},
		{Headers: []Field{{"Subject", "v"}}},
		{Headers: []Field{{"content-type", "text/plain"}}},
		{Headers: []Field{{"X-Popgate-Original-Subject", "v"}}},
		{Headers: []Field{{"X-A", "a\r\nBcc: victim@example.org"}}},
		{Headers: []Field{{"X-A", "a\x00"}}},
		{Headers: []Field{{"X-A", "a\u0085"}}},
		{Headers: []Field{{"X-A", "invoice\u202efdp"}}},
		{SubjectPrefix: "[\u2066OK\u2069]"},
		{Headers: []Field{{"X-A", "=?utf-8?q?x?="}}},
		{Headers: []Field{{"X-A", "\xff"}}},
		{Headers: []Field{{"X-A", "1"}, {"x-a", "2"}}},
		{SubjectPrefix: "   "},
		{SubjectPrefix: "[A]\n"},
		{SubjectPrefix: strings.Repeat("a", 201)},
	} {
		if _, err := New("x", cfg, ""); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// FuzzTag checks, on any input, that tagging never fails on a readable
// message, that an unchanged message is a Pass, that the verdict's Edits
// read as its Body, and that a verdict that claims to keep the original
// does: Restore gives it back behind the added fields.
func FuzzTag(f *testing.F) {
	for _, s := range []string{
		"Subject: Hi\r\n\r\nbody\r\n",
		"From: a\nSubject: x\n y\n\nb\n",
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n",
		"Subject:\r\n\r\n",
		"X: y\r\n",
		"",
		" leading\r\nSubject: a\r\n",
		"Subject: a\rb\r\n\r\n",
		"X-Popgate-Original-Subject: q\r\nSubject: [S] x\r\n\r\n",
	} {
		f.Add(s, "[S]")
		f.Add(s, "[GEPRÜFT]")
	}
	f.Fuzz(func(t *testing.T, msg, prefix string) {
		tg, err := New("f", Config{Headers: []Field{{"X-A", "1"}}, SubjectPrefix: prefix}, "")
		if err != nil {
			return
		}
		in := filters.BytesBody([]byte(msg))
		v, err := tg.Filter(context.Background(), nil, in)
		if err != nil {
			t.Fatal(err)
		}
		if v.Action != filters.Replace {
			t.Fatalf("action %v", v.Action)
		}
		defer v.Body.Remove()
		out := read(t, v.Body)
		checkEdits(t, in, v, out)
		if !v.KeepsOriginal {
			return
		}
		var back bytes.Buffer
		if _, err := Restore(&back, strings.NewReader(out)); err != nil {
			t.Fatalf("Restore: %v\n%q", err, out)
		}
		if !strings.HasSuffix(back.String(), msg) {
			t.Fatalf("Restore(%q) = %q, does not end with the original %q", out, back.String(), msg)
		}
	})
}
