package spotrisk

import (
	"context"
	"math"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

// Expander ranks node pools for an autoscaler by SpotRisk's own measure
// applied to a new node: the expected price of the pod's useful work per
// pod slot, i.e. the node's marginal price over how many pods like this one
// the node holds, times 1 + reclaim rate x (work lost per reclaim + restart
// overhead). Dividing by slots is how the plugin's share-of-node cost looks
// from a node that does not exist yet: the packing score fills the rest of
// the node with the pods that follow, but never with more pods than could
// use it (RankOptions). The simulator's elastic fleet asks it, and
// ExpanderServer serves it to Cluster Autoscaler's gRPC expander.
type Expander struct {
	pl *SpotRisk
}

// NewExpander builds an expander from the plugin's args and deps (the same
// price book and risk model the plugin uses).
func NewExpander(ctx context.Context, args runtime.Object, deps Deps) (*Expander, error) {
	p, err := New(ctx, args, nil, deps)
	if err != nil {
		return nil, err
	}
	return &Expander{pl: p.(*SpotRisk)}, nil
}

// Rank orders node templates (one per pool, each already passing the pod's
// filters) best first: Spot last for pods that avoid it, then by expected
// cost of the pod's work per slot, then by node price; unpriced templates
// come last. It fails only on a malformed pod annotation. Rank assumes every
// slot fills; RankOptions knows better when told the pod's peers.
func (x *Expander) Rank(pod *corev1.Pod, templates []*corev1.Node) ([]int, error) {
	opts := make([]Option, len(templates))
	for i, n := range templates {
		opts[i] = Option{Node: n}
	}
	return x.RankOptions(pod, opts)
}

// Option is one way to grow the fleet for a pending pod: a template node
// of a pool and the other pods that could share a node of it.
type Option struct {
	Node *corev1.Node
	// Peers are the requests (pricing.PodUsage) of the other pods, pending
	// or running, that could share a new node of this pool with the pod
	// (they pass their filters on the template; pending ones of any Spot
	// policy, as BestOptions takes an option's pods, running ones services
	// of the pod's policy). Nil means unknown: the node is assumed to fill
	// with pods like this one.
	Peers []pricing.Usage
}

// RankOptions is Rank knowing which pods could share each new node. A node
// is never counted as holding more pods than exist to fill it: the slots of
// a template are capped by how many of the pod and its peers fit on it
// together (packed first-fit). A node eight times the size of the
// workload that can use it is dearer per pod than one that it fills.
func (x *Expander) RankOptions(pod *corev1.Pod, options []Option) ([]int, error) {
	class, err := x.pl.classify(pod)
	if err != nil {
		return nil, err
	}
	keys := make([]optionKey, len(options))
	usage := pricing.PodUsage(pod)
	for i, o := range options {
		keys[i] = x.key(class, usage, o)
	}
	order := make([]int, len(options))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return keys[order[a]].less(keys[order[b]]) })
	return order, nil
}

// optionKey is how one option ranks for a pod: Spot last for a pod that
// avoids it, then by the expected cost of the pod's work per slot, then by
// the node's price. Unpriced and useless options cost +Inf. An option for
// several pods (ExpanderServer.BestOptions) ranks by its regret first.
type optionKey struct {
	avoided bool
	// unpriced says the catalog has no price for the option's node: its
	// costs are +Inf, and BestOptions leaves it to the next expander.
	unpriced bool
	// regret is what the option's pods pay on it beyond their cheapest
	// option each, summed; 0 where one pod is ranked.
	regret float64
	cost   float64
	price  float64
}

func (k optionKey) less(o optionKey) bool {
	if k.avoided != o.avoided {
		return !k.avoided
	}
	if k.regret != o.regret {
		return k.regret < o.regret
	}
	if k.cost != o.cost {
		return k.cost < o.cost
	}
	return k.price < o.price
}

