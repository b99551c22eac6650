package strip

import (
	"fmt"
	"math"
	"math/big"
	"strings"

	"github.com/gabriel-vasile/mimetype"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/popgate/popgate/filters"
)

func init() {
	filters.RegisterFilter("strip", filters.FilterKind[Config]{Decode: decode, Build: build, Release: "user"})
}

// The attributes a rule has, in a rule block and (the short form) directly in
// the filter block.
var ruleAttrs = []hcl.AttributeSchema{
	{Name: "filenames"},
	{Name: "extensions"},
	{Name: "content_types"},
	{Name: "detected_types"},
	{Name: "archive_filenames"},
	{Name: "encrypted_archives"},
	{Name: "suspicious_names"},
	{Name: "min_size"},
	{Name: "max_size"},
	{Name: "action"},
}

var filterSchema = &hcl.BodySchema{
	Attributes: append(append([]hcl.AttributeSchema(nil), ruleAttrs...),
		hcl.AttributeSchema{Name: "on_limit"},
		hcl.AttributeSchema{Name: "max_depth"},
		hcl.AttributeSchema{Name: "max_parts"},
		hcl.AttributeSchema{Name: "max_header_size"},
		hcl.AttributeSchema{Name: "on_archive_limit"},
		hcl.AttributeSchema{Name: "on_unreadable_archive"},
		hcl.AttributeSchema{Name: "archive_depth"},
		hcl.AttributeSchema{Name: "archive_max_entries"},
		hcl.AttributeSchema{Name: "archive_max_size"},
		hcl.AttributeSchema{Name: "archive_max_ratio"},
	),
	Blocks: []hcl.BlockHeaderSchema{{Type: "rule", LabelNames: []string{"name"}}},
}

var ruleSchema = &hcl.BodySchema{Attributes: ruleAttrs}

// decode reads a strip filter's HCL block into its Config:
//
//	filter "strip" "dangerous" {
//	  extensions = ["exe", "scr"]             # short form: one rule, named like the filter
//	  rule "archives" {
//	    archive_filenames  = ["*.exe", "*.js"]
//	    encrypted_archives = true
//	    action             = "quarantine"     # strip (default) | reject | quarantine
//	  }
//	  on_limit = "reject"                      # reject (default) | tempfail | pass
//	}
//
// Every problem is reported as a diagnostic with the range of the value at
// fault.
func decode(name string, body hcl.Body, dc *filters.DecodeContext) (Config, hcl.Diagnostics) {
	d := &decoder{ctx: dc.Eval}
	content, diags := body.Content(filterSchema)
	d.diags = append(d.diags, diags...)
	if content == nil {
		return Config{}, d.diags
	}
	var cfg Config
	shortForm := hasSelectorAttr(content.Attributes)
	if shortForm {
		nerr := len(d.diags.Errs())
		r := d.rule(name, content.Attributes)
		if len(d.diags.Errs()) == nerr && !selects(&r) {
			d.errorf(body.MissingItemRange(), "Rule selects nothing", "The settings given directly in filter %q select no part (empty lists, false).", name)
		}
		cfg.Rules = append(cfg.Rules, r)
	} else if a := content.Attributes["action"]; a != nil {
		d.errorf(a.NameRange, "Action without selectors",
			"action applies to the rule given directly in the filter block (extensions, filenames, …), and there is none; put it in a rule block.")
	}
	seen := map[string]hcl.Range{}
	if shortForm {
		seen[name] = body.MissingItemRange()
	}
	for _, blk := range content.Blocks {
		rname := blk.Labels[0]
		if rname == "" {
			d.errorf(blk.LabelRanges[0], "Invalid rule name", "A rule needs a name.")
		}
		if prev, dup := seen[rname]; dup {
			what := "another rule at " + prev.String()
			if rname == name && shortForm {
				what = "the rule given directly in the filter block"
			}
			d.errorf(blk.LabelRanges[0], "Duplicate rule name", "Rule %q has the name of %s.", rname, what)
		}
		seen[rname] = blk.DefRange
		rc, diags := blk.Body.Content(ruleSchema)
		d.diags = append(d.diags, diags...)
		if rc == nil {
			continue
		}
		nerr := len(d.diags.Errs())
		r := d.rule(rname, rc.Attributes)
		if !hasSelectorAttr(rc.Attributes) || (len(d.diags.Errs()) == nerr && !selects(&r)) {
			d.errorf(blk.DefRange, "Rule selects nothing",
				"Rule %q needs at least one of filenames, extensions, content_types, detected_types, archive_filenames, encrypted_archives, suspicious_names, min_size or max_size.", rname)
		}
		cfg.Rules = append(cfg.Rules, r)
	}
	if len(cfg.Rules) == 0 {
		d.diags = append(d.diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "No rules",
			Detail:   fmt.Sprintf("Strip filter %q has no rules and passes every message unchanged; give extensions = [...] or rule blocks.", name),
			Subject:  body.MissingItemRange().Ptr(),
		})
	}
	attrs := content.Attributes
	cfg.OnLimit = d.action(attrs["on_limit"], "reject", "tempfail", "pass")
	cfg.OnArchiveLimit = d.action(attrs["on_archive_limit"], "reject", "quarantine", "strip", "tempfail", "pass")
	cfg.OnUnreadableArchive = d.action(attrs["on_unreadable_archive"], "reject", "quarantine", "strip", "tempfail", "pass")
	cfg.Limits.MaxDepth = d.integer(attrs["max_depth"], 1, 10000)
	cfg.Limits.MaxParts = d.integer(attrs["max_parts"], 1, 10000000)
	cfg.Limits.MaxHeaderBytes = int(d.size(attrs["max_header_size"], 1024, 1<<30))
	cfg.Archive.MaxDepth = d.integer(attrs["archive_depth"], 1, 32)
	cfg.Archive.MaxEntries = d.integer(attrs["archive_max_entries"], 1, 10000000)
	cfg.Archive.MaxSize = d.size(attrs["archive_max_size"], 1, math.MaxInt64)
	cfg.Archive.MaxRatio = d.integer(attrs["archive_max_ratio"], 2, 1000000)
	if d.diags.HasErrors() {
		return Config{}, d.diags
	}
	// Compiling the rules is what New checks beyond the decoder; it has no
	// side effects.
	if _, err := New(name, cfg, nil); err != nil {
		d.errorf(body.MissingItemRange(), "Invalid strip filter", "%v", err)
	}
	return cfg, d.diags
}

