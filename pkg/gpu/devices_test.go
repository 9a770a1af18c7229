package gpu

import (
	"math"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func devicesWithUsed(used ...int64) *NodeDevices {
	n := NewNodeDevices("Tesla-T4", len(used), 0)
	for i, u := range used {
		n.GPUs[i].UsedMilli = u
	}
	return n
}

// The case aggregate counters get wrong: 1000 milli free in total, but no
// single GPU can take 600.
func TestSharesNeedOneGPU(t *testing.T) {
	n := devicesWithUsed(500, 500)
	if n.TotalFreeMilli() != 1000 {
		t.Fatalf("total free %d, want 1000", n.TotalFreeMilli())
	}
	if n.Fits(Request{Milli: 600}) {
		t.Fatal("600 milli fits on a node with 500 free on each GPU")
	}
	if !n.Fits(Request{Milli: 500}) {
		t.Fatal("500 milli does not fit on a GPU with 500 free")
	}
	if n.Fits(Request{GPUs: 1}) {
		t.Fatal("a whole GPU fits although both GPUs hold shares")
	}
}

func TestFirstFitAndBestFit(t *testing.T) {
	n := devicesWithUsed(200, 700, 0, 1000)
	a, err := n.FirstFit(Request{Milli: 300})
	if err != nil || a.String() != "0:300m" {
		t.Fatalf("first fit 300m: %v %v", a, err)
	}
	a, err = n.BestFit(Request{Milli: 300})
	if err != nil || a.String() != "1:300m" {
		t.Fatalf("best fit 300m: %v %v, want the GPU with 300 free", a, err)
	}
	a, err = n.BestFit(Request{GPUs: 1})
	if err != nil || a.String() != "2" {
		t.Fatalf("whole GPU: %v %v, want the only idle GPU 2", a, err)
	}
	if _, err := n.FirstFit(Request{GPUs: 2}); err == nil || !strings.Contains(err.Error(), "1 whole GPUs idle") {
		t.Fatalf("2 whole GPUs on a node with 1 idle: %v", err)
	}
	if got := n.ShareCandidates(300, nil); !reflect.DeepEqual(got, []int{0, 1, 2}) {
		t.Fatalf("share candidates for 300: %v", got)
	}
}

// An unhealthy GPU takes nothing new, while the pods it holds stay
// accounted on it.
func TestUnhealthyGPUTakesNothingNew(t *testing.T) {
	n := devicesWithUsed(0, 0)
	n.GPUs[0].Unhealthy = true
	if a, err := n.FirstFit(Request{Milli: 300}); err != nil || a.String() != "1:300m" {
		t.Fatalf("first fit 300m: %v %v, want the healthy GPU 1", a, err)
	}
	if _, err := n.FirstFit(Request{GPUs: 2}); err == nil {
		t.Fatal("two whole GPUs fit with one unhealthy")
	}
	if n.WholeFree() != 1 || n.TotalFreeMilli() != 1000 || len(n.ShareCandidates(1, nil)) != 1 {
		t.Fatalf("whole free %d, free %d: the unhealthy GPU counts", n.WholeFree(), n.TotalFreeMilli())
	}
	if err := n.Apply(Assignment{{GPU: 0, Milli: 600}}); err != nil {
		t.Fatalf("a pod already on the unhealthy GPU: %v", err)
	}
	if err := n.Apply(Assignment{{GPU: 0, Milli: 500}}); err == nil {
		t.Fatal("the unhealthy GPU held more than it has")
	}
	m := NewNodeDevices("A100-80GB", 0, 2)
	m.GPUs[0].Unhealthy = true
	if a, err := m.FirstFit(Request{MIG: map[string]int64{"3g.40gb": 1}}); err != nil || a[0].GPU != 1 {
		t.Fatalf("a 3g.40gb: %v %v, want it on the healthy GPU 1", a, err)
	}
	if err := m.Apply(Assignment{{GPU: 0, MIG: Placement{"3g.40gb", 0}}}); err != nil {
		t.Fatalf("an instance already on the unhealthy GPU: %v", err)
	}
}

func TestApplyReleaseAtomic(t *testing.T) {
	n := devicesWithUsed(0, 0)
	if err := n.Apply(Assignment{{GPU: 0, Milli: 600}, {GPU: 1, Milli: 1000}}); err != nil {
		t.Fatal(err)
	}
	before := n.Clone()
	// The second slot overflows GPU 0 (400 free, 500 asked in total): nothing may change.
	err := n.Apply(Assignment{{GPU: 0, Milli: 100}, {GPU: 0, Milli: 400}})
	if err == nil {
		t.Fatal("overcommitting GPU 0 was accepted")
	}
	if !reflect.DeepEqual(n, before) {
		t.Fatalf("failed Apply changed the view: %+v", n.GPUs)
	}
	if err := n.Apply(Assignment{{GPU: 7, Milli: 1000}}); err == nil {
		t.Fatal("GPU 7 on a 2-GPU node was accepted")
	}
	if err := n.Release(Assignment{{GPU: 0, Milli: 600}}); err != nil || n.GPUs[0].UsedMilli != 0 {
		t.Fatalf("release: %v, used %d", err, n.GPUs[0].UsedMilli)
	}
	if err := n.Release(Assignment{{GPU: 0, Milli: 1}}); err == nil {
		t.Fatal("released milli that was never held")
	}
}

func TestCloneSharesNothing(t *testing.T) {
	n := NewNodeDevices("A100-80GB", 0, 1)
	if err := n.Apply(Assignment{{GPU: 0, MIG: Placement{"1g.10gb", 0}}}); err != nil {
		t.Fatal(err)
	}
	c := n.Clone()
	c.GPUs[0].MIG[0].Start = 3
	c.GPUs[0].UsedMilli = 5
	if n.GPUs[0].MIG[0].Start != 0 || n.GPUs[0].UsedMilli != 0 {
		t.Fatal("changing the clone changed the original")
	}
}

func TestMIGPlacement(t *testing.T) {
	n := NewNodeDevices("NVIDIA-A100-SXM4-80GB", 0, 2)
	a, err := n.FirstFit(Request{MIG: map[string]int64{"1g.10gb": 1}})
	if err != nil || a.String() != "0:1g.10gb@0" {
		t.Fatalf("first 1g: %v %v", a, err)
	}
	if err := n.Apply(a); err != nil {
		t.Fatal(err)
	}
	// 1g at offset 0 blocks the only 4g offset on GPU 0: 4g goes to GPU 1.
	a, err = n.FirstFit(Request{MIG: map[string]int64{"4g.40gb": 1}})
	if err != nil || a.String() != "1:4g.40gb@0" {
		t.Fatalf("4g after 1g@0: %v %v", a, err)
	}
	// A 3g still fits next to the 1g; best fit packs it onto GPU 0.
	a, err = n.BestFit(Request{MIG: map[string]int64{"3g.40gb": 1}})
	if err != nil || a.String() != "0:3g.40gb@4" {
		t.Fatalf("best-fit 3g: %v %v", a, err)
	}
	// Two instances in one request are placed together, largest first.
	a, err = n.FirstFit(Request{MIG: map[string]int64{"1g.10gb": 1, "7g.80gb": 1}})
	if err != nil || a.String() != "1:7g.80gb@0,0:1g.10gb@1" {
		t.Fatalf("7g+1g: %v %v", a, err)
	}
	if n.Fits(Request{MIG: map[string]int64{"7g.80gb": 2}}) {
		t.Fatal("two 7g instances fit on a node whose GPU 0 holds a 1g")
	}
	if n.Fits(Request{Milli: 500}) || n.Fits(Request{GPUs: 1}) {
		t.Fatal("a share or a whole GPU fit on a node whose GPUs are all in MIG mode")
	}
	_, err = n.FirstFit(Request{MIG: map[string]int64{"1g.5gb": 1}})
	if err == nil || !strings.Contains(err.Error(), "1g.10gb") {
		t.Fatalf("unknown profile: want an error listing valid ones, got %v", err)
	}
	if NewNodeDevices("Tesla-T4", 0, 1).Fits(Request{MIG: map[string]int64{"1g.10gb": 1}}) {
		t.Fatal("a T4 took a MIG instance")
	}
	if err := n.Apply(Assignment{{GPU: 0, Milli: 100}}); err == nil {
		t.Fatal("a share went onto a GPU holding MIG instances")
	}
	if got, want := n.TotalUsedMilli(), int64(1000/7); got != want {
		t.Fatalf("used milli %d, want %d (one 1g instance)", got, want)
	}
}

func TestAssignmentRoundTrip(t *testing.T) {
	for _, v := range []string{"0", "0,1,2,3", "3:460m", "0:3g.40gb@4,1:1g.10gb@0"} {
		a, err := ParseAssignment(v)
		if err != nil || a.String() != v {
			t.Errorf("%q: parsed %v (%q), %v", v, a, a.String(), err)
		}
	}
	for v, want := range map[string]string{
		"":             "empty",
		"x":            "entry 1",
		"0,-1":         "entry 2",
		"0:1000m":      "milli 1..999",
		"0:460":        "<milli>m",
		"0:3g.40gb@9":  "offset",
		"0:3x.40gb@0":  "MIG profile",
		"1,2:0m,3":     "entry 2",
		"0:1g.10gb@-1": "offset",
	} {
		if _, err := ParseAssignment(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want an error mentioning %q, got %v", v, want, err)
		}
	}
}

func TestAssignmentMatchesRequest(t *testing.T) {
	cases := []struct {
		a  string
		r  Request
		ok bool
	}{
		{"0,1", Request{GPUs: 2}, true},
		{"0,0", Request{GPUs: 2}, false},
		{"0,1,2", Request{GPUs: 2}, false},
		{"2:460m", Request{Milli: 460}, true},
		{"2:500m", Request{Milli: 460}, false},
		{"2:460m", Request{GPUs: 1}, false},
		{"0:1g.10gb@0,0:1g.10gb@1", Request{MIG: map[string]int64{"1g.10gb": 2}}, true},
		{"0:1g.10gb@0,0:1g.10gb@0", Request{MIG: map[string]int64{"1g.10gb": 2}}, false},
		{"0:1g.10gb@0", Request{MIG: map[string]int64{"2g.20gb": 1}}, false},
	}
	for _, c := range cases {
		a, err := ParseAssignment(c.a)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Matches(c.r); (err == nil) != c.ok {
			t.Errorf("%q vs %s: err=%v, want ok=%v", c.a, c.r, err, c.ok)
		}
	}
}

func gpuPod(name, assignment string, limits corev1.ResourceList) *corev1.Pod {
	p := podWith(limits)
	p.Name = name
	if assignment != "" {
		p.Annotations = map[string]string{AnnotationAssignment: assignment}
	}
	return p
}

func TestNodeDevicesForAndAddPod(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{LabelProduct: "Tesla-T4"}},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			ResourceGPU:      resource.MustParse("2"),
			ResourceGPUMilli: resource.MustParse("2000"),
		}},
	}
	n := NodeDevicesFor(node)
	if len(n.GPUs) != 2 || n.Product != "Tesla-T4" || n.Model == nil || n.GPUs[0].MIGMode {
		t.Fatalf("node view: %+v", n)
	}
	node.Labels[LabelCount] = "4"
	if got := len(NodeDevicesFor(node).GPUs); got != 4 {
		t.Fatalf("gpu.count label: %d GPUs, want 4", got)
	}
	// MIG strategy mixed: the device plugin advertises the 2 non-MIG GPUs as
	// nvidia.com/gpu; the other 2 are in MIG mode (a T4 has no MIG geometry,
	// so an A100 node is used).
	mig := node.DeepCopy()
	mig.Labels[LabelProduct], mig.Labels[LabelMIGStrategy] = "NVIDIA-A100-SXM4-80GB", "mixed"
	if m := NodeDevicesFor(mig); m.WholeFree() != 2 || !m.GPUs[2].MIGMode || !m.GPUs[3].MIGMode || m.GPUs[1].MIGMode {
		t.Fatalf("mixed node: %+v", m.GPUs)
	}
	share := corev1.ResourceList{ResourceGPUMilli: resource.MustParse("460")}
	if _, err := n.AddPod(gpuPod("a", "1:460m", share)); err != nil || n.GPUs[1].UsedMilli != 460 {
		t.Fatalf("add share pod: %v, used %d", err, n.GPUs[1].UsedMilli)
	}
	if _, err := n.AddPod(gpuPod("b", "", share)); err == nil || !strings.Contains(err.Error(), AnnotationAssignment) {
		t.Fatalf("GPU pod without annotation: %v", err)
	}
	// A tenant claiming a whole GPU on a pod that asks for a share is refused.
	if _, err := n.AddPod(gpuPod("c", "0", share)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched annotation: %v", err)
	}
	if a, err := n.AddPod(gpuPod("d", "", corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")})); err != nil || a != nil {
		t.Fatalf("CPU pod: %v %v", a, err)
	}
}

