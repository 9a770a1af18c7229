package gpupack

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/kubernetes/pkg/features"

	"github.com/pennysched/penny/pkg/gpu"
)

// Native PodGroups preempting through kube-scheduler's pod-group preemption
// (see TestPodGroupPreemptionEvictsOnlyTheVictimsInTheWay for its steps):
// it removes every pod of lower priority in the cluster, places the group,
// lets the members go, then filters each member on its node with each
// victim added back, most important first, and evicts only those the
// members do not fit next to. The group, its pods and every other pod get
// the priorities below.
const (
	lowPriority     = 0
	victimPriority  = 10 // a victim tried before those of lowPriority
	groupPriority   = 1000
	abovePreemption = 2000
)

// Pods in nobody's way stay when a PodGroup preempts. Each of nodes a and b
// has one GPU that no victim holds (a pod above the group holds the
// other), so a member goes to each and needs the pod of lower priority on
// that GPU gone. The CPU-only pod next to one of them, and the GPU pod on c
// (too little CPU for a member), are in nobody's way.
//
// Filter answered from the view of the last member's PreFilter, which
// counted the first member on its node: that member did not fit next to
// itself, no victim could stay, and every pod of lower priority in the
// cluster was evicted.
func TestNativePodGroupPreemptionLeavesPodsInNobodysWay(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	nodes := []*corev1.Node{groupNode("a", "16"), groupNode("b", "16"), groupNode("c", "4")}
	s := startScheduler(t, nodes,
		withPriority(wholeGPUPod("keep-a", "a", "0"), abovePreemption),
		withPriority(wholeGPUPod("a1", "a", "1"), lowPriority),
		withPriority(wholeGPUPod("keep-b", "b", "0"), abovePreemption),
		withPriority(wholeGPUPod("b1", "b", "1"), lowPriority),
		withPriority(bound(podOf("b-cpu", "1"), "b", ""), lowPriority),
		withPriority(wholeGPUPod("c0", "c", "0"), lowPriority))
	members := s.preemptingGroup(groupMemberPod("m0", "8"), groupMemberPod("m1", "8"))
	s.checkPreempted(members, nodes, []string{"a1", "b1"}, []string{"keep-a", "keep-b", "b-cpu", "c0"})
}

// A victim whose devices a member needs is evicted, though the node's
// counts leave room: on a, two shares of lower priority sit on its two
// GPUs and a member needs a whole one. NodeResourcesFit counts shares and
// whole GPUs apart, so only PennyGPUPack's Filter sees that one share has
// to go; the one tried first (of higher priority) stays. On b the other
// member fits next to the GPU pod and the CPU-only pod. Each member is
// pinned to its node, so that the victims are fixed.
//
// This passes with Filter reading the view of the last member's PreFilter
// too, which did not hold the victims added back: the first preemptions
// then kept both shares and evicted nothing, but once the members carry
// the nodes they were nominated to, kube-scheduler filters each on a copy
// of its node, which the view reads afresh, and the next preemption
// evicts the right share. TestPodGroupPreemptionEvictsOnlyTheVictimsInTheWay
// checks the first answer.
func TestNativePodGroupPreemptionEvictsASharedGPUAMemberNeeds(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.GenericWorkload, true)
	nodes := []*corev1.Node{groupNode("a", "16"), groupNode("b", "16")}
	share := func(name, assignment string) *corev1.Pod {
		return bound(podOf(name, "1", string(gpu.ResourceGPUMilli), "500"), "a", assignment)
	}
	s := startScheduler(t, nodes,
		withPriority(share("share0", "0:500m"), victimPriority),
		withPriority(share("share1", "1:500m"), lowPriority),
		withPriority(wholeGPUPod("b0", "b", "0"), lowPriority),
		withPriority(bound(podOf("b-cpu", "1"), "b", ""), lowPriority))
	onNode := func(p *corev1.Pod, node string) *corev1.Pod {
		p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
		return p
	}
	members := s.preemptingGroup(onNode(groupMemberPod("m0", "1"), "a"), onNode(groupMemberPod("m1", "1"), "b"))
	s.checkPreempted(members, nodes, []string{"share1"}, []string{"share0", "b0", "b-cpu"})
}

// groupNode has two T4s, to be taken whole or in shares.
func groupNode(name, cpu string) *corev1.Node {
	n := gpuNode(name, "Tesla-T4", 2, cpu, corev1.LabelHostname, name)
	n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
	n.Status.Allocatable[gpu.ResourceGPUMilli] = resource.MustParse("2000")
	return n
}

func wholeGPUPod(name, node, assignment string) *corev1.Pod {
	return bound(podOf(name, "1", string(gpu.ResourceGPU), "1"), node, assignment)
}

// groupMemberPod asks for one whole GPU and cpu.
func groupMemberPod(name, cpu string) *corev1.Pod {
	return podOf(name, cpu, string(gpu.ResourceGPU), "1")
}

// preemptingGroup creates a PodGroup of groupPriority whose members all
// bind or none do, and its members, and returns their names.
func (s *realScheduler) preemptingGroup(members ...*corev1.Pod) []string {
	s.t.Helper()
	createPodGroup(s, "group", int32(len(members)), groupPriority)
	var names []string
	for _, p := range members {
		s.Create(withPriority(podGroupMember(p, "group"), groupPriority))
		names = append(names, p.Name)
	}
	return names
}

// checkPreempted waits for the group's members to bind, then checks that
// the evicted pods are gone, the kept ones are not, and no two pods on a
// node hold the same devices.
func (s *realScheduler) checkPreempted(members []string, nodes []*corev1.Node, evicted, kept []string) {
	s.t.Helper()
	// The group is retried only once its victims are deleted, so once its
	// members are bound every eviction is done.
	s.WaitBound(30*time.Second, members...)
	for _, name := range evicted {
		if _, err := s.Client.CoreV1().Pods("default").Get(s.Ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			s.t.Errorf("%s, in a member's way, was not evicted (%v)", name, err)
		}
	}
	for _, name := range kept {
		if _, err := s.Client.CoreV1().Pods("default").Get(s.Ctx, name, metav1.GetOptions{}); err != nil {
			s.t.Errorf("%s, in no member's way, was evicted: %v", name, err)
		}
	}
	pods, err := s.Client.CoreV1().Pods("default").List(s.Ctx, metav1.ListOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, n := range nodes {
		dev := gpu.NodeDevicesFor(n)
		var held []string
		for _, p := range pods.Items {
			got, ok := p.Annotations[gpu.AnnotationAssignment]
			if p.Spec.NodeName != n.Name || !ok {
				continue
			}
			held = append(held, p.Name+"="+got)
			a, err := gpu.ParseAssignment(got)
			if err == nil {
				err = dev.Apply(a)
			}
			if err != nil {
				s.t.Errorf("the pods on %s hold %q: %v", n.Name, held, err)
			}
		}
	}
}
