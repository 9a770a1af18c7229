package spotrisk

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedulingapi "k8s.io/api/scheduling/v1beta1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/component-base/metrics/testutil"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/defaultbinder"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/queuesort"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"
	tf "k8s.io/kubernetes/pkg/scheduler/testing/framework"
	clocktesting "k8s.io/utils/clock/testing"

	capacitylabels "github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/pricing"
)

func init() {
	// The framework instruments plugins with the scheduler's metrics.
	schedmetrics.Register()
}

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

const testCatalog = `apiVersion: penny.dev/v1alpha1
kind: PriceCatalog
instanceTypes:
- {name: p4d.24xlarge, gpus: 8, gpuModel: A100-40GB, vcpus: 96, memoryGiB: 1152}
- {name: m7i.8xlarge, vcpus: 32, memoryGiB: 128}
prices:
- {instanceType: m7i.8xlarge, capacityType: on-demand, region: us-east-1, hourly: 1.6}
- {instanceType: p4d.24xlarge, capacityType: on-demand, region: us-east-1, hourly: 32}
- {instanceType: p4d.24xlarge, capacityType: spot, region: us-east-1, hourly: 8, interruption: "5-10%"}
- {instanceType: p4d.24xlarge, capacityType: spot, region: us-east-1, zone: us-east-1c, hourly: 7, interruption: ">20%"}
`

func catalog(t *testing.T) *pricing.Catalog {
	t.Helper()
	return catalogOf(t, testCatalog)
}

// catalogOf parses a catalog a test writes out.
func catalogOf(t *testing.T, yaml string) *pricing.Catalog {
	t.Helper()
	c, err := pricing.Parse([]byte(yaml), "test")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// node builds a p4d node of a capacity type (karpenter label) in a zone.
func node(name string, capacity pricing.CapacityType, zone string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelInstanceTypeStable: "p4d.24xlarge",
		corev1.LabelTopologyRegion:     "us-east-1",
		corev1.LabelTopologyZone:       zone,
		capacitylabels.LabelKarpenter:  string(capacity),
	}}}
	capa := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("96"),
		corev1.ResourceMemory: resource.MustParse("1152Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
		gpu.ResourceGPU:       resource.MustParse("8"),
	}
	n.Status.Capacity, n.Status.Allocatable = capa, capa
	return n
}

// sized makes n a node of instance type it with the given allocatable CPU,
// memory and GPUs ("" for a node without GPUs).
func sized(n *corev1.Node, it, cpu, mem, gpus string) *corev1.Node {
	n.Labels[corev1.LabelInstanceTypeStable] = it
	a := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem), corev1.ResourcePods: resource.MustParse("110")}
	if gpus != "" {
		a[gpu.ResourceGPU] = resource.MustParse(gpus)
	}
	n.Status.Capacity, n.Status.Allocatable = a, a
	return n
}

// pod builds a one-GPU pod with annotations.
func pod(name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name), Annotations: ann,
			CreationTimestamp: metav1.NewTime(t0)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("12"), corev1.ResourceMemory: resource.MustParse("144Gi")},
			Limits:   corev1.ResourceList{gpu.ResourceGPU: resource.MustParse("1")},
		}}}},
	}
}

// waited makes p a pod created an hour before t0, so that its wait for the
// capacity its policy prefers (Class.Waits) is over.
func waited(p *corev1.Pod) *corev1.Pod {
	p.CreationTimestamp = metav1.NewTime(t0.Add(-time.Hour))
	return p
}

type activator struct {
	mu        sync.Mutex
	activated []string
}

func (a *activator) Activate(_ klog.Logger, pods map[string]*corev1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range pods {
		a.activated = append(a.activated, k)
	}
}

func (a *activator) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.activated...)
}

// env is a real scheduler framework running only SpotRisk (plus the
// mandatory sort and bind plugins) over a fixed set of nodes.
type env struct {
	fw       framework.Framework
	nodes    []fwk.NodeInfo
	clock    *clocktesting.FakeClock
	recorder *events.FakeRecorder
	act      *activator
	plugin   *SpotRisk
	// ungated is when a test lifted each pod's last scheduling gate: its
	// wait starts then rather than at its creation.
	ungated map[types.UID]time.Time
	// stop stops the scheduler: it ends the context the plugin was built
	// with.
	stop context.CancelFunc
}

