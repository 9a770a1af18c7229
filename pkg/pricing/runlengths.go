package pricing

import (
	"math"
	"sync"
	"time"
)

// Defaults of RunLengths.
const (
	// DefaultRunLengthsHalfLife is how many runs it takes for an observed
	// run's weight to halve.
	DefaultRunLengthsHalfLife = 500
	// MinRunLengths is how many runs must be seen before Typical speaks.
	MinRunLengths = 10
)

// RunLengths learns how long training runs in the cluster last, for work
// whose own runtime is unknown. A job without checkpoints loses, on a
// reclaim, the run so far; what matters for the GPU-hours a pool costs such
// work is not the typical job but the job a typical GPU-hour belongs to:
// the GPU-weighted, size-biased mean sum(g t^2) / sum(g t). Long jobs
// dominate it, as they dominate the loss (a 20-day job among a hundred
// 1-hour ones makes it ~16 days). Old runs count less as new ones come, so
// the estimate follows the workload.
type RunLengths struct {
	mu     sync.Mutex
	decay  float64
	n      int
	s1, s2 float64
}

// NewRunLengths forgets half an observation's weight every halfLife runs
// (DefaultRunLengthsHalfLife when halfLife <= 0).
func NewRunLengths(halfLife int) *RunLengths {
	if halfLife <= 0 {
		halfLife = DefaultRunLengthsHalfLife
	}
	return &RunLengths{decay: math.Pow(0.5, 1/float64(halfLife))}
}

// Observe records a run of a pod holding gpus GPUs that lasted ran, ended
// by completion or cut short (then it is a lower bound, which errs towards
// Spot).
func (r *RunLengths) Observe(gpus float64, ran time.Duration) {
	if r == nil || gpus <= 0 || ran <= 0 {
		return
	}
	h := ran.Hours()
	r.mu.Lock()
	r.s1 = r.s1*r.decay + gpus*h
	r.s2 = r.s2*r.decay + gpus*h*h
	r.n++
	typical := r.s2 / r.s1
	r.mu.Unlock()
	metricTypicalRunHours.Set(typical)
}

// Typical is the size-biased mean run length, once MinRunLengths runs were
// seen.
func (r *RunLengths) Typical() (time.Duration, bool) {
	if r == nil {
		return 0, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n < MinRunLengths {
		return 0, false
	}
	return time.Duration(r.s2 / r.s1 * float64(time.Hour)), true
}
