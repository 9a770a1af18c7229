package gpupack

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/backend/cache"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/parallelize"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"

	telemetryv1 "github.com/pennysched/penny/pkg/api/telemetry/v1"
	"github.com/pennysched/penny/pkg/benchtest"
	"github.com/pennysched/penny/pkg/gpu"
	"github.com/pennysched/penny/pkg/telemetry"
	"github.com/pennysched/penny/pkg/telemetry/telemetrytest"
	"github.com/pennysched/penny/plugins/gpupack/packing"
)

// handle is the part of the framework handle the plugin uses outside the
// API calls of Bind: a parallelizer and the cycle's snapshot.
type handle struct {
	fwk.Handle
	par  parallelize.Parallelizer
	snap *cache.Snapshot
}

func (h *handle) Parallelizer() fwk.Parallelizer                         { return h.par }
func (h *handle) SharedInformerFactory() informers.SharedInformerFactory { return nil }
func (h *handle) SnapshotSharedLister() fwk.SharedLister                 { return h.snap }

// set makes a snapshot of the nodes and pods the handle's and returns its
// node infos, in the nodes' order.
func (h *handle) set(t testing.TB, nodes []*corev1.Node, pods ...*corev1.Pod) []fwk.NodeInfo {
	t.Helper()
	h.snap = cache.NewSnapshot(pods, nodes)
	out := make([]fwk.NodeInfo, len(nodes))
	for i, n := range nodes {
		ni, err := h.snap.NodeInfos().Get(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = ni
	}
	return out
}

// The parallelizer records scheduler metrics.
var initMetrics sync.Once

func newPlugin(t testing.TB, args *Args, parallelism int) (*GPUPack, *handle) {
	t.Helper()
	initMetrics.Do(schedmetrics.InitMetrics)
	h := &handle{par: parallelize.NewParallelizer(parallelism)}
	var obj k8sruntime.Object
	if args != nil {
		obj = args
	}
	p, err := NewWith(context.Background(), obj, h)
	if err != nil {
		t.Fatal(err)
	}
	return p, h
}

func gpuNode(name, product string, gpus int, cpu string, labels ...string) *corev1.Node {
	l := map[string]string{gpu.LabelProduct: product, gpu.LabelCount: strconv.Itoa(gpus)}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	alloc := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(cpu),
		corev1.ResourceMemory: resource.MustParse("512Gi"),
		gpu.ResourceGPU:       *resource.NewQuantity(int64(gpus), resource.DecimalSI),
	}
	if gpus == 0 {
		delete(l, gpu.LabelProduct)
		delete(l, gpu.LabelCount)
		delete(alloc, gpu.ResourceGPU)
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}, Status: corev1.NodeStatus{Allocatable: alloc, Capacity: alloc}}
}

func podOf(name string, cpu string, kv ...string) *corev1.Pod {
	l := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("4Gi")}
	for i := 0; i+1 < len(kv); i += 2 {
		l[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name), Annotations: map[string]string{}},
		Spec: corev1.PodSpec{SchedulerName: "penny-scheduler", Containers: []corev1.Container{{
			Name: "main", Resources: corev1.ResourceRequirements{Requests: l, Limits: l}}}},
	}
}

func bound(p *corev1.Pod, node, assignment string) *corev1.Pod {
	p.Spec.NodeName = node
	if assignment != "" {
		p.Annotations[gpu.AnnotationAssignment] = assignment
	}
	return p
}

// schedule runs one cycle the way the scheduler does and returns the best
// node and the devices reserved there.
func schedule(t testing.TB, p *GPUPack, nodes []fwk.NodeInfo, pod *corev1.Pod) (string, gpu.Assignment) {
	t.Helper()
	state := framework.NewCycleState()
	best := pick(t, p, nodes, pod, state)
	if best == "" {
		return "", nil
	}
	if s := p.Reserve(context.Background(), state, pod, best); !s.IsSuccess() {
		t.Fatalf("Reserve: %v", s)
	}
	st, _ := getState(state)
	return best, st.assigned
}

// pick runs a cycle's PreFilter to NormalizeScore and returns the best node,
// or "" for none.
func pick(t testing.TB, p *GPUPack, nodes []fwk.NodeInfo, pod *corev1.Pod, state fwk.CycleState) string {
	t.Helper()
	ctx := context.Background()
	if _, s := p.PreFilter(ctx, state, pod, nodes); !s.IsSuccess() && !s.IsSkip() {
		t.Fatalf("PreFilter: %v", s)
	}
	var feasible []fwk.NodeInfo
	for _, ni := range nodes {
		if s := p.Filter(ctx, state, pod, ni); s.IsSuccess() {
			feasible = append(feasible, ni)
		}
	}
	if len(feasible) == 0 {
		return ""
	}
	if s := p.PreScore(ctx, state, pod, feasible); !s.IsSuccess() {
		t.Fatalf("PreScore: %v", s)
	}
	scores := make(fwk.NodeScoreList, len(feasible))
	for i, ni := range feasible {
		sc, s := p.Score(ctx, state, pod, ni)
		if !s.IsSuccess() {
			t.Fatalf("Score: %v", s)
		}
		scores[i] = fwk.NodeScore{Name: ni.Node().Name, Score: sc}
	}
	if s := p.NormalizeScore(ctx, state, pod, scores); !s.IsSuccess() {
		t.Fatalf("NormalizeScore: %v", s)
	}
	best := scores[0]
	for _, s := range scores {
		if s.Score > best.Score || s.Score == best.Score && s.Name < best.Name {
			best = s
		}
	}
	return best.Name
}

