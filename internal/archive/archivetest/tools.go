package archivetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// Helpers for tests that build their containers with the real tools
// (7z, genisoimage, gcab, …) or read ClamAV's test files: the archive
// package's own tests and the strip filter's corpus share them.

// required reports whether a missing tool or test file fails the test
// instead of skipping it: the test environment has them all.
func required() bool { return os.Getenv("POPGATE_REQUIRE_INTEGRATION") == "1" }

// NeedTool returns the path of a command-line tool the test builds its
// fixtures with; without it the test is skipped, or fails when
// POPGATE_REQUIRE_INTEGRATION=1.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if required() {
			t.Fatalf("%s not installed", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// ClamFile reads one of Debian's clamav-testfiles (each holds ClamAV's
// harmless test signature file clam.exe), skipping (or failing, as
// NeedTool) without them.
func ClamFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/usr/share/clamav-testfiles", name))
	if err != nil {
		if required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return b
}

// Shell runs script with sh in a fresh directory holding files, and
// returns the content of out there.
func Shell(t testing.TB, files map[string][]byte, script, out string) []byte {
	t.Helper()
	NeedTool(t, "sh")
	dir := t.TempDir()
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("sh", "-e", "-c", script)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, b)
	}
	b, err := os.ReadFile(filepath.Join(dir, out))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Bounded runs f and fails the test when it takes longer than d or
// allocates more than maxAlloc bytes in all. It returns the peak growth of
// the heap in use while f ran (sampled every millisecond), for tests whose
// f may allocate more in all than it holds at once.
func Bounded(t testing.TB, d time.Duration, maxAlloc uint64, f func()) (peak uint64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	done := make(chan struct{})
	sampled := make(chan uint64)
	go func() {
		var m runtime.MemStats
		var top uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			top = max(top, m.HeapInuse)
			select {
			case <-done:
				sampled <- top
				return
			case <-tick.C:
			}
		}
	}()
	start := time.Now()
	f()
	took := time.Since(start)
	close(done)
	top := <-sampled
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	if top > before.HeapInuse {
		peak = top - before.HeapInuse
	}
	t.Logf("%v, %.1f MB allocated, heap peak +%.1f MB", took, float64(alloc)/1e6, float64(peak)/1e6)
	if took > d {
		t.Errorf("took %v, over %v", took, d)
	}
	if alloc > maxAlloc {
		t.Errorf("allocated %d bytes, over %d", alloc, maxAlloc)
	}
	return peak
}
