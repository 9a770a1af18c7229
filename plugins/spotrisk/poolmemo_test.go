package spotrisk

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	clocktesting "k8s.io/utils/clock/testing"

	capacitylabels "github.com/pennysched/penny/pkg/capacity"
	"github.com/pennysched/penny/pkg/pricing"
)

// memoEnv is two Spot nodes of the 5-10% pool us-east-1a, an on-demand
// node, a catalog store and a risk model on one fake clock.
func memoEnv(t *testing.T) (*env, *pricing.Store, *pricing.RiskModel, pricing.Pool) {
	t.Helper()
	clk := clocktesting.NewFakeClock(t0)
	store := pricing.NewStore(catalog(t))
	model := pricing.NewRiskModel(pricing.RiskConfig{Clock: clk})
	e := newEnv(t, nil, Deps{Prices: store, Risk: model, Clock: clk},
		node("spot-a1", pricing.Spot, "us-east-1a"), node("spot-a2", pricing.Spot, "us-east-1a"), node("od", pricing.OnDemand, "us-east-1a"))
	return e, store, model, pricing.Pool{InstanceType: "p4d.24xlarge", Zone: "us-east-1a", Capacity: pricing.Spot}
}

func (e *env) nodeInfo(t *testing.T, name string) fwk.NodeInfo {
	t.Helper()
	for _, ni := range e.nodes {
		if ni.Node().Name == name {
			return ni
		}
	}
	t.Fatalf("no node %s", name)
	return nil
}

