// Package capacity reads a node's capacity type (spot, on-demand, reserved)
// from the labels clouds and autoscalers already set, so every part of Penny
// classifies nodes the same way.
package capacity

import (
	"fmt"
	"strings"
)

// Type is a node's capacity type.
type Type string

const (
	// Unknown is a node no known label classifies.
	Unknown  Type = ""
	Spot     Type = "spot"
	OnDemand Type = "on-demand"
	Reserved Type = "reserved"
)

// Labels read, in order of precedence.
const (
	// LabelOverride is Penny's own label; it wins over the cloud's.
	LabelOverride = "penny.dev/capacity-type"
	// LabelKarpenter is set by Karpenter: spot, on-demand or reserved.
	LabelKarpenter = "karpenter.sh/capacity-type"
	// LabelEKS is set by EKS managed node groups: SPOT, ON_DEMAND or CAPACITY_BLOCK.
	LabelEKS = "eks.amazonaws.com/capacityType"
	// LabelGKESpot is "true" on GKE Spot VMs.
	LabelGKESpot = "cloud.google.com/gke-spot"
	// LabelGKEPreemptible is "true" on GKE preemptible VMs (Spot's predecessor).
	LabelGKEPreemptible = "cloud.google.com/gke-preemptible"
	// LabelAzurePriority is "spot" on Azure spot node pools.
	LabelAzurePriority = "kubernetes.azure.com/scalesetpriority"
)

// TypeOf classifies a node by its labels.
func TypeOf(labels map[string]string) Type {
	if t := parse(labels[LabelOverride]); t != Unknown {
		return t
	}
	if t := parse(labels[LabelKarpenter]); t != Unknown {
		return t
	}
	switch labels[LabelEKS] {
	case "SPOT":
		return Spot
	case "ON_DEMAND":
		return OnDemand
	case "CAPACITY_BLOCK":
		return Reserved
	}
	if labels[LabelGKESpot] == "true" || labels[LabelGKEPreemptible] == "true" {
		return Spot
	}
	switch strings.ToLower(labels[LabelAzurePriority]) {
	case "spot":
		return Spot
	case "regular":
		return OnDemand
	}
	return Unknown
}

// NodeType is TypeOf where no label speaks for the node: then it is
// on-demand, which is what a cluster without Spot pools has, and what clouds
// that label only their Spot pools (AKS, GKE) leave their other nodes as.
// Every reading of a node's type goes through here, so that a gang kept on
// one capacity type and the pricing of its nodes agree on what that type is.
func NodeType(labels map[string]string) Type {
	if t := TypeOf(labels); t != Unknown {
		return t
	}
	return OnDemand
}

// Unreadable names a capacity label whose value Penny does not know (say
// penny.dev/capacity-type: preemptible), or "" when there is none. TypeOf
// skips such a value, so the node may read as on-demand although whoever set
// the label meant otherwise; callers that must not guess say so. A label
// TypeOf never reads is no guess: a valid penny.dev/capacity-type decides the
// type (it is how an administrator corrects a cloud's label), so Karpenter's
// label past it is not named.
func Unreadable(labels map[string]string) string {
	for _, key := range []string{LabelOverride, LabelKarpenter} {
		v, ok := labels[key]
		if !ok {
			continue
		}
		if parse(v) != Unknown {
			return "" // TypeOf stops here
		}
		return fmt.Sprintf("%s=%q", key, v)
	}
	return ""
}

func parse(v string) Type {
	switch strings.ToLower(v) {
	case "spot":
		return Spot
	case "on-demand", "ondemand", "on_demand":
		return OnDemand
	case "reserved":
		return Reserved
	}
	return Unknown
}
