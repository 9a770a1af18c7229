package gpupack

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
)

// groupMember is one pod of a pod-group cycle and what its cycle chose.
type groupMember struct {
	pod   *corev1.Pod
	state fwk.CycleState
	node  string
}

// podGroupCycle drives the plugin as kube-scheduler v1.37's pod-group cycle
// (schedule_one_podgroup.go, native PodGroups with GenericWorkload) does
// for a group whose members all fit. The algorithm schedules each member
// on the one snapshot of the cycle and assumes it into that snapshot
// before Reserve; the snapshot keeps the node's generation as it was, so
// nothing in the snapshot tells the view the member is there. Then every
// member is unreserved and forgotten from the snapshot, last first (the
// revert that always ends the algorithm), and each is reserved again with
// its cycle's state for its binding cycle, with no PreFilter in between:
// it is assumed in the cache, which the snapshot only shows from the next
// cycle on. It returns the members' nodes and what they reserved the
// second time.
func podGroupCycle(t *testing.T, p *GPUPack, h *handle, nodes []fwk.NodeInfo, pods ...*corev1.Pod) ([]string, []gpu.Assignment) {
	t.Helper()
	ctx := context.Background()
	var members []groupMember
	for _, pod := range pods {
		state := framework.NewCycleState()
		node := pick(t, p, nodes, pod, state)
		if node == "" {
			t.Fatalf("no node for %s in the pod-group algorithm", pod.Name)
		}
		assumed := pod.DeepCopy()
		assumed.Spec.NodeName = node
		pi, err := framework.NewPodInfo(assumed)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.snap.AssumePod(pi); err != nil {
			t.Fatal(err)
		}
		if s := p.Reserve(ctx, state, assumed, node); !s.IsSuccess() {
			t.Fatalf("Reserve of %s in the pod-group algorithm: %v", pod.Name, s)
		}
		members = append(members, groupMember{pod: assumed, state: state, node: node})
	}
	for i := len(members) - 1; i >= 0; i-- {
		m := members[i]
		p.Unreserve(ctx, m.state, m.pod, m.node)
		if err := h.snap.ForgetPod(klog.Background(), m.pod); err != nil {
			t.Fatal(err)
		}
	}
	placed, out := make([]string, len(members)), make([]gpu.Assignment, len(members))
	for i, m := range members {
		placed[i] = m.node
		if s := p.Reserve(ctx, m.state, m.pod, m.node); !s.IsSuccess() {
			t.Fatalf("Reserve of %s for its binding cycle: %v", m.pod.Name, s)
		}
		st, err := getState(m.state)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = st.assigned
	}
	return placed, out
}

// Members of a native PodGroup placed on one node must get devices of
// their own: the pod-group cycle reserves them one after another on a
// snapshot whose node never changes generation, and reserves them again
// for binding with no PreFilter between them. The view handed every member
// the same GPU (or share's GPU, or MIG instance), and the node side would
// have been told to run them all there. The second Reserve also needs the
// first round's reservations given back (Unreserve): held, they fill the
// node and no member binds.
func TestPodGroupMembersGetDevicesOfTheirOwn(t *testing.T) {
	t4 := gpuNode("t4", "Tesla-T4", 2, "64")
	t4.Status.Allocatable[gpu.ResourceGPUMilli] = resource.MustParse("2000")
	a100 := gpuNode("a100", "NVIDIA-A100-SXM4-80GB", 1, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand)
	a100.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("2")
	for _, c := range []struct {
		name string
		node *corev1.Node
		req  []string // resource, quantity of each member
	}{
		{"whole GPU", t4, []string{string(gpu.ResourceGPU), "1"}},
		{"GPU share", t4, []string{string(gpu.ResourceGPUMilli), "600"}},
		{"MIG on demand", a100, []string{"nvidia.com/mig-3g.40gb", "1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := []*corev1.Node{c.node}
			member := func(name string) *corev1.Pod { return podOf(name, "1", c.req...) }
			p, h := newPlugin(t, nil, 1)
			nodes := h.set(t, n)
			_, got := podGroupCycle(t, p, h, nodes, member("m0"), member("m1"))
			dev := gpu.NodeDevicesFor(c.node)
			for i, a := range got {
				if err := dev.Apply(a); err != nil {
					t.Fatalf("members got %v; m%d's devices are taken already: %v", got, i, err)
				}
			}
			// The next cycle sees both members assumed on the node, where
			// a third does not fit.
			nodes = h.set(t, n, bound(member("m0"), c.node.Name, ""), bound(member("m1"), c.node.Name, ""))
			if node, a := schedule(t, p, nodes, member("m2")); node != "" {
				t.Fatalf("m2 got %q %v next to %v: the members' devices were handed out again", node, a, got)
			}
		})
	}
}

// A member is placed on a node only where the devices the members before
// it reserved leave room: Filter reads the view, which must see them,
// although assuming a member into the pod-group cycle's snapshot leaves the
// node's generation as it was. Otherwise the second member is sent where
// the first's GPU is the only one, and its Reserve for binding fails.
func TestPodGroupMembersSpreadWhereDevicesAreReserved(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4-a", "Tesla-T4", 1, "64"), gpuNode("t4-b", "Tesla-T4", 1, "64")}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n)
	placed, got := podGroupCycle(t, p, h, nodes,
		podOf("m0", "1", string(gpu.ResourceGPU), "1"), podOf("m1", "1", string(gpu.ResourceGPU), "1"))
	if placed[0] == placed[1] {
		t.Fatalf("both members went to %s (%v): it has one GPU", placed[0], got)
	}
}

// A pod deleted once bound, before the view saw its annotation, leaves no
// pod for its reservation: the node's next sync drops it. Were it kept, a
// pod-group cycle's Reserve for binding, which counts every reservation on
// the node, would hold the deleted pod's GPU for good.
func TestReservationOfADeletedPodIsDropped(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 1, "64")}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n)
	if node, _ := schedule(t, p, nodes, podOf("gone", "1", string(gpu.ResourceGPU), "1")); node != "t4" {
		t.Fatalf("gone was not placed: %q", node)
	}
	nodes = h.set(t, n)
	if _, got := podGroupCycle(t, p, h, nodes, podOf("m0", "1", string(gpu.ResourceGPU), "1")); got[0].String() != "0" {
		t.Fatalf("m0 got %v; want GPU 0, which deleted gone held", got[0])
	}
}