func newEnv(t *testing.T, args *Args, deps Deps, nodes ...*corev1.Node) *env {
	t.Helper()
	return newEnvWith(t, args, deps, nil, nodes...)
}

// newEnvWith is newEnv with more framework options (a PodGroup manager).
func newEnvWith(t *testing.T, args *Args, deps Deps, opts []frameworkruntime.Option, nodes ...*corev1.Node) *env {
	t.Helper()
	return newEnvIn(t, "penny-scheduler", args, deps, opts, nodes...)
}

// newEnvIn is newEnvWith for a profile of another name.
func newEnvIn(t *testing.T, profile string, args *Args, deps Deps, opts []frameworkruntime.Option, nodes ...*corev1.Node) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{clock: clocktesting.NewFakeClock(t0), recorder: events.NewFakeRecorder(100), act: &activator{}, stop: cancel}
	if deps.Clock == nil {
		deps.Clock = e.clock
	}
	factory := func(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
		var o runtime.Object
		if args != nil {
			o = args
		}
		p, err := New(ctx, o, h, deps)
		if err == nil {
			e.plugin = p.(*SpotRisk)
		}
		return p, err
	}
	snapshot := cache.NewSnapshot(nil, nodes)
	opts = append([]frameworkruntime.Option{
		frameworkruntime.WithSnapshotSharedLister(snapshot),
		frameworkruntime.WithEventRecorder(e.recorder),
		frameworkruntime.WithPodActivator(e.act),
	}, opts...)
	fw, err := tf.NewFramework(ctx, []tf.RegisterPluginFunc{
		tf.RegisterQueueSortPlugin(queuesort.Name, queuesort.New),
		tf.RegisterBindPlugin(defaultbinder.Name, defaultbinder.New),
		tf.RegisterPluginAsExtensions(Name, factory, "PreFilter", "Filter", "PostFilter", "PreScore", "Score", "Reserve", "PostBind"),
	}, profile, opts...)
	if err != nil {
		t.Fatal(err)
	}
	e.fw = fw
	e.nodes, _ = snapshot.NodeInfos().List()
	return e
}

// result is one scheduling attempt: the aggregate FitError message the
// scheduler would print, the feasible nodes and their scores.
type result struct {
	preFilter *fwk.Status
	fitError  string
	feasible  []string
	scores    map[string]int64
	state     fwk.CycleState
}

func (e *env) schedule(t *testing.T, p *corev1.Pod) result {
	t.Helper()
	ctx := context.Background()
	state := framework.NewCycleState()
	r := result{scores: map[string]int64{}, state: state}
	if _, s, _ := e.fw.RunPreFilterPlugins(ctx, state, p); !s.IsSuccess() {
		r.preFilter = s
		return r
	}
	diag := framework.Diagnosis{NodeToStatus: framework.NewDefaultNodeToStatus()}
	var feasible []fwk.NodeInfo
	for _, ni := range e.nodes {
		if s := e.fw.RunFilterPlugins(ctx, state, p, ni); s.IsSuccess() {
			feasible = append(feasible, ni)
			r.feasible = append(r.feasible, ni.Node().Name)
		} else {
			diag.NodeToStatus.Set(ni.Node().Name, s)
		}
	}
	sort.Strings(r.feasible)
	if len(feasible) == 0 {
		fe := &framework.FitError{Pod: p, NumAllNodes: len(e.nodes), Diagnosis: diag}
		r.fitError = fe.Error()
		e.fw.RunPostFilterPlugins(ctx, state, p, diag.NodeToStatus)
		return r
	}
	if s := e.fw.RunPreScorePlugins(ctx, state, p, feasible); !s.IsSuccess() {
		t.Fatalf("prescore: %v", s)
	}
	scores, s := e.fw.RunScorePlugins(ctx, state, p, feasible)
	if !s.IsSuccess() {
		t.Fatalf("score: %v", s)
	}
	for _, ns := range scores {
		r.scores[ns.Name] = ns.TotalScore
	}
	return r
}

