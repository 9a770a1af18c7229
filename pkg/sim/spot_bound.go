package sim

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
	"github.com/pennysched/penny/plugins/spotrisk"
)

// BillBound is a lower bound on the bill of any policy that keeps
// never-class pods off Spot and starts each trace pod when it arrives, for
// its trace duration, on the scenario's fleet: what a scheduler that knew the future and could move
// running pods for free would still pay. It relaxes everything a real one
// cannot: pools have no max, nodes join and leave at once, pods split across
// nodes by resource totals, nothing is reclaimed, and a GPU holds shares up
// to a whole GPU whatever their sizes, except that two shares over half a
// GPU never fit one GPU. docs/spot.md#lower-bound says how it is computed.
type BillBound struct {
	BillUSD float64 `json:"bill_usd"`
	// FixedUSD is the pools' min nodes for the trace's span: every policy
	// pays it.
	FixedUSD float64 `json:"fixed_usd"`
	// NeverUSD is the whole non-Spot nodes beyond those that never-class
	// pods need, at every moment the cheapest such set.
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

// BillLowerBound computes the bound for the trace on the scenario's fleet,
// with the classes the seed draws.
func BillLowerBound(sc *SpotScenario, tr *Trace, seed uint64) (*BillBound, error) {
	var nonSpot, all []boundPool
	var fixed [3]int64
	var fixedNonSpot [3]int64
	var fixedHourly float64
	seen := map[boundPool]bool{}
	for i := range sc.Pools {
		p := &sc.Pools[i]
		_, price, size, err := sc.poolShape(p)
		if err != nil {
			return nil, err
		}
		bp := boundPool{size: [3]int64{size.GPUMilli / gpu.MilliPerGPU, size.CPUMilli, size.MemoryBytes}, hourly: price.NodeHourly}
		fixedHourly += float64(p.Min) * bp.hourly
		for r := range fixed {
			fixed[r] += int64(p.Min) * bp.size[r]
			if !(p.capacity == pricing.Spot) {
				fixedNonSpot[r] += int64(p.Min) * bp.size[r]
			}
		}
		all = append(all, bp)
		// Pools alike but for zone or name are one choice.
		if !(p.capacity == pricing.Spot) && !seen[bp] {
			nonSpot = append(nonSpot, bp)
			seen[bp] = true
		}
	}
	// Largest nodes first: their counts range least, and the last pool's
	// count is worked out rather than tried.
	sort.SliceStable(nonSpot, func(i, j int) bool { return nonSpot[i].size[0] > nonSpot[j].size[0] })
	// The lowest price per unit of each resource any pool charges.
	var unit [3]float64
	for r := range unit {
		unit[r] = math.Inf(1)
		for _, p := range all {
			if p.size[r] > 0 {
				unit[r] = min(unit[r], p.hourly/float64(p.size[r]))
			}
		}
	}

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
		if tp.Withdraw > 0 {
			b.LeftOut++
			continue
		}
		p := tp.Pod.DeepCopy()
		sc.annotate(p, tp.Duration, seed)
		class, err := spotrisk.ClassOf(p, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		r, err := gpu.ParsePodRequest(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tp.Source, err)
		}
		u := pricing.PodUsage(p)
		never := class.Policy == spotrisk.Never
		pools := all
		if never {
			pools = nonSpot
		}
		if !anyHolds(pools, u) {
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

	type key struct{ never, all demand }
	memo := map[key][2]float64{}
	var never, every demand
	var last time.Duration
	for _, c := range changes {
		if dt := (c.at - last).Hours(); dt > 0 {
			k := key{never, every}
			cost, ok := memo[k]
			if !ok {
				cost = cheapestCover(nonSpot, sub(never.need(), fixedNonSpot), sub(every.need(), fixed), unit)
				memo[k] = cost
			}
			b.NeverUSD += dt * cost[0]
			b.RestUSD += dt * cost[1]
			last = c.at
		}
		if c.never {
			never.add(c.r, c.u, c.sign)
		}
		every.add(c.r, c.u, c.sign)
	}
	b.HorizonHours = horizon.Hours()
	b.FixedUSD = fixedHourly * b.HorizonHours
	b.BillUSD = b.FixedUSD + b.NeverUSD + b.RestUSD
	return b, nil
}

func sub(a, b [3]int64) [3]int64 {
	return [3]int64{max(0, a[0]-b[0]), max(0, a[1]-b[1]), max(0, a[2]-b[2])}
}

// anyHolds says whether an empty node of one of the pools has room for the
// pod.
func anyHolds(pools []boundPool, u pricing.Usage) bool {
	for _, p := range pools {
		if spotrisk.SlotsIn(u, p.size[1], p.size[2], p.size[0]) > 0 {
			return true
		}
	}
	return false
}

// cheapestCover is the least a moment costs: whole non-Spot nodes that
// cover the never-class pods' need, and what all pods need beyond every
// node's room at the unit prices. It returns the two parts.
//
// Trying each non-Spot pool's count up to what covers the need alone is
// enough: a node past that count covers nothing the others lack, and its
// room takes at most its own price off the rest (unit prices are each the
// lowest any pool charges).
func cheapestCover(pools []boundPool, neverNeed, allNeed [3]int64, unit [3]float64) [2]float64 {
	best := [2]float64{math.Inf(1), math.Inf(1)}
	rest := func(cap [3]int64) float64 {
		var worst float64
		for r, n := range sub(allNeed, cap) {
			if n > 0 {
				worst = max(worst, float64(n)*unit[r])
			}
		}
		return worst
	}
	// least[i] is the lowest price per unit of each resource among
	// pools[i:]: what is left to cover costs at least that, so a branch that
	// cannot beat the best found is not followed.
	least := make([][3]float64, len(pools)+1)
	least[len(pools)] = [3]float64{math.Inf(1), math.Inf(1), math.Inf(1)}
	for i := len(pools) - 1; i >= 0; i-- {
		for r := range least[i] {
			least[i][r] = least[i+1][r]
			if pools[i].size[r] > 0 {
				least[i][r] = min(least[i][r], pools[i].hourly/float64(pools[i].size[r]))
			}
		}
	}
	var try func(i int, left [3]int64, cost float64, cap [3]int64)
	try = func(i int, left [3]int64, cost float64, cap [3]int64) {
		floor := cost
		for r, n := range left {
			if n > 0 {
				floor = max(floor, cost+float64(n)*least[i][r])
			}
		}
		if floor >= best[0]+best[1] {
			return
		}
		if left == ([3]int64{}) {
			if r := rest(cap); cost+r < best[0]+best[1] {
				best = [2]float64{cost, r}
			}
			return
		}
		if i == len(pools) {
			return
		}
		p := pools[i]
		var most int64
		for r, n := range left {
			if n > 0 && p.size[r] > 0 {
				most = max(most, (n+p.size[r]-1)/p.size[r])
			}
		}
		from := int64(0)
		if i == len(pools)-1 {
			from = most // the last pool must cover what is left
		}
		for n := from; n <= most; n++ {
			var l, c [3]int64
			for r := range left {
				l[r] = max(0, left[r]-n*p.size[r])
				c[r] = cap[r] + n*p.size[r]
			}
			try(i+1, l, cost+float64(n)*p.hourly, c)
		}
	}
	try(0, neverNeed, 0, [3]int64{})
	if math.IsInf(best[0], 1) {
		// Not reached: pods no non-Spot pool can hold are left out, and
		// pools have no max here, so what the others need can be covered.
		return [2]float64{0, rest([3]int64{})}
	}
	return best
}
