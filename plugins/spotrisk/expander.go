package spotrisk

import (
	"context"
	"math"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/pennysched/penny/pkg/pricing"
)

// Expander ranks node pools for an autoscaler by SpotRisk's own measure
// applied to a whole new node: the node's marginal price times
// 1 + reclaim rate x (work lost per reclaim + restart overhead) for the pod
// that needs it. It is what a Cluster Autoscaler gRPC expander or a
// Karpenter-style provisioner would ask Penny; the simulator's elastic fleet
// asks it now.
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
// cost of the pod's work on the whole node, then by node price; unpriced
// templates come last. It fails only on a malformed pod annotation.
func (x *Expander) Rank(pod *corev1.Pod, templates []*corev1.Node) ([]int, error) {
	class, err := classify(pod, x.pl.args)
	if err != nil {
		return nil, err
	}
	type key struct {
		avoided bool
		cost    float64
		price   float64
	}
	keys := make([]key, len(templates))
	for i, n := range templates {
		price, ok := x.pl.prices.NodePrice(n)
		if !ok {
			keys[i] = key{cost: math.Inf(1), price: math.Inf(1)}
			continue
		}
		spot := pricing.NodeCapacity(n).IsSpot()
		keys[i] = key{
			avoided: class.Policy == Avoid && spot,
			cost:    x.pl.expected(price.Marginal(), class, n, price),
			price:   price.Marginal(),
		}
	}
	order := make([]int, len(templates))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		ka, kb := keys[order[a]], keys[order[b]]
		if ka.avoided != kb.avoided {
			return !ka.avoided
		}
		if ka.cost != kb.cost {
			return ka.cost < kb.cost
		}
		return ka.price < kb.price
	})
	return order, nil
}
