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
// the slots in pick when it is not nil. Where first-fit finds no room it
// searches every placement (see migSearch): one greedy order can paint a
// request into a corner that another placement avoids (a 3g.40gb at offset
// 0 leaves no room for two 2g.20gb, at 4 it does).
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
	for j, prof := range r.MIG {
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
			if j == 0 {
				// First-fit tried every place for the first instance
				// with nothing else placed: no search can do better.
				return NoRoom
			}
			copy(mig, n.mig)
			if pick != nil {
				pick.nmig = 0
			}
			s := migSearch{n: n, r: r, mig: mig, pick: pick}
			if s.run() {
				return Fits
			}
			return NoRoom
		}
	}
	return Fits
}

// maxSearchSteps bounds the partial placements migSearch tries for one
// request, so that no request makes a Filter call slow: a placement that
// exists is found in far fewer, and a request that does not fit is
// mostly cut at once by the room left. Past it the request does not fit,
// as first-fit said.
const maxSearchSteps = 1 << 11

// migSearch looks for a placement of a request's MIG instances on the
// node's devices, trying every GPU, offset and free static instance for
// each instance in turn (largest first) and backtracking. It allocates
// nothing. It cuts a branch when the compute slices left, or the free
// aligned runs of memory slices, cannot hold the instances left (every
// profile's offsets are aligned to its size, so an instance of 2, 4 or 8
// slices covers whole aligned runs of each size up to its own). Two more
// cuts lose no placement: identical instances next to each other in the
// request take positions in increasing order (any placement can be
// reordered so), and of GPUs in the same state only the first is tried
// (any placement on another can be swapped onto it).
type migSearch struct {
	n    *Node
	r    *Req
	mig  []migGPU
	pick *choice
	// pos[j] is where instance j went: GPU*MemorySlices+offset on a GPU
	// that partitions as pods ask, len(mig)*MemorySlices+k for the k-th
	// static instance.
	pos [maxTouched]int
	// taken lists the static instances placed so far.
	taken  [maxTouched]int
	ntaken int
	geoms  [maxTouched]geom
	// needCompute[j] is the compute slices instances j.. need, freeCompute
	// what the node has left; needRuns[c][j] the aligned runs of 1<<c
	// memory slices instances j.. cover.
	needCompute [maxTouched + 1]int64
	freeCompute int64
	needRuns    [4][maxTouched + 1]int64
	steps       int
}

func (s *migSearch) run() bool {
	n, m := s.n, migModels[s.n.model]
	for j := len(s.r.MIG) - 1; j >= 0; j-- {
		s.geoms[j] = geomOf(m, s.r.MIG[j])
		s.needCompute[j] = s.needCompute[j+1] + int64(s.geoms[j].compute)
		for c := range s.needRuns {
			s.needRuns[c][j] = s.needRuns[c][j+1] + int64(s.geoms[j].size)>>c
		}
	}
	for i := range s.mig {
		if g := s.mig[i]; !g.blocked && !g.static {
			s.freeCompute += int64(gpu.ComputeSlices - int(g.compute))
		}
	}
	for k := range n.static {
		s.freeCompute += n.static[k].compute
	}
	if !s.place(0) {
		return false
	}
	if s.pick != nil {
		s.pick.nmig = len(s.r.MIG)
	}
	return true
}

// place places instances j.. and reports whether they all found room.
func (s *migSearch) place(j int) bool {
	if j == len(s.r.MIG) {
		return true
	}
	s.steps++
	if s.steps > maxSearchSteps || s.needCompute[j] > s.freeCompute || !s.runsLeft(j) {
		return false
	}
	prof, g := s.r.MIG[j], s.geoms[j]
	lb := 0
	if j > 0 && s.r.MIG[j-1] == prof {
		lb = s.pos[j-1] + 1
	}
	for i := range s.mig {
		st := s.mig[i]
		if st.blocked || st.static || (i+1)*gpu.MemorySlices <= lb || s.sameAsEarlier(i, lb) {
			continue
		}
		for off := 0; off < gpu.MemorySlices; off++ {
			p := i*gpu.MemorySlices + off
			if p < lb || !st.fits(g, off) {
				continue
			}
			s.mig[i] = st.with(g, off)
			s.freeCompute -= int64(g.compute)
			s.pos[j] = p
			if s.pick != nil {
				s.pick.mig[j] = gpu.Slot{GPU: i, MIG: gpu.Placement{Profile: prof, Start: off}}
			}
			if s.place(j + 1) {
				return true
			}
			s.mig[i] = st
			s.freeCompute += int64(g.compute)
		}
	}
	base := len(s.mig) * gpu.MemorySlices
	for k := range s.n.static {
		in := &s.n.static[k]
		if base+k < lb || in.profile != prof || slices.Contains(s.taken[:s.ntaken], k) {
			continue
		}
		s.taken[s.ntaken] = k
		s.ntaken++
		s.freeCompute -= in.compute
		s.pos[j] = base + k
		if s.pick != nil {
			s.pick.mig[j] = gpu.Slot{GPU: in.gpu, MIG: gpu.Placement{Profile: prof, Start: in.start}}
		}
		if s.place(j + 1) {
			return true
		}
		s.ntaken--
		s.freeCompute += in.compute
	}
	return false
}

// runsLeft reports whether the free aligned runs of 1, 2, 4 and 8 memory
// slices, on GPUs with compute left and in the free static instances,
// could hold instances j.. .
func (s *migSearch) runsLeft(j int) bool {
	var free [4]int64
	for i := range s.mig {
		g := s.mig[i]
		if g.blocked || g.static || g.compute >= gpu.ComputeSlices {
			continue
		}
		for c := range free {
			size := 1 << c
			run := uint8(1<<size - 1)
			for off := 0; off < gpu.MemorySlices; off += size {
				if g.used&(run<<off) == 0 {
					free[c]++
				}
			}
		}
	}
	m := migModels[s.n.model]
	for k := range s.n.static {
		if slices.Contains(s.taken[:s.ntaken], k) {
			continue
		}
		p, _ := m.Profile(s.n.static[k].profile)
		for c := range free {
			free[c] += int64(p.Size) >> c
		}
	}
	for c := range free {
		if s.needRuns[c][j] > free[c] {
			return false
		}
	}
	return true
}

// sameAsEarlier reports whether an earlier GPU, wholly past lb, is in the
// state GPU i is in: placing the instance there instead loses nothing.
func (s *migSearch) sameAsEarlier(i, lb int) bool {
	for k := i - 1; k >= 0 && k*gpu.MemorySlices >= lb; k-- {
		if s.mig[k] == s.mig[i] {
			return true
		}
	}
	return false
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
		case d.Unhealthy:
			// Takes nothing until its agent reports it healthy.
		case d.Layout != nil:
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
			if n.Dev.GPUs[g].Unhealthy {
				continue
			}
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
