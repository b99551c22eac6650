package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

const okConfig = `
listener "pop3" {
  address  = "127.0.0.1:1110"
  upstream = "mail"
}
upstream "mail" {
  address = "127.0.0.1:110"
}
`

func TestLoadMissingPath(t *testing.T) {
	cfg, diags := Load(filepath.Join("testdata", "no-such-file.hcl"))
	if cfg == nil || !diags.HasErrors() {
		t.Fatalf("Load of a missing file: cfg %v, diags %v", cfg, diags)
	}
	checkSubjects(t, diags)
	if got := render(diags, cfg.Files); !strings.HasPrefix(got, "testdata/no-such-file.hcl:1:1: error: Cannot read configuration: testdata/no-such-file.hcl: no such file or directory.\n") {
		t.Errorf("got %q", got)
	}
}

func TestLoadEmptyDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte(okConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, diags := Load(dir)
	checkSubjects(t, diags)
	if len(diags) != 1 || diags[0].Summary != "No configuration files" || cfg == nil {
		t.Fatalf("diags = %v", diags)
	}
}

func TestLoadBytes(t *testing.T) {
	// A name with a directory makes file() relative to that directory.
	src := strings.Replace(okConfig, `"127.0.0.1:110"`, `file("files/addr.txt")`, 1)
	cfg, diags := LoadBytes(filepath.Join("testdata", "inline.hcl"), []byte(src))
	if diags.HasErrors() {
		t.Fatal(render(diags, cfg.Files))
	}
	if a := cfg.Upstreams["mail"].Address; a != "127.0.0.1:3110" {
		t.Errorf("address = %q", a)
	}
	if cfg.Files["testdata/inline.hcl"] == nil {
		t.Errorf("files = %v", cfg.Files)
	}

	// An empty file: one error, at the start of the file.
	cfg, diags = LoadBytes("empty.hcl", nil)
	if got := render(diags, cfg.Files); got != "empty.hcl:1:1: error: No listener: The configuration needs at least one listener block, such as listener \"pop3\" { address = \"127.0.0.1:1110\" upstream = \"mail\" }.\n"+
		"    1 | \n      | ^\n1 error, 0 warnings\n" {
		t.Errorf("got %q", got)
	}
}

// TestLoadIndependent checks that every load builds its own Config, so a
// reload never shares mutable state with the Config it replaces.
func TestLoadIndependent(t *testing.T) {
	a, diags := LoadBytes("a.hcl", []byte(okConfig))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	b, _ := LoadBytes("a.hcl", []byte(okConfig))
	if a.Listeners[0] == b.Listeners[0] || a.Upstreams["mail"] == b.Upstreams["mail"] {
		t.Error("two loads share a listener or upstream")
	}
	ctx1, ctx2 := a.EvalContext(), a.EvalContext()
	delete(ctx1.Functions, "env")
	ctx1.Variables = map[string]cty.Value{"x": cty.True}
	if _, ok := ctx2.Functions["env"]; !ok || ctx2.Variables != nil {
		t.Error("EvalContext returns shared state")
	}
}

func TestEnvAndFileFunctions(t *testing.T) {
	t.Setenv("POPGATE_FUNC_TEST", "value")
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("crlf.txt", "line\r\n")
	write("two.txt", "two\n\n")
	write("none.txt", "none")
	write("binary.txt", "\xff\xfe")
	write("big.txt", strings.Repeat("x", maxFileFuncSize+1))

	ctx := newEvalContext(dir)
	for _, tc := range []struct {
		call, want, err string
	}{
		{call: `env("POPGATE_FUNC_TEST")`, want: "value"},
		{call: `env("POPGATE_FUNC_TEST", "default")`, want: "value"},
		{call: `env("POPGATE_TEST_UNSET", "default")`, want: "default"},
		{call: `env("POPGATE_TEST_UNSET")`, err: `environment variable "POPGATE_TEST_UNSET" is not set`},
		{call: `env()`, err: "Not enough function arguments"},
		{call: `env("A=B")`, err: "not a valid environment variable name"},
		{call: `env(null)`, err: "must not be null"},
		{call: `file("crlf.txt")`, want: "line"},
		{call: `file("two.txt")`, want: "two\n"},
		{call: `file("none.txt")`, want: "none"},
		{call: `file("` + filepath.Join(dir, "none.txt") + `")`, want: "none"},
		{call: `file("binary.txt")`, err: "not valid UTF-8"},
		{call: `file("big.txt")`, err: "larger than"},
		{call: `file("missing.txt")`, err: "no such file or directory"},
		{call: `file(".")`, err: "not a regular file"},
		{call: `file("")`, err: "the path is empty"},
		{call: `file("/dev/null")`, err: "not a regular file"},
	} {
		src := "x = " + tc.call + "\n"
		cfgFile, diags := parseAttr(t, src)
		v, vdiags := cfgFile.Expr.Value(ctx)
		diags = append(diags, vdiags...)
		switch {
		case tc.err == "" && diags.HasErrors():
			t.Errorf("%s: %v", tc.call, diags)
		case tc.err == "" && (v.Type() != cty.String || v.AsString() != tc.want):
			t.Errorf("%s = %#v, want %q", tc.call, v, tc.want)
		case tc.err != "" && !strings.Contains(diags.Error(), tc.err):
			t.Errorf("%s: diagnostics %q, want one containing %q", tc.call, diags.Error(), tc.err)
		}
	}
}

func parseAttr(t *testing.T, src string) (*hcl.Attribute, hcl.Diagnostics) {
	t.Helper()
	f, diags := hclsyntax.ParseConfig([]byte(src), "attr.hcl", hcl.InitialPos)
	attrs, adiags := f.Body.JustAttributes()
	if attrs["x"] == nil {
		t.Fatalf("parsing %q: %v", src, append(diags, adiags...))
	}
	return attrs["x"], diags
}

func TestNumberLiteralRange(t *testing.T) {
	for _, tc := range []struct {
		lit string
		ok  bool
	}{
		{"0", true}, {"0.0", true}, {"1e308", true}, {"1.7e308", true}, {"5e-324", true}, {"1e-300", true},
		{"1.8e308", false}, {"1e309", false}, {"2e-324", false}, {"1e9999999", false},
	} {
		f, diags := hclsyntax.ParseConfig([]byte("x = "+tc.lit+"\n"), "n.hcl", hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", tc.lit, diags)
		}
		diags = checkNumberLiterals(f)
		if diags.HasErrors() == tc.ok {
			t.Errorf("%s: diagnostics %v, want ok=%v", tc.lit, diags, tc.ok)
		}
	}
}
