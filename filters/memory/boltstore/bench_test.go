package boltstore

import (
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/popgate/popgate/filters/memory"
	"github.com/popgate/popgate/internal/memorytest"
)

// BenchmarkStore: go test -run XXX -bench . ./filters/memory/boltstore/
func BenchmarkStore(b *testing.B) {
	s, _ := open(b, filepath.Join(b.TempDir(), "memory.db"), Options{})
	defer s.Close()
	memorytest.Bench(b, s, "")
}

// BenchmarkDBBatchPut is Put as bbolt's db.Batch would do it (for
// comparison with the Store's own group commit): a lone put waits for
// MaxBatchDelay (10ms) before its commit.
func BenchmarkDBBatchPut(b *testing.B) {
	s, _ := open(b, filepath.Join(b.TempDir(), "memory.db"), Options{})
	defer s.Close()
	v := append(make([]byte, useLen), memory.Encode(memorytest.Tagged(1))...)
	for _, conc := range []int{1, 32} {
		b.Run(fmt.Sprintf("c%d", conc), func(b *testing.B) {
			memorytest.Latencies(b, conc, func(i int) error {
				h := memorytest.Key("batch-", i).Hash()
				return s.db.Batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketRecords).Put(h[:], v) })
			})
		})
	}
}
