package reclaim

import (
	"fmt"
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every result of the coordinator's counters is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// failed eviction is alerted on): a series born at 1 shows no increase.
func TestCounterResultsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	for _, tc := range []struct {
		metric, label string
		// code is the package's list of the label's values, which
		// registration puts on /metrics at 0.
		code   any
		values []string
	}{
		{"penny_reclaim_gang_commands_total", "result", commandResults, []string{"sent", "undelivered"}},
		{"penny_reclaim_gang_evictions_total", "result", memberEvictions, []string{"evicted", "gone", "failed"}},
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
		// A value the code lists but dashboards, alerts and the Help
		// text do not name is a series nobody reads.
		if code, want := fmt.Sprint(tc.code), fmt.Sprint(tc.values); code != want {
			t.Errorf("%s: the code's %s values are %s, want %s, in the order its Help names them", tc.metric, tc.label, code, want)
		}
	}
}
