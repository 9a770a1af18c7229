package gang

import (
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every result of penny_gang_attempts_total is on /metrics from registration,
// so rate() and increase() see a result's first attempt: a series born at 1
// shows no increase.
func TestAttemptResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	for _, tc := range []struct {
		metric, label string
		values        []string
	}{
		{"penny_gang_attempts_total", "result", []string{"admitted", "unschedulable", "released", "scheduled"}},
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
