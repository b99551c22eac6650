package clamav

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/hcldecode"
)

func init() {
	filters.RegisterScanner("clamav", filters.ScannerKind[Config]{Decode: decodeScanner, Build: filters.BuildScanner(NewScanner)})
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
	ProbeStreamMax *hcl.Attribute `hcl:"probe_stream_max,optional"`
	// ReuseConnections: false for a connection per scan (a clamd behind
	// something that does not keep connections open).
	ReuseConnections *hcl.Attribute `hcl:"reuse_connections,optional"`
}

// filterBlock is the body of `filter "clamav" "NAME" { … }`.
type filterBlock struct {
	Scanner  *hcl.Attribute `hcl:"scanner"`
	Oversize *hcl.Attribute `hcl:"oversize,optional"`
	Scan     *hcl.Attribute `hcl:"scan,optional"`
}

// DecodeConfig decodes and checks the body of a clamav scanner block.
func DecodeConfig(body hcl.Body, eval *hcl.EvalContext) (Config, hcl.Diagnostics) {
	var blk scannerBlock
	diags := gohcl.DecodeBody(body, eval, &blk)
	if diags.HasErrors() {
		return Config{}, diags
	}
	var cfg Config
	d := &hcldecode.Decoder{Eval: eval}
	if blk.Addresses == nil {
		d.Missing(body, "addresses", `addresses = ["tcp://127.0.0.1:3310"]`)
		return Config{}, append(diags, d.Diags...)
	}
	cfg.Addresses = d.Addresses(blk.Addresses, "clamd", `"tcp://127.0.0.1:3310" or "unix:///run/clamav/clamd.ctl"`, func(s string) (string, error) {
		network, address, err := ParseAddress(s)
		return network + " " + address, err
	})
	cfg.Timeout = d.Duration(blk.Timeout, DefaultTimeout, minPolicyDuration, maxPolicyDuration)
	cfg.MaxSize = d.Size(blk.MaxSize, DefaultMaxSize, maxPolicySize, "2GiB (ClamAV cannot scan more)")
	cfg.MaxConcurrent = d.Integer(blk.MaxConcurrent, DefaultMaxConcurrent, 1, maxPolicyConc)
	cfg.HealthInterval = d.Duration(blk.HealthInterval, DefaultHealthInterval, minPolicyDuration, maxPolicyDuration)
	cfg.ProbeStreamMax = true
	if blk.ProbeStreamMax != nil {
		d.Decode(blk.ProbeStreamMax.Expr, &cfg.ProbeStreamMax)
	}
	cfg.ReuseConnections = true
	if blk.ReuseConnections != nil {
		d.Decode(blk.ReuseConnections.Expr, &cfg.ReuseConnections)
	}
	if blk.MaxSize != nil && cfg.MaxSize > clamdDefaultMaxFileSize {
		d.Diags = append(d.Diags, &hcl.Diagnostic{
			Severity: hcl.DiagWarning,
			Summary:  "max_size above clamd's default MaxFileSize",
			Detail: "clamd does not scan a stream larger than its MaxFileSize (default 100M) and calls it clean " +
				"unless clamd.conf sets AlertExceedsMax yes; raise MaxFileSize and StreamMaxLength in clamd.conf to at least max_size.",
			Subject: blk.MaxSize.Expr.Range().Ptr(),
		})
	}
	return cfg, append(diags, d.Diags...)
}

// decodeScanner is the clamav scanner kind's decode step.
func decodeScanner(_ string, body hcl.Body, dc *filters.DecodeContext) (Config, hcl.Diagnostics) {
	return DecodeConfig(body, dc.Eval)
}

// FilterSettings is a decoded `filter "clamav" "NAME"` block.
type FilterSettings struct {
	Scanner  string // the name of a scanner "clamav" block
	Oversize Oversize
	Scan     ScanMode
}

// decodeFilter is the clamav filter kind's decode step.
func decodeFilter(_ string, body hcl.Body, dc *filters.DecodeContext) (FilterSettings, hcl.Diagnostics) {
	var blk filterBlock
	diags := gohcl.DecodeBody(body, dc.Eval, &blk)
	if diags.HasErrors() {
		return FilterSettings{}, diags
	}
	d := &hcldecode.Decoder{Eval: dc.Eval}
	if blk.Scanner == nil {
		d.Missing(body, "scanner", `scanner = "local", the name of a scanner "clamav" block`)
		return FilterSettings{}, append(diags, d.Diags...)
	}
	fs := FilterSettings{Oversize: OversizeTempFail}
	if blk.Oversize != nil {
		if s, ok := d.Str(blk.Oversize); ok {
			o, err := ParseOversize(s)
			if err != nil {
				d.Errorf(blk.Oversize.Expr.Range(), "Invalid value", "oversize must be one of \"tempfail\", \"pass-with-tag\", \"reject\" or \"quarantine\", not %q.", s)
			}
			fs.Oversize = o
		}
	}
	if s, ok := d.Str(blk.Scan); ok {
		m, err := ParseScanMode(s)
		if err != nil {
			d.Errorf(blk.Scan.Expr.Range(), "Invalid value", "scan must be one of \"message\", \"parts\" or \"both\", not %q.", s)
		}
		fs.Scan = m
	}
	if ref, ok := d.Str(blk.Scanner); ok {
		_, sd := dc.Scanner(ref, "clamav", blk.Scanner.Expr.Range())
		d.Diags = append(d.Diags, sd...)
		fs.Scanner = ref
	}
	return fs, append(diags, d.Diags...)
}

// buildFilter is the clamav filter kind's build step.
func buildFilter(name string, fs FilterSettings, bc *filters.BuildContext) (filters.Filter, error) {
	s, ok := bc.Scanners[fs.Scanner].(*Scanner)
	if !ok {
		return nil, fmt.Errorf("scanner %q is not a running clamav scanner", fs.Scanner)
	}
	f := NewFilter(name, s, fs.Oversize)
	f.scan = fs.Scan
	return f, nil
}
