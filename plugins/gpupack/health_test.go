package gpupack

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/parallelize"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
)

// withSource makes a plugin reading src, on a snapshot of nodes and pods.
func withSource(t *testing.T, src LayoutSource, nodes []*corev1.Node, pods ...*corev1.Pod) (*GPUPack, *handle, []fwk.NodeInfo) {
	t.Helper()
	initMetrics.Do(schedmetrics.InitMetrics)
	h := &handle{par: parallelize.NewParallelizer(1)}
	p, err := NewWith(context.Background(), nil, h, WithLayouts(src))
	if err != nil {
		t.Fatal(err)
	}
	return p, h, h.set(t, nodes, pods...)
}

// filter runs PreFilter and Filter of the pod on one node.
func filter(t *testing.T, p *GPUPack, nodes []fwk.NodeInfo, pod *corev1.Pod, node int) *fwk.Status {
	t.Helper()
	state := framework.NewCycleState()
	if _, s := p.PreFilter(context.Background(), state, pod, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	return p.Filter(context.Background(), state, pod, nodes[node])
}

// A share goes on a healthy GPU, never on the one the node's agent reports
// unhealthy, however well it would pack there; whole GPUs and static MIG
// instances the same.
func TestNoNewWorkOnAnUnhealthyGPU(t *testing.T) {
	n := gpuNode("n", "NVIDIA-A10G", 2, "64")
	held := bound(podOf("held", "1", string(gpu.ResourceGPUMilli), "500"), "n", "1:500m")
	// Packing alone puts a share that fits beside the one on GPU 1 on GPU
	// 0, keeping GPU 1's rest for pods its size.
	p, _, nodes := withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}}, []*corev1.Node{n}, held)
	if node, a := schedule(t, p, nodes, podOf("share", "1", string(gpu.ResourceGPUMilli), "400")); node != "n" || a.String() != "0:400m" {
		t.Fatalf("a share got %q %v; want GPU 0 with both GPUs healthy", node, a)
	}
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{0}}, []*corev1.Node{n}, held)
	if node, a := schedule(t, p, nodes, podOf("share", "1", string(gpu.ResourceGPUMilli), "400")); node != "n" || a.String() != "1:400m" {
		t.Fatalf("a share got %q %v; want GPU 1, the healthy one", node, a)
	}
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{0}}, []*corev1.Node{n})
	if node, a := schedule(t, p, nodes, podOf("whole", "1", string(gpu.ResourceGPU), "1")); node != "n" || a.String() != "1" {
		t.Fatalf("a whole-GPU pod got %q %v; want GPU 1, the healthy one", node, a)
	}

	mig := gpuNode("mig", "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
	delete(mig.Status.Allocatable, gpu.ResourceGPU)
	mig.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("4")
	twoThrees := []gpu.Placement{{Profile: "3g.40gb", Start: 0}, {Profile: "3g.40gb", Start: 4}}
	p, _, nodes = withSource(t, layoutsOf{node: "mig", layout: [][]gpu.Placement{twoThrees, twoThrees}, unhealthy: []int{0}}, []*corev1.Node{mig})
	if node, a := schedule(t, p, nodes, podOf("instance", "1", "nvidia.com/mig-3g.40gb", "1")); node != "mig" || len(a) != 1 || a[0].GPU != 1 {
		t.Fatalf("an instance got %q %v; want one on GPU 1 (GPU 0 is unhealthy)", node, a)
	}
	if node, a := schedule(t, p, nodes, podOf("three", "1", "nvidia.com/mig-3g.40gb", "3")); node != "" {
		t.Fatalf("three instances got %q %v; GPU 0 is unhealthy and GPU 1 has two", node, a)
	}
}

