//go:build linux && !race

package proxy

// See rawio_race.go.
func raceReleaseIO(uintptr) {}
func raceAcquireIO(uintptr) {}
