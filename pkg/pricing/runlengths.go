package pricing

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of RunLengths.
const (
	// DefaultRunLengthsHalfLife is how long it takes for an observed run's
	// weight to halve.
	DefaultRunLengthsHalfLife = 30 * 24 * time.Hour
	// MinRunLengths is how many runs' worth of evidence Typical needs to
	// speak: the runs' total weight, each run counting less as it ages, to
	// the nearest run, so that ten runs seen long ago and forgotten since
	// do not keep it speaking for the one seen last, while ten runs that
	// ended seconds apart (9.99999 runs' worth) count as ten.
	MinRunLengths = 10
)

// RunLengths learns how long training runs in the cluster last, for work
// whose own runtime is unknown. A job without checkpoints loses, on a
// reclaim, the run so far; what matters for the GPU-hours a pool costs such
// work is not the typical job but the job a typical GPU-hour belongs to:
// the GPU-weighted, size-biased mean sum(g t^2) / sum(g t). Long jobs
// dominate it, as they dominate the loss (a 20-day job among a hundred
// 1-hour ones makes it ~16 days). Runs count less as they age, so the
// estimate follows the workload; by time, not by count, since a busy
// cluster ends thousands of short runs between two long ones.
type RunLengths struct {
	mu       sync.Mutex
	halfLife time.Duration
	// n is the runs' total weight, decayed as s1 and s2 are.
	n      float64
	s1, s2 float64
	// at is the time n, s1 and s2 are discounted to.
	at time.Time
	// inForce: Typical spoke at the last Observe, and the metric says so.
	inForce bool
	// typical is what Typical answers (0: nothing yet), set by Observe,
	// the only writer of the sums: SpotRisk's Score reads it for every node
	// it scores, from many goroutines at once, without taking mu.
	typical atomic.Int64
}

// NewRunLengths halves an observation's weight every halfLife
// (DefaultRunLengthsHalfLife when halfLife <= 0).
func NewRunLengths(halfLife time.Duration) *RunLengths {
	if halfLife <= 0 {
		halfLife = DefaultRunLengthsHalfLife
	}
	return &RunLengths{halfLife: halfLife}
}

// Observe records a run of a pod holding gpus GPUs that lasted ran and
// ended at end.
func (r *RunLengths) Observe(gpus float64, ran time.Duration, end time.Time) {
	if r == nil || gpus <= 0 || ran <= 0 {
		return
	}
	h := ran.Hours()
	r.mu.Lock()
	w := 1.0
	switch {
	case r.at.IsZero() || end.After(r.at):
		if !r.at.IsZero() {
			f := r.weight(end.Sub(r.at))
			r.n, r.s1, r.s2 = r.n*f, r.s1*f, r.s2*f
		}
		r.at = end
	default:
		// An older run, told late, counts as old.
		w = r.weight(r.at.Sub(end))
	}
	r.s1 += w * gpus * h
	r.s2 += w * gpus * h * h
	r.n += w
	typical, inForce, was := r.s2/r.s1, r.enough(), r.inForce
	r.inForce = inForce
	if inForce {
		r.typical.Store(int64(max(1, time.Duration(typical*float64(time.Hour)))))
	} else {
		r.typical.Store(0)
	}
	r.mu.Unlock()
	// Until Typical answers, unknownRuntime is in force, not this: 0, as
	// before the first run, once the runs it knew have aged out.
	switch {
	case inForce:
		metricTypicalRunHours.Set(typical)
	case was:
		metricTypicalRunHours.Set(0)
	}
}

// enough: the runs weigh MinRunLengths runs, to the nearest run. Caller
// holds mu.
func (r *RunLengths) enough() bool { return r.n >= MinRunLengths-0.5 }

func (r *RunLengths) weight(age time.Duration) float64 {
	return math.Exp(-math.Ln2 * age.Hours() / r.halfLife.Hours())
}

// Typical is the size-biased mean run length, once the runs seen weigh
// MinRunLengths runs (weighed at the last run's end, to the nearest run).
func (r *RunLengths) Typical() (time.Duration, bool) {
	if r == nil {
		return 0, false
	}
	d := time.Duration(r.typical.Load())
	return d, d > 0
}