// Filter says the unhealthy GPUs are why, with their count, so the
// scheduler's event counts such nodes; Unschedulable where evicting pods
// from the healthy GPUs could still make room, else unresolvable.
func TestFilterSaysOnlyUnhealthyGPUsAreFree(t *testing.T) {
	n := gpuNode("n", "NVIDIA-A10G", 2, "64")
	held := bound(podOf("held", "1", string(gpu.ResourceGPU), "1"), "n", "0")
	p, _, nodes := withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{1}}, []*corev1.Node{n}, held)
	s := filter(t, p, nodes, podOf("share", "1", string(gpu.ResourceGPUMilli), "460"), 0)
	if want := "node(s) had only unhealthy GPUs free for 460 penny.dev/gpu-milli (1 GPU reported unhealthy by its agent)"; s.Code() != fwk.Unschedulable || s.Message() != want {
		t.Fatalf("Filter: %v %q; want Unschedulable %q", s.Code(), s.Message(), want)
	}

	// Both GPUs idle, one unhealthy: no eviction makes room for two.
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{0}}, []*corev1.Node{n})
	s = filter(t, p, nodes, podOf("two", "1", string(gpu.ResourceGPU), "2"), 0)
	if want := "node(s) had fewer healthy GPUs than 2 nvidia.com/gpu (1 GPU reported unhealthy by its agent)"; s.Code() != fwk.UnschedulableAndUnresolvable || s.Message() != want {
		t.Fatalf("Filter: %v %q; want UnschedulableAndUnresolvable %q", s.Code(), s.Message(), want)
	}

	// Every GPU unhealthy.
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{0, 1}}, []*corev1.Node{n})
	s = filter(t, p, nodes, podOf("share", "1", string(gpu.ResourceGPUMilli), "460"), 0)
	if want := "node(s) had only unhealthy GPUs free for 460 penny.dev/gpu-milli (2 GPUs reported unhealthy by its agent)"; s.Code() != fwk.UnschedulableAndUnresolvable || s.Message() != want {
		t.Fatalf("Filter: %v %q; want UnschedulableAndUnresolvable %q", s.Code(), s.Message(), want)
	}

	// Busy anyway: the usual reason.
	held1 := bound(podOf("held1", "1", string(gpu.ResourceGPU), "1"), "n", "1")
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{1}}, []*corev1.Node{n}, held, held1)
	s = filter(t, p, nodes, podOf("share", "1", string(gpu.ResourceGPUMilli), "460"), 0)
	if want := "node(s) had no GPU with 460 penny.dev/gpu-milli free"; s.Code() != fwk.Unschedulable || s.Message() != want {
		t.Fatalf("Filter: %v %q; want Unschedulable %q", s.Code(), s.Message(), want)
	}
}

// With GPU feature discovery's count label static at 2 while the device
// plugin advertises the healthy GPU only, the view counts both and holds
// the unhealthy one off; without the label, allocatable already left it out,
// and it is not taken off a second time.
func TestUnhealthyGPUIsNotCountedTwice(t *testing.T) {
	labelled := gpuNode("labelled", "NVIDIA-A10G", 2, "64")
	labelled.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("1")
	unlabelled := gpuNode("unlabelled", "NVIDIA-A10G", 2, "64")
	delete(unlabelled.Labels, gpu.LabelCount)
	unlabelled.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("1")
	for _, n := range []*corev1.Node{labelled, unlabelled} {
		p, _, nodes := withSource(t, layoutsOf{node: n.Name, layout: [][]gpu.Placement{nil, nil}, unhealthy: []int{0}}, []*corev1.Node{n})
		if s := filter(t, p, nodes, podOf("one", "1", string(gpu.ResourceGPU), "1"), 0); !s.IsSuccess() {
			t.Errorf("%s: one GPU of two healthy, Filter: %v", n.Name, s)
		}
		if s := filter(t, p, nodes, podOf("two", "1", string(gpu.ResourceGPU), "2"), 0); s.IsSuccess() {
			t.Errorf("%s: two GPUs fit with one unhealthy", n.Name)
		}
	}
}

