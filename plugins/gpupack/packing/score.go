package packing

import (
	"fmt"
	"slices"

	"github.com/pennysched/penny/pkg/gpu"
)

// Weights combine the parts of a placement's cost, all in thousandths of a
// GPU of expected waste so that they add up.
type Weights struct {
	// Fragmentation multiplies the growth of the node's expected waste.
	Fragmentation float64
	// Overkill multiplies the pod's GPU request times how large the node's
	// GPU model is among those the pod could use (0 for the smallest, 1 for
	// the largest): small work goes to small GPUs when the waste is equal.
	Overkill float64
	// Balance multiplies the growth of the GPU capacity the demand's mix
	// would strand for want of CPU or memory (see Node.balanceWaste).
	Balance float64
	// Dead multiplies the growth of the dead capacity a share leaves on the
	// GPU it takes (see Demand.dead): pieces almost no pod of the demand fits
	// in, which the expected waste weighs too lightly.
	Dead float64
}

// Cycle is what the cost of one pod shares across all nodes of a
// scheduling cycle.
type Cycle struct {
	Req    *Req
	Demand *Demand
	W      Weights
	// MinGPUMemoryGB and MaxGPUMemoryGB span the GPU models of the feasible
	// nodes with known memory, for Overkill.
	MinGPUMemoryGB, MaxGPUMemoryGB int
	// Slot is the index of the pod's shape among Demand's (Demand.Slot),
	// where Measure remembers the cost on each node; -1 for none. A wrong
	// slot costs only a miss: the memo checks the request.
	Slot int
	// Shared remembers MIG measures across nodes in the same state; nil
	// for none.
	Shared *SharedMemo
}

// maxTouched bounds the GPUs one placement changes individually; a pod
// asking for more MIG instances on more GPUs than this is not placed.
const maxTouched = 16

// gpuState is what the measure reads of one GPU.
type gpuState struct {
	free int64
	mig  migGPU
}

// transition is one GPU changing state, repeated times (identical idle GPUs
// taken by a whole-GPU pod are one transition).
type transition struct {
	gpu           int
	before, after gpuState
	times         int64
}

// placement is a hypothetical placement of the pod on a node: the GPUs it
// changes, static instances it takes, its CPU and memory.
type placement struct {
	t       [maxTouched]transition
	nt      int
	idle    int64 // idle GPUs taken
	static  [maxTouched]int
	nstatic int
	freed   int64 // capacity units taken from the node's free capacity
	// failed: the pod does not fit.
	failed bool
}

// reset empties the placement without clearing its arrays: only the first
// nt transitions and nstatic instances are ever read.
func (p *placement) reset() {
	p.nt, p.idle, p.nstatic, p.freed, p.failed = 0, 0, 0, 0, false
}

func (p *placement) touch(g int, before gpuState) *transition {
	for i := 0; i < p.nt; i++ {
		if p.t[i].gpu == g {
			return &p.t[i]
		}
	}
	if p.nt == maxTouched {
		p.failed = true
		return nil
	}
	p.t[p.nt] = transition{gpu: g, before: before, after: before, times: 1}
	p.nt++
	return &p.t[p.nt-1]
}

func (p *placement) stateOf(n *Node, g int) gpuState {
	for i := 0; i < p.nt; i++ {
		if p.t[i].gpu == g {
			return p.t[i].after
		}
	}
	return gpuState{free: n.free[g], mig: n.mig[g]}
}

func (p *placement) staticTaken(k int) bool {
	for i := 0; i < p.nstatic; i++ {
		if p.static[i] == k {
			return true
		}
	}
	return false
}

// scratch is what the measure of one pod on one node computes once and
// every candidate placement reuses.
type scratch struct {
	// lim[s] is how many copies of shape s the node keeps room for once the
	// pod is placed, as far as CPU and memory go, capped by the copies its
	// GPUs could take before the placement (a placement never adds GPU room).
	lim [maxShapes]int64
	// shareMax[k] and wholeMax[k] are the largest lim of each group: a
	// placement that leaves the group at least that many GPU copies changes
	// none of its terms.
	shareMax, wholeMax [maxShapes]int64
	// base is what the shapes could use if the placement took no GPU room:
	// sum of wsize[s] * lim[s].
	base int64
}

