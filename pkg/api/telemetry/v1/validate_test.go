package telemetryv1

import (
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// sampleReport is a valid report of a 2-GPU A100 node: GPU 0 whole and held
// by a pod, GPU 1 in MIG mode with three instances, one of them held.
func sampleReport() *NodeReport {
	ok := &CollectorStatus{State: CollectorStatus_STATE_OK}
	ts := timestamppb.New(time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC))
	pod := &PodRef{Namespace: "team-a", Name: "trainer-0"}
	mig := func(id, profile string, gi, start, size uint32, p *PodRef) *MIGInstance {
		return &MIGInstance{Uuid: id, Profile: profile, GpuInstanceId: gi, PlacementStart: start, PlacementSize: size, MemoryTotalBytes: 10 << 30, Pod: p}
	}
	return &NodeReport{
		NodeName: "gpu-node-1", AgentId: "b3c1e2a4", Sequence: 7, CollectedAt: ts, AgentVersion: "v0.1.0",
		Nvml: ok, DriverVersion: "550.54.15", CudaDriverVersion: 12040,
		Gpus: []*GPU{{
			Uuid: "GPU-4a1b2c3d-0000-1111-2222-333344445555", Index: 0, Name: "NVIDIA A100-SXM4-40GB", Product: "NVIDIA-A100-SXM4-40GB",
			PciBusId: "00000000:07:00.0", MemoryTotalBytes: 40 << 30, MemoryUsedBytes: proto.Uint64(1 << 30),
			UtilizationPercent: proto.Uint32(87), MemoryUtilizationPercent: proto.Uint32(40), MigMode: MIGMode_MIG_MODE_DISABLED,
			Pods:      []*PodRef{pod},
			Health:    &Health{Healthy: true, ThrottleReasons: []ThrottleReason{ThrottleReason_THROTTLE_REASON_SW_POWER_CAP}, TemperatureCelsius: proto.Uint32(61), EccUncorrected: proto.Uint64(0)},
			Profiling: &Profiling{GraphicsEngineActive: proto.Float64(0.8), TensorActive: proto.Float64(0.5)},
		}, {
			Uuid: "GPU-4a1b2c3d-0000-1111-2222-333344446666", Index: 1, Name: "NVIDIA A100-SXM4-40GB", Product: "NVIDIA-A100-SXM4-40GB",
			MemoryTotalBytes: 40 << 30, MigMode: MIGMode_MIG_MODE_ENABLED,
			MigInstances: []*MIGInstance{
				mig("MIG-11111111-2222-3333-4444-555555555555", "3g.20gb", 1, 0, 4, &PodRef{Namespace: "team-b", Name: "infer-1"}),
				mig("MIG-11111111-2222-3333-4444-666666666666", "2g.10gb", 5, 4, 2, nil),
				mig("MIG-GPU-4a1b2c3d-0000-1111-2222-333344446666/13/0", "1g.5gb+me", 13, 6, 1, nil),
			},
			Health: &Health{Healthy: false, Reasons: []string{"XID 79 (GPU has fallen off the bus) at 2026-05-01T09:59:00Z"}, LastXid: 79, LastXidTime: ts, XidCount: 1},
		}},
		PodResources: ok,
		PodDevices: []*PodDevices{
			{Pod: pod, Container: "main", ResourceName: "nvidia.com/gpu", DeviceIds: []string{"GPU-4a1b2c3d-0000-1111-2222-333344445555"}},
			{Pod: &PodRef{Namespace: "team-b", Name: "infer-1"}, Container: "server", ResourceName: "nvidia.com/mig-3g.20gb", DeviceIds: []string{"MIG-11111111-2222-3333-4444-555555555555"}},
		},
		Profiling: ok,
		Reclaim:   ok,
		ReclaimNotices: []*ReclaimNotice{{
			Id: "i-0abc/instance-action", Kind: ReclaimKind_RECLAIM_KIND_SPOT_INTERRUPTION, Provider: CloudProvider_CLOUD_PROVIDER_AWS,
			Action: "terminate", DetectedAt: ts, Deadline: timestamppb.New(ts.AsTime().Add(2 * time.Minute)),
		}},
	}
}

func TestSampleReportIsValid(t *testing.T) {
	if err := ValidateNodeReport(sampleReport()); err != nil {
		t.Fatal(err)
	}
}