func TestArgsDefaultsAndValidation(t *testing.T) {
	a, err := DecodeArgs(nil)
	if err != nil {
		t.Fatal(err)
	}
	if *a.FragmentationWeight != 1 || *a.DemandHalfLife != 2000 || *a.LookAheadDepth != 256 || !*a.KeepGPUNodesForGPUPods || a.PoolLabel != "penny.dev/pool" {
		t.Fatalf("defaults: %+v", a)
	}
	for _, tc := range []struct{ raw, want string }{
		{`{"demandHalfLife": -1}`, "demandHalfLife"},
		{`{"scoreScale": 0}`, "scoreScale"},
		{`{"fragmentationWeight": 0, "balanceWeight": 0, "deadPieceWeight": 0, "overkillWeight": 0}`, "every node would score the same"},
		{`{"balanceWeight": -1}`, "balanceWeight"},
		{`{"deadPieceWeight": -1}`, "deadPieceWeight"},
		{`{"lookAheadDepth": -3}`, "lookAheadDepth"},
		{`{"demandRefresh": 0}`, "demandRefresh"},
		{`{"demandHalfLfe": 10}`, `unknown field "demandHalfLfe"`},
	} {
		_, err := DecodeArgs(&k8sruntime.Unknown{Raw: []byte(tc.raw)})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), Name) {
			t.Errorf("%s: error %v, want one naming %q and the plugin", tc.raw, err, tc.want)
		}
	}
}

func TestCPUPodsStayOffGPUNodes(t *testing.T) {
	cluster := []*corev1.Node{gpuNode("a100", "NVIDIA-A100-SXM4-80GB", 8, "96"), gpuNode("cpu", "", 0, "16")}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, cluster)
	if node, _ := schedule(t, p, nodes, podOf("web", "2")); node != "cpu" {
		t.Fatalf("CPU pod went to %s, want the CPU node", node)
	}
	off := false
	p, h = newPlugin(t, &Args{KeepGPUNodesForGPUPods: &off}, 1)
	nodes = h.set(t, cluster)
	ctx := context.Background()
	state := framework.NewCycleState()
	pod := podOf("web2", "2")
	p.PreFilter(ctx, state, pod, nodes)
	p.PreScore(ctx, state, pod, nodes)
	a, _ := p.Score(ctx, state, pod, nodes[0])
	c, _ := p.Score(ctx, state, pod, nodes[1])
	if a != c {
		t.Fatalf("with keepGPUNodesForGPUPods off, a CPU pod that strands nothing scores %d on the GPU node and %d on the CPU node", a, c)
	}
}

// The view counts devices held by reservations whose pods are still being
// bound, and forgets them when the binding fails.
func TestReservationsHoldDevicesUntilUnreserved(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 2, "64")}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n)
	pod := podOf("a", "1", string(gpu.ResourceGPU), "2")
	node, a := schedule(t, p, nodes, pod)
	if node != "t4" || a.String() != "0,1" {
		t.Fatalf("first pod: %s %v", node, a)
	}
	// The scheduler cache now holds the assumed pod (no annotation yet).
	assumed := pod.DeepCopy()
	assumed.Spec.NodeName = "t4"
	nodes = h.set(t, n, assumed)
	if node, _ := schedule(t, p, nodes, podOf("b", "1", string(gpu.ResourceGPU), "1")); node != "" {
		t.Fatalf("a second pod got GPUs held by a reservation on %s", node)
	}
	// Binding fails: Unreserve, and the cache forgets the pod.
	p.Unreserve(context.Background(), framework.NewCycleState(), pod, "t4")
	nodes = h.set(t, n)
	if node, a := schedule(t, p, nodes, podOf("c", "1", string(gpu.ResourceGPU), "1")); node != "t4" || a.String() != "0" {
		t.Fatalf("after Unreserve: %s %v", node, a)
	}
}

// The framework calls Unreserve for every pod whose Reserve failed, its
// own or a later plugin's, so for pods PennyGPUPack never reserved for:
// that must leave other pods' devices held.
func TestUnreserveWithoutReservationKeepsOthers(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 2, "64")}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n)
	held := podOf("held", "1", string(gpu.ResourceGPU), "1")
	if node, a := schedule(t, p, nodes, held); node != "t4" || len(a) != 1 {
		t.Fatalf("held: %q %v", node, a)
	}
	// The cache assumed held before its Reserve: the next cycle's snapshot
	// shows it on the node.
	nodes = h.set(t, n, bound(held.DeepCopy(), "t4", ""))
	stranger := podOf("stranger", "1", string(gpu.ResourceGPU), "1")
	state := framework.NewCycleState()
	if _, s := p.PreFilter(context.Background(), state, stranger, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	p.Unreserve(context.Background(), state, stranger, "t4")
	if len(p.view.reserved) != 1 || len(p.view.dirty) != 0 {
		t.Fatalf("reservations %v, marked %v; want held's alone, no marks", p.view.reserved, p.view.dirty)
	}
	if node, a := schedule(t, p, nodes, podOf("two", "1", string(gpu.ResourceGPU), "2")); node != "" {
		t.Fatalf("two got %q %v: held's GPU was handed out again", node, a)
	}
}