// key prices option o for a pod of the class with the given usage.
func (x *Expander) key(class Class, usage pricing.Usage, o Option) optionKey {
	n := o.Node
	k := poolKeyOf(n, pricing.NodeCapacity(n))
	// Spot a pod avoids ranks after every other option, priced or not.
	avoided := class.Policy == Avoid && k.Capacity == pricing.Spot
	p := x.pl.poolPrice(n, k)
	if !p.priced {
		return optionKey{avoided: avoided, unpriced: true, cost: math.Inf(1), price: math.Inf(1)}
	}
	slots := float64(Slots(usage, n))
	if o.Peers != nil && slots > 0 {
		slots = min(slots, float64(Fill(n, append([]pricing.Usage{usage}, o.Peers...))))
	}
	if slots <= 0 {
		return optionKey{avoided: avoided, cost: math.Inf(1), price: math.Inf(1)}
	}
	// Priced as Score prices a node (cost), the pod's share being a slot
	// of the new node.
	run, _ := x.pl.runtime(class)
	return optionKey{
		avoided: avoided,
		cost:    pricing.CostPerUsefulHour(p.price.Marginal()/slots, p.rate, class.Work, run),
		price:   p.price.Marginal(),
	}
}

// Slots is how many pods with this usage an empty node holds: the fewest
// over CPU, memory and GPUs (a share of one GPU counts per GPU, since a
// share cannot span two).
func Slots(u pricing.Usage, node *corev1.Node) int64 {
	alloc := node.Status.Allocatable
	g := alloc[gpu.ResourceGPU]
	return SlotsIn(u, alloc.Cpu().MilliValue(), alloc.Memory().Value(), g.Value())
}

// SlotsIn is Slots for the given millicores, bytes of memory and whole GPUs
// (a node's free room, say); 1 for a pod that asks for nothing.
func SlotsIn(u pricing.Usage, milliCPU, memBytes, gpus int64) int64 {
	n := int64(math.MaxInt64)
	if u.CPUMilli > 0 {
		n = min(n, milliCPU/u.CPUMilli)
	}
	if u.MemoryBytes > 0 {
		n = min(n, memBytes/u.MemoryBytes)
	}
	if u.GPUMilli > 0 {
		if u.GPUMilli < gpu.MilliPerGPU {
			n = min(n, gpus*(gpu.MilliPerGPU/u.GPUMilli))
		} else {
			n = min(n, gpus*gpu.MilliPerGPU/u.GPUMilli)
		}
	}
	if n == math.MaxInt64 {
		n = 1
	}
	return n
}

// Fill is how many of the pods (their requests), taken in order, an empty
// node holds: each pod goes on if its CPU, memory and GPUs still fit (whole
// GPUs on free GPUs, a share on the first GPU with room for it), else it is
// skipped.
func Fill(node *corev1.Node, pods []pricing.Usage) int {
	alloc := node.Status.Allocatable
	cpu, mem := alloc.Cpu().MilliValue(), alloc.Memory().Value()
	g := alloc[gpu.ResourceGPU]
	free := make([]int64, g.Value())
	for k := range free {
		free[k] = gpu.MilliPerGPU
	}
	n := 0
	for _, u := range pods {
		if u.CPUMilli > cpu || u.MemoryBytes > mem {
			continue
		}
		switch {
		case u.GPUMilli >= gpu.MilliPerGPU:
			need := u.GPUMilli / gpu.MilliPerGPU
			var take []int
			for k := range free {
				if int64(len(take)) < need && free[k] == gpu.MilliPerGPU {
					take = append(take, k)
				}
			}
			if int64(len(take)) < need {
				continue
			}
			for _, k := range take {
				free[k] = 0
			}
		case u.GPUMilli > 0:
			k := 0
			for k < len(free) && free[k] < u.GPUMilli {
				k++
			}
			if k == len(free) {
				continue
			}
			free[k] -= u.GPUMilli
		}
		cpu, mem = cpu-u.CPUMilli, mem-u.MemoryBytes
		n++
	}
	return n
}
