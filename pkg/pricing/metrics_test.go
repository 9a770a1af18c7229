package pricing

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every result of the pricing counters is on /metrics from registration, so
// rate() and increase() see its first increment: a series born at 1 shows no
// increase.
func TestCounterResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	RegisterMetrics()
	results := []string{resultSuccess, resultError}
	for _, metric := range []string{"penny_price_catalog_loads_total", "penny_interrupted_saves_total", "penny_reclaim_risk_saves_total"} {
		metricstest.LabelValues(t, metric, "result", results, []string{"success", "error"})
	}
}
