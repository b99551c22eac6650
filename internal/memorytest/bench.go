package memorytest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/filters/memory"
)

// Bench measures a Store: Get, GetMany of 100 keys and Put of tagged
// records, each from 1 and from 32 goroutines. Besides ns/op (wall time per
// operation, all goroutines together) it reports each operation's latency:
// mean-µs, p50-µs, p99-µs and max-µs. With 32 goroutines on a machine of few
// cores the latencies include the wait for a core (mean ≈ 32 × ns/op).
func Bench(b *testing.B, s memory.Store, prefix string) {
	ctx := context.Background()
	const n = 2000
	keys := make([]memory.Key, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range keys {
		keys[i] = Key(prefix, i)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.Put(ctx, keys[i], Tagged(i)); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		return
	}
	batches := make([][]memory.Key, n/100)
	for i := range batches {
		batches[i] = keys[i*100 : (i+1)*100]
	}
	ops := []struct {
		name string
		op   func(i int) error
	}{
		{"Get", func(i int) error {
			r, err := s.Get(ctx, keys[i%n])
			if err == nil && r == nil {
				err = fmt.Errorf("key %d missing", i%n)
			}
			return err
		}},
		{"GetMany100", func(i int) error {
			rs, err := s.GetMany(ctx, batches[i%len(batches)])
			if err == nil && rs[99] == nil {
				err = fmt.Errorf("batch %d incomplete", i%len(batches))
			}
			return err
		}},
		{"Put", func(i int) error { return s.Put(ctx, Key(prefix+"put-", i%n), Tagged(i)) }},
	}
	for _, o := range ops {
		for _, conc := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/c%d", o.name, conc), func(b *testing.B) { Latencies(b, conc, o.op) })
		}
	}
}

// Latencies runs op b.N times from conc goroutines and reports the latencies
// (see Bench).
func Latencies(b *testing.B, conc int, op func(i int) error) {
	lat := make([][]time.Duration, conc)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				t0 := time.Now()
				err := op(i)
				lat[g] = append(lat[g], time.Since(t0))
				if err != nil {
					failed.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	q := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Nanoseconds()) / 1e3
	}
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	if len(all) > 0 {
		b.ReportMetric(float64(sum.Nanoseconds())/float64(len(all))/1e3, "mean-µs")
	}
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(1), "max-µs")
}
