package gpupack

import (
	"encoding/binary"
	"hash/fnv"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/telemetry"
)

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
	// MIGLayout returns each GPU's MIG instances by device index: nil for a
	// GPU that is not partitioned, empty (not nil) for one in MIG mode
	// without instances; GPUs past the end are not reported. The version
	// changes whenever the layout does; ok is false when the node is
	// unknown or its report stale. The returned slices must not be
	// modified by either side.
	MIGLayout(node string) (layout [][]gpu.Placement, version uint64, ok bool)
}

// TelemetryLayouts reads static MIG layouts from the node agents' telemetry:
// for each GPU the agent reports in MIG mode, the GPU instances it found
// (free or held). Nodes without a fresh report, or whose agent could not
// read NVML, are unknown.
func TelemetryLayouts(r telemetry.Reader) LayoutSource { return telemetryLayouts{r} }

type telemetryLayouts struct{ r telemetry.Reader }

func (t telemetryLayouts) MIGLayout(node string) ([][]gpu.Placement, uint64, bool) {
	st, ok := t.r.Node(node)
	if !ok || !st.GPUsKnown {
		return nil, 0, false
	}
	var out [][]gpu.Placement
	for i := range st.GPUs {
		g := &st.GPUs[i]
		if g.Index < 0 {
			continue
		}
		for len(out) <= g.Index {
			out = append(out, nil)
		}
		if g.MIGEnabled() {
			out[g.Index] = g.Placements()
		}
	}
	return out, layoutVersion(out), true
}

// layoutVersion hashes a layout, so that a node's view is rebuilt when its
// layout changes, not with every report.
func layoutVersion(layout [][]gpu.Placement) uint64 {
	h := fnv.New64a()
	var b [8]byte
	for i, l := range layout {
		// Which GPUs are in MIG mode is part of the layout, instances or not.
		binary.LittleEndian.PutUint64(b[:], uint64(i)<<1)
		if l != nil {
			b[0] |= 1
		}
		h.Write(b[:])
		for _, p := range l {
			binary.LittleEndian.PutUint64(b[:], uint64(i)<<32|uint64(p.Start))
			h.Write(b[:])
			h.Write([]byte(p.Profile))
		}
	}
	return h.Sum64() | 1 // never 0, which means "no layout"
}
