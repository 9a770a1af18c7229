// Package report turns what the agent's collectors see into NodeReports and
// keeps every penny-scheduler replica up to date with them: it collects on a
// short interval, sends at once when something that matters changed and at
// least every resend interval otherwise, and holds one stream per scheduler
// endpoint that reconnects with backoff. Nothing here blocks on a scheduler:
// while none is reachable the agent keeps collecting, and a scheduler that
// comes back gets the current report, not a backlog.
package report

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/pennysched/penny/agent/dcgm"
	"github.com/pennysched/penny/agent/nvml"
	"github.com/pennysched/penny/agent/podresources"
	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// GPUSource reads GPUs (agent/nvml.Collector).
type GPUSource interface {
	Collect(ctx context.Context) nvml.Result
}

// PodDeviceSource reads which pod holds which device (agent/podresources.Collector).
type PodDeviceSource interface {
	Collect(ctx context.Context) podresources.Result
}

// ProfilingSource reads DCGM profiling fields (agent/dcgm.Scraper).
type ProfilingSource interface {
	Collect(ctx context.Context) dcgm.Result
}

// ReclaimSource says which reclaim notices are pending on the node. The cloud
// notice watchers implement it; a notice arriving should also call
// Loop.Trigger so that the report goes out at once.
type ReclaimSource interface {
	Pending() (*telemetryv1.CollectorStatus, []*telemetryv1.ReclaimNotice)
}

// Sources are the collectors a report is built from. GPUs is required; a nil
// optional source is reported as DISABLED.
type Sources struct {
	GPUs       GPUSource
	PodDevices PodDeviceSource
	Profiling  ProfilingSource
	Reclaim    ReclaimSource
}

// Builder assembles reports for one node.
type Builder struct {
	Node    string
	AgentID string
	Version string
	Sources Sources
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// NewAgentID returns a random id for one agent process.
func NewAgentID() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b)
}

var disabled = &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED}

// Build collects from every source and returns a report without a sequence
// number (the loop numbers the reports it publishes).
func (b *Builder) Build(ctx context.Context) *telemetryv1.NodeReport {
	now := time.Now
	if b.Now != nil {
		now = b.Now
	}
	g := b.Sources.GPUs.Collect(ctx)
	r := &telemetryv1.NodeReport{
		NodeName:          b.Node,
		AgentId:           b.AgentID,
		AgentVersion:      b.Version,
		Nvml:              g.Status,
		DriverVersion:     g.DriverVersion,
		CudaDriverVersion: g.CUDADriverVersion,
		Gpus:              g.GPUs,
		PodResources:      disabled,
		Profiling:         disabled,
		Reclaim:           disabled,
	}
	if b.Sources.PodDevices != nil {
		p := b.Sources.PodDevices.Collect(ctx)
		r.PodResources, r.PodDevices = p.Status, p.Devices
		if unmatched := podresources.Attach(r.Gpus, p.Devices); len(unmatched) > 0 && len(r.Gpus) > 0 && p.Status.GetState() == telemetryv1.CollectorStatus_STATE_OK {
			// Devices the kubelet assigned but NVML does not show: the two
			// views disagree, so the mapping cannot be trusted as complete.
			r.PodResources = &telemetryv1.CollectorStatus{
				State:   telemetryv1.CollectorStatus_STATE_OK,
				Message: fmt.Sprintf("%d device ids match no GPU or MIG instance NVML reports (first: %s)", len(unmatched), unmatched[0]),
			}
		}
	}
	if b.Sources.Profiling != nil {
		p := b.Sources.Profiling.Collect(ctx)
		r.Profiling = p.Status
		dcgm.Attach(r.Gpus, p.Values)
	}
	if b.Sources.Reclaim != nil {
		r.Reclaim, r.ReclaimNotices = b.Sources.Reclaim.Pending()
	}
	r.CollectedAt = timestamppb.New(now())
	return r
}

// significant strips what changes all the time (utilisation, memory in use,
// temperature, profiling ratios, clock reasons, timestamps) so that two
// reports compare equal when nothing a placement depends on has changed.
// Health verdicts, MIG layouts, pod assignments, collector states and
// reclaim notices all remain.
func significant(r *telemetryv1.NodeReport) *telemetryv1.NodeReport {
	c := proto.Clone(r).(*telemetryv1.NodeReport)
	c.Sequence, c.CollectedAt = 0, nil
	for _, g := range c.Gpus {
		g.MemoryUsedBytes, g.UtilizationPercent, g.MemoryUtilizationPercent, g.Profiling = nil, nil, nil, nil
		if g.Health != nil {
			g.Health.TemperatureCelsius, g.Health.EccCorrected, g.Health.ThrottleReasons = nil, nil, nil
		}
		for _, m := range g.MigInstances {
			m.MemoryUsedBytes, m.Profiling = nil, nil
		}
	}
	return c
}

// Changed reports whether next differs from prev in something that should
// reach the scheduler at once.
func Changed(prev, next *telemetryv1.NodeReport) bool {
	if prev == nil {
		return true
	}
	return !proto.Equal(significant(prev), significant(next))
}