// A node deleted while pods were being bound to it is never rebuilt, which
// is where its reservations were dropped, and a binding that fails once the
// node is gone marks a node no cycle will rebuild. Over weeks of autoscaled
// nodes both leak. What the view holds for live nodes stays.
func TestViewForgetsDeletedNodes(t *testing.T) {
	gone, stays := gpuNode("gone", "Tesla-T4", 4, "64"), gpuNode("stays", "Tesla-T4", 3, "64")
	held := bound(podOf("held", "1", string(gpu.ResourceGPU), "2"), "stays", "0,1")
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, []*corev1.Node{gone, stays}, held)
	inflight, failed := podOf("inflight", "1", string(gpu.ResourceGPU), "2"), podOf("failed", "1", string(gpu.ResourceGPU), "2")
	if node, _ := schedule(t, p, nodes, inflight); node != "gone" {
		t.Fatalf("inflight went to %q; only gone has two idle GPUs", node)
	}
	assumed := bound(inflight.DeepCopy(), "gone", "")
	nodes = h.set(t, []*corev1.Node{gone, stays}, held, assumed)
	if node, _ := schedule(t, p, nodes, failed); node != "gone" {
		t.Fatalf("failed went to %q; only gone has two idle GPUs", node)
	}
	// gone is deleted; failed's binding fails for it, inflight's is still
	// in flight.
	p.Unreserve(context.Background(), framework.NewCycleState(), failed, "gone")
	nodes = h.set(t, []*corev1.Node{stays}, held)
	live := podOf("live", "1", string(gpu.ResourceGPU), "1")
	if node, a := schedule(t, p, nodes, live); node != "stays" || a.String() != "2" {
		t.Fatalf("live got %q %v; want GPU 2 of stays", node, a)
	}
	// stays is marked by live's reservation, which its entry does not hold.
	if _, marked := p.view.dirty["stays"]; len(p.view.nodes) != 1 || p.view.byName["stays"] == nil || len(p.view.byName) != 1 || len(p.view.dirty) != 1 || !marked {
		t.Errorf("the view keeps %d node entries (%d by name) and marks %v; want stays alone, and only stays marked", len(p.view.nodes), len(p.view.byName), p.view.dirty)
	}
	if _, ok := p.view.reserved[live.UID]; !ok || len(p.view.reserved) != 1 {
		t.Errorf("reservations %v; want live's alone (inflight's node is gone)", p.view.reserved)
	}
	// The next cycle sees live assumed on stays: its devices stay held.
	nodes = h.set(t, []*corev1.Node{stays}, held, bound(live.DeepCopy(), "stays", ""))
	if node, a := schedule(t, p, nodes, podOf("more", "1", string(gpu.ResourceGPU), "1")); node != "" {
		t.Fatalf("more got %q %v: live's reserved GPU was handed out again", node, a)
	}
}

// A restarted plugin rebuilds the view from the annotations alone and a
// tenant cannot claim devices its request does not cover.
func TestViewFromAnnotations(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 4, "64")}
	pods := []*corev1.Pod{
		bound(podOf("a", "1", string(gpu.ResourceGPUMilli), "600"), "t4", "2:600m"),
		bound(podOf("b", "1", string(gpu.ResourceGPU), "1"), "t4", "0"),
		// Claims two GPUs on a one-GPU request: not believed; held first-fit.
		bound(podOf("c", "1", string(gpu.ResourceGPU), "1"), "t4", "1,3"),
	}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n, pods...)
	node, a := schedule(t, p, nodes, podOf("d", "1", string(gpu.ResourceGPUMilli), "400"))
	if node != "t4" || a.String() != "2:400m" {
		t.Fatalf("a 400 share goes into the 400 left on GPU 2: got %s %v", node, a)
	}
	e := p.view.nodes[nodes[0].(*framework.NodeInfo)]
	if e.guessed != 1 || e.node.Dev.WholeFree() != 1 {
		t.Fatalf("guessed %d pods, %d GPUs whole free; want 1 and 1 (GPU 3)", e.guessed, e.node.Dev.WholeFree())
	}
}

// A restarted scheduler meets pods whose devices it knows (their
// annotation) next to GPU pods whose devices it does not (bound by another
// scheduler). The known ones are the node's truth; a guess for an unknown
// pod must not push a known one off its GPU, or the view offers what the
// known pod holds.
func TestRebuiltViewKeepsKnownDevicesBeforeGuesses(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 2, "64")}
	pods := []*corev1.Pod{
		// Listed first, as the cache lists pods in the order it learned them.
		bound(podOf("a-foreign", "1", string(gpu.ResourceGPUMilli), "500"), "t4", ""),
		bound(podOf("b-known", "1", string(gpu.ResourceGPUMilli), "600"), "t4", "0:600m"),
	}
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n, pods...)
	node, a := schedule(t, p, nodes, podOf("c", "1", string(gpu.ResourceGPUMilli), "500"))
	if node != "t4" {
		t.Fatalf("c was not placed: %q", node)
	}
	dev := gpu.NodeDevicesFor(n[0])
	if _, err := dev.AddPod(pods[1]); err != nil {
		t.Fatal(err)
	}
	if err := dev.Apply(a); err != nil {
		t.Fatalf("c got %v, which b-known's 0:600m already holds: %v", a, err)
	}
	e := p.view.nodes[nodes[0].(*framework.NodeInfo)]
	if e.guessed != 1 || e.node.Dev.GPUs[0].UsedMilli != 600 {
		t.Fatalf("view: %d pods guessed, GPU 0 holds %d milli; want 1 and b-known's 600", e.guessed, e.node.Dev.GPUs[0].UsedMilli)
	}
}

// Anyone who may create a pod can bind it straight to a node (spec.nodeName)
// with a request no node could hold; the kubelet refuses it, but the
// scheduler sees it on the node first. Rebuilding the node's view must not
// size memory by that request (it panicked), and holds nothing for it.
func TestViewSurvivesAnImpossibleBoundPod(t *testing.T) {
	n := []*corev1.Node{gpuNode("t4", "Tesla-T4", 2, "64")}
	rogue := bound(podOf("rogue", "1", string(gpu.ResourceGPU), "9223372036854775807"), "t4", "")
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, n, rogue)
	if node, a := schedule(t, p, nodes, podOf("a", "1", string(gpu.ResourceGPU), "2")); node != "t4" || a.String() != "0,1" {
		t.Fatalf("got %q %v; want both GPUs of t4", node, a)
	}
}

