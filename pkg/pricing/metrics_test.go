package pricing

import (
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every result of the pricing counters is on /metrics from registration, so
// rate() and increase() see its first increment: a series born at 1 shows no
// increase.
func TestCounterResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	RegisterMetrics()
	for _, tc := range []struct {
		metric, label string
		values        []string
	}{
		{"penny_price_catalog_loads_total", "result", []string{"success", "error"}},
		{"penny_interrupted_saves_total", "result", []string{"success", "error"}},
		{"penny_reclaim_risk_saves_total", "result", []string{"success", "error"}},
	} {
		got, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, tc.metric, map[string]string{}, tc.label)
		if err != nil {
			t.Fatalf("%s: %v", tc.metric, err)
		}
		for _, v := range tc.values {
			if _, ok := got[v]; !ok {
				t.Errorf("%s{%s=%q} is not on /metrics before its first increment (have %v); increase() would miss that increment", tc.metric, tc.label, v, got)
			}
		}
	}
}
