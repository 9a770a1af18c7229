package gpupack

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler"
	config "k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/apis/config/scheme"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/profile"

	"github.com/pennysched/penny/pkg/gpu"
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

// realScheduler runs kube-scheduler (queue, cache, framework, preemption,
// binding) with PennyGPUPack against a fake clientset whose binding
// subresource sets the node and copies the Binding's annotations, as the
// API server does.
type realScheduler struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	plugin *GPUPack
	handle fwk.Handle
	// waiting receives each pod TestHoldAtPermit holds.
	waiting chan *corev1.Pod
	mu      sync.Mutex
	// version is the last resourceVersion handed out; failedBinds the
	// pods whose binding failed once; both guarded by mu.
	version     int
	failedBinds map[string]bool
}

// Pods with these labels wait at Permit until rejected, or have their
// first binding fail.
const (
	labelHoldAtPermit  = "test.penny.dev/hold-at-permit"
	labelFailBindOnce  = "test.penny.dev/fail-bind-once"
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
	ctx, cancel := context.WithCancel(context.Background())
	ctx = klog.NewContext(ctx, klog.Background())
	client := fake.NewClientset()
	s := &realScheduler{t: t, ctx: ctx, client: client, waiting: make(chan *corev1.Pod, 8), failedBinds: map[string]bool{}}
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, k8sruntime.Object, error) {
		if action.GetSubresource() != "binding" {
			return false, nil, nil
		}
		b := action.(clienttesting.CreateAction).GetObject().(*corev1.Binding)
		s.mu.Lock()
		defer s.mu.Unlock()
		obj, err := client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		pod := obj.(*corev1.Pod).DeepCopy()
		if _, ok := pod.Labels[labelFailBindOnce]; ok && !s.failedBinds[pod.Name] {
			s.failedBinds[pod.Name] = true
			return true, nil, fmt.Errorf("binding %s fails once (test)", pod.Name)
		}
		if pod.Spec.NodeName != "" {
			return true, nil, fmt.Errorf("pod %s/%s is already bound to %s", pod.Namespace, pod.Name, pod.Spec.NodeName)
		}
		pod.Spec.NodeName = b.Target.Name
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		for k, v := range b.Annotations {
			pod.Annotations[k] = v
		}
		s.version++
		pod.ResourceVersion = fmt.Sprint(s.version)
		return true, nil, client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, pod.Namespace)
	})
	for _, n := range nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s.create(pods...)
	obj, _, err := scheme.Codecs.UniversalDecoder().Decode([]byte(schedulerProfile), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	informerFactory := scheduler.NewInformerFactory(client, 0, nil)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	sched, err := scheduler.New(ctx, client, informerFactory, nil, profile.NewRecorderFactory(broadcaster),
		scheduler.WithProfiles(obj.(*config.KubeSchedulerConfiguration).Profiles...),
		scheduler.WithFrameworkOutOfTreeRegistry(frameworkruntime.Registry{
			Name: func(ctx context.Context, obj k8sruntime.Object, h fwk.Handle) (fwk.Plugin, error) {
				p, err := NewWith(ctx, obj, h)
				s.plugin = p
				return p, err
			},
			holdAtPermitPlugin: func(_ context.Context, _ k8sruntime.Object, h fwk.Handle) (fwk.Plugin, error) {
				s.handle = h
				return holdAtPermit{s.waiting}, nil
			},
		}),
		scheduler.WithPodInitialBackoffSeconds(1),
		scheduler.WithPodMaxBackoffSeconds(1),
	)
	if err != nil {
		t.Fatal(err)
	}
	broadcaster.StartRecordingToSink(ctx.Done())
	informerFactory.Start(ctx.Done())
	informerFactory.WaitForCacheSync(ctx.Done())
	done := make(chan struct{})
	go func() { sched.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		broadcaster.Shutdown()
		informerFactory.Shutdown()
	})
	return s
}

func (s *realScheduler) create(pods ...*corev1.Pod) {
	s.t.Helper()
	for _, p := range pods {
		if _, err := s.client.CoreV1().Pods(p.Namespace).Create(s.ctx, p, metav1.CreateOptions{}); err != nil {
			s.t.Fatal(err)
		}
	}
}

// waitFor polls the pod until done says it is in the state wanted; what it
// saw last goes into the failure.
func (s *realScheduler) waitFor(name, want string, done func(*corev1.Pod, error) bool) *corev1.Pod {
	s.t.Helper()
	var p *corev1.Pod
	var err error
	if werr := wait.PollUntilContextTimeout(s.ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err = s.client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
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
			s.create(withPriority(podOf("preemptor", "1", c.preemptor...), 100))
			s.waitFor("victim", "deleted", func(_ *corev1.Pod, err error) bool { return apierrors.IsNotFound(err) })
			p := s.waitFor("preemptor", "bound", func(p *corev1.Pod, err error) bool { return err == nil && p.Spec.NodeName != "" })
			if p.Spec.NodeName != "free-able" || p.Annotations[gpu.AnnotationAssignment] != c.assignment {
				t.Errorf("preemptor bound to %s with %q; want free-able with %q", p.Spec.NodeName, p.Annotations[gpu.AnnotationAssignment], c.assignment)
			}
			if _, err := s.client.CoreV1().Pods("default").Get(s.ctx, "important", metav1.GetOptions{}); err != nil {
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
	if err := wait.PollUntilContextTimeout(s.ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return s.handle.GetWaitingPod(p.UID) != nil, nil
	}); err != nil {
		s.t.Fatalf("%s is not among the waiting pods", name)
	}
	return p
}

// Devices a pod reserved go back, and only its own, when it does not bind:
// its binding fails, or it is deleted while it waits at Permit (as a gang
// member waits for its gang). The pods behind it then get them.
func TestPodsThatDoNotBindGiveBackTheirDevices(t *testing.T) {
	n := gpuNode("t4", "Tesla-T4", 2, "64")
	n.Status.Allocatable[corev1.ResourcePods] = resource.MustParse("110")
	s := startScheduler(t, []*corev1.Node{n})
	waiter := podOf("waiter", "1", string(gpu.ResourceGPU), "1")
	waiter.Labels = map[string]string{labelHoldAtPermit: ""}
	s.create(waiter)
	s.waitAtPermit("waiter")
	held := s.plugin.reservation(waiter.UID)
	if len(held) != 1 {
		t.Fatalf("waiter holds %v; want one GPU", held)
	}

	flaky := podOf("flaky", "1", string(gpu.ResourceGPU), "1")
	flaky.Labels = map[string]string{labelFailBindOnce: ""}
	s.create(flaky)
	p := s.waitFor("flaky", "bound", func(p *corev1.Pod, err error) bool { return err == nil && p.Spec.NodeName != "" })
	s.mu.Lock()
	failedOnce := s.failedBinds["flaky"]
	s.mu.Unlock()
	if !failedOnce {
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
	s.create(podOf("next", "1", string(gpu.ResourceGPU), "1"))
	if err := s.client.CoreV1().Pods("default").Delete(s.ctx, "waiter", metav1.DeleteOptions{}); err != nil {
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
