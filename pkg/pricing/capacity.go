package pricing

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/capacity"
)

// CapacityType is how a node is bought: pkg/capacity's reading of the
// labels clouds and autoscalers set, the one every part of Penny shares.
type CapacityType = capacity.Type

// The capacity types a price can be for.
const (
	// Spot capacity is cheap and can be reclaimed with short notice.
	Spot = capacity.Spot
	// OnDemand capacity is paid by the hour and is not reclaimed.
	OnDemand = capacity.OnDemand
	// Reserved capacity (reservations, savings plans, committed use) is
	// already paid for: using it costs nothing more.
	Reserved = capacity.Reserved
)

// ParseCapacityType reads a capacity type as a catalog writes it.
func ParseCapacityType(s string) (CapacityType, error) {
	switch CapacityType(s) {
	case Spot, OnDemand, Reserved:
		return CapacityType(s), nil
	}
	return "", fmt.Errorf("capacity type %q: want one of spot, on-demand, reserved", s)
}

// Capacity is a node's capacity type for pricing and risk.
type Capacity struct {
	Type CapacityType
}

// IsSpot reports whether the node can be reclaimed.
func (c Capacity) IsSpot() bool { return c.Type == Spot }

// NodeCapacity reads a node's capacity type (pkg/capacity). A node no label
// speaks for is on-demand, which is what a cluster without Spot pools has.
func NodeCapacity(node *corev1.Node) Capacity {
	if node == nil {
		return Capacity{Type: OnDemand}
	}
	return Capacity{Type: capacity.NodeType(node.Labels)}
}

// SpotTaints are the taints clouds put on Spot nodes so that only pods that
// tolerate them land there (AKS sets its taint on every Spot pool; GKE
// recommends one). Pods that Penny may place on Spot tolerate them.
var SpotTaints = []corev1.Taint{
	{Key: capacity.LabelAzurePriority, Value: "spot", Effect: corev1.TaintEffectNoSchedule},
	{Key: capacity.LabelGKESpot, Value: "true", Effect: corev1.TaintEffectNoSchedule},
}

// ReclaimTaintKeys are the taints reclaim handlers put on a node that is about
// to go away. No new pod should land there, whatever it tolerates.
var ReclaimTaintKeys = []string{
	"aws-node-termination-handler/spot-itn",
	"aws-node-termination-handler/rebalance-recommendation",
	"karpenter.sh/disrupted",
	TaintReclaimNotice,
}

// TaintReclaimNotice is the taint the Penny agent puts on its node when the
// cloud has announced a reclaim (value: the kind of notice; see pkg/reclaim).
const TaintReclaimNotice = "penny.dev/reclaim"
