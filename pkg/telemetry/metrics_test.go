package telemetry

import (
	"testing"

	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/component-base/metrics/testutil"
)

// Every result, reason and kind of the telemetry counters is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// wrong_node is alerted on): a series born at 1 shows no increase.
func TestCounterLabelsExistBeforeTheirFirstIncrement(t *testing.T) {
	RegisterMetrics()
	for _, tc := range []struct {
		metric, label string
		values        []string
	}{
		{"penny_telemetry_reports_total", "result", []string{"accepted", "stale", "invalid", "wrong_node"}},
		{"penny_telemetry_auth_failures_total", "reason", []string{"missing_token", "invalid_token", "not_agent", "not_bound", "expired"}},
		{"penny_telemetry_checkpoint_statuses_total", "result", []string{"accepted", "invalid", "wrong_node", "unknown_command"}},
		{"penny_telemetry_commands_sent_total", "kind", []string{"checkpoint"}},
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
