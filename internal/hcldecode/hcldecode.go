// Package hcldecode evaluates the attributes of a kind's block (the body of
// `scanner "TYPE" "NAME"` or `filter "TYPE" "NAME"`) one by one, so that
// every diagnostic points at the attribute, or the list element, it is
// about. Kinds decode their blocks into *hcl.Attribute fields with gohcl
// and then read each through a Decoder.
package hcldecode

import (
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/popgate/popgate/filters"
)

// Decoder collects the diagnostics of one block. A method that finds a
// problem reports it and returns the default it was given.
type Decoder struct {
	Eval  *hcl.EvalContext
	Diags hcl.Diagnostics
}

// Errorf reports an error at r.
func (d *Decoder) Errorf(r hcl.Range, summary, format string, args ...any) {
	d.Diags = append(d.Diags, filters.Diagnostic(hcl.DiagError, r, summary, format, args...))
}

// Missing reports a required attribute that the block lacks. (gohcl does
// not, for *hcl.Attribute fields.)
func (d *Decoder) Missing(body hcl.Body, name, example string) {
	d.Errorf(body.MissingItemRange(), "Missing required argument",
		"The argument %q is required, but no definition was found; for example %s.", name, example)
}

// Decode evaluates expr into target (a pointer), keeping its diagnostics.
func (d *Decoder) Decode(expr hcl.Expression, target any) bool {
	diags := gohcl.DecodeExpression(expr, d.Eval, target)
	d.Diags = append(d.Diags, diags...)
	return !diags.HasErrors()
}

// Str evaluates a string attribute; false when it is absent or wrong.
func (d *Decoder) Str(attr *hcl.Attribute) (string, bool) {
	var s string
	if attr == nil || !d.Decode(attr.Expr, &s) {
		return "", false
	}
	return s, true
}

// Addresses evaluates a list of addresses, element by element when it is a
// literal list so that a bad one is pointed at exactly. parse checks one
// and returns the key two spellings of the same address share; what names
// the daemon ("clamd") in the diagnostics, example shows a list. At least
// one address is required, and none may repeat.
func (d *Decoder) Addresses(attr *hcl.Attribute, what, example string, parse func(string) (key string, err error)) []string {
	type item struct {
		s string
		r hcl.Range
	}
	var items []item
	if elems, diags := hcl.ExprList(attr.Expr); !diags.HasErrors() {
		for _, e := range elems {
			var s string
			if d.Decode(e, &s) {
				items = append(items, item{s, e.Range()})
			}
		}
	} else {
		var list []string
		if !d.Decode(attr.Expr, &list) {
			return nil
		}
		for _, s := range list {
			items = append(items, item{s, attr.Expr.Range()})
		}
	}
	if len(items) == 0 && !d.Diags.HasErrors() {
		d.Errorf(attr.Expr.Range(), "No "+what+" address", "%s must list at least one %s address, like %s.", attr.Name, what, example)
		return nil
	}
	var out []string
	seen := make(map[string]hcl.Range)
	for _, it := range items {
		key, err := parse(it.s)
		if err != nil {
			d.Errorf(it.r, "Invalid "+what+" address", "%s.", err)
			continue
		}
		if first, dup := seen[key]; dup {
			d.Errorf(it.r, "Duplicate "+what+" address", "%q is already listed at %s:%d:%d.", it.s, first.Filename, first.Start.Line, first.Start.Column)
			continue
		}
		seen[key] = it.r
		out = append(out, it.s)
	}
	return slices.Clip(out)
}

// Duration evaluates a duration attribute ("30s"), from lo to hi.
func (d *Decoder) Duration(attr *hcl.Attribute, def, lo, hi time.Duration) time.Duration {
	s, ok := d.Str(attr)
	if !ok {
		return def
	}
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.Errorf(attr.Expr.Range(), "Invalid duration",
			`%q is not a duration: %v; write a number with a unit (ms, s, m, h), like "30s" or "1m".`, s, strings.TrimPrefix(err.Error(), "time: "))
	case dur < lo || dur > hi:
		d.Errorf(attr.Expr.Range(), "Invalid duration", "%s must be from %v to %v, not %v.", attr.Name, lo, hi, dur)
	default:
		return dur
	}
	return def
}

// Size evaluates a size attribute ("25MB"), from 1 byte to hi; hiText
// names hi for the diagnostic, with its reason.
func (d *Decoder) Size(attr *hcl.Attribute, def, hi int64, hiText string) int64 {
	s, ok := d.Str(attr)
	if !ok {
		return def
	}
	n, err := filters.ParseSize(s)
	switch {
	case err != nil:
		d.Errorf(attr.Expr.Range(), "Invalid size", "%q is not a size: %v.", s, err)
	case n < 1 || n > hi:
		d.Errorf(attr.Expr.Range(), "Invalid size", "%s must be from 1 byte to %s, not %q.", attr.Name, hiText, s)
	default:
		return n
	}
	return def
}

// Integer evaluates a whole number attribute, from lo to hi.
func (d *Decoder) Integer(attr *hcl.Attribute, def, lo, hi int) int {
	if attr == nil {
		return def
	}
	var n int
	if !d.Decode(attr.Expr, &n) {
		return def
	}
	if n < lo || n > hi {
		d.Errorf(attr.Expr.Range(), "Invalid value", "%s must be from %d to %d, not %d.", attr.Name, lo, hi, n)
		return def
	}
	return n
}
