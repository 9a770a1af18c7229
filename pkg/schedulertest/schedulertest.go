// Package schedulertest runs a real kube-scheduler (queue, cache, framework,
// preemption, binding cycle) against a fake clientset, for a plugin's unit
// tests: the plugin is driven exactly as the scheduler drives it, without an
// API server. The integration tests under test/integration do the same
// against a real API server.
//
// It lives in pkg/ because plugins never import each other: the plugin under
// test is handed in (its name, args and factory), never imported.
package schedulertest

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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

	"github.com/pennysched/penny/deploy"
)

// SchedulerName is the profile the tests run, and the one their pods ask for.
const SchedulerName = "penny-scheduler"

// LabelFailBindOnce makes a pod's first binding fail, as a binding call the
// API server refuses would.
const LabelFailBindOnce = "test.penny.dev/fail-bind-once"

// Profile decodes a KubeSchedulerConfiguration, with kube-scheduler's
// defaults, and returns its penny-scheduler profile.
func Profile(t testing.TB, data []byte) config.KubeSchedulerProfile {
	t.Helper()
	obj, _, err := scheme.Codecs.UniversalDecoder().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("decoding the scheduler configuration: %v", err)
	}
	for _, p := range obj.(*config.KubeSchedulerConfiguration).Profiles {
		if p.SchedulerName == SchedulerName {
			return p
		}
	}
	t.Fatalf("the scheduler configuration has no %s profile", SchedulerName)
	return config.KubeSchedulerProfile{}
}

// DeployedProfile is the penny-scheduler profile of
// deploy/scheduler/config.yaml with plugin's args replaced by args, unless
// args is nil. Of the out-of-tree plugins it keeps only plugin: a plugin's
// package cannot register the others, as plugins do not import each other.
func DeployedProfile(t testing.TB, plugin string, args runtime.Object) config.KubeSchedulerProfile {
	t.Helper()
	p := Profile(t, deploy.SchedulerConfig)
	if args != nil {
		for i := range p.PluginConfig {
			if p.PluginConfig[i].Name == plugin {
				p.PluginConfig[i].Args = args
			}
		}
	}
	inTree := plugins.NewInTreeRegistry()
	keep := func(name string) bool { _, ok := inTree[name]; return ok || name == plugin }
	for _, set := range pluginSets(p.Plugins) {
		var enabled []config.Plugin
		for _, e := range set.Enabled {
			if keep(e.Name) {
				enabled = append(enabled, e)
			}
		}
		set.Enabled = enabled
	}
	var pluginArgs []config.PluginConfig
	for _, pc := range p.PluginConfig {
		if keep(pc.Name) {
			pluginArgs = append(pluginArgs, pc)
		}
	}
	p.PluginConfig = pluginArgs
	return p
}

// pluginSets are every extension point's set of plugins, found by their
// type: a list written out missed the pod-group extension points
// kube-scheduler added, and the plugins' tests failed to start once the
// deployed profile named a Penny plugin under one of them.
func pluginSets(pl *config.Plugins) []*config.PluginSet {
	var sets []*config.PluginSet
	v := reflect.ValueOf(pl).Elem()
	for i := range v.NumField() {
		if set, ok := v.Field(i).Addr().Interface().(*config.PluginSet); ok {
			sets = append(sets, set)
		}
	}
	return sets
}

// Options are what a test hands Start.
type Options struct {
	// Profile is the profile the scheduler runs.
	Profile config.KubeSchedulerProfile
	// Registry builds the out-of-tree plugins Profile names: the plugin
	// under test and the test's own stand-ins.
	Registry frameworkruntime.Registry
	// Namespace holds the pods the Cluster's methods name; empty means
	// "default".
	Namespace string
	// Nodes and Pods exist before the scheduler starts.
	Nodes []*corev1.Node
	Pods  []*corev1.Pod
	// BackoffSeconds, when above 0, is how long a pod or pod group that
	// failed waits before it is tried again (initial and maximum backoff
	// alike), so that a test can tell a retry something asked for from the
	// queue's own; 0 means 1s.
	BackoffSeconds int64
}

