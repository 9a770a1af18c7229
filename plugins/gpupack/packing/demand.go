package packing

import (
	"math"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pennysched/penny/pkg/gpu"
)

// Demand is the workload's distribution of shapes at one moment: what the
// measure expects to arrive next. It is immutable; the Learner replaces it.
type Demand struct {
	// Shapes are the typical shapes, most frequent first, and Weights their
	// probabilities (summing to 1).
	Shapes  []Shape
	Weights []float64
	// Version numbers the demands a Learner builds, for logs and tests;
	// per-node caches recognise a new Demand by its identity.
	Version uint64

	// Per shape: what kind it is and, for MIG shapes, its geometry on each
	// known model (indexed like migModels).
	kinds []shapeKind
	geoms [][]geom
	// size is what one copy takes of the node's GPU, in capacity units
	// (see unitsPerGPU).
	size []int64
	// The measure sums in integers, so that it is fast and two placements
	// that leave the same room compare exactly equal: iw are the weights
	// scaled by weightScale and rounded, iwSum their sum, wsize[s] is
	// iw[s] * size[s].
	iw    []int64
	iwSum int64
	wsize []int64
	// Shapes that need the same GPU room (shares of one size, the same
	// number of whole GPUs) form a group: their GPU copies are equal, and a
	// placement changes them once for the whole group.
	shares, wholes []group
	// mig lists the MIG shapes.
	mig []int
	// slots indexes Shapes by Key.
	slots map[string]int
	// dead[f] is how much of a GPU piece of f thousandths counts as dead:
	// f * (1 - q(f))^deadSharpness, where q(f) is the share of the demand's
	// GPU pods (shares and whole GPUs) that fit in f. Nil without GPU shapes.
	dead []float64
}

// deadSharpness makes the dead-piece measure a soft threshold: a piece
// counts in full when nothing fits in it, about half when 1% of the demand
// does, under a third at 2%, and almost not at all from 5% on.
const deadSharpness = 60

// group is the shapes that need the same GPU room.
type group struct {
	// per is the share's milli (share groups) or the GPU count (whole).
	per int64
	// q[f] is f / per for shares: how many copies a GPU with f milli free
	// takes (a table: the measure asks millions of times a second).
	q      []uint16
	shapes []int
}

// weightScale turns weights into integers (about six significant digits).
const weightScale = 1 << 20

type shapeKind uint8

const (
	kindCPU shapeKind = iota
	kindWhole
	kindShare
	kindMIG
)

// migModels are the known models, indexed for Demand.geoms and Node.model.
var migModels = func() []*gpu.Model {
	var out []*gpu.Model
	for _, name := range gpu.ModelNames() {
		m, _ := gpu.LookupModel(name)
		out = append(out, m)
	}
	return out
}()

func modelIndex(m *gpu.Model) int {
	for i, x := range migModels {
		if x == m {
			return i
		}
	}
	return -1
}

// Slot is the index of shape s among the demand's shapes, or -1.
func (d *Demand) Slot(s *Shape) int {
	if i, ok := d.slots[s.Key()]; ok {
		return i
	}
	return -1
}

// maxShapes bounds the shapes of a Demand, so that the measure's per-shape
// scratch fits on the stack.
const maxShapes = 64

// NewDemand builds a Demand from shapes and (unnormalised, non-negative)
// weights; beyond maxShapes shapes the rest are dropped. Version 0 is
// reserved for "no cache".
func NewDemand(shapes []Shape, weights []float64, version uint64) *Demand {
	if len(shapes) > maxShapes {
		shapes, weights = shapes[:maxShapes], weights[:maxShapes]
	}
	d := &Demand{Shapes: shapes, Weights: weights, Version: version}
	var sum float64
	for _, w := range weights {
		sum += w
	}
	if sum > 0 {
		for i := range d.Weights {
			d.Weights[i] /= sum
		}
	}
	d.slots = make(map[string]int, len(shapes))
	for i := range shapes {
		if _, dup := d.slots[shapes[i].Key()]; !dup {
			d.slots[shapes[i].Key()] = i
		}
	}
	d.kinds = make([]shapeKind, len(shapes))
	d.geoms = make([][]geom, len(shapes))
	d.size = make([]int64, len(shapes))
	d.iw = make([]int64, len(shapes))
	d.wsize = make([]int64, len(shapes))
	for i := range shapes {
		s := &shapes[i]
		d.size[i] = s.GPUs * s.MilliPerGPU * unitsPerMilli
		switch {
		case s.MIG != "":
			d.kinds[i] = kindMIG
			if p, err := gpu.ParseProfileName(s.MIG); err == nil {
				d.size[i] = s.MIGCount * int64(p.Compute) * unitsPerSlice
			}
			d.geoms[i] = make([]geom, len(migModels))
			for k, m := range migModels {
				d.geoms[i][k] = geomOf(m, s.MIG)
			}
			d.mig = append(d.mig, i)
		case s.GPUs > 0 && s.MilliPerGPU >= gpu.MilliPerGPU:
			d.kinds[i] = kindWhole
			d.wholes = addToGroup(d.wholes, s.GPUs, i, false)
		case s.GPUs > 0:
			d.kinds[i] = kindShare
			d.shares = addToGroup(d.shares, s.MilliPerGPU, i, true)
		default:
			d.kinds[i] = kindCPU
		}
		d.iw[i] = int64(math.Round(d.Weights[i] * weightScale))
		d.iwSum += d.iw[i]
		d.wsize[i] = d.iw[i] * d.size[i]
	}
	d.dead = deadTable(d)
	return d
}