func TestValidationNamesTheField(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(r *NodeReport)
		field  string // must appear in the error
	}{
		{"no node", func(r *NodeReport) { r.NodeName = "" }, "node_name"},
		{"bad node", func(r *NodeReport) { r.NodeName = "Node_A" }, "node_name"},
		{"no agent id", func(r *NodeReport) { r.AgentId = "" }, "agent_id"},
		{"agent id with space", func(r *NodeReport) { r.AgentId = "a b" }, "agent_id"},
		{"sequence 0", func(r *NodeReport) { r.Sequence = 0 }, "sequence"},
		{"no timestamp", func(r *NodeReport) { r.CollectedAt = nil }, "collected_at"},
		{"bad timestamp", func(r *NodeReport) { r.CollectedAt = &timestamppb.Timestamp{Seconds: 1, Nanos: -1} }, "collected_at"},
		{"negative cuda", func(r *NodeReport) { r.CudaDriverVersion = -1 }, "cuda_driver_version"},
		{"control char", func(r *NodeReport) { r.DriverVersion = "550\n" }, "driver_version"},
		{"nvml unspecified", func(r *NodeReport) { r.Nvml = nil }, "nvml.state"},
		{"error without message", func(r *NodeReport) { r.PodResources = &CollectorStatus{State: CollectorStatus_STATE_ERROR} }, "pod_resources.message"},
		{"gpus without nvml", func(r *NodeReport) { r.Nvml.State = CollectorStatus_STATE_UNAVAILABLE }, "gpus"},
		{"too many gpus", func(r *NodeReport) {
			for len(r.Gpus) <= MaxGPUs {
				r.Gpus = append(r.Gpus, r.Gpus[0])
			}
		}, "gpus: Too many"},
		{"bad uuid", func(r *NodeReport) { r.Gpus[0].Uuid = "GPU-123" }, "gpus[0].uuid"},
		{"uuid not hex", func(r *NodeReport) { r.Gpus[0].Uuid = "GPU-4a1b2c3d-0000-1111-2222-33334444555z" }, "gpus[0].uuid"},
		{"duplicate uuid", func(r *NodeReport) { r.Gpus[1].Uuid = r.Gpus[0].Uuid }, "gpus[1].uuid: Duplicate"},
		{"duplicate index", func(r *NodeReport) { r.Gpus[1].Index = 0 }, "gpus[1].index: Duplicate"},
		{"index too big", func(r *NodeReport) { r.Gpus[1].Index = 64 }, "gpus[1].index"},
		{"no name", func(r *NodeReport) { r.Gpus[0].Name = "" }, "gpus[0].name"},
		{"bad product", func(r *NodeReport) { r.Gpus[0].Product = "NVIDIA A100" }, "gpus[0].product"},
		{"no memory", func(r *NodeReport) { r.Gpus[0].MemoryTotalBytes = 0 }, "gpus[0].memory_total_bytes"},
		{"absurd memory", func(r *NodeReport) { r.Gpus[0].MemoryTotalBytes = 1 << 50 }, "gpus[0].memory_total_bytes"},
		{"used > total", func(r *NodeReport) { r.Gpus[0].MemoryUsedBytes = proto.Uint64(41 << 30) }, "gpus[0].memory_used_bytes"},
		{"util 101", func(r *NodeReport) { r.Gpus[0].UtilizationPercent = proto.Uint32(101) }, "gpus[0].utilization_percent"},
		{"mem util 200", func(r *NodeReport) { r.Gpus[0].MemoryUtilizationPercent = proto.Uint32(200) }, "gpus[0].memory_utilization_percent"},
		{"mig mode unspecified", func(r *NodeReport) { r.Gpus[0].MigMode = 0 }, "gpus[0].mig_mode"},
		{"mig mode unknown", func(r *NodeReport) { r.Gpus[0].MigMode = 42 }, "gpus[0].mig_mode"},
		{"instances without MIG", func(r *NodeReport) { r.Gpus[1].MigMode = MIGMode_MIG_MODE_DISABLED }, "gpus[1].mig_instances: Forbidden"},
		{"bad MIG uuid", func(r *NodeReport) { r.Gpus[1].MigInstances[0].Uuid = "GPU-4a1b2c3d-0000-1111-2222-333344445555" }, "gpus[1].mig_instances[0].uuid"},
		{"bad old MIG uuid", func(r *NodeReport) {
			r.Gpus[1].MigInstances[2].Uuid = "MIG-GPU-4a1b2c3d-0000-1111-2222-333344446666/x/0"
		}, "gpus[1].mig_instances[2].uuid"},
		{"MIG uuid reused", func(r *NodeReport) { r.Gpus[1].MigInstances[1].Uuid = r.Gpus[1].MigInstances[0].Uuid }, "gpus[1].mig_instances[1].uuid: Duplicate"},
		{"bad profile", func(r *NodeReport) { r.Gpus[1].MigInstances[1].Profile = "2x.10gb" }, "gpus[1].mig_instances[1].profile"},
		{"8 compute slices", func(r *NodeReport) { r.Gpus[1].MigInstances[1].Profile = "8g.10gb" }, "gpus[1].mig_instances[1].profile"},
		{"unknown suffix", func(r *NodeReport) { r.Gpus[1].MigInstances[2].Profile = "1g.5gb+xx" }, "gpus[1].mig_instances[2].profile"},
		{"overlap", func(r *NodeReport) { r.Gpus[1].MigInstances[1].PlacementStart = 2 }, "gpus[1].mig_instances[1].placement_start"},
		{"beyond slices", func(r *NodeReport) {
			r.Gpus[1].MigInstances[2].PlacementStart, r.Gpus[1].MigInstances[2].PlacementSize = 7, 2
		}, "gpus[1].mig_instances[2].placement_start"},
		{"zero size", func(r *NodeReport) { r.Gpus[1].MigInstances[2].PlacementSize = 0 }, "gpus[1].mig_instances[2].placement_start"},
		{"too much compute", func(r *NodeReport) { r.Gpus[1].MigInstances[1].Profile = "4g.20gb" }, "gpus[1].mig_instances: Invalid value: 8"},
		{"two placements for one GI", func(r *NodeReport) { r.Gpus[1].MigInstances[1].GpuInstanceId = 1 }, "gpus[1].mig_instances[1].placement_start"},
		{"MIG memory > GPU", func(r *NodeReport) { r.Gpus[1].MigInstances[0].MemoryTotalBytes = 41 << 30 }, "gpus[1].mig_instances[0].memory_total_bytes"},
		{"MIG used > total", func(r *NodeReport) { r.Gpus[1].MigInstances[0].MemoryUsedBytes = proto.Uint64(11 << 30) }, "gpus[1].mig_instances[0].memory_used_bytes"},
		{"MIG pod bad", func(r *NodeReport) { r.Gpus[1].MigInstances[0].Pod.Name = "" }, "gpus[1].mig_instances[0].pod.name"},
		{"GPU pod ns bad", func(r *NodeReport) { r.Gpus[0].Pods[0].Namespace = "Team A" }, "gpus[0].pods[0].namespace"},
		{"no health", func(r *NodeReport) { r.Gpus[0].Health = nil }, "gpus[0].health"},
		{"healthy with reasons", func(r *NodeReport) { r.Gpus[0].Health.Reasons = []string{"x"} }, "gpus[0].health.healthy"},
		{"unhealthy without reason", func(r *NodeReport) { r.Gpus[1].Health.Reasons = nil }, "gpus[1].health.reasons"},
		{"xid without time", func(r *NodeReport) { r.Gpus[1].Health.LastXidTime = nil }, "gpus[1].health.last_xid_time"},
		{"xid count 0", func(r *NodeReport) { r.Gpus[1].Health.XidCount = 0 }, "gpus[1].health.xid_count"},
		{"throttle unknown", func(r *NodeReport) { r.Gpus[0].Health.ThrottleReasons = []ThrottleReason{99} }, "gpus[0].health.throttle_reasons[0]"},
		{"throttle twice", func(r *NodeReport) {
			r.Gpus[0].Health.ThrottleReasons = append(r.Gpus[0].Health.ThrottleReasons, ThrottleReason_THROTTLE_REASON_SW_POWER_CAP)
		}, "gpus[0].health.throttle_reasons[1]: Duplicate"},
		{"hot", func(r *NodeReport) { r.Gpus[0].Health.TemperatureCelsius = proto.Uint32(500) }, "gpus[0].health.temperature_celsius"},
		{"ratio > 1", func(r *NodeReport) { r.Gpus[0].Profiling.TensorActive = proto.Float64(1.5) }, "gpus[0].profiling.tensor_active"},
		{"ratio NaN", func(r *NodeReport) { r.Gpus[0].Profiling.GraphicsEngineActive = proto.Float64(math.NaN()) }, "gpus[0].profiling.graphics_engine_active"},
		{"pod devices no pod", func(r *NodeReport) { r.PodDevices[0].Pod = nil }, "pod_devices[0].pod"},
		{"pod devices container", func(r *NodeReport) { r.PodDevices[0].Container = "Main_1" }, "pod_devices[0].container"},
		{"pod devices resource", func(r *NodeReport) { r.PodDevices[1].ResourceName = "nvidia.com/mig 3g" }, "pod_devices[1].resource_name"},
		{"pod devices id", func(r *NodeReport) { r.PodDevices[1].DeviceIds = []string{""} }, "pod_devices[1].device_ids[0]"},
		{"notice kind", func(r *NodeReport) { r.ReclaimNotices[0].Kind = 0 }, "reclaim_notices[0].kind"},
		{"notice provider", func(r *NodeReport) { r.ReclaimNotices[0].Provider = 9 }, "reclaim_notices[0].provider"},
		{"notice id", func(r *NodeReport) { r.ReclaimNotices[0].Id = "" }, "reclaim_notices[0].id"},
		{"notice deadline", func(r *NodeReport) { r.ReclaimNotices[0].Deadline = nil }, "reclaim_notices[0].deadline"},
		{"notice twice", func(r *NodeReport) { r.ReclaimNotices = append(r.ReclaimNotices, r.ReclaimNotices[0]) }, "reclaim_notices[1].id: Duplicate"},
		// Protobuf cannot carry such a string at all: without a check the
		// agent's report fails to marshal, and nothing says which field.
		{"name not UTF-8", func(r *NodeReport) { r.Gpus[0].Name = "NVIDIA \xff100" }, "gpus[0].name"},
		{"driver not UTF-8", func(r *NodeReport) { r.DriverVersion = "550\xc3" }, "driver_version"},
		{"reason not UTF-8", func(r *NodeReport) { r.Gpus[1].Health.Reasons[0] = "XID \x80" }, "gpus[1].health.reasons[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := sampleReport()
			tc.mutate(r)
			err := ValidateNodeReport(r)
			if err == nil {
				t.Fatalf("accepted; want an error naming %q", tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not name %q", err, tc.field)
			}
		})
	}
}

