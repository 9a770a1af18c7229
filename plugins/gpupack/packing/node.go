package packing

import (
	"math"
	"slices"
	"unique"

	"github.com/pennysched/penny/pkg/gpu"
)

// Node is one node as the scorer sees it: its devices with the pods on them,
// and its free CPU and memory. It is built once per change of the node and
// then only read, except for the per-Demand cache that Prepare fills and the
// memo Measure keeps (one goroutine per node at a time).
//
// Scoring reads thousands of nodes per pod, so what it reads of one node is
// kept together: the fields Measure reads come first, and the per-GPU state
// of nodes of up to inlineGPUs GPUs lives in the struct itself.
type Node struct {
	cache nodeCache
	// memo has a slot per shape of cache.demand (see Measure).
	memo []memoEntry
	// CPUFree (millicores) and MemFree (bytes) are allocatable minus
	// requested, counting pods still being bound.
	CPUFree, MemFree int64
	idle             int64
	// free capacity in units (see unitsPerGPU)
	freeUnits int64
	free      []int64
	mig       []migGPU
	model     int // index into migModels, -1 unknown
	product   string
	freeBuf   [inlineGPUs]int64
	migBuf    [inlineGPUs]migGPU

	// static lists the free instances of static MIG layouts.
	static []staticInst
	Name   string
	// Dev is the device view with every pod applied. It must not be changed.
	Dev *gpu.NodeDevices
	// GPUMemoryGB is the memory of one GPU, for avoid-overkill; 0 unknown.
	GPUMemoryGB int
	// unpartitioned counts the healthy GPUs that take whole-GPU and share
	// pods once idle: all of an on-demand node's, the others outside MIG
	// mode.
	unpartitioned int64
	// state is the node's key in a SharedMemo (see stateKey); the zero
	// Handle until first asked for.
	state unique.Handle[string]
}

// inlineGPUs is how many GPUs a Node holds without allocating per-GPU state
// apart: eight, as in most GPU servers.
const inlineGPUs = 8

type staticInst struct {
	gpu     int
	start   int
	profile string
	compute int64
}

// nodeCache holds what the measure needs of the node for one Demand.
type nodeCache struct {
	// demand is the Demand the cache was computed against.
	demand *Demand
	// gpuCopies[s] is how many copies of shape s the node's GPUs could take
	// (before CPU and memory are counted; 0 for a product the shape does not
	// accept): for shares and MIG shapes the sum over GPUs, for whole-GPU
	// shapes idle / GPUs.
	gpuCopies []int64
	// shareCopies[k] is the copies of share group k the GPUs could take,
	// whatever the product. Both slice copies, so that they are read from
	// one allocation.
	shareCopies []int64
	copies      []int64
	// waste in weighted capacity units (see Demand.iw), and what one
	// thousandth of a GPU is in those units.
	waste int64
	scale float64
	// The demand's mix on this node's product, per unit of GPU capacity:
	// CPU and memory the GPU shapes ask for (see balanceWaste).
	cpuPerUnit, memPerUnit float64
	balance                float64
}

