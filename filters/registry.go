package filters

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/rs/zerolog"
)

// A filter or scanner kind (the TYPE of `filter "TYPE" "NAME"` and
// `scanner "TYPE" "NAME"`) plugs into popgate with two steps, registered
// together from an init function:
//
//   - Decode reads the block body into the kind's own settings type S and
//     reports every problem as a diagnostic with a source range. It is pure:
//     it starts no goroutine, opens no socket and writes nothing, so that
//     `popgate check`, `--explain` and fuzzing can run it freely. It may
//     read files the configuration names (as file() does).
//   - Build turns the decoded settings into the running part, with what the
//     running generation provides (BuildContext). It may connect, start
//     health checks and so on; a scanner is closed when its generation is
//     retired.
//
// Nothing else needs editing for a new kind: the configuration decoder, the
// running generation, metrics, /readyz and `check --explain` see every kind
// through FilterSpec, ScannerSpec and the Scanner interface.

// FilterKind is the pair of steps of a filter type.
type FilterKind[S any] struct {
	Decode func(name string, body hcl.Body, dc *DecodeContext) (S, hcl.Diagnostics)
	Build  func(name string, settings S, bc *BuildContext) (Filter, error)
	// Release is who may release a message a filter of this type held,
	// unless its block says otherwise (attribute release): "user" or
	// "admin"; "" means "admin".
	Release string
	// HeaderOnly marks a kind whose filters read and change the header
	// only (tag): an encrypted part is nothing they would have scanned, so
	// a chain of such filters leaves the policy's encrypted setting aside.
	// The zero value, a kind that reads content, is the safe one.
	HeaderOnly bool
}

// ScannerKind is the pair of steps of a scanner type.
type ScannerKind[S any] struct {
	Decode func(name string, body hcl.Body, dc *DecodeContext) (S, hcl.Diagnostics)
	Build  func(name string, settings S, bc *BuildContext) (Scanner, error)
}

// DecodeContext is what a Decode step may use besides its own block.
type DecodeContext struct {
	// Eval evaluates expressions (it has the env() and file() functions).
	Eval *hcl.EvalContext
	// Scanners holds the scanner blocks decoded so far, by name.
	Scanners map[string]*ScannerSpec

	uses []string // scanners the block being decoded refers to
}

// Scanner resolves a reference to a scanner block from a filter block: the
// scanner named ref must exist and be of type kind. It reports a diagnostic
// at rng otherwise. The reference is recorded in the FilterSpec (Uses), so
// that health checks know which scanners a policy needs.
func (dc *DecodeContext) Scanner(ref, kind string, rng hcl.Range) (*ScannerSpec, hcl.Diagnostics) {
	s := dc.Scanners[ref]
	switch {
	case s == nil:
		var names []string
		for n, o := range dc.Scanners {
			if o.Type == kind {
				names = append(names, fmt.Sprintf("%q", n))
			}
		}
		sort.Strings(names)
		known := fmt.Sprintf(" (no %s scanner is declared)", kind)
		if len(names) > 0 {
			known = fmt.Sprintf(" (%s scanners: %s)", kind, strings.Join(names, ", "))
		}
		return nil, hcl.Diagnostics{Diagnostic(hcl.DiagError, rng, "Unknown scanner",
			"There is no scanner %q%s; declare it with scanner %q %q { ... }.", ref, known, kind, ref)}
	case s.Type != kind:
		return nil, hcl.Diagnostics{Diagnostic(hcl.DiagError, rng, "Wrong scanner type",
			"The scanner %q (declared at %s:%d:%d) is a %s scanner; this filter needs a scanner %q block.",
			ref, s.Range.Filename, s.Range.Start.Line, s.Range.Start.Column, s.Type, kind)}
	}
	if !slices.Contains(dc.uses, ref) {
		dc.uses = append(dc.uses, ref)
	}
	return s, nil
}

// BuildContext is what a Build step gets from the running generation: these
// are the only inputs a filter or scanner has besides its settings.
type BuildContext struct {
	// Log is the generation's logger; a kind adds its own fields.
	Log zerolog.Logger
	// Spool holds the replacement bodies a filter writes.
	Spool *Spool
	// Version is popgate's version, for filters that stamp it on messages.
	Version string
	// Scanners holds the built scanners by name; a filter asserts the
	// concrete type of the kind its Decode step checked.
	Scanners map[string]Scanner
	// OnScan, when set, sees the duration and error of every scan of every
	// scanner (metrics). It must be cheap and must not block.
	OnScan func(scanner string, took time.Duration, err error)
}

// ObservedScanner is a scanner that reports each scan's duration and error
// to one callback (for BuildContext.OnScan).
type ObservedScanner interface {
	Scanner
	OnScan(func(took time.Duration, err error))
}

// BuildScanner is the Build step of a scanner kind whose scanner is made by
// newScanner from its settings and a logger: it names the scanner in the
// log and routes its scans to BuildContext.OnScan.
func BuildScanner[C any, S ObservedScanner](newScanner func(C, zerolog.Logger) (S, error)) func(string, C, *BuildContext) (Scanner, error) {
	return func(name string, cfg C, bc *BuildContext) (Scanner, error) {
		s, err := newScanner(cfg, bc.Log.With().Str("scanner", name).Logger())
		if err != nil { // the kind's Decode step checked what newScanner checks
			return nil, err
		}
		if bc.OnScan != nil {
			s.OnScan(func(took time.Duration, err error) { bc.OnScan(name, took, err) })
		}
		return s, nil
	}
}

// Spec is a decoded block of a kind: its type, name and settings, ready to
// be built. It is immutable.
type Spec[T any] struct {
	Type  string
	Name  string
	Range hcl.Range // the block header
	// Uses names the scanner blocks a filter refers to (none for a
	// scanner).
	Uses []string

	settings any
	kind     *erasedKind[T]
}

