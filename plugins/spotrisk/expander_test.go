package spotrisk

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
	// Spot that a pod avoids ranks last whether it is priced or not, and
	// an unpriced pool after a priced one.
	unpriced := node("spot-unpriced", pricing.Spot, "us-east-1a")
	unpriced.Labels[corev1.LabelInstanceTypeStable] = "no-such-type"
	templates = append([]*corev1.Node{unpriced}, templates...)
	if got := rank(map[string]string{AnnotationWorkload: "training"}); got[0] != "od" || got[3] != "spot-unpriced" {
		t.Errorf("training without checkpoints with an unpriced Spot pool: %v, want on-demand first and the unpriced pool last", got)
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
	x, err := NewExpander(context.Background(), nil, Deps{Prices: catalogOf(t, `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- {name: small, gpus: 1, gpuModel: A10G, vcpus: 32, memoryGiB: 128}
- {name: quad, gpus: 4, gpuModel: A10G, vcpus: 48, memoryGiB: 192}
prices:
- {instanceType: small, capacityType: on-demand, region: us-east-1, hourly: 2.448}
- {instanceType: quad, capacityType: on-demand, region: us-east-1, hourly: 5.672}
`)})
	if err != nil {
		t.Fatal(err)
	}
	small := sized(node("small", pricing.OnDemand, "us-east-1a"), "small", "32", "128Gi", "1")
	quad := sized(node("quad", pricing.OnDemand, "us-east-1a"), "quad", "48", "192Gi", "4")
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

// quadOctoCatalog prices a 4-GPU node at $1.42 a GPU and an 8-GPU one at $1.
const quadOctoCatalog = `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- {name: quad, gpus: 4, gpuModel: A10G, vcpus: 48, memoryGiB: 192}
- {name: octo, gpus: 8, gpuModel: A10G, vcpus: 192, memoryGiB: 768}
prices:
- {instanceType: quad, capacityType: on-demand, region: us-east-1, hourly: 5.672}
- {instanceType: octo, capacityType: on-demand, region: us-east-1, hourly: 8}
`

// A node is never counted as holding more pods than exist to fill it: with
// few peers the smaller node is cheaper per pod; with many, the bigger one.
func TestExpanderCapsSlotsByPeers(t *testing.T) {
	x, err := NewExpander(context.Background(), nil, Deps{Prices: catalogOf(t, quadOctoCatalog)})
	if err != nil {
		t.Fatal(err)
	}
	quad := sized(node("quad", pricing.OnDemand, "us-east-1a"), "quad", "48", "192Gi", "4")
	octo := sized(node("octo", pricing.OnDemand, "us-east-1a"), "octo", "192", "768Gi", "8")
	small := func(name string) *corev1.Pod {
		p := pod(name, map[string]string{AnnotationWorkload: "inference"}) // 1 GPU, 12 CPU
		p.Spec.Containers[0].Resources.Requests[corev1.ResourceMemory] = resource.MustParse("40Gi")
		return p
	}
	peers := func(n int) []pricing.Usage {
		out := []pricing.Usage{}
		for i := 0; i < n; i++ {
			out = append(out, pricing.PodUsage(small(fmt.Sprintf("peer-%d", i))))
		}
		return out
	}
	first := func(ps []pricing.Usage) string {
		order, err := x.RankOptions(small("p"), []Option{{Node: quad, Peers: ps}, {Node: octo, Peers: ps}})
		if err != nil {
			t.Fatal(err)
		}
		return []string{"quad", "octo"}[order[0]]
	}
	// Unknown peers: every slot fills, octo is $1.00 a slot against $1.42.
	if got := first(nil); got != "octo" {
		t.Errorf("peers unknown: %s first, want octo", got)
	}
	// Three pods in all: $1.89 a pod on quad against $2.67 on octo.
	if got := first(peers(2)); got != "quad" {
		t.Errorf("two peers: %s first, want quad", got)
	}
	// Enough pods to fill octo.
	if got := first(peers(10)); got != "octo" {
		t.Errorf("ten peers: %s first, want octo", got)
	}
	// Rank is RankOptions with peers unknown.
	if order, _ := x.Rank(small("p"), []*corev1.Node{quad, octo}); order[0] != 1 {
		t.Errorf("Rank: %v, want octo first", order)
	}
}

func TestFill(t *testing.T) {
	n := &corev1.Node{Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"), gpu.ResourceGPU: resource.MustParse("2"),
	}}}
	mk := func(cpu string, gpus string, milli string) *corev1.Pod {
		c := corev1.Container{Name: "c", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}, Limits: corev1.ResourceList{}}}
		if gpus != "" {
			c.Resources.Limits[gpu.ResourceGPU] = resource.MustParse(gpus)
		}
		if milli != "" {
			c.Resources.Requests[gpu.ResourceGPUMilli] = resource.MustParse(milli)
			c.Resources.Limits[gpu.ResourceGPUMilli] = resource.MustParse(milli)
		}
		return &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{c}}}
	}
	cases := []struct {
		name string
		pods []*corev1.Pod
		want int
	}{
		{"none", nil, 0},
		{"whole GPUs", []*corev1.Pod{mk("1", "1", ""), mk("1", "1", ""), mk("1", "1", "")}, 2},
		// a whole GPU, then 600 milli on the other; the second 600 has no
		// GPU with room; 300 fits beside the first 600.
		{"shares cannot span GPUs", []*corev1.Pod{mk("1", "1", ""), mk("1", "", "600"), mk("1", "", "600"), mk("1", "", "300")}, 3},
		{"CPU binds", []*corev1.Pod{mk("20", "", ""), mk("20", "", ""), mk("10", "", "")}, 2},
		{"two GPUs need two free ones", []*corev1.Pod{mk("1", "", "500"), mk("1", "2", "")}, 1},
	}
	for _, c := range cases {
		var usages []pricing.Usage
		for _, p := range c.pods {
			usages = append(usages, pricing.PodUsage(p))
		}
		if got := Fill(n, usages); got != c.want {
			t.Errorf("%s: Fill = %d, want %d", c.name, got, c.want)
		}
	}
}

