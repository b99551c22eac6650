package clamav

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/popgate/popgate/filters"
)

func init() {
	filters.RegisterScanner("clamav", filters.ScannerKind[Config]{Decode: decodeScanner, Build: buildScanner})
	filters.RegisterFilter("clamav", filters.FilterKind[FilterSettings]{Decode: decodeFilter, Build: buildFilter})
}

// Bounds of the policy settings.
const (
	minPolicyDuration = time.Second
	maxPolicyDuration = time.Hour
	maxPolicySize     = 2 << 30 // ClamAV cannot scan files above 2 GiB (clamd.conf(5), MaxFileSize)
	maxPolicyConc     = 1024
	// clamd's default MaxFileSize: a larger stream is not scanned and is
	// reported clean unless clamd has AlertExceedsMax yes.
	clamdDefaultMaxFileSize = 100 << 20
)

// scannerBlock is the body of `scanner "clamav" "NAME" { … }`. The fields
// are attributes, evaluated one by one so that each diagnostic points at
// the attribute (or list element) it is about.
type scannerBlock struct {
	Addresses      *hcl.Attribute `hcl:"addresses"`
	Timeout        *hcl.Attribute `hcl:"timeout,optional"`
	MaxSize        *hcl.Attribute `hcl:"max_size,optional"`
	MaxConcurrent  *hcl.Attribute `hcl:"max_concurrent,optional"`
	HealthInterval *hcl.Attribute `hcl:"health_interval,optional"`
}

// filterBlock is the body of `filter "clamav" "NAME" { … }`.
type filterBlock struct {
	Scanner  *hcl.Attribute `hcl:"scanner"`
	Oversize *hcl.Attribute `hcl:"oversize,optional"`
}

// DecodeConfig decodes and checks the body of a clamav scanner block.
func DecodeConfig(body hcl.Body, eval *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var blk scannerBlock
	diags := gohcl.DecodeBody(body, eval, &blk)
	if diags.HasErrors() {
		return Config{}, diags
	}
	var cfg Config
	d := &decoder{eval: eval}
	if blk.Addresses == nil {
		d.missing(body, "addresses", `addresses = ["tcp://127.0.0.1:3310"]`)
		return Config{}, append(diags, d.diags...)
	}
	cfg.Addresses = d.addresses(blk.Addresses)
	cfg.Timeout = d.duration(blk.Timeout, DefaultTimeout)
	cfg.MaxSize = d.size(blk.MaxSize, DefaultMaxSize)
	cfg.MaxConcurrent = d.integer(blk.MaxConcurrent, DefaultMaxConcurrent, 1, maxPolicyConc)
	cfg.HealthInterval = d.duration(blk.HealthInterval, DefaultHealthInterval)
	if blk.MaxSize != nil && cfg.MaxSize > clamdDefaultMaxFileSize {
		d.diags = append(d.diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "max_size above clamd's default MaxFileSize",
			Detail: "clamd does not scan a stream larger than its MaxFileSize (default 100M) and calls it clean " +
				"unless clamd.conf sets AlertExceedsMax yes; raise MaxFileSize and StreamMaxLength in clamd.conf to at least max_size.",
			Subject: blk.MaxSize.Expr.Range().Ptr(),
		})
	}
	return cfg, append(diags, d.diags...)
}

// decodeScanner is the clamav scanner kind's decode step.
func decodeScanner(_ string, body hcl.Body, dc *filters.DecodeContext) (Config, hcl.Diagnostics) {
	return DecodeConfig(body, dc.Eval)
}

// buildScanner connects a clamav scanner: it starts its health checks.
func buildScanner(name string, cfg Config, bc *filters.BuildContext) (filters.Scanner, error) {
	s, err := NewScanner(cfg, bc.Log.With().Str("scanner", name).Logger())
	if err != nil { // DecodeConfig checked what NewScanner checks
		return nil, err
	}
	if bc.OnScan != nil {
		s.OnScan(func(took time.Duration, err error) { bc.OnScan(name, took, err) })
	}
	return s, nil
}

// FilterSettings is a decoded `filter "clamav" "NAME"` block.
type FilterSettings struct {
	Scanner  string // the name of a scanner "clamav" block
	Oversize Oversize
}

// decodeFilter is the clamav filter kind's decode step.
func decodeFilter(_ string, body hcl.Body, dc *filters.DecodeContext) (FilterSettings, hcl.Diagnostics) {
	var blk filterBlock
	diags := gohcl.DecodeBody(body, dc.Eval, &blk)
	if diags.HasErrors() {
		return FilterSettings{}, diags
	}
	d := &decoder{eval: dc.Eval}
	if blk.Scanner == nil {
		d.missing(body, "scanner", `scanner = "local", the name of a scanner "clamav" block`)
		return FilterSettings{}, append(diags, d.diags...)
	}
	fs := FilterSettings{Oversize: OversizeTempFail}
	if blk.Oversize != nil {
		if s, ok := d.str(blk.Oversize); ok {
			o, err := ParseOversize(s)
			if err != nil {
				d.errorf(blk.Oversize.Expr.Range(), "Invalid value", "oversize must be one of \"tempfail\", \"pass-with-tag\", \"reject\" or \"quarantine\", not %q.", s)
			}
			fs.Oversize = o
		}
	}
	if ref, ok := d.str(blk.Scanner); ok {
		_, sd := dc.Scanner(ref, "clamav", blk.Scanner.Expr.Range())
		d.diags = append(d.diags, sd...)
		fs.Scanner = ref
	}
	return fs, append(diags, d.diags...)
}

