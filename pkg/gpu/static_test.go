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

func TestStaticLayoutFromCapacity(t *testing.T) {
	n := NodeDevicesFor(migNode(nil))
	if n.MIG {
		t.Fatal("a mixed-strategy node without the on-demand label is partitioned on demand")
	}
	for i := 0; i < 6; i++ {
		if len(n.GPUs[i].Layout) != 0 {
			t.Fatalf("GPU %d has layout %v; the first six are whole", i, n.GPUs[i].Layout)
		}
	}
	for i := 6; i < 8; i++ {
		got := map[string]int{}
		for _, p := range n.GPUs[i].Layout {
			got[p.Profile]++
		}
		if !reflect.DeepEqual(got, map[string]int{"3g.40gb": 1, "2g.20gb": 1, "1g.10gb": 2}) {
			t.Fatalf("GPU %d layout %v, want 3g+2g+2x1g", i, n.GPUs[i].Layout)
		}
	}
	if n.WholeFree() != 6 || n.FreeMilli(7) != 0 {
		t.Fatalf("whole free %d, free milli of GPU 7 %d", n.WholeFree(), n.FreeMilli(7))
	}
	if got := n.FreeInstances(); !reflect.DeepEqual(got, map[string]int{"3g.40gb": 2, "2g.20gb": 2, "1g.10gb": 4}) {
		t.Fatalf("free instances %v", got)
	}
	// Instances come from the layout only: there is no 4g, however idle the
	// partitioned GPUs are.
	if n.Fits(Request{MIG: map[string]int64{"4g.40gb": 1}}) {
		t.Fatal("a 4g fits on a node whose layouts have none")
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
	if err := n.Apply(Assignment{{GPU: 7, Milli: 500}}); err == nil {
		t.Fatal("a share went onto a partitioned GPU")
	}
}

func TestOnDemandLabel(t *testing.T) {
	n := NodeDevicesFor(migNode(map[string]string{LabelMIGPartitioning: MIGOnDemand}))
	if !n.MIG || n.HasLayout() {
		t.Fatalf("on-demand node: MIG %v, layout %v", n.MIG, n.HasLayout())
	}
	if !n.Fits(Request{MIG: map[string]int64{"7g.80gb": 8}}) {
		t.Fatal("eight 7g instances do not fit on eight idle on-demand GPUs")
	}
}

func TestSetLayout(t *testing.T) {
	n := NewNodeDevices("A100-80GB", 2, false)
	if err := n.SetLayout(0, []Placement{{"4g.40gb", 0}, {"4g.40gb", 4}}); err == nil || !strings.Contains(err.Error(), "not a valid MIG geometry") {
		t.Fatalf("4g at offset 4: %v", err)
	}
	if err := n.SetLayout(1, []Placement{{"3g.40gb", 0}, {"3g.40gb", 4}}); err != nil {
		t.Fatal(err)
	}
	if err := n.Apply(Assignment{{GPU: 1, MIG: Placement{"3g.40gb", 4}}}); err != nil {
		t.Fatal(err)
	}
	if err := n.SetLayout(1, []Placement{{"7g.80gb", 0}}); err == nil || !strings.Contains(err.Error(), "holds MIG instance") {
		t.Fatalf("relayout under a held instance: %v", err)
	}
	if err := n.SetLayout(1, nil); err == nil {
		t.Fatal("a GPU with a held instance became whole")
	}
	n.GPUs[0].UsedMilli = 300
	if err := n.SetLayout(0, []Placement{{"7g.80gb", 0}}); err == nil {
		t.Fatal("a GPU holding a share was partitioned")
	}
	if err := NewNodeDevices("Tesla-T4", 1, false).SetLayout(0, []Placement{{"1g.5gb", 0}}); err == nil {
		t.Fatal("a T4 took a MIG layout")
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
