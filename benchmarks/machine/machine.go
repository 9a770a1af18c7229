// Package machine describes the machine a benchmark ran on, for the results
// files under benchmarks/results: a number means little without it.
package machine

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
)

// Machine is what a results file records of the machine.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	MemoryGiB int    `json:"memory_gib"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
}

// Describe reads this machine's CPUs and memory (Linux's /proc; left empty
// elsewhere) and the Go version the benchmark was built with.
func Describe() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var kb int
			if n, _ := fmt.Sscanf(sc.Text(), "MemTotal: %d kB", &kb); n == 1 {
				m.MemoryGiB = (kb + 1<<19) >> 20
				break
			}
		}
		f.Close()
	}
	return m
}

// String is the machine as the results' markdown says it.
func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), %d GiB memory, %s, %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.OS, m.GoVersion)
}
