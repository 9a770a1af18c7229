package report

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/component-base/metrics/testutil"
)

// Every command kind is on /metrics at 0 before the first command, so
// increase() sees the first: a series born at 1 shows no increase.
func TestCommandKindsStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	got, err := testutil.GetCounterValuesFromGatherer(reg, "penny_agent_commands_received_total", map[string]string{}, "kind")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := got["checkpoint"]; !ok || v != 0 {
		t.Errorf("penny_agent_commands_received_total{kind=checkpoint} before any command: %v (exported: %v), want 0", v, ok)
	}
	// A kind the code lists but dashboards and the Help text do not name is
	// a series nobody reads.
	if len(got) != 1 {
		t.Errorf("penny_agent_commands_received_total has kinds %v before any command, want only checkpoint", got)
	}
}