func TestRebalanceNeedsNoDeadline(t *testing.T) {
	r := sampleReport()
	r.ReclaimNotices[0].Kind = ReclaimKind_RECLAIM_KIND_REBALANCE_RECOMMENDATION
	r.ReclaimNotices[0].Deadline = nil
	if err := ValidateNodeReport(r); err != nil {
		t.Fatal(err)
	}
}

// A GPU whose NVML reads no memory is reported unhealthy by the agent and
// does not cost the node its report; on a GPU reported healthy (or with
// memory in use) a total of 0 is still refused, naming the field.
func TestUnhealthyGPUMayReadNoMemory(t *testing.T) {
	r := sampleReport()
	g := r.Gpus[0]
	g.MemoryTotalBytes, g.MemoryUsedBytes = 0, nil
	g.Health = &Health{Healthy: false, Reasons: []string{"NVML reports 0 bytes of memory"}}
	if err := ValidateNodeReport(r); err != nil {
		t.Fatalf("unhealthy GPU without memory refused: %v", err)
	}
	g.MemoryUsedBytes = proto.Uint64(1)
	if err := ValidateNodeReport(r); err == nil || !strings.Contains(err.Error(), "gpus[0].memory_used_bytes") {
		t.Errorf("memory in use on a GPU of 0 bytes: %v", err)
	}
	g.MemoryUsedBytes = nil
	g.Health = &Health{Healthy: true}
	if err := ValidateNodeReport(r); err == nil || !strings.Contains(err.Error(), "gpus[0].memory_total_bytes") {
		t.Errorf("healthy GPU without memory: %v", err)
	}
}

