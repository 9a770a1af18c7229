package gpupack

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/pkg/scheduler/framework"

	"github.com/pennysched/penny/pkg/gpu"
)

// groupMember is one pod of a pod-group cycle and what its cycle chose.
type groupMember struct {
	pod   *corev1.Pod
	state *framework.CycleState
	node  string
}

// groupState is a member's cycle state in kube-scheduler's pod-group
// cycle, which says it belongs to one.
func groupState() *framework.CycleState {
	s := framework.NewCycleState()
	s.SetPodGroupSchedulingCycle(framework.NewCycleState())
	return s
}

// podGroupAlgorithm drives the plugin as kube-scheduler v1.37's pod-group
// algorithm (schedule_one_podgroup.go, native PodGroups with
// GenericWorkload) does for a group: it schedules each member on the one
// snapshot of the cycle and assumes it into that snapshot before Reserve;
// the snapshot keeps the node's generation as it was, so nothing in the
// snapshot tells the view the member is there. Then every member is
// unreserved and forgotten from the snapshot, last first (the revert that
// always ends the algorithm). It returns the members it placed and stops at
// the first it cannot place.
func podGroupAlgorithm(t *testing.T, p *GPUPack, h *handle, pods ...*corev1.Pod) []groupMember {
	t.Helper()
	ctx := context.Background()
	nodes, err := h.snap.NodeInfos().List()
	if err != nil {
		t.Fatal(err)
	}
	var members []groupMember
	for _, pod := range pods {
		state := groupState()
		node := pick(t, p, nodes, pod, state)
		if node == "" {
			break
		}
		assumed := pod.DeepCopy()
		assumed.Spec.NodeName = node
		if err := h.snap.AssumePod(podInfo(t, assumed)); err != nil {
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
	return members
}

func podInfo(t *testing.T, pod *corev1.Pod) *framework.PodInfo {
	t.Helper()
	pi, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatal(err)
	}
	return pi
}

// podGroupCycle drives the plugin through a pod-group cycle whose members
// all fit: podGroupAlgorithm, then each member is reserved again with its
// cycle's state for its binding cycle, with no PreFilter in between: it is
// assumed in the cache, which the snapshot only shows from the next cycle
// on. It returns the members' nodes and what they reserved the second time.
func podGroupCycle(t *testing.T, p *GPUPack, h *handle, pods ...*corev1.Pod) ([]string, []gpu.Assignment) {
	t.Helper()
	ctx := context.Background()
	members := podGroupAlgorithm(t, p, h, pods...)
	if len(members) < len(pods) {
		t.Fatalf("no node for %s in the pod-group algorithm", pods[len(members)].Name)
	}
	placed, out := make([]string, len(members)), make([]gpu.Assignment, len(members))
	for i, m := range members {
		placed[i] = m.node
		m.state.SetPodGroupSchedulingCycle(nil)
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
			h.set(t, n)
			_, got := podGroupCycle(t, p, h, member("m0"), member("m1"))
			dev := gpu.NodeDevicesFor(c.node)
			for i, a := range got {
				if err := dev.Apply(a); err != nil {
					t.Fatalf("members got %v; m%d's devices are taken already: %v", got, i, err)
				}
			}
			// The next cycle sees both members assumed on the node, where
			// a third does not fit.
			nodes := h.set(t, n, bound(member("m0"), c.node.Name, ""), bound(member("m1"), c.node.Name, ""))
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
	h.set(t, n)
	placed, got := podGroupCycle(t, p, h,
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
	h.set(t, n)
	if _, got := podGroupCycle(t, p, h, podOf("m0", "1", string(gpu.ResourceGPU), "1")); got[0].String() != "0" {
		t.Fatalf("m0 got %v; want GPU 0, which deleted gone held", got[0])
	}
}

// reprieve asks, as kube-scheduler's pod-group preemption does of each
// victim once the algorithm has placed the group with every victim removed
// (podgrouppreemption.go, reprieveVictim), whether the members still fit on
// their nodes with the victim back: it adds the victim to the snapshot,
// filters each member on its node with the member's cycle state and, where
// it passes, adds and reserves it there, as the next members find it
// (Reserve's status is not read). The members are taken out again; a
// victim that can stay is left in.
func reprieve(t *testing.T, p *GPUPack, h *handle, members []groupMember, victim *corev1.Pod) bool {
	t.Helper()
	ctx, logger := context.Background(), klog.Background()
	if err := h.snap.AddPod(podInfo(t, victim), victim.Spec.NodeName); err != nil {
		t.Fatal(err)
	}
	var added []groupMember
	defer func() {
		for i := len(added) - 1; i >= 0; i-- {
			m := added[i]
			p.Unreserve(ctx, m.state, m.pod, m.node)
			if err := h.snap.RemovePod(logger, m.pod, m.node); err != nil {
				t.Fatal(err)
			}
		}
	}()
	for _, m := range members {
		ni, err := h.snap.NodeInfos().Get(m.node)
		if err != nil {
			t.Fatal(err)
		}
		if !p.Filter(ctx, m.state, m.pod, ni).IsSuccess() {
			if err := h.snap.RemovePod(logger, victim, victim.Spec.NodeName); err != nil {
				t.Fatal(err)
			}
			return false
		}
		if err := h.snap.AddPod(podInfo(t, m.pod), m.node); err != nil {
			t.Fatal(err)
		}
		p.Reserve(ctx, m.state, m.pod, m.node)
		added = append(added, m)
	}
	return true
}

// A native PodGroup that preempts evicts the victims in its way and no
// others. Preemption removes every pod of lower priority in the cluster
// from the snapshot, runs the pod-group algorithm (which reserves the
// members and reverts them), then filters the members again with each
// victim added back, without a PreFilter: a victim whose pods leave the
// members room stays. The view answered with the entries of the
// algorithm's last PreFilter, which held the members reserved before the
// last one (given back since) and none of the victims added back: a member
// did not fit next to itself, so pods in nobody's way were evicted (here a
// CPU-only pod; a PodGroup preempts in the whole cluster, so every pod of
// lower priority), and a victim whose GPU a member needs could be kept.
func TestPodGroupPreemptionEvictsOnlyTheVictimsInTheWay(t *testing.T) {
	one := gpuNode("t4-1", "Tesla-T4", 1, "64")
	one.Status.Allocatable[gpu.ResourceGPUMilli] = resource.MustParse("1000")
	n := []*corev1.Node{gpuNode("t4-2", "Tesla-T4", 2, "64"), one, gpuNode("cpu", "", 0, "64")}
	// Victims, most important first (the order preemption tries them in).
	spare := bound(podOf("spare", "1"), "cpu", "")
	share := bound(podOf("share", "1", string(gpu.ResourceGPUMilli), "500"), "t4-1", "0:500")
	var group []*corev1.Pod
	for _, name := range []string{"m0", "m1", "m2"} {
		group = append(group, podOf(name, "1", string(gpu.ResourceGPU), "1"))
	}
	p, h := newPlugin(t, nil, 1)
	h.set(t, n, spare, share)
	if placed := podGroupAlgorithm(t, p, h, group...); len(placed) == len(group) {
		t.Fatalf("the group fit next to the share on t4-1's only GPU: %v", placed)
	}
	if err := h.snap.StartMutations(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.snap.EndMutations(); err != nil {
			t.Fatal(err)
		}
	}()
	for _, v := range []*corev1.Pod{spare, share} {
		if err := h.snap.RemovePod(klog.Background(), v, v.Spec.NodeName); err != nil {
			t.Fatal(err)
		}
	}
	members := podGroupAlgorithm(t, p, h, group...)
	if len(members) < len(group) {
		t.Fatalf("the group did not fit with the victims removed: %d of %d placed", len(members), len(group))
	}
	if !reprieve(t, p, h, members, spare) {
		t.Errorf("spare, a CPU-only pod on a node without GPUs, is evicted to make room for the group")
	}
	if reprieve(t, p, h, members, share) {
		t.Errorf("share stays on t4-1's only GPU, which a member is placed on")
	}
}

// A member of a composite PodGroup (or of a PodGroup under topology-aware
// scheduling with composite groups on) is reserved on the placement the
// algorithm chose after every placement tried was reverted: assumed into
// the snapshot, then reserved, with no PreFilter since the reverts marked
// its node. The view counted the member itself on the node, on devices of
// its own guess and with its CPU taken, so a member that fills the node's
// GPUs or CPU was refused, and kube-scheduler failed the whole group with
// an error ("failed to assume the subtree") every cycle.
func TestPodGroupMemberReservedOnTheChosenPlacement(t *testing.T) {
	for _, c := range []struct {
		name string
		node *corev1.Node
		pod  *corev1.Pod
	}{
		{"the node's only GPU", gpuNode("t4", "Tesla-T4", 1, "64"), podOf("m0", "1", string(gpu.ResourceGPU), "1")},
		{"the node's last CPU", gpuNode("t4", "Tesla-T4", 2, "1"), podOf("m0", "1", string(gpu.ResourceGPU), "1")},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			p, h := newPlugin(t, nil, 1)
			h.set(t, []*corev1.Node{c.node})
			// The placement tried, and reverted.
			members := podGroupAlgorithm(t, p, h, c.pod)
			if len(members) != 1 {
				t.Fatalf("%s was not placed", c.pod.Name)
			}
			m := members[0]
			if err := h.snap.AssumePod(podInfo(t, m.pod)); err != nil {
				t.Fatal(err)
			}
			if s := p.Reserve(ctx, m.state, m.pod, m.node); !s.IsSuccess() {
				t.Fatalf("Reserve of %s on the chosen placement: %v", m.pod.Name, s)
			}
			st, err := getState(m.state)
			if err != nil {
				t.Fatal(err)
			}
			if got := st.assigned.String(); got != "0" {
				t.Errorf("%s reserved %q on the chosen placement; want GPU 0", m.pod.Name, got)
			}
		})
	}
}

// podsExist gives the view a pod lister holding pods, as the scheduler's
// pod informer does: the pods that exist in the API server.
func podsExist(t *testing.T, p *GPUPack, pods ...*corev1.Pod) {
	t.Helper()
	store := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, pod := range pods {
		if err := store.Add(pod); err != nil {
			t.Fatal(err)
		}
	}
	p.view.pods = corelisters.NewPodLister(store)
}

// A pod reserved but not yet bound keeps its devices through a PodGroup's
// preemption. The preemption removes every pod of lower priority from the
// snapshot, such a pod among them, and runs the pod-group algorithm, whose
// PreFilter read the node without it and dropped its reservation. Added
// back to ask whether it can stay, it was counted on a first-fit guess: here
// next to the share of GPU 0, so the member seemed to fit on GPU 1, which
// the pod holds, and the pod was kept. The guess outlived the preemption:
// the next pod was offered GPU 1 too. A pod that is gone still gives its
// devices back.
func TestPreemptionKeepsTheReservationOfAPodBeingBound(t *testing.T) {
	ctx := context.Background()
	n := []*corev1.Node{groupNode("t4", "64")}
	// above holds half of GPU 0 and is no victim; inflight was given half of
	// GPU 1 and is being bound (assumed: on the node, no annotation yet).
	above := bound(podOf("above", "1", string(gpu.ResourceGPUMilli), "500"), "t4", "0:500")
	inflight := bound(podOf("inflight", "1", string(gpu.ResourceGPUMilli), "500"), "t4", "")
	p, h := newPlugin(t, nil, 1)
	podsExist(t, p, above, inflight)
	p.view.reserve(inflight, "t4", gpu.Assignment{{GPU: 1, Milli: 500}})
	nodes := h.set(t, n, above, inflight)
	if got := pick(t, p, nodes, podOf("m0", "1", string(gpu.ResourceGPU), "1"), groupState()); got != "" {
		t.Fatalf("m0 fits on %s with both GPUs shared", got)
	}

	if err := h.snap.StartMutations(); err != nil {
		t.Fatal(err)
	}
	if err := h.snap.RemovePod(klog.Background(), inflight, "t4"); err != nil {
		t.Fatal(err)
	}
	members := podGroupAlgorithm(t, p, h, podOf("m0", "1", string(gpu.ResourceGPU), "1"))
	if len(members) != 1 {
		t.Fatal("m0 does not fit with inflight removed")
	}
	if reprieve(t, p, h, members, inflight) {
		t.Errorf("inflight stays on GPU 1, the only GPU m0 can have: the group's member would be bound next to it")
	}
	if err := h.snap.EndMutations(); err != nil {
		t.Fatal(err)
	}
	if got := p.reservation(inflight.UID).String(); got != "1:500m" {
		t.Errorf("inflight's reservation after the preemption: %q, want 1:500m", got)
	}

	// The next cycle, inflight still being bound.
	nodes = h.set(t, n, above, inflight)
	if _, a := schedule(t, p, nodes, podOf("next", "1", string(gpu.ResourceGPUMilli), "500")); a.String() != "0:500m" {
		t.Errorf("next got %v; want 0:500m, the half of GPU 0 left (inflight holds half of GPU 1)", a)
	}
	p.Unreserve(ctx, framework.NewCycleState(), podOf("next", "1"), "t4")

	// inflight is deleted once bound, before the view saw its annotation.
	podsExist(t, p, above)
	if _, a := schedule(t, p, h.set(t, n, above), podOf("whole", "1", string(gpu.ResourceGPU), "1")); a.String() != "1" {
		t.Errorf("whole got %v; want GPU 1, which deleted inflight held", a)
	}
}
