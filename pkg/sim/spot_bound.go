package sim

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// BillBound is a lower bound on the bill of any policy that keeps
// never-class pods off Spot and starts each trace pod when it arrives, for
// its trace duration, on the scenario's fleet: what a scheduler that knew
// the future and could move running pods for free would still pay. It
// relaxes everything a real one cannot: pools have no max, nodes join and
// leave at once, pods split across nodes by resource totals, nothing is
// reclaimed, and a GPU holds shares up to a whole GPU whatever their sizes,
// except that two shares over half a GPU never fit one GPU.
// docs/spot.md#lower-bound says how it is computed.
type BillBound struct {
	BillUSD float64 `json:"bill_usd"`
	// FixedUSD is the pools' min nodes for the trace's span: every policy
	// pays it.
	FixedUSD float64 `json:"fixed_usd"`
	// NeverUSD is the whole non-Spot nodes beyond the min ones that
	// never-class pods need, at every moment the cheapest such set.
	NeverUSD float64 `json:"never_usd"`
	// RestUSD is the other pods' GPUs, CPU or memory beyond what those
	// nodes leave, at the lowest price per GPU, vCPU or byte any pool
	// charges (the dearest of the three).
	RestUSD      float64 `json:"rest_usd"`
	HorizonHours float64 `json:"horizon_hours"`
	// LeftOut counts pods the bound leaves out: never started by the
	// trace (withdrawn), or too large for every pool they may use.
	LeftOut int `json:"left_out"`
}

// demand is what a set of running pods asks for. GPU shares are kept apart
// by size, for need.
type demand struct {
	wholeGPUs int64
	// bigShares counts shares over half a GPU, bigRoom the thousandths
	// they leave free on their GPUs, smallMilli the thousandths of the
	// shares of at most half a GPU.
	bigShares, bigRoom, smallMilli int64
	cpuMilli, memBytes             int64
}

// add adds (sign 1) or removes (sign -1) a pod's request.
func (d *demand) add(r gpu.Request, u pricing.Usage, sign int64) {
	d.cpuMilli += sign * u.CPUMilli
	d.memBytes += sign * u.MemoryBytes
	d.wholeGPUs += sign * r.GPUs
	share := r.TotalMilli() - r.GPUs*gpu.MilliPerGPU
	switch {
	case share > gpu.MilliPerGPU/2:
		d.bigShares += sign
		d.bigRoom += sign * (gpu.MilliPerGPU - share)
	case share > 0:
		d.smallMilli += sign * share
	}
}

// need is the fewest GPUs, vCPU thousandths and bytes that can hold the
// demand: each share over half a GPU takes a GPU of its own, and the smaller
// ones fill what those leave before they take more.
func (d demand) need() [3]int64 {
	small := max(0, d.smallMilli-d.bigRoom)
	return [3]int64{d.wholeGPUs + d.bigShares + (small+gpu.MilliPerGPU-1)/gpu.MilliPerGPU, d.cpuMilli, d.memBytes}
}

// boundPool is a pool's node shape and price, for the bound.
type boundPool struct {
	size   [3]int64 // GPUs, vCPU thousandths, bytes of an empty node
	hourly float64
}

// boundFleet is what the bound knows of the scenario's pools.
type boundFleet struct {
	// gpuPools and cpuPools are the non-Spot pools with and without GPUs,
	// alike ones once; gpuPools largest first.
	gpuPools, cpuPools []boundPool
	// all is every pool, for what may run anywhere.
	all []boundPool
	// fixed is the room of every pool's min nodes; fixedGPU and fixedCPU
	// that of the non-Spot ones with and without GPUs.
	fixed, fixedGPU, fixedCPU [3]int64
	fixedHourly               float64
	// unit is the lowest price per unit of each resource of any pool.
	unit [3]float64
	// gpuLeast[i] and cpuLeast[i] are the lowest unit prices among
	// gpuPools[i:] and cpuPools[i:].
	gpuLeast, cpuLeast [][3]float64
	// tainted: GPU nodes are tainted, so pods without GPUs stay off them.
	tainted bool
}