// Without the count label, the device plugin leaves a broken GPU out of
// allocatable, but the annotation names GPUs by their NVML index: with GPU 2
// of 4 broken, the view numbers the GPUs as the agent does, so the free
// healthy GPU is 3, never 2, and a pod already on GPU 3 is held there.
func TestUnlabelledNodeNumbersGPUsAsItsAgent(t *testing.T) {
	n := gpuNode("n", "NVIDIA-A10G", 4, "64")
	delete(n.Labels, gpu.LabelCount)
	n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("3")
	src := layoutsOf{node: "n", layout: make([][]gpu.Placement, 4), unhealthy: []int{2}}
	on := func(name, g string) *corev1.Pod {
		return bound(podOf(name, "1", string(gpu.ResourceGPU), "1"), "n", g)
	}
	whole := podOf("whole", "1", string(gpu.ResourceGPU), "1")
	p, _, nodes := withSource(t, src, []*corev1.Node{n}, on("a", "0"), on("b", "1"))
	if node, a := schedule(t, p, nodes, whole); node != "n" || a.String() != "3" {
		t.Fatalf("a whole-GPU pod got %q %v; want GPU 3 (GPU 2 is broken)", node, a)
	}
	p, _, nodes = withSource(t, src, []*corev1.Node{n}, on("a", "0"), on("c", "3"))
	if node, a := schedule(t, p, nodes, whole); node != "n" || a.String() != "1" {
		t.Fatalf("a whole-GPU pod got %q %v; want GPU 1, the only healthy one free", node, a)
	}
	p, _, nodes = withSource(t, src, []*corev1.Node{n}, on("a", "0"), on("b", "1"), on("c", "3"))
	if node, a := schedule(t, p, nodes, whole); node != "" {
		t.Fatalf("a whole-GPU pod got %q %v; every healthy GPU is held", node, a)
	}

	// A shortfall the reported health does not explain leaves the view as
	// allocatable numbers it.
	p, _, nodes = withSource(t, layoutsOf{node: "n", layout: make([][]gpu.Placement, 4)}, []*corev1.Node{n}, on("a", "0"))
	if node, a := schedule(t, p, nodes, podOf("two", "1", string(gpu.ResourceGPU), "2")); node != "n" || a.String() != "1,2" {
		t.Fatalf("two whole GPUs got %q %v; want 1,2 with no GPU reported unhealthy", node, a)
	}
}

// healthReport is an A10G node's report, its GPUs whole and healthy but
// those listed.
func healthReport(node string, gpus int, seq uint64, unhealthy ...int) *telemetryv1.NodeReport {
	r := telemetrytest.Report(node, gpus, seq, time.Now())
	r.PodDevices = nil
	for _, g := range r.Gpus {
		g.Name, g.Product, g.MigMode, g.MigInstances, g.Pods = "NVIDIA A10G", "NVIDIA-A10G", telemetryv1.MIGMode_MIG_MODE_DISABLED, nil, nil
	}
	for _, i := range unhealthy {
		r.Gpus[i].Health = &telemetryv1.Health{Reasons: []string{"XID 79 (GPU has fallen off the bus)"}}
	}
	return r
}

// mutableSource is a LayoutSource that does not say when a node reports,
// as a test's or the simulator's may not: the view then asks every node in
// every cycle.
type mutableSource struct {
	mu sync.Mutex
	layoutsOf
}

func (m *mutableSource) Report(node string) (GPUReport, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.layoutsOf.Report(node)
}

func (m *mutableSource) set(unhealthy ...int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.unhealthy = unhealthy
}

