package policy

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/popgate/popgate/filters"
)

// decoder evaluates attribute expressions, collecting diagnostics.
type decoder struct {
	ctx     *hcl.EvalContext
	baseDir string
	order   map[string]int // file name → load order
	diags   hcl.Diagnostics
}

func (d *decoder) errorCount() int {
	n := 0
	for _, diag := range d.diags {
		if diag.Severity == hcl.DiagError {
			n++
		}
	}
	return n
}

func (d *decoder) errorf(subject hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, filters.Diagnostic(hcl.DiagError, subject, summary, format, args...))
}

func (d *decoder) warnf(subject hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, filters.Diagnostic(hcl.DiagWarning, subject, summary, format, args...))
}

// value evaluates attr and converts it to ty. ok is false when the attribute
// is absent or in error (the error is recorded; null is an error).
func (d *decoder) value(attr *hcl.Attribute, ty cty.Type) (cty.Value, bool) {
	if attr == nil {
		return cty.NilVal, false
	}
	v, diags := attr.Expr.Value(d.ctx)
	for _, diag := range diags {
		// A failing function call is reported at "name(" only; the whole
		// call reads better.
		if diag.Summary == "Error in function call" && diag.Context != nil {
			diag.Subject = diag.Context.Ptr()
		}
	}
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() || !v.IsWhollyKnown() {
		return cty.NilVal, false
	}
	if v.IsNull() {
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must not be null.", attr.Name)
		return cty.NilVal, false
	}
	v, _ = v.Unmark()
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.errorf(attr.Expr.Range(), "Incorrect attribute value type",
			"Inappropriate value for attribute %q: %s required, got %s.", attr.Name, ty.FriendlyName(), v.Type().FriendlyName())
		return cty.NilVal, false
	}
	return cv, true
}

// str returns the string value of attr, or def.
func (d *decoder) str(attr *hcl.Attribute, def string) string {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return def
	}
	return v.AsString()
}

// boolean returns the bool value of attr, or def.
func (d *decoder) boolean(attr *hcl.Attribute, def bool) bool {
	v, ok := d.value(attr, cty.Bool)
	if !ok {
		return def
	}
	return v.True()
}

// integer returns the whole-number value of attr within [lo, hi], or def.
func (d *decoder) integer(attr *hcl.Attribute, def, lo, hi int) int {
	v, ok := d.value(attr, cty.Number)
	if !ok {
		return def
	}
	// The value is not formatted into messages: printing a number such as
	// 1e9999999 in full takes seconds, and the caret shows it anyway.
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must be a whole number.", attr.Name)
		return def
	}
	n, acc := bf.Int64()
	switch {
	case acc != big.Exact:
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must be between %d and %d.", attr.Name, lo, hi)
	case n < int64(lo) || n > int64(hi):
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must be between %d and %d, not %d.", attr.Name, lo, hi, n)
	default:
		return int(n)
	}
	return def
}

// duration returns the duration value of attr, or def. Zero is refused
// unless allowZero.
func (d *decoder) duration(attr *hcl.Attribute, def time.Duration, allowZero bool) time.Duration {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return def
	}
	s := v.AsString()
	dur, err := ParseDuration(s)
	switch {
	case err != nil:
		d.errorf(attr.Expr.Range(), "Invalid duration",
			`%q is not a duration: %v; write a number with a unit (ns, us, ms, s, m, h, or d for days), like "30s", "10m", "1h30m" or "30d".`,
			s, strings.TrimPrefix(err.Error(), "time: "))
	case dur < 0:
		d.errorf(attr.Expr.Range(), "Invalid duration", "%s must not be negative.", attr.Name)
	case dur == 0 && !allowZero:
		d.errorf(attr.Expr.Range(), "Invalid duration", "%s must be greater than zero.", attr.Name)
	default:
		return dur
	}
	return def
}

// size returns the size value of attr (see filters.ParseSize), or def.
func (d *decoder) size(attr *hcl.Attribute, def int64) int64 {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return def
	}
	s := v.AsString()
	n, err := filters.ParseSize(s)
	if err != nil {
		d.errorf(attr.Expr.Range(), "Invalid size", "%q is not a size: %v.", s, err)
		return def
	}
	return n
}

// enum returns the string value of attr if it is one of allowed, or def.
func (d *decoder) enum(attr *hcl.Attribute, def string, allowed ...string) string {
	v, ok := d.value(attr, cty.String)
	if !ok {
		return def
	}
	s := v.AsString()
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	d.errorf(attr.Expr.Range(), "Invalid value", "%s must be one of %s, not %q.", attr.Name, quoteList(allowed), s)
	return def
}

// quoteList renders ["a" "b" "c"] as `"a", "b" or "c"`.
func quoteList(items []string) string {
	q := quoteEach(items)
	if len(q) <= 1 {
		return strings.Join(q, "")
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

func quoteEach(items []string) []string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	return q
}

// posString renders the start of r as file:line:col, the form diagnostics use.
func posString(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}

// ParseDuration is time.ParseDuration, plus whole days ("30d"): retention
// periods are written in days.
func ParseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && !strings.ContainsAny(days, "hms.+-") {
		n, err := strconv.ParseUint(days, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("invalid number of days %q", days)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}
