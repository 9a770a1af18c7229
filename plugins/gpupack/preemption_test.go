package gpupack

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	fwk "k8s.io/kube-scheduler/framework"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"

	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/schedulertest"
)

// schedulerProfile is kube-scheduler's default profile with PennyGPUPack
// added as deploy/scheduler/config.yaml adds it (everywhere, first at
// bind): DefaultPreemption is the stock PostFilter. The test's Permit
// plugin stands for PennyGang holding a member.
const schedulerProfile = `
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: penny-scheduler
  plugins:
    multiPoint:
      enabled:
      - name: PennyGPUPack
        weight: 10
    permit:
      enabled:
      - name: TestHoldAtPermit
    bind:
      enabled:
      - name: PennyGPUPack
`

// realScheduler runs kube-scheduler (see schedulertest) with PennyGPUPack.
type realScheduler struct {
	*schedulertest.Cluster
	t      *testing.T
	plugin *GPUPack
	// waiting receives each pod TestHoldAtPermit holds.
	waiting chan *corev1.Pod
}

// Pods with this label wait at Permit until rejected.
const (
	labelHoldAtPermit  = "test.penny.dev/hold-at-permit"
	holdAtPermitPlugin = "TestHoldAtPermit"
)

type holdAtPermit struct{ waiting chan *corev1.Pod }

func (holdAtPermit) Name() string { return holdAtPermitPlugin }

func (h holdAtPermit) Permit(_ context.Context, _ fwk.CycleState, p *corev1.Pod, _ string) (*fwk.Status, time.Duration) {
	if _, ok := p.Labels[labelHoldAtPermit]; !ok {
		return nil, 0
	}
	h.waiting <- p
	return fwk.NewStatus(fwk.Wait), time.Hour
}

func startScheduler(t *testing.T, nodes []*corev1.Node, pods ...*corev1.Pod) *realScheduler {
	t.Helper()
	waiting := make(chan *corev1.Pod, 8)
	s := schedulertest.Start(t, schedulertest.Options{
		Profile: schedulertest.Profile(t, []byte(schedulerProfile)),
		Registry: frameworkruntime.Registry{
			Name: New,
			holdAtPermitPlugin: func(context.Context, k8sruntime.Object, fwk.Handle) (fwk.Plugin, error) {
				return holdAtPermit{waiting}, nil
			},
		},
		Nodes: nodes,
		Pods:  pods,
	})
	return &realScheduler{Cluster: s, t: t, plugin: s.Plugin(Name).(*GPUPack), waiting: waiting}
}

// waitFor polls the pod until done says it is in the state wanted; what it
// saw last goes into the failure.
func (s *realScheduler) waitFor(name, want string, done func(*corev1.Pod, error) bool) *corev1.Pod {
	s.t.Helper()
	var p *corev1.Pod
	var err error
	if werr := wait.PollUntilContextTimeout(s.Ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err = s.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return done(p, err), nil
	}); werr != nil {
		if err != nil {
			s.t.Fatalf("%s is not %s: %v", name, want, err)
		}
		s.t.Fatalf("%s is not %s: on node %q, nominated to %q, devices %q", name, want, p.Spec.NodeName, p.Status.NominatedNodeName, p.Annotations[gpu.AnnotationAssignment])
	}
	return p
}

func withPriority(p *corev1.Pod, prio int32) *corev1.Pod {
	p.Spec.Priority = &prio
	return p
}

// A pod that fits a node only once a lower-priority GPU pod leaves it
// preempts that pod there: DefaultPreemption's dry run removes the victim
// from a copy of the node and runs Filter again, which must see the
// victim's devices free. Elsewhere a higher-priority pod holds the devices,
// so only the victim's node will do.
func TestPreemptionFreesVictimsDevices(t *testing.T) {
	t4 := func(name string) *corev1.Node {
		n := gpuNode(name, "Tesla-T4", 1, "64")
		n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
		n.Status.Allocatable[gpu.ResourceGPUMilli] = resource.MustParse("1000")
		return n
	}
	a100 := func(name string) *corev1.Node {
		n := gpuNode(name, "NVIDIA-A100-SXM4-80GB", 1, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand)
		n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
		n.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("2")
		n.Status.Allocatable[gpu.MIGResourceName("7g.80gb")] = resource.MustParse("1")
		return n
	}
	for _, c := range []struct {
		name         string
		nodes        func(string) *corev1.Node
		held, victim []string // resource, quantity, assignment
		preemptor    []string // resource, quantity
		assignment   string
	}{
		{name: "whole GPU", nodes: t4,
			held: []string{string(gpu.ResourceGPU), "1", "0"}, victim: []string{string(gpu.ResourceGPU), "1", "0"},
			preemptor: []string{string(gpu.ResourceGPU), "1"}, assignment: "0"},
		{name: "GPU share", nodes: t4,
			held: []string{string(gpu.ResourceGPUMilli), "600", "0:600m"}, victim: []string{string(gpu.ResourceGPUMilli), "600", "0:600m"},
			preemptor: []string{string(gpu.ResourceGPUMilli), "500"}, assignment: "0:500m"},
		{name: "MIG on demand", nodes: a100,
			held: []string{"nvidia.com/mig-3g.40gb", "1", "0:3g.40gb@4"}, victim: []string{"nvidia.com/mig-3g.40gb", "1", "0:3g.40gb@4"},
			preemptor: []string{"nvidia.com/mig-7g.80gb", "1"}, assignment: "0:7g.80gb@0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			important := withPriority(bound(podOf("important", "1", c.held[0], c.held[1]), "held", c.held[2]), 1000)
			victim := withPriority(bound(podOf("victim", "1", c.victim[0], c.victim[1]), "free-able", c.victim[2]), 0)
			s := startScheduler(t, []*corev1.Node{c.nodes("held"), c.nodes("free-able")}, important, victim)
			s.Create(withPriority(podOf("preemptor", "1", c.preemptor...), 100))
			s.waitFor("victim", "deleted", func(_ *corev1.Pod, err error) bool { return apierrors.IsNotFound(err) })
			p := s.waitFor("preemptor", "bound", func(p *corev1.Pod, err error) bool { return err == nil && p.Spec.NodeName != "" })
			if p.Spec.NodeName != "free-able" || p.Annotations[gpu.AnnotationAssignment] != c.assignment {
				t.Errorf("preemptor bound to %s with %q; want free-able with %q", p.Spec.NodeName, p.Annotations[gpu.AnnotationAssignment], c.assignment)
			}
			if _, err := s.Client.CoreV1().Pods("default").Get(s.Ctx, "important", metav1.GetOptions{}); err != nil {
				t.Errorf("the higher-priority pod is gone: %v", err)
			}
		})
	}
}

