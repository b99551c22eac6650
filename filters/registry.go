package filters

import (
	"slices"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
)

// BuildContext is what a Factory may use besides its own block.
type BuildContext struct {
	// Eval evaluates expressions (it has the env() and file() functions).
	Eval *hcl.EvalContext
	// Scanners holds the scanner blocks built so far, by name (the second
	// label of `scanner "TYPE" "NAME"`); a filter type asserts the type it
	// needs and reports a diagnostic otherwise.
	Scanners map[string]any
	// ScannerRanges gives each scanner's block range, for diagnostics.
	ScannerRanges map[string]hcl.Range
	Log           zerolog.Logger
}

// Factory builds the filter named name (the second label of a
// `filter "TYPE" "name"` block) from the block's body: each filter type
// decodes and validates its own settings (gohcl.DecodeBody) and returns
// diagnostics with source ranges, never a bare error.
type Factory func(name string, body hcl.Body, bc *BuildContext) (Filter, hcl.Diagnostics)

// ScannerFactory builds a scanner from a `scanner "TYPE" "NAME"` block. A
// scanner that implements io.Closer is closed when its configuration is
// retired (after a reload, or at shutdown).
type ScannerFactory func(name string, body hcl.Body, bc *BuildContext) (any, hcl.Diagnostics)

var registry struct {
	sync.RWMutex
	m map[string]Factory
}

// Register makes a filter type available to policies. It is meant for init
// functions and panics when typ is empty, f is nil, or typ is already
// registered. It is safe for concurrent use.
func Register(typ string, f Factory) {
	if typ == "" {
		panic("filters: Register with an empty type name")
	}
	if f == nil {
		panic("filters: Register of type " + typ + " with a nil Factory")
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[typ]; dup {
		panic("filters: filter type " + typ + " registered twice")
	}
	if registry.m == nil {
		registry.m = make(map[string]Factory)
	}
	registry.m[typ] = f
}

// Lookup returns the Factory registered for typ.
func Lookup(typ string) (Factory, bool) {
	registry.RLock()
	defer registry.RUnlock()
	f, ok := registry.m[typ]
	return f, ok
}

// Types returns the registered type names, sorted.
func Types() []string {
	registry.RLock()
	defer registry.RUnlock()
	types := make([]string, 0, len(registry.m))
	for t := range registry.m {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

var scannerRegistry struct {
	sync.RWMutex
	m map[string]ScannerFactory
}

// RegisterScanner makes a scanner type available to `scanner` blocks; like
// Register it is for init functions and panics on misuse.
func RegisterScanner(typ string, f ScannerFactory) {
	if typ == "" || f == nil {
		panic("filters: RegisterScanner needs a type name and a factory")
	}
	scannerRegistry.Lock()
	defer scannerRegistry.Unlock()
	if _, dup := scannerRegistry.m[typ]; dup {
		panic("filters: scanner type " + typ + " registered twice")
	}
	if scannerRegistry.m == nil {
		scannerRegistry.m = make(map[string]ScannerFactory)
	}
	scannerRegistry.m[typ] = f
}

// LookupScanner returns the ScannerFactory registered for typ.
func LookupScanner(typ string) (ScannerFactory, bool) {
	scannerRegistry.RLock()
	defer scannerRegistry.RUnlock()
	f, ok := scannerRegistry.m[typ]
	return f, ok
}
