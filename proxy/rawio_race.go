//go:build linux && race

package proxy

import "syscall"

// Under the race detector, syscall.Read and syscall.Write order every write
// to a file before every later read of one: that is how it sees goroutines
// that talk over sockets (through popgate, in the tests) as synchronised.
// rawIO's raw system calls skip that bookkeeping; these zero-length calls
// do it for them.
func raceReleaseIO(fd uintptr) { _, _ = syscall.Write(int(fd), nil) }
func raceAcquireIO(fd uintptr) { _, _ = syscall.Read(int(fd), nil) }