func TestNoGPUNodeIsValid(t *testing.T) {
	r := sampleReport()
	r.Nvml = &CollectorStatus{State: CollectorStatus_STATE_UNAVAILABLE, Message: "no NVIDIA driver"}
	r.Gpus = nil
	if err := ValidateNodeReport(r); err != nil {
		t.Fatal(err)
	}
}

func TestValidateCheckpointMessages(t *testing.T) {
	ts := timestamppb.Now()
	cmd := &CheckpointCommand{Id: "c-1", Pods: []*PodRef{{Namespace: "a", Name: "p-0"}}, Deadline: ts, Reason: "gang member on node n2 is being reclaimed", OriginNode: "n2"}
	if err := ValidateCheckpointCommand(cmd); err != nil {
		t.Fatal(err)
	}
	cmd.Pods = nil
	cmd.OriginNode = "N 2"
	err := ValidateCheckpointCommand(cmd)
	if err == nil || !strings.Contains(err.Error(), "pods") || !strings.Contains(err.Error(), "origin_node") {
		t.Fatalf("got %v", err)
	}
	st := &CheckpointStatus{CommandId: "c-1", Pod: &PodRef{Namespace: "a", Name: "p-0"}, State: CheckpointStatus_STATE_DONE, UpdatedAt: ts}
	if err := ValidateCheckpointStatus(st); err != nil {
		t.Fatal(err)
	}
	st.State = 0
	if err := ValidateCheckpointStatus(st); err == nil || !strings.Contains(err.Error(), "state") {
		t.Fatalf("got %v", err)
	}
	if ValidateCheckpointStatus(nil) == nil || ValidateCheckpointCommand(nil) == nil || ValidateNodeReport(nil) == nil {
		t.Fatal("nil messages must be refused")
	}
}