// build is the strip kind's build step.
func build(name string, cfg Config, bc *filters.BuildContext) (filters.Filter, error) {
	return New(name, cfg, bc.Spool)
}

type decoder struct {
	ctx   *hcl.EvalContext
	diags hcl.Diagnostics
}

func (d *decoder) errorf(r hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, filters.Diagnostic(hcl.DiagError, r, summary, format, args...))
}

func (d *decoder) warnf(r hcl.Range, summary, format string, args ...any) {
	d.diags = append(d.diags, filters.Diagnostic(hcl.DiagWarning, r, summary, format, args...))
}

func selects(r *Rule) bool {
	return len(r.Filenames)+len(r.Extensions)+len(r.ContentTypes)+len(r.DetectedTypes)+len(r.ArchiveFilenames) > 0 ||
		r.EncryptedArchives || r.SuspiciousNames || r.MinSize > 0 || r.MaxSize > 0
}

// hasSelectorAttr reports whether attrs has any rule attribute but action
// (whether its value is valid is checked on its own).
func hasSelectorAttr(attrs hcl.Attributes) bool {
	for _, a := range ruleAttrs {
		if a.Name != "action" && attrs[a.Name] != nil {
			return true
		}
	}
	return false
}

// rule decodes the rule attributes of attrs.
func (d *decoder) rule(name string, attrs hcl.Attributes) Rule {
	r := Rule{Name: name}
	for _, it := range d.list(attrs["filenames"]) {
		if _, err := normalizeGlob(it.s); err != nil {
			d.errorf(it.rng, "Invalid file name pattern", "%v.", err)
			continue
		}
		r.Filenames = append(r.Filenames, it.s)
	}
	for _, it := range d.list(attrs["extensions"]) {
		if _, err := normalizeExtension(it.s); err != nil {
			d.errorf(it.rng, "Invalid extension", "%v.", err)
			continue
		}
		r.Extensions = append(r.Extensions, it.s)
	}
	for _, it := range d.list(attrs["content_types"]) {
		if _, err := normalizeTypePattern(it.s); err != nil {
			d.errorf(it.rng, "Invalid content type", "%v.", err)
			continue
		}
		r.ContentTypes = append(r.ContentTypes, it.s)
	}
	for _, it := range d.list(attrs["detected_types"]) {
		t, err := normalizeTypePattern(it.s)
		if err != nil {
			d.errorf(it.rng, "Invalid content type", "%v.", err)
			continue
		}
		if _, alias := typeAliases[t]; !alias && !strings.ContainsAny(t, "*?[") && mimetype.Lookup(t) == nil {
			d.warnf(it.rng, "Type never detected", "%q is not a type the content sniffer (mimetype) detects; this entry will never match.", it.s)
		}
		r.DetectedTypes = append(r.DetectedTypes, it.s)
	}
	for _, it := range d.list(attrs["archive_filenames"]) {
		if _, err := normalizeGlob(it.s); err != nil {
			d.errorf(it.rng, "Invalid file name pattern", "%v.", err)
			continue
		}
		r.ArchiveFilenames = append(r.ArchiveFilenames, it.s)
	}
	r.EncryptedArchives = d.boolean(attrs["encrypted_archives"])
	r.SuspiciousNames = d.boolean(attrs["suspicious_names"])
	r.MinSize = d.size(attrs["min_size"], 0, math.MaxInt64)
	r.MaxSize = d.size(attrs["max_size"], 1, math.MaxInt64)
	if r.MaxSize > 0 && r.MinSize > r.MaxSize {
		d.errorf(attrs["min_size"].Expr.Range(), "Invalid size range", "min_size (%d bytes) is larger than max_size (%d bytes).", r.MinSize, r.MaxSize)
	}
	r.Action = d.action(attrs["action"], "strip", "reject", "quarantine")
	return r
}

