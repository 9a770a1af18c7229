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
