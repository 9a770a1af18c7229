package gpu

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// migNode is a node as pkg/localcluster and the device plugin's "mixed"
// strategy present it: 8 A100-80GB, the last two partitioned into
// 3g.40gb + 2g.20gb + 2 x 1g.10gb.
func migNode(labels map[string]string) *corev1.Node {
	l := map[string]string{LabelProduct: "NVIDIA-A100-SXM4-80GB", LabelCount: "8", LabelMIGStrategy: "mixed"}
	for k, v := range labels {
		l[k] = v
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: l},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			ResourceGPU:                resource.MustParse("6"),
			MIGResourceName("3g.40gb"): resource.MustParse("2"),
			MIGResourceName("2g.20gb"): resource.MustParse("2"),
			MIGResourceName("1g.10gb"): resource.MustParse("4"),
		}},
	}
}

func TestReportedLayout(t *testing.T) {
	n := NodeDevicesFor(migNode(nil))
	if n.OnDemand || n.WholeFree() != 6 || !n.GPUs[6].MIGMode || !n.GPUs[7].MIGMode {
		t.Fatalf("mixed node: on demand %v, %d whole free, MIG mode %v %v", n.OnDemand, n.WholeFree(), n.GPUs[6].MIGMode, n.GPUs[7].MIGMode)
	}
	// Without a report, a MIG-mode GPU takes any instance its geometry
	// leaves room for.
	if !n.Fits(Request{MIG: map[string]int64{"4g.40gb": 1}}) {
		t.Fatal("a 4g does not fit on an empty MIG-mode GPU")
	}
	layout := []Placement{{"3g.40gb", 4}, {"2g.20gb", 0}, {"1g.10gb", 2}, {"1g.10gb", 3}}
	for _, g := range []int{6, 7} {
		if err := n.SetLayout(g, layout); err != nil {
			t.Fatal(err)
		}
	}
	if n.Fits(Request{MIG: map[string]int64{"4g.40gb": 1}}) {
		t.Fatal("a 4g fits on GPUs whose reported layouts have none")
	}
	for k := 0; k < 4; k++ {
		a, err := n.FirstFit(Request{MIG: map[string]int64{"1g.10gb": 1}})
		if err != nil {
			t.Fatalf("1g #%d: %v", k, err)
		}
		if err := n.Apply(a); err != nil {
			t.Fatalf("apply %v: %v", a, err)
		}
	}
	if n.Fits(Request{MIG: map[string]int64{"1g.10gb": 1}}) {
		t.Fatal("a fifth 1g fits where four exist")
	}
	if err := n.Apply(Assignment{{GPU: 6, MIG: Placement{"1g.10gb", 0}}}); err == nil {
		t.Fatal("applied an instance the layout does not have")
	}
	if err := n.SetLayout(6, []Placement{{"7g.80gb", 0}}); err == nil || !strings.Contains(err.Error(), "holds MIG instance") {
		t.Fatalf("a new layout under held instances: %v", err)
	}
	if err := n.SetLayout(0, []Placement{{"4g.40gb", 0}, {"4g.40gb", 4}}); err == nil || !strings.Contains(err.Error(), "not a valid MIG geometry") {
		t.Fatalf("4g at offset 4: %v", err)
	}
	n.GPUs[1].UsedMilli = 300
	if err := n.SetLayout(1, layout); err == nil {
		t.Fatal("a GPU holding a share was partitioned")
	}
	if err := NewNodeDevices("Tesla-T4", 1, 0).SetLayout(0, []Placement{{"1g.5gb", 0}}); err == nil {
		t.Fatal("a T4 took a MIG layout")
	}
}

func TestOnDemandPartitioning(t *testing.T) {
	n := NodeDevicesFor(migNode(map[string]string{LabelMIGPartitioning: MIGOnDemand}))
	if !n.OnDemand || n.WholeFree() != 8 {
		t.Fatalf("on-demand node: on demand %v, %d whole free", n.OnDemand, n.WholeFree())
	}
	a := Assignment{{GPU: 0, MIG: Placement{"3g.40gb", 4}}}
	if err := n.Apply(a); err != nil {
		t.Fatal(err)
	}
	if !n.GPUs[0].MIGMode || n.WholeFree() != 7 || n.FreeMilli(0) != 0 {
		t.Fatalf("after a 3g: MIG mode %v, %d whole free, GPU 0 free %d", n.GPUs[0].MIGMode, n.WholeFree(), n.FreeMilli(0))
	}
	if err := n.Apply(Assignment{{GPU: 0, Milli: 100}}); err == nil {
		t.Fatal("a share went onto a partitioned GPU")
	}
	if err := n.Apply(Assignment{{GPU: 1, Milli: 500}}); err != nil {
		t.Fatal(err)
	}
	if err := n.Apply(Assignment{{GPU: 1, MIG: Placement{"1g.10gb", 0}}}); err == nil {
		t.Fatal("a MIG instance went onto a GPU holding a share")
	}
	if err := n.Release(a); err != nil {
		t.Fatal(err)
	}
	if n.GPUs[0].MIGMode || n.WholeFree() != 7 || !n.Fits(Request{GPUs: 7}) {
		t.Fatalf("after the last instance left: MIG mode %v, %d whole free", n.GPUs[0].MIGMode, n.WholeFree())
	}
	if !n.Fits(Request{MIG: map[string]int64{"7g.80gb": 7}}) {
		t.Fatal("seven 7g instances do not fit on seven idle on-demand GPUs")
	}
	if NodeDevicesFor(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{LabelProduct: "Tesla-T4", LabelCount: "1", LabelMIGPartitioning: MIGOnDemand}}}).OnDemand {
		t.Fatal("a T4 is partitioned on demand")
	}
}

func TestPodProducts(t *testing.T) {
	pod := func(sel map[string]string, terms ...[]string) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{NodeSelector: sel}}
		if len(terms) > 0 {
			var ts []corev1.NodeSelectorTerm
			for _, vals := range terms {
				var exprs []corev1.NodeSelectorRequirement
				if vals != nil {
					exprs = append(exprs, corev1.NodeSelectorRequirement{Key: LabelProduct, Operator: corev1.NodeSelectorOpIn, Values: vals})
				}
				ts = append(ts, corev1.NodeSelectorTerm{MatchExpressions: exprs})
			}
			p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: ts}}}
		}
		return p
	}
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"none", pod(nil), nil},
		{"affinity", pod(nil, []string{"A", "B"}), []string{"A", "B"}},
		{"two terms", pod(nil, []string{"A"}, []string{"B"}), []string{"A", "B"}},
		{"a term without product", pod(nil, []string{"A"}, nil), nil},
		{"selector", pod(map[string]string{LabelProduct: "A"}), []string{"A"}},
		{"selector within affinity", pod(map[string]string{LabelProduct: "B"}, []string{"A", "B"}), []string{"B"}},
		{"selector outside affinity", pod(map[string]string{LabelProduct: "C"}, []string{"A"}), []string{}},
	} {
		if got := PodProducts(tc.pod); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