// prepareEval fills the scratch for the pod on the node.
func (n *Node) prepareEval(d *Demand, r *Req, sc *scratch) {
	cpu, mem := n.CPUFree-r.CPU, n.MemFree-r.Mem
	sc.base = 0
	for s := range d.Shapes {
		c := copies(d, s, n.cache.gpuCopies[s])
		lim := int64(0)
		if c > 0 {
			sh := &d.Shapes[s]
			if cpu >= c*sh.MilliCPU && mem >= c*sh.Mem {
				lim = c // the common case: CPU and memory do not bind, no division
			} else {
				lim = min(c, resourceRoom(d, s, cpu, mem))
			}
		}
		sc.lim[s] = lim
		sc.base += d.wsize[s] * lim
	}
	for k := range d.shares {
		sc.shareMax[k] = groupMax(&d.shares[k], sc)
	}
	for k := range d.wholes {
		sc.wholeMax[k] = groupMax(&d.wholes[k], sc)
	}
}

func groupMax(g *group, sc *scratch) int64 {
	var m int64
	for _, s := range g.shapes {
		m = max(m, sc.lim[s])
	}
	return m
}

// delta is how much the placement grows the node's expected waste, in
// thousandths of a GPU. Only the shapes whose GPU room the placement changes
// are visited: whole-GPU shapes when it takes idle GPUs, shares when it
// changes a GPU's free milli, MIG shapes when it changes MIG room; and of
// those only groups left with fewer copies than CPU and memory allow.
func (n *Node) delta(d *Demand, p *placement, sc *scratch) float64 {
	free := n.freeUnits - p.freed
	if free <= 0 {
		return -n.Waste()
	}
	freeChanged, migChanged := false, p.nstatic > 0
	for i := 0; i < p.nt; i++ {
		t := &p.t[i]
		freeChanged = freeChanged || t.before.free != t.after.free
		migChanged = migChanged || t.before.mig != t.after.mig
	}
	usable := sc.base
	if p.idle != 0 {
		for k := range d.wholes {
			g := &d.wholes[k]
			c := (n.idle - p.idle) / g.per
			if c >= sc.wholeMax[k] {
				continue
			}
			for _, s := range g.shapes {
				if lim := sc.lim[s]; c < lim {
					usable += d.wsize[s] * (c - lim)
				}
			}
		}
	}
	if freeChanged {
		for k := range d.shares {
			g := &d.shares[k]
			c := n.cache.shareCopies[k]
			for i := 0; i < p.nt; i++ {
				t := &p.t[i]
				c += t.times * int64(int(g.q[t.after.free])-int(g.q[t.before.free]))
			}
			if c >= sc.shareMax[k] {
				continue
			}
			for _, s := range g.shapes {
				if lim := sc.lim[s]; c < lim {
					usable += d.wsize[s] * (c - lim)
				}
			}
		}
	}
	if migChanged {
		for _, s := range d.mig {
			lim := sc.lim[s]
			if lim <= 0 {
				continue
			}
			g := d.geoms[s][n.model]
			c := n.cache.gpuCopies[s]
			for i := 0; i < p.nt; i++ {
				t := &p.t[i]
				c += t.times * (t.after.mig.placeable(g) - t.before.mig.placeable(g))
			}
			for i := 0; i < p.nstatic; i++ {
				if n.static[p.static[i]].profile == d.Shapes[s].MIG {
					c--
				}
			}
			if c /= d.Shapes[s].MIGCount; c < lim {
				usable += d.wsize[s] * (c - lim)
			}
		}
	}
	return float64(free*d.iwSum-usable-n.cache.waste) / n.cache.scale
}

// Parts are the node-local parts of a placement's cost, in thousandths of a
// GPU: the growth of the node's expected waste, of its balance waste and of
// its dead capacity. They do not depend on the other nodes of the cycle;
// Compose adds what does (avoid-overkill).
type Parts struct {
	Frag, Bal, Dead float64
}

// Scratch is Measure's working memory. Measuring a node takes a few
// nanoseconds more when it has to clear kilobytes of it first, so a caller
// that measures many nodes keeps one Scratch per goroutine.
type Scratch struct {
	sc   scratch
	p    placement
	pick choice
}

