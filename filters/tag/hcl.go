package tag

import (
	"fmt"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/popgate/popgate/filters"
)

var schema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "headers"},
		{Name: "subject_prefix"},
		{Name: "keep_original_subject"},
		{Name: "verdicts"},
		{Name: "version"},
	},
}

// decode is the decode step of the "tag" kind: it reads
//
//	headers               = { "Name" = "value", … }  # optional, added in this order
//	subject_prefix        = "[SCANNED]"               # optional
//	keep_original_subject = true                      # optional, default true
//	verdicts              = true                      # optional: X-Popgate-Verdict with the filters' verdicts so far
//	version               = true                      # optional: X-Popgate-Version
//
// and reports every problem as a diagnostic with the range of the offending
// key or value.
func decode(name string, body hcl.Body, dc *filters.DecodeContext) (Config, hcl.Diagnostics) {
	ctx := dc.Eval
	content, diags := body.Content(schema)
	var cfg Config
	seen := map[string]hcl.Range{}

	addField := func(k, v string, kr, vr hcl.Range) {
		if err := checkName(k); err != nil {
			diags = append(diags, errorDiag(kr, "Invalid header field name", fmt.Sprintf("headers: %q: %s.", k, err)))
			return
		}
		if prev, dup := seen[strings.ToLower(k)]; dup {
			diags = append(diags, errorDiag(kr, "Duplicate header field", fmt.Sprintf("headers: %q is already set at %s.", k, prev)))
			return
		}
		seen[strings.ToLower(k)] = kr
		if err := checkValue(v, maxValueLen); err != nil {
			diags = append(diags, errorDiag(vr, "Invalid header field value", fmt.Sprintf("headers: %q: %s.", k, err)))
			return
		}
		cfg.Headers = append(cfg.Headers, Field{Name: k, Value: v})
	}

	if attr, ok := content.Attributes["headers"]; ok {
		pairs, d := hcl.ExprMap(attr.Expr)
		if !d.HasErrors() {
			// An object literal: keep the order it is written in.
			for _, p := range pairs {
				var k, v string
				kd := gohcl.DecodeExpression(p.Key, ctx, &k)
				vd := gohcl.DecodeExpression(p.Value, ctx, &v)
				diags = append(diags, kd...)
				diags = append(diags, vd...)
				if kd.HasErrors() || vd.HasErrors() {
					continue
				}
				addField(k, v, p.Key.Range(), p.Value.Range())
			}
		} else {
			// Some other expression that yields a map: sorted by name.
			var m map[string]string
			d := gohcl.DecodeExpression(attr.Expr, ctx, &m)
			diags = append(diags, d...)
			if !d.HasErrors() {
				keys := make([]string, 0, len(m))
				for k := range m {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					addField(k, m[k], attr.Expr.Range(), attr.Expr.Range())
				}
			}
		}
	}
	if attr, ok := content.Attributes["subject_prefix"]; ok {
		d := gohcl.DecodeExpression(attr.Expr, ctx, &cfg.SubjectPrefix)
		diags = append(diags, d...)
		if !d.HasErrors() {
			if err := checkPrefix(cfg.SubjectPrefix); err != nil {
				diags = append(diags, errorDiag(attr.Expr.Range(), "Invalid subject prefix", fmt.Sprintf("subject_prefix: %s.", err)))
			}
		}
	}
	if attr, ok := content.Attributes["keep_original_subject"]; ok {
		keep := true
		d := gohcl.DecodeExpression(attr.Expr, ctx, &keep)
		diags = append(diags, d...)
		cfg.DropOriginalSubject = !keep
	}
	for _, b := range []struct {
		name string
		dst  *bool
	}{{"verdicts", &cfg.Verdicts}, {"version", &cfg.Version}} {
		if attr, ok := content.Attributes[b.name]; ok {
			diags = append(diags, gohcl.DecodeExpression(attr.Expr, ctx, b.dst)...)
		}
	}
	if diags.HasErrors() {
		return Config{}, diags
	}
	if len(cfg.Headers) == 0 && cfg.SubjectPrefix == "" && !cfg.Verdicts && !cfg.Version {
		r := body.MissingItemRange()
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "Tag filter does nothing",
			Detail:   fmt.Sprintf("filter %q sets neither headers nor subject_prefix; messages pass unchanged.", name),
			Subject:  &r,
		})
	}
	if _, err := New(name, cfg, ""); err != nil { // checked above already; kept as a safety net
		r := body.MissingItemRange()
		return Config{}, append(diags, errorDiag(r, "Invalid tag filter", err.Error()))
	}
	return cfg, diags
}

func errorDiag(r hcl.Range, summary, detail string) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: r.Ptr()}
}