func newBoundFleet(sc *SpotScenario) (*boundFleet, error) {
	f := &boundFleet{tainted: sc.GPUTaint}
	seen := map[boundPool]bool{}
	for i := range sc.Pools {
		p := &sc.Pools[i]
		_, price, size, err := sc.poolShape(p)
		if err != nil {
			return nil, err
		}
		bp := boundPool{size: [3]int64{size.GPUMilli / gpu.MilliPerGPU, size.CPUMilli, size.MemoryBytes}, hourly: price.NodeHourly}
		f.all = append(f.all, bp)
		f.fixedHourly += float64(p.Min) * bp.hourly
		offSpot := p.capacity != pricing.Spot
		for r := range f.fixed {
			f.fixed[r] += int64(p.Min) * bp.size[r]
			switch {
			case offSpot && bp.size[0] > 0:
				f.fixedGPU[r] += int64(p.Min) * bp.size[r]
			case offSpot:
				f.fixedCPU[r] += int64(p.Min) * bp.size[r]
			}
		}
		// Pools alike but for zone or name are one choice.
		if !offSpot || seen[bp] {
			continue
		}
		seen[bp] = true
		if bp.size[0] > 0 {
			f.gpuPools = append(f.gpuPools, bp)
		} else {
			f.cpuPools = append(f.cpuPools, bp)
		}
	}
	// Largest nodes first: their counts range least.
	sort.SliceStable(f.gpuPools, func(i, j int) bool { return f.gpuPools[i].size[0] > f.gpuPools[j].size[0] })
	f.unit = leastUnitPrices(f.all)
	f.gpuLeast, f.cpuLeast = suffixLeast(f.gpuPools), suffixLeast(f.cpuPools)
	return f, nil
}

// leastUnitPrices is the lowest price per GPU, vCPU thousandth and byte
// among the pools; +Inf for a resource none has.
func leastUnitPrices(pools []boundPool) [3]float64 {
	unit := [3]float64{math.Inf(1), math.Inf(1), math.Inf(1)}
	for _, p := range pools {
		for r := range unit {
			if p.size[r] > 0 {
				unit[r] = min(unit[r], p.hourly/float64(p.size[r]))
			}
		}
	}
	return unit
}

// suffixLeast is leastUnitPrices of pools[i:] for every i.
func suffixLeast(pools []boundPool) [][3]float64 {
	out := make([][3]float64, len(pools)+1)
	for i := range out {
		out[i] = leastUnitPrices(pools[i:])
	}
	return out
}

// holds says whether an empty node of one of the pools has room for the
// pod; a pod without GPUs does not count GPU nodes the fleet taints.
func (f *boundFleet) holds(pools []boundPool, u pricing.Usage) bool {
	for _, p := range pools {
		if f.tainted && u.GPUMilli == 0 && p.size[0] > 0 {
			continue
		}
		if spotrisk.SlotsIn(u, p.size[1], p.size[2], p.size[0]) > 0 {
			return true
		}
	}
	return false
}

