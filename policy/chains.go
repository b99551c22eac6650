package policy

import (
	"errors"
	"net/mail"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/filters/quarantine"
	"github.com/popgate/popgate/filters/quarantine/release"
)

// Policy is one `policy "NAME"` block: what happens to the messages of the
// sessions it applies to.
type Policy struct {
	Name string
	// Chain names the filter blocks in the order they run (attribute
	// chain); Filters holds them, decoded.
	Chain   []string
	Filters []*filters.FilterSpec
	// OnError applies when a filter cannot decide (attribute on_error:
	// "tempfail", the default, "pass" or "reject").
	OnError filters.OnError
	// FilterTOP is attribute top: "filter" (the default: TOP shows the start
	// of the filtered message) or "pass" (TOP is relayed unfiltered).
	FilterTOP bool
	// KeepAlive (attribute keepalive, a duration, default off) trickles
	// header lines to the client while a slow chain runs.
	KeepAlive time.Duration
	// MaxSize (attribute max_size, a size, default none) is the largest
	// message the chain filters; a larger one gets on_error.
	MaxSize int64
	// NoticeOnReject is attribute rejected: "notice" (the default: a
	// withheld message is replaced by a notice once its original is in
	// quarantine) or "error" (-ERR [SYS/PERM]; the message stays on the
	// server).
	NoticeOnReject bool
	// Rescan (attribute rescan) says when the message memory's verdicts
	// are not trusted any more, or (Off) that the policy scans every
	// download.
	Rescan Rescan
	// Encrypted is what happens to a message with encrypted parts, which
	// no filter can read (attribute encrypted: "pass-with-tag", the
	// default, "tempfail" or "reject"); filters.EncryptedIgnore when every
	// filter of the chain reads headers only.
	Encrypted filters.Encrypted
	// Match says who the policy applies to; nil for the default policy
	// (see Config.Select).
	Match *Match
	Range hcl.Range
}

// Quarantine is the `quarantine` block.
type Quarantine struct {
	// Dir holds the originals (attribute dir, required); popgate creates it
	// (mode 0700) if it does not exist.
	Dir string
	// NoticeFrom is the From address of notices (attribute notice_from,
	// default "Mail gateway <postmaster@localhost>", quarantine.DefaultNoticeFrom).
	NoticeFrom string
	// Retention is how long an original is kept (attribute retention,
	// default "30d"; "0" keeps it until deleted).
	Retention time.Duration
	// Release is the release block (or its defaults).
	Release QuarantineRelease
}

// DefaultNoticeFrom is the From of notices when quarantine sets none.
const DefaultNoticeFrom = quarantine.DefaultNoticeFrom

type policySchema struct {
	Name      string    `hcl:"name,label"`
	NameRange hcl.Range `hcl:"name,label_range"`
	DefRange  hcl.Range `hcl:",def_range"`

	Chain     *hcl.Attribute `hcl:"chain,optional"`
	OnError   *hcl.Attribute `hcl:"on_error,optional"`
	TOP       *hcl.Attribute `hcl:"top,optional"`
	KeepAlive *hcl.Attribute `hcl:"keepalive,optional"`
	MaxSize   *hcl.Attribute `hcl:"max_size,optional"`
	Rejected  *hcl.Attribute `hcl:"rejected,optional"`
	Rescan    *hcl.Attribute `hcl:"rescan,optional"`
	Encrypted *hcl.Attribute `hcl:"encrypted,optional"`

	Match []*matchSchema `hcl:"match,block"` // at most one
}

type quarantineSchema struct {
	DefRange hcl.Range `hcl:",def_range"`

	Dir        *hcl.Attribute `hcl:"dir,optional"`
	NoticeFrom *hcl.Attribute `hcl:"notice_from,optional"`
	Retention  *hcl.Attribute `hcl:"retention,optional"`

	Release []*quarantineReleaseSchema `hcl:"release,block"` // at most one
}

func (s *quarantineSchema) defRange() hcl.Range { return s.DefRange }

