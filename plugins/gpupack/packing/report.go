package packing

import "github.com/pennysched/penny/pkg/gpu"

// Stranded is the node's free GPU capacity (thousandths of a GPU) that no
// shape of the demand could use, each shape filling the node alone: what is
// paid for and idle but fits none of the pods the workload sends. A node
// with no free GPU capacity, or a demand with no GPU shapes, strands
// nothing... unless CPU or memory is gone, then all its free GPU is
// stranded. It does not touch the node's cache.
func (n *Node) Stranded(d *Demand) int64 {
	if n.freeUnits <= 0 {
		return 0
	}
	if !d.hasGPUShapes() {
		// No GPU pod has been seen (a scheduler just started) or only
		// CPU pods come: nothing says a piece is too small for the work.
		if n.CPUFree > 0 && n.MemFree > 0 {
			return 0
		}
		return n.freeUnits / unitsPerMilli
	}
	gpuCopies, shareCopies := make([]int64, len(d.Shapes)), make([]int64, len(d.shares))
	n.fillCopies(d, gpuCopies, shareCopies)
	var best int64
	for s := range d.Shapes {
		best = max(best, usable(d, s, gpuCopies[s], n.CPUFree, n.MemFree))
	}
	return max(0, n.freeUnits-best) / unitsPerMilli
}

func (d *Demand) hasGPUShapes() bool {
	for _, k := range d.kinds {
		if k != kindCPU {
			return true
		}
	}
	return false
}

// Largest describes the largest pods the node could still take, one kind at
// a time: whole GPUs (idle GPUs), a share (most free on one GPU, counting
// idle GPUs as 1000) and MIG (most compute slices of one instance that
// still fits on one GPU, on demand or free in a static layout).
type Largest struct {
	GPUs       int64
	ShareMilli int64
	MIGSlices  int
}

// Largest reports the largest pods the node's devices could take now.
func (n *Node) Largest() Largest {
	l := Largest{GPUs: n.idle}
	for _, f := range n.free {
		l.ShareMilli = max(l.ShareMilli, f)
	}
	if n.model >= 0 {
		for _, p := range migModels[n.model].MIG {
			g := geomOf(migModels[n.model], p.Name)
			for i := range n.mig {
				if n.mig[i].placeable(g) > 0 {
					l.MIGSlices = max(l.MIGSlices, p.Compute)
				}
			}
		}
	}
	for i := range n.static {
		l.MIGSlices = max(l.MIGSlices, int(n.static[i].compute))
	}
	if l.MIGSlices > gpu.ComputeSlices {
		l.MIGSlices = gpu.ComputeSlices
	}
	return l
}
