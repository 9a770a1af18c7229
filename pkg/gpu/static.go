package gpu

import (
	"fmt"
	"slices"
	"strings"
)

// How the scheduler knows a node's MIG partitions. Two situations exist in
// real clusters, and a node says which one it is in:
//
//   - Static partitions (a node labelled nvidia.com/mig.strategy=mixed): an
//     administrator or mig-parted applied a layout, the instances exist
//     before any pod asks, and the device plugin advertises
//     nvidia.com/mig-<profile> counts and only the other GPUs as
//     nvidia.com/gpu. NodeDevicesFor puts those last GPUs in MIG mode. When
//     the node agent reports each GPU's layout, SetLayout holds the view to
//     it: instances come from the layout only, and a GPU in MIG mode that
//     holds none (mig-parted between two layouts) gives none. Without a
//     report the view places instances wherever the geometry allows and the
//     advertised counts (NodeResourcesFit) keep the profiles honest.
//   - On-demand partitions (opt-in label penny.dev/mig-partitioning=on-demand
//     on a node whose model supports MIG): the GPUs start whole; the
//     scheduler picks an instance's GPU and memory-slice offset and the node
//     side creates it before the pod starts. A GPU is in MIG mode while it
//     holds instances and whole again after the last one leaves, so it can
//     also serve whole-GPU and share pods. Geometry decides what still fits,
//     so placement is a packing decision.

// Label values for on-demand partitioning.
const (
	// LabelMIGPartitioning opts a node into on-demand MIG partitioning.
	LabelMIGPartitioning = "penny.dev/mig-partitioning"
	// MIGOnDemand is the value of LabelMIGPartitioning for on-demand nodes.
	MIGOnDemand = "on-demand"
)

// takesMIG reports whether GPU g can hold a MIG instance: it is in MIG mode,
// or the node partitions on demand and nobody holds the GPU.
func (n *NodeDevices) takesMIG(g int) bool {
	d := &n.GPUs[g]
	return d.MIGMode || n.OnDemand && d.UsedMilli == 0
}

// HasLayout reports whether any GPU of the node holds a reported layout.
func (n *NodeDevices) HasLayout() bool {
	for i := range n.GPUs {
		if n.GPUs[i].Layout != nil {
			return true
		}
	}
	return false
}

// SetLayout records the static MIG layout GPU i has, as the node agent
// reports it: the GPU is in MIG mode and its instances come from the layout
// only; an empty layout has none to give. The instances pods already hold
// on the GPU must be part of it. A nil layout lifts the restriction
// (instances wherever the geometry allows). The layout is kept, not copied:
// callers must not change it.
func (n *NodeDevices) SetLayout(i int, layout []Placement) error {
	d, err := n.device(i)
	if err != nil {
		return err
	}
	if layout == nil {
		d.Layout = nil
		return nil
	}
	if n.Model == nil || !n.Model.SupportsMIG() {
		return fmt.Errorf("GPU %d of %s: the model does not support MIG, so it cannot hold layout %v", i, n.describe(), layout)
	}
	if d.UsedMilli > 0 {
		return fmt.Errorf("GPU %d of %s is held by whole-GPU or share pods: it cannot hold layout %v", i, n.describe(), layout)
	}
	var placed []Placement
	for _, p := range layout {
		starts, err := n.Model.FreeStarts(placed, p.Profile)
		if err != nil {
			return fmt.Errorf("GPU %d of %s: %w", i, n.describe(), err)
		}
		if !slices.Contains(starts, p.Start) {
			return fmt.Errorf("GPU %d of %s: layout %v is not a valid MIG geometry (%s does not fit next to %v)", i, n.describe(), layout, p, placed)
		}
		placed = append(placed, p)
	}
	for _, h := range d.MIG {
		if !slices.Contains(layout, h) {
			return fmt.Errorf("GPU %d of %s: a pod holds MIG instance %s, which layout %v does not have", i, n.describe(), h, layout)
		}
	}
	d.MIGMode = true
	d.Layout = layout
	return nil
}

// SetMIGMode records whether GPU i is in MIG mode as the node reports it,
// with no layout to hold it to: a GPU outside MIG mode takes whole-GPU and
// share pods only, one in MIG mode takes instances only. It fails when pods
// the view already holds on the GPU could not be there in that mode.
func (n *NodeDevices) SetMIGMode(i int, on bool) error {
	d, err := n.device(i)
	if err != nil {
		return err
	}
	switch {
	case on && (n.Model == nil || !n.Model.SupportsMIG()):
		return fmt.Errorf("GPU %d of %s: the model does not support MIG", i, n.describe())
	case on && d.UsedMilli > 0:
		return fmt.Errorf("GPU %d of %s is held by whole-GPU or share pods: it cannot be in MIG mode", i, n.describe())
	case !on && len(d.MIG) > 0:
		return fmt.Errorf("GPU %d of %s: pods hold MIG instances %v on it, so it is in MIG mode", i, n.describe(), d.MIG)
	}
	d.MIGMode, d.Layout = on, nil
	return nil
}

// freeStarts returns the offsets where an instance of profile can be given
// to a pod on GPU g: on a GPU with a reported layout the offsets of the
// layout's free instances of that profile, otherwise where the geometry
// leaves room for one.
func (n *NodeDevices) freeStarts(g int, profile string) ([]int, error) {
	d := &n.GPUs[g]
	if d.Layout == nil {
		return n.Model.FreeStarts(d.MIG, profile)
	}
	if _, ok := n.Model.Profile(profile); !ok {
		return nil, fmt.Errorf("MIG profile %q does not exist on %s; valid profiles: %s", profile, n.Model.Name, strings.Join(n.Model.ProfileNames(), ", "))
	}
	var starts []int
	for _, p := range d.Layout {
		if p.Profile == profile && !slices.Contains(d.MIG, p) {
			starts = append(starts, p.Start)
		}
	}
	return starts, nil
}
