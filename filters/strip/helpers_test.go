package strip

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/mailtext"
	"github.com/popgate/popgate/internal/mimetree"
)

// buildFilter decodes src, a `filter "strip" "NAME" { … }` block, with the
// registered kind's decode and build steps.
func buildFilter(t testing.TB, src string) (*Filter, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	content, diags := f.Body.Content(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "filter", LabelNames: []string{"type", "name"}}}})
	if diags.HasErrors() || len(content.Blocks) != 1 {
		t.Fatalf("want one filter block: %v", diags)
	}
	blk := content.Blocks[0]
	spec, diags, ok := filters.DecodeFilter(blk.Labels[0], blk.Labels[1], blk.DefRange, blk.Body, &filters.DecodeContext{})
	if !ok {
		t.Fatalf("filter type %q not registered", blk.Labels[0])
	}
	if spec == nil {
		return nil, diags
	}
	flt, err := spec.Build(&filters.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	return flt.(*Filter), diags
}

func mustFilter(t testing.TB, src string) *Filter {
	t.Helper()
	f, diags := buildFilter(t, src)
	if diags.HasErrors() || f == nil {
		t.Fatalf("factory: %v", diags)
	}
	return f
}

// run filters msg and returns the verdict and the replacement bytes.
func run(t testing.TB, f *Filter, msg []byte) (filters.Verdict, []byte) {
	t.Helper()
	in := filters.BytesBody(msg)
	v, err := f.Filter(context.Background(), &filters.Envelope{}, in)
	if err != nil {
		t.Fatalf("Filter: %v", err)
	}
	var out []byte
	if v.Body != nil {
		rc, err := v.Body.Open()
		if err != nil {
			t.Fatal(err)
		}
		out, err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Body.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	if v.Action == filters.Replace {
		checkEdits(t, msg, v, out)
	}
	return v, out
}

// checkEdits checks that a Replace states its Body (out) as Edits of the
// message it was given (msg), which read as out byte for byte, through
// SplicedBody and every way it reads the message.
func checkEdits(t testing.TB, msg []byte, v filters.Verdict, out []byte) {
	t.Helper()
	if v.Edits == nil {
		t.Fatalf("Replace without Edits")
	}
	if got := filters.PiecesSize(v.Edits); got != int64(len(out)) {
		t.Fatalf("Edits of %d bytes for a body of %d", got, len(out))
	}
	for _, in := range []filters.Body{filters.BytesBody(msg), sequentialBody{filters.BytesBody(msg)}} {
		rc, err := filters.SplicedBody(in, v.Edits).Open()
		if err != nil {
			t.Fatalf("SplicedBody: %v", err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, out) {
			t.Fatalf("Edits read (%v)\n%q\nthe body is\n%q", err, got, out)
		}
	}
	for _, p := range v.Edits {
		if len(p.Data) > 4096 {
			t.Errorf("a literal of %d bytes: message bytes should be runs", len(p.Data))
		}
	}
}

// sequentialBody is a Body whose readers only Read (like a header-prepending
// wrapper's).
type sequentialBody struct{ filters.Body }

func (b sequentialBody) Open() (io.ReadCloser, error) {
	rc, err := b.Body.Open()
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{rc, rc}, nil
}

func mustParse(t testing.TB, msg []byte) *mimetree.Part {
	t.Helper()
	root, err := parseMIME(bytes.NewReader(msg), int64(len(msg)), mimetree.Limits{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return root
}

func partBytes(msg []byte, p *mimetree.Part) []byte { return msg[p.HeaderStart:p.BodyEnd] }

// checkSplice verifies a stripped message against its original by ranges:
// out re-parses; each part not stripped has the same place in the tree, and
// a part with nothing stripped inside it is byte-identical; each stripped
// part is now a text/plain notice naming its file; and the bytes before the
// first and after the last part are untouched.
func checkSplice(t testing.TB, orig, out []byte, strips []match) {
	t.Helper()
	o := mustParse(t, orig)
	n, err := parseMIME(bytes.NewReader(out), int64(len(out)), mimetree.Limits{})
	if err != nil {
		t.Fatalf("result does not re-parse: %v", err)
	}
	stripped := map[*mimetree.Part]*match{}
	for i := range strips {
		stripped[strips[i].Part] = &strips[i]
	}
	// Strips refer to the tree of decide's own parse; map them by position.
	byPos := map[int64]*match{}
	for p, m := range stripped {
		byPos[p.HeaderStart] = m
	}
	contains := func(p *mimetree.Part) bool {
		for _, m := range strips {
			if m.Part.HeaderStart >= p.HeaderStart && m.Part.BodyEnd <= p.BodyEnd {
				return true
			}
		}
		return false
	}
	var walk func(op, np *mimetree.Part, path string)
	walk = func(op, np *mimetree.Part, path string) {
		if m, ok := byPos[op.HeaderStart]; ok && m.Part.BodyEnd == op.BodyEnd && m.Part.Depth == op.Depth {
			if np.ContentType != "text/plain" || np.Kind != mimetree.Leaf {
				t.Errorf("%s: stripped part is %s %v, want a text/plain leaf", path, np.ContentType, np.Kind)
			}
			body := string(out[np.BodyStart:np.BodyEnd])
			want := displayName(m.Name)
			if want == "" {
				want = "(no name)"
			}
			if np.Encoding == "quoted-printable" {
				dec, _ := io.ReadAll(np.Content(bytes.NewReader(out)))
				body = string(dec)
			}
			if !strings.Contains(body, "File: "+want+"\n") && !strings.Contains(body, "File: "+want+"\r\n") {
				t.Errorf("%s: notice does not name %q:\n%s", path, want, body)
			}
			reason := m.Why
			if m.Rule != "" {
				reason = "rule " + m.Rule + ": " + m.Why
			}
			if !strings.HasSuffix(strings.TrimRight(body, "\r\n"), "\nReason: "+mailtext.Visible(reason, 900)) {
				t.Errorf("%s: notice does not end with the reason %q:\n%q", path, reason, body)
			}
			if !bytes.HasPrefix(out[np.HeaderStart:], []byte("Content-Type: text/plain; charset=utf-8")) && !op.IsEntity() {
				t.Errorf("%s: notice does not start with its own header", path)
			}
			if op.IsEntity() {
				// Only Content-* fields may change in a message root.
				oh := keepNonContentFields(orig[op.HeaderStart:op.HeaderEnd])
				nh := keepNonContentFields(out[np.HeaderStart:np.HeaderEnd])
				if !bytes.Equal(bytes.TrimRight(oh, "\r\n"), bytes.TrimRight(nh, "\r\n")) {
					t.Errorf("%s: header fields of the stripped entity changed:\n%q\n%q", path, oh, nh)
				}
			}
			return
		}
		if !contains(op) {
			if !bytes.Equal(partBytes(orig, op), partBytes(out, np)) {
				t.Errorf("%s: kept part differs:\n%q\n%q", path, partBytes(orig, op), partBytes(out, np))
			}
		} else if !bytes.Equal(orig[op.HeaderStart:op.BodyStart], out[np.HeaderStart:np.BodyStart]) {
			t.Errorf("%s: header of a container changed", path)
		}
		if op.Kind != np.Kind || op.ContentType != np.ContentType || len(op.Children) != len(np.Children) {
			t.Errorf("%s: structure changed: %v %s %d children → %v %s %d children", path,
				op.Kind, op.ContentType, len(op.Children), np.Kind, np.ContentType, len(np.Children))
			return
		}
		for i := range op.Children {
			walk(op.Children[i], np.Children[i], fmt.Sprintf("%s/%d", path, i))
		}
	}
	walk(o, n, "")
	// Bytes outside all parts: what precedes the first strip is identical.
	if len(strips) > 0 {
		first := strips[0].Part.HeaderStart
		if !bytes.Equal(orig[:first], out[:first]) {
			t.Errorf("bytes before the first stripped part changed")
		}
		last := strips[len(strips)-1].Part.BodyEnd
		tail := orig[last:]
		if !bytes.HasSuffix(out, tail) {
			t.Errorf("bytes after the last stripped part changed")
		}
	}
}

// keepNonContentFields returns the header section hdr without its Content-*
// fields (continuation lines included): what keptFields keeps.
func keepNonContentFields(hdr []byte) []byte {
	var out []byte
	for _, k := range keptFields(hdr) {
		out = append(out, hdr[k[0]:k[1]]...)
	}
	return out
}

// b64 encodes data in base64 lines of 76 characters, CRLF-separated.
func b64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76])
		b.WriteString("\r\n")
		s = s[76:]
	}
	b.WriteString(s)
	return b.String()
}