// FilterSpec is a decoded `filter` block, ScannerSpec a decoded `scanner`
// block.
type (
	FilterSpec  = Spec[Filter]
	ScannerSpec = Spec[Scanner]
)

// Settings returns the decoded settings (the kind's own type).
func (s *Spec[T]) Settings() any { return s.settings }

// Build makes the running filter or scanner from the spec.
func (s *Spec[T]) Build(bc *BuildContext) (T, error) {
	v, err := s.kind.build(s.Name, s.settings, bc)
	if err != nil {
		return v, fmt.Errorf("%s %q: %w", s.kind.what, s.Name, err)
	}
	return v, nil
}

// erasedKind is a registered kind with its settings type erased.
type erasedKind[T any] struct {
	what   string // "filter" or "scanner"
	decode func(name string, body hcl.Body, dc *DecodeContext) (any, hcl.Diagnostics)
	build  func(name string, settings any, bc *BuildContext) (T, error)
}

func erase[S, T any](what string, decode func(string, hcl.Body, *DecodeContext) (S, hcl.Diagnostics), build func(string, S, *BuildContext) (T, error)) *erasedKind[T] {
	return &erasedKind[T]{
		what: what,
		decode: func(name string, body hcl.Body, dc *DecodeContext) (any, hcl.Diagnostics) {
			return decode(name, body, dc)
		},
		build: func(name string, settings any, bc *BuildContext) (T, error) {
			return build(name, settings.(S), bc)
		},
	}
}

// kinds is a registry of one sort of kind (filters or scanners).
type kinds[T any] struct {
	what string
	mu   sync.RWMutex
	m    map[string]*erasedKind[T]
}

func (k *kinds[T]) register(typ string, ek *erasedKind[T], ok bool) {
	if typ == "" || !ok {
		panic("filters: a " + k.what + " kind needs a type name, a Decode and a Build step")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, dup := k.m[typ]; dup {
		panic("filters: " + k.what + " type " + typ + " registered twice")
	}
	if k.m == nil {
		k.m = map[string]*erasedKind[T]{}
	}
	k.m[typ] = ek
}

func (k *kinds[T]) lookup(typ string) *erasedKind[T] {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.m[typ]
}

func (k *kinds[T]) types() []string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	types := make([]string, 0, len(k.m))
	for t := range k.m {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

var (
	filterKinds  = &kinds[Filter]{what: "filter"}
	scannerKinds = &kinds[Scanner]{what: "scanner"}
)

// RegisterFilter makes a filter type available to `filter "TYPE" "NAME"`
// blocks. It is meant for init functions, is safe for concurrent use, and
// panics on an empty type, a missing step, or a type registered twice.
func RegisterFilter[S any](typ string, k FilterKind[S]) {
	filterKinds.register(typ, erase(filterKinds.what, k.Decode, k.Build), k.Decode != nil && k.Build != nil)
	if k.Release != "" {
		releaseDefaults.Store(typ, k.Release)
	}
	if k.HeaderOnly {
		headerOnly.Store(typ, true)
	}
}

// headerOnly holds the filter types whose FilterKind.HeaderOnly is set.
var headerOnly sync.Map

// FilterHeaderOnly reports whether filters of type typ read and change
// the header only (FilterKind.HeaderOnly).
func FilterHeaderOnly(typ string) bool {
	_, ok := headerOnly.Load(typ)
	return ok
}

// releaseDefaults maps a filter type to its FilterKind.Release.
var releaseDefaults sync.Map

// FilterReleaseDefault returns who may release what a filter of type typ
// held when its block does not say: its kind's Release, or "admin".
func FilterReleaseDefault(typ string) string {
	if v, ok := releaseDefaults.Load(typ); ok {
		return v.(string)
	}
	return "admin"
}

// RegisterScanner makes a scanner type available to `scanner "TYPE" "NAME"`
// blocks, as RegisterFilter does for filters.
func RegisterScanner[S any](typ string, k ScannerKind[S]) {
	scannerKinds.register(typ, erase(scannerKinds.what, k.Decode, k.Build), k.Decode != nil && k.Build != nil)
}

// FilterTypes and ScannerTypes return the registered type names, sorted.
func FilterTypes() []string  { return filterKinds.types() }
func ScannerTypes() []string { return scannerKinds.types() }

// DecodeFilter decodes a `filter "typ" "name"` block body. ok is false when
// typ is not registered (the caller reports that with its own range); the
// spec is nil when the body has errors.
func DecodeFilter(typ, name string, rng hcl.Range, body hcl.Body, dc *DecodeContext) (spec *FilterSpec, diags hcl.Diagnostics, ok bool) {
	k := filterKinds.lookup(typ)
	if k == nil {
		return nil, nil, false
	}
	dc.uses = nil
	settings, diags := k.decode(name, body, dc)
	if diags.HasErrors() {
		return nil, diags, true
	}
	return &FilterSpec{Type: typ, Name: name, Range: rng, Uses: slices.Clone(dc.uses), settings: settings, kind: k}, diags, true
}

// DecodeScanner decodes a `scanner "typ" "name"` block body, as
// DecodeFilter does.
func DecodeScanner(typ, name string, rng hcl.Range, body hcl.Body, dc *DecodeContext) (spec *ScannerSpec, diags hcl.Diagnostics, ok bool) {
	k := scannerKinds.lookup(typ)
	if k == nil {
		return nil, nil, false
	}
	settings, diags := k.decode(name, body, dc)
	if diags.HasErrors() {
		return nil, diags, true
	}
	return &ScannerSpec{Type: typ, Name: name, Range: rng, settings: settings, kind: k}, diags, true
}
