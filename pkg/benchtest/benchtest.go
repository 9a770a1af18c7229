// Package benchtest holds what Penny's benchmarks measure alike.
package benchtest

import (
	"fmt"
	"syscall"
	"time"
)

// ProcessCPU is the CPU time (user + system) this process has used, all
// threads together. A benchmark reports it per op beside wall time: on a
// machine whose cores other work shares, wall time includes waiting for a
// core, and CPU time counts the garbage collector's and the parallel
// goroutines' work, which is what the code costs the scheduler.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(fmt.Sprintf("getrusage: %v", err))
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