// A node's kubelet (or an administrator's typo) can put any count in the
// gpu.count label or the allocatable resources; one no server has made the
// view allocate a device per unit of it (a panic here). Such a source is
// skipped, and said so.
func TestNodeDevicesSkipsCountsNoNodeHas(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{LabelProduct: "Tesla-T4", LabelCount: "10000000000000"}},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			ResourceGPU: resource.MustParse("2"),
		}},
	}
	n, err := ReadNodeDevices(node)
	if len(n.GPUs) != 2 || err == nil || !strings.Contains(err.Error(), LabelCount) || !strings.Contains(err.Error(), "10000000000000") {
		t.Fatalf("huge gpu.count label: %d GPUs, %v; want the 2 allocatable and an error naming the label", len(n.GPUs), err)
	}
	node.Labels[LabelCount] = "eight"
	if n, err := ReadNodeDevices(node); len(n.GPUs) != 2 || err == nil || !strings.Contains(err.Error(), `"eight"`) {
		t.Fatalf("gpu.count \"eight\": %d GPUs, %v", len(n.GPUs), err)
	}
	delete(node.Labels, LabelCount)
	node.Status.Allocatable[ResourceGPU] = resource.MustParse("1e15")
	if n, err := ReadNodeDevices(node); len(n.GPUs) != 0 || err == nil || !strings.Contains(err.Error(), string(ResourceGPU)) {
		t.Fatalf("allocatable 1e15 GPUs: %d GPUs, %v; want none and an error naming the resource", len(n.GPUs), err)
	}
	node.Status.Allocatable[ResourceGPU] = resource.MustParse("4")
	if n, err := ReadNodeDevices(node); len(n.GPUs) != 4 || err != nil {
		t.Fatalf("a sane node: %d GPUs, %v", len(n.GPUs), err)
	}
}