// scoreCycle runs PreFilter and PreScore for p: a new scheduling cycle.
func (e *env) scoreCycle(t *testing.T, p *corev1.Pod) fwk.CycleState {
	t.Helper()
	cs := framework.NewCycleState()
	ctx := context.Background()
	if _, s := e.plugin.PreFilter(ctx, cs, p, e.nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if s := e.plugin.PreScore(ctx, cs, p, e.nodes); !s.IsSuccess() {
		t.Fatalf("PreScore: %v", s)
	}
	return cs
}

func (e *env) rawScore(t *testing.T, cs fwk.CycleState, p *corev1.Pod, name string) int64 {
	t.Helper()
	score, s := e.plugin.Score(context.Background(), cs, p, e.nodeInfo(t, name))
	if !s.IsSuccess() {
		t.Fatalf("Score %s: %v", name, s)
	}
	return score
}

// uncached is the raw score of p on a node priced and rated for that node
// alone, now (Cost, without a cycle's memo).
func (e *env) uncached(t *testing.T, p *corev1.Pod, n *corev1.Node) int64 {
	t.Helper()
	class, err := e.plugin.classify(p)
	if err != nil {
		t.Fatal(err)
	}
	cost, ok := e.plugin.Cost(p, class, pricing.PodUsage(p), n)
	return rawScore(cost, class.Policy == Avoid && pricing.NodeCapacity(n).IsSpot(), ok)
}

// Score reads each pool's price and reclaim rate once per cycle: a reclaim
// observed during the cycle leaves the pool's other nodes as its first one
// was scored, and the next cycle scores all of them by the new rate; a
// catalog reloaded between two cycles prices the next one.
func TestScoreReadsEachPoolAfreshEachCycle(t *testing.T) {
	e, store, model, pool := memoEnv(t)
	p := pod("p", map[string]string{AnnotationSpot: string(Allow), AnnotationExpectedRuntime: "168h"})

	cs := e.scoreCycle(t, p)
	first := e.rawScore(t, cs, p, "spot-a1")
	if want := e.uncached(t, p, e.nodeInfo(t, "spot-a1").Node()); first != want {
		t.Fatalf("spot-a1 scores %d, want %d", first, want)
	}
	model.ObserveExposure(pool, 10, t0)
	for i := range 20 {
		model.ObserveReclaim(pool, fmt.Sprint("spot-x", i), t0)
	}
	if got := e.rawScore(t, cs, p, "spot-a2"); got != first {
		t.Errorf("in the cycle that scored spot-a1 at %d, spot-a2 of the same pool scores %d", first, got)
	}

	cs = e.scoreCycle(t, p)
	reclaimed := e.rawScore(t, cs, p, "spot-a2")
	if want := e.uncached(t, p, e.nodeInfo(t, "spot-a2").Node()); reclaimed != want || reclaimed <= first {
		t.Errorf("the cycle after 20 reclaims scores spot-a2 %d, want %d (above %d)", reclaimed, want, first)
	}
	if got := e.rawScore(t, cs, p, "spot-a1"); got != reclaimed {
		t.Errorf("spot-a1 scores %d, spot-a2 of the same pool %d", got, reclaimed)
	}

	if err := store.Load([]byte(strings.Replace(testCatalog, "hourly: 8,", "hourly: 4,", 1)), "reloaded"); err != nil {
		t.Fatal(err)
	}
	cs = e.scoreCycle(t, p)
	for _, n := range []string{"spot-a1", "spot-a2"} {
		got, want := e.rawScore(t, cs, p, n), e.uncached(t, p, e.nodeInfo(t, n).Node())
		if got != want || got >= reclaimed {
			t.Errorf("the cycle after the Spot price halved scores %s %d, want %d (below %d)", n, got, want, reclaimed)
		}
	}
}

// Filter's verdict on a Spot pool by its reclaim risk is read once per
// cycle, as Score's price is; the next cycle reads it again and notes the
// pool it keeps the pod off.
func TestFilterReadsEachPoolsRiskAfreshEachCycle(t *testing.T) {
	e, _, model, pool := memoEnv(t)
	ctx := context.Background()
	p := pod("p", map[string]string{AnnotationSpot: string(Only), AnnotationMaxReclaimRisk: "10%"})

	cs := framework.NewCycleState()
	if _, s := e.plugin.PreFilter(ctx, cs, p, e.nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if s := e.plugin.Filter(ctx, cs, p, e.nodeInfo(t, "spot-a1")); !s.IsSuccess() {
		t.Fatalf("the 5-10%% pool under a 10%% limit: %v", s)
	}
	model.ObserveExposure(pool, 10, t0)
	for i := range 20 {
		model.ObserveReclaim(pool, fmt.Sprint("spot-x", i), t0)
	}
	if s := e.plugin.Filter(ctx, cs, p, e.nodeInfo(t, "spot-a2")); !s.IsSuccess() {
		t.Errorf("in the cycle that admitted spot-a1, spot-a2 of the same pool: %v", s)
	}

	cs = framework.NewCycleState()
	if _, s := e.plugin.PreFilter(ctx, cs, p, e.nodes); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	s, err := getState(cs)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"spot-a1", "spot-a2"} {
		if s := e.plugin.Filter(ctx, cs, p, e.nodeInfo(t, n)); s.IsSuccess() || !strings.Contains(s.Message(), "reclaimed more often than") {
			t.Errorf("the cycle after 20 reclaims, %s: %v", n, s)
		}
		// The pool is noted by its first node turned away.
		if !s.keptOff[pool] || len(s.keptOff) != 1 {
			t.Errorf("after %s: kept off %v, want %v", n, s.keptOff, pool)
		}
	}
}

// byName prices a node by its name: two nodes of one pool may cost
// differently, which a catalog never prices.
type byName map[string]float64

func (b byName) NodePrice(n *corev1.Node) (pricing.Price, bool) {
	h, ok := b[n.Name]
	return pricing.Price{Capacity: pricing.NodeCapacity(n).Type, NodeHourly: h, GPUHourly: h / 8}, ok
}

// What Score keeps for a pool is what every node of it is priced at: nodes
// one label apart, which a catalog prices apart, are scored apart, and a
// PriceBook that is not a catalog prices every node on its own.
func TestScoreKeepsNodesThatPriceApartApart(t *testing.T) {
	regionless := node("spot-regionless", pricing.Spot, "us-east-1a")
	delete(regionless.Labels, corev1.LabelTopologyRegion)
	beta := node("spot-beta", pricing.Spot, "us-east-1a")
	beta.Labels[corev1.LabelInstanceType] = beta.Labels[corev1.LabelInstanceTypeStable]
	delete(beta.Labels, corev1.LabelInstanceTypeStable)
	template := node("spot-template", pricing.Spot, "us-east-1a")
	template.Annotations = map[string]string{annotationTemplateNode: "group"}
	cpu := sized(node("spot-cpu", pricing.Spot, "us-east-1a"), "m7i.8xlarge", "32", "128Gi", "")
	nodes := []*corev1.Node{node("spot-a", pricing.Spot, "us-east-1a"), regionless, beta, template, cpu,
		node("spot-c", pricing.Spot, "us-east-1c"), node("od", pricing.OnDemand, "us-east-1a"), node("reserved", pricing.Reserved, "us-east-1a")}
	for _, tc := range []struct {
		name   string
		prices pricing.PriceBook
	}{
		{"catalog", catalog(t)},
		{"not a catalog", byName{"spot-a": 8, "spot-regionless": 4, "spot-beta": 6, "spot-template": 5, "spot-cpu": 1, "spot-c": 7, "od": 32, "reserved": 30}},
	} {
		e := newEnv(t, nil, Deps{Prices: tc.prices}, nodes...)
		for _, p := range []*corev1.Pod{
			pod("allow", map[string]string{AnnotationSpot: string(Allow), AnnotationExpectedRuntime: "168h"}),
			pod("avoid", map[string]string{AnnotationWorkload: string(Training)}),
		} {
			cs := e.scoreCycle(t, p)
			scores := map[string]int64{}
			for _, n := range nodes {
				scores[n.Name] = e.rawScore(t, cs, p, n.Name)
				if want := e.uncached(t, p, n); scores[n.Name] != want {
					t.Errorf("%s, %s: %s scores %d, priced alone %d", tc.name, p.Name, n.Name, scores[n.Name], want)
				}
			}
			if scores["spot-a"] == scores["spot-regionless"] {
				t.Errorf("%s, %s: spot-a and spot-regionless both score %d", tc.name, p.Name, scores["spot-a"])
			}
		}
	}
}

// A pool's value is worked out once however many nodes ask at once, and
// only the node whose value was kept is told so (excludeByRisk notes the
// pool once); a nil memo keeps nothing.
func TestPoolMemoKeepsOneValuePerKey(t *testing.T) {
	m := newPoolMemo[string](catalog(t))
	var mu sync.Mutex
	computed, stored := map[poolKey]int{}, map[poolKey]int{}
	keys := make([]poolKey, 10)
	for i := range keys {
		keys[i] = poolKeyOf(node("n", pricing.Spot, fmt.Sprint("zone-", i)), pricing.Capacity{Type: pricing.Spot})
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 200 {
				k := keys[(g+i)%len(keys)]
				v, kept := m.get(k, func() string {
					mu.Lock()
					defer mu.Unlock()
					computed[k]++
					return fmt.Sprint(k.Zone, "#", computed[k])
				})
				mu.Lock()
				if kept {
					stored[k]++
				}
				mu.Unlock()
				if v != k.Zone+"#1" {
					t.Errorf("%s: got %q", k.Zone, v)
				}
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		if computed[k] != 1 || stored[k] != 1 {
			t.Errorf("%s: computed %d times, stored told %d times; want once each", k.Zone, computed[k], stored[k])
		}
	}
	if m := newPoolMemo[string](byName{}); m != nil {
		t.Fatal("a memo for a PriceBook that is not a catalog")
	}
	var none *poolMemo[time.Duration]
	for i := range 2 {
		if v, kept := none.get(keys[0], func() time.Duration { return time.Duration(i) }); v != time.Duration(i) || !kept {
			t.Errorf("nil memo: %v, %v", v, kept)
		}
	}
}

// Score keeps each node's pool key from one cycle to the next (nodeKeys):
// a node whose labels change, which the scheduler's NodeInfo then holds as
// a new object, is scored by its new pool in the next cycle, and what is
// kept for nodes no cycle scores any more stays bounded.
func TestScoreReadsAChangedNodesPoolAfresh(t *testing.T) {
	e, _, _, _ := memoEnv(t)
	p := pod("p", map[string]string{AnnotationSpot: string(Allow), AnnotationExpectedRuntime: "168h"})
	cs := e.scoreCycle(t, p)
	spot := e.rawScore(t, cs, p, "spot-a1")
	if od := e.rawScore(t, cs, p, "od"); od == spot {
		t.Fatalf("spot-a1 and od both score %d", od)
	}

	ni := e.nodeInfo(t, "spot-a1").(*framework.NodeInfo)
	changed := ni.Node().DeepCopy()
	changed.Labels[capacitylabels.LabelKarpenter] = string(pricing.OnDemand)
	ni.SetNode(changed)
	cs = e.scoreCycle(t, p)
	if got, want := e.rawScore(t, cs, p, "spot-a1"), e.uncached(t, p, changed); got != want || got == spot {
		t.Errorf("spot-a1 relabelled on-demand scores %d, want %d (not its Spot score %d)", got, want, spot)
	}
	if _, kept := e.plugin.nodeKeys.lookup(ni); !kept {
		t.Error("spot-a1's new key is not kept")
	}

	for range 10 {
		gone := framework.NewNodeInfo()
		gone.SetNode(node("gone", pricing.Spot, "us-east-1b"))
		if s := e.plugin.PreScore(context.Background(), cs, p, []fwk.NodeInfo{gone}); !s.IsSuccess() {
			t.Fatalf("PreScore: %v", s)
		}
	}
	if kept, most := len(e.plugin.nodeKeys.nodes), 2*len(e.nodes)+1; kept > most {
		t.Errorf("%d nodes' keys kept for a cluster of %d nodes, want at most %d", kept, len(e.nodes), most)
	}
}
