package spotrisk

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

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

// scoreKey holds the pod's scoreState.
const scoreKey fwk.StateKey = Name + "/score"

// scoreState is what Score reads for the pod on every node: its class and
// usage, how long it is taken to run (runtime), and, per pool, the price
// and reclaim rate of its first node scored (poolMemo).
type scoreState struct {
	class Class
	usage pricing.Usage
	run   time.Duration
	pools *poolMemo[*poolPrice]
	// known is the cycle's nodes' keys (nodeKeys) with what pools kept for
	// each; nil without a memo, and outside Score (NodeCost).
	known *scoredPools
}

// Clone is not needed: Score runs after the cycle's last Filter, and
// preemption never scores.
func (s *scoreState) Clone() fwk.StateData { return s }

// scoreStateFor is a pod's scoreState for one cycle, or for one call of
// PennyGang's placement (NodeCost).
func (pl *SpotRisk) scoreStateFor(class Class, usage pricing.Usage) *scoreState {
	run, _ := pl.runtime(class)
	return &scoreState{class: class, usage: usage, run: run, pools: newPoolMemo[*poolPrice](pl.prices)}
}

// PreScore implements fwk.PreScorePlugin: it fixes what Score reads on
// every node (scoreState) from PreFilter's state.
func (pl *SpotRisk) PreScore(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, nodes []fwk.NodeInfo) *fwk.Status {
	s, err := getState(cs)
	if err != nil {
		return fwk.AsStatus(err)
	}
	ss := pl.scoreStateFor(s.class, s.usage)
	if ss.pools != nil {
		total := 0
		if h := pl.handle; h != nil && h.SnapshotSharedLister() != nil {
			if all, err := h.SnapshotSharedLister().NodeInfos().List(); err == nil {
				total = len(all)
			}
		}
		pl.nodeKeys.update(nodes, total)
		ss.known = &scoredPools{nodes: &pl.nodeKeys, prices: make([]atomic.Pointer[poolPrice], len(pl.nodeKeys.keys))}
	}
	cs.Write(scoreKey, ss)
	return nil
}

// Prices is what the plugin prices nodes with: Deps.Prices, else the store
// of the catalog its args name (plugins.Registry hands it to the other
// profiles that name the same catalog).
func (pl *SpotRisk) Prices() pricing.PriceBook { return pl.prices }

// Cost is the expected price of one hour of the pod's useful work on a node
// (cost). ok is false when the node has no price.
func (pl *SpotRisk) Cost(pod *corev1.Pod, class Class, usage pricing.Usage, node *corev1.Node) (float64, bool) {
	run, _ := pl.runtime(class)
	cost, _, ok := pl.rank(&scoreState{class: class, usage: usage, run: run}, node)
	return cost, ok
}

// poolPrice is a node's price and, when it has one, its reclaim rate: the
// same for every node of its poolKey.
type poolPrice struct {
	price  pricing.Price
	priced bool
	rate   float64
}

// poolPrice prices node, of key k, and reads its pool's reclaim rate, which
// Filter's risk rules weigh for an unpriced Spot node too.
func (pl *SpotRisk) poolPrice(node *corev1.Node, k poolKey) *poolPrice {
	price, ok := pl.prices.NodePrice(node)
	return &poolPrice{price: price, priced: ok, rate: pl.reclaimRate(node, k.Pool, price, ok)}
}

