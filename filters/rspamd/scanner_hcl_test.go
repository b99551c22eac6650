package rspamd

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
	"github.com/zclconf/go-cty/cty"

	"github.com/popgate/popgate/filters"
	"github.com/popgate/popgate/internal/hcltest"
)

// decodeBlock decodes src through the registered kind.
func decodeBlock(t *testing.T, src string) (*filters.ScannerSpec, hcl.Diagnostics) {
	t.Helper()
	eval := &hcl.EvalContext{Variables: map[string]cty.Value{"pw": cty.StringVal("s3cret")}}
	spec, diags, ok := filters.DecodeScanner("rspamd", "local", hcl.Range{}, hcltest.Block(t, src), &filters.DecodeContext{Eval: eval})
	if !ok {
		t.Fatal("scanner type rspamd not registered")
	}
	return spec, diags
}

func TestHCLScanner(t *testing.T) {
	spec, diags := decodeBlock(t, `scanner "rspamd" "local" {
  addresses           = ["http://127.0.0.1:11333", "10.0.0.7:11333"]
  timeout             = "20s"
  max_size            = "10MB"
  password            = "worker"
  controller          = "http://127.0.0.1:11334"
  controller_password = pw
  health_interval     = "5s"
}`)
	if diags.HasErrors() || spec == nil {
		t.Fatalf("%v", diags)
	}
	v, err := spec.Build(&filters.BuildContext{Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*Scanner)
	defer s.Close()
	c := s.Config()
	if strings.Join(c.Addresses, " ") != "http://127.0.0.1:11333 10.0.0.7:11333" || c.Timeout != 20*time.Second ||
		c.MaxSize != 10_000_000 || c.Password != "worker" || c.Controller != "http://127.0.0.1:11334" ||
		c.ControllerPassword != "s3cret" || c.HealthInterval != 5*time.Second {
		t.Errorf("config %+v", c)
	}

	spec, diags = decodeBlock(t, `scanner "rspamd" "local" {
  addresses = ["127.0.0.1:11333"]
}`)
	if len(diags) != 0 {
		t.Fatal(diags)
	}
	c = spec.Settings().(Config)
	if c.Timeout != DefaultTimeout || c.MaxSize != DefaultMaxSize || c.HealthInterval != DefaultHealthInterval || c.Controller != "" {
		t.Errorf("defaults %+v", c)
	}
}

func TestHCLScannerDiagnostics(t *testing.T) {
	for _, c := range []struct {
		src  string
		want []string // "line:col: substring of the summary and detail"
	}{
		{`scanner "rspamd" "x" {
}`, []string{"1:22: Missing required argument"}},
		{`scanner "rspamd" "x" {
  addresses = []
}`, []string{"2:15: at least one rspamd address"}},
		{`scanner "rspamd" "x" {
  addresses = ["127.0.0.1:11333", "https://127.0.0.1:11333",
               "http://127.0.0.1:11333/", "tcp://x:1", "127.0.0.1"]
}`, []string{"2:35: HTTPCrypt", "3:16: already listed at test.hcl:2:16", "3:43: scheme must be http://", "3:56: want http://host:port"}},
		{`scanner "rspamd" "x" {
  addresses = "127.0.0.1:11333"
}`, []string{"2:16: list of string required"}},
		{`scanner "rspamd" "x" {
  addresses       = ["127.0.0.1:11333"]
  timeout         = "15"
  max_size        = "3GiB"
  health_interval = "10ms"
  controller      = "127.0.0.1"
  bogus           = 1
}`, []string{"7:3: Unsupported argument"}},
		{`scanner "rspamd" "x" {
  addresses       = ["127.0.0.1:11333"]
  timeout         = "15"
  max_size        = "3GiB"
  health_interval = "10ms"
  controller      = "127.0.0.1"
}`, []string{"3:21: missing unit", "4:21: Invalid size: max_size must be from 1 byte to 2GiB", "5:21: from 1s to 1h0m0s", "6:21: Invalid rspamd controller address"}},
		{`scanner "rspamd" "x" {
  addresses           = ["127.0.0.1:11333"]
  controller_password = "pw"
}`, []string{"3:25: Password without a controller"}},
		{`scanner "rspamd" "x" {
  addresses = ["127.0.0.1:11333"]
  password  = 12
  timeout   = 15
}`, []string{"4:15: "}},
	} {
		_, diags := decodeBlock(t, c.src)
		hcltest.WantErrors(t, c.src, diags, c.want...)
	}
}

func TestHCLControllerWithoutPassword(t *testing.T) {
	spec, diags := decodeBlock(t, `scanner "rspamd" "x" {
  addresses  = ["127.0.0.1:11333"]
  controller = "127.0.0.1:11334"
}`)
	if spec == nil || diags.HasErrors() || len(diags) != 1 || diags[0].Severity != hcl.DiagWarning ||
		diags[0].Subject.Start.Line != 3 || !strings.Contains(diags[0].Detail, "controller_password") {
		t.Errorf("%v", diags)
	}
}

func TestFindController(t *testing.T) {
	var specs []*filters.ScannerSpec
	for _, src := range []string{
		`scanner "rspamd" "a" {
  addresses = ["127.0.0.1:11333"]
}`, `scanner "rspamd" "b" {
  addresses           = ["127.0.0.1:11333"]
  controller          = "127.0.0.1:11334"
  controller_password = "pw"
}`,
	} {
		spec, diags := decodeBlock(t, src)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		name := strings.Fields(src)[2]
		spec.Name = strings.Trim(name, `"`)
		specs = append(specs, spec)
	}
	clam := &filters.ScannerSpec{Type: "clamav", Name: "c"}
	all := append([]*filters.ScannerSpec{clam}, specs...)

	c, name, err := FindController(all, "")
	if err != nil || name != "b" || c.Addr() != "127.0.0.1:11334" {
		t.Fatalf("the only one with a controller: %v %q %v", c, name, err)
	}
	if c, name, err = FindController(all, "b"); err != nil || name != "b" {
		t.Fatalf("by name: %v %q %v", c, name, err)
	}
	for _, x := range []struct {
		specs []*filters.ScannerSpec
		name  string
		err   string
	}{
		{all, "a", `scanner "a" names no controller`},
		{all, "c", `there is no rspamd scanner "c"`},
		{all[:2], "", "no rspamd scanner block names a controller"},
		{append(all, &filters.ScannerSpec{Type: "rspamd", Name: "d"}), "", ""}, // a spec without settings is no rspamd block
	} {
		_, _, err := FindController(x.specs, x.name)
		if x.err == "" && err != nil || x.err != "" && (err == nil || !strings.Contains(err.Error(), x.err)) {
			t.Errorf("FindController(%d specs, %q) = %v, want %q", len(x.specs), x.name, err, x.err)
		}
	}
	two := *specs[1]
	two.Name = "b2"
	if _, _, err := FindController(append(all, &two), ""); err == nil || !strings.Contains(err.Error(), `"b", "b2"`) {
		t.Errorf("two controllers: %v", err)
	}
}

func TestControllersFor(t *testing.T) {
	decode := func(name, src string) *filters.ScannerSpec {
		spec, diags := decodeBlock(t, src)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		spec.Name = name
		return spec
	}
	learns := decode("learns", `scanner "rspamd" "x" {
  addresses           = ["127.0.0.1:11333"]
  controller          = "127.0.0.1:11334"
  controller_password = "pw"
}`)
	mute := decode("mute", `scanner "rspamd" "x" {
  addresses = ["127.0.0.1:11333"]
}`)
	scanners := []*filters.ScannerSpec{learns, mute, {Type: "clamav", Name: "av"}}
	specs := map[string]*filters.FilterSpec{
		"spam":  {Type: "spam", Name: "spam", Uses: []string{"learns"}},
		"spam2": {Type: "spam", Name: "spam2", Uses: []string{"learns", "mute"}},
		"virus": {Type: "clamav", Name: "virus", Uses: []string{"av"}},
		"strip": {Type: "strip", Name: "strip"},
	}
	for _, c := range []struct {
		held []string
		want int
	}{
		{[]string{"spam"}, 1},
		{[]string{"spam", "spam2", "virus"}, 1}, // once per controller
		{[]string{"virus", "strip", "gone"}, 0},
		{nil, 0},
	} {
		got := ControllersFor(c.held, specs, scanners)
		if len(got) != c.want || (c.want == 1 && got[0].Addr() != "127.0.0.1:11334") {
			t.Errorf("ControllersFor(%v) = %v, want %d", c.held, got, c.want)
		}
	}
}