// Filter and Score read the view while binding goroutines reserve and
// unreserve other pods; run with -race.
func TestConcurrentBindingsAndScoring(t *testing.T) {
	var cluster []*corev1.Node
	for i := 0; i < 50; i++ {
		cluster = append(cluster, gpuNode(fmt.Sprint("n", i), "Tesla-T4", 4, "64"))
	}
	p, h := newPlugin(t, nil, 4)
	nodes := h.set(t, cluster)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				pod := podOf(fmt.Sprintf("bg-%d-%d", g, i), "1")
				p.view.reserve(pod, fmt.Sprint("n", i%50), gpu.Assignment{{GPU: i % 4, Milli: 100}})
				p.Unreserve(ctx, framework.NewCycleState(), pod, "")
				p.poolStats()
			}
		}()
	}
	for i := 0; i < 50; i++ {
		schedule(t, p, nodes, podOf(fmt.Sprint("fg", i), "1", string(gpu.ResourceGPUMilli), "300"))
	}
	wg.Wait()
}

// benchCluster is 5,000 nodes: 8 x A100 (60%), 2 x T4 (30%) and CPU-only,
// about half full of whole GPUs and shares.
func benchCluster(rng *rand.Rand) ([]*corev1.Node, []*corev1.Pod) {
	var nodes []*corev1.Node
	var all []*corev1.Pod
	shares := []int64{110, 230, 320, 460, 470, 650, 810}
	for i := 0; i < 5000; i++ {
		var n *corev1.Node
		switch r := rng.IntN(10); {
		case r < 6:
			n = gpuNode(fmt.Sprint("a100-", i), "NVIDIA-A100-SXM4-80GB", 8, "96")
		case r < 9:
			n = gpuNode(fmt.Sprint("t4-", i), "Tesla-T4", 2, "104")
		default:
			n = gpuNode(fmt.Sprint("cpu-", i), "", 0, "32")
		}
		dev := gpu.NodeDevicesFor(n)
		var pods []*corev1.Pod
		for g := range dev.GPUs {
			switch rng.IntN(4) {
			case 0:
				pods = append(pods, bound(podOf(fmt.Sprintf("%s-w%d", n.Name, g), "8", string(gpu.ResourceGPU), "1"), n.Name, strconv.Itoa(g)))
			case 1:
				m := shares[rng.IntN(len(shares))]
				pods = append(pods, bound(podOf(fmt.Sprintf("%s-s%d", n.Name, g), "4", string(gpu.ResourceGPUMilli), strconv.FormatInt(m, 10)), n.Name, fmt.Sprintf("%d:%dm", g, m)))
			}
		}
		nodes = append(nodes, n)
		all = append(all, pods...)
	}
	return nodes, all
}

// BenchmarkScore5000Nodes measures the plugin's scoring cost per pod on
// 5,000 nodes: PreScore (the demand and, when it has changed, each node's
// measure; the pod's placement on each node), Score on every feasible node
// and NormalizeScore. Each iteration is a new pod arriving (PreFilter and
// Filter run first, untimed), so the learned demand changes as in a running
// scheduler: rebuilt every DemandRefresh arrivals, or at once for a new
// shape. share and whole cycle through seven and eight requests, so a node
// measures each of them once per demand and answers the rest from its memo;
// share-unseen gives every pod a request no node has measured (the memo
// never answers). With -cpu 1 it runs
// serially and cpu-ns/op is the CPU time one pod's scoring costs; with more
// CPUs the parallelizer spreads PreScore and Score as kube-scheduler does
// (its default parallelism is 16), and ns/op is the latency.
func BenchmarkScore5000Nodes(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	cluster, pods := benchCluster(rng)
	for _, kind := range []struct {
		name string
		pod  func(i int) *corev1.Pod
	}{
		{"share", func(i int) *corev1.Pod {
			return podOf(fmt.Sprint("p", i), "4", string(gpu.ResourceGPUMilli), strconv.Itoa([]int{110, 230, 320, 460, 470, 650, 810}[i%7]))
		}},
		{"whole", func(i int) *corev1.Pod {
			return podOf(fmt.Sprint("p", i), strconv.Itoa(4+i%8), string(gpu.ResourceGPU), "1")
		}},
		// The share pods again, each asking for a little more memory than
		// any before it: a request no node has measured, every time.
		{"share-unseen", func(i int) *corev1.Pod {
			return podOf(fmt.Sprint("p", i), "4", string(gpu.ResourceGPUMilli), strconv.Itoa([]int{110, 230, 320, 460, 470, 650, 810}[i%7]),
				string(corev1.ResourceMemory), strconv.Itoa(4<<30+i<<20))
		}},
	} {
		b.Run(kind.name, func(b *testing.B) {
			p, h := newPlugin(b, nil, runtime.GOMAXPROCS(0))
			nodes := h.set(b, cluster, pods...)
			ctx := context.Background()
			feasible := func(state fwk.CycleState, pod *corev1.Pod) []fwk.NodeInfo {
				p.PreFilter(ctx, state, pod, nodes)
				var out []fwk.NodeInfo
				for _, ni := range nodes {
					if p.Filter(ctx, state, pod, ni).IsSuccess() {
						out = append(out, ni)
					}
				}
				return out
			}
			// Warm up: learn a demand and build the views.
			for i := 0; i < 200; i++ {
				state := framework.NewCycleState()
				pod := kind.pod(1_000_000 + i)
				p.PreScore(ctx, state, pod, feasible(state, pod))
			}
			scores := make(fwk.NodeScoreList, len(nodes))
			var cpu time.Duration
			var scored int
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				pod := kind.pod(i)
				state := framework.NewCycleState()
				fs := feasible(state, pod)
				scored += len(fs)
				start := benchtest.ProcessCPU()
				b.StartTimer()
				p.PreScore(ctx, state, pod, fs)
				h.par.Until(ctx, len(fs), func(j int) {
					s, _ := p.Score(ctx, state, pod, fs[j])
					scores[j] = fwk.NodeScore{Name: fs[j].Node().Name, Score: s}
				}, "Score")
				p.NormalizeScore(ctx, state, pod, scores[:len(fs)])
				b.StopTimer()
				cpu += benchtest.ProcessCPU() - start
				b.StartTimer()
			}
			// On a shared machine wall time includes waiting for a core;
			// the CPU time the process spent is what scoring costs.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(scored)/float64(b.N), "nodes/op")
		})
	}
}

