package spotrisk

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/pennysched/penny/pkg/gpu"
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

func TestSlots(t *testing.T) {
	n := node("n", pricing.OnDemand, "us-east-1a") // 96 CPU, 1152Gi, 8 GPUs
	cases := []struct {
		u    pricing.Usage
		want int64
	}{
		{pricing.Usage{GPUMilli: 1000, CPUMilli: 12000, MemoryBytes: 144 << 30}, 8},
		{pricing.Usage{GPUMilli: 1000, CPUMilli: 24000}, 4},        // CPU binds
		{pricing.Usage{GPUMilli: 2000, MemoryBytes: 100 << 30}, 4}, // GPUs bind
		{pricing.Usage{GPUMilli: 470}, 16},                         // two 470-milli shares per GPU
		{pricing.Usage{GPUMilli: 3000}, 2},                         // 3 of 8 GPUs, twice
		{pricing.Usage{CPUMilli: 500}, 192},                        // no GPU
		{pricing.Usage{}, 1},                                       // asks nothing
	}
	for _, c := range cases {
		if got := Slots(c.u, n); got != c.want {
			t.Errorf("Slots(%+v) = %d, want %d", c.u, got, c.want)
		}
	}
}

// Per pod slot, a bigger node can be the cheaper one to grow.
func TestExpanderPrefersCheaperPerSlot(t *testing.T) {
	cat, err := pricing.Parse([]byte(`apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- {name: small, gpus: 1, gpuModel: A10G, vcpus: 32, memoryGiB: 128}
- {name: quad, gpus: 4, gpuModel: A10G, vcpus: 48, memoryGiB: 192}
prices:
- {instanceType: small, capacityType: on-demand, region: us-east-1, hourly: 2.448}
- {instanceType: quad, capacityType: on-demand, region: us-east-1, hourly: 5.672}
`), "test")
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewExpander(context.Background(), nil, Deps{Prices: cat})
	if err != nil {
		t.Fatal(err)
	}
	small, quad := node("small", pricing.OnDemand, "us-east-1a"), node("quad", pricing.OnDemand, "us-east-1a")
	small.Labels[corev1.LabelInstanceTypeStable], quad.Labels[corev1.LabelInstanceTypeStable] = "small", "quad"
	small.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"), gpu.ResourceGPU: resource.MustParse("1")}
	quad.Status.Allocatable = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("48"), corev1.ResourceMemory: resource.MustParse("192Gi"), gpu.ResourceGPU: resource.MustParse("4")}
	p := pod("p", map[string]string{AnnotationWorkload: "inference"}) // 1 GPU, 12 CPU, 144Gi
	p.Spec.Containers[0].Resources.Requests[corev1.ResourceMemory] = resource.MustParse("40Gi")
	order, err := x.Rank(p, []*corev1.Node{small, quad})
	if err != nil {
		t.Fatal(err)
	}
	// quad holds four such pods: 1.418 $/slot against 2.448.
	if order[0] != 1 {
		t.Fatalf("order %v, want the 4-GPU node first", order)
	}
}