// Cluster is a running scheduler and the fake clientset it schedules for.
// The clientset's binding subresource sets the pod's node and copies the
// Binding's annotations, as the API server does.
type Cluster struct {
	Ctx    context.Context
	Client *fake.Clientset

	t         testing.TB
	namespace string
	mu        sync.Mutex
	// version is the last resourceVersion handed out; failedBinds the pods
	// whose binding failed once; plugins and handle what the registry's
	// factories built and were handed. All guarded by mu.
	version     int
	failedBinds map[string]bool
	plugins     map[string]fwk.Plugin
	handle      fwk.Handle
}

// Start runs the scheduler until the test ends.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctx = klog.NewContext(ctx, klog.Background())
	client := fake.NewClientset()
	c := &Cluster{Ctx: ctx, Client: client, t: t, namespace: o.Namespace,
		failedBinds: map[string]bool{}, plugins: map[string]fwk.Plugin{}}
	if c.namespace == "" {
		c.namespace = metav1.NamespaceDefault
	}
	client.PrependReactor("create", "pods", c.bind)
	for _, n := range o.Nodes {
		c.AddNode(n)
	}
	c.Create(o.Pods...)
	registry := frameworkruntime.Registry{}
	for name, factory := range o.Registry {
		registry[name] = c.keep(name, factory)
	}
	informerFactory := scheduler.NewInformerFactory(client, 0, nil)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	backoff := int64(1)
	if o.BackoffSeconds > 0 {
		backoff = o.BackoffSeconds
	}
	sched, err := scheduler.New(ctx, client, informerFactory, nil, profile.NewRecorderFactory(broadcaster),
		scheduler.WithProfiles(o.Profile),
		scheduler.WithFrameworkOutOfTreeRegistry(registry),
		scheduler.WithPodInitialBackoffSeconds(backoff),
		scheduler.WithPodMaxBackoffSeconds(backoff),
	)
	if err != nil {
		cancel()
		t.Fatalf("starting the scheduler with the %s profile: %v", o.Profile.SchedulerName, err)
	}
	broadcaster.StartRecordingToSink(ctx.Done())
	informerFactory.Start(ctx.Done())
	informerFactory.WaitForCacheSync(ctx.Done())
	// The informers have listed, but their handlers may not have put the
	// nodes in the scheduler's cache yet: a pod tried then finds no node at
	// all ("no nodes available to schedule pods"), as kube-scheduler's own
	// start waits for too.
	if err := sched.WaitForHandlersSync(ctx); err != nil {
		cancel()
		t.Fatalf("waiting for the scheduler's event handlers: %v", err)
	}
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

// keep wraps factory so that the test can reach the plugin it built and
// the framework handle it was given.
func (c *Cluster) keep(name string, factory frameworkruntime.PluginFactory) frameworkruntime.PluginFactory {
	return func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
		p, err := factory(ctx, obj, h)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.plugins[name] = p
		c.handle = h
		return p, nil
	}
}