// Measure finds the best placement of the pod on the node and returns the
// parts of its cost (Cycle.Compose weighs them), or ok false when the node's
// devices cannot take the pod. It prepares the node for c.Demand where it
// has to measure. w is working memory, not read before it is written;
// Measure allocates nothing but the node's memo, once per growth of the
// demand's shapes, and c.Shared's entries.
func (n *Node) Measure(c *Cycle, w *Scratch) (parts Parts, ok bool) {
	r, d := c.Req, c.Demand
	if c.Slot < 0 || c.Slot >= len(d.Shapes) || int64(len(r.MIG)) != r.Shape.MIGCount {
		// No slot to remember it in, or MIG profiles mixed: the request is
		// more than its shape and key say.
		n.Prepare(d)
		return n.measure(c, w)
	}
	key := memoKey{cpu: r.CPU, mem: r.Mem, gpus: r.GPU.GPUs<<32 | r.GPU.Milli, mig: r.Shape.MIG, migCount: r.Shape.MIGCount}
	if len(n.memo) < len(d.Shapes) {
		n.memo = make([]memoEntry, len(d.Shapes))
	}
	m := &n.memo[c.Slot]
	if m.demand == d && m.key == key {
		return m.parts, m.ok
	}
	// A MIG request tries every GPU and offset, which costs far more than
	// looking the node's state up in c.Shared; a whole-GPU or share request
	// costs about as much, and on a cluster where few nodes are alike the
	// lookup would only add to it.
	shared := len(r.MIG) > 0
	var found bool
	if shared {
		parts, ok, found = c.Shared.get(d, c.W, n.stateKey(), c.Slot, key)
	}
	if !found {
		n.Prepare(d)
		parts, ok = n.measure(c, w)
		if shared {
			c.Shared.put(d, c.W, n.stateKey(), c.Slot, key, parts, ok)
		}
	}
	*m = memoEntry{demand: d, key: key, parts: parts, ok: ok}
	return parts, ok
}

// measure is Measure without the memos; the node is prepared.
func (n *Node) measure(c *Cycle, w *Scratch) (Parts, bool) {
	w.p.reset()
	w.pick.share, w.pick.nmig = 0, 0
	return n.best(c, &w.p, &w.pick, &w.sc)
}

// memoEntry remembers what placing a request costs on the node against a
// demand. A node keeps one per shape of its current demand: between two
// refreshes of the demand most nodes do not change, and pods of the
// demand's shapes keep arriving, so most of them are measured once per
// node and shape. The entry holds the exact request (a shape averages
// memory). A MIG request is its shape's count of one profile; one that
// mixes profiles (its shape names only the largest) is not remembered.
type memoEntry struct {
	demand *Demand
	key    memoKey
	parts  Parts
	ok     bool
}

type memoKey struct {
	cpu, mem int64
	// gpus holds the GPU count in its high half and the milli in its low.
	gpus int64
	// mig is the MIG profile asked for, migCount instances of it.
	mig      string
	migCount int64
}

// Compose weighs the parts of a placement's cost on a node whose GPUs have
// gpuMemoryGB of memory (0 unknown).
func (c *Cycle) Compose(parts Parts, gpuMemoryGB int) float64 {
	cost := c.W.Fragmentation*parts.Frag + c.W.Balance*parts.Bal + c.W.Dead*parts.Dead
	r := c.Req
	if c.W.Overkill > 0 && r.HasGPU() && c.MaxGPUMemoryGB > c.MinGPUMemoryGB && gpuMemoryGB > 0 {
		rank := float64(gpuMemoryGB-c.MinGPUMemoryGB) / float64(c.MaxGPUMemoryGB-c.MinGPUMemoryGB)
		cost += c.W.Overkill * float64(r.Milli()) * rank
	}
	return cost
}

// Choose returns the devices for the pod on the node (what Measure scored)
// and its cost. The node must be prepared for c.Demand.
func (n *Node) Choose(c *Cycle) (gpu.Assignment, float64, error) {
	var w Scratch
	parts, ok := n.best(c, &w.p, &w.pick, &w.sc)
	if !ok {
		return nil, 0, fmt.Errorf("%s does not fit on the GPUs of node %s", c.Req.GPU.String(), n.Name)
	}
	return w.pick.assignment(n, c.Req), c.Compose(parts, n.GPUMemoryGB), nil
}

// choice records the devices best picked.
type choice struct {
	share int
	mig   [maxTouched]gpu.Slot
	nmig  int
}

