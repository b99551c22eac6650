package rspamd

import (
	"fmt"
	"math"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/tag"
	"github.com/popgate/popgate/internal/hcldecode"
)

func init() {
	// A user may release what the spam filter held: a false positive is
	// theirs to judge, unlike a virus.
	filters.RegisterFilter("spam", filters.FilterKind[FilterSettings]{Decode: decodeFilter, Build: buildFilter, Release: "user"})
}

// thresholdAttrs are the threshold attributes, in the order their scores
// must ascend.
var thresholdAttrs = []struct {
	name  string
	level Level
}{{"tag_above", LevelTag}, {"subject_above", LevelSubject}, {"quarantine_above", LevelQuarantine}}

var filterSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "scanner"},
		{Name: "tag_above"},
		{Name: "subject_above"},
		{Name: "quarantine_above"},
		{Name: "refuse_above"},
		{Name: "use_scanner_action"},
		{Name: "scanner_actions"},
		{Name: "subject_prefix"},
		{Name: "keep_original_subject"},
		{Name: "symbols_header"},
		{Name: "scanner_headers"},
		{Name: "remove_headers"},
		{Name: "oversize"},
	},
}

// decodeFilter is the decode step of the "spam" kind:
//
//	scanner               = "rspamd"   # required: a scanner "rspamd" block
//	tag_above             = 5          # thresholds (any of them), ascending,
//	subject_above         = 8          # or use_scanner_action = true
//	quarantine_above      = 15
//	use_scanner_action    = true       # rspamd's action decides instead
//	scanner_actions       = { "greylist" = "pass" }  # overrides the defaults
//	subject_prefix        = "[SPAM]"
//	keep_original_subject = true
//	symbols_header        = false
//	scanner_headers       = true       # apply rspamd's milter header changes
//	remove_headers        = true       # allow removals (a lossy change)
//	oversize              = "pass-with-tag"  # over the scanner's max_size
//
// Every problem is a diagnostic at the attribute, key or value it is about.
func decodeFilter(name string, body hcl.Body, dc *filters.DecodeContext) (FilterSettings, hcl.Diagnostics) {
	content, diags := body.Content(filterSchema)
	d := &hcldecode.Decoder{Eval: dc.Eval, Diags: diags}
	fs := DefaultFilterSettings()
	attrs := content.Attributes

	if a := attrs["scanner"]; a == nil {
		d.Missing(body, "scanner", `scanner = "rspamd", the name of a scanner "rspamd" block`)
	} else if ref, ok := d.Str(a); ok {
		_, sd := dc.Scanner(ref, "rspamd", a.Expr.Range())
		d.Diags = append(d.Diags, sd...)
		fs.Scanner = ref
	}

	if a := attrs["refuse_above"]; a != nil {
		d.Errorf(a.NameRange, "Unsupported argument",
			`A withheld message is refused or replaced by a notice as the policy's "rejected" setting says ("error" or "notice"); write quarantine_above for the score from which the message is withheld.`)
	}
	var last *hcl.Attribute
	for _, ta := range thresholdAttrs {
		a := attrs[ta.name]
		if a == nil {
			continue
		}
		var x float64
		if !d.Decode(a.Expr, &x) {
			continue
		}
		if math.IsNaN(x) || math.IsInf(x, 0) {
			d.Errorf(a.Expr.Range(), "Invalid threshold", "%s must be a finite score.", ta.name)
			continue
		}
		if n := len(fs.Thresholds); n > 0 && x <= fs.Thresholds[n-1].Score {
			d.Errorf(a.Expr.Range(), "Thresholds not ascending",
				"%s (%s) must be above %s (%s, at %s): a higher action needs a higher score; leave an action out rather than give it the same score.",
				ta.name, formatThreshold(x), last.Name, formatThreshold(fs.Thresholds[n-1].Score), atRange(last.Expr.Range()))
			continue
		}
		fs.Thresholds = append(fs.Thresholds, Threshold{Level: ta.level, Score: x})
		last = a
	}

	useAction := attrs["use_scanner_action"]
	if useAction != nil {
		d.Decode(useAction.Expr, &fs.UseScannerAction)
	}
	switch {
	case fs.UseScannerAction && last != nil:
		d.Errorf(useAction.Expr.Range(), "Conflicting arguments",
			"use_scanner_action = true lets rspamd's action decide, and %s (at %s) sets a threshold of popgate's: choose one.", last.Name, atRange(last.NameRange))
	case !fs.UseScannerAction && last == nil && !d.Diags.HasErrors():
		d.Errorf(body.MissingItemRange(), "No spam actions",
			"filter %q decides nothing: set thresholds (tag_above = 5, subject_above = 8, quarantine_above = 15; any of them) or use_scanner_action = true.", name)
	}
	if a := attrs["scanner_actions"]; a != nil {
		if !fs.UseScannerAction {
			d.Errorf(a.NameRange, "scanner_actions without use_scanner_action",
				"scanner_actions maps rspamd's actions and applies only with use_scanner_action = true.")
		}
		fs.ScannerActions = decodeActions(d, a)
	}

	if a := attrs["subject_prefix"]; a != nil {
		if p, ok := d.Str(a); ok {
			if _, err := tag.New(name, tag.Config{SubjectPrefix: p}, ""); err != nil {
				d.Errorf(a.Expr.Range(), "Invalid subject prefix", "%s.", strings.TrimPrefix(err.Error(), "subject_prefix: "))
			}
			fs.SubjectPrefix = p
		}
	}
	if a := attrs["oversize"]; a != nil {
		if v, ok := d.Str(a); ok {
			o, err := filters.ParseOversize(v)
			if err != nil {
				d.Errorf(a.Expr.Range(), "Invalid value", "oversize must be one of \"tempfail\", \"pass-with-tag\", \"reject\" or \"quarantine\", not %q.", v)
			}
			fs.Oversize = o
		}
	}
	keep := true
	for _, b := range []struct {
		name string
		dst  *bool
	}{
		{"keep_original_subject", &keep},
		{"symbols_header", &fs.SymbolsHeader},
		{"scanner_headers", &fs.ScannerHeaders},
		{"remove_headers", &fs.RemoveHeaders},
	} {
		if a := attrs[b.name]; a != nil {
			d.Decode(a.Expr, b.dst)
		}
	}
	fs.DropOriginalSubject = !keep
	if d.Diags.HasErrors() {
		return FilterSettings{}, d.Diags
	}
	if a := attrs["subject_prefix"]; a != nil && !fs.reaches(LevelSubject) {
		d.Diags = append(d.Diags, filters.Diagnostic(hcl.DiagWarning, a.NameRange, "Subject prefix unused",
			"No message reaches the subject action (set subject_above, or map an rspamd action to \"subject\"), so subject_prefix is never used."))
	}
	if err := fs.check(); err != nil { // checked above already; kept as a safety net
		d.Errorf(body.MissingItemRange(), "Invalid spam filter", "%s.", err)
		return FilterSettings{}, d.Diags
	}
	return fs, d.Diags
}