// filtersAndPolicies decodes scanners, filters, the quarantine and the
// policies. Filter and scanner types decode their own blocks through the
// kinds registered in package filters; nothing is built or started here.
func (d *decoder) filtersAndPolicies(root *rootSchema, cfg *Config) {
	dc := &filters.DecodeContext{Eval: d.ctx, Scanners: map[string]*filters.ScannerSpec{}}
	declaredScanners := map[string]hcl.Range{}
	for _, b := range root.Scanners {
		d.checkName("scanner", b.Name, b.NameRange)
		if first, dup := declaredScanners[b.Name]; dup {
			d.errorf(b.NameRange, "Duplicate scanner", "A scanner named %q was already defined at %s.", b.Name, posString(first))
			continue
		}
		declaredScanners[b.Name] = b.NameRange
		spec, diags, ok := filters.DecodeScanner(b.Type, b.Name, b.DefRange, b.Body, dc)
		if !ok {
			d.errorf(b.TypeRange, "Unknown scanner type", "There is no scanner type %q; known types: %q.", b.Type, filters.ScannerTypes())
			continue
		}
		d.diags = append(d.diags, diags...)
		if spec != nil {
			dc.Scanners[b.Name] = spec
			cfg.Scanners = append(cfg.Scanners, spec)
		}
	}

	cfg.Filters = map[string]*filters.FilterSpec{}
	cfg.Release = map[string]release.Permission{}
	cfg.Signed = map[string]filters.Signed{}
	filterRanges := map[string]hcl.Range{}
	for _, b := range root.Filters {
		d.checkName("filter", b.Name, b.NameRange)
		if first, dup := filterRanges[b.Name]; dup {
			d.errorf(b.NameRange, "Duplicate filter", "A filter named %q was already defined at %s.", b.Name, posString(first))
			continue
		}
		filterRanges[b.Name] = b.NameRange
		if b.Name == filters.EncryptedStep {
			// A released copy passes the steps that held its original by
			// name: a filter of that name would pass with the chain's own.
			d.errorf(b.NameRange, "Reserved filter name", "%q names the chain's own step for encrypted messages; choose another name.", b.Name)
		}
		perm, body := d.filterRelease(b.Type, b.Body)
		signed, body := d.filterSigned(body)
		spec, diags, ok := filters.DecodeFilter(b.Type, b.Name, b.DefRange, body, dc)
		if !ok {
			d.errorf(b.TypeRange, "Unknown filter type", "There is no filter type %q; known types: %q.", b.Type, filters.FilterTypes())
			continue
		}
		d.diags = append(d.diags, diags...)
		if spec != nil {
			cfg.Filters[b.Name] = spec
			cfg.Release[b.Name] = perm
			cfg.Signed[b.Name] = signed
		}
	}

	cfg.Quarantine = d.quarantine(single(d, "quarantine", root.Quarantine))

	firstPolicy := map[string]hcl.Range{}
	used := map[string]bool{}
	listeners := map[string]bool{}
	for _, l := range cfg.Listeners {
		listeners[l.Name] = true
	}
	var defaultPolicy *policySchema
	for _, s := range root.Policies {
		d.checkName("policy", s.Name, s.NameRange)
		if first, dup := firstPolicy[s.Name]; dup {
			d.errorf(s.NameRange, "Duplicate policy", "A policy named %q was already defined at %s.", s.Name, posString(first))
			continue
		}
		firstPolicy[s.Name] = s.NameRange
		p := d.policy(s, cfg.Filters, filterRanges, used)
		if m := single(d, "match", s.Match); m != nil {
			p.Match = d.match(m, listeners, cfg.Upstreams)
		} else if defaultPolicy != nil {
			d.errorf(s.DefRange, "Second default policy",
				"Policy %q has no match block, and neither has policy %q (at %s): only one policy may be the default. Give one of them a match block.",
				s.Name, defaultPolicy.Name, posString(defaultPolicy.DefRange))
		} else {
			defaultPolicy = s
		}
		if len(p.Chain) > 0 && cfg.Quarantine == nil {
			d.warnf(s.DefRange, "Policy without quarantine",
				"Policy %q filters messages, but there is no quarantine block: a message a filter would change is deferred instead (its original could not be kept), and a withheld message gets -ERR [SYS/PERM] instead of a notice.", s.Name)
		}
		cfg.Policies = append(cfg.Policies, p)
	}
	for _, b := range root.Filters {
		if !used[b.Name] {
			d.warnf(b.NameRange, "Unused filter", "Filter %q is in no policy's chain, so it never runs.", b.Name)
		}
	}
}

