package spotrisk

import (
	"fmt"
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every policy and result of the plugin's counters is on /metrics from
// registration, so rate() and increase() see its first increment: a series
// born at 1 shows no increase.
func TestCounterLabelsExistBeforeTheirFirstIncrement(t *testing.T) {
	registerMetrics()
	for _, tc := range []struct {
		metric, label string
		// code is the package's list of the label's values, which
		// registration puts on /metrics at 0.
		code   any
		values []string
	}{
		{"penny_spot_fallbacks_total", "policy", fallbackPolicies, []string{"prefer", "avoid"}},
		{"penny_expander_requests_total", "result", expanderResults, []string{"ranked", "none", "invalid", "unavailable", "cancelled"}},
	} {
		for _, v := range tc.values {
			counterValue(t, tc.metric, tc.label, v)
		}
		// A value the code lists but dashboards, alerts and the Help
		// text do not name is a series nobody reads.
		if code, want := fmt.Sprint(tc.code), fmt.Sprint(tc.values); code != want {
			t.Errorf("%s: the code's %s values are %s, want %s, in the order its Help names them", tc.metric, tc.label, code, want)
		}
	}
}

// counterValue reads a labelled counter without creating its series, as
// WithLabelValues would: a test that counts a value's increments then fails
// when the package does not put that value on /metrics at 0 from
// registration.
func counterValue(t *testing.T, metric, label, value string) float64 {
	t.Helper()
	got, err := testutil.GetCounterValuesFromGatherer(legacyregistry.DefaultGatherer, metric, map[string]string{}, label)
	if err != nil {
		t.Fatalf("%s: %v", metric, err)
	}
	v, ok := got[value]
	if !ok {
		t.Fatalf("%s{%s=%q} is not on /metrics before its first increment (have %v), so increase() would miss that increment: add it to the package's list of %s values", metric, label, value, got, label)
	}
	return v
}
