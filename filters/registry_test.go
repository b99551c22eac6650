package filters

import (
	"github.com/hashicorp/hcl/v2"

	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// unregister undoes Register, so tests can run more than once per process.
func unregister(typ string) {
	registry.Lock()
	defer registry.Unlock()
	delete(registry.m, typ)
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

func TestRegistry(t *testing.T) {
	typs := []string{"test-zeta", "test-alpha", "test-mid"}
	for _, typ := range typs {
		Register(typ, func(name string, body hcl.Body, bc *BuildContext) (Filter, hcl.Diagnostics) {
			return &funcFilter{name: typ + "/" + name, fn: func(context.Context, *Envelope, Body) (Verdict, error) {
				return Verdict{Reason: fmt.Sprint(len(bc.Scanners))}, nil
			}}, nil
		})
		t.Cleanup(func() { unregister(typ) })
	}

	f, ok := Lookup("test-alpha")
	if !ok {
		t.Fatal("Lookup of a registered type failed")
	}
	flt, diags := f("av", hcl.EmptyBody(), &BuildContext{Scanners: map[string]any{"a": 1, "b": 2}})
	if diags.HasErrors() || flt.Name() != "test-alpha/av" {
		t.Fatalf("factory returned %v, %v", flt, diags)
	}
	if v, _ := flt.Filter(context.Background(), nil, nil); v.Reason != "2" {
		t.Errorf("build context not handed to the factory: %q", v.Reason)
	}
	if _, ok := Lookup("test-missing"); ok {
		t.Errorf("Lookup of an unknown type succeeded")
	}

	got := Types()
	if !slices.IsSorted(got) {
		t.Errorf("Types() not sorted: %v", got)
	}
	for _, typ := range typs {
		if !slices.Contains(got, typ) {
			t.Errorf("Types() lacks %s: %v", typ, got)
		}
	}

	mustPanic(t, "duplicate Register", func() {
		Register("test-mid", func(string, hcl.Body, *BuildContext) (Filter, hcl.Diagnostics) { return nil, nil })
	})
	mustPanic(t, "Register with empty type", func() {
		Register("", func(string, hcl.Body, *BuildContext) (Filter, hcl.Diagnostics) { return nil, nil })
	})
	mustPanic(t, "Register with nil factory", func() { Register("test-nil", nil) })
	if _, ok := Lookup("test-nil"); ok {
		t.Errorf("a refused Register left an entry")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	var wg sync.WaitGroup
	for i := range 16 {
		typ := fmt.Sprintf("test-conc-%02d", i)
		t.Cleanup(func() { unregister(typ) })
		wg.Go(func() {
			Register(typ, func(string, hcl.Body, *BuildContext) (Filter, hcl.Diagnostics) { return nil, nil })
			if _, ok := Lookup(typ); !ok {
				t.Errorf("%s not found right after Register", typ)
			}
			_ = Types()
		})
	}
	wg.Wait()
	n := 0
	for _, typ := range Types() {
		if len(typ) > 10 && typ[:10] == "test-conc-" {
			n++
		}
	}
	if n != 16 {
		t.Errorf("%d of 16 concurrently registered types present", n)
	}
}