// NewNode builds the scorer's node from its device view and free resources.
func NewNode(name string, dev *gpu.NodeDevices, cpuFree, memFree int64, gpuMemoryGB int) *Node {
	n := &Node{Name: name, Dev: dev, CPUFree: cpuFree, MemFree: memFree, GPUMemoryGB: gpuMemoryGB,
		product: dev.Product, model: modelIndex(dev.Model)}
	if n.GPUMemoryGB == 0 && dev.Model != nil {
		n.GPUMemoryGB = dev.Model.MemoryGB
	}
	g := len(dev.GPUs)
	if g <= inlineGPUs {
		n.free, n.mig = n.freeBuf[:g], n.migBuf[:g]
	} else {
		n.free, n.mig = make([]int64, g), make([]migGPU, g)
	}
	for i := range dev.GPUs {
		d := &dev.GPUs[i]
		n.free[i] = dev.FreeMilli(i)
		n.freeUnits += n.free[i] * unitsPerMilli
		if d.Unhealthy {
			// As a GPU full to the brim: nothing new goes on it, it
			// counts as no free capacity, and no eviction would make
			// room on it (not unpartitioned).
			n.mig[i] = migGPU{blocked: true}
			continue
		}
		if !d.MIGMode && d.UsedMilli == 0 {
			n.idle++
		}
		if !d.MIGMode || dev.OnDemand {
			n.unpartitioned++
		}
		switch {
		case d.Layout != nil:
			n.mig[i] = migGPU{static: true}
			for _, p := range d.Layout {
				if slices.Contains(d.MIG, p) {
					continue
				}
				prof, _ := dev.Model.Profile(p.Profile)
				n.static = append(n.static, staticInst{gpu: i, start: p.Start, profile: p.Profile, compute: int64(prof.Compute)})
				n.freeUnits += int64(prof.Compute) * unitsPerSlice
			}
		case d.MIGMode:
			// Instances go wherever the geometry leaves room.
			s := migGPU{mode: true}
			for _, p := range d.MIG {
				if prof, ok := dev.Model.Profile(p.Profile); ok {
					s = s.with(geom{ok: true, compute: int8(prof.Compute), size: int8(prof.Size)}, p.Start)
				}
			}
			n.mig[i] = s
			n.freeUnits += s.freeSlices() * unitsPerSlice
		case dev.OnDemand && d.UsedMilli == 0:
			n.mig[i] = migGPU{} // whole, and can become a MIG GPU
		default:
			n.mig[i] = migGPU{blocked: true}
		}
	}
	return n
}

// HasGPU reports whether the node has any GPU.
func (n *Node) HasGPU() bool { return len(n.free) > 0 }

// FreeMilli is the node's free GPU capacity in thousandths of a GPU: free
// milli of whole/share GPUs plus the free compute of MIG GPUs.
func (n *Node) FreeMilli() int64 { return n.freeUnits / unitsPerMilli }

// Product is the node's GPU product label.
func (n *Node) Product() string { return n.product }

// Prepare computes the node's per-Demand cache unless it is current. Call
// it before Choose against d (Measure prepares the node where it measures);
// it allocates only the first time or when the number of shapes grows.
func (n *Node) Prepare(d *Demand) {
	if n.cache.demand == d {
		return
	}
	c := &n.cache
	if ns := len(d.Shapes) + len(d.shares); cap(c.copies) < ns {
		c.copies = make([]int64, ns)
	}
	c.gpuCopies = c.copies[:len(d.Shapes):len(d.Shapes)]
	c.shareCopies = c.copies[len(d.Shapes) : len(d.Shapes)+len(d.shares)]
	n.fillCopies(d, c.gpuCopies, c.shareCopies)
	c.waste = n.waste(d, c.gpuCopies, n.CPUFree, n.MemFree, n.freeUnits)
	c.scale = float64(d.iwSum * unitsPerMilli)
	var cpu, mem, units float64
	for s := range d.Shapes {
		if d.kinds[s] == kindCPU || !d.Shapes[s].Accepts(n.product) {
			continue
		}
		cpu += d.Weights[s] * float64(d.Shapes[s].MilliCPU)
		mem += d.Weights[s] * float64(d.Shapes[s].Mem)
		units += d.Weights[s] * float64(d.size[s])
	}
	c.cpuPerUnit, c.memPerUnit = 0, 0
	if units > 0 {
		c.cpuPerUnit, c.memPerUnit = cpu/units, mem/units
	}
	c.balance = n.balanceWaste(n.freeUnits, n.CPUFree, n.MemFree)
	c.demand = d
}

// balanceWaste is the GPU capacity (units) that the demand's average mix
// would leave unused for want of CPU or memory: filled with pods that ask
// for CPU and memory per unit of GPU as the demand does on average, the
// node runs out of whichever comes first. This sees what the per-shape
// measure cannot: a node whose few CPUs one more heavy pod would take still
// counts copies of light shapes, but its GPUs are only useful if light pods
// come, and the rest of the cluster competes for those.
func (n *Node) balanceWaste(freeUnits, cpuFree, memFree int64) float64 {
	if freeUnits <= 0 {
		return 0
	}
	u := float64(freeUnits)
	if n.cache.cpuPerUnit > 0 {
		u = min(u, float64(max(cpuFree, 0))/n.cache.cpuPerUnit)
	}
	if n.cache.memPerUnit > 0 {
		u = min(u, float64(max(memFree, 0))/n.cache.memPerUnit)
	}
	return float64(freeUnits) - u
}

