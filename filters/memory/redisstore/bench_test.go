package redisstore

import (
	"testing"

	"github.com/popgate/popgate/internal/memorytest"
	"github.com/popgate/popgate/internal/testenv"
)

// BenchmarkStore: against the test redis (scripts/testenv.sh up):
// go test -run XXX -bench . ./filters/memory/redisstore/
func BenchmarkStore(b *testing.B) {
	s := newStore(b, testenv.Redis(b), Options{})
	memorytest.Bench(b, s, "")
}