// The view is rebuilt when a GPU's health flips, with no change to the node
// object: from the store, which says when a node reports, and from a source
// that does not; a report gone stale still holds; and a node the store
// dropped is as the scheduler saw it before agents reported health.
func TestViewFollowsHealth(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute, Now: clock})
	polled := &mutableSource{layoutsOf: layoutsOf{node: "n", layout: [][]gpu.Placement{nil}}}
	n := gpuNode("n", "NVIDIA-A10G", 1, "64")
	share := podOf("share", "1", string(gpu.ResourceGPUMilli), "460")
	for _, tc := range []struct {
		name string
		src  LayoutSource
		set  func(seq uint64, unhealthy ...int)
	}{
		{"store", TelemetryLayouts(store), func(seq uint64, unhealthy ...int) { store.Update(healthReport("n", 1, seq, unhealthy...), now) }},
		{"polled", polled, func(_ uint64, unhealthy ...int) { polled.set(unhealthy...) }},
	} {
		p, _, nodes := withSource(t, tc.src, []*corev1.Node{n})
		tc.set(1)
		if s := filter(t, p, nodes, share, 0); !s.IsSuccess() {
			t.Fatalf("%s: healthy GPU, Filter: %v", tc.name, s)
		}
		tc.set(2, 0)
		if s := filter(t, p, nodes, share, 0); s.IsSuccess() {
			t.Fatalf("%s: the view kept the GPU its agent now reports unhealthy", tc.name)
		}
		tc.set(3)
		if s := filter(t, p, nodes, share, 0); !s.IsSuccess() {
			t.Fatalf("%s: GPU healthy again, Filter: %v", tc.name, s)
		}
	}
	// Stale: the agent went silent (a rollout, a crash loop), and the GPU
	// it found broken stays held off until the store drops the node.
	p, _, nodes := withSource(t, TelemetryLayouts(store), []*corev1.Node{n})
	store.Update(healthReport("n", 1, 4, 0), now)
	if s := filter(t, p, nodes, share, 0); s.IsSuccess() {
		t.Fatal("the view did not hold off the GPU its agent reports unhealthy")
	}
	now = now.Add(2 * time.Minute)
	if s := filter(t, p, nodes, share, 0); s.IsSuccess() {
		t.Fatal("the node's agent went silent, and the GPU it last reported unhealthy took a share")
	}
	if _, fresh := store.Node("n"); fresh {
		t.Fatal("the report is still fresh: the test shows nothing")
	}
	// Silent for an hour (or deleted): the store drops the node, and the
	// view sees it as before agents reported health.
	now = now.Add(time.Hour)
	store.Prune(time.Hour)
	if s := filter(t, p, nodes, share, 0); !s.IsSuccess() {
		t.Fatalf("the store dropped the node, and its GPU is still held off: %v", s)
	}
}

// activatingHandle has informers and records the pods activated.
type activatingHandle struct {
	*handle
	factory   informers.SharedInformerFactory
	activated chan []string
}

func (h *activatingHandle) SharedInformerFactory() informers.SharedInformerFactory { return h.factory }

func (h *activatingHandle) Activate(_ klog.Logger, pods map[string]*corev1.Pod) {
	var names []string
	for k := range pods {
		names = append(names, k)
	}
	h.activated <- names
}

// retryingPlugin builds the plugin over store's reports with a handle
// that records the pods it retries (at most buffer retries held), and adds
// pods to the handle's pod informer. The plugin stops when ctx ends.
func retryingPlugin(ctx context.Context, t *testing.T, store *telemetry.Store, buffer int, pods ...*corev1.Pod) (*GPUPack, *activatingHandle) {
	t.Helper()
	h := &activatingHandle{handle: &handle{par: parallelize.NewParallelizer(1)},
		factory: informers.NewSharedInformerFactory(fake.NewClientset(), 0), activated: make(chan []string, buffer)}
	p, err := NewWith(ctx, nil, h, WithLayouts(TelemetryLayouts(store)))
	if err != nil {
		t.Fatal(err)
	}
	for _, pod := range pods {
		if err := h.factory.Core().V1().Pods().Informer().GetIndexer().Add(pod); err != nil {
			t.Fatal(err)
		}
	}
	return p, h
}

// noRetry fails the test if a pod is retried within 100ms; when says
// when none should be.
func (h *activatingHandle) noRetry(t *testing.T, when string) {
	t.Helper()
	select {
	case got := <-h.activated:
		t.Fatalf("pods %v retried %s", got, when)
	case <-time.After(100 * time.Millisecond):
	}
}

