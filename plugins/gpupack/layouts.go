package gpupack

import "github.com/pennysched/penny/pkg/gpu"

// LayoutSource tells the plugin the static MIG layout of a node's GPUs as
// the node itself reports it (the node agent's telemetry). It is the seam
// between gpupack and the telemetry store: the registry adapts the store to
// it, tests and the simulator hand in their own.
//
// Without a source, or for a node it does not know, the plugin derives the
// layout from what the device plugin advertises (gpu.NodeDevicesFor), which
// is enough to place pods but may number the instances differently from the
// node.
type LayoutSource interface {
	// MIGLayout returns each GPU's MIG instances by device index (nil for a
	// GPU that is not partitioned) and a version that changes whenever the
	// layout does; ok is false when the node is unknown or its report stale.
	// The returned slices must not be modified by either side.
	MIGLayout(node string) (layout [][]gpu.Placement, version uint64, ok bool)
}
