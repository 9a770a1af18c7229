package gpu

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// How the scheduler knows a node's MIG partitions. Two situations exist in
// real clusters, and a node says which one it is in:
//
//   - Static partitions (the default for a node labelled
//     nvidia.com/mig.strategy=mixed): an administrator or mig-parted applied a
//     layout, the instances exist before any pod asks for one, and the device
//     plugin advertises nvidia.com/mig-<profile> counts. A pod can only take
//     an instance that exists, so any free instance of the profile is as good
//     as another and the choice of node is the only decision. The exact
//     layout of each GPU comes from the node agent's telemetry when the
//     scheduler has it (SetLayout); without it NodeDevicesFor derives one from
//     the node's capacity (layoutFromCapacity below).
//   - On-demand partitions (opt-in label penny.dev/mig-partitioning=on-demand
//     on a node whose model supports MIG): the GPUs start whole, the scheduler
//     picks the profile's placement (GPU and memory-slice offset) and the node
//     side creates the instance before the pod starts; a GPU without
//     instances can also serve whole-GPU and share pods. Here geometry
//     decides what still fits, so placement is a packing decision.

// Label values for on-demand and static partitioning.
const (
	// LabelMIGPartitioning opts a node into on-demand MIG partitioning.
	LabelMIGPartitioning = "penny.dev/mig-partitioning"
	// MIGOnDemand is the value of LabelMIGPartitioning for on-demand nodes.
	MIGOnDemand = "on-demand"
)

// HasLayout reports whether any GPU of the node is statically partitioned.
func (n *NodeDevices) HasLayout() bool {
	for i := range n.GPUs {
		if len(n.GPUs[i].Layout) > 0 {
			return true
		}
	}
	return false
}

// SetLayout records that GPU i is statically partitioned into layout, as the
// node agent reports it. The instances pods already hold on the GPU must be
// part of the layout. A nil or empty layout makes the GPU whole again. The
// layout is kept, not copied: callers must not change it afterwards.
func (n *NodeDevices) SetLayout(i int, layout []Placement) error {
	if i < 0 || i >= len(n.GPUs) {
		return fmt.Errorf("GPU %d does not exist on %s", i, n.describe())
	}
	d := &n.GPUs[i]
	if len(layout) == 0 {
		if len(d.MIG) > 0 && !n.MIG {
			return fmt.Errorf("GPU %d of %s: pods hold MIG instances %v, so it cannot become whole", i, n.describe(), d.MIG)
		}
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
		if !containsInt(starts, p.Start) {
			return fmt.Errorf("GPU %d of %s: layout %v is not a valid MIG geometry (%s does not fit next to %v)", i, n.describe(), layout, p, placed)
		}
		placed = append(placed, p)
	}
	for _, h := range d.MIG {
		if !containsPlacement(layout, h) {
			return fmt.Errorf("GPU %d of %s: a pod holds MIG instance %s, which layout %v does not have", i, n.describe(), h, layout)
		}
	}
	d.Layout = layout
	return nil
}

// freeStarts returns the offsets where an instance of profile can be given
// to a pod on GPU g: on a statically partitioned GPU the offsets of the
// layout's free instances of that profile, otherwise where one can be
// created.
func (n *NodeDevices) freeStarts(g int, profile string) ([]int, error) {
	d := &n.GPUs[g]
	if len(d.Layout) == 0 {
		if !n.MIG {
			return nil, nil // a whole GPU of a node without on-demand partitioning
		}
		return n.Model.FreeStarts(d.MIG, profile)
	}
	if _, ok := n.Model.Profile(profile); !ok {
		return nil, fmt.Errorf("MIG profile %q does not exist on %s; valid profiles: %s", profile, n.Model.Name, strings.Join(n.Model.ProfileNames(), ", "))
	}
	var starts []int
	for _, p := range d.Layout {
		if p.Profile == profile && !containsPlacement(d.MIG, p) {
			starts = append(starts, p.Start)
		}
	}
	return starts, nil
}

// layoutFromCapacity derives static layouts from what the device plugin
// advertises when no agent reports them. The GPUs not advertised as
// nvidia.com/gpu are the partitioned ones, taken to be the highest device
// indices; the advertised instances are dealt to them round-robin, largest
// first (which reproduces the usual "same layout on every MIG GPU"), and laid
// out with the model's geometry. The derived positions are only bookkeeping:
// a pod cannot tell two free instances of one profile apart, and the
// derivation is deterministic, so a restarted scheduler reads the
// assignments it wrote before the same way. Instances that fit no GPU (the
// capacity contradicts the geometry) are left out.
func (n *NodeDevices) layoutFromCapacity(node *corev1.Node) {
	if n.Model == nil || !n.Model.SupportsMIG() || len(n.GPUs) == 0 {
		return
	}
	var profiles []Profile
	for name, q := range node.Status.Allocatable {
		if !strings.HasPrefix(string(name), MIGResourcePrefix) {
			continue
		}
		p, ok := n.Model.Profile(strings.TrimPrefix(string(name), MIGResourcePrefix))
		if !ok {
			continue
		}
		for k := int64(0); k < q.Value(); k++ {
			profiles = append(profiles, p)
		}
	}
	if len(profiles) == 0 {
		return
	}
	whole := 0
	if q, ok := node.Status.Allocatable[ResourceGPU]; ok {
		whole = int(q.Value())
	}
	migGPUs := len(n.GPUs) - whole
	if migGPUs <= 0 {
		return
	}
	first := len(n.GPUs) - migGPUs
	sort.SliceStable(profiles, func(i, j int) bool {
		if profiles[i].Size != profiles[j].Size {
			return profiles[i].Size > profiles[j].Size
		}
		if profiles[i].Compute != profiles[j].Compute {
			return profiles[i].Compute > profiles[j].Compute
		}
		return profiles[i].Name < profiles[j].Name
	})
	// Deal the instances round-robin, then lay each GPU out with the
	// model's geometry (which searches offsets); an instance a GPU cannot
	// take moves on to the next GPU that can.
	deal := make([][]string, migGPUs)
	for k, p := range profiles {
		placed := false
		for t := 0; t < migGPUs && !placed; t++ {
			g := (k + t) % migGPUs
			if _, err := n.Model.Layout(append(deal[g], p.Name)); err == nil {
				deal[g] = append(deal[g], p.Name)
				placed = true
			}
		}
	}
	for g, names := range deal {
		if l, err := n.Model.Layout(names); err == nil && len(l) > 0 {
			n.GPUs[first+g].Layout = l
		}
	}
}

// FreeInstances counts, per profile, the MIG instances a pod could be given
// on the node right now without creating one: the free instances of static
// layouts. On-demand GPUs are not counted (their capacity is geometry, not
// a count).
func (n *NodeDevices) FreeInstances() map[string]int {
	out := map[string]int{}
	for i := range n.GPUs {
		d := &n.GPUs[i]
		for _, p := range d.Layout {
			if !containsPlacement(d.MIG, p) {
				out[p.Profile]++
			}
		}
	}
	return out
}

func containsPlacement(s []Placement, p Placement) bool {
	for _, x := range s {
		if x == p {
			return true
		}
	}
	return false
}
