package telemetrytest

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
)

// Report returns a valid report of an A100-80GB node with gpus GPUs: the
// even ones whole (every other one held by a pod), the odd ones in MIG mode
// with seven 1g.10gb instances, two of them held. It is the size of a real
// DGX report, for tests and benchmarks.
func Report(node string, gpus int, seq uint64, collected time.Time) *telemetryv1.NodeReport {
	ok := &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_OK}
	r := &telemetryv1.NodeReport{
		NodeName: node, AgentId: "agent-" + node, Sequence: seq, CollectedAt: timestamppb.New(collected),
		AgentVersion: "test", Nvml: ok, DriverVersion: "550.54.15", CudaDriverVersion: 12040,
		PodResources: ok, Profiling: &telemetryv1.CollectorStatus{State: telemetryv1.CollectorStatus_STATE_DISABLED}, Reclaim: ok,
	}
	for i := 0; i < gpus; i++ {
		g := &telemetryv1.GPU{
			Uuid: "GPU-" + UUID(node, i, -1), Index: uint32(i), Name: "NVIDIA A100-SXM4-80GB", Product: "NVIDIA-A100-SXM4-80GB",
			PciBusId: fmt.Sprintf("00000000:%02X:00.0", 7+8*i), MemoryTotalBytes: 80 << 30,
			Health: &telemetryv1.Health{Healthy: true, TemperatureCelsius: proto.Uint32(40), EccUncorrected: proto.Uint64(0), EccCorrected: proto.Uint64(0),
				ThrottleReasons: []telemetryv1.ThrottleReason{telemetryv1.ThrottleReason_THROTTLE_REASON_GPU_IDLE}},
		}
		if i%2 == 0 {
			g.MigMode = telemetryv1.MIGMode_MIG_MODE_DISABLED
			g.MemoryUsedBytes = proto.Uint64(uint64(seq%40) << 30)
			g.UtilizationPercent = proto.Uint32(uint32(seq*7+uint64(i)) % 101)
			g.MemoryUtilizationPercent = proto.Uint32(uint32(seq*3+uint64(i)) % 101)
			if i%4 == 0 {
				pod := &telemetryv1.PodRef{Namespace: "team-a", Name: fmt.Sprintf("trainer-%s-%d", node, i)}
				g.Pods = []*telemetryv1.PodRef{pod}
				r.PodDevices = append(r.PodDevices, &telemetryv1.PodDevices{Pod: pod, Container: "main", ResourceName: "nvidia.com/gpu", DeviceIds: []string{g.Uuid}})
			}
		} else {
			g.MigMode = telemetryv1.MIGMode_MIG_MODE_ENABLED
			for s := 0; s < 7; s++ {
				m := &telemetryv1.MIGInstance{
					Uuid: "MIG-" + UUID(node, i, s), Profile: "1g.10gb", GpuInstanceId: uint32(7 + s), PlacementStart: uint32(s), PlacementSize: 1,
					MemoryTotalBytes: 9856 << 20, MemoryUsedBytes: proto.Uint64(0),
				}
				if s < 2 {
					m.Pod = &telemetryv1.PodRef{Namespace: "team-b", Name: fmt.Sprintf("infer-%s-%d-%d", node, i, s)}
					r.PodDevices = append(r.PodDevices, &telemetryv1.PodDevices{Pod: m.Pod, Container: "server", ResourceName: "nvidia.com/mig-1g.10gb", DeviceIds: []string{m.Uuid}})
				}
				g.MigInstances = append(g.MigInstances, m)
			}
		}
		r.Gpus = append(r.Gpus, g)
	}
	return r
}

// UUID derives a stable UUID (without prefix) for GPU gpu of node, or for
// its MIG instance mig (-1 for the GPU itself).
func UUID(node string, gpu, mig int) string {
	h := fnv.New128a()
	fmt.Fprintf(h, "%s/%d/%d", node, gpu, mig)
	b := h.Sum(nil)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// GPUSource is an agent GPU source (agent/report.Source) that fills in the
// GPUs Report describes, for agents run in-process without NVML.
type GPUSource struct {
	GPUs int
	// Whole reports every GPU whole and idle, as on a node that advertises
	// only nvidia.com/gpu: a node whose reported layout put some GPUs in
	// MIG mode would have fewer whole GPUs for the scheduler's GPU packing.
	Whole bool
}

// Fill implements agent/report.Source.
func (s GPUSource) Fill(_ context.Context, r *telemetryv1.NodeReport) {
	rep := Report(r.NodeName, s.GPUs, 1, time.Now())
	if s.Whole {
		for _, g := range rep.Gpus {
			g.MigMode, g.MigInstances, g.Pods = telemetryv1.MIGMode_MIG_MODE_DISABLED, nil, nil
		}
	}
	r.Nvml, r.DriverVersion, r.CudaDriverVersion, r.Gpus = rep.Nvml, rep.DriverVersion, rep.CudaDriverVersion, rep.Gpus
}
