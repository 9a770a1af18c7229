package capacity

import "testing"

func TestTypeOf(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   Type
	}{
		{nil, Unknown},
		{map[string]string{LabelKarpenter: "spot"}, Spot},
		{map[string]string{LabelKarpenter: "on-demand"}, OnDemand},
		{map[string]string{LabelKarpenter: "reserved"}, Reserved},
		{map[string]string{LabelEKS: "SPOT"}, Spot},
		{map[string]string{LabelEKS: "ON_DEMAND"}, OnDemand},
		{map[string]string{LabelEKS: "CAPACITY_BLOCK"}, Reserved},
		{map[string]string{LabelGKESpot: "true"}, Spot},
		{map[string]string{LabelGKEPreemptible: "true"}, Spot},
		{map[string]string{LabelAzurePriority: "spot"}, Spot},
		{map[string]string{LabelAzurePriority: "Regular"}, OnDemand},
		// Penny's own label overrides what the cloud says.
		{map[string]string{LabelKarpenter: "spot", LabelOverride: "on-demand"}, OnDemand},
		// An unknown override value does not hide the cloud's label.
		{map[string]string{LabelKarpenter: "spot", LabelOverride: "cheap"}, Spot},
	}
	for _, tt := range tests {
		if got := TypeOf(tt.labels); got != tt.want {
			t.Errorf("TypeOf(%v) = %q, want %q", tt.labels, got, tt.want)
		}
	}
}

// A node no label speaks for is on-demand; a label that does speak decides.
func TestNodeType(t *testing.T) {
	for _, tt := range []struct {
		labels map[string]string
		want   Type
	}{
		{nil, OnDemand},
		{map[string]string{"kubernetes.azure.com/agentpool": "gpu"}, OnDemand},
		{map[string]string{LabelOverride: "cheap"}, OnDemand},
		{map[string]string{LabelGKESpot: "true"}, Spot},
		{map[string]string{LabelEKS: "CAPACITY_BLOCK"}, Reserved},
	} {
		if got := NodeType(tt.labels); got != tt.want {
			t.Errorf("NodeType(%v) = %q, want %q", tt.labels, got, tt.want)
		}
	}
}

// Unreadable names a label TypeOf skipped, whose author may have meant
// Spot. A valid penny.dev/capacity-type decides the type before any cloud
// label is read (it is how an administrator corrects one), so a cloud label
// past it is not a guess.
func TestUnreadable(t *testing.T) {
	tests := []struct {
		labels map[string]string
		want   string
	}{
		{nil, ""},
		{map[string]string{LabelKarpenter: "spot"}, ""},
		{map[string]string{LabelOverride: "preemptible"}, `penny.dev/capacity-type="preemptible"`},
		{map[string]string{LabelKarpenter: "preemptible"}, `karpenter.sh/capacity-type="preemptible"`},
		// An unreadable override, whatever Karpenter says.
		{map[string]string{LabelOverride: "cheap", LabelKarpenter: "on-demand"}, `penny.dev/capacity-type="cheap"`},
		// A valid override decides: Karpenter's label is never read.
		{map[string]string{LabelOverride: "on-demand", LabelKarpenter: "preemptible"}, ""},
		{map[string]string{LabelOverride: "spot", LabelKarpenter: "preemptible"}, ""},
	}
	for _, tt := range tests {
		if got := Unreadable(tt.labels); got != tt.want {
			t.Errorf("Unreadable(%v) = %q, want %q (TypeOf %q)", tt.labels, got, tt.want, TypeOf(tt.labels))
		}
	}
}