// policy decodes a policy block; used collects the filter names its chain
// mentions.
func (d *decoder) policy(s *policySchema, built map[string]*filters.FilterSpec, declared map[string]hcl.Range, used map[string]bool) *Policy {
	p := &Policy{Name: s.Name, Range: s.DefRange, FilterTOP: true, NoticeOnReject: true}
	if s.Chain != nil {
		exprs, diags := hcl.ExprList(s.Chain.Expr)
		d.diags = append(d.diags, diags...)
		seen := map[string]bool{}
		for _, e := range exprs {
			v, diags := e.Value(d.ctx)
			d.diags = append(d.diags, diags...)
			if diags.HasErrors() {
				continue
			}
			if v.IsNull() || !v.IsWhollyKnown() || v.Type() != cty.String {
				d.errorf(e.Range(), "Invalid chain entry", "Each chain entry is the name of a filter block, as a string.")
				continue
			}
			name := v.AsString()
			used[name] = true
			switch {
			case seen[name]:
				d.errorf(e.Range(), "Duplicate chain entry", "Filter %q appears twice in the chain of policy %q.", name, s.Name)
			case built[name] != nil:
				p.Chain = append(p.Chain, name)
				p.Filters = append(p.Filters, built[name])
			default:
				if _, ok := declared[name]; !ok {
					d.errorf(e.Range(), "Unknown filter", "Policy %q names filter %q, but there is no filter block with that name.", s.Name, name)
				}
				// A declared filter that failed to decode has its own
				// diagnostics already.
			}
			seen[name] = true
		}
	}
	if s.OnError != nil {
		mode := d.enum(s.OnError, "tempfail", "tempfail", "pass", "pass-with-tag", "reject")
		p.OnError, _ = filters.ParseOnError(mode)
	}
	p.FilterTOP = d.enum(s.TOP, "filter", "filter", "pass") == "filter"
	if s.KeepAlive != nil {
		p.KeepAlive = d.duration(s.KeepAlive, 0, false)
	}
	p.MaxSize = d.size(s.MaxSize, 0)
	p.NoticeOnReject = d.enum(s.Rejected, "notice", "notice", "error") == "notice"
	p.Rescan = d.rescan(s.Rescan)
	p.Encrypted = d.encrypted(s, p)
	return p
}

func (d *decoder) quarantine(s *quarantineSchema) *Quarantine {
	if s == nil {
		return nil
	}
	q := &Quarantine{NoticeFrom: d.str(s.NoticeFrom, DefaultNoticeFrom)}
	if s.NoticeFrom != nil {
		if _, err := mail.ParseAddress(q.NoticeFrom); err != nil {
			d.errorf(s.NoticeFrom.Expr.Range(), "Invalid address", "notice_from: %q is not a mail address (%v).", q.NoticeFrom, err)
		}
	}
	if !d.requireAttr(s.Dir, s.DefRange, "quarantine", "dir", `dir = "/var/lib/popgate/quarantine"`) {
		return q
	}
	raw, dir, ok := d.pathAttr(s.Dir)
	if !ok {
		return q
	}
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		d.errorf(s.Dir.Expr.Range(), "Not a directory", "dir: %s is not a directory.", dir)
	case errors.Is(err, os.ErrNotExist):
		// popgate creates it (and its parents) at startup.
	case err != nil:
		d.fileProblem(s.Dir, raw, dir, err)
	}
	q.Dir = dir
	q.Retention = d.duration(s.Retention, DefaultQuarantineRetention, true)
	d.quarantineRelease(single(d, "release", s.Release), q)
	return q
}