func TestTelemetryLayouts(t *testing.T) {
	store := telemetry.NewStore(telemetry.StoreOptions{MaxAge: time.Hour})
	src := TelemetryLayouts(store)
	if _, ok := src.Report("n"); ok {
		t.Fatal("a node that never reported has a layout")
	}
	// Even GPUs whole, odd ones with seven 1g.10gb instances.
	store.Update(telemetrytest.Report("n", 4, 1, time.Now()), time.Now())
	r1, ok := src.Report("n")
	layout := r1.Layout
	if !ok || len(layout) != 4 || layout[0] != nil || len(layout[1]) != 7 || layout[3][6] != (gpu.Placement{Profile: "1g.10gb", Start: 6}) || len(r1.Unhealthy) != 0 {
		t.Fatalf("report %+v (ok %v)", r1, ok)
	}
	store.Update(telemetrytest.Report("n", 4, 2, time.Now()), time.Now())
	if r2, _ := src.Report("n"); r2.Version != r1.Version {
		t.Fatal("the version changed with a report whose layout did not")
	}
	r := telemetrytest.Report("n", 4, 3, time.Now())
	r.Gpus[1].MigInstances = r.Gpus[1].MigInstances[:3]
	store.Update(r, time.Now())
	r3, _ := src.Report("n")
	if r3.Version == r1.Version {
		t.Fatal("the version did not change with the layout")
	}
	r = telemetrytest.Report("n", 4, 4, time.Now())
	r.Gpus[1].MigInstances = r.Gpus[1].MigInstances[:3]
	r.Gpus[2].Health = &telemetryv1.Health{Reasons: []string{"XID 79 (GPU has fallen off the bus)"}}
	// A GPU without a health verdict is not taken for broken.
	r.Gpus[3].Health = nil
	store.Update(r, time.Now())
	r4, _ := src.Report("n")
	if r4.Version == r3.Version || !slices.Equal(r4.Unhealthy, []int{2}) {
		t.Fatalf("a GPU reported unhealthy: unhealthy %v, version %x (before %x)", r4.Unhealthy, r4.Version, r3.Version)
	}
	// The agent goes silent: its last report, layout and verdicts, stands
	// until the store drops the node.
	store.SetMaxAge(time.Nanosecond)
	time.Sleep(time.Millisecond)
	if _, fresh := store.Node("n"); fresh {
		t.Fatal("the report is still fresh: the test shows nothing")
	}
	if r5, ok := src.Report("n"); !ok || r5.Version != r4.Version || !slices.Equal(r5.Unhealthy, []int{2}) || len(r5.Layout[1]) != 3 {
		t.Fatalf("the silent agent's node: report %+v (ok %v), want the last one", r5, ok)
	}
	store.Forget("n")
	if r, ok := src.Report("n"); ok {
		t.Fatalf("a node the store dropped has a report: %+v", r)
	}
}

// layoutsOf is a LayoutSource with one node's report.
type layoutsOf struct {
	node      string
	layout    [][]gpu.Placement
	unhealthy []int
}

func (l layoutsOf) Report(node string) (GPUReport, bool) {
	if node != l.node {
		return GPUReport{}, false
	}
	return GPUReport{Layout: l.layout, Unhealthy: l.unhealthy, Version: reportVersion(l.layout, l.unhealthy)}, true
}

// The device plugin advertises how many GPUs are whole, not which: the view
// guesses the last ones are partitioned. When the agent reports which GPUs
// are, the report decides: an instance is never given on a GPU the node
// runs whole, and that GPU serves whole-GPU pods.
func TestReportedLayoutSaysWhichGPUsAreWhole(t *testing.T) {
	n := gpuNode("mixed", "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
	n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("1")
	n.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("2")
	p, nodes := withReportedLayout(t, n, [][]gpu.Placement{{{Profile: "3g.40gb", Start: 0}, {Profile: "3g.40gb", Start: 4}}, nil})
	if node, a := schedule(t, p, nodes, podOf("small", "1", "nvidia.com/mig-1g.10gb", "1")); node != "" {
		t.Fatalf("a 1g.10gb went to %s as %v; the node has only 3g.40gb instances, on GPU 0", node, a)
	}
	if node, a := schedule(t, p, nodes, podOf("whole", "1", string(gpu.ResourceGPU), "1")); node != "mixed" || a.String() != "1" {
		t.Fatalf("a whole-GPU pod got %q %v; want GPU 1, the one the node reports whole", node, a)
	}
	if node, a := schedule(t, p, nodes, podOf("big", "1", "nvidia.com/mig-3g.40gb", "1")); node != "mixed" || a.String() != "0:3g.40gb@0" {
		t.Fatalf("a 3g.40gb got %q %v; want the instance at 0 on GPU 0", node, a)
	}
}

func TestLookAheadCountsOnlyPodsFoundUnschedulable(t *testing.T) {
	l := packing.NewLearner(packing.LearnerOptions{})
	pp := &pendingPods{learner: l, names: map[string]bool{"penny-scheduler": true}}
	fresh := podOf("fresh", "4", string(gpu.ResourceGPU), "1")
	waiting := podOf("waiting", "4", string(gpu.ResourceGPU), "2")
	waiting.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable}}
	other := podOf("other", "4", string(gpu.ResourceGPU), "1")
	other.Spec.SchedulerName = "default-scheduler"
	other.Status.Conditions = waiting.Status.Conditions
	for _, p := range []*corev1.Pod{fresh, waiting, other} {
		pp.update(p)
	}
	if n := l.Pending(); n != 1 {
		t.Fatalf("look-ahead counts %d pods, want 1 (only the one this scheduler found no node for)", n)
	}
	placed := waiting.DeepCopy()
	placed.Spec.NodeName = "n"
	pp.update(placed)
	if n := l.Pending(); n != 0 {
		t.Fatalf("a placed pod still counts: %d pending", n)
	}
}

