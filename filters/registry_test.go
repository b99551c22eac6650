package filters

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// unregister undoes RegisterFilter, so tests can run more than once per
// process.
func unregister(typ string) {
	filterKinds.mu.Lock()
	defer filterKinds.mu.Unlock()
	delete(filterKinds.m, typ)
}

func mustPanic(t *testing.T, what string, fn func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	fn()
}

// prefixSettings is a test kind's decoded block.
type prefixSettings struct{ prefix string }

func decodePrefix(name string, body hcl.Body, dc *DecodeContext) (prefixSettings, hcl.Diagnostics) {
	attrs, diags := body.JustAttributes()
	a := attrs["prefix"]
	if a == nil {
		return prefixSettings{}, append(diags, Diagnostic(hcl.DiagError, body.MissingItemRange(), "Missing prefix", "filter %q needs prefix", name))
	}
	v, vd := a.Expr.Value(dc.Eval)
	return prefixSettings{prefix: v.AsString()}, append(diags, vd...)
}

func buildPrefix(name string, s prefixSettings, bc *BuildContext) (Filter, error) {
	return &funcFilter{name: name, fn: func(context.Context, *Envelope, Body) (Verdict, error) {
		return Verdict{Reason: s.prefix + bc.Version}, nil
	}}, nil
}

func body(t *testing.T, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "t.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return f.Body
}

func TestRegistry(t *testing.T) {
	typs := []string{"test-zeta", "test-alpha", "test-mid"}
	for _, typ := range typs {
		RegisterFilter(typ, FilterKind[prefixSettings]{Decode: decodePrefix, Build: buildPrefix})
		t.Cleanup(func() { unregister(typ) })
	}

	spec, diags, ok := DecodeFilter("test-alpha", "av", hcl.Range{Filename: "t.hcl"}, body(t, `prefix = "v"`), &DecodeContext{})
	if !ok || diags.HasErrors() || spec.Type != "test-alpha" || spec.Name != "av" || spec.Settings() != (prefixSettings{"v"}) {
		t.Fatalf("decode: %v %v %+v", ok, diags, spec)
	}
	flt, err := spec.Build(&BuildContext{Version: "1.0"})
	if err != nil || flt.Name() != "av" {
		t.Fatalf("build: %v %v", flt, err)
	}
	if v, _ := flt.Filter(context.Background(), nil, nil); v.Reason != "v1.0" {
		t.Errorf("build context not handed to the build step: %q", v.Reason)
	}
	if spec, diags, ok := DecodeFilter("test-alpha", "av", hcl.Range{}, body(t, ``), &DecodeContext{}); !ok || spec != nil || !diags.HasErrors() {
		t.Errorf("a body with errors gave spec %v, diags %v", spec, diags)
	}
	if _, _, ok := DecodeFilter("test-missing", "x", hcl.Range{}, body(t, ``), &DecodeContext{}); ok {
		t.Errorf("decoding an unknown type succeeded")
	}

	got := FilterTypes()
	if !slices.IsSorted(got) {
		t.Errorf("FilterTypes() not sorted: %v", got)
	}
	for _, typ := range typs {
		if !slices.Contains(got, typ) {
			t.Errorf("FilterTypes() lacks %s: %v", typ, got)
		}
	}

	kind := FilterKind[prefixSettings]{Decode: decodePrefix, Build: buildPrefix}
	mustPanic(t, "duplicate RegisterFilter", func() { RegisterFilter("test-mid", kind) })
	mustPanic(t, "RegisterFilter with empty type", func() { RegisterFilter("", kind) })
	mustPanic(t, "RegisterFilter without a build step", func() {
		RegisterFilter("test-nil", FilterKind[prefixSettings]{Decode: decodePrefix})
	})
	if slices.Contains(FilterTypes(), "test-nil") {
		t.Errorf("a refused RegisterFilter left an entry")
	}
}

// A filter's reference to a scanner is checked against the scanners
// declared, by kind, and recorded in the spec.
func TestDecodeContextScanner(t *testing.T) {
	dc := &DecodeContext{Scanners: map[string]*ScannerSpec{
		"av":   {Type: "clamav", Name: "av", Range: hcl.Range{Filename: "s.hcl", Start: hcl.Pos{Line: 3, Column: 1}}},
		"spam": {Type: "rspamd", Name: "spam", Range: hcl.Range{Filename: "s.hcl", Start: hcl.Pos{Line: 9, Column: 1}}},
	}}
	for _, c := range []struct{ ref, kind, want string }{
		{"av", "clamav", ""},
		{"nope", "clamav", `There is no scanner "nope" (clamav scanners: "av")`},
		{"nope", "other", `(no other scanner is declared)`},
		{"spam", "clamav", `The scanner "spam" (declared at s.hcl:9:1) is a rspamd scanner`},
	} {
		s, diags := dc.Scanner(c.ref, c.kind, hcl.Range{})
		switch {
		case c.want == "" && (s == nil || diags.HasErrors()):
			t.Errorf("%s/%s: %v", c.ref, c.kind, diags)
		case c.want != "" && (s != nil || !diags.HasErrors() || !strings.Contains(diags[0].Detail, c.want)):
			t.Errorf("%s/%s: got %v, want %q", c.ref, c.kind, diags, c.want)
		}
	}
	if !slices.Equal(dc.uses, []string{"av"}) {
		t.Errorf("uses %v", dc.uses)
	}
}

func TestRegistryConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 16 {
		typ := fmt.Sprintf("test-conc-%02d", i)
		t.Cleanup(func() { unregister(typ) })
		wg.Go(func() {
			RegisterFilter(typ, FilterKind[prefixSettings]{Decode: decodePrefix, Build: buildPrefix})
			if !slices.Contains(FilterTypes(), typ) {
				t.Errorf("%s not found right after RegisterFilter", typ)
			}
		})
	}
	wg.Wait()
	n := 0
	for _, typ := range FilterTypes() {
		if strings.HasPrefix(typ, "test-conc-") {
			n++
		}
	}
	if n != 16 {
		t.Errorf("%d of 16 concurrently registered types present", n)
	}
}