// Training without checkpoints that declares no runtime is priced for the
// run length the expected-loss rule takes (SpotRisk.runtime): as long as
// training here typically runs, once that is learned. Ranking Spot pools it
// fell back to, a reclaim of a 2000h run costs 1000h of work: the pool
// reclaimed less often ($8 a node of 8 slots, 5-10%: $1.11 a slot per hour
// of useful work) comes before the cheaper, riskier one ($7, >20%: $1.22);
// with the 4h unknownRuntime (nothing learned) it is the other way round
// ($1.00, $0.88). Score prices it the same way.
func TestUndeclaredRuntimeIsPricedAsTheExpectedLossRuleTakesIt(t *testing.T) {
	spot := []*corev1.Node{node("spot-a", pricing.Spot, "us-east-1a"), node("spot-c", pricing.Spot, "us-east-1c")}
	undeclared := pod("p", map[string]string{AnnotationWorkload: "training"})
	declared := pod("p", map[string]string{AnnotationWorkload: "training", AnnotationExpectedRuntime: "2000h"})
	first := func(runs *pricing.RunLengths, p *corev1.Pod) string {
		x, err := NewExpander(context.Background(), nil, Deps{Prices: catalog(t), RunLengths: runs})
		if err != nil {
			t.Fatal(err)
		}
		order, err := x.Rank(p, spot)
		if err != nil {
			t.Fatal(err)
		}
		return spot[order[0]].Name
	}
	if got := first(runsOf(10, 2000*time.Hour), undeclared); got != "spot-a" {
		t.Errorf("2000h runs learned, no runtime declared: %s first, want spot-a", got)
	}
	if got := first(runsOf(10, 2000*time.Hour), declared); got != "spot-a" {
		t.Errorf("2000h declared: %s first, want spot-a", got)
	}
	if got := first(nil, undeclared); got != "spot-c" {
		t.Errorf("nothing learned, no runtime declared (unknownRuntime 4h): %s first, want spot-c", got)
	}

	e := newEnv(t, nil, Deps{Prices: catalog(t), RunLengths: runsOf(10, 2000*time.Hour)}, fleet()[:4]...)
	learned, _ := e.plugin.NodeCost(undeclared)
	want, _ := e.plugin.NodeCost(declared)
	for _, n := range fleet()[:4] {
		got, _, _ := learned(n)
		if w, _, _ := want(n); got != w {
			t.Errorf("%s: Score's cost %v with 2000h runs learned, want %v as for 2000h declared", n.Name, got, w)
		}
	}
}

// NodeCost calls pods alike by what their price reads, not by their
// annotations: training with the same annotations but a deadline within
// shortRuntime is priced apart, and pods that differ only in a label alike.
func TestNodeCostCallsPodsAlikeByWhatTheirPriceReads(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()[:4]...)
	training := map[string]string{AnnotationWorkload: "training"}
	long, short, labelled := pod("long", training), pod("short", training), pod("labelled", training)
	deadline := int64(1800)
	short.Spec.ActiveDeadlineSeconds = &deadline
	labelled.Labels = map[string]string{"team": "b"}
	_, longKey := e.plugin.NodeCost(long)
	_, shortKey := e.plugin.NodeCost(short)
	_, labelledKey := e.plugin.NodeCost(labelled)
	if longKey == shortKey {
		t.Errorf("training with and without a 30m deadline called alike (%q)", longKey)
	}
	if longKey != labelledKey {
		t.Errorf("pods differing only in a label called apart: %q and %q", longKey, labelledKey)
	}
}

// After a reload moves a pool to another bucket, the autoscaler's template
// of it is judged by the new bucket, though no node of the pool was read
// since: a pool scaled to zero kept the bucket of the catalog its last node
// was read under, for as long as it stayed at zero.
func TestExpanderJudgesTemplatesByTheCatalogInForce(t *testing.T) {
	store := pricing.NewStore(catalog(t))
	x, err := NewExpander(context.Background(), nil, Deps{Prices: store})
	if err != nil {
		t.Fatal(err)
	}
	limited := pod("p", map[string]string{AnnotationSpot: "only", AnnotationMaxReclaimRisk: "5%"})
	if x.pl.Admits(limited)(node("spot-c", pricing.Spot, "us-east-1c")) {
		t.Fatal("a >20% pool admitted under a 5% limit")
	}
	if err := store.Load([]byte(strings.Replace(testCatalog, `interruption: ">20%"`, `interruption: "<5%"`, 1)), "reloaded"); err != nil {
		t.Fatal(err)
	}
	template := node("template-c", pricing.Spot, "us-east-1c")
	template.Annotations = map[string]string{annotationTemplateNode: "spot-c-group"}
	if !x.pl.Admits(limited)(template) {
		t.Error("the template of a pool the catalog moved to <5% is judged by its old >20% bucket")
	}
}
