package gang

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"k8s.io/kubernetes/pkg/scheduler/profile"

	"github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gang"
	"github.com/pennysched/penny/pkg/gpu"
)

// cluster is a real kube-scheduler (queue, cache, framework, binding cycle)
// running the penny-scheduler profile from deploy/scheduler/config.yaml
// against a fake clientset whose binding subresource sets spec.nodeName. It
// exercises the plugin exactly as the scheduler drives it; the integration
// tests under test/integration/gang do the same against a real API server.
type cluster struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	plugin *Gang
	mu     sync.Mutex
	// version is the last resourceVersion handed out; guarded by mu.
	version int
}

const testSchedulerName = "penny-scheduler"

// loadProfile reads the deployed profile and swaps in args for the test.
func loadProfile(t *testing.T, args *Args) config.KubeSchedulerProfile {
	t.Helper()
	data, err := os.ReadFile("../../deploy/scheduler/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := scheme.Codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("decoding deploy/scheduler/config.yaml: %v", err)
	}
	cfg := obj.(*config.KubeSchedulerConfiguration)
	for _, p := range cfg.Profiles {
		if p.SchedulerName != testSchedulerName {
			continue
		}
		if args != nil {
			for i := range p.PluginConfig {
				if p.PluginConfig[i].Name == Name {
					p.PluginConfig[i].Args = args
				}
			}
		}
		return withoutOtherPennyPlugins(p)
	}
	t.Fatalf("deploy/scheduler/config.yaml has no %s profile", testSchedulerName)
	return config.KubeSchedulerProfile{}
}

// withoutOtherPennyPlugins drops the deployed profile's other out-of-tree
// plugins (SpotRisk), which this package cannot register: plugins do not
// import each other.
func withoutOtherPennyPlugins(p config.KubeSchedulerProfile) config.KubeSchedulerProfile {
	inTree := plugins.NewInTreeRegistry()
	keep := func(name string) bool { _, ok := inTree[name]; return ok || name == Name }
	pl := p.Plugins
	for _, set := range []*config.PluginSet{&pl.PreEnqueue, &pl.QueueSort, &pl.PreFilter, &pl.Filter, &pl.PostFilter,
		&pl.PreScore, &pl.Score, &pl.Reserve, &pl.Permit, &pl.PreBind, &pl.Bind, &pl.PostBind, &pl.MultiPoint} {
		var enabled []config.Plugin
		for _, e := range set.Enabled {
			if keep(e.Name) {
				enabled = append(enabled, e)
			}
		}
		set.Enabled = enabled
	}
	var args []config.PluginConfig
	for _, pc := range p.PluginConfig {
		if keep(pc.Name) {
			args = append(args, pc)
		}
	}
	p.PluginConfig = args
	return p
}

func startCluster(t *testing.T, args *Args, nodes ...*corev1.Node) *cluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctx = klog.NewContext(ctx, klog.Background())
	client := fake.NewClientset()
	c := &cluster{t: t, ctx: ctx, client: client}
	client.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		if action.GetSubresource() != "binding" {
			return false, nil, nil
		}
		b := action.(clienttesting.CreateAction).GetObject().(*corev1.Binding)
		c.mu.Lock()
		defer c.mu.Unlock()
		obj, err := client.Tracker().Get(corev1.SchemeGroupVersion.WithResource("pods"), b.Namespace, b.Name)
		if err != nil {
			return true, nil, err
		}
		pod := obj.(*corev1.Pod).DeepCopy()
		if pod.Spec.NodeName != "" {
			return true, nil, fmt.Errorf("pod %s/%s is already bound to %s", pod.Namespace, pod.Name, pod.Spec.NodeName)
		}
		pod.Spec.NodeName = b.Target.Name
		c.bumpVersion(pod)
		return true, nil, client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), pod, pod.Namespace)
	})
	for _, n := range nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	informerFactory := scheduler.NewInformerFactory(client, 0, nil)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	registry := frameworkruntime.Registry{
		Name: func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
			pl, err := NewWith(ctx, obj, h)
			if err == nil {
				c.plugin = pl
			}
			return pl, err
		},
		holderName: func(context.Context, runtime.Object, fwk.Handle) (fwk.Plugin, error) { return holder{}, nil },
	}
	prof := loadProfile(t, args)
	prof.Plugins.PreEnqueue.Enabled = append(prof.Plugins.PreEnqueue.Enabled, config.Plugin{Name: holderName})
	sched, err := scheduler.New(ctx, client, informerFactory, nil, profile.NewRecorderFactory(broadcaster),
		scheduler.WithProfiles(prof),
		scheduler.WithFrameworkOutOfTreeRegistry(registry),
		scheduler.WithPodInitialBackoffSeconds(1),
		scheduler.WithPodMaxBackoffSeconds(1),
	)
	if err != nil {
		t.Fatalf("starting the scheduler with the deployed profile: %v", err)
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
	return c
}

