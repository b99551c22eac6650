package clamav

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
	"github.com/zclconf/go-cty/cty"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/hcltest"
)

// newScanner decodes src through the registered kind and builds the
// scanner (nil when src has errors).
func newScanner(t *testing.T, src string) (*Scanner, hcl.Diagnostics) {
	t.Helper()
	eval := &hcl.EvalContext{Variables: map[string]cty.Value{"clamd_port": cty.StringVal("3310")}}
	spec, diags, ok := filters.DecodeScanner("clamav", "local", hcl.Range{}, hcltest.Block(t, src), &filters.DecodeContext{Eval: eval})
	if !ok {
		t.Fatal("scanner type clamav not registered")
	}
	if spec == nil {
		return nil, diags
	}
	v, err := spec.Build(&filters.BuildContext{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*Scanner)
	t.Cleanup(func() { s.Close() })
	return s, diags
}

func TestHCLScanner(t *testing.T) {
	leakCheck(t)
	s, diags := newScanner(t, `scanner "clamav" "local" {
  addresses       = ["tcp://127.0.0.1:${clamd_port}", "unix:///run/clamav/clamd.ctl"]
  timeout         = "20s"
  max_size        = "25MB"
  max_concurrent  = 4
  health_interval = "5s"
}`)
	if diags.HasErrors() || s == nil {
		t.Fatalf("%v", diags)
	}
	c := s.Config()
	if strings.Join(c.Addresses, " ") != "tcp://127.0.0.1:3310 unix:///run/clamav/clamd.ctl" ||
		c.Timeout != 20*time.Second || c.MaxSize != 25_000_000 || c.MaxConcurrent != 4 || c.HealthInterval != 5*time.Second {
		t.Errorf("config %+v", c)
	}

	s, diags = newScanner(t, `scanner "clamav" "local" {
  addresses = ["tcp://127.0.0.1:3310"]
}`)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	c = s.Config()
	if c.Timeout != DefaultTimeout || c.MaxSize != DefaultMaxSize || c.MaxConcurrent != DefaultMaxConcurrent || c.HealthInterval != DefaultHealthInterval || !c.ProbeStreamMax || !c.ReuseConnections {
		t.Errorf("defaults %+v", c)
	}
	s, diags = newScanner(t, `scanner "clamav" "local" {
  addresses        = ["tcp://127.0.0.1:3310"]
  probe_stream_max = false
}`)
	if diags.HasErrors() || s.Config().ProbeStreamMax {
		t.Errorf("probe_stream_max = false: %v %+v", diags, s.Config())
	}
	s, diags = newScanner(t, `scanner "clamav" "local" {
  addresses         = ["tcp://127.0.0.1:3310"]
  reuse_connections = false
}`)
	if diags.HasErrors() || s.Config().ReuseConnections {
		t.Errorf("reuse_connections = false: %v %+v", diags, s.Config())
	}
}

func TestHCLScannerDiagnostics(t *testing.T) {
	for _, c := range []struct {
		src  string
		want []string // "line:col: substring of the detail"
	}{
		{`scanner "clamav" "x" {
}`, []string{"1:22: Missing required argument"}},
		{`scanner "clamav" "x" {
  addresses = []
}`, []string{"2:15: at least one clamd address"}},
		{`scanner "clamav" "x" {
  addresses = ["tcp://127.0.0.1:3310",
               "127.0.0.1:3310", "unix://clamd.sock", "tcp://127.0.0.1:3310"]
  bogus     = 1
}`, []string{"4:3: Unsupported argument"}},
		{`scanner "clamav" "x" {
  addresses = ["tcp://127.0.0.1:3310",
               "127.0.0.1:3310", "unix://clamd.sock", "tcp://127.0.0.1:3310"]
}`, []string{"3:16: is not a clamd address", "3:34: three slashes", "3:55: already listed at test.hcl:2:16"}},
		{`scanner "clamav" "x" {
  addresses = "tcp://127.0.0.1:3310"
}`, []string{"2:16: list of string required"}},
		{`scanner "clamav" "x" {
  addresses       = ["tcp://127.0.0.1:3310"]
  timeout         = "30"
  max_size        = "25M"
  max_concurrent  = 0
  health_interval = "10ms"
}`, []string{"3:21: missing unit", "4:21: unknown unit", "5:21: from 1 to 1024", "6:21: from 1s to 1h0m0s"}},
		{`scanner "clamav" "x" {
  addresses      = ["tcp://127.0.0.1:3310"]
  max_size       = "3GiB"
  max_concurrent = 2.5
}`, []string{"3:20: 2GiB", "4:20: "}},
		{`scanner "clamav" "x" {
  addresses        = ["tcp://127.0.0.1:3310"]
  probe_stream_max = "no"
}`, []string{"3:23: a bool is required"}},
		{`scanner "clamav" "x" {
  addresses         = ["tcp://127.0.0.1:3310"]
  reuse_connections = 1
}`, []string{"3:23: bool required"}},
	} {
		_, diags := newScanner(t, c.src)
		hcltest.WantErrors(t, c.src, diags, c.want...)
	}
}

func TestHCLScannerWarning(t *testing.T) {
	s, diags := newScanner(t, `scanner "clamav" "x" {
  addresses = ["tcp://127.0.0.1:3310"]
  max_size  = "200MB"
}`)
	if s == nil || diags.HasErrors() || len(diags) != 1 || diags[0].Severity != hcl.DiagWarning || diags[0].Subject.Start.Line != 3 {
		t.Errorf("%v", diags)
	}
}

func TestHCLFilter(t *testing.T) {
	leakCheck(t)
	scanner, _ := newScanner(t, `scanner "clamav" "local" {
  addresses = ["tcp://127.0.0.1:3310"]
}`)
	dc := &filters.DecodeContext{Scanners: map[string]*filters.ScannerSpec{
		"local": {Type: "clamav", Name: "local"},
		"other": {Type: "spam", Name: "other", Range: hcl.Range{Filename: "scanners.hcl", Start: hcl.Pos{Line: 7, Column: 19}}},
	}}
	bc := &filters.BuildContext{Scanners: map[string]filters.Scanner{"local": scanner}}
	build := func(src string) (filters.Filter, hcl.Diagnostics) {
		spec, diags, ok := filters.DecodeFilter("clamav", "av", hcl.Range{}, hcltest.Block(t, src), dc)
		if !ok {
			t.Fatal("filter type clamav not registered")
		}
		if spec == nil {
			return nil, diags
		}
		if strings.Join(spec.Uses, ",") != "local" {
			t.Errorf("spec uses %q, want the scanner local", spec.Uses)
		}
		f, err := spec.Build(bc)
		if err != nil {
			t.Fatal(err)
		}
		return f, diags
	}

	f, diags := build(`filter "clamav" "av" {
  scanner = "local"
}`)
	if diags.HasErrors() || f.Name() != "av" || f.(*Filter).oversize != OversizeTempFail || f.(*Filter).Scanner() != scanner {
		t.Fatalf("%v %+v", diags, f)
	}
	f, diags = build(`filter "clamav" "av" {
  scanner  = "local"
  oversize = "pass-with-tag"
}`)
	if diags.HasErrors() || f.(*Filter).oversize != OversizePassWithTag || f.(*Filter).scan != ScanMessage {
		t.Fatalf("%v", diags)
	}
	for _, m := range []ScanMode{ScanMessage, ScanParts, ScanBoth} {
		f, diags = build(fmt.Sprintf("filter \"clamav\" \"av\" {\n  scanner = \"local\"\n  scan    = %q\n}", m))
		if diags.HasErrors() || f.(*Filter).scan != m {
			t.Errorf("scan = %q: %v", m, diags)
		}
	}

	for _, c := range []struct{ src, want string }{
		{`filter "clamav" "av" {
}`, "1:22: Missing required argument"},
		{`filter "clamav" "av" {
  scanner = "nope"
}`, `2:13: There is no scanner "nope" (clamav scanners: "local")`},
		{`filter "clamav" "av" {
  scanner = "other"
}`, `2:13: The scanner "other" (declared at scanners.hcl:7:19) is a spam scanner; this filter needs a scanner "clamav" block`},
		{`filter "clamav" "av" {
  scanner  = "local"
  oversize = "pass"
}`, `3:14: oversize must be one of`},
		{`filter "clamav" "av" {
  scanner = "local"
  scan    = "mime"
}`, `3:13: scan must be one of "message", "parts" or "both", not "mime"`},
	} {
		f, diags := build(c.src)
		if f != nil || !diags.HasErrors() {
			t.Errorf("no error for %s", c.src)
			continue
		}
		d := diags[0]
		got := fmt.Sprintf("%d:%d: %s: %s", d.Subject.Start.Line, d.Subject.Start.Column, d.Summary, d.Detail)
		pos, text, _ := strings.Cut(c.want, ": ")
		if !strings.HasPrefix(got, pos+": ") || !strings.Contains(got, text) {
			t.Errorf("want %q, got %q", c.want, got)
		}
	}
}
