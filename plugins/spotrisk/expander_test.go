package spotrisk

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/pennysched/penny/pkg/pricing"
)

func TestExpanderRanksWholeNodes(t *testing.T) {
	x, err := NewExpander(context.Background(), nil, Deps{Prices: catalog(t)})
	if err != nil {
		t.Fatal(err)
	}
	templates := []*corev1.Node{
		node("od", pricing.OnDemand, "us-east-1a"),
		node("spot-a", pricing.Spot, "us-east-1a"), // $8, 5-10%
		node("spot-c", pricing.Spot, "us-east-1c"), // $7, >20%
	}
	rank := func(ann map[string]string) []string {
		order, err := x.Rank(pod("p", ann), templates)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, i := range order {
			names = append(names, templates[i].Name)
		}
		return names
	}
	if got := rank(map[string]string{AnnotationWorkload: "batch"}); got[0] != "spot-c" || got[2] != "od" {
		t.Errorf("batch: %v, want the cheapest Spot pool first and on-demand last", got)
	}
	if got := rank(map[string]string{AnnotationWorkload: "training"}); got[0] != "od" {
		t.Errorf("training without checkpoints: %v, want on-demand first", got)
	}
	// A week of work without checkpoints at >20% a month: lost work makes
	// the riskier pool dearer than the safer one.
	if got := rank(map[string]string{AnnotationSpot: "allow", AnnotationExpectedRuntime: "2000h"}); got[0] != "spot-a" {
		t.Errorf("long work without checkpoints: %v, want the safer Spot pool first", got)
	}
	if _, err := x.Rank(pod("p", map[string]string{AnnotationSpot: "x"}), templates); err == nil {
		t.Error("a malformed annotation is an error")
	}
}
