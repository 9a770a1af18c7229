package packing

import (
	"github.com/pennysched/penny/pkg/gpu"
	"slices"
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
	// no MIG, a model without the profile); nothing but a new node helps.
	NoSuchGPU
)

// maxFitGPUs bounds the GPUs a node may have for the allocation-free MIG
// check; larger nodes are checked on the heap.
const maxFitGPUs = 32

// Fits reports whether the pod's GPUs fit on the node's devices. CPU and
// memory are left to NodeResourcesFit. It allocates nothing for nodes of up
// to 32 GPUs, and agrees with Choose: when it says Fits, Choose succeeds.
func (n *Node) Fits(r *Req) Fit {
	switch {
	case r.GPU.GPUs > 0:
		switch {
		case int64(len(n.free)) < r.GPU.GPUs:
			return NoSuchGPU
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
		return NoRoom
	case len(r.MIG) > 0:
		return n.fitsMIG(r, nil)
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
		if !g.ok {
			return NoSuchGPU
		}
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
