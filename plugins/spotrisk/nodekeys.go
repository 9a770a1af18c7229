package spotrisk

import (
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/pkg/pricing"
)

// nodeKeys keeps each node's poolKey from one cycle to the next, so that
// Score does not read the node's labels: on a thousand nodes the first
// label read of each node, a cache miss on a map no other scoring plugin
// touches, cost more than the rest of Score, for a key that changes only
// with the node object. It is written only in PreScore, and read in Score
// of the same cycle: a profile's scheduling cycles run one at a time.
type nodeKeys struct {
	// nodes are keyed by the snapshot's NodeInfo, which the scheduler keeps
	// per node for its lifetime and updates in place; the node object it
	// held says whether the key is still the node's (a node's labels
	// change only with a new object).
	nodes map[*framework.NodeInfo]keyedNode
	// keys are the distinct poolKeys by id, ids the other way round.
	keys []poolKey
	ids  map[poolKey]int32
}

type keyedNode struct {
	node *corev1.Node
	id   int32
}

// update gives every node of the cycle its key; total is how many nodes the
// cluster has, which bounds what is kept for nodes since deleted.
func (k *nodeKeys) update(nodes []fwk.NodeInfo, total int) {
	if k.nodes == nil || len(k.nodes) > 2*max(total, len(nodes)) {
		k.nodes, k.keys, k.ids = map[*framework.NodeInfo]keyedNode{}, nil, map[poolKey]int32{}
	}
	for _, ni := range nodes {
		fni, ok := ni.(*framework.NodeInfo)
		if !ok {
			continue // not the scheduler's own snapshot: Score reads its labels
		}
		node := fni.Node()
		if node == nil {
			continue
		}
		if e, ok := k.nodes[fni]; ok && e.node == node {
			continue
		}
		key := poolKeyOf(node, pricing.NodeCapacity(node))
		id, ok := k.ids[key]
		if !ok {
			id = int32(len(k.keys))
			k.keys = append(k.keys, key)
			k.ids[key] = id
		}
		k.nodes[fni] = keyedNode{node: node, id: id}
	}
}

// lookup is the id of the node's key, kept by update in this cycle.
func (k *nodeKeys) lookup(ni fwk.NodeInfo) (int32, bool) {
	fni, ok := ni.(*framework.NodeInfo)
	if !ok {
		return 0, false
	}
	e, ok := k.nodes[fni]
	if !ok || e.node != fni.Node() {
		return 0, false
	}
	return e.id, true
}

// scoredPools is Score's view of the cycle's keys: the key of each id, and
// the price and rate kept for it by the cycle's poolMemo, once a node of
// the key has been scored, so that the other nodes do not hash the key.
type scoredPools struct {
	nodes  *nodeKeys
	prices []atomic.Pointer[poolPrice]
}
