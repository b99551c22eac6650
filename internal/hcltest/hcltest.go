// Package hcltest helps the tests of filter and scanner kinds decode their
// blocks and check the diagnostics, which must point at the attribute or
// list element they are about.
package hcltest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Block parses src, a single block in a file called test.hcl, and returns
// its body.
func Block(t testing.TB, src string) hcl.Body {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "test.hcl", hcl.InitialPos)
	if diags.HasErrors() {
		t.Fatalf("parse: %v", diags)
	}
	blocks := f.Body.(*hclsyntax.Body).Blocks
	if len(blocks) != 1 {
		t.Fatalf("%d blocks", len(blocks))
	}
	return blocks[0].Body
}

// WantErrors checks that diags hold errors and, for each want
// "LINE:COL: TEXT", a diagnostic that starts at LINE:COL and whose summary
// and detail ("SUMMARY: DETAIL") contain TEXT. src names the case.
func WantErrors(t testing.TB, src string, diags hcl.Diagnostics, want ...string) {
	t.Helper()
	if !diags.HasErrors() {
		t.Errorf("no error for\n%s", src)
		return
	}
	var got []string
	for _, d := range diags {
		got = append(got, fmt.Sprintf("%d:%d: %s: %s", d.Subject.Start.Line, d.Subject.Start.Column, d.Summary, d.Detail))
	}
	for _, w := range want {
		pos, text, _ := strings.Cut(w, ": ")
		found := false
		for _, g := range got {
			if strings.HasPrefix(g, pos+": ") && strings.Contains(g, text) {
				found = true
			}
		}
		if !found {
			t.Errorf("want a diagnostic %q, got:\n  %s", w, strings.Join(got, "\n  "))
		}
	}
}
