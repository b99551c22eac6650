//go:build !race

package strip

// raceSlowdown scales the hostile tests' time budget: the race detector
// makes allocation-heavy code (100,000 parts) several times slower.
const raceSlowdown = 1
