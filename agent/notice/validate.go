package notice

import (
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Validate checks a notice as the scheduler will: it must fit in a report the
// telemetry API accepts. Fuzz tests of the parsers use it.
func (n Notice) Validate() error {
	r := &telemetryv1.NodeReport{
		NodeName: "node", AgentId: "agent", Sequence: 1, CollectedAt: timestamppb.Now(),
		Nvml:           &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_UNAVAILABLE},
		PodResources:   &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED},
		Profiling:      &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED},
		Reclaim:        &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK},
		ReclaimNotices: []*telemetryv1.ReclaimNotice{n.Proto()},
	}
	if err := telemetryv1.ValidateNodeReport(r); err != nil {
		return fmt.Errorf("notice %s would be refused by the scheduler: %w", n, err)
	}
	return nil
}
