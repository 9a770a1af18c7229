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

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Source fills its part of a report: its collector status and its data.
// Sources run in a fixed order (GPUs, PodDevices, Profiling, Reclaim), so a
// later one can attach its findings to the GPUs an earlier one put there.
// The collectors in agent/nvml, agent/podresources and agent/dcgm are
// Sources; the cloud notice watchers are the Reclaim source, and a notice
// arriving should also call Loop.Trigger so that the report goes out at
// once.
//
// This package depends on no collector, so that code running agents
// in-process (tests, the simulator) need not link NVML: go-nvml's cgo
// bindings leave NVML symbols unresolved until the library is loaded, and a
// binary that also imports Go's plugin package binds every symbol at start
// and fails to load.
type Source interface {
	Fill(ctx context.Context, r *telemetryv1.NodeReport)
}

// Sources are the collectors a report is built from. GPUs is required; a nil
// optional source is reported as DISABLED.
type Sources struct {
	GPUs       Source
	PodDevices Source
	Profiling  Source
	Reclaim    Source
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
	r := &telemetryv1.NodeReport{
		NodeName:     b.Node,
		AgentId:      b.AgentID,
		AgentVersion: b.Version,
		PodResources: disabled,
		Profiling:    disabled,
		Reclaim:      disabled,
	}
	for _, src := range []Source{b.Sources.GPUs, b.Sources.PodDevices, b.Sources.Profiling, b.Sources.Reclaim} {
		if src != nil {
			src.Fill(ctx, r)
		}
	}
	// Sources may share their status objects between reports: replace, do
	// not edit.
	for _, st := range []**telemetryv1.CollectorStatus{&r.Nvml, &r.PodResources, &r.Profiling, &r.Reclaim} {
		if *st == nil {
			continue
		}
		if msg := telemetryv1.StatusText((*st).GetMessage()); msg != (*st).GetMessage() {
			c := proto.Clone(*st).(*telemetryv1.CollectorStatus)
			c.Message = msg
			*st = c
		}
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