// balanceDelta is how much a placement that takes freed units and the
// pod's CPU and memory grows balanceWaste, in thousandths of a GPU.
func (n *Node) balanceDelta(r *Req, freed int64) float64 {
	after := n.balanceWaste(n.freeUnits-freed, n.CPUFree-r.CPU, n.MemFree-r.Mem)
	return (after - n.cache.balance) / unitsPerMilli
}

// Waste is the node's expected waste against d in thousandths of a GPU
// (Prepare first).
func (n *Node) Waste() float64 {
	if n.cache.waste == 0 {
		return 0
	}
	return float64(n.cache.waste) / n.cache.scale
}

// fillCopies counts, for every shape, the copies the node's GPUs could take
// (see nodeCache.gpuCopies).
func (n *Node) fillCopies(d *Demand, gpuCopies, shareCopies []int64) {
	for s := range gpuCopies {
		gpuCopies[s] = 0
	}
	for k := range d.shares {
		g := &d.shares[k]
		var c int64
		for _, f := range n.free {
			c += int64(g.q[f])
		}
		shareCopies[k] = c
		for _, s := range g.shapes {
			if d.Shapes[s].Accepts(n.product) {
				gpuCopies[s] = c
			}
		}
	}
	for k := range d.wholes {
		g := &d.wholes[k]
		for _, s := range g.shapes {
			if d.Shapes[s].Accepts(n.product) {
				gpuCopies[s] = n.idle / g.per
			}
		}
	}
	for _, s := range d.mig {
		if n.model < 0 || !d.Shapes[s].Accepts(n.product) {
			continue
		}
		g := d.geoms[s][n.model]
		if !g.ok {
			continue
		}
		var c int64
		for i := range n.mig {
			c += n.mig[i].placeable(g)
		}
		for i := range n.static {
			if n.static[i].profile == d.Shapes[s].MIG {
				c++
			}
		}
		gpuCopies[s] = c
	}
}

// waste is the expected waste in weighted capacity units for the given GPU
// copies and free resources: the free capacity less what each shape could
// use, weighted by the shape's probability.
func (n *Node) waste(d *Demand, gpuCopies []int64, cpuFree, memFree, freeUnits int64) int64 {
	if freeUnits <= 0 {
		return 0
	}
	w := freeUnits * d.iwSum
	for s := range d.Shapes {
		if c := copies(d, s, gpuCopies[s]); c > 0 {
			w -= d.wsize[s] * min(c, resourceRoom(d, s, cpuFree, memFree))
		}
	}
	return w
}

// usable is what copies of shape s could use of a node's free GPU, in
// capacity units, given the copies its GPUs could take and its free CPU and
// memory.
func usable(d *Demand, s int, gpuCopies, cpuFree, memFree int64) int64 {
	c := copies(d, s, gpuCopies)
	if c <= 0 {
		return 0
	}
	return min(c, resourceRoom(d, s, cpuFree, memFree)) * d.size[s]
}

// copies turns the GPU-side count into copies of the pod (a MIG pod may
// ask for several instances).
func copies(d *Demand, s int, gpuCopies int64) int64 {
	if d.kinds[s] == kindMIG {
		return gpuCopies / d.Shapes[s].MIGCount
	}
	return gpuCopies
}

// resourceRoom is how many copies of shape s the free CPU and memory allow
// (0 for CPU-only shapes: they use no GPU).
func resourceRoom(d *Demand, s int, cpuFree, memFree int64) int64 {
	sh := &d.Shapes[s]
	if d.kinds[s] == kindCPU || cpuFree < 0 || memFree < 0 {
		return 0
	}
	k := int64(math.MaxInt64)
	if sh.MilliCPU > 0 {
		k = cpuFree / sh.MilliCPU
	}
	if sh.Mem > 0 {
		k = min(k, memFree/sh.Mem)
	}
	return k
}