// deadTable builds Demand.dead. The expected waste weighs a piece by the
// demand that cannot use it, linearly; but pods keep arriving, so a piece
// that a tenth of them fit in is usually filled in the end, while one that
// only a rare shape fits in (what an 810 leaves of a GPU) stays idle.
func deadTable(d *Demand) []float64 {
	var fit [gpu.MilliPerGPU + 1]float64
	var total float64
	for s := range d.Shapes {
		if d.kinds[s] != kindShare && d.kinds[s] != kindWhole {
			continue
		}
		fit[min(d.Shapes[s].MilliPerGPU, gpu.MilliPerGPU)] += d.Weights[s]
		total += d.Weights[s]
	}
	if total == 0 {
		return nil
	}
	t := make([]float64, gpu.MilliPerGPU+1)
	var cum float64
	for f := range t {
		cum += fit[f]
		if rest := 1 - cum/total; rest > 1e-9 {
			t[f] = float64(f) * math.Pow(rest, deadSharpness)
		}
	}
	return t
}

func addToGroup(gs []group, per int64, shape int, share bool) []group {
	for k := range gs {
		if gs[k].per == per {
			gs[k].shapes = append(gs[k].shapes, shape)
			return gs
		}
	}
	g := group{per: per, shapes: []int{shape}}
	if share {
		g.q = make([]uint16, gpu.MilliPerGPU+1)
		for f := range g.q {
			g.q[f] = uint16(int64(f) / per)
		}
	}
	return append(gs, g)
}

// Learner learns the demand online from the pods the scheduler sees: every
// arrival adds one to its shape's count (a multi-GPU pod as many as it takes
// GPUs, see gpuWeight) and all counts decay with a half-life counted in
// arrivals, so the demand follows a workload that
// changes while a burst of one kind does not erase the rest. Pods waiting
// in the queue are known demand: they join the counts with a look-ahead
// weight each, up to a look-ahead depth in total.
//
// It is safe for concurrent use. Demand never blocks on a rebuild in
// progress; Observe and the pending updates take a short lock.
type Learner struct {
	opts LearnerOptions

	mu      sync.Mutex
	shapes  map[string]*learned
	scale   float64 // weight of an arrival now; counts are kept in these units
	since   int     // arrivals since the last rebuild
	stale   bool    // a rebuild is due (new shape, pending set changed)
	version uint64
	seen    uidRing

	pending      map[string]string // pending pod -> its shape key
	pendingTotal int

	cur atomic.Pointer[Demand]
}

// LearnerOptions tune a Learner.
type LearnerOptions struct {
	// HalfLife is the number of arrivals after which an arrival's weight has
	// halved; 0 keeps every arrival at full weight.
	HalfLife float64
	// Refresh is how many arrivals of known shapes may pass before the
	// Demand is rebuilt (a new shape rebuilds it at once). Between rebuilds
	// the scores of unchanged nodes are reused.
	Refresh int
	// LookAheadDepth caps how many pending pods count; LookAheadWeight is
	// how many arrivals one pending pod counts as.
	LookAheadDepth  int
	LookAheadWeight float64
	// Coverage keeps the most frequent shapes until they make up this share
	// of the demand (the rest is noise that only costs time); MaxShapes
	// bounds their number.
	Coverage  float64
	MaxShapes int
	// SeenCapacity bounds the pods remembered so that a retried pod is not
	// counted as a new arrival.
	SeenCapacity int
}

type learned struct {
	shape   Shape
	count   float64 // decayed, in Learner.scale units
	memSum  float64 // decayed sum of memory requests, same units
	pending int
}

// NewLearner returns a learner with no demand yet.
func NewLearner(o LearnerOptions) *Learner {
	if o.Refresh <= 0 {
		o.Refresh = 1
	}
	if o.Coverage <= 0 || o.Coverage > 1 {
		o.Coverage = 1
	}
	if o.MaxShapes <= 0 || o.MaxShapes > maxShapes {
		o.MaxShapes = maxShapes
	}
	if o.SeenCapacity <= 0 {
		o.SeenCapacity = 1 << 16
	}
	l := &Learner{opts: o, shapes: map[string]*learned{}, scale: 1, pending: map[string]string{}}
	l.seen.init(o.SeenCapacity)
	l.cur.Store(NewDemand(nil, nil, 0))
	return l
}

