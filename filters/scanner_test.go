package filters

import (
	"slices"
	"testing"
)

func TestStrongestSymbols(t *testing.T) {
	r := &SpamReport{Symbols: []SpamSymbol{{Name: "LOW", Score: -1}, {Name: "B", Score: 2}, {Name: "A", Score: 2}, {Name: "TOP", Score: 9.5}}}
	var got []string
	for _, s := range r.StrongestSymbols() {
		got = append(got, s.Name)
	}
	if want := []string{"TOP", "A", "B", "LOW"}; !slices.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
	if r.Symbols[0].Name != "LOW" {
		t.Error("the report's own list was sorted")
	}
}