type item struct {
	s   string
	rng hcl.Range
}

// list decodes a list of strings, each with its own range when the value
// is a list literal.
func (d *decoder) list(a *hcl.Attribute) []item {
	if a == nil {
		return nil
	}
	var out []item
	if exprs, diags := hcl.ExprList(a.Expr); !diags.HasErrors() {
		for _, e := range exprs {
			v, diags := e.Value(d.ctx)
			d.diags = append(d.diags, diags...)
			if diags.HasErrors() {
				continue
			}
			s, ok := d.str(v, e.Range(), a.Name)
			if ok {
				out = append(out, item{s, e.Range()})
			}
		}
		return out
	}
	v, diags := a.Expr.Value(d.ctx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return nil
	}
	lv, err := convert.Convert(v, cty.List(cty.String))
	if err != nil || lv.IsNull() || !lv.IsWhollyKnown() {
		d.errorf(a.Expr.Range(), "Invalid value", "%s must be a list of strings, like [\"a\", \"b\"].", a.Name)
		return nil
	}
	for it := lv.ElementIterator(); it.Next(); {
		_, ev := it.Element()
		if s, ok := d.str(ev, a.Expr.Range(), a.Name); ok {
			out = append(out, item{s, a.Expr.Range()})
		}
	}
	return out
}

func (d *decoder) str(v cty.Value, rng hcl.Range, what string) (string, bool) {
	sv, err := convert.Convert(v, cty.String)
	if err != nil || sv.IsNull() || !sv.IsKnown() {
		d.errorf(rng, "Invalid value", "The elements of %s must be strings.", what)
		return "", false
	}
	return sv.AsString(), true
}

func (d *decoder) value(a *hcl.Attribute, ty cty.Type, want string) (cty.Value, bool) {
	if a == nil {
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(d.ctx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, false
	}
	cv, err := convert.Convert(v, ty)
	if err != nil || cv.IsNull() || !cv.IsWhollyKnown() {
		d.errorf(a.Expr.Range(), "Invalid value", "%s must be %s.", a.Name, want)
		return cty.NilVal, false
	}
	return cv, true
}

func (d *decoder) boolean(a *hcl.Attribute) bool {
	v, ok := d.value(a, cty.Bool, "true or false")
	return ok && v.True()
}

func (d *decoder) integer(a *hcl.Attribute, lo, hi int) int {
	v, ok := d.value(a, cty.Number, "a whole number")
	if !ok {
		return 0
	}
	bf := v.AsBigFloat()
	if !bf.IsInt() || bf.Cmp(big.NewFloat(float64(lo))) < 0 || bf.Cmp(big.NewFloat(float64(hi))) > 0 {
		d.errorf(a.Expr.Range(), "Invalid value", "%s must be a whole number from %d to %d.", a.Name, lo, hi)
		return 0
	}
	n, _ := bf.Int64()
	return int(n)
}

func (d *decoder) size(a *hcl.Attribute, lo, hi int64) int64 {
	v, ok := d.value(a, cty.String, `a size such as "10MB"`)
	if !ok {
		return 0
	}
	s := v.AsString()
	n, err := filters.ParseSize(s)
	if err != nil {
		d.errorf(a.Expr.Range(), "Invalid size", "%q is not a size: %v.", s, err)
		return 0
	}
	if n < lo || n > hi {
		d.errorf(a.Expr.Range(), "Invalid size", "%s must be from %d to %d bytes, not %q.", a.Name, lo, hi, s)
		return 0
	}
	return n
}

func (d *decoder) action(a *hcl.Attribute, allowed ...string) Action {
	v, ok := d.value(a, cty.String, "a string")
	if !ok {
		return ActionDefault
	}
	s := v.AsString()
	for _, al := range allowed {
		if s == al {
			act, _ := ParseAction(s)
			return act
		}
	}
	d.errorf(a.Expr.Range(), "Invalid action", "%s must be one of %q, not %q.", a.Name, allowed, s)
	return ActionDefault
}