func (ch *choice) assignment(n *Node, r *Req) gpu.Assignment {
	switch {
	case r.GPU.GPUs > 0:
		a := make(gpu.Assignment, 0, r.GPU.GPUs)
		for i := range n.Dev.GPUs {
			if int64(len(a)) == r.GPU.GPUs {
				break
			}
			// Idle as Fits counts it: a GPU in MIG mode takes instances
			// only, even one that holds none (MIG enabled, nothing created).
			if n.isIdle(i) {
				a = append(a, gpu.Slot{GPU: i, Milli: gpu.MilliPerGPU})
			}
		}
		return a
	case r.GPU.Milli > 0:
		return gpu.Assignment{{GPU: ch.share, Milli: r.GPU.Milli}}
	case ch.nmig > 0:
		return append(gpu.Assignment(nil), ch.mig[:ch.nmig]...)
	}
	return nil
}

// best finds the cheapest placement of the pod on the node and returns its
// node-local costs.
// p and pick must be empty; sc is filled here.
func (n *Node) best(c *Cycle, p *placement, pick *choice, sc *scratch) (Parts, bool) {
	r, d := c.Req, c.Demand
	var frag, dead float64
	// As NodeResourcesFit: a pod that asks for no CPU (or memory) fits a
	// node whose pods already ask for more than it has.
	if r.CPU > 0 && r.CPU > n.CPUFree || r.Mem > 0 && r.Mem > n.MemFree {
		return Parts{}, false
	}
	n.prepareEval(d, r, sc)
	switch {
	case r.GPU.GPUs > 0:
		if n.idle < r.GPU.GPUs {
			return Parts{}, false
		}
		for i := range n.free {
			if n.isIdle(i) {
				p.t[0] = transition{gpu: i, before: gpuState{free: n.free[i], mig: n.mig[i]}, after: gpuState{mig: migGPU{blocked: true}}, times: r.GPU.GPUs}
				p.nt = 1
				break
			}
		}
		p.idle = r.GPU.GPUs
		p.freed = r.GPU.GPUs * unitsPerGPU
		frag = n.delta(d, p, sc)
	case r.GPU.Milli > 0:
		m := r.GPU.Milli
		best, bestFree, bestCost := -1, int64(0), 0.0
		p.freed = m * unitsPerMilli
		p.nt = 1
		// GPUs with the same free milli are in the same state (a node's GPUs
		// are all MIG-capable or none): try each free value once.
		var tried [maxTouched]int64
		ntried := 0
		for i, f := range n.free {
			if f < m || slices.Contains(tried[:ntried], f) {
				continue
			}
			if ntried < len(tried) {
				tried[ntried] = f
				ntried++
			}
			p.t[0] = transition{gpu: i, before: gpuState{free: f, mig: n.mig[i]}, after: gpuState{free: f - m, mig: migGPU{blocked: true}}, times: 1}
			p.idle = 0
			if n.isIdle(i) {
				p.idle = 1
			}
			fr := n.delta(d, p, sc)
			var dd float64
			if d.dead != nil {
				dd = d.dead[f-m] - d.dead[f]
			}
			cost := c.W.Fragmentation*fr + c.W.Dead*dd
			if best < 0 || cost < bestCost || cost == bestCost && f < bestFree {
				best, bestFree, bestCost, frag, dead = i, f, cost, fr, dd
			}
		}
		if best < 0 {
			return Parts{}, false
		}
		pick.share = best
	case len(r.MIG) > 0:
		var ok bool
		frag, ok = n.bestMIG(d, r, p, pick, sc)
		if !ok {
			// Placing each instance where it costs least can paint a
			// multi-instance request into a corner; Fits searches for a
			// placement that works, so fall back to the one it finds.
			*p, *pick = placement{}, choice{}
			if n.fitsMIG(r, pick) != Fits {
				return Parts{}, false
			}
			n.applyPicks(pick, p)
			frag = n.delta(d, p, sc)
		}
	default:
		frag = n.delta(d, p, sc)
	}
	return Parts{Frag: frag, Bal: n.balanceDelta(r, p.freed), Dead: dead}, true
}

func (n *Node) isIdle(i int) bool {
	return n.free[i] == gpu.MilliPerGPU && !n.mig[i].mode && !n.mig[i].static
}

