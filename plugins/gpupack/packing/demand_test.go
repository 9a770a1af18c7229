package packing

import (
	"fmt"
	"math"
	"testing"
)

func weightOf(d *Demand, s Shape) float64 {
	for i := range d.Shapes {
		if d.Shapes[i].Key() == s.Key() {
			return d.Weights[i]
		}
	}
	return 0
}

func TestLearnerDecaysWithHalfLife(t *testing.T) {
	l := NewLearner(LearnerOptions{HalfLife: 100, Refresh: 1})
	a, b := share(500, 1000).Shape, whole(1, 8000).Shape
	for i := 0; i < 100; i++ {
		l.Observe(fmt.Sprint("a", i), a)
	}
	for i := 0; i < 100; i++ {
		l.Observe(fmt.Sprint("b", i), b)
	}
	// After 100 more arrivals the a's weigh half what they did: the mass of
	// a is sum_{k=100..199} 2^-k/100, of b sum_{k=0..99}: exactly half.
	d := l.Demand()
	if got := weightOf(d, a) / weightOf(d, b); math.Abs(got-0.5) > 1e-9 {
		t.Fatalf("weight of older shape / newer = %v, want 0.5", got)
	}
	if math.Abs(weightOf(d, a)+weightOf(d, b)-1) > 1e-12 {
		t.Fatalf("weights do not sum to 1: %+v", d.Weights)
	}
}

func TestLearnerCountsEachPodOnce(t *testing.T) {
	l := NewLearner(LearnerOptions{Refresh: 1})
	a, b := share(500, 1000).Shape, whole(1, 8000).Shape
	l.Observe("p1", a)
	for i := 0; i < 5; i++ {
		if l.Observe("p2", b) && i > 0 {
			t.Fatal("a retried pod counted again")
		}
	}
	if w := weightOf(l.Demand(), a); w != 0.5 {
		t.Fatalf("weight %v, want 0.5", w)
	}
}

func TestLearnerAveragesMemoryAndRebuildsOnNewShape(t *testing.T) {
	l := NewLearner(LearnerOptions{Refresh: 1000})
	r1, r2 := share(500, 1000), share(500, 1000)
	r1.Shape.Mem, r2.Shape.Mem = 2*gib, 4*gib
	l.Observe("1", r1.Shape)
	d := l.Demand()
	if len(d.Shapes) != 1 {
		t.Fatalf("a new shape must rebuild the demand at once: %d shapes", len(d.Shapes))
	}
	l.Observe("2", r2.Shape)
	if l.Demand() != d {
		t.Fatal("a known shape rebuilt the demand before Refresh arrivals")
	}
	for i := 0; i < 1000; i++ {
		l.Observe(fmt.Sprint("x", i), r2.Shape)
	}
	d = l.Demand()
	want := (2*gib + 1001*4*gib) / 1002
	if got := d.Shapes[0].Mem; got < want-1 || got > want+1 {
		t.Fatalf("memory %d, want the average %d", got, want)
	}
}

func TestLookAheadWeighsPendingPods(t *testing.T) {
	l := NewLearner(LearnerOptions{Refresh: 1, LookAheadDepth: 2, LookAheadWeight: 4})
	small, big := share(200, 1000).Shape, whole(8, 64000).Shape
	for i := 0; i < 8; i++ {
		l.Observe(fmt.Sprint("s", i), small)
	}
	if weightOf(l.Demand(), big) != 0 {
		t.Fatal("8-GPU shape has weight before any was seen")
	}
	// Four 8-GPU pods wait; the depth counts two of them, at 4 arrivals
	// each, and each takes 8 GPUs: 64 against the 8 arrivals of shares.
	for i := 0; i < 4; i++ {
		l.AddPending(fmt.Sprint("b", i), big)
	}
	if w := weightOf(l.Demand(), big); math.Abs(w-64.0/72) > 1e-12 {
		t.Fatalf("waiting 8-GPU pods weigh %v, want 64/72", w)
	}
	for i := 0; i < 4; i++ {
		l.RemovePending(fmt.Sprint("b", i))
	}
	if w := weightOf(l.Demand(), big); w != 0 || l.Pending() != 0 {
		t.Fatalf("after they left: weight %v, pending %d", w, l.Pending())
	}
}

func TestLearnerKeepsTheShapesThatCover(t *testing.T) {
	l := NewLearner(LearnerOptions{Refresh: 1, Coverage: 0.9, MaxShapes: 10})
	for i := 0; i < 90; i++ {
		l.Observe(fmt.Sprint("a", i), share(500, 1000).Shape)
	}
	for i := 0; i < 10; i++ {
		l.Observe(fmt.Sprint("b", i), share(100+int64(i), 1000).Shape)
	}
	if d := l.Demand(); len(d.Shapes) != 1 || d.Weights[0] != 1 {
		t.Fatalf("coverage 0.9 should keep only the 90%% shape: %d shapes", len(d.Shapes))
	}
}

func TestMultiGPUPodsWeighByTheirGPUs(t *testing.T) {
	l := NewLearner(LearnerOptions{Refresh: 1})
	one, eight := whole(1, 8000).Shape, whole(8, 64000).Shape
	for i := 0; i < 8; i++ {
		l.Observe(fmt.Sprint("1-", i), one)
	}
	l.Observe("8", eight)
	// Eight single-GPU pods and one 8-GPU pod take as many GPUs each way.
	if w := weightOf(l.Demand(), eight); math.Abs(w-0.5) > 1e-12 {
		t.Fatalf("the 8-GPU shape weighs %v, want 0.5", w)
	}
}

// Every distinct shape ever seen was kept for the scheduler's lifetime,
// decayed to nothing: with CPU and memory requests making many shapes, a
// scheduler running for weeks grew without bound. A shape is dropped once
// its weight is past float64's precision next to the latest arrival's,
// unless a pod of it still waits.
func TestLearnerForgetsShapesLongGone(t *testing.T) {
	l := NewLearner(LearnerOptions{HalfLife: 2, Refresh: 1, Coverage: 0.99, LookAheadDepth: 10, LookAheadWeight: 1})
	waiting := whole(2, 3000).Shape
	l.Observe("waiting", waiting)
	l.AddPending("waiting", waiting)
	const n = 1000
	for i := 0; i < n; i++ {
		l.Observe(fmt.Sprint(i), share(500, int64(1000+i)).Shape)
		l.Demand()
	}
	// A shape weighs 2^-53 of the latest arrival 53 half-lives after its
	// last pod: 106 arrivals here (the scale was also renormalised once).
	got := len(l.shapes)
	if got < 106+1 || got > 107+1 {
		t.Fatalf("the learner keeps %d shapes, want the 106 seen in the last 53 half-lives and the waiting one", got)
	}
	if weightOf(l.Demand(), waiting) == 0 {
		t.Fatal("the shape a pod still waits for was dropped from the demand")
	}
	l.RemovePending("waiting")
	l.Observe("last", share(500, 1000+n).Shape)
	l.Demand()
	if _, ok := l.shapes[waiting.Key()]; ok {
		t.Fatal("the waiting pod's shape, decayed, is kept after the pod left")
	}
}
