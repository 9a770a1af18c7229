package pricing

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/pennysched/penny/pkg/capacity"
)

func poolNode(name, instanceType, zone, capacityType string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		corev1.LabelInstanceTypeStable: instanceType, corev1.LabelTopologyZone: zone, capacity.LabelKarpenter: capacityType}}}
}

// FeedExposure tells the model, per Spot pool, the node-hours its nodes ran
// between two counts; on-demand nodes are never counted, and an interval
// whose listing failed is skipped rather than counted twice.
func TestFeedExposureCountsSpotNodeHoursPerPool(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(t0)
	m := NewRiskModel(RiskConfig{Clock: clk})
	a := Pool{InstanceType: "g5.48xlarge", Zone: "us-east-1a", Capacity: Spot}
	b := Pool{InstanceType: "g5.48xlarge", Zone: "us-east-1b", Capacity: Spot}
	od := Pool{InstanceType: "g5.48xlarge", Zone: "us-east-1a", Capacity: OnDemand}

	var mu sync.Mutex
	lists := 0
	var failing bool
	nodes := []*corev1.Node{
		poolNode("a1", "g5.48xlarge", "us-east-1a", "spot"), poolNode("a2", "g5.48xlarge", "us-east-1a", "spot"),
		poolNode("b1", "g5.48xlarge", "us-east-1b", "spot"), poolNode("od1", "g5.48xlarge", "us-east-1a", "on-demand"),
	}
	list := func() ([]*corev1.Node, error) {
		mu.Lock()
		defer mu.Unlock()
		lists++
		if failing {
			return nil, errors.New("the API server is away")
		}
		return nodes, nil
	}
	counted := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			done := lists >= n
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d counts, want %d", lists, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go FeedExposure(ctx, m, list, clk, time.Minute)
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}

	clk.Step(time.Minute)
	counted(1)
	// The model is told just after the count: poll it.
	expectEvidence := func(pool Pool, want float64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, got := m.Evidence(pool, clk.Now())
			if near(got, want, 1e-4) { // minutes of decay at a 14-day half-life
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v: %g node-hours, want %g", pool, got, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	expectEvidence(a, 2.0/60)
	expectEvidence(b, 1.0/60)
	expectEvidence(od, 0)

	mu.Lock()
	failing = true
	mu.Unlock()
	clk.Step(time.Minute)
	counted(2)
	mu.Lock()
	failing = false
	mu.Unlock()
	clk.Step(time.Minute)
	counted(3)
	// The failed minute is not counted; the next count covers its own
	// minute only.
	expectEvidence(a, 4.0/60)
	expectEvidence(b, 2.0/60)
}

// A reclaim alone makes a pool look riskier; the node-hours that ran
// without one bring the estimate back: a hundred nodes that lost one in a
// month are a safe pool.
func TestExposureLowersTheRateAReclaimRaised(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	m := NewRiskModel(RiskConfig{HalfLife: 1e6 * time.Hour, Clock: clocktesting.NewFakePassiveClock(t0.Add(HoursPerMonth * time.Hour))})
	pool := Pool{InstanceType: "g5.48xlarge", Zone: "us-east-1a", Capacity: Spot}
	m.SetPrior(pool, Bucket10To15)
	prior := m.ReclaimRate(pool)
	m.ObserveReclaim(pool, "a1", t0)
	alone := m.ReclaimRate(pool)
	if alone < 5*prior {
		t.Fatalf("one reclaim with no exposure: %g, want well above the prior %g", alone, prior)
	}
	nodes := make([]*corev1.Node, 100)
	for i := range nodes {
		nodes[i] = poolNode("n", "g5.48xlarge", "us-east-1a", "spot")
	}
	ObserveNodes(m, nodes, HoursPerMonth, t0.Add(HoursPerMonth*time.Hour))
	got := m.ReclaimRate(pool)
	want := (prior*HoursPerMonth + 1) / (HoursPerMonth + 100*HoursPerMonth)
	if !near(got, want, 1e-3) { // the reclaim decays a little in a month
		t.Fatalf("after 100 node-months with one reclaim: %g, want %g", got, want)
	}
	if got >= prior {
		t.Fatalf("a pool that lost one node in 100 node-months (%g) must look safer than its prior (%g)", got, prior)
	}
}
