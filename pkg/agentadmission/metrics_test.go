package agentadmission

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every result of penny_admission_agent_evictions_total is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// other_node is alerted on): a series born at 1 shows no increase.
func TestReviewResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	metricstest.LabelValues(t, "penny_admission_agent_evictions_total", "result", reviewResults,
		[]string{"allowed", "other_node", "replaced", "unbound_token", "no_uid", "invalid", "error", "not_agent", "not_eviction"})
}
