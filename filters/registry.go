package filters

import (
	"slices"
	"sync"
)

// Factory builds the filter named name (the second label of a
// `filter "TYPE" "name"` block) from its settings. cfg is whatever the policy
// loader hands over for the block; each filter type decodes and validates it
// itself.
type Factory func(name string, cfg any) (Filter, error)

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