// retriedOnly waits up to 10s for a retry and fails the test unless it is
// of the pod key alone; after says what should have retried it.
func (h *activatingHandle) retriedOnly(t *testing.T, key, after string) {
	t.Helper()
	select {
	case got := <-h.activated:
		if len(got) != 1 || got[0] != key {
			t.Fatalf("retried %v; want %s only", got, key)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s was not retried %s", key, after)
	}
}

// No cluster event says a GPU recovered: the pods waiting are retried when
// its agent reports it healthy again.
func TestPodsRetriedWhenAGPURecovers(t *testing.T) {
	initMetrics.Do(schedmetrics.InitMetrics)
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := podOf("waiting", "1", string(gpu.ResourceGPUMilli), "460")
	cpuOnly := podOf("cpu", "1")
	running := bound(podOf("running", "1", string(gpu.ResourceGPU), "1"), "other", "0")
	p, h := retryingPlugin(ctx, t, store, 4, waiting, cpuOnly, running)
	nodes := h.set(t, []*corev1.Node{gpuNode("n", "NVIDIA-A10G", 1, "64")})

	store.Update(healthReport("n", 1, 1, 0), time.Now())
	state := framework.NewCycleState()
	if _, s := p.PreFilter(ctx, state, waiting, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if s := p.Filter(ctx, state, waiting, nodes[0]); s.IsSuccess() {
		t.Fatal("the pod fits on a GPU reported unhealthy")
	}
	store.Update(healthReport("n", 1, 2, 0), time.Now())
	h.noRetry(t, "while the GPU is still unhealthy")
	store.Update(healthReport("n", 1, 3), time.Now())
	h.retriedOnly(t, "default/waiting", "when the GPU recovered")
	if s := filter(t, p, nodes, waiting, 0); !s.IsSuccess() {
		t.Fatalf("retried, the pod still does not fit: %v", s)
	}
	// A stopped scheduler's queue is gone: nothing is retried for it.
	cancel()
	store.Update(healthReport("n", 1, 4, 0), time.Now())
	store.Update(healthReport("n", 1, 5), time.Now())
	h.noRetry(t, "by a stopped plugin")
}

// A node whose agent stays silent keeps its last report until the store
// drops it, an hour on. Then the GPU that report held broken is free, as no
// cluster event says: the pods waiting are retried at once, not at the
// scheduler's five-minute flush.
func TestPodsRetriedWhenTheStoreDropsABrokenGPUsReport(t *testing.T) {
	initMetrics.Do(schedmetrics.InitMetrics)
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute, Now: clock})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := podOf("waiting", "1", string(gpu.ResourceGPUMilli), "460")
	p, h := retryingPlugin(ctx, t, store, 4, waiting)
	nodes := h.set(t, []*corev1.Node{gpuNode("n", "NVIDIA-A10G", 1, "64")})
	store.Update(healthReport("n", 1, 1, 0), clock())
	if s := filter(t, p, nodes, waiting, 0); s.IsSuccess() {
		t.Fatal("the pod fits on a GPU reported unhealthy")
	}
	mu.Lock()
	now = now.Add(90 * time.Minute)
	mu.Unlock()
	if s := filter(t, p, nodes, waiting, 0); s.IsSuccess() {
		t.Fatal("the agent went silent, and the GPU it reported unhealthy took the pod before the store dropped the node")
	}
	h.noRetry(t, "before the store dropped the node")
	store.Prune(time.Hour)
	h.retriedOnly(t, "default/waiting", "when the store dropped the node whose report held its GPU broken")
	if s := filter(t, p, nodes, waiting, 0); !s.IsSuccess() {
		t.Fatalf("retried, the pod still does not fit: %v", s)
	}
}

// cachedReports counts the nodes whose reports the source holds read.
func cachedReports(t *testing.T, src LayoutSource) []string {
	t.Helper()
	n, ok := src.(notifyingLayouts)
	if !ok {
		t.Fatalf("%T is not the store's source", src)
	}
	var names []string
	n.read.Range(func(k, _ any) bool {
		names = append(names, k.(string))
		return true
	})
	return names
}

// The reports read are kept for the nodes the view has: a node deleted
// from the cluster (Spot nodes come and go under new names), or one whose
// agent reports but that the scheduler never had, must not stay in memory
// for the scheduler's lifetime with the state it last sent.
func TestReportsReadAreForgottenWithTheirNodes(t *testing.T) {
	now := time.Now()
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute, Now: func() time.Time { return now }})
	src := TelemetryLayouts(store)
	a, b := gpuNode("a", "NVIDIA-A10G", 1, "64"), gpuNode("b", "NVIDIA-A10G", 1, "64")
	p, h, nodes := withSource(t, src, []*corev1.Node{a, b})
	share := podOf("share", "1", string(gpu.ResourceGPUMilli), "460")
	store.Update(healthReport("a", 1, 1), now)
	store.Update(healthReport("b", 1, 1, 0), now)
	store.Update(healthReport("elsewhere", 1, 1, 0), now)
	if s := filter(t, p, nodes, share, 1); s.IsSuccess() {
		t.Fatal("the pod fits on b's GPU, reported unhealthy")
	}
	// b is deleted: gone from the snapshot and from the store.
	nodes = h.set(t, []*corev1.Node{a})
	store.Forget("b")
	for seq := uint64(2); seq < 4; seq++ {
		store.Update(healthReport("a", 1, seq), now)
		store.Update(healthReport("elsewhere", 1, seq, 0), now)
		if s := filter(t, p, nodes, share, 0); !s.IsSuccess() {
			t.Fatalf("a: %v", s)
		}
	}
	if got := cachedReports(t, src); len(got) != 1 || got[0] != "a" {
		t.Fatalf("reports held for %v; want a's only", got)
	}
}

