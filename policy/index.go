package policy

import (
	"slices"
	"strings"
)

// index finds the candidates for a login among many policies or routes
// without trying each: entries whose users are all plain names are filed
// under those names; failing that, entries whose domains are all plain
// names or "*.name" wildcards are filed under the names (wildcards under
// their suffix); the rest are tried for every login. Candidates keep file
// order, so "first match wins" is unchanged.
type index struct {
	byUser, byDomain, bySuffix map[string][]int
	rest                       []int
}

func isPlain(glob string) bool { return !strings.ContainsAny(glob, `*?[\`) }

// suffixGlob reports whether glob is "*.NAME" with a plain NAME.
func suffixGlob(glob string) (string, bool) {
	name, ok := strings.CutPrefix(glob, "*.")
	return name, ok && isPlain(name)
}

func newIndex(n int, users, domains func(i int) []string) *index {
	x := &index{byUser: map[string][]int{}, byDomain: map[string][]int{}, bySuffix: map[string][]int{}}
	for i := range n {
		u, d := users(i), domains(i)
		switch {
		case len(u) > 0 && !slices.ContainsFunc(u, func(g string) bool { return !isPlain(g) }):
			for _, name := range u {
				x.byUser[name] = append(x.byUser[name], i)
			}
		case len(d) > 0 && !slices.ContainsFunc(d, func(g string) bool { _, ok := suffixGlob(g); return !isPlain(g) && !ok }):
			for _, g := range d {
				if name, ok := suffixGlob(g); ok {
					x.bySuffix[name] = append(x.bySuffix[name], i)
				} else {
					x.byDomain[g] = append(x.byDomain[g], i)
				}
			}
		default:
			x.rest = append(x.rest, i)
		}
	}
	return x
}

// candidates calls try with each candidate for a lowercased login, in file
// order, until try returns true.
func (x *index) candidates(user, domain string, try func(i int) bool) {
	var lists [][]int
	add := func(l []int) {
		if len(l) > 0 {
			lists = append(lists, l)
		}
	}
	add(x.byUser[user])
	add(x.byDomain[domain])
	for d := domain; ; {
		_, rest, ok := strings.Cut(d, ".")
		if !ok {
			break
		}
		add(x.bySuffix[rest])
		d = rest
	}
	add(x.rest)
	last := -1
	for {
		// The smallest head among the sorted lists comes next.
		next, from := -1, -1
		for k, l := range lists {
			if len(l) > 0 && (next < 0 || l[0] < next) {
				next, from = l[0], k
			}
		}
		if from < 0 {
			return
		}
		lists[from] = lists[from][1:]
		if next == last {
			continue // filed under two of the names
		}
		last = next
		if try(next) {
			return
		}
	}
}

func splitLogin(login string) (user, domain string) {
	user = strings.ToLower(login)
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		domain = user[i+1:]
	}
	return user, domain
}
