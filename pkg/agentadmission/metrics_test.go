package agentadmission

import (
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every result of penny_admission_agent_evictions_total is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// other_node is alerted on): a series born at 1 shows no increase.
func TestReviewResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	for _, tc := range []struct {
		metric, label string
		values        []string
	}{
		{"penny_admission_agent_evictions_total", "result", []string{"allowed", "other_node", "unbound_token", "no_uid", "invalid", "error", "not_agent", "not_eviction"}},
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