// A GPU whose verdict flaps (clocks held down by a hardware slowdown come
// and go from one report to the next) must not retry every waiting GPU pod
// on every report that says it recovered: each retry moves them past their
// backoff. Recoveries close together are retried once more at most.
func TestFlappingGPURetriesPodsAtMostOncePerGap(t *testing.T) {
	initMetrics.Do(schedmetrics.InitMetrics)
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, h := retryingPlugin(ctx, t, store, 64, podOf("waiting", "1", string(gpu.ResourceGPUMilli), "460"))
	p.retryGap = 300 * time.Millisecond
	seq := uint64(0)
	for range 20 {
		seq++
		store.Update(healthReport("n", 1, seq, 0), time.Now())
		seq++
		store.Update(healthReport("n", 1, seq), time.Now())
	}
	retries := 0
	deadline := time.After(3 * p.retryGap)
	for done := false; !done; {
		select {
		case <-h.activated:
			retries++
		case <-deadline:
			done = true
		}
	}
	if retries < 1 || retries > 2 {
		t.Fatalf("20 recoveries within %v retried the waiting pods %d times; want 1 or 2", p.retryGap, retries)
	}
	// After the gap, a recovery is retried again.
	seq++
	store.Update(healthReport("n", 1, seq, 0), time.Now())
	seq++
	store.Update(healthReport("n", 1, seq), time.Now())
	select {
	case <-h.activated:
	case <-time.After(10 * time.Second):
		t.Fatal("a recovery after the gap was not retried")
	}
}

// A node with static MIG partitioning advertises its new instances (the
// device plugin's allocatable update retries the pod) before its agent
// reports them: that retry found the old layout, and the report that then
// brought the new one retried nobody, so the pod waited for the scheduler's
// five-minute flush.
func TestPodsRetriedWhenANodesMIGLayoutChanges(t *testing.T) {
	initMetrics.Do(schedmetrics.InitMetrics)
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := podOf("waiting", "1", string(gpu.MIGResourceName("3g.40gb")), "1")
	p, h := retryingPlugin(ctx, t, store, 4, waiting)
	n := gpuNode("n", "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
	n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("1")
	n.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("2")
	nodes := h.set(t, []*corev1.Node{n})
	store.Update(telemetrytest.Report("n", 2, 1, time.Now()), time.Now())
	if s := filter(t, p, nodes, waiting, 0); s.IsSuccess() {
		t.Fatal("the pod fits before its agent reports GPU 1 partitioned into 3g.40gb instances")
	}
	h.noRetry(t, "by the node's first report")
	relaid := telemetrytest.Report("n", 2, 2, time.Now())
	relaid.Gpus[1].MigMode = telemetryv1.MIGMode_MIG_MODE_ENABLED
	relaid.Gpus[1].MigInstances = []*telemetryv1.MIGInstance{
		{Uuid: "MIG-a", Profile: "3g.40gb", GpuInstanceId: 1, PlacementStart: 0, PlacementSize: 4},
		{Uuid: "MIG-b", Profile: "3g.40gb", GpuInstanceId: 2, PlacementStart: 4, PlacementSize: 4},
	}
	relaid.PodDevices = nil
	store.Update(relaid, time.Now())
	h.retriedOnly(t, "default/waiting", "when the node reported its new MIG layout")
	if s := filter(t, p, nodes, waiting, 0); !s.IsSuccess() {
		t.Fatalf("the pod does not fit the new layout: %v", s)
	}
	// The same layout reported again retries nobody.
	store.Update(func() *telemetryv1.NodeReport {
		r := proto.Clone(relaid).(*telemetryv1.NodeReport)
		r.Sequence = 3
		return r
	}(), time.Now())
	h.noRetry(t, "by the same layout reported again")
}
