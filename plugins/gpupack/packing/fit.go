package packing

import (
	"slices"

	"github.com/pennysched/penny/pkg/gpu"
)

// Fit is whether a pod's GPUs fit on a node's devices now.
type Fit uint8

const (
	// Fits: the devices can take the pod.
	Fits Fit = iota
	// NoRoom: the node has the right kind of GPU but not enough of it free;
	// freeing devices (preemption, pods ending) could help.
	NoRoom
	// NoSuchGPU: the node has no GPU of the kind the pod asks for (no GPUs,
	// too few, no MIG, a model without the profile); nothing but a new node
	// helps.
	NoSuchGPU
	// Partitioned: the node has GPUs enough, but too few outside static MIG
	// partitions, which take MIG instances only, for a whole-GPU or share
	// pod; freeing devices does not help, repartitioning the node would.
	Partitioned
	// TooManyInstances: the node's GPUs could not hold the MIG instances
	// even with every pod gone: more of a profile than their geometry or
	// static layouts have room for, or more compute or memory slices than
	// they have in all.
	TooManyInstances
)

// maxFitGPUs bounds the GPUs a node may have for the allocation-free MIG
// check; larger nodes are checked on the heap.
const maxFitGPUs = 32

// Fits reports whether the pod's GPUs fit on the node's devices. CPU and
// memory are left to NodeResourcesFit. It allocates nothing for nodes of up
// to 32 GPUs, and agrees with Choose: when it says Fits, Choose succeeds.
// It says NoRoom only where freeing devices could make the pod fit.
func (n *Node) Fits(r *Req) Fit {
	switch {
	case r.GPU.GPUs > 0:
		switch {
		case int64(len(n.free)) < r.GPU.GPUs:
			return NoSuchGPU
		case n.unpartitioned < r.GPU.GPUs:
			return Partitioned
		case n.idle < r.GPU.GPUs:
			return NoRoom
		}
		return Fits
	case r.GPU.Milli > 0:
		if len(n.free) == 0 {
			return NoSuchGPU
		}
		for _, f := range n.free {
			if f >= r.GPU.Milli {
				return Fits
			}
		}
		if n.unpartitioned == 0 {
			return Partitioned
		}
		return NoRoom
	case len(r.MIG) > 0:
		f := n.fitsMIG(r, nil)
		if f == NoRoom && n.neverHolds(r) {
			return TooManyInstances
		}
		return f
	}
	return Fits
}

// fitsMIG places the instances first-fit (lowest GPU, lowest offset,
// largest instance first; static instances after on-demand GPUs), recording
// the slots in pick when it is not nil.
func (n *Node) fitsMIG(r *Req, pick *choice) Fit {
	if n.model < 0 || len(r.MIG) > maxTouched {
		return NoSuchGPU
	}
	for _, prof := range r.MIG {
		if !geomOf(migModels[n.model], prof).ok {
			return NoSuchGPU
		}
	}
	var buf [maxFitGPUs]migGPU
	var mig []migGPU
	if len(n.mig) <= maxFitGPUs {
		mig = buf[:len(n.mig)]
	} else {
		mig = make([]migGPU, len(n.mig))
	}
	copy(mig, n.mig)
	var taken [maxTouched]int
	ntaken := 0
	any := false
	for _, prof := range r.MIG {
		g := geomOf(migModels[n.model], prof)
		placed := false
		for i := range mig {
			if mig[i].blocked || mig[i].static {
				continue
			}
			any = true
			for s := 0; s < gpu.MemorySlices && !placed; s++ {
				if mig[i].fits(g, s) {
					mig[i] = mig[i].with(g, s)
					placed = true
					if pick != nil {
						pick.mig[pick.nmig] = gpu.Slot{GPU: i, MIG: gpu.Placement{Profile: prof, Start: s}}
						pick.nmig++
					}
				}
			}
			if placed {
				break
			}
		}
		for k := 0; k < len(n.static) && !placed; k++ {
			in := &n.static[k]
			any = true
			if in.profile != prof || slices.Contains(taken[:ntaken], k) {
				continue
			}
			taken[ntaken] = k
			ntaken++
			placed = true
			if pick != nil {
				pick.mig[pick.nmig] = gpu.Slot{GPU: in.gpu, MIG: gpu.Placement{Profile: prof, Start: in.start}}
				pick.nmig++
			}
		}
		if !placed {
			if !any && !n.hasMIGCapacity() {
				return NoSuchGPU
			}
			return NoRoom
		}
	}
	return Fits
}

// hasMIGCapacity reports whether the node has any GPU that can hold MIG
// instances at all, free or not.
func (n *Node) hasMIGCapacity() bool {
	if n.Dev.OnDemand {
		return len(n.free) > 0
	}
	for i := range n.Dev.GPUs {
		if n.Dev.GPUs[i].MIGMode {
			return true
		}
	}
	return false
}

// neverHolds reports whether the node could not hold the MIG instances even
// if every pod left it: a bound no placement can beat, per profile (the
// instances its geometry or reported layouts have room for) and in all
// (compute and memory slices). It does not place the instances, so a
// request it lets through may still find no room on an empty node.
func (n *Node) neverHolds(r *Req) bool {
	m := migModels[n.model]
	var free, compute, memory int64 // on an empty node: GPUs placed by geometry, slices in all
	for i := range n.Dev.GPUs {
		d := &n.Dev.GPUs[i]
		switch {
		case len(d.Layout) > 0:
			for _, p := range d.Layout {
				prof, _ := m.Profile(p.Profile)
				compute += int64(prof.Compute)
				memory += int64(prof.Size)
			}
		case d.MIGMode || n.Dev.OnDemand:
			free++
		}
	}
	compute += free * gpu.ComputeSlices
	memory += free * gpu.MemorySlices
	var needCompute, needMemory int64
	for i, name := range r.MIG {
		prof, ok := m.Profile(name)
		if !ok {
			return true
		}
		needCompute += int64(prof.Compute)
		needMemory += int64(prof.Size)
		if slices.Contains(r.MIG[:i], name) {
			continue
		}
		want := int64(0)
		for _, x := range r.MIG {
			if x == name {
				want++
			}
		}
		room := free * int64(prof.Max)
		for g := range n.Dev.GPUs {
			for _, p := range n.Dev.GPUs[g].Layout {
				if p.Profile == name {
					room++
				}
			}
		}
		if want > room {
			return true
		}
	}
	return needCompute > compute || needMemory > memory
}
