package telemetryv1

import (
	"fmt"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// maxElements bounds, for each field whose every occurrence on the wire
// decodes to a new element (a list, or a oneof that is set again), how many
// one AgentMessage may hold in all: as many as the largest report
// ValidateNodeReport accepts. Validation runs on the decoded message, and
// decoding is what costs: an empty element is two bytes on the wire and a
// struct of up to 230 bytes decoded, so a 4 MiB report of empty GPUs took
// 530 MiB of the scheduler's heap before validation refused it.
var maxElements = map[protoreflect.FullName]int{
	"penny.telemetry.v1.AgentMessage.report":            1,
	"penny.telemetry.v1.AgentMessage.checkpoint_status": 1,
	"penny.telemetry.v1.NodeReport.gpus":                MaxGPUs,
	"penny.telemetry.v1.GPU.mig_instances":              MaxGPUs * MaxMIGInstancesPerGPU,
	"penny.telemetry.v1.GPU.pods":                       MaxGPUs * MaxPodsPerGPU,
	"penny.telemetry.v1.Health.reasons":                 MaxGPUs * MaxHealthReasons,
	"penny.telemetry.v1.Health.throttle_reasons":        MaxGPUs * (len(ThrottleReason_name) - 1),
	"penny.telemetry.v1.NodeReport.pod_devices":         MaxPodDevices,
	"penny.telemetry.v1.PodDevices.device_ids":          MaxPodDevices * MaxDeviceIDsPerEntry,
	"penny.telemetry.v1.NodeReport.reclaim_notices":     MaxReclaimNotices,
}

// elementCaps is maxElements by descriptor: the check looks one up for
// every element, and hashing a name took most of its time.
var elementCaps = sync.OnceValue(func() map[protoreflect.FieldDescriptor]int {
	caps := make(map[protoreflect.FieldDescriptor]int, len(maxElements))
	for name, max := range maxElements {
		fd, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
		if err != nil {
			panic(err)
		}
		caps[fd.(protoreflect.FieldDescriptor)] = max
	}
	return caps
})

// CheckEncodedAgentMessage refuses an encoded AgentMessage that holds more
// elements of a list than any valid report, before it is decoded, so that
// what a message from an agent costs the scheduler's heap is bounded by what
// the largest valid report holds (a 4 MiB message decodes to at most 8 MiB),
// not by how many empty elements fit in it. Malformed input is left to the
// decoder to refuse.
func CheckEncodedAgentMessage(b []byte) error {
	return checkEncoded((&AgentMessage{}).ProtoReflect().Descriptor(), b, elementCaps(), map[protoreflect.FieldDescriptor]int{})
}

func checkEncoded(md protoreflect.MessageDescriptor, b []byte, caps, counts map[protoreflect.FieldDescriptor]int) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		var v []byte // the contents of a length-delimited field
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil
		}
		b = b[n:]
		fd := md.Fields().ByNumber(num)
		if fd == nil {
			continue // kept as bytes
		}
		if max, ok := caps[fd]; ok {
			elems := 1
			if typ == protowire.BytesType && fd.IsList() && fd.Message() == nil && fd.Kind() != protoreflect.StringKind && fd.Kind() != protoreflect.BytesKind {
				elems = len(v) // packed: a byte at least per element
			}
			if counts[fd] += elems; counts[fd] > max {
				return fmt.Errorf("%s.%s: more than %d in one message, more than any valid report holds; refused before decoding", md.Name(), fd.Name(), max)
			}
		}
		if typ == protowire.BytesType && fd.Message() != nil {
			if err := checkEncoded(fd.Message(), v, caps, counts); err != nil {
				return err
			}
		}
	}
	return nil
}
