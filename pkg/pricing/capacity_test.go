package pricing

import "testing"

func TestCapacityFromLabels(t *testing.T) {
	cases := []struct {
		name   string
		labels map[string]string
		want   CapacityType
		source string
	}{
		{"no label is on-demand", nil, OnDemand, ""},
		{"karpenter spot", map[string]string{LabelKarpenterCapacityType: "spot"}, Spot, LabelKarpenterCapacityType},
		{"karpenter reserved", map[string]string{LabelKarpenterCapacityType: "reserved"}, Reserved, LabelKarpenterCapacityType},
		{"eks spot", map[string]string{LabelEKSCapacityType: "SPOT"}, Spot, LabelEKSCapacityType},
		{"eks on-demand", map[string]string{LabelEKSCapacityType: "ON_DEMAND"}, OnDemand, LabelEKSCapacityType},
		{"eks capacity block", map[string]string{LabelEKSCapacityType: "CAPACITY_BLOCK"}, Reserved, LabelEKSCapacityType},
		{"gke spot", map[string]string{LabelGKESpot: "true"}, Spot, LabelGKESpot},
		{"gke preemptible", map[string]string{LabelGKEPreemptible: "true"}, Spot, LabelGKEPreemptible},
		{"gke spot false", map[string]string{LabelGKESpot: "false"}, OnDemand, ""},
		{"aks spot", map[string]string{LabelAKSPriority: "spot"}, Spot, LabelAKSPriority},
		{"aks regular", map[string]string{LabelAKSPriority: "regular"}, OnDemand, LabelAKSPriority},
		{"override wins", map[string]string{LabelCapacityType: "reserved", LabelKarpenterCapacityType: "on-demand"}, Reserved, LabelCapacityType},
		{"override can say spot", map[string]string{LabelCapacityType: "spot", LabelAKSPriority: "regular"}, Spot, LabelCapacityType},
		// A typo in the override must not hide that the node is Spot.
		{"bad override ignored", map[string]string{LabelCapacityType: "on-demnd", LabelGKESpot: "true"}, Spot, LabelGKESpot},
	}
	for _, c := range cases {
		got := CapacityFromLabels(c.labels)
		if got.Type != c.want || got.Source != c.source {
			t.Errorf("%s: got %+v, want %s from %q", c.name, got, c.want, c.source)
		}
	}
}

func TestParseCapacityType(t *testing.T) {
	for _, ok := range []string{"spot", "on-demand", "reserved"} {
		if _, err := ParseCapacityType(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if _, err := ParseCapacityType("ondemand"); err == nil {
		t.Error("ondemand: want error")
	}
}