// holdLabel keeps a pod out of the queue (holder's PreEnqueue) while set,
// without spec.schedulingGates: it stands for a member counted by its gang
// that the scheduler has not reached yet, so tests can have members wait in
// Permit for it. A gated member does not count, so it cannot serve.
const holdLabel = "test.penny.dev/hold"

const holderName = "TestHolder"

type holder struct{}

func (holder) Name() string { return holderName }

func (holder) PreEnqueue(_ context.Context, p *corev1.Pod) *fwk.Status {
	if _, ok := p.Labels[holdLabel]; ok {
		return fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "held by the test")
	}
	return nil
}

func (holder) EventsToRegister(context.Context) ([]fwk.ClusterEventWithHint, error) {
	return []fwk.ClusterEventWithHint{{Event: fwk.ClusterEvent{Resource: fwk.TargetPod, ActionType: fwk.UpdatePodLabel}}}, nil
}

func held() podOpt { return withLabel(holdLabel, "") }

func (c *cluster) unhold(name string) {
	c.t.Helper()
	c.update(name, func(p *corev1.Pod) { delete(p.Labels, holdLabel) })
}

// testArgs are short timeouts so tests finish in seconds.
func testArgs() *Args {
	return &Args{
		PermitTimeout: &metav1.Duration{Duration: 3 * time.Second},
		Backoff:       &metav1.Duration{Duration: 200 * time.Millisecond},
		MaxBackoff:    &metav1.Duration{Duration: 500 * time.Millisecond},
	}
}

type nodeOpt func(*corev1.Node)

func inZone(z string) nodeOpt {
	return func(n *corev1.Node) { n.Labels[corev1.LabelTopologyZone] = z }
}

func capType(c capacity.Type) nodeOpt {
	return func(n *corev1.Node) { n.Labels[capacity.LabelKarpenter] = string(c) }
}

// gpuNode is an 8-GPU node with 64 CPUs.
func gpuNode(name string, opts ...nodeOpt) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname:     name,
			corev1.LabelTopologyZone: "zone-a",
			capacity.LabelKarpenter:  string(capacity.OnDemand),
		}},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("64"),
				corev1.ResourceMemory: resource.MustParse("512Gi"),
				corev1.ResourcePods:   resource.MustParse("110"),
				gpu.ResourceGPU:       resource.MustParse("8"),
			},
		},
	}
	n.Status.Capacity = n.Status.Allocatable
	for _, o := range opts {
		o(n)
	}
	return n
}

type podOpt func(*corev1.Pod)

func gated() podOpt {
	return func(p *corev1.Pod) {
		p.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "test.penny.dev/hold"}}
	}
}

func withLabel(k, v string) podOpt {
	return func(p *corev1.Pod) { p.Labels[k] = v }
}

// member is a pod of gang name with the given size asking for gpus GPUs.
func member(gangName string, size, i int, gpus int64, opts ...podOpt) *corev1.Pod {
	p := plainPod(fmt.Sprintf("%s-%d", gangName, i), gpus, opts...)
	p.Labels[gang.LabelName] = gangName
	p.Labels[gang.KeySize] = fmt.Sprint(size)
	return p
}

