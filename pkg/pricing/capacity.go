package pricing

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// CapacityType is how a node is bought.
type CapacityType string

const (
	// Spot capacity is cheap and can be reclaimed with short notice.
	Spot CapacityType = "spot"
	// OnDemand capacity is paid by the hour and is not reclaimed.
	OnDemand CapacityType = "on-demand"
	// Reserved capacity (reservations, savings plans, committed use) is
	// already paid for: using it costs nothing more.
	Reserved CapacityType = "reserved"
)

// CapacityTypes lists the valid values, for error messages.
var CapacityTypes = []CapacityType{Spot, OnDemand, Reserved}

// ParseCapacityType reads Penny's own spelling of a capacity type.
func ParseCapacityType(s string) (CapacityType, error) {
	switch CapacityType(s) {
	case Spot, OnDemand, Reserved:
		return CapacityType(s), nil
	}
	return "", fmt.Errorf("capacity type %q: want one of spot, on-demand, reserved", s)
}

// Node labels that carry a capacity type. Penny reads the labels clouds and
// autoscalers already set; its own label only overrides them.
const (
	// LabelCapacityType is Penny's override: spot, on-demand or reserved.
	LabelCapacityType = "penny.dev/capacity-type"
	// LabelKarpenterCapacityType is set by Karpenter: spot, on-demand, reserved.
	LabelKarpenterCapacityType = "karpenter.sh/capacity-type"
	// LabelEKSCapacityType is set on EKS managed node groups: SPOT, ON_DEMAND
	// or CAPACITY_BLOCK.
	LabelEKSCapacityType = "eks.amazonaws.com/capacityType"
	// LabelGKESpot is "true" on GKE Spot VMs.
	LabelGKESpot = "cloud.google.com/gke-spot"
	// LabelGKEPreemptible is "true" on GKE preemptible VMs, which are
	// reclaimed like Spot VMs.
	LabelGKEPreemptible = "cloud.google.com/gke-preemptible"
	// LabelAKSPriority is "spot" or "regular" on AKS node pools.
	LabelAKSPriority = "kubernetes.azure.com/scalesetpriority"
	// LabelRegion is the well-known region label.
	LabelRegion = corev1.LabelTopologyRegion
)

// Capacity is a node's capacity type and the label it was read from.
type Capacity struct {
	Type CapacityType
	// Source names the label the type came from; empty when no label said
	// anything and the node is assumed on-demand.
	Source string
}

// IsSpot reports whether the node can be reclaimed.
func (c Capacity) IsSpot() bool { return c.Type == Spot }

// NodeCapacity reads a node's capacity type from its labels.
func NodeCapacity(node *corev1.Node) Capacity {
	if node == nil {
		return Capacity{Type: OnDemand}
	}
	return CapacityFromLabels(node.Labels)
}

// CapacityFromLabels reads a capacity type from node labels: Penny's override
// first, then Karpenter, EKS, GKE and AKS. A node no label speaks for is
// on-demand, which is what a cluster without Spot pools has. An override with
// an unknown value is ignored rather than trusted, so a typo never turns a
// Spot node into one that inference pods may use.
func CapacityFromLabels(labels map[string]string) Capacity {
	if v, ok := labels[LabelCapacityType]; ok {
		if t, err := ParseCapacityType(strings.ToLower(v)); err == nil {
			return Capacity{Type: t, Source: LabelCapacityType}
		}
	}
	if v, ok := labels[LabelKarpenterCapacityType]; ok {
		if t, err := ParseCapacityType(strings.ToLower(v)); err == nil {
			return Capacity{Type: t, Source: LabelKarpenterCapacityType}
		}
	}
	if v, ok := labels[LabelEKSCapacityType]; ok {
		switch strings.ToUpper(v) {
		case "SPOT":
			return Capacity{Type: Spot, Source: LabelEKSCapacityType}
		case "ON_DEMAND":
			return Capacity{Type: OnDemand, Source: LabelEKSCapacityType}
		case "CAPACITY_BLOCK":
			// Capacity Blocks are bought ahead for a fixed window.
			return Capacity{Type: Reserved, Source: LabelEKSCapacityType}
		}
	}
	if strings.EqualFold(labels[LabelGKESpot], "true") {
		return Capacity{Type: Spot, Source: LabelGKESpot}
	}
	if strings.EqualFold(labels[LabelGKEPreemptible], "true") {
		return Capacity{Type: Spot, Source: LabelGKEPreemptible}
	}
	switch strings.ToLower(labels[LabelAKSPriority]) {
	case "spot":
		return Capacity{Type: Spot, Source: LabelAKSPriority}
	case "regular":
		return Capacity{Type: OnDemand, Source: LabelAKSPriority}
	}
	return Capacity{Type: OnDemand}
}

// SpotTaints are the taints clouds put on Spot nodes so that only pods that
// tolerate them land there (AKS sets its taint on every Spot pool; GKE
// recommends one). Pods that Penny may place on Spot tolerate them.
var SpotTaints = []corev1.Taint{
	{Key: LabelAKSPriority, Value: "spot", Effect: corev1.TaintEffectNoSchedule},
	{Key: LabelGKESpot, Value: "true", Effect: corev1.TaintEffectNoSchedule},
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