func TestUUIDForms(t *testing.T) {
	for s, want := range map[string]bool{
		"GPU-4a1b2c3d-0000-1111-2222-333344445555":  true,
		"GPU-4A1B2C3D-0000-1111-2222-333344445555":  true,
		"GPU-4a1b2c3d00001111-2222-333344445555":    false,
		"GPU-4a1b2c3d-0000-1111-2222-3333444455556": false,
		"gpu-4a1b2c3d-0000-1111-2222-333344445555":  false,
		"MIG-4a1b2c3d-0000-1111-2222-333344445555":  false,
		"": false,
	} {
		if IsGPUUUID(s) != want {
			t.Errorf("IsGPUUUID(%q) = %v", s, !want)
		}
	}
	for s, want := range map[string]bool{
		"MIG-4a1b2c3d-0000-1111-2222-333344445555":          true,
		"MIG-GPU-4a1b2c3d-0000-1111-2222-333344445555/1/0":  true,
		"MIG-GPU-4a1b2c3d-0000-1111-2222-333344445555/1":    false,
		"MIG-GPU-4a1b2c3d-0000-1111-2222-333344445555/1/-1": false,
		"MIG-GPU-4a1b2c3d-0000-1111-2222-333344445555//0":   false,
		"MIG-": false,
	} {
		if IsMIGUUID(s) != want {
			t.Errorf("IsMIGUUID(%q) = %v", s, !want)
		}
	}
}

func TestStatusTextValidates(t *testing.T) {
	joined := "GET http://a: connection refused\nGET http://b: connection refused\n"
	if got, want := StatusText(joined), "GET http://a: connection refused; GET http://b: connection refused"; got != want {
		t.Errorf("StatusText(%q) = %q, want %q", joined, got, want)
	}
	long := strings.Repeat("é", maxTextLen)
	for _, in := range []string{joined, long, "\x00\x7f", "", "cut mid-character \xc3", "\xff\xfe\n\xc3\xa9"} {
		out := StatusText(in)
		if errs := validateText(out, maxTextLen, at{}); len(errs) > 0 {
			t.Errorf("StatusText(%.20q...) = %.20q... does not validate: %v", in, out, errs)
		}
		// proto.Marshal refuses a string field that is not UTF-8.
		if !utf8.ValidString(out) {
			t.Errorf("StatusText(%.20q...) = %.20q... is not UTF-8", in, out)
		}
	}
}