// bind is the binding subresource: the fake tracker has none.
func (c *Cluster) bind(action clienttesting.Action) (bool, runtime.Object, error) {
	if action.GetSubresource() != "binding" {
		return false, nil, nil
	}
	b := action.(clienttesting.CreateAction).GetObject().(*corev1.Binding)
	c.mu.Lock()
	defer c.mu.Unlock()
	pods := corev1.SchemeGroupVersion.WithResource("pods")
	obj, err := c.Client.Tracker().Get(pods, b.Namespace, b.Name)
	if err != nil {
		return true, nil, err
	}
	pod := obj.(*corev1.Pod).DeepCopy()
	if _, ok := pod.Labels[LabelFailBindOnce]; ok && !c.failedBinds[pod.Name] {
		c.failedBinds[pod.Name] = true
		return true, nil, fmt.Errorf("binding %s fails once (test)", pod.Name)
	}
	if pod.Spec.NodeName != "" {
		return true, nil, fmt.Errorf("pod %s/%s is already bound to %s", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}
	pod.Spec.NodeName = b.Target.Name
	for k, v := range b.Annotations {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[k] = v
	}
	c.bumpVersion(pod)
	return true, nil, c.Client.Tracker().Update(pods, pod, pod.Namespace)
}

// bumpVersion sets a new resourceVersion, as the API server would: the
// fake tracker does not, and the scheduler ignores updates that keep it.
// The caller holds mu.
func (c *Cluster) bumpVersion(p *corev1.Pod) {
	c.version++
	p.ResourceVersion = fmt.Sprint(c.version)
}

// Plugin is the instance of the named out-of-tree plugin the scheduler runs.
func (c *Cluster) Plugin(name string) fwk.Plugin {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.plugins[name]
	if !ok {
		c.t.Fatalf("the scheduler built no plugin %s: want it in Options.Registry and enabled in Options.Profile", name)
	}
	return p
}

// Handle is the framework handle of the profile.
func (c *Cluster) Handle() fwk.Handle {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handle
}

// FailedBind says whether pod's binding has failed for LabelFailBindOnce.
func (c *Cluster) FailedBind(pod string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failedBinds[pod]
}

// Create creates pods in their own namespaces.
func (c *Cluster) Create(pods ...*corev1.Pod) {
	c.t.Helper()
	for _, p := range pods {
		if _, err := c.Client.CoreV1().Pods(p.Namespace).Create(c.Ctx, p, metav1.CreateOptions{}); err != nil {
			c.t.Fatal(err)
		}
	}
}

// Delete deletes the named pods.
func (c *Cluster) Delete(names ...string) {
	c.t.Helper()
	for _, n := range names {
		if err := c.Client.CoreV1().Pods(c.namespace).Delete(c.Ctx, n, metav1.DeleteOptions{}); err != nil {
			c.t.Fatal(err)
		}
	}
}

// Update applies change to pod name as a user's edit would.
func (c *Cluster) Update(name string, change func(*corev1.Pod)) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.Client.CoreV1().Pods(c.namespace).Get(c.Ctx, name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatal(err)
	}
	change(p)
	c.bumpVersion(p)
	if _, err := c.Client.CoreV1().Pods(c.namespace).Update(c.Ctx, p, metav1.UpdateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// Bound returns the nodes of the named pods that are bound.
func (c *Cluster) Bound(names ...string) map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for _, n := range names {
		p, err := c.Client.CoreV1().Pods(c.namespace).Get(c.Ctx, n, metav1.GetOptions{})
		if err != nil {
			continue
		}
		if p.Spec.NodeName != "" {
			out[n] = p.Spec.NodeName
		}
	}
	return out
}

// WaitBound waits until all the named pods are bound.
func (c *Cluster) WaitBound(timeout time.Duration, pods ...string) map[string]string {
	c.t.Helper()
	var got map[string]string
	err := wait.PollUntilContextTimeout(c.Ctx, 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		got = c.Bound(pods...)
		return len(got) == len(pods), nil
	})
	if err != nil {
		c.t.Fatalf("waiting for %v to bind: only %d bound: %v", pods, len(got), got)
	}
	return got
}

// NeverBound checks for d that none of the pods binds.
func (c *Cluster) NeverBound(d time.Duration, pods ...string) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if got := c.Bound(pods...); len(got) > 0 {
			c.t.Fatalf("pods bound that must not: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitEvent waits for an event on pod whose note contains text, and
// returns it as "reason: note".
func (c *Cluster) WaitEvent(pod, text string) string {
	c.t.Helper()
	var seen []string
	err := wait.PollUntilContextTimeout(c.Ctx, 20*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client.EventsV1().Events(c.namespace).List(ctx, metav1.ListOptions{})
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

// AddNode creates a node, as a cloud provider bringing one up would.
func (c *Cluster) AddNode(n *corev1.Node) {
	c.t.Helper()
	if _, err := c.Client.CoreV1().Nodes().Create(c.Ctx, n, metav1.CreateOptions{}); err != nil {
		c.t.Fatal(err)
	}
}

// DeleteNode deletes a node, as a cloud provider reclaiming a Spot node
// would.
func (c *Cluster) DeleteNode(name string) {
	c.t.Helper()
	if err := c.Client.CoreV1().Nodes().Delete(c.Ctx, name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatal(err)
	}
}
