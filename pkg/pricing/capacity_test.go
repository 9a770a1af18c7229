package pricing

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pennysched/penny/pkg/capacity"
)

func TestNodeCapacity(t *testing.T) {
	for labels, want := range map[string]CapacityType{
		"":                      OnDemand, // no label: a cluster without Spot pools
		capacity.LabelKarpenter: Spot,
		capacity.LabelGKESpot:   Spot,
		capacity.LabelOverride:  Reserved,
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{}}}
		switch labels {
		case capacity.LabelKarpenter:
			n.Labels[labels] = "spot"
		case capacity.LabelGKESpot:
			n.Labels[labels] = "true"
		case capacity.LabelOverride:
			n.Labels[labels] = "reserved"
		}
		if got := NodeCapacity(n).Type; got != want {
			t.Errorf("%q: %s, want %s", labels, got, want)
		}
	}
	if NodeCapacity(nil).Type != OnDemand {
		t.Error("nil node")
	}
}

func TestParseCapacityType(t *testing.T) {
	for _, ok := range []string{"spot", "on-demand", "reserved"} {
		if _, err := ParseCapacityType(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	if _, err := ParseCapacityType("ondemand"); err == nil {
		t.Error("ondemand: a catalog spells on-demand one way")
	}
}