// BillLowerBound computes the bound for the trace on the scenario's fleet,
// with the classes the seed draws.
func BillLowerBound(sc *SpotScenario, tr *Trace, seed uint64, classArgs *spotrisk.Args) (*BillBound, error) {
	f, err := newBoundFleet(sc)
	if err != nil {
		return nil, err
	}
	nonSpot := append(slices.Clip(f.gpuPools), f.cpuPools...)
	type change struct {
		at    time.Duration
		never bool
		r     gpu.Request
		u     pricing.Usage
		sign  int64
	}
	b := &BillBound{}
	var changes []change
	var horizon time.Duration
	for i := range tr.Pods {
		tp := &tr.Pods[i]
		if tp.Withdraws {
			b.LeftOut++
			continue
		}
		p := tp.Pod.DeepCopy()
		sc.annotate(p, tp.Duration, seed)
		class, err := spotrisk.ClassOf(p, classArgs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		r, err := gpu.ParsePodRequest(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		u := pricing.PodUsage(p)
		never := class.Policy == spotrisk.Never
		pools := f.all
		if never {
			pools = nonSpot
		}
		if !f.holds(pools, u) {
			b.LeftOut++
			continue
		}
		end := tp.Arrival + tp.Duration
		horizon = max(horizon, end)
		changes = append(changes, change{tp.Arrival, never, r, u, 1}, change{end, never, r, u, -1})
	}
	// Departures before arrivals at the same instant: the two never overlap.
	sort.SliceStable(changes, func(i, j int) bool {
		if changes[i].at != changes[j].at {
			return changes[i].at < changes[j].at
		}
		return changes[i].sign < changes[j].sign
	})

	// The never-class pods with GPUs and without, and every pod.
	type key struct{ gpuPods, cpuPods, all demand }
	memo := map[key][2]float64{}
	var k key
	var last time.Duration
	for _, c := range changes {
		if dt := (c.at - last).Hours(); dt > 0 {
			cost, ok := memo[k]
			if !ok {
				cost = f.cheapest(k.gpuPods.need(), k.cpuPods.need(), k.all.need())
				memo[k] = cost
			}
			b.NeverUSD += dt * cost[0]
			b.RestUSD += dt * cost[1]
			last = c.at
		}
		switch {
		case c.never && c.u.GPUMilli > 0:
			k.gpuPods.add(c.r, c.u, c.sign)
		case c.never:
			k.cpuPods.add(c.r, c.u, c.sign)
		}
		k.all.add(c.r, c.u, c.sign)
	}
	b.HorizonHours = horizon.Hours()
	b.FixedUSD = f.fixedHourly * b.HorizonHours
	b.BillUSD = b.FixedUSD + b.NeverUSD + b.RestUSD
	return b, nil
}

func sub(a, b [3]int64) [3]int64 {
	return [3]int64{max(0, a[0]-b[0]), max(0, a[1]-b[1]), max(0, a[2]-b[2])}
}

func plus(a, b [3]int64) [3]int64 { return [3]int64{a[0] + b[0], a[1] + b[1], a[2] + b[2]} }

// cheapest is the least a moment costs, in two parts: whole non-Spot nodes
// beyond the min ones for the never-class pods, and what all pods need
// beyond every node's room at the unit prices.
//
// Never-class pods with GPUs need GPU nodes that hold their GPUs, CPU and
// memory; those without need CPU nodes, or (on a fleet that does not taint
// GPU nodes) any room left. Trying each pool's count up to what covers the
// need it serves alone is enough: a node past that count covers nothing
// the others lack, and its room takes at most its own price off the rest
// (unit prices are each the lowest any pool charges).
func (f *boundFleet) cheapest(gpuPods, cpuPods, all [3]int64) [2]float64 {
	best := [2]float64{math.Inf(1), math.Inf(1)}
	allLeft := sub(all, f.fixed)
	rest := func(room [3]int64) float64 {
		var worst float64
		for r, n := range sub(allLeft, room) {
			if n > 0 {
				worst = max(worst, float64(n)*f.unit[r])
			}
		}
		return worst
	}
	// search tries counts of pools[i:] for what is left (each up to what
	// covers most alone), with room the chosen nodes' and cost their price,
	// and calls done with each set that covers it.
	var search func(pools []boundPool, least [][3]float64, i int, left, most [3]int64, room [3]int64, cost float64, done func(room [3]int64, cost float64))
	search = func(pools []boundPool, least [][3]float64, i int, left, most [3]int64, room [3]int64, cost float64, done func(room [3]int64, cost float64)) {
		// What is left costs at least its dearest resource at the lowest
		// unit price: a branch that cannot beat the best is not followed.
		floor := cost
		for r, n := range left {
			if n > 0 {
				floor = max(floor, cost+float64(n)*least[i][r])
			}
		}
		if floor >= best[0]+best[1] {
			return
		}
		if i == len(pools) {
			if left == ([3]int64{}) {
				done(room, cost)
			}
			return
		}
		p := pools[i]
		var upTo int64
		for r, n := range most {
			if n > 0 && p.size[r] > 0 {
				upTo = max(upTo, (n+p.size[r]-1)/p.size[r])
			}
		}
		for n := int64(0); n <= upTo; n++ {
			var l, m, rm [3]int64
			for r := range left {
				l[r] = max(0, left[r]-n*p.size[r])
				m[r] = max(0, most[r]-n*p.size[r])
				rm[r] = room[r] + n*p.size[r]
			}
			search(pools, least, i+1, l, m, rm, cost+float64(n)*p.hourly, done)
		}
	}
	gpuNeed := sub(gpuPods, f.fixedGPU)
	// Without the taint, pods without GPUs may use GPU nodes' spare room,
	// so GPU nodes may be worth adding up to what covers every service.
	most := gpuNeed
	if !f.tainted {
		most = sub(plus(gpuPods, cpuPods), plus(f.fixedGPU, f.fixedCPU))
	}
	search(f.gpuPools, f.gpuLeast, 0, gpuNeed, most, [3]int64{}, 0, func(room [3]int64, cost float64) {
		cpuNeed := sub(cpuPods, f.fixedCPU)
		if !f.tainted {
			spare := sub(plus(room, f.fixedGPU), gpuPods)
			cpuNeed = sub(cpuNeed, spare)
		}
		search(f.cpuPools, f.cpuLeast, 0, cpuNeed, cpuNeed, room, cost, func(room [3]int64, cost float64) {
			if r := rest(room); cost+r < best[0]+best[1] {
				best = [2]float64{cost, r}
			}
		})
	})
	if math.IsInf(best[0], 1) {
		// Not reached: pods no non-Spot pool can hold are left out, and
		// pools have no max here, so what they need can be covered.
		return [2]float64{0, rest([3]int64{})}
	}
	return best
}
