package spotrisk

import (
	"context"
	"math"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/pennysched/penny/pkg/pricing"
)

// Raw scores are expected micro-dollars per hour of useful work. Negative
// ones mark nodes that rank after every other: unpriced nodes, and Spot
// nodes for a pod that avoids Spot, which carry their cost below avoided
// (avoided - cost) so that, when nothing but Spot is feasible, the pod still
// takes the Spot pool where its work costs least, as the Expander ranks
// Spot options for it.
const (
	// unpriced nodes have no catalog price: they score last.
	unpriced int64 = -1
	// unpricedAvoided are unpriced Spot nodes for a pod that avoids Spot.
	unpricedAvoided int64 = -2
	// avoided and below are priced Spot nodes for a pod that avoids Spot.
	avoided int64 = -3
)

// PreScore implements fwk.PreScorePlugin. State comes from PreFilter.
func (pl *SpotRisk) PreScore(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodes []fwk.NodeInfo) *fwk.Status {
	if _, err := getState(cs); err != nil {
		return fwk.AsStatus(err)
	}
	return nil
}

// Prices is what the plugin prices nodes with: Deps.Prices, else the store
// of the catalog its args name (plugins.Registry hands it to the other
// profiles that name the same catalog).
func (pl *SpotRisk) Prices() pricing.PriceBook { return pl.prices }

// Cost is the expected price of one hour of the pod's useful work on a node:
// the pod's share of the node's marginal price (OpenCost split; reserved
// capacity is already paid, so 0) times 1 + reclaim rate x (work lost per
// reclaim + restart overhead). ok is false when the node has no price.
func (pl *SpotRisk) Cost(pod *corev1.Pod, class Class, usage pricing.Usage, node *corev1.Node) (float64, bool) {
	price, ok := pl.prices.NodePrice(node)
	if !ok {
		return 0, false
	}
	hourly := price.HourlyFor(usage)
	if usage.GPUMilli == 0 && price.GPUHourly > 0 {
		// A pod without GPUs on a GPU node takes CPU and memory the node
		// was bought to give its GPUs. The OpenCost split puts nearly all of
		// a GPU node's price on its GPUs, which would make GPU nodes look
		// like the cheapest place for CPU work; price the pod by the share
		// of the node it takes instead (its larger share of CPU or memory).
		hourly = price.NodeHourly * nodeShare(usage, node)
	}
	return pl.expected(hourly*price.MarginalFactor(), class, node, price), true
}

// nodeShare is the larger of the pod's shares of the node's allocatable CPU
// and memory.
func nodeShare(u pricing.Usage, node *corev1.Node) float64 {
	share := 0.0
	if c := node.Status.Allocatable.Cpu().MilliValue(); c > 0 {
		share = float64(u.CPUMilli) / float64(c)
	}
	if m := node.Status.Allocatable.Memory().Value(); m > 0 {
		share = max(share, float64(u.MemoryBytes)/float64(m))
	}
	return min(share, 1)
}

// expected turns an hourly price on a node into the expected price of an
// hour of useful work there, the work lost per reclaim taken from the
// runtime the expected-loss rule takes too (runtime).
func (pl *SpotRisk) expected(hourly float64, class Class, node *corev1.Node, price pricing.Price) float64 {
	rate := pl.reclaimRate(node, pricing.NodePool(node), price, true)
	run, _ := pl.runtime(class)
	return pricing.CostPerUsefulHour(hourly, rate, class.Work, run)
}

// rank is how Score ranks a node for a pod: its Cost, and whether the node
// is Spot the pod avoids, which ranks after every node that is not.
func (pl *SpotRisk) rank(pod *corev1.Pod, class Class, usage pricing.Usage, node *corev1.Node) (cost float64, avoided, ok bool) {
	cost, ok = pl.Cost(pod, class, usage, node)
	return cost, class.Policy == Avoid && pricing.NodeCapacity(node).IsSpot(), ok
}

// NodeCost is Score's measure of a pod on any node (rank), for PennyGang to
// choose where a whole gang goes by what its members' work costs there, as
// Score places each member within that choice. Nil when the pod's
// annotations are malformed: PreFilter rejects the pod, naming the
// annotation.
func (pl *SpotRisk) NodeCost(pod *corev1.Pod) func(node *corev1.Node) (cost float64, avoided, ok bool) {
	class, err := pl.classify(pod)
	if err != nil {
		return nil
	}
	usage := pricing.PodUsage(pod)
	return func(node *corev1.Node) (float64, bool, bool) { return pl.rank(pod, class, usage, node) }
}

// Score implements fwk.ScorePlugin.
func (pl *SpotRisk) Score(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	s, err := getState(cs)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	cost, avoids, ok := pl.rank(pod, s.class, s.usage, ni.Node())
	switch {
	case !ok && avoids:
		return unpricedAvoided, nil
	case !ok:
		return unpriced, nil
	case avoids:
		return avoided - microDollars(cost), nil
	}
	return microDollars(cost), nil
}

// maxMicroDollars caps a raw score so that NormalizeScore's arithmetic
// (MaxScore x a difference of two of them) cannot overflow: $7.2e10 an hour,
// beyond any real price.
const maxMicroDollars = int64(1) << 56

// microDollars is a cost in micro-dollars, saturated at maxMicroDollars (NaN
// included). Unbounded, one absurd catalog price or risk factor among the
// feasible nodes overflowed NormalizeScore: the other nodes' scores wrapped
// (an on-demand node and a Spot node a quarter of its price both scored 13),
// or fell outside 0..MaxScore, which fails the pod's scheduling cycle.
func microDollars(cost float64) int64 {
	m := math.Round(cost * 1e6)
	if !(m < float64(maxMicroDollars)) {
		return maxMicroDollars
	}
	return int64(m)
}

// ScoreExtensions implements fwk.ScorePlugin.
func (pl *SpotRisk) ScoreExtensions() fwk.ScoreExtensions { return pl }

// NormalizeScore maps the cheapest node to MaxScore and the dearest to
// 0, linearly; unpriced nodes get 0, and so do Spot nodes for a pod that
// avoids Spot while any node that is not Spot is feasible. When every feasible
// priced node is such a Spot node, they are ranked among themselves by
// cost: an avoiding pod that fell back to Spot goes where its work costs
// least, not wherever packing puts it. When every node ranked costs the
// same, they all get MaxScore.
func (pl *SpotRisk) NormalizeScore(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, scores fwk.NodeScoreList) *fwk.Status {
	spotOnly := true
	for _, s := range scores {
		if s.Score > unpricedAvoided {
			spotOnly = false
			break
		}
	}
	// cost is a node's cost in the ranking in force; ok false for a node
	// left out of it (score 0).
	cost := func(s int64) (int64, bool) {
		switch {
		case s >= 0:
			return s, true
		case s <= avoided && spotOnly:
			return avoided - s, true
		}
		return 0, false
	}
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, s := range scores {
		if c, ok := cost(s.Score); ok {
			lo, hi = min(lo, c), max(hi, c)
		}
	}
	for i := range scores {
		c, ok := cost(scores[i].Score)
		switch {
		case !ok:
			scores[i].Score = 0
		case hi == lo:
			scores[i].Score = fwk.MaxScore
		default:
			scores[i].Score = fwk.MaxScore * (hi - c) / (hi - lo)
		}
	}
	return nil
}
