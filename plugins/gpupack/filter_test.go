package gpupack

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2/ktesting"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/parallelize"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"

	"github.com/pennysched/penny/pkg/gpu"
)

// A pod the devices turned away is retried when a GPU pod leaves a node or
// a node's GPUs change, and only then.
func TestQueueingHints(t *testing.T) {
	logger, _ := ktesting.NewTestContext(t)
	p, _ := newPlugin(t, nil, 1)
	events, err := p.EventsToRegister(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	hints := map[fwk.EventResource]fwk.QueueingHintFn{}
	for _, e := range events {
		hints[e.Event.Resource] = e.QueueingHintFn
	}
	if len(events) != 2 || hints[fwk.AssignedPod] == nil || hints[fwk.Node] == nil {
		t.Fatalf("events %+v: want an assigned pod's deletion and node changes, each with a hint", events)
	}
	waiting := podOf("waiting", "1", string(gpu.ResourceGPU), "2")

	withGPU := bound(podOf("trainer", "1", string(gpu.ResourceGPU), "1"), "a", "0")
	unbound := podOf("pending", "1", string(gpu.ResourceGPU), "1")
	nominated := podOf("preemptor", "1", string(gpu.ResourceGPU), "1")
	nominated.Status.NominatedNodeName = "a"
	for _, c := range []struct {
		name    string
		deleted *corev1.Pod
		want    fwk.QueueingHint
	}{
		{"a pod that held a GPU", withGPU, fwk.Queue},
		{"a pod that held a share", bound(podOf("share", "1", string(gpu.ResourceGPUMilli), "500"), "a", "0:500"), fwk.Queue},
		{"a pod without GPUs", bound(podOf("web", "1"), "a", ""), fwk.QueueSkip},
		{"a GPU pod that was never bound", unbound, fwk.QueueSkip},
		// Filter counted its GPUs on the node it was nominated to.
		{"a GPU pod nominated to a node", nominated, fwk.Queue},
	} {
		got, err := hints[fwk.AssignedPod](logger, waiting, c.deleted, nil)
		if err != nil || got != c.want {
			t.Errorf("deleted %s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}

	node := func(edit func(*corev1.Node)) *corev1.Node {
		n := gpuNode("a", "NVIDIA-A100-SXM4-80GB", 4, "32", "team", "ml")
		edit(n)
		return n
	}
	same := func(*corev1.Node) {}
	for _, c := range []struct {
		name     string
		old, new *corev1.Node
		want     fwk.QueueingHint
	}{
		{"a new GPU node", nil, node(same), fwk.Queue},
		{"a new CPU node", nil, gpuNode("c", "", 0, "32"), fwk.QueueSkip},
		{"another label", node(same), node(func(n *corev1.Node) { n.Labels["team"] = "web" }), fwk.QueueSkip},
		{"more CPU", node(same), node(func(n *corev1.Node) { n.Status.Allocatable[corev1.ResourceCPU] = resource.MustParse("64") }), fwk.QueueSkip},
		{"more GPUs", node(same), node(func(n *corev1.Node) {
			n.Labels[gpu.LabelCount] = "8"
			n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("8")
		}), fwk.Queue},
		{"another GPU model", node(same), node(func(n *corev1.Node) { n.Labels[gpu.LabelProduct] = "NVIDIA-H100-80GB-HBM3" }), fwk.Queue},
		{"MIG on demand", node(same), node(func(n *corev1.Node) { n.Labels[gpu.LabelMIGPartitioning] = gpu.MIGOnDemand }), fwk.Queue},
		{"a new MIG geometry", node(func(n *corev1.Node) {
			n.Labels[gpu.LabelMIGStrategy] = "mixed"
			n.Status.Allocatable[gpu.MIGResourceName("1g.10gb")] = resource.MustParse("7")
		}), node(func(n *corev1.Node) {
			n.Labels[gpu.LabelMIGStrategy] = "mixed"
			n.Status.Allocatable[gpu.MIGResourceName("1g.10gb")] = resource.MustParse("3")
			n.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("1")
		}), fwk.Queue},
		{"GPUs gone", node(same), gpuNode("a", "", 0, "32"), fwk.QueueSkip},
	} {
		var old any
		if c.old != nil {
			old = c.old
		}
		got, err := hints[fwk.Node](logger, waiting, old, c.new)
		if err != nil || got != c.want {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}

// Filter says UnschedulableAndUnresolvable where no pod the node could lose
// would make room, so that preemption does not try (and evict for nothing),
// and says why in words the scheduler's event can count; NoRoom stays
// Unschedulable.
func TestFilterSaysWhenPreemptionCannotHelp(t *testing.T) {
	mixed := func(name string, whole int, mig ...string) *corev1.Node {
		n := gpuNode(name, "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
		n.Status.Allocatable[gpu.ResourceGPU] = *resource.NewQuantity(int64(whole), resource.DecimalSI)
		for i := 0; i+1 < len(mig); i += 2 {
			n.Status.Allocatable[gpu.MIGResourceName(mig[i])] = resource.MustParse(mig[i+1])
		}
		return n
	}
	// All GPUs partitioned; half of them; three 2g.20gb per GPU as the
	// node reports them; one on-demand GPU holding a 3g.40gb.
	allMIG := mixed("all-mig", 0, "3g.40gb", "4")
	halfMIG := mixed("half-mig", 1, "3g.40gb", "2")
	layout := mixed("layout", 0, "2g.20gb", "6")
	onDemand := gpuNode("on-demand", "NVIDIA-A100-SXM4-80GB", 1, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand)
	threeG := bound(podOf("three-g", "1", "nvidia.com/mig-3g.40gb", "1"), "on-demand", "0:3g.40gb@4")
	wholeHeld := bound(podOf("whole-held", "1", string(gpu.ResourceGPU), "1"), "half-mig", "0")
	twoG := []gpu.Placement{{Profile: "2g.20gb", Start: 0}, {Profile: "2g.20gb", Start: 2}, {Profile: "2g.20gb", Start: 4}}
	initMetrics.Do(schedmetrics.InitMetrics)
	h := &handle{par: parallelize.NewParallelizer(1)}
	p, err := NewWith(context.Background(), nil, h, WithLayouts(layoutsOf{node: "layout", layout: [][]gpu.Placement{twoG, twoG}}))
	if err != nil {
		t.Fatal(err)
	}
	nodes := h.set(t, []*corev1.Node{allMIG, halfMIG, layout, onDemand}, threeG, wholeHeld)
	byName := map[string]fwk.NodeInfo{}
	for _, ni := range nodes {
		byName[ni.Node().Name] = ni
	}
	const never, noRoom = fwk.UnschedulableAndUnresolvable, fwk.Unschedulable
	for _, c := range []struct {
		pod  *corev1.Pod
		node string
		code fwk.Code
		msg  string
	}{
		{podOf("share", "1", string(gpu.ResourceGPUMilli), "460"), "all-mig", never,
			"node(s) had only GPUs in static MIG partitions (which take MIG instances only), none for 460 penny.dev/gpu-milli"},
		{podOf("whole", "1", string(gpu.ResourceGPU), "1"), "all-mig", never,
			"node(s) had fewer GPUs outside static MIG partitions (which take MIG instances only) than 1 nvidia.com/gpu"},
		{podOf("whole-2", "1", string(gpu.ResourceGPU), "2"), "half-mig", never,
			"node(s) had fewer GPUs outside static MIG partitions (which take MIG instances only) than 2 nvidia.com/gpu"},
		// Its one whole GPU is held: evicting that pod would help.
		{podOf("whole-1", "1", string(gpu.ResourceGPU), "1"), "half-mig", noRoom,
			"node(s) had fewer idle GPUs than 1 nvidia.com/gpu"},
		{podOf("seven-2g", "1", "nvidia.com/mig-2g.20gb", "7"), "layout", never,
			"node(s) could never hold 7 nvidia.com/mig-2g.20gb: more instances or slices than their GPUs' MIG geometry and layouts have with every GPU free"},
		{podOf("one-1g", "1", "nvidia.com/mig-1g.10gb", "1"), "layout", never,
			"node(s) could never hold 1 nvidia.com/mig-1g.10gb: more instances or slices than their GPUs' MIG geometry and layouts have with every GPU free"},
		{podOf("two-7g", "1", "nvidia.com/mig-7g.80gb", "2"), "on-demand", never,
			"node(s) could never hold 2 nvidia.com/mig-7g.80gb: more instances or slices than their GPUs' MIG geometry and layouts have with every GPU free"},
		// The 3g.40gb's pod could be evicted, and the GPU taken whole.
		{podOf("one-7g", "1", "nvidia.com/mig-7g.80gb", "1"), "on-demand", noRoom,
			"node(s) had no room on their GPUs' MIG geometry for 1 nvidia.com/mig-7g.80gb"},
		{podOf("share-od", "1", string(gpu.ResourceGPUMilli), "460"), "on-demand", noRoom,
			"node(s) had no GPU with 460 penny.dev/gpu-milli free"},
	} {
		state := framework.NewCycleState()
		if _, s := p.PreFilter(context.Background(), state, c.pod, nodes); !s.IsSuccess() {
			t.Fatalf("%s: PreFilter: %v", c.pod.Name, s)
		}
		s := p.Filter(context.Background(), state, c.pod, byName[c.node])
		if s.Code() != c.code || s.Message() != c.msg {
			t.Errorf("%s on %s: %v %q; want %v %q", c.pod.Name, c.node, s.Code(), s.Message(), c.code, c.msg)
		}
	}
}

// The packer places at most 16 MIG instances in one pod (the devices one
// placement may change); a pod asking for more hears so once, at PreFilter,
// rather than that no node's GPU can hold it.
func TestPreFilterRefusesMoreMIGInstancesThanThePackerPlaces(t *testing.T) {
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, []*corev1.Node{gpuNode("n", "NVIDIA-A100-SXM4-80GB", 8, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand)})
	pod := podOf("many", "1", "nvidia.com/mig-1g.10gb", "17")
	_, s := p.PreFilter(context.Background(), framework.NewCycleState(), pod, nodes)
	if s.Code() != fwk.UnschedulableAndUnresolvable || !strings.Contains(s.Message(), "asks for 17 MIG instances (17 nvidia.com/mig-1g.10gb): the GPU packer places at most 16 in one pod") {
		t.Fatalf("PreFilter: %v %q", s.Code(), s.Message())
	}
	if node, a := schedule(t, p, nodes, podOf("sixteen", "1", "nvidia.com/mig-1g.10gb", "16")); node != "n" || len(a) != 16 {
		t.Fatalf("16 instances: %q %v", node, a)
	}
}

// A pod asking for a 3g.40gb and two 2g.20gb fits one idle A100 (the 3g at
// offset 4, the 2g at 0 and 2). Filter turned it away from every such node:
// first-fit put the 3g at 0, where the second 2g has no offset left.
func TestFilterAdmitsMIGRequestsFirstFitCornersItself(t *testing.T) {
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, []*corev1.Node{gpuNode("n", "NVIDIA-A100-SXM4-80GB", 1, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand)})
	pod := podOf("balanced", "1", "nvidia.com/mig-3g.40gb", "1")
	pod.Spec.Containers[0].Resources.Limits["nvidia.com/mig-2g.20gb"] = resource.MustParse("2")
	pod.Spec.Containers[0].Resources.Requests["nvidia.com/mig-2g.20gb"] = resource.MustParse("2")
	state := framework.NewCycleState()
	if _, s := p.PreFilter(context.Background(), state, pod, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if s := p.Filter(context.Background(), state, pod, nodes[0]); !s.IsSuccess() {
		t.Fatalf("Filter on an idle A100: %v %q", s.Code(), s.Message())
	}
	node, a := schedule(t, p, nodes, pod)
	dev := gpu.NodeDevicesFor(nodes[0].Node())
	if node != "n" || dev.Apply(a) != nil || a.Matches(gpu.Request{MIG: map[string]int64{"3g.40gb": 1, "2g.20gb": 2}}) != nil {
		t.Fatalf("got %q %v", node, a)
	}
}
