package telemetryv1

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A list or oneof added to the messages agents send needs a cap, or the
// check would let a message hold any number of its elements.
func TestEveryListOfAnAgentMessageHasACap(t *testing.T) {
	caps := elementCaps()
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := 0; i < md.Fields().Len(); i++ {
			fd := md.Fields().Get(i)
			oneof := fd.ContainingOneof() != nil && !fd.ContainingOneof().IsSynthetic()
			if _, ok := caps[fd]; !ok && (fd.IsList() || fd.IsMap() || oneof) {
				t.Errorf("%s has no cap in maxElements", fd.FullName())
			}
			if fd.Message() != nil {
				walk(fd.Message())
			}
		}
	}
	walk((&AgentMessage{}).ProtoReflect().Descriptor())
}

// largestValidReport has every list at the most validation allows.
func largestValidReport() *NodeReport {
	r := sampleReport()
	ts := r.CollectedAt
	r.Gpus, r.PodDevices, r.ReclaimNotices = nil, nil, nil
	uuid := func(prefix string, i, j int) string {
		return fmt.Sprintf("%s-%08x-0000-1111-2222-%012x", prefix, i, j)
	}
	for i := 0; i < MaxGPUs; i++ {
		g := &GPU{
			Uuid: uuid("GPU", i, 0), Index: uint32(i), Name: "NVIDIA H100 80GB HBM3", Product: "NVIDIA-H100-80GB-HBM3",
			MemoryTotalBytes: 80 << 30, MigMode: MIGMode_MIG_MODE_ENABLED,
			Health: &Health{LastXid: 79, LastXidTime: ts, XidCount: 1}, Profiling: &Profiling{TensorActive: proto.Float64(0.5)},
		}
		for j := 0; j < MaxMIGInstancesPerGPU; j++ {
			gi := j / 4 // seven GPU instances of four compute instances each
			g.MigInstances = append(g.MigInstances, &MIGInstance{
				Uuid: uuid("MIG", i, j), Profile: "1g.10gb", GpuInstanceId: uint32(gi), ComputeInstanceId: uint32(j % 4),
				PlacementStart: uint32(gi), PlacementSize: 1, MemoryTotalBytes: 10 << 30,
				Pod: &PodRef{Namespace: "team-b", Name: fmt.Sprintf("infer-%d-%d", i, j)}, Profiling: &Profiling{TensorActive: proto.Float64(0.5)},
			})
		}
		for j := 0; j < MaxPodsPerGPU; j++ {
			g.Pods = append(g.Pods, &PodRef{Namespace: "team-a", Name: fmt.Sprintf("shared-%d-%d", i, j)})
		}
		for j := 0; j < MaxHealthReasons; j++ {
			g.Health.Reasons = append(g.Health.Reasons, fmt.Sprintf("reason %d", j))
		}
		for t := range ThrottleReason_name {
			if t != 0 {
				g.Health.ThrottleReasons = append(g.Health.ThrottleReasons, ThrottleReason(t))
			}
		}
		r.Gpus = append(r.Gpus, g)
	}
	for i := 0; i < MaxPodDevices; i++ {
		d := &PodDevices{Pod: &PodRef{Namespace: "team-a", Name: fmt.Sprintf("shared-%d", i)}, Container: "main", ResourceName: "nvidia.com/gpu"}
		for j := 0; j < MaxDeviceIDsPerEntry; j++ {
			d.DeviceIds = append(d.DeviceIds, fmt.Sprintf("%s::%d", uuid("GPU", i%MaxGPUs, 0), i*MaxDeviceIDsPerEntry+j))
		}
		r.PodDevices = append(r.PodDevices, d)
	}
	for i := 0; i < MaxReclaimNotices; i++ {
		r.ReclaimNotices = append(r.ReclaimNotices, &ReclaimNotice{
			Id: fmt.Sprintf("event-%d", i), Kind: ReclaimKind_RECLAIM_KIND_MAINTENANCE, Provider: CloudProvider_CLOUD_PROVIDER_GCP,
			DetectedAt: ts, Deadline: timestamppb.New(ts.AsTime().Add(time.Hour)),
		})
	}
	return r
}

// No report that validation accepts is refused by the check before
// decoding, however large.
func TestLargestValidReportPassesTheCheck(t *testing.T) {
	r := largestValidReport()
	if err := ValidateNodeReport(r); err != nil {
		t.Fatalf("the report does not validate: %.500v", err)
	}
	b, err := proto.Marshal(&AgentMessage{Message: &AgentMessage_Report{Report: r}})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckEncodedAgentMessage(b); err != nil {
		t.Fatalf("a valid report of %d bytes is refused: %v", len(b), err)
	}
}

func wireField(num protowire.Number, contents ...[]byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), bytes.Join(contents, nil))
}

// fill repeats elem until contents reach n bytes.
func fill(elem []byte, n int) []byte {
	return bytes.Repeat(elem, n/len(elem))
}

// Empty elements are two bytes each on the wire and a struct each once
// decoded; a message holding more of them than a valid report can is
// refused before it is decoded, naming the list.
func TestMessagesOfEmptyElementsAreRefused(t *testing.T) {
	const size = 4<<20 - 16
	report := func(contents ...[]byte) []byte { return wireField(1, contents...) }
	for _, c := range []struct {
		name, want string
		msg        []byte
	}{
		{"empty GPUs", "NodeReport.gpus", report(fill(wireField(9), size))},
		{"empty MIG instances across GPUs", "GPU.mig_instances", report(fill(wireField(9, bytes.Repeat(wireField(11), 2*MaxMIGInstancesPerGPU)), size))},
		{"empty pod entries", "NodeReport.pod_devices", report(fill(wireField(11), size))},
		{"empty device ids", "PodDevices.device_ids", report(wireField(11, fill(wireField(4), size)))},
		{"empty health reasons", "Health.reasons", report(fill(wireField(9, wireField(13, bytes.Repeat(wireField(2), 2*MaxHealthReasons))), size))},
		{"packed throttle reasons", "Health.throttle_reasons", report(wireField(9, wireField(13, wireField(8, bytes.Repeat([]byte{1}, size)))))},
		{"reports and statuses in turn", "AgentMessage.report", fill(append(wireField(1), wireField(2)...), size)},
	} {
		err := CheckEncodedAgentMessage(c.msg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error naming %s", c.name, err, c.want)
		}
	}
}