// Observe records the arrival of a pod of shape s; a pod seen before (a
// retry) is not counted again. It reports whether the pod was new.
func (l *Learner) Observe(uid string, s Shape) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.seen.add(uid) {
		return false
	}
	e := l.entry(s)
	e.count += l.scale
	e.memSum += l.scale * float64(s.Mem)
	if l.opts.HalfLife > 0 {
		l.scale *= math.Exp2(1 / l.opts.HalfLife)
		if l.scale > 1e100 {
			for _, e := range l.shapes {
				e.count /= l.scale
				e.memSum /= l.scale
			}
			l.scale = 1
		}
	}
	l.since++
	return true
}

func (l *Learner) entry(s Shape) *learned {
	k := s.Key()
	e, ok := l.shapes[k]
	if !ok {
		e = &learned{shape: s}
		l.shapes[k] = e
		l.stale = true
	}
	return e
}

// AddPending records a pod waiting in the queue.
func (l *Learner) AddPending(uid string, s Shape) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.pending[uid]; ok {
		return
	}
	e := l.entry(s)
	if e.pending == 0 {
		l.stale = true
	}
	e.pending++
	l.pending[uid] = s.Key()
	l.pendingTotal++
}

// RemovePending forgets a pod that left the queue (placed or deleted).
func (l *Learner) RemovePending(uid string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.pending[uid]
	if !ok {
		return
	}
	delete(l.pending, uid)
	l.pendingTotal--
	if e := l.shapes[k]; e != nil {
		e.pending--
		if e.pending == 0 {
			l.stale = true
		}
	}
}

// Pending is the number of pods the look-ahead sees waiting.
func (l *Learner) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pendingTotal
}

// Demand returns the current demand, rebuilding it first when it is due.
func (l *Learner) Demand() *Demand {
	l.mu.Lock()
	if l.stale || l.since >= l.opts.Refresh {
		l.rebuild()
	}
	l.mu.Unlock()
	return l.cur.Load()
}

// Current returns the demand as last built, without rebuilding it.
func (l *Learner) Current() *Demand { return l.cur.Load() }

func (l *Learner) rebuild() {
	type cand struct {
		s Shape
		w float64
	}
	look := 0.0
	if l.pendingTotal > 0 && l.opts.LookAheadDepth > 0 {
		look = l.opts.LookAheadWeight * math.Min(1, float64(l.opts.LookAheadDepth)/float64(l.pendingTotal))
	}
	cands := make([]cand, 0, len(l.shapes))
	var total float64
	for k, e := range l.shapes {
		if e.pending == 0 && e.count < l.scale*forgotten {
			delete(l.shapes, k)
			continue
		}
		w := (e.count/l.scale + look*float64(e.pending)) * gpuWeight(&e.shape)
		if w <= 0 {
			continue
		}
		s := e.shape
		if e.count > 0 {
			s.Mem = int64(e.memSum / e.count)
		}
		cands = append(cands, cand{s, w})
		total += w
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].w != cands[j].w {
			return cands[i].w > cands[j].w
		}
		return cands[i].s.Key() < cands[j].s.Key()
	})
	var shapes []Shape
	var weights []float64
	var cum float64
	for _, c := range cands {
		if len(shapes) == l.opts.MaxShapes || cum >= l.opts.Coverage*total {
			break
		}
		shapes = append(shapes, c.s)
		weights = append(weights, c.w)
		cum += c.w
	}
	l.version++
	l.cur.Store(NewDemand(shapes, weights, l.version))
	l.since = 0
	l.stale = false
}

// forgotten is the weight, relative to the latest arrival's, below which a
// shape no pod waits for is dropped from the counts. Without it every shape
// ever seen would be kept for the scheduler's lifetime, and CPU and memory
// requests make many. A shape this light is below float64's precision next
// to that arrival in the total: with Coverage under 1 it can never be among
// the demand's shapes (those above it would have to leave more than the
// rest uncovered), and with Coverage 1 its weight rounds to 0 in the
// measure. With the default half-life a shape goes some 100,000 arrivals
// after its last pod; with no half-life nothing decays and every shape stays.
const forgotten = 0x1p-53

// uidRing remembers the last n pods seen.
type uidRing struct {
	set  map[string]struct{}
	ring []string
	next int
}

func (r *uidRing) init(n int) {
	r.set = make(map[string]struct{}, n)
	r.ring = make([]string, n)
}

func (r *uidRing) add(uid string) bool {
	if _, ok := r.set[uid]; ok {
		return false
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.set, old)
	}
	r.ring[r.next] = uid
	r.next = (r.next + 1) % len(r.ring)
	r.set[uid] = struct{}{}
	return true
}

// gpuWeight is how much one pod of the shape counts in the demand: the
// number of GPUs it takes. A pod that needs a whole 8-GPU node and cannot
// find one loses eight GPUs' worth of work, so its shape weighs as much as
// eight single-GPU pods; a share, a MIG instance and a CPU-only pod count
// once.
func gpuWeight(s *Shape) float64 {
	if s.MilliPerGPU >= gpu.MilliPerGPU && s.GPUs > 1 {
		return float64(s.GPUs)
	}
	return 1
}
