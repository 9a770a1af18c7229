package spotrisk

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/parallelize"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/pennysched/penny/pkg/benchtest"
	"github.com/pennysched/penny/pkg/pricing"
)

// Filter's reasons are the same words for every node a rule turns away, so
// a pod formats each of them once: formatted per node, a pod that stays off
// Spot paid a fmt.Sprintf on every Spot node of the cluster, in every cycle.
// Filter on a node it turns away allocates no more than the status it
// returns, with the words the first node got.
func TestFilterFormatsEachReasonOncePerPod(t *testing.T) {
	e := newEnv(t, nil, Deps{Prices: catalog(t)}, fleet()...)
	ctx := context.Background()
	status := testing.AllocsPerRun(100, func() { statusSink = fwk.NewStatus(fwk.UnschedulableAndUnresolvable, "reason") })
	for _, tc := range []struct {
		name string
		ann  map[string]string
		node string
	}{
		{"never on Spot", map[string]string{AnnotationWorkload: string(Inference)}, "spot-a"},
		{"only on on-demand", map[string]string{AnnotationSpot: string(Only)}, "od"},
		{"risk limit on Spot", map[string]string{AnnotationSpot: string(Only), AnnotationMaxReclaimRisk: "1%"}, "spot-a"},
		{"waiting for Spot on on-demand", map[string]string{AnnotationWorkload: string(Training), AnnotationCheckpointInterval: "1h"}, "od"},
	} {
		var ni fwk.NodeInfo
		for _, n := range e.nodes {
			if n.Node().Name == tc.node {
				ni = n
			}
		}
		p := pod("p", tc.ann)
		cs := framework.NewCycleState()
		if _, s := e.plugin.PreFilter(ctx, cs, p, e.nodes); !s.IsSuccess() {
			t.Fatalf("%s: PreFilter: %v", tc.name, s)
		}
		first := e.plugin.Filter(ctx, cs, p, ni)
		if first.IsSuccess() {
			t.Fatalf("%s: Filter admits %s", tc.name, tc.node)
		}
		allocs := testing.AllocsPerRun(100, func() {
			if s := e.plugin.Filter(ctx, cs, p, ni); s.Message() != first.Message() {
				t.Fatalf("%s: Filter says %q, then %q", tc.name, first.Message(), s.Message())
			}
		})
		t.Logf("%s: %v allocations per node turned away", tc.name, allocs)
		if allocs > status {
			t.Errorf("%s: Filter allocates %v times on a node it turns away, the status it returns %v", tc.name, allocs, status)
		}
	}
}

// statusSink keeps the compiler from leaving out the status whose
// allocations TestFilterFormatsEachReasonOncePerPod counts.
var statusSink *fwk.Status

