package gang

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every result of penny_gang_attempts_total is on /metrics from registration,
// so rate() and increase() see a result's first attempt: a series born at 1
// shows no increase.
func TestAttemptResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	metricstest.LabelValues(t, "penny_gang_attempts_total", "result", attemptResults, []string{"admitted", "unschedulable", "released", "scheduled"})
}
