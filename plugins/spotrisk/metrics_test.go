package spotrisk

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every policy and result of the plugin's counters is on /metrics from
// registration, so rate() and increase() see its first increment: a series
// born at 1 shows no increase.
func TestCounterLabelsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	metricstest.LabelValues(t, "penny_spot_fallbacks_total", "policy", fallbackPolicies, []string{"prefer", "avoid"})
	metricstest.LabelValues(t, "penny_expander_requests_total", "result", expanderResults, []string{"ranked", "none", "invalid", "unavailable", "cancelled"})
}