// best is the highest-scoring feasible node, ties by name.
func (r result) best() string {
	best, bs := "", int64(-1)
	for _, n := range r.feasible {
		if s := r.scores[n]; s > bs || (s == bs && n < best) {
			best, bs = n, s
		}
	}
	return best
}

// expectFallback schedules p after its wait, expects node to be the only
// feasible one, binds it there and expects one SpotFallback event saying msg,
// penny_spot_fallbacks_total{policy} one higher and the wait counted under
// the capacity type it fell back to.
func (e *env) expectFallback(t *testing.T, p *corev1.Pod, policy Policy, node, msg string) {
	t.Helper()
	before, _ := testutil.GetCounterMetricValue(fallbacks.WithLabelValues(string(policy)))
	r := e.schedule(t, p)
	if strings.Join(r.feasible, ",") != node {
		t.Fatalf("after the wait only %s is feasible; feasible %v (%s)", node, r.feasible, r.fitError)
	}
	to := pricing.OnDemand
	if policy == Avoid {
		to = pricing.Spot
	}
	e.expectBindCountsWait(t, r, p, node, to)
	evs := e.events()
	if len(evs) != 1 {
		t.Fatalf("events %v", evs)
	}
	expectContains(t, "event", evs[0], "Normal", EventFallback, msg)
	if n, _ := testutil.GetCounterMetricValue(fallbacks.WithLabelValues(string(policy))); n != before+1 {
		t.Errorf("penny_spot_fallbacks_total{policy=%q} = %v, want %v", policy, n, before+1)
	}
}

// expectBindCountsWait reserves and binds p on node and expects its wait
// since creation (or since the test ungated it) in penny_spot_wait_seconds under its Spot policy and the
// node's capacity type.
func (e *env) expectBindCountsWait(t *testing.T, r result, p *corev1.Pod, node string, capacity pricing.CapacityType) {
	t.Helper()
	c, err := classify(p, e.plugin.args)
	if err != nil {
		t.Fatal(err)
	}
	m := waits.WithLabelValues(string(c.Policy), string(capacity))
	n0, _ := testutil.GetHistogramMetricCount(m)
	sum0, _ := testutil.GetHistogramMetricValue(m)
	if s := e.fw.RunReservePluginsReserve(context.Background(), r.state, p, node); !s.IsSuccess() {
		t.Fatal(s)
	}
	e.fw.RunPostBindPlugins(context.Background(), r.state, p, node)
	n, _ := testutil.GetHistogramMetricCount(m)
	sum, _ := testutil.GetHistogramMetricValue(m)
	start := p.CreationTimestamp.Time
	if at, ok := e.ungated[p.UID]; ok {
		start = at
	}
	// The histogram's sum is shared by every test that binds a pod: what
	// this one added is off from its wait by the sum's rounding.
	if wait := e.clock.Since(start).Seconds(); n != n0+1 || math.Abs(sum-sum0-wait) > 1e-6 {
		t.Errorf("penny_spot_wait_seconds{policy=%q,capacity_type=%q}: %d observations adding %vs, want 1 adding %vs", c.Policy, capacity, n-n0, sum-sum0, wait)
	}
}

func (e *env) events() []string {
	var out []string
	for {
		select {
		case ev := <-e.recorder.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func expectContains(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, got)
		}
	}
}

func klogLogger() klog.Logger { return klog.Background() }

// podGroups is the scheduler's PodGroup manager as far as SpotRisk reads it:
// the PodGroups by namespace/name.
type podGroups struct {
	fwk.PodGroupManager
	groups map[string]*schedulingapi.PodGroup
}

func (p podGroups) PodGroups() fwk.PodGroupLister { return p }

func (p podGroups) Get(namespace, name string) (*schedulingapi.PodGroup, error) {
	if g, ok := p.groups[namespace+"/"+name]; ok {
		return g, nil
	}
	return nil, fmt.Errorf("podgroup %s/%s not found", namespace, name)
}