// buildFilter is the spam filter kind's build step. It takes any scanner
// that gives spam reports (the decode step checked the block's kind).
func buildFilter(name string, fs FilterSettings, bc *filters.BuildContext) (filters.Filter, error) {
	s := bc.Scanners[fs.Scanner]
	if s == nil {
		return nil, fmt.Errorf("scanner %q is not running", fs.Scanner)
	}
	return NewFilter(name, s, fs)
}

// actions decodes scanner_actions, an object of rspamd actions to levels,
// over DefaultScannerActions.
func decodeActions(d *hcldecode.Decoder, a *hcl.Attribute) map[string]Level {
	pairs, diags := hcl.ExprMap(a.Expr)
	if diags.HasErrors() {
		d.Errorf(a.Expr.Range(), "Invalid scanner_actions",
			`scanner_actions is an object of rspamd actions to popgate's, like { "greylist" = "pass", "reject" = "quarantine" }.`)
		return nil
	}
	m := make(map[string]Level, len(DefaultScannerActions))
	for k, v := range DefaultScannerActions {
		m[k] = v
	}
	seen := map[string]hcl.Range{}
	for _, p := range pairs {
		var k, v string
		if !d.Decode(p.Key, &k) || !d.Decode(p.Value, &v) {
			continue
		}
		action := strings.ToLower(strings.TrimSpace(k))
		if _, ok := DefaultScannerActions[action]; !ok {
			d.Errorf(p.Key.Range(), "Unknown rspamd action", "%q is not an action of rspamd; it has %s.", k, quoteNames(ScannerActions))
			continue
		}
		if prev, dup := seen[action]; dup {
			d.Errorf(p.Key.Range(), "Duplicate rspamd action", "%q is already mapped at %s.", k, atRange(prev))
			continue
		}
		seen[action] = p.Key.Range()
		l, err := ParseLevel(v)
		if err != nil {
			d.Errorf(p.Value.Range(), "Unknown spam action", "%q is not an action of the spam filter; it has %s.", v, quoteNames(levelNames[:]))
			continue
		}
		m[action] = l
	}
	return m
}

func atRange(r hcl.Range) string {
	return fmt.Sprintf("%s:%d:%d", r.Filename, r.Start.Line, r.Start.Column)
}