// BenchmarkFilter1000Nodes measures what the plugin costs one pod's
// scheduling cycle up to scoring: PreFilter, then Filter on 1,000 nodes, half
// of them Spot, run 16 at a time as kube-scheduler's parallelizer does. Each
// pod class takes a different path through Filter's rules: allow reads no
// capacity, never and a waiting prefer pod turn half the nodes away with one
// reason each, and a risk limit turns the Spot nodes away by their pools'
// reclaim rates and notes the pools for PostFilter. On a shared machine
// wall time includes waiting for a core: cpu-ns/op, the CPU time the
// process spent, is what a pod's Filter costs the scheduler.
func BenchmarkFilter1000Nodes(b *testing.B) {
	c, err := pricing.Parse([]byte(testCatalog), "test")
	if err != nil {
		b.Fatal(err)
	}
	nodes := benchNodes(nil)
	for _, tc := range []struct {
		name     string
		ann      map[string]string
		rejected int
	}{
		{"allow", nil, 0},
		{"never", map[string]string{AnnotationWorkload: string(Inference)}, 500},
		{"prefer-waiting", map[string]string{AnnotationWorkload: string(Training), AnnotationCheckpointInterval: "30m"}, 500},
		{"risk-limit", map[string]string{AnnotationMaxReclaimRisk: "0.01"}, 500},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			sr, par := benchPlugin(b, c)
			p := pod("p", tc.ann)
			statuses := make([]*fwk.Status, len(nodes))
			b.ReportAllocs()
			start := benchtest.ProcessCPU()
			for b.Loop() {
				cs := framework.NewCycleState()
				if _, s := sr.PreFilter(ctx, cs, p, nodes); !s.IsSuccess() {
					b.Fatalf("PreFilter: %v", s)
				}
				par.Until(ctx, len(nodes), func(i int) { statuses[i] = sr.Filter(ctx, cs, p, nodes[i]) }, "Filter")
			}
			b.ReportMetric(float64((benchtest.ProcessCPU()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
			rejected := 0
			for _, s := range statuses {
				if !s.IsSuccess() {
					rejected++
				}
			}
			if rejected != tc.rejected {
				b.Fatalf("Filter turned %d nodes away, want %d", rejected, tc.rejected)
			}
		})
	}
}

// BenchmarkScore1000Nodes measures what the plugin costs one pod's scoring
// with the price catalog the deployed profile always has: PreScore, then
// Score on 1,000 nodes run 16 at a time, half of them Spot, in twelve pools
// (two instance types, one with GPUs, in three zones, Spot and on-demand).
// Each class prices a reclaim differently: allow and prefer pods by the
// restart, training without checkpoints by half its runtime, checkpointing
// training by half its interval; a pod without GPUs is priced by its share
// of each node rather than by the catalog's split. Every node's score is
// checked against Cost, which prices the node alone.
func BenchmarkScore1000Nodes(b *testing.B) {
	base, err := pricing.Parse([]byte(testCatalog), "test")
	if err != nil {
		b.Fatal(err)
	}
	c, err := base.With(pricing.Entry{InstanceType: "m7i.8xlarge", Capacity: pricing.Spot, Region: "us-east-1", Hourly: 0.6, Interruption: pricing.BucketUnder5})
	if err != nil {
		b.Fatal(err)
	}
	// Every fifth node is a CPU node, so that the pools are twelve.
	nodes := benchNodes(func(i int, n *corev1.Node) {
		if i%5 == 4 {
			sized(n, "m7i.8xlarge", "32", "128Gi", "")
		}
	})
	cpuOnly := pod("p", nil)
	cpuOnly.Spec.Containers[0].Resources.Limits = nil
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
	}{
		{"allow", pod("p", nil)},
		{"allow-cpu", cpuOnly},
		{"prefer", waited(pod("p", map[string]string{AnnotationSpot: string(Prefer)}))},
		{"avoid", waited(pod("p", map[string]string{AnnotationWorkload: string(Training)}))},
		{"checkpointing-training", waited(pod("p", map[string]string{AnnotationWorkload: string(Training), AnnotationCheckpointInterval: "30m"}))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			sr, par := benchPlugin(b, c)
			p := tc.pod
			cs := framework.NewCycleState()
			if _, s := sr.PreFilter(ctx, cs, p, nodes); !s.IsSuccess() {
				b.Fatalf("PreFilter: %v", s)
			}
			scores := make([]int64, len(nodes))
			b.ReportAllocs()
			start := benchtest.ProcessCPU()
			for b.Loop() {
				if s := sr.PreScore(ctx, cs, p, nodes); !s.IsSuccess() {
					b.Fatalf("PreScore: %v", s)
				}
				par.Until(ctx, len(nodes), func(i int) {
					score, s := sr.Score(ctx, cs, p, nodes[i])
					if !s.IsSuccess() {
						b.Errorf("Score: %v", s)
					}
					scores[i] = score
				}, "Score")
			}
			b.ReportMetric(float64((benchtest.ProcessCPU()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
			class, err := sr.classify(p)
			if err != nil {
				b.Fatal(err)
			}
			usage := pricing.PodUsage(p)
			for i, ni := range nodes {
				n := ni.Node()
				cost, ok := sr.Cost(p, class, usage, n)
				if want := rawScore(cost, class.Policy == Avoid && pricing.NodeCapacity(n).IsSpot(), ok); scores[i] != want {
					b.Fatalf("%s: Score %d, priced alone %d", n.Name, scores[i], want)
				}
			}
		})
	}
}

// benchNodes are the benchmarks' 1,000 nodes: every other one Spot, spread
// over three zones; shape, when not nil, changes the i-th before it is
// added.
func benchNodes(shape func(i int, n *corev1.Node)) []fwk.NodeInfo {
	nodes := make([]fwk.NodeInfo, 0, 1000)
	for i := range 1000 {
		capacity := pricing.OnDemand
		if i%2 == 0 {
			capacity = pricing.Spot
		}
		n := node(fmt.Sprint("n", i), capacity, fmt.Sprintf("us-east-1%c", 'a'+i%3))
		if shape != nil {
			shape(i, n)
		}
		ni := framework.NewNodeInfo()
		ni.SetNode(n)
		nodes = append(nodes, ni)
	}
	return nodes
}

// benchPlugin is the plugin the benchmarks run, pricing by c, and
// kube-scheduler's parallelizer to run it on many nodes at once.
func benchPlugin(b *testing.B, c *pricing.Catalog) (*SpotRisk, parallelize.Parallelizer) {
	pl, err := New(context.Background(), nil, nil, Deps{Prices: c, Clock: clocktesting.NewFakeClock(t0)})
	if err != nil {
		b.Fatal(err)
	}
	return pl.(*SpotRisk), parallelize.NewParallelizer(16)
}