// waitAtPermit waits until pod is held at Permit: the framework lists it
// among the waiting pods, where its deletion rejects it.
func (s *realScheduler) waitAtPermit(name string) *corev1.Pod {
	s.t.Helper()
	var p *corev1.Pod
	select {
	case p = <-s.waiting:
	case <-time.After(30 * time.Second):
		s.t.Fatalf("%s never reached Permit", name)
	}
	if p.Name != name {
		s.t.Fatalf("%s reached Permit, want %s", p.Name, name)
	}
	if err := wait.PollUntilContextTimeout(s.Ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return s.Handle().GetWaitingPod(p.UID) != nil, nil
	}); err != nil {
		s.t.Fatalf("%s is not among the waiting pods", name)
	}
	return p
}

// Devices a pod reserved go back, and only its own, when it does not bind:
// its binding fails, or it is deleted while it waits at Permit (as a gang
// member waits for its gang). The pods behind it then get them. Here
// kube-scheduler forgets the pod from its cache right after Unreserve, and
// the node's next view drops the reservations of pods the node no longer
// holds, so this holds without Unreserve too; the pod-group cycle's tests
// (reserve_test.go, podgroup_test.go) need Unreserve itself.
func TestPodsThatDoNotBindGiveBackTheirDevices(t *testing.T) {
	n := gpuNode("t4", "Tesla-T4", 2, "64")
	n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
	s := startScheduler(t, []*corev1.Node{n})
	waiter := podOf("waiter", "1", string(gpu.ResourceGPU), "1")
	waiter.Labels = map[string]string{labelHoldAtPermit: ""}
	s.Create(waiter)
	s.waitAtPermit("waiter")
	held := s.plugin.reservation(waiter.UID)
	if len(held) != 1 {
		t.Fatalf("waiter holds %v; want one GPU", held)
	}

	flaky := podOf("flaky", "1", string(gpu.ResourceGPU), "1")
	flaky.Labels = map[string]string{schedulertest.LabelFailBindOnce: ""}
	s.Create(flaky)
	p := s.waitFor("flaky", "bound", func(p *corev1.Pod, err error) bool { return err == nil && p.Spec.NodeName != "" })
	if !s.FailedBind("flaky") {
		t.Fatal("flaky bound without its binding failing first")
	}
	a, err := gpu.ParseAssignment(p.Annotations[gpu.AnnotationAssignment])
	if err != nil || len(a) != 1 || a[0].GPU == held[0].GPU {
		t.Fatalf("flaky bound with %q (%v) after its first binding failed; want the GPU waiter does not hold (%v)", p.Annotations[gpu.AnnotationAssignment], err, held)
	}
	if got := s.plugin.reservation(waiter.UID); got.String() != held.String() {
		t.Fatalf("flaky's failed binding changed waiter's reservation from %v to %v", held, got)
	}

	// Both GPUs are held: the next pod waits until waiter's GPU is free.
	s.Create(podOf("next", "1", string(gpu.ResourceGPU), "1"))
	if err := s.Client.CoreV1().Pods("default").Delete(s.Ctx, "waiter", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p = s.waitFor("next", "bound", func(p *corev1.Pod, err error) bool { return err == nil && p.Spec.NodeName != "" })
	if got := p.Annotations[gpu.AnnotationAssignment]; got != held.String() {
		t.Errorf("next bound with %q; want the GPU deleted waiter held, %v", got, held)
	}
	if got := s.plugin.reservation(waiter.UID); got != nil {
		t.Errorf("deleted waiter still holds %v", got)
	}
}

// reservation is what the view holds for the pod (nil for nothing).
func (p *GPUPack) reservation(uid types.UID) gpu.Assignment {
	p.view.mu.Lock()
	defer p.view.mu.Unlock()
	return p.view.reserved[uid].a
}
