package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// Load reads the configuration at path: a file, or a directory whose *.hcl
// files (not those whose name starts with a dot) are read in name order and
// merged as if they were one file. It reports every problem it finds; when
// diags.HasErrors() the returned Config holds only Files (for
// WriteDiagnostics) and must not be used otherwise. The returned Config is
// never nil.
func Load(path string) (*Config, hcl.Diagnostics) {
	st, err := os.Stat(path)
	if err != nil {
		return &Config{}, hcl.Diagnostics{fileError(path, "Cannot read configuration", err)}
	}
	if !st.IsDir() {
		src, err := os.ReadFile(path)
		if err != nil {
			return &Config{}, hcl.Diagnostics{fileError(path, "Cannot read configuration", err)}
		}
		return load([]source{{path, src}}, filepath.Dir(path))
	}

	entries, err := os.ReadDir(path)
	if err != nil {
		return &Config{}, hcl.Diagnostics{fileError(path, "Cannot read configuration directory", err)}
	}
	var srcs []source
	var diags hcl.Diagnostics
	for _, e := range entries { // os.ReadDir sorts by name
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".hcl") {
			continue
		}
		p := filepath.Join(path, name)
		src, err := os.ReadFile(p)
		if err != nil {
			diags = append(diags, fileError(p, "Cannot read configuration", err))
			continue
		}
		srcs = append(srcs, source{p, src})
	}
	if diags.HasErrors() {
		return &Config{}, diags
	}
	if len(srcs) == 0 {
		return &Config{}, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "No configuration files",
			Detail:   fmt.Sprintf("The directory %s holds no *.hcl file.", path),
			Subject:  &hcl.Range{Filename: path, Start: startPos, End: startPos},
		}}
	}
	return load(srcs, path)
}

// LoadBytes loads a configuration held in memory, as Load does for a file.
// name is used in diagnostics, and its directory is the base of relative
// paths (file(), cert_file, …).
func LoadBytes(name string, src []byte) (*Config, hcl.Diagnostics) {
	return load([]source{{name, src}}, filepath.Dir(name))
}

type source struct {
	name string
	src  []byte
}

var startPos = hcl.Pos{Line: 1, Column: 1, Byte: 0}

func fileError(path, summary string, err error) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   cleanPathError(err).Error() + ".",
		Subject:  &hcl.Range{Filename: path, Start: startPos, End: startPos},
	}
}

// load parses and decodes srcs, which all live in baseDir.
func load(srcs []source, baseDir string) (*Config, hcl.Diagnostics) {
	parser := hclparse.NewParser()
	var files []*hcl.File
	var diags hcl.Diagnostics
	order := make(map[string]int, len(srcs))
	for i, s := range srcs {
		order[s.name] = i
		f, fdiags := parser.ParseHCL(s.src, s.name)
		diags = append(diags, fdiags...)
		if f != nil {
			files = append(files, f)
		}
	}
	fileMap := make(map[string]*hcl.File, len(files))
	for name, f := range parser.Files() {
		fileMap[name] = f
	}
	for _, f := range files {
		diags = append(diags, checkNumberLiterals(f)...)
	}
	if diags.HasErrors() {
		// Decoding a file that did not parse only adds confusing follow-on
		// errors.
		return &Config{Files: fileMap}, sortDiagnostics(diags, order)
	}

	var body hcl.Body
	if len(files) == 1 {
		body = files[0].Body
	} else {
		body = hcl.MergeFiles(files)
	}

	d := &decoder{ctx: newEvalContext(baseDir), baseDir: baseDir, order: order}
	var root rootSchema
	d.diags = append(d.diags, gohcl.DecodeBody(body, d.ctx, &root)...)
	cfg := d.build(&root, body)
	cfg.Files = fileMap
	cfg.baseDir = baseDir
	diags = sortDiagnostics(append(diags, d.diags...), order)
	if diags.HasErrors() {
		return &Config{Files: fileMap}, diags
	}
	return cfg, diags
}

// sortDiagnostics orders diagnostics by file (in load order) and position,
// so that output reads top to bottom whatever order the checks ran in.
func sortDiagnostics(diags hcl.Diagnostics, order map[string]int) hcl.Diagnostics {
	key := func(d *hcl.Diagnostic) (int, int, int) {
		if d.Subject == nil {
			return -1, 0, 0
		}
		fi, ok := order[d.Subject.Filename]
		if !ok {
			fi = len(order)
		}
		return fi, d.Subject.Start.Byte, d.Subject.End.Byte
	}
	sort.SliceStable(diags, func(i, j int) bool {
		fi, si, ei := key(diags[i])
		fj, sj, ej := key(diags[j])
		if fi != fj {
			return fi < fj
		}
		if si != sj {
			return si < sj
		}
		return ei < ej
	})
	return diags
}

// Number literals must lie in the range of float64 (below about 1.8e308 and,
// unless zero, above about 4.9e-324), in terms of big.Float.MantExp. HCL
// numbers are arbitrary precision, and turning a literal such as 1e9999999
// into a string (as a template or a string argument does) takes seconds and
// megabytes; no setting needs such a number.
const (
	maxNumberExp = 1024
	minNumberExp = -1073
)

// checkNumberLiterals reports number literals out of that range, before any
// expression is evaluated.
func checkNumberLiterals(f *hcl.File) hcl.Diagnostics {
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return nil
	}
	return hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
		lit, ok := n.(*hclsyntax.LiteralValueExpr)
		if !ok || lit.Val.Type() != cty.Number || !lit.Val.IsKnown() || lit.Val.IsNull() {
			return nil
		}
		bf := lit.Val.AsBigFloat()
		if bf.Sign() == 0 || bf.IsInf() {
			return nil
		}
		if e := bf.MantExp(nil); e > maxNumberExp || e < minNumberExp {
			return hcl.Diagnostics{{
				Severity: hcl.DiagError,
				Summary:  "Number out of range",
				Detail:   "Numbers must lie in the range of a 64-bit float: at most about 1.8e308 and, unless zero, at least about 4.9e-324 in magnitude.",
				Subject:  lit.SrcRange.Ptr(),
			}}
		}
		return nil
	})
}
