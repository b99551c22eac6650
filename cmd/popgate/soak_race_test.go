//go:build race

package main

// raceEnabled tells TestSoak whether the race detector is on (it then
// checks the live heap instead of RSS).
const raceEnabled = true
