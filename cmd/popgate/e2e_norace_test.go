//go:build !race

package main

// raceEnabled makes TestMain build the popgate binary with -race too.
const raceEnabled = false
