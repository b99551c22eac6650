package quarantine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/filters"
)

// BenchmarkStoreDurable measures Store with real fsyncs of a small (2 KB)
// message, the case where they dominate popgate's latency. b.TempDir must
// be on a disk (set TMPDIR when /tmp is a tmpfs): on a tmpfs fsync costs
// nothing and the numbers mean nothing. "sessions=8" runs 8 Stores at a
// time, as concurrent sessions do; its us/store is the mean latency of one
// Store, ns/op the wall time per Store; p50-us is the median latency,
// which a busy disk sways less than the mean.
func BenchmarkStoreDurable(b *testing.B) {
	msg := []byte(testMsg + strings.Repeat("a line of a small message body.\r\n", 60))
	for _, sessions := range []int{1, 8} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			s := openStore(b)
			res := testResult()
			var (
				mu  sync.Mutex
				lat []time.Duration
				wg  sync.WaitGroup
			)
			next := make(chan struct{})
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for range sessions {
				wg.Go(func() {
					for range next {
						start := time.Now()
						if _, err := s.Store(context.Background(), testEnv, filters.BytesBody(msg), res); err != nil {
							b.Error(err)
						}
						d := time.Since(start)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					}
				})
			}
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.StopTimer()
			var total time.Duration
			for _, d := range lat {
				total += d
			}
			slices.Sort(lat)
			b.ReportMetric(float64(total.Microseconds())/float64(b.N), "us/store")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
		})
	}
}