// An autoscaler's what-if (does the pod fit this template node?) is not an
// arrival: only the scheduling cycle teaches the demand a shape.
func TestWhatIfIsNotAnArrival(t *testing.T) {
	p, h := newPlugin(t, nil, 1)
	nodes := h.set(t, []*corev1.Node{gpuNode("n", "NVIDIA-A10G", 8, "192")})
	pod := podOf("three", "4", string(gpu.ResourceGPU), "3")
	req, err := packing.ReqFor(pod)
	if err != nil {
		t.Fatal(err)
	}
	has := func() bool {
		for _, s := range p.learner.Demand().Shapes {
			if s.Key() == req.Shape.Key() {
				return true
			}
		}
		return false
	}
	if _, s := p.PreFilter(WhatIf(context.Background()), framework.NewCycleState(), pod, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if has() {
		t.Fatal("a what-if taught the demand a 3-GPU shape")
	}
	if _, s := p.PreFilter(context.Background(), framework.NewCycleState(), pod, nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if !has() {
		t.Fatal("the scheduling cycle did not count the pod's 3-GPU shape")
	}
}

// A GPU the node reports in MIG mode with no instances yet (MIG enabled,
// nothing created) takes instances only: a whole-GPU pod must get the GPU
// the node runs whole, not the first GPU nobody holds.
func TestWholeGPUPodSkipsAnEmptyMIGModeGPU(t *testing.T) {
	n := gpuNode("mixed", "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
	n.Status.Allocatable[gpu.ResourceGPU] = resource.MustParse("1")
	p, nodes := withReportedLayout(t, n, [][]gpu.Placement{{}, nil})
	if node, a := schedule(t, p, nodes, podOf("whole", "1", string(gpu.ResourceGPU), "1")); node != "mixed" || a.String() != "1" {
		t.Fatalf("a whole-GPU pod got %q %v; want GPU 1, the one the node reports whole (GPU 0 is in MIG mode)", node, a)
	}
}

// Nor does such a GPU give MIG instances, on a node whose instances exist
// before pods ask (static partitioning): it holds none until mig-parted
// creates them. It was filled by geometry, and a pod was given an instance
// that did not exist, while the one it would use stayed free in the view.
func TestEmptyMIGModeGPUGivesNoInstanceOnAStaticNode(t *testing.T) {
	n := gpuNode("mig", "NVIDIA-A100-SXM4-80GB", 2, "64", gpu.LabelMIGStrategy, "mixed")
	delete(n.Status.Allocatable, gpu.ResourceGPU)
	n.Status.Allocatable[gpu.MIGResourceName("1g.10gb")] = resource.MustParse("7")
	n.Status.Allocatable[gpu.MIGResourceName("7g.80gb")] = resource.MustParse("1")
	var seven []gpu.Placement
	for i := range 7 {
		seven = append(seven, gpu.Placement{Profile: "1g.10gb", Start: i})
	}
	p, nodes := withReportedLayout(t, n, [][]gpu.Placement{{}, seven})
	if node, a := schedule(t, p, nodes, podOf("small", "1", "nvidia.com/mig-1g.10gb", "1")); node != "mig" || a.String() != "1:1g.10gb@0" {
		t.Fatalf("a 1g.10gb got %q %v; want the first instance of GPU 1, the only GPU with instances", node, a)
	}
	if node, a := schedule(t, p, nodes, podOf("big", "1", "nvidia.com/mig-7g.80gb", "1")); node != "" {
		t.Fatalf("a 7g.80gb got %q %v; no GPU of the node holds such an instance", node, a)
	}
}

// withReportedLayout makes a plugin whose telemetry reports layout for n
// (nil: a GPU the node runs whole).
func withReportedLayout(t *testing.T, n *corev1.Node, layout [][]gpu.Placement) (*GPUPack, []fwk.NodeInfo) {
	t.Helper()
	initMetrics.Do(schedmetrics.InitMetrics)
	h := &handle{par: parallelize.NewParallelizer(1)}
	p, err := NewWith(context.Background(), nil, h, WithLayouts(layoutsOf{node: n.Name, layout: layout}))
	if err != nil {
		t.Fatal(err)
	}
	return p, h.set(t, []*corev1.Node{n})
}

// BenchmarkFilter1000Nodes measures what the plugin costs one pod's cycle
// before scoring on 1,000 8-GPU nodes, a third of their GPUs taken. Each pod
// is reserved on a node and unreserved, which marks the node to be read
// again, as every placed pod's Reserve does. PreFilter times PreFilter
// alone: the device view brought up to date with the snapshot, which runs
// before the parallel part of the cycle, one pod at a time. Filter adds
// Filter on every node, 16 at a time as kube-scheduler's parallelizer runs
// them. cpu-ns/op is the CPU time the process spent on them per pod.
// Score times the rest of the cycle on a cluster like scheduler_perf's
// GPUBasic (see scoreCluster1000).
func BenchmarkFilter1000Nodes(b *testing.B) {
	b.Run("Score", benchmarkScore1000Nodes)
	var nodes []*corev1.Node
	var pods []*corev1.Pod
	for i := range 1000 {
		n := gpuNode(fmt.Sprintf("gpu-node-%05d", i), "NVIDIA-H100-80GB-HBM3", 8, "96")
		nodes = append(nodes, n)
		for g := range i % 4 {
			pods = append(pods, bound(podOf(fmt.Sprintf("%s-p%d", n.Name, g), "4", string(gpu.ResourceGPU), "1"), n.Name, strconv.Itoa(g)))
		}
	}
	for _, filter := range []bool{false, true} {
		name := "PreFilter"
		if filter {
			name = "Filter"
		}
		b.Run(name, func(b *testing.B) {
			p, h := newPlugin(b, nil, 16)
			infos := h.set(b, nodes, pods...)
			ctx := context.Background()
			statuses := make([]*fwk.Status, len(infos))
			var cpu time.Duration
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				pod := podOf(fmt.Sprint("p", i), "4", string(gpu.ResourceGPU), strconv.Itoa(1<<(i%3)))
				state := framework.NewCycleState()
				start := benchtest.ProcessCPU()
				if _, s := p.PreFilter(ctx, state, pod, infos); !s.IsSuccess() {
					b.Fatalf("PreFilter: %v", s)
				}
				node := infos[i%len(infos)].Node().Name
				if filter {
					h.par.Until(ctx, len(infos), func(j int) { statuses[j] = p.Filter(ctx, state, pod, infos[j]) }, "Filter")
					if s := statuses[i%len(infos)]; !s.IsSuccess() {
						b.Fatalf("Filter on %s: %v", node, s)
					}
				}
				cpu += benchtest.ProcessCPU() - start
				b.StopTimer()
				if s := p.Reserve(ctx, state, pod, node); !s.IsSuccess() {
					b.Fatalf("Reserve: %v", s)
				}
				p.Unreserve(ctx, state, pod, node)
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// scoreCluster1000 is 800 8 x H100 nodes and 200 8 x A100 nodes in static
// MIG mode, as scheduler_perf's GPUBasic makes them (its MIG pods take
// 1g.10gb and 3g.40gb instances), filled as a packing scheduler leaves
// them: of the H100s a third idle, a third full and the rest partly taken
// by pods of 1, 2 or 4 GPUs; of the A100s half idle and the rest with
// 1g.10gb and 3g.40gb pods on some GPUs. Pods ask for CPU and memory as
// GPUBasic's do.
func scoreCluster1000(rng *rand.Rand) ([]*corev1.Node, []*corev1.Pod) {
	var nodes []*corev1.Node
	var pods []*corev1.Pod
	withMem := func(p *corev1.Pod, mem string) *corev1.Pod {
		r := p.Spec.Containers[0].Resources
		r.Requests[corev1.ResourceMemory] = resource.MustParse(mem)
		r.Limits[corev1.ResourceMemory] = resource.MustParse(mem)
		return p
	}
	for i := range 800 {
		n := gpuNode(fmt.Sprintf("gpu-node-%05d", i), "NVIDIA-H100-80GB-HBM3", 8, "96")
		nodes = append(nodes, n)
		next, want := 0, []int{0, 8, 1 + rng.IntN(7)}[i%3]
		for k := 0; next < want; k++ {
			g := min([]int{1, 1, 2, 4}[rng.IntN(4)], want-next)
			a := make([]string, g)
			for j := range a {
				a[j] = strconv.Itoa(next + j)
			}
			next += g
			pod := podOf(fmt.Sprintf("%s-p%d", n.Name, k), "4", string(gpu.ResourceGPU), strconv.Itoa(g))
			pods = append(pods, bound(withMem(pod, "16Gi"), n.Name, strings.Join(a, ",")))
		}
	}
	for i := range 200 {
		n := gpuNode(fmt.Sprintf("mig-node-%05d", i), "NVIDIA-A100-SXM4-80GB", 8, "96", gpu.LabelMIGStrategy, "mixed")
		delete(n.Status.Allocatable, gpu.ResourceGPU)
		n.Status.Allocatable[gpu.MIGResourceName("1g.10gb")] = resource.MustParse("28")
		n.Status.Allocatable[gpu.MIGResourceName("3g.40gb")] = resource.MustParse("8")
		nodes = append(nodes, n)
		for g := range 8 * (i % 2) {
			var held []string
			switch rng.IntN(4) {
			case 1:
				held = []string{fmt.Sprintf("%d:1g.10gb@0", g), fmt.Sprintf("%d:1g.10gb@1", g), fmt.Sprintf("%d:1g.10gb@2", g)}[:1+rng.IntN(3)]
			case 2:
				held = []string{fmt.Sprintf("%d:3g.40gb@0", g)}
			}
			for k, a := range held {
				profile := strings.SplitN(strings.SplitN(a, ":", 2)[1], "@", 2)[0]
				pod := podOf(fmt.Sprintf("%s-g%d-%d", n.Name, g, k), "2", "nvidia.com/mig-"+profile, "1")
				pods = append(pods, bound(withMem(pod, "8Gi"), n.Name, a))
			}
		}
	}
	return nodes, pods
}

// benchmarkScore1000Nodes times PreScore, Score on every feasible node (16
// at a time, as kube-scheduler's parallelizer runs them) and NormalizeScore
// for pods in GPUBasic's mix: whole-GPU pods (1, 1, 2, 4 GPUs) alternating
// with MIG pods (three 1g.10gb to one 3g.40gb). PreFilter and Filter run
// first, untimed. The pod is reserved on the best node and unreserved, so
// the next cycle reads that node again as after every placement, and the
// learned demand is rebuilt every DemandRefresh arrivals as in a running
// scheduler. cpu-ns/op is the CPU time the process spent per pod.
func benchmarkScore1000Nodes(b *testing.B) {
	cluster, bound := scoreCluster1000(rand.New(rand.NewPCG(1, 2)))
	p, h := newPlugin(b, nil, 16)
	infos := h.set(b, cluster, bound...)
	ctx := context.Background()
	podFor := func(i int) *corev1.Pod {
		name := fmt.Sprint("p", i)
		if i%2 == 0 {
			g := []string{"1", "1", "2", "4"}[i/2%4]
			return podOf(name, "4", string(gpu.ResourceGPU), g, string(corev1.ResourceMemory), "16Gi")
		}
		profile := []string{"1g.10gb", "1g.10gb", "1g.10gb", "3g.40gb"}[i/2%4]
		return podOf(name, "2", "nvidia.com/mig-"+profile, "1", string(corev1.ResourceMemory), "8Gi")
	}
	feasible := make([]fwk.NodeInfo, 0, len(infos))
	statuses := make([]*fwk.Status, len(infos))
	scores := make(fwk.NodeScoreList, len(infos))
	var cpu time.Duration
	cycle := func(i int, timed bool) {
		pod := podFor(i)
		state := framework.NewCycleState()
		if _, s := p.PreFilter(ctx, state, pod, infos); !s.IsSuccess() {
			b.Fatalf("PreFilter: %v", s)
		}
		h.par.Until(ctx, len(infos), func(j int) { statuses[j] = p.Filter(ctx, state, pod, infos[j]) }, "Filter")
		feasible = feasible[:0]
		for j, s := range statuses {
			if s.IsSuccess() {
				feasible = append(feasible, infos[j])
			}
		}
		var start time.Duration
		if timed {
			start = benchtest.ProcessCPU()
			b.StartTimer()
		}
		if s := p.PreScore(ctx, state, pod, feasible); !s.IsSuccess() {
			b.Fatalf("PreScore: %v", s)
		}
		h.par.Until(ctx, len(feasible), func(j int) {
			sc, _ := p.Score(ctx, state, pod, feasible[j])
			scores[j] = fwk.NodeScore{Name: feasible[j].Node().Name, Score: sc}
		}, "Score")
		p.NormalizeScore(ctx, state, pod, scores[:len(feasible)])
		if timed {
			b.StopTimer()
			cpu += benchtest.ProcessCPU() - start
		}
		best := scores[0]
		for _, s := range scores[:len(feasible)] {
			if s.Score > best.Score {
				best = s
			}
		}
		if s := p.Reserve(ctx, state, pod, best.Name); !s.IsSuccess() {
			b.Fatalf("Reserve on %s: %v", best.Name, s)
		}
		p.Unreserve(ctx, state, pod, best.Name)
	}
	// Warm up: learn the demand and build the view.
	for i := range 64 {
		cycle(1_000_000+i, false)
	}
	var scored int
	b.ReportAllocs()
	b.ResetTimer()
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		cycle(i, true)
		scored += len(feasible)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(scored)/float64(b.N), "nodes/op")
}

// Nodes in one state share their MIG measures within a demand (packing's
// SharedMemo). A node that changes between two cycles of one demand must be
// measured as it is now, not answered from the state it shared before.
func TestScoreOfANodeThatChangedIsFresh(t *testing.T) {
	p, h := newPlugin(t, nil, 4)
	var cluster []*corev1.Node
	for _, name := range []string{"a", "b", "c"} {
		cluster = append(cluster, gpuNode(name, "NVIDIA-A100-SXM4-80GB", 8, "64", gpu.LabelMIGPartitioning, gpu.MIGOnDemand))
	}
	ctx := context.Background()
	logger := klog.FromContext(ctx)
	scores := func(nodes []fwk.NodeInfo, pod *corev1.Pod) (map[string]int64, *cycleState) {
		t.Helper()
		state := framework.NewCycleState()
		if pick(t, p, nodes, pod, state) == "" {
			t.Fatalf("%s fits no node", pod.Name)
		}
		s, _ := getState(state)
		got := map[string]int64{}
		for _, ni := range nodes {
			sc, st := p.Score(ctx, state, pod, ni)
			if !st.IsSuccess() {
				t.Fatalf("Score: %v", st)
			}
			got[ni.Node().Name] = sc
			// What the node costs measured afresh, with no memo.
			c := s.cycle
			c.Shared = nil
			p.view.mu.Lock()
			n := p.view.build(logger, ni, forCopy, "").node
			p.view.mu.Unlock()
			var w packing.Scratch
			parts, ok := n.Measure(&c, &w)
			if want := -int64(math.Round(c.Compose(parts, n.GPUMemoryGB) * costUnit)); !ok || sc != want {
				t.Errorf("%s on %s: score %d, a fresh measure %d (fits %v)", pod.Name, ni.Node().Name, sc, want, ok)
			}
		}
		return got, s
	}
	instance := func(name string) *corev1.Pod { return podOf(name, "4", "nvidia.com/mig-3g.40gb", "1") }
	nodes := h.set(t, cluster)
	// Whole-GPU pods are demand too: an instance that breaks an idle GPU
	// costs.
	for i := range 4 {
		if _, s := p.PreFilter(ctx, framework.NewCycleState(), podOf(fmt.Sprint("whole", i), "4", string(gpu.ResourceGPU), "1"), nodes); !s.IsSuccess() {
			t.Fatalf("PreFilter: %v", s)
		}
	}
	before, s1 := scores(nodes, instance("first"))
	if before["a"] != before["b"] || before["b"] != before["c"] {
		t.Fatalf("three idle nodes score %v; want them alike", before)
	}
	// A pod takes half a GPU of a, leaving room for the next pod's
	// instance, and nothing else of the node (no CPU or memory).
	other := bound(podOf("other", "0", "nvidia.com/mig-3g.40gb", "1"), "a", "0:3g.40gb@4")
	delete(other.Spec.Containers[0].Resources.Requests, corev1.ResourceMemory)
	delete(other.Spec.Containers[0].Resources.Limits, corev1.ResourceMemory)
	after, s2 := scores(h.set(t, cluster, other), instance("second"))
	if s1.cycle.Demand != s2.cycle.Demand {
		t.Fatal("the demand changed between the cycles; the test needs the memo of the first to be current")
	}
	if after["a"] == after["b"] || after["b"] != before["b"] || after["c"] != before["c"] {
		t.Fatalf("scores %v after a changed, %v before; want a's changed and only a's", after, before)
	}
}