func TestFragMilli(t *testing.T) {
	w := Workload{
		{MilliCPU: 1000, GPUs: 1, MilliPerGPU: 500, Weight: 0.5},
		{MilliCPU: 1000, GPUs: 2, MilliPerGPU: 1000, Weight: 0.25},
		{MilliCPU: 1000, Weight: 0.25}, // CPU-only: all free GPU counts
	}
	// free 1000, 300: the share fits (300 is a fragment for it), the 2-GPU
	// shape does not fit (all 1300), the CPU pod sees all 1300.
	got := w.FragMilli(4000, []int64{1000, 300}, "Tesla-T4")
	want := 0.5*300 + 0.25*1300 + 0.25*1300
	if math.Abs(got-want) > 1e-9 {
		t.Fatalf("frag %v, want %v", got, want)
	}
	// No CPU left: nothing fits, everything is a fragment.
	if got := w.FragMilli(0, []int64{1000, 300}, "Tesla-T4"); math.Abs(got-1300) > 1e-9 {
		t.Fatalf("frag without CPU %v, want 1300", got)
	}
	// A shape that only accepts another model sees a fragment too.
	only := Workload{{MilliCPU: 0, GPUs: 1, MilliPerGPU: 500, Products: []string{"A10"}, Weight: 1}}
	if got := only.FragMilli(1, []int64{1000}, "Tesla-T4"); got != 1000 {
		t.Fatalf("wrong-model frag %v, want 1000", got)
	}
	if got := w.FragMilli(1000, []int64{0, 0}, ""); got != 0 {
		t.Fatalf("full node frag %v, want 0", got)
	}
}

func TestTypicalWorkload(t *testing.T) {
	counts := []ShapeCount{
		{Shape{MilliCPU: 1, GPUs: 1, MilliPerGPU: 1000}, 60},
		{Shape{MilliCPU: 2, GPUs: 1, MilliPerGPU: 500}, 30},
		{Shape{MilliCPU: 3}, 6},
		{Shape{MilliCPU: 4}, 4},
	}
	w := TypicalWorkload(counts, 0.95)
	if len(w) != 3 {
		t.Fatalf("%d shapes, want the 3 that cover 96%%", len(w))
	}
	var sum float64
	for _, s := range w {
		sum += s.Weight
	}
	if math.Abs(sum-1) > 1e-12 || math.Abs(w[0].Weight-60.0/96) > 1e-12 {
		t.Fatalf("weights %+v", w)
	}
	if got := TypicalWorkload(counts, 0.5); len(got) != 1 || got[0].Weight != 1 {
		t.Fatalf("coverage 0.5: %+v", got)
	}
}