func plainPod(name string, gpus int64, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "team", UID: types.UID("uid-" + name), Labels: map[string]string{}},
		Spec: corev1.PodSpec{
			SchedulerName: testSchedulerName,
			Containers: []corev1.Container{{
				Name: "c",
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")},
					Limits:   corev1.ResourceList{gpu.ResourceGPU: *resource.NewQuantity(gpus, resource.DecimalSI)},
				},
			}},
		},
	}
	p.Spec.Containers[0].Resources.Requests[gpu.ResourceGPU] = *resource.NewQuantity(gpus, resource.DecimalSI)
	for _, o := range opts {
		o(p)
	}
	return p
}

func (c *cluster) create(pods ...*corev1.Pod) {
	c.t.Helper()
	for _, p := range pods {
		if _, err := c.client.CoreV1().Pods(p.Namespace).Create(c.ctx, p, metav1.CreateOptions{}); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) delete(names ...string) {
	c.t.Helper()
	for _, n := range names {
		if err := c.client.CoreV1().Pods("team").Delete(c.ctx, n, metav1.DeleteOptions{}); err != nil {
			c.t.Fatal(err)
		}
	}
}

// bumpVersion sets a new resourceVersion, as the API server would: the
// fake tracker does not, and the scheduler ignores updates that keep it.
func (c *cluster) bumpVersion(p *corev1.Pod) {
	c.version++
	p.ResourceVersion = fmt.Sprint(c.version)
}

func (c *cluster) ungate(name string) {
	c.t.Helper()
	c.update(name, func(p *corev1.Pod) { p.Spec.SchedulingGates = nil })
}

// update applies change to pod name as a user's edit would.
func (c *cluster) update(name string, change func(*corev1.Pod)) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.client.CoreV1().Pods("team").Get(c.ctx, name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	change(p)
	c.bumpVersion(p)
	if _, err := c.client.CoreV1().Pods("team").Update(c.ctx, p, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// bound returns the nodes of the named pods that are bound.
func (c *cluster) bound(names ...string) map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for _, n := range names {
		p, err := c.client.CoreV1().Pods("team").Get(c.ctx, n, metav1.GetOptions{})
		if err != nil {
			continue
		}
		if p.Spec.NodeName != "" {
			out[n] = p.Spec.NodeName
		}
	}
	return out
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

// waitBound waits until all the named pods are bound.
func (c *cluster) waitBound(timeout time.Duration, pods ...string) map[string]string {
	c.t.Helper()
	var got map[string]string
	err := wait.PollUntilContextTimeout(c.ctx, 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		got = c.bound(pods...)
		return len(got) == len(pods), nil
	})
	if err != nil {
		c.t.Fatalf("waiting for %v to bind: only %d bound: %v", pods, len(got), got)
	}
	return got
}

// never checks for d that none of the pods binds.
func (c *cluster) neverBound(d time.Duration, pods ...string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if got := c.bound(pods...); len(got) > 0 {
			c.t.Fatalf("pods bound that must not: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEvent waits for an event on pod whose note contains text.
func (c *cluster) waitEvent(pod, text string) string {
	c.t.Helper()
	var seen []string
	err := wait.PollUntilContextTimeout(c.ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := c.client.EventsV1().Events("team").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range list.Items {
			if e.Regarding.Name != pod {
				continue
			}
			seen = append(seen, e.Reason+": "+e.Note)
			if strings.Contains(e.Note, text) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		c.t.Fatalf("no event on %s containing %q; events: %q", pod, text, seen)
	}
	for _, s := range seen {
		if strings.Contains(s, text) {
			return s
		}
	}
	return ""
}

// addNode creates a node, as a cloud provider bringing one up would.
func (c *cluster) addNode(n *corev1.Node) {
	c.t.Helper()
	if _, err := c.client.CoreV1().Nodes().Create(c.ctx, n, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// deleteNode deletes a node, as a cloud provider reclaiming a Spot node
// would.
func (c *cluster) deleteNode(name string) {
	c.t.Helper()
	if err := c.client.CoreV1().Nodes().Delete(c.ctx, name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatal(err)
	}
}