// A report can hold a hundred thousand bad device ids within the 4 MiB
// message limit. Listing every one made the error megabytes long, and
// joining the messages took time quadratic in their number (half an hour
// of a scheduler core for one such report); the error names the first
// problems, bounds what it quotes, and counts the rest.
func TestManyProblemsGiveAShortErrorQuickly(t *testing.T) {
	r := sampleReport()
	r.PodDevices = nil
	for i := 0; i < MaxPodDevices; i++ {
		d := &PodDevices{Pod: &PodRef{Namespace: "a", Name: "p"}, Container: "c", ResourceName: "nvidia.com/gpu"}
		for j := 0; j < MaxDeviceIDsPerEntry; j++ {
			d.DeviceIds = append(d.DeviceIds, "bad id")
		}
		r.PodDevices = append(r.PodDevices, d)
	}
	r.Gpus[0].Uuid = strings.Repeat("\x01", 1<<20)
	if n := proto.Size(r); n > 4<<20 {
		t.Fatalf("the report is %d bytes, more than a message may be", n)
	}
	done := make(chan error, 1)
	go func() { done <- ValidateNodeReport(r) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("validating one report took more than 30s")
	}
	// The scheduler sends the error back in a ReportAck, which must fit in
	// the agent's 4 MiB receive limit with room to spare.
	msg := err.Error()
	if len(msg) > 64<<10 {
		t.Errorf("error is %d bytes, want at most 64 KiB", len(msg))
	}
	for _, want := range []string{"gpus[0].uuid", "pod_devices[0].device_ids[0]", "more problems"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %q: %.500s", want, msg)
		}
	}
	total := MaxPodDevices*MaxDeviceIDsPerEntry + 1
	if want := fmt.Sprintf("and %d more problems", total-MaxErrors); !strings.Contains(msg, want) {
		t.Errorf("error does not say %q: ...%s", want, msg[max(0, len(msg)-200):])
	}
}

// A list over its limit is refused as too many without each element being
// checked, as every list of a report is: health reasons were checked one by
// one past their limit, so a report of a million one-byte reasons (within
// the 4 MiB message limit) cost seconds of a scheduler core to validate,
// ten times the worst case of any other list.
func TestTooManyHealthReasonsAreNotEachChecked(t *testing.T) {
	r := sampleReport()
	h := r.Gpus[1].Health
	for len(h.Reasons) < 100000 {
		h.Reasons = append(h.Reasons, "\x01")
	}
	err := ValidateNodeReport(r)
	if err == nil {
		t.Fatal("a GPU with 100000 health reasons was accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "gpus[1].health.reasons: Too many: 100000") {
		t.Errorf("the error does not say there are too many reasons: %.300s", msg)
	}
	if strings.Contains(msg, "health.reasons[") || strings.Contains(msg, "more problems") {
		t.Errorf("the reasons past the limit were checked one by one: %.300s", msg)
	}
}

// A MIG instance list over its limit costs its validation no memory of its
// own: the UUID set was sized for every instance listed, 106 MiB for the
// two million empty ones (two bytes each on the wire) a 4 MiB message holds,
// before the list was refused as too many.
func TestTooManyMIGInstancesCostNoMemoryToRefuse(t *testing.T) {
	r := sampleReport()
	g := r.Gpus[1]
	g.MigInstances = make([]*MIGInstance, 1_900_000)
	for i := range g.MigInstances {
		g.MigInstances[i] = &MIGInstance{}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	err := ValidateNodeReport(r)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "gpus[1].mig_instances: Too many: 1900000") {
		t.Fatalf("err %.300v; want the MIG instances refused as too many", err)
	}
	if mib := (after.TotalAlloc - before.TotalAlloc) >> 20; mib > 8 {
		t.Errorf("refusing the report allocated %d MiB", mib)
	}
}

// A command whose deadline is years off would have the agent hold the pods'
// checkpoints, and the scheduler their gang's eviction, that long.
func TestCheckpointCommandDeadlineIsBounded(t *testing.T) {
	cmd := &CheckpointCommand{Id: "c-1", Pods: []*PodRef{{Namespace: "a", Name: "p-0"}}}
	// A command due in exactly the limit, checked by an agent whose clock
	// is a minute behind the scheduler's, is let through.
	for _, in := range []time.Duration{-time.Minute, 10 * time.Minute, MaxCommandDeadline - time.Minute, MaxCommandDeadline + time.Minute} {
		cmd.Deadline = timestamppb.New(time.Now().Add(in))
		if err := ValidateCheckpointCommand(cmd); err != nil {
			t.Errorf("deadline %v away: %v", in, err)
		}
	}
	cmd.Deadline = timestamppb.New(time.Now().Add(MaxCommandDeadline + CommandClockSkew + time.Minute))
	if err := ValidateCheckpointCommand(cmd); err == nil {
		t.Errorf("deadline beyond the limit and the clock skew allowed: accepted")
	}
	cmd.Deadline = timestamppb.New(time.Now().AddDate(10, 0, 0))
	if err := ValidateCheckpointCommand(cmd); err == nil || !strings.Contains(err.Error(), "deadline") || !strings.Contains(err.Error(), "checkpointTimeout") {
		t.Errorf("deadline 10 years away: %v, want an error naming the deadline and what bounds it", err)
	}
}
