package gang

import (
	"sync"

	"k8s.io/component-base/metrics"
	"k8s.io/component-base/metrics/legacyregistry"
)

// attemptResult is a result label value of penny_gang_attempts_total.
type attemptResult string

const (
	// resultAdmitted: room for the whole gang was found and claimed.
	resultAdmitted attemptResult = "admitted"
	// resultUnschedulable: the gang does not fit anywhere yet.
	resultUnschedulable attemptResult = "unschedulable"
	// resultReleased: an admitted gang failed to complete and was released.
	resultReleased attemptResult = "released"
	// resultScheduled: enough members were placed; they bind together.
	resultScheduled attemptResult = "scheduled"
)

// attemptResults is every attemptResult: registration puts each on /metrics
// at 0, so a result missing here is born at its first attempt.
var attemptResults = []attemptResult{resultAdmitted, resultUnschedulable, resultReleased, resultScheduled}

var (
	attempts = metrics.NewCounterVec(&metrics.CounterOpts{
		Name:           "penny_gang_attempts_total",
		Help:           "Gang placement attempts by result: admitted (room claimed for the whole gang), unschedulable (no room), released (admitted but could not complete), scheduled (all members placed together).",
		StabilityLevel: metrics.ALPHA,
	}, []string{"result"})

	waitSeconds = metrics.NewHistogram(&metrics.HistogramOpts{
		Name: "penny_gang_wait_seconds",
		Help: "Time from a gang's first scheduling attempt until all the members it needs were placed together.",
		// 10 ms to about 23 h: a gang can wait hours for room, and a
		// wait past the last bucket would read as that bucket in quantiles.
		Buckets:        metrics.ExponentialBuckets(0.01, 2, 24),
		StabilityLevel: metrics.ALPHA,
	})

	registerOnce sync.Once
)

// registerMetrics registers the plugin's metrics with the registry the
// scheduler serves on /metrics.
func registerMetrics() {
	registerOnce.Do(func() {
		legacyregistry.MustRegister(attempts, waitSeconds)
		// A result's series exists at 0 from the start: one born at its
		// first increment hides that increment from rate() and increase().
		for _, r := range attemptResults {
			attempts.WithLabelValues(string(r))
		}
	})
}
