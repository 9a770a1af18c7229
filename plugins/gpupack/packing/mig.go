package packing

import (
	"math/bits"

	"github.com/pennysched/penny/pkg/gpu"
)

// MIG geometry in bit masks, so that scoring a placement allocates nothing:
// a GPU's eight memory slices are the bits of a byte, a profile is a run of
// Size bits that may start at the offsets in its starts mask.

// geom is one MIG profile on one GPU model.
type geom struct {
	ok      bool
	compute int8
	size    int8
	starts  uint8 // bit k set: may start at memory slice k
}

// run is the memory slices an instance at start occupies.
func (g geom) run(start int) uint8 {
	return uint8((1<<g.size - 1) << start)
}

// geomOf looks the profile up on the model (zero when either is unknown).
func geomOf(m *gpu.Model, profile string) geom {
	if m == nil {
		return geom{}
	}
	p, ok := m.Profile(profile)
	if !ok {
		return geom{}
	}
	g := geom{ok: true, compute: int8(p.Compute), size: int8(p.Size)}
	for _, s := range p.Starts {
		g.starts |= 1 << s
	}
	return g
}

// migGPU is one GPU's MIG state for the scorer. An on-demand GPU has used
// memory slices and compute; a statically partitioned GPU has a fixed set of
// free instances (layout minus held), kept by index into the node's
// instance list.
type migGPU struct {
	used    uint8 // memory slices held
	compute int8  // compute slices held
	// mode: the GPU is in MIG mode (its free capacity is its free slices).
	mode   bool
	static bool
	// blocked: whole-GPU or share pods hold the GPU, so no instance fits.
	blocked bool
}

// placeable is how many more instances of g fit on an on-demand GPU, each
// alone: greedy from the lowest offset, which is optimal because every
// profile's runs are aligned to their size.
func (s migGPU) placeable(g geom) int64 {
	if !g.ok || s.blocked || s.static {
		return 0
	}
	used := s.used
	n := int64(0)
	for st := g.starts; st != 0; st &= st - 1 {
		k := bits.TrailingZeros8(st)
		r := g.run(k)
		if used&r == 0 {
			used |= r
			n++
		}
	}
	room := int64(gpu.ComputeSlices-int(s.compute)) / int64(g.compute)
	return min(n, room)
}

// fits reports whether one instance of g can be created at start.
func (s migGPU) fits(g geom, start int) bool {
	return g.ok && !s.blocked && !s.static && g.starts&(1<<start) != 0 &&
		s.used&g.run(start) == 0 && int(s.compute)+int(g.compute) <= gpu.ComputeSlices
}

// with returns the GPU with one more instance of g at start.
func (s migGPU) with(g geom, start int) migGPU {
	s.used |= g.run(start)
	s.compute += g.compute
	s.mode = true
	return s
}

// freeSlices is the compute the GPU can still give to MIG instances.
func (s migGPU) freeSlices() int64 {
	if s.blocked || s.static {
		return 0
	}
	return int64(gpu.ComputeSlices - int(s.compute))
}

// Capacity is counted in units of 1/7000 of a GPU, so that shares
// (thousandths) and MIG compute slices (sevenths) are both whole numbers and
// two placements that free the same capacity compare equal, not off by a
// rounding.
const (
	unitsPerMilli = gpu.ComputeSlices
	unitsPerSlice = gpu.MilliPerGPU
	unitsPerGPU   = gpu.MilliPerGPU * gpu.ComputeSlices
)