// cost is the expected price of one hour of the pod's useful work on a node
// priced p: the pod's share of the node's marginal price (OpenCost split;
// reserved capacity is already paid, so 0) times 1 + reclaim rate x (work
// lost per reclaim + restart overhead), the work lost per reclaim taken
// from the runtime the expected-loss rule takes too (runtime).
func cost(s *scoreState, node *corev1.Node, p *poolPrice) float64 {
	hourly := p.price.HourlyFor(s.usage)
	if s.usage.GPUMilli == 0 && p.price.GPUHourly > 0 {
		// A pod without GPUs on a GPU node takes CPU and memory the node
		// was bought to give its GPUs. The OpenCost split puts nearly all of
		// a GPU node's price on its GPUs, which would make GPU nodes look
		// like the cheapest place for CPU work; price the pod by the share
		// of the node it takes instead (its larger share of CPU or memory).
		hourly = p.price.NodeHourly * nodeShare(s.usage, node)
	}
	return pricing.CostPerUsefulHour(hourly*p.price.MarginalFactor(), p.rate, s.class.Work, s.run)
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

// rank is how Score ranks a node for a pod: its cost, and whether the node
// is Spot the pod avoids, which ranks after every node that is not. The
// node's labels are read once, for its poolKey.
func (pl *SpotRisk) rank(s *scoreState, node *corev1.Node) (c float64, avoided, ok bool) {
	k := poolKeyOf(node, pricing.NodeCapacity(node))
	p, _ := s.pools.get(k, func() *poolPrice { return pl.poolPrice(node, k) })
	return rankPriced(s, node, k, p)
}

// rankKnown is rank for a node whose key PreScore kept (nodeKeys), by its
// id: the node's labels are not read, and the memo only by the first node
// of each key.
func (pl *SpotRisk) rankKnown(s *scoreState, node *corev1.Node, id int32) (c float64, avoided, ok bool) {
	k := &s.known.nodes.keys[id]
	slot := &s.known.prices[id]
	p := slot.Load()
	if p == nil {
		p, _ = s.pools.get(*k, func() *poolPrice { return pl.poolPrice(node, *k) })
		slot.Store(p)
	}
	return rankPriced(s, node, *k, p)
}

// rankPriced is rank for a node of key k priced p.
func rankPriced(s *scoreState, node *corev1.Node, k poolKey, p *poolPrice) (c float64, avoided, ok bool) {
	avoided = s.class.Policy == Avoid && k.Capacity == pricing.Spot
	if !p.priced {
		return 0, avoided, false
	}
	return cost(s, node, p), avoided, true
}

// NodeCost is Score's measure of a pod on any node (rank), for PennyGang to
// choose where a whole gang goes by what its members' work costs there, as
// Score places each member within that choice. PennyGang asks it within
// one cycle: like Score's, its prices and rates are read once per pool.
// Nil when the pod's annotations are malformed: PreFilter rejects the pod,
// naming the annotation. Pods alike cost the same on every node: the
// price reads the pod's class (its runtime and learned run length
// included) and requests, whatever annotations gave them.
func (pl *SpotRisk) NodeCost(pod *corev1.Pod) (cost func(node *corev1.Node) (cost float64, avoided, ok bool), alike string) {
	class, err := pl.classify(pod)
	if err != nil {
		return nil, ""
	}
	usage := pricing.PodUsage(pod)
	s := pl.scoreStateFor(class, usage)
	return func(node *corev1.Node) (float64, bool, bool) { return pl.rank(s, node) }, fmt.Sprintf("%+v|%+v", class, usage)
}

// Score implements fwk.ScorePlugin.
func (pl *SpotRisk) Score(ctx context.Context, cs fwk.CycleState, pod *corev1.Pod, ni fwk.NodeInfo) (int64, *fwk.Status) {
	s, err := readState[*scoreState](cs, scoreKey)
	if err != nil {
		return 0, fwk.AsStatus(err)
	}
	if s.known != nil {
		if id, ok := s.known.nodes.lookup(ni); ok && int(id) < len(s.known.prices) {
			return rawScore(pl.rankKnown(s, ni.Node(), id)), nil
		}
	}
	return rawScore(pl.rank(s, ni.Node())), nil
}

// rawScore is Score's raw score of a node that rank prices at cost.
func rawScore(cost float64, avoids, ok bool) int64 {
	switch {
	case !ok && avoids:
		return unpricedAvoided
	case !ok:
		return unpriced
	case avoids:
		return avoided - microDollars(cost)
	}
	return microDollars(cost)
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
