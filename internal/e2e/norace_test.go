//go:build !race

package e2e

// raceEnabled makes TestMain build the popgate binary with -race too.
const raceEnabled = false
