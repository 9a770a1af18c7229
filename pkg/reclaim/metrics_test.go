package reclaim

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every result of the coordinator's counters is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// failed eviction is alerted on): a series born at 1 shows no increase.
func TestCounterResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	metricstest.LabelValues(t, "penny_reclaim_gang_commands_total", "result", commandResults, []string{"sent", "undelivered"})
	metricstest.LabelValues(t, "penny_reclaim_gang_evictions_total", "result", memberEvictions, []string{"evicted", "gone", "failed"})
}