// buildFilter is the clamav filter kind's build step.
func buildFilter(name string, fs FilterSettings, bc *filters.BuildContext) (filters.Filter, error) {
	s, ok := bc.Scanners[fs.Scanner].(*Scanner)
	if !ok {
		return nil, fmt.Errorf("scanner %q is not a running clamav scanner", fs.Scanner)
	}
	return NewFilter(name, s, fs.Oversize), nil
}

type decoder struct {
	eval  *hcl.EvalContext
	diags hcl.Diagnostics
}

func (d *decoder) errorf(r hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, filters.Diagnostic(hcl.DiagError, r, summary, format, args...))
}

// missing reports a required attribute that the block lacks. (gohcl does
// not, for *hcl.Attribute fields.)
func (d *decoder) missing(body hcl.Body, name, example string) {
	d.errorf(body.MissingItemRange(), "Missing required argument",
		"The argument %q is required, but no definition was found; for example %s.", name, example)
}

// decode evaluates expr into target (a pointer), keeping its diagnostics.
func (d *decoder) decode(expr hcl.Expression, target any) bool {
	diags := gohcl.DecodeExpression(expr, d.eval, target)
	d.diags = append(d.diags, diags...)
	return !diags.HasErrors()
}

func (d *decoder) str(attr *hcl.Attribute) (string, bool) {
	var s string
	if attr == nil || !d.decode(attr.Expr, &s) {
		return "", false
	}
	return s, true
}

// addresses evaluates the address list element by element when it is a
// literal list, so that a bad address is pointed at exactly.
func (d *decoder) addresses(attr *hcl.Attribute) []string {
	type item struct {
		s string
		r hcl.Range
	}
	var items []item
	if elems, diags := hcl.ExprList(attr.Expr); !diags.HasErrors() {
		for _, e := range elems {
			var s string
			if d.decode(e, &s) {
				items = append(items, item{s, e.Range()})
			}
		}
	} else {
		var list []string
		if !d.decode(attr.Expr, &list) {
			return nil
		}
		for _, s := range list {
			items = append(items, item{s, attr.Expr.Range()})
		}
	}
	if len(items) == 0 && !d.diags.HasErrors() {
		d.errorf(attr.Expr.Range(), "No clamd address", `addresses must list at least one clamd address, like "tcp://127.0.0.1:3310" or "unix:///run/clamav/clamd.ctl".`)
		return nil
	}
	var out []string
	seen := make(map[string]hcl.Range)
	for _, it := range items {
		network, address, err := ParseAddress(it.s)
		if err != nil {
			d.errorf(it.r, "Invalid clamd address", "%s.", err)
			continue
		}
		key := network + " " + address
		if first, dup := seen[key]; dup {
			d.errorf(it.r, "Duplicate clamd address", "%q is already listed at %s:%d:%d.", it.s, first.Filename, first.Start.Line, first.Start.Column)
			continue
		}
		seen[key] = it.r
		out = append(out, it.s)
	}
	return slices.Clip(out)
}

func (d *decoder) duration(attr *hcl.Attribute, def time.Duration) time.Duration {
	s, ok := d.str(attr)
	if !ok {
		return def
	}
	dur, err := time.ParseDuration(s)
	switch {
	case err != nil:
		d.errorf(attr.Expr.Range(), "Invalid duration",
			`%q is not a duration: %v; write a number with a unit (ms, s, m, h), like "30s" or "1m".`, s, strings.TrimPrefix(err.Error(), "time: "))
	case dur < minPolicyDuration || dur > maxPolicyDuration:
		d.errorf(attr.Expr.Range(), "Invalid duration", "%s must be from %v to %v, not %v.", attr.Name, minPolicyDuration, maxPolicyDuration, dur)
	default:
		return dur
	}
	return def
}

func (d *decoder) size(attr *hcl.Attribute, def int64) int64 {
	s, ok := d.str(attr)
	if !ok {
		return def
	}
	n, err := filters.ParseSize(s)
	switch {
	case err != nil:
		d.errorf(attr.Expr.Range(), "Invalid size", "%q is not a size: %v.", s, err)
	case n < 1 || n > maxPolicySize:
		d.errorf(attr.Expr.Range(), "Invalid size", "%s must be from 1 byte to 2GiB (ClamAV cannot scan more), not %q.", attr.Name, s)
	default:
		return n
	}
	return def
}

func (d *decoder) integer(attr *hcl.Attribute, def, lo, hi int) int {
	if attr == nil {
		return def
	}
	var n int
	if !d.decode(attr.Expr, &n) {
		return def
	}
	if n < lo || n > hi {
		d.errorf(attr.Expr.Range(), "Invalid value", "%s must be from %d to %d, not %d.", attr.Name, lo, hi, n)
		return def
	}
	return n
}
