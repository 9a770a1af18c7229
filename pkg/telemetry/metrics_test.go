package telemetry

import (
	"testing"

	"github.com/pennysched/penny/pkg/metricstest"
)

// Every result, reason and kind of the telemetry counters is on /metrics from
// registration, so rate() and increase() see its first increment (a single
// wrong_node is alerted on): a series born at 1 shows no increase.
func TestCounterLabelsExistBeforeTheirFirstIncrement(t *testing.T) {
	RegisterMetrics()
	metricstest.LabelValues(t, "penny_telemetry_reports_total", "result", reportResults, []string{"accepted", "stale", "invalid", "wrong_node"})
	metricstest.LabelValues(t, "penny_telemetry_auth_failures_total", "reason", authFailureReasons, []string{"missing_token", "invalid_token", "not_agent", "not_bound", "expired"})
	metricstest.LabelValues(t, "penny_telemetry_checkpoint_statuses_total", "result", checkpointStatusResults, []string{"accepted", "invalid", "wrong_node", "unknown_command", "own_notice"})
	metricstest.LabelValues(t, "penny_telemetry_commands_sent_total", "kind", commandKinds, []string{"checkpoint"})
	metricstest.LabelValues(t, "penny_telemetry_streams_ended_total", "reason", streamEndReasons, []string{"not_reading", "too_many_elements"})
}
