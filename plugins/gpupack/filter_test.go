package gpupack

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2/ktesting"
	fwk "k8s.io/kube-scheduler/framework"

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
	for _, c := range []struct {
		name    string
		deleted *corev1.Pod
		want    fwk.QueueingHint
	}{
		{"a pod that held a GPU", withGPU, fwk.Queue},
		{"a pod that held a share", bound(podOf("share", "1", string(gpu.ResourceGPUMilli), "500"), "a", "0:500"), fwk.Queue},
		{"a pod without GPUs", bound(podOf("web", "1"), "a", ""), fwk.QueueSkip},
		{"a GPU pod that was never bound", unbound, fwk.QueueSkip},
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