// bestMIG places the requested instances one by one, largest first, each
// where the node's expected waste grows least; ties go to the fuller GPU
// (leaving empty GPUs for the largest profiles), then the lower GPU index
// and offset.
func (n *Node) bestMIG(d *Demand, r *Req, p *placement, pick *choice, sc *scratch) (float64, bool) {
	if n.model < 0 || len(r.MIG) > maxTouched {
		return 0, false
	}
	var frag float64
	for _, prof := range r.MIG {
		g := geomOf(migModels[n.model], prof)
		if !g.ok {
			return 0, false
		}
		best := migCand{gpu: -1}
		// GPUs in the same state cost the same at every offset (the cost
		// reads states, not indices), and the lowest index wins a tie, so
		// only the first GPU of each state is tried.
		var seen [maxSeenStates]gpuState
		nseen := 0
		for i := range n.mig {
			st := p.stateOf(n, i)
			if st.mig.blocked || st.mig.static {
				continue
			}
			if slices.Contains(seen[:nseen], st) {
				continue
			}
			if nseen < len(seen) {
				seen[nseen] = st
				nseen++
			}
			for s := 0; s < gpu.MemorySlices; s++ {
				if !st.mig.fits(g, s) {
					continue
				}
				q := *p
				n.placeInstance(&q, i, g, s)
				if q.failed {
					continue
				}
				c := migCand{gpu: i, start: s, static: -1, used: st.mig.compute, cost: n.delta(d, &q, sc)}
				if best.gpu < 0 || c.better(&best) {
					best = c
				}
			}
		}
		for k := range n.static {
			in := &n.static[k]
			if in.profile != prof || p.staticTaken(k) {
				continue
			}
			q := *p
			n.takeStatic(&q, k)
			if q.failed {
				continue
			}
			c := migCand{gpu: in.gpu, start: in.start, static: k, cost: n.delta(d, &q, sc)}
			if best.gpu < 0 || c.better(&best) {
				best = c
			}
		}
		if best.gpu < 0 {
			return 0, false
		}
		if best.static >= 0 {
			n.takeStatic(p, best.static)
		} else {
			n.placeInstance(p, best.gpu, g, best.start)
		}
		pick.mig[pick.nmig] = gpu.Slot{GPU: best.gpu, MIG: gpu.Placement{Profile: prof, Start: best.start}}
		pick.nmig++
		frag = best.cost
	}
	return frag, true
}

// maxSeenStates bounds the distinct GPU states bestMIG remembers; beyond it
// GPUs are tried without the shortcut.
const maxSeenStates = 16

// migCand is one place a MIG instance could go.
type migCand struct {
	gpu, start, static int
	used               int8
	cost               float64
}

func (c *migCand) better(o *migCand) bool {
	switch {
	case c.cost != o.cost:
		return c.cost < o.cost
	case c.used != o.used:
		return c.used > o.used
	case c.gpu != o.gpu:
		return c.gpu < o.gpu
	}
	return c.start < o.start
}

// placeInstance adds an on-demand instance of g at start on GPU i.
func (n *Node) placeInstance(p *placement, i int, g geom, start int) {
	t := p.touch(i, gpuState{free: n.free[i], mig: n.mig[i]})
	if t == nil {
		return
	}
	before := t.after.freeUnits()
	if t.after.free > 0 {
		// A whole GPU becomes a MIG GPU: it is no longer idle, and its free
		// capacity is counted in compute slices from now on.
		p.idle++
		t.after.free = 0
	}
	t.after.mig = t.after.mig.with(g, start)
	p.freed += before - t.after.freeUnits()
}

// freeUnits is the GPU's part of the node's free capacity (see NewNode).
func (s gpuState) freeUnits() int64 {
	if !s.mig.mode {
		return s.free * unitsPerMilli
	}
	return s.mig.freeSlices() * unitsPerSlice
}

// takeStatic takes the node's k-th free static instance.
func (n *Node) takeStatic(p *placement, k int) {
	if p.nstatic == maxTouched {
		p.failed = true
		return
	}
	p.static[p.nstatic] = k
	p.nstatic++
	p.freed += n.static[k].compute * unitsPerSlice
}

// applyPicks records MIG slots chosen elsewhere in the placement.
func (n *Node) applyPicks(pick *choice, p *placement) {
	for _, sl := range pick.mig[:pick.nmig] {
		if !n.mig[sl.GPU].static {
			n.placeInstance(p, sl.GPU, geomOf(migModels[n.model], sl.MIG.Profile), sl.MIG.Start)
			continue
		}
		for k := range n.static {
			if in := &n.static[k]; in.gpu == sl.GPU && in.start == sl.MIG.Start && !p.staticTaken(k) {
				n.takeStatic(p, k)
				break
			}
		}
	}
}
